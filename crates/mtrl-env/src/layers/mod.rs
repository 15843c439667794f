//! Wrappers that compose around any [`Environment`], in the manner of tower's layers.
//!
//! A [`Layer`] turns an environment into a wrapped one; [`EnvironmentExt::layer`] applies it to an
//! environment and [`EnvironmentFactoryExt::layer`] to every environment a factory makes:
//!
//! ```
//! use std::time::Duration;
//! use mtrl_env::layers::{EnvironmentFactoryExt, FaultInjection, Side, TimeLimit, TruncateOutputs};
//! # let factory = mtrl_env::ToolEnvironmentBuilder::new().build()?;
//! let hardened = factory
//!     .layer(TruncateOutputs::new(4_000, Side::Middle))
//!     .layer(FaultInjection::new(7).tool_errors(0.05))
//!     .layer(TimeLimit::new(Duration::from_secs(5)));
//! # Ok::<(), mtrl_env::Error>(())
//! ```
//!
//! Every wrapper says what it did in the step's `info`, so nothing it changes is silent.

mod faults;
mod record;
mod time_limit;
mod truncate;

pub use faults::{FAULT_KIND, FaultInjection, Faulty};
pub use record::{RecordEntry, Recorded, Recorder, ReplayEnvironment, Replayer};
pub use time_limit::{TimeLimit, TimeLimited};
pub use truncate::{Side, TruncateOutputs, Truncated};

use mtrl_core::{Environment, EnvironmentFactory, Episode, Task};

/// Wraps an environment.
pub trait Layer<E> {
    /// The wrapped environment.
    type Env: Environment;

    /// Wraps `inner`.
    fn layer(&self, inner: E) -> Self::Env;
}

/// Applies layers to an environment.
pub trait EnvironmentExt: Environment + Sized {
    /// Wraps this environment with `layer`.
    fn layer<L: Layer<Self>>(self, layer: L) -> L::Env {
        layer.layer(self)
    }
}

impl<E: Environment> EnvironmentExt for E {}

/// A factory whose environments are wrapped by a layer.
#[derive(Debug, Clone)]
pub struct Layered<F, L> {
    inner: F,
    layer: L,
}

impl<F, L> EnvironmentFactory for Layered<F, L>
where
    F: EnvironmentFactory,
    L: Layer<F::Env> + Sync,
{
    type Env = L::Env;

    fn create(&self, task: &Task, episode: &Episode) -> mtrl_core::Result<Self::Env> {
        Ok(self.layer.layer(self.inner.create(task, episode)?))
    }

    fn served_tools(&self) -> Option<Vec<String>> {
        self.inner.served_tools()
    }
}

/// Applies layers to every environment a factory makes.
pub trait EnvironmentFactoryExt: EnvironmentFactory + Sized {
    /// Wraps every environment this factory makes with `layer`.
    fn layer<L: Layer<Self::Env>>(self, layer: L) -> Layered<Self, L> {
        Layered { inner: self, layer }
    }
}

impl<F: EnvironmentFactory> EnvironmentFactoryExt for F {}
