//! The layer's building blocks as fused ops with a backward pass, in one place.
//!
//! Each op — the projection `x · wᵀ`, RMS norm, rotary embedding, the scaled and masked
//! attention softmax, and SwiGLU — is a candle custom op: one pass of a CPU kernel ([`cpu`])
//! forward, and one or two passes backward, instead of a chain of small tensor ops that each
//! allocate their output and record a node for autograd. The projection's backward skips the
//! gradient of a weight that is not trained (LoRA's frozen base), which candle's `matmul`
//! always computes.
//!
//! [`reference`] holds the same ops composed of ordinary tensor ops: what runs on devices
//! without a fused kernel yet (CUDA), and what the tests compare the fused ops against
//! ([`CausalLm::with_reference_ops`](super::CausalLm::with_reference_ops) runs a whole model
//! on it). Every op computes in f32 whatever the storage dtype, and returns the input's dtype.

pub(crate) mod backward;
mod cpu;
mod lora_linear;
pub(crate) mod reference;
mod set;
#[cfg(test)]
mod tests;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use candle_core::{Result, WithDType, backend::BackendStorage};
use half::{bf16, f16};

pub(crate) use lora_linear::lora_linear;
pub(crate) use set::{OpSet, attn_softmax_infer};

/// Whether the fused ops serve these tensors: CPU storage, one float dtype.
fn fused(tensors: &[&Tensor]) -> bool {
    let dtype = tensors[0].dtype();
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == dtype)
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

use crate::cpu_storage::elements as slice;

/// Runs `$body` with `$t` bound to the Rust type of the float dtype `$dtype`.
macro_rules! with_float {
    ($dtype:expr, $op:expr, |$t:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = bf16;
                $body
            }
            DType::F16 => {
                type $t = f16;
                $body
            }
            other => Err(candle_core::Error::UnsupportedDTypeForOp(other, $op)),
        }
    };
}

/// Runs the kernel `$kernel` on the contiguous elements of float storages of one dtype, each
/// bound to its name in the kernel's float type `$t`, and wraps the output as a storage.
macro_rules! float_kernel {
    ($op:expr, [$($x:ident = ($s:expr, $l:expr)),+], |$t:ident| $kernel:expr) => {{
        let op = $op;
        with_float!(same_dtype(op, &[$($s),+])?, op, |$t| {
            $(let $x = slice::<$t>($s, $l, op)?;)+
            Ok($t::to_cpu_storage_owned($kernel))
        })
    }};
}

/// Fails unless every storage has the first one's dtype.
fn same_dtype(op: &'static str, storages: &[&CpuStorage]) -> Result<DType> {
    let dtype = storages[0].dtype();
    if storages.iter().any(|s| s.dtype() != dtype) {
        candle_core::bail!("{op}: the arguments' dtypes differ");
    }
    Ok(dtype)
}

/// `x [rows, in] · wᵀ` for a weight `w [out, in]`. Backward: `g · w` for `x`, and `gᵀ · x`
/// for `w` only when `w` is tracked (trained).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !fused(&[x, w]) {
        return reference::linear(x, w);
    }
    x.apply_op2(w, Linear)
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "mtrl-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("mtrl-linear: input width {k}, weight width {k2}");
        }
        let out = s1.matmul(s2, (1, m, n, k), l1, &l2.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(g.matmul(&w.detach())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(g.t()?.matmul(&x.detach())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// RMS norm over the last dimension, times `w`: `x / sqrt(mean(x²) + eps) · w`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(&[x, w]) || x.dim(candle_core::D::Minus1)? != w.elem_count() {
        return reference::rms_norm(x, w, eps, x.dtype());
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "mtrl-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(self.name(), [x = (s1, l1), w = (s2, l2)], |T| {
            cpu::rms_norm::<T>(x, w, self.eps)
        })?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = if x.track_op() {
            Some(x.apply_op3_no_bwd(w, &g, &RmsNormGradX { eps: self.eps })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &g,
                &RmsNormGradW {
                    eps: self.eps,
                    h: w.elem_count(),
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "mtrl-rms-norm-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(
            self.name(),
            [x = (s1, l1), w = (s2, l2), g = (s3, l3)],
            |T| cpu::rms_norm_grad_x::<T>(x, w, g, self.eps)
        )?;
        Ok((out, l1.shape().clone()))
    }
}

struct RmsNormGradW {
    eps: f32,
    h: usize,
}

impl CustomOp2 for RmsNormGradW {
    fn name(&self) -> &'static str {
        "mtrl-rms-norm-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(self.name(), [x = (s1, l1), g = (s2, l2)], |T| {
            cpu::rms_norm_grad_w::<T>(x, g, self.h, self.eps)
        })?;
        Ok((out, Shape::from(self.h)))
    }
}

