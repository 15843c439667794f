//! The environment audit, on every SOP-Bench domain: it flags the known upstream defects and
//! nothing else.

use std::collections::BTreeSet;

use mtrl_env::audit::Check;
use mtrl_env::sop_bench::{DOMAINS, Domain, Source, Target, audit_domain};

fn flags(report: &mtrl_env::audit::AuditReport) -> BTreeSet<Check> {
    report.findings.iter().map(|f| f.check).collect()
}

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
