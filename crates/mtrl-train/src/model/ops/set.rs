//! Which implementation of the layer's ops a model runs, chosen in one place.

use candle_core::{Result, Tensor};

use super::{attn_softmax, linear, picked_log_softmax, reference, rms_norm, rope, swiglu};

/// Which implementation of the layer's ops a model runs: the fused ops of this module, or the
/// composed [`reference`] that they are tested against. The one place that chooses between
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpSet {
    /// The fused ops (which fall back to the reference where they have no kernel).
    Fused,
    /// The composed reference ops.
    Reference,
}

impl OpSet {
    /// [`linear`] or [`reference::linear`].
    pub(crate) fn linear(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            OpSet::Fused => linear(x, w),
            OpSet::Reference => reference::linear(x, w),
        }
    }

    /// [`rms_norm`] or [`reference::rms_norm`], in `x`'s dtype.
    pub(crate) fn rms_norm(self, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        match self {
            OpSet::Fused => rms_norm(x, w, eps),
            OpSet::Reference => reference::rms_norm(x, w, eps, x.dtype()),
        }
    }

    /// [`rope`] or [`reference::rope`].
    pub(crate) fn rope(self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self {
            OpSet::Fused => rope(x, cos, sin),
            OpSet::Reference => reference::rope(x, cos, sin),
        }
    }

    /// [`attn_softmax`] or [`reference::attn_softmax`].
    pub(crate) fn attn_softmax(
        self,
        scores: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        match self {
            OpSet::Fused => attn_softmax(scores, mask, scale),
            OpSet::Reference => reference::attn_softmax(scores, mask, scale),
        }
    }

    /// [`picked_log_softmax`] or [`reference::picked_log_softmax`].
    pub(crate) fn picked_log_softmax(self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        match self {
            OpSet::Fused => picked_log_softmax(logits, targets),
            OpSet::Reference => reference::picked_log_softmax(logits, targets),
        }
    }

    /// [`swiglu`] or [`reference::swiglu`].
    pub(crate) fn swiglu(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            OpSet::Fused => swiglu(gate, up),
            OpSet::Reference => reference::swiglu(gate, up),
        }
    }
}

/// The attention probabilities for decoding, which needs no backward pass: the fused op on the
/// CPU, and elsewhere candle's fused last-dimension softmax (f32 accumulation) of the scaled
/// and masked scores.
pub(crate) fn attn_softmax_infer(
    scores: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if scores.device().is_cpu() {
        return attn_softmax(scores, mask, scale);
    }
    candle_nn::ops::softmax_last_dim(&reference::scale_and_mask(scores, mask, scale)?.contiguous()?)
}
