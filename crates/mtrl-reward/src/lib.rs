//! # mtrl-reward
//!
//! Rewards for mtrl: building blocks, combinators that keep every component named, and guards
//! against reward hacking. It depends only on `mtrl-core` and scores trajectories through
//! [`mtrl_core::Reward`].
//!
//! This crate is at its start: today it holds its error type, and the rewards come next.

/// Errors of mtrl-reward.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
}
