//! Environment audits: determinism, seed-dependence, answer leaks, schema fidelity and tool
//! coverage, checked on any [`EnvironmentFactory`] with a scripted agent.
//!
//! ```
//! # use mtrl_core::*;
//! # use mtrl_env::{tool_fn, ToolContext, ToolEnvironmentBuilder, ToolOutput};
//! # use serde_json::json;
//! # struct Script;
//! # #[async_trait]
//! # impl Agent for Script {
//! #     async fn act(&self, ctx: &TurnContext<'_>) -> Result<Action> {
//! #         Ok(Action::new(if ctx.turn_index() == 0 {
//! #             Message::assistant_with_calls("", vec![ToolCall::new("c", "roll", &json!({}))])
//! #         } else { Message::assistant("done") }))
//! #     }
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let roll = tool_fn(ToolSpec::new("roll", "Rolls a die.", json!({"type": "object"}))?,
//!     |_, cx: &mut ToolContext<'_, ()>| ToolOutput::json(&json!(cx.sources.next_u64() % 6)));
//! let envs = ToolEnvironmentBuilder::new().tool(roll).build().unwrap();
//! let tasks = vec![Task::new("t", json!({}), json!({"answer": "4"}))?];
//! let report = mtrl_env::audit::Audit::new("dice")
//!     .run(&envs, &Script, &tasks)
//!     .await;
//! assert!(report.flagged(mtrl_env::audit::Check::SeedDependence));
//! assert!(!report.flagged(mtrl_env::audit::Check::Determinism));
//! # Ok::<(), mtrl_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};

use mtrl_core::{
    Agent, EnvironmentFactory, Episode, Limits, Role, RolloutDriver, Task, Trajectory,
};
use serde::Serialize;

/// What an audit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The same task, script and seed give different transcripts.
    Determinism,
    /// Tool outputs change with the episode seed (randomness, clock or uuids).
    SeedDependence,
    /// An input field shown to the agent carries an answer field.
    AnswerLeak,
    /// Advertised tools that are not served, or served tools that are not advertised.
    SchemaMismatch,
    /// Advertised tools that never succeed on any task.
    ToolCoverage,
    /// The task inputs are not declared upstream (reported by the caller).
    MissingInputColumns,
}

impl Check {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Determinism => "determinism",
            Check::SeedDependence => "seed_dependence",
            Check::AnswerLeak => "answer_leak",
            Check::SchemaMismatch => "schema_mismatch",
            Check::ToolCoverage => "tool_coverage",
            Check::MissingInputColumns => "missing_input_columns",
        }
    }
}

/// One flag, with the rows that prove it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The check that flagged.
    pub check: Check,
    /// One line: what is wrong.
    pub summary: String,
    /// Concrete cases (task ids, tools, values).
    pub evidence: Vec<String>,
}

/// The outcome of an audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditReport {
    /// What was audited.
    pub name: String,
    /// How many tasks were run.
    pub tasks: usize,
    /// How many tool calls were made per run.
    pub tool_calls: usize,
    /// The flags; empty when the environment passed.
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// Whether a check flagged.
    pub fn flagged(&self, check: Check) -> bool {
        self.findings.iter().any(|f| f.check == check)
    }

    /// Adds a finding found by the caller (for instance from dataset metadata).
    pub fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
        self.findings.sort_by_key(|f| f.check);
    }
}

/// An audit to run: what to call it, the seeds, and the turn limit.
///
/// The tools the environment serves come from the factory
/// ([`EnvironmentFactory::served_tools`]); a factory that cannot name them skips the schema check.
#[derive(Debug, Clone)]
pub struct Audit {
    name: String,
    seeds: (u64, u64),
    max_turns: usize,
    evidence: usize,
}

