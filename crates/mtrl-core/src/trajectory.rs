//! [`Trajectory`]: what happened in one episode, turn by turn, down to the sampled token ids.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::tool::ToolSpec;

/// Why an episode ended. Every episode ends with exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The environment declared the episode done (the agent gave its final answer).
    Answered,
    /// The turn limit was reached before the episode was done.
    MaxTurns,
    /// The episode's token budget ([`Limits::max_tokens_per_trajectory`](crate::Limits)) ran out.
    TokenBudgetExhausted,
    /// A turn's generation was cut at its own token limit (the agent's `max_tokens`, or
    /// [`Limits::max_tokens_per_turn`](crate::Limits)), and the limits say that ends the episode
    /// ([`TurnLength::EndEpisode`](crate::TurnLength)).
    TurnTokenLimit,
    /// The conversation no longer fits the agent's context window.
    ContextOverflow,
    /// The environment failed (an error or a panic while creating, resetting or stepping it).
    EnvironmentError,
    /// The agent failed (an error, a panic, or an invalid action).
    AgentError,
    /// The episode's wall-clock limit passed.
    Timeout,
    /// The episode was cancelled from outside.
    Aborted,
}

impl StopReason {
    /// Every variant, in declaration order.
    pub const ALL: [StopReason; 9] = [
        StopReason::Answered,
        StopReason::MaxTurns,
        StopReason::TokenBudgetExhausted,
        StopReason::TurnTokenLimit,
        StopReason::ContextOverflow,
        StopReason::EnvironmentError,
        StopReason::AgentError,
        StopReason::Timeout,
        StopReason::Aborted,
    ];

    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Answered => "answered",
            StopReason::MaxTurns => "max_turns",
            StopReason::TokenBudgetExhausted => "token_budget_exhausted",
            StopReason::TurnTokenLimit => "turn_token_limit",
            StopReason::ContextOverflow => "context_overflow",
            StopReason::EnvironmentError => "environment_error",
            StopReason::AgentError => "agent_error",
            StopReason::Timeout => "timeout",
            StopReason::Aborted => "aborted",
        }
    }

    /// Whether the episode was cut by a length limit (tokens or context), so its last turn is
    /// incomplete.
    pub fn is_truncation(self) -> bool {
        matches!(
            self,
            StopReason::TokenBudgetExhausted
                | StopReason::TurnTokenLimit
                | StopReason::ContextOverflow
        )
    }

    /// Whether the episode failed (an error, a timeout or an abort) rather than ending by the
    /// rules of the task.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            StopReason::EnvironmentError
                | StopReason::AgentError
                | StopReason::Timeout
                | StopReason::Aborted
        )
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the agent's generation of one turn ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The turn ended naturally (a stop token or the end of the message).
    #[default]
    Stop,
    /// The turn's token budget ran out mid-message.
    Length,
    /// The context window ran out mid-message, or before generation could start.
    ContextOverflow,
}

/// Which episode of which group: the sample index and the seed everything random derives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Episode {
    /// The sample's index within its group (0 for a single episode).
    pub index: usize,
    /// The episode seed, for the environment's and the agent's random sources.
    pub seed: u64,
}

/// A phase of an episode, to say where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Creating the environment from its factory.
    Create,
    /// Resetting the environment with the task.
    Reset,
    /// The agent choosing its action.
    Act,
    /// The environment answering the action.
    Step,
    /// Asking the environment for the episode's outcome.
    Outcome,
    /// Closing the environment.
    Close,
}

/// What ended an episode outside its normal course (or what its close produced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeError {
    /// Where it happened.
    pub phase: Phase,
    /// The error's message, with its source chain.
    pub message: String,
    /// Whether it was a caught panic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panicked: bool,
}

/// An attempt at an episode that failed and was retried in a fresh environment
/// ([`RolloutDriver::with_retries`](crate::RolloutDriver::with_retries)): kept on the trajectory
/// that replaced it, so that nothing about the failure is lost, and never trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    /// The episode seed the attempt ran with.
    pub seed: u64,
    /// How it stopped (a failure: [`StopReason::is_failure`]).
    pub stop: StopReason,
    /// What stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EpisodeError>,
}

