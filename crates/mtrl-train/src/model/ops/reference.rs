//! The fused ops composed of ordinary, differentiable tensor ops: the reference the fused ops
//! are tested against, and what runs on devices without fused kernels.

use candle_core::{D, DType, Result, Tensor};

/// `x [rows, in] · wᵀ`.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

/// RMS norm over the last dimension in f32, rounded to `dtype`, times `w`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, dtype: DType) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .broadcast_mul(w)
}

/// Rotate-half RoPE on `[batch, heads, time, head_dim]` with tables `[batch, time, head_dim/2]`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// `softmax(scores · scale + mask)` in f32, rounded to the scores' dtype; `scores [batch,
/// kv_heads, rep · t, kv]`, `mask [batch, t, kv]`.
pub(crate) fn attn_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let dtype = scores.dtype();
    let scores = scale_and_mask(scores, mask, scale)?;
    candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)
}

/// `scores · scale + mask`, the mask `[batch, t, kv]` shared by the `rep` query heads stacked
/// along time in `scores [batch, kv_heads, rep · t, kv]`.
pub(crate) fn scale_and_mask(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, kvh, rows, kv) = scores.dims4()?;
    let scores = (scores * scale)?;
    match mask {
        Some(m) => {
            let t = m.dim(1)?;
            scores
                .reshape((b, kvh, rows / t, t, kv))?
                .broadcast_add(&m.reshape((b, 1, 1, t, kv))?)?
                .reshape((b, kvh, rows, kv))
        }
        None => Ok(scores),
    }
}

/// `silu(gate) · up`.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `[n, 3]`: per row of `logits [n, vocab]`, the log-probability of the row's target among
/// `targets [n]`, the distribution's entropy, and the log-sum-exp.
pub(crate) fn picked_log_softmax(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let chosen = logp.gather(&targets.unsqueeze(1)?, 1)?;
    let entropy = (logp.exp()? * &logp)?.sum_keepdim(1)?.neg()?;
    let lse = (logits.narrow(1, 0, 1)? - logp.narrow(1, 0, 1)?)?;
    Tensor::cat(&[chosen, entropy, lse], 1)
}

/// LoRA's update `(scale · x · aᵀ) · bᵀ`, computed in the adapter's dtype and returned in
/// `dtype`.
pub(crate) fn lora_delta(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dtype: DType,
) -> Result<Tensor> {
    // The scale applies to the rank-wide product, the smallest tensor of the chain.
    let low = (x.to_dtype(a.dtype())?.matmul(&a.t()?)? * scale)?;
    low.matmul(&b.t()?)?.to_dtype(dtype)
}
