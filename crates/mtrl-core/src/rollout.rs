//! The rollout driver: runs agent ⇄ environment episodes under limits, one, a group or a batch.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::agent::{Agent, Budget, TurnContext};
use crate::environment::{Environment, EnvironmentFactory};
use crate::error::Error;
use crate::message::Role;
use crate::task::Task;
use crate::trajectory::{
    Episode, EpisodeError, FailedAttempt, Finish, Phase, StopReason, Trajectory, Turn,
};

/// The limits every episode runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most assistant turns; the episode stops with
    /// [`StopReason::MaxTurns`] when they are used up.
    pub max_turns: usize,
    /// The most tokens one turn may use.
    pub max_tokens_per_turn: Option<usize>,
    /// The most tokens all the turns of an episode may use together; the episode stops with
    /// [`StopReason::TokenBudgetExhausted`] when they are used up.
    pub max_tokens_per_trajectory: Option<usize>,
    /// What a turn whose generation was cut at its token limit (the agent's own `max_tokens`, or
    /// `max_tokens_per_turn`) does to the episode. By default it ends the episode with
    /// [`StopReason::TurnTokenLimit`].
    pub turn_length: TurnLength,
    /// The wall-clock limit of an episode (create, reset, turns); close has its own.
    pub timeout: Option<Duration>,
    /// The wall-clock limit of closing the environment, which happens even after a timeout.
    pub close_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_turns: 16,
            max_tokens_per_turn: None,
            max_tokens_per_trajectory: None,
            turn_length: TurnLength::EndEpisode,
            timeout: None,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// What a turn cut at its token limit ([`Finish::Length`]) does, when the episode's own token
/// budget is not what cut it (that always ends the episode, as
/// [`StopReason::TokenBudgetExhausted`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnLength {
    /// The episode ends with [`StopReason::TurnTokenLimit`], and the cut-off action is not sent
    /// to the environment: half a tool call is not acted on. The usual choice for RL, where the
    /// truncated episode is then scored as such.
    #[default]
    EndEpisode,
    /// Only the turn ends: the cut-off action goes to the environment like any other (a tool
    /// call it cannot parse gets the environment's error, text without a call is an answer), and
    /// the episode goes on by its rules. The turn keeps [`Finish::Length`], so that masks and
    /// metrics still see the cut.
    EndTurn,
}

/// Cancels the episodes of a driver from outside. Clones share one signal.
///
/// Episodes in flight stop at once with [`StopReason::Aborted`] (their environments are still
/// closed); episodes not yet started come back aborted without being created.
#[derive(Debug, Clone)]
pub struct AbortSignal(Arc<watch::Sender<bool>>);

impl Default for AbortSignal {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl AbortSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal. Idempotent.
    pub fn abort(&self) {
        self.0.send_replace(true);
    }

