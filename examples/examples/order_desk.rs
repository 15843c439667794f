//! Write your own environment: a small order desk, end to end, with mtrl's public API only.
//!
//! A customer asks to cancel an order or to exchange an item for another size. An order can be
//! cancelled only while pending (the whole total is refunded), and exchanged only once delivered,
//! for a size in stock. The truth of each task is both an answer (`resolution`) and the state the
//! desk must be left in (the order's `status` and `size`, and the money `refunded`).
//!
//! It shows, in order:
//! - typed tools: the JSON Schema the agent reads is derived from each arguments type;
//! - per-episode state built from the task, and its outcome snapshot when the episode ends;
//! - a reward (answer and state) and the strict evaluator, which checks the state too;
//! - scripted agents from closures: a careful one, which recovers from its own malformed call,
//!   and a liar, which checks everything, answers right, and never changes anything;
//! - a recording replayed to identical verdicts;
//! - the environment audit.
//!
//! Run it with `cargo run -p mtrl-examples --example order_desk`.

use std::collections::BTreeMap;
use std::path::Path;

use mtrl_core::{
    Agent, Limits, Message, RolloutDriver, Scored, SplitMix64, Task, ToolCall, TurnContext,
    agent_fn, runtime, score_groups,
};
use mtrl_env::audit::Audit;
use mtrl_env::layers::{EnvironmentFactoryExt, Recorder, Replayer};
use mtrl_env::{
    ToolContext, ToolEnvironmentBuilder, ToolEnvironmentFactory, ToolOutput, typed_tool,
};
use mtrl_eval::{EvalRecord, FinalOutputEvaluator, Summary};
use mtrl_reward::{ExactMatch, OutcomeMatch, WeightedSum};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The domain: orders, and what may be done to them. Nothing here knows about mtrl.

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Pending,
    Shipped,
    Delivered,
    Cancelled,
    ExchangeRequested,
}

/// A size of the shop's one kind of shirt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
enum Size {
    S,
    M,
    L,
    XL,
}

const SIZES: [Size; 4] = [Size::S, Size::M, Size::L, Size::XL];
const PRICES: [f64; 4] = [19.99, 39.99, 9.99, 24.5];

/// One order and the stock it can be exchanged against: the state of one episode.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Desk {
    order_id: String,
    status: Status,
    size: Size,
    /// The price of each line; the total is their sum, as floats sum.
    lines: Vec<f64>,
    in_stock: Vec<Size>,
    refunded: f64,
}

impl Desk {
    fn total(&self) -> f64 {
        self.lines.iter().sum()
    }

    fn cancel(&mut self) -> Result<f64, String> {
        if self.status != Status::Pending {
            return Err(format!(
                "order {} is {:?}, not pending",
                self.order_id, self.status
            ));
        }
        self.status = Status::Cancelled;
        self.refunded = self.total();
        Ok(self.refunded)
    }

    fn exchange(&mut self, size: Size) -> Result<(), String> {
        if self.status != Status::Delivered {
            return Err(format!(
                "order {} is {:?}, not delivered",
                self.order_id, self.status
            ));
        }
        if size == self.size || !self.in_stock.contains(&size) {
            return Err(format!(
                "size {size:?} cannot be sent for order {}",
                self.order_id
            ));
        }
        self.status = Status::ExchangeRequested;
        self.size = size;
        Ok(())
    }

    /// What the episode leaves behind, for the reward and the evaluator.
    fn snapshot(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("status".into(), json!(self.status));
        out.insert("size".into(), json!(self.size));
        out.insert("refunded".into(), json!(self.refunded));
        out
    }
}

