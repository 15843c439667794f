//! Auditing SOP-Bench domains: a scripted agent that calls every advertised tool with the task
//! row's canonical arguments, run through [`crate::audit::Audit`].

use std::collections::HashMap;

use mtrl_core::{Action, Agent, Message, Role, ToolCall, ToolSpec, TurnContext, async_trait};
use serde_json::{Map, Value, json};

use super::{Diagnostic, Domain, InputPolicy, Mode};
use crate::audit::{Audit, AuditReport, Check, Finding};
use crate::bindings::table::NA_TOKENS;
use crate::bindings::{Py, literal_eval};
use crate::error::Result;

/// Arguments with no same-named column, as SOP-Bench's canonical calls bind them
/// (`TOOL_BINDINGS.md` §9): a column to read instead, or a fixed value.
const BOUND_ELSEWHERE: [(&str, &str, Fixed); 13] = [
    (
        "warehouse_package_inspection",
        "current_status",
        Fixed::Text("Pending"),
    ),
    (
        "warehouse_package_inspection",
        "charge_amount",
        Fixed::Column("charge_back_amt"),
    ),
    (
        "video_classification",
        "transcript",
        Fixed::Text("transcript not available"),
    ),
    (
        "video_classification",
        "content_flags",
        Fixed::Column("detected_categories"),
    ),
    (
        "video_classification",
        "detected_issues",
        Fixed::Column("detected_categories"),
    ),
    (
        "email_intent",
        "current_price",
        Fixed::Column("listing_price"),
    ),
    (
        "email_intent",
        "email_intent",
        Fixed::Column("seller_intent"),
    ),
    (
        "email_intent",
        "listing_status",
        Fixed::Column("listing_status_details"),
    ),
    (
        "email_intent",
        "s3_url",
        Fixed::Text("s3://sop-bench-products/images/product.jpg"),
    ),
    ("email_intent", "seller_id", Fixed::Text("S0001")),
    (
        "email_intent",
        "email_subject",
        Fixed::Text("Listing question"),
    ),
    ("email_intent", "seller_tier", Fixed::Text("standard")),
    ("email_intent", "account_status", Fixed::Text("active")),
];

#[derive(Debug, Clone, Copy)]
enum Fixed {
    Text(&'static str),
    Column(&'static str),
}

/// A scripted agent for audits: on turn `i` it calls the `i`-th advertised tool with the
/// task's canonical arguments, then answers. An argument takes the same-named column of the
/// task's row (converted to the schema's type), else the same-named field of an earlier tool
/// result in the episode, else SOP-Bench's documented binding. It reads the whole labelled row:
/// it is a test harness, not a policy.
pub struct CanonicalAgent {
    domain: String,
    tools: Vec<ToolSpec>,
    rows: HashMap<String, HashMap<String, String>>,
    /// The output columns to answer with, for an oracle; `None`: an empty answer.
    answers: Option<Vec<String>>,
}

impl CanonicalAgent {
    /// The script for a domain's tasks (ids `<domain>:<row>`).
    pub fn new(domain: &Domain) -> Self {
        let rows = domain.rows_by_task();
        Self {
            domain: domain.name.clone(),
            tools: domain.tools.clone(),
            rows,
            answers: None,
        }
    }

    /// The same script, answering at the end with the task's labelled outputs in the strict
    /// `<final_output>` format instead of an empty answer: an oracle, whose episodes succeed
    /// under the strict evaluator. It reads the labels, so it serves for demonstrations (an
    /// SFT warm start) and tests, never as a baseline.
    #[must_use]
    pub fn answering(mut self, domain: &Domain) -> Self {
        self.answers = Some(domain.output_columns.clone());
        self
    }

    /// The canonical arguments of `tool` for a row, given the earlier tool results.
    pub fn arguments(
        &self,
        tool: &ToolSpec,
        row: &HashMap<String, String>,
        earlier: &[Value],
    ) -> Map<String, Value> {
        let schema = tool.parameters();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut args = Map::new();
        let Some(props) = schema["properties"].as_object() else {
            return args;
        };
        for (name, prop) in props {
            let kind = prop["type"].as_str().unwrap_or("string");
            let fixed = BOUND_ELSEWHERE
                .iter()
                .find(|(d, p, _)| *d == self.domain && p == name)
                .map(|(_, _, f)| *f);
            let cell = row.get(name).map(String::as_str).or(match fixed {
                Some(Fixed::Column(c)) => row.get(c).map(String::as_str),
                _ => None,
            });
            let value = match cell {
                Some(text) if NA_TOKENS.contains(&text) => Value::Null,
                Some(text) => convert(text, kind),
                None => match (earlier.iter().rev().find_map(|r| r.get(name)), fixed) {
                    (Some(v), _) => v.clone(),
                    (None, Some(Fixed::Text(t))) => convert(t, kind),
                    _ => continue,
                },
            };
            if value.is_null() && !required.contains(&name.as_str()) {
                continue;
            }
            args.insert(name.clone(), value);
        }
        args
    }
}

fn convert(text: &str, kind: &str) -> Value {
    match kind {
        "number" | "integer" => {
            if let Ok(i) = text.trim().parse::<i64>() {
                json!(i)
            } else if let Ok(f) = text.trim().parse::<f64>() {
                json!(f)
            } else {
                json!(text)
            }
        }
        "boolean" => match text {
            "True" | "TRUE" | "true" => json!(true),
            "False" | "FALSE" | "false" => json!(false),
            _ => json!(text),
        },
        "array" => {
            if text.trim_start().starts_with('[') {
                if let Ok(v) = literal_eval(text) {
                    return py_to_json(&v);
                }
            }
            Value::Array(text.split(',').map(|s| json!(s.trim())).collect())
        }
        _ => json!(text),
    }
}

fn py_to_json(v: &Py) -> Value {
    match v {
        Py::None => Value::Null,
        Py::Bool(b) | Py::NpBool(b) => json!(b),
        Py::Int(i) | Py::NpInt(i) => json!(i),
        Py::Float(f) | Py::NpFloat(f) => json!(f),
        Py::Str(s) => json!(&**s),
        Py::List(x) | Py::Tuple(x) => x.iter().map(py_to_json).collect(),
        Py::Dict(d) => Value::Object(d.iter().map(|(k, v)| (k.py_str(), py_to_json(v))).collect()),
    }
}

#[async_trait]
impl Agent for CanonicalAgent {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let i = ctx.turn_index();
        let Some(tool) = self.tools.get(i) else {
            let answer: Map<String, Value> = match &self.answers {
                Some(columns) => {
                    let row = self.rows.get(ctx.task.id());
                    columns
                        .iter()
                        .map(|c| {
                            let v = row.and_then(|r| r.get(c)).cloned().unwrap_or_default();
                            (c.clone(), Value::String(v))
                        })
                        .collect()
                }
                None => Map::new(),
            };
            return Ok(Action::new(Message::assistant(format!(
                "<final_output>{}</final_output>",
                Value::Object(answer)
            ))));
        };
        let row = self.rows.get(ctx.task.id()).cloned().unwrap_or_default();
        let earlier: Vec<Value> = ctx
            .messages
            .iter()
            .filter(|m| m.role == Role::Tool)
            .filter_map(|m| serde_json::from_str(&m.content).ok())
            .collect();
        let args = self.arguments(tool, &row, &earlier);
        let call = ToolCall::new(format!("call-{i}"), tool.name(), &Value::Object(args));
        Ok(Action::new(Message::assistant_with_calls("", vec![call])))
    }
}

/// Which configuration of a domain to audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// As upstream ships it: upstream's task inputs, upstream's tool behaviour (parity mode).
    #[default]
    Upstream,
    /// As mtrl trains on it: mtrl's input policy, strict mode.
    Mtrl,
}