/// Rotary embedding (rotate-half, Hugging Face's convention) of `x [batch, heads, time,
/// head_dim]` with per-row tables `cos, sin [batch, time, head_dim / 2]`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fused(&[x, cos, sin]) {
        return reference::rope(x, cos, sin);
    }
    let (b, _, t, hd) = x.dims4()?;
    if cos.dims() != [b, t, hd / 2] || sin.dims() != cos.dims() || hd % 2 != 0 {
        return reference::rope(x, cos, sin);
    }
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { sign: 1.0 })
}

struct Rope {
    /// 1 forward, -1 for the inverse rotation (the backward pass).
    sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "mtrl-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let out = float_kernel!(
            self.name(),
            [x = (s1, l1), c = (s2, l2), s = (s3, l3)],
            |T| cpu::rope::<T>(x, c, s, dims, self.sign)
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rope { sign: -self.sign };
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        Ok((Some(dx), None, None))
    }
}

/// The attention probabilities `softmax(scores · scale + mask)` of `scores [batch, kv_heads,
/// rep · t, kv]` (the query heads sharing a key/value head stacked along time), with the
/// additive `mask [batch, t, kv]` shared by every head.
pub(crate) fn attn_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, _, rows, kv) = scores.dims4()?;
    let ok = match mask {
        Some(m) => {
            fused(&[scores, m]) && {
                let (mb, t, mkv) = m.dims3()?;
                mb == b && mkv == kv && t > 0 && rows % t == 0
            }
        }
        None => fused(&[scores]),
    };
    if !ok {
        return reference::attn_softmax(scores, mask, scale);
    }
    let op = AttnSoftmax {
        scale: scale as f32,
    };
    let scores = scores.contiguous()?;
    match mask {
        Some(m) => scores.apply_op2(&m.contiguous()?, op),
        None => scores.apply_op1(op),
    }
}

struct AttnSoftmax {
    scale: f32,
}

impl AttnSoftmax {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "mtrl-attn-softmax";
        let (_, heads, rows, kv) = l1.shape().dims4()?;
        let mut storages = vec![s1];
        let mut t = rows;
        if let Some((s2, l2)) = mask {
            storages.push(s2);
            t = l2.shape().dims3()?.1;
        }
        let out = with_float!(same_dtype(op, &storages)?, op, |T| {
            let m = match mask {
                Some((s2, l2)) => Some(slice::<T>(s2, l2, op)?),
                None => None,
            };
            Ok(T::to_cpu_storage_owned(cpu::attn_softmax::<T>(
                slice(s1, l1, op)?,
                m,
                kv,
                t,
                heads * rows,
                self.scale,
            )))
        })?;
        Ok((out, l1.shape().clone()))
    }

    fn grad(&self, res: &Tensor, g: &Tensor) -> Result<Tensor> {
        res.apply_op2_no_bwd(&g.contiguous()?, &AttnSoftmaxGrad { scale: self.scale })
    }
}

impl CustomOp1 for AttnSoftmax {
    fn name(&self) -> &'static str {
        "mtrl-attn-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, None)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.grad(res, g)?))
    }
}

impl CustomOp2 for AttnSoftmax {
    fn name(&self) -> &'static str {
        "mtrl-attn-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, Some((s2, l2)))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The mask is a constant: no gradient, and none of its size is allocated.
        Ok((Some(self.grad(res, g)?), None))
    }
}

