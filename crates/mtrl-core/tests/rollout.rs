//! The rollout driver: one test per stop reason, and the failures around them.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Faults, Move, Probe, ScriptedAgent, TestEnv, answer, call, task};
use mtrl_core::{
    Action, Finish, Limits, Message, Phase, Role, RolloutDriver, StopReason, TokenRecord,
    Trajectory, TurnLength,
};

fn driver(limits: Limits) -> RolloutDriver {
    RolloutDriver::new(limits)
}

async fn run(limits: Limits, faults: Faults, agent: &ScriptedAgent) -> (Trajectory, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let mut env = TestEnv::new(faults, probe.clone());
    let d = driver(limits);
    let t = task("t1");
    let episode = d.episode(&t, 0);
    let trajectory = d.run_episode(agent, &mut env, &t, episode).await;
    (trajectory, probe)
}

#[tokio::test]
async fn answered_when_the_environment_says_done() {
    let agent = ScriptedAgent::new(vec![call("a"), call("b"), answer("the answer")]);
    let (t, probe) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
    assert!(t.error.is_none());
    assert_eq!(t.turns.len(), 3);
    assert_eq!(t.turns[0].observations.len(), 1);
    assert_eq!(t.turns[0].observations[0].role, Role::Tool);
    assert!(t.turns[2].observations.is_empty());
    assert_eq!(t.final_action().unwrap().content, "the answer");
    assert_eq!(t.tokens_used(), 25);
    assert_eq!(t.tool_calls(), 2);
    assert_eq!(t.prompt.len(), 2);
    assert_eq!(t.tools.len(), 1);
    // The reset metadata is kept.
    assert_eq!(t.metadata["seed"], serde_json::json!(t.episode.seed));
    // prompt + (action + observation) * 2 + final action
    assert_eq!(t.messages().len(), 2 + 4 + 1);
    assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_turns_when_the_agent_never_answers() {
    let agent = ScriptedAgent::new(vec![call("a"); 10]);
    let limits = Limits {
        max_turns: 3,
        ..Limits::default()
    };
    let (t, probe) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::MaxTurns);
    assert_eq!(t.turns.len(), 3);
    assert!(t.turns.iter().all(|turn| !turn.observations.is_empty()));
    assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_on_the_last_allowed_turn_is_answered() {
    let agent = ScriptedAgent::new(vec![call("a"), answer("x")]);
    let limits = Limits {
        max_turns: 2,
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
}

#[tokio::test]
async fn token_budget_exhausted_when_the_trajectory_budget_is_spent() {
    // Each call uses 10 tokens and 20 are allowed: after two turns nothing is left.
    let agent = ScriptedAgent::new(vec![call("a"), call("b"), call("c")]);
    let limits = Limits {
        max_tokens_per_trajectory: Some(20),
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::TokenBudgetExhausted);
    assert_eq!(t.turns.len(), 2, "stops exactly when nothing is left");
    assert_eq!(t.turns[1].token_budget, Some(10));
    assert!(t.error.is_none());
}

#[tokio::test]
async fn a_turn_cut_at_its_own_limit_ends_the_episode_as_turn_token_limit() {
    let cut = Action::new(Message::assistant("<tool_call>{\"na"))
        .with_tokens_used(10)
        .with_finish(Finish::Length);
    let agent = ScriptedAgent::new(vec![call("a"), Move::Act(cut)]);
    let limits = Limits {
        max_tokens_per_turn: Some(10),
        max_tokens_per_trajectory: Some(100),
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::TurnTokenLimit);
    assert_eq!(t.stop.as_str(), "turn_token_limit");
    assert!(t.stop.is_truncation() && !t.stop.is_failure());
    assert_eq!(t.turns.len(), 2);
    let last = &t.turns[1];
    assert_eq!(last.finish, Finish::Length);
    assert!(last.observations.is_empty(), "a cut turn is not stepped");
    assert_eq!(last.token_budget, Some(10), "the per-turn cap was binding");
}

/// The agent's own cap (a sampler's `max_tokens`) with no limits set at all: the stop names the
/// turn's limit, not a trajectory budget that does not exist.
#[tokio::test]
async fn a_cut_with_no_limits_set_is_the_turn_limit_not_a_budget() {
    let cut = Action::new(Message::assistant("half an ans"))
        .with_tokens_used(512)
        .with_finish(Finish::Length);
    let agent = ScriptedAgent::new(vec![Move::Act(cut)]);
    let (t, _) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::TurnTokenLimit);
    assert!(t.error.is_none());
}

/// With `TurnLength::EndTurn`, a cut turn is stepped like any other and the episode goes on.
#[tokio::test]
async fn end_turn_sends_the_cut_action_to_the_environment_and_goes_on() {
    let cut = Action::new(Message::assistant("<tool_call>{\"na"))
        .with_tokens_used(10)
        .with_finish(Finish::Length);
    let agent = ScriptedAgent::new(vec![Move::Act(cut.clone()), call("a"), answer("done")]);
    let limits = Limits {
        max_tokens_per_turn: Some(10),
        turn_length: TurnLength::EndTurn,
        ..Limits::default()
    };
    let (t, _) = run(limits.clone(), Faults::default(), &agent).await;
    // The test environment ends the episode on a message without tool calls: the cut text is
    // its answer. What matters is that the environment saw it.
    assert_eq!(t.stop, StopReason::Answered);
    assert_eq!(t.turns.len(), 1);
    assert_eq!(t.turns[0].finish, Finish::Length, "the turn keeps its cut");
    assert_eq!(t.final_action().unwrap().content, "<tool_call>{\"na");

    // A cut tool call (complete enough to parse) is answered, and the episode continues.
    let cut_call = match call("a") {
        Move::Act(a) => Move::Act(a.with_finish(Finish::Length)),
        other => other,
    };
    let agent = ScriptedAgent::new(vec![cut_call, answer("done")]);
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
    assert_eq!(t.turns.len(), 2);
    assert_eq!(t.turns[0].finish, Finish::Length);
    assert!(
        !t.turns[0].observations.is_empty(),
        "the cut turn was stepped"
    );
}

/// When what is left of the episode's budget is what cut the turn, the episode ends as
/// `token_budget_exhausted`, whatever the turn policy.
#[tokio::test]
async fn a_cut_by_the_episode_budget_is_token_budget_exhausted_even_with_end_turn() {
    let cut = Action::new(Message::assistant("<tool_call>{\"na"))
        .with_tokens_used(5)
        .with_finish(Finish::Length);
    let agent = ScriptedAgent::new(vec![call("a"), Move::Act(cut)]);
    let limits = Limits {
        max_tokens_per_turn: Some(12),
        max_tokens_per_trajectory: Some(15),
        turn_length: TurnLength::EndTurn,
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::TokenBudgetExhausted);
    assert_eq!(
        t.turns[1].token_budget,
        Some(5),
        "the episode's rest was binding"
    );
    assert!(t.turns[1].observations.is_empty());
}

#[tokio::test]
async fn an_agent_that_overruns_its_budget_is_stopped_and_explained() {
    let greedy = Action::new(Message::assistant("way too long")).with_tokens_used(50);
    let agent = ScriptedAgent::new(vec![Move::Act(greedy)]);
    let limits = Limits {
        max_tokens_per_turn: Some(16),
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::TurnTokenLimit);
    assert_eq!(t.turns.len(), 1);
    let err = t.error.unwrap();
    assert_eq!(err.phase, Phase::Act);
    assert!(err.message.contains("50 tokens"), "{}", err.message);
}

#[tokio::test]
async fn budgets_given_to_the_agent_shrink_as_tokens_are_used() {
    let agent = ScriptedAgent::new(vec![call("a"), call("b"), answer("x")]);
    let limits = Limits {
        max_turns: 5,
        max_tokens_per_turn: Some(12),
        max_tokens_per_trajectory: Some(30),
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
    let budgets: Vec<_> = t.turns.iter().map(|turn| turn.token_budget).collect();
    assert_eq!(budgets, vec![Some(12), Some(12), Some(10)]);
}

#[tokio::test]
async fn context_overflow_is_reported_by_the_agent() {
    let overflow = Action::new(Message::assistant(""))
        .with_tokens_used(0)
        .with_finish(Finish::ContextOverflow);
    let agent = ScriptedAgent::new(vec![call("a"), Move::Act(overflow)]);
    let (t, probe) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::ContextOverflow);
    assert!(t.stop.is_truncation());
    assert_eq!(t.turns.len(), 2);
    assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn environment_error_in_step_keeps_the_turn_and_the_error() {
    let agent = ScriptedAgent::new(vec![call("a"), call("b"), answer("x")]);
    let faults = Faults {
        step_error_at: Some(1),
        ..Faults::default()
    };
    let (t, probe) = run(Limits::default(), faults, &agent).await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    assert_eq!(t.turns.len(), 2, "the action that failed is kept");
    assert!(t.turns[1].observations.is_empty());
    let err = t.error.unwrap();
    assert_eq!(err.phase, Phase::Step);
    assert!(!err.panicked);
    assert!(
        err.message.contains("tool backend down at turn 1"),
        "{}",
        err.message
    );
    assert_eq!(
        probe.closed.load(Ordering::SeqCst),
        1,
        "closed even on error"
    );
}

#[tokio::test]
async fn environment_error_in_reset() {
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let faults = Faults {
        reset_error: true,
        ..Faults::default()
    };
    let (t, probe) = run(Limits::default(), faults, &agent).await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    assert!(t.turns.is_empty());
    assert_eq!(t.error.unwrap().phase, Phase::Reset);
    assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panic_in_the_environment_is_caught() {
    let agent = ScriptedAgent::new(vec![call("a"), answer("x")]);
    let faults = Faults {
        step_panic_at: Some(0),
        ..Faults::default()
    };
    let (t, probe) = run(Limits::default(), faults, &agent).await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    let err = t.error.unwrap();
    assert!(err.panicked);
    assert_eq!(err.phase, Phase::Step);
    assert!(
        err.message.contains("tool crashed at turn 0"),
        "{}",
        err.message
    );
    assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panic_in_reset_is_caught() {
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let faults = Faults {
        reset_panic: true,
        ..Faults::default()
    };
    let (t, _) = run(Limits::default(), faults, &agent).await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    let err = t.error.unwrap();
    assert_eq!(err.phase, Phase::Reset);
    assert!(err.panicked);
}

#[tokio::test]
async fn agent_error_ends_the_episode() {
    let agent = ScriptedAgent::new(vec![call("a"), Move::Fail("model server 503".into())]);
    let (t, probe) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::AgentError);
    assert_eq!(t.turns.len(), 1);
    let err = t.error.unwrap();
    assert_eq!(err.phase, Phase::Act);
    assert!(err.message.contains("model server 503"), "{}", err.message);
    assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panic_in_the_agent_is_an_agent_error() {
    let agent = ScriptedAgent::new(vec![Move::Panic]);
    let (t, _) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::AgentError);
    let err = t.error.unwrap();
    assert!(err.panicked);
    assert!(err.message.contains("the policy exploded"));
}

#[tokio::test]
async fn an_action_that_is_not_an_assistant_message_is_an_agent_error() {
    let agent = ScriptedAgent::new(vec![Move::Act(Action::new(Message::user("hi")))]);
    let (t, _) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::AgentError);
    assert!(t.turns.is_empty());
    assert!(t.error.unwrap().message.contains("user message"));
}

#[tokio::test(start_paused = true)]
async fn timeout_while_the_environment_steps() {
    let agent = ScriptedAgent::new(vec![call("a"), answer("x")]);
    let faults = Faults {
        step_delay: Some(Duration::from_secs(60)),
        ..Faults::default()
    };
    let limits = Limits {
        timeout: Some(Duration::from_secs(5)),
        ..Limits::default()
    };
    let (t, probe) = run(limits, faults, &agent).await;
    assert_eq!(t.stop, StopReason::Timeout);
    let err = t.error.unwrap();
    assert_eq!(err.phase, Phase::Step);
    assert!(err.message.contains("5000 ms"), "{}", err.message);
    assert_eq!(t.turns.len(), 1, "the turn in flight is kept");
    assert_eq!(
        probe.closed.load(Ordering::SeqCst),
        1,
        "closed after a timeout"
    );
    assert!(t.timing.total_us >= 5_000_000 && t.timing.total_us < 6_000_000);
}

#[tokio::test(start_paused = true)]
async fn timeout_while_the_agent_thinks() {
    let slow = Move::Sleep(
        Duration::from_secs(30),
        Action::new(Message::assistant("late")),
    );
    let agent = ScriptedAgent::new(vec![call("a"), slow]);
    let limits = Limits {
        timeout: Some(Duration::from_secs(10)),
        ..Limits::default()
    };
    let (t, _) = run(limits, Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::Timeout);
    assert_eq!(t.error.unwrap().phase, Phase::Act);
    assert_eq!(t.turns.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn aborted_from_outside_mid_episode() {
    let agent = ScriptedAgent::new(vec![call("a"), answer("x")]);
    let faults = Faults {
        step_delay: Some(Duration::from_secs(3600)),
        ..Faults::default()
    };
    let probe = Arc::new(Probe::default());
    let mut env = TestEnv::new(faults, probe.clone());
    let d = driver(Limits::default());
    let signal = d.abort_signal().clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        signal.abort();
    });
    let t1 = task("t1");
    let t = d
        .run_episode(&agent, &mut env, &t1, d.episode(&t1, 0))
        .await;
    assert_eq!(t.stop, StopReason::Aborted);
    assert_eq!(t.error.unwrap().phase, Phase::Step);
    assert_eq!(
        probe.closed.load(Ordering::SeqCst),
        1,
        "closed after an abort"
    );
}

#[tokio::test]
async fn an_aborted_driver_starts_no_episode() {
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let factory = move |_: &mtrl_core::Task, _: &mtrl_core::Episode| {
        Ok(TestEnv::new(Faults::default(), p.clone()))
    };
    let d = driver(Limits::default());
    d.abort_signal().abort();
    let group = d.run_group(&agent, &factory, &task("t1"), 3).await;
    assert_eq!(group.len(), 3);
    assert!(group.iter().all(|t| t.stop == StopReason::Aborted));
    assert_eq!(probe.created.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_close_error_is_recorded_without_hiding_the_stop_reason() {
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let faults = Faults {
        close_error: true,
        ..Faults::default()
    };
    let (t, _) = run(Limits::default(), faults, &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
    assert!(t.error.is_none());
    let close = t.close_error.unwrap();
    assert_eq!(close.phase, Phase::Close);
    assert!(close.message.contains("could not delete the sandbox"));
}

#[tokio::test]
async fn a_panic_in_close_is_caught() {
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let faults = Faults {
        close_panic: true,
        ..Faults::default()
    };
    let (t, _) = run(Limits::default(), faults, &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
    assert!(t.close_error.unwrap().panicked);
}

#[tokio::test]
async fn factory_errors_and_panics_are_environment_errors() {
    let agent = ScriptedAgent::new(vec![answer("x")]);
    let d = driver(Limits::default());
    let failing = |_: &mtrl_core::Task, _: &mtrl_core::Episode| -> mtrl_core::Result<TestEnv> {
        Err(mtrl_core::Error::environment("no sandbox quota"))
    };
    let t = d
        .run_with(&agent, &failing, &task("t1"), d.episode(&task("t1"), 0))
        .await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    let err = t.error.unwrap();
    assert_eq!(err.phase, Phase::Create);
    assert!(err.message.contains("no sandbox quota"));

    let panicking = |_: &mtrl_core::Task, _: &mtrl_core::Episode| -> mtrl_core::Result<TestEnv> {
        panic!("factory exploded")
    };
    let t = d
        .run_with(&agent, &panicking, &task("t1"), d.episode(&task("t1"), 0))
        .await;
    assert_eq!(t.stop, StopReason::EnvironmentError);
    assert!(t.error.unwrap().panicked);
}

#[tokio::test]
async fn token_records_are_carried_into_the_turns() {
    let record = TokenRecord::new(vec![1, 2, 3], vec![7, 8], vec![-0.5, -0.25])
        .unwrap()
        .starting_segment();
    let act = Action::new(Message::assistant("hi")).with_token_record(record.clone());
    let agent = ScriptedAgent::new(vec![Move::Act(act)]);
    let (t, _) = run(Limits::default(), Faults::default(), &agent).await;
    assert_eq!(t.stop, StopReason::Answered);
    assert_eq!(t.turns[0].tokens.as_ref(), Some(&record));
    assert_eq!(t.turns[0].tokens_used, Some(2));
}

#[test]
fn every_stop_reason_has_a_distinct_name_and_class() {
    let names: std::collections::BTreeSet<_> = StopReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), StopReason::ALL.len());
    for r in StopReason::ALL {
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{}\"", r.as_str()));
        assert_eq!(serde_json::from_str::<StopReason>(&json).unwrap(), r);
        assert!(!(r.is_failure() && r.is_truncation()));
    }
    assert!(!StopReason::Answered.is_failure());
    assert!(StopReason::Timeout.is_failure());
}

#[tokio::test]
async fn a_closure_is_an_agent() {
    use mtrl_core::{Action, agent_fn};
    // Looks two keys up, then answers with the last tool message; fails on a task named "x".
    let agent = agent_fn(|ctx| {
        if ctx.task.id() == "x" {
            return Err(mtrl_core::Error::agent(std::io::Error::other(
                "no script for x",
            )));
        }
        Ok(match ctx.turn_index() {
            i @ (0 | 1) => Message::assistant_with_calls(
                "",
                vec![mtrl_core::ToolCall::new(
                    format!("c{i}"),
                    "lookup",
                    &serde_json::json!({"key": if i == 0 { "a" } else { "b" }}),
                )],
            ),
            _ => Message::assistant(ctx.messages.last().unwrap().content.clone()),
        })
    });
    let probe = Arc::new(Probe::default());
    let d = driver(Limits::default());
    let t = task("t1");
    let mut env = TestEnv::new(Faults::default(), probe.clone());
    let trajectory = d.run_episode(&agent, &mut env, &t, d.episode(&t, 0)).await;
    assert_eq!(trajectory.stop, StopReason::Answered);
    assert_eq!(trajectory.tool_calls(), 2);
    let x = task("x");
    let mut env = TestEnv::new(Faults::default(), probe);
    let failed = d.run_episode(&agent, &mut env, &x, d.episode(&x, 0)).await;
    assert_eq!(failed.stop, StopReason::AgentError);
    assert!(failed.error.unwrap().message.contains("no script for x"));
    // A closure may return a whole action too.
    let counted = agent_fn(|_| Ok(Action::new(Message::assistant("done")).with_tokens_used(3)));
    let mut env = TestEnv::new(Faults::default(), Arc::new(Probe::default()));
    let t = d
        .run_episode(&counted, &mut env, &task("t1"), d.episode(&t, 1))
        .await;
    assert_eq!(t.tokens_used(), 3);
}

/// Counts its steps; reports the count as the episode's outcome.
struct Counting {
    steps: usize,
    reset_fails: bool,
    outcome_fails: bool,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

#[mtrl_core::async_trait]
impl mtrl_core::Environment for Counting {
    async fn reset(
        &mut self,
        _: &mtrl_core::Task,
        _: &mtrl_core::Episode,
    ) -> mtrl_core::Result<mtrl_core::Reset> {
        if self.reset_fails {
            return Err(mtrl_core::Error::environment("no sandbox"));
        }
        Ok(mtrl_core::Reset {
            messages: vec![Message::user("count")],
            ..Default::default()
        })
    }
    async fn step(&mut self, action: &Message) -> mtrl_core::Result<mtrl_core::Step> {
        self.steps += 1;
        Ok(if action.tool_calls.is_empty() {
            mtrl_core::Step::done(vec![])
        } else {
            mtrl_core::Step::next(vec![Message::tool(&action.tool_calls[0].id, "tick", "ok")])
        })
    }
    async fn outcome(&mut self) -> mtrl_core::Result<Option<serde_json::Value>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.outcome_fails {
            return Err(mtrl_core::Error::environment("the ledger is unreadable"));
        }
        Ok(Some(serde_json::json!({"steps": self.steps})))
    }
}

#[tokio::test]
async fn the_outcome_is_asked_once_the_episode_ends_and_kept_for_the_trusted_side() {
    let agent = mtrl_core::agent_fn(|ctx| {
        Ok(if ctx.turn_index() < 2 {
            Message::assistant_with_calls(
                "",
                vec![mtrl_core::ToolCall::new(
                    "c",
                    "tick",
                    &serde_json::json!({}),
                )],
            )
        } else {
            Message::assistant("done")
        })
    });
    let d = driver(Limits::default());
    let t = task("t1");
    let run = |reset_fails, outcome_fails| {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let env = Counting {
            steps: 0,
            reset_fails,
            outcome_fails,
            asked: asked.clone(),
        };
        (env, asked)
    };
    let (mut env, asked) = run(false, false);
    let trajectory = d.run_episode(&agent, &mut env, &t, d.episode(&t, 0)).await;
    assert_eq!(trajectory.stop, StopReason::Answered);
    assert_eq!(trajectory.outcome, Some(serde_json::json!({"steps": 3})));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(
        trajectory
            .messages()
            .iter()
            .all(|m| !m.content.contains("steps"))
    );
    // It survives the trajectory's JSON.
    let back: Trajectory =
        serde_json::from_str(&serde_json::to_string(&trajectory).unwrap()).unwrap();
    assert_eq!(back.outcome, trajectory.outcome);
    // An outcome that fails is a close error, never the stop reason.
    let (mut env, _) = run(false, true);
    let trajectory = d.run_episode(&agent, &mut env, &t, d.episode(&t, 0)).await;
    assert_eq!(trajectory.stop, StopReason::Answered);
    assert_eq!(trajectory.outcome, None);
    let e = trajectory.close_error.unwrap();
    assert_eq!(e.phase, mtrl_core::Phase::Outcome);
    assert!(e.message.contains("ledger"), "{e:?}");
    // No episode, no outcome.
    let (mut env, asked) = run(true, false);
    let trajectory = d.run_episode(&agent, &mut env, &t, d.episode(&t, 0)).await;
    assert_eq!(trajectory.stop, StopReason::EnvironmentError);
    assert_eq!(
        (trajectory.outcome, asked.load(Ordering::SeqCst)),
        (None, 0)
    );
}
