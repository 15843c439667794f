//! SOP-Bench's metrics over judged episodes, per domain and overall: TSR, ECR, C-TSR, tool
//! accuracy and per-field accuracy.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use mtrl_core::{Evaluation, Evaluator, StopReason, Task, ToolOutcomes, Trajectory};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One judged episode: what the metrics are computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The task's id.
    pub task_id: String,
    /// The task's domain (its `domain` metadata), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The sample's index within its group.
    pub sample: usize,
    /// Why the episode stopped.
    pub stop: StopReason,
    /// How many turns it took.
    pub turns: usize,
    /// How its tool calls went.
    pub tools: ToolOutcomes,
    /// The evaluator's verdict.
    pub evaluation: Evaluation,
}

impl EvalRecord {
    /// The record of `trajectory`, an episode of `task`, judged as `evaluation`.
    pub fn new(task: &Task, trajectory: &Trajectory, evaluation: Evaluation) -> Self {
        Self {
            task_id: trajectory.task_id.clone(),
            domain: task
                .metadata()
                .get("domain")
                .and_then(|d| d.as_str())
                .map(str::to_string),
            sample: trajectory.episode.index,
            stop: trajectory.stop,
            turns: trajectory.turns.len(),
            tools: trajectory.tool_outcomes(),
            evaluation,
        }
    }
}

/// Judges each trajectory with `evaluator`, finding its task by id.
///
/// # Errors
/// [`Error::UnknownTask`] for a trajectory of a task not in `tasks`, and
/// [`Error::Evaluator`] when the evaluator fails on one (with its task id).
pub async fn evaluate_all<E: Evaluator + ?Sized>(
    evaluator: &E,
    tasks: &[Task],
    trajectories: &[Trajectory],
) -> Result<Vec<EvalRecord>, Error> {
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id(), t)).collect();
    let mut out = Vec::with_capacity(trajectories.len());
    for trajectory in trajectories {
        let task = by_id
            .get(trajectory.task_id.as_str())
            .ok_or_else(|| Error::UnknownTask(trajectory.task_id.clone()))?;
        let evaluation = evaluator
            .evaluate(task, trajectory)
            .await
            .map_err(|source| Error::Evaluator {
                task_id: trajectory.task_id.clone(),
                source,
            })?;
        out.push(EvalRecord::new(task, trajectory, evaluation));
    }
    Ok(out)
}

/// How often one output field was right, as counts (the reward that scores the share of fields
/// right is `mtrl_reward::FieldAccuracy`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FieldCount {
    /// Episodes where it was right.
    pub correct: usize,
    /// Episodes that expected it.
    pub total: usize,
}

impl FieldCount {
    /// `correct / total` (0 when there were none).
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct, self.total)
    }
}

/// The metrics of a set of judged episodes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Episodes judged.
    pub episodes: usize,
    /// Episodes that succeeded.
    pub successes: usize,
    /// Episodes completed (ended with a parseable answer and no error).
    pub completed: usize,
    /// Episodes that succeeded and were completed.
    pub completed_successes: usize,
    /// Tool calls made, succeeded, failed and unreported.
    pub tools: ToolOutcomes,
    /// Per-field accuracy, by field (`domain/field` in an overall summary).
    pub fields: BTreeMap<String, FieldCount>,
    /// Episodes per failure kind.
    pub failures: BTreeMap<String, usize>,
}

impl Metrics {
    fn add(&mut self, record: &EvalRecord, field_prefix: Option<&str>) {
        let e = &record.evaluation;
        self.episodes += 1;
        self.successes += usize::from(e.success);
        self.completed += usize::from(e.completed);
        self.completed_successes += usize::from(e.success && e.completed);
        self.tools += record.tools;
        for (name, result) in &e.fields {
            let key = match field_prefix {
                Some(prefix) => format!("{prefix}/{name}"),
                None => name.clone(),
            };
            let acc = self.fields.entry(key).or_default();
            acc.total += 1;
            acc.correct += usize::from(result.correct);
        }
        if let Some(failure) = &e.failure {
            *self.failures.entry(failure.kind.clone()).or_default() += 1;
        }
    }

    /// Task success rate: the share of episodes with every output field exact.
    pub fn tsr(&self) -> f64 {
        ratio(self.successes, self.episodes)
    }

    /// Execution completion rate: the share of episodes that ended with a parseable answer and
    /// no environment or agent error.
    pub fn ecr(&self) -> f64 {
        ratio(self.completed, self.episodes)
    }

    /// Conditional task success rate, TSR / ECR: the share of completed episodes that
    /// succeeded. `None` when none was completed.
    pub fn c_tsr(&self) -> Option<f64> {
        (self.completed > 0).then(|| ratio(self.completed_successes, self.completed))
    }

    /// Tool accuracy: the share of tool calls with a reported outcome that did not error.
    /// `None` when there were none.
    pub fn tool_accuracy(&self) -> Option<f64> {
        self.tools.accuracy()
    }

    /// The mean of the per-field accuracies, each field weighted by its episodes.
    pub fn field_accuracy(&self) -> Option<f64> {
        let (c, t) = self
            .fields
            .values()
            .fold((0, 0), |(c, t), f| (c + f.correct, t + f.total));
        (t > 0).then(|| ratio(c, t))
    }
}

/// Metrics overall and per domain.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// All episodes together.
    pub overall: Metrics,
    /// Per domain (episodes without a domain count only overall).
    pub domains: BTreeMap<String, Metrics>,
}

impl Summary {
    /// Summarises judged episodes.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a EvalRecord>) -> Self {
        let mut out = Self::default();
        for record in records {
            out.overall.add(record, record.domain.as_deref());
            if let Some(domain) = &record.domain {
                out.domains
                    .entry(domain.clone())
                    .or_default()
                    .add(record, None);
            }
        }
        out
    }

    /// A plain-text table: one row per domain, then the overall row.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>7} {:>7} {:>7} {:>9} {:>9}",
            "domain", "episodes", "TSR", "ECR", "C-TSR", "tool acc", "field acc"
        );
        let rows = self
            .domains
            .iter()
            .map(|(d, m)| (d.as_str(), m))
            .chain(std::iter::once(("overall", &self.overall)));
        let pct =
            |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{:.1}", v * 100.0));
        for (name, m) in rows {
            let _ = writeln!(
                out,
                "{:<28} {:>8} {:>7} {:>7} {:>7} {:>9} {:>9}",
                name,
                m.episodes,
                pct(Some(m.tsr())),
                pct(Some(m.ecr())),
                pct(m.c_tsr()),
                pct(m.tool_accuracy()),
                pct(m.field_accuracy()),
            );
        }
        out
    }
}

pub(crate) fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
