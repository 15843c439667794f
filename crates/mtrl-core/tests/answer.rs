//! The answer format: the strict parser's typed reasons, the lenient settings, and the
//! documented normalisation of field values.

use mtrl_core::{
    AnswerError, AnswerParser, Episode, Message, Several, Step, ToolCall, ToolResult, Trajectory,
    Turn, normalise_text, values_match,
};
use serde_json::{Value, json};

const FIELDS: [&str; 2] = ["class", "count"];

fn strict(text: &str) -> Result<serde_json::Map<String, Value>, AnswerError> {
    AnswerParser::strict()
        .parse(text, &FIELDS)
        .map(|a| a.fields)
}

#[test]
fn strict_accepts_one_block_with_exactly_the_fields() {
    let fields =
        strict("I checked it.\n<final_output>\n{\"class\": \"D\", \"count\": 3}\n</final_output>")
            .unwrap();
    assert_eq!(fields["class"], "D");
    assert_eq!(fields["count"], 3);
}

#[test]
fn strict_gives_a_typed_reason_for_each_failure() {
    let cases: [(&str, &str); 8] = [
        ("the class is D", "missing_tag"),
        (
            r#"<final_response>{"class": "D", "count": 3}</final_response>"#,
            "missing_tag",
        ),
        (
            r#"<final_output>{"class": "D", "count": 3}</final_output> again <final_output>{"class": "D", "count": 3}</final_output>"#,
            "multiple_tags",
        ),
        (
            r#"<final_output>{"class": "D", "count": 3}</final_output></final_output>"#,
            "multiple_tags",
        ),
        (
            r#"<final_output>{"class": "D", "count": 3}"#,
            "unclosed_tag",
        ),
        (
            r#"<final_output>{"class": "D", "count": 3,}</final_output>"#,
            "invalid_json",
        ),
        (r#"<final_output>["D", 3]</final_output>"#, "not_an_object"),
        (
            r#"<final_output>{"class": "D"}</final_output>"#,
            "missing_fields",
        ),
    ];
    for (text, kind) in cases {
        let err = strict(text).unwrap_err();
        assert_eq!(err.kind(), kind, "{text}: {err}");
    }
    let err = strict(r#"<final_output>{"class": "D", "count": 3, "note": "x"}</final_output>"#)
        .unwrap_err();
    assert_eq!(
        err,
        AnswerError::UnexpectedFields {
            fields: vec!["note".into()]
        }
    );
    let err = strict(r#"<final_output>{"count": 3}</final_output>"#).unwrap_err();
    assert_eq!(
        err,
        AnswerError::MissingFields {
            fields: vec!["class".into()]
        }
    );
    // A fenced answer is not JSON to the strict parser.
    let fenced = "<final_output>```json\n{\"class\": \"D\", \"count\": 3}\n```</final_output>";
    assert_eq!(strict(fenced).unwrap_err().kind(), "invalid_json");
    // Kinds are distinct and serialize under their names.
    let json = serde_json::to_value(AnswerError::MultipleTags { count: 2 }).unwrap();
    assert_eq!(json, json!({"kind": "multiple_tags", "count": 2}));
}

#[test]
fn lenient_settings_each_loosen_one_rule() {
    let two = r#"<final_output>{"class": "A", "count": 1}</final_output><final_output>{"class": "D", "count": 3}</final_output>"#;
    let lenient = AnswerParser::lenient();
    assert!(!lenient.is_strict());
    assert!(AnswerParser::strict().is_strict());
    assert_eq!(lenient.parse(two, &FIELDS).unwrap().fields["class"], "D");
    let first = lenient.clone().several(Several::First);
    assert_eq!(first.parse(two, &FIELDS).unwrap().fields["class"], "A");

    let fenced = "<final_output>\n```json\n{\"class\": \"D\", \"count\": 3}\n```\n</final_output>";
    assert_eq!(lenient.parse(fenced, &FIELDS).unwrap().fields["count"], 3);
    let partial = r#"<final_output>{"class": "D", "extra": 1}</final_output>"#;
    assert!(lenient.parse(partial, &FIELDS).is_ok());
    assert_eq!(
        lenient
            .clone()
            .allow_missing_fields(false)
            .parse(partial, &FIELDS)
            .unwrap_err()
            .kind(),
        "missing_fields"
    );

    let hacked = r#"<final_response>{"class": "D", "count": 3}</final_response>"#;
    assert_eq!(
        lenient.parse(hacked, &FIELDS).unwrap_err().kind(),
        "missing_tag"
    );
    let answer = lenient
        .accept_tag("final_response")
        .parse(hacked, &FIELDS)
        .unwrap();
    assert_eq!(answer.tag, "final_response");
}

#[test]
fn the_final_message_is_read_from_the_trajectory() {
    let mut t = Trajectory::new("t", Episode::default());
    assert_eq!(
        AnswerParser::strict().parse_final(&t, &FIELDS),
        Err(AnswerError::NoFinalMessage)
    );
    t.turns.push(turn(Message::assistant(
        r#"<final_output>{"class": "D", "count": 3}</final_output>"#,
    )));
    assert!(AnswerParser::strict().parse_final(&t, &FIELDS).is_ok());
}

#[test]
fn normalisation_is_exactly_the_documented_one() {
    let yes = [
        (json!("Hazard Class D"), json!("  hazard   CLASS d ")),
        (json!("12"), json!(12)),
        (json!("1.50"), json!(1.5)),
        (json!("1e3"), json!("1000")),
        (json!("-0"), json!(0)),
        (json!("True"), json!(true)),
        (json!(false), json!("FALSE")),
        (json!(""), json!("")),
        (json!(""), Value::Null),
        (json!("   "), json!(" ")),
        (Value::Null, json!("")),
        (json!(["a", "B"]), json!(["A", "b "])),
        (json!({"k": "1"}), json!({"k": 1})),
    ];
    for (expected, predicted) in yes {
        assert!(
            values_match(&expected, &predicted),
            "{expected} should match {predicted}"
        );
    }
    let no = [
        (json!("Hazard Class D"), json!("a")),
        (json!("Hazard Class D"), json!("Hazard Class")),
        (json!("HazardClass D"), json!("Hazard Class D")),
        (json!("12"), json!(12.5)),
        (json!("12"), json!("twelve")),
        (json!("1"), json!(true)),
        (json!("yes"), json!(true)),
        (json!(""), json!("x")),
        (json!("x"), Value::Null),
        (json!("x"), json!("")),
        (json!("inf"), json!("infinity")),
        (json!(["a"]), json!("a")),
        (json!(["a", "b"]), json!(["a"])),
        (json!({"k": 1}), json!({"k": 1, "j": 2})),
    ];
    for (expected, predicted) in no {
        assert!(
            !values_match(&expected, &predicted),
            "{expected} should not match {predicted}"
        );
    }
    assert_eq!(normalise_text("  A\tB \n c "), "a b c");
}

#[test]
fn tool_outcomes_count_reported_results_and_unanswered_calls() {
    let mut t = Trajectory::new("t", Episode::default());
    let calls = vec![
        ToolCall::new("c1", "get", &json!({})),
        ToolCall::new("c2", "get", &json!({})),
    ];
    let mut first = turn(Message::assistant_with_calls("", calls));
    first.info = Step::next(vec![])
        .with_tool_results(&[
            ToolResult::ok("c1", "get"),
            ToolResult::failed("c2", "get", "missing_argument"),
        ])
        .info;
    t.turns.push(first);
    // A call the environment never answered (the episode stopped first).
    t.turns.push(turn(Message::assistant_with_calls(
        "",
        vec![ToolCall::new("c3", "get", &json!({}))],
    )));
    let outcomes = t.tool_outcomes();
    assert_eq!(
        (
            outcomes.calls,
            outcomes.ok,
            outcomes.failed,
            outcomes.unreported
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(outcomes.accuracy(), Some(0.5));
    assert_eq!(
        t.turns[0].tool_results().unwrap()[1].error.as_deref(),
        Some("missing_argument")
    );
    // Unreadable reports count as unreported, they do not fail.
    t.turns[0].info.insert("tool_results".into(), json!("oops"));
    assert_eq!(t.tool_outcomes().unreported, 3);
    assert_eq!(t.tool_outcomes().accuracy(), None);
}

fn turn(action: Message) -> Turn {
    Turn {
        action,
        observations: vec![],
        finish: Default::default(),
        tokens_used: None,
        token_budget: None,
        tokens: None,
        info: Default::default(),
        agent_us: 0,
        env_us: 0,
    }
}

/// The review's cases: numbers that an f64 confuses, and identifiers made of digits.
#[test]
fn numbers_and_digit_identifiers_compare_exactly() {
    let parser = AnswerParser::strict();
    let read = |text: &str| parser.parse(text, &["id"]).unwrap().fields["id"].clone();
    let big = read(r#"<final_output>{"id": 9007199254740993}</final_output>"#);
    assert!(!values_match(&json!(9007199254740992u64), &big));
    assert!(values_match(&json!("9007199254740993"), &big));
    let id = read(r#"<final_output>{"id": "1234567890123456788"}</final_output>"#);
    assert!(!values_match(&json!("1234567890123456789"), &id));
    // Beyond 64 bits the strict reader keeps the digits as written.
    let huge = read(r#"<final_output>{"id": 123456789012345678901234567891}</final_output>"#);
    assert!(!values_match(
        &json!("123456789012345678901234567890"),
        &huge
    ));
    assert!(values_match(
        &json!("123456789012345678901234567891"),
        &huge
    ));
    // Leading zeros make an identifier.
    let zeros = read(r#"<final_output>{"id": "00042"}</final_output>"#);
    assert!(!values_match(&json!("42"), &zeros));
    assert!(!values_match(&json!(42), &zeros));
    assert!(values_match(&json!("00042"), &zeros));
    // Decimals as written still match their other spellings.
    let d = read(r#"<final_output>{"id": 1.50}</final_output>"#);
    assert!(values_match(&json!("1.5"), &d));
    assert!(values_match(&json!("15e-1"), &d));
}

#[test]
fn a_repeated_key_is_invalid_json_for_every_parser() {
    let text = r#"<final_output>{"class": "A", "class": "D", "count": 3}</final_output>"#;
    for parser in [AnswerParser::strict(), AnswerParser::lenient()] {
        let e = parser.parse(text, &FIELDS).unwrap_err();
        assert_eq!(e.kind(), "invalid_json", "{e}");
        assert!(e.to_string().contains("duplicate key \"class\""), "{e}");
    }
}

#[test]
fn reasoning_blocks_are_not_read_as_the_answer() {
    let right = r#"{"class": "D", "count": 3}"#;
    let draft = r#"{"class": "A", "count": 1}"#;
    // A draft inside the reasoning, the real answer after it.
    let text = format!(
        "<think>maybe <final_output>{draft}</final_output>, no.</think>\n<final_output>{right}</final_output>"
    );
    let fields = strict(&text).unwrap();
    assert_eq!(fields["class"], "D");
    // Reasoning the template opened in the prompt: only the close tag is in the message.
    let text = format!(
        "draft <final_output>{draft}</final_output></think><final_output>{right}</final_output>"
    );
    assert_eq!(strict(&text).unwrap()["class"], "D");
    // An answer written only inside reasoning is no answer, closed or not.
    let text = format!("<think><final_output>{right}</final_output></think> done");
    assert_eq!(strict(&text).unwrap_err().kind(), "missing_tag");
    let text = format!("<think>still thinking <final_output>{right}</final_output>");
    assert_eq!(strict(&text).unwrap_err().kind(), "missing_tag");
    // Two answers outside reasoning are still two.
    let text = format!(
        "<think>x</think><final_output>{right}</final_output><final_output>{right}</final_output>"
    );
    assert_eq!(strict(&text).unwrap_err().kind(), "multiple_tags");
}

#[test]
fn deeply_nested_answers_are_invalid_json_not_a_crash() {
    let deep = format!(
        "<final_output>{{\"class\": {}\"D\"{}, \"count\": 3}}</final_output>",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(strict(&deep).unwrap_err().kind(), "invalid_json");
}
