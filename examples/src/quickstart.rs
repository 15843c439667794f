//! The quickstart: a policy trained on the bundled [`returns_desk`] domain, offline — audit, an
//! SFT warm start on demonstrations that teach the procedure but not the decision (only where
//! the untrained policy scores under 5%), then GRPO — and a table of strict held-out TSR with
//! 95% confidence intervals for the untrained policy, the most-common-answer baseline, the
//! SFT-only checkpoint and the GRPO checkpoint, plus GRPO's paired gains over each.
//!
//! Two policies ([`PolicyModel`]): a small one trained from scratch with the domain's own
//! tokenizer (the default, 1–2 minutes), and SmolLM2-135M-Instruct from the model cache with
//! LoRA, its own tokenizer and chat template (`--model smollm2`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mtrl_core::rollout::{Limits, RolloutDriver};
use mtrl_core::{Task, Trajectory};
use mtrl_eval::monitor::{AlarmConfig, HackingAlarm, JsonlSink, Report, read_metrics_log};
use mtrl_eval::{Bootstrap, Estimate, EvalRecord, FinalOutputEvaluator};
use mtrl_reward::ExactMatch;
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::{
    Architecture, CausalLm, Lora, LoraConfig, ModelConfig, ModelSource, Module, Params,
};
use mtrl_train::rl::Trainer;
use mtrl_train::sampler::SamplingParams;
use mtrl_train::{CandleAgent, ChatTemplate, Tokenizer};

use crate::episodes;
use crate::progress::ProgressSink;
use crate::returns_desk::{self, Expert};

mod options;

pub use options::{PolicyModel, QuickstartOptions};

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
    /// The policy trained.
    pub model: PolicyModel,
    /// Untrained, most common answer, SFT only (when the warm start ran) and the trained policy.
    pub rows: Vec<Row>,
    /// The trained policy's gains, paired over the test tasks, with their 95% intervals: over
    /// the untrained policy, over SFT (when the warm start ran) and over the most common answer.
    pub gains: Vec<Row>,
    /// The untrained policy's TSR (measured before anything else).
    pub untrained: f64,
    /// Whether the SFT warm start ran (it runs where the untrained policy scores under 5%).
    pub warm_start: bool,
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
        let mut out = format!(
            "{}: strict TSR on {tasks} held-out tasks (95% bootstrap CI)\n",
            self.model.as_str()
        );
        for r in &self.rows {
            out.push_str(&format!(
                "  {:<34} {:>5.1}%  [{:>5.1}, {:>5.1}]\n",
                r.name,
                100.0 * r.tsr.value,
                100.0 * r.tsr.low,
                100.0 * r.tsr.high
            ));
        }
        for g in &self.gains {
            out.push_str(&format!(
                "  {:<34} {:>+5.1} pts [{:>+5.1}, {:>+5.1}]\n",
                g.name,
                100.0 * g.tsr.value,
                100.0 * g.tsr.low,
                100.0 * g.tsr.high
            ));
        }
        out
    }
}

/// Under this untrained TSR the SFT warm start runs (the policy cannot yet follow the
/// procedure's format, so GRPO would see no reward); at or above it, GRPO starts from the
/// untrained policy.
pub const WARM_START_BELOW: f64 = 0.05;

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

/// The policy of `opts.model`: the network, its tokenizer and chat template.
fn policy(
    opts: &QuickstartOptions,
) -> Result<(CausalLm, Tokenizer, ChatTemplate), Box<dyn std::error::Error>> {
    Ok(match opts.model {
        PolicyModel::Tiny => {
            let (tokenizer, template) = returns_desk::tokenizer_and_template()?;
            let config = policy_config(tokenizer.vocab_size());
            let params = Params::random(&config, opts.seed, &Device::Cpu)?;
            (
                CausalLm::new(config, params, &Device::Cpu)?,
                tokenizer,
                template,
            )
        }
        PolicyModel::Smollm2 => {
            let loaded =
                ModelSource::Gguf(mtrl_train::assets::smollm2_gguf()?).load(&Device::Cpu)?;
            let lora = Lora::new(
                smollm2_lora(),
                loaded.model.config(),
                opts.seed,
                &Device::Cpu,
            )?;
            (
                loaded.model.with_lora(lora)?,
                loaded.tokenizer,
                loaded.template,
            )
        }
    })
}

/// The LoRA adapters of `--model smollm2`: rank 16 on every projection.
pub fn smollm2_lora() -> LoraConfig {
    LoraConfig {
        rank: 16,
        alpha: 32.0,
        targets: Module::ALL.to_vec(),
    }
}

