//! SOP-Bench (Amazon Science): 14 domains of standard operating procedures, each with tool
//! specs, a labelled task table and simulated tools.
//!
//! mtrl reads upstream's files from a [`Source`] (a local directory, `MTRL_SOP_BENCH_DIR`, or
//! the hub dataset `amazon/sop-bench`) and serves the tools from the bindings it ships (see
//! `sop-bench/README.md` in this crate: they are CC BY-NC 4.0, like SOP-Bench).
//!
//! ```no_run
//! use mtrl_env::sop_bench::{Domain, InputPolicy, Mode, Source, Splits};
//! let domain = Domain::load(&Source::from_env(), "customer_service")?;
//! let tasks = domain.tasks(InputPolicy::Mtrl)?;
//! let splits = Splits::stratified(&tasks, 7, [0.6, 0.2, 0.2]);
//! let envs = domain.environment(Mode::Strict)?; // an EnvironmentFactory
//! # Ok::<(), mtrl_env::Error>(())
//! ```

mod audit;
mod parity;
mod release;
mod source;
mod splits;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mtrl_core::{Message, Task, ToolSpec};
use serde_json::{Map, Value, json};

pub use audit::{CanonicalAgent, Target, audit_domain};
pub use parity::{ParityEnvironment, ParityFactory};
pub use release::RELEASE_COMMIT;
pub use source::{DIR_ENV, HUB_DATASET, HubSource, Source};
pub use splits::Splits;

use crate::bindings::{BindingTool, Bindings, WireStyle};
use crate::error::{Error, Result};
use crate::tool_env::{ToolEnvironmentBuilder, ToolEnvironmentFactory, Validation};

macro_rules! domains {
    ($($d:literal),* $(,)?) => {
        /// The 14 domains of SOP-Bench, in alphabetical order.
        pub const DOMAINS: [&str; 14] = [$($d),*];

        /// The tool bindings mtrl ships for a domain (`sop-bench/<domain>/tool_bindings.json`).
        pub fn shipped_binding(domain: &str) -> Option<&'static str> {
            match domain {
                $($d => Some(include_str!(concat!("../../sop-bench/", $d, "/tool_bindings.json"))),)*
                _ => None,
            }
        }
    };
}

domains!(
    "aircraft_inspection",
    "content_flagging",
    "customer_service",
    "dangerous_goods",
    "email_intent",
    "know_your_business",
    "order_fulfillment",
    "patient_intake",
    "referral_abuse_detection_v1",
    "referral_abuse_detection_v2",
    "traffic_spoofing_detection",
    "video_annotation",
    "video_classification",
    "warehouse_package_inspection",
);

/// The domains whose upstream `LICENSE.md` forbids facilitating model training. mtrl knows
/// them without the file, so that a partial download never makes one look trainable; a domain
/// that ships a `LICENSE.md` is evaluation-only too.
pub const EVALUATION_ONLY: [&str; 8] = [
    "aircraft_inspection",
    "content_flagging",
    "dangerous_goods",
    "email_intent",
    "know_your_business",
    "patient_intake",
    "video_annotation",
    "video_classification",
];

/// mtrl's task inputs for the domains whose `metadata.json` lists no input columns.
///
/// The policy: the table columns that an advertised tool takes as an argument, minus the output
/// columns, minus the columns that an advertised tool computes (content_flagging's
/// `user_trust_score` and `content_severity_index`, warehouse's `charge_back_amt`), plus the
/// row's identifier. A test checks each list against that rule and against the data: no listed
/// column is an output, and no listed value equals the task's answer.
pub const DERIVED_INPUTS: [(&str, &[&str]); 3] = [
    (
        "content_flagging",
        &[
            "content_id",
            "userid",
            "Latitude",
            "Longitude",
            "device_type",
            "os",
            "browser",
            "PrimaryViolationType",
            "SecondaryViolationType",
            "PrimaryViolation_Confidence",
            "SecondaryViolation_Confidence",
            "NumberofPreviousPosts",
            "CountofFlaggedPosts",
            "is_possible_bot",
            "Captcha_tries",
        ],
    ),
    (
        "order_fulfillment",
        &[
            "order_id",
            "product_id",
            "quantity_requested",
            "customer_id",
            "order_total",
            "destination_zip",
            "package_weight",
            "shipping_speed",
            "order_priority",
        ],
    ),
    (
        "warehouse_package_inspection",
        &[
            "po_number",
            "vendor_id",
            "vendor_name",
            "confirmed_product_id",
            "received_product_bar_code",
            "problem_type",
            "ordered_quantity",
            "confirmed_quantity",
            "received_quantity",
            "intended_warehouse_id",
            "actual_warehouse_id",
            "package_image_path",
            "unit_cost",
        ],
    ),
];

