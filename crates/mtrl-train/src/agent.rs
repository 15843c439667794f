//! [`CandleAgent`]: an [`Agent`] backed by a candle model, with exact multi-turn token
//! bookkeeping (token-in, token-out).
//!
//! Each turn the conversation is rendered with the model's chat template. When the render
//! extends the text of the tokens already in the sequence, only the new text (the environment's
//! messages and the next generation prompt) is tokenized and appended: the sampled ids are
//! never re-tokenized. When it does not (Qwen3 strips earlier reasoning, Llama 3 trims), the
//! turn starts a new segment: a fresh training sequence from the full render, flagged in the
//! token record. [`drift`] checks a finished trajectory for the difference re-tokenization
//! would have made.

use std::sync::Arc;

use mtrl_core::{
    Action, Agent, Finish, Message, Role, TokenRecord, Trajectory, TurnContext, async_trait,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::chat::ChatTemplate;
use crate::engine::{EngineConfig, GenRequest, Generator};
use crate::model::{CausalLm, LoadedModel};
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::toolcall::{Hermes, ToolCallFormat};

/// A policy that generates with a candle model.
#[derive(Clone)]
pub struct CandleAgent {
    generator: Generator,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    format: Arc<dyn ToolCallFormat>,
    params: SamplingParams,
    window: usize,
}

impl CandleAgent {
    /// An agent over a loaded model, with its own generation engine.
    pub fn new(loaded: LoadedModel, params: SamplingParams, engine: EngineConfig) -> Self {
        Self::with_parts(
            Arc::new(loaded.model),
            Arc::new(loaded.tokenizer),
            Arc::new(loaded.template),
            params,
            engine,
        )
    }

    /// An agent over a shared model (for example the trainer's), tokenizer and template.
    pub fn with_parts(
        model: Arc<CausalLm>,
        tokenizer: Arc<Tokenizer>,
        template: Arc<ChatTemplate>,
        params: SamplingParams,
        engine: EngineConfig,
    ) -> Self {
        let window = model.config().max_position_embeddings;
        Self {
            generator: Generator::start(model, engine),
            tokenizer,
            template,
            format: Arc::new(Hermes),
            params,
            window,
        }
    }

    /// Reads and writes tool calls in `format` instead of Hermes'.
    #[must_use]
    pub fn with_format(mut self, format: Arc<dyn ToolCallFormat>) -> Self {
        self.format = format;
        self
    }

    /// Caps the context window below the model's.
    #[must_use]
    pub fn with_context_window(mut self, window: usize) -> Self {
        self.window = self.window.min(window);
        self
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The token bookkeeping this agent uses (for example to check finished trajectories with
    /// [`Tito::check`]).
    pub fn tito(&self) -> Tito<'_> {
        Tito {
            tokenizer: &self.tokenizer,
            template: &self.template,
            format: self.format.as_ref(),
        }
    }

    /// The generation engine.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    async fn act_inner(&self, ctx: &TurnContext<'_>) -> Result<Action, Error> {
        let tito = self.tito();
        let prompt = tito.prompt(ctx)?;
        let budget = ctx.budget.turn_tokens.unwrap_or(usize::MAX);
        let max_tokens = self.params.max_tokens.min(budget);
        if prompt.sequence.len() >= self.window {
            return tito.action(
                ctx,
                prompt,
                Vec::new(),
                Vec::new(),
                None,
                Finish::ContextOverflow,
            );
        }
        if max_tokens == 0 {
            return tito.action(ctx, prompt, Vec::new(), Vec::new(), None, Finish::Length);
        }
        let seed = turn_seed(ctx.episode.seed, ctx.turn_index());
        let out = self
            .generator
            .generate(GenRequest {
                prompt: prompt.sequence.clone(),
                params: self.params.clone(),
                sampler: Sampler::new(seed),
                stop_ids: self.tokenizer.stop_ids().to_vec(),
                max_tokens: max_tokens.min(self.window - prompt.sequence.len()),
            })
            .await?;
        tito.action(
            ctx,
            prompt,
            out.ids,
            out.logprobs,
            out.behaviour_logprobs,
            out.finish,
        )
    }
}

/// The next turn's prompt: the ids to append (or, at a new segment, the whole render), and the
/// full sequence the model continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnPrompt {
    /// The ids this turn adds before sampling (the token record's prompt ids).
    pub ids: Vec<u32>,
    /// The whole sequence of the segment, these ids included.
    pub sequence: Vec<u32>,
    /// Whether this turn starts a new segment (the render did not extend the stored text).
    pub starts_segment: bool,
}

