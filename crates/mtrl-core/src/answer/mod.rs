//! The answer format, shared by environments, evaluators and rewards.
//!
//! An agent answers with exactly one `<final_output>{json}</final_output>` block in its final
//! assistant message; the JSON object holds exactly the task's output fields. [`AnswerParser::strict`]
//! enforces that and nothing looser, for evaluation. A reward may choose a more lenient parser
//! (other tags, the last of several blocks, code fences, missing or extra fields), and should
//! say so, because the gap between the two is where reward hacking lives.
//!
//! The block's JSON is read strictly: a key repeated in one object is `invalid_json` (a
//! parser that kept the last value would let an answer say two things), numbers are never
//! rounded (see below), and nesting deeper than [`MAX_NESTING`] is refused.
//!
//! **Reasoning is not the answer.** Text inside `<think>…</think>` ([`REASONING_TAG`]) is
//! ignored when looking for the answer block, so a draft `<final_output>` in the reasoning
//! neither counts nor makes a right final answer `multiple_tags`. A `</think>` with no opening
//! tag (templates that open the reasoning in the prompt, as Qwen3's do) ends reasoning that
//! began at the start of the message, and an unclosed `<think>` runs to the end: an answer
//! written only inside reasoning is `missing_tag`.
//!
//! Field values are compared by [`values_match`], after a small normalisation and nothing else:
//!
//! - a blank expected value (null, or a string of whitespace) expects null or a blank string;
//! - when both sides read as decimal numbers (JSON numbers, or strings of decimal text such as
//!   `"1.50"` or `"1e3"`), they compare **exactly, as decimals**: `"1.50"` matches `1.5` and
//!   `1e3` matches `"1000"`, but `9007199254740993` does not match `9007199254740992`, nor
//!   `"1234567890123456789"` `"1234567890123456788"`. These are the only numeric equalities.
//!   Integers are compared digit for digit whatever their size; a JSON number that a 64-bit
//!   integer or an `f64` cannot hold exactly is kept by the strict reader as the text written
//!   (a string), so no digit is lost;
//! - a string of digits with a leading zero (`"007"`, `"0012"`) is an identifier, not a
//!   number: it matches only the same text (`"007"` does not match `7` or `"7"`);
//! - when both sides read as booleans (`true`/`false`, or those words in any case as strings),
//!   they compare as booleans;
//! - arrays compare element by element, objects key by key, with the same rules;
//! - otherwise both sides are compared as text, trimmed, case-folded and with runs of whitespace
//!   collapsed to one space (a boolean reads as its JSON text).
//!
//! There is no substring or fuzzy matching: `"a"` does not match `"Hazard Class D"`.
//!
//! ```
//! use mtrl_core::{AnswerError, AnswerParser};
//!
//! let fields = ["decision", "amount"];
//! let strict = AnswerParser::strict();
//! let answer = strict
//!     .parse(r#"Done. <final_output>{"decision": "Approve", "amount": 12}</final_output>"#, &fields)
//!     .unwrap();
//! assert_eq!(answer.fields["decision"], "Approve");
//!
//! // Another tag is not an answer to the strict parser…
//! let hacked = r#"<final_response>{"decision": "Approve", "amount": 12}</final_response>"#;
//! assert!(matches!(strict.parse(hacked, &fields), Err(AnswerError::MissingTag { .. })));
//! // …but a reward may choose to accept it.
//! assert!(AnswerParser::lenient().accept_tag("final_response").parse(hacked, &fields).is_ok());
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::trajectory::Trajectory;

mod compare;
mod json;

pub use compare::{normalise_text, values_match, values_match_within};
pub use json::MAX_NESTING;

/// The tag of the answer block: `<final_output>…</final_output>`.
pub const FINAL_OUTPUT_TAG: &str = "final_output";

/// The tag of reasoning, whose content is never read as the answer: `<think>…</think>`.
pub const REASONING_TAG: &str = "think";

