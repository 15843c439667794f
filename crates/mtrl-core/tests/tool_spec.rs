//! `ToolSpec` parsing: the Bedrock and OpenAI shapes, lists, and bad input.

use mtrl_core::{Error, ToolSpec};
use serde_json::{Value, json};

fn schema() -> Value {
    json!({"type": "object",
           "properties": {"order_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{5}$"}},
           "required": ["order_id"], "additionalProperties": false})
}

fn reason(err: Error) -> String {
    match err {
        Error::InvalidToolSpec { reason } => reason,
        other => panic!("expected InvalidToolSpec, got {other:?}"),
    }
}

#[test]
fn bedrock_shape_with_and_without_the_wrapper() {
    let inner = json!({"name": "getOrder", "description": "Looks up an order.",
                       "inputSchema": {"json": schema()}});
    let wrapped = json!({ "toolSpec": inner.clone() });
    let a = ToolSpec::from_bedrock(&wrapped).unwrap();
    let b = ToolSpec::from_bedrock(&inner).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.name(), "getOrder");
    assert_eq!(a.description(), "Looks up an order.");
    assert_eq!(a.parameters(), &schema());
    assert_eq!(ToolSpec::from_value(&wrapped).unwrap(), a);
    assert_eq!(a.to_bedrock(), wrapped);
}

#[test]
fn openai_shapes() {
    let function = json!({"name": "getOrder", "description": "Looks up an order.",
                          "parameters": schema()});
    let wrapped = json!({"type": "function", "function": function.clone()});
    let flat = json!({"type": "function", "name": "getOrder",
                      "description": "Looks up an order.", "parameters": schema()});
    let a = ToolSpec::from_openai(&wrapped).unwrap();
    assert_eq!(ToolSpec::from_openai(&function).unwrap(), a);
    assert_eq!(ToolSpec::from_openai(&flat).unwrap(), a);
    assert_eq!(ToolSpec::from_value(&wrapped).unwrap(), a);
    assert_eq!(ToolSpec::from_value(&flat).unwrap(), a);
    assert_eq!(a.to_openai(), wrapped);
}

#[test]
fn both_shapes_give_the_same_spec() {
    let spec = ToolSpec::new("getOrder", "Looks up an order.", schema()).unwrap();
    assert_eq!(ToolSpec::from_value(&spec.to_openai()).unwrap(), spec);
    assert_eq!(ToolSpec::from_value(&spec.to_bedrock()).unwrap(), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<ToolSpec>(&json).unwrap(), spec);
}

#[test]
fn openai_without_parameters_or_description_means_no_arguments() {
    let spec =
        ToolSpec::from_openai(&json!({"type": "function", "function": {"name": "ping"}})).unwrap();
    assert_eq!(spec.description(), "");
    assert_eq!(
        spec.parameters(),
        &json!({"type": "object", "properties": {}})
    );
}

