//! # mtrl-core
//!
//! The vocabulary and the contracts of mtrl, and the multi-turn rollout driver. Nothing here
//! knows about a model library, a dataset or a network protocol.
//!
//! Data flows one way: a [`Task`] goes to an [`Environment`], which talks with an [`Agent`] turn
//! by turn; the [`RolloutDriver`] records what happened as a [`Trajectory`]; a [`Reward`] scores
//! it for training and an [`Evaluator`] judges it, apart from the reward.
//!
//! | concept | where |
//! |---|---|
//! | [`Message`], [`Role`], [`ToolCall`] | [`message`] |
//! | [`ToolSpec`] (Bedrock and OpenAI shapes) | [`tool`] |
//! | [`Task`], [`TaskView`] | [`task`] |
//! | [`Trajectory`], [`Turn`], [`TokenRecord`], [`StopReason`], [`ToolResult`] | [`trajectory`] |
//! | [`Environment`], [`EnvironmentFactory`] | [`environment`] |
//! | [`Agent`], [`TurnContext`], [`Action`] | [`agent`] |
//! | [`Reward`], [`Evaluator`] | [`reward`], [`evaluator`] |
//! | the answer format ([`AnswerParser`], [`values_match`]) | [`answer`] |
//! | [`RolloutDriver`], [`Limits`] | [`rollout`] |
//! | a batch scored once by a reward and the evaluator ([`Scored`], [`score_groups`]) | [`scored`] |
//! | JSON Lines | [`jsonl`] |
//! | running a future from plain code ([`runtime::block_on`], [`tokio`]) | [`runtime`] |
//!
//! ## A custom environment and agent
//!
//! An environment with one tool, an agent that calls it and then answers, and the driver
//! running a group of two episodes:
//!
//! ```
//! use mtrl_core::{
//!     async_trait, Action, Agent, Environment, Episode, Limits, Message, Reset, RolloutDriver,
//!     Result, Step, StopReason, Task, ToolCall, ToolSpec, TurnContext,
//! };
//! use serde_json::json;
//!
//! /// Answers `add` calls; the episode is done when the assistant replies without a call.
//! struct Calculator;
//!
//! #[async_trait]
//! impl Environment for Calculator {
//!     async fn reset(&mut self, task: &Task, _episode: &Episode) -> Result<Reset> {
//!         let add = ToolSpec::new("add", "Adds two integers.", json!({
//!             "type": "object",
//!             "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
//!             "required": ["a", "b"]}))?;
//!         Ok(Reset {
//!             messages: vec![
//!                 Message::system("Use the tools, then answer with the number alone."),
//!                 Message::user(format!("What is {} + {}?", task.inputs()["a"], task.inputs()["b"])),
//!             ],
//!             tools: vec![add],
//!             ..Reset::default()
//!         })
//!     }
//!
//!     async fn step(&mut self, action: &Message) -> Result<Step> {
//!         if action.tool_calls.is_empty() {
//!             return Ok(Step::done(vec![]));
//!         }
//!         let mut results = Vec::new();
//!         for call in &action.tool_calls {
//!             let text = match call.parse_arguments() {
//!                 Ok(args) => match (args["a"].as_i64(), args["b"].as_i64()) {
//!                     (Some(a), Some(b)) => (a + b).to_string(),
//!                     _ => "error: `a` and `b` must be integers".to_string(),
//!                 },
//!                 Err(e) => format!("error: {e}"),
//!             };
//!             results.push(Message::tool(&call.id, &call.name, text));
//!         }
//!         Ok(Step::next(results))
//!     }
//! }
//!
//! /// Calls `add` with the task's inputs, then repeats the tool's answer.
//! struct Adder;
//!
//! #[async_trait]
//! impl Agent for Adder {
//!     async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
//!         let message = if ctx.turn_index() == 0 {
//!             let args = json!({"a": ctx.task.input("a"), "b": ctx.task.input("b")});
//!             Message::assistant_with_calls("", vec![ToolCall::new("call-0", "add", &args)])
//!         } else {
//!             let last = ctx.messages.last().expect("the tool answered");
//!             Message::assistant(last.content.clone())
//!         };
//!         Ok(Action::new(message).with_tokens_used(5))
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let task = Task::new("sum-1", json!({"a": 2, "b": 40}), json!({"answer": 42}))?;
//! let driver = RolloutDriver::new(Limits { max_turns: 4, ..Limits::default() });
//! let make_env = |_: &Task, _: &Episode| Ok(Calculator);
//! let group = driver.run_group(&Adder, &make_env, &task, 2).await;
//!
//! assert_eq!(group.len(), 2);
//! for trajectory in &group {
//!     assert_eq!(trajectory.stop, StopReason::Answered);
//!     assert_eq!(trajectory.turns.len(), 2);
//!     assert_eq!(trajectory.final_action().unwrap().content, "42");
//!     assert_eq!(trajectory.tokens_used(), 10);
//! }
//! // Each sample has its own seed, derived from the task and its index.
//! assert_ne!(group[0].episode.seed, group[1].episode.seed);
//! # Ok::<(), mtrl_core::Error>(())
//! # }).unwrap();
//! ```

pub mod agent;
pub mod answer;
pub mod environment;
pub mod error;
pub mod evaluator;
pub mod jsonl;
pub mod message;
pub mod reward;
pub mod rollout;
pub mod runtime;
pub mod scored;
pub mod task;
pub mod tool;
pub mod trajectory;

pub use agent::{Action, Agent, Budget, FnAgent, TurnContext, agent_fn};
pub use answer::{
    Answer, AnswerError, AnswerParser, FINAL_OUTPUT_TAG, Several, normalise_text, values_match,
    values_match_within,
};
pub use environment::{Environment, EnvironmentFactory, Reset, Step};
pub use error::{BoxError, Error, Result};
pub use evaluator::{Evaluation, Evaluator, Failure, FieldResult};
pub use jsonl::{from_jsonl_str, read_jsonl, read_jsonl_lines, to_jsonl_string, write_jsonl};
pub use message::{Message, Role, ToolCall};
pub use reward::{Reward, RewardValue};
pub use rollout::{
    AbortSignal, Limits, RolloutDriver, SplitMix64, TurnLength, derive_seed, stop_counts,
};
pub use scored::{Scored, score_groups};
pub use task::{Task, TaskView};
pub use tool::ToolSpec;
pub use trajectory::{
    Episode, EpisodeError, FailedAttempt, Finish, Phase, StopReason, TOOL_RESULTS_KEY, Timing,
    TokenRecord, ToolOutcomes, ToolResult, TrainingSequence, Trajectory, Turn,
};

/// Re-exported so that implementations need no direct dependency on `async-trait`.
pub use async_trait::async_trait;
/// The runtime everything runs on, re-exported so that a caller needs no direct dependency on
/// tokio and gets the same version (see [`runtime`]).
pub use tokio;
