//! [`StepMetrics`]: the record of one training step, under the names practitioners expect.

use std::collections::{BTreeMap, HashMap};

use mtrl_core::{Evaluation, Scored, StopReason, Trajectory};
use serde::{Deserialize, Serialize};

use crate::sampled::SampledMetrics;
use crate::summary::{EvalRecord, Summary};

/// The metric names. Fractions are in [0, 1] and count episodes unless said otherwise.
pub mod names {
    /// Mean reward of the step's rollouts.
    pub const REWARD_MEAN: &str = "rollout/reward/mean";
    /// Mean reward over the groups that carry a learning signal (rewards not all equal, so
    /// non-zero advantages). Drifting below [`REWARD_MEAN`] says that the groups that could
    /// teach are the failing ones, and training stalls: denser rewards are the cure.
    pub const REWARD_VALID_MEAN: &str = "rollout/reward/valid_mean";
    /// The longest response (tokens one turn generated) of the step. When more than 5% of the
    /// rollouts hit the sampling limit ([`TRUNCATED_FRAC`]), raise it.
    pub const RESPONSE_TOKENS_MAX: &str = "rollout/tokens/response_max";
    /// Standard deviation of the rollouts' rewards.
    pub const REWARD_STD: &str = "rollout/reward/std";
    /// Share of rollouts with a reward of exactly 0.
    pub const REWARD_ZERO_FRAC: &str = "rollout/reward/zero_frac";
    /// Mean turns per episode.
    pub const TURNS_MEAN: &str = "rollout/turns/mean";
    /// Share of episodes cut by a token budget or the context window.
    pub const TRUNCATED_FRAC: &str = "rollout/truncated_frac";
    /// Share of episodes stopped by the turn limit.
    pub const MAX_TURNS_FRAC: &str = "rollout/max_turns_frac";
    /// Share of episodes that failed (environment or agent error, timeout, abort).
    pub const FAILED_FRAC: &str = "rollout/failed_frac";
    /// Mean tool calls per episode.
    pub const TOOL_CALLS_MEAN: &str = "rollout/tool_calls/mean";
    /// Share of tool calls with a reported outcome that failed.
    pub const TOOL_ERROR_FRAC: &str = "rollout/tool_calls/error_frac";
    /// Share of episodes that answered with fewer successful tool calls than is usual for the
    /// task (see [`UsualToolUse`](super::UsualToolUse)).
    pub const ANSWER_EARLY_FRAC: &str = "rollout/answer_early_frac";
    /// Share of episodes that answered without any successful tool call.
    pub const ANSWER_NO_TOOL_FRAC: &str = "rollout/answer_no_tool_frac";
    /// Share of answered episodes whose answer the strict evaluator could parse.
    pub const FORMAT_FRAC: &str = "rollout/format_frac";
    /// Strict task success rate of the training rollouts.
    pub const TSR: &str = "rollout/tsr";
    /// Mean of reward minus the strict evaluation's score
    /// ([`Evaluation::score`](mtrl_core::Evaluation::score)).
    pub const REWARD_EVAL_GAP: &str = "rollout/reward_eval_gap";
    /// Share of groups whose rewards are all equal: no advantage, no learning signal.
    pub const ZERO_ADV_GROUPS: &str = "analysis/zero_adv_groups";
    /// Mean reward of the validation episodes.
    pub const VAL_REWARD_MEAN: &str = "val/reward/mean";
    /// Validation task success rate (strict evaluator).
    pub const VAL_TSR: &str = "val/tsr";
    /// Validation execution completion rate.
    pub const VAL_ECR: &str = "val/ecr";
    /// Validation conditional TSR (TSR / ECR).
    pub const VAL_C_TSR: &str = "val/c_tsr";
    /// Validation tool accuracy.
    pub const VAL_TOOL_ACCURACY: &str = "val/tool_accuracy";
    /// The prefix of each reward component's mean: `rollout/reward/component/<name>`.
    pub const REWARD_COMPONENT_PREFIX: &str = "rollout/reward/component/";
    /// The training loss of the step (weighted over its updates' tokens).
    pub const TRAIN_LOSS: &str = "train/loss";
    /// The global gradient norm before clipping (mean over the step's updates).
    pub const TRAIN_GRAD_NORM: &str = "train/grad_norm";
    /// The policy's mean entropy over trained tokens.
    pub const TRAIN_ENTROPY: &str = "train/entropy";
    /// KL(rollout ‖ trainer) over trained tokens (k3 estimator): how far the logprobs the
    /// sampler stored are from what the training forward computes for the same weights.
    pub const TRAIN_MISMATCH_KL: &str = "train/mismatch_kl";
    /// The largest |rollout − trainer| logprob difference of a trained token.
    pub const TRAIN_MISMATCH_MAX: &str = "train/mismatch_max";
    /// Share of trained tokens whose PPO ratio was clipped.
    pub const TRAIN_CLIP_FRAC: &str = "train/clip_frac";
    /// The largest PPO ratio of the step.
    pub const TRAIN_RATIO_MAX: &str = "train/ratio_max";
    /// The smallest PPO ratio of the step.
    pub const TRAIN_RATIO_MIN: &str = "train/ratio_min";
    /// The KL to the reference policy (when the loss has one).
    pub const TRAIN_KL: &str = "train/kl";
    /// The learning rate of the step's last update.
    pub const TRAIN_LR: &str = "train/lr";
    /// Trained (sampled, unmasked) tokens in the step.
    pub const TRAIN_TOKENS: &str = "train/tokens";
    /// Tokens through the training forward per second of update time.
    pub const TRAIN_TOKENS_PER_S: &str = "train/tokens_per_s";
    /// Groups dropped because a rollout failed (environment or agent error, timeout) or could
    /// not be scored.
    pub const TRAIN_DROPPED_GROUPS: &str = "train/dropped_groups";
    /// Episodes rerun in a fresh environment after a failed attempt (each retry counts once);
    /// the failed attempts are never trained on.
    pub const TRAIN_RETRIED_EPISODES: &str = "train/retried_episodes";
    /// Groups left out because all their rewards were equal.
    pub const TRAIN_ZERO_VAR_GROUPS: &str = "train/zero_var_groups";
    /// Updates skipped because the loss or a gradient was NaN or infinite.
    pub const TRAIN_SKIPPED_UPDATES: &str = "train/skipped_updates";
    /// Seconds spent rolling out.
    pub const TIME_ROLLOUT: &str = "time/rollout_s";
    /// Seconds spent scoring (rewards and evaluations).
    pub const TIME_REWARD: &str = "time/reward_s";
    /// Seconds spent updating (forward, backward, optimiser).
    pub const TIME_UPDATE: &str = "time/update_s";