/// `n` seeded tasks. The desk each starts from is trusted metadata: the agent must look it up.
fn tasks(n: usize, seed: u64) -> Result<Vec<Task>, BoxError> {
    let mut rng = SplitMix64::new(seed);
    let mut pick = |k: usize| rng.below(k as u64) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // Two requests in three can be granted; the others meet an order in the wrong state or
        // a size out of stock.
        let cancel = pick(2) == 0;
        let grantable = pick(3) != 0;
        let size = pick(4);
        let new_size = SIZES[(size + 1 + pick(3)) % 4];
        let mut desk = Desk {
            order_id: format!("W{}", 1000 + i),
            status: match (grantable, cancel) {
                (true, true) => Status::Pending,
                (true, false) => Status::Delivered,
                _ => [Status::Pending, Status::Shipped, Status::Delivered][pick(3)],
            },
            size: SIZES[size],
            lines: (0..1 + pick(3)).map(|_| PRICES[pick(4)]).collect(),
            in_stock: SIZES.iter().copied().filter(|_| pick(2) == 0).collect(),
            refunded: 0.0,
        };
        if grantable && !desk.in_stock.contains(&new_size) {
            desk.in_stock.push(new_size);
        }
        let start = desk.clone();
        // The truth: what a correct agent answers, and the state it leaves (money rounded to
        // cents, as a person would write it).
        let granted = if cancel {
            desk.cancel().map(drop)
        } else {
            desk.exchange(new_size)
        };
        let resolution = match (granted, cancel) {
            (Ok(()), true) => "cancelled",
            (Ok(()), false) => "exchanged",
            (Err(_), _) => "refused",
        };
        let mut expected = desk.snapshot();
        expected.insert(
            "refunded".into(),
            json!((desk.refunded * 100.0).round() / 100.0),
        );
        let mut inputs = json!({"order_id": desk.order_id, "request": if cancel { "cancel" } else { "exchange" }});
        if !cancel {
            inputs["new_size"] = json!(new_size);
        }
        out.push(
            Task::new(
                format!("desk:{i}"),
                inputs,
                json!({"resolution": resolution}),
            )?
            .with_expected_outcome(expected)
            .with_metadata("desk", serde_json::to_value(&start)?),
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The environment: typed tools over the desk, its state built from the task, its outcome.

/// Looks an order up.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct OrderRef {
    /// The order id, like `W1003`.
    order_id: String,
}

/// Cancels a pending order and refunds it.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Cancel {
    /// The order id.
    order_id: String,
    /// Why the customer cancels, in their words.
    reason: String,
}

/// Exchanges a delivered order's item for another size.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Exchange {
    /// The order id.
    order_id: String,
    /// The size to send instead.
    new_size: Size,
}

/// The order the call names, or the error the model reads.
fn order<'a>(desk: &'a mut Desk, id: &str) -> Result<&'a mut Desk, ToolOutput> {
    if desk.order_id == id {
        Ok(desk)
    } else {
        Err(ToolOutput::error("not_found", format!("no order {id}")))
    }
}

fn desk_environment() -> Result<ToolEnvironmentFactory<Desk>, BoxError> {
    let get = typed_tool(
        "getOrder",
        "Looks up an order: its status, size, total and the sizes in stock.",
        |a: OrderRef, cx: &mut ToolContext<'_, Desk>| match order(cx.state, &a.order_id) {
            Ok(d) => ToolOutput::json(&json!({"status": d.status, "size": d.size,
                "total": d.total(), "in_stock": d.in_stock})),
            Err(e) => e,
        },
    )?;
    let cancel = typed_tool(
        "cancelOrder",
        "Cancels a pending order and refunds its total.",
        |a: Cancel, cx: &mut ToolContext<'_, Desk>| match order(cx.state, &a.order_id) {
            Ok(d) => match d.cancel() {
                Ok(refund) => ToolOutput::json(
                    &json!({"cancelled": a.order_id, "refunded": refund, "reason": a.reason}),
                ),
                Err(why) => ToolOutput::error("not_cancellable", why),
            },
            Err(e) => e,
        },
    )?;
    let exchange = typed_tool(
        "exchangeItem",
        "Exchanges a delivered order's item for another size in stock.",
        |a: Exchange, cx: &mut ToolContext<'_, Desk>| match order(cx.state, &a.order_id) {
            Ok(d) => match d.exchange(a.new_size) {
                Ok(()) => ToolOutput::json(&json!({"exchanged": a.order_id, "size": a.new_size})),
                Err(why) => ToolOutput::error("not_exchangeable", why),
            },
            Err(e) => e,
        },
    )?;
    let factory = ToolEnvironmentBuilder::with_state(|task: &Task, _| {
        let desk = task.metadata().get("desk").cloned().unwrap_or_default();
        serde_json::from_value::<Desk>(desk).map_err(mtrl_core::Error::other)
    })
    .prompt(|task, _tools| {
        Ok(vec![
            Message::system(
                "You run an order desk. Look the order up first. Cancel only a pending order; \
                 exchange only a delivered one, for a size in stock. Otherwise refuse. Then \
                 answer <final_output>{\"resolution\": \"cancelled\" | \"exchanged\" | \
                 \"refused\"}</final_output>.",
            ),
            Message::user(Value::Object(task.inputs().clone()).to_string()),
        ])
    })
    .tool(get)
    .tool(cancel)
    .tool(exchange)
    .outcome(|_task, desk: &Desk| Ok(Value::Object(desk.snapshot())))
    .build()?;
    Ok(factory)
}

