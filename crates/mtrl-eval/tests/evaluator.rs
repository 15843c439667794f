//! The strict evaluator and SOP-Bench's metrics on hand-written trajectories.

use mtrl_core::{
    Episode, EpisodeError, Message, Phase, StopReason, Task, ToolCall, ToolResult, Trajectory, Turn,
};
use mtrl_eval::{Error, EvalRecord, FinalOutputEvaluator, Summary, evaluate_all};
use serde_json::{Value, json};

fn task(id: &str, domain: &str) -> Task {
    Task::new(
        id,
        json!({"item": "A-7"}),
        json!({"hazard_class": "Hazard Class D", "quantity": "12", "notes": ""}),
    )
    .unwrap()
    .with_metadata("domain", json!(domain))
}

/// One tool call per entry of `calls` (true: it succeeded), then `answer` as the final message.
fn episode(
    task: &str,
    sample: usize,
    calls: &[bool],
    answer: &str,
    stop: StopReason,
) -> Trajectory {
    let mut t = Trajectory::new(
        task,
        Episode {
            index: sample,
            seed: 0,
        },
    );
    for (i, ok) in calls.iter().enumerate() {
        let id = format!("c{i}");
        let result = if *ok {
            ToolResult::ok(&id, "lookup")
        } else {
            ToolResult::failed(&id, "lookup", "missing_argument")
        };
        t.turns.push(
            Turn::new(Message::assistant_with_calls(
                "",
                vec![ToolCall::new(&id, "lookup", &json!({}))],
            ))
            .with_observations(vec![Message::tool(&id, "lookup", "{}")])
            .with_tool_results(&[result]),
        );
    }
    t.turns.push(Turn::new(Message::assistant(answer)));
    t.stop = stop;
    t
}

const RIGHT: &str = r#"Checked. <final_output>{"hazard_class": " hazard  class d", "quantity": 12, "notes": null}</final_output>"#;

fn judge(t: &Trajectory) -> mtrl_core::Evaluation {
    FinalOutputEvaluator::new()
        .judge(&task("t1", "d"), t)
        .unwrap()
}

#[test]
fn a_right_answer_succeeds_after_normalisation() {
    let e = judge(&episode("t1", 0, &[true], RIGHT, StopReason::Answered));
    assert!(e.success && e.completed, "{e:?}");
    assert_eq!(e.failure, None);
    assert_eq!(e.fields.len(), 3);
    assert_eq!(e.fields["quantity"].predicted, Some(json!(12)));
    assert_eq!(e.score(), 1.0);
}

