//! The episode's outcome reaches evaluation and reward: an agent that says it cancelled an
//! order without cancelling it fails strict evaluation through the outcome check, the
//! `OutcomeMatch` reward sees the same, numeric tolerance is opt-in, and a recorded run
//! replays to the same verdicts.

mod common;

use common::Buffer;
use std::collections::BTreeMap;

use mtrl_core::{
    Limits, Message, Reward, RolloutDriver, Task, ToolCall, ToolSpec, Trajectory, agent_fn,
};
use mtrl_env::layers::{EnvironmentFactoryExt, Recorder, Replayer};
use mtrl_env::{ToolContext, ToolEnvironmentBuilder, ToolEnvironmentFactory, ToolOutput, tool_fn};
use mtrl_eval::{FinalOutputEvaluator, OUTCOME_PREFIX};
use mtrl_reward::OutcomeMatch;
use serde_json::{Map, Value, json};

/// A shop's orders for one episode: id → (status, total).
type Orders = BTreeMap<String, (String, f64)>;

fn shop() -> ToolEnvironmentFactory<Orders> {
    let spec = |name: &str| {
        ToolSpec::new(
            name,
            "Works on an order.",
            json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}),
        )
        .unwrap()
    };
    let look = tool_fn(
        spec("getOrder"),
        |args, cx: &mut ToolContext<'_, Orders>| match cx
            .state
            .get(args["order_id"].as_str().unwrap_or_default())
        {
            Some((status, total)) => {
                ToolOutput::text(json!({"status": status, "total": total}).to_string())
            }
            None => ToolOutput::error("not_found", "no such order"),
        },
    );
    let cancel = tool_fn(
        spec("cancelOrder"),
        |args, cx: &mut ToolContext<'_, Orders>| {
            match cx
                .state
                .get_mut(args["order_id"].as_str().unwrap_or_default())
            {
                Some(order) => {
                    order.0 = "cancelled".into();
                    // A refund fee, summed as floats would be.
                    order.1 = 39.99 + 19.99;
                    ToolOutput::text("cancelled")
                }
                None => ToolOutput::error("not_found", "no such order"),
            }
        },
    );
    ToolEnvironmentBuilder::with_state(|task: &Task, _| {
        let id = task.inputs()["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(Orders::from([(id, ("open".to_string(), 59.98))]))
    })
    .outcome(|task, orders| {
        let id = task.inputs()["order_id"].as_str().unwrap_or_default();
        let (status, total) = orders.get(id).cloned().unwrap_or_default();
        Ok(json!({"status": status, "total": total}))
    })
    .tool(look)
    .tool(cancel)
    .build()
    .unwrap()
}

fn tasks() -> Vec<Task> {
    (0..4)
        .map(|i| {
            let mut expected = Map::new();
            expected.insert("status".into(), json!("cancelled"));
            Task::new(
                format!("t{i}"),
                json!({"order_id": format!("A-{i}")}),
                json!({"status": "cancelled"}),
            )
            .unwrap()
            .with_expected_outcome(expected)
        })
        .collect()
}

fn call(turn: usize, tool: &str, order: &Value) -> Message {
    Message::assistant_with_calls(
        "",
        vec![ToolCall::new(
            format!("c{turn}"),
            tool,
            &json!({"order_id": order}),
        )],
    )
}

const ANSWER: &str = r#"<final_output>{"status": "cancelled"}</final_output>"#;

async fn run(factory: &impl mtrl_core::EnvironmentFactory, liar: bool) -> Vec<Trajectory> {
    let agent = agent_fn(move |ctx| {
        let order = ctx.task.input("order_id").cloned().unwrap_or_default();
        Ok(match (ctx.turn_index(), liar) {
            (0, _) => call(0, "getOrder", &order),
            // The liar checks everything and answers right, but never cancels.
            (1, false) => call(1, "cancelOrder", &order),
            _ => Message::assistant(ANSWER),
        })
    });
    RolloutDriver::new(Limits::default())
        .run_batch(&agent, factory, &tasks(), 1)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test]
