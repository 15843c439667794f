//! `returns_desk`: a small SOP-style domain that mtrl writes and bundles (MIT, like the rest of
//! mtrl), for the quickstart.
//!
//! A customer asks to return an order. The procedure: look the order up with the one tool,
//! then decide from two fields of its record:
//!
//! | condition | window | decision |
//! |---|---|---|
//! | `damaged` | any | `replace` |
//! | `new` or `used` | `open` | `refund` |
//! | `new` or `used` | `closed` | `reject` |
//!
//! The record also carries a distracting `category`. The request shows only the order id, so
//! the decision cannot be made without the tool; the ground truth lives in the task, the record
//! in its trusted metadata, and neither is shown to the agent (the audit checks it).
//!
//! Demonstrations ([`Expert`]) follow the procedure exactly — the tool call, the strict answer
//! format — but pick their decision at random: they teach the
//! procedure, not the decision logic, which the policy has to learn from reward.

use std::sync::Arc;

use async_trait::async_trait;
use mtrl_core::rollout::{SplitMix64, derive_seed};
use mtrl_core::{Action, Agent, Message, Task, ToolSpec, TurnContext};
use mtrl_env::{ToolContext, ToolEnvironmentBuilder, ToolEnvironmentFactory, ToolOutput, tool_fn};
use mtrl_train::toolcall::{Hermes, ToolCallFormat};
use mtrl_train::{ChatTemplate, Tito, Tokenizer};
use serde_json::{Value, json};

/// The domain's name.
pub const NAME: &str = "returns_desk";

/// The three decisions.
pub const DECISIONS: [&str; 3] = ["refund", "replace", "reject"];

const CONDITIONS: [&str; 3] = ["new", "used", "damaged"];
const WINDOWS: [&str; 2] = ["open", "closed"];
const CATEGORIES: [&str; 4] = ["shoes", "books", "toys", "tools"];

/// The standard operating procedure, as the system message gives it.
pub const SOP: &str = "Returns desk procedure.\n\
1. Call lookup_order to read the order record.\n\
2. If the condition is damaged, decide replace.\n\
3. Else, if the window is open, decide refund.\n\
4. Else, decide reject.\n\
Answer <final_output>{\"decision\": \"...\"}</final_output> only.";

/// A ChatML template that lists the tools in one line of the system message (short prompts
/// keep the from-scratch policy fast to train).
pub const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
{% if loop.first and m.role == 'system' and tools %}\nTools:{% for t in tools %} {{ t.function.name }}\
(){% endfor %}. \
Call one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>{% endif %}\
<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The chat markers of [`CHAT_TEMPLATE`].
pub const SPECIALS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];

/// The decision of a record.
pub fn decide(condition: &str, window: &str) -> &'static str {
    if condition == "damaged" {
        "replace"
    } else if window == "open" {
        "refund"
    } else {
        "reject"
    }
}

fn pick<'a>(rng: &mut SplitMix64, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

/// `n` tasks (at most 1,000: one per order id `R000`–`R999`), generated from `seed`. Each
/// task's inputs are `{"order_id"}`, its ground truth `{"decision"}`, and its metadata the
/// order record the tool serves.
pub fn tasks(n: usize, seed: u64) -> Vec<Task> {
    let mut rng = SplitMix64::new(derive_seed(seed, NAME, 0));
    let mut ids: Vec<u32> = (0..1000).collect();
    rng.shuffle(&mut ids);
    ids.into_iter()
        .take(n.min(1000))
        .map(|i| {
            let id = format!("R{i:03}");
            let condition = pick(&mut rng, &CONDITIONS);
            let window = pick(&mut rng, &WINDOWS);
            let category = pick(&mut rng, &CATEGORIES);
            let record = json!({
                "order_id": id,
                "category": category,
                "condition": condition,
                "window": window,
            });
            Task::new(
                format!("{NAME}/{id}"),
                json!({ "order_id": id }),
                json!({ "decision": decide(condition, window) }),
            )
            .expect("inputs and ground truth are objects")
            .with_metadata("record", record)
        })
        .collect()
}

/// The one tool's spec.
pub fn lookup_spec() -> ToolSpec {
    ToolSpec::new(
        "lookup_order",
        "Returns the record of the order in the request: category, condition of the item, \
         return window.",
        json!({
            "type": "object",
            "properties": {},
            "additionalProperties": false
        }),
    )
    .expect("a valid spec")
}

/// The environments: strict validation, the SOP as the system message, the request as the
/// user message, and `lookup_order` serving the record of the request's order (it takes no
/// arguments: the desk's system knows which order the customer asked about).
///
/// # Errors
/// When the environment cannot be built (it can: this is a fixed, valid spec).
pub fn environments() -> mtrl_core::Result<ToolEnvironmentFactory> {
    let lookup = tool_fn(
        lookup_spec(),
        |_args, cx: &mut ToolContext<'_, ()>| match cx.task.metadata().get("record") {
            Some(r) => ToolOutput::json(r),
            None => ToolOutput::error("not_found", "the request names no known order"),
        },
    );
    ToolEnvironmentBuilder::new()
        .tool(lookup)
        .prompt(|task, _tools| {
            let id = task
                .inputs()
                .get("order_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            Ok(vec![
                Message::system(SOP),
                Message::user(format!("I want to return order {id}.")),
            ])
        })
        .build()
        .map_err(mtrl_core::Error::environment)
}