#[test]
fn no_substring_credit() {
    let text =
        r#"<final_output>{"hazard_class": "a", "quantity": "12", "notes": ""}</final_output>"#;
    let e = judge(&episode("t1", 0, &[], text, StopReason::Answered));
    assert!(e.completed && !e.success);
    assert!(!e.fields["hazard_class"].correct);
    assert!(e.fields["quantity"].correct && e.fields["notes"].correct);
    let failure = e.failure.as_ref().unwrap();
    assert_eq!(failure.kind, "wrong_fields");
    assert!(failure.message.contains("hazard_class"));
    assert!((e.score() - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn each_way_of_not_completing_has_its_kind() {
    let cases = [
        (
            r#"<final_response>{"hazard_class": "Hazard Class D", "quantity": "12", "notes": ""}</final_response>"#,
            StopReason::Answered,
            "missing_tag",
        ),
        (
            &format!("{RIGHT} {RIGHT}") as &str,
            StopReason::Answered,
            "multiple_tags",
        ),
        (
            r#"<final_output>{"hazard_class": "Hazard Class D"}</final_output>"#,
            StopReason::Answered,
            "missing_fields",
        ),
        (
            r#"<final_output>{"hazard_class": "Hazard Class D", "quantity": "12", "notes": "", "x": 1}</final_output>"#,
            StopReason::Answered,
            "unexpected_fields",
        ),
        (
            r#"<final_output>{hazard}</final_output>"#,
            StopReason::Answered,
            "invalid_json",
        ),
        // A right answer in the last message does not count when the episode did not end by
        // answering.
        (RIGHT, StopReason::MaxTurns, "max_turns"),
        (
            RIGHT,
            StopReason::TokenBudgetExhausted,
            "token_budget_exhausted",
        ),
    ];
    for (text, stop, kind) in cases {
        let e = judge(&episode("t1", 0, &[], text, stop));
        assert!(!e.completed && !e.success, "{kind}");
        assert_eq!(e.failure.as_ref().unwrap().kind, kind);
        assert_eq!(e.score(), 0.0);
        // Every expected field is judged, wrong, so per-field accuracy counts the episode.
        assert_eq!(e.fields.len(), 3);
        assert!(
            e.fields
                .values()
                .all(|f| !f.correct && f.predicted.is_none())
        );
    }
    let mut crashed = episode("t1", 0, &[], RIGHT, StopReason::EnvironmentError);
    crashed.error = Some(EpisodeError {
        phase: Phase::Step,
        message: "the tool server went away".into(),
        panicked: false,
    });
    let e = judge(&crashed);
    assert!(!e.completed);
    assert_eq!(e.failure.unwrap().kind, "environment_error");
}

#[test]
fn a_ground_truth_that_is_not_an_object_is_a_typed_error() {
    let task = Task::new("t", json!({}), json!("just a string")).unwrap();
    let t = episode("t", 0, &[], RIGHT, StopReason::Answered);
    let err = FinalOutputEvaluator::new().judge(&task, &t).unwrap_err();
    assert!(matches!(err, mtrl_core::Error::InvalidTask { .. }), "{err}");
}

#[tokio::test]
async fn summary_metrics_per_domain_and_overall() {
    let tasks = vec![task("a1", "alpha"), task("a2", "alpha"), task("b1", "beta")];
    let wrong_qty = r#"<final_output>{"hazard_class": "Hazard Class D", "quantity": "13", "notes": ""}</final_output>"#;
    let trajectories = vec![
        // alpha: a success (2 good calls), a completed failure (1 good, 1 bad call), and an
        // episode that hit the turn limit (1 bad call).
        episode("a1", 0, &[true, true], RIGHT, StopReason::Answered),
        episode("a2", 0, &[true, false], wrong_qty, StopReason::Answered),
        episode("a2", 1, &[false], RIGHT, StopReason::MaxTurns),
        // beta: a missing tag (no calls).
        episode(
            "b1",
            0,
            &[],
            r#"<final_response>{"hazard_class": "Hazard Class D", "quantity": "12", "notes": ""}</final_response>"#,
            StopReason::Answered,
        ),
    ];
    let records = evaluate_all(&FinalOutputEvaluator::new(), &tasks, &trajectories)
        .await
        .unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[2].sample, 1);
    let s = Summary::from_records(&records);

    let alpha = &s.domains["alpha"];
    assert_eq!(
        (alpha.episodes, alpha.successes, alpha.completed),
        (3, 1, 2)
    );
    assert!((alpha.tsr() - 1.0 / 3.0).abs() < 1e-12);
    assert!((alpha.ecr() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(alpha.c_tsr(), Some(0.5));
    // 5 calls: 3 ok, 2 failed.
    assert_eq!(alpha.tool_accuracy(), Some(0.6));
    assert_eq!(alpha.fields["quantity"].correct, 1);
    assert_eq!(alpha.fields["quantity"].total, 3);
    assert_eq!(alpha.fields["hazard_class"].correct, 2);
    assert_eq!(alpha.failures["wrong_fields"], 1);
    assert_eq!(alpha.failures["max_turns"], 1);

    let beta = &s.domains["beta"];
    assert_eq!((beta.tsr(), beta.ecr(), beta.c_tsr()), (0.0, 0.0, None));
    assert_eq!(beta.tool_accuracy(), None);
    assert_eq!(beta.failures["missing_tag"], 1);

    let all = &s.overall;
    assert_eq!((all.episodes, all.successes, all.completed), (4, 1, 2));
    assert_eq!(all.tsr(), 0.25);
    assert_eq!(all.ecr(), 0.5);
    assert_eq!(all.c_tsr(), Some(0.5));
    assert_eq!(all.fields["alpha/quantity"].total, 3);
    assert_eq!(all.fields["beta/quantity"].total, 1);
    // 12 field judgements, 2 + 1 + 2 right (success, the completed failure's two good fields).
    assert_eq!(all.field_accuracy(), Some(5.0 / 12.0));

    let table = s.table();
    assert!(table.contains("alpha") && table.contains("overall"));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("overall") && l.contains("25.0"))
    );

    // Records survive JSON.
    let text = serde_json::to_string(&records).unwrap();
    let back: Vec<EvalRecord> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, records);
}

#[tokio::test]
async fn evaluate_all_names_what_it_cannot_judge() {
    let tasks = vec![task("a1", "alpha")];
    let stray = episode("zz", 0, &[], RIGHT, StopReason::Answered);
    let err = evaluate_all(&FinalOutputEvaluator::new(), &tasks, &[stray])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownTask(id) if id == "zz"),
        "{err}"
    );

    let bad = vec![Task::new("x", json!({}), Value::Null).unwrap()];
    let t = episode("x", 0, &[], RIGHT, StopReason::Answered);
    let err = evaluate_all(&FinalOutputEvaluator::new(), &bad, &[t])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Evaluator { task_id, .. } if task_id == "x"),
        "{err}"
    );
}
