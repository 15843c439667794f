//! SOP-Bench: loading all 14 domains (from a directory and through the hub cache), licences,
//! diagnostics, tasks and their input policy, splits, prompts and both environment modes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mtrl_core::{Environment, EnvironmentFactory, Episode, Message, ToolCall};
use mtrl_env::Error;
use mtrl_env::sop_bench::{
    DERIVED_INPUTS, DOMAINS, Diagnostic, Domain, EVALUATION_ONLY, HubSource, InputPolicy, Mode,
    Source, Splits, label_counts,
};
use serde_json::Value;

/// The data: `MTRL_SOP_BENCH_DIR`, else the hub dataset (fetched or cached).
fn source() -> Option<Source> {
    let source = Source::from_env();
    match Domain::load(&source, "customer_service") {
        Ok(_) => Some(source),
        Err(e) => {
            eprintln!("notice: SOP-Bench is not reachable ({e}); skipping");
            None
        }
    }
}

fn dir() -> Option<PathBuf> {
    std::env::var_os("MTRL_SOP_BENCH_DIR").map(PathBuf::from)
}

#[test]
fn all_fourteen_domains_load_with_their_diagnostics() {
    let Some(source) = source() else { return };
    let all = Domain::load_all(&source);
    assert_eq!(all.len(), 14);
    for (name, domain) in &all {
        let d = domain.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(DOMAINS.contains(&d.name()));
        assert!(!d.is_empty(), "{name} has rows");
        assert!(!d.tools().is_empty());
        assert!(!d.output_columns().is_empty());
    }
    let get = |n: &str| {
        all.iter()
            .find(|(d, _)| d == n)
            .unwrap()
            .1
            .as_ref()
            .unwrap()
    };
    let email = get("email_intent");
    let not_served = email.diagnostics().iter().find_map(|d| match d {
        Diagnostic::ToolsNotServed(t) => Some(t.clone()),
        _ => None,
    });
    assert_eq!(not_served.map(|t| t.len()), Some(5));
    assert!(
        email
            .diagnostics()
            .iter()
            .any(|d| matches!(d, Diagnostic::ToolsNotAdvertised(t) if t.len() == 5))
    );
    let warehouse = get("warehouse_package_inspection");
    assert!(
        warehouse
            .diagnostics()
            .iter()
            .any(|d| matches!(d, Diagnostic::LoaderFailure(_)))
    );
    for n in [
        "content_flagging",
        "order_fulfillment",
        "warehouse_package_inspection",
    ] {
        assert!(
            get(n)
                .diagnostics()
                .contains(&Diagnostic::MissingInputColumns),
            "{n}"
        );
    }
    assert!(
        !get("customer_service")
            .diagnostics()
            .contains(&Diagnostic::MissingInputColumns)
    );
}

#[test]
fn licence_flags_match_the_data_and_training_is_refused_without_override() {
    let Some(source) = source() else { return };
    for name in DOMAINS {
        let d = Domain::load(&source, name).unwrap();
        let listed = EVALUATION_ONLY.contains(&name);
        assert_eq!(d.licence().evaluation_only, listed, "{name}");
        assert_eq!(d.licence().name, "CC BY-NC 4.0");
        if let Some(data) = dir() {
            let has_file = data.join(name).join("LICENSE.md").is_file();
            assert_eq!(has_file, listed, "{name}: LICENSE.md present = {has_file}");
            if has_file {
                assert!(
                    d.licence()
                        .conditions
                        .as_deref()
                        .unwrap()
                        .contains("facilitate training")
                );
            }
        }
        let check = d.licence().check_training(name, false);
        if listed {
            assert!(matches!(check, Err(Error::EvaluationOnly { .. })), "{name}");
            assert!(
                d.licence().check_training(name, true).is_ok(),
                "explicit override"
            );
        } else {
            assert!(check.is_ok(), "{name}");
        }
    }
}

