//! A batch's episodes scored once, by a reward and by the evaluator, as the rows that the reward
//! guards, the training metrics and the trainer all read.

use crate::error::{Error, Result};
use crate::evaluator::{Evaluation, Evaluator};
use crate::reward::{Reward, RewardValue};
use crate::task::Task;
use crate::trajectory::Trajectory;

/// One scored episode of a batch: its task, its trajectory, its group, the reward's score and the
/// strict evaluator's verdict.
///
/// A reward or an evaluator that fails on one episode does not fail the batch: the row keeps the
/// reason, so that the trainer leaves the group out and the metrics count it.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    /// Its task.
    pub task: &'a Task,
    /// The episode.
    pub trajectory: &'a Trajectory,
    /// Its group: the index of its task in the batch (the episodes of one task sampled together).
    pub group: usize,
    /// Its reward; 0 when the reward failed on it (see `reward_error`).
    pub reward: RewardValue,
    /// Why the reward could not score it, if it could not.
    pub reward_error: Option<String>,
    /// The strict evaluator's verdict; `None` when there was no evaluator or it failed.
    pub evaluation: Option<Evaluation>,
    /// Why the evaluator could not judge it, if it could not.
    pub evaluation_error: Option<String>,
}

impl<'a> Scored<'a> {
    /// A row with the reward given and no evaluation (for tests and for callers that score by
    /// other means).
    pub fn new(
        task: &'a Task,
        trajectory: &'a Trajectory,
        group: usize,
        reward: RewardValue,
    ) -> Self {
        Self {
            task,
            trajectory,
            group,
            reward,
            reward_error: None,
            evaluation: None,
            evaluation_error: None,
        }
    }

    /// The same row, with the evaluator's verdict.
    #[must_use]
    pub fn with_evaluation(mut self, evaluation: Evaluation) -> Self {
        self.evaluation = Some(evaluation);
        self
    }

    /// `task#sample`, to point at an episode in a warning.
    pub fn label(&self) -> String {
        format!(
            "{}#{}",
            self.trajectory.task_id, self.trajectory.episode.index
        )
    }

    /// Whether the episode can be trained on: it ended by the rules of the task (no error,
    /// timeout or abort) and its reward is a finite number.
    pub fn usable(&self) -> bool {
        !self.trajectory.stop.is_failure()
            && self.trajectory.error.is_none()
            && self.reward_error.is_none()
            && self.reward.total.is_finite()
    }
}

/// Scores a batch in one call: every episode of `groups[g]` (the episodes of `tasks[g]`) by the
/// reward and by the evaluator, each exactly once. The rows come in batch order, group by group.
///
/// A reward or evaluator error on one episode is kept in its row (see [`Scored`]); it never
/// fails the batch.
///
/// # Errors
/// [`Error::MismatchedBatch`] when `tasks` and `groups` differ in length: no group is dropped
/// unseen.
///
/// ```
/// # use mtrl_core::*;
/// # use serde_json::json;
/// # struct Len;
/// # #[async_trait]
/// # impl Reward for Len {
/// #     async fn score(&self, _: &Task, t: &Trajectory) -> Result<RewardValue> {
/// #         Ok(RewardValue::new(t.turns.len() as f64))
/// #     }
/// # }
/// # struct Always;
/// # #[async_trait]
/// # impl Evaluator for Always {
/// #     async fn evaluate(&self, _: &Task, _: &Trajectory) -> Result<Evaluation> {
/// #         Ok(Evaluation { success: true, completed: true, ..Evaluation::default() })
/// #     }
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let tasks = vec![Task::new("t", json!({}), json!({}))?];
/// let groups = vec![vec![Trajectory::new("t", Episode { index: 0, seed: 1 })]];
/// let rows = score_groups(&tasks, &groups, &Len, &Always).await?;
/// assert_eq!(rows.len(), 1);
/// assert_eq!(rows[0].reward.total, 0.0);
/// assert!(rows[0].evaluation.as_ref().is_some_and(|e| e.success));
/// # Ok::<(), mtrl_core::Error>(())
/// # }).unwrap();
/// ```
pub async fn score_groups<'a, R, E>(
    tasks: &'a [Task],
    groups: &'a [Vec<Trajectory>],
    reward: &R,
    evaluator: &E,
) -> Result<Vec<Scored<'a>>>
where
    R: Reward + ?Sized,
    E: Evaluator + ?Sized,
{
    if tasks.len() != groups.len() {
        return Err(Error::MismatchedBatch {
            tasks: tasks.len(),
            groups: groups.len(),
        });
    }
    let mut rows = Vec::with_capacity(groups.iter().map(Vec::len).sum());
    for (group, (task, trajectories)) in tasks.iter().zip(groups).enumerate() {
        for trajectory in trajectories {
            let mut row = Scored::new(task, trajectory, group, RewardValue::new(0.0));
            match reward.score(task, trajectory).await {
                Ok(r) => row.reward = r,
                Err(e) => row.reward_error = Some(e.to_string()),
            }
            match evaluator.evaluate(task, trajectory).await {
                Ok(e) => row.evaluation = Some(e),
                Err(e) => row.evaluation_error = Some(e.to_string()),
            }
            rows.push(row);
        }
    }
    Ok(rows)
}
