//! The wrappers: time limit, fault injection, recorder and replayer, truncation.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtrl_core::{
    Action, Agent, Environment, Episode, Limits, Message, Result as CoreResult, RolloutDriver,
    StopReason, Task, ToolCall, ToolSpec, Trajectory, TurnContext, async_trait,
};
use mtrl_env::layers::{
    EnvironmentFactoryExt, FaultInjection, RecordEntry, Recorder, Replayer, Side, TimeLimit,
    TruncateOutputs,
};
use mtrl_env::{
    EnvironmentExt, ToolContext, ToolEnvironmentBuilder, ToolEnvironmentFactory, ToolOutput,
    tool_fn,
};
use serde_json::{Value, json};

/// `echo` returns its text; `slow` sleeps the given seconds.
fn tools() -> ToolEnvironmentFactory {
    let echo = tool_fn(
        ToolSpec::new(
            "echo",
            "Echoes.",
            json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
        )
        .unwrap(),
        |args, _: &mut ToolContext<'_, ()>| ToolOutput::text(args["text"].as_str().unwrap()),
    );
    ToolEnvironmentBuilder::new().tool(echo).build().unwrap()
}

/// An environment whose steps take a while.
struct Slow(Duration);

#[async_trait]
impl Environment for Slow {
    async fn reset(&mut self, _: &Task, _: &Episode) -> CoreResult<mtrl_core::Reset> {
        Ok(Default::default())
    }
    async fn step(&mut self, _: &Message) -> CoreResult<mtrl_core::Step> {
        tokio::time::sleep(self.0).await;
        Ok(mtrl_core::Step::done(vec![]))
    }
}

fn task(id: &str) -> Task {
    Task::new(id, json!({}), json!(null)).unwrap()
}

fn echo_calls(texts: &[&str]) -> Message {
    Message::assistant_with_calls(
        "",
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| ToolCall::new(format!("c{i}"), "echo", &json!({"text": t})))
            .collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn time_limit_fails_slow_steps_only() {
    let mut slow = Slow(Duration::from_secs(10)).layer(TimeLimit::new(Duration::from_secs(2)));
    slow.reset(&task("t"), &Episode::default()).await.unwrap();
    let err = slow.step(&Message::assistant("x")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("exceeded the time limit of 2000 ms"),
        "{err}"
    );

    let mut quick = Slow(Duration::from_secs(1)).layer(TimeLimit::new(Duration::from_secs(2)));
    quick.reset(&task("t"), &Episode::default()).await.unwrap();
    assert!(quick.step(&Message::assistant("x")).await.unwrap().done);
}

#[tokio::test]
async fn fault_injection_fails_calls_at_the_rate_and_keeps_order() {
    let all = tools().layer(FaultInjection::new(1).tool_errors(1.0));
    let mut env =
        mtrl_core::EnvironmentFactory::create(&all, &task("t"), &Episode::default()).unwrap();
    env.reset(&task("t"), &Episode::default()).await.unwrap();
    let step = env.step(&echo_calls(&["a", "b"])).await.unwrap();
    assert_eq!(step.messages.len(), 2);
    for m in &step.messages {
        let v: Value = serde_json::from_str(&m.content).unwrap();
        assert_eq!(v["error"]["type"], "tool_unavailable");
    }
    assert_eq!(step.info["injected_faults"], json!(["c0", "c1"]));

    // At 50%, some calls pass and some fail, each answered in call order.
    let half = tools().layer(FaultInjection::new(3).tool_errors(0.5));
    let texts: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let run = |seed: u64| {
        let half = half.clone();
        let action = echo_calls(&refs);
        async move {
            let ep = Episode { index: 0, seed };
            let mut env = mtrl_core::EnvironmentFactory::create(&half, &task("t"), &ep).unwrap();
            env.reset(&task("t"), &ep).await.unwrap();
            env.step(&action).await.unwrap()
        }
    };
    let a = run(9).await;
    let injected = a.info["injected_faults"].as_array().unwrap().len();
    assert!(
        (8..=32).contains(&injected),
        "{injected} of 40 failed at rate 0.5"
    );
    for (i, m) in a.messages.iter().enumerate() {
        assert_eq!(m.tool_call_id.as_deref(), Some(format!("c{i}").as_str()));
        let failed = a.info["injected_faults"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("c{i}")));
        if !failed {
            assert_eq!(m.content, format!("t{i}"));
        }
    }
    // Same episode seed, same faults; another seed, other faults.
    assert_eq!(run(9).await, a);
    assert_ne!(run(10).await.info, a.info);
}

