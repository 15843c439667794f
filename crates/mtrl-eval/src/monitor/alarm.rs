//! [`HackingAlarm`]: watches the metric trends of a run and warns, with evidence, when the
//! reward looks hacked or the policy collapses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::step::{StepMetrics, names};

/// What kind of hacking pattern an alarm saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// The training reward rises while the strict task success rate stays flat or falls.
    RewardWithoutSuccess,
    /// The share of answers in the strict format fell from its best level.
    FormatDrift,
    /// Tool calls per episode blew up against the start of the run.
    ToolSpam,
    /// Episodes answer with fewer successful tool calls than usual, more often than at the
    /// start of the run.
    EarlyAnswers,
    /// Validation success fell far below its best so far, or a behaviour share (answers
    /// without tools, episodes out of turns or tokens, failures) jumped within a few steps.
    Collapse,
}

impl AlarmKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::RewardWithoutSuccess => "reward_without_success",
            AlarmKind::FormatDrift => "format_drift",
            AlarmKind::ToolSpam => "tool_spam",
            AlarmKind::EarlyAnswers => "early_answers",
            AlarmKind::Collapse => "collapse",
        }
    }
}

/// A warning, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// The pattern.
    pub kind: AlarmKind,
    /// The step at which it was seen (the last step of the history checked).
    pub step: u64,
    /// What was seen, in words.
    pub message: String,
    /// The figures it rests on, by name.
    pub evidence: BTreeMap<String, f64>,
}

/// Thresholds of the [`HackingAlarm`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlarmConfig {
    /// Steps averaged for "now" and for "the start" (10).
    pub window: usize,
    /// How much the mean reward must rise between the two windows to count as rising (0.1).
    pub min_reward_rise: f64,
    /// TSR counts as flat when it gains no more than this meanwhile (0.02).
    pub max_tsr_gain: f64,
    /// How far the format rate may fall from its best window (0.15).
    pub max_format_drop: f64,
    /// Tool calls per episode count as spam at this multiple of the start… (2.0)
    pub tool_spam_factor: f64,
    /// …and at least this many more calls per episode (2.0).
    pub tool_spam_min_increase: f64,
    /// How much the early-answer rate may rise over the start (0.2).
    pub max_early_rise: f64,
    /// How far validation TSR may fall below its best earlier point (0.25).
    pub max_val_drop: f64,
    /// Steps averaged for a behaviour share's "now" in the collapse check (3).
    pub jump_window: usize,
    /// How much a behaviour share may rise, from the `window` steps before to the last
    /// `jump_window` (0.3).
    pub max_share_jump: f64,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        Self {
            window: 10,
            min_reward_rise: 0.1,
            max_tsr_gain: 0.02,
            max_format_drop: 0.15,
            tool_spam_factor: 2.0,
            tool_spam_min_increase: 2.0,
            max_early_rise: 0.2,
            max_val_drop: 0.25,
            jump_window: 3,
            max_share_jump: 0.3,
        }
    }
}

/// Watches a run's [`StepMetrics`] for the signs of reward hacking:
///
/// - **reward without success**: `rollout/reward/mean` rises by `min_reward_rise` or more
///   between the earlier and the recent window while validation TSR (`val/tsr`, or the training
///   rollouts' strict `rollout/tsr` when no validation ran) gains no more than `max_tsr_gain`;
/// - **format drift**: `rollout/format_frac`, averaged over a window, falls `max_format_drop` or
///   more below its best earlier window;
/// - **tool spam**: `rollout/tool_calls/mean` in the recent window reaches `tool_spam_factor`
///   times the first window and `tool_spam_min_increase` more calls;
/// - **early answers**: `rollout/answer_early_frac` in the recent window rises
///   `max_early_rise` or more over the first window;
/// - **collapse**: the last `val/tsr` point is `max_val_drop` or more below the best earlier
///   one; or a behaviour share (`rollout/answer_no_tool_frac`, `rollout/max_turns_frac`,
///   `rollout/truncated_frac`, `rollout/failed_frac`), averaged over the last `jump_window`
///   steps, is `max_share_jump` or more above its mean over the `window` steps before. A run
///   that recovers afterwards still raised it: [`HackingAlarm::scan`] keeps when.
///
/// The earlier and recent windows are the last `2 × window` steps split in two, or the whole
/// history split in halves when it is shorter (at least four steps). The alarm never changes a
/// value; it only reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HackingAlarm {
    config: AlarmConfig,
}

impl HackingAlarm {
    /// An alarm with these thresholds.
    pub fn new(config: AlarmConfig) -> Self {
        Self { config }
    }