    /// The name of a reward component's mean.
    pub fn reward_component(component: &str) -> String {
        format!("{REWARD_COMPONENT_PREFIX}{component}")
    }

    /// The name of validation pass@k for this k: `val/pass@4`.
    pub fn val_pass_at(k: usize) -> String {
        format!("val/pass@{k}")
    }

    /// The name of validation mean@k for this k: `val/mean@4`.
    pub fn val_mean_at(k: usize) -> String {
        format!("val/mean@{k}")
    }
}

/// The metrics of one training step: named values, and the distribution of turns per episode.
///
/// Serialized flat, one JSON object per step:
/// `{"step": 3, "rollout/reward/mean": 0.42, …, "rollout/turns/hist": [0, 5, 11, 2]}`.
/// An undefined value (no episodes, no tool calls) is absent rather than NaN.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The training step.
    pub step: u64,
    /// Episodes per number of turns: `turns[i]` episodes took `i` turns.
    #[serde(
        rename = "rollout/turns/hist",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub turns: Vec<usize>,
    /// The values, by name.
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
}

impl StepMetrics {
    /// An empty record for `step`.
    pub fn new(step: u64) -> Self {
        Self {
            step,
            ..Self::default()
        }
    }

    /// Sets a value. A non-finite value is not recorded (JSON has no NaN): it returns false.
    pub fn set(&mut self, name: impl Into<String>, value: f64) -> bool {
        if value.is_finite() {
            self.values.insert(name.into(), value);
        }
        value.is_finite()
    }