// ---------------------------------------------------------------------------------------------
// Scripted agents, from closures.

/// The next message of a scripted clerk. It first calls `getOrder` with a wrong argument name,
/// reads the error and calls it again properly. A liar then answers as if it had acted, and
/// never calls the tool that changes the order.
fn clerk(ctx: &TurnContext<'_>, liar: bool) -> mtrl_core::Result<Message> {
    let id = ctx.task.input("order_id").cloned().unwrap_or_default();
    let call = |name: &str, args: Value| {
        let call_id = format!("c{}", ctx.turn_index());
        Message::assistant_with_calls("", vec![ToolCall::new(call_id, name, &args)])
    };
    let answer = |r: &str| {
        Message::assistant(format!(
            r#"<final_output>{{"resolution": "{r}"}}</final_output>"#
        ))
    };
    let last_call = ctx.turns.last().and_then(|t| t.action.tool_calls.first());
    let seen: Value = ctx
        .messages
        .last()
        .and_then(|m| serde_json::from_str(&m.content).ok())
        .unwrap_or_default();
    Ok(match last_call.map(|c| c.name.as_str()) {
        None => call("getOrder", json!({"id": id})),
        Some("getOrder") if seen.get("error").is_some() => {
            call("getOrder", json!({"order_id": id}))
        }
        Some("getOrder") => {
            let new_size = ctx.task.input("new_size").cloned().unwrap_or_default();
            let cancel = ctx.task.input("request") == Some(&json!("cancel"));
            let fits = seen["in_stock"]
                .as_array()
                .is_some_and(|s| s.contains(&new_size))
                && seen["size"] != new_size;
            match (cancel, seen["status"].as_str()) {
                (true, Some("pending")) if liar => answer("cancelled"),
                (true, Some("pending")) => call(
                    "cancelOrder",
                    json!({"order_id": id, "reason": "changed my mind"}),
                ),
                (false, Some("delivered")) if fits && liar => answer("exchanged"),
                (false, Some("delivered")) if fits => call(
                    "exchangeItem",
                    json!({"order_id": id, "new_size": new_size}),
                ),
                _ => answer("refused"),
            }
        }
        Some(_) if seen.get("error").is_some() => answer("refused"),
        Some("cancelOrder") => answer("cancelled"),
        Some(_) => answer("exchanged"),
    })
}

// ---------------------------------------------------------------------------------------------
// The run: audit, live runs recorded, scoring, replays.

/// What one agent scored.
#[derive(Debug, Clone)]
pub struct AgentFigures {
    /// Its name.
    pub name: &'static str,
    /// The share of tasks whose answer field was right.
    pub answers_right: f64,
    /// Strict TSR: the answer and the state both right.
    pub tsr: f64,
    /// Strict TSR with exact comparison of the refund (no tolerance).
    pub tsr_exact: f64,
    /// The mean reward.
    pub reward: f64,
    /// Failures by kind.
    pub failures: BTreeMap<String, usize>,
    /// Whether the replayed recording got the very same verdicts and rewards.
    pub replay_identical: bool,
}

/// The whole demonstration's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Tasks run per agent.
    pub tasks: usize,
    /// The audit's findings (`check: summary`), empty when the environment passed.
    pub audit: Vec<String>,
    /// The careful clerk, then the liar.
    pub agents: Vec<AgentFigures>,
}

