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
    /// The predicted value, if the answer had the field (`Some(Null)` when it was null).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub predicted: Option<Value>,
}

/// A field that is present is `Some`, even when it is null.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why a trajectory did not succeed: a stable kind for counting and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// A stable snake_case name (`missing_tag`, `max_turns`, `wrong_fields`, …).
    pub kind: String,
    /// What happened, in words.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`, with a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
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
    pub failure: Option<Failure>,
}

impl Evaluation {
    /// The share of fields judged correct; `None` when there are none.
    pub fn field_accuracy(&self) -> Option<f64> {
        let n = self.fields.len();
        (n > 0).then(|| self.fields.values().filter(|f| f.correct).count() as f64 / n as f64)
    }

    /// The evaluation as one number in [0, 1], to set beside a reward: 1 for a success, 0 for
    /// an episode that was not completed, and otherwise the share of fields judged correct.
    pub fn score(&self) -> f64 {
        if self.success {
            1.0
        } else if !self.completed {
            0.0
        } else {
            self.field_accuracy().unwrap_or(0.0)
        }
    }
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