/// Why a message holds no acceptable answer. Each kind has a stable name ([`AnswerError::kind`])
/// for counting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnswerError {
    /// There is no final assistant message to read.
    #[error("there is no final assistant message")]
    NoFinalMessage,
    /// No answer block was found.
    #[error("no <{tag}> block")]
    MissingTag {
        /// The tag looked for (the first accepted one).
        tag: String,
    },
    /// More than one answer block (or stray closing tags), where exactly one is allowed.
    #[error("{count} answer blocks; exactly one is allowed")]
    MultipleTags {
        /// How many opening or closing tags were found (the larger count).
        count: usize,
    },
    /// The answer block is opened but never closed.
    #[error("the <{tag}> block is not closed")]
    UnclosedTag {
        /// The tag that was opened.
        tag: String,
    },
    /// The block's content is not valid JSON.
    #[error("the answer is not valid JSON: {message}")]
    InvalidJson {
        /// The JSON parser's message.
        message: String,
    },
    /// The block holds JSON, but not an object.
    #[error("the answer is a JSON {found}, not an object")]
    NotAnObject {
        /// What it is (`array`, `string`, …).
        found: String,
    },
    /// The answer lacks some of the expected fields.
    #[error("the answer lacks the fields {}", .fields.join(", "))]
    MissingFields {
        /// The missing fields, in the expected order.
        fields: Vec<String>,
    },
    /// The answer has fields that were not asked for.
    #[error("the answer has unexpected fields {}", .fields.join(", "))]
    UnexpectedFields {
        /// The extra fields, in name order.
        fields: Vec<String>,
    },
}

impl AnswerError {
    /// Every kind name, in declaration order.
    pub const KINDS: [&'static str; 8] = [
        "no_final_message",
        "missing_tag",
        "multiple_tags",
        "unclosed_tag",
        "invalid_json",
        "not_an_object",
        "missing_fields",
        "unexpected_fields",
    ];

    /// The stable snake_case name of this kind of failure.
    pub fn kind(&self) -> &'static str {
        let i = match self {
            AnswerError::NoFinalMessage => 0,
            AnswerError::MissingTag { .. } => 1,
            AnswerError::MultipleTags { .. } => 2,
            AnswerError::UnclosedTag { .. } => 3,
            AnswerError::InvalidJson { .. } => 4,
            AnswerError::NotAnObject { .. } => 5,
            AnswerError::MissingFields { .. } => 6,
            AnswerError::UnexpectedFields { .. } => 7,
        };
        Self::KINDS[i]
    }
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The tag it was found in.
    pub tag: String,
    /// The answer's fields, as the agent wrote them.
    pub fields: Map<String, Value>,
}

/// Which block to take when there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Several {
    /// Refuse the answer ([`AnswerError::MultipleTags`]).
    Reject,
    /// Take the first block.
    First,
    /// Take the last block.
    Last,
}

/// Reads the answer block out of a message. [`AnswerParser::strict`] is the evaluation
/// standard; the other settings exist for rewards, which may be more forgiving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerParser {
    tags: Vec<String>,
    several: Several,
    strip_fences: bool,
    allow_missing: bool,
    allow_unexpected: bool,
}

impl Default for AnswerParser {
    fn default() -> Self {
        Self::strict()
    }
}

impl AnswerParser {
    /// Exactly one `<final_output>` block holding a JSON object with exactly the expected
    /// fields.
    pub fn strict() -> Self {
        Self {
            tags: vec![FINAL_OUTPUT_TAG.to_string()],
            several: Several::Reject,
            strip_fences: false,
            allow_missing: false,
            allow_unexpected: false,
        }
    }

    /// A forgiving parser: the last `<final_output>` block, code fences inside it stripped,
    /// missing and extra fields allowed (missing ones simply score as wrong).
    pub fn lenient() -> Self {
        Self {
            tags: vec![FINAL_OUTPUT_TAG.to_string()],
            several: Several::Last,
            strip_fences: true,
            allow_missing: true,
            allow_unexpected: true,
        }
    }

    /// Also accepts blocks with this tag.
    #[must_use]
    pub fn accept_tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// Which block to take when there are several.
    #[must_use]
    pub fn several(mut self, several: Several) -> Self {
        self.several = several;
        self
    }

    /// Whether a code fence (```` ```json … ``` ````) around the JSON is removed.
    #[must_use]
    pub fn strip_fences(mut self, strip: bool) -> Self {
        self.strip_fences = strip;
        self
    }

    /// Whether an answer may lack expected fields.
    #[must_use]
    pub fn allow_missing_fields(mut self, allow: bool) -> Self {
        self.allow_missing = allow;
        self
    }

    /// Whether an answer may have fields that were not asked for.
    #[must_use]
    pub fn allow_unexpected_fields(mut self, allow: bool) -> Self {
        self.allow_unexpected = allow;
        self
    }

    /// Whether this parser is exactly [`AnswerParser::strict`].
    pub fn is_strict(&self) -> bool {
        *self == Self::strict()
    }