/// The token bookkeeping of a chat model's turns (token-in, token-out), apart from any
/// model: what to append before a turn, and the action and token record after it.
pub struct Tito<'a> {
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The chat template.
    pub template: &'a ChatTemplate,
    /// The tool-call format.
    pub format: &'a dyn ToolCallFormat,
}

impl Tito<'_> {
    /// The prompt of the turn `ctx` asks for.
    ///
    /// # Errors
    /// [`Error::Tito`] when an earlier turn has no token record, or a template or tokenizer
    /// error.
    pub fn prompt(&self, ctx: &TurnContext<'_>) -> Result<TurnPrompt, Error> {
        let messages = template_messages(self.template, self.format, ctx.messages, ctx.tools);
        let tools: Vec<Value> = ctx.tools.iter().map(|t| t.to_openai()).collect();
        let tools = self.template.supports_tools().then_some(tools.as_slice());
        let full = self.template.render(&messages, tools, true)?;
        // The current segment: the turns since the last one that started a segment.
        let mut segment: Vec<u32> = Vec::new();
        for turn in ctx.turns {
            let Some(record) = &turn.tokens else {
                return Err(Error::Tito(
                    "an earlier turn has no token record; the agent needs its own turns".into(),
                ));
            };
            if record.starts_segment() {
                segment.clear();
            }
            segment.extend_from_slice(record.prompt_ids());
            segment.extend_from_slice(record.sampled_ids());
        }
        let previous = if segment.is_empty() {
            None
        } else {
            Some(self.tokenizer.decode(&segment)?)
        };
        Ok(
            match previous.as_deref().and_then(|p| full.strip_prefix(p)) {
                Some(delta) => {
                    let ids = self.tokenizer.encode(delta)?;
                    segment.extend_from_slice(&ids);
                    TurnPrompt {
                        ids,
                        sequence: segment,
                        starts_segment: false,
                    }
                }
                None => {
                    let ids = self.tokenizer.encode(&full)?;
                    TurnPrompt {
                        sequence: ids.clone(),
                        ids,
                        starts_segment: true,
                    }
                }
            },
        )
    }

    /// The action of a scripted turn that writes `text`, through the same bookkeeping as a
    /// sampled one: the turn's prompt, then `text` encoded as if sampled (logprob 0) and
    /// closed with `end` (the end-of-turn token, if any), finished as a stop. How scripted
    /// agents and demonstrators give the trainer token records.
    ///
    /// # Errors
    /// As [`Tito::prompt`] and [`Tito::action`].
    pub fn scripted(
        &self,
        ctx: &TurnContext<'_>,
        text: &str,
        end: Option<u32>,
    ) -> Result<Action, Error> {
        let prompt = self.prompt(ctx)?;
        let mut ids = self.tokenizer.encode(text)?;
        ids.extend(end);
        let logprobs = vec![0.0; ids.len()];
        self.action(ctx, prompt, ids, logprobs, None, Finish::Stop)
    }

    /// The action of a turn that sampled `ids` after `prompt`: the decoded text (without the
    /// stop token), its tool calls, and the token record.
    ///
    /// # Errors
    /// An inconsistent record (lengths), or a tokenizer error.
    pub fn action(
        &self,
        ctx: &TurnContext<'_>,
        prompt: TurnPrompt,
        ids: Vec<u32>,
        logprobs: Vec<f32>,
        behaviour: Option<Vec<f32>>,
        finish: Finish,
    ) -> Result<Action, Error> {
        let text_ids = match ids.last() {
            Some(last) if self.tokenizer.stop_ids().contains(last) => &ids[..ids.len() - 1],
            _ => &ids[..],
        };
        let content = self.tokenizer.decode(text_ids)?;
        let parsed = self.format.parse(&content, ctx.turn_index());
        let message = if parsed.calls.is_empty() {
            Message::assistant(content)
        } else {
            Message::assistant_with_calls(content, parsed.calls)
        };
        let used = ids.len();
        let mut record = TokenRecord::new(prompt.ids, ids, logprobs)?;
        if prompt.starts_segment {
            record = record.starting_segment();
        }
        if let Some(b) = behaviour {
            record = record.with_behaviour_logprobs(b)?;
        }
        Ok(Action::new(message)
            .with_finish(finish)
            .with_tokens_used(used)
            .with_token_record(record))
    }
}