/// How a domain's data may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licence {
    /// The dataset licence (CC BY-NC 4.0 for all of SOP-Bench).
    pub name: &'static str,
    /// Extra conditions from the domain's `LICENSE.md`, when it has one.
    pub conditions: Option<String>,
    /// Whether the conditions forbid facilitating model training.
    pub evaluation_only: bool,
}

impl Licence {
    /// Refuses training on an evaluation-only domain unless `override_licence` is set.
    ///
    /// # Errors
    /// [`Error::EvaluationOnly`] for an evaluation-only domain without the override.
    pub fn check_training(&self, domain: &str, override_licence: bool) -> Result<()> {
        if self.evaluation_only && !override_licence {
            return Err(Error::EvaluationOnly {
                domain: domain.to_string(),
                reason:
                    "\"No one should take steps to facilitate training AI models on this data\""
                        .into(),
            });
        }
        Ok(())
    }
}

/// Something wrong with a domain as upstream ships it, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// `metadata.json` lists no input columns; mtrl uses [`DERIVED_INPUTS`].
    MissingInputColumns,
    /// Advertised tools that upstream's code does not implement.
    ToolsNotServed(Vec<String>),
    /// Tools upstream implements but does not advertise.
    ToolsNotAdvertised(Vec<String>),
    /// Upstream's own loader fails on this domain.
    LoaderFailure(String),
    /// A defect described by the shipped binding.
    UpstreamDefect(String),
    /// The task table is not the release's (see [`RELEASE_COMMIT`]): a copy cut short or
    /// edited. A warning ([`Diagnostic::is_warning`]): results on it are not comparable.
    TableNotRelease {
        /// The tasks the table holds.
        tasks: usize,
    },
}

impl Diagnostic {
    /// Whether the diagnostic is about this copy of the data rather than a known property of
    /// the release, and deserves a warning when the domain loads.
    pub fn is_warning(&self) -> bool {
        matches!(self, Diagnostic::TableNotRelease { .. })
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diagnostic::MissingInputColumns => f.write_str(
                "metadata.json lists no input columns (mtrl uses its documented derived inputs)",
            ),
            Diagnostic::ToolsNotServed(t) => {
                write!(
                    f,
                    "advertised tools not implemented upstream: {}",
                    t.join(", ")
                )
            }
            Diagnostic::ToolsNotAdvertised(t) => {
                write!(f, "implemented tools not advertised: {}", t.join(", "))
            }
            Diagnostic::LoaderFailure(why) => write!(f, "upstream's loader fails: {why}"),
            Diagnostic::UpstreamDefect(d) => write!(f, "upstream defect: {d}"),
            Diagnostic::TableNotRelease { tasks } => write!(
                f,
                "test_set_with_outputs.csv ({tasks} tasks) is not the SOP-Bench release's \
                 (upstream {}): a copy cut short or edited; results on it are not comparable",
                &RELEASE_COMMIT[..7]
            ),
        }
    }
}

/// Which inputs a task shows the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputPolicy {
    /// `metadata.json`'s input columns, or [`DERIVED_INPUTS`] where it lists none. Never an
    /// output column. The default.
    #[default]
    Mtrl,
    /// What upstream's loader does: the input columns, or the whole row (outputs included)
    /// where none are listed. For audits only.
    Upstream,
}

/// How the environment treats tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Arguments are validated against the tool specs; results are valid JSON. The default,
    /// and the mode training uses.
    #[default]
    Strict,
    /// Arguments go to the bindings as upstream passes them, and results are upstream's exact
    /// text (bare `NaN` included).
    Parity,
}

/// One loaded domain: its SOP, tools, labelled rows and licence.
#[derive(Debug, Clone)]
pub struct Domain {
    name: String,
    sop: String,
    tools: Vec<ToolSpec>,
    input_columns: Option<Vec<String>>,
    output_columns: Vec<String>,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    bindings: Arc<Bindings>,
    licence: Licence,
    diagnostics: Vec<Diagnostic>,
}

impl Domain {
    /// Loads a domain from a source, with the bindings mtrl ships for it.
    ///
    /// # Errors
    /// [`Error::Source`] for a missing file, [`Error::Binding`] or [`Error::Core`] for a file
    /// that does not parse.
    pub fn load(source: &Source, name: &str) -> Result<Self> {
        let binding = shipped_binding(name).ok_or_else(|| {
            Error::Source(format!(
                "`{name}` is not a SOP-Bench domain mtrl has bindings for"
            ))
        })?;
        Self::load_with(source, name, binding)
    }

