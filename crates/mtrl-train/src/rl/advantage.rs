//! Advantage estimators: one reward per sample of a group in, one advantage per sample out.
//!
//! Add your own by implementing [`AdvantageEstimator`]; the trainer only calls it per group.

use serde::{Deserialize, Serialize};

/// Turns the rewards of one group (samples of the same task) into advantages.
pub trait AdvantageEstimator: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// One advantage per reward, in order. Called only for groups whose rewards differ (see
    /// [`has_variance`]); a group of one sample has no baseline, so estimators may return zeros.
    fn advantages(&self, rewards: &[f64]) -> Vec<f64>;
}

/// Whether a group's rewards differ at all (by more than 1e-12). Groups without variance carry
/// no learning signal under group-relative estimators and are filtered out and counted.
pub fn has_variance(rewards: &[f64]) -> bool {
    let (lo, hi) = rewards
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    rewards.len() > 1 && hi - lo > 1e-12
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// GRPO: `(r − mean) / (std + eps)`, with the sample standard deviation (`n − 1`), as DeepSeekMath
/// describes and TRL and verl compute it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Grpo {
    /// Added to the standard deviation.
    pub eps: f64,
}

impl Default for Grpo {
    fn default() -> Self {
        Self { eps: 1e-6 }
    }
}

impl AdvantageEstimator for Grpo {
    fn name(&self) -> &str {
        "grpo"
    }

    fn advantages(&self, rewards: &[f64]) -> Vec<f64> {
        let n = rewards.len();
        if n < 2 {
            return vec![0.0; n];
        }
        let m = mean(rewards);
        let var = rewards.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = var.sqrt();
        rewards.iter().map(|r| (r - m) / (std + self.eps)).collect()
    }
}

/// Dr. GRPO ("GRPO done right"): `r − mean`, without the division by the standard deviation
/// (pair it with [`Aggregation::ConstantNorm`](super::Aggregation::ConstantNorm) to drop the
/// length normalisation too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DrGrpo;

impl AdvantageEstimator for DrGrpo {
    fn name(&self) -> &str {
        "dr_grpo"
    }

    fn advantages(&self, rewards: &[f64]) -> Vec<f64> {
        if rewards.len() < 2 {
            return vec![0.0; rewards.len()];
        }
        let m = mean(rewards);
        rewards.iter().map(|r| r - m).collect()
    }
}

/// RLOO: each sample's baseline is the mean reward of the other samples of its group,
/// `r_i − (Σ_j r_j − r_i) / (n − 1)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rloo;

impl AdvantageEstimator for Rloo {
    fn name(&self) -> &str {
        "rloo"
    }

    fn advantages(&self, rewards: &[f64]) -> Vec<f64> {
        let n = rewards.len();
        if n < 2 {
            return vec![0.0; n];
        }
        let sum: f64 = rewards.iter().sum();
        rewards
            .iter()
            .map(|r| r - (sum - r) / (n - 1) as f64)
            .collect()
    }
}

/// The built-in estimators by name, for configuration files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// [`Grpo`].
    #[default]
    Grpo,
    /// [`DrGrpo`].
    DrGrpo,
    /// [`Rloo`].
    Rloo,
}

impl Estimator {
    /// The estimator.
    pub fn build(self) -> Box<dyn AdvantageEstimator> {
        match self {
            Estimator::Grpo => Box::new(Grpo::default()),
            Estimator::DrGrpo => Box::new(DrGrpo),
            Estimator::Rloo => Box::new(Rloo),
        }
    }
}
