//! The error type of mtrl-env.

/// Errors of mtrl-env.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
    /// A tool's parameters are not a JSON Schema that can be compiled.
    #[error("tool `{tool}`: invalid parameters schema: {reason}")]
    InvalidSchema {
        /// The tool.
        tool: String,
        /// What the schema compiler said.
        reason: String,
    },
    /// Two tools share a name.
    #[error("the tool name `{0}` is registered twice")]
    DuplicateTool(String),
    /// A tool binding (or the table it reads) is malformed.
    #[error("binding {what}: {reason}")]
    Binding {
        /// Which binding, tool or file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data source (a directory or the hub) could not provide what was asked.
    #[error("source: {0}")]
    Source(String),
    /// A SOP-Bench domain is unusable as upstream ships it.
    #[error("SOP-Bench {domain}: {diagnostic}")]
    Upstream {
        /// The domain.
        domain: String,
        /// What is broken upstream, and why.
        diagnostic: String,
    },
    /// Training was asked for on a domain whose licence forbids it.
    #[error(
        "SOP-Bench {domain} is evaluation-only: its licence forbids facilitating model training \
         ({reason}); pass an explicit override to train on it anyway"
    )]
    EvaluationOnly {
        /// The domain.
        domain: String,
        /// The licence condition.
        reason: String,
    },
    /// A recorded session does not match what is being replayed.
    #[error("replay: {0}")]
    Replay(String),
    /// JSON encoding or decoding failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for mtrl_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Core(core) => core,
            other => mtrl_core::Error::environment(other),
        }
    }
}

/// The result type of mtrl-env.
pub type Result<T, E = Error> = std::result::Result<T, E>;
