//! Tasks: validation, and the ground truth kept out of the agent's reach.

mod common;

use std::sync::{Arc, Mutex};

use common::{Faults, Probe, TestEnv};
use mtrl_core::{
    Action, Agent, Error, Limits, Message, Result, RolloutDriver, StopReason, Task, TurnContext,
    async_trait,
};
use serde_json::json;

const SECRET: &str = "GROUND-TRUTH-7f3a9";

fn secret_task() -> Task {
    Task::new(
        "case-1",
        json!({"customer": "ACM-00042"}),
        json!({"decision": SECRET}),
    )
    .unwrap()
    .with_metadata("label", json!(SECRET))
}

/// Records everything it is handed, in full.
#[derive(Default)]
struct Snoop {
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl Agent for Snoop {
    async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
        self.seen.lock().unwrap().push(format!("{ctx:#?}"));
        self.seen
            .lock()
            .unwrap()
            .push(serde_json::to_string(&ctx.task).unwrap());
        Ok(Action::new(Message::assistant("done")))
    }
}

#[tokio::test]
async fn nothing_the_agent_receives_contains_the_ground_truth() {
    let task = secret_task();
    let agent = Snoop::default();
    let probe = Arc::new(Probe::default());
    let factory =
        move |_: &Task, _: &mtrl_core::Episode| Ok(TestEnv::new(Faults::default(), probe.clone()));
    let driver = RolloutDriver::new(Limits::default());
    let t = driver
        .run_with(&agent, &factory, &task, driver.episode(&task, 0))
        .await;
    assert_eq!(t.stop, StopReason::Answered);
    let seen = agent.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for text in seen.iter() {
        assert!(text.contains("ACM-00042"), "the inputs are visible");
        assert!(!text.contains(SECRET), "the ground truth leaked: {text}");
    }
}

#[test]
fn the_view_holds_the_id_and_inputs_only() {
    let task = secret_task();
    let view = task.view();
    assert_eq!(view.id(), "case-1");
    assert_eq!(view.input("customer"), Some(&json!("ACM-00042")));
    assert_eq!(view.input("decision"), None);
    assert_eq!(
        serde_json::to_value(view).unwrap(),
        json!({"id": "case-1", "inputs": {"customer": "ACM-00042"}})
    );
    // The trusted side still has it.
    assert_eq!(task.ground_truth()["decision"], SECRET);
    assert_eq!(task.metadata()["label"], SECRET);
}

#[test]
fn invalid_tasks_are_typed_errors() {
    assert!(matches!(
        Task::new(" ", json!({}), json!(null)),
        Err(Error::InvalidTask { .. })
    ));
    match Task::new("t", json!(["not", "an", "object"]), json!(null)) {
        Err(Error::InvalidTask { reason }) => assert!(reason.contains("JSON object")),
        other => panic!("expected InvalidTask, got {other:?}"),
    }
    let bad: std::result::Result<Task, _> =
        serde_json::from_str(r#"{"id": "t", "inputs": {}, "ground_truth": 1, "answer": 2}"#);
    assert!(bad.is_err(), "unknown fields are refused");
}

#[test]
fn tasks_round_trip_through_json() {
    let task = secret_task();
    let json = serde_json::to_string(&task).unwrap();
    assert_eq!(serde_json::from_str::<Task>(&json).unwrap(), task);
}

#[test]
fn deserialising_checks_what_the_constructor_checks() {
    let ok: Task = serde_json::from_value(json!({
        "id": "t-1", "inputs": {"a": 1}, "ground_truth": {"b": 2}
    }))
    .unwrap();
    assert_eq!(ok.id(), "t-1");
    for id in ["", "   "] {
        let e = serde_json::from_value::<Task>(json!({
            "id": id, "inputs": {}, "ground_truth": null
        }))
        .unwrap_err();
        assert!(e.to_string().contains("the task id is empty"), "{e}");
    }
    // A round trip keeps everything, metadata included.
    let task = secret_task();
    let back: Task = serde_json::from_str(&serde_json::to_string(&task).unwrap()).unwrap();
    assert_eq!(back, task);
}
