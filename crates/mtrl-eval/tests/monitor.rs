//! The per-step metrics record, the JSON Lines sink, and the reward-hacking alarm on synthetic
//! streams, healthy and hacked.

mod common;

use common::{HACK_FROM, Run, STEPS, synthetic};
use mtrl_core::{
    Episode, EpisodeError, Evaluation, FieldResult, Message, Phase, RewardValue, Scored,
    StopReason, Task, ToolCall, ToolResult, Trajectory, Turn,
};
use mtrl_eval::monitor::{
    AlarmConfig, AlarmKind, HackingAlarm, JsonlSink, MetricsSink, StepMetrics, UsualToolUse, names,
    read_metrics,
};
use serde_json::json;

/// An episode of `task` with one turn per call (true: it succeeded), then a final message.
fn episode(task: &str, calls: &[bool], stop: StopReason) -> Trajectory {
    let mut t = Trajectory::new(task, Episode::default());
    for (i, ok) in calls.iter().enumerate() {
        let id = format!("c{i}");
        let r = if *ok {
            ToolResult::ok(&id, "get")
        } else {
            ToolResult::failed(&id, "get", "invalid_json")
        };
        t.turns.push(
            Turn::new(Message::assistant_with_calls(
                "",
                vec![ToolCall::new(&id, "get", &json!({}))],
            ))
            .with_tool_results(&[r]),
        );
    }
    if stop != StopReason::MaxTurns {
        t.turns.push(Turn::new(Message::assistant(
            "<final_output>{}</final_output>",
        )));
    }
    t.stop = stop;
    t
}

fn evaluation(success: bool, completed: bool, right: usize, of: usize) -> Evaluation {
    Evaluation {
        success,
        completed,
        fields: (0..of)
            .map(|i| {
                (
                    format!("f{i}"),
                    FieldResult {
                        correct: i < right,
                        expected: json!("x"),
                        predicted: None,
                    },
                )
            })
            .collect(),
        failure: None,
    }
}

