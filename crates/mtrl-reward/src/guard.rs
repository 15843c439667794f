//! Guards that run on scored batches and warn, with counts, when the reward looks wrong. None
//! changes a value.

use std::collections::BTreeMap;

use mtrl_core::Scored;
use serde::{Deserialize, Serialize};

/// Which guard spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// Rewards outside the expected range.
    OutOfRange,
    /// Episodes the reward scored higher than the strict evaluator did.
    RewardAboveEvaluation,
    /// Groups whose rewards are all equal: their advantages are zero.
    ZeroGroupVariance,
    /// Baseline rollouts whose rewards barely vary: too little signal to learn from.
    LowBaselineVariance,
}

/// A guard's warning: how many episodes (or groups) of how many, examples, and the breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardWarning {
    /// The guard.
    pub kind: GuardKind,
    /// What was seen, in words.
    pub message: String,
    /// How many episodes (groups, for group guards) were flagged.
    pub count: usize,
    /// Out of how many.
    pub total: usize,
    /// Up to five flagged episodes (`task#sample`) or groups.
    pub examples: Vec<String>,
    /// Counts by cause (for example the evaluator's failure kinds).
    pub breakdown: BTreeMap<String, usize>,
    /// Figures (largest gap, standard deviations…).
    pub figures: BTreeMap<String, f64>,
}

const EXAMPLES: usize = 5;

/// Thresholds of the guards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuardConfig {
    /// The range rewards must stay in (`[0, 1]`).
    pub range: (f64, f64),
    /// How far the reward may exceed the strict evaluation's score
    /// ([`Evaluation::score`](mtrl_core::Evaluation::score)) before it is flagged (0.1: room
    /// for a small format term).
    pub tolerance: f64,
    /// The least mean within-group standard deviation of baseline rewards worth training on
    /// (0.05).
    pub min_baseline_std: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            range: (0.0, 1.0),
            tolerance: 0.1,
            min_baseline_std: 0.05,
        }
    }
}

/// The batch guards.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Guards {
    config: GuardConfig,
}

impl Guards {
    /// Guards with these thresholds.
    pub fn new(config: GuardConfig) -> Self {
        Self { config }
    }

