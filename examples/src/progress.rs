//! A progress bar over a run's steps, as a [`MetricsSink`] layer: it wraps the sink that keeps
//! the metrics, and shows the step, the mean reward and the latest validation TSR as each step
//! is written. Drawn on standard error only when it is a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use mtrl_eval::monitor::{MetricsSink, StepMetrics, names};

/// The progress layer around `inner`.
pub struct ProgressSink {
    inner: Box<dyn MetricsSink>,
    bar: ProgressBar,
    val_tsr: Option<f64>,
}

impl ProgressSink {
    /// A bar of `steps` steps, labelled `label`, in front of `inner`.
    pub fn new(inner: Box<dyn MetricsSink>, steps: u64, label: &str) -> Self {
        let bar = ProgressBar::new(steps);
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps, eta {eta} {msg}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        Self {
            inner,
            bar,
            val_tsr: None,
        }
    }
}

impl Drop for ProgressSink {
    fn drop(&mut self) {
        // Leaves the last state on screen.
        self.bar.abandon();
    }
}

impl MetricsSink for ProgressSink {
    fn write(&mut self, metrics: &StepMetrics) -> Result<(), mtrl_eval::Error> {
        self.inner.write(metrics)?;
        if let Some(v) = metrics.get(names::VAL_TSR) {
            self.val_tsr = Some(v);
        }
        self.bar.set_position(metrics.step);
        let mut msg = String::new();
        if let Some(r) = metrics.get(names::REWARD_MEAN) {
            msg.push_str(&format!("reward {r:.2}"));
        }
        if let Some(v) = self.val_tsr {
            msg.push_str(&format!("  val TSR {:.0}%", 100.0 * v));
        }
        self.bar.set_message(msg);
        Ok(())
    }
}