    /// A value, if recorded.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Records the step's training rollouts: rewards and components, turns, stops, tool use,
    /// early answers, zero-advantage groups, and (where evaluations are given) the answer-format
    /// rate, strict TSR and the reward-evaluation gap.
    pub fn record_rollouts(&mut self, rollouts: &[Scored<'_>], usual: &UsualToolUse) {
        if rollouts.is_empty() {
            return;
        }
        let n = rollouts.len() as f64;
        let frac = |pred: &dyn Fn(&Scored<'_>) -> bool| {
            rollouts.iter().filter(|r| pred(r)).count() as f64 / n
        };
        let rewards: Vec<f64> = rollouts.iter().map(|r| r.reward.total).collect();
        let mean = rewards.iter().sum::<f64>() / n;
        let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
        self.set(names::REWARD_MEAN, mean);
        self.set(names::REWARD_STD, var.sqrt());
        self.set(names::REWARD_ZERO_FRAC, frac(&|r| r.reward.total == 0.0));

        let mut components: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for r in rollouts {
            for (name, value) in &r.reward.components {
                let c = components.entry(name).or_default();
                c.0 += value;
                c.1 += 1;
            }
        }
        for (name, (sum, count)) in components {
            self.set(names::reward_component(name), sum / count as f64);
        }

        let turns: Vec<usize> = rollouts.iter().map(|r| r.trajectory.turns.len()).collect();
        self.set(names::TURNS_MEAN, turns.iter().sum::<usize>() as f64 / n);
        self.turns = vec![0; turns.iter().max().map_or(0, |m| m + 1)];
        for t in turns {
            self.turns[t] += 1;
        }
        self.set(
            names::TRUNCATED_FRAC,
            frac(&|r| r.trajectory.stop.is_truncation()),
        );
        self.set(
            names::MAX_TURNS_FRAC,
            frac(&|r| r.trajectory.stop == StopReason::MaxTurns),
        );
        self.set(
            names::FAILED_FRAC,
            frac(&|r| r.trajectory.stop.is_failure()),
        );

        // Each episode's tool outcomes, read once from its steps.
        let outcomes: Vec<mtrl_core::ToolOutcomes> = rollouts
            .iter()
            .map(|r| r.trajectory.tool_outcomes())
            .collect();
        let mut tools = mtrl_core::ToolOutcomes::default();
        for o in &outcomes {
            tools += *o;
        }
        self.set(names::TOOL_CALLS_MEAN, tools.calls as f64 / n);
        if let Some(acc) = tools.accuracy() {
            self.set(names::TOOL_ERROR_FRAC, 1.0 - acc);
        }
        let answered_with = |pred: &dyn Fn(&Scored<'_>, usize) -> bool| {
            rollouts
                .iter()
                .zip(&outcomes)
                .filter(|(r, o)| answered(r.trajectory) && pred(r, o.ok))
                .count() as f64
                / n
        };
        self.set(names::ANSWER_NO_TOOL_FRAC, answered_with(&|_, ok| ok == 0));
        self.set(
            names::ANSWER_EARLY_FRAC,
            answered_with(&|r, ok| usual.below_usual(&r.trajectory.task_id, ok)),
        );

        let mut groups: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for r in rollouts {
            groups.entry(r.group).or_default().push(r.reward.total);
        }
        let flat = groups
            .values()
            .filter(|g| g.iter().all(|v| *v == g[0]))
            .count();
        self.set(names::ZERO_ADV_GROUPS, flat as f64 / groups.len() as f64);
        let (mut valid_sum, mut valid_n) = (0.0, 0usize);
        for g in groups.values().filter(|g| g.iter().any(|v| *v != g[0])) {
            valid_sum += g.iter().sum::<f64>();
            valid_n += g.len();
        }
        if valid_n > 0 {
            self.set(names::REWARD_VALID_MEAN, valid_sum / valid_n as f64);
        }
        let response_max = rollouts
            .iter()
            .flat_map(|r| &r.trajectory.turns)
            .filter_map(|t| {
                t.tokens_used
                    .or_else(|| t.tokens.as_ref().map(|k| k.sampled_ids().len()))
            })
            .max();
        if let Some(m) = response_max {
            self.set(names::RESPONSE_TOKENS_MAX, m as f64);
        }

        let judged: Vec<(&Scored<'_>, &Evaluation)> = rollouts
            .iter()
            .filter_map(|r| r.evaluation.as_ref().map(|e| (r, e)))
            .collect();
        if !judged.is_empty() {
            let m = judged.len() as f64;
            self.set(
                names::TSR,
                judged.iter().filter(|(_, e)| e.success).count() as f64 / m,
            );
            self.set(
                names::REWARD_EVAL_GAP,
                judged
                    .iter()
                    .map(|(r, e)| r.reward.total - e.score())
                    .sum::<f64>()
                    / m,
            );
            let answered: Vec<&Evaluation> = judged
                .iter()
                .filter(|(r, _)| answered(r.trajectory))
                .map(|(_, e)| *e)
                .collect();
            if !answered.is_empty() {
                self.set(
                    names::FORMAT_FRAC,
                    answered.iter().filter(|e| e.completed).count() as f64 / answered.len() as f64,
                );
            }
        }
    }

    /// Records a validation pass: TSR, ECR, C-TSR and tool accuracy from the judged episodes,
    /// the mean of their rewards if given, and pass@k and mean@k if given.
    pub fn record_validation(
        &mut self,
        records: &[EvalRecord],
        rewards: Option<&[f64]>,
        sampled: Option<&SampledMetrics>,
    ) {
        if !records.is_empty() {
            let summary = Summary::from_records(records);
            let m = &summary.overall;
            self.set(names::VAL_TSR, m.tsr());
            self.set(names::VAL_ECR, m.ecr());
            if let Some(v) = m.c_tsr() {
                self.set(names::VAL_C_TSR, v);
            }
            if let Some(v) = m.tool_accuracy() {
                self.set(names::VAL_TOOL_ACCURACY, v);
            }
        }
        if let Some(rewards) = rewards.filter(|r| !r.is_empty()) {
            self.set(
                names::VAL_REWARD_MEAN,
                rewards.iter().sum::<f64>() / rewards.len() as f64,
            );
        }
        if let Some(s) = sampled {
            self.set(names::val_pass_at(s.k), s.pass_at_k.value);
            self.set(names::val_mean_at(s.k), s.mean_at_k.value);
        }
    }
}

fn answered(t: &Trajectory) -> bool {
    t.stop == StopReason::Answered && t.error.is_none()
}

/// How many successful tool calls each task usually takes, to tell an early answer.
///
/// Without a baseline, an episode answers early when it answers without any successful tool
/// call. With one ([`UsualToolUse::from_baseline`]), it answers early when it has fewer
/// successful calls than the median of the task's baseline episodes that succeeded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsualToolUse {
    per_task: HashMap<String, f64>,
}

impl UsualToolUse {
    /// No baseline: only answers without any successful tool call are early.
    pub fn none() -> Self {
        Self::default()
    }