#[test]
fn step_metrics_from_rollouts_are_the_hand_computed_ones() {
    let mut trajectories = [
        episode("a", &[true, true], StopReason::Answered), // 3 turns
        episode("a", &[true, false], StopReason::Answered), // 3 turns
        episode("b", &[true, true], StopReason::MaxTurns), // 2 turns
        episode("b", &[], StopReason::Answered),           // 1 turn, no tools
    ];
    let rewards = [
        RewardValue::new(1.0).with_component("exact", 1.0),
        RewardValue::new(1.0).with_component("exact", 1.0),
        RewardValue::new(0.0).with_component("exact", 0.0),
        RewardValue::new(0.5).with_component("exact", 0.0),
    ];
    let evaluations = [
        evaluation(true, true, 2, 2),
        evaluation(true, true, 2, 2),
        evaluation(false, false, 0, 2),
        evaluation(false, true, 1, 2),
    ];
    // Turns that report the tokens they generated: the longest is 40.
    trajectories[0].turns[0].tokens_used = Some(17);
    trajectories[3].turns[0].tokens_used = Some(40);
    trajectories[2].turns[1].tokens_used = Some(39);
    let task = Task::new("t", json!({}), json!({})).unwrap();
    let rollouts: Vec<Scored<'_>> = (0..4)
        .map(|i| {
            Scored::new(&task, &trajectories[i], i / 2, rewards[i].clone())
                .with_evaluation(evaluations[i].clone())
        })
        .collect();
    let mut m = StepMetrics::new(7);
    m.record_rollouts(&rollouts, &UsualToolUse::none());
    let get = |name: &str| m.get(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(get(names::REWARD_MEAN), 0.625);
    assert_eq!(get(names::REWARD_ZERO_FRAC), 0.25);
    assert_eq!(get(&names::reward_component("exact")), 0.5);
    assert_eq!(get(names::TURNS_MEAN), 2.25);
    assert_eq!(m.turns, vec![0, 1, 1, 2]);
    assert_eq!(get(names::MAX_TURNS_FRAC), 0.25);
    assert_eq!(get(names::TRUNCATED_FRAC), 0.0);
    assert_eq!(get(names::FAILED_FRAC), 0.0);
    assert_eq!(get(names::TOOL_CALLS_MEAN), 1.5);
    assert!((get(names::TOOL_ERROR_FRAC) - 1.0 / 6.0).abs() < 1e-12);
    assert_eq!(get(names::ANSWER_NO_TOOL_FRAC), 0.25);
    assert_eq!(get(names::ANSWER_EARLY_FRAC), 0.25);
    // Group 0 has two rewards of 1.0: no advantage.
    assert_eq!(get(names::ZERO_ADV_GROUPS), 0.5);
    // Only group 1 (rewards 0 and 0.5) carries a signal: its mean, below the step's 0.625.
    assert_eq!(get(names::REWARD_VALID_MEAN), 0.25);
    assert_eq!(get(names::RESPONSE_TOKENS_MAX), 40.0);
    assert_eq!(get(names::TSR), 0.5);
    // The three answered episodes all parsed.
    assert_eq!(get(names::FORMAT_FRAC), 1.0);
    // Rewards equal the strict scores (1, 1, 0, 0.5).
    assert_eq!(get(names::REWARD_EVAL_GAP), 0.0);

    // With a baseline where task "a" usually takes 2 successful calls, the second episode
    // (1 successful call) answered early too.
    let base_a = episode("a", &[true, true], StopReason::Answered);
    let base_a2 = episode("a", &[true, true, true], StopReason::Answered);
    let base_fail = episode("a", &[], StopReason::Answered);
    let ok = evaluation(true, true, 2, 2);
    let bad = evaluation(false, true, 0, 2);
    let usual = UsualToolUse::from_baseline([(&base_a, &ok), (&base_a2, &ok), (&base_fail, &bad)]);
    assert_eq!(usual.usual("a"), Some(2.5));
    assert_eq!(usual.usual("b"), None);
    let mut m = StepMetrics::new(7);
    m.record_rollouts(&rollouts, &usual);
    assert_eq!(m.get(names::ANSWER_EARLY_FRAC), Some(0.75));

    // A failed episode counts as failed, and nothing is recorded from no rollouts.
    let mut crashed = episode("c", &[], StopReason::EnvironmentError);
    crashed.error = Some(EpisodeError {
        phase: Phase::Step,
        message: "boom".into(),
        panicked: true,
    });
    let mut m = StepMetrics::new(8);
    m.record_rollouts(
        &[Scored::new(&task, &crashed, 0, RewardValue::new(0.0))],
        &UsualToolUse::none(),
    );
    assert_eq!(m.get(names::FAILED_FRAC), Some(1.0));
    // One group of one: no signal, so no valid mean; no turn reports tokens, so no maximum.
    assert_eq!(m.get(names::REWARD_VALID_MEAN), None);
    assert_eq!(m.get(names::RESPONSE_TOKENS_MAX), None);
    assert_eq!(m.get(names::TSR), None, "no evaluation, no strict metrics");
    let mut empty = StepMetrics::new(9);
    empty.record_rollouts(&[], &UsualToolUse::none());
    assert!(empty.values.is_empty());
    assert!(!empty.set("x", f64::NAN), "NaN is not recorded");
}

#[test]
fn jsonl_sink_round_trips_flat_records() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor-jsonl");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.jsonl");
    let history = synthetic(Run::Learning, 1);
    {
        let mut sink = JsonlSink::create(&path).unwrap();
        for m in &history[..10] {
            sink.write(m).unwrap();
        }
    }
    {
        let mut sink = JsonlSink::append(&path).unwrap();
        for m in &history[10..] {
            sink.write(m).unwrap();
        }
    }
    let back = read_metrics(&path).unwrap();
    assert_eq!(back, history);
    let text = std::fs::read_to_string(&path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 0);
    assert!(first["rollout/reward/mean"].is_f64());
    assert!(first["rollout/turns/hist"].is_array());

    let mut memory: Vec<StepMetrics> = Vec::new();
    memory.write(&history[0]).unwrap();
    assert_eq!(memory, history[..1]);

    std::fs::write(
        &path,
        format!("{}\nnot json\n", text.lines().next().unwrap()),
    )
    .unwrap();
    let err = read_metrics(&path).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(read_metrics(dir.join("absent.jsonl")).is_err());
}

