//! Deterministic, seeded, stratified train/validation/test splits of labelled tasks.

use std::collections::BTreeMap;

use mtrl_core::Task;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::Value;

/// Tasks cut into three disjoint parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// For training.
    pub train: Vec<Task>,
    /// For choosing checkpoints and watching for reward hacking.
    pub validation: Vec<Task>,
    /// Held out until the end.
    pub test: Vec<Task>,
}

impl Splits {
    /// Splits `tasks` by the fractions `[train, validation, test]`, stratified by the `label`
    /// metadata: each label's tasks are shuffled with a generator seeded by `seed` and the
    /// label, then cut by the fractions (rounded), so that every split keeps the label mix.
    /// The same tasks and seed always give the same splits; within a split, tasks keep their
    /// input order.
    pub fn stratified(tasks: &[Task], seed: u64, fractions: [f64; 3]) -> Self {
        let total: f64 = fractions.iter().map(|f| f.max(0.0)).sum();
        let share = |i: usize| {
            if total > 0.0 {
                fractions[i].max(0.0) / total
            } else {
                0.0
            }
        };
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, t) in tasks.iter().enumerate() {
            let label = t
                .metadata()
                .get("label")
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            groups.entry(label).or_default().push(i);
        }
        let mut parts: [Vec<usize>; 3] = Default::default();
        for (label, mut members) in groups {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(label.as_bytes()));
            for i in (1..members.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                members.swap(i, j);
            }
            let n = members.len();
            let n_test = ((n as f64) * share(2)).round() as usize;
            let n_val = (((n as f64) * share(1)).round() as usize).min(n - n_test.min(n));
            let n_test = n_test.min(n);
            parts[2].extend(&members[..n_test]);
            parts[1].extend(&members[n_test..n_test + n_val]);
            parts[0].extend(&members[n_test + n_val..]);
        }
        let take = |mut idx: Vec<usize>| {
            idx.sort_unstable();
            idx.into_iter().map(|i| tasks[i].clone()).collect()
        };
        let [train, validation, test] = parts;
        Self {
            train: take(train),
            validation: take(validation),
            test: take(test),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
