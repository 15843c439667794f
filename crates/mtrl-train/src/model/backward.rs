//! The training path's backward pass through the decoder layers, written by hand.
//!
//! Candle's autograd walks the graph node by node and, for every input of every node,
//! allocates a zeroed gradient and adds the incoming one into it: a full write and a full
//! read-modify-write per activation, plus the graph's bookkeeping. Here the forward pass runs
//! on detached weights and keeps each layer's activations ([`Saved`]); the backward pass calls
//! the ops' gradient kernels ([`super::ops::backward`]) and matrix products directly, and
//! writes each trainable parameter's gradient once. Only the top of the model (final norm,
//! output layer, log-softmax and the loss) stays on candle's autograd, which is what lets the
//! loss be any differentiable function of the logprobs.
//!
//! It runs where the fused ops run (the CPU); elsewhere, and with the reference ops,
//! [`CausalLm::grads`] uses candle's autograd over the whole model. Tests check that both give
//! the same gradients.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::lora::Module;
use super::ops::backward::{
    LowRank, attn_softmax_grad, linear_grads, rms_norm_grads, rope_grad, swiglu_grads,
};
use super::weights::Layer;
use super::{CausalLm, ops};
use crate::Error;

/// One layer's activations that its backward pass reads, from the forward pass.
pub(super) struct Saved {
    /// The layer's input `[batch, time, hidden]`.
    pub x: Tensor,
    /// The attention norm's output `[rows, hidden]`.
    pub hn1: Tensor,
    /// Queries and keys `[batch, time, heads, head_dim]` before their norms (Qwen3).
    pub pre_norm: Option<(Tensor, Tensor)>,
    /// Queries after RoPE, `[batch, kv_heads, rep · time, head_dim]`.
    pub q: Tensor,
    /// Keys after RoPE and values, `[batch, kv_heads, time, head_dim]`.
    pub k: Tensor,
    pub v: Tensor,
    /// The attention probabilities `[batch, kv_heads, rep · time, time]`.
    pub probs: Tensor,
    /// The attention output `[rows, heads · head_dim]`, the output projection's input.
    pub attn: Tensor,
    /// The residual stream after attention `[batch, time, hidden]`.
    pub x_mid: Tensor,
    /// The MLP norm's output `[rows, hidden]`.
    pub hn2: Tensor,
    /// The MLP's gate and up projections and their SwiGLU product `[rows, intermediate]`.
    pub gate: Tensor,
    pub up: Tensor,
    pub act: Tensor,
}

/// Adds `grad` to the gradient of `key` in `store`.
pub(super) fn accumulate(store: &mut GradStore, key: &Tensor, grad: Tensor) -> Result<(), Error> {
    let sum = match store.remove(key) {
        Some(prev) => (prev + grad)?,
        None => grad,
    };
    store.insert(key, sum);
    Ok(())
}

