//! # mtrl-train
//!
//! The default training backend of mtrl: a candle policy that loads real models and rolls out
//! exact multi-turn trajectories (token-in, token-out), and the trainer that learns from them. It may use every other mtrl crate.
//!
//! | concept | where |
//! |---|---|
//! | the network, its two forward paths, KV cache | [`model::CausalLm`], [`model::KvCache`] |
//! | loading (HF directory, hub, GGUF) | [`model::ModelSource`] |
//! | tokenizer and chat template | [`Tokenizer`], [`ChatTemplate`] |
//! | sampling (policy and behaviour logprobs, restorable RNG) | [`sampler::Sampler`] |
//! | batched generation with prefix sharing | [`engine::Generator`] |
//! | tool-call formats (Hermes, JSON list) | [`toolcall::ToolCallFormat`] |
//! | the agent, token-in-token-out bookkeeping, drift | [`CandleAgent`], [`Tito`], [`drift`] |
//! | LoRA adapters (PEFT format) | [`model::Lora`] |
//! | advantages, losses, AdamW, the trainer and SFT | [`rl`] |
//! | registry assets for tests and examples | [`assets`] |
//! | the allocator tuned for tensors | [`memory::retain_freed_memory`] |
//!
//! Runs on the CPU by default; build with the `cuda` feature for candle's CUDA backend (same
//! code path).

use std::path::{Path, PathBuf};

pub mod agent;
pub mod assets;
pub mod chat;
mod cpu_storage;
mod demonstrator;
pub mod engine;
pub mod memory;
pub mod model;
pub mod rl;
pub mod sampler;
pub mod tokenizer;
pub mod toolcall;

pub use agent::{CandleAgent, Drift, ScriptedTokenAgent, Tito, TitoCheck, TurnPrompt, drift};
pub use chat::ChatTemplate;
pub use demonstrator::Demonstrator;
pub use tokenizer::Tokenizer;

/// Errors of mtrl-train.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
    /// An error from an environment crate.
    #[error(transparent)]
    Env(#[from] mtrl_env::Error),
    /// An error from a reward.
    #[error(transparent)]
    Reward(#[from] mtrl_reward::Error),
    /// An error from an evaluation.
    #[error(transparent)]
    Eval(#[from] mtrl_eval::Error),
    /// A tensor operation failed (without the backtrace candle captures when `RUST_BACKTRACE`
    /// is set: see [`without_backtrace`]).
    #[error("tensor error: {0}")]
    Candle(#[source] candle_core::Error),
    /// A model configuration is unsupported or inconsistent.
    #[error("model config: {0}")]
    Config(String),
    /// A training configuration is invalid, or does not fit the trainer it is given to.
    #[error("train config: {0}")]
    TrainConfig(String),
    /// The trainer lacks a part it needs (a reward, an evaluator, tasks, demonstrations).
    #[error("trainer: {0}")]
    Trainer(String),
    /// A checkpoint file is missing, cut short, or of another run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Weights are missing, misnamed or misshapen.
    #[error("model weights: {0}")]
    Weights(String),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The hub could not provide the model.
    #[error("hub: {0}")]
    Hub(String),
    /// The input does not fit the model's context window.
    #[error("{needed} tokens do not fit the context window of {window}")]
    Context {
        /// Tokens needed.
        needed: usize,
        /// The window.
        window: usize,
    },
    /// Sampling parameters or logits that cannot be sampled from.
    #[error("sampling: {0}")]
    Sampling(String),
    /// The generation engine stopped.
    #[error("the generation engine stopped: {0}")]
    Engine(String),
    /// Token bookkeeping across turns is impossible (a turn without a record).
    #[error("token-in-token-out: {0}")]
    Tito(String),
    /// A test or example asset could not be fetched.
    #[error("asset: {0}")]
    Asset(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(without_backtrace(e))
    }
}

/// `e` without the backtraces candle attaches to its errors when `RUST_BACKTRACE` is set: they
/// print dozens of lines inside the error's message, which belongs on one line.
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => without_backtrace(*inner),
        E::Context { inner, context } => E::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        E::WithPath { inner, path } => E::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        other => other,
    }
}

impl Error {
    pub(crate) fn checkpoint(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