/// Audits one SOP-Bench domain.
///
/// Where upstream's loader cannot build tasks (no input columns and no legacy output column),
/// the finding says so and the other checks run on mtrl's derived tasks.
///
/// # Errors
/// [`crate::Error::InvalidSchema`] when the environment cannot be built.
pub async fn audit_domain(domain: &Domain, target: Target) -> Result<AuditReport> {
    let (policy, mode) = match target {
        Target::Upstream => (InputPolicy::Upstream, Mode::Parity),
        Target::Mtrl => (InputPolicy::Mtrl, Mode::Strict),
    };
    let mut extra = Vec::new();
    let tasks = match domain.tasks(policy) {
        Ok(t) => t,
        Err(e) => {
            extra.push(Finding {
                check: Check::MissingInputColumns,
                summary: "upstream cannot build tasks: metadata.json lists no input columns".into(),
                evidence: vec![e.to_string()],
            });
            domain.tasks(InputPolicy::Mtrl)?
        }
    };
    if extra.is_empty()
        && target == Target::Upstream
        && domain
            .diagnostics()
            .contains(&Diagnostic::MissingInputColumns)
    {
        extra.push(Finding {
            check: Check::MissingInputColumns,
            summary: "metadata.json lists no input columns: upstream shows the whole row".into(),
            evidence: vec![format!(
                "{} columns shown, outputs included: {}",
                domain.header.len(),
                domain.output_columns.join(", ")
            )],
        });
    }
    let factory = domain.environment(mode)?;
    let agent = CanonicalAgent::new(domain);
    let mut report = Audit::new(domain.name())
        .max_turns(domain.tools().len() + 2)
        .run(&factory, &agent, &tasks)
        .await;
    // Name the source behind each seed-dependent tool.
    if let Some(f) = report
        .findings
        .iter_mut()
        .find(|f| f.check == Check::SeedDependence)
    {
        let mut causes = std::collections::BTreeSet::new();
        for t in domain.bindings().tools() {
            if f.summary.contains(t.name()) {
                let u = t.uses();
                if u.random {
                    causes.insert("random");
                }
                if u.clock {
                    causes.insert("clock");
                }
                if u.uuid {
                    causes.insert("uuid");
                }
            }
        }
        if !causes.is_empty() {
            f.summary = format!(
                "{} (source: {})",
                f.summary,
                causes.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    for f in extra {
        report.push(f);
    }
    Ok(report)
}
