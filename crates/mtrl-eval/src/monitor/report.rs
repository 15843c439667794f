//! [`Report`]: a static HTML page of a run's metrics, with charts, and PNG copies of them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::alarm::Alarm;
use super::plots::{BarChart, Chart, LineChart, SIZE, Series};
use super::sink::Resumption;
use super::step::{StepMetrics, names};
use crate::Error;

/// The files a report wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// The HTML page (self-contained: the charts are inline SVG).
    pub html: PathBuf,
    /// The PNG copy of each chart, in page order.
    pub pngs: Vec<PathBuf>,
}

/// A static HTML report of a run: a summary table, the alarms, and charts of reward against
/// validation TSR, the turns distribution, the reward components, answer behaviour, tool use and
/// the longest response.
///
/// Each chart is a `<figure class="plot" id="plot-NAME">` (the names are [`Report::PLOTS`]),
/// and is also saved as `plots/NAME.png` beside the page.
#[derive(Debug, Clone, Default)]
pub struct Report {
    title: String,
    history: Vec<StepMetrics>,
    alarms: Vec<Alarm>,
    resumptions: Vec<Resumption>,
}

impl Report {
    /// The charts, in page order.
    pub const PLOTS: [&'static str; 6] = [
        "reward_vs_tsr",
        "turns",
        "components",
        "behaviour",
        "tool_calls",
        "response_tokens",
    ];

    /// A report titled `title`.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// The run's metrics, one record per step.
    #[must_use]
    pub fn history(mut self, history: &[StepMetrics]) -> Self {
        self.history = history.to_vec();
        self.history.sort_by_key(|m| m.step);
        self
    }

    /// Where the run was resumed (from [`read_metrics_log`](super::read_metrics_log)), said on
    /// the page so that replaced steps are not a silent edit.
    #[must_use]
    pub fn resumptions(mut self, resumptions: &[Resumption]) -> Self {
        self.resumptions = resumptions.to_vec();
        self
    }

    /// The alarms to list (for example [`HackingAlarm::scan`](super::HackingAlarm::scan)).
    #[must_use]
    pub fn alarms(mut self, alarms: Vec<Alarm>) -> Self {
        self.alarms = alarms;
        self
    }