    /// Loads a domain with the given binding JSON (a user's own, or a corrected one).
    ///
    /// # Errors
    /// As [`Domain::load`].
    pub fn load_with(source: &Source, name: &str, binding: &str) -> Result<Self> {
        let need = |file: &str| -> Result<String> {
            source
                .read(name, file)?
                .ok_or_else(|| Error::Source(format!("{name}/{file} is missing")))
        };
        let sop = need("sop.txt")?;
        let tools = ToolSpec::list_from_json(&need("toolspecs.json")?)?;
        let metadata: Value = serde_json::from_str(&need("metadata.json")?)?;
        let columns = |key: &str| -> Option<Vec<String>> {
            metadata.get(key)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
        };
        let input_columns = columns("input_columns").filter(|c| !c.is_empty());
        let output_columns = columns("output_columns").unwrap_or_default();
        if output_columns.is_empty() {
            return Err(Error::Upstream {
                domain: name.into(),
                diagnostic: "metadata.json lists no output columns".into(),
            });
        }
        let table_text = need("test_set_with_outputs.csv")?;
        let (header, rows) = read_csv(name, &table_text)?;
        for col in output_columns.iter().chain(input_columns.iter().flatten()) {
            if !header.contains(col) {
                return Err(Error::Upstream {
                    domain: name.into(),
                    diagnostic: format!(
                        "metadata.json names column `{col}`, which the table lacks"
                    ),
                });
            }
        }
        let bindings = Bindings::parse(binding, |file| {
            if file == "test_set_with_outputs.csv" {
                Ok(table_text.clone())
            } else {
                need(file)
            }
        })?;
        let conditions = source.read(name, "LICENSE.md")?;
        let evaluation_only = EVALUATION_ONLY.contains(&name)
            || conditions
                .as_deref()
                .is_some_and(|c| c.contains("facilitate training"));
        let licence = Licence {
            name: "CC BY-NC 4.0",
            conditions,
            evaluation_only,
        };
        let mut diagnostics = Vec::new();
        if release::is_release_table(name, &table_text) == Some(false) {
            diagnostics.push(Diagnostic::TableNotRelease { tasks: rows.len() });
        }
        if input_columns.is_none() {
            diagnostics.push(Diagnostic::MissingInputColumns);
            if !header
                .iter()
                .any(|h| h == "expected_output" || h == "final_decision")
            {
                diagnostics.push(Diagnostic::LoaderFailure(
                    "no input columns, and no expected_output or final_decision column for the \
                     legacy fallback: 'Row 0: Could not determine expected output'"
                        .into(),
                ));
            }
        }
        let advertised: BTreeSet<&str> = tools.iter().map(ToolSpec::name).collect();
        let implemented: BTreeSet<&str> = bindings
            .tools()
            .iter()
            .filter(|t| t.implemented())
            .map(|t| t.name())
            .collect();
        let not_served: Vec<String> = advertised
            .difference(&implemented)
            .map(|s| s.to_string())
            .collect();
        let not_advertised: Vec<String> = implemented
            .difference(&advertised)
            .map(|s| s.to_string())
            .collect();
        if !not_served.is_empty() {
            diagnostics.push(Diagnostic::ToolsNotServed(not_served));
        }
        if !not_advertised.is_empty() {
            diagnostics.push(Diagnostic::ToolsNotAdvertised(not_advertised));
        }
        diagnostics.extend(
            bindings
                .domain_defects()
                .iter()
                .map(|d| Diagnostic::UpstreamDefect(d.clone())),
        );
        Ok(Self {
            name: name.to_string(),
            sop,
            tools,
            input_columns,
            output_columns,
            header,
            rows,
            bindings: Arc::new(bindings),
            licence,
            diagnostics,
        })
    }