/// The token-level record of one assistant turn, from a trainable agent.
///
/// The ids of a turn are its `prompt_ids` (what the chat template adds before generation: the
/// environment's messages since the last turn and the assistant header) followed by its
/// `sampled_ids` (what the policy generated). Concatenating the records of a segment gives the
/// exact training sequence, so the trainer never re-tokenizes text.
///
/// When a chat template rewrites earlier turns, the sequence cannot simply be extended: the turn
/// then [starts a new segment](TokenRecord::starts_segment) and its `prompt_ids` hold the whole
/// re-rendered prompt. The first record of a trajectory always starts a segment.
///
/// Invariants, checked on construction and on deserialization: `logprobs` and `loss_mask` have
/// one entry per sampled id, `behaviour_logprobs` too when present, and every logprob is finite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TokenRecordRepr", into = "TokenRecordRepr")]
pub struct TokenRecord {
    starts_segment: bool,
    prompt_ids: Vec<u32>,
    sampled_ids: Vec<u32>,
    logprobs: Vec<f32>,
    behaviour_logprobs: Option<Vec<f32>>,
    loss_mask: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecordRepr {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    starts_segment: bool,
    prompt_ids: Vec<u32>,
    sampled_ids: Vec<u32>,
    logprobs: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    behaviour_logprobs: Option<Vec<f32>>,
    loss_mask: Vec<bool>,
}

impl TryFrom<TokenRecordRepr> for TokenRecord {
    type Error = Error;
    fn try_from(r: TokenRecordRepr) -> Result<Self> {
        let record = TokenRecord {
            starts_segment: r.starts_segment,
            prompt_ids: r.prompt_ids,
            sampled_ids: r.sampled_ids,
            logprobs: r.logprobs,
            behaviour_logprobs: r.behaviour_logprobs,
            loss_mask: r.loss_mask,
        };
        record.validate()?;
        Ok(record)
    }
}

impl From<TokenRecord> for TokenRecordRepr {
    fn from(r: TokenRecord) -> Self {
        Self {
            starts_segment: r.starts_segment,
            prompt_ids: r.prompt_ids,
            sampled_ids: r.sampled_ids,
            logprobs: r.logprobs,
            behaviour_logprobs: r.behaviour_logprobs,
            loss_mask: r.loss_mask,
        }
    }
}

impl TokenRecord {
    /// A record that extends the current segment: the prompt delta, the sampled ids and their
    /// policy logprobs. The loss mask covers every sampled id.
    ///
    /// # Errors
    /// [`Error::InvalidTokenRecord`] when the lengths differ or a logprob is not finite.
    pub fn new(prompt_ids: Vec<u32>, sampled_ids: Vec<u32>, logprobs: Vec<f32>) -> Result<Self> {
        let loss_mask = vec![true; sampled_ids.len()];
        let record = Self {
            starts_segment: false,
            prompt_ids,
            sampled_ids,
            logprobs,
            behaviour_logprobs: None,
            loss_mask,
        };
        record.validate()?;
        Ok(record)
    }

    /// Marks this record as the start of a new segment: `prompt_ids` is then a whole prompt.
    #[must_use]
    pub fn starting_segment(mut self) -> Self {
        self.starts_segment = true;
        self
    }

    /// Replaces the loss mask (one entry per sampled id; `false` for tokens that were forced,
    /// not sampled).
    ///
    /// # Errors
    /// [`Error::InvalidTokenRecord`] when the length differs from the sampled ids'.
    pub fn with_loss_mask(mut self, loss_mask: Vec<bool>) -> Result<Self> {
        self.loss_mask = loss_mask;
        self.validate()?;
        Ok(self)
    }

    /// Adds the logprobs under the behaviour (sampling) distribution, when top-p or top-k made
    /// it differ from the policy distribution.
    ///
    /// # Errors
    /// [`Error::InvalidTokenRecord`] when the length differs or a value is not finite.
    pub fn with_behaviour_logprobs(mut self, logprobs: Vec<f32>) -> Result<Self> {
        self.behaviour_logprobs = Some(logprobs);
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let n = self.sampled_ids.len();
        if self.logprobs.len() != n {
            return Err(Error::token_record(format!(
                "{} logprobs for {n} sampled ids",
                self.logprobs.len()
            )));
        }
        if self.loss_mask.len() != n {
            return Err(Error::token_record(format!(
                "{} loss-mask entries for {n} sampled ids",
                self.loss_mask.len()
            )));
        }
        check_finite("logprobs", &self.logprobs)?;
        if let Some(b) = &self.behaviour_logprobs {
            if b.len() != n {
                return Err(Error::token_record(format!(
                    "{} behaviour logprobs for {n} sampled ids",
                    b.len()
                )));
            }
            check_finite("behaviour_logprobs", b)?;
        }
        Ok(())
    }

