//! The error type shared by mtrl-core's contracts.

/// A boxed error from code outside mtrl-core (an environment, an agent, a reward).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in mtrl-core, and the error type of its traits.
///
/// Implementations of [`Environment`](crate::Environment), [`Agent`](crate::Agent),
/// [`Reward`](crate::Reward) and [`Evaluator`](crate::Evaluator) wrap their own errors with
/// [`Error::environment`], [`Error::agent`] or [`Error::other`], keeping the source chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool specification could not be parsed or is invalid.
    #[error("invalid tool spec: {reason}")]
    InvalidToolSpec {
        /// What is wrong with it.
        reason: String,
    },
    /// A token record breaks its own invariants (lengths, finiteness, segment order).
    #[error("invalid token record: {reason}")]
    InvalidTokenRecord {
        /// What is wrong with it.
        reason: String,
    },
    /// A task is malformed.
    #[error("invalid task: {reason}")]
    InvalidTask {
        /// What is wrong with it.
        reason: String,
    },
    /// A batch to score has a different number of tasks and groups.
    #[error("a batch of {tasks} tasks cannot be scored with {groups} groups: one group per task")]
    MismatchedBatch {
        /// The tasks given.
        tasks: usize,
        /// The groups given.
        groups: usize,
    },
    /// A value could not be encoded to or decoded from JSON.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON Lines file has a bad line.
    #[error("JSON Lines error on line {line}: {source}")]
    Jsonl {
        /// The 1-based line number.
        line: usize,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON Lines file has a line that is not UTF-8 text.
    #[error("JSON Lines error on line {line}: the line is not valid UTF-8")]
    JsonlText {
        /// The 1-based line number.
        line: usize,
    },
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An environment failed.
    #[error("environment error: {0}")]
    Environment(#[source] BoxError),
    /// An agent failed.
    #[error("agent error: {0}")]
    Agent(#[source] BoxError),
    /// Any other failure of user code (a reward, an evaluator).
    #[error("{0}")]
    Other(#[source] BoxError),
}

impl Error {
    /// Wraps an environment's failure.
    pub fn environment(err: impl Into<BoxError>) -> Self {
        Self::Environment(err.into())
    }

    /// Wraps an agent's failure.
    pub fn agent(err: impl Into<BoxError>) -> Self {
        Self::Agent(err.into())
    }

    /// Wraps any other failure.
    pub fn other(err: impl Into<BoxError>) -> Self {
        Self::Other(err.into())
    }

    pub(crate) fn tool_spec(reason: impl Into<String>) -> Self {
        Self::InvalidToolSpec {
            reason: reason.into(),
        }
    }

    pub(crate) fn token_record(reason: impl Into<String>) -> Self {
        Self::InvalidTokenRecord {
            reason: reason.into(),
        }
    }
}

/// The result type of mtrl-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
