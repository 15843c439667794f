//! Policy losses over the sampled tokens of a batch, flattened: one entry per trained token.
//!
//! Add your own by implementing [`PolicyLoss`]; the trainer hands it a [`LossBatch`] per
//! micro-batch and sums the gradients.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Error;

/// How per-token losses are averaged into the batch loss. Each turns into one weight per token
/// (see [`Aggregation::weights`]), so micro-batches of a step add up to the same loss as one big
/// batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Every token of the step counts the same: `Σ ℓ / tokens`.
    #[default]
    TokenMean,
    /// Each sequence's mean, averaged over sequences: `Σ_s (Σ_t ℓ / |s|) / sequences`.
    SequenceMean,
    /// Dr. GRPO's: `Σ ℓ / (sequences · L)` for a constant `L` (the generation budget), so
    /// long and short answers are not weighted differently per token.
    ConstantNorm(f64),
}

impl Aggregation {
    /// The weight of each token of each sequence, for a step whose sequences have `lengths`
    /// trained tokens. The weights of all tokens sum to 1 (token and sequence mean) or to
    /// `tokens / L` (constant norm).
    pub fn weights(&self, lengths: &[usize]) -> Vec<f64> {
        let tokens: usize = lengths.iter().sum();
        let seqs = lengths.iter().filter(|l| **l > 0).count().max(1) as f64;
        let mut out = Vec::with_capacity(tokens);
        for &len in lengths {
            let w = match *self {
                Aggregation::TokenMean => 1.0 / tokens.max(1) as f64,
                Aggregation::SequenceMean => 1.0 / (len.max(1) as f64 * seqs),
                Aggregation::ConstantNorm(l) => 1.0 / (l.max(1.0) * seqs),
            };
            out.extend(std::iter::repeat_n(w, len));
        }
        out
    }
}

/// The trained tokens of one micro-batch, each a 1-D tensor of the same length `N`.
pub struct LossBatch<'a> {
    /// The current policy's logprobs (differentiable).
    pub logprobs: &'a Tensor,
    /// The logprobs of the policy that sampled, as the trainer recomputes them before updating
    /// (or as stored at sampling, if recomputing is off): the PPO ratio's denominator.
    pub old_logprobs: &'a Tensor,
    /// The sampling distribution's logprobs (the stored behaviour logprobs where top-k/top-p
    /// truncated, else the stored policy logprobs), for the truncated importance weights.
    pub behaviour_logprobs: &'a Tensor,
    /// A frozen reference policy's logprobs, for a KL penalty.
    pub ref_logprobs: Option<&'a Tensor>,
    /// Each token's advantage (its sequence's).
    pub advantages: &'a Tensor,
    /// Each token's aggregation weight ([`Aggregation::weights`]).
    pub weights: &'a Tensor,
}

/// A loss and its statistics, each a sum over the micro-batch's tokens of `weight · value`
/// (so summing over micro-batches gives the step's weighted mean).
pub struct LossOutput {
    /// The scalar to differentiate.
    pub loss: Tensor,
    /// Named statistics (`pg_loss`, `clip_frac`, `ratio/mean`, `kl`, `tis/mean`, …).
    pub stats: BTreeMap<String, f64>,
}

/// A policy-gradient loss.
pub trait PolicyLoss: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// The micro-batch's loss.
    ///
    /// # Errors
    /// A tensor error.
    fn loss(&self, batch: &LossBatch<'_>) -> Result<LossOutput, Error>;
}

/// PPO's clipped surrogate against the old policy, with optional truncated importance sampling
/// (TIS) for a sampling distribution that differs from the policy, and an optional KL penalty
/// to a reference policy (the k3 estimator `exp(ref − new) − (ref − new) − 1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoClip {
    /// The ratio is clipped below at `1 − clip_low`.
    pub clip_low: f64,
    /// And above at `1 + clip_high` (above `clip_low` for DAPO's clip-higher).
    pub clip_high: f64,
    /// Truncated importance sampling: each token's loss is multiplied by
    /// `min(π_old / π_behaviour, cap)`. `None` for off.
    pub tis_cap: Option<f64>,
    /// The KL coefficient `β`; `0` for no KL term (no reference needed).
    pub kl_coef: f64,
}

impl Default for PpoClip {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.2,
            tis_cap: None,
            kl_coef: 0.0,
        }
    }
}

fn weighted_sum(values: &Tensor, weights: &Tensor) -> Result<f64, Error> {
    Ok((values.detach() * weights)?.sum_all()?.to_scalar::<f32>()? as f64)
}

impl PolicyLoss for PpoClip {
    fn name(&self) -> &str {
        "ppo_clip"
    }

    fn loss(&self, b: &LossBatch<'_>) -> Result<LossOutput, Error> {
        let log_ratio = (b.logprobs - b.old_logprobs)?;
        let ratio = log_ratio.exp()?;
        let clipped = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)?;
        let neg_adv = b.advantages.neg()?;
        let pg1 = (&ratio * &neg_adv)?;
        let pg2 = (&clipped * &neg_adv)?;
        let mut per_token = pg1.maximum(&pg2)?;
        let mut stats = BTreeMap::new();
        // A token is clipped when the clipped term is the one taken (and differs).
        let clip = pg2.gt(&pg1)?.to_dtype(candle_core::DType::F32)?;
        stats.insert("clip_frac".to_string(), weighted_sum(&clip, b.weights)?);
        stats.insert("ratio/mean".to_string(), weighted_sum(&ratio, b.weights)?);
        let max_ratio = ratio.detach().max(0)?.to_scalar::<f32>()? as f64;
        stats.insert("ratio/max".to_string(), max_ratio);
        let min_ratio = ratio.detach().min(0)?.to_scalar::<f32>()? as f64;
        stats.insert("ratio/min".to_string(), min_ratio);
        if let Some(cap) = self.tis_cap {
            let w = (b.old_logprobs - b.behaviour_logprobs)?
                .exp()?
                .clamp(0.0, cap)?
                .detach();
            stats.insert("tis/mean".to_string(), weighted_sum(&w, b.weights)?);
            per_token = (per_token * w)?;
        }
        stats.insert("pg_loss".to_string(), weighted_sum(&per_token, b.weights)?);
        if self.kl_coef != 0.0 {
            let reference = b.ref_logprobs.ok_or_else(|| {
                Error::TrainConfig("the KL term needs reference logprobs (kl_coef ≠ 0)".into())
            })?;
            let d = (reference - b.logprobs)?;
            let k3 = ((d.exp()? - &d)? - 1.0)?;
            stats.insert("kl".to_string(), weighted_sum(&k3, b.weights)?);
            per_token = (per_token + (k3 * self.kl_coef)?)?;
        }
        let loss = (per_token * b.weights)?.sum_all()?;
        stats.insert("loss".to_string(), loss.to_scalar::<f32>()? as f64);
        Ok(LossOutput { loss, stats })
    }
}

/// Masked next-token cross-entropy (supervised fine-tuning): `−Σ weight · logprob`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NextTokenNll;

impl PolicyLoss for NextTokenNll {
    fn name(&self) -> &str {
        "nll"
    }

    fn loss(&self, b: &LossBatch<'_>) -> Result<LossOutput, Error> {
        let loss = (b.logprobs.neg()? * b.weights)?.sum_all()?;
        let mut stats = BTreeMap::new();
        stats.insert("loss".to_string(), loss.to_scalar::<f32>()? as f64);
        Ok(LossOutput { loss, stats })
    }
}
