//! The [`Reward`] contract: a training signal with its named components.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::task::Task;
use crate::trajectory::Trajectory;

/// A reward's score of one trajectory: the total and the named terms it was made of, so each
/// can be logged on its own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardValue {
    /// The value the trainer optimises.
    pub total: f64,
    /// The named terms, in name order.
    #[serde(default)]
    pub components: BTreeMap<String, f64>,
}

impl RewardValue {
    /// A value with no components.
    pub fn new(total: f64) -> Self {
        Self {
            total,
            components: BTreeMap::new(),
        }
    }

    /// Adds a named component (it does not change the total).
    #[must_use]
    pub fn with_component(mut self, name: impl Into<String>, value: f64) -> Self {
        self.components.insert(name.into(), value);
        self
    }
}

/// Scores a finished trajectory against its task, for training.
///
/// A reward may be lenient or shaped; what counts as success is the business of an
/// [`Evaluator`](crate::Evaluator), kept apart from it.
#[async_trait]
pub trait Reward: Send + Sync {
    /// Scores `trajectory`, an episode of `task`.
    async fn score(&self, task: &Task, trajectory: &Trajectory) -> Result<RewardValue>;
}

#[async_trait]
impl<R: Reward + ?Sized> Reward for Arc<R> {
    async fn score(&self, task: &Task, trajectory: &Trajectory) -> Result<RewardValue> {
        (**self).score(task, trajectory).await
    }
}

#[async_trait]
impl<R: Reward + ?Sized> Reward for Box<R> {
    async fn score(&self, task: &Task, trajectory: &Trajectory) -> Result<RewardValue> {
        (**self).score(task, trajectory).await
    }
}
