//! Failed rollouts on the real SOP-Bench data, with the fault-injection layer failing about 10%
//! of episodes: retried in a fresh environment, at least 99% of groups train; with dropping
//! alone, every group that lost an episode is counted; and no failed attempt is ever among
//! the trajectories that train. The groups are sorted by [`GroupTriage`], the trainer's own
//! step.

use std::collections::HashMap;

use mtrl_core::{
    Action, Agent, Limits, Message, RolloutDriver, Task, Trajectory, TurnContext, async_trait,
    score_groups,
};
use mtrl_env::layers::{EnvironmentFactoryExt, FaultInjection};
use mtrl_env::sop_bench::{
    CanonicalAgent, DOMAINS, Domain, EVALUATION_ONLY, InputPolicy, Mode, Source,
};
use mtrl_eval::FinalOutputEvaluator;
use mtrl_reward::ExactMatch;
use mtrl_train::rl::GroupTriage;
use serde_json::{Map, Value};

/// Calls the domain's tools like the audit's canonical agent, then answers with the labelled
/// outputs on even samples and with one field wrong on odd ones, so that every group's rewards
/// differ. A harness, not a policy: it is handed the labels.
struct HalfRight {
    tools: CanonicalAgent,
    answers: HashMap<String, Map<String, Value>>,
}

#[async_trait]
impl Agent for HalfRight {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let action = self.tools.act(ctx).await?;
        if !action.message.tool_calls.is_empty() {
            return Ok(action);
        }
        let mut answer = self.answers[ctx.task.id()].clone();
        if ctx.episode.index % 2 == 1
            && let Some(first) = answer.values_mut().next()
        {
            *first = Value::String(format!("{} (not this)", first.as_str().unwrap_or("")));
        }
        let body = Value::Object(answer).to_string();
        Ok(Action::new(Message::assistant(format!(
            "Done.\n<final_output>{body}</final_output>"
        ))))
    }
}

const GROUP: usize = 4;
const STEPS: usize = 10;
const TASKS_PER_STEP: usize = 20;
/// The share of episodes that fail at their first attempt.
const EPISODE_FAILURE: f64 = 0.10;

struct Outcome {
    groups: usize,
    triage: Vec<GroupTriage>,
    batches: Vec<Vec<Vec<Trajectory>>>,
}

async fn run(domain: &Domain, tasks: &[Task], agent: &HalfRight, retries: usize) -> Outcome {
    // The oracle's episode steps once per tool and once to answer; a per-step panic rate of
    // 1 - 0.9^(1/steps) fails 10% of its episodes.
    let steps = (domain.tools().len() + 1) as f64;
    let rate = 1.0 - (1.0 - EPISODE_FAILURE).powf(1.0 / steps);
    let factory = domain
        .environment(Mode::Strict)
        .unwrap()
        .layer(FaultInjection::new(17).panics(rate));
    let evaluator = FinalOutputEvaluator::new();
    let reward = ExactMatch::new();
    let mut out = Outcome {
        groups: 0,
        triage: Vec::new(),
        batches: Vec::new(),
    };
    for step in 0..STEPS {
        let batch: Vec<Task> = tasks
            .iter()
            .cycle()
            .skip(step * TASKS_PER_STEP)
            .take(TASKS_PER_STEP)
            .cloned()
            .collect();
        let driver = RolloutDriver::new(Limits {
            max_turns: domain.tools().len() + 2,
            ..Limits::default()
        })
        .with_seed(1000 + step as u64)
        .with_retries(retries);
        let groups = driver.run_batch(agent, &factory, &batch, GROUP).await;
        let scored = score_groups(&batch, &groups, &reward, &evaluator)
            .await
            .unwrap();
        out.groups += groups.len();
        out.triage.push(GroupTriage::of(&groups, &scored));
        out.batches.push(groups);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_episodes_keep_99_percent_of_groups_and_dropped_ones_are_all_counted() {
    let source = Source::from_env();
    let name = DOMAINS
        .iter()
        .find(|d| !EVALUATION_ONLY.contains(d))
        .unwrap();
    let domain = match Domain::load(&source, name) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("notice: SOP-Bench is not reachable ({e}); skipping");
            return;
        }
    };
    let tasks: Vec<Task> = domain
        .tasks(InputPolicy::Mtrl)
        .unwrap()
        .into_iter()
        .take(50)
        .collect();
    let answers = tasks
        .iter()
        .map(|t| {
            let truth = t.ground_truth().as_object().unwrap().clone();
            (t.id().to_string(), truth)
        })
        .collect();
    let agent = HalfRight {
        tools: CanonicalAgent::new(&domain),
        answers,
    };
    let clean_turns = domain.tools().len() + 1;

    // Dropping alone: every group with a failed episode is lost, and counted.
    let plain = run(&domain, &tasks, &agent, 0).await;
    let (mut failed, mut with_failure, mut dropped, mut trained) = (0, 0, 0, 0);
    for (triage, groups) in plain.triage.iter().zip(&plain.batches) {
        let failing = groups
            .iter()
            .filter(|g| g.iter().any(|t| t.stop.is_failure()))
            .count();
        failed += groups
            .iter()
            .flatten()
            .filter(|t| t.stop.is_failure())
            .count();
        assert_eq!(triage.dropped, failing, "every lost group is counted");
        with_failure += failing;
        dropped += triage.dropped;
        trained += triage.trainable.len();
        assert!(
            groups
                .iter()
                .flatten()
                .all(|t| t.failed_attempts.is_empty())
        );
    }
    let episodes = plain.groups * GROUP;
    let share = failed as f64 / episodes as f64;
    eprintln!(
        "{name}, no retries: {failed}/{episodes} episodes failed ({:.1}%), {dropped}/{} groups \
         dropped, {trained} trained",
        100.0 * share,
        plain.groups
    );
    assert!(
        (0.06..0.14).contains(&share),
        "the layer fails ~10%: {share}"
    );
    assert_eq!(dropped, with_failure);
    assert!(
        dropped > plain.groups / 5,
        "a real share is lost: {dropped}"
    );
    assert_eq!(trained + dropped, plain.groups, "the rest all vary");

    // Retried twice: at least 99% of groups train, and none of them holds a failure.
    let retried = run(&domain, &tasks, &agent, 2).await;
    let (mut trained, mut dropped, mut attempts) = (0usize, 0usize, 0usize);
    for (triage, groups) in retried.triage.iter().zip(&retried.batches) {
        trained += triage.trainable.len();
        dropped += triage.dropped;
        attempts += groups
            .iter()
            .flatten()
            .map(|t| t.failed_attempts.len())
            .sum::<usize>();
        for &g in &triage.trainable {
            for t in &groups[g] {
                assert!(!t.stop.is_failure() && t.error.is_none());
                // The trajectory is its last attempt's alone: none of a failed attempt's turns.
                assert_eq!(t.turns.len(), clean_turns, "{:?}", t.failed_attempts);
                assert!(t.failed_attempts.iter().all(|a| a.seed != t.episode.seed
                    && a.stop.is_failure()
                    && a.error.as_ref().is_some_and(|e| e.panicked)));
            }
        }
    }
    let kept = trained as f64 / retried.groups as f64;
    eprintln!(
        "{name}, 2 retries: {attempts} failed attempts retried, {trained}/{} groups trained \
         ({:.1}%), {dropped} dropped",
        retried.groups,
        100.0 * kept
    );
    assert!(
        attempts >= failed / 2,
        "the failures were retried: {attempts}"
    );
    assert!(kept >= 0.99, "{kept}");
    assert_eq!(trained + dropped, retried.groups);
}
