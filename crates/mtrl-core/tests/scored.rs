//! Scoring a batch in one call: each episode scored once by the reward and once by the
//! evaluator, failures kept in their rows.

use std::sync::atomic::{AtomicUsize, Ordering};

use mtrl_core::{
    Episode, Error, Evaluation, Evaluator, Reward, RewardValue, StopReason, Task, Trajectory,
    async_trait, score_groups,
};
use serde_json::json;

/// Rewards the episode's index; fails on index 1 and gives NaN on index 2.
#[derive(Default)]
struct ByIndex(AtomicUsize);

#[async_trait]
impl Reward for ByIndex {
    async fn score(&self, _: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        self.0.fetch_add(1, Ordering::SeqCst);
        match t.episode.index {
            1 => Err(Error::Other("the judge timed out".into())),
            2 => Ok(RewardValue::new(f64::NAN)),
            i => Ok(RewardValue::new(i as f64).with_component("index", i as f64)),
        }
    }
}

/// Succeeds on even indices; fails to judge task `b`.
#[derive(Default)]
struct Even(AtomicUsize);

#[async_trait]
impl Evaluator for Even {
    async fn evaluate(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<Evaluation> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if task.id() == "b" {
            return Err(Error::Other("no ground truth".into()));
        }
        Ok(Evaluation {
            success: t.episode.index % 2 == 0,
            completed: true,
            ..Evaluation::default()
        })
    }
}

fn episode(task: &str, index: usize) -> Trajectory {
    let mut t = Trajectory::new(task, Episode { index, seed: 7 });
    t.stop = StopReason::Answered;
    t
}

#[tokio::test]
async fn each_episode_is_scored_and_judged_once_and_failures_stay_in_their_rows() {
    let tasks = vec![
        Task::new("a", json!({}), json!({})).unwrap(),
        Task::new("b", json!({}), json!({})).unwrap(),
    ];
    let mut crashed = episode("b", 0);
    crashed.stop = StopReason::EnvironmentError;
    let groups = vec![
        vec![
            episode("a", 0),
            episode("a", 1),
            episode("a", 2),
            episode("a", 3),
        ],
        vec![crashed, episode("b", 4)],
    ];
    let (reward, evaluator) = (ByIndex::default(), Even::default());
    let rows = score_groups(&tasks, &groups, &reward, &evaluator)
        .await
        .unwrap();
    assert_eq!(reward.0.load(Ordering::SeqCst), 6);
    assert_eq!(evaluator.0.load(Ordering::SeqCst), 6);

    let groups_of: Vec<usize> = rows.iter().map(|r| r.group).collect();
    assert_eq!(groups_of, [0, 0, 0, 0, 1, 1]);
    let labels: Vec<String> = rows.iter().map(|r| r.label()).collect();
    assert_eq!(labels, ["a#0", "a#1", "a#2", "a#3", "b#0", "b#4"]);
    assert!(std::ptr::eq(rows[4].task, &tasks[1]));

    assert_eq!(rows[3].reward.components["index"], 3.0);
    assert!(rows[0].usable() && rows[3].usable());
    // The reward's error is kept, with a zero reward, and the row is not trainable.
    assert_eq!(rows[1].reward.total, 0.0);
    assert!(
        rows[1]
            .reward_error
            .as_deref()
            .unwrap()
            .contains("the judge timed out")
    );
    assert!(!rows[1].usable());
    // A NaN reward is kept as it is (the range guard reports it) and is not trainable.
    assert!(rows[2].reward.total.is_nan() && !rows[2].usable());
    // A failed episode is not trainable, whatever its reward.
    assert!(!rows[4].usable());
    // The evaluator's verdicts, and its failures, per row.
    assert_eq!(rows[0].evaluation.as_ref().map(|e| e.success), Some(true));
    assert_eq!(rows[1].evaluation.as_ref().map(|e| e.success), Some(false));
    assert!(rows[5].evaluation.is_none());
    assert!(
        rows[5]
            .evaluation_error
            .as_deref()
            .unwrap()
            .contains("no ground truth")
    );
    assert!(
        rows[5].usable(),
        "an evaluator's failure does not stop training on it"
    );
}

#[tokio::test]
async fn a_batch_whose_groups_do_not_match_its_tasks_is_refused_not_cut() {
    let tasks = vec![Task::new("a", json!({}), json!({})).unwrap()];
    let groups = vec![vec![episode("a", 0)], vec![episode("b", 0)]];
    let err = score_groups(&tasks, &groups, &ByIndex::default(), &Even::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MismatchedBatch {
                tasks: 1,
                groups: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1 tasks") && err.to_string().contains("2 groups"));
}