#[tokio::test(start_paused = true)]
async fn fault_injection_delays_steps() {
    let delayed = tools().layer(FaultInjection::new(1).delays(1.0, Duration::from_secs(3)));
    let mut env =
        mtrl_core::EnvironmentFactory::create(&delayed, &task("t"), &Episode::default()).unwrap();
    env.reset(&task("t"), &Episode::default()).await.unwrap();
    let start = tokio::time::Instant::now();
    env.step(&echo_calls(&["a"])).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

struct EchoAgent;

#[async_trait]
impl Agent for EchoAgent {
    async fn act(&self, ctx: &TurnContext<'_>) -> CoreResult<Action> {
        Ok(Action::new(match ctx.turn_index() {
            0 => echo_calls(&[ctx.task.id(), "second"]),
            1 => echo_calls(&["third"]),
            _ => Message::assistant("done"),
        }))
    }
}

#[tokio::test]
async fn injected_panics_end_only_their_episode() {
    let factory = tools().layer(FaultInjection::new(5).panics(0.25));
    let tasks: Vec<Task> = (0..16).map(|i| task(&format!("t{i}"))).collect();
    let driver = RolloutDriver::new(Limits::default());
    let groups = driver.run_batch(&EchoAgent, &factory, &tasks, 1).await;
    let all: Vec<&Trajectory> = groups.iter().flatten().collect();
    assert_eq!(all.len(), 16);
    let panicked = all
        .iter()
        .filter(|t| t.stop == StopReason::EnvironmentError)
        .count();
    assert!(panicked > 0 && panicked < 16, "{panicked} of 16 panicked");
    for t in &all {
        match t.stop {
            StopReason::Answered => assert!(t.error.is_none()),
            StopReason::EnvironmentError => {
                let e = t.error.as_ref().unwrap();
                assert!(e.panicked && e.message.contains("injected fault"));
            }
            other => panic!("unexpected stop {other}"),
        }
    }
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn strip_timing(mut groups: Vec<Vec<Trajectory>>) -> Vec<Trajectory> {
    groups
        .drain(..)
        .flatten()
        .map(Trajectory::untimed)
        .collect()
}

#[tokio::test]
async fn a_recording_replays_to_the_same_transcripts() {
    let buf = SharedBuf::default();
    let recorded = tools().layer(Recorder::new(buf.clone()));
    let tasks: Vec<Task> = (0..3).map(|i| task(&format!("t{i}"))).collect();
    let driver = RolloutDriver::new(Limits::default()).with_seed(11);
    let live = strip_timing(driver.run_batch(&EchoAgent, &recorded, &tasks, 2).await);

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let entries: Vec<RecordEntry> = mtrl_core::from_jsonl_str(&text).unwrap();
    // 6 episodes: a reset and three steps each.
    assert_eq!(entries.len(), 6 * 4);
    let steps: Vec<&RecordEntry> = entries
        .iter()
        .filter(|e| matches!(e, RecordEntry::Step { .. }))
        .collect();
    assert_eq!(steps.len(), 18);
    assert!(text.contains(r#""name":"echo""#) && text.contains("third"));

    let replayer = Replayer::from_jsonl(text.as_bytes()).unwrap();
    let replayed = strip_timing(driver.run_batch(&EchoAgent, &replayer, &tasks, 2).await);
    assert_eq!(replayed, live);
}

#[tokio::test]
async fn a_replay_that_diverges_is_an_error_naming_the_turn() {
    let buf = SharedBuf::default();
    let recorded = tools().layer(Recorder::new(buf.clone()));
    let driver = RolloutDriver::new(Limits::default());
    driver
        .run_batch(&EchoAgent, &recorded, &[task("t0")], 1)
        .await;
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let replayer = Replayer::from_jsonl(text.as_bytes()).unwrap();

    struct Other;
    #[async_trait]
    impl Agent for Other {
        async fn act(&self, ctx: &TurnContext<'_>) -> CoreResult<Action> {
            Ok(Action::new(match ctx.turn_index() {
                0 => echo_calls(&["t0", "second"]),
                _ => echo_calls(&["something else"]),
            }))
        }
    }
    let t = &driver.run_batch(&Other, &replayer, &[task("t0")], 1).await[0][0];
    assert_eq!(t.stop, StopReason::EnvironmentError);
    let msg = &t.error.as_ref().unwrap().message;
    assert!(msg.contains("turn 1 diverged"), "{msg}");
    assert!(
        msg.contains("third") && msg.contains("something else"),
        "{msg}"
    );

    // A task or seed that was never recorded.
    let t = &driver
        .run_batch(&EchoAgent, &replayer, &[task("t9")], 1)
        .await[0][0];
    assert_eq!(t.stop, StopReason::EnvironmentError);
    assert!(
        t.error
            .as_ref()
            .unwrap()
            .message
            .contains("no recorded session for task `t9`")
    );
}

#[test]
fn truncation_keeps_the_chosen_side_within_the_budget() {
    let text: String = (0..300)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for (side, keeps_start, keeps_end) in [
        (Side::Right, true, false),
        (Side::Left, false, true),
        (Side::Middle, true, true),
    ] {
        let cut = TruncateOutputs::new(100, side).truncate(&text).unwrap();
        assert_eq!(cut.chars().count(), 100, "{side:?}: {cut}");
        let marker = cut.find("…[").expect("the cut is marked");
        let stated: usize = cut[marker + "…[".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let marker_len = format!("…[{stated} characters cut]…").chars().count();
        assert_eq!(
            stated,
            300 - (100 - marker_len),
            "{side:?}: the marker states the cut"
        );
        assert_eq!(cut.starts_with("abc"), keeps_start, "{side:?}");
        assert_eq!(cut.ends_with(&text[290..]), keeps_end, "{side:?}");
    }
    assert_eq!(TruncateOutputs::new(300, Side::Right).truncate(&text), None);
    // Multi-byte text is cut on character boundaries; a tiny budget cuts hard.
    let wide = "é🦀".repeat(50);
    let cut = TruncateOutputs::new(30, Side::Middle)
        .truncate(&wide)
        .unwrap();
    assert_eq!(cut.chars().count(), 30);
    assert_eq!(
        TruncateOutputs::new(3, Side::Right)
            .truncate(&wide)
            .unwrap(),
        "é🦀é"
    );
}

#[tokio::test]
async fn truncation_layer_cuts_tool_messages_and_says_so() {
    let factory = tools().layer(TruncateOutputs::new(40, Side::Right));
    let mut env =
        mtrl_core::EnvironmentFactory::create(&factory, &task("t"), &Episode::default()).unwrap();
    env.reset(&task("t"), &Episode::default()).await.unwrap();
    let long = "x".repeat(500);
    let step = env.step(&echo_calls(&["short", &long])).await.unwrap();
    assert_eq!(step.messages[0].content, "short");
    assert_eq!(step.messages[1].content.chars().count(), 40);
    assert_eq!(
        step.info["truncated_outputs"],
        json!([{"call_id": "c1", "original_chars": 500, "kept_chars": 40}])
    );
}

#[tokio::test]
async fn layers_compose() {
    let buf = SharedBuf::default();
    let factory = tools()
        .layer(TruncateOutputs::new(40, Side::Left))
        .layer(Recorder::new(buf.clone()))
        .layer(TimeLimit::new(Duration::from_secs(5)));
    let driver = RolloutDriver::new(Limits::default());
    let t = &driver
        .run_batch(&EchoAgent, &factory, &[task(&"long-id-".repeat(10))], 1)
        .await[0][0];
    assert_eq!(t.stop, StopReason::Answered);
    // The recorder sits outside the truncation, so it saw the cut text.
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("characters cut"), "{text}");
}

/// A stateful environment whose `slow` tool blocks its thread (as a synchronous tool that
/// does I/O would) for `ms` milliseconds; `torn_down` counts the states torn down.
fn blocking_tools(torn_down: Arc<Mutex<usize>>) -> ToolEnvironmentFactory<u32> {
    let slow = tool_fn(
        ToolSpec::new(
            "slow",
            "Blocks for a while.",
            json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}),
        )
        .unwrap(),
        |args, cx: &mut ToolContext<'_, u32>| {
            std::thread::sleep(Duration::from_millis(args["ms"].as_u64().unwrap()));
            *cx.state += 1;
            ToolOutput::text(format!("slept, call {}", cx.state))
        },
    );
    ToolEnvironmentBuilder::with_state(|_, _| Ok(0u32))
        .teardown(move |_| *torn_down.lock().unwrap() += 1)
        .tool(slow)
        .build()
        .unwrap()
}

fn slow_call(ms: u64) -> Message {
    Message::assistant_with_calls("", vec![ToolCall::new("c0", "slow", &json!({"ms": ms}))])
}

/// Calls `slow` for 300 ms once, then answers.
struct SlowCaller;

#[async_trait]
impl Agent for SlowCaller {
    async fn act(&self, ctx: &TurnContext<'_>) -> CoreResult<Action> {
        Ok(Action::new(match ctx.turn_index() {
            0 => slow_call(300),
            _ => Message::assistant("done"),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_limit_stops_a_tool_that_blocks() {
    let torn_down = Arc::new(Mutex::new(0));
    let factory =
        blocking_tools(torn_down.clone()).layer(TimeLimit::new(Duration::from_millis(100)));
    let mut env =
        mtrl_core::EnvironmentFactory::create(&factory, &task("t"), &Episode::default()).unwrap();
    env.reset(&task("t"), &Episode::default()).await.unwrap();
    // A quick call passes and keeps the episode's state.
    let step = env.step(&slow_call(1)).await.unwrap();
    assert_eq!(step.messages[0].content, "slept, call 1");
    let start = std::time::Instant::now();
    let e = env.step(&slow_call(300)).await.unwrap_err().to_string();
    let waited = start.elapsed();
    assert!(e.contains("exceeded the time limit of 100 ms"), "{e}");
    assert!(
        waited < Duration::from_millis(250),
        "the limit held: {waited:?}"
    );
    // The abandoned call's episode is torn down once the call returns, and the environment
    // says it needs a reset.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(*torn_down.lock().unwrap(), 1);
    let e = env.step(&slow_call(1)).await.unwrap_err().to_string();
    assert!(e.contains("before reset"), "{e}");
    env.reset(&task("t"), &Episode::default()).await.unwrap();
    assert_eq!(
        env.step(&slow_call(1)).await.unwrap().messages[0].content,
        "slept, call 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drivers_episode_timeout_stops_a_tool_that_blocks() {
    let torn_down = Arc::new(Mutex::new(0));
    let factory = blocking_tools(torn_down.clone());
    let driver = RolloutDriver::new(Limits {
        timeout: Some(Duration::from_millis(150)),
        ..Limits::default()
    });
    let start = std::time::Instant::now();
    let t = &driver
        .run_batch(&SlowCaller, &factory, &[task("t")], 1)
        .await[0][0];
    assert_eq!(t.stop, StopReason::Timeout, "{:?}", t.error);
    assert!(
        start.elapsed() < Duration::from_millis(280),
        "{:?}",
        start.elapsed()
    );
    // Under both limits together the time limit speaks first.
    let limited =
        blocking_tools(torn_down.clone()).layer(TimeLimit::new(Duration::from_millis(100)));
    let t = &driver
        .run_batch(&SlowCaller, &limited, &[task("t")], 1)
        .await[0][0];
    assert_eq!(t.stop, StopReason::EnvironmentError);
    assert!(t.error.as_ref().unwrap().message.contains("time limit"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        *torn_down.lock().unwrap(),
        2,
        "both abandoned episodes were torn down"
    );
}

/// Echo tools with a reset that carries metadata.
struct WithMetadata(<ToolEnvironmentFactory as mtrl_core::EnvironmentFactory>::Env);

#[async_trait]
impl Environment for WithMetadata {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> CoreResult<mtrl_core::Reset> {
        let mut reset = self.0.reset(task, episode).await?;
        reset
            .metadata
            .insert("difficulty".into(), json!(task.id().len()));
        Ok(reset)
    }
    async fn step(&mut self, action: &Message) -> CoreResult<mtrl_core::Step> {
        self.0.step(action).await
    }
}

#[tokio::test]
async fn a_replay_reproduces_infos_and_metadata_with_the_new_call_ids() {
    let buf = SharedBuf::default();
    let inner = tools();
    let with_metadata = move |task: &Task, episode: &Episode| {
        Ok(WithMetadata(mtrl_core::EnvironmentFactory::create(
            &inner, task, episode,
        )?))
    };
    // Faults and truncation inside the recorder: their infos name calls by id.
    let recorded = with_metadata
        .layer(FaultInjection::new(2).tool_errors(0.5))
        .layer(TruncateOutputs::new(4, Side::Right))
        .layer(Recorder::new(buf.clone()));
    let tasks: Vec<Task> = (0..6).map(|i| task(&format!("task-{i}"))).collect();
    let driver = RolloutDriver::new(Limits::default()).with_seed(5);
    let live = strip_timing(driver.run_batch(&EchoAgent, &recorded, &tasks, 1).await);
    assert!(live.iter().any(|t| t.turns.iter().any(|turn| {
        turn.info
            .get("injected_faults")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    })));
    assert!(live.iter().all(|t| t.metadata.contains_key("difficulty")));

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let replayer = Replayer::from_jsonl(text.as_bytes()).unwrap();
    let replayed = strip_timing(driver.run_batch(&EchoAgent, &replayer, &tasks, 1).await);
    assert_eq!(replayed, live, "infos, tool results and metadata included");

    /// The same calls under other ids: the replay's infos name the new ids.
    struct Renamed;
    #[async_trait]
    impl Agent for Renamed {
        async fn act(&self, ctx: &TurnContext<'_>) -> CoreResult<Action> {
            let mut action = EchoAgent.act(ctx).await?;
            for c in &mut action.message.tool_calls {
                c.id = format!("new-{}", c.id);
            }
            Ok(action)
        }
    }
    let renamed = strip_timing(driver.run_batch(&Renamed, &replayer, &tasks, 1).await);
    for (r, l) in renamed.iter().zip(&live) {
        for (rt, lt) in r.turns.iter().zip(&l.turns) {
            let ids: Vec<String> = rt.action.tool_calls.iter().map(|c| c.id.clone()).collect();
            if let Some(results) = rt.tool_results() {
                assert_eq!(
                    results
                        .iter()
                        .map(|x| x.call_id.clone())
                        .collect::<Vec<_>>(),
                    ids
                );
                assert_eq!(results.len(), lt.tool_results().unwrap().len());
            }
        }
    }
}

/// A counter the `echo` tool bumps; the outcome is the count.
fn counting_tools() -> ToolEnvironmentFactory<u32> {
    let echo = tool_fn(
        ToolSpec::new(
            "echo",
            "Echoes and counts.",
            json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
        )
        .unwrap(),
        |args, cx: &mut ToolContext<'_, u32>| {
            *cx.state += 1;
            ToolOutput::text(args["text"].as_str().unwrap())
        },
    );
    ToolEnvironmentBuilder::with_state(|_, _| Ok(0u32))
        .outcome(|task, calls| Ok(json!({"task": task.id(), "calls": calls})))
        .tool(echo)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_outcome_goes_through_every_layer_and_replays() {
    let buf = SharedBuf::default();
    let factory = counting_tools()
        .layer(FaultInjection::new(4).tool_errors(0.3))
        .layer(TruncateOutputs::new(100, Side::Right))
        .layer(TimeLimit::new(Duration::from_secs(5)))
        .layer(Recorder::new(buf.clone()));
    let tasks: Vec<Task> = (0..5).map(|i| task(&format!("t{i}"))).collect();
    let driver = RolloutDriver::new(Limits::default()).with_seed(3);
    let live = strip_timing(driver.run_batch(&EchoAgent, &factory, &tasks, 1).await);
    for t in &live {
        let outcome = t.outcome.as_ref().expect("an outcome");
        assert_eq!(outcome["task"], json!(t.task_id));
        // The calls that reached the tool: those that were not faulted.
        let ok = t.tool_outcomes().ok as u64;
        assert_eq!(outcome["calls"], json!(ok), "{}", t.task_id);
    }
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains(r#""kind":"outcome""#));
    let replayer = Replayer::from_jsonl(text.as_bytes()).unwrap();
    let replayed = strip_timing(driver.run_batch(&EchoAgent, &replayer, &tasks, 1).await);
    assert_eq!(replayed, live, "outcomes included");
    // Without a snapshot function there is no outcome.
    let plain = strip_timing(driver.run_batch(&EchoAgent, &tools(), &tasks, 1).await);
    assert!(plain.iter().all(|t| t.outcome.is_none()));
}
