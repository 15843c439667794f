//! Recording every call and result to JSON Lines, and serving a recorded session back.

use std::io::Write;
use std::sync::{Arc, Mutex};

use mtrl_core::{
    Environment, EnvironmentFactory, Episode, Error, Message, Reset, Result, Step, Task, ToolSpec,
    async_trait,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Layer;

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordEntry {
    /// An episode started.
    Reset {
        /// The task.
        task_id: String,
        /// The episode seed.
        seed: u64,
        /// The opening messages.
        messages: Vec<Message>,
        /// The advertised tools.
        tools: Vec<ToolSpec>,
        /// The reset's metadata.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        metadata: Map<String, Value>,
    },
    /// The environment answered an action.
    Step {
        /// The task.
        task_id: String,
        /// The episode seed.
        seed: u64,
        /// The 0-based turn.
        turn: usize,
        /// The assistant's action, with its tool calls.
        action: Message,
        /// The environment's answer, with the tool results.
        observations: Vec<Message>,
        /// Whether the episode ended.
        done: bool,
        /// The step's `info` (tool results, injected faults, truncations…), which rewards and
        /// evaluators read.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        info: Map<String, Value>,
    },
    /// The episode's outcome, as the environment reported it when the episode ended.
    Outcome {
        /// The task.
        task_id: String,
        /// The episode seed.
        seed: u64,
        /// The outcome (absent: the environment reported none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<Value>,
    },
    /// The environment failed.
    Error {
        /// The task.
        task_id: String,
        /// The episode seed.
        seed: u64,
        /// The 0-based turn (the number of steps before the failure).
        turn: usize,
        /// The error.
        message: String,
    },
}

impl RecordEntry {
    fn key(&self) -> (&str, u64) {
        match self {
            RecordEntry::Reset { task_id, seed, .. }
            | RecordEntry::Step { task_id, seed, .. }
            | RecordEntry::Outcome { task_id, seed, .. }
            | RecordEntry::Error { task_id, seed, .. } => (task_id, *seed),
        }
    }
}

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Writes every reset, tool call and result of the wrapped environments to a JSON Lines sink,
/// one [`RecordEntry`] per line. Clones share the sink; lines of concurrent episodes interleave
/// whole, never mixed.
#[derive(Clone)]
pub struct Recorder {
    sink: Sink,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Records to `sink` (a file, a buffer…).
    pub fn new(sink: impl Write + Send + 'static) -> Self {
        Self {
            sink: Arc::new(Mutex::new(Box::new(sink))),
        }
    }

    /// Records that the environment failed, then passes the failure on.
    fn failed<T>(&self, task_id: String, seed: u64, turn: usize, e: Error) -> Result<T> {
        self.write(&RecordEntry::Error {
            task_id,
            seed,
            turn,
            message: e.to_string(),
        })?;
        Err(e)
    }

    fn write(&self, entry: &RecordEntry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| Error::environment("the recorder's sink was poisoned by a panic"))?;
        sink.write_all(&line)?;
        sink.flush()?;
        Ok(())
    }
}

impl<E: Environment> Layer<E> for Recorder {
    type Env = Recorded<E>;

    fn layer(&self, inner: E) -> Self::Env {
        Recorded {
            inner,
            recorder: self.clone(),
            key: None,
            turn: 0,
        }
    }
}

/// An environment whose traffic a [`Recorder`] writes down.
#[derive(Debug)]
pub struct Recorded<E> {
    inner: E,
    recorder: Recorder,
    key: Option<(String, u64)>,
    turn: usize,
}