#[test]
fn tasks_never_show_outputs_under_mtrl_policy() {
    let Some(source) = source() else { return };
    for name in DOMAINS {
        let d = Domain::load(&source, name).unwrap();
        let tasks = d.tasks(InputPolicy::Mtrl).unwrap();
        assert_eq!(tasks.len(), d.len(), "{name}");
        let outputs: BTreeSet<&str> = d.output_columns().iter().map(String::as_str).collect();
        for t in &tasks {
            assert!(
                t.inputs().keys().all(|k| !outputs.contains(k.as_str())),
                "{name}"
            );
            let truth = t.ground_truth().as_object().unwrap();
            assert_eq!(truth.len(), outputs.len());
            assert!(t.id().starts_with(&format!("{name}:")));
            assert!(t.metadata()["label"].is_string());
        }
    }
}

#[test]
fn derived_inputs_follow_the_documented_rule() {
    let Some(source) = source() else { return };
    for (name, cols) in DERIVED_INPUTS {
        let d = Domain::load(&source, name).unwrap();
        assert!(
            d.listed_input_columns().is_none(),
            "{name} lists no inputs upstream"
        );
        let args: BTreeSet<String> = d
            .tools()
            .iter()
            .flat_map(|t| {
                t.parameters()["properties"]
                    .as_object()
                    .map(|p| p.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        let tasks = d.tasks(InputPolicy::Mtrl).unwrap();
        for (i, col) in cols.iter().enumerate() {
            assert!(
                args.contains(*col) || i == 0,
                "{name}: `{col}` is neither a tool argument nor the identifier"
            );
            assert!(
                !d.output_columns().iter().any(|o| o == col),
                "{name}: {col} is an output"
            );
        }
        // No shown value is the task's answer.
        for t in &tasks {
            for answer in t.ground_truth().as_object().unwrap().values() {
                let answer = answer.as_str().unwrap();
                if answer.is_empty() {
                    continue;
                }
                for (k, v) in t.inputs() {
                    assert_ne!(
                        v.as_str(),
                        Some(answer),
                        "{}: input {k} equals the answer",
                        t.id()
                    );
                }
            }
        }
    }
}

#[test]
fn upstream_policy_reproduces_upstream_defects() {
    let Some(source) = source() else { return };
    let cf = Domain::load(&source, "content_flagging").unwrap();
    let tasks = cf.tasks(InputPolicy::Upstream).unwrap();
    assert!(
        tasks[0].inputs().contains_key("final_decision"),
        "upstream leaks the answer"
    );
    let wh = Domain::load(&source, "warehouse_package_inspection").unwrap();
    match wh.tasks(InputPolicy::Upstream) {
        Err(Error::Upstream { domain, diagnostic }) => {
            assert_eq!(domain, "warehouse_package_inspection");
            assert!(diagnostic.contains("Could not determine expected output"));
        }
        other => panic!("expected the upstream loader failure, got {other:?}"),
    }
    // mtrl's policy works where upstream's fails.
    assert_eq!(wh.tasks(InputPolicy::Mtrl).unwrap().len(), wh.len());
}

#[test]
fn splits_are_deterministic_stratified_and_disjoint() {
    let Some(source) = source() else { return };
    let d = Domain::load(&source, "customer_service").unwrap();
    let tasks = d.tasks(InputPolicy::Mtrl).unwrap();
    let a = Splits::stratified(&tasks, 7, [0.6, 0.2, 0.2]);
    let b = Splits::stratified(&tasks, 7, [0.6, 0.2, 0.2]);
    let c = Splits::stratified(&tasks, 8, [0.6, 0.2, 0.2]);
    assert_eq!(a, b, "same seed, same splits");
    assert_ne!(a.test, c.test, "another seed, other splits");
    let ids = |v: &[mtrl_core::Task]| {
        v.iter()
            .map(|t| t.id().to_string())
            .collect::<BTreeSet<_>>()
    };
    let (tr, va, te) = (ids(&a.train), ids(&a.validation), ids(&a.test));
    assert!(tr.is_disjoint(&va) && tr.is_disjoint(&te) && va.is_disjoint(&te));
    assert_eq!(tr.len() + va.len() + te.len(), tasks.len());
    let all = label_counts(&tasks);
    let (ltr, lva, lte) = (
        label_counts(&a.train),
        label_counts(&a.validation),
        label_counts(&a.test),
    );
    assert!(all.len() >= 2, "several labels");
    for (label, n) in &all {
        let got =
            |m: &std::collections::BTreeMap<String, usize>| *m.get(label).unwrap_or(&0) as f64;
        let n = *n as f64;
        assert!(
            (got(&lte) - n * 0.2).abs() <= 1.0,
            "{label}: test {} of {n}",
            got(&lte)
        );
        assert!(
            (got(&lva) - n * 0.2).abs() <= 1.0,
            "{label}: validation {} of {n}",
            got(&lva)
        );
        assert!(
            (got(&ltr) - n * 0.6).abs() <= 2.0,
            "{label}: train {} of {n}",
            got(&ltr)
        );
    }
}

#[test]
fn the_prompt_has_the_sop_and_one_answer_format_and_no_answer() {
    let Some(source) = source() else { return };
    let d = Domain::load(&source, "dangerous_goods").unwrap();
    let task = &d.tasks(InputPolicy::Mtrl).unwrap()[0];
    let msgs = d.prompt(task);
    assert_eq!(msgs.len(), 2);
    assert!(msgs[0].content.starts_with(d.sop()));
    assert_eq!(msgs[0].content.matches("<final_output>").count(), 1);
    assert!(msgs[0].content.contains("\"hazard_class\""));
    let answer = task.ground_truth()["hazard_class"].as_str().unwrap();
    assert!(
        !msgs[1].content.contains(&format!("\"{answer}\"")),
        "the answer is not shown"
    );
    assert!(
        msgs[1]
            .content
            .contains(task.inputs()["product_id"].as_str().unwrap())
    );
}

fn golden_line(data: &Path, domain: &str, tool: &str) -> Value {
    let text = std::fs::read_to_string(data.join(domain).join("golden_tool_calls.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|g| g["tool"] == tool && g["case"] == "canonical" && g["error"].is_null())
        .unwrap()
}

#[tokio::test]
async fn strict_mode_validates_and_answers_with_the_bindings() {
    let Some(data) = dir() else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let d = Domain::load(&Source::Dir(data.clone()), "customer_service").unwrap();
    let task = d.tasks(InputPolicy::Mtrl).unwrap().remove(0);
    let factory = d.environment(Mode::Strict).unwrap();
    let mut env = factory.create(&task, &Episode::default()).unwrap();
    let reset = env.reset(&task, &Episode::default()).await.unwrap();
    assert_eq!(reset.tools.len(), d.tools().len());
    let g = golden_line(&data, "customer_service", "getAuthenticationDetails");
    let call = ToolCall::raw("c1", "getAuthenticationDetails", g["args"].to_string());
    let step = env
        .step(&Message::assistant_with_calls("", vec![call]))
        .await
        .unwrap();
    let got: Value = serde_json::from_str(&step.messages[0].content).unwrap();
    let want: Value = serde_json::from_str(g["wire"].as_str().unwrap()).unwrap();
    assert_eq!(got, want);
    // A malformed id is stopped by the schema before the tool runs.
    let bad = ToolCall::raw(
        "c2",
        "getAuthenticationDetails",
        r#"{"account_id": "bad", "is_account_id_valid": true}"#,
    );
    let step = env
        .step(&Message::assistant_with_calls("", vec![bad]))
        .await
        .unwrap();
    let err: Value = serde_json::from_str(&step.messages[0].content).unwrap();
    assert_eq!(err["error"]["type"], "invalid_value");
    // NaN results are valid JSON in strict mode.
    let nan = golden_line(&data, "customer_service", "performTechnicalDiagnostics");
    assert!(nan["wire"].as_str().unwrap().contains("NaN"));
    let call = ToolCall::raw("c3", "performTechnicalDiagnostics", nan["args"].to_string());
    let step = env
        .step(&Message::assistant_with_calls("", vec![call]))
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&step.messages[0].content).unwrap();
    assert!(parsed.to_string().contains("null"));
    assert!(
        env.step(&Message::assistant("<final_output>{}</final_output>"))
            .await
            .unwrap()
            .done
    );
}

#[tokio::test]
async fn parity_mode_serves_upstream_text() {
    let Some(data) = dir() else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let d = Domain::load(&Source::Dir(data.clone()), "customer_service").unwrap();
    let task = d.tasks(InputPolicy::Mtrl).unwrap().remove(0);
    let mut env = d
        .environment(Mode::Parity)
        .unwrap()
        .create(&task, &Episode::default())
        .unwrap();
    env.reset(&task, &Episode::default()).await.unwrap();
    let g = golden_line(&data, "customer_service", "performTechnicalDiagnostics");
    let call = ToolCall::raw("c1", "performTechnicalDiagnostics", g["args"].to_string());
    let step = env
        .step(&Message::assistant_with_calls("", vec![call]))
        .await
        .unwrap();
    assert_eq!(step.messages[0].content, g["wire"].as_str().unwrap());
    let call = ToolCall::raw("c2", "noSuchTool", "{}");
    let step = env
        .step(&Message::assistant_with_calls("", vec![call]))
        .await
        .unwrap();
    assert!(
        step.messages[0]
            .content
            .starts_with("Error: Tool 'noSuchTool' not found. Available tools: ")
    );
}

/// The hub path, on local files: a dataset laid out in an hf-hub cache, read offline.
#[test]
fn hub_source_reads_the_cache_offline() {
    let Some(data) = dir() else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let cache = std::env::temp_dir().join(format!("mtrl-hf-cache-{}", std::process::id()));
    let repo = cache.join("datasets--amazon--sop-bench");
    let snapshot = repo.join("snapshots").join("0123abcd");
    let domain_dir = snapshot.join("data").join("customer_service");
    std::fs::create_dir_all(&domain_dir).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for f in [
        "sop.txt",
        "toolspecs.json",
        "metadata.json",
        "test_set_with_outputs.csv",
    ] {
        std::fs::copy(data.join("customer_service").join(f), domain_dir.join(f)).unwrap();
    }
    let hub = Source::Hub(HubSource {
        cache_dir: Some(cache.clone()),
        offline: true,
        ..HubSource::default()
    });
    let from_hub = Domain::load(&hub, "customer_service").unwrap();
    let from_dir = Domain::load(&Source::Dir(data.clone()), "customer_service").unwrap();
    assert_eq!(
        from_hub.tasks(InputPolicy::Mtrl).unwrap(),
        from_dir.tasks(InputPolicy::Mtrl).unwrap()
    );
    // A domain the cache lacks is a clear error, not a crash or a network call.
    match Domain::load(&hub, "dangerous_goods") {
        Err(Error::Source(msg)) => {
            assert!(msg.contains("dangerous_goods/sop.txt is missing"), "{msg}")
        }
        other => panic!(
            "expected a source error, got {:?}",
            other.map(|d| d.name().to_string())
        ),
    }
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn an_unknown_domain_or_a_broken_folder_is_a_typed_error() {
    let tmp = std::env::temp_dir().join(format!("mtrl-broken-{}", std::process::id()));
    let d = tmp.join("customer_service");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("sop.txt"), "SOP").unwrap();
    std::fs::write(d.join("toolspecs.json"), "[]").unwrap();
    std::fs::write(d.join("metadata.json"), r#"{"output_columns": ["x"]}"#).unwrap();
    std::fs::write(d.join("test_set_with_outputs.csv"), "a,b\n1,2\n").unwrap();
    let src = Source::Dir(tmp.clone());
    match Domain::load(&src, "customer_service") {
        Err(Error::Upstream { diagnostic, .. }) => {
            assert!(diagnostic.contains("`x`"), "{diagnostic}")
        }
        other => panic!("{:?}", other.map(|d| d.name().to_string())),
    }
    std::fs::write(d.join("metadata.json"), "{not json").unwrap();
    assert!(matches!(
        Domain::load(&src, "customer_service"),
        Err(Error::Json(_))
    ));
    assert!(matches!(
        Domain::load(&src, "no_such_domain"),
        Err(Error::Source(_))
    ));
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A copy of one domain's folder under a fresh directory, its task table passed through `edit`.
fn copy_with_table(name: &str, edit: impl FnOnce(&str) -> String) -> Option<PathBuf> {
    let from = dir()?.join(name);
    let tmp = std::env::temp_dir().join(format!("mtrl-{name}-{}", std::process::id()));
    let to = tmp.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    let table = to.join("test_set_with_outputs.csv");
    let text = std::fs::read_to_string(&table).unwrap();
    std::fs::write(&table, edit(&text)).unwrap();
    Some(tmp)
}

#[test]
fn a_task_table_cut_short_or_ragged_is_refused_naming_its_line() {
    let name = "traffic_spoofing_detection";
    // Cut inside the last row's quoted cell (the file ends `…analytics_data",SUSPICIOUS,WARNING`).
    let Some(tmp) = copy_with_table(name, |t| {
        let at = t.rfind("analytics_data\"").unwrap();
        t[..at + 4].to_string()
    }) else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let whole = Domain::load(&Source::Dir(dir().unwrap()), name).unwrap();
    let e = Domain::load(&Source::Dir(tmp.clone()), name)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_set_with_outputs.csv: line ") && e.contains("never closed"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
    // A last row without its line ending and a cell short is refused like any other row.
    let tmp = copy_with_table(name, |t| {
        let t = t.trim_end();
        t[..t.rfind(',').unwrap()].to_string()
    })
    .unwrap();
    let e = Domain::load(&Source::Dir(tmp.clone()), name)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cells for"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
    // Without its line ending but whole, it is the same table.
    let tmp = copy_with_table(name, |t| t.trim_end().to_string()).unwrap();
    let same = Domain::load(&Source::Dir(tmp.clone()), name).unwrap();
    assert_eq!(same.len(), whole.len());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_directory_that_does_not_exist_is_named_as_such() {
    let missing = std::env::temp_dir().join("mtrl-no-such-sop-bench-dir");
    let e = Domain::load(&Source::Dir(missing.clone()), "customer_service")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not exist") && e.contains(&*missing.to_string_lossy()),
        "{e}"
    );
    let empty = std::env::temp_dir().join(format!("mtrl-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let e = Domain::load(&Source::Dir(empty.clone()), "customer_service")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no folder for the domain `customer_service`"),
        "{e}"
    );
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn a_table_cut_inside_an_unquoted_last_cell_is_flagged_as_not_the_release() {
    let name = "customer_service";
    // The file ends `…,ESCALATED\n`: cut inside that last cell, it still parses.
    let Some(tmp) = copy_with_table(name, |t| t[..t.len() - 5].to_string()) else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let release = Domain::load(&Source::Dir(dir().unwrap()), name).unwrap();
    assert!(!release.diagnostics().iter().any(Diagnostic::is_warning));
    let cut = Domain::load(&Source::Dir(tmp.clone()), name).unwrap();
    assert_eq!(cut.len(), release.len());
    let warnings: Vec<String> = cut
        .diagnostics()
        .iter()
        .filter(|d| d.is_warning())
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("not the SOP-Bench release"),
        "{warnings:?}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
