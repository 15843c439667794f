//! `mtrl audit`: audits SOP-Bench domains and prints a table or JSON.

use std::fmt::Write as _;

use mtrl_env::audit::{AuditReport, Check};

/// The columns of the table, in order.
pub const COLUMNS: [(Check, &str); 6] = [
    (Check::Determinism, "determinism"),
    (Check::SeedDependence, "seed-dependence"),
    (Check::AnswerLeak, "answer-leak"),
    (Check::SchemaMismatch, "schema"),
    (Check::ToolCoverage, "coverage"),
    (Check::MissingInputColumns, "inputs"),
];

/// A readable table of reports, one row per domain, then each finding with its evidence.
pub fn table(reports: &[AuditReport]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:30} {:>5} {:>6}", "domain", "tasks", "calls");
    for (_, name) in COLUMNS {
        let _ = write!(out, "  {name:15}");
    }
    out.push('\n');
    for r in reports {
        let _ = write!(out, "{:30} {:>5} {:>6}", r.name, r.tasks, r.tool_calls);
        for (check, _) in COLUMNS {
            let cell = if r.flagged(check) { "FLAG" } else { "ok" };
            let _ = write!(out, "  {cell:15}");
        }
        out.push('\n');
    }
    for r in reports {
        for f in &r.findings {
            let _ = writeln!(out, "\n{} · {}: {}", r.name, f.check.as_str(), f.summary);
            for e in &f.evidence {
                let _ = writeln!(out, "    {e}");
            }
        }
    }
    out
}