/// What [`Tito::check`] found in a trajectory's token records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitoCheck {
    /// Turns checked.
    pub turns: usize,
    /// Segments (training sequences).
    pub segments: usize,
    /// Sampled tokens (all under the loss mask).
    pub sampled: usize,
    /// Turns whose stored prompt does not decode to the template's render of the conversation.
    pub prompt_mismatches: Vec<usize>,
    /// Turns whose sampled ids do not decode to the action's text.
    pub sample_mismatches: Vec<usize>,
}

impl TitoCheck {
    /// Whether everything matched.
    pub fn is_exact(&self) -> bool {
        self.prompt_mismatches.is_empty() && self.sample_mismatches.is_empty()
    }
}

impl Tito<'_> {
    /// Checks a finished trajectory's token records against the conversation: before each
    /// turn, the stored segment decodes to exactly the template's render of the conversation so
    /// far (with the generation prompt); each turn's sampled ids decode to its action's text
    /// (plus the end-of-turn token).
    ///
    /// # Errors
    /// [`Error::Tito`] for a turn without a record, or a template or tokenizer error.
    pub fn check(&self, t: &Trajectory) -> Result<TitoCheck, Error> {
        let mut out = TitoCheck::default();
        let mut messages = t.prompt.clone();
        let mut segment: Vec<u32> = Vec::new();
        let tools: Vec<Value> = t.tools.iter().map(|s| s.to_openai()).collect();
        let tools = self.template.supports_tools().then_some(tools.as_slice());
        for (i, turn) in t.turns.iter().enumerate() {
            let record = turn
                .tokens
                .as_ref()
                .ok_or_else(|| Error::Tito(format!("turn {i} has no token record")))?;
            if record.starts_segment() {
                segment.clear();
                out.segments += 1;
            }
            segment.extend_from_slice(record.prompt_ids());
            let rendered = template_messages(self.template, self.format, &messages, &t.tools);
            let render = self.template.render(&rendered, tools, true)?;
            if self.tokenizer.decode(&segment)? != render {
                out.prompt_mismatches.push(i);
            }
            let sampled = record.sampled_ids();
            let text_ids = match sampled.last() {
                Some(last) if self.tokenizer.stop_ids().contains(last) => {
                    &sampled[..sampled.len() - 1]
                }
                _ => sampled,
            };
            if self.tokenizer.decode(text_ids)? != turn.action.content {
                out.sample_mismatches.push(i);
            }
            out.sampled += record.loss_mask().iter().filter(|m| **m).count();
            segment.extend_from_slice(sampled);
            messages.push(turn.action.clone());
            messages.extend(turn.observations.iter().cloned());
            out.turns += 1;
        }
        Ok(out)
    }
}

