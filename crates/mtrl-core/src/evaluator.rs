//! The [`Evaluator`] contract: a strict judgement of a trajectory, independent of any reward.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::task::Task;
use crate::trajectory::Trajectory;

/// How one expected field was judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldResult {
    /// Whether the prediction matched.
    pub correct: bool,
    /// The ground-truth value.
    pub expected: Value,
    /// The predicted value, if the answer had the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Value>,
}

/// An evaluator's verdict on one trajectory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Evaluation {
    /// Whether the task was solved.
    pub success: bool,
    /// Whether the episode ended properly with an answer that could be judged.
    pub completed: bool,
    /// Per-field results, in field order.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldResult>,
    /// Why it failed or was not completed, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Judges a finished trajectory against its task, strictly and independently of any reward.
#[async_trait]
pub trait Evaluator: Send + Sync {
    /// Judges `trajectory`, an episode of `task`.
    async fn evaluate(&self, task: &Task, trajectory: &Trajectory) -> Result<Evaluation>;
}

#[async_trait]
impl<V: Evaluator + ?Sized> Evaluator for Arc<V> {
    async fn evaluate(&self, task: &Task, trajectory: &Trajectory) -> Result<Evaluation> {
        (**self).evaluate(task, trajectory).await
    }
}

#[async_trait]
impl<V: Evaluator + ?Sized> Evaluator for Box<V> {
    async fn evaluate(&self, task: &Task, trajectory: &Trajectory) -> Result<Evaluation> {
        (**self).evaluate(task, trajectory).await
    }
}
