//! The quickstart: a small policy trained from scratch on the bundled [`returns_desk`]
//! domain, offline — audit, a short SFT warm start on demonstrations that teach the procedure
//! but not the decision, then GRPO — and a table of strict held-out TSR with 95% confidence
//! intervals for the most-common-answer baseline, the SFT-only checkpoint and the GRPO
//! checkpoint, plus the paired gain of GRPO over SFT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mtrl_core::rollout::{Limits, RolloutDriver};
use mtrl_core::{Task, Trajectory};
use mtrl_eval::monitor::{AlarmConfig, HackingAlarm, JsonlSink, Report, read_metrics_log};
use mtrl_eval::{Bootstrap, Estimate, EvalRecord, FinalOutputEvaluator};
use mtrl_reward::ExactMatch;
use mtrl_train::CandleAgent;
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::{Architecture, CausalLm, ModelConfig, Params};
use mtrl_train::rl::{Aggregation, Estimator, PpoClip, TrainConfig, Trainer};
use mtrl_train::sampler::SamplingParams;

use crate::episodes;
use crate::progress::ProgressSink;
use crate::returns_desk::{self, Decisions, Expert};

/// The sizes of a quickstart run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickstartOptions {
    /// Where the metrics, report and checkpoint go.
    pub out: PathBuf,
    /// Seeds everything.
    pub seed: u64,
    /// Training tasks (demonstrations and RL draw from them).
    pub train_tasks: usize,
    /// Validation tasks (checked during RL).
    pub val_tasks: usize,
    /// Held-out test tasks (the table).
    pub test_tasks: usize,
    /// Demonstrations for the SFT warm start.
    pub demonstrations: usize,
    /// SFT passes over the demonstrations.
    pub sft_epochs: usize,
    /// GRPO steps.
    pub rl_steps: usize,
    /// Tasks per GRPO step.
    pub tasks_per_step: usize,
    /// Samples per task.
    pub group_size: usize,
    /// The peak learning rate of the SFT warm start.
    pub sft_lr: f64,
    /// The learning rate of GRPO.
    pub lr: f64,
    /// The KL coefficient to the SFT checkpoint during GRPO (0: none).
    pub kl: f64,
    /// How the demonstrations decide (random by default: SFT teaches the procedure only).
    pub demo_decisions: Decisions,
    /// Checkpoint GRPO every this many steps under `checkpoints/` (and its start, after SFT),
    /// so that a killed run resumes (`mtrl quickstart --resume`); 0: only the final one.
    pub checkpoint_every: usize,
    /// One episode at a time, each decoded alone without the prefix cache
    /// ([`EngineConfig::deterministic`]): slower, but two runs of a seed on the same thread
    /// count (or a run and its resumption) agree bit for bit.
    #[serde(default)]
    pub deterministic: bool,
}

impl QuickstartOptions {
    /// The full run.
    pub fn full(out: PathBuf) -> Self {
        Self {
            out,
            seed: 7,
            train_tasks: 480,
            val_tasks: 64,
            test_tasks: 160,
            demonstrations: 96,
            sft_epochs: 24,
            rl_steps: 120,
            tasks_per_step: 8,
            group_size: 8,
            sft_lr: 3e-3,
            lr: 1e-3,
            kl: 0.0,
            demo_decisions: Decisions::Random,
            checkpoint_every: 20,
            deterministic: false,
        }
    }

    /// The GRPO trainer's settings.
    pub fn train_config(&self) -> TrainConfig {
        let mut config = TrainConfig {
            seed: self.seed,
            steps: self.rl_steps,
            tasks_per_step: self.tasks_per_step,
            group_size: self.group_size,
            updates_per_step: 1,
            micro_batch: 32,
            max_grad_norm: 1.0,
            estimator: Estimator::Grpo,
            loss: PpoClip {
                kl_coef: self.kl,
                ..PpoClip::default()
            },
            aggregation: Aggregation::TokenMean,
            recompute_old_logprobs: false,
            eval_every: 20,
            checkpoint_every: self.checkpoint_every,
            concurrency: 128,
            ..TrainConfig::default()
        };
        config.optimizer.lr = self.lr;
        if self.deterministic {
            config.concurrency = 1;
        }
        config
    }

