//! The [`Environment`] contract: reset with a task, step with an action, close.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::message::Message;
use crate::task::Task;
use crate::tool::ToolSpec;
use crate::trajectory::{Episode, ToolResult, insert_tool_results, read_tool_results};

/// The first observation of an episode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reset {
    /// The opening messages: usually a system prompt and a user message.
    pub messages: Vec<Message>,
    /// The tools the agent may call.
    pub tools: Vec<ToolSpec>,
    /// Facts about the episode worth keeping in the trajectory's metadata.
    pub metadata: Map<String, Value>,
}

/// The environment's answer to one assistant action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Step {
    /// What the environment says back: tool results, a user reply. May be empty.
    pub messages: Vec<Message>,
    /// Whether the episode is over (the agent answered).
    pub done: bool,
    /// Facts about this step worth keeping in the turn (tool errors, costs…).
    pub info: Map<String, Value>,
}

impl Step {
    /// A step that goes on, answering with `messages`.
    pub fn next(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// A step that ends the episode, answering with `messages` (often none).
    pub fn done(messages: Vec<Message>) -> Self {
        Self {
            messages,
            done: true,
            ..Self::default()
        }
    }

    /// Reports the outcome of each tool call of this step in `info`, under
    /// [`TOOL_RESULTS_KEY`](crate::TOOL_RESULTS_KEY), where evaluators and rewards read them.
    #[must_use]
    pub fn with_tool_results(mut self, results: &[ToolResult]) -> Self {
        insert_tool_results(&mut self.info, results);
        self
    }

    /// The tool results the step reports (`info.tool_results`), if it reports them.
    pub fn tool_results(&self) -> Option<Vec<ToolResult>> {
        read_tool_results(&self.info)
    }
}

/// A world the agent acts in, one episode at a time, in the spirit of gymnasium's
/// `reset`/`step`.
///
/// An environment is trusted: it receives the whole [`Task`], ground truth included, and must
/// not show the ground truth to the agent. It must not block the async runtime; run blocking work
/// with `tokio::task::spawn_blocking`. A failure is returned as an error: the rollout driver ends
/// that episode with [`StopReason::EnvironmentError`](crate::StopReason::EnvironmentError) and
/// goes on with the others. A panic is caught and treated the same way.
#[async_trait]
pub trait Environment: Send {
    /// Starts an episode of `task`. Random sources must derive from `episode.seed`.
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset>;

    /// Answers the assistant's action.
    async fn step(&mut self, action: &Message) -> Result<Step>;

    /// What the episode left behind, for the trusted side: a JSON snapshot of the state the
    /// agent acted on (the orders it cancelled, the records it wrote), so that a reward or an
    /// evaluator can check that the agent did what it says it did. The driver asks once, when
    /// the episode has ended (after a successful reset, however the turns ended) and before
    /// [`Environment::close`], and stores it as [`Trajectory::outcome`](crate::Trajectory::outcome).
    /// The agent never sees it. `None` (the default) when the environment has nothing to report.
    async fn outcome(&mut self) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// Releases what the episode holds. Called once after every episode that was created,
    /// however it ended.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<E: Environment + ?Sized> Environment for Box<E> {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        (**self).reset(task, episode).await
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        (**self).step(action).await
    }

    async fn outcome(&mut self) -> Result<Option<serde_json::Value>> {
        (**self).outcome().await
    }

    async fn close(&mut self) -> Result<()> {
        (**self).close().await
    }
}

/// Makes one fresh [`Environment`] per episode, so that no state leaks between episodes.
///
/// Any `Fn(&Task, &Episode) -> Result<E>` is a factory.
pub trait EnvironmentFactory: Sync {
    /// The environment this factory makes.
    type Env: Environment;

    /// Creates the environment for one episode of `task`.
    ///
    /// # Errors
    /// Whatever stops the environment from being built; the episode then ends with
    /// [`StopReason::EnvironmentError`](crate::StopReason::EnvironmentError).
    fn create(&self, task: &Task, episode: &Episode) -> Result<Self::Env>;

    /// The names of every tool this factory's environments execute, advertised to the agent or
    /// not, when the factory knows them. The environment audit compares them with the tools
    /// each reset advertises, so that a tool shown to the agent but never served (or served but
    /// never shown) is flagged. `None` (the default) when the factory cannot say; the audit then
    /// skips that check.
    fn served_tools(&self) -> Option<Vec<String>> {
        None
    }
}

impl<F, E> EnvironmentFactory for F
where
    F: Fn(&Task, &Episode) -> Result<E> + Sync,
    E: Environment,
{
    type Env = E;

    fn create(&self, task: &Task, episode: &Episode) -> Result<E> {
        self(task, episode)
    }
}
