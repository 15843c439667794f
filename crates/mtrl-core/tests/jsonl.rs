//! Trajectories through JSON Lines: lossless and byte-identical, with typed errors on bad lines.

mod common;

use std::sync::Arc;

use common::{Faults, Move, Probe, ScriptedAgent, TestEnv, answer, call, task};
use mtrl_core::{
    Action, Episode, Error, Finish, Limits, Message, RolloutDriver, TokenRecord, ToolCall,
    Trajectory, from_jsonl_str, read_jsonl, to_jsonl_string, write_jsonl,
};

/// Trajectories that use every optional part of the format.
async fn rich_trajectories() -> Vec<Trajectory> {
    let first = TokenRecord::new(
        vec![1, 2, 3, 4],
        vec![10, 11, 12],
        vec![-0.1, -2.718_281_7, -1e-7],
    )
    .unwrap()
    .starting_segment()
    .with_loss_mask(vec![true, true, false])
    .unwrap()
    .with_behaviour_logprobs(vec![-0.09, -2.5, -3.4e-38])
    .unwrap();
    let second = TokenRecord::new(
        vec![5, 6],
        vec![u32::MAX, 0],
        vec![-f32::MAX, -0.333_333_34],
    )
    .unwrap();
    let odd_call = Move::Act(
        Action::new(Message::assistant_with_calls(
            "Let me look — «ünïcödé» \"quoted\"\n\ttabbed",
            vec![
                ToolCall::raw("c1", "lookup", "{\"key\":  \"spaced\" , \"z\":1,\"a\":2}"),
                ToolCall::raw("c2", "lookup", "{not json"),
            ],
        ))
        .with_token_record(first),
    );
    let last = Move::Act(
        Action::new(Message::assistant("final 🦀"))
            .with_token_record(second)
            .with_finish(Finish::Stop),
    );
    let agent =
        ScriptedAgent::new(vec![odd_call, last]).with_task("plain", vec![call("k"), answer("x")]);
    let probe = Arc::new(Probe::default());
    let factory = move |t: &mtrl_core::Task, _: &Episode| {
        let faults = Faults {
            step_error_at: (t.id() == "broken").then_some(0),
            ..Faults::default()
        };
        Ok(TestEnv::new(faults, probe.clone()))
    };
    let driver = RolloutDriver::new(Limits::default()).with_seed(3);
    let tasks = [task("rich"), task("plain"), task("broken")];
    let mut out: Vec<Trajectory> = driver
        .run_batch(&agent, &factory, &tasks, 2)
        .await
        .into_iter()
        .flatten()
        .collect();
    out[0].metadata.insert(
        "note".into(),
        serde_json::json!({"b": [1.5, null], "a": true}),
    );
    out
}

#[tokio::test]
async fn jsonl_round_trip_is_lossless_and_byte_identical() {
    let trajectories = rich_trajectories().await;
    assert!(trajectories[0].has_token_records());
    assert!(trajectories[4].error.is_some());

    let text = to_jsonl_string(&trajectories).unwrap();
    assert_eq!(text.lines().count(), trajectories.len());
    let back: Vec<Trajectory> = from_jsonl_str(&text).unwrap();
    assert_eq!(back, trajectories, "lossless");
    let again = to_jsonl_string(&back).unwrap();
    assert_eq!(again.as_bytes(), text.as_bytes(), "byte-identical");

    // Raw arguments survive exactly, including invalid JSON.
    let calls = &back[0].turns[0].action.tool_calls;
    assert_eq!(
        calls[0].arguments,
        "{\"key\":  \"spaced\" , \"z\":1,\"a\":2}"
    );
    assert_eq!(calls[1].arguments, "{not json");
    assert!(calls[1].parse_arguments().is_err());
}

#[tokio::test]
async fn jsonl_round_trip_through_a_file() {
    let trajectories = rich_trajectories().await;
    let path = std::env::temp_dir().join(format!("mtrl-jsonl-{}.jsonl", std::process::id()));
    write_jsonl(std::fs::File::create(&path).unwrap(), &trajectories).unwrap();
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let back: Vec<Trajectory> = read_jsonl(file).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back, trajectories);
}

#[test]
fn float_logprobs_round_trip_exactly() {
    // A spread of awkward f32 values, including subnormals and extremes.
    let mut values = vec![
        -f32::MIN_POSITIVE,
        -1.0e-45,
        -f32::MAX,
        -0.0,
        -1.0 / 3.0,
        -16_777_217.0,
    ];
    let mut x: u32 = 0x1234_5678;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let v = f32::from_bits(x & 0x7fff_ffff);
        if v.is_finite() {
            values.push(-v);
        }
    }
    let n = values.len();
    let record = TokenRecord::new(vec![], (0..n as u32).collect(), values.clone()).unwrap();
    let json = serde_json::to_string(&record).unwrap();
    let back: TokenRecord = serde_json::from_str(&json).unwrap();
    for (a, b) in back.logprobs().iter().zip(&values) {
        assert_eq!(a.to_bits(), b.to_bits(), "{b} came back as {a}");
    }
}

#[test]
fn a_bad_line_is_a_typed_error_with_its_line_number() {
    let good = serde_json::to_string(&Trajectory::new("t", Episode::default())).unwrap();
    let text = format!("{good}\n\n{good}\n{{\"task_id\": 3}}\n");
    match from_jsonl_str::<Trajectory>(&text) {
        Err(Error::Jsonl { line, .. }) => assert_eq!(line, 4),
        other => panic!("expected a JSONL error, got {other:?}"),
    }
    // Blank lines are skipped.
    let two: Vec<Trajectory> = from_jsonl_str(&format!("{good}\n\n{good}\n")).unwrap();
    assert_eq!(two.len(), 2);
}

#[test]
fn an_invalid_token_record_in_a_file_is_rejected() {
    let line =
        r#"{"prompt_ids":[1],"sampled_ids":[2,3],"logprobs":[-1.0],"loss_mask":[true,true]}"#;
    let err = serde_json::from_str::<TokenRecord>(line).unwrap_err();
    assert!(
        err.to_string().contains("1 logprobs for 2 sampled ids"),
        "{err}"
    );
    let unknown = r#"{"prompt_ids":[],"sampled_ids":[],"logprobs":[],"loss_mask":[],"extra":1}"#;
    assert!(serde_json::from_str::<TokenRecord>(unknown).is_err());
}
