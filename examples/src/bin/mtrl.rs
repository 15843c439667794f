//! The `mtrl` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mtrl_env::sop_bench::{DOMAINS, Domain, Source, Target, audit_domain};

#[derive(Parser)]
#[command(name = "mtrl", version, about = "Multi-turn RL for tool-using agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Audit SOP-Bench environments: determinism, seed-dependence, answer leaks, schema
    /// fidelity, tool coverage.
    Audit(AuditArgs),
}

#[derive(clap::Args)]
struct AuditArgs {
    /// One domain to audit (repeatable).
    #[arg(long = "domain", required_unless_present = "all")]
    domains: Vec<String>,
    /// Audit all 14 domains.
    #[arg(long, conflicts_with = "domains")]
    all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A local SOP-Bench directory (default: $MTRL_SOP_BENCH_DIR, else the hub dataset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// What to audit: the domains as upstream ships them, or as mtrl trains on them.
    #[arg(long, value_enum, default_value_t = AuditTarget::Upstream)]
    target: AuditTarget,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuditTarget {
    /// Upstream's task inputs and tool text (parity mode).
    Upstream,
    /// mtrl's input policy and strict mode.
    Mtrl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Audit(args) => match run_audit(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_audit(args: AuditArgs) -> Result<(), Box<dyn std::error::Error>> {
    let source = match &args.data {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::from_env(),
    };
    let names: Vec<String> = if args.all {
        DOMAINS.iter().map(|d| d.to_string()).collect()
    } else {
        args.domains.clone()
    };
    let target = match args.target {
        AuditTarget::Upstream => Target::Upstream,
        AuditTarget::Mtrl => Target::Mtrl,
    };
    let where_from = match &source {
        Source::Dir(d) => d.display().to_string(),
        Source::Hub(h) => format!("hub dataset {}", h.repo),
    };
    eprintln!(
        "auditing {} SOP-Bench domain(s) from {where_from} ({} configuration)…",
        names.len(),
        match target {
            Target::Upstream => "upstream",
            Target::Mtrl => "mtrl",
        }
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for name in &names {
        let domain = Domain::load(&source, name)?;
        let report = runtime.block_on(audit_domain(&domain, target))?;
        eprintln!(
            "  {name}: {} tasks, {} tool calls, {} flag(s)",
            report.tasks,
            report.tool_calls,
            report.findings.len()
        );
        reports.push(report);
    }
    let json = serde_json::to_string_pretty(&reports)?;
    if args.json {
        println!("{json}");
    } else {
        print!("{}", mtrl_examples::audit::table(&reports));
    }
    let flags: usize = reports.iter().map(|r| r.findings.len()).sum();
    match &args.out {
        Some(path) => {
            std::fs::write(path, &json)?;
            eprintln!(
                "{flags} flag(s) over {} domain(s); JSON report written to {}",
                reports.len(),
                path.display()
            );
        }
        None => eprintln!(
            "{flags} flag(s) over {} domain(s); report printed above",
            reports.len()
        ),
    }
    Ok(())
}
