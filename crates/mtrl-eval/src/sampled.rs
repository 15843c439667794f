//! Metrics over several samples per task: unbiased pass@k, mean@k, and bootstrap confidence
//! intervals over tasks.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::summary::EvalRecord;

/// The unbiased estimate of pass@k from `n` samples of which `c` succeeded: the chance that at
/// least one of `k` samples drawn without replacement succeeds, `1 - C(n-c, k) / C(n, k)`.
///
/// It is computed as `1 - Π_{i=n-c+1..=n} (1 - k/i)`, which stays exact in floating point for
/// any `n` (no large binomials).
///
/// ```
/// // 2 of 4 samples right: pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6.
/// assert_eq!(mtrl_eval::pass_at_k(4, 2, 1).unwrap(), 0.5);
/// assert!((mtrl_eval::pass_at_k(4, 2, 2).unwrap() - 5.0 / 6.0).abs() < 1e-12);
/// ```
///
/// # Errors
/// [`Error::InvalidSampling`] unless `1 <= k <= n` and `c <= n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Result<f64, Error> {
    check(n, c, k)?;
    if n - c < k {
        return Ok(1.0);
    }
    let none = ((n - c + 1)..=n).fold(1.0, |p, i| p * (1.0 - k as f64 / i as f64));
    Ok(1.0 - none)
}

/// mean@k: the expected share of successes among `k` samples, estimated without bias from all
/// `n` samples as `c / n` (every sample counts, so the estimate does not depend on which `k`).
///
/// # Errors
/// [`Error::InvalidSampling`] unless `1 <= k <= n` and `c <= n`.
pub fn mean_at_k(n: usize, c: usize, k: usize) -> Result<f64, Error> {
    check(n, c, k)?;
    Ok(c as f64 / n as f64)
}

fn check(n: usize, c: usize, k: usize) -> Result<(), Error> {
    if k == 0 || k > n {
        return Err(Error::InvalidSampling(format!(
            "k = {k} must be between 1 and the number of samples ({n})"
        )));
    }
    if c > n {
        return Err(Error::InvalidSampling(format!(
            "{c} successes out of {n} samples"
        )));
    }
    Ok(())
}

/// Samples and successes of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// The task's id.
    pub task_id: String,
    /// Samples judged.
    pub samples: usize,
    /// Samples that succeeded.
    pub successes: usize,
}

/// Groups judged episodes by task, in task-id order.
pub fn task_outcomes<'a>(records: impl IntoIterator<Item = &'a EvalRecord>) -> Vec<TaskOutcome> {
    let mut by_task: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in records {
        let entry = by_task.entry(&r.task_id).or_default();
        entry.0 += 1;
        entry.1 += usize::from(r.evaluation.success);
    }
    by_task
        .into_iter()
        .map(|(id, (samples, successes))| TaskOutcome {
            task_id: id.to_string(),
            samples,
            successes,
        })
        .collect()
}

/// How to resample for confidence intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Resamples of the task set (1,000 by default).
    pub resamples: usize,
    /// The interval's coverage, in (0, 1) (0.95 by default).
    pub confidence: f64,
    /// The seed of the resampling, so intervals are reproducible.
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            resamples: 1000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// A point estimate with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The mean over tasks.
    pub value: f64,
    /// The interval's lower end.
    pub low: f64,
    /// The interval's upper end.
    pub high: f64,
}

impl Bootstrap {
    /// The mean of `values` with a percentile interval from resampling them with replacement.
    ///
    /// # Errors
    /// [`Error::InvalidSampling`] for no values, no resamples, or a confidence outside (0, 1).
    pub fn estimate(&self, values: &[f64]) -> Result<Estimate, Error> {
        if values.is_empty() {
            return Err(Error::InvalidSampling("no values to estimate from".into()));
        }
        if self.resamples == 0 || !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(Error::InvalidSampling(format!(
                "bootstrap needs resamples > 0 and a confidence in (0, 1), got {} and {}",
                self.resamples, self.confidence
            )));
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut means: Vec<f64> = (0..self.resamples)
            .map(|_| {
                let total: f64 = (0..n)
                    .map(|_| values[((u128::from(rng.next_u64()) * n as u128) >> 64) as usize])
                    .sum();
                total / n as f64
            })
            .collect();
        means.sort_by(f64::total_cmp);
        let tail = (1.0 - self.confidence) / 2.0;
        Ok(Estimate {
            value: mean,
            low: quantile(&means, tail),
            high: quantile(&means, 1.0 - tail),
        })
    }
}

/// The `p` quantile of sorted values, interpolating linearly between ranks.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// pass@k and mean@k over tasks, with bootstrap intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampledMetrics {
    /// The k.
    pub k: usize,
    /// Tasks counted.
    pub tasks: usize,
    /// pass@k, the mean over tasks of each task's unbiased estimate.
    pub pass_at_k: Estimate,
    /// mean@k, the mean over tasks of each task's success share.
    pub mean_at_k: Estimate,
}

impl SampledMetrics {
    /// Computes pass@k and mean@k over `outcomes`, each task weighted equally.
    ///
    /// # Errors
    /// [`Error::InvalidSampling`] when a task has fewer than `k` samples, or as
    /// [`Bootstrap::estimate`].
    pub fn compute(
        outcomes: &[TaskOutcome],
        k: usize,
        bootstrap: &Bootstrap,
    ) -> Result<Self, Error> {
        let per_task = |f: fn(usize, usize, usize) -> Result<f64, Error>| {
            outcomes
                .iter()
                .map(|o| {
                    f(o.samples, o.successes, k).map_err(|e| match e {
                        Error::InvalidSampling(why) => {
                            Error::InvalidSampling(format!("task {}: {why}", o.task_id))
                        }
                        other => other,
                    })
                })
                .collect::<Result<Vec<f64>, Error>>()
        };
        Ok(Self {
            k,
            tasks: outcomes.len(),
            pass_at_k: bootstrap.estimate(&per_task(pass_at_k)?)?,
            mean_at_k: bootstrap.estimate(&per_task(mean_at_k)?)?,
        })
    }
}
