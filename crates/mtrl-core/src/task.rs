//! [`Task`]: one problem to solve, with the ground truth kept out of the agent's reach.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One problem: an id, the inputs the agent may see, the ground truth, and free metadata.
///
/// The ground truth and the metadata are for the trusted side only: environments, rewards and
/// evaluators receive the whole `Task`. An [`Agent`](crate::Agent) is only ever handed a
/// [`TaskView`], which borrows the id and the inputs and has no path back to the rest.
///
/// ```
/// use mtrl_core::Task;
/// use serde_json::json;
/// let task = Task::new("t-1", json!({"order_id": "A-17"}), json!({"status": "shipped"}))?;
/// assert_eq!(task.view().input("order_id"), Some(&json!("A-17")));
/// assert_eq!(task.ground_truth()["status"], "shipped");
/// # Ok::<(), mtrl_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "TaskFields")]
pub struct Task {
    id: String,
    inputs: Map<String, Value>,
    ground_truth: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_outcome: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
}

/// A task as it is written, checked by [`Task::new`]'s rules before it becomes a [`Task`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFields {
    id: String,
    inputs: Map<String, Value>,
    ground_truth: Value,
    #[serde(default)]
    expected_outcome: Option<Map<String, Value>>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

impl TryFrom<TaskFields> for Task {
    type Error = Error;

    fn try_from(t: TaskFields) -> Result<Self> {
        let mut task = Task::new(t.id, Value::Object(t.inputs), t.ground_truth)?;
        task.expected_outcome = t.expected_outcome;
        task.metadata = t.metadata;
        Ok(task)
    }
}

impl Task {
    /// A task with the given id, visible inputs (a JSON object) and ground truth.
    ///
    /// # Errors
    /// [`Error::InvalidTask`] for an empty id or inputs that are not a JSON object.
    pub fn new(id: impl Into<String>, inputs: Value, ground_truth: Value) -> Result<Self> {
        let id = id.into();
        if id.trim().is_empty() {
            return Err(Error::InvalidTask {
                reason: "the task id is empty".into(),
            });
        }
        let Value::Object(inputs) = inputs else {
            return Err(Error::InvalidTask {
                reason: format!("task `{id}`: inputs must be a JSON object"),
            });
        };
        Ok(Self {
            id,
            inputs,
            ground_truth,
            expected_outcome: None,
            metadata: Map::new(),
        })
    }

    /// Expects the episode to leave this outcome behind: each field must match the same field
    /// of the environment's [`Trajectory::outcome`](crate::Trajectory::outcome) (the order
    /// cancelled, the refund recorded), beside the answer fields of the ground truth. For the
    /// trusted side only, like the ground truth.
    #[must_use]
    pub fn with_expected_outcome(mut self, fields: Map<String, Value>) -> Self {
        self.expected_outcome = Some(fields);
        self
    }

    /// The outcome fields the episode must leave behind, if the task names any.
    pub fn expected_outcome(&self) -> Option<&Map<String, Value>> {
        self.expected_outcome.as_ref()
    }

    /// Adds one metadata entry (domain, label, difficulty…). Metadata is not shown to the agent.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The inputs the agent may see.
    pub fn inputs(&self) -> &Map<String, Value> {
        &self.inputs
    }

    /// The expected answer. For the trusted side only.
    pub fn ground_truth(&self) -> &Value {
        &self.ground_truth
    }

    /// Free metadata. For the trusted side only.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The part of the task an agent may see.
    pub fn view(&self) -> TaskView<'_> {
        TaskView {
            id: &self.id,
            inputs: &self.inputs,
        }
    }
}

/// The agent's view of a [`Task`]: its id and visible inputs, nothing else.
///
/// There is no way from a `TaskView` to the ground truth:
///
/// ```compile_fail
/// fn peek(view: mtrl_core::TaskView<'_>) -> serde_json::Value {
///     view.ground_truth().clone()
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TaskView<'a> {
    id: &'a str,
    inputs: &'a Map<String, Value>,
}

impl<'a> TaskView<'a> {
    /// The task's id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// All visible inputs.
    pub fn inputs(&self) -> &'a Map<String, Value> {
        self.inputs
    }

    /// One visible input by name.
    pub fn input(&self, name: &str) -> Option<&'a Value> {
        self.inputs.get(name)
    }
}