    /// Whether this turn starts a new training sequence.
    pub fn starts_segment(&self) -> bool {
        self.starts_segment
    }

    /// The ids added before generation (the whole prompt when starting a segment).
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// The ids the policy generated.
    pub fn sampled_ids(&self) -> &[u32] {
        &self.sampled_ids
    }

    /// The policy logprob of each sampled id (temperature-scaled full softmax).
    pub fn logprobs(&self) -> &[f32] {
        &self.logprobs
    }

    /// The sampling distribution's logprob of each sampled id, when it differed from the policy.
    pub fn behaviour_logprobs(&self) -> Option<&[f32]> {
        self.behaviour_logprobs.as_deref()
    }

    /// Which sampled ids are trained on.
    pub fn loss_mask(&self) -> &[bool] {
        &self.loss_mask
    }
}

fn check_finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::token_record(format!(
            "{what}[{i}] is {}, not a finite number",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// One assistant turn and the environment's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// The assistant's message (its text and tool calls).
    pub action: Message,
    /// What the environment answered (tool results, user replies). Empty when the episode
    /// stopped before the environment stepped.
    pub observations: Vec<Message>,
    /// How the agent's generation ended.
    pub finish: Finish,
    /// The tokens the agent reports it used for this turn, if it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_used: Option<usize>,
    /// The token budget the agent was given for this turn, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<usize>,
    /// The token-level record, from a trainable agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenRecord>,
    /// Facts the environment reported about this step.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub info: Map<String, Value>,
    /// Microseconds the agent took.
    pub agent_us: u64,
    /// Microseconds the environment took to step.
    pub env_us: u64,
}

impl Turn {
    /// A turn with this action and nothing else recorded yet (no observations, no token
    /// record, no timings), to build trajectories by hand.
    pub fn new(action: Message) -> Self {
        Self {
            action,
            observations: Vec::new(),
            finish: Finish::Stop,
            tokens_used: None,
            token_budget: None,
            tokens: None,
            info: Map::new(),
            agent_us: 0,
            env_us: 0,
        }
    }

    /// Adds the environment's observations.
    #[must_use]
    pub fn with_observations(mut self, observations: Vec<Message>) -> Self {
        self.observations = observations;
        self
    }

    /// Reports the outcomes of this turn's tool calls under [`TOOL_RESULTS_KEY`].
    #[must_use]
    pub fn with_tool_results(mut self, results: &[ToolResult]) -> Self {
        insert_tool_results(&mut self.info, results);
        self
    }

    /// The outcomes of this turn's tool calls, as the environment reported them under
    /// [`TOOL_RESULTS_KEY`] in the step's `info`. `None` when it reported nothing readable.
    pub fn tool_results(&self) -> Option<Vec<ToolResult>> {
        read_tool_results(&self.info)
    }
}

/// Writes `results` into an `info` map under [`TOOL_RESULTS_KEY`].
pub(crate) fn read_tool_results(info: &Map<String, Value>) -> Option<Vec<ToolResult>> {
    Vec::<ToolResult>::deserialize(info.get(TOOL_RESULTS_KEY)?).ok()
}

pub(crate) fn insert_tool_results(info: &mut Map<String, Value>, results: &[ToolResult]) {
    // Strings and booleans only: serialization cannot fail.
    let value = serde_json::to_value(results).unwrap_or(Value::Null);
    info.insert(TOOL_RESULTS_KEY.into(), value);
}

/// The `info` key under which an environment reports the outcome of each tool call of a step
/// (a JSON array of [`ToolResult`]s).
pub const TOOL_RESULTS_KEY: &str = "tool_results";

/// The outcome of one tool call, as the environment reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The id of the call it answers.
    pub call_id: String,
    /// The tool's name as the agent called it.
    pub tool: String,
    /// Whether the call succeeded (false for an unknown tool, bad arguments or a tool error).
    pub ok: bool,
    /// The error's kind, when it failed (`unknown_tool`, `invalid_json`, …).
    #[serde(default)]
    pub error: Option<String>,
}

impl ToolResult {
    /// A successful call.
    pub fn ok(call_id: impl Into<String>, tool: impl Into<String>) -> Self {
        Self {
            call_id: call_id.into(),
            tool: tool.into(),
            ok: true,
            error: None,
        }
    }

