//! The building blocks: exact match, per-field accuracy, format, tool-call validity, outcome
//! match, turn cost.

use std::collections::BTreeMap;

use mtrl_core::{
    AnswerParser, Reward, RewardValue, Task, Trajectory, async_trait, values_match,
    values_match_within,
};
use serde_json::{Map, Value};

use crate::Error;

/// The task's output fields: its ground truth, which must be a JSON object.
fn truth(task: &Task) -> Result<&Map<String, Value>, Error> {
    task.ground_truth()
        .as_object()
        .ok_or_else(|| Error::GroundTruthNotAnObject(task.id().to_string()))
}

/// How an answer read with `parser` scores: `None` when it does not parse, else the number of
/// fields right out of the expected ones.
fn fields_right(
    parser: &AnswerParser,
    truth: &Map<String, Value>,
    t: &Trajectory,
) -> Option<(usize, usize)> {
    let names: Vec<&str> = truth.keys().map(String::as_str).collect();
    let answer = parser.parse_final(t, &names).ok()?;
    let right = truth
        .iter()
        .filter(|(name, expected)| {
            answer
                .fields
                .get(*name)
                .is_some_and(|p| values_match(expected, p))
        })
        .count();
    Some((right, truth.len()))
}

/// Which answer a term scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerTerm {
    Exact,
    Fields,
    Format,
}

impl AnswerTerm {
    fn value(self, parsed: Option<(usize, usize)>) -> f64 {
        match (self, parsed) {
            (_, None) => 0.0,
            (AnswerTerm::Format, Some(_)) => 1.0,
            (AnswerTerm::Exact, Some((right, of))) => f64::from(u8::from(right == of)),
            (AnswerTerm::Fields, Some((_, 0))) => 1.0,
            (AnswerTerm::Fields, Some((right, of))) => right as f64 / of as f64,
        }
    }
}

/// A term read from the final answer, with its parser and component name. When the parser is
/// not the strict one, the value the strict parser would give is logged beside it as
/// `<name>@strict`, so a gap between the reward's reading and the evaluator's shows in the
/// logs at once.
#[derive(Debug, Clone)]
struct AnswerReward {
    term: AnswerTerm,
    name: String,
    parser: AnswerParser,
}

impl AnswerReward {
    fn score(&self, task: &Task, t: &Trajectory) -> Result<RewardValue, Error> {
        let truth = truth(task)?;
        let value = self.term.value(fields_right(&self.parser, truth, t));
        let mut out = RewardValue::new(value).with_component(&self.name, value);
        if !self.parser.is_strict() {
            let strict = self
                .term
                .value(fields_right(&AnswerParser::strict(), truth, t));
            out = out.with_component(format!("{}@strict", self.name), strict);
        }
        Ok(out)
    }
}

