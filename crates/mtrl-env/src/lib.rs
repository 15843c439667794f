//! # mtrl-env
//!
//! Environments for mtrl: simulated tools with production schemas, the wrappers that compose
//! around any [`mtrl_core::Environment`], and SOP-Bench. It depends only on `mtrl-core`.
//!
//! This crate is at its start: today it holds its error type, and the tool environments come
//! next.

/// Errors of mtrl-env.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
}
