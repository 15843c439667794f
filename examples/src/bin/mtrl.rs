//! The `mtrl` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mtrl_env::sop_bench::{DOMAINS, Domain, Source, Target, audit_domain};
use mtrl_eval::monitor::{AlarmConfig, HackingAlarm, Report, read_metrics_log};

#[derive(Parser)]
#[command(name = "mtrl", version, about = "Multi-turn RL for tool-using agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on an embedded default, offline: train a small policy from scratch on the
    /// bundled returns_desk domain (audit, SFT warm start, GRPO) and print held-out strict TSR
    /// for the most-common-answer baseline, SFT only and SFT + GRPO.
    Quickstart(QuickstartArgs),
    /// Train a model on a SOP-Bench domain from a recipe (TOML): strict test TSR before and
    /// after, metrics, episodes, the HTML report and checkpoints under the recipe's `out`.
    Train(TrainArgs),
    /// Strict TSR of a recipe's policy (from a checkpoint, or untrained) on a split, greedy.
    Eval(EvalArgs),
    /// Audit SOP-Bench environments: determinism, seed-dependence, answer leaks, schema
    /// fidelity, tool coverage.
    Audit(AuditArgs),
    /// Serve a SOP-Bench domain's environment over HTTP (the API of `mtrl_env::remote`) until
    /// interrupted; trainers and evaluators reach it with `mtrl_env::remote::RemoteFactory`.
    ServeEnv(ServeEnvArgs),
    /// Write the HTML report of a run from its metrics file (JSON Lines, one step per line),
    /// with the reward-hacking and collapse alarms raised along the way.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct QuickstartArgs {
    /// Where the metrics, HTML report and checkpoint go.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// The policy: `tiny`, a small model trained from scratch (1–2 minutes), or `smollm2`,
    /// SmolLM2-135M-Instruct from the model cache with LoRA (about 16 minutes on 2 cores;
    /// it does not yet learn the decision: see the README).
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "smollm2"])]
    model: String,
    /// A couple of steps of every stage (what CI runs).
    #[arg(long)]
    smoke: bool,
    /// GRPO steps (overrides the default).
    #[arg(long)]
    steps: Option<usize>,
    /// The seed.
    #[arg(long)]
    seed: Option<u64>,
    /// SFT passes over the demonstrations (overrides the default).
    #[arg(long)]
    sft_epochs: Option<usize>,
    /// The peak learning rate (overrides the default).
    #[arg(long)]
    lr: Option<f64>,
    /// Demonstrations for the SFT warm start (overrides the default).
    #[arg(long)]
    demos: Option<usize>,
    /// The peak learning rate of the SFT warm start (overrides the default).
    #[arg(long)]
    sft_lr: Option<f64>,
    /// Tasks per GRPO step (overrides the default).
    #[arg(long)]
    tasks_per_step: Option<usize>,
    /// Samples per task in a GRPO group (overrides the default).
    #[arg(long)]
    group_size: Option<usize>,
    /// KL coefficient to the SFT checkpoint during GRPO (overrides the default).
    #[arg(long)]
    kl: Option<f64>,
    /// Replace the outputs of an earlier run in `--out` (refused otherwise).
    #[arg(long)]
    force: bool,
    /// Demonstrations that decide by the SOP instead of at random (a control: it shows what
    /// SFT alone reaches when the demonstrations carry the decision logic).
    #[arg(long)]
    correct_demos: bool,
    /// One episode at a time, each decoded alone without the prefix cache: slower, but two
    /// runs of a seed on the same thread count (or a run and its `--resume`) agree bit for bit.
    #[arg(long)]
    deterministic: bool,
    /// Continue the run in `--out` (killed or stopped during GRPO) from its latest complete
    /// checkpoint, with the options it saved; it ends where the uninterrupted run ends.
    #[arg(
        long,
        conflicts_with_all = [
            "model", "smoke", "steps", "seed", "sft_epochs", "lr", "demos", "sft_lr",
            "tasks_per_step", "group_size", "kl", "force",
            "correct_demos", "deterministic"
        ]
    )]
    resume: bool,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The recipe (see `examples/recipes/`).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Overrides, `section.key=value` (the value read as TOML, else as a string); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Replace the outputs of an earlier run in the recipe's `out` (refused otherwise).
    #[arg(long)]
    force: bool,
    /// Continue the run whose outputs are in DIR (its `out`) from its latest complete
    /// checkpoint, with the recipe saved there; it ends where the uninterrupted run ends.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "overrides", "force"])]
    resume: Option<PathBuf>,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The recipe (see `examples/recipes/`).
    #[arg(long)]
    config: PathBuf,
    /// A checkpoint `mtrl train` wrote (the untrained policy when absent).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// `test` or `validation`.
    #[arg(long, default_value = "test")]
    split: String,
    /// Overrides, `section.key=value`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Replace an earlier evaluation of the same split (refused otherwise).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The run's metrics, as written by `mtrl_eval::monitor::JsonlSink`.
    #[arg(long)]
    metrics: PathBuf,
    /// The folder to write `report.html` and `plots/*.png` into.
    #[arg(long)]
    out: PathBuf,
    /// The report's title.
    #[arg(long, default_value = "mtrl run")]
    title: String,
    /// Steps averaged by the alarm for "now" and "the start".
    #[arg(long, default_value_t = 10)]
    window: usize,
    /// Replace a report already in `--out` (refused otherwise).
    #[arg(long)]
    force: bool,
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
    /// Replace the file `--out` names if it exists (refused otherwise).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct ServeEnvArgs {
    /// The SOP-Bench domain.
    #[arg(long)]
    domain: String,
    /// A local SOP-Bench directory (default: $MTRL_SOP_BENCH_DIR, else the hub dataset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to listen (port 0 picks a free one; the first line printed says which).
    #[arg(long, default_value = "127.0.0.1:8750")]
    addr: std::net::SocketAddr,
    /// Upstream's exact tool behaviour instead of strict validation.
    #[arg(long)]
    parity: bool,
    /// The most sessions open at once.
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
    /// Seconds a session may stay idle before it is closed.
    #[arg(long, default_value_t = 600.0)]
    idle_timeout: f64,
    /// Seconds a reset, step or close may take.
    #[arg(long, default_value_t = 60.0)]
    step_timeout: f64,
    /// The largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuditTarget {
    /// Upstream's task inputs and tool text (parity mode).
    Upstream,
    /// mtrl's input policy and strict mode.
    Mtrl,
}

