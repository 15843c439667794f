//! ToolEnvironment: strict validation, the three tool kinds, state isolation, panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mtrl_core::{
    Action, Agent, Environment, Episode, Limits, Message, Result as CoreResult, RolloutDriver,
    StopReason, Task, ToolCall, ToolSpec, TurnContext, async_trait,
};
use mtrl_env::{
    Error, Tool, ToolContext, ToolEnvironmentBuilder, ToolEnvironmentFactory, ToolOutput,
    Validation, tool_fn,
};
use serde_json::{Map, Value, json};

fn order_spec() -> ToolSpec {
    ToolSpec::new(
        "getOrder",
        "Looks up an order.",
        json!({"type": "object",
               "properties": {
                   "order_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{5}$"},
                   "verbose": {"type": "boolean"}},
               "required": ["order_id"]}),
    )
    .unwrap()
}

/// A tool written as a type.
struct GetOrder;

impl Tool for GetOrder {
    fn spec(&self) -> &ToolSpec {
        static SPEC: std::sync::OnceLock<ToolSpec> = std::sync::OnceLock::new();
        SPEC.get_or_init(order_spec)
    }

    fn call(&self, args: &Map<String, Value>, _cx: &mut ToolContext<'_, ()>) -> ToolOutput {
        match args["order_id"].as_str() {
            Some("ABC-00001") => ToolOutput::json(&json!({"status": "shipped"})),
            Some(other) => ToolOutput::error("not_found", format!("no order {other}")),
            None => unreachable!("validated"),
        }
    }
}

fn factory(validation: Validation) -> ToolEnvironmentFactory {
    let boom = tool_fn(
        ToolSpec::new("explode", "Panics.", json!({"type": "object"})).unwrap(),
        |_, _: &mut ToolContext<'_, ()>| panic!("the simulator crashed"),
    );
    let roll = tool_fn(
        ToolSpec::new("roll", "A seeded die and clock.", json!({"type": "object"})).unwrap(),
        |_, cx: &mut ToolContext<'_, ()>| {
            let die = 1 + cx.sources.next_u64() % 6;
            ToolOutput::json(
                &json!({"die": die, "at": cx.sources.now_iso(), "id": cx.sources.uuid4_hex()}),
            )
        },
    );
    ToolEnvironmentBuilder::new()
        .tool(GetOrder)
        .tool(boom)
        .tool(roll)
        .validation(validation)
        .build()
        .unwrap()
}

fn task() -> Task {
    Task::new(
        "t",
        json!({"order": "ABC-00001"}),
        json!({"status": "shipped"}),
    )
    .unwrap()
}

fn call(name: &str, args: &str) -> Message {
    Message::assistant_with_calls("", vec![ToolCall::raw("c1", name, args)])
}

async fn answer(env: &mut mtrl_env::ToolEnvironment, name: &str, args: &str) -> Value {
    let step = env.step(&call(name, args)).await.unwrap();
    assert!(!step.done);
    assert_eq!(step.messages.len(), 1);
    assert_eq!(step.messages[0].tool_call_id.as_deref(), Some("c1"));
    serde_json::from_str(&step.messages[0].content).unwrap()
}

async fn started(validation: Validation) -> mtrl_env::ToolEnvironment {
    let mut env = factory(validation).environment();
    let reset = env.reset(&task(), &Episode::default()).await.unwrap();
    assert_eq!(reset.tools.len(), 3);
    assert_eq!(reset.messages.len(), 2);
    env
}

