//! Injected tool faults are failed tool results: the evaluation summary's tool accuracy, the
//! `ToolCallValidity` reward and what the agent was shown all count them the same way; and a
//! recording of the run replays to the same evaluation and rewards.

mod common;

use common::Buffer;
use mtrl_core::{
    Action, Agent, Limits, Message, Reward, RolloutDriver, Task, ToolCall, ToolSpec, Trajectory,
    TurnContext, async_trait,
};
use mtrl_env::layers::{EnvironmentFactoryExt, FAULT_KIND, FaultInjection};
use mtrl_env::{ToolContext, ToolEnvironmentBuilder, ToolOutput, tool_fn};
use mtrl_eval::{FinalOutputEvaluator, Summary, evaluate_all};
use mtrl_reward::ToolCallValidity;
use serde_json::json;

/// Two echo calls a turn for three turns, then an answer.
struct Caller;

#[async_trait]
impl Agent for Caller {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let turn = ctx.turn_index();
        Ok(Action::new(if turn < 3 {
            Message::assistant_with_calls(
                "",
                (0..2)
                    .map(|i| ToolCall::new(format!("c{turn}-{i}"), "echo", &json!({"text": "x"})))
                    .collect(),
            )
        } else {
            Message::assistant(r#"<final_output>{"answer": "x"}</final_output>"#)
        }))
    }
}

/// The failed calls the agent was shown: tool messages that carry an error.
fn failures_seen(t: &Trajectory) -> usize {
    t.turns
        .iter()
        .flat_map(|turn| &turn.observations)
        .filter(|m| m.content.contains("\"error\""))
        .count()
}

fn echo_tools() -> mtrl_env::ToolEnvironmentFactory {
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

fn tasks() -> Vec<Task> {
    (0..40)
        .map(|i| Task::new(format!("t{i}"), json!({}), json!({"answer": "x"})).unwrap())
        .collect()
}

#[tokio::test]
async fn every_consumer_counts_an_injected_fault_as_the_failure_the_agent_saw() {
    let factory = echo_tools().layer(FaultInjection::new(3).tool_errors(0.3));
    let tasks = tasks();
    let groups = RolloutDriver::new(Limits::default())
        .run_batch(&Caller, &factory, &tasks, 1)
        .await;
    let trajectories: Vec<Trajectory> = groups.into_iter().flatten().collect();

    let (mut calls, mut seen) = (0, 0);
    let reward = ToolCallValidity::new();
    for t in &trajectories {
        let outcomes = t.tool_outcomes();
        let failed = failures_seen(t);
        assert_eq!(outcomes.calls, 6);
        assert_eq!(outcomes.unreported, 0, "every call has a reported outcome");
        assert_eq!(outcomes.failed, failed, "{}", t.task_id);
        let score = reward.score(&tasks[0], t).await.unwrap().total;
        assert!((score - (6 - failed) as f64 / 6.0).abs() < 1e-12);
        for turn in &t.turns {
            for r in turn.tool_results().unwrap_or_default() {
                if !r.ok {
                    assert_eq!(r.error.as_deref(), Some(FAULT_KIND));
                }
            }
        }
        calls += outcomes.calls;
        seen += failed;
    }
    assert!(
        seen > 0 && seen < calls,
        "faults were injected: {seen} of {calls}"
    );
    let records = evaluate_all(&FinalOutputEvaluator::new(), &tasks, &trajectories)
        .await
        .unwrap();
    let accuracy = Summary::from_records(&records)
        .overall
        .tool_accuracy()
        .unwrap();
    let expected = (calls - seen) as f64 / calls as f64;
    assert!(
        (accuracy - expected).abs() < 1e-12,
        "{accuracy} vs {expected}"
    );
}

#[tokio::test]
async fn a_replayed_run_evaluates_and_scores_as_the_live_one() {
    use mtrl_env::layers::{Recorder, Replayer};
    let buf = Buffer::default();
    let factory = echo_tools()
        .layer(FaultInjection::new(3).tool_errors(0.3))
        .layer(Recorder::new(buf.clone()));
    let tasks = tasks();
    let driver = RolloutDriver::new(Limits::default());
    let live: Vec<Trajectory> = driver
        .run_batch(&Caller, &factory, &tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    let text = buf.bytes();
    let replayer = Replayer::from_jsonl(text.as_slice()).unwrap();
    let replayed: Vec<Trajectory> = driver
        .run_batch(&Caller, &replayer, &tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    let evaluator = FinalOutputEvaluator::new();
    let summary = |records| Summary::from_records(records).overall;
    let live_records = evaluate_all(&evaluator, &tasks, &live).await.unwrap();
    let replay_records = evaluate_all(&evaluator, &tasks, &replayed).await.unwrap();
    let (a, b) = (summary(&live_records), summary(&replay_records));
    assert_eq!(a.tool_accuracy(), b.tool_accuracy());
    assert!(
        a.tool_accuracy().unwrap() < 1.0,
        "the faults are in the replay too"
    );
    assert_eq!(a.tsr(), b.tsr());
    let reward = ToolCallValidity::new();
    for ((l, r), task) in live.iter().zip(&replayed).zip(&tasks) {
        assert_eq!(l.clone().untimed(), r.clone().untimed());
        let (x, y) = (
            reward.score(task, l).await.unwrap().total,
            reward.score(task, r).await.unwrap().total,
        );
        assert_eq!(x, y, "{}", l.task_id);
    }
}