    /// A failed call, with the kind of error.
    pub fn failed(
        call_id: impl Into<String>,
        tool: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        Self {
            call_id: call_id.into(),
            tool: tool.into(),
            ok: false,
            error: Some(error.into()),
        }
    }
}

/// How an episode's tool calls went: counted from the calls the agent made and the results the
/// environment reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ToolOutcomes {
    /// The calls the agent made.
    pub calls: usize,
    /// The calls reported successful.
    pub ok: usize,
    /// The calls reported failed.
    pub failed: usize,
    /// The calls with no reported outcome (the environment does not report them, or the episode
    /// stopped before they were answered).
    pub unreported: usize,
}

impl ToolOutcomes {
    /// The share of reported calls that succeeded; `None` when no outcome was reported.
    pub fn accuracy(&self) -> Option<f64> {
        let reported = self.ok + self.failed;
        (reported > 0).then(|| self.ok as f64 / reported as f64)
    }
}

impl std::ops::AddAssign for ToolOutcomes {
    fn add_assign(&mut self, other: Self) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.failed += other.failed;
        self.unreported += other.unreported;
    }
}

/// Wall-clock totals of an episode, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timing {
    /// From the start of the episode to the end of its close.
    pub total_us: u64,
    /// Time spent in the agent.
    pub agent_us: u64,
    /// Time spent in the environment (create, reset, steps and close).
    pub env_us: u64,
}

/// Everything that happened in one episode.
///
/// The conversation is the environment's first observation ([`Trajectory::prompt`]) followed by,
/// for each turn, the assistant's action and the environment's observations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The id of the task.
    pub task_id: String,
    /// Which sample, with which seed.
    pub episode: Episode,
    /// The environment's first observation: system prompt, user message.
    pub prompt: Vec<Message>,
    /// The tools advertised to the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// The turns, in order.
    pub turns: Vec<Turn>,
    /// Why the episode ended.
    pub stop: StopReason,
    /// What stopped the episode outside its normal course: an error, a panic, a timeout, an
    /// abort, or an agent that overran its token budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EpisodeError>,
    /// What the environment reported the episode left behind
    /// ([`Environment::outcome`](crate::Environment::outcome)): for rewards and evaluators,
    /// never shown to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    /// An error from reporting the outcome or closing the environment (the first of the two),
    /// kept apart so that it never hides the stop reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_error: Option<EpisodeError>,
    /// Wall-clock totals.
    pub timing: Timing,
    /// Free metadata (the environment's and the caller's).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// The failed attempts this episode replaced, in order (empty unless the driver retries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
}

impl Trajectory {
    /// An empty trajectory for a task's episode, stopped as `Aborted` until told otherwise.
    pub fn new(task_id: impl Into<String>, episode: Episode) -> Self {
        Self {
            task_id: task_id.into(),
            episode,
            prompt: Vec::new(),
            tools: Vec::new(),
            turns: Vec::new(),
            stop: StopReason::Aborted,
            error: None,
            outcome: None,
            close_error: None,
            timing: Timing::default(),
            metadata: Map::new(),
            failed_attempts: Vec::new(),
        }
    }

    /// The trajectory with every wall-clock figure zeroed (its [`Timing`] and each turn's
    /// `agent_us` and `env_us`): what two runs of the same episode share, for comparing them.
    #[must_use]
    pub fn untimed(mut self) -> Self {
        self.timing = Timing::default();
        for turn in &mut self.turns {
            turn.agent_us = 0;
            turn.env_us = 0;
        }
        self
    }