    /// Whether the signal has fired.
    pub fn is_aborted(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal has fired.
    pub async fn aborted(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

/// Runs episodes of agent ⇄ environment under [`Limits`].
///
/// Nothing an agent or environment does can make the driver panic or lose an episode: errors,
/// panics and timeouts end only the episode they happen in, with the matching [`StopReason`] and
/// the error recorded, and every episode comes back. Groups and batches run with bounded
/// concurrency and return their trajectories in a fixed order (task by task, sample by sample),
/// whatever order they finish in. Episode seeds derive from the driver's seed, the task id and
/// the sample index, so a rerun sees the same seeds.
#[derive(Debug, Clone)]
pub struct RolloutDriver {
    limits: Limits,
    concurrency: usize,
    seed: u64,
    retries: usize,
    abort: AbortSignal,
}

impl Default for RolloutDriver {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

enum Interrupt {
    Timeout,
    Aborted,
    Panic(String),
}

struct Ended {
    reason: StopReason,
    error: Option<EpisodeError>,
}

impl Ended {
    fn plain(reason: StopReason) -> Self {
        Self {
            reason,
            error: None,
        }
    }
}

impl RolloutDriver {
    /// A driver with these limits, concurrency 8 and seed 0.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            concurrency: 8,
            seed: 0,
            retries: 0,
            abort: AbortSignal::new(),
        }
    }

    /// Sets how many episodes of a group or batch run at once (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets the seed episode seeds derive from.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Retries a failed episode of a group or batch (one that stopped with an error, a panic or
    /// a timeout: [`StopReason::is_failure`], an abort excepted) up to `retries` more times, each
    /// in a fresh environment with a new episode seed derived from the first. The trajectory
    /// that comes back is the last attempt's, with the failed ones listed in its
    /// [`failed_attempts`](Trajectory::failed_attempts). 0 (the default): no retries.
    ///
    /// Dropping every group with a failure biases training towards the tasks that never fail;
    /// retrying keeps them in.
    #[must_use]
    pub fn with_retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// Uses an existing abort signal.
    #[must_use]
    pub fn with_abort_signal(mut self, abort: AbortSignal) -> Self {
        self.abort = abort;
        self
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The abort signal of this driver.
    pub fn abort_signal(&self) -> &AbortSignal {
        &self.abort
    }

    /// The episode for sample `index` of `task`, with its derived seed.
    pub fn episode(&self, task: &Task, index: usize) -> Episode {
        Episode {
            index,
            seed: derive_seed(self.seed, task.id(), index),
        }
    }

    /// Runs one episode on an environment the caller made, then closes it.
    pub async fn run_episode<A, E>(
        &self,
        agent: &A,
        env: &mut E,
        task: &Task,
        episode: Episode,
    ) -> Trajectory
    where
        A: Agent + ?Sized,
        E: Environment + ?Sized,
    {
        let start = Instant::now();
        let deadline = self.limits.timeout.map(|t| start + t);
        let mut trajectory = Trajectory::new(task.id(), episode);
        let ended = match self
            .drive(agent, env, task, &mut trajectory, deadline)
            .await
        {
            Ok(never) => match never {},
            Err(ended) => ended,
        };
        let reset = !ended
            .error
            .as_ref()
            .is_some_and(|e| e.phase == Phase::Reset);
        trajectory.stop = ended.reason;
        trajectory.error = ended.error;

        let close_start = Instant::now();
        if reset {
            let reported = guarded(
                Some(close_start + self.limits.close_timeout),
                None,
                env.outcome(),
            )
            .await;
            match settle(Phase::Outcome, reported, &self.limits) {
                Ok(outcome) => trajectory.outcome = outcome,
                Err(ended) => trajectory.close_error = ended.error,
            }
        }
        let closed = guarded(
            Some(close_start + self.limits.close_timeout),
            None,
            env.close(),
        )
        .await;
        trajectory.timing.env_us += micros(close_start);
        if let Err(ended) = settle(Phase::Close, closed, &self.limits) {
            trajectory.close_error = trajectory.close_error.take().or(ended.error);
        }
        trajectory.timing.total_us = micros(start);
        trajectory
    }

    /// Runs the turns; always ends with `Err(Ended)`, so `?` can stop it anywhere.
    async fn drive<A, E>(
        &self,
        agent: &A,
        env: &mut E,
        task: &Task,
        trajectory: &mut Trajectory,
        deadline: Option<Instant>,
    ) -> Result<std::convert::Infallible, Ended>
    where
        A: Agent + ?Sized,
        E: Environment + ?Sized,
    {
        let abort = Some(&self.abort);
        let episode = trajectory.episode;
        let t = Instant::now();
        let reset = guarded(deadline, abort, env.reset(task, &episode)).await;
        trajectory.timing.env_us += micros(t);
        let reset = settle(Phase::Reset, reset, &self.limits)?;
        trajectory.prompt = reset.messages;
        trajectory.tools = reset.tools;
        trajectory.metadata.extend(reset.metadata);
        let mut messages = trajectory.prompt.clone();
        let mut used = 0usize;

        loop {
            let turns = trajectory.turns.len();
            if turns >= self.limits.max_turns {
                return Err(Ended::plain(StopReason::MaxTurns));
            }
            let remaining = self
                .limits
                .max_tokens_per_trajectory
                .map(|m| m.saturating_sub(used));
            if remaining == Some(0) {
                return Err(Ended::plain(StopReason::TokenBudgetExhausted));
            }
            let turn_tokens = match (self.limits.max_tokens_per_turn, remaining) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ctx = TurnContext {
                task: task.view(),
                tools: &trajectory.tools,
                messages: &messages,
                turns: &trajectory.turns,
                budget: Budget {
                    turn_tokens,
                    trajectory_tokens: remaining,
                    turns_left: self.limits.max_turns - turns,
                },
                episode,
            };
            let t = Instant::now();
            let acted = guarded(deadline, abort, agent.act(&ctx)).await;
            let agent_us = micros(t);
            trajectory.timing.agent_us += agent_us;
            let action = settle(Phase::Act, acted, &self.limits)?;
            if action.message.role != Role::Assistant {
                return Err(Ended {
                    reason: StopReason::AgentError,
                    error: Some(EpisodeError {
                        phase: Phase::Act,
                        message: format!(
                            "the agent returned a {} message; an action must be an assistant message",
                            action.message.role
                        ),
                        panicked: false,
                    }),
                });
            }
            used = used.saturating_add(action.tokens_used.unwrap_or(0));
            let mut turn = Turn {
                action: action.message,
                observations: Vec::new(),
                finish: action.finish,
                tokens_used: action.tokens_used,
                token_budget: turn_tokens,
                tokens: action.tokens,
                info: Default::default(),
                agent_us,
                env_us: 0,
            };
            // Whose limit cut the turn: the episode's budget, when what is left of it was the
            // binding one; the turn's otherwise.
            let episode_bound = remaining.is_some() && turn_tokens == remaining;
            let cut_by = if episode_bound {
                StopReason::TokenBudgetExhausted
            } else {
                StopReason::TurnTokenLimit
            };
            if let (Some(u), Some(b)) = (turn.tokens_used, turn_tokens) {
                if u > b {
                    trajectory.turns.push(turn);
                    return Err(Ended {
                        reason: cut_by,
                        error: Some(EpisodeError {
                            phase: Phase::Act,
                            message: format!(
                                "the agent reported {u} tokens for a turn budget of {b}"
                            ),
                            panicked: false,
                        }),
                    });
                }
            }
            match turn.finish {
                Finish::Stop => {}
                Finish::Length
                    if episode_bound || self.limits.turn_length == TurnLength::EndEpisode =>
                {
                    trajectory.turns.push(turn);
                    return Err(Ended::plain(cut_by));
                }
                Finish::Length => {}
                Finish::ContextOverflow => {
                    trajectory.turns.push(turn);
                    return Err(Ended::plain(StopReason::ContextOverflow));
                }
            }

            let t = Instant::now();
            let stepped = guarded(deadline, abort, env.step(&turn.action)).await;
            turn.env_us = micros(t);
            trajectory.timing.env_us += turn.env_us;
            let step = match settle(Phase::Step, stepped, &self.limits) {
                Ok(step) => step,
                Err(ended) => {
                    trajectory.turns.push(turn);
                    return Err(ended);
                }
            };
            messages.push(turn.action.clone());
            messages.extend(step.messages.iter().cloned());
            turn.observations = step.messages;
            turn.info = step.info;
            trajectory.turns.push(turn);
            if step.done {
                return Err(Ended::plain(StopReason::Answered));
            }
        }
    }

    /// Creates an environment for one episode with `factory`, runs the episode and closes it.
    /// A factory that fails or panics gives an
    /// [`EnvironmentError`](StopReason::EnvironmentError) trajectory with no turns.
    pub async fn run_with<A, F>(
        &self,
        agent: &A,
        factory: &F,
        task: &Task,
        episode: Episode,
    ) -> Trajectory
    where
        A: Agent + ?Sized,
        F: EnvironmentFactory + ?Sized,
    {
        let start = Instant::now();
        if self.abort.is_aborted() {
            let mut trajectory = Trajectory::new(task.id(), episode);
            trajectory.stop = StopReason::Aborted;
            trajectory.error = Some(EpisodeError {
                phase: Phase::Create,
                message: "aborted before the episode started".into(),
                panicked: false,
            });
            return trajectory;
        }
        let created = std::panic::catch_unwind(AssertUnwindSafe(|| factory.create(task, &episode)))
            .map_err(|p| Interrupt::Panic(panic_message(&*p)));
        let create_us = micros(start);
        let mut trajectory = match settle(Phase::Create, created, &self.limits) {
            Ok(mut env) => self.run_episode(agent, &mut env, task, episode).await,
            Err(ended) => {
                let mut trajectory = Trajectory::new(task.id(), episode);
                trajectory.stop = ended.reason;
                trajectory.error = ended.error;
                trajectory
            }
        };
        trajectory.timing.env_us += create_us;
        trajectory.timing.total_us = micros(start);
        trajectory
    }

    /// [`RolloutDriver::run_with`], retried as [`RolloutDriver::with_retries`] says.
    async fn run_retrying<A, F>(
        &self,
        agent: &A,
        factory: &F,
        task: &Task,
        index: usize,
    ) -> Trajectory
    where
        A: Agent + ?Sized,
        F: EnvironmentFactory + ?Sized,
    {
        let first = self.episode(task, index);
        let mut failed = Vec::new();
        let mut attempt = 0usize;
        loop {
            let episode = if attempt == 0 {
                first
            } else {
                Episode {
                    index,
                    seed: derive_seed(first.seed, "retry", attempt),
                }
            };
            let mut trajectory = self.run_with(agent, factory, task, episode).await;
            let retry = trajectory.stop.is_failure()
                && trajectory.stop != StopReason::Aborted
                && attempt < self.retries
                && !self.abort.is_aborted();
            if !retry {
                trajectory.failed_attempts = failed;
                return trajectory;
            }
            failed.push(FailedAttempt {
                seed: episode.seed,
                stop: trajectory.stop,
                error: trajectory.error.take(),
            });
            attempt += 1;
        }
    }

    /// Runs `n` episodes of one task concurrently; sample `i` comes back at index `i`.
    pub async fn run_group<A, F>(
        &self,
        agent: &A,
        factory: &F,
        task: &Task,
        n: usize,
    ) -> Vec<Trajectory>
    where
        A: Agent + ?Sized,
        F: EnvironmentFactory + ?Sized,
    {
        self.run_batch(agent, factory, std::slice::from_ref(task), n)
            .await
            .pop()
            .unwrap_or_default()
    }

    /// Runs a group of `n` episodes for each task, at most `concurrency` at a time. The result
    /// has one group per task, in the tasks' order, each in sample order.
    pub async fn run_batch<A, F>(
        &self,
        agent: &A,
        factory: &F,
        tasks: &[Task],
        n: usize,
    ) -> Vec<Vec<Trajectory>>
    where
        A: Agent + ?Sized,
        F: EnvironmentFactory + ?Sized,
    {
        let jobs = tasks.iter().flat_map(|task| (0..n).map(move |i| (task, i)));
        let mut flat: Vec<Trajectory> = stream::iter(jobs)
            .map(|(task, i)| self.run_retrying(agent, factory, task, i))
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut groups = Vec::with_capacity(tasks.len());
        for _ in tasks {
            let rest = flat.split_off(n.min(flat.len()));
            groups.push(std::mem::replace(&mut flat, rest));
        }
        groups
    }
}

/// Counts trajectories by stop reason, every reason present (zero where none stopped so).
pub fn stop_counts<'a>(
    trajectories: impl IntoIterator<Item = &'a Trajectory>,
) -> BTreeMap<StopReason, usize> {
    let mut counts: BTreeMap<StopReason, usize> = StopReason::ALL.iter().map(|r| (*r, 0)).collect();
    for t in trajectories {
        *counts.entry(t.stop).or_default() += 1;
    }
    counts
}

/// Polls `fut` until it finishes, panics, passes `deadline` or `abort` fires.
async fn guarded<T>(
    deadline: Option<Instant>,
    abort: Option<&AbortSignal>,
    fut: impl Future<Output = T>,
) -> Result<T, Interrupt> {
    let caught = AssertUnwindSafe(fut).catch_unwind();
    let timed = async {
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d, caught)
                .await
                .map_err(|_| Interrupt::Timeout)?,
            None => caught.await,
        };
        result.map_err(|p| Interrupt::Panic(panic_message(&*p)))
    };
    match abort {
        Some(signal) => {
            tokio::select! {
                biased;
                () = signal.aborted() => Err(Interrupt::Aborted),
                r = timed => r,
            }
        }
        None => timed.await,
    }
}

