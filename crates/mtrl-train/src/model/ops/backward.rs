//! The ops' backward passes as plain functions, for a backward pass written by hand
//! (`model/backward.rs`) rather than walked by candle's autograd: the same kernels as the ops'
//! `bwd`, called directly on detached tensors, so that no zeroed gradient buffer is allocated
//! and summed into per graph node.

use candle_core::{Result, Tensor};

use super::{AttnSoftmaxGrad, RmsNormGradW, RmsNormGradX, Rope, SwigluGradOp};

/// The gradients of [`super::rms_norm`] with respect to `x` and, when `want_w`, its weight
/// `w`, given the output's gradient `g`.
pub(crate) fn rms_norm_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
    want_w: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (x, g) = (x.contiguous()?, g.contiguous()?);
    let eps = eps as f32;
    let dx = x.apply_op3_no_bwd(&w.contiguous()?, &g, &RmsNormGradX { eps })?;
    let dw = if want_w {
        let h = w.elem_count();
        Some(x.apply_op2_no_bwd(&g, &RmsNormGradW { eps, h })?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// The gradient of [`super::rope`]'s input: the inverse rotation of `g`.
pub(crate) fn rope_grad(g: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    g.contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &Rope { sign: -1.0 })
}

/// The gradient of [`super::attn_softmax`]'s scores from its output `probs` and the output's
/// gradient `g`.
pub(crate) fn attn_softmax_grad(probs: &Tensor, g: &Tensor, scale: f64) -> Result<Tensor> {
    probs.contiguous()?.apply_op2_no_bwd(
        &g.contiguous()?,
        &AttnSoftmaxGrad {
            scale: scale as f32,
        },
    )
}

/// Both gradients of [`super::swiglu`], `(gate's, up's)`, from one pass.
pub(crate) fn swiglu_grads(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let both =
        gate.contiguous()?
            .apply_op3_no_bwd(&up.contiguous()?, &g.contiguous()?, &SwigluGradOp)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// A LoRA adapter as the projection's backward pass reads it: `a [r, in]`, `b [out, r]`
/// (detached), and the scale.
pub(crate) struct LowRank<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
}

/// What the backward pass of a projection `y = x·wᵀ (+ scale · (x·aᵀ)·bᵀ)` returns.
pub(crate) struct ProjectionGrads {
    /// The input's gradient, in `x`'s dtype.
    pub x: Tensor,
    /// The weight's, when asked for.
    pub w: Option<Tensor>,
    /// The adapter's `(a, b)` gradients, in the adapter's dtype, when there is one.
    pub adapter: Option<(Tensor, Tensor)>,
}

/// The backward pass of the projection `y = x·wᵀ`, plus LoRA's `scale · (x·aᵀ)·bᵀ` with an
/// adapter, given `g = dL/dy [rows, out]`: `dx = g·w + scale · (g·b)·a`, `dw = gᵀ·x` (only
/// when `want_w`: LoRA's base is frozen), `da = scale · (g·b)ᵀ·x` and `db = scale · gᵀ·(x·aᵀ)`.
pub(crate) fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    adapter: Option<LowRank<'_>>,
    g: &Tensor,
    want_w: bool,
) -> Result<ProjectionGrads> {
    let mut dx = g.matmul(w)?;
    let dw = if want_w {
        Some(g.t()?.matmul(x)?)
    } else {
        None
    };
    let adapter = match adapter {
        None => None,
        Some(LowRank { a, b, scale }) => {
            // The adapter computes in its own dtype (f32), as the forward pass does.
            let (xa_dtype, ga) = (x.to_dtype(a.dtype())?, g.to_dtype(a.dtype())?);
            let gb = (ga.matmul(b)? * scale)?;
            dx = (dx + gb.matmul(a)?.to_dtype(x.dtype())?)?;
            let da = gb.t()?.matmul(&xa_dtype)?;
            let db = (ga.t()?.matmul(&xa_dtype.matmul(&a.t()?)?)? * scale)?;
            Some((da, db))
        }
    };
    Ok(ProjectionGrads {
        x: dx,
        w: dw,
        adapter,
    })
}
