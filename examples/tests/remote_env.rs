//! Remote environments end to end, through the `mtrl serve-env` binary serving SOP-Bench's
//! customer_service domain:
//! - 64 sessions open at once on one server, each on its own task, give the transcripts of the
//!   same run done locally (timings aside), and evaluate alike;
//! - a server killed mid-run ends the episodes in flight with environment errors (while it is
//!   down, and after it restarts), nothing panics, and episodes started after the restart
//!   finish normally;
//! - in parity mode, a tool argument nested 10,000 brackets deep gets CPython's `SyntaxError`
//!   as its tool result, and the server (every other session with it) lives on.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mtrl_core::{
    Action, Agent, Limits, Message, RolloutDriver, StopReason, Task, Trajectory, TurnContext,
    async_trait,
};
use mtrl_env::remote::{ClientConfig, RemoteFactory};
use mtrl_env::sop_bench::{CanonicalAgent, Domain, InputPolicy, Mode, Source};
use mtrl_eval::{FinalOutputEvaluator, Summary, evaluate_all};
use serde_json::Value;
use tokio::sync::{Barrier, watch};

/// `mtrl serve-env`, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    /// Starts the binary on `addr` and waits for the URL it prints.
    fn start(addr: &str) -> Served {
        Self::start_with(addr, &[])
    }

    /// As [`Served::start`], with more arguments.
    fn start_with(addr: &str, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mtrl"))
            .args(["serve-env", "--domain", "customer_service", "--addr", addr])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mtrl serve-env starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "first line: {line:?}");
        Served { child, url }
    }

    /// Kills it (SIGKILL: no goodbye) and returns what it wrote on stderr.
    fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut err).unwrap();
        }
        err
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn domain() -> Option<Domain> {
    match Domain::load(&Source::from_env(), "customer_service") {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("notice: SOP-Bench is not reachable ({e}); skipping");
            None
        }
    }
}

/// Calls the domain's tools like the audit's canonical agent, then answers with the task's
/// labelled outputs (a harness for the plumbing, not a policy).
struct Labelled {
    tools: CanonicalAgent,
    answers: HashMap<String, Value>,
}

#[async_trait]
impl Agent for Labelled {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let action = self.tools.act(ctx).await?;
        if !action.message.tool_calls.is_empty() {
            return Ok(action);
        }
        let body = self.answers[ctx.task.id()].to_string();
        Ok(Action::new(Message::assistant(format!(
            "Done.\n<final_output>{body}</final_output>"
        ))))
    }
}

fn labelled(domain: &Domain, tasks: &[Task]) -> Labelled {
    Labelled {
        tools: CanonicalAgent::new(domain),
        answers: tasks
            .iter()
            .map(|t| (t.id().to_string(), t.ground_truth().clone()))
            .collect(),
    }
}

/// Holds every episode at its first turn until all `n` have opened their sessions, and
/// records how many sessions the server then holds.
struct Together<'a> {
    inner: &'a Labelled,
    barrier: Barrier,
    remote: RemoteFactory,
    open_at_once: AtomicUsize,
}

#[async_trait]
impl Agent for Together<'_> {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        if ctx.turn_index() == 0 && self.barrier.wait().await.is_leader() {
            let health = self
                .remote
                .health()
                .await
                .map_err(mtrl_core::Error::agent)?;
            self.open_at_once.store(health.sessions, Ordering::SeqCst);
        }
        self.inner.act(ctx).await
    }
}

fn driver(domain: &Domain, concurrency: usize) -> RolloutDriver {
    RolloutDriver::new(Limits {
        max_turns: domain.tools().len() + 2,
        ..Limits::default()
    })
    .with_concurrency(concurrency)
}

