//! Demonstrations in the policy's own tokens: any scripted agent's actions (an oracle, a
//! canonical tool sequence, recorded successes) rendered with the policy's chat template and
//! tool-call format, and recorded token by token as if the policy had sampled them, so that
//! [`Trainer::sft`](crate::rl::Trainer::sft) can train on them.

use std::sync::Arc;

use mtrl_core::{Action, Agent, TurnContext, async_trait};

use crate::Error;
use crate::agent::Tito;
use crate::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::toolcall::{Hermes, ToolCallFormat};

/// Wraps a scripted agent: each of its actions becomes the text the policy would write for it
/// (its content, then its tool calls in the policy's [`ToolCallFormat`]), encoded with the
/// policy's tokenizer and closed with the end-of-turn token, with a token record (logprob 0)
/// through the same bookkeeping as [`CandleAgent`](crate::CandleAgent). The calls the
/// environment sees are the ones parsed back from that text, as for the policy.
pub struct Demonstrator<A> {
    inner: A,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    format: Arc<dyn ToolCallFormat>,
    end_of_turn: Option<u32>,
}

impl<A: Agent> Demonstrator<A> {
    /// Demonstrates `inner`'s actions in the tokens of a policy with this tokenizer and chat
    /// template, and Hermes tool calls (as [`CandleAgent`](crate::CandleAgent) by default).
    pub fn new(inner: A, tokenizer: Arc<Tokenizer>, template: Arc<ChatTemplate>) -> Self {
        let end_of_turn = template
            .end_of_turn(&tokenizer)
            .or_else(|| tokenizer.stop_ids().first().copied());
        Self {
            inner,
            tokenizer,
            template,
            format: Arc::new(Hermes),
            end_of_turn,
        }
    }

    /// Writes tool calls in `format` instead (the policy's own, if it is not Hermes).
    #[must_use]
    pub fn with_format(mut self, format: Arc<dyn ToolCallFormat>) -> Self {
        self.format = format;
        self
    }

    /// The text of an action: its content, then its calls.
    fn text(&self, action: &Action) -> String {
        let message = &action.message;
        if message.tool_calls.is_empty() {
            return message.content.clone();
        }
        let calls = self.format.render(&message.tool_calls);
        if message.content.trim().is_empty() {
            calls
        } else {
            format!("{}\n{calls}", message.content)
        }
    }
}

#[async_trait]
impl<A: Agent> Agent for Demonstrator<A> {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let scripted = self.inner.act(ctx).await?;
        let run = || -> Result<Action, Error> {
            let tito = Tito {
                tokenizer: &self.tokenizer,
                template: &self.template,
                format: self.format.as_ref(),
            };
            tito.scripted(ctx, &self.text(&scripted), self.end_of_turn)
        };
        run().map_err(mtrl_core::Error::agent)
    }
}
