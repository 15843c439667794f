//! Groups and batches: isolation of failures, deterministic order, bounded concurrency.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Faults, Move, Probe, ScriptedAgent, TestEnv, answer, call, task};
use mtrl_core::{Episode, Limits, RolloutDriver, StopReason, Task, stop_counts};

/// A factory whose faults depend on the task id: `env-error`, `env-panic` and `slow` misbehave,
/// `delay-N` sleeps N seconds per step.
fn factory(probe: Arc<Probe>) -> impl Fn(&Task, &Episode) -> mtrl_core::Result<TestEnv> + Sync {
    move |task: &Task, _: &Episode| {
        let id = task.id();
        let mut faults = Faults::default();
        if id == "env-error" {
            faults.step_error_at = Some(0);
        }
        if id == "env-panic" {
            faults.step_panic_at = Some(0);
        }
        if id == "slow" {
            faults.step_delay = Some(Duration::from_secs(3600));
        }
        if let Some(secs) = id.strip_prefix("delay-") {
            faults.step_delay = Some(Duration::from_secs(secs.parse().unwrap()));
        }
        Ok(TestEnv::new(faults, probe.clone()))
    }
}

#[tokio::test(start_paused = true)]
async fn failing_episodes_next_to_healthy_ones_all_come_back() {
    let ids = [
        "ok-1",
        "env-error",
        "ok-2",
        "env-panic",
        "agent-error",
        "slow",
        "ok-3",
    ];
    let tasks: Vec<Task> = ids.iter().map(|id| task(id)).collect();
    let agent = ScriptedAgent::new(vec![call("k"), answer("x")])
        .with_task("agent-error", vec![Move::Fail("bad sample".into())]);
    let probe = Arc::new(Probe::default());
    let driver = RolloutDriver::new(Limits {
        timeout: Some(Duration::from_secs(30)),
        ..Limits::default()
    })
    .with_concurrency(3);
    let groups = driver
        .run_batch(&agent, &factory(probe.clone()), &tasks, 2)
        .await;

    assert_eq!(groups.len(), ids.len());
    for (group, id) in groups.iter().zip(ids) {
        assert_eq!(group.len(), 2);
        let expected = match id {
            "env-error" | "env-panic" => StopReason::EnvironmentError,
            "agent-error" => StopReason::AgentError,
            "slow" => StopReason::Timeout,
            _ => StopReason::Answered,
        };
        for t in group {
            assert_eq!(t.task_id, id);
            assert_eq!(t.stop, expected, "task {id}");
            assert_eq!(
                t.error.is_some(),
                expected != StopReason::Answered,
                "task {id}"
            );
        }
    }
    let counts = stop_counts(groups.iter().flatten());
    assert_eq!(counts[&StopReason::Answered], 6);
    assert_eq!(counts[&StopReason::EnvironmentError], 4);
    assert_eq!(counts[&StopReason::AgentError], 2);
    assert_eq!(counts[&StopReason::Timeout], 2);
    assert_eq!(counts[&StopReason::MaxTurns], 0);
    // Every environment that was made was closed.
    assert_eq!(probe.created.load(Ordering::SeqCst), 14);
    assert_eq!(probe.closed.load(Ordering::SeqCst), 14);
}