/// A line about the policy.
fn describe(which: PolicyModel, model: &CausalLm) -> String {
    let c = model.config();
    let trained: usize = model.trainable().iter().map(|(_, v)| v.elem_count()).sum();
    let what = match which {
        PolicyModel::Tiny => "a small model trained from scratch",
        PolicyModel::Smollm2 => "SmolLM2-135M-Instruct with LoRA",
    };
    format!(
        "{what}: {} layers, width {}, vocabulary {}; {trained} trained parameters",
        c.num_layers, c.hidden_size, c.vocab_size
    )
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
        100.0 * tsr(&ok),
        ok.len()
    ));
    Ok(ok)
}

/// The share of successes (1.0 each) among an evaluation's episodes; 0 for none.
fn tsr(successes: &[f64]) -> f64 {
    successes.iter().sum::<f64>() / successes.len().max(1) as f64
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
    let (model, tokenizer, template) = policy(opts)?;
    let (model, tokenizer, template) = (Arc::new(model), Arc::new(tokenizer), Arc::new(template));
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

    say(&format!("policy: {}", describe(opts.model, &model)));
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
        let eval = opts.out.join("eval");
        let sft = eval
            .join("sft.jsonl")
            .exists()
            .then(|| episodes::read(&eval, "sft"))
            .transpose()?
            .map(|records| episodes::successes(&records));
        if opts.kl != 0.0 {
            // The KL reference is GRPO's starting policy (after SFT, where it ran).
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
        (
            episodes::successes(&episodes::read(&eval, "untrained")?),
            sft,
        )
    } else {
        trainer.set_sink(sink(JsonlSink::create(&metrics_path)?));
        let untrained = keep(
            &opts.out,
            "untrained",
            trainer.evaluate_episodes(&test).await?,
        )?;
        let untrained_tsr = tsr(&untrained);
        let sft = if untrained_tsr < WARM_START_BELOW {
            say(&format!(
                "the untrained policy scores {:.1}% (under {:.0}%): SFT warm start",
                100.0 * untrained_tsr,
                100.0 * WARM_START_BELOW
            ));
            let setting = Setting {
                train: &train,
                test: &test,
                factory: &factory,
                limits: &limits,
                tokenizer: &tokenizer,
                template: &template,
            };
            let sft = warm_start(opts, &mut trainer, &setting).await?;
            Some(keep(&opts.out, "sft", sft)?)
        } else {
            say(&format!(
                "the untrained policy scores {:.1}% (at least {:.0}%): no warm start, GRPO \
                 from the untrained policy",
                100.0 * untrained_tsr,
                100.0 * WARM_START_BELOW
            ));
            None
        };
        if opts.kl != 0.0 {
            trainer.set_reference(Arc::new(model.merged()?));
        }
        (untrained, sft)
    };
    let untrained_tsr = tsr(&untrained);

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
    let trained_name = if sft.is_some() { "SFT + GRPO" } else { "GRPO" };
    let mut rows = vec![
        Row {
            name: "untrained".into(),
            tsr: boot.estimate(&untrained)?,
        },
        Row {
            name: format!("most common answer ({common})"),
            tsr: boot.estimate(&baseline)?,
        },
    ];
    let mut gains = vec![Row {
        name: format!("{trained_name} - untrained (paired)"),
        tsr: boot.estimate(&diff(&grpo, &untrained))?,
    }];
    if let Some(sft) = &sft {
        rows.push(Row {
            name: "SFT only".into(),
            tsr: boot.estimate(sft)?,
        });
        gains.push(Row {
            name: format!("{trained_name} - SFT (paired)"),
            tsr: boot.estimate(&diff(&grpo, sft))?,
        });
    }
    rows.push(Row {
        name: trained_name.into(),
        tsr: boot.estimate(&grpo)?,
    });
    gains.push(Row {
        name: format!("{trained_name} - most common (paired)"),
        tsr: boot.estimate(&diff(&grpo, &baseline))?,
    });
    // The whole run's records, the part before a resumption included.
    let history = read_metrics_log(&metrics_path)?.steps;
    let alarm = HackingAlarm::new(AlarmConfig::default());
    let raised = alarm.scan(&history);
    let alarms: Vec<String> = raised
        .iter()
        .map(|a| format!("{} at step {}", a.kind.as_str(), a.step))
        .collect();
    let files = Report::new(format!(
        "mtrl quickstart: returns_desk, {}",
        opts.model.as_str()
    ))
    .history(&history)
    .alarms(raised)
    .write(opts.out.join("report"))?;
    Ok(QuickstartReport {
        model: opts.model,
        rows,
        gains,
        untrained: untrained_tsr,
        warm_start: sft.is_some(),
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
        .run_batch(
            &demonstrator,
            factory,
            &demo_tasks,
            opts.demo_decisions.demonstrations_per_task(),
        )
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
