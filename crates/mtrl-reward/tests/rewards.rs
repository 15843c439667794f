//! Building blocks, combinators and guards on hand-written trajectories.

use mtrl_core::{
    AnswerParser, Episode, Evaluation, Evaluator, Failure, Message, Reward, RewardValue, Scored,
    StopReason, Task, ToolCall, ToolResult, Trajectory, Turn, async_trait,
};
use mtrl_reward::{
    Clip, ExactMatch, FieldAccuracy, Format, GuardConfig, GuardKind, Guards, RewardExt,
    ToolCallValidity, TurnCost, WeightedSum,
};
use serde_json::json;

fn task() -> Task {
    Task::new(
        "t",
        json!({}),
        json!({"decision": "Approve", "amount": "12", "code": "X-1"}),
    )
    .unwrap()
}

/// Tool calls (true: succeeded), then the final message.
fn episode(calls: &[bool], answer: &str) -> Trajectory {
    let mut t = Trajectory::new("t", Episode::default());
    for (i, ok) in calls.iter().enumerate() {
        let id = format!("c{i}");
        let r = if *ok {
            ToolResult::ok(&id, "get")
        } else {
            ToolResult::failed(&id, "get", "unknown_tool")
        };
        t.turns.push(
            Turn::new(Message::assistant_with_calls(
                "",
                vec![ToolCall::new(&id, "get", &json!({}))],
            ))
            .with_tool_results(&[r]),
        );
    }
    t.turns.push(Turn::new(Message::assistant(answer)));
    t.stop = StopReason::Answered;
    t
}

const RIGHT: &str =
    r#"<final_output>{"decision": "approve", "amount": 12, "code": "X-1"}</final_output>"#;
const PARTIAL: &str =
    r#"<final_output>{"decision": "Approve", "amount": "13", "code": "X-2"}</final_output>"#;
const HACK: &str =
    r#"<final_response>{"decision": "Approve", "amount": "12", "code": "X-1"}</final_response>"#;
const SHORT: &str = r#"<final_output>{"decision": "Approve"}</final_output>"#;

async fn score(r: &impl Reward, answer: &str) -> RewardValue {
    r.score(&task(), &episode(&[], answer)).await.unwrap()
}

#[tokio::test]
async fn answer_blocks_score_and_name_their_terms() {
    let exact = ExactMatch::new();
    let fields = FieldAccuracy::new();
    let format = Format::new();
    for (answer, e, f, fmt) in [
        (RIGHT, 1.0, 1.0, 1.0),
        (PARTIAL, 0.0, 1.0 / 3.0, 1.0),
        (HACK, 0.0, 0.0, 0.0),
        (SHORT, 0.0, 0.0, 0.0), // strict: missing fields do not parse
        ("no answer", 0.0, 0.0, 0.0),
    ] {
        let v = score(&exact, answer).await;
        assert_eq!((v.total, v.components["exact_match"]), (e, e), "{answer}");
        let v = score(&fields, answer).await;
        assert!((v.total - f).abs() < 1e-12, "{answer}");
        assert_eq!(v.components.len(), 1, "a strict block logs no @strict twin");
        let v = score(&format, answer).await;
        assert_eq!(v.components["format"], fmt, "{answer}");
    }
    let renamed = score(&ExactMatch::new().named("solved"), RIGHT).await;
    assert_eq!(renamed.components["solved"], 1.0);
}