#[test]
fn a_collapse_raises_its_alarm_when_it_starts_even_if_the_run_recovers() {
    let alarm = HackingAlarm::default();
    for seed in 0..25 {
        let history = synthetic(Run::Collapse, seed);
        let found = alarm.scan(&history);
        let hit = found
            .iter()
            .find(|a| a.kind == AlarmKind::Collapse)
            .unwrap_or_else(|| panic!("seed {seed}: no collapse in {found:#?}"));
        // Seen within the collapse's first steps, from the behaviour jump or the validation.
        assert!(
            (HACK_FROM..HACK_FROM + 5).contains(&hit.step),
            "seed {seed}: collapse at step {}",
            hit.step
        );
        assert!(!hit.evidence.is_empty(), "{hit:?}");
        // The run recovered: at its end no collapse holds, yet the scan kept it.
        assert!(
            !alarm
                .check(&history)
                .iter()
                .any(|a| a.kind == AlarmKind::Collapse),
            "seed {seed}"
        );
        // Without validation, the jump in answers without tools is enough.
        let unvalidated: Vec<StepMetrics> = history
            .iter()
            .cloned()
            .map(|mut m| {
                m.values.remove(names::VAL_TSR);
                m
            })
            .collect();
        let hit = alarm
            .scan(&unvalidated)
            .into_iter()
            .find(|a| a.kind == AlarmKind::Collapse)
            .unwrap_or_else(|| panic!("seed {seed}: no jump seen"));
        assert!(hit.message.contains(names::ANSWER_NO_TOOL_FRAC), "{hit:?}");
        let ev = &hit.evidence;
        assert!(ev["share_now"] - ev["share_before"] >= 0.3, "{hit:?}");
    }
    // Validation alone: a drop from the best point fires, a small dip does not.
    let val = |points: &[f64]| -> Vec<StepMetrics> {
        points
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut m = StepMetrics::new(i as u64 * 10);
                m.set(names::VAL_TSR, *v);
                m
            })
            .collect()
    };
    let fell = alarm.check(&val(&[0.1, 0.6, 0.87, 0.3]));
    let c = fell.iter().find(|a| a.kind == AlarmKind::Collapse).unwrap();
    assert_eq!(c.evidence["val_tsr_best"], 0.87);
    assert_eq!(c.evidence["best_step"], 20.0);
    assert!(alarm.check(&val(&[0.1, 0.6, 0.87, 0.7])).is_empty());
}

#[test]
fn healthy_runs_raise_no_alarm() {
    let alarm = HackingAlarm::default();
    for run in [Run::Learning, Run::Plateau, Run::LearningFormat] {
        for seed in 0..25 {
            let found = alarm.scan(&synthetic(run, seed));
            assert!(found.is_empty(), "{run:?} seed {seed}: {found:#?}");
        }
    }
}

