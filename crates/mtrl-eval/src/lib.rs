//! # mtrl-eval
//!
//! Strict evaluation for mtrl, kept apart from any reward, and the monitors a trainer reports
//! through. It depends only on `mtrl-core`.
//!
//! | concept | where |
//! |---|---|
//! | the strict judge of `<final_output>` answers (SOP-Bench's) | [`FinalOutputEvaluator`] |
//! | TSR, ECR, C-TSR, tool accuracy, per-field accuracy, per domain | [`Summary`], [`Metrics`] |
//! | pass@k, mean@k, bootstrap intervals | [`pass_at_k`], [`SampledMetrics`], [`Bootstrap`] |
//! | the per-step metrics record and its names | [`monitor::StepMetrics`], [`monitor::names`] |
//! | the reward-hacking and collapse alarm | [`monitor::HackingAlarm`] |
//! | JSON Lines metrics | [`monitor::JsonlSink`], [`monitor::read_metrics_log`] |
//! | the HTML report with its charts (feature `report`, on by default) | `monitor::Report` |
//!
//! The answer format and the normalisation of field values are defined once, in
//! [`mtrl_core::answer`]; the evaluator uses its strict parser and nothing looser.
//!
//! With `default-features = false` there is no report, and no plotting or font crates.
//!
//! ```
//! use mtrl_core::{Episode, Evaluator, Message, StopReason, Task, Trajectory, Turn};
//! use mtrl_eval::{EvalRecord, FinalOutputEvaluator, Summary};
//! use serde_json::json;
//!
//! let task = Task::new("t1", json!({"item": "A-7"}), json!({"hazard_class": "Hazard Class D"}))?;
//! let mut trajectory = Trajectory::new("t1", Episode::default());
//! trajectory.turns.push(Turn::new(Message::assistant(
//!     r#"<final_output>{"hazard_class": "hazard class d"}</final_output>"#,
//! )));
//! trajectory.stop = StopReason::Answered;
//!
//! let evaluation = FinalOutputEvaluator::new().judge(&task, &trajectory)?;
//! assert!(evaluation.success);
//! let summary = Summary::from_records([&EvalRecord::new(&task, &trajectory, evaluation)]);
//! assert_eq!(summary.overall.tsr(), 1.0);
//! # Ok::<(), mtrl_core::Error>(())
//! ```

use std::path::{Path, PathBuf};

mod evaluator;
pub mod monitor;
mod sampled;
mod summary;

pub use evaluator::{FinalOutputEvaluator, OUTCOME_PREFIX};
pub use sampled::{
    Bootstrap, Estimate, SampledMetrics, TaskOutcome, mean_at_k, pass_at_k, task_outcomes,
};
pub use summary::{EvalRecord, FieldCount, Metrics, Summary, evaluate_all};

/// Errors of mtrl-eval.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mtrl-core's types or contracts.
    #[error(transparent)]
    Core(#[from] mtrl_core::Error),
    /// A trajectory names a task that was not given.
    #[error("no task with id {0:?} among the tasks given")]
    UnknownTask(String),
    /// The evaluator failed on one trajectory.
    #[error("evaluating task {task_id}: {source}")]
    Evaluator {
        /// The trajectory's task id.
        task_id: String,
        /// The evaluator's error.
        #[source]
        source: mtrl_core::Error,
    },
    /// Sample counts that do not make sense for pass@k or a bootstrap.
    #[error("invalid sampling: {0}")]
    InvalidSampling(String),
    /// A field's numeric tolerance is negative or not finite.
    #[error("the tolerance of `{field}` must be a number ≥ 0, not {value}")]
    InvalidTolerance {
        /// The field.
        field: String,
        /// The tolerance given.
        value: f64,
    },
    /// A chart could not be drawn.
    #[error("plot error: {0}")]
    Plot(String),
    /// A metrics file cannot be read, or its records do not make a run.
    #[error("{path}: {reason}")]
    Metrics {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where it is.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
