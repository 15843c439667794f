//! Token records and the training sequences built from them.

use mtrl_core::{Episode, Error, Finish, Message, TokenRecord, Trajectory, Turn};

fn turn(record: Option<TokenRecord>) -> Turn {
    Turn {
        action: Message::assistant("x"),
        observations: vec![Message::tool("c", "lookup", "y")],
        finish: Finish::Stop,
        tokens_used: record.as_ref().map(|r| r.sampled_ids().len()),
        token_budget: None,
        tokens: record,
        info: Default::default(),
        agent_us: 0,
        env_us: 0,
    }
}

fn trajectory(records: Vec<Option<TokenRecord>>) -> Trajectory {
    let mut t = Trajectory::new("t", Episode::default());
    t.turns = records.into_iter().map(turn).collect();
    t
}

fn invalid(result: mtrl_core::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::InvalidTokenRecord { reason }) => reason,
        other => panic!("expected InvalidTokenRecord, got {other:?}"),
    }
}

#[test]
fn records_check_their_lengths_and_values() {
    assert!(invalid(TokenRecord::new(vec![], vec![1, 2], vec![-1.0])).contains("1 logprobs"));
    assert!(invalid(TokenRecord::new(vec![], vec![1], vec![f32::NAN])).contains("logprobs[0]"));
    assert!(invalid(TokenRecord::new(vec![], vec![1], vec![f32::NEG_INFINITY])).contains("finite"));
    let ok = TokenRecord::new(vec![9], vec![1, 2], vec![-1.0, -2.0]).unwrap();
    assert_eq!(ok.loss_mask(), &[true, true]);
    assert!(!ok.starts_segment());
    assert!(invalid(ok.clone().with_loss_mask(vec![true])).contains("loss-mask"));
    assert!(invalid(ok.clone().with_behaviour_logprobs(vec![-1.0])).contains("behaviour"));
    assert!(invalid(ok.with_behaviour_logprobs(vec![-1.0, f32::INFINITY])).contains("finite"));
}

#[test]
fn one_segment_concatenates_prompt_deltas_and_samples() {
    let t = trajectory(vec![
        Some(
            TokenRecord::new(vec![1, 2, 3], vec![4, 5], vec![-0.5, -0.25])
                .unwrap()
                .starting_segment(),
        ),
        Some(
            TokenRecord::new(vec![6], vec![7, 8], vec![-1.0, -2.0])
                .unwrap()
                .with_loss_mask(vec![true, false])
                .unwrap(),
        ),
    ]);
    let seqs = t.sequences().unwrap();
    assert_eq!(seqs.len(), 1);
    let s = &seqs[0];
    assert_eq!(s.turns, 0..2);
    assert_eq!(s.ids, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        s.loss_mask,
        vec![false, false, false, true, true, false, true, false]
    );
    assert_eq!(
        s.logprobs,
        vec![0.0, 0.0, 0.0, -0.5, -0.25, 0.0, -1.0, -2.0]
    );
    assert_eq!(
        s.behaviour_logprobs, s.logprobs,
        "no truncation: behaviour = policy"
    );
    assert_eq!(s.trained_tokens(), 3);
}

#[test]
fn a_segment_boundary_starts_a_new_sequence() {
    let t = trajectory(vec![
        Some(
            TokenRecord::new(vec![1, 2], vec![3], vec![-0.1])
                .unwrap()
                .starting_segment(),
        ),
        Some(TokenRecord::new(vec![4], vec![5], vec![-0.2]).unwrap()),
        // The template rewrote history: a whole new prompt.
        Some(
            TokenRecord::new(vec![1, 2, 3, 4, 5, 6], vec![7, 8], vec![-0.3, -0.4])
                .unwrap()
                .starting_segment()
                .with_behaviour_logprobs(vec![-0.2, -0.1])
                .unwrap(),
        ),
    ]);
    let seqs = t.sequences().unwrap();
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[0].turns, 0..2);
    assert_eq!(seqs[0].ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs[1].turns, 2..3);
    assert_eq!(seqs[1].ids, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(seqs[1].trained_tokens(), 2);
    assert_eq!(
        seqs[1].behaviour_logprobs,
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.2, -0.1]
    );
    for s in &seqs {
        assert_eq!(s.ids.len(), s.loss_mask.len());
        assert_eq!(s.ids.len(), s.logprobs.len());
        assert_eq!(s.ids.len(), s.behaviour_logprobs.len());
    }
}

#[test]
fn inconsistent_records_are_refused() {
    let first_not_start = trajectory(vec![Some(
        TokenRecord::new(vec![1], vec![2], vec![-0.1]).unwrap(),
    )]);
    assert!(invalid(first_not_start.sequences()).contains("first token record"));
    let mixed = trajectory(vec![
        Some(
            TokenRecord::new(vec![1], vec![2], vec![-0.1])
                .unwrap()
                .starting_segment(),
        ),
        None,
    ]);
    assert!(invalid(mixed.sequences()).contains("turn 1 has no token record"));
    let none = trajectory(vec![None, None]);
    assert!(none.sequences().unwrap().is_empty());
}