macro_rules! answer_reward {
    ($(#[$doc:meta])* $ty:ident, $term:expr, $name:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $ty(AnswerReward);

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $ty {
            #[doc = concat!("With the strict parser, logged as `", $name, "`.")]
            pub fn new() -> Self {
                Self(AnswerReward {
                    term: $term,
                    name: $name.to_string(),
                    parser: AnswerParser::strict(),
                })
            }

            /// Reads answers with `parser` instead of the strict one (the strict reading is
            /// then logged beside it as `<name>@strict`).
            #[must_use]
            pub fn with_parser(mut self, parser: AnswerParser) -> Self {
                self.0.parser = parser;
                self
            }

            /// Logs the term under `name`.
            #[must_use]
            pub fn named(mut self, name: impl Into<String>) -> Self {
                self.0.name = name.into();
                self
            }

            /// The parser it reads answers with.
            pub fn parser(&self) -> &AnswerParser {
                &self.0.parser
            }
        }

        #[async_trait]
        impl Reward for $ty {
            async fn score(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
                Ok(self.0.score(task, t)?)
            }
        }
    };
}

answer_reward!(
    /// 1 when the answer parses and every output field matches the ground truth
    /// ([`values_match`]), else 0.
    ExactMatch,
    AnswerTerm::Exact,
    "exact_match"
);

answer_reward!(
    /// The share of output fields that match the ground truth (0 when the answer does not
    /// parse): a dense signal that credits partial progress.
    FieldAccuracy,
    AnswerTerm::Fields,
    "field_accuracy"
);

answer_reward!(
    /// 1 when the final message holds an answer the parser accepts, else 0: a small term that
    /// teaches the format. Weigh it lightly, and gate answer credit on it rather than letting it
    /// stand alone.
    Format,
    AnswerTerm::Format,
    "format"
);

/// The share of the agent's tool calls that succeeded, as the environment reported
/// ([`Trajectory::tool_outcomes`]); calls without a reported outcome count as failed.
/// Logged as `tool_validity`.
#[derive(Debug, Clone)]
pub struct ToolCallValidity {
    name: String,
    if_no_calls: f64,
}

impl Default for ToolCallValidity {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolCallValidity {
    /// Scores 1 for an episode without tool calls (nothing invalid was called).
    pub fn new() -> Self {
        Self {
            name: "tool_validity".into(),
            if_no_calls: 1.0,
        }
    }

    /// The value of an episode without any tool call.
    #[must_use]
    pub fn if_no_calls(mut self, value: f64) -> Self {
        self.if_no_calls = value;
        self
    }

    /// Logs the term under `name`.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[async_trait]
impl Reward for ToolCallValidity {
    async fn score(&self, _task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let o = t.tool_outcomes();
        let value = if o.calls == 0 {
            self.if_no_calls
        } else {
            o.ok as f64 / o.calls as f64
        };
        Ok(RewardValue::new(value).with_component(&self.name, value))
    }
}

/// The share of the task's [expected outcome](Task::expected_outcome) fields that the
/// episode's [`Trajectory::outcome`] matches ([`values_match`], field by field): a dense term
/// for doing the work, not only saying it was done. An episode with no outcome scores 0; a task
/// with no expected outcome scores `if_none` (1 by default: nothing to get wrong). Logged as
/// `outcome_match`.
#[derive(Debug, Clone)]
pub struct OutcomeMatch {
    name: String,
    if_none: f64,
    tolerances: BTreeMap<String, f64>,
}

impl Default for OutcomeMatch {
    fn default() -> Self {
        Self::new()
    }
}

impl OutcomeMatch {
    /// Scores the share of expected outcome fields matched.
    pub fn new() -> Self {
        Self {
            name: "outcome_match".into(),
            if_none: 1.0,
            tolerances: BTreeMap::new(),
        }
    }

    /// Compares the outcome field `field` (named as in the expected outcome, without the
    /// evaluator's `outcome.` prefix) within an absolute numeric tolerance
    /// ([`values_match_within`](mtrl_core::values_match_within)); the other fields stay exact.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a tolerance that is negative or not finite.
    pub fn tolerance(mut self, field: impl Into<String>, absolute: f64) -> Result<Self, Error> {
        let field = field.into();
        if !(absolute.is_finite() && absolute >= 0.0) {
            return Err(Error::InvalidConfig(format!(
                "the tolerance of outcome field {field:?} must be a finite number >= 0, not \
                 {absolute}"
            )));
        }
        self.tolerances.insert(field, absolute);
        Ok(self)
    }

    /// The value for a task that expects no outcome.
    #[must_use]
    pub fn if_none(mut self, value: f64) -> Self {
        self.if_none = value;
        self
    }

    /// Logs the term under `name`.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[async_trait]
impl Reward for OutcomeMatch {
    async fn score(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let value = match task.expected_outcome() {
            None => self.if_none,
            Some(expected) if expected.is_empty() => self.if_none,
            Some(expected) => {
                let reported = t.outcome.as_ref().and_then(Value::as_object);
                let right = expected
                    .iter()
                    .filter(|(k, e)| {
                        reported.and_then(|o| o.get(*k)).is_some_and(|p| {
                            match self.tolerances.get(*k) {
                                Some(tol) => values_match_within(e, p, *tol),
                                None => values_match(e, p),
                            }
                        })
                    })
                    .count();
                right as f64 / expected.len() as f64
            }
        };
        Ok(RewardValue::new(value).with_component(&self.name, value))
    }
}

/// A cost of acting: `-(per_turn × turns beyond the free ones + per_tool_call × calls)`,
/// logged as `turn_cost`. Use it to discourage stalling; keep it small beside the answer terms.
#[derive(Debug, Clone)]
pub struct TurnCost {
    name: String,
    per_turn: f64,
    per_tool_call: f64,
    free_turns: usize,
}

impl TurnCost {
    /// A cost per turn and per tool call (both non-negative).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a negative or non-finite cost.
    pub fn new(per_turn: f64, per_tool_call: f64) -> Result<Self, Error> {
        for (what, v) in [("per_turn", per_turn), ("per_tool_call", per_tool_call)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidConfig(format!(
                    "turn cost {what} must be a finite non-negative number, got {v}"
                )));
            }
        }
        Ok(Self {
            name: "turn_cost".into(),
            per_turn,
            per_tool_call,
            free_turns: 0,
        })
    }

    /// Turns that cost nothing (the ones the procedure needs).
    #[must_use]
    pub fn free_turns(mut self, turns: usize) -> Self {
        self.free_turns = turns;
        self
    }

    /// Logs the term under `name`.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[async_trait]
impl Reward for TurnCost {
    async fn score(&self, _task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let turns = t.turns.len().saturating_sub(self.free_turns) as f64;
        let value = -(self.per_turn * turns + self.per_tool_call * t.tool_calls() as f64);
        Ok(RewardValue::new(value).with_component(&self.name, value))
    }
}