    /// Checks the options before the quickstart writes anything.
    ///
    /// # Errors
    /// The first option out of range, named as on the command line.
    pub fn check(&self) -> Result<(), String> {
        let at_least_one = [
            ("train_tasks", self.train_tasks),
            ("test_tasks", self.test_tasks),
            ("--demos", self.demonstrations),
        ];
        for (name, v) in at_least_one {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.demonstrations > self.train_tasks {
            return Err(format!(
                "--demos {} is more than the {} training tasks",
                self.demonstrations, self.train_tasks
            ));
        }
        for (name, v) in [("--lr", self.lr), ("sft_lr", self.sft_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} {v} must be a positive number"));
            }
        }
        if !(self.kl.is_finite() && self.kl >= 0.0) {
            return Err(format!("--kl {} must be a number ≥ 0", self.kl));
        }
        self.train_config().validate().map_err(|e| e.to_string())
    }

    /// A smoke run (CI): every stage, a couple of steps.
    pub fn smoke(out: PathBuf) -> Self {
        Self {
            train_tasks: 48,
            val_tasks: 8,
            test_tasks: 16,
            demonstrations: 8,
            sft_epochs: 1,
            rl_steps: 2,
            tasks_per_step: 2,
            group_size: 4,
            checkpoint_every: 1,
            ..Self::full(out)
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Strict TSR with its 95% interval.
    pub tsr: Estimate,
}

/// What a quickstart run measured.
#[derive(Debug, Clone)]
pub struct QuickstartReport {
    /// Baseline, SFT-only and GRPO.
    pub rows: Vec<Row>,
    /// GRPO − SFT, paired over the test tasks, with its 95% interval.
    pub gain_over_sft: Estimate,
    /// GRPO − the most-common-answer baseline, paired.
    pub gain_over_baseline: Estimate,
    /// The untrained policy's TSR (measured before anything else).
    pub untrained: f64,
    /// Alarms the reward-hacking monitor raised (empty when silent).
    pub alarms: Vec<String>,
    /// The audit's findings (empty when the domain passed).
    pub audit_findings: Vec<String>,
    /// Seconds of the whole run.
    pub seconds: f64,
    /// The HTML report.
    pub report: PathBuf,
    /// The metrics file.
    pub metrics: PathBuf,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// Held-out test tasks (the table's).
    pub test_tasks: usize,
}

impl QuickstartReport {
    /// The printed table.
    pub fn table(&self, tasks: usize) -> String {
        let mut out = format!("strict TSR on {tasks} held-out tasks (95% bootstrap CI)\n");
        for r in &self.rows {
            out.push_str(&format!(
                "  {:<34} {:>5.1}%  [{:>5.1}, {:>5.1}]\n",
                r.name,
                100.0 * r.tsr.value,
                100.0 * r.tsr.low,
                100.0 * r.tsr.high
            ));
        }
        for (name, g) in [
            ("GRPO - SFT (paired)", &self.gain_over_sft),
            ("GRPO - most common (paired)", &self.gain_over_baseline),
        ] {
            out.push_str(&format!(
                "  {:<34} {:>+5.1} pts [{:>+5.1}, {:>+5.1}]\n",
                name,
                100.0 * g.value,
                100.0 * g.low,
                100.0 * g.high
            ));
        }
        out
    }
}

/// The policy's shape: a two-layer Llama-style model, about 0.2M parameters.
pub fn policy_config(vocab: usize) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: vocab,
        hidden_size: 64,
        intermediate_size: 192,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
    }
}

/// Writes the records as JSON Lines under `out/eval/<name>.jsonl` and says what failed.
fn keep(
    out: &Path,
    name: &str,
    (trajectories, records): (Vec<Trajectory>, Vec<EvalRecord>),
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let records = &records;
    episodes::write(&out.join("eval"), name, &trajectories, records)?;
    let mut kinds = std::collections::BTreeMap::new();
    for r in records {
        if let Some(f) = &r.evaluation.failure {
            *kinds.entry(f.kind.clone()).or_insert(0usize) += 1;
        }
    }
    let ok = episodes::successes(records);
    say(&format!(
        "{name}: TSR {:.1}% on {} held-out tasks; failures {kinds:?}",
        100.0 * ok.iter().sum::<f64>() / ok.len().max(1) as f64,
        ok.len()
    ));
    Ok(ok)
}

