//! [`FinalOutputEvaluator`]: the strict judge of `<final_output>` answers (SOP-Bench's).

use std::collections::BTreeMap;

use mtrl_core::{
    AnswerParser, Evaluation, Evaluator, Failure, FieldResult, StopReason, Task, Trajectory,
    async_trait, values_match,
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
/// Failure kinds: the stop reason's name when the episode did not end with an answer
/// (`max_turns`, `environment_error`, …), an [`AnswerError`](mtrl_core::AnswerError) kind when
/// the answer does not parse (`missing_tag`, `multiple_tags`, …), and `wrong_fields` when it
/// parses but some field is wrong.
#[derive(Debug, Clone, Default)]
pub struct FinalOutputEvaluator {
    parser: AnswerParser,
}

impl FinalOutputEvaluator {
    /// The strict evaluator.
    pub fn new() -> Self {
        Self {
            parser: AnswerParser::strict(),
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
                .map(|(name, expected)| (name.clone(), field(expected, None)))
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
        let fields: BTreeMap<String, FieldResult> = truth
            .iter()
            .map(|(name, expected)| (name.clone(), field(expected, answer.fields.get(name))))
            .collect();
        let wrong: Vec<&str> = fields
            .iter()
            .filter(|(_, f)| !f.correct)
            .map(|(name, _)| name.as_str())
            .collect();
        let failure = (!wrong.is_empty()).then(|| {
            Failure::new(
                "wrong_fields",
                format!("wrong values for {}", wrong.join(", ")),
            )
        });
        Ok(Evaluation {
            success: wrong.is_empty(),
            completed: true,
            fields,
            failure,
        })
    }
}

fn field(expected: &Value, predicted: Option<&Value>) -> FieldResult {
    FieldResult {
        correct: predicted.is_some_and(|p| values_match(expected, p)),
        expected: expected.clone(),
        predicted: predicted.cloned(),
    }
}

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