#[test]
fn lists_in_either_container() {
    let bedrock = json!([
        {"toolSpec": {"name": "a", "description": "", "inputSchema": {"json": {"type": "object"}}}},
        {"toolSpec": {"name": "b", "description": "", "inputSchema": {"json": {"type": "object"}}}}
    ]);
    let specs = ToolSpec::list_from_value(&bedrock).unwrap();
    assert_eq!(
        specs.iter().map(ToolSpec::name).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let config = json!({"tools": bedrock});
    assert_eq!(ToolSpec::list_from_value(&config).unwrap(), specs);
    let openai: Vec<Value> = specs.iter().map(ToolSpec::to_openai).collect();
    assert_eq!(
        ToolSpec::list_from_value(&Value::from(openai)).unwrap(),
        specs
    );
    let mixed = json!([specs[0].to_bedrock(), specs[1].to_openai()]);
    assert_eq!(ToolSpec::list_from_value(&mixed).unwrap(), specs);
}

#[test]
fn bad_input_is_a_typed_error_naming_the_problem() {
    let cases: Vec<(Value, &str)> = vec![
        (json!("getOrder"), "must be a JSON object"),
        (json!({"toolSpec": []}), "`toolSpec` must be a JSON object"),
        (
            json!({"toolSpec": {"description": "x", "inputSchema": {"json": {}}}}),
            "missing `name`",
        ),
        (
            json!({"toolSpec": {"name": 7, "inputSchema": {"json": {}}}}),
            "`name` must be a string",
        ),
        (json!({"toolSpec": {"name": "a"}}), "missing `inputSchema`"),
        (
            json!({"toolSpec": {"name": "a", "inputSchema": {"type": "object"}}}),
            "no `json` member",
        ),
        (
            json!({"toolSpec": {"name": "a", "inputSchema": {"json": []}}}),
            "must be a JSON object, got an array",
        ),
        (
            json!({"toolSpec": {"name": "a", "inputSchema": {"json": {"type": "string"}}}}),
            "type \"object\"",
        ),
        (
            json!({"toolSpec": {"name": "a b", "inputSchema": {"json": {}}}}),
            "character ' '",
        ),
        (
            json!({"toolSpec": {"name": "", "inputSchema": {"json": {}}}}),
            "1 to 64",
        ),
        (
            json!({"toolSpec": {"name": "x".repeat(65), "inputSchema": {"json": {}}}}),
            "1 to 64",
        ),
        (
            json!({"toolSpec": {"name": "a", "description": 3, "inputSchema": {"json": {}}}}),
            "`description` must be a string",
        ),
        (json!({"type": "retrieval"}), "not supported"),
        (
            json!({"type": "function", "function": "getOrder"}),
            "`function` must be a JSON object",
        ),
        (
            json!({"type": "function", "function": {"name": "a", "parameters": "{}"}}),
            "must be a JSON object, got a string",
        ),
        (json!({"description": "no name"}), "neither a Bedrock"),
    ];
    for (value, expected) in cases {
        let r = reason(ToolSpec::from_value(&value).unwrap_err());
        assert!(r.contains(expected), "{value}: `{r}` lacks `{expected}`");
    }
}

#[test]
fn bad_lists_name_the_entry() {
    let r = reason(
        ToolSpec::list_from_value(&json!([
            {"type": "function", "function": {"name": "ok"}},
            {"type": "function", "function": {"name": "bad name"}}
        ]))
        .unwrap_err(),
    );
    assert!(r.starts_with("tool #1:"), "{r}");
    let r = reason(
        ToolSpec::list_from_value(&json!([
            {"type": "function", "function": {"name": "twice"}},
            {"type": "function", "function": {"name": "twice"}}
        ]))
        .unwrap_err(),
    );
    assert!(r.contains("used twice"), "{r}");
    assert!(ToolSpec::list_from_value(&json!(3)).is_err());
    assert!(ToolSpec::list_from_value(&json!({"tool": []})).is_err());
    assert!(matches!(
        ToolSpec::list_from_json("[{"),
        Err(Error::Json(_))
    ));
}

#[test]
fn deserializing_an_invalid_spec_fails() {
    let bad = r#"{"name": "bad name", "description": "", "parameters": {"type": "object"}}"#;
    assert!(serde_json::from_str::<ToolSpec>(bad).is_err());
    let extra = r#"{"name": "a", "description": "", "parameters": {}, "strict": true}"#;
    assert!(serde_json::from_str::<ToolSpec>(extra).is_err());
}

/// Every `toolspecs.json` of the real SOP-Bench data parses (Bedrock shape).
#[test]
fn real_sop_bench_tool_specs_parse() {
    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping the SOP-Bench tool specs");
        return;
    };
    let mut domains = 0;
    let mut tools = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("toolspecs.json");
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let specs =
            ToolSpec::list_from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!specs.is_empty(), "{}", path.display());
        for spec in &specs {
            assert_eq!(ToolSpec::from_bedrock(&spec.to_bedrock()).unwrap(), *spec);
        }
        domains += 1;
        tools += specs.len();
    }
    assert_eq!(domains, 14, "all 14 SOP-Bench domains have tool specs");
    eprintln!("parsed {tools} tool specs over {domains} domains");
}