fn say(text: &str) {
    eprintln!("[quickstart] {text}");
}

/// Runs the quickstart.
///
/// # Errors
/// Any stage's error, described.
pub async fn run(opts: &QuickstartOptions) -> Result<QuickstartReport, Box<dyn std::error::Error>> {
    run_forced(opts, false).await
}

/// The options a run saved in its `out` (and which `--resume` reads back).
pub const OPTIONS_FILE: &str = "options.json";

/// Continues the quickstart whose outputs are in `out` (killed or stopped during GRPO) from
/// its latest complete checkpoint, with the options it saved there: the untrained and SFT
/// evaluations and the warm start are kept, not redone; `metrics.jsonl` loses the records
/// written after that checkpoint, so no step appears twice. It ends exactly where the
/// uninterrupted run ends: the same weights, metrics (timings excepted) and table.
///
/// # Errors
/// No saved options, no complete checkpoint, or any stage's error.
pub async fn resume(out: &Path) -> Result<QuickstartReport, Box<dyn std::error::Error>> {
    let path = out.join(OPTIONS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is {} the output directory of a quickstart run?)",
            path.display(),
            out.display()
        )
    })?;
    let mut opts: QuickstartOptions =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    opts.out = out.to_path_buf();
    opts.check()?;
    run_inner(&opts, Start::Resume).await
}

/// How a run begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// From nothing; an earlier run's outputs are replaced only when forced.
    Fresh { force: bool },
    /// From the latest complete checkpoint.
    Resume,
}

/// What the quickstart writes under its `out`; a forced run removes them first.
pub const OUTPUTS: [&str; 8] = [
    "metrics.jsonl",
    "sft_metrics.jsonl",
    "demonstration.txt",
    "eval",
    "report",
    "checkpoint",
    "checkpoints",
    OPTIONS_FILE,
];

/// [`run`], replacing an earlier run's outputs in `opts.out` when `force` is set (without it,
/// a directory that holds anything is refused before anything is written).
///
/// # Errors
/// Options out of range, an output directory in use, or any stage's error.
pub async fn run_forced(
    opts: &QuickstartOptions,
    force: bool,
) -> Result<QuickstartReport, Box<dyn std::error::Error>> {
    run_inner(opts, Start::Fresh { force }).await
}