    /// Learns the usual number of successful tool calls per task from baseline episodes (the
    /// base model's, or reference solutions) with their strict evaluations: the median over the
    /// episodes that succeeded.
    pub fn from_baseline<'a>(
        episodes: impl IntoIterator<Item = (&'a Trajectory, &'a Evaluation)>,
    ) -> Self {
        let mut calls: HashMap<String, Vec<usize>> = HashMap::new();
        for (t, e) in episodes {
            if e.success {
                calls
                    .entry(t.task_id.clone())
                    .or_default()
                    .push(t.tool_outcomes().ok);
            }
        }
        let per_task = calls
            .into_iter()
            .map(|(task, mut c)| {
                c.sort_unstable();
                let mid = c.len() / 2;
                let median = if c.len() % 2 == 1 {
                    c[mid] as f64
                } else {
                    (c[mid - 1] + c[mid]) as f64 / 2.0
                };
                (task, median)
            })
            .collect();
        Self { per_task }
    }

    /// The usual number of successful tool calls for a task, if known.
    pub fn usual(&self, task_id: &str) -> Option<f64> {
        self.per_task.get(task_id).copied()
    }

    /// Whether `trajectory` answered with fewer successful tool calls than usual.
    pub fn is_early(&self, trajectory: &Trajectory) -> bool {
        answered(trajectory) && self.below_usual(&trajectory.task_id, trajectory.tool_outcomes().ok)
    }

    /// Whether `ok` successful calls are fewer than usual for the task (1 without a baseline).
    fn below_usual(&self, task_id: &str, ok: usize) -> bool {
        (ok as f64) < self.usual(task_id).unwrap_or(1.0)
    }
}