struct AttnSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for AttnSoftmaxGrad {
    fn name(&self) -> &'static str {
        "mtrl-attn-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let kv = l1.shape().dims().last().copied().unwrap_or(1);
        let out = float_kernel!(self.name(), [p = (s1, l1), g = (s2, l2)], |T| {
            cpu::attn_softmax_grad::<T>(p, g, kv, self.scale)
        })?;
        Ok((out, l1.shape().clone()))
    }
}

/// SwiGLU's product `silu(gate) · up`, element-wise.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fused(&[gate, up]) || gate.dims() != up.dims() {
        return reference::swiglu(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "mtrl-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(self.name(), [gate = (s1, l1), up = (s2, l2)], |T| {
            cpu::swiglu::<T>(gate, up)
        })?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Both gradients from one pass, stacked: `[2, ..]`.
        let both = gate.apply_op3_no_bwd(up, &g.contiguous()?, &SwigluGradOp)?;
        let dgate = gate.track_op().then(|| both.get(0)).transpose()?;
        let dup = up.track_op().then(|| both.get(1)).transpose()?;
        Ok((dgate, dup))
    }
}

struct SwigluGradOp;

impl CustomOp3 for SwigluGradOp {
    fn name(&self) -> &'static str {
        "mtrl-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = float_kernel!(
            self.name(),
            [a = (s1, l1), u = (s2, l2), g = (s3, l3)],
            |T| cpu::swiglu_grad::<T>(a, u, g)
        )?;
        let mut dims = vec![2];
        dims.extend_from_slice(l1.shape().dims());
        Ok((out, Shape::from(dims)))
    }
}

/// Per row of `logits [n, vocab]` (f32): the log-probability of the row's target among
/// `targets [n]` (u32), the entropy of the row's distribution, and its log-sum-exp, as
/// `[n, 3]`, in one pass over the row instead of a chain of `[n, vocab]` tensors (log-softmax,
/// gather, and the entropy's product and sum). Backward: one `[n, vocab]` pass.
pub(crate) fn picked_log_softmax(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.dims1()? != n {
        candle_core::bail!(
            "mtrl-picked-log-softmax: {n} rows, {} targets",
            targets.dims1()?
        );
    }
    let cpu = logits.device().is_cpu() && targets.device().is_cpu();
    if !cpu || logits.dtype() != DType::F32 || targets.dtype() != DType::U32 {
        return reference::picked_log_softmax(logits, targets);
    }
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, PickedLogSoftmax)
}

struct PickedLogSoftmax;

impl CustomOp2 for PickedLogSoftmax {
    fn name(&self) -> &'static str {
        "mtrl-picked-log-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, vocab) = l1.shape().dims2()?;
        let targets: &[u32] = slice(s2, l2, op)?;
        let out = cpu::picked_log_softmax(slice(s1, l1, op)?, targets, vocab).ok_or_else(|| {
            let (row, target) = targets
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab)
                .map_or((0, 0), |(r, t)| (r, *t));
            candle_core::Error::Msg(format!(
                "{op}: target {target} of row {row} is out of the vocabulary of {vocab}"
            ))
        })?;
        Ok((CpuStorage::F32(out), Shape::from((n, 3))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let res_g = Tensor::cat(&[res, &g.to_dtype(DType::F32)?], 1)?;
        let grad = logits.apply_op3_no_bwd(targets, &res_g, &PickedLogSoftmaxGrad)?;
        Ok((Some(grad), None))
    }
}

/// The logits' gradient of [`PickedLogSoftmax`], from the logits, the targets, and the
/// output beside its gradient (`[n, 6]`).
struct PickedLogSoftmaxGrad;

impl CustomOp3 for PickedLogSoftmaxGrad {
    fn name(&self) -> &'static str {
        "mtrl-picked-log-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, vocab) = l1.shape().dims2()?;
        let (logits, targets, res_g) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        if res_g.len() != n * 6 {
            candle_core::bail!("{op}: {n} rows, {} output and gradient values", res_g.len());
        }
        let out = cpu::picked_log_softmax_grad(logits, targets, res_g, vocab);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