/// Runs the demonstration, writing recordings under `dir`.
pub async fn run(dir: &Path, n: usize) -> Result<Figures, BoxError> {
    std::fs::create_dir_all(dir)?;
    let factory = desk_environment()?;
    let tasks = tasks(n, 7)?;
    let driver = RolloutDriver::new(Limits {
        max_turns: 6,
        ..Limits::default()
    });
    let careful = agent_fn(|ctx| clerk(ctx, false));
    let liar = agent_fn(|ctx| clerk(ctx, true));

    let report = Audit::new("order_desk")
        .run(&factory, &careful, &tasks)
        .await;
    let audit = report
        .findings
        .iter()
        .map(|f| {
            format!(
                "{}: {} ({})",
                f.check.as_str(),
                f.summary,
                f.evidence.join("; ")
            )
        })
        .collect();

    // The state is part of the truth; the refund is money summed as floats.
    let evaluator = FinalOutputEvaluator::new().tolerance("outcome.refunded", 0.005)?;
    let exact = FinalOutputEvaluator::new();
    let reward = WeightedSum::new()
        .term(0.5, ExactMatch::new())?
        .term(0.5, OutcomeMatch::new().tolerance("refunded", 0.005)?)?;

    let mut agents = Vec::new();
    for (name, agent) in [("careful", &careful as &dyn Agent), ("liar", &liar)] {
        let path = dir.join(format!("{name}.jsonl"));
        let recorded = factory
            .clone()
            .layer(Recorder::new(std::fs::File::create(&path)?));
        let live = driver.run_batch(agent, &recorded, &tasks, 1).await;
        let rows = score_groups(&tasks, &live, &reward, &evaluator).await?;
        let exact_rows = score_groups(&tasks, &live, &reward, &exact).await?;

        let recording = std::io::BufReader::new(std::fs::File::open(&path)?);
        let replayed = driver
            .run_batch(agent, &Replayer::from_jsonl(recording)?, &tasks, 1)
            .await;
        let replay_rows = score_groups(&tasks, &replayed, &reward, &evaluator).await?;
        let verdict = |r: &Scored<'_>| (r.evaluation.clone(), r.reward.clone());
        let replay_identical = rows.iter().map(verdict).eq(replay_rows.iter().map(verdict));

        let summary = |rows: &[Scored<'_>]| {
            let records: Vec<EvalRecord> = rows
                .iter()
                .filter_map(|r| Some(EvalRecord::new(r.task, r.trajectory, r.evaluation.clone()?)))
                .collect();
            Summary::from_records(&records).overall
        };
        let overall = summary(&rows);
        let right = rows
            .iter()
            .filter(|r| {
                r.evaluation
                    .as_ref()
                    .is_some_and(|e| e.fields.get("resolution").is_some_and(|f| f.correct))
            })
            .count();
        agents.push(AgentFigures {
            name,
            answers_right: right as f64 / rows.len() as f64,
            tsr: overall.tsr(),
            tsr_exact: summary(&exact_rows).tsr(),
            reward: rows.iter().map(|r| r.reward.total).sum::<f64>() / rows.len() as f64,
            failures: overall.failures.clone(),
            replay_identical,
        });
    }
    Ok(Figures {
        tasks: tasks.len(),
        audit,
        agents,
    })
}

fn main() -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join("mtrl-order-desk");
    let figures = runtime::block_on(run(&dir, 40))??;
    println!(
        "order desk: {} tasks per agent, recordings in {}",
        figures.tasks,
        dir.display()
    );
    match figures.audit.as_slice() {
        [] => println!("audit (determinism, seed-dependence, leaks, schema, coverage): clean"),
        findings => findings.iter().for_each(|f| println!("audit: {f}")),
    }
    println!("\n| agent | answer right | strict TSR | TSR, exact refund | mean reward | replay |");
    println!("|---|---|---|---|---|---|");
    for a in &figures.agents {
        println!(
            "| {} | {:.1}% | {:.1}% | {:.1}% | {:.3} | {} |",
            a.name,
            100.0 * a.answers_right,
            100.0 * a.tsr,
            100.0 * a.tsr_exact,
            a.reward,
            if a.replay_identical {
                "identical"
            } else {
                "DIFFERS"
            }
        );
    }
    for a in &figures.agents {
        if !a.failures.is_empty() {
            println!("{} fails by kind: {:?}", a.name, a.failures);
        }
    }
    Ok(())
}
