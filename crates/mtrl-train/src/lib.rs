//! # mtrl-train
//!
//! The default training backend of mtrl: a candle policy that rolls out exact multi-turn
//! trajectories, and the trainer that learns from them. It may use every other mtrl crate.
//!
//! This crate is at its start: today it holds its error type and the tests that need several
//! crates; the policy and the trainer come next.

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
}