    /// Loads every domain the source has; a domain that fails comes back as its error.
    pub fn load_all(source: &Source) -> Vec<(String, Result<Domain>)> {
        let names = match source.domains() {
            Ok(n) => n,
            Err(e) => return vec![("*".into(), Err(e))],
        };
        names
            .into_iter()
            .map(|n| {
                let d = Domain::load(source, &n);
                (n, d)
            })
            .collect()
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SOP text.
    pub fn sop(&self) -> &str {
        &self.sop
    }

    /// The advertised tools.
    pub fn tools(&self) -> &[ToolSpec] {
        &self.tools
    }

    /// The output columns, the fields of the answer.
    pub fn output_columns(&self) -> &[String] {
        &self.output_columns
    }

    /// The input columns that `metadata.json` lists, if any.
    pub fn listed_input_columns(&self) -> Option<&[String]> {
        self.input_columns.as_deref()
    }

    /// The compiled bindings.
    pub fn bindings(&self) -> &Arc<Bindings> {
        &self.bindings
    }

    /// The licence terms.
    pub fn licence(&self) -> &Licence {
        &self.licence
    }

    /// What is wrong upstream.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Each labelled row as column → cell text, by task id (`<domain>:<row>`). For trusted
    /// harnesses (audits, scripted experts, benchmarks), never for a policy.
    pub fn rows_by_task(
        &self,
    ) -> std::collections::HashMap<String, std::collections::HashMap<String, String>> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let cells = self
                    .header
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect();
                (format!("{}:{i}", self.name), cells)
            })
            .collect()
    }

    /// The number of labelled rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the domain has no labelled rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The columns a task shows under `policy`.
    ///
    /// # Errors
    /// [`Error::Upstream`] under [`InputPolicy::Upstream`] where upstream's loader fails.
    pub fn input_columns(&self, policy: InputPolicy) -> Result<Vec<String>> {
        if let Some(cols) = &self.input_columns {
            return Ok(cols.clone());
        }
        match policy {
            InputPolicy::Mtrl => {
                let cols = DERIVED_INPUTS
                    .iter()
                    .find(|(d, _)| *d == self.name)
                    .map(|(_, c)| c.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_else(|| {
                        // A domain mtrl has no reviewed list for: the row identifier alone.
                        self.header.iter().take(1).cloned().collect()
                    });
                Ok(cols)
            }
            InputPolicy::Upstream => {
                if let Some(Diagnostic::LoaderFailure(why)) = self
                    .diagnostics
                    .iter()
                    .find(|d| matches!(d, Diagnostic::LoaderFailure(_)))
                {
                    return Err(Error::Upstream {
                        domain: self.name.clone(),
                        diagnostic: why.clone(),
                    });
                }
                Ok(self.header.clone())
            }
        }
    }

    /// One task per labelled row: the id is `<domain>:<row>` (the 0-based row, upstream's task
    /// id), the inputs are the policy's columns as text, the ground truth is the output columns
    /// as text, and the metadata holds the domain, the row and the label (the outputs joined by
    /// `|`, for stratified splits).
    ///
    /// # Errors
    /// As [`Domain::input_columns`].
    pub fn tasks(&self, policy: InputPolicy) -> Result<Vec<Task>> {
        let inputs = self.input_columns(policy)?;
        let index = |c: &str| self.header.iter().position(|h| h == c);
        let input_idx: Vec<(String, usize)> = inputs
            .iter()
            .filter_map(|c| index(c).map(|i| (c.clone(), i)))
            .collect();
        let output_idx: Vec<(String, usize)> = self
            .output_columns
            .iter()
            .filter_map(|c| index(c).map(|i| (c.clone(), i)))
            .collect();
        let mut tasks = Vec::with_capacity(self.rows.len());
        for (r, row) in self.rows.iter().enumerate() {
            let pick = |cols: &[(String, usize)]| -> Map<String, Value> {
                cols.iter()
                    .map(|(c, i)| (c.clone(), Value::String(row[*i].clone())))
                    .collect()
            };
            let truth = pick(&output_idx);
            let label = output_idx
                .iter()
                .map(|(_, i)| row[*i].as_str())
                .collect::<Vec<_>>()
                .join("|");
            let task = Task::new(
                format!("{}:{r}", self.name),
                Value::Object(pick(&input_idx)),
                Value::Object(truth),
            )?
            .with_metadata("domain", json!(self.name))
            .with_metadata("row", json!(r))
            .with_metadata("label", json!(label));
            tasks.push(task);
        }
        Ok(tasks)
    }

    /// The opening messages of an episode: the SOP with the answer format as the system
    /// message, and the task's inputs as the user message. The tools go to the agent as
    /// [`ToolSpec`]s; rendering them is the agent's concern.
    pub fn prompt(&self, task: &Task) -> Vec<Message> {
        prompt_messages(&self.sop, &self.output_columns, task)
    }

    /// An environment factory for this domain's tools in `mode`.
    ///
    /// # Errors
    /// [`Error::InvalidSchema`] when an advertised schema does not compile.
    pub fn environment(&self, mode: Mode) -> Result<SopBenchFactory> {
        match mode {
            Mode::Strict => {
                let sop = Arc::new(self.sop.clone());
                let outputs = Arc::new(self.output_columns.clone());
                let mut builder = ToolEnvironmentBuilder::new()
                    .validation(Validation::Strict)
                    .prompt(move |task, _| Ok(prompt_messages(&sop, &outputs, task)));
                for spec in &self.tools {
                    builder = builder.binding_tool(BindingTool::new(
                        self.bindings.clone(),
                        spec.clone(),
                        WireStyle::StrictJson,
                    ));
                }
                Ok(SopBenchFactory::Strict(builder.build()?))
            }
            Mode::Parity => Ok(SopBenchFactory::Parity(ParityFactory::new(self))),
        }
    }
}

