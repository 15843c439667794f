//! A small in-test environment and a scripted agent, shared by the integration tests.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtrl_core::{
    Action, Agent, Environment, Episode, Error, Message, Reset, Result, Step, Task, ToolCall,
    ToolSpec, TurnContext, async_trait,
};
use serde_json::json;

/// What the test environment does wrong, if anything.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub reset_error: bool,
    pub reset_panic: bool,
    /// Fail the step of this turn index.
    pub step_error_at: Option<usize>,
    /// Panic in the step of this turn index.
    pub step_panic_at: Option<usize>,
    /// Sleep this long in every step.
    pub step_delay: Option<Duration>,
    pub close_error: bool,
    pub close_panic: bool,
}

/// Shared counters the tests read after the episodes.
#[derive(Debug, Default)]
pub struct Probe {
    pub created: AtomicUsize,
    pub closed: AtomicUsize,
    pub live: AtomicUsize,
    pub max_live: AtomicUsize,
    /// Task ids in the order their episodes finished.
    pub finished: Mutex<Vec<String>>,
}

/// One `lookup` tool; a reply without tool calls ends the episode.
pub struct TestEnv {
    faults: Faults,
    probe: Arc<Probe>,
    task_id: String,
    turn: usize,
}

impl TestEnv {
    pub fn new(faults: Faults, probe: Arc<Probe>) -> Self {
        probe.created.fetch_add(1, Ordering::SeqCst);
        let live = probe.live.fetch_add(1, Ordering::SeqCst) + 1;
        probe.max_live.fetch_max(live, Ordering::SeqCst);
        Self {
            faults,
            probe,
            task_id: String::new(),
            turn: 0,
        }
    }
}

pub fn lookup_spec() -> ToolSpec {
    ToolSpec::new(
        "lookup",
        "Looks a key up.",
        json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}),
    )
    .unwrap()
}

#[async_trait]
impl Environment for TestEnv {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> Result<Reset> {
        if self.faults.reset_error {
            return Err(Error::environment("the sandbox did not start"));
        }
        if self.faults.reset_panic {
            panic!("reset exploded");
        }
        self.task_id = task.id().to_string();
        let mut metadata = serde_json::Map::new();
        metadata.insert("seed".into(), json!(episode.seed));
        Ok(Reset {
            messages: vec![
                Message::system("Follow the procedure."),
                Message::user(format!(
                    "Handle {}",
                    serde_json::Value::Object(task.inputs().clone())
                )),
            ],
            tools: vec![lookup_spec()],
            metadata,
        })
    }

    async fn step(&mut self, action: &Message) -> Result<Step> {
        let turn = self.turn;
        self.turn += 1;
        if let Some(delay) = self.faults.step_delay {
            tokio::time::sleep(delay).await;
        }
        if self.faults.step_error_at == Some(turn) {
            return Err(Error::environment(format!(
                "tool backend down at turn {turn}"
            )));
        }
        if self.faults.step_panic_at == Some(turn) {
            panic!("tool crashed at turn {turn}");
        }
        if action.tool_calls.is_empty() {
            return Ok(Step::done(vec![]));
        }
        let results = action
            .tool_calls
            .iter()
            .map(|c| Message::tool(&c.id, &c.name, format!("value of {}", c.arguments)))
            .collect();
        Ok(Step::next(results))
    }

    async fn close(&mut self) -> Result<()> {
        self.probe.closed.fetch_add(1, Ordering::SeqCst);
        self.probe.live.fetch_sub(1, Ordering::SeqCst);
        self.probe
            .finished
            .lock()
            .unwrap()
            .push(self.task_id.clone());
        if self.faults.close_panic {
            panic!("close exploded");
        }
        if self.faults.close_error {
            return Err(Error::environment("could not delete the sandbox"));
        }
        Ok(())
    }
}

/// One scripted move of the agent.
#[derive(Debug, Clone)]
pub enum Move {
    Act(Action),
    Fail(String),
    Panic,
    Sleep(Duration, Action),
}

pub fn call(key: &str) -> Move {
    Move::Act(
        Action::new(Message::assistant_with_calls(
            "",
            vec![ToolCall::new("c1", "lookup", &json!({"key": key}))],
        ))
        .with_tokens_used(10),
    )
}

pub fn answer(text: &str) -> Move {
    Move::Act(Action::new(Message::assistant(text)).with_tokens_used(5))
}

/// Plays its script turn by turn; a task id may have a script of its own. Past the end of the
/// script it answers "done".
#[derive(Debug, Default)]
pub struct ScriptedAgent {
    pub script: Vec<Move>,
    pub per_task: HashMap<String, Vec<Move>>,
}

impl ScriptedAgent {
    pub fn new(script: Vec<Move>) -> Self {
        Self {
            script,
            per_task: HashMap::new(),
        }
    }

    pub fn with_task(mut self, id: &str, script: Vec<Move>) -> Self {
        self.per_task.insert(id.to_string(), script);
        self
    }
}

#[async_trait]
impl Agent for ScriptedAgent {
    async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
        let script = self.per_task.get(ctx.task.id()).unwrap_or(&self.script);
        match script.get(ctx.turn_index()).cloned() {
            None => Ok(Action::new(Message::assistant("done")).with_tokens_used(1)),
            Some(Move::Act(a)) => Ok(a),
            Some(Move::Fail(msg)) => Err(Error::agent(msg)),
            Some(Move::Panic) => panic!("the policy exploded"),
            Some(Move::Sleep(d, a)) => {
                tokio::time::sleep(d).await;
                Ok(a)
            }
        }
    }
}

pub fn task(id: &str) -> Task {
    Task::new(
        id,
        json!({"key": id}),
        json!({"answer": format!("secret-{id}")}),
    )
    .unwrap()
}