fn main() -> ExitCode {
    // Freed tensors are reused, not handed back to the OS and faulted in again every step.
    mtrl_train::memory::retain_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap writes them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A usage error: clap's message on one line, without the usage block.
        Err(e) => {
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let message = message.join(" ");
            eprintln!(
                "error: {} (see --help)",
                message.strip_prefix("error: ").unwrap_or(&message)
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Quickstart(args) => run_quickstart(args),
        Command::Train(args) => run_train(args),
        Command::Eval(args) => run_eval(args),
        Command::Audit(args) => run_audit(args),
        Command::ServeEnv(args) => run_serve_env(args),
        Command::Report(args) => run_report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its chain of causes on one line: each cause that its error's message does not
/// already say is appended after `: `, and backtraces that a library put inside a message
/// (candle does when `RUST_BACKTRACE` is set) are left out, whatever the environment sets.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = clean(&e.to_string());
    let mut source = e.source();
    while let Some(s) = source {
        let text = clean(&s.to_string());
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A message's lines joined with `; `, without the frames of a backtrace.
fn clean(message: &str) -> String {
    let mut lines = Vec::new();
    for line in message.lines() {
        let t = line.trim();
        if t == "stack backtrace:" {
            break;
        }
        // A std backtrace: `  12: some::frame` and `        at src/file.rs:3:5` lines.
        let frame = t
            .split_once(':')
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if frame || t.starts_with("at ") || t.is_empty() {
            continue;
        }
        lines.push(t);
    }
    lines.join("; ")
}

fn run_report(args: ReportArgs) -> Result<(), Box<dyn std::error::Error>> {
    let log = read_metrics_log(&args.metrics)?;
    mtrl_examples::outputs::check_file(&args.out.join("report.html"), args.force)?;
    let history = log.steps;
    if history.is_empty() {
        eprintln!(
            "note: {} holds no steps; the report says so",
            args.metrics.display()
        );
    }
    for r in &log.resumptions {
        eprintln!("note: the run was {r}");
    }
    let alarm = HackingAlarm::new(AlarmConfig {
        window: args.window,
        ..AlarmConfig::default()
    });
    let alarms = alarm.scan(&history);
    for a in &alarms {
        eprintln!(
            "alarm {} at step {}: {}",
            a.kind.as_str(),
            a.step,
            a.message
        );
    }
    let files = Report::new(&args.title)
        .history(&history)
        .resumptions(&log.resumptions)
        .alarms(alarms)
        .write(&args.out)?;
    eprintln!(
        "{} steps; report written to {} ({} charts under plots/)",
        history.len(),
        files.html.display(),
        files.pngs.len()
    );
    println!("{}", files.html.display());
    Ok(())
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
    // Every name and the output file are checked before the first (slow) audit starts.
    if let Some(unknown) = names.iter().find(|n| !DOMAINS.contains(&n.as_str())) {
        return Err(format!(
            "`{unknown}` is not a SOP-Bench domain (the domains: {})",
            DOMAINS.join(", ")
        )
        .into());
    }
    if let Some(path) = &args.out {
        mtrl_examples::outputs::check_file(path, args.force)?;
    }
    let target = match args.target {
        AuditTarget::Upstream => Target::Upstream,
        AuditTarget::Mtrl => Target::Mtrl,
    };
    let where_from = match &source {
        Source::Dir(d) => d.display().to_string(),
        Source::Hub(h) => format!("hub dataset {}", h.repo),
    };
    let domains = names
        .iter()
        .map(|name| Domain::load(&source, name))
        .collect::<Result<Vec<_>, _>>()?;
    domains.iter().for_each(mtrl_examples::recipe::warn_about);
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
    for (name, domain) in names.iter().zip(&domains) {
        let report = runtime.block_on(audit_domain(domain, target))?;
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

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run_train(args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let lines = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            eprintln!(
                "[mtrl] resuming the run in {} with its saved recipe",
                dir.display()
            );
            runtime()?.block_on(mtrl_examples::recipe::resume(dir))?
        }
        (None, Some(config)) => {
            let recipe = mtrl_examples::recipe::Recipe::load(config, &args.overrides)?;
            eprintln!(
                "[mtrl] recipe {} ({} override(s)); outputs go to {}",
                config.display(),
                args.overrides.len(),
                recipe.out.display()
            );
            runtime()?.block_on(mtrl_examples::recipe::train(&recipe, args.force))?
        }
        (None, None) => return Err("mtrl train needs --config or --resume".into()),
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn run_serve_env(args: ServeEnvArgs) -> Result<(), Box<dyn std::error::Error>> {
    use mtrl_env::remote::{EnvServer, ServerConfig};
    use mtrl_env::sop_bench::Mode;
    use std::io::Write;
    use std::time::Duration;
    let seconds = |name: &str, s: f64| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| format!("--{name} must be a number of seconds ≥ 0"))
    };
    let config = ServerConfig {
        max_sessions: args.max_sessions,
        idle_timeout: seconds("idle-timeout", args.idle_timeout)?,
        step_timeout: seconds("step-timeout", args.step_timeout)?,
        max_body_bytes: args.max_body_bytes,
    };
    if config.max_sessions == 0 {
        return Err("--max-sessions must be at least 1".into());
    }
    let source = match &args.data {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::from_env(),
    };
    let domain = Domain::load(&source, &args.domain)?;
    mtrl_examples::recipe::warn_about(&domain);
    let mode = if args.parity {
        Mode::Parity
    } else {
        Mode::Strict
    };
    let factory = domain.environment(mode)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let server = EnvServer::new(factory, config).bind(args.addr).await?;
        // The first line on stdout is the URL, for scripts that start the server on port 0.
        println!("{}", server.url());
        std::io::stdout().flush()?;
        eprintln!(
            "[mtrl] serving SOP-Bench {} ({} tools, {:?} mode) at {}; Ctrl-C stops",
            domain.name(),
            domain.tools().len(),
            mode,
            server.url()
        );
        tokio::signal::ctrl_c().await?;
        eprintln!("[mtrl] stopping: closing the open sessions");
        server.shutdown().await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

fn run_eval(args: EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    let recipe = mtrl_examples::recipe::Recipe::load(&args.config, &args.overrides)?;
    let lines = runtime()?.block_on(mtrl_examples::recipe::eval(
        &recipe,
        args.checkpoint.as_deref(),
        &args.split,
        args.force,
    ))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn run_quickstart(args: QuickstartArgs) -> Result<(), Box<dyn std::error::Error>> {
    use mtrl_examples::quickstart::{QuickstartOptions, run_forced};
    if args.resume {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let report = runtime.block_on(mtrl_examples::quickstart::resume(&args.out))?;
        return print_quickstart(&report);
    }
    let model: mtrl_examples::quickstart::PolicyModel = args.model.parse()?;
    let mut opts = if args.smoke {
        QuickstartOptions::smoke_of(model, args.out)
    } else {
        QuickstartOptions::full_of(model, args.out)
    };
    if let Some(steps) = args.steps {
        opts.rl_steps = steps;
    }
    if let Some(seed) = args.seed {
        opts.seed = seed;
    }
    if let Some(epochs) = args.sft_epochs {
        opts.sft_epochs = epochs;
    }
    if let Some(lr) = args.lr {
        opts.lr = lr;
    }
    if let Some(demos) = args.demos {
        opts.demonstrations = demos;
    }
    if let Some(lr) = args.sft_lr {
        opts.sft_lr = lr;
    }
    if let Some(n) = args.tasks_per_step {
        opts.tasks_per_step = n;
    }
    if let Some(n) = args.group_size {
        opts.group_size = n;
    }
    if let Some(kl) = args.kl {
        opts.kl = kl;
    }
    if args.correct_demos {
        opts.demo_decisions = mtrl_examples::returns_desk::Decisions::Correct;
    }
    opts.deterministic = args.deterministic;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_forced(&opts, args.force))?;
    print_quickstart(&report)
}

fn print_quickstart(
    report: &mtrl_examples::quickstart::QuickstartReport,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", report.table(report.test_tasks));
    println!(
        "untrained policy: {:.1}% ({}); reward-hacking and collapse alarms: {}",
        100.0 * report.untrained,
        {
            let threshold = 100.0 * mtrl_examples::quickstart::WARM_START_BELOW;
            if report.warm_start {
                format!("under {threshold:.0}%: SFT warm start")
            } else {
                format!("at least {threshold:.0}%: no warm start")
            }
        },
        if report.alarms.is_empty() {
            "silent".to_string()
        } else {
            report.alarms.join(", ")
        }
    );
    println!("wall time: {:.0} s", report.seconds);
    println!("metrics: {}", report.metrics.display());
    println!("report: {}", report.report.display());
    println!("checkpoint: {}", report.checkpoint.display());
    Ok(())
}
