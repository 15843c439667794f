//! # mtrl-reward
//!
//! Rewards for mtrl: building blocks, combinators that keep every component named, and guards
//! against reward hacking. It depends only on `mtrl-core`: a guard that compares rewards with
//! evaluations takes any [`mtrl_core::Evaluator`].
//!
//! | concept | where |
//! |---|---|
//! | building blocks | [`ExactMatch`], [`FieldAccuracy`], [`Format`], [`ToolCallValidity`], [`TurnCost`] |
//! | combinators | [`WeightedSum`], [`Clip`], [`Gate`], [`Prefixed`], [`RewardExt`] |
//! | guards on batches | [`Guards`], [`GuardWarning`] |
//!
//! Answers are read with [`mtrl_core::AnswerParser`], strict by default. A block may be given
//! a more lenient parser; it then also logs what the strict parser would have given, as
//! `<name>@strict`, so the two readings can be compared step by step.
//!
//! An aligned SOP-Bench reward: answer credit only with the strict format, dense per-field
//! credit, a small format term, clipped to [0, 1]:
//!
//! ```
//! use mtrl_core::{Episode, Message, Reward, StopReason, Task, Trajectory, Turn};
//! use mtrl_reward::{ExactMatch, FieldAccuracy, Format, RewardExt, WeightedSum};
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let reward = WeightedSum::new()
//!     .term(0.5, ExactMatch::new())?
//!     .term(0.4, FieldAccuracy::new())?
//!     .term(0.1, Format::new())?
//!     .gated_by(Format::new(), 1.0)
//!     .clip(0.0, 1.0)?;
//!
//! let task = Task::new("t", json!({}), json!({"decision": "Approve", "amount": "12"}))?;
//! let mut t = Trajectory::new("t", Episode::default());
//! t.turns.push(Turn::new(Message::assistant(
//!     r#"<final_output>{"decision": "approve", "amount": 13}</final_output>"#,
//! )));
//! t.stop = StopReason::Answered;
//!
//! let value = reward.score(&task, &t).await?;
//! assert!((value.total - (0.4 * 0.5 + 0.1)).abs() < 1e-12);
//! assert_eq!(value.components["exact_match"], 0.0);
//! assert_eq!(value.components["field_accuracy"], 0.5);
//! assert_eq!(value.components["format"], 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod blocks;
mod combine;
mod guard;

pub use blocks::{ExactMatch, FieldAccuracy, Format, OutcomeMatch, ToolCallValidity, TurnCost};
pub use combine::{Clip, Gate, Prefixed, RewardExt, SharedReward, WeightedSum};
pub use guard::{GuardConfig, GuardKind, GuardWarning, Guards};

/// Errors of mtrl-reward.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
    /// A reward was configured with values that make no sense.
    #[error("invalid reward configuration: {0}")]
    InvalidConfig(String),
    /// Two terms of a combination log different values under one component name.
    #[error(
        "two terms log the component {0:?} with different values; rename one (`named`) or \
         prefix it (`prefixed`)"
    )]
    ComponentClash(String),
    /// An answer reward needs the task's ground truth to be a JSON object of output fields.
    #[error("task {0}: the ground truth must be a JSON object of output fields")]
    GroundTruthNotAnObject(String),
}

impl From<Error> for mtrl_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(e) => e,
            other => mtrl_core::Error::other(other),
        }
    }
}
