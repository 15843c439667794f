//! [`FinalOutputEvaluator`]: the strict judge of `<final_output>` answers (SOP-Bench's).

use std::collections::BTreeMap;

use mtrl_core::{
    AnswerParser, Evaluation, Evaluator, Failure, FieldResult, StopReason, Task, Trajectory,
    async_trait, values_match, values_match_within,
};
use serde_json::Value;

/// Judges the answer in a trajectory's final assistant message against the task's ground truth,
/// strictly: exactly one `<final_output>` block with exactly the ground truth's fields, each
/// compared with [`values_match`] and nothing looser. It is SOP-Bench's evaluator, and any task
/// whose ground truth is a JSON object of output fields can use it.
///
/// An episode is *completed* when it stopped because the agent answered, with no environment or
/// agent error, and the answer parses; it *succeeds* when, in addition, every field matches.
/// Every expected field gets a [`FieldResult`], wrong when there was no answer to read, so that
/// per-field accuracy counts every episode.
///
/// **Outcomes.** A task with an [expected outcome](Task::expected_outcome) succeeds only when
/// the episode also left it behind: each expected field must match the same field of
/// [`Trajectory::outcome`], judged as `outcome.<field>` beside the answer fields. An agent that
/// answers right without doing the work (it never cancelled the order it says it cancelled)
/// fails with `wrong_outcome`, or `missing_outcome` when the environment reported none.
///
/// **Tolerance.** Comparison is exact by default. [`FinalOutputEvaluator::tolerance`] lets one
/// numeric field (an answer field, or `outcome.<field>`) differ by at most a given amount, for
/// values that are sums of floats (`59.980000000000004` for `59.98`).
///
/// Failure kinds: the stop reason's name when the episode did not end with an answer
/// (`max_turns`, `environment_error`, …), an [`AnswerError`](mtrl_core::AnswerError) kind when
/// the answer does not parse (`missing_tag`, `multiple_tags`, …), `wrong_fields` when it
/// parses but some field is wrong, and `wrong_outcome` or `missing_outcome` when the answer is
/// right but the outcome is not.
#[derive(Debug, Clone, Default)]
pub struct FinalOutputEvaluator {
    parser: AnswerParser,
    tolerances: BTreeMap<String, f64>,
}

impl FinalOutputEvaluator {
    /// The strict evaluator.
    pub fn new() -> Self {
        Self {
            parser: AnswerParser::strict(),
            tolerances: BTreeMap::new(),
        }
    }

    /// Lets the numeric field `name` (`outcome.<field>` for an outcome field) differ from the
    /// expected value by at most `absolute`. Other fields, and this one when either side is not
    /// a number, compare exactly.
    ///
    /// # Errors
    /// [`Error::InvalidTolerance`](crate::Error::InvalidTolerance) for a tolerance that is
    /// negative or not finite.
    pub fn tolerance(
        mut self,
        name: impl Into<String>,
        absolute: f64,
    ) -> Result<Self, crate::Error> {
        let name = name.into();
        if !(absolute.is_finite() && absolute >= 0.0) {
            return Err(crate::Error::InvalidTolerance {
                field: name,
                value: absolute,
            });
        }
        self.tolerances.insert(name, absolute);
        Ok(self)
    }

    fn field(&self, name: &str, expected: &Value, predicted: Option<&Value>) -> FieldResult {
        let within = |p: &Value| match self.tolerances.get(name) {
            Some(tol) => values_match_within(expected, p, *tol),
            None => values_match(expected, p),
        };
        FieldResult {
            correct: predicted.is_some_and(within),
            expected: expected.clone(),
            predicted: predicted.cloned(),
        }
    }

    /// Judges synchronously (what [`Evaluator::evaluate`] does).
    ///
    /// # Errors
    /// [`mtrl_core::Error::InvalidTask`] when the task's ground truth is not a JSON object.
    pub fn judge(&self, task: &Task, trajectory: &Trajectory) -> mtrl_core::Result<Evaluation> {
        let Some(truth) = task.ground_truth().as_object() else {
            return Err(mtrl_core::Error::InvalidTask {
                reason: format!(
                    "task {}: the ground truth must be a JSON object of output fields",
                    task.id()
                ),
            });
        };
        let unanswered = |failure: Failure| Evaluation {
            success: false,
            completed: false,
            fields: truth
                .iter()
                .map(|(name, expected)| (name.clone(), self.field(name, expected, None)))
                .chain(
                    task.expected_outcome()
                        .into_iter()
                        .flatten()
                        .map(|(name, e)| {
                            let name = format!("{OUTCOME_PREFIX}{name}");
                            let judged = self.field(&name, e, None);
                            (name, judged)
                        }),
                )
                .collect(),
            failure: Some(failure),
        };
        if let Some(error) = &trajectory.error {
            return Ok(unanswered(Failure::new(
                trajectory.stop.as_str(),
                error.message.clone(),
            )));
        }
        if trajectory.stop != StopReason::Answered {
            return Ok(unanswered(Failure::new(
                trajectory.stop.as_str(),
                format!("the episode stopped ({}) before an answer", trajectory.stop),
            )));
        }
        let names: Vec<&str> = truth.keys().map(String::as_str).collect();
        let answer = match self.parser.parse_final(trajectory, &names) {
            Ok(answer) => answer,
            Err(e) => return Ok(unanswered(Failure::new(e.kind(), e.to_string()))),
        };
        let mut fields: BTreeMap<String, FieldResult> = truth
            .iter()
            .map(|(name, expected)| {
                let judged = self.field(name, expected, answer.fields.get(name));
                (name.clone(), judged)
            })
            .collect();
        let wrong: Vec<&str> = fields
            .iter()
            .filter(|(_, f)| !f.correct)
            .map(|(name, _)| name.as_str())
            .collect();
        let mut failure = (!wrong.is_empty()).then(|| {
            Failure::new(
                "wrong_fields",
                format!("wrong values for {}", wrong.join(", ")),
            )
        });
        if let Some(expected) = task.expected_outcome() {
            let reported = trajectory.outcome.as_ref().and_then(Value::as_object);
            let mut wrong_outcome = Vec::new();
            for (name, e) in expected {
                let key = format!("{OUTCOME_PREFIX}{name}");
                let judged = self.field(&key, e, reported.and_then(|o| o.get(name)));
                if !judged.correct {
                    wrong_outcome.push(key.clone());
                }
                fields.insert(key, judged);
            }
            if failure.is_none() && !wrong_outcome.is_empty() {
                failure = Some(match reported {
                    None => Failure::new(
                        "missing_outcome",
                        "the answer is right, but the environment reported no outcome to check",
                    ),
                    Some(_) => Failure::new(
                        "wrong_outcome",
                        format!(
                            "the answer is right, but the episode did not leave {} as expected",
                            wrong_outcome.join(", ")
                        ),
                    ),
                });
            }
        }
        Ok(Evaluation {
            success: failure.is_none(),
            completed: true,
            fields,
            failure,
        })
    }
}

/// The prefix of an outcome field's name among an evaluation's fields: `outcome.status`.
pub const OUTCOME_PREFIX: &str = "outcome.";

/// A finite number, from a JSON number or a string of decimal text.

#[async_trait]
impl Evaluator for FinalOutputEvaluator {
    async fn evaluate(
        &self,
        task: &Task,
        trajectory: &Trajectory,
    ) -> mtrl_core::Result<Evaluation> {
        self.judge(task, trajectory)
    }
}
