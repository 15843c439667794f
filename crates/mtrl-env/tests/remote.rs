//! The HTTP server and client of remote environments (feature `remote`): every kind of bad
//! request gets its 4xx and leaves other sessions alone; sessions are isolated and expire;
//! environment errors, panics and slow steps end only their session; steps replay
//! idempotently; and the client is an `Environment` whose episodes equal local ones.
#![cfg(feature = "remote")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mtrl_core::rollout::RolloutDriver;
use mtrl_core::{
    Action, Agent, Environment, EnvironmentFactory, Episode, Limits, Message, Reset, Step,
    StopReason, Task, TurnContext,
};
use mtrl_env::remote::{
    ClientConfig, EnvServer, ErrorBody, ErrorCode, Health, RemoteError, RemoteFactory,
    RunningServer, ServerConfig, SessionCreated, StepAnswer,
};
use serde_json::{Value, json};

/// Counts its steps; its answers depend on the task, the seed and every earlier action, so a
/// leak between sessions shows. Actions `fail`, `panic` and `slow` misbehave; `pause` takes
/// 300 ms.
struct Counter {
    label: String,
    seen: Vec<String>,
    steps: Arc<AtomicUsize>,
}

#[async_trait]
impl Environment for Counter {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> mtrl_core::Result<Reset> {
        self.label = format!("{}#{}", task.id(), episode.seed);
        Ok(Reset {
            messages: vec![Message::user(format!("count for {}", self.label))],
            ..Reset::default()
        })
    }

    async fn step(&mut self, action: &Message) -> mtrl_core::Result<Step> {
        self.steps.fetch_add(1, Ordering::SeqCst);
        match action.content.as_str() {
            "fail" => return Err(mtrl_core::Error::environment("asked to fail")),
            "panic" => panic!("asked to panic"),
            "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
            "pause" => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        self.seen.push(action.content.clone());
        let reply = Message::user(format!("{} saw {:?}", self.label, self.seen));
        Ok(if action.content == "done" {
            Step::done(vec![reply])
        } else {
            Step::next(vec![reply])
        })
    }

    async fn outcome(&mut self) -> mtrl_core::Result<Option<Value>> {
        Ok(Some(json!({"label": self.label, "seen": self.seen.len()})))
    }
}

fn counter_factory(
    steps: Arc<AtomicUsize>,
) -> impl Fn(&Task, &Episode) -> mtrl_core::Result<Counter> + Send + Sync + 'static {
    move |task: &Task, _episode: &Episode| {
        assert!(task.id() != "explode", "the factory panics for this task");
        Ok(Counter {
            label: String::new(),
            seen: Vec::new(),
            steps: steps.clone(),
        })
    }
}

async fn serve(config: ServerConfig) -> (RunningServer, Arc<AtomicUsize>) {
    let steps = Arc::new(AtomicUsize::new(0));
    let server = EnvServer::new(counter_factory(steps.clone()), config)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (server, steps)
}

fn task(id: &str) -> Task {
    Task::new(id, json!({"n": 1}), json!({"answer": 2})).unwrap()
}

fn create_body(id: &str) -> Value {
    json!({"task": task(id), "episode": Episode { index: 0, seed: 7 }})
}