#[tokio::test(start_paused = true)]
async fn results_keep_input_order_whatever_order_episodes_finish_in() {
    // Later tasks finish first.
    let ids = ["delay-5", "delay-4", "delay-3", "delay-2", "delay-1"];
    let tasks: Vec<Task> = ids.iter().map(|id| task(id)).collect();
    let agent = ScriptedAgent::new(vec![call("k"), answer("x")]);
    let probe = Arc::new(Probe::default());
    let driver = RolloutDriver::new(Limits::default()).with_concurrency(16);
    let groups = driver
        .run_batch(&agent, &factory(probe.clone()), &tasks, 3)
        .await;

    let finished = probe.finished.lock().unwrap().clone();
    assert_eq!(finished.first().map(String::as_str), Some("delay-1"));
    assert_eq!(finished.last().map(String::as_str), Some("delay-5"));
    let order: Vec<(&str, usize)> = groups
        .iter()
        .flatten()
        .map(|t| (t.task_id.as_str(), t.episode.index))
        .collect();
    let expected: Vec<(&str, usize)> = ids
        .iter()
        .flat_map(|id| (0..3).map(move |i| (*id, i)))
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn a_rerun_gives_the_same_results_in_the_same_order() {
    let ids = ["delay-2", "env-error", "delay-1", "ok"];
    let tasks: Vec<Task> = ids.iter().map(|id| task(id)).collect();
    let agent = ScriptedAgent::new(vec![call("k"), call("j"), answer("x")]);
    let driver = RolloutDriver::new(Limits::default())
        .with_concurrency(4)
        .with_seed(7);
    let strip = |groups: Vec<Vec<mtrl_core::Trajectory>>| {
        groups
            .into_iter()
            .flatten()
            .map(mtrl_core::Trajectory::untimed)
            .collect::<Vec<_>>()
    };
    let a = strip(
        driver
            .run_batch(&agent, &factory(Arc::default()), &tasks, 2)
            .await,
    );
    let b = strip(
        driver
            .run_batch(&agent, &factory(Arc::default()), &tasks, 2)
            .await,
    );
    assert_eq!(a, b);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded() {
    let tasks: Vec<Task> = (0..6).map(|i| task(&format!("delay-{}", i + 1))).collect();
    let agent = ScriptedAgent::new(vec![call("k"), answer("x")]);
    let probe = Arc::new(Probe::default());
    let driver = RolloutDriver::new(Limits::default()).with_concurrency(4);
    let groups = driver
        .run_batch(&agent, &factory(probe.clone()), &tasks, 2)
        .await;
    assert_eq!(groups.iter().flatten().count(), 12);
    assert_eq!(probe.max_live.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn episode_seeds_are_stable_and_distinct() {
    let driver = RolloutDriver::default().with_seed(42);
    let a = task("alpha");
    let b = task("beta");
    assert_eq!(driver.episode(&a, 0), driver.episode(&a, 0));
    assert_ne!(driver.episode(&a, 0).seed, driver.episode(&a, 1).seed);
    assert_ne!(driver.episode(&a, 0).seed, driver.episode(&b, 0).seed);
    let other = RolloutDriver::default().with_seed(43);
    assert_ne!(driver.episode(&a, 0).seed, other.episode(&a, 0).seed);
    // A pinned value: the derivation must not change between versions, or resumed runs and
    // recorded seeds would silently diverge.
    // (Computed independently: SplitMix64 over FNV-1a, see `derive_seed`.)
    assert_eq!(
        mtrl_core::derive_seed(42, "alpha", 0),
        16_685_932_571_051_867_733
    );
    let group = driver
        .run_group(
            &ScriptedAgent::new(vec![answer("x")]),
            &factory(Arc::default()),
            &a,
            4,
        )
        .await;
    let seeds: Vec<u64> = group.iter().map(|t| t.episode.seed).collect();
    let expected: Vec<u64> = (0..4).map(|i| driver.episode(&a, i).seed).collect();
    assert_eq!(seeds, expected);
    // The environment saw the same seed (it copies it into the metadata).
    for t in &group {
        assert_eq!(t.metadata["seed"], serde_json::json!(t.episode.seed));
    }
}

#[tokio::test]
async fn an_empty_batch_and_an_empty_group_are_empty() {
    let driver = RolloutDriver::default();
    let agent = ScriptedAgent::default();
    assert!(
        driver
            .run_batch(&agent, &factory(Arc::default()), &[], 3)
            .await
            .is_empty()
    );
    let groups = driver
        .run_batch(&agent, &factory(Arc::default()), &[task("a"), task("b")], 0)
        .await;
    assert_eq!(groups, vec![Vec::new(), Vec::new()]);
}

#[tokio::test]
async fn a_failed_episode_is_retried_with_a_new_seed_and_the_failures_are_kept() {
    use std::collections::HashSet;
    use std::sync::Mutex;

    // Fails the first two environments it builds for task "flaky"; every other task works.
    let built = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let probe = Arc::new(Probe::default());
    let seen = built.clone();
    let flaky = move |task: &Task, episode: &Episode| {
        let mut log = seen.lock().unwrap();
        let failures = log.iter().filter(|(id, _)| id == "flaky").count();
        log.push((task.id().to_string(), episode.seed));
        let mut faults = Faults::default();
        if task.id() == "flaky" && failures < 2 {
            faults.step_error_at = Some(0);
        }
        Ok(TestEnv::new(faults, probe.clone()))
    };
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let tasks = [task("steady"), task("flaky")];

    let driver = RolloutDriver::new(Limits::default())
        .with_concurrency(1)
        .with_retries(3);
    let groups = driver.run_batch(&agent, &flaky, &tasks, 1).await;
    assert_eq!(groups[0][0].stop, StopReason::Answered);
    assert!(groups[0][0].failed_attempts.is_empty());
    let retried = &groups[1][0];
    assert_eq!(retried.stop, StopReason::Answered);
    assert_eq!(retried.failed_attempts.len(), 2);
    assert!(
        retried
            .failed_attempts
            .iter()
            .all(|a| a.stop == StopReason::EnvironmentError && a.error.is_some())
    );
    // Three distinct seeds for "flaky": the first, then one per retry; the trajectory that comes
    // back carries the last one, and its place in the group is kept.
    let seeds: HashSet<u64> = built
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| id == "flaky")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(seeds.len(), 3);
    assert_eq!(retried.episode.index, 0);
    assert!(
        !retried
            .failed_attempts
            .iter()
            .any(|a| a.seed == retried.episode.seed)
    );

    // Out of retries: the last failure comes back as the trajectory, the earlier ones listed.
    built.lock().unwrap().clear();
    let driver = RolloutDriver::new(Limits::default()).with_retries(1);
    let groups = driver.run_batch(&agent, &flaky, &tasks[1..], 1).await;
    assert_eq!(groups[0][0].stop, StopReason::EnvironmentError);
    assert_eq!(groups[0][0].failed_attempts.len(), 1);

    // No retries: the failure comes back at once.
    built.lock().unwrap().clear();
    let driver = RolloutDriver::new(Limits::default());
    let groups = driver.run_batch(&agent, &flaky, &tasks[1..], 1).await;
    assert_eq!(groups[0][0].stop, StopReason::EnvironmentError);
    assert!(groups[0][0].failed_attempts.is_empty());
    assert_eq!(built.lock().unwrap().len(), 1);
}
