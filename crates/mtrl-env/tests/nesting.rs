//! Every reader and evaluator of mtrl-env refuses text nested too deeply with a typed error,
//! on the calling thread's ordinary stack: binding files, `literal_eval` and `json_loads` in
//! a binding, and a binding tool's arguments.

use mtrl_core::{Environment, Episode, Message, Task, ToolCall, ToolSpec};
use mtrl_env::bindings::{Bindings, Py, literal_eval};
use mtrl_env::{Error, ToolEnvironmentBuilder};
use serde_json::json;

const DEEP: usize = 50_000;

fn nested(n: usize) -> String {
    "[".repeat(n) + &"]".repeat(n)
}

/// A binding whose `read` tool returns `[op, text]`'s result for its `text` argument.
fn binding(op: &str) -> Bindings {
    let json = format!(
        r#"{{"format": "sop-bench-tool-bindings/1", "domain": "d",
            "upstream": {{"manager_class": "M"}}, "table": null,
            "tools": [{{"name": "read", "params": ["text"],
                        "body": [{{"return": ["{op}", ["var", "text"]]}}]}}]}}"#
    );
    Bindings::parse(&json, |_| unreachable!("no table")).unwrap()
}

fn call(b: &Bindings, text: &str) -> Result<Py, mtrl_env::bindings::PyError> {
    let args = Py::Dict(vec![(Py::str("text"), Py::str(text))]);
    b.call("read", &args, &mut mtrl_env::EpisodeSources::new(0))
}

#[test]
fn literal_eval_and_json_loads_raise_what_cpython_raises() {
    let b = binding("literal_eval");
    assert_eq!(call(&b, "[[1], 2]").unwrap().py_repr(), "[[1], 2]");
    let e = call(&b, &nested(DEEP)).unwrap_err();
    assert_eq!(e.etype, "SyntaxError");
    assert_eq!(e.message, "too many nested parentheses (<unknown>, line 1)");
    assert!(literal_eval(&nested(DEEP)).is_err());

    let b = binding("json_loads");
    assert_eq!(call(&b, "[[1], 2]").unwrap().py_repr(), "[[1], 2]");
    let e = call(&b, &nested(DEEP)).unwrap_err();
    assert_eq!(e.etype, "RecursionError");
    // Brackets inside strings do not count.
    let in_string = format!("[\"{}\"]", "[".repeat(DEEP));
    assert!(call(&b, &in_string).is_ok());
}

#[test]
fn a_binding_file_nested_too_deeply_is_a_binding_error() {
    let deep = format!(
        r#"{{"format": "sop-bench-tool-bindings/1", "domain": "d",
            "upstream": {{"manager_class": "M"}}, "table": null,
            "tools": [{{"name": "read", "params": [], "body": [{{"return": {}}}]}}]}}"#,
        nested(DEEP)
    );
    match Bindings::parse(&deep, |_| unreachable!("no table")) {
        Err(Error::Binding { reason, .. }) => assert!(reason.contains("recursion"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn deeply_nested_tool_arguments_are_a_tool_error_and_the_episode_goes_on() {
    let b = std::sync::Arc::new(binding("str"));
    let spec = ToolSpec::new(
        "read",
        "Reads.",
        json!({"type": "object", "properties": {"text": {}}, "required": ["text"]}),
    )
    .unwrap();
    let factory = ToolEnvironmentBuilder::new()
        .binding_tool(mtrl_env::bindings::BindingTool::new(
            b,
            spec,
            Default::default(),
        ))
        .build()
        .unwrap();
    let task = Task::new("t", json!({}), json!(null)).unwrap();
    let mut env = factory.environment();
    env.reset(&task, &Episode::default()).await.unwrap();
    let raw = |arguments: String| {
        let mut call = ToolCall::new("c0", "read", &json!({}));
        call.arguments = arguments;
        Message::assistant_with_calls("", vec![call])
    };
    let step = env
        .step(&raw(format!("{{\"text\": {}}}", nested(DEEP))))
        .await
        .unwrap();
    assert!(
        step.messages[0].content.contains("invalid_json"),
        "{step:?}"
    );
    assert!(!step.tool_results().unwrap()[0].ok);
    let step = env.step(&raw(r#"{"text": [[1]]}"#.into())).await.unwrap();
    assert_eq!(
        step.messages[0].content, "\"[[1]]\"",
        "str() of the list, as JSON"
    );
}