    /// The accepted tags, the first being the one reported as missing.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Reads the answer in the trajectory's final assistant message.
    ///
    /// # Errors
    /// [`AnswerError::NoFinalMessage`] when the trajectory has no turn, otherwise as
    /// [`AnswerParser::parse`].
    pub fn parse_final(
        &self,
        trajectory: &Trajectory,
        fields: &[&str],
    ) -> Result<Answer, AnswerError> {
        let message = trajectory
            .final_action()
            .ok_or(AnswerError::NoFinalMessage)?;
        self.parse(&message.content, fields)
    }

    /// Reads the answer in `text`, expecting the output `fields`.
    ///
    /// # Errors
    /// The [`AnswerError`] saying why there is no acceptable answer.
    pub fn parse(&self, text: &str, fields: &[&str]) -> Result<Answer, AnswerError> {
        let (tag, body) = self.block(text)?;
        let body = if self.strip_fences {
            strip_fence(body)
        } else {
            body
        };
        let value: Value = json::parse(body.trim()).map_err(|e| AnswerError::InvalidJson {
            message: e.to_string(),
        })?;
        let Value::Object(object) = value else {
            return Err(AnswerError::NotAnObject {
                found: json_kind(&value).to_string(),
            });
        };
        if !self.allow_missing {
            let missing: Vec<String> = fields
                .iter()
                .filter(|f| !object.contains_key(**f))
                .map(|f| f.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(AnswerError::MissingFields { fields: missing });
            }
        }
        if !self.allow_unexpected {
            let unexpected: Vec<String> = object
                .keys()
                .filter(|k| !fields.contains(&k.as_str()))
                .cloned()
                .collect();
            if !unexpected.is_empty() {
                return Err(AnswerError::UnexpectedFields { fields: unexpected });
            }
        }
        Ok(Answer {
            tag: tag.to_string(),
            fields: object,
        })
    }

    /// Finds the block to read: its tag and its content.
    fn block<'t>(&self, text: &'t str) -> Result<(&str, &'t str), AnswerError> {
        let reasoning = reasoning_spans(text);
        let outside = |i: &usize| !reasoning.iter().any(|r| r.contains(i));
        // Every opening tag of an accepted kind outside reasoning, in text order, and the
        // count of closing ones.
        let mut opens: Vec<(usize, &str)> = Vec::new();
        let mut closes = 0;
        for tag in &self.tags {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            opens.extend(
                text.match_indices(&open)
                    .map(|(i, _)| i)
                    .filter(outside)
                    .map(|i| (i, tag.as_str())),
            );
            closes += text
                .match_indices(&close)
                .map(|(i, _)| i)
                .filter(outside)
                .count();
        }
        opens.sort_unstable();
        let chosen = match (opens.len(), self.several) {
            (0, _) => {
                return Err(AnswerError::MissingTag {
                    tag: self.tags.first().cloned().unwrap_or_default(),
                });
            }
            (1, Several::Reject) if closes <= 1 => opens[0],
            (n, Several::Reject) => {
                return Err(AnswerError::MultipleTags {
                    count: n.max(closes),
                });
            }
            (_, Several::First) => opens[0],
            (n, Several::Last) => opens[n - 1],
        };
        let (start, tag) = chosen;
        let content_start = start + tag.len() + 2;
        let close = format!("</{tag}>");
        let rest = &text[content_start..];
        let end = rest.find(&close).ok_or_else(|| AnswerError::UnclosedTag {
            tag: tag.to_string(),
        })?;
        Ok((tag, &rest[..end]))
    }
}

/// The byte ranges of `text` that are reasoning (see the [module documentation](self)).
fn reasoning_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let open = format!("<{REASONING_TAG}>");
    let close = format!("</{REASONING_TAG}>");
    let mut spans = Vec::new();
    let mut at = 0;
    // A close before any open ends reasoning that the prompt opened.
    if let Some(c) = text.find(&close) {
        if text.find(&open).is_none_or(|o| c < o) {
            at = c + close.len();
            spans.push(0..at);
        }
    }
    while let Some(o) = text[at..].find(&open).map(|o| at + o) {
        let end = text[o..]
            .find(&close)
            .map_or(text.len(), |c| o + c + close.len());
        spans.push(o..end);
        at = end;
    }
    spans
}

/// Removes a Markdown code fence around `body`, if there is one.
fn strip_fence(body: &str) -> &str {
    let trimmed = body.trim();
    let Some(inner) = trimmed.strip_prefix("```") else {
        return body;
    };
    let Some(inner) = inner.strip_suffix("```") else {
        return body;
    };
    // Drop the info string (`json`) on the fence's first line.
    match inner.split_once('\n') {
        Some((info, rest)) if !info.trim_start().starts_with(['{', '[']) => rest,
        _ => inner,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