    /// Writes `report.html` and `plots/*.png` into `dir`, creating it.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be written, [`Error::Plot`] when a chart cannot be drawn.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<ReportFiles, Error> {
        let dir = dir.as_ref();
        let plots_dir = dir.join("plots");
        std::fs::create_dir_all(&plots_dir).map_err(|e| Error::io(&plots_dir, e))?;
        let mut figures = String::new();
        let mut pngs = Vec::new();
        for (name, (chart, caption)) in Self::PLOTS.iter().zip(self.charts()) {
            let png = plots_dir.join(format!("{name}.png"));
            chart.png(&png)?;
            let _ = writeln!(
                figures,
                "<figure class=\"plot\" id=\"plot-{name}\">{svg}<figcaption>{caption} \
                 <a href=\"plots/{name}.png\">PNG</a></figcaption></figure>",
                svg = chart.svg()?,
                caption = escape(&caption),
            );
            pngs.push(png);
        }
        let html = dir.join("report.html");
        let page = self.page(&figures);
        std::fs::write(&html, page).map_err(|e| Error::io(&html, e))?;
        Ok(ReportFiles { html, pngs })
    }

    fn series(&self, metric: &str) -> Vec<(f64, f64)> {
        self.history
            .iter()
            .filter_map(|m| m.get(metric).map(|v| (m.step as f64, v)))
            .collect()
    }

    fn line(&self, label: &str, metric: &str) -> Option<Series> {
        let points = self.series(metric);
        (!points.is_empty()).then(|| Series {
            label: label.to_string(),
            points,
            markers: metric.starts_with("val/"),
            dashed: false,
        })
    }

    fn charts(&self) -> Vec<(Chart, String)> {
        let mut reward = vec![
            self.line("training reward (rollout/reward/mean)", names::REWARD_MEAN),
            self.line("validation TSR (val/tsr)", names::VAL_TSR),
        ];
        if let Some(mut s) = self.line("rollout TSR, strict (rollout/tsr)", names::TSR) {
            s.dashed = true;
            reward.push(Some(s));
        }
        reward.push(self.line(
            "validation reward (val/reward/mean)",
            names::VAL_REWARD_MEAN,
        ));
        if let Some(mut s) = self.line(
            "reward of the groups that teach (rollout/reward/valid_mean)",
            names::REWARD_VALID_MEAN,
        ) {
            s.dashed = true;
            reward.push(Some(s));
        }
        let reward = LineChart {
            title: "Reward against strict success".into(),
            y_label: "value".into(),
            series: reward.into_iter().flatten().collect(),
            y_floor: Some((0.0, 1.0)),
        };

        let components: BTreeSet<&str> = self
            .history
            .iter()
            .flat_map(|m| m.values.keys())
            .filter_map(|k| k.strip_prefix(names::REWARD_COMPONENT_PREFIX))
            .collect();
        let components = LineChart {
            title: "Reward components (means per step)".into(),
            y_label: "component value".into(),
            series: components
                .iter()
                .filter_map(|c| self.line(c, &names::reward_component(c)))
                .collect(),
            y_floor: Some((0.0, 1.0)),
        };

        let behaviour = LineChart {
            title: "Answer behaviour".into(),
            y_label: "share of episodes".into(),
            series: [
                ("strict format (rollout/format_frac)", names::FORMAT_FRAC),
                (
                    "answered early (rollout/answer_early_frac)",
                    names::ANSWER_EARLY_FRAC,
                ),
                (
                    "answered without tools (rollout/answer_no_tool_frac)",
                    names::ANSWER_NO_TOOL_FRAC,
                ),
                ("truncated (rollout/truncated_frac)", names::TRUNCATED_FRAC),
                (
                    "hit max turns (rollout/max_turns_frac)",
                    names::MAX_TURNS_FRAC,
                ),
                (
                    "zero-advantage groups (analysis/zero_adv_groups)",
                    names::ZERO_ADV_GROUPS,
                ),
            ]
            .into_iter()
            .filter_map(|(label, m)| self.line(label, m))
            .collect(),
            y_floor: Some((0.0, 1.0)),
        };

        let tools = LineChart {
            title: "Tool use per episode".into(),
            y_label: "per episode".into(),
            series: [
                (
                    "tool calls (rollout/tool_calls/mean)",
                    names::TOOL_CALLS_MEAN,
                ),
                ("turns (rollout/turns/mean)", names::TURNS_MEAN),
            ]
            .into_iter()
            .filter_map(|(label, m)| self.line(label, m))
            .collect(),
            y_floor: Some((0.0, 1.0)),
        };

        let response = LineChart {
            title: "Longest response per step".into(),
            y_label: "tokens".into(),
            series: self
                .line(
                    "longest response (rollout/tokens/response_max)",
                    names::RESPONSE_TOKENS_MAX,
                )
                .into_iter()
                .collect(),
            y_floor: Some((0.0, 1.0)),
        };

        vec![
            (
                Chart::Lines(reward),
                "Training reward beside the strict evaluator's task success rate. A reward that \
                 climbs while TSR stays flat is the signature of reward hacking. The dashed \
                 valid mean is the reward over the groups with a learning signal: when it drifts \
                 below the mean, the groups that could teach are failing and training stalls \
                 (denser rewards are the cure)."
                    .into(),
            ),
            (
                Chart::Bars(self.turns_chart()),
                "Turns per episode: share of episodes, first half of the run against the second."
                    .into(),
            ),
            (
                Chart::Lines(components),
                "Each reward component's mean, logged on its own.".into(),
            ),
            (
                Chart::Lines(behaviour),
                "How episodes end: format rate, early answers, truncation and the turn limit."
                    .into(),
            ),
            (
                Chart::Lines(tools),
                "Tool calls and turns per episode; a blow-up means tool spam.".into(),
            ),
            (
                Chart::Lines(response),
                "The longest response of each step. When it sits at the sampling limit and more \
                 than 5% of rollouts are truncated (the answer behaviour chart), raise the limit."
                    .into(),
            ),
        ]
    }

    fn turns_chart(&self) -> BarChart {
        let with_turns: Vec<&StepMetrics> = self
            .history
            .iter()
            .filter(|m| !m.turns.is_empty())
            .collect();
        let half = with_turns.len().div_ceil(2);
        let share = |steps: &[&StepMetrics]| {
            let width = steps.iter().map(|m| m.turns.len()).max().unwrap_or(0);
            let mut counts = vec![0usize; width];
            for m in steps {
                for (t, c) in m.turns.iter().enumerate() {
                    counts[t] += c;
                }
            }
            let total = counts.iter().sum::<usize>().max(1) as f64;
            counts
                .into_iter()
                .map(|c| c as f64 / total)
                .collect::<Vec<_>>()
        };
        let mut groups = Vec::new();
        let (first, second) = with_turns.split_at(half);
        let label = |steps: &[&StepMetrics], which: &str| match (steps.first(), steps.last()) {
            (Some(a), Some(b)) => format!("{which} (steps {}–{})", a.step, b.step),
            _ => which.to_string(),
        };
        if !first.is_empty() {
            groups.push((label(first, "first half"), share(first)));
        }
        if !second.is_empty() {
            groups.push((label(second, "second half"), share(second)));
        }
        BarChart {
            title: "Turns per episode".into(),
            x_label: "turns".into(),
            groups,
        }
    }

    fn page(&self, figures: &str) -> String {
        let mut rows = String::new();
        let metrics: BTreeSet<&str> = self
            .history
            .iter()
            .flat_map(|m| m.values.keys().map(String::as_str))
            .collect();
        for name in metrics {
            let series = self.series(name);
            let (Some(first), Some(last)) = (series.first(), series.last()) else {
                continue;
            };
            let lo = series.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = series.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                rows,
                "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                escape(name),
                first.1,
                last.1,
                lo,
                hi
            );
        }
        let alarms = if self.alarms.is_empty() {
            "<p class=\"ok\">No reward-hacking or collapse alarm.</p>".to_string()
        } else {
            let mut s = String::from("<ul class=\"alarms\">");
            for a in &self.alarms {
                let evidence: Vec<String> = a
                    .evidence
                    .iter()
                    .map(|(k, v)| format!("{k} = {v:.3}"))
                    .collect();
                let _ = write!(
                    s,
                    "<li><b>{}</b> at step {}: {}<br><small>{}</small></li>",
                    a.kind.as_str(),
                    a.step,
                    escape(&a.message),
                    escape(&evidence.join(", "))
                );
            }
            s.push_str("</ul>");
            s
        };
        let mut steps = match (self.history.first(), self.history.last()) {
            (Some(a), Some(b)) => format!("{} steps ({}–{})", self.history.len(), a.step, b.step),
            _ => "<b class=\"empty\">No steps: the run recorded none (its metrics are empty), \
                  so there is nothing to chart.</b>"
                .into(),
        };
        for r in &self.resumptions {
            let _ = write!(
                steps,
                "<br><span class=\"resumed\">The run was {}.</span>",
                escape(&r.to_string())
            );
        }
        let (w, h) = SIZE;
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{title}</title>\n<style>\n\
             body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fff; }}\n\
             .plots {{ display: flex; flex-wrap: wrap; gap: 16px; }}\n\
             figure.plot {{ margin: 0; width: {w}px; }}\n\
             figure.plot svg {{ display: block; width: {w}px; height: {h}px; }}\n\
             figcaption {{ font-size: 13px; color: #555; margin-top: 4px; }}\n\
             table {{ border-collapse: collapse; font-size: 13px; margin-top: 16px; }}\n\
             td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}\n\
             td:first-child, th:first-child {{ text-align: left; font-family: monospace; }}\n\
             .alarms li {{ color: #a40000; margin-bottom: 6px; }} .ok {{ color: #2a7a2a; }}\n\
             </style>\n</head>\n<body>\n<h1>{title}</h1>\n<p>{steps}</p>\n\
             <h2>Alarms</h2>\n{alarms}\n<h2>Charts</h2>\n<div class=\"plots\">\n{figures}</div>\n\
             <h2>Metrics</h2>\n<table>\n<tr><th>metric</th><th>first</th><th>last</th><th>min</th>\
             <th>max</th></tr>\n{rows}</table>\n</body>\n</html>\n",
            title = escape(&self.title),
        )
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
