//! The environment audit, on every SOP-Bench domain: it flags the known upstream defects and
//! nothing else.

#[cfg(feature = "sop-bench")]
use std::collections::BTreeSet;

use mtrl_env::audit::Check;
#[cfg(feature = "sop-bench")]
use mtrl_env::sop_bench::{DOMAINS, Domain, Source, Target, audit_domain};

#[cfg(feature = "sop-bench")]
fn flags(report: &mtrl_env::audit::AuditReport) -> BTreeSet<Check> {
    report.findings.iter().map(|f| f.check).collect()
}

#[cfg(feature = "sop-bench")]
#[tokio::test]
async fn the_audit_flags_exactly_the_upstream_defects() {
    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping the audit");
        return;
    };
    let source = Source::Dir(dir.into());
    for name in DOMAINS {
        let domain = Domain::load(&source, name).unwrap();
        let report = audit_domain(&domain, Target::Upstream).await.unwrap();
        eprintln!(
            "== {name}: {} tasks, {} calls",
            report.tasks, report.tool_calls
        );
        for f in &report.findings {
            eprintln!("  {:?}: {}\n     {:?}", f.check, f.summary, f.evidence);
        }
        let got = flags(&report);
        use Check::*;
        let want: BTreeSet<Check> = match name {
            "content_flagging" => [AnswerLeak, SeedDependence, MissingInputColumns].into(),
            "order_fulfillment" => [AnswerLeak, MissingInputColumns].into(),
            "email_intent" => [SchemaMismatch, ToolCoverage].into(),
            "warehouse_package_inspection" => [MissingInputColumns, SeedDependence].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(got, want, "{name}");
    }
}

/// mtrl's configuration (derived inputs, strict mode) fixes the leaks and the missing inputs.
/// The tool defects remain, and strict validation shows one more: patient_intake advertises
/// `patient_id` with the pattern `^P[0-9]{9}$`, which no id in the data (`P100012`, …) matches.
#[cfg(feature = "sop-bench")]
#[tokio::test]
async fn mtrl_configuration_fixes_the_leaks() {
    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping the audit");
        return;
    };
    let source = Source::Dir(dir.into());
    for name in DOMAINS {
        let domain = Domain::load(&source, name).unwrap();
        let report = audit_domain(&domain, Target::Mtrl).await.unwrap();
        for f in &report.findings {
            eprintln!(
                "  {name} {:?}: {}\n     {:?}",
                f.check, f.summary, f.evidence
            );
        }
        use Check::*;
        let want: BTreeSet<Check> = match name {
            "content_flagging" | "warehouse_package_inspection" => [SeedDependence].into(),
            "email_intent" => [SchemaMismatch, ToolCoverage].into(),
            "patient_intake" => [ToolCoverage].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(flags(&report), want, "{name}");
        if name == "patient_intake" {
            let f = &report.findings[0];
            assert!(
                f.evidence.iter().all(|e| e.contains("^P[0-9]{9}$")),
                "{:?}",
                f.evidence
            );
        }
    }
}

/// Determinism is judged on everything a reward or an evaluator reads: an environment whose
/// messages repeat but whose outcome does not is flagged.
#[tokio::test]
async fn determinism_covers_infos_and_outcomes_not_only_messages() {
    use mtrl_core::{Message, Task, ToolCall, ToolSpec, agent_fn};
    use mtrl_env::audit::Audit;
    use mtrl_env::{ToolContext, ToolEnvironmentBuilder, ToolOutput, tool_fn};
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let echo = || {
        tool_fn(
            ToolSpec::new(
                "echo",
                "Echoes.",
                json!({"type": "object", "properties": {}}),
            )
            .unwrap(),
            |_, _: &mut ToolContext<'_, ()>| ToolOutput::text("ok"),
        )
    };
    let agent = agent_fn(|ctx| {
        Ok(if ctx.turn_index() == 0 {
            Message::assistant_with_calls("", vec![ToolCall::new("c0", "echo", &json!({}))])
        } else {
            Message::assistant("done")
        })
    });
    let tasks = [Task::new("t", json!({}), json!({})).unwrap()];
    let audit = Audit::new("ledger");
    // A ledger that leaks across episodes: every run reports a new number.
    let runs = Arc::new(AtomicU64::new(0));
    let leaky = ToolEnvironmentBuilder::new()
        .tool(echo())
        .outcome(move |_, ()| Ok(json!({"ledger": runs.fetch_add(1, Ordering::SeqCst)})))
        .build()
        .unwrap();
    let report = audit.run(&leaky, &agent, &tasks).await;
    let f = report
        .findings
        .iter()
        .find(|f| f.check == Check::Determinism)
        .expect("flagged");
    assert!(f.evidence[0].contains("the outcome differs"), "{f:?}");
    // The same tools with a fixed outcome pass.
    let fixed = ToolEnvironmentBuilder::new()
        .tool(echo())
        .outcome(|_, ()| Ok(json!({"ledger": 0})))
        .build()
        .unwrap();
    let report = audit.run(&fixed, &agent, &tasks).await;
    assert!(!report.flagged(Check::Determinism), "{:?}", report.findings);
}

/// The schema check takes the served tools from the environment itself: a tool served but never
/// advertised is flagged, through any layer, with no list passed by hand; a factory that cannot
/// name its tools skips the check.
#[tokio::test]
async fn the_schema_check_asks_the_environment_what_it_serves() {
    use mtrl_core::{EnvironmentFactory, Message, Task, ToolSpec, agent_fn};
    use mtrl_env::audit::Audit;
    use mtrl_env::layers::{EnvironmentFactoryExt, Side, TruncateOutputs};
    use mtrl_env::{ToolContext, ToolEnvironmentBuilder, ToolOutput, tool_fn};
    use serde_json::json;

    let tool = |name: &str| {
        tool_fn(
            ToolSpec::new(name, "A tool.", json!({"type": "object", "properties": {}})).unwrap(),
            |_, _: &mut ToolContext<'_, ()>| ToolOutput::text("ok"),
        )
    };
    let agent = agent_fn(|_| Ok(Message::assistant("done")));
    let tasks = [Task::new("t", json!({}), json!({})).unwrap()];
    let honest = ToolEnvironmentBuilder::new()
        .tool(tool("getOrder"))
        .build()
        .unwrap();
    let report = Audit::new("honest").run(&honest, &agent, &tasks).await;
    assert!(
        !report.flagged(Check::SchemaMismatch),
        "{:?}",
        report.findings
    );

    let backdoor = ToolEnvironmentBuilder::new()
        .tool(tool("getOrder"))
        .hidden_tool(tool("refundEverything"))
        .build()
        .unwrap()
        .layer(TruncateOutputs::new(100, Side::Right));
    assert_eq!(
        backdoor.served_tools(),
        Some(vec!["getOrder".to_string(), "refundEverything".to_string()])
    );
    let report = Audit::new("backdoor").run(&backdoor, &agent, &tasks).await;
    let f = report
        .findings
        .iter()
        .find(|f| f.check == Check::SchemaMismatch)
        .expect("the hidden tool is flagged");
    assert_eq!(f.evidence, ["served, not advertised: refundEverything"]);

    // A plain closure factory cannot say what it serves: the check is skipped, not failed.
    let closure = |task: &Task, episode: &mtrl_core::Episode| backdoor.create(task, episode);
    assert_eq!(closure.served_tools(), None);
    let report = Audit::new("closure").run(&closure, &agent, &tasks).await;
    assert!(
        !report.flagged(Check::SchemaMismatch),
        "{:?}",
        report.findings
    );
}