#[async_trait]
impl<E: Environment> Environment for Recorded<E> {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        self.key = Some((task.id().to_string(), episode.seed));
        self.turn = 0;
        match self.inner.reset(task, episode).await {
            Ok(reset) => {
                self.recorder.write(&RecordEntry::Reset {
                    task_id: task.id().to_string(),
                    seed: episode.seed,
                    messages: reset.messages.clone(),
                    tools: reset.tools.clone(),
                    metadata: reset.metadata.clone(),
                })?;
                Ok(reset)
            }
            Err(e) => self
                .recorder
                .failed(task.id().to_string(), episode.seed, 0, e),
        }
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        let (task_id, seed) = self.key.clone().unwrap_or_default();
        let turn = self.turn;
        self.turn += 1;
        match self.inner.step(action).await {
            Ok(step) => {
                self.recorder.write(&RecordEntry::Step {
                    task_id,
                    seed,
                    turn,
                    action: action.clone(),
                    observations: step.messages.clone(),
                    done: step.done,
                    info: step.info.clone(),
                })?;
                Ok(step)
            }
            Err(e) => self.recorder.failed(task_id, seed, turn, e),
        }
    }

    async fn outcome(&mut self) -> Result<Option<Value>> {
        let (task_id, seed) = self.key.clone().unwrap_or_default();
        let turn = self.turn;
        match self.inner.outcome().await {
            Ok(outcome) => {
                // An environment without outcomes leaves no line for them.
                if outcome.is_some() {
                    self.recorder.write(&RecordEntry::Outcome {
                        task_id,
                        seed,
                        outcome: outcome.clone(),
                    })?;
                }
                Ok(outcome)
            }
            Err(e) => self.recorder.failed(task_id, seed, turn, e),
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

/// Serves recorded sessions back: an [`EnvironmentFactory`] whose environments answer exactly
/// what was recorded for the same task and seed (messages, reset metadata and each step's
/// `info`, so that rewards and evaluators read a replay as they read the live run), as long as the agent makes the same tool calls
/// (same names, same arguments as JSON values). Any divergence is an environment error that
/// names the turn and both calls; it is never papered over.
#[derive(Debug, Clone, Default)]
pub struct Replayer {
    entries: Arc<Vec<RecordEntry>>,
}

impl Replayer {
    /// Serves these entries.
    pub fn new(entries: Vec<RecordEntry>) -> Self {
        Self {
            entries: Arc::new(entries),
        }
    }

    /// Reads a recording written by a [`Recorder`].
    ///
    /// # Errors
    /// [`Error::Jsonl`] naming the first bad line.
    pub fn from_jsonl(reader: impl std::io::BufRead) -> Result<Self> {
        Ok(Self::new(mtrl_core::read_jsonl(reader)?))
    }
}

impl EnvironmentFactory for Replayer {
    type Env = ReplayEnvironment;

    fn create(&self, _task: &Task, _episode: &Episode) -> Result<Self::Env> {
        Ok(ReplayEnvironment {
            entries: self.entries.clone(),
            session: Vec::new(),
            turn: 0,
        })
    }
}

/// One replayed session (see [`Replayer`]).
#[derive(Debug)]
pub struct ReplayEnvironment {
    entries: Arc<Vec<RecordEntry>>,
    session: Vec<usize>,
    turn: usize,
}

fn replay_error(msg: String) -> Error {
    Error::environment(crate::Error::Replay(msg))
}

fn same_calls(recorded: &Message, action: &Message) -> bool {
    let parse = |s: &str| serde_json::from_str::<Value>(s).ok();
    recorded.tool_calls.len() == action.tool_calls.len()
        && recorded
            .tool_calls
            .iter()
            .zip(&action.tool_calls)
            .all(|(r, a)| {
                r.name == a.name
                    && match (parse(&r.arguments), parse(&a.arguments)) {
                        (Some(x), Some(y)) => x == y,
                        _ => r.arguments == a.arguments,
                    }
            })
}

/// `value` with each string that is a recorded call id replaced by the id of the call that
/// answers it now (tool results, injected faults and truncations name calls by id).
fn renamed_calls(value: &Value, ids: &std::collections::HashMap<&str, &str>) -> Value {
    match value {
        Value::String(s) => match ids.get(s.as_str()) {
            Some(id) => Value::String((*id).to_string()),
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| renamed_calls(v, ids)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), renamed_calls(v, ids)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn describe_calls(message: &Message) -> String {
    if message.tool_calls.is_empty() {
        return "a final answer".into();
    }
    message
        .tool_calls
        .iter()
        .map(|c| format!("{}({})", c.name, c.arguments))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Environment for ReplayEnvironment {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        let key = (task.id(), episode.seed);
        // The last recorded session for this task and seed.
        let start = self
            .entries
            .iter()
            .rposition(|e| matches!(e, RecordEntry::Reset { .. }) && e.key() == key)
            .ok_or_else(|| {
                replay_error(format!(
                    "no recorded session for task `{}` with seed {}",
                    key.0, key.1
                ))
            })?;
        self.session = (start..self.entries.len())
            .filter(|&i| self.entries[i].key() == key)
            .collect();
        self.turn = 0;
        let RecordEntry::Reset {
            messages,
            tools,
            metadata,
            ..
        } = &self.entries[start]
        else {
            unreachable!("`start` was found as a reset entry")
        };
        Ok(Reset {
            messages: messages.clone(),
            tools: tools.clone(),
            metadata: metadata.clone(),
        })
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        let turn = self.turn;
        self.turn += 1;
        let entry = self
            .session
            .iter()
            .map(|&i| &self.entries[i])
            .find(|e| match e {
                RecordEntry::Step { turn: t, .. } | RecordEntry::Error { turn: t, .. } => {
                    *t == turn
                }
                RecordEntry::Reset { .. } | RecordEntry::Outcome { .. } => false,
            })
            .ok_or_else(|| replay_error(format!("the recording has no turn {turn}")))?;
        match entry {
            RecordEntry::Step {
                action: recorded,
                observations,
                done,
                info,
                ..
            } => {
                if !same_calls(recorded, action) {
                    return Err(replay_error(format!(
                        "turn {turn} diverged: recorded {}, got {}",
                        describe_calls(recorded),
                        describe_calls(action)
                    )));
                }
                // Answer with this action's call ids, which a new sample may have renamed.
                let ids: std::collections::HashMap<&str, &str> = recorded
                    .tool_calls
                    .iter()
                    .zip(&action.tool_calls)
                    .map(|(r, a)| (r.id.as_str(), a.id.as_str()))
                    .collect();
                let messages = observations
                    .iter()
                    .map(|m| {
                        let mut m = m.clone();
                        if let Some(id) = m.tool_call_id.as_deref().and_then(|id| ids.get(id)) {
                            m.tool_call_id = Some((*id).to_string());
                        }
                        m
                    })
                    .collect();
                let info = info
                    .iter()
                    .map(|(k, v)| (k.clone(), renamed_calls(v, &ids)))
                    .collect();
                Ok(Step {
                    messages,
                    done: *done,
                    info,
                })
            }
            RecordEntry::Error { message, .. } => Err(replay_error(format!(
                "turn {turn} failed when recorded: {message}"
            ))),
            RecordEntry::Reset { .. } | RecordEntry::Outcome { .. } => {
                unreachable!("filtered out above")
            }
        }
    }

    /// The outcome recorded for this session (none when the recording has none).
    async fn outcome(&mut self) -> Result<Option<Value>> {
        Ok(self
            .session
            .iter()
            .find_map(|&i| match &self.entries[i] {
                RecordEntry::Outcome { outcome, .. } => Some(outcome.clone()),
                _ => None,
            })
            .flatten())
    }
}
