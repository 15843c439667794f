//! # mtrl-eval
//!
//! Strict evaluation for mtrl, kept apart from any reward: answer parsing, task metrics,
//! sampled metrics and training monitors. It depends only on `mtrl-core` and judges
//! trajectories through [`mtrl_core::Evaluator`].
//!
//! This crate is at its start: today it holds its error type, and the evaluators come next.

/// Errors of mtrl-eval.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
}