/// The environments of a SOP-Bench domain, in either [`Mode`].
#[derive(Clone)]
pub enum SopBenchFactory {
    /// Strict mode: a [`ToolEnvironmentFactory`] over the bindings.
    Strict(ToolEnvironmentFactory),
    /// Upstream parity mode.
    Parity(ParityFactory),
}

/// The environment a [`SopBenchFactory`] makes.
pub enum SopBenchEnvironment {
    /// Strict mode.
    Strict(crate::ToolEnvironment),
    /// Upstream parity mode.
    Parity(ParityEnvironment),
}

#[mtrl_core::async_trait]
impl mtrl_core::Environment for SopBenchEnvironment {
    async fn reset(
        &mut self,
        task: &Task,
        episode: &mtrl_core::Episode,
    ) -> mtrl_core::Result<mtrl_core::Reset> {
        match self {
            SopBenchEnvironment::Strict(e) => e.reset(task, episode).await,
            SopBenchEnvironment::Parity(e) => e.reset(task, episode).await,
        }
    }

    async fn step(&mut self, action: &Message) -> mtrl_core::Result<mtrl_core::Step> {
        match self {
            SopBenchEnvironment::Strict(e) => e.step(action).await,
            SopBenchEnvironment::Parity(e) => e.step(action).await,
        }
    }

    async fn outcome(&mut self) -> mtrl_core::Result<Option<Value>> {
        match self {
            SopBenchEnvironment::Strict(e) => e.outcome().await,
            SopBenchEnvironment::Parity(e) => e.outcome().await,
        }
    }

    async fn close(&mut self) -> mtrl_core::Result<()> {
        match self {
            SopBenchEnvironment::Strict(e) => e.close().await,
            SopBenchEnvironment::Parity(e) => e.close().await,
        }
    }
}

impl mtrl_core::EnvironmentFactory for SopBenchFactory {
    type Env = SopBenchEnvironment;

    fn create(&self, task: &Task, episode: &mtrl_core::Episode) -> mtrl_core::Result<Self::Env> {
        Ok(match self {
            SopBenchFactory::Strict(f) => SopBenchEnvironment::Strict(f.create(task, episode)?),
            SopBenchFactory::Parity(f) => SopBenchEnvironment::Parity(f.create(task, episode)?),
        })
    }

    fn served_tools(&self) -> Option<Vec<String>> {
        match self {
            SopBenchFactory::Strict(f) => f.served_tools(),
            SopBenchFactory::Parity(f) => f.served_tools(),
        }
    }
}

fn prompt_messages(sop: &str, outputs: &[String], task: &Task) -> Vec<Message> {
    let example: Map<String, Value> = outputs
        .iter()
        .map(|c| (c.clone(), Value::String("…".into())))
        .collect();
    let system = format!(
        "{sop}\n\n## Answer format\n\nFollow the procedure above, calling the tools you are given. \
         When you are done, reply with exactly one block holding exactly these fields ({}):\n\
         <final_output>{}</final_output>",
        outputs.join(", "),
        Value::Object(example)
    );
    let inputs = serde_json::to_string_pretty(&Value::Object(task.inputs().clone()))
        .unwrap_or_else(|_| "{}".into());
    vec![
        Message::system(system),
        Message::user(format!("Task inputs:\n{inputs}")),
    ]
}

fn read_csv(domain: &str, text: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    crate::bindings::table::read_records(text)
        .map(|r| (r.header, r.rows))
        .map_err(|reason| Error::Upstream {
            domain: domain.into(),
            diagnostic: format!("test_set_with_outputs.csv: {reason}"),
        })
}

/// Counts tasks per label (for reports of splits).
pub fn label_counts<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in tasks {
        let label = t
            .metadata()
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        *out.entry(label).or_insert(0) += 1;
    }
    out
}