/// Sends a raw request; returns the status and the JSON body (`Null` when not JSON).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some((content_type, text)) = body {
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        req = req.body(text.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts an error answer: its status and its code.
fn assert_error(answer: &(u16, Value), code: ErrorCode) {
    let body: ErrorBody = serde_json::from_value(answer.1.clone())
        .unwrap_or_else(|e| panic!("{answer:?} is not an error body: {e}"));
    assert_eq!(body.error.code, code, "{answer:?}");
    assert_eq!(answer.0, code.status(), "{answer:?}");
    assert!(!body.error.message.is_empty());
}

const JSON: &str = "application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_4xx_and_other_sessions_keep_their_state() {
    let (server, steps) = serve(ServerConfig {
        max_sessions: 2,
        max_body_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let base = server.url();
    let http = reqwest::Client::new();
    use reqwest::Method as M;

    // A healthy session, stepped once.
    let (status, body) = send(
        &http,
        M::POST,
        format!("{base}/v1/sessions"),
        Some((JSON, &create_body("kept").to_string())),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let kept: SessionCreated = serde_json::from_value(body).unwrap();
    let step_url = format!("{base}/v1/sessions/{}/step", kept.session);
    let step1 = json!({"seq": 1, "action": Message::assistant("a")}).to_string();
    let (status, first) = send(&http, M::POST, step_url.clone(), Some((JSON, &step1))).await;
    assert_eq!(status, 200);

    let sessions = format!("{base}/v1/sessions");
    // Not JSON.
    let r = send(&http, M::POST, sessions.clone(), Some((JSON, "{not json"))).await;
    assert_error(&r, ErrorCode::MalformedJson);
    // JSON of the wrong shape: no task, a task without inputs, an unknown field.
    for bad in [
        json!({"task": 1}),
        json!({"task": {"id": "x"}, "episode": {"index": 0, "seed": 1}}),
        json!({"task": task("x"), "episode": {"index": 0, "seed": 1}, "extra": true}),
    ] {
        let r = send(
            &http,
            M::POST,
            sessions.clone(),
            Some((JSON, &bad.to_string())),
        )
        .await;
        assert_error(&r, ErrorCode::InvalidBody);
    }
    // Not declared as JSON.
    let r = send(
        &http,
        M::POST,
        sessions.clone(),
        Some(("", &create_body("x").to_string())),
    )
    .await;
    assert_error(&r, ErrorCode::UnsupportedMediaType);
    // Too large.
    let huge = json!({"seq": 2, "action": Message::assistant("x".repeat(10_000))}).to_string();
    let r = send(&http, M::POST, step_url.clone(), Some((JSON, &huge))).await;
    assert_error(&r, ErrorCode::BodyTooLarge);
    // Wrong methods.
    let r = send(&http, M::GET, sessions.clone(), None).await;
    assert_error(&r, ErrorCode::MethodNotAllowed);
    let r = send(
        &http,
        M::PUT,
        format!("{base}/v1/health"),
        Some((JSON, "{}")),
    )
    .await;
    assert_error(&r, ErrorCode::MethodNotAllowed);
    let r = send(&http, M::GET, step_url.clone(), None).await;
    assert_error(&r, ErrorCode::MethodNotAllowed);
    // Unknown sessions and routes.
    let r = send(
        &http,
        M::POST,
        format!("{base}/v1/sessions/nope/step"),
        Some((JSON, &step1)),
    )
    .await;
    assert_error(&r, ErrorCode::UnknownSession);
    let r = send(&http, M::DELETE, format!("{base}/v1/sessions/nope"), None).await;
    assert_error(&r, ErrorCode::UnknownSession);
    let r = send(&http, M::GET, format!("{base}/v2/anything"), None).await;
    assert_error(&r, ErrorCode::NotFound);
    // A step out of order.
    let step5 = json!({"seq": 5, "action": Message::assistant("b")}).to_string();
    let r = send(&http, M::POST, step_url.clone(), Some((JSON, &step5))).await;
    assert_error(&r, ErrorCode::OutOfOrder);
    // A factory that panics is the environment's error, and its place is given back.
    let r = send(
        &http,
        M::POST,
        sessions.clone(),
        Some((JSON, &create_body("explode").to_string())),
    )
    .await;
    assert_error(&r, ErrorCode::EnvironmentError);
    // Too many sessions: the second fits, the third does not.
    let two = send(
        &http,
        M::POST,
        sessions.clone(),
        Some((JSON, &create_body("two").to_string())),
    )
    .await;
    assert_eq!(two.0, 201);
    let r = send(
        &http,
        M::POST,
        sessions.clone(),
        Some((JSON, &create_body("three").to_string())),
    )
    .await;
    assert_error(&r, ErrorCode::TooManySessions);

    // None of it touched the kept session: step 1 again replays its answer without stepping
    // the environment, and step 2 goes on from where it was.
    assert_eq!(steps.load(Ordering::SeqCst), 1);
    let (status, again) = send(&http, M::POST, step_url.clone(), Some((JSON, &step1))).await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(steps.load(Ordering::SeqCst), 1, "a replayed step ran again");
    let step2 = json!({"seq": 2, "action": Message::assistant("b")}).to_string();
    let (status, second) = send(&http, M::POST, step_url.clone(), Some((JSON, &step2))).await;
    assert_eq!(status, 200);
    let second: StepAnswer = serde_json::from_value(second).unwrap();
    assert_eq!(second.step.messages[0].content, r#"kept#7 saw ["a", "b"]"#);
    let (status, health) = send(&http, M::GET, format!("{base}/v1/health"), None).await;
    assert_eq!(status, 200);
    let health: Health = serde_json::from_value(health).unwrap();
    assert_eq!((health.sessions, health.max_sessions), (2, 2));
    // Closing frees a place.
    let (status, _) = send(
        &http,
        M::DELETE,
        format!("{base}/v1/sessions/{}", kept.session),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let r = send(&http, M::POST, step_url, Some((JSON, &step2))).await;
    assert_error(&r, ErrorCode::UnknownSession);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_answer_was_lost_is_replayed_not_repeated() {
    let (server, steps) = serve(ServerConfig::default()).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let (status, body) = send(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/sessions"),
        Some((JSON, &create_body("lost").to_string())),
    )
    .await;
    assert_eq!(status, 201);
    let created: SessionCreated = serde_json::from_value(body).unwrap();
    let url = format!("{base}/v1/sessions/{}/step", created.session);
    let step1 = json!({"seq": 1, "action": Message::assistant("pause")}).to_string();
    // The client hangs up before the answer comes...
    let lost = http
        .post(&url)
        .header("content-type", JSON)
        .body(step1.clone())
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(lost.unwrap_err().is_timeout());
    // ...the step still completes and is recorded: sending it again replays its answer.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, again) = send(&http, reqwest::Method::POST, url, Some((JSON, &step1))).await;
    assert_eq!(status, 200, "{again}");
    let again: StepAnswer = serde_json::from_value(again).unwrap();
    assert_eq!(again.step.messages[0].content, r#"lost#7 saw ["pause"]"#);
    assert_eq!(
        steps.load(Ordering::SeqCst),
        1,
        "the environment stepped once"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_panics_and_slow_steps_end_only_their_session_and_idle_sessions_expire() {
    // The limit leaves time for a panic's backtrace to print.
    let (server, _) = serve(ServerConfig {
        step_timeout: Duration::from_millis(1500),
        ..ServerConfig::default()
    })
    .await;
    let factory = RemoteFactory::new(server.url(), ClientConfig::default()).unwrap();
    let episode = Episode { index: 0, seed: 1 };
    let mut good = factory.create(&task("good"), &episode).unwrap();
    good.reset(&task("good"), &episode).await.unwrap();
    let expect_code = |r: mtrl_core::Result<Step>, code: ErrorCode| {
        let err = r.unwrap_err();
        let mtrl_core::Error::Environment(source) = &err else {
            panic!("{err} is not an environment error");
        };
        match source.downcast_ref::<RemoteError>() {
            Some(RemoteError::Status { code: Some(c), .. }) => assert_eq!(*c, code, "{err}"),
            other => panic!("{other:?}"),
        }
    };
    for (action, code) in [
        ("fail", ErrorCode::EnvironmentError),
        ("panic", ErrorCode::EnvironmentError),
        ("slow", ErrorCode::StepTimeout),
    ] {
        let mut bad = factory.create(&task(action), &episode).unwrap();
        bad.reset(&task(action), &episode).await.unwrap();
        expect_code(bad.step(&Message::assistant(action)).await, code);
        // The good session goes on, with its own state only.
        let s = good.step(&Message::assistant(action.to_uppercase())).await;
        assert!(s.unwrap().messages[0].content.starts_with("good#1 saw"));
    }
    let s = good.step(&Message::assistant("last")).await.unwrap();
    assert_eq!(
        s.messages[0].content,
        r#"good#1 saw ["FAIL", "PANIC", "SLOW", "last"]"#
    );
    // Only the good session is left (the failed one stays until closed).
    assert_eq!(factory.health().await.unwrap().sessions, 2);
    server.shutdown().await.unwrap();

    // Idle past the limit: forgotten.
    let (server, _) = serve(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let factory = RemoteFactory::new(server.url(), ClientConfig::default()).unwrap();
    let mut idle = factory.create(&task("idle"), &episode).unwrap();
    idle.reset(&task("idle"), &episode).await.unwrap();
    idle.step(&Message::assistant("a")).await.unwrap();
    assert_eq!(factory.health().await.unwrap().sessions, 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    expect_code(
        idle.step(&Message::assistant("late")).await,
        ErrorCode::UnknownSession,
    );
    assert_eq!(factory.health().await.unwrap().sessions, 0);
    server.shutdown().await.unwrap();
}

/// Answers `n` times, then says `done`.
struct Talker;

#[async_trait]
impl Agent for Talker {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let i = ctx.turn_index();
        let n = ctx.episode.seed % 4 + 1;
        let text = if i as u64 >= n {
            "done".to_string()
        } else {
            format!("{}-{i}", ctx.task.id())
        };
        Ok(Action::new(Message::assistant(text)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_episodes_equal_local_ones_and_an_absent_server_is_an_environment_error() {
    let (server, _) = serve(ServerConfig::default()).await;
    let tasks: Vec<Task> = (0..12).map(|i| task(&format!("t{i}"))).collect();
    let driver = RolloutDriver::new(Limits::default()).with_concurrency(12);
    let local = driver
        .run_batch(&Talker, &counter_factory(Arc::default()), &tasks, 2)
        .await;
    let remote_factory = RemoteFactory::new(server.url(), ClientConfig::default()).unwrap();
    let remote = driver.run_batch(&Talker, &remote_factory, &tasks, 2).await;
    for (l, r) in local
        .into_iter()
        .flatten()
        .zip(remote.into_iter().flatten())
    {
        assert_eq!(l.stop, StopReason::Answered);
        assert!(r.close_error.is_none(), "{:?}", r.close_error);
        assert!(l.outcome.is_some());
        // Outcomes included: the client asks the server for them.
        assert_eq!(l.untimed(), r.untimed());
    }
    // Every session was closed.
    assert_eq!(remote_factory.health().await.unwrap().sessions, 0);
    let url = server.url();
    server.shutdown().await.unwrap();

    // Nobody listens any more: the episode ends with an environment error after the retries.
    let config = ClientConfig {
        retries: 2,
        backoff: Duration::from_millis(20),
        ..ClientConfig::default()
    };
    let gone = RemoteFactory::new(url, config).unwrap();
    let t = driver
        .run_with(&Talker, &gone, &tasks[0], driver.episode(&tasks[0], 0))
        .await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    let message = t.error.unwrap().message;
    assert!(message.contains("after 3 attempt"), "{message}");
    assert!(matches!(
        RemoteFactory::new("localhost:1", ClientConfig::default()),
        Err(RemoteError::Client(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_are_not_the_episodes_next_action_are_refused() {
    let (server, steps) = serve(ServerConfig::default()).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let http = http.clone();
        async move {
            send(
                &http,
                reqwest::Method::POST,
                url,
                Some((JSON, &body.to_string())),
            )
            .await
        }
    };
    // A task with an empty id is refused when the body is read, as Task::new refuses it.
    let mut bad = create_body("x");
    bad["task"]["id"] = json!("");
    let answer = post(format!("{base}/v1/sessions"), bad).await;
    assert_error(&answer, ErrorCode::InvalidBody);
    assert!(
        answer.1.to_string().contains("task id is empty"),
        "{answer:?}"
    );

    let (status, body) = post(format!("{base}/v1/sessions"), create_body("s")).await;
    assert_eq!(status, 201);
    let created: SessionCreated = serde_json::from_value(body).unwrap();
    let url = format!("{base}/v1/sessions/{}/step", created.session);
    // Only an assistant message is an action.
    for role_message in [Message::user("hi"), Message::system("obey")] {
        let answer = post(url.clone(), json!({"seq": 1, "action": role_message})).await;
        assert_error(&answer, ErrorCode::InvalidBody);
    }
    let one = json!({"seq": 1, "action": Message::assistant("a")});
    assert_eq!(post(url.clone(), one.clone()).await.0, 200);
    // The same number with the same action is a retry; with another action, a conflict.
    assert_eq!(post(url.clone(), one).await.0, 200);
    let other = json!({"seq": 1, "action": Message::assistant("b")});
    assert_error(&post(url.clone(), other).await, ErrorCode::Conflict);
    // The episode ends; no step comes after it, but its answer is still replayed.
    let done = json!({"seq": 2, "action": Message::assistant("done")});
    let (status, body) = post(url.clone(), done.clone()).await;
    assert_eq!(status, 200);
    assert!(
        serde_json::from_value::<StepAnswer>(body)
            .unwrap()
            .step
            .done
    );
    assert_eq!(post(url.clone(), done).await.0, 200);
    let after = json!({"seq": 3, "action": Message::assistant("more")});
    assert_error(&post(url.clone(), after).await, ErrorCode::EpisodeDone);
    assert_eq!(
        steps.load(Ordering::SeqCst),
        2,
        "only the two real steps ran"
    );
    server.shutdown().await.unwrap();
}

/// A remote factory names the tools its server's environments serve (from the health check), so
/// the audit's schema check works through HTTP as it does in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_sees_a_remote_environments_served_tools() {
    use mtrl_core::{ToolSpec, agent_fn};
    use mtrl_env::audit::{Audit, Check};
    use mtrl_env::{ToolContext, ToolEnvironmentBuilder, ToolOutput, tool_fn};

    let tool = |name: &str| {
        tool_fn(
            ToolSpec::new(name, "A tool.", json!({"type": "object", "properties": {}})).unwrap(),
            |_, _: &mut ToolContext<'_, ()>| ToolOutput::text("ok"),
        )
    };
    let local = ToolEnvironmentBuilder::new()
        .tool(tool("getOrder"))
        .hidden_tool(tool("refundEverything"))
        .build()
        .unwrap();
    let server = EnvServer::new(local.clone(), ServerConfig::default())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let remote = RemoteFactory::new(server.url(), ClientConfig::default()).unwrap();
    assert_eq!(remote.served_tools(), None, "unknown before a health check");
    let health = remote.health().await.unwrap();
    assert_eq!(health.served_tools, local.served_tools());
    assert_eq!(remote.served_tools(), local.served_tools());

    let agent = agent_fn(|_| Ok(Message::assistant("done")));
    let tasks = [task("t")];
    let here = Audit::new("local").run(&local, &agent, &tasks).await;
    let there = Audit::new("remote").run(&remote, &agent, &tasks).await;
    assert!(there.flagged(Check::SchemaMismatch), "{:?}", there.findings);
    assert_eq!(here.findings, there.findings);
    server.shutdown().await.unwrap();
}
