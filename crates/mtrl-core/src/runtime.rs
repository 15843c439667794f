//! The async runtime, for callers that are not async themselves.
//!
//! Everything in mtrl is async and runs on tokio: the driver, the environments (which run tools
//! on tokio's blocking pool) and the agents. An async program already has a runtime; a plain
//! `main` or a test runs a future to completion with [`block_on`]. The [`tokio`] crate itself is
//! re-exported as `mtrl_core::tokio`, so that `#[mtrl_core::tokio::main(crate =
//! "mtrl_core::tokio")]` works without a direct dependency.

use std::future::Future;

/// Runs `future` to completion on a new multi-threaded tokio runtime, with its timers and its
/// blocking pool, and returns its output.
///
/// ```
/// use mtrl_core::{Limits, Message, RolloutDriver, StopReason, Task, agent_fn, runtime};
/// use mtrl_core::{Environment, Episode, Reset, Step, async_trait};
/// # use serde_json::json;
/// struct Echo;
/// #[async_trait]
/// impl Environment for Echo {
///     async fn reset(&mut self, _: &Task, _: &Episode) -> mtrl_core::Result<Reset> {
///         Ok(Reset { messages: vec![Message::user("say hi")], ..Reset::default() })
///     }
///     async fn step(&mut self, _: &Message) -> mtrl_core::Result<Step> {
///         Ok(Step::done(vec![]))
///     }
/// }
/// let task = Task::new("t", json!({}), json!({}))?;
/// let agent = agent_fn(|_| Ok(Message::assistant("hi")));
/// let driver = RolloutDriver::new(Limits::default());
/// let make = |_: &Task, _: &Episode| Ok(Echo);
/// let trajectory = runtime::block_on(driver.run_with(&agent, &make, &task, Episode { index: 0, seed: 1 }))?;
/// assert_eq!(trajectory.stop, StopReason::Answered);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The I/O error of building the runtime (the system refused its threads).
pub fn block_on<F: Future>(future: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}