impl Audit {
    /// An audit named `name`, with seeds 1 and 2.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            seeds: (1, 2),
            max_turns: 64,
            evidence: 5,
        }
    }

    /// The two episode seeds compared for seed-dependence.
    #[must_use]
    pub fn seeds(mut self, a: u64, b: u64) -> Self {
        self.seeds = (a, b);
        self
    }

    /// The turn limit of each scripted episode (64 by default).
    #[must_use]
    pub fn max_turns(mut self, n: usize) -> Self {
        self.max_turns = n;
        self
    }

    /// Runs every task three times with the scripted `agent` (seed a, seed a again, seed b)
    /// and checks the transcripts.
    pub async fn run<F, A>(&self, factory: &F, agent: &A, tasks: &[Task]) -> AuditReport
    where
        F: EnvironmentFactory + ?Sized,
        A: Agent + ?Sized,
    {
        let driver = RolloutDriver::new(Limits {
            max_turns: self.max_turns,
            ..Limits::default()
        });
        let episode = |seed| Episode { index: 0, seed };
        let mut findings = Vec::new();
        let mut nondeterministic = Vec::new();
        let mut seed_dependent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut succeeded: BTreeSet<String> = BTreeSet::new();
        let mut first_failure: BTreeMap<String, String> = BTreeMap::new();
        let mut advertised: BTreeSet<String> = BTreeSet::new();
        let mut tool_calls = 0;
        for task in tasks {
            let a = driver
                .run_with(agent, factory, task, episode(self.seeds.0))
                .await;
            let a2 = driver
                .run_with(agent, factory, task, episode(self.seeds.0))
                .await;
            let b = driver
                .run_with(agent, factory, task, episode(self.seeds.1))
                .await;
            advertised.extend(a.tools.iter().map(|t| t.name().to_string()));
            tool_calls += a.tool_calls();
            succeeded.extend(successful_tools(&a));
            for (tool, text) in failed_calls(&a) {
                first_failure
                    .entry(tool)
                    .or_insert_with(|| format!("{}: {text:.240}", task.id()));
            }
            if transcript(&a) != transcript(&a2) {
                nondeterministic.push(format!("{}: {}", task.id(), first_difference(&a, &a2)));
            }
            for (tool, diff) in tool_differences(&a, &b) {
                seed_dependent
                    .entry(tool)
                    .or_default()
                    .push(format!("{}: {diff}", task.id()));
            }
        }
        if !nondeterministic.is_empty() {
            findings.push(Finding {
                check: Check::Determinism,
                summary: format!(
                    "{} of {} tasks give different transcripts with the same seed",
                    nondeterministic.len(),
                    tasks.len()
                ),
                evidence: nondeterministic.into_iter().take(self.evidence).collect(),
            });
        }
        if !seed_dependent.is_empty() {
            let tools: Vec<&str> = seed_dependent.keys().map(String::as_str).collect();
            findings.push(Finding {
                check: Check::SeedDependence,
                summary: format!("outputs change with the episode seed: {}", tools.join(", ")),
                evidence: seed_dependent
                    .iter()
                    .flat_map(|(tool, cases)| {
                        cases.iter().take(2).map(move |c| format!("{tool} on {c}"))
                    })
                    .take(self.evidence)
                    .collect(),
            });
        }
        if let Some(leak) = answer_leak(tasks, self.evidence) {
            findings.push(leak);
        }
        if let Some(served) = factory.served_tools() {
            let served: BTreeSet<String> = served.into_iter().collect();
            let not_served: Vec<&String> = advertised.difference(&served).collect();
            let not_advertised: Vec<&String> = served.difference(&advertised).collect();
            if !not_served.is_empty() || !not_advertised.is_empty() {
                let mut evidence = Vec::new();
                if !not_served.is_empty() {
                    evidence.push(format!("advertised, not served: {}", join(&not_served)));
                }
                if !not_advertised.is_empty() {
                    evidence.push(format!("served, not advertised: {}", join(&not_advertised)));
                }
                findings.push(Finding {
                    check: Check::SchemaMismatch,
                    summary: format!(
                        "{} advertised tools are not served, {} served tools are not advertised",
                        not_served.len(),
                        not_advertised.len()
                    ),
                    evidence,
                });
            }
        }
        let never: Vec<&String> = advertised.difference(&succeeded).collect();
        if !never.is_empty() && !tasks.is_empty() {
            findings.push(Finding {
                check: Check::ToolCoverage,
                summary: format!(
                    "{} advertised tools never succeed on any of {} tasks",
                    never.len(),
                    tasks.len()
                ),
                evidence: never
                    .iter()
                    .map(|t| match first_failure.get(*t) {
                        Some(f) => format!("{t} fails, e.g. {f}"),
                        None => format!("{t} is never called"),
                    })
                    .take(self.evidence.max(never.len()))
                    .collect(),
            });
        }
        findings.sort_by_key(|f| f.check);
        AuditReport {
            name: self.name.clone(),
            tasks: tasks.len(),
            tool_calls,
            findings,
        }
    }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a transcript is for comparison: every message, each step's `info` (tool results,
/// faults, truncations), the reset's metadata, the stop reason, the error and the outcome:
/// everything a reward or an evaluator reads.
#[derive(PartialEq)]
struct Transcript<'t> {
    messages: Vec<mtrl_core::Message>,
    infos: Vec<&'t serde_json::Map<String, serde_json::Value>>,
    metadata: &'t serde_json::Map<String, serde_json::Value>,
    stop: mtrl_core::StopReason,
    error: Option<&'t str>,
    outcome: Option<&'t serde_json::Value>,
}