    /// The whole conversation: the prompt, then each turn's action and observations.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = self.prompt.clone();
        for turn in &self.turns {
            out.push(turn.action.clone());
            out.extend(turn.observations.iter().cloned());
        }
        out
    }

    /// The last assistant message, where the final answer is looked for.
    pub fn final_action(&self) -> Option<&Message> {
        self.turns.last().map(|t| &t.action)
    }

    /// The tokens used over all turns whose count is known.
    pub fn tokens_used(&self) -> usize {
        self.turns.iter().filter_map(|t| t.tokens_used).sum()
    }

    /// The number of tool calls the agent made.
    pub fn tool_calls(&self) -> usize {
        self.turns.iter().map(|t| t.action.tool_calls.len()).sum()
    }

    /// How the tool calls went, from the outcomes the environment reported (see
    /// [`Turn::tool_results`]).
    pub fn tool_outcomes(&self) -> ToolOutcomes {
        let mut out = ToolOutcomes::default();
        for turn in &self.turns {
            let calls = turn.action.tool_calls.len();
            let (mut ok, mut failed) = (0, 0);
            for result in turn.tool_results().unwrap_or_default() {
                if result.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            out += ToolOutcomes {
                calls,
                ok,
                failed,
                unreported: calls.saturating_sub(ok + failed),
            };
        }
        out
    }

    /// Whether any turn carries a token record.
    pub fn has_token_records(&self) -> bool {
        self.turns.iter().any(|t| t.tokens.is_some())
    }

    /// The training sequences of this trajectory, one per segment, built from the token records
    /// alone. A trajectory without records has none.
    ///
    /// # Errors
    /// [`Error::InvalidTokenRecord`] when some turns have records and others do not, or when the
    /// first record does not start a segment.
    pub fn sequences(&self) -> Result<Vec<TrainingSequence>> {
        if !self.has_token_records() {
            return Ok(Vec::new());
        }
        let mut out: Vec<TrainingSequence> = Vec::new();
        for (i, turn) in self.turns.iter().enumerate() {
            let record = turn.tokens.as_ref().ok_or_else(|| {
                Error::token_record(format!("turn {i} has no token record but others do"))
            })?;
            if record.starts_segment || out.is_empty() {
                if !record.starts_segment {
                    return Err(Error::token_record(
                        "the first token record does not start a segment",
                    ));
                }
                out.push(TrainingSequence {
                    turns: i..i,
                    ..TrainingSequence::default()
                });
            }
            let seq = out.last_mut().expect("a segment was pushed above");
            seq.push_turn(i, record);
        }
        Ok(out)
    }
}

/// One training sequence built from the token records of consecutive turns.
///
/// `ids`, `loss_mask`, `logprobs` and `behaviour_logprobs` have the same length. Prompt
/// positions have mask `false` and logprob 0; sampled positions carry their record's mask and
/// logprobs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainingSequence {
    /// The turns this sequence covers.
    pub turns: Range<usize>,
    /// The token ids, in order.
    pub ids: Vec<u32>,
    /// Which positions are trained on.
    pub loss_mask: Vec<bool>,
    /// The stored policy logprob at each position.
    pub logprobs: Vec<f32>,
    /// The sampling distribution's logprob at each position: the record's behaviour logprobs
    /// where it has them, else its policy logprobs (sampling was not truncated).
    pub behaviour_logprobs: Vec<f32>,
}

impl TrainingSequence {
    fn push_turn(&mut self, index: usize, record: &TokenRecord) {
        let prompt_len = record.prompt_ids.len();
        self.turns.end = index + 1;
        self.ids.extend_from_slice(&record.prompt_ids);
        self.ids.extend_from_slice(&record.sampled_ids);
        self.loss_mask
            .extend(std::iter::repeat_n(false, prompt_len));
        self.loss_mask.extend_from_slice(&record.loss_mask);
        self.logprobs.extend(std::iter::repeat_n(0.0, prompt_len));
        self.logprobs.extend_from_slice(&record.logprobs);
        self.behaviour_logprobs
            .extend(std::iter::repeat_n(0.0, prompt_len));
        self.behaviour_logprobs.extend_from_slice(
            record
                .behaviour_logprobs
                .as_deref()
                .unwrap_or(&record.logprobs),
        );
    }

    /// The number of positions trained on.
    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|m| **m).count()
    }
}