async fn run_inner(
    opts: &QuickstartOptions,
    how: Start,
) -> Result<QuickstartReport, Box<dyn std::error::Error>> {
    let start = Instant::now();
    opts.check()?;
    let resuming = how == Start::Resume;
    if let Start::Fresh { force } = how {
        crate::outputs::check_dir(&opts.out, force)?;
        crate::outputs::clear(&opts.out, &OUTPUTS)?;
        std::fs::create_dir_all(&opts.out)?;
        std::fs::write(
            opts.out.join(OPTIONS_FILE),
            serde_json::to_string_pretty(opts)?,
        )?;
    }
    let all = returns_desk::tasks(
        opts.train_tasks + opts.val_tasks + opts.test_tasks,
        opts.seed,
    );
    let (train, rest) = all.split_at(opts.train_tasks);
    let (val, test) = rest.split_at(opts.val_tasks);
    let (train, val, test) = (train.to_vec(), val.to_vec(), test.to_vec());
    let factory = returns_desk::environments()?;
    let (tokenizer, template) = returns_desk::tokenizer_and_template()?;
    let (tokenizer, template) = (Arc::new(tokenizer), Arc::new(template));
    let expert = Expert::new(tokenizer.clone(), template.clone());
    let limits = Limits {
        max_turns: 4,
        max_tokens_per_turn: Some(48),
        ..Limits::default()
    };

    say(&format!(
        "domain {}: {} training, {} validation, {} held-out tasks",
        returns_desk::NAME,
        train.len(),
        val.len(),
        test.len()
    ));
    let audit = mtrl_env::audit::Audit::new(returns_desk::NAME)
        .max_turns(limits.max_turns)
        .run(&factory, &expert, &train[..train.len().min(32)])
        .await;
    let audit_findings: Vec<String> = audit
        .findings
        .iter()
        .map(|f| format!("{}: {}", f.check.as_str(), f.summary))
        .collect();
    say(&format!(
        "audit (determinism, seed-dependence, answer leaks, schema, coverage): {}",
        if audit_findings.is_empty() {
            "passed".to_string()
        } else {
            audit_findings.join("; ")
        }
    ));

    let config = policy_config(tokenizer.vocab_size());
    let params = Params::random(&config, opts.seed, &Device::Cpu)?;
    let model = Arc::new(CausalLm::new(config, params, &Device::Cpu)?);
    let engine = if opts.deterministic {
        EngineConfig::deterministic()
    } else {
        EngineConfig {
            max_batch: 128,
            gather: std::time::Duration::from_millis(5),
            ..EngineConfig::default()
        }
    };
    let sampling = SamplingParams {
        max_tokens: 48,
        ..SamplingParams::default()
    };
    let agent = CandleAgent::with_parts(
        model.clone(),
        tokenizer.clone(),
        template.clone(),
        sampling,
        engine,
    );
    let greedy = CandleAgent::with_parts(
        model.clone(),
        tokenizer.clone(),
        template.clone(),
        SamplingParams::greedy(48),
        engine,
    );
    let train_config = opts.train_config();
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut trainer = Trainer::builder(model.clone(), agent, factory.clone())
        .reward(Arc::new(ExactMatch::new()))
        .evaluator(Arc::new(FinalOutputEvaluator::new()))
        .eval_agent(Arc::new(greedy))
        .tasks(train.clone(), val)
        .limits(limits.clone())
        .config(train_config)
        .build()?;
    let checkpoints = opts.out.join("checkpoints");
    let sink = |inner: JsonlSink| {
        Box::new(ProgressSink::new(
            Box::new(inner),
            opts.rl_steps as u64,
            "GRPO",
        ))
    };

    let (untrained, sft) = if resuming {
        let found = episodes::resumable(&opts.out, say)?;
        if opts.kl != 0.0 {
            // The KL reference is the SFT policy: GRPO's starting checkpoint.
            let start = checkpoints.join("step-000000");
            trainer.resume(&start)?;
            trainer.set_reference(Arc::new(model.merged()?));
        }
        trainer.resume(&found.dir)?;
        let (inner, removed) = JsonlSink::resume(&metrics_path, found.state.step)?;
        trainer.set_sink(sink(inner));
        say(&format!(
            "resuming GRPO at step {} of {} from {} ({removed} later metrics record(s) removed)",
            found.state.step,
            opts.rl_steps,
            found.dir.display()
        ));
        let eval = opts.out.join("eval");
        (
            episodes::successes(&episodes::read(&eval, "untrained")?),
            episodes::successes(&episodes::read(&eval, "sft")?),
        )
    } else {
        trainer.set_sink(sink(JsonlSink::create(&metrics_path)?));
        let untrained = keep(
            &opts.out,
            "untrained",
            trainer.evaluate_episodes(&test).await?,
        )?;
        let setting = Setting {
            train: &train,
            test: &test,
            factory: &factory,
            limits: &limits,
            tokenizer: &tokenizer,
            template: &template,
        };
        let sft = warm_start(opts, &mut trainer, &setting).await?;
        let sft = keep(&opts.out, "sft", sft)?;
        if opts.kl != 0.0 {
            trainer.set_reference(Arc::new(model.merged()?));
        }
        (untrained, sft)
    };
    let untrained_tsr = untrained.iter().sum::<f64>() / untrained.len().max(1) as f64;

    let t = Instant::now();
    trainer.run(Some(&checkpoints)).await?;
    say(&format!(
        "GRPO: {} steps of {} tasks x {} samples ({:.0} s)",
        opts.rl_steps,
        opts.tasks_per_step,
        opts.group_size,
        t.elapsed().as_secs_f64()
    ));
    let grpo = keep(&opts.out, "grpo", trainer.evaluate_episodes(&test).await?)?;
    let checkpoint = opts.out.join("checkpoint");
    trainer.save_checkpoint(&checkpoint)?;

    let common = returns_desk::most_common(&train);
    let baseline: Vec<f64> = test
        .iter()
        .map(|t| f64::from(u8::from(t.ground_truth()["decision"] == common)))
        .collect();
    let boot = Bootstrap {
        seed: opts.seed,
        ..Bootstrap::default()
    };
    let diff = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
    let rows = vec![
        Row {
            name: format!("most common answer ({common})"),
            tsr: boot.estimate(&baseline)?,
        },
        Row {
            name: "SFT only".into(),
            tsr: boot.estimate(&sft)?,
        },
        Row {
            name: "SFT + GRPO".into(),
            tsr: boot.estimate(&grpo)?,
        },
    ];
    // The whole run's records, the part before a resumption included.
    let history = read_metrics_log(&metrics_path)?.steps;
    let alarm = HackingAlarm::new(AlarmConfig::default());
    let raised = alarm.scan(&history);
    let alarms: Vec<String> = raised
        .iter()
        .map(|a| format!("{} at step {}", a.kind.as_str(), a.step))
        .collect();
    let files = Report::new("mtrl quickstart: returns_desk")
        .history(&history)
        .alarms(raised)
        .write(opts.out.join("report"))?;
    Ok(QuickstartReport {
        gain_over_sft: boot.estimate(&diff(&grpo, &sft))?,
        gain_over_baseline: boot.estimate(&diff(&grpo, &baseline))?,
        rows,
        untrained: untrained_tsr,
        alarms,
        audit_findings,
        seconds: start.elapsed().as_secs_f64(),
        report: files.html,
        metrics: metrics_path,
        checkpoint,
        test_tasks: opts.test_tasks,
    })
}