/// Turns the outcome of a guarded phase into its value, or the stop it causes.
fn settle<T>(
    phase: Phase,
    outcome: Result<Result<T, Error>, Interrupt>,
    limits: &Limits,
) -> Result<T, Ended> {
    let failure = if phase == Phase::Act {
        StopReason::AgentError
    } else {
        StopReason::EnvironmentError
    };
    let (reason, message, panicked) = match outcome {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(err)) => (failure, error_chain(&err), false),
        Err(Interrupt::Panic(msg)) => (failure, format!("panicked: {msg}"), true),
        Err(Interrupt::Aborted) => (StopReason::Aborted, "aborted".to_string(), false),
        Err(Interrupt::Timeout) => {
            let limit = if phase == Phase::Close {
                limits.close_timeout
            } else {
                limits.timeout.unwrap_or_default()
            };
            (
                StopReason::Timeout,
                format!("timed out (limit {} ms)", limit.as_millis()),
                false,
            )
        }
    };
    Err(Ended {
        reason,
        error: Some(EpisodeError {
            phase,
            message,
            panicked,
        }),
    })
}

fn error_chain(err: &Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The seed of sample `index` of task `task_id` under base seed `base`: stable across runs,
/// platforms and versions (FNV-1a of the id, mixed with SplitMix64).
pub fn derive_seed(base: u64, task_id: &str, index: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(base ^ splitmix64(h ^ splitmix64(index as u64)))
}

fn splitmix64(x: u64) -> u64 {
    SplitMix64::new(x).next_u64()
}

/// A SplitMix64 stream: a small, fast, seedable generator whose output is the same on every
/// platform and version, for orders and choices that must replay exactly (task shuffles,
/// generated data). Not for cryptography.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`0` when `n` is 0; the modulo bias is below 2⁻³² for `n < 2³²`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
