//! Tool-output truncation to a budget.

use mtrl_core::{Environment, Episode, Message, Reset, Result, Role, Step, Task, async_trait};
use serde_json::{Value, json};

use super::Layer;

/// Which part of an over-long output is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Cut the start, keep the end.
    Left,
    /// Cut the end, keep the start.
    Right,
    /// Cut the middle, keep both ends.
    Middle,
}

/// Cuts every tool message longer than a budget (in characters) down to it, marking the cut
/// in the text (`…[N characters cut]…`) and listing it in the step's `info` under
/// `truncated_outputs`. The marker counts toward the budget, so no output exceeds it.
#[derive(Debug, Clone, Copy)]
pub struct TruncateOutputs {
    max_chars: usize,
    side: Side,
}

impl TruncateOutputs {
    /// Cuts tool outputs to at most `max_chars` characters, on `side`.
    pub fn new(max_chars: usize, side: Side) -> Self {
        Self { max_chars, side }
    }

    /// The text cut to the budget, or `None` when it fits.
    pub fn truncate(&self, text: &str) -> Option<String> {
        let chars: Vec<char> = text.chars().collect();
        let total = chars.len();
        if total <= self.max_chars {
            return None;
        }
        // The marker states how much was cut, which depends on the marker's own length: iterate
        // to the fixed point (the length changes by a digit at most a few times).
        let mut keep = self.max_chars;
        let mut marker = String::new();
        for _ in 0..8 {
            marker = format!("…[{} characters cut]…", total - keep);
            let next = self.max_chars.saturating_sub(marker.chars().count());
            if next == keep {
                break;
            }
            keep = next;
        }
        if marker.chars().count() > self.max_chars {
            // No room for a marker: cut hard.
            marker.clear();
            keep = self.max_chars;
        }
        let out: String = match self.side {
            Side::Right => chars[..keep]
                .iter()
                .copied()
                .chain(marker.chars())
                .collect(),
            Side::Left => marker
                .chars()
                .chain(chars[total - keep..].iter().copied())
                .collect(),
            Side::Middle => {
                let head = keep.div_ceil(2);
                let tail = keep - head;
                chars[..head]
                    .iter()
                    .copied()
                    .chain(marker.chars())
                    .chain(chars[total - tail..].iter().copied())
                    .collect()
            }
        };
        Some(out)
    }
}

impl<E: Environment> Layer<E> for TruncateOutputs {
    type Env = Truncated<E>;

    fn layer(&self, inner: E) -> Self::Env {
        Truncated {
            inner,
            config: *self,
        }
    }
}

/// An environment whose tool outputs are cut by [`TruncateOutputs`].
#[derive(Debug)]
pub struct Truncated<E> {
    inner: E,
    config: TruncateOutputs,
}

#[async_trait]
impl<E: Environment> Environment for Truncated<E> {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        self.inner.reset(task, episode).await
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        let mut step = self.inner.step(action).await?;
        let mut cuts = Vec::new();
        for message in step.messages.iter_mut().filter(|m| m.role == Role::Tool) {
            if let Some(short) = self.config.truncate(&message.content) {
                cuts.push(json!({
                    "call_id": message.tool_call_id,
                    "original_chars": message.content.chars().count(),
                    "kept_chars": short.chars().count(),
                }));
                message.content = short;
            }
        }
        if !cuts.is_empty() {
            step.info
                .insert("truncated_outputs".into(), Value::Array(cuts));
        }
        Ok(step)
    }

    async fn outcome(&mut self) -> Result<Option<serde_json::Value>> {
        self.inner.outcome().await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}