#[tokio::test]
async fn a_lenient_parser_logs_the_strict_reading_beside_its_own() {
    let lenient = AnswerParser::lenient().accept_tag("final_response");
    let exact = ExactMatch::new().with_parser(lenient.clone());
    assert!(!exact.parser().is_strict());
    let v = score(&exact, HACK).await;
    assert_eq!(v.total, 1.0);
    assert_eq!(v.components["exact_match"], 1.0);
    assert_eq!(
        v.components["exact_match@strict"], 0.0,
        "the disagreement is visible"
    );
    // Where both agree, so do the components.
    let v = score(&exact, RIGHT).await;
    assert_eq!(v.components["exact_match@strict"], 1.0);
    // Missing fields score as wrong under the lenient parser, and do not parse strictly.
    let fields = FieldAccuracy::new().with_parser(lenient);
    let v = score(&fields, SHORT).await;
    assert!((v.total - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(v.components["field_accuracy@strict"], 0.0);
}

#[tokio::test]
async fn tool_validity_and_turn_cost() {
    let t = episode(&[true, false, true], RIGHT);
    let v = ToolCallValidity::new().score(&task(), &t).await.unwrap();
    assert!((v.total - 2.0 / 3.0).abs() < 1e-12);
    let none = episode(&[], RIGHT);
    assert_eq!(
        ToolCallValidity::new()
            .score(&task(), &none)
            .await
            .unwrap()
            .total,
        1.0
    );
    let strict = ToolCallValidity::new().if_no_calls(0.0);
    assert_eq!(strict.score(&task(), &none).await.unwrap().total, 0.0);

    // 4 turns (3 calls + answer), 2 of them free: -(0.01 × 2 + 0.02 × 3).
    let cost = TurnCost::new(0.01, 0.02).unwrap().free_turns(2);
    let v = cost.score(&task(), &t).await.unwrap();
    assert!((v.total + 0.08).abs() < 1e-12, "{v:?}");
    assert_eq!(v.components["turn_cost"], v.total);
    assert!(TurnCost::new(-0.1, 0.0).is_err());
    assert!(TurnCost::new(0.0, f64::NAN).is_err());
}

#[tokio::test]
async fn combinators_compose_and_keep_every_component() {
    let reward = WeightedSum::new()
        .term(0.5, ExactMatch::new())
        .unwrap()
        .term(0.4, FieldAccuracy::new())
        .unwrap()
        .term(0.1, Format::new())
        .unwrap()
        .term(1.0, TurnCost::new(0.0, 0.05).unwrap())
        .unwrap();
    let t = episode(&[true, true], PARTIAL);
    let v = reward.score(&task(), &t).await.unwrap();
    let expected = 0.4 / 3.0 + 0.1 - 0.1;
    assert!((v.total - expected).abs() < 1e-12, "{v:?}");
    assert_eq!(
        v.components.keys().collect::<Vec<_>>(),
        ["exact_match", "field_accuracy", "format", "turn_cost"]
    );

    // Clip keeps components, changes only the total.
    let clipped = Clip::new(reward.clone(), 0.0, 1.0).unwrap();
    let cheap = episode(&[true; 6], PARTIAL);
    let raw = reward.score(&task(), &cheap).await.unwrap();
    let c = clipped.score(&task(), &cheap).await.unwrap();
    assert!(raw.total < 0.0);
    assert_eq!(c.total, 0.0);
    assert_eq!(c.components, raw.components);
    assert!(Clip::new(ExactMatch::new(), 1.0, 0.0).is_err());
    assert!(
        WeightedSum::new()
            .term(f64::INFINITY, Format::new())
            .is_err()
    );

    // Gate: no answer credit without the strict format, and the closed gate shows why.
    let lenient = AnswerParser::lenient().accept_tag("final_response");
    let gated = FieldAccuracy::new()
        .with_parser(lenient)
        .gated_by(Format::new(), 1.0);
    let v = score(&gated, HACK).await;
    assert_eq!(v.total, 0.0);
    assert_eq!(v.components["format"], 0.0);
    assert_eq!(v.components["field_accuracy"], 1.0);
    let v = score(&gated, RIGHT).await;
    assert_eq!(v.total, 1.0);
    let closed = FieldAccuracy::new()
        .gated_by(Format::new(), 1.0)
        .closed_value(-1.0);
    assert_eq!(score(&closed, "nothing").await.total, -1.0);

    // Two terms logging one name with different values is refused, with advice; a prefix
    // tells them apart.
    let lenient = AnswerParser::lenient().accept_tag("final_response");
    let clash = WeightedSum::new()
        .term(0.5, ExactMatch::new())
        .unwrap()
        .term(0.5, ExactMatch::new().with_parser(lenient.clone()))
        .unwrap();
    let err = clash.score(&task(), &episode(&[], HACK)).await.unwrap_err();
    assert!(err.to_string().contains("exact_match"), "{err}");
    let fixed = WeightedSum::new()
        .term(0.5, ExactMatch::new())
        .unwrap()
        .term(
            0.5,
            ExactMatch::new().with_parser(lenient).prefixed("lenient"),
        )
        .unwrap();
    let v = score(&fixed, HACK).await;
    assert_eq!(v.total, 0.5);
    assert_eq!(v.components["lenient/exact_match"], 1.0);
    assert_eq!(v.components["lenient/exact_match@strict"], 0.0);

    // Boxed and shared rewards compose too.
    let shared = ExactMatch::new().shared();
    assert_eq!(
        shared
            .score(&task(), &episode(&[], RIGHT))
            .await
            .unwrap()
            .total,
        1.0
    );
}

#[tokio::test]
async fn a_ground_truth_that_is_not_an_object_is_a_clear_error() {
    let bad = Task::new("b", json!({}), json!(["not", "fields"])).unwrap();
    let err = ExactMatch::new()
        .score(&bad, &episode(&[], RIGHT))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ground truth"), "{err}");
}

/// A strict evaluator written for this test (mtrl-reward cannot see mtrl-eval's).
struct StrictFields;

#[async_trait]
impl Evaluator for StrictFields {
    async fn evaluate(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<Evaluation> {
        let names: Vec<&str> = task
            .ground_truth()
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        Ok(match AnswerParser::strict().parse_final(t, &names) {
            Ok(a) => {
                let ok = names
                    .iter()
                    .all(|n| mtrl_core::values_match(&task.ground_truth()[*n], &a.fields[*n]));
                Evaluation {
                    success: ok,
                    completed: true,
                    failure: (!ok).then(|| Failure::new("wrong_fields", "wrong")),
                    ..Evaluation::default()
                }
            }
            Err(e) => Evaluation {
                failure: Some(Failure::new(e.kind(), e.to_string())),
                ..Evaluation::default()
            },
        })
    }
}

#[tokio::test]
async fn guards_count_what_they_flag_and_change_nothing() {
    let task = task();
    let answers = [RIGHT, HACK, HACK, PARTIAL, RIGHT, RIGHT];
    let trajectories: Vec<Trajectory> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut t = episode(&[], a);
            t.episode.index = i;
            t
        })
        .collect();
    let totals = [1.0, 1.0, 1.3, f64::NAN, 1.0, 1.0];
    let mut batch: Vec<Scored<'_>> = Vec::new();
    for (i, t) in trajectories.iter().enumerate() {
        let evaluation = StrictFields.evaluate(&task, t).await.unwrap();
        batch.push(
            Scored::new(&task, t, i / 3, RewardValue::new(totals[i])).with_evaluation(evaluation),
        );
    }
    let guards = Guards::default();

    let range = guards.range(&batch).unwrap();
    assert_eq!(
        (range.kind, range.count, range.total),
        (GuardKind::OutOfRange, 2, 6)
    );
    assert_eq!(range.breakdown["above"], 1);
    assert_eq!(range.breakdown["nan"], 1);
    assert_eq!(range.figures["max"], 1.3);

    let gap = guards.above_evaluation(&batch).unwrap();
    // The two hacked answers (reward 1.0 and 1.3, strict score 0).
    assert_eq!((gap.count, gap.total), (2, 6));
    assert_eq!(gap.breakdown["missing_tag"], 2);
    assert_eq!(gap.examples, ["t#1", "t#2"]);
    assert_eq!(gap.figures["max_gap"], 1.3);
    assert!(gap.message.contains("2 of 6"), "{}", gap.message);

    // Group 1 is (NaN, 1, 1): not all equal; group 0 is (1, 1, 1.3): not either.
    assert!(guards.zero_group_variance(&batch).is_none());
    let flat = [
        RewardValue::new(0.0),
        RewardValue::new(0.0),
        RewardValue::new(1.0),
        RewardValue::new(1.0),
    ];
    let flat_batch: Vec<Scored<'_>> = (0..4)
        .map(|i| Scored::new(&task, &trajectories[i], i / 2, flat[i].clone()))
        .collect();
    let zero = guards.zero_group_variance(&flat_batch).unwrap();
    assert_eq!((zero.count, zero.total), (2, 2));
    assert_eq!(zero.breakdown["all_zero"], 1);
    assert_eq!(zero.breakdown["all_max"], 1);

    let baseline = guards.baseline_variance(&flat_batch).unwrap();
    assert_eq!(baseline.kind, GuardKind::LowBaselineVariance);
    assert_eq!(baseline.figures["mean_group_std"], 0.0);
    assert_eq!(baseline.figures["std"], 0.5);
    let varied = [RewardValue::new(0.0), RewardValue::new(1.0)];
    let varied_batch: Vec<Scored<'_>> = (0..2)
        .map(|i| Scored::new(&task, &trajectories[i], 0, varied[i].clone()))
        .collect();
    assert!(guards.baseline_variance(&varied_batch).is_none());

    let all = guards.check_batch(&batch);
    let kinds: Vec<GuardKind> = all.iter().map(|w| w.kind).collect();
    assert_eq!(
        kinds,
        [GuardKind::OutOfRange, GuardKind::RewardAboveEvaluation]
    );
    // Guards never touch the values.
    assert_eq!(batch[2].reward.total, 1.3);
    // Rows without an evaluation are not compared, nor counted.
    let unjudged: Vec<Scored<'_>> = batch
        .iter()
        .map(|r| Scored::new(r.task, r.trajectory, r.group, r.reward.clone()))
        .collect();
    assert!(guards.above_evaluation(&unjudged).is_none());

    // A looser tolerance lets a small format bonus through.
    let loose = Guards::new(GuardConfig {
        tolerance: 2.0,
        ..GuardConfig::default()
    });
    assert!(loose.above_evaluation(&batch).is_none());
}
