//! The LoRA projection `x · Wᵀ + scale · (x · Aᵀ) · Bᵀ` over a frozen `W` as one op: one node
//! of the autograd graph instead of five (two products, the scaling, the sum and the base
//! projection), so that the backward pass does not allocate and accumulate a zeroed gradient
//! for each of them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

use rayon::prelude::*;

use super::reference;

/// `x [rows, in] · wᵀ + scale · (x · aᵀ) · bᵀ` for a frozen weight `w [out, in]` and the
/// adapter `a [r, in]`, `b [out, r]`. Backward: the gradients of `x`, `a` and `b` (never
/// `w`'s). Falls back to the composed ops off the CPU, for dtypes other than f32, and for a
/// tracked `w`.
pub(crate) fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let all = [x, w, a, b];
    let cpu_f32 = all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if !cpu_f32 || w.track_op() {
        let y = super::linear(x, w)?;
        let delta = reference::lora_delta(x, a, b, scale, y.dtype())?;
        return y + delta;
    }
    let (_, k) = x.dims2()?;
    let (out, kw) = w.dims2()?;
    let (r, ka) = a.dims2()?;
    if kw != k || ka != k || b.dims2()? != (out, r) {
        candle_core::bail!(
            "mtrl-lora-linear: x {:?}, w {:?}, a {:?}, b {:?}",
            x.dims(),
            w.dims(),
            a.dims(),
            b.dims()
        );
    }
    x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        LoraLinear {
            w: w.contiguous()?,
            scale,
        },
    )
}

struct LoraLinear {
    /// The frozen base weight `[out, in]`.
    w: Tensor,
    scale: f64,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "mtrl-lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (r, _) = al.shape().dims2()?;
        let (out, _) = bl.shape().dims2()?;
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("mtrl-lora-linear: the weight is not on the CPU");
        };
        let y = xs.matmul(ws, (1, m, out, k), xl, &wl.transpose(0, 1)?)?;
        let xa = xs.matmul(a_s, (1, m, r, k), xl, &al.transpose(0, 1)?)?;
        let xa_l = Layout::contiguous((m, r));
        let delta = xa.matmul(bs, (1, m, out, r), &xa_l, &bl.transpose(0, 1)?)?;
        let (CpuStorage::F32(mut y), CpuStorage::F32(delta)) = (y, delta) else {
            candle_core::bail!("mtrl-lora-linear: not f32");
        };
        let scale = self.scale as f32;
        y.par_chunks_mut(16_384)
            .zip(delta.par_chunks(16_384))
            .for_each(|(y, d)| {
                for (y, d) in y.iter_mut().zip(d) {
                    *y += scale * d;
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((m, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xd, ad, bd) = (x.detach(), a.detach(), b.detach());
        // `scale · g · B`, `[rows, r]`: what reaches the adapter's low-rank side.
        let gb = (g.matmul(&bd)? * self.scale)?;
        let dx = if x.track_op() {
            Some((g.matmul(&self.w)? + gb.matmul(&ad)?)?)
        } else {
            None
        };
        let da = if a.track_op() {
            Some(gb.t()?.matmul(&xd)?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some((g.t()?.matmul(&xd.matmul(&ad.t()?)?)? * self.scale)?)
        } else {
            None
        };
        Ok((dx, da, db))
    }
}