#[test]
fn each_hack_raises_its_alarm_with_evidence_after_it_starts() {
    let alarm = HackingAlarm::default();
    let cases = [
        (Run::FinalResponseHack, AlarmKind::RewardWithoutSuccess),
        (Run::FinalResponseHack, AlarmKind::FormatDrift),
        (Run::ToolSpam, AlarmKind::ToolSpam),
        (Run::EarlyAnswers, AlarmKind::EarlyAnswers),
    ];
    for (run, kind) in cases {
        for seed in 0..25 {
            let history = synthetic(run, seed);
            let found = alarm.scan(&history);
            let hit = found
                .iter()
                .find(|a| a.kind == kind)
                .unwrap_or_else(|| panic!("{run:?} seed {seed}: no {kind:?} in {found:#?}"));
            assert!(
                (HACK_FROM..STEPS).contains(&hit.step),
                "{run:?}: {kind:?} at step {}",
                hit.step
            );
            assert!(!hit.message.is_empty() && !hit.evidence.is_empty());
            // The alarm still holds at the end of the run.
            assert!(alarm.check(&history).iter().any(|a| a.kind == kind));
        }
    }
    let hack = alarm.check(&synthetic(Run::FinalResponseHack, 3));
    let divergence = hack
        .iter()
        .find(|a| a.kind == AlarmKind::RewardWithoutSuccess)
        .unwrap();
    let ev = &divergence.evidence;
    assert!(ev["reward_after"] > ev["reward_before"] + 0.1);
    assert!(ev["tsr_after"] < ev["tsr_before"]);
    assert_eq!(divergence.step, STEPS - 1);
    let drift = hack
        .iter()
        .find(|a| a.kind == AlarmKind::FormatDrift)
        .unwrap();
    assert!(drift.evidence["format_best"] - drift.evidence["format_now"] >= 0.15);
}

#[test]
fn reward_without_success_falls_back_to_rollout_tsr_and_needs_history() {
    let alarm = HackingAlarm::new(AlarmConfig {
        window: 5,
        ..AlarmConfig::default()
    });
    let mut history: Vec<StepMetrics> = synthetic(Run::FinalResponseHack, 0);
    for m in &mut history {
        m.values.remove(names::VAL_TSR);
    }
    let found = alarm.check(&history);
    assert!(
        found
            .iter()
            .any(|a| a.kind == AlarmKind::RewardWithoutSuccess && a.message.contains(names::TSR)),
        "{found:#?}"
    );
    // Too short a history says nothing.
    assert!(alarm.check(&history[..3]).is_empty());
    assert!(alarm.check(&[]).is_empty());
}

#[test]
fn a_resumed_sink_drops_the_steps_after_the_checkpoint_and_a_cut_line() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor-resume");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.jsonl");
    let history = synthetic(Run::Learning, 2);
    // The killed run wrote steps 0..=14, and was cut in the middle of step 15's line.
    {
        let mut sink = JsonlSink::create(&path).unwrap();
        for m in &history[..15] {
            sink.write(m).unwrap();
        }
    }
    let whole = std::fs::read(&path).unwrap();
    let line = serde_json::to_string(&history[15]).unwrap();
    let mut cut = whole.clone();
    cut.extend_from_slice(&line.as_bytes()[..line.len() / 2]);
    std::fs::write(&path, &cut).unwrap();
    // Resumed from the checkpoint of step 9: steps 10..=14 and the cut line go.
    let (mut sink, removed) = JsonlSink::resume(&path, 9).unwrap();
    assert_eq!(removed, 6);
    for m in &history[10..] {
        sink.write(m).unwrap();
    }
    drop(sink);
    let log = mtrl_eval::monitor::read_metrics_log(&path).unwrap();
    assert!(log.resumptions.is_empty(), "no step appears twice");
    assert_eq!(log.steps, history);
    // The kept lines are the killed run's, byte for byte.
    let text = std::fs::read(&path).unwrap();
    let upto: usize = whole
        .split_inclusive(|b| *b == b'\n')
        .take(10)
        .map(<[u8]>::len)
        .sum();
    assert_eq!(text[..upto], whole[..upto]);

    // A line in the middle that is not a record is refused, naming the line, and the file is
    // left as it was.
    let mut bad = whole[..upto].to_vec();
    bad.extend_from_slice(b"{not json}\n");
    std::fs::write(&path, &bad).unwrap();
    let e = JsonlSink::resume(&path, 20).unwrap_err().to_string();
    assert!(e.contains("line 11"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bad);
    // A run resumed before it wrote anything starts the file.
    let fresh = dir.join("none.jsonl");
    let _ = std::fs::remove_file(&fresh);
    let (_, removed) = JsonlSink::resume(&fresh, 3).unwrap();
    assert_eq!((removed, std::fs::read(&fresh).unwrap().len()), (0, 0));
}