    /// The thresholds.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Runs the range, evaluator and group-variance guards on a scored training batch (see
    /// [`mtrl_core::score_groups`]).
    pub fn check_batch(&self, batch: &[Scored<'_>]) -> Vec<GuardWarning> {
        let mut out: Vec<GuardWarning> = self.range(batch).into_iter().collect();
        out.extend(self.above_evaluation(batch));
        out.extend(self.zero_group_variance(batch));
        out
    }

    /// Rewards outside the configured range (non-finite ones included).
    pub fn range(&self, batch: &[Scored<'_>]) -> Option<GuardWarning> {
        let (lo, hi) = self.config.range;
        let mut w = Flagged::default();
        for s in batch {
            let r = s.reward.total;
            let cause = if r.is_nan() {
                "nan"
            } else if r < lo {
                "below"
            } else if r > hi {
                "above"
            } else {
                continue;
            };
            w.flag(s.label(), cause);
            w.extreme("min", r, f64::min);
            w.extreme("max", r, f64::max);
        }
        w.finish(
            GuardKind::OutOfRange,
            batch.len(),
            format!("rewards outside [{lo}, {hi}]"),
        )
    }

    /// Episodes the reward scored more than `tolerance` above the strict evaluator's score, by
    /// the evaluator's failure kind: the signature of a reward that credits what the evaluation
    /// does not. Only the rows that carry an evaluation are compared, and counted.
    pub fn above_evaluation(&self, batch: &[Scored<'_>]) -> Option<GuardWarning> {
        let mut w = Flagged::default();
        let mut gaps = 0.0;
        let mut judged = 0;
        for s in batch {
            let Some(e) = &s.evaluation else { continue };
            judged += 1;
            let gap = s.reward.total - e.score();
            if gap > self.config.tolerance {
                let cause = match &e.failure {
                    Some(f) => f.kind.clone(),
                    None if e.success => "success".into(),
                    None => "unexplained".into(),
                };
                w.flag(s.label(), &cause);
                w.extreme("max_gap", gap, f64::max);
                gaps += gap;
            }
        }
        if w.count > 0 {
            w.figures.insert("mean_gap".into(), gaps / w.count as f64);
        }
        w.finish(
            GuardKind::RewardAboveEvaluation,
            judged,
            format!(
                "episodes the reward scored more than {} above the strict evaluator",
                self.config.tolerance
            ),
        )
    }

    /// Groups whose rewards are all equal, so every advantage is zero and they teach nothing.
    pub fn zero_group_variance(&self, batch: &[Scored<'_>]) -> Option<GuardWarning> {
        let groups = groups(batch);
        let mut w = Flagged::default();
        for (group, rewards) in &groups {
            if rewards.len() > 1 && rewards.iter().all(|r| *r == rewards[0]) {
                let cause = if rewards[0] == 0.0 {
                    "all_zero".to_string()
                } else if rewards[0] == self.config.range.1 {
                    "all_max".to_string()
                } else {
                    "all_equal".to_string()
                };
                w.flag(format!("group {group}"), &cause);
            }
        }
        w.finish(
            GuardKind::ZeroGroupVariance,
            groups.len(),
            "groups with zero reward variance (no learning signal)".into(),
        )
    }

    /// Checks baseline rollouts (the model before training) for a reward that barely varies
    /// within groups: the mean within-group standard deviation below `min_baseline_std` means
    /// group-relative advantages will be mostly zero.
    pub fn baseline_variance(&self, batch: &[Scored<'_>]) -> Option<GuardWarning> {
        let groups = groups(batch);
        let stds: Vec<f64> = groups
            .values()
            .filter(|g| g.len() > 1)
            .map(|g| std(g))
            .collect();
        if stds.is_empty() {
            return None;
        }
        let mean_std = stds.iter().sum::<f64>() / stds.len() as f64;
        if mean_std >= self.config.min_baseline_std {
            return None;
        }
        let all: Vec<f64> = batch.iter().map(|s| s.reward.total).collect();
        let flat = stds.iter().filter(|s| **s == 0.0).count();
        Some(GuardWarning {
            kind: GuardKind::LowBaselineVariance,
            message: format!(
                "baseline rewards barely vary within groups (mean std {mean_std:.4} < {}): \
                 too little signal to learn from; make the task easier, the reward denser, or \
                 the groups larger",
                self.config.min_baseline_std
            ),
            count: flat,
            total: stds.len(),
            examples: Vec::new(),
            breakdown: BTreeMap::from([("zero_variance_groups".to_string(), flat)]),
            figures: BTreeMap::from([
                ("mean_group_std".to_string(), mean_std),
                ("std".to_string(), std(&all)),
            ]),
        })
    }
}

fn groups(batch: &[Scored<'_>]) -> BTreeMap<usize, Vec<f64>> {
    let mut out: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for s in batch {
        out.entry(s.group).or_default().push(s.reward.total);
    }
    out
}

fn std(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Collects the flagged items of one guard.
#[derive(Default)]
struct Flagged {
    count: usize,
    examples: Vec<String>,
    breakdown: BTreeMap<String, usize>,
    figures: BTreeMap<String, f64>,
}

impl Flagged {
    fn flag(&mut self, label: String, cause: &str) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(label);
        }
        *self.breakdown.entry(cause.to_string()).or_default() += 1;
    }

    fn extreme(&mut self, name: &str, value: f64, pick: fn(f64, f64) -> f64) {
        if value.is_finite() {
            let v = self.figures.entry(name.to_string()).or_insert(value);
            *v = pick(*v, value);
        }
    }

    fn finish(self, kind: GuardKind, total: usize, what: String) -> Option<GuardWarning> {
        (self.count > 0).then(|| GuardWarning {
            kind,
            message: format!("{} of {total} {what}", self.count),
            count: self.count,
            total,
            examples: self.examples,
            breakdown: self.breakdown,
            figures: self.figures,
        })
    }
}
