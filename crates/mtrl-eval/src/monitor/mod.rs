//! Training monitors: the per-step metrics record, the reward-hacking alarm, metric sinks and
//! the static HTML report.

mod alarm;
mod plots;
mod report;
mod sink;
mod step;

pub use alarm::{Alarm, AlarmConfig, AlarmKind, HackingAlarm};
pub use report::{Report, ReportFiles};
pub use sink::{JsonlSink, MetricsLog, MetricsSink, Resumption, read_metrics, read_metrics_log};
pub use step::{StepMetrics, UsualToolUse, names};