fn transcript(t: &Trajectory) -> Transcript<'_> {
    Transcript {
        messages: t.messages(),
        infos: t.turns.iter().map(|turn| &turn.info).collect(),
        metadata: &t.metadata,
        stop: t.stop,
        error: t.error.as_ref().map(|e| e.message.as_str()),
        outcome: t.outcome.as_ref(),
    }
}

fn first_difference(a: &Trajectory, b: &Trajectory) -> String {
    let (ma, mb) = (a.messages(), b.messages());
    for (i, (x, y)) in ma.iter().zip(&mb).enumerate() {
        if x != y {
            return format!(
                "message {i} differs: {:.120} vs {:.120}",
                x.content, y.content
            );
        }
    }
    if ma.len() == mb.len() && a.stop == b.stop {
        for (i, (x, y)) in a.turns.iter().zip(&b.turns).enumerate() {
            if x.info != y.info {
                return format!(
                    "turn {i}'s info differs: {:.120} vs {:.120}",
                    serde_json::Value::Object(x.info.clone()).to_string(),
                    serde_json::Value::Object(y.info.clone()).to_string()
                );
            }
        }
        if a.metadata != b.metadata {
            return "the reset's metadata differ".into();
        }
        if a.outcome != b.outcome {
            return format!(
                "the outcome differs: {:.120} vs {:.120}",
                a.outcome
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                b.outcome
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
        }
    }
    format!(
        "{} vs {} messages, stopped {} vs {}",
        ma.len(),
        mb.len(),
        a.stop,
        b.stop
    )
}

/// Tool results that differ between two runs, by tool.
fn tool_differences(a: &Trajectory, b: &Trajectory) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (ta, tb) in a.turns.iter().zip(&b.turns) {
        for (oa, ob) in ta.observations.iter().zip(&tb.observations) {
            if oa.role == Role::Tool && oa.content != ob.content {
                let tool = oa.name.clone().unwrap_or_default();
                out.push((tool, format!("{:.100} vs {:.100}", oa.content, ob.content)));
            }
        }
    }
    out
}

/// The tools whose calls succeeded, from the steps' tool results.
fn successful_tools(t: &Trajectory) -> BTreeSet<String> {
    t.turns
        .iter()
        .flat_map(|turn| turn.tool_results().unwrap_or_default())
        .filter(|r| r.ok)
        .map(|r| r.tool)
        .collect()
}

/// The tool calls that failed, with the text the agent read.
fn failed_calls(t: &Trajectory) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for turn in &t.turns {
        for r in turn.tool_results().unwrap_or_default() {
            if !r.ok {
                let text = turn
                    .observations
                    .iter()
                    .find(|m| m.tool_call_id.as_deref() == Some(r.call_id.as_str()))
                    .map(|m| m.content.clone())
                    .unwrap_or_default();
                out.push((r.tool, text));
            }
        }
    }
    out
}

/// An input field that carries an answer field: equal on at least 95% of the tasks where the
/// answer is not blank (a copy of the column, not a coincidence).
fn answer_leak(tasks: &[Task], evidence: usize) -> Option<Finding> {
    let mut hits: BTreeMap<(String, String), (usize, usize, Vec<String>)> = BTreeMap::new();
    for task in tasks {
        let Some(truth) = task.ground_truth().as_object() else {
            continue;
        };
        for (field, answer) in truth {
            if answer.is_null() || answer.as_str() == Some("") {
                continue;
            }
            for (input, value) in task.inputs() {
                let entry =
                    hits.entry((input.clone(), field.clone()))
                        .or_insert((0, 0, Vec::new()));
                entry.1 += 1;
                if value == answer {
                    entry.0 += 1;
                    if entry.2.len() < evidence {
                        entry.2.push(format!("{}: {input} = {answer}", task.id()));
                    }
                }
            }
        }
    }
    let leaks: Vec<_> = hits
        .into_iter()
        .filter(|(_, (same, seen, _))| *seen > 0 && *same * 100 >= *seen * 95)
        .collect();
    if leaks.is_empty() {
        return None;
    }
    let summary = leaks
        .iter()
        .map(|((input, field), (same, seen, _))| {
            format!("input `{input}` equals answer `{field}` on {same} of {seen} tasks")
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some(Finding {
        check: Check::AnswerLeak,
        summary,
        evidence: leaks
            .into_iter()
            .flat_map(|(_, (_, _, e))| e)
            .take(evidence)
            .collect(),
    })
}