/// Where the quickstart writes by default.
pub fn default_out() -> PathBuf {
    Path::new("runs").join("quickstart")
}

/// What the warm start works with.
struct Setting<'a> {
    train: &'a [Task],
    test: &'a [Task],
    factory: &'a mtrl_env::ToolEnvironmentFactory,
    limits: &'a Limits,
    tokenizer: &'a Arc<mtrl_train::Tokenizer>,
    template: &'a Arc<mtrl_train::ChatTemplate>,
}

/// The SFT warm start: the demonstrator's episodes on the first training tasks, then
/// [`Trainer::sft`]; returns the SFT policy's held-out episodes.
async fn warm_start(
    opts: &QuickstartOptions,
    trainer: &mut Trainer<CandleAgent, mtrl_env::ToolEnvironmentFactory>,
    setting: &Setting<'_>,
) -> Result<(Vec<Trajectory>, Vec<EvalRecord>), Box<dyn std::error::Error>> {
    let Setting {
        train,
        test,
        factory,
        limits,
        tokenizer,
        template,
    } = *setting;
    let demo_tasks: Vec<Task> = train[..opts.demonstrations.min(train.len())].to_vec();
    let demonstrator =
        Expert::new(tokenizer.clone(), template.clone()).deciding(opts.demo_decisions);
    let demos: Vec<Trajectory> = RolloutDriver::new(limits.clone())
        .with_seed(opts.seed)
        .run_batch(&demonstrator, factory, &demo_tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    if let Some(seq) = demos
        .first()
        .and_then(|d| d.sequences().ok()?.into_iter().next())
    {
        let trained = seq.loss_mask.iter().filter(|m| **m).count();
        say(&format!(
            "a demonstration is {} tokens, {trained} of them trained (see demonstration.txt)",
            seq.ids.len()
        ));
        std::fs::write(
            opts.out.join("demonstration.txt"),
            tokenizer.decode(&seq.ids)?,
        )?;
    }
    let t = Instant::now();
    let sft_log = trainer.sft(&demos, opts.sft_epochs, 16, opts.sft_lr)?;
    let sft_metrics = opts.out.join("sft_metrics.jsonl");
    {
        use mtrl_eval::monitor::MetricsSink;
        let mut sink = JsonlSink::create(&sft_metrics)?;
        for m in &sft_log {
            sink.write(m)?;
        }
    }
    let sft_loss = sft_log
        .last()
        .and_then(|m| m.get(mtrl_eval::monitor::names::TRAIN_LOSS))
        .unwrap_or(f64::NAN);
    say(&format!(
        "SFT: {} demonstrations x {} epochs, {} updates, final loss {sft_loss:.3} ({:.0} s; \
         per-update metrics in {})",
        demos.len(),
        opts.sft_epochs,
        sft_log.len(),
        t.elapsed().as_secs_f64(),
        sft_metrics.display()
    ));
    Ok(trainer.evaluate_episodes(test).await?)
}
