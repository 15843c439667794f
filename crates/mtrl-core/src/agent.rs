//! The [`Agent`] contract: choose the next assistant action within the remaining budgets.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::Message;
use crate::task::TaskView;
use crate::tool::ToolSpec;
use crate::trajectory::{Episode, Finish, TokenRecord, Turn};

/// What is left of an episode's limits when the agent is asked to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The most tokens this turn may use: the per-turn limit, capped by what is left of the
    /// trajectory's. `None` when neither is set.
    pub turn_tokens: Option<usize>,
    /// The tokens left for the rest of the trajectory, if it has a limit.
    pub trajectory_tokens: Option<usize>,
    /// Assistant turns left, this one included.
    pub turns_left: usize,
}

/// Everything an agent is given to act on. It holds the agent's [`TaskView`], never the task:
/// the ground truth is out of reach.
#[derive(Debug, Clone, Copy)]
pub struct TurnContext<'a> {
    /// The visible part of the task.
    pub task: TaskView<'a>,
    /// The tools the environment advertised.
    pub tools: &'a [ToolSpec],
    /// The conversation so far, ending with the environment's latest messages.
    pub messages: &'a [Message],
    /// The earlier turns, with their token records, so that a token-level agent can extend its
    /// sequence without re-tokenizing.
    pub turns: &'a [Turn],
    /// The limits left.
    pub budget: Budget,
    /// Which episode this is, and its seed.
    pub episode: Episode,
}

impl TurnContext<'_> {
    /// The 0-based index of the turn being decided.
    pub fn turn_index(&self) -> usize {
        self.turns.len()
    }
}

/// An agent's answer for one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The assistant message (must have [`Role::Assistant`](crate::Role::Assistant)).
    pub message: Message,
    /// How generation ended.
    pub finish: Finish,
    /// How many tokens the turn used, if the agent knows. The driver enforces the token
    /// budgets on this count.
    pub tokens_used: Option<usize>,
    /// The token-level record, from a trainable agent.
    pub tokens: Option<TokenRecord>,
}

impl Action {
    /// An action that finished normally, with no token count.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            finish: Finish::Stop,
            tokens_used: None,
            tokens: None,
        }
    }

    /// Sets how generation ended.
    #[must_use]
    pub fn with_finish(mut self, finish: Finish) -> Self {
        self.finish = finish;
        self
    }

    /// Sets the token count.
    #[must_use]
    pub fn with_tokens_used(mut self, tokens: usize) -> Self {
        self.tokens_used = Some(tokens);
        self
    }

    /// Attaches a token record; the token count becomes its number of sampled ids.
    #[must_use]
    pub fn with_token_record(mut self, record: TokenRecord) -> Self {
        self.tokens_used = Some(record.sampled_ids().len());
        self.tokens = Some(record);
        self
    }
}

/// Something that acts: a policy being trained, a scripted expert, an API model.
///
/// One agent serves many concurrent episodes (`&self`), so that a model can batch their turns;
/// whatever it needs from earlier turns is in the [`TurnContext`]. An error or a panic ends only
/// that episode, with [`StopReason::AgentError`](crate::StopReason::AgentError).
#[async_trait]
pub trait Agent: Send + Sync {
    /// Chooses the next assistant action.
    async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action>;
}

#[async_trait]
impl<A: Agent + ?Sized> Agent for Arc<A> {
    async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
        (**self).act(ctx).await
    }
}

#[async_trait]
impl<A: Agent + ?Sized> Agent for Box<A> {
    async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
        (**self).act(ctx).await
    }
}

impl From<Message> for Action {
    fn from(message: Message) -> Self {
        Action::new(message)
    }
}

/// An [`Agent`] made of a closure (see [`agent_fn`]).
#[derive(Clone)]
pub struct FnAgent<F>(F);

impl<F> std::fmt::Debug for FnAgent<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnAgent").finish_non_exhaustive()
    }
}

/// An agent from a closure that is given the turn's context and returns the next assistant
/// message (or a whole [`Action`]): scripted agents for tests, demonstrations and baselines,
/// the way `mtrl_env::tool_fn` makes tools. An error ends that episode with
/// [`StopReason::AgentError`](crate::StopReason::AgentError), as any agent's does.
///
/// ```
/// use mtrl_core::{Message, ToolCall, agent_fn};
/// use serde_json::json;
/// // Looks the order up, then answers with what the tool said.
/// let agent = agent_fn(|ctx| {
///     Ok(match ctx.turn_index() {
///         0 => Message::assistant_with_calls(
///             "",
///             vec![ToolCall::new("c0", "getOrder", &json!({"order_id": "A-1"}))],
///         ),
///         _ => {
///             let seen = &ctx.messages.last().expect("the tool answered").content;
///             Message::assistant(format!("<final_output>{seen}</final_output>"))
///         }
///     })
/// });
/// # let _ = agent;
/// ```
pub fn agent_fn<F, R>(f: F) -> FnAgent<F>
where
    F: Fn(&TurnContext<'_>) -> Result<R> + Send + Sync,
    R: Into<Action>,
{
    FnAgent(f)
}

#[async_trait]
impl<F, R> Agent for FnAgent<F>
where
    F: Fn(&TurnContext<'_>) -> Result<R> + Send + Sync,
    R: Into<Action>,
{
    async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
        (self.0)(ctx).map(Into::into)
    }
}
