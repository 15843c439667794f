//! The fast schema check agrees with the `jsonschema` crate on every SOP-Bench tool, for every
//! row's canonical arguments and for broken variants of them.

use mtrl_env::bindings::Py;
use mtrl_env::bindings::schema::FastSchema;
use mtrl_env::sop_bench::{CanonicalAgent, DOMAINS, Domain, InputPolicy, Source};
use serde_json::{Map, Value, json};

fn variants(args: &Map<String, Value>) -> Vec<Value> {
    let mut out = vec![Value::Object(args.clone())];
    for key in args.keys() {
        let mut without = args.clone();
        without.remove(key);
        out.push(Value::Object(without));
        for replacement in [
            json!(12345),
            json!("text"),
            json!(null),
            json!(true),
            json!(1.5),
            json!([]),
        ] {
            let mut changed = args.clone();
            changed.insert(key.clone(), replacement);
            out.push(Value::Object(changed));
        }
    }
    let mut extra = args.clone();
    extra.insert("unexpected".into(), json!(1));
    out.push(Value::Object(extra));
    out.push(json!([]));
    out
}

#[test]
fn fast_schema_agrees_with_jsonschema() {
    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let source = Source::Dir(dir.into());
    let (mut checked, mut compiled) = (0usize, 0usize);
    for name in DOMAINS {
        let domain = Domain::load(&source, name).unwrap();
        let agent = CanonicalAgent::new(&domain);
        let rows = domain.rows_by_task();
        let tasks = domain.tasks(InputPolicy::Mtrl).unwrap();
        for tool in domain.tools() {
            let slow = jsonschema::validator_for(tool.parameters()).unwrap();
            let Some(fast) = FastSchema::compile(tool.parameters()) else {
                continue;
            };
            compiled += 1;
            for task in tasks.iter().take(25) {
                let args = agent.arguments(tool, &rows[task.id()], &[]);
                for v in variants(&args) {
                    let py = Py::from_json(&v);
                    assert_eq!(
                        fast.is_valid(&py),
                        slow.is_valid(&v),
                        "{name}/{}: {v}",
                        tool.name()
                    );
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} argument sets checked over {compiled} compiled schemas");
    assert!(
        compiled >= 100,
        "nearly every SOP-Bench schema compiles ({compiled})"
    );
}

/// A binding tool served on the fast path says exactly what the same tool says on the general
/// path (parse to a JSON map, jsonschema validation): same results, same errors, same words.
#[test]
fn both_validation_paths_answer_alike() {
    use mtrl_core::{Episode, ToolCall};
    use mtrl_env::ToolEnvironmentBuilder;
    use mtrl_env::bindings::{BindingTool, WireStyle};

    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let source = Source::Dir(dir.into());
    let mut compared = 0usize;
    for name in DOMAINS {
        let domain = Domain::load(&source, name).unwrap();
        let (mut general, mut fast) =
            (ToolEnvironmentBuilder::new(), ToolEnvironmentBuilder::new());
        for spec in domain.tools() {
            let tool = BindingTool::new(
                domain.bindings().clone(),
                spec.clone(),
                WireStyle::StrictJson,
            );
            general = general.tool(tool.clone());
            fast = fast.binding_tool(tool);
        }
        let tasks = domain.tasks(InputPolicy::Mtrl).unwrap();
        let (mut general, mut fast) = (
            general.build().unwrap().environment(),
            fast.build().unwrap().environment(),
        );
        general.reset_sync(&tasks[0], &Episode::default()).unwrap();
        fast.reset_sync(&tasks[0], &Episode::default()).unwrap();
        let agent = CanonicalAgent::new(&domain);
        let rows = domain.rows_by_task();
        for tool in domain.tools() {
            for task in tasks.iter().take(15) {
                let args = agent.arguments(tool, &rows[task.id()], &[]);
                for v in variants(&args) {
                    let call = ToolCall::new("c", tool.name(), &v);
                    let a = general.call_tool(&call).unwrap();
                    let b = fast.call_tool(&call).unwrap();
                    assert_eq!(a, b, "{name}/{}: {v}", tool.name());
                    compared += 1;
                }
            }
        }
    }
    eprintln!("{compared} calls answered alike on both paths");
}