#[tokio::test]
async fn a_valid_call_runs_the_tool() {
    let mut env = started(Validation::Strict).await;
    let out = answer(&mut env, "getOrder", r#"{"order_id": "ABC-00001"}"#).await;
    assert_eq!(out, json!({"status": "shipped"}));
    let step = env
        .step(&call("getOrder", r#"{"order_id": "ABC-00002"}"#))
        .await
        .unwrap();
    assert_eq!(
        step.info["tool_results"],
        json!([{"call_id": "c1", "tool": "getOrder", "ok": false, "error": "not_found"}])
    );
}

#[tokio::test]
async fn each_validation_error_is_structured_and_the_episode_goes_on() {
    let mut env = started(Validation::Strict).await;
    let cases = [
        (
            "lookupOrder",
            r#"{"order_id": "ABC-00001"}"#,
            "unknown_tool",
        ),
        ("getOrder", r#"{"order_id": "ABC-00001""#, "invalid_json"),
        ("getOrder", r#"["ABC-00001"]"#, "wrong_type"),
        ("getOrder", r#"{}"#, "missing_argument"),
        (
            "getOrder",
            r#"{"order_id": "ABC-00001", "force": true}"#,
            "unexpected_argument",
        ),
        ("getOrder", r#"{"order_id": 12345}"#, "wrong_type"),
        ("getOrder", r#"{"order_id": "abc"}"#, "invalid_value"),
        (
            "getOrder",
            r#"{"verbose": "yes", "extra": 1}"#,
            "invalid_arguments",
        ),
    ];
    for (name, args, kind) in cases {
        let out = answer(&mut env, name, args).await;
        assert_eq!(out["error"]["type"], kind, "{name} {args}: {out}");
        assert!(
            out["error"]["message"].as_str().unwrap().len() > 10,
            "{out}"
        );
    }
    // The unknown-tool error lists the tools, so the model can recover.
    let out = answer(&mut env, "lookupOrder", "{}").await;
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("getOrder, explode, roll")
    );
    // Problems name the argument.
    let out = answer(&mut env, "getOrder", r#"{"verbose": "yes", "extra": 1}"#).await;
    let problems = out["error"]["problems"].as_array().unwrap();
    let named: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p["type"].as_str().unwrap(), p["argument"].as_str().unwrap()))
        .collect();
    assert!(
        named.contains(&("unexpected_argument", "extra")),
        "{named:?}"
    );
    assert!(
        named.contains(&("missing_argument", "order_id")),
        "{named:?}"
    );
    assert!(named.contains(&("wrong_type", "verbose")), "{named:?}");
    // And after all that, a good call still works.
    let out = answer(&mut env, "getOrder", r#"{"order_id": "ABC-00001"}"#).await;
    assert_eq!(out["status"], "shipped");
}

#[tokio::test]
async fn lenient_mode_lets_the_tool_see_what_was_sent() {
    let mut env = started(Validation::Lenient).await;
    let out = answer(
        &mut env,
        "getOrder",
        r#"{"order_id": "ABC-00001", "force": true}"#,
    )
    .await;
    assert_eq!(out["status"], "shipped");
    // Not JSON is still an error in any mode.
    let out = answer(&mut env, "getOrder", "{").await;
    assert_eq!(out["error"]["type"], "invalid_json");
}

#[tokio::test]
async fn several_calls_are_answered_in_order_and_a_plain_reply_ends_the_episode() {
    let mut env = started(Validation::Strict).await;
    let action = Message::assistant_with_calls(
        "",
        vec![
            ToolCall::raw("a", "getOrder", r#"{"order_id": "ABC-00001"}"#),
            ToolCall::raw("b", "nope", "{}"),
        ],
    );
    let step = env.step(&action).await.unwrap();
    let ids: Vec<_> = step
        .messages
        .iter()
        .map(|m| m.tool_call_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let done = env.step(&Message::assistant("It shipped.")).await.unwrap();
    assert!(done.done);
    assert!(done.messages.is_empty());
}

#[tokio::test]
async fn seeded_sources_make_tools_deterministic_per_episode() {
    let run = |seed: u64| async move {
        let mut env = factory(Validation::Strict).environment();
        env.reset(&task(), &Episode { index: 0, seed })
            .await
            .unwrap();
        let a = answer(&mut env, "roll", "{}").await;
        let b = answer(&mut env, "roll", "{}").await;
        (a, b)
    };
    assert_eq!(run(1).await, run(1).await);
    assert_ne!(run(1).await, run(2).await);
}

#[test]
fn bad_registries_are_refused() {
    let dup = ToolEnvironmentBuilder::new()
        .tool(GetOrder)
        .tool(GetOrder)
        .build();
    assert!(matches!(dup, Err(Error::DuplicateTool(name)) if name == "getOrder"));
    let bad_schema = ToolSpec::new(
        "bad",
        "",
        json!({"type": "object", "properties": {"x": {"type": "no-such-type"}}}),
    )
    .unwrap();
    let built = ToolEnvironmentBuilder::new()
        .tool(tool_fn(bad_schema, |_, _: &mut ToolContext<'_, ()>| {
            ToolOutput::text("")
        }))
        .build();
    assert!(matches!(built, Err(Error::InvalidSchema { tool, .. }) if tool == "bad"));
}

#[tokio::test]
async fn stepping_before_reset_is_an_error_not_a_panic() {
    let mut env = factory(Validation::Strict).environment();
    assert!(env.step(&call("roll", "{}")).await.is_err());
}

/// Per-episode state: a cart built from the seed, torn down at the end.
#[derive(Debug)]
struct Cart {
    items: Vec<String>,
    torn_down: Arc<AtomicUsize>,
}

fn cart_factory(torn_down: Arc<AtomicUsize>) -> ToolEnvironmentFactory<Cart> {
    let add = tool_fn(
        ToolSpec::new(
            "add",
            "Adds an item.",
            json!({"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}),
        )
        .unwrap(),
        |args, cx: &mut ToolContext<'_, Cart>| {
            cx.state.items.push(args["item"].as_str().unwrap().to_string());
            ToolOutput::json(&json!({"items": cx.state.items}))
        },
    );
    let crash = tool_fn(
        ToolSpec::new("crash", "Panics.", json!({"type": "object"})).unwrap(),
        |_, _: &mut ToolContext<'_, Cart>| panic!("cart service crashed"),
    );
    let counter = torn_down.clone();
    ToolEnvironmentBuilder::with_state(
        move |_task: &Task, sources: &mut mtrl_env::EpisodeSources| {
            Ok(Cart {
                items: vec![format!("gift-{}", sources.next_u64() % 1000)],
                torn_down: counter.clone(),
            })
        },
    )
    .teardown(|cart: Cart| {
        cart.torn_down.fetch_add(1, Ordering::SeqCst);
    })
    .tool(add)
    .tool(crash)
    .build()
    .unwrap()
}

#[tokio::test]
async fn state_is_isolated_per_episode_and_torn_down() {
    let torn = Arc::new(AtomicUsize::new(0));
    let f = cart_factory(torn.clone());
    let mut a = f.environment();
    let mut b = f.environment();
    a.reset(&task(), &Episode { index: 0, seed: 5 })
        .await
        .unwrap();
    b.reset(&task(), &Episode { index: 1, seed: 5 })
        .await
        .unwrap();
    let add = |item: &str| call("add", &json!({"item": item}).to_string());
    a.step(&add("apple")).await.unwrap();
    let sb = b.step(&add("pear")).await.unwrap();
    let items: Value = serde_json::from_str(&sb.messages[0].content).unwrap();
    assert_eq!(
        items["items"].as_array().unwrap().len(),
        2,
        "b never sees a's apple"
    );
    assert!(!items.to_string().contains("apple"));
    // Reset starts a fresh state and tears the old one down.
    a.reset(&task(), &Episode { index: 0, seed: 5 })
        .await
        .unwrap();
    assert_eq!(torn.load(Ordering::SeqCst), 1);
    a.close().await.unwrap();
    assert_eq!(torn.load(Ordering::SeqCst), 2);
    // Dropped without close (a cancelled episode): still torn down.
    drop(b);
    assert_eq!(torn.load(Ordering::SeqCst), 3);
    drop(a);
    assert_eq!(torn.load(Ordering::SeqCst), 3, "no double teardown");
}

#[tokio::test]
async fn a_panicking_tool_ends_only_its_episode_and_state_is_still_torn_down() {
    let torn = Arc::new(AtomicUsize::new(0));
    let f = cart_factory(torn.clone());
    let tasks: Vec<Task> = (0..3)
        .map(|i| Task::new(format!("t{i}"), json!({}), json!(null)).unwrap())
        .collect();
    struct PerTask;
    #[async_trait]
    impl Agent for PerTask {
        async fn act(&self, ctx: &TurnContext<'_>) -> CoreResult<Action> {
            let name = if ctx.task.id() == "t1" {
                "crash"
            } else {
                "add"
            };
            let msg = if ctx.turn_index() == 0 {
                Message::assistant_with_calls(
                    "",
                    vec![ToolCall::raw("c", name, r#"{"item": "x"}"#)],
                )
            } else {
                Message::assistant("done")
            };
            Ok(Action::new(msg))
        }
    }
    let driver = RolloutDriver::new(Limits::default());
    let groups = driver.run_batch(&PerTask, &f, &tasks, 2).await;
    let stops: Vec<StopReason> = groups.iter().flatten().map(|t| t.stop).collect();
    use StopReason::*;
    assert_eq!(
        stops,
        [
            Answered,
            Answered,
            EnvironmentError,
            EnvironmentError,
            Answered,
            Answered
        ]
    );
    let err = groups[1][0].error.as_ref().unwrap();
    assert!(
        err.message
            .contains("tool `crash` panicked: cart service crashed"),
        "{}",
        err.message
    );
    assert_eq!(
        torn.load(Ordering::SeqCst),
        6,
        "every episode's state was torn down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_function_is_reported_as_a_panic_of_that_episode() {
    let factory = ToolEnvironmentBuilder::with_state(|task: &Task, _| {
        assert!(task.id() != "bad", "no state for this task");
        Ok(0u32)
    })
    .build()
    .unwrap();
    let driver = RolloutDriver::new(Limits::default());
    let tasks = [
        Task::new("bad", json!({}), json!(null)).unwrap(),
        Task::new("good", json!({}), json!(null)).unwrap(),
    ];
    struct Answer;
    #[async_trait]
    impl Agent for Answer {
        async fn act(&self, _: &TurnContext<'_>) -> mtrl_core::Result<Action> {
            Ok(Action::new(Message::assistant("done")))
        }
    }
    let groups = driver.run_batch(&Answer, &factory, &tasks, 1).await;
    let bad = &groups[0][0];
    assert_eq!(bad.stop, StopReason::EnvironmentError);
    let error = bad.error.as_ref().unwrap();
    assert!(error.panicked, "{error:?}");
    assert!(
        error.message.contains("no state for this task"),
        "{error:?}"
    );
    assert_eq!(groups[1][0].stop, StopReason::Answered);
}
