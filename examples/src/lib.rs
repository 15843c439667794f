//! # mtrl-examples
//!
//! The top of the mtrl workspace: the `mtrl` command line and runnable examples, built on every
//! other crate. It also checks the workspace's dependency rule (see `tests/dependency_rule.rs`).

pub mod audit;
pub mod episodes;
pub mod outputs;
pub mod progress;
pub mod quickstart;
pub mod recipe;
pub mod returns_desk;
