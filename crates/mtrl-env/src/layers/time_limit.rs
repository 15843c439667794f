//! A per-step time limit.

use std::time::Duration;

use mtrl_core::{Environment, Episode, Error, Message, Reset, Result, Step, Task, async_trait};

use super::Layer;

/// Fails any reset, step or outcome report of the inner environment that takes longer than a limit, with an
/// environment error naming the limit. The rollout driver then ends that episode alone.
#[derive(Debug, Clone, Copy)]
pub struct TimeLimit {
    limit: Duration,
}

impl TimeLimit {
    /// A limit of `limit` per reset and per step.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<E: Environment> Layer<E> for TimeLimit {
    type Env = TimeLimited<E>;

    fn layer(&self, inner: E) -> Self::Env {
        TimeLimited {
            inner,
            limit: self.limit,
        }
    }
}

/// An environment under a [`TimeLimit`].
#[derive(Debug)]
pub struct TimeLimited<E> {
    inner: E,
    limit: Duration,
}

impl<E> TimeLimited<E> {
    fn exceeded(&self, what: &str) -> Error {
        Error::environment(format!(
            "{what} exceeded the time limit of {} ms",
            self.limit.as_millis()
        ))
    }
}

#[async_trait]
impl<E: Environment> Environment for TimeLimited<E> {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        let limit = self.limit;
        match tokio::time::timeout(limit, self.inner.reset(task, episode)).await {
            Ok(r) => r,
            Err(_) => Err(self.exceeded("reset")),
        }
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        let limit = self.limit;
        match tokio::time::timeout(limit, self.inner.step(action)).await {
            Ok(r) => r,
            Err(_) => Err(self.exceeded("step")),
        }
    }

    async fn outcome(&mut self) -> Result<Option<serde_json::Value>> {
        match tokio::time::timeout(self.limit, self.inner.outcome()).await {
            Ok(r) => r,
            Err(_) => Err(self.exceeded("outcome")),
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}