async fn a_lying_agent_fails_strict_evaluation_through_the_outcome() {
    let factory = shop();
    let evaluator = FinalOutputEvaluator::new();
    let reward = OutcomeMatch::new();
    for (liar, trajectories) in [
        (false, run(&factory, false).await),
        (true, run(&factory, true).await),
    ] {
        for (t, task) in trajectories.iter().zip(&tasks()) {
            let e = evaluator.judge(task, t).unwrap();
            let r = reward.score(task, t).await.unwrap();
            let status = &e.fields[&format!("{OUTCOME_PREFIX}status")];
            assert!(e.fields["status"].correct, "the answer is right either way");
            if liar {
                assert!(!e.success);
                assert_eq!(e.failure.unwrap().kind, "wrong_outcome");
                assert_eq!(status.predicted, Some(json!("open")));
                assert_eq!(r.total, 0.0);
            } else {
                assert!(e.success, "{e:?}");
                assert!(status.correct);
                assert_eq!(r.total, 1.0);
                assert_eq!(r.components["outcome_match"], 1.0);
            }
        }
    }
}

#[tokio::test]
async fn numeric_tolerance_is_opt_in_per_field() {
    let trajectories = run(&shop(), false).await;
    let mut expected = Map::new();
    expected.insert("status".into(), json!("cancelled"));
    expected.insert("total".into(), json!(59.98));
    let task = tasks()[0].clone().with_expected_outcome(expected);
    let t = &trajectories[0];
    assert_eq!(
        t.outcome.as_ref().unwrap()["total"],
        json!(59.980000000000004)
    );
    let exact = FinalOutputEvaluator::new().judge(&task, t).unwrap();
    assert!(
        !exact.success,
        "exact is the default: 59.980000000000004 is not 59.98"
    );
    assert_eq!(exact.failure.unwrap().kind, "wrong_outcome");
    let tolerant = FinalOutputEvaluator::new()
        .tolerance("outcome.total", 0.005)
        .unwrap();
    assert!(tolerant.judge(&task, t).unwrap().success);
    // The reward block takes the same opt-in tolerance, per outcome field.
    let exact = OutcomeMatch::new().score(&task, t).await.unwrap();
    assert_eq!(exact.total, 0.5, "status right, total off by float noise");
    let tolerant = OutcomeMatch::new().tolerance("total", 0.005).unwrap();
    assert_eq!(tolerant.score(&task, t).await.unwrap().total, 1.0);
    assert!(
        OutcomeMatch::new()
            .tolerance("total", f64::INFINITY)
            .is_err()
    );
    assert!(OutcomeMatch::new().tolerance("total", -0.1).is_err());
    assert!(
        FinalOutputEvaluator::new()
            .tolerance("total", -1.0)
            .is_err()
    );
    assert!(
        FinalOutputEvaluator::new()
            .tolerance("total", f64::NAN)
            .is_err()
    );
    // An environment that reports no outcome cannot pass a task that expects one.
    let mut silent = t.clone();
    silent.outcome = None;
    let e = FinalOutputEvaluator::new().judge(&task, &silent).unwrap();
    assert_eq!(e.failure.unwrap().kind, "missing_outcome");
}

#[tokio::test]
async fn a_replayed_run_is_judged_as_the_live_one() {
    let evaluator = FinalOutputEvaluator::new();
    for liar in [false, true] {
        let buf = Buffer::default();
        let live = run(&shop().layer(Recorder::new(buf.clone())), liar).await;
        let text = buf.bytes();
        let replayed = run(&Replayer::from_jsonl(text.as_slice()).unwrap(), liar).await;
        for ((l, r), task) in live.iter().zip(&replayed).zip(&tasks()) {
            assert_eq!(l.outcome, r.outcome);
            assert_eq!(
                evaluator.judge(task, l).unwrap(),
                evaluator.judge(task, r).unwrap()
            );
        }
    }
}