fn tasks(domain: &Domain, skip: usize, n: usize) -> Vec<Task> {
    let all = domain.tasks(InputPolicy::Mtrl).unwrap();
    assert!(all.len() >= skip + n, "customer_service has enough tasks");
    all.into_iter().skip(skip).take(n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_remote_sessions_equal_local_runs_and_evaluate_alike() {
    let Some(domain) = domain() else { return };
    let tasks = tasks(&domain, 0, 64);
    let agent = labelled(&domain, &tasks);
    let driver = driver(&domain, 64);
    let local: Vec<Trajectory> = driver
        .run_batch(
            &agent,
            &domain.environment(Mode::Strict).unwrap(),
            &tasks,
            1,
        )
        .await
        .into_iter()
        .flatten()
        .collect();

    let served = Served::start("127.0.0.1:0");
    let remote = RemoteFactory::new(&served.url, ClientConfig::default()).unwrap();
    let together = Together {
        inner: &agent,
        barrier: Barrier::new(64),
        remote: remote.clone(),
        open_at_once: AtomicUsize::new(0),
    };
    let through_http: Vec<Trajectory> = driver
        .run_batch(&together, &remote, &tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(together.open_at_once.load(Ordering::SeqCst), 64);
    assert_eq!(
        remote.health().await.unwrap().sessions,
        0,
        "every session closed"
    );

    // The same transcripts, tool calls and results included.
    assert_eq!(local.len(), 64);
    let mut tool_results = 0;
    for (l, r) in local.iter().zip(&through_http) {
        assert_eq!(r.stop, StopReason::Answered, "{:?}", r.error);
        assert!(r.close_error.is_none());
        tool_results += r.turns.iter().map(|t| t.observations.len()).sum::<usize>();
        assert_eq!(
            l.clone().untimed(),
            r.clone().untimed(),
            "task {}",
            l.task_id
        );
    }
    assert!(tool_results >= 64, "the episodes called tools");
    // And they evaluate alike: every labelled answer succeeds strictly.
    let evaluator = FinalOutputEvaluator::new();
    let local_records = evaluate_all(&evaluator, &tasks, &local).await.unwrap();
    let remote_records = evaluate_all(&evaluator, &tasks, &through_http)
        .await
        .unwrap();
    let summary = |records| Summary::from_records(records).domains["customer_service"].clone();
    let (l, r) = (summary(&local_records), summary(&remote_records));
    assert_eq!(r.episodes, 64);
    assert_eq!(r.tsr(), 1.0, "{:?}", r.failures);
    assert_eq!(l.tsr(), r.tsr());
    assert_eq!(l.tools.calls, r.tools.calls);
    let stderr = served.kill();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Holds each gated task's episode at its second turn (after one step), counting arrivals,
/// until its gate opens.
struct Gated<'a> {
    inner: &'a Labelled,
    gates: HashMap<String, watch::Receiver<bool>>,
    arrived: AtomicUsize,
}

#[async_trait]
impl Agent for Gated<'_> {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        if ctx.turn_index() == 1 {
            if let Some(gate) = self.gates.get(ctx.task.id()) {
                self.arrived.fetch_add(1, Ordering::SeqCst);
                let mut gate = gate.clone();
                let _ = gate.wait_for(|open| *open).await;
            }
        }
        self.inner.act(ctx).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_only_the_episodes_in_flight() {
    let Some(domain) = domain() else { return };
    let down = tasks(&domain, 0, 4);
    let restarted = tasks(&domain, 4, 4);
    let after = tasks(&domain, 8, 8);
    let all: Vec<Task> = down
        .iter()
        .chain(&restarted)
        .chain(&after)
        .cloned()
        .collect();
    let agent = labelled(&domain, &all);
    let (open_down, gate_down) = watch::channel(false);
    let (open_restarted, gate_restarted) = watch::channel(false);
    let mut gates = HashMap::new();
    for t in &down {
        gates.insert(t.id().to_string(), gate_down.clone());
    }
    for t in &restarted {
        gates.insert(t.id().to_string(), gate_restarted.clone());
    }
    let gated = Arc::new(Gated {
        inner: &agent,
        gates,
        arrived: AtomicUsize::new(0),
    });

    let served = Served::start("127.0.0.1:0");
    let addr = served.url.trim_start_matches("http://").to_string();
    let config = ClientConfig {
        retries: 2,
        backoff: Duration::from_millis(50),
        ..ClientConfig::default()
    };
    let remote = RemoteFactory::new(&served.url, config).unwrap();
    let driver = driver(&domain, 8);

    // Eight episodes start and take one step each, then wait at their gates.
    let (down_done, mut down_finished) = watch::channel(false);
    let run_down = async {
        let runs = driver.run_batch(&*gated, &remote, &down, 1).await;
        down_done.send_replace(true);
        runs
    };
    let run_restarted = driver.run_batch(&*gated, &remote, &restarted, 1);
    let control = async {
        while gated.arrived.load(Ordering::SeqCst) < 8 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Killed mid-run.
        let stderr = served.kill();
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Four go on while nobody listens...
        open_down.send_replace(true);
        let _ = down_finished.wait_for(|done| *done).await;
        // ...four more after a new server took the port: it never heard of their sessions.
        let served = Served::start(&addr);
        open_restarted.send_replace(true);
        served
    };
    let (down_runs, restarted_runs, served) = tokio::join!(run_down, run_restarted, control);

    for (t, why) in down_runs
        .iter()
        .flatten()
        .map(|t| (t, "after 3 attempt"))
        .chain(
            restarted_runs
                .iter()
                .flatten()
                .map(|t| (t, "UnknownSession")),
        )
    {
        assert_eq!(t.stop, StopReason::EnvironmentError, "{}", t.task_id);
        let error = t.error.as_ref().unwrap();
        assert!(!error.panicked);
        assert!(
            error.message.contains(why),
            "{}: {}",
            t.task_id,
            error.message
        );
        assert_eq!(t.turns.len(), 2, "one good step, then the failed one");
    }

    // Episodes started after the restart finish normally, and equal local runs.
    let fresh = driver.run_batch(&agent, &remote, &after, 1).await;
    let local = driver
        .run_batch(
            &agent,
            &domain.environment(Mode::Strict).unwrap(),
            &after,
            1,
        )
        .await;
    for (r, l) in fresh.into_iter().flatten().zip(local.into_iter().flatten()) {
        assert_eq!(r.stop, StopReason::Answered, "{:?}", r.error);
        assert_eq!(r.untimed(), l.untimed());
    }
    let stderr = served.kill();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_argument_is_a_tool_error_not_a_dead_server() {
    use mtrl_core::{Environment, EnvironmentFactory, Episode, ToolCall};
    let Some(domain) = domain() else { return };
    let task = tasks(&domain, 0, 1).remove(0);
    let served = Served::start_with("127.0.0.1:0", &["--parity"]);
    let remote = RemoteFactory::new(&served.url, ClientConfig::default()).unwrap();
    // A second session, open across the attack, must be untouched by it.
    let mut bystander = remote.create(&task, &Episode::default()).unwrap();
    bystander.reset(&task, &Episode::default()).await.unwrap();
    let mut env = remote.create(&task, &Episode::default()).unwrap();
    env.reset(&task, &Episode::default()).await.unwrap();
    // executeTroubleshooting reads root_causes with ast.literal_eval.
    let call = |root_causes: String| {
        Message::assistant_with_calls(
            "",
            vec![ToolCall::new(
                "c0",
                "executeTroubleshooting",
                &serde_json::json!({
                    "account_id": "BCD-89012",
                    "session_token": "SES-20250510-BCD89012-001",
                    "root_causes": root_causes,
                }),
            )],
        )
    };
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let step = env.step(&call(deep)).await.unwrap();
    assert_eq!(
        step.messages[0].content,
        "Error: too many nested parentheses (<unknown>, line 1)"
    );
    assert_eq!(
        step.tool_results().unwrap()[0].error.as_deref(),
        Some("SyntaxError")
    );
    // The same session goes on, and so does the other one.
    let step = env.step(&call("['a']".into())).await.unwrap();
    assert!(
        step.messages[0]
            .content
            .starts_with("Error: Incorrect root causes"),
        "{step:?}"
    );
    let answered = bystander
        .step(&Message::assistant("<final_output>{}</final_output>"))
        .await
        .unwrap();
    assert!(answered.done);
    assert_eq!(remote.health().await.unwrap().sessions, 2);
    env.close().await.unwrap();
    bystander.close().await.unwrap();
    let stderr = served.kill();
    assert!(
        !stderr.contains("overflow") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