    /// The thresholds.
    pub fn config(&self) -> &AlarmConfig {
        &self.config
    }

    /// The alarms raised by the history as of its last step.
    pub fn check(&self, history: &[StepMetrics]) -> Vec<Alarm> {
        let Some(last) = history.last() else {
            return Vec::new();
        };
        [
            self.reward_without_success(history),
            self.format_drift(history),
            self.tool_spam(history),
            self.early_answers(history),
            self.collapse(history),
        ]
        .into_iter()
        .flatten()
        .map(|(kind, message, evidence)| Alarm {
            kind,
            step: last.step,
            message,
            evidence,
        })
        .collect()
    }

    /// Checks every prefix of the history and returns the first alarm of each kind, in step
    /// order: when each pattern was first seen.
    pub fn scan(&self, history: &[StepMetrics]) -> Vec<Alarm> {
        let mut seen = BTreeMap::new();
        for end in 1..=history.len() {
            for alarm in self.check(&history[..end]) {
                seen.entry(alarm.kind).or_insert(alarm);
            }
        }
        let mut out: Vec<Alarm> = seen.into_values().collect();
        out.sort_by_key(|a| a.step);
        out
    }

    /// The earlier and the recent window of steps.
    fn windows<'h>(
        &self,
        history: &'h [StepMetrics],
    ) -> Option<(&'h [StepMetrics], &'h [StepMetrics])> {
        let w = self.config.window.max(1);
        if history.len() >= 2 * w {
            let tail = &history[history.len() - 2 * w..];
            Some(tail.split_at(w))
        } else if history.len() >= 4 {
            Some(history.split_at(history.len() / 2))
        } else {
            None
        }
    }

    fn reward_without_success(&self, history: &[StepMetrics]) -> Option<Finding> {
        let (earlier, recent) = self.windows(history)?;
        let before = mean_of(earlier, names::REWARD_MEAN)?;
        let after = mean_of(recent, names::REWARD_MEAN)?;
        let rise = after - before;
        if rise < self.config.min_reward_rise {
            return None;
        }
        // Validation runs every few steps: compare its points in the two spans of steps.
        let span = |w: &[StepMetrics]| (w[0].step, w[w.len() - 1].step);
        let (from, _) = span(earlier);
        let (split, to) = span(recent);
        let metric = if has_points(history, names::VAL_TSR, from, to) {
            names::VAL_TSR
        } else {
            names::TSR
        };
        let points: Vec<(u64, f64)> = history
            .iter()
            .filter(|m| m.step >= from && m.step <= to)
            .filter_map(|m| m.get(metric).map(|v| (m.step, v)))
            .collect();
        // Each half of the span needs a point; the half before the recent window may borrow
        // the last point measured before it.
        let earlier_points: Vec<f64> = {
            let inside: Vec<f64> = points
                .iter()
                .filter(|(s, _)| *s < split)
                .map(|p| p.1)
                .collect();
            if inside.is_empty() {
                history
                    .iter()
                    .rev()
                    .filter(|m| m.step < from)
                    .find_map(|m| m.get(metric))
                    .into_iter()
                    .collect()
            } else {
                inside
            }
        };
        let recent_points: Vec<f64> = points
            .iter()
            .filter(|(s, _)| *s >= split)
            .map(|p| p.1)
            .collect();
        if earlier_points.is_empty() || recent_points.is_empty() {
            return None;
        }
        let tsr_before = mean(&earlier_points);
        let tsr_after = mean(&recent_points);
        let gain = tsr_after - tsr_before;
        if gain > self.config.max_tsr_gain {
            return None;
        }
        Some((
            AlarmKind::RewardWithoutSuccess,
            format!(
                "training reward rose {before:.3} → {after:.3} (steps {from}–{to}) while {metric} \
                 went {tsr_before:.3} → {tsr_after:.3}: the reward is being earned without solving \
                 the task"
            ),
            evidence([
                ("reward_before", before),
                ("reward_after", after),
                ("tsr_before", tsr_before),
                ("tsr_after", tsr_after),
                ("from_step", from as f64),
                ("to_step", to as f64),
            ]),
        ))
    }

    fn format_drift(&self, history: &[StepMetrics]) -> Option<Finding> {
        let w = self.config.window.max(1);
        let series: Vec<f64> = history
            .iter()
            .filter_map(|m| m.get(names::FORMAT_FRAC))
            .collect();
        if series.len() < 2 * w {
            return None;
        }
        let rolling: Vec<f64> = series.windows(w).map(mean).collect();
        let now = *rolling.last()?;
        let best = rolling[..rolling.len() - 1]
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let drop = best - now;
        (drop >= self.config.max_format_drop).then(|| {
            (
                AlarmKind::FormatDrift,
                format!(
                    "the strict answer-format rate fell from {best:.3} to {now:.3} (mean of \
                     {w} steps): answers are leaving the format the evaluator reads"
                ),
                evidence([("format_best", best), ("format_now", now), ("drop", drop)]),
            )
        })
    }

    fn tool_spam(&self, history: &[StepMetrics]) -> Option<Finding> {
        let (start, now) = self.start_and_now(history, names::TOOL_CALLS_MEAN)?;
        let c = &self.config;
        (now >= c.tool_spam_factor * start && now - start >= c.tool_spam_min_increase).then(|| {
            (
                AlarmKind::ToolSpam,
                format!(
                    "tool calls per episode went from {start:.2} to {now:.2}: the policy may be \
                     farming a per-call reward or stalling"
                ),
                evidence([("calls_start", start), ("calls_now", now)]),
            )
        })
    }

    fn early_answers(&self, history: &[StepMetrics]) -> Option<Finding> {
        let (start, now) = self.start_and_now(history, names::ANSWER_EARLY_FRAC)?;
        (now - start >= self.config.max_early_rise).then(|| {
            let mut ev = evidence([("early_start", start), ("early_now", now)]);
            if let Some((s, n)) = self.start_and_now(history, names::ANSWER_NO_TOOL_FRAC) {
                ev.insert("no_tool_start".into(), s);
                ev.insert("no_tool_now".into(), n);
            }
            (
                AlarmKind::EarlyAnswers,
                format!(
                    "the share of episodes answering with fewer successful tool calls than usual \
                     went from {start:.3} to {now:.3}: the policy may be guessing instead of \
                     following the procedure"
                ),
                ev,
            )
        })
    }

    fn collapse(&self, history: &[StepMetrics]) -> Option<Finding> {
        let c = &self.config;
        let val: Vec<(u64, f64)> = history
            .iter()
            .filter_map(|m| m.get(names::VAL_TSR).map(|v| (m.step, v)))
            .collect();
        if let Some(((now_step, now), earlier)) = val.split_last() {
            let best = earlier.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((best_step, best)) = best {
                if best - now >= c.max_val_drop {
                    return Some((
                        AlarmKind::Collapse,
                        format!(
                            "validation TSR fell from its best {best:.3} (step {best_step}) to \
                             {now:.3} (step {now_step}): the policy is collapsing"
                        ),
                        evidence([
                            ("val_tsr_best", best),
                            ("val_tsr_now", *now),
                            ("best_step", best_step as f64),
                        ]),
                    ));
                }
            }
        }
        let (w, j) = (c.window.max(1), c.jump_window.max(1));
        for metric in [
            names::ANSWER_NO_TOOL_FRAC,
            names::MAX_TURNS_FRAC,
            names::TRUNCATED_FRAC,
            names::FAILED_FRAC,
        ] {
            let series: Vec<f64> = history.iter().filter_map(|m| m.get(metric)).collect();
            if series.len() < w + j {
                continue;
            }
            let (before, now) = series[series.len() - w - j..].split_at(w);
            let (before, now) = (mean(before), mean(now));
            if now - before >= c.max_share_jump {
                return Some((
                    AlarmKind::Collapse,
                    format!(
                        "{metric} jumped from {before:.3} ({w} steps) to {now:.3} (last {j}): \
                         the policy's behaviour changed abruptly"
                    ),
                    evidence([("share_before", before), ("share_now", now)]),
                ));
            }
        }
        None
    }

    /// The mean of `metric` over the first window and over the last one.
    fn start_and_now(&self, history: &[StepMetrics], metric: &str) -> Option<(f64, f64)> {
        let w = self.config.window.max(1);
        let series: Vec<f64> = history.iter().filter_map(|m| m.get(metric)).collect();
        if series.len() < 2 * w {
            return None;
        }
        Some((mean(&series[..w]), mean(&series[series.len() - w..])))
    }
}

type Finding = (AlarmKind, String, BTreeMap<String, f64>);

fn evidence<const N: usize>(pairs: [(&str, f64); N]) -> BTreeMap<String, f64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn has_points(history: &[StepMetrics], metric: &str, from: u64, to: u64) -> bool {
    history
        .iter()
        .any(|m| m.step >= from && m.step <= to && m.get(metric).is_some())
}

fn mean_of(window: &[StepMetrics], metric: &str) -> Option<f64> {
    let values: Vec<f64> = window.iter().filter_map(|m| m.get(metric)).collect();
    (!values.is_empty()).then(|| mean(&values))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}