/// Every word the domain's conversations use, for [`Tokenizer::from_words`].
pub fn vocabulary() -> Vec<String> {
    let tools = [lookup_spec()];
    let mut text = String::new();
    text.push_str(SOP);
    text.push_str(&Hermes.system_section(&tools));
    text.push_str(CHAT_TEMPLATE);
    text.push_str(
        " system user assistant tool I want to return order error not_found no kind message",
    );
    text.push_str(
        " decision order_id category condition window final_output tool_call name arguments",
    );
    for w in DECISIONS
        .iter()
        .chain(&CONDITIONS)
        .chain(&WINDOWS)
        .chain(&CATEGORIES)
    {
        text.push(' ');
        text.push_str(w);
    }
    let mut words: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
        .filter(|w| w.len() > 1)
        .map(str::to_string)
        .collect();
    words.sort();
    words.dedup();
    words
}

/// The domain's tokenizer and chat template.
///
/// # Errors
/// A tokenizer or template error (not expected: the inputs are fixed).
pub fn tokenizer_and_template() -> Result<(Tokenizer, ChatTemplate), mtrl_train::Error> {
    let specials: Vec<String> = SPECIALS.map(String::from).to_vec();
    let tokenizer = Tokenizer::from_words(&vocabulary(), &specials, "<|im_end|>")?;
    let template = ChatTemplate::new(CHAT_TEMPLATE, "", "<|im_end|>")?;
    Ok((tokenizer, template))
}

/// The tool call text, in Hermes' format.
pub fn call_text() -> String {
    "<tool_call>\n{\"name\": \"lookup_order\", \"arguments\": {}}\n</tool_call>".to_string()
}

/// The answer text for `decision`.
pub fn answer_text(decision: &str) -> String {
    format!("<final_output>{{\"decision\": \"{decision}\"}}</final_output>")
}

/// How a demonstrator picks its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decisions {
    /// At random, seeded by the episode: the demonstrations teach the procedure only.
    Random,
    /// Each of the three in turn, by the episode's index in its group: a task demonstrated
    /// [`DECISIONS`]`.len()` times gets each decision once, so the demonstrations hold no
    /// trace of the decision logic, not even a chance one that SFT could fit (with random
    /// decisions, a few dozen demonstrations over the record's 24 combinations of fields give
    /// each combination a majority that a pretrained model learns, and its samples then agree
    /// within a GRPO group). See [`Decisions::demonstrations_per_task`].
    Balanced,
    /// By the SOP, from the record the tool returned: a full expert (to show that the policy
    /// can represent the logic, not for the quickstart's warm start).
    Correct,
}

impl Decisions {
    /// How many demonstrations of each task these decisions want: one, or one per decision
    /// for [`Decisions::Balanced`].
    pub fn demonstrations_per_task(self) -> usize {
        match self {
            Self::Balanced => DECISIONS.len(),
            Self::Random | Self::Correct => 1,
        }
    }
}

/// The demonstrator: the procedure's tool call, then a strict answer, through the same token
/// bookkeeping as the policy (each text encoded as if sampled, logprob 0).
pub struct Expert {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    decisions: Decisions,
}

impl Expert {
    /// A demonstrator over the policy's tokenizer and template whose decisions are random.
    pub fn new(tokenizer: Arc<Tokenizer>, template: Arc<ChatTemplate>) -> Self {
        Self {
            tokenizer,
            template,
            decisions: Decisions::Random,
        }
    }

    /// The same demonstrator, deciding as `decisions` says.
    pub fn deciding(mut self, decisions: Decisions) -> Self {
        self.decisions = decisions;
        self
    }
}

/// The SOP's decision from the latest tool message of `messages`, if it holds a record.
fn decision_from_record(messages: &[Message]) -> Option<&'static str> {
    let text = messages
        .iter()
        .rev()
        .find(|m| m.role == mtrl_core::Role::Tool)?
        .content
        .as_str();
    let record: Value = serde_json::from_str(text).ok()?;
    Some(decide(
        record.get("condition")?.as_str()?,
        record.get("window")?.as_str()?,
    ))
}

#[async_trait]
impl Agent for Expert {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let run = || -> Result<Action, mtrl_train::Error> {
            let tito = Tito {
                tokenizer: &self.tokenizer,
                template: &self.template,
                format: &Hermes,
            };
            let text = if ctx.turn_index() == 0 {
                call_text()
            } else {
                let random = || pick(&mut SplitMix64::new(ctx.episode.seed), &DECISIONS);
                answer_text(match self.decisions {
                    Decisions::Random => random(),
                    Decisions::Balanced => DECISIONS[ctx.episode.index % DECISIONS.len()],
                    Decisions::Correct => decision_from_record(ctx.messages).unwrap_or_else(random),
                })
            };
            tito.scripted(ctx, &text, self.tokenizer.stop_ids().first().copied())
        };
        run().map_err(mtrl_core::Error::agent)
    }
}

/// The share of `tasks` whose decision is `decision`.
pub fn share(tasks: &[Task], decision: &str) -> f64 {
    let n = tasks
        .iter()
        .filter(|t| t.ground_truth()["decision"] == decision)
        .count();
    n as f64 / tasks.len().max(1) as f64
}

/// The most common decision of `tasks` (ties broken by [`DECISIONS`] order).
pub fn most_common(tasks: &[Task]) -> &'static str {
    let mut best = DECISIONS[0];
    for d in DECISIONS {
        if share(tasks, d) > share(tasks, best) {
            best = d;
        }
    }
    best
}