impl CausalLm {
    /// Whether [`CausalLm::grads`] runs the hand-written backward pass: with the fused ops on
    /// the CPU, where their gradient kernels are.
    pub(super) fn manual_backward(&self) -> bool {
        self.ops == ops::OpSet::Fused
            && self.device.is_cpu()
            && self.config.head_dim % 2 == 0
            && matches!(self.dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    /// One layer's backward pass: given the gradient `g [batch, time, hidden]` at its output,
    /// adds its trainable parameters' gradients to `total` (keyed by the tracked weights in
    /// `keys`) and returns the gradient at its input. `w` holds the detached weights that
    /// computed `s`.
    ///
    /// Prefix sharing ([`super::passes`]): when the first `shared` key/value slots of `s` are a
    /// shared prefix's, their gradients, summed over the rows, are returned too (`[1,
    /// kv_heads, shared, head_dim]`, keys after RoPE); `extra` adds such gradients, from the
    /// rows that continue this layer's input, to its own keys and values.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_backward(
        &self,
        w: &Layer,
        keys: &Layer,
        s: &Saved,
        g: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        total: &mut GradStore,
        shared: usize,
        extra: Option<(Tensor, Tensor)>,
    ) -> Result<LayerGrads, Error> {
        let c = &self.config;
        let (b, t, h) = s.x.dims3()?;
        let n = b * t;
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / kvh;
        let eps = c.rms_norm_eps;
        let project = |total: &mut GradStore,
                       m: Module,
                       wt: &Tensor,
                       key: &Tensor,
                       x: &Tensor,
                       g: &Tensor| {
            let i = m.index();
            let low = w.adapters[i].as_ref().map(|a| LowRank {
                a: &a.a,
                b: &a.b,
                scale: a.scale,
            });
            let r = linear_grads(x, wt, low, g, key.is_variable())?;
            if let Some(dw) = r.w {
                accumulate(total, key, dw)?;
            }
            if let (Some((da, db)), Some(ak)) = (r.adapter, keys.adapters[i].as_ref()) {
                accumulate(total, &ak.a, da)?;
                accumulate(total, &ak.b, db)?;
            }
            Ok::<_, Error>(r.x)
        };
        // MLP: y = x_mid + down(swiglu(gate(hn2), up(hn2))).
        let g2 = g.reshape((n, h))?;
        let d_act = project(total, Module::Down, &w.down, &keys.down, &s.act, &g2)?;
        let (d_gate, d_up) = swiglu_grads(&s.gate, &s.up, &d_act)?;
        let d_hn2 = (project(total, Module::Gate, &w.gate, &keys.gate, &s.hn2, &d_gate)?
            + project(total, Module::Up, &w.up, &keys.up, &s.hn2, &d_up)?)?;
        let (dx, dw) = rms_norm_grads(
            &s.x_mid,
            &w.mlp_norm,
            &d_hn2.reshape((b, t, h))?,
            eps,
            keys.mlp_norm.is_variable(),
        )?;
        if let Some(dw) = dw {
            accumulate(total, &keys.mlp_norm, dw)?;
        }
        let d_mid = (g + dx)?;
        // Attention: x_mid = x + o(softmax(q·kᵀ · scale + mask) · v).
        let d_attn = project(
            total,
            Module::O,
            &w.o,
            &keys.o,
            &s.attn,
            &d_mid.reshape((n, h))?,
        )?
        .reshape((b, t, nh, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, kvh, rep * t, hd))?;
        let d_probs = d_attn.matmul(&s.v.t()?)?;
        let dv = s.probs.t()?.matmul(&d_attn)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let d_scores = attn_softmax_grad(&s.probs, &d_probs, scale)?;
        let dq = d_scores.matmul(&s.k)?.reshape((b, nh, t, hd))?;
        let dk = d_scores.t()?.matmul(&s.q)?;
        let (dk, dv, to_prefix) = split_shared(dk, dv, shared, t)?;
        let (dk, dv) = match extra {
            Some((ek, ev)) => ((dk + ek)?, (dv + ev)?),
            None => (dk, dv),
        };
        let mut dq = rope_grad(&dq, cos, sin)?.transpose(1, 2)?;
        let mut dk = rope_grad(&dk, cos, sin)?.transpose(1, 2)?;
        if let (Some((q_pre, k_pre)), Some(qn), Some(kn)) = (&s.pre_norm, &w.q_norm, &w.k_norm) {
            let (key_q, key_k) = (keys.q_norm.as_ref(), keys.k_norm.as_ref());
            let want_q = key_q.is_some_and(|k| k.is_variable());
            let want_k = key_k.is_some_and(|k| k.is_variable());
            let (dxq, dwq) = rms_norm_grads(q_pre, qn, &dq, eps, want_q)?;
            let (dxk, dwk) = rms_norm_grads(k_pre, kn, &dk, eps, want_k)?;
            if let (Some(dw), Some(key)) = (dwq, key_q) {
                accumulate(total, key, dw)?;
            }
            if let (Some(dw), Some(key)) = (dwk, key_k) {
                accumulate(total, key, dw)?;
            }
            (dq, dk) = (dxq, dxk);
        }
        let rows = |d: Tensor, heads: usize| d.contiguous()?.reshape((n, heads * hd));
        let (dq, dk, dv) = (
            rows(dq, nh)?,
            rows(dk, kvh)?,
            rows(dv.transpose(1, 2)?, kvh)?,
        );
        for (bias, d) in [
            (&keys.q_bias, &dq),
            (&keys.k_bias, &dk),
            (&keys.v_bias, &dv),
        ] {
            if let Some(bias) = bias.as_ref().filter(|b| b.is_variable()) {
                accumulate(total, bias, d.sum(0)?)?;
            }
        }
        let d_hn1 = ((project(total, Module::Q, &w.q, &keys.q, &s.hn1, &dq)?
            + project(total, Module::K, &w.k, &keys.k, &s.hn1, &dk)?)?
            + project(total, Module::V, &w.v, &keys.v, &s.hn1, &dv)?)?;
        let (dx, dw) = rms_norm_grads(
            &s.x,
            &w.attn_norm,
            &d_hn1.reshape((b, t, h))?,
            eps,
            keys.attn_norm.is_variable(),
        )?;
        if let Some(dw) = dw {
            accumulate(total, &keys.attn_norm, dw)?;
        }
        Ok(LayerGrads {
            x: (d_mid + dx)?,
            prefix: to_prefix,
        })
    }
}

/// A layer's backward pass's results.
pub(super) struct LayerGrads {
    /// The gradient at the layer's input.
    pub x: Tensor,
    /// The gradients of a shared prefix's keys and values, summed over the rows.
    pub prefix: Option<(Tensor, Tensor)>,
}

/// Splits the key and value gradients `[batch, kv_heads, shared + t, head_dim]` into the rows'
/// own `[batch, kv_heads, t, head_dim]` and the shared prefix's, summed over the rows (in f32).
#[allow(clippy::type_complexity)]
fn split_shared(
    dk: Tensor,
    dv: Tensor,
    shared: usize,
    t: usize,
) -> Result<(Tensor, Tensor, Option<(Tensor, Tensor)>), Error> {
    if shared == 0 {
        return Ok((dk, dv, None));
    }
    let part = |d: &Tensor| -> Result<(Tensor, Tensor), Error> {
        let prefix = d
            .narrow(2, 0, shared)?
            .to_dtype(DType::F32)?
            .sum_keepdim(0)?
            .to_dtype(d.dtype())?;
        Ok((prefix, d.narrow(2, shared, t)?.contiguous()?))
    };
    let (pk, dk) = part(&dk)?;
    let (pv, dv) = part(&dv)?;
    Ok((dk, dv, Some((pk, pv))))
}