/// An agent that replays scripted assistant texts through the same token bookkeeping as
/// [`CandleAgent`] (each text encoded as if sampled, with logprob 0, then the end-of-turn
/// token): for testing templates and environments without a model.
pub struct ScriptedTokenAgent {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    format: Arc<dyn ToolCallFormat>,
    turns: Vec<String>,
    /// The token that ends each scripted turn.
    end_of_turn: Option<u32>,
}

impl ScriptedTokenAgent {
    /// Replays `turns`, one per assistant turn (the last repeats).
    pub fn new(tokenizer: Arc<Tokenizer>, template: Arc<ChatTemplate>, turns: Vec<String>) -> Self {
        let end_of_turn = template
            .end_of_turn(&tokenizer)
            .or_else(|| tokenizer.stop_ids().first().copied());
        Self {
            tokenizer,
            template,
            format: Arc::new(Hermes),
            turns,
            end_of_turn,
        }
    }
}

#[async_trait]
impl Agent for ScriptedTokenAgent {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let run = || -> Result<Action, Error> {
            let tito = Tito {
                tokenizer: &self.tokenizer,
                template: &self.template,
                format: self.format.as_ref(),
            };
            let text = self
                .turns
                .get(ctx.turn_index())
                .or(self.turns.last())
                .map(String::as_str)
                .unwrap_or_default();
            tito.scripted(ctx, text, self.end_of_turn)
        };
        run().map_err(mtrl_core::Error::agent)
    }
}

#[async_trait]
impl Agent for CandleAgent {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        self.act_inner(ctx).await.map_err(mtrl_core::Error::agent)
    }
}

/// The seed of one turn's sampler: a pure function of the episode seed and the turn, so a
/// resumed episode samples exactly what the uninterrupted one would have.
pub fn turn_seed(episode_seed: u64, turn: usize) -> u64 {
    let mut z = episode_seed ^ (turn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The conversation as a chat template receives it: assistant turns as the exact text that
/// was sampled, and a standard tools section in the system message when the template has none
/// of its own.
pub fn template_messages(
    template: &ChatTemplate,
    format: &dyn ToolCallFormat,
    messages: &[Message],
    tools: &[mtrl_core::ToolSpec],
) -> Vec<Value> {
    let mut out: Vec<Value> = messages
        .iter()
        .map(|m| match m.role {
            Role::Tool => json!({
                "role": "tool",
                "content": m.content,
                "tool_call_id": m.tool_call_id,
                "name": m.name,
            }),
            role => json!({"role": role_name(role), "content": m.content}),
        })
        .collect();
    if !tools.is_empty() && !template.supports_tools() {
        let section = format.system_section(tools);
        match out.first_mut() {
            Some(first) if first["role"] == "system" => {
                let content = first["content"].as_str().unwrap_or_default();
                first["content"] = Value::String(format!("{content}\n\n{section}"));
            }
            _ => out.insert(0, json!({"role": "system", "content": section})),
        }
    }
    out
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// How far re-tokenizing a trajectory's text would move from the ids that were sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Segments (training sequences) checked.
    pub segments: usize,
    /// Tokens stored.
    pub tokens: usize,
    /// Positions where re-encoding the decoded text gives another id (plus any difference in
    /// length).
    pub mismatched: usize,
}

/// Re-encodes each segment's decoded text and compares it with the stored ids.
///
/// # Errors
/// The trajectory's token records are inconsistent, or the tokenizer fails.
pub fn drift(tokenizer: &Tokenizer, trajectory: &Trajectory) -> Result<Drift, Error> {
    let mut out = Drift::default();
    for seq in trajectory.sequences()? {
        let text = tokenizer.decode(&seq.ids)?;
        let again = tokenizer.encode(&text)?;
        out.segments += 1;
        out.tokens += seq.ids.len();
        out.mismatched += seq.ids.iter().zip(&again).filter(|(a, b)| a != b).count()
            + seq.ids.len().abs_diff(again.len());
    }
    Ok(out)
}
