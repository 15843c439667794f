//! The `mtrl` command line: `mtrl audit` over all SOP-Bench domains, and bad arguments.

use std::process::Command;

use serde_json::Value;

fn mtrl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mtrl"))
}

#[test]
fn audit_all_domains_from_one_command() {
    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let out_file = std::env::temp_dir().join(format!("mtrl-audit-{}.json", std::process::id()));
    let out = mtrl()
        .args(["audit", "--all", "--data"])
        .arg(&dir)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("auditing 14 SOP-Bench domain(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("JSON report written to"), "{stderr}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
            .split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // determinism, seed-dependence, answer-leak, schema, coverage, inputs
    assert_eq!(row("content_flagging"), "ok FLAG FLAG ok ok FLAG");
    assert_eq!(row("order_fulfillment"), "ok ok FLAG ok ok FLAG");
    assert_eq!(row("email_intent"), "ok ok ok FLAG FLAG ok");
    assert_eq!(row("warehouse_package_inspection"), "ok FLAG ok ok ok FLAG");
    assert_eq!(row("customer_service"), "ok ok ok ok ok ok");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    std::fs::remove_file(&out_file).unwrap();
    let reports = json.as_array().unwrap();
    assert_eq!(reports.len(), 14);
    let flagged: usize = reports
        .iter()
        .map(|r| r["findings"].as_array().unwrap().len())
        .sum();
    assert_eq!(flagged, 9);
    let cf = reports
        .iter()
        .find(|r| r["name"] == "content_flagging")
        .unwrap();
    let seed = cf["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "seed_dependence")
        .unwrap();
    assert!(seed["summary"].as_str().unwrap().contains("random"));
    assert!(!seed["evidence"].as_array().unwrap().is_empty());
}

#[test]
fn audit_json_for_one_domain() {
    let Some(dir) = std::env::var_os("MTRL_SOP_BENCH_DIR") else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    };
    let out = mtrl()
        .args([
            "audit",
            "--domain",
            "order_fulfillment",
            "--json",
            "--target",
            "mtrl",
            "--data",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "order_fulfillment");
    assert_eq!(
        json[0]["findings"],
        serde_json::json!([]),
        "mtrl's inputs do not leak"
    );
}

#[test]
fn bad_arguments_fail_clearly() {
    let out = mtrl().arg("audit").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--domain"));
    let out = mtrl()
        .args([
            "audit",
            "--domain",
            "no_such_domain",
            "--data",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: "));
}

#[test]
fn report_from_a_metrics_file_with_its_alarms() {
    use mtrl_eval::monitor::{JsonlSink, MetricsSink, StepMetrics, names};

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-report");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("metrics.jsonl");
    let mut sink = JsonlSink::create(&metrics).unwrap();
    // 30 steps: the reward climbs while strict success and the format rate fall.
    for step in 0..30u64 {
        let p = step as f64 / 29.0;
        let mut m = StepMetrics::new(step);
        m.set(names::REWARD_MEAN, 0.3 + 0.6 * p);
        m.set(names::FORMAT_FRAC, 0.9 - 0.6 * p);
        m.set(names::TOOL_CALLS_MEAN, 4.0);
        m.set(names::reward_component("exact_match"), 0.3 + 0.6 * p);
        m.turns = vec![0, 2, 5, 3];
        if step % 3 == 2 {
            m.set(names::VAL_TSR, 0.4 - 0.3 * p);
        }
        sink.write(&m).unwrap();
    }
    drop(sink);
    let out_dir = dir.join("report");
    let out = mtrl()
        .args([
            "report",
            "--title",
            "a hacked run",
            "--window",
            "5",
            "--metrics",
        ])
        .arg(&metrics)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("alarm reward_without_success"), "{stderr}");
    assert!(stderr.contains("alarm format_drift"), "{stderr}");
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(html.contains("a hacked run"));
    assert_eq!(
        std::fs::read_dir(out_dir.join("plots")).unwrap().count(),
        mtrl_eval::monitor::Report::PLOTS.len()
    );

    std::fs::write(&metrics, "{\"step\": 0}\nnot json\n").unwrap();
    let out = mtrl()
        .args(["report", "--metrics"])
        .arg(&metrics)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}
