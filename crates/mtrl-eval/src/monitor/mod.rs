//! Training monitors: the per-step metrics record, the reward-hacking alarm, metric sinks and
//! the static HTML report.

mod alarm;
#[cfg(feature = "report")]
mod plots;
#[cfg(feature = "report")]
mod report;
mod sink;
mod step;

pub use alarm::{Alarm, AlarmConfig, AlarmKind, HackingAlarm};
#[cfg(feature = "report")]
pub use report::{Report, ReportFiles};
pub use sink::{JsonlSink, MetricsLog, MetricsSink, Resumption, read_metrics, read_metrics_log};
pub use step::{StepMetrics, UsualToolUse, names};
