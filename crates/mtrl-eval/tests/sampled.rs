//! pass@k against its closed form and brute force; mean@k; bootstrap intervals.

use mtrl_core::{Evaluation, StopReason, ToolOutcomes};
use mtrl_eval::{
    Bootstrap, Error, EvalRecord, SampledMetrics, TaskOutcome, mean_at_k, pass_at_k, task_outcomes,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn binomial(n: u64, k: u64) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

#[test]
fn pass_at_k_matches_hand_computed_cases() {
    // (n, c, k, expected)
    let cases = [
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),
        (3, 1, 1, 1.0 / 3.0),
        (4, 2, 1, 0.5),
        (4, 2, 2, 5.0 / 6.0),            // 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 2, 3, 1.0),                  // n - c < k
        (10, 3, 5, 11.0 / 12.0),         // 1 - C(7,5)/C(10,5) = 1 - 21/252
        (10, 1, 3, 0.3),                 // 1 - C(9,3)/C(10,3) = 1 - 84/120
        (20, 2, 10, 1.0 - 45.0 / 190.0), // 1 - C(18,10)/C(20,10) = 1 - (10·9)/(20·19)
    ];
    for (n, c, k, expected) in cases {
        let got = pass_at_k(n, c, k).unwrap();
        assert!(
            close(got, expected),
            "pass@{k} n={n} c={c}: {got} vs {expected}"
        );
    }
}

#[test]
fn pass_at_k_equals_the_binomial_closed_form_and_brute_force() {
    for n in 1..=9usize {
        for c in 0..=n {
            for k in 1..=n {
                let got = pass_at_k(n, c, k).unwrap();
                let closed =
                    1.0 - binomial((n - c) as u64, k as u64) / binomial(n as u64, k as u64);
                assert!(close(got, closed), "n={n} c={c} k={k}: {got} vs {closed}");
                // Enumerate every k-subset of samples (the first c succeed).
                let (mut hit, mut all) = (0u64, 0u64);
                for mask in 0u32..(1 << n) {
                    if mask.count_ones() as usize == k {
                        all += 1;
                        hit += u64::from(mask & ((1 << c) - 1) != 0);
                    }
                }
                assert!(close(got, hit as f64 / all as f64), "n={n} c={c} k={k}");
            }
        }
    }
    // Large n stays finite and exact enough.
    let big = pass_at_k(1000, 1, 1).unwrap();
    assert!(close(big, 0.001));
    assert!(close(
        pass_at_k(1000, 10, 100).unwrap(),
        1.0 - binomial(990, 100) / binomial(1000, 100)
    ));
}

#[test]
fn bad_counts_are_typed_errors() {
    for (n, c, k) in [(4, 1, 0), (4, 1, 5), (4, 5, 1), (0, 0, 1)] {
        assert!(
            matches!(pass_at_k(n, c, k), Err(Error::InvalidSampling(_))),
            "{n} {c} {k}"
        );
        assert!(matches!(mean_at_k(n, c, k), Err(Error::InvalidSampling(_))));
    }
}

#[test]
fn mean_at_k_is_the_success_share() {
    assert_eq!(mean_at_k(4, 1, 2).unwrap(), 0.25);
    assert_eq!(mean_at_k(8, 8, 8).unwrap(), 1.0);
}

fn outcome(id: &str, samples: usize, successes: usize) -> TaskOutcome {
    TaskOutcome {
        task_id: id.into(),
        samples,
        successes,
    }
}

#[test]
fn sampled_metrics_average_tasks_with_intervals() {
    let outcomes = [outcome("a", 4, 0), outcome("b", 4, 2), outcome("c", 4, 4)];
    let m = SampledMetrics::compute(&outcomes, 2, &Bootstrap::default()).unwrap();
    assert_eq!(m.tasks, 3);
    assert!(close(m.pass_at_k.value, (0.0 + 5.0 / 6.0 + 1.0) / 3.0));
    assert!(close(m.mean_at_k.value, 0.5));
    for e in [m.pass_at_k, m.mean_at_k] {
        assert!(e.low <= e.value && e.value <= e.high, "{e:?}");
        assert!(e.low >= 0.0 && e.high <= 1.0);
        assert!(
            e.high - e.low > 0.1,
            "three different tasks cannot give a tight interval"
        );
    }
    // Reproducible with the seed, different with another.
    let again = SampledMetrics::compute(&outcomes, 2, &Bootstrap::default()).unwrap();
    assert_eq!(m, again);
    let other = Bootstrap {
        seed: 7,
        ..Bootstrap::default()
    };
    let moved = SampledMetrics::compute(&outcomes, 2, &other).unwrap();
    assert_eq!(moved.pass_at_k.value, m.pass_at_k.value);

    // A task with too few samples is named.
    let err =
        SampledMetrics::compute(&[outcome("short", 1, 1)], 2, &Bootstrap::default()).unwrap_err();
    assert!(err.to_string().contains("short"), "{err}");
}

#[test]
fn bootstrap_intervals_shrink_with_more_tasks_and_vanish_without_spread() {
    let b = Bootstrap::default();
    let flat = b.estimate(&[0.5; 20]).unwrap();
    assert_eq!((flat.low, flat.value, flat.high), (0.5, 0.5, 0.5));

    let few: Vec<f64> = (0..10).map(|i| f64::from(i % 2)).collect();
    let many: Vec<f64> = (0..1000).map(|i| f64::from(i % 2)).collect();
    let (few, many) = (b.estimate(&few).unwrap(), b.estimate(&many).unwrap());
    assert!(
        many.high - many.low < (few.high - few.low) / 3.0,
        "{few:?} {many:?}"
    );
    // About ±1.96·0.5/√1000 ≈ ±0.031 around 0.5.
    assert!((many.high - many.low - 0.062).abs() < 0.015, "{many:?}");

    assert!(b.estimate(&[]).is_err());
    let bad = Bootstrap {
        confidence: 1.0,
        ..b
    };
    assert!(bad.estimate(&[1.0]).is_err());
}

#[test]
fn outcomes_group_records_by_task() {
    let record = |task: &str, success: bool| EvalRecord {
        task_id: task.into(),
        domain: None,
        sample: 0,
        stop: StopReason::Answered,
        turns: 1,
        tools: ToolOutcomes::default(),
        evaluation: Evaluation {
            success,
            completed: true,
            ..Evaluation::default()
        },
    };
    let records = [
        record("b", true),
        record("a", false),
        record("b", false),
        record("a", true),
        record("a", true),
    ];
    assert_eq!(
        task_outcomes(&records),
        vec![outcome("a", 3, 2), outcome("b", 2, 1)]
    );
}
