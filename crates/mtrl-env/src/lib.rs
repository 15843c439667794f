//! # mtrl-env
//!
//! Environments for mtrl that look like production and never touch it: simulated tools with
//! production schemas, driven by recorded data or isolated per-episode state, and wrappers that
//! compose around any [`mtrl_core::Environment`]. It depends only on `mtrl-core`.
//!
//! - [`ToolEnvironment`]: serves [`Tool`]s, validating arguments strictly against their JSON
//!   Schemas and answering malformed calls with structured errors the model can recover from.
//!   Tools are Rust types, closures over a JSON map ([`tool_fn`]) or over typed arguments whose
//!   schema is derived from the type ([`typed_tool`]), stateful tools on per-episode state built
//!   from the seed and torn down however the episode ends, or recorded tools declared as data
//!   ([`bindings`]).
//! - [`EpisodeSources`]: the seeded random, clock and uuid sources tools must use.
//! - [`layers`]: a per-step time limit, seeded fault injection, a recorder and replayer, and
//!   tool-output truncation, composed with [`EnvironmentExt::layer`] or
//!   [`layers::EnvironmentFactoryExt::layer`].
//! - `sop_bench` (feature `sop-bench`, on by default): all 14 SOP-Bench domains, from a directory or the hub, with licence flags,
//!   diagnostics, tasks, splits, and strict and upstream-parity environments.
//! - [`audit`]: determinism, seed-dependence, answer leaks, schema fidelity and tool coverage,
//!   for any environment.
//! - `remote` (feature `remote`): any environment served over HTTP, and a client that is an
//!   environment, so that environments can live in another process or on another machine.
//!
//! With `default-features = false`, mtrl-env is the tool environment, the layers, the bindings
//! and the audit alone: no hub client, no TLS stack.

pub mod audit;
pub mod bindings;
pub mod error;
pub mod layers;
#[cfg(feature = "remote")]
pub mod remote;
#[cfg(feature = "sop-bench")]
pub mod sop_bench;
pub mod sources;
pub mod tool;
pub mod tool_env;
pub mod typed;

pub use error::{Error, Result};
pub use layers::{EnvironmentExt, Layer};
/// The JSON Schema derive that [`typed_tool`] reads, re-exported so that its version is mtrl's.
pub use schemars;
pub use sources::EpisodeSources;
pub use tool::{FnTool, Tool, ToolContext, ToolOutput, tool_fn};
pub use tool_env::{ToolEnvironment, ToolEnvironmentBuilder, ToolEnvironmentFactory, Validation};
pub use typed::{TypedTool, parameters_of, typed_tool};
