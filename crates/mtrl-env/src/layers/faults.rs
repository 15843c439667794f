//! Seeded fault injection.

use std::time::Duration;

use mtrl_core::{
    Environment, Episode, Message, Reset, Result, Step, Task, ToolResult, async_trait,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::Layer;

/// The error kind of an injected tool fault, in the tool message and its [`ToolResult`].
pub const FAULT_KIND: &str = "tool_unavailable";

/// Injects faults at given rates, to test that training survives them: tool errors (the call
/// is answered with a `tool_unavailable` error and never reaches the inner environment),
/// delays before a step, and panics in a step.
///
/// The faults are drawn from the layer's seed mixed with the episode seed, so an episode sees the
/// same faults every time it runs, whatever else runs beside it. An injected tool error is
/// reported as the failed tool result the agent saw (in the step's `tool_results`, kind
/// [`FAULT_KIND`]), so that evaluation summaries and rewards count it alike; its call id is
/// also listed in the step's `info` under `injected_faults`.
#[derive(Debug, Clone, Copy)]
pub struct FaultInjection {
    seed: u64,
    tool_error_rate: f64,
    delay_rate: f64,
    delay: Duration,
    panic_rate: f64,
}

impl FaultInjection {
    /// No faults yet, with this seed.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            tool_error_rate: 0.0,
            delay_rate: 0.0,
            delay: Duration::ZERO,
            panic_rate: 0.0,
        }
    }

    /// Fails each tool call with probability `rate`.
    #[must_use]
    pub fn tool_errors(mut self, rate: f64) -> Self {
        self.tool_error_rate = rate;
        self
    }

    /// Delays each step by `delay` with probability `rate`.
    #[must_use]
    pub fn delays(mut self, rate: f64, delay: Duration) -> Self {
        self.delay_rate = rate;
        self.delay = delay;
        self
    }

    /// Panics in each step with probability `rate`.
    #[must_use]
    pub fn panics(mut self, rate: f64) -> Self {
        self.panic_rate = rate;
        self
    }
}

impl<E: Environment> Layer<E> for FaultInjection {
    type Env = Faulty<E>;

    fn layer(&self, inner: E) -> Self::Env {
        Faulty {
            inner,
            config: *self,
            rng: ChaCha8Rng::seed_from_u64(self.seed),
        }
    }
}

/// An environment with faults injected by [`FaultInjection`].
#[derive(Debug)]
pub struct Faulty<E> {
    inner: E,
    config: FaultInjection,
    rng: ChaCha8Rng,
}

impl<E> Faulty<E> {
    fn roll(&mut self, rate: f64) -> bool {
        // Always draw, so that one rate does not shift the draws of another.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        u < rate
    }
}

#[async_trait]
impl<E: Environment> Environment for Faulty<E> {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        let mix = self.config.seed ^ episode.seed.rotate_left(17) ^ 0x5eed_fa17_0000_0000;
        self.rng = ChaCha8Rng::seed_from_u64(mix);
        self.inner.reset(task, episode).await
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        let panic_now = self.roll(self.config.panic_rate);
        let delay_now = self.roll(self.config.delay_rate);
        let failed: Vec<bool> = (0..action.tool_calls.len())
            .map(|_| self.roll(self.config.tool_error_rate))
            .collect();
        if panic_now {
            panic!("injected fault: panic in step");
        }
        if delay_now {
            tokio::time::sleep(self.config.delay).await;
        }
        if !failed.contains(&true) {
            return self.inner.step(action).await;
        }
        // Pass only the calls that survive; answer the others here, in the original order.
        let mut passed = action.clone();
        passed.tool_calls = action
            .tool_calls
            .iter()
            .zip(&failed)
            .filter(|(_, f)| !**f)
            .map(|(c, _)| c.clone())
            .collect();
        let mut step = if passed.tool_calls.is_empty() {
            Step::next(Vec::new())
        } else {
            self.inner.step(&passed).await?
        };
        let mut inner_messages = std::mem::take(&mut step.messages).into_iter();
        let inner_results = step.tool_results().unwrap_or_default();
        let mut injected = Vec::new();
        let mut results = Vec::with_capacity(action.tool_calls.len());
        for (call, failed) in action.tool_calls.iter().zip(&failed) {
            if *failed {
                let text = json!({"error": {"type": FAULT_KIND, "tool": call.name,
                    "message": "the tool is temporarily unavailable; try again"}})
                .to_string();
                step.messages
                    .push(Message::tool(&call.id, &call.name, text));
                injected.push(Value::String(call.id.clone()));
                // The agent saw a failed call: every consumer must count it as one.
                results.push(ToolResult {
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    ok: false,
                    error: Some(FAULT_KIND.to_string()),
                });
            } else {
                // The inner answer to this call (tool messages come in call order).
                step.messages.extend(inner_messages.next());
                results.extend(inner_results.iter().find(|r| r.call_id == call.id).cloned());
            }
        }
        step.messages.extend(inner_messages);
        step.info
            .insert("injected_faults".into(), Value::Array(injected));
        Ok(step.with_tool_results(&results))
    }

    async fn outcome(&mut self) -> Result<Option<serde_json::Value>> {
        self.inner.outcome().await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}
