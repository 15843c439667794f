//! The trainer: group rollouts → rewards and strict evaluations → advantages → updates, on
//! the candle policy, with the reliability rules of mtrl (a failed rollout drops its group, a
//! non-finite loss or gradient skips its update, checkpoints resume exactly).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Tensor, Var};
use mtrl_core::rollout::{Limits, RolloutDriver, SplitMix64, derive_seed};
use mtrl_core::{Agent, EnvironmentFactory, Evaluator, Reward, Task, Trajectory, score_groups};
use mtrl_eval::monitor::{MetricsSink, StepMetrics, UsualToolUse, names};
use mtrl_eval::{EvalRecord, Summary};
use serde::{Deserialize, Serialize};

use super::advantage::{AdvantageEstimator, Estimator};
use super::loss::{Aggregation, LossBatch, LossOutput, NextTokenNll, PolicyLoss, PpoClip};
use super::optim::{AdamW, AdamWConfig, Decay, Grads, Schedule};
use super::triage::GroupTriage;

mod checkpoint;
use crate::Error;
use crate::model::CausalLm;
pub use checkpoint::{
    CheckpointScan, FoundCheckpoint, MANIFEST, Manifest, ManifestEntry, checkpoint_dirs,
    latest_checkpoint, verify_checkpoint,
};

/// What a training run does. Every field has a default; a TOML or JSON file may set any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seeds task order, rollouts (and so every sampler) and adapters.
    pub seed: u64,
    /// RL steps.
    pub steps: usize,
    /// Tasks sampled per step.
    pub tasks_per_step: usize,
    /// Samples per task (the group).
    pub group_size: usize,
    /// Optimiser updates per step: the step's sequences are split into this many mini-batches,
    /// each one update (the PPO ratio moves away from 1 after the first).
    pub updates_per_step: usize,
    /// Sequences per forward/backward pass (gradients accumulate over them).
    pub micro_batch: usize,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// AdamW.
    pub optimizer: AdamWConfig,
    /// Warm-up updates.
    pub warmup: usize,
    /// Decay after warm-up.
    pub decay: Decay,
    /// Advantage estimator.
    pub estimator: Estimator,
    /// The PPO-clip loss.
    pub loss: PpoClip,
    /// Loss aggregation.
    pub aggregation: Aggregation,
    /// Recompute the old policy's logprobs with the training forward before updating (the PPO
    /// ratio is then exactly 1 at the first update). Off: use the logprobs stored at sampling,
    /// and save that forward pass; the mismatch and entropy metrics then come from the first
    /// mini-batch's gradient pass (all tokens when `updates_per_step` is 1).
    pub recompute_old_logprobs: bool,
    /// Validate every this many steps (0: only before training and at the end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: never, unless asked).
    pub checkpoint_every: usize,
    /// Episodes rolled out at once.
    pub concurrency: usize,
    /// Activation checkpointing in the gradient passes: keep only each layer's input and
    /// recompute the layer during the backward pass ([`CausalLm::grads`]). Memory
    /// then holds one layer's activations instead of every layer's, at the cost of a second
    /// forward pass: what long SOP prompts need.
    pub activation_checkpointing: bool,
    /// How many more times a failed training episode (an environment or agent error, a panic,
    /// a timeout) is run, each in a fresh environment with a new episode seed, before its group
    /// is dropped. Dropping at the first failure (0) biases training towards the tasks that
    /// never fail. The failed attempts are counted (`train/retried_episodes`) and never trained
    /// on. Evaluation never retries: a failure there is the score.
    pub episode_retries: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 100,
            tasks_per_step: 8,
            group_size: 8,
            updates_per_step: 1,
            micro_batch: 8,
            max_grad_norm: 1.0,
            optimizer: AdamWConfig::default(),
            warmup: 0,
            decay: Decay::Constant,
            estimator: Estimator::Grpo,
            loss: PpoClip::default(),
            aggregation: Aggregation::TokenMean,
            recompute_old_logprobs: true,
            eval_every: 10,
            checkpoint_every: 0,
            concurrency: 64,
            activation_checkpointing: false,
            episode_retries: 2,
        }
    }
}

impl TrainConfig {
    /// Checks the numbers.
    ///
    /// # Errors
    /// [`Error::TrainConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("tasks_per_step", self.tasks_per_step),
            ("group_size", self.group_size),
            ("updates_per_step", self.updates_per_step),
            ("micro_batch", self.micro_batch),
            ("concurrency", self.concurrency),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::TrainConfig(format!("{name} must be at least 1")));
            }
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr >= 0.0) {
            return Err(Error::TrainConfig(format!(
                "lr {} is not valid",
                self.optimizer.lr
            )));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return Err(Error::TrainConfig("max_grad_norm must be positive".into()));
        }
        Ok(())
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            warmup: self.warmup,
            total: self.steps * self.updates_per_step,
            decay: self.decay,
        }
    }
}

/// Where a run stands; saved in every checkpoint. Together with the config's seed it fixes the
/// task order (a shuffle per epoch seeded by `(seed, epoch)`) and every sampler's stream
/// (episode seeds derive from `(seed, step)`), so nothing else needs saving to resume exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// RL steps done.
    pub step: u64,
    /// Optimiser updates taken (RL and SFT).
    pub updates: u64,
    /// Updates skipped for a non-finite loss or gradient.
    pub skipped_updates: u64,
    /// The pass over the training tasks.
    pub epoch: u64,
    /// The next task of this epoch's order.
    pub position: usize,
    /// The last step whose validation was recorded ([`Trainer::validate`]), so that a run
    /// resumed from a checkpoint does not validate (and record) that step again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated: Option<u64>,
}

/// One sequence to train on: its ids and the positions whose next token is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Positions `p` whose next token `ids[p + 1]` is trained.
    pub at: Vec<usize>,
    /// The logprob stored at sampling for each trained token (policy distribution).
    pub rollout_logprobs: Vec<f32>,
    /// The sampling distribution's logprob for each (behaviour, or policy if untruncated).
    pub behaviour_logprobs: Vec<f32>,
    /// The sequence's advantage.
    pub advantage: f32,
}

impl Sample {
    /// The samples of a trajectory (one per segment), from its token records, each with
    /// `advantage`. Only the sampled tokens are trained.
    ///
    /// # Errors
    /// [`Error::Core`] when the records are inconsistent.
    pub fn from_trajectory(t: &Trajectory, advantage: f32) -> Result<Vec<Sample>, Error> {
        let mut out = Vec::new();
        for seq in t.sequences()? {
            let mut s = Sample {
                ids: seq.ids.clone(),
                at: Vec::new(),
                rollout_logprobs: Vec::new(),
                behaviour_logprobs: Vec::new(),
                advantage,
            };
            for i in 1..seq.ids.len() {
                if seq.loss_mask[i] {
                    s.at.push(i - 1);
                    s.rollout_logprobs.push(seq.logprobs[i]);
                    s.behaviour_logprobs.push(seq.behaviour_logprobs[i]);
                }
            }
            if !s.at.is_empty() {
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// What one update pass measured.
#[derive(Debug, Clone, Default)]
struct UpdateStats {
    stats: BTreeMap<String, f64>,
    grad_norms: Vec<f64>,
    tokens: usize,
    skipped: u64,
    lr: f64,
    entropy: f64,
    mismatch_kl: f64,
    mismatch_max: f64,
}

/// Assembles a [`Trainer`]. Only the policy, its agent and the environments are required;
/// everything else has a default or is checked at [`TrainerBuilder::build`].
pub struct TrainerBuilder<A, F> {
    model: Arc<CausalLm>,
    agent: A,
    factory: F,
    reward: Option<Arc<dyn Reward>>,
    evaluator: Option<Arc<dyn Evaluator>>,
    eval_agent: Option<Arc<dyn Agent>>,
    reference: Option<Arc<CausalLm>>,
    train: Vec<Task>,
    val: Vec<Task>,
    limits: Limits,
    config: TrainConfig,
    estimator: Option<Box<dyn AdvantageEstimator>>,
    loss: Option<Box<dyn PolicyLoss>>,
    sink: Option<Box<dyn MetricsSink>>,
}

impl<A: Agent, F: EnvironmentFactory> TrainerBuilder<A, F> {
    /// The reward that trains.
    #[must_use]
    pub fn reward(mut self, reward: Arc<dyn Reward>) -> Self {
        self.reward = Some(reward);
        self
    }

    /// The strict evaluator (validation, and the reward–evaluation gap in metrics).
    #[must_use]
    pub fn evaluator(mut self, evaluator: Arc<dyn Evaluator>) -> Self {
        self.evaluator = Some(evaluator);
        self
    }

    /// The agent validation runs (for example a greedy one); the training agent by default.
    #[must_use]
    pub fn eval_agent(mut self, agent: Arc<dyn Agent>) -> Self {
        self.eval_agent = Some(agent);
        self
    }

    /// A frozen reference policy, for a KL term.
    #[must_use]
    pub fn reference(mut self, model: Arc<CausalLm>) -> Self {
        self.reference = Some(model);
        self
    }

    /// Training and validation tasks.
    #[must_use]
    pub fn tasks(mut self, train: Vec<Task>, val: Vec<Task>) -> Self {
        self.train = train;
        self.val = val;
        self
    }

    /// Episode limits (turns, tokens, time).
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The run's settings.
    #[must_use]
    pub fn config(mut self, config: TrainConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the configured advantage estimator with your own.
    #[must_use]
    pub fn estimator(mut self, estimator: Box<dyn AdvantageEstimator>) -> Self {
        self.estimator = Some(estimator);
        self
    }

    /// Replaces the configured loss with your own.
    #[must_use]
    pub fn loss(mut self, loss: Box<dyn PolicyLoss>) -> Self {
        self.loss = Some(loss);
        self
    }

    /// Where each step's metrics go (also kept in [`Trainer::history`]).
    #[must_use]
    pub fn sink(mut self, sink: Box<dyn MetricsSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The trainer.
    ///
    /// # Errors
    /// [`Error::TrainConfig`] for a bad config, [`Error::Trainer`] for a missing reward or
    /// evaluator, or no training tasks; a candle error.
    pub fn build(self) -> Result<Trainer<A, F>, Error> {
        self.config.validate()?;
        let reward = self
            .reward
            .ok_or_else(|| Error::Trainer("the trainer needs a reward".into()))?;
        let evaluator = self
            .evaluator
            .ok_or_else(|| Error::Trainer("the trainer needs an evaluator".into()))?;
        if self.train.is_empty() {
            return Err(Error::Trainer("no training tasks".into()));
        }
        let vars = self.model.trainable();
        let optimizer = AdamW::new(vars.clone(), self.config.optimizer.clone())?;
        Ok(Trainer {
            estimator: self
                .estimator
                .unwrap_or_else(|| self.config.estimator.build()),
            loss: self
                .loss
                .unwrap_or_else(|| Box::new(self.config.loss.clone())),
            model: self.model,
            agent: self.agent,
            factory: self.factory,
            reward,
            evaluator,
            eval_agent: self.eval_agent,
            reference: self.reference,
            train: self.train,
            val: self.val,
            limits: self.limits,
            config: self.config,
            optimizer,
            vars,
            state: TrainState::default(),
            history: Vec::new(),
            sink: self.sink,
        })
    }
}

/// The RL trainer (and SFT warm start) over a candle policy. See the module docs.
pub struct Trainer<A, F> {
    model: Arc<CausalLm>,
    agent: A,
    factory: F,
    reward: Arc<dyn Reward>,
    evaluator: Arc<dyn Evaluator>,
    eval_agent: Option<Arc<dyn Agent>>,
    reference: Option<Arc<CausalLm>>,
    train: Vec<Task>,
    val: Vec<Task>,
    limits: Limits,
    config: TrainConfig,
    estimator: Box<dyn AdvantageEstimator>,
    loss: Box<dyn PolicyLoss>,
    optimizer: AdamW,
    vars: Vec<(String, Var)>,
    state: TrainState,
    history: Vec<StepMetrics>,
    sink: Option<Box<dyn MetricsSink>>,
}

impl<A: Agent, F: EnvironmentFactory> Trainer<A, F> {
    /// A builder over the policy `model`, the `agent` that samples from it (sharing its
    /// weights), and the environments.
    pub fn builder(model: Arc<CausalLm>, agent: A, factory: F) -> TrainerBuilder<A, F> {
        TrainerBuilder {
            model,
            agent,
            factory,
            reward: None,
            evaluator: None,
            eval_agent: None,
            reference: None,
            train: Vec::new(),
            val: Vec::new(),
            limits: Limits::default(),
            config: TrainConfig::default(),
            estimator: None,
            loss: None,
            sink: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Sends every later step's metrics to `sink` (replacing the builder's), so that a run can
    /// open its files only once everything else is set up.
    pub fn set_sink(&mut self, sink: Box<dyn MetricsSink>) {
        self.sink = Some(sink);
    }

    /// Where the run stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Every step's metrics so far (validation passes included).
    pub fn history(&self) -> &[StepMetrics] {
        &self.history
    }

    /// The policy.
    pub fn model(&self) -> &Arc<CausalLm> {
        &self.model
    }

    /// Sets (or replaces) the frozen reference policy of the KL term — for example a copy of
    /// the policy after its SFT warm start ([`CausalLm::merged`] makes one).
    pub fn set_reference(&mut self, model: Arc<CausalLm>) {
        self.reference = Some(model);
    }

    /// The next `tasks_per_step` training tasks: epochs of seeded shuffles.
    fn next_tasks(&mut self) -> Vec<Task> {
        let mut out = Vec::with_capacity(self.config.tasks_per_step);
        while out.len() < self.config.tasks_per_step {
            let order = shuffled(self.train.len(), self.config.seed, self.state.epoch);
            out.push(self.train[order[self.state.position]].clone());
            self.state.position += 1;
            if self.state.position == self.train.len() {
                self.state.position = 0;
                self.state.epoch += 1;
            }
        }
        out
    }

    /// One RL step: roll out groups, score them, compute advantages, update. A failed episode
    /// is retried up to [`TrainConfig::episode_retries`] times (counted); a group still with a
    /// failed rollout (or one its reward cannot score) is dropped and counted; groups whose
    /// rewards are all equal are left out and counted; a non-finite loss or gradient skips the
    /// update. Returns the step's metrics (also sent to the sink and kept in the history).
    ///
    /// # Errors
    /// Only for what makes the run itself impossible (a KL term without a reference, a tensor
    /// error in the update, a sink that cannot write); never for a bad episode.
    pub async fn step(&mut self) -> Result<StepMetrics, Error> {
        if self.config.loss.kl_coef != 0.0 && self.reference.is_none() {
            return Err(Error::TrainConfig(
                "kl_coef is set but the trainer has no reference model (builder's reference, \
                 or set_reference)"
                    .into(),
            ));
        }
        let step = self.state.step;
        let mut metrics = StepMetrics::new(step + 1);
        let tasks = self.next_tasks();
        let t0 = Instant::now();
        let driver = RolloutDriver::new(self.limits.clone())
            .with_seed(derive_seed(self.config.seed, "rl-step", step as usize))
            .with_concurrency(self.config.concurrency)
            .with_retries(self.config.episode_retries);
        let groups = driver
            .run_batch(&self.agent, &self.factory, &tasks, self.config.group_size)
            .await;
        let rollout_s = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let scored = score_groups(&tasks, &groups, &self.reward, &self.evaluator).await?;
        let reward_s = t1.elapsed().as_secs_f64();
        metrics.record_rollouts(&scored, &UsualToolUse::none());

        let triage = GroupTriage::of(&groups, &scored);
        let mut dropped = triage.dropped;
        let mut samples = Vec::new();
        let mut offsets = Vec::with_capacity(groups.len());
        let mut start = 0usize;
        for group in &groups {
            offsets.push(start);
            start += group.len();
        }
        for &g in &triage.trainable {
            let (group, first) = (&groups[g], offsets[g]);
            let totals: Vec<f64> = scored[first..first + group.len()]
                .iter()
                .map(|r| r.reward.total)
                .collect();
            let adv = self.estimator.advantages(&totals);
            let mut group_samples = Vec::new();
            let mut consistent = true;
            for (t, a) in group.iter().zip(&adv) {
                match Sample::from_trajectory(t, *a as f32) {
                    Ok(s) => group_samples.extend(s),
                    Err(_) => consistent = false,
                }
            }
            if consistent {
                samples.extend(group_samples);
            } else {
                dropped += 1;
            }
        }
        metrics.set(names::TRAIN_DROPPED_GROUPS, dropped as f64);
        let retried: usize = groups
            .iter()
            .flatten()
            .map(|t| t.failed_attempts.len())
            .sum();
        metrics.set(names::TRAIN_RETRIED_EPISODES, retried as f64);
        metrics.set(names::TRAIN_ZERO_VAR_GROUPS, triage.zero_variance as f64);

        let t2 = Instant::now();
        let loss: &dyn PolicyLoss = self.loss.as_ref();
        let update = update(
            &self.model,
            self.reference.as_deref(),
            &mut self.optimizer,
            &self.vars,
            &samples,
            loss,
            &UpdatePlan {
                aggregation: self.config.aggregation,
                updates: self.config.updates_per_step,
                micro_batch: self.config.micro_batch,
                recompute_old: self.config.recompute_old_logprobs,
                checkpointing: self.config.activation_checkpointing,
                max_grad_norm: self.config.max_grad_norm,
                schedule: self.config.schedule(),
                first_update: self.state.updates,
                peak_lr: None,
            },
        )?;
        let update_s = t2.elapsed().as_secs_f64();
        self.state.updates += update.grad_norms.len() as u64;
        self.state.skipped_updates += update.skipped;
        record_update(&mut metrics, &update, update_s);
        metrics.set(names::TIME_ROLLOUT, rollout_s);
        metrics.set(names::TIME_REWARD, reward_s);
        self.state.step += 1;
        self.emit(&metrics)?;
        Ok(metrics)
    }

    fn emit(&mut self, metrics: &StepMetrics) -> Result<(), Error> {
        if let Some(sink) = &mut self.sink {
            sink.write(metrics)?;
        }
        self.history.push(metrics.clone());
        Ok(())
    }

    /// Strict evaluation of `tasks` (one episode each, seeded by the config's seed) with the
    /// evaluation agent. The records keep each task's outcome, for paired comparisons.
    ///
    /// # Errors
    /// [`Error::Eval`] when the evaluator fails on an episode.
    pub async fn evaluate(&self, tasks: &[Task]) -> Result<Vec<EvalRecord>, Error> {
        Ok(self.evaluate_episodes(tasks).await?.1)
    }

    /// As [`Trainer::evaluate`], with the episodes themselves.
    ///
    /// # Errors
    /// As [`Trainer::evaluate`].
    pub async fn evaluate_episodes(
        &self,
        tasks: &[Task],
    ) -> Result<(Vec<Trajectory>, Vec<EvalRecord>), Error> {
        let driver = RolloutDriver::new(self.limits.clone())
            .with_seed(derive_seed(self.config.seed, "validation", 0))
            .with_concurrency(self.config.concurrency);
        let groups = match &self.eval_agent {
            Some(agent) => {
                driver
                    .run_batch(agent.as_ref(), &self.factory, tasks, 1)
                    .await
            }
            None => driver.run_batch(&self.agent, &self.factory, tasks, 1).await,
        };
        let trajectories: Vec<Trajectory> = groups.into_iter().flatten().collect();
        let records =
            mtrl_eval::evaluate_all(self.evaluator.as_ref(), tasks, &trajectories).await?;
        Ok((trajectories, records))
    }

    /// Validates on the validation split and records `val/*` metrics under the current step.
    ///
    /// # Errors
    /// As [`Trainer::evaluate`], or a sink error.
    pub async fn validate(&mut self) -> Result<Summary, Error> {
        let records = self.evaluate(&self.val.clone()).await?;
        let mut metrics = StepMetrics::new(self.state.step);
        metrics.record_validation(&records, None, None);
        self.emit(&metrics)?;
        self.state.validated = Some(self.state.step);
        Ok(Summary::from_records(&records))
    }

    /// The whole run: validation of the untrained policy, then `steps` RL steps with
    /// validation every `eval_every` steps and at the end, and checkpoints every
    /// `checkpoint_every` steps under `checkpoints` (if given; also `step-000000`, the
    /// starting point after any warm start). Resumes from wherever [`Trainer::state`] stands.
    ///
    /// # Errors
    /// As [`Trainer::step`], [`Trainer::validate`] and [`Trainer::save_checkpoint`].
    pub async fn run(&mut self, checkpoints: Option<&Path>) -> Result<(), Error> {
        let has_val = !self.val.is_empty();
        if self.state.step == 0 && has_val && self.state.validated.is_none() {
            self.validate().await?;
        }
        if let Some(dir) = checkpoints {
            // The starting point (after any warm start), so that a kill before the first
            // step's checkpoint still resumes without redoing what came before.
            let start = dir.join(format!("step-{:06}", self.state.step));
            if self.config.checkpoint_every > 0 && self.state.step == 0 {
                self.save_checkpoint(&start)?;
            }
        }
        while (self.state.step as usize) < self.config.steps {
            self.step().await?;
            let s = self.state.step as usize;
            let last = s == self.config.steps;
            if has_val && (last || (self.config.eval_every > 0 && s % self.config.eval_every == 0))
            {
                self.validate().await?;
            }
            if let Some(dir) = checkpoints {
                if self.config.checkpoint_every > 0 && (s % self.config.checkpoint_every == 0) {
                    self.save_checkpoint(&dir.join(format!("step-{s:06}")))?;
                }
            }
        }
        Ok(())
    }

    /// Supervised warm start: `epochs` passes of masked next-token training on the sampled
    /// tokens of `demonstrations` (a scripted expert's trajectories, or recorded successful
    /// rollouts, with token records), `batch` sequences per update, in a seeded order, at peak
    /// learning rate `lr` (with the config's warm-up, capped at a quarter of the updates, and
    /// decay). Returns one metrics record per update (`train/loss`, `train/grad_norm`, …).
    ///
    /// # Errors
    /// [`Error::Trainer`] when no demonstration has token records; a tensor error.
    pub fn sft(
        &mut self,
        demonstrations: &[Trajectory],
        epochs: usize,
        batch: usize,
        lr: f64,
    ) -> Result<Vec<StepMetrics>, Error> {
        let mut samples = Vec::new();
        for t in demonstrations {
            samples.extend(Sample::from_trajectory(t, 0.0)?);
        }
        if samples.is_empty() {
            return Err(Error::Trainer(
                "no demonstration has token records to train on".into(),
            ));
        }
        let batch = batch.max(1);
        let per_epoch = samples.len().div_ceil(batch);
        let schedule = Schedule {
            warmup: self.config.warmup.min(per_epoch * epochs / 4),
            total: per_epoch * epochs,
            decay: self.config.decay,
        };
        let mut out = Vec::new();
        for epoch in 0..epochs {
            let order = shuffled(samples.len(), self.config.seed ^ 0x5F7, epoch as u64);
            for (i, chunk) in order.chunks(batch).enumerate() {
                let part: Vec<Sample> = chunk.iter().map(|j| samples[*j].clone()).collect();
                let t = Instant::now();
                let update = update(
                    &self.model,
                    None,
                    &mut self.optimizer,
                    &self.vars,
                    &part,
                    &NextTokenNll,
                    &UpdatePlan {
                        aggregation: Aggregation::TokenMean,
                        updates: 1,
                        micro_batch: self.config.micro_batch,
                        recompute_old: false,
                        checkpointing: self.config.activation_checkpointing,
                        max_grad_norm: self.config.max_grad_norm,
                        schedule,
                        first_update: (epoch * per_epoch + i) as u64,
                        peak_lr: Some(lr),
                    },
                )?;
                self.state.updates += 1;
                self.state.skipped_updates += update.skipped;
                let mut m = StepMetrics::new((epoch * per_epoch + i + 1) as u64);
                record_update(&mut m, &update, t.elapsed().as_secs_f64());
                out.push(m);
            }
        }
        Ok(out)
    }
}

/// How [`update`] runs.
#[derive(Debug, Clone, Copy)]
struct UpdatePlan {
    aggregation: Aggregation,
    updates: usize,
    micro_batch: usize,
    recompute_old: bool,
    checkpointing: bool,
    max_grad_norm: f64,
    schedule: Schedule,
    first_update: u64,
    /// The peak learning rate, when not the optimiser's.
    peak_lr: Option<f64>,
}

/// Per-token inputs of one micro-batch, as tensors.
struct Micro {
    ids: Tensor,
    at: Vec<(usize, usize)>,
    behaviour: Tensor,
    rollout: Vec<f32>,
    advantages: Tensor,
    weights: Tensor,
}

fn micro_batches(
    samples: &[Sample],
    weights: &[f64],
    micro: usize,
    device: &candle_core::Device,
) -> Result<Vec<Micro>, Error> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut w_offset = 0usize;
    while offset < samples.len() {
        let part = &samples[offset..(offset + micro).min(samples.len())];
        let len = part.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(part.len() * len);
        let (mut at, mut behaviour, mut rollout, mut adv) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, s) in part.iter().enumerate() {
            ids.extend_from_slice(&s.ids);
            ids.extend(std::iter::repeat_n(0u32, len - s.ids.len()));
            at.extend(s.at.iter().map(|p| (r, *p)));
            behaviour.extend_from_slice(&s.behaviour_logprobs);
            rollout.extend_from_slice(&s.rollout_logprobs);
            adv.extend(std::iter::repeat_n(s.advantage, s.at.len()));
        }
        let n = at.len();
        let w: Vec<f32> = weights[w_offset..w_offset + n]
            .iter()
            .map(|x| *x as f32)
            .collect();
        w_offset += n;
        out.push(Micro {
            ids: Tensor::from_vec(ids, (part.len(), len), device)?,
            at,
            behaviour: Tensor::from_vec(behaviour, n, device)?,
            rollout,
            advantages: Tensor::from_vec(adv, n, device)?,
            weights: Tensor::from_vec(w, n, device)?,
        });
        offset += part.len();
    }
    Ok(out)
}

/// One step's updates over `samples`: mini-batches of `plan.updates`, each accumulated over
/// micro-batches, clipped, and applied unless the loss or the gradient is not finite.
fn update(
    model: &CausalLm,
    reference: Option<&CausalLm>,
    optimizer: &mut AdamW,
    vars: &[(String, Var)],
    samples: &[Sample],
    loss: &dyn PolicyLoss,
    plan: &UpdatePlan,
) -> Result<UpdateStats, Error> {
    let mut stats = UpdateStats::default();
    if samples.is_empty() {
        return Ok(stats);
    }
    let device = model.device().clone();
    let per = samples.len().div_ceil(plan.updates);
    let minis: Vec<&[Sample]> = samples.chunks(per).collect();
    // Rollout-versus-trainer mismatch and entropy, from the trainer's logprobs before any
    // update of this step.
    let mut measure = Measure::default();
    // Old (when recomputed) and reference logprobs of every mini-batch, before any update.
    let mut prepared = Vec::with_capacity(minis.len());
    for mini in &minis {
        let lengths: Vec<usize> = mini.iter().map(|s| s.at.len()).collect();
        let weights = plan.aggregation.weights(&lengths);
        let micros = micro_batches(mini, &weights, plan.micro_batch, &device)?;
        let mut olds = Vec::with_capacity(micros.len());
        let mut refs = Vec::with_capacity(micros.len());
        for m in &micros {
            olds.push(if plan.recompute_old {
                let (lp, entropy) = model.next_token_logprobs_detached(&m.ids, &m.at)?;
                measure.add(m, &lp, &entropy)?;
                lp
            } else {
                Tensor::new(m.rollout.as_slice(), &device)?
            });
            refs.push(match reference {
                Some(r) => Some(r.next_token_logprobs_detached(&m.ids, &m.at)?.0),
                None => None,
            });
        }
        prepared.push((micros, olds, refs));
    }
    for (u, (micros, olds, refs)) in prepared.iter().enumerate() {
        let mut grads = Grads::new();
        let mut finite = true;
        for ((m, old), reference) in micros.iter().zip(olds).zip(refs) {
            let measure_here = !plan.recompute_old && u == 0;
            // The loss of this micro-batch from its logprobs; without a separate pass, the
            // first mini-batch's gradient pass runs before any update: it measures the
            // mismatch (over that mini-batch's tokens).
            let mut loss_of = |lp: &Tensor, entropy: &Tensor| -> Result<LossOutput, Error> {
                if measure_here {
                    measure.add(m, &lp.detach(), entropy)?;
                }
                loss.loss(&LossBatch {
                    logprobs: lp,
                    old_logprobs: old,
                    behaviour_logprobs: &m.behaviour,
                    ref_logprobs: reference.as_ref(),
                    advantages: &m.advantages,
                    weights: &m.weights,
                })
            };
            let finite_loss =
                |out: &LossOutput| out.stats.get("loss").is_some_and(|l| l.is_finite());
            let (out, store) = model.grads(&m.ids, &m.at, plan.checkpointing, |lp, entropy| {
                let out = loss_of(lp, entropy)?;
                Ok((finite_loss(&out).then(|| out.loss.clone()), out))
            })?;
            for (k, v) in &out.stats {
                // Max-like statistics keep their maximum; the rest add up over micro-batches.
                let e = stats.stats.entry(k.clone()).or_insert(0.0);
                if k.ends_with("/max") {
                    *e = e.max(*v);
                } else if k.ends_with("/min") {
                    *e = if *e == 0.0 { *v } else { e.min(*v) };
                } else {
                    *e += v / plan.updates as f64;
                }
            }
            let Some(store) = store else {
                finite = false;
                continue;
            };
            grads.add(&store, vars)?;
        }
        let norm = grads.clip(plan.max_grad_norm)?;
        stats.grad_norms.push(norm);
        let lr = plan.peak_lr.unwrap_or(optimizer.config().lr)
            * plan
                .schedule
                .factor((plan.first_update + u as u64) as usize);
        stats.lr = lr;
        if !finite || !norm.is_finite() {
            stats.skipped += 1;
            continue;
        }
        optimizer.step(&grads, lr)?;
        model.weights_changed();
    }
    stats.tokens = samples.iter().map(|s| s.at.len()).sum();
    stats.entropy = measure.entropy / measure.tokens.max(1) as f64;
    stats.mismatch_kl = measure.kl / measure.tokens.max(1) as f64;
    stats.mismatch_max = measure.max;
    Ok(stats)
}

/// Sums for the mismatch and entropy metrics.
#[derive(Default)]
struct Measure {
    kl: f64,
    max: f64,
    entropy: f64,
    tokens: usize,
}

impl Measure {
    /// Adds a micro-batch: the trainer's logprobs `lp` of its tokens and their entropies.
    fn add(&mut self, m: &Micro, lp: &Tensor, entropy: &Tensor) -> Result<(), Error> {
        let trainer: Vec<f32> = lp.to_vec1()?;
        for (a, b) in m.rollout.iter().zip(&trainer) {
            let d = (*a - *b) as f64;
            // k3 estimate of KL(rollout ‖ trainer) from tokens the rollout sampled.
            self.kl += (-d).exp() + d - 1.0;
            self.max = self.max.max(d.abs());
        }
        self.entropy += entropy.sum_all()?.to_scalar::<f32>()? as f64;
        self.tokens += m.at.len();
        Ok(())
    }
}

fn record_update(metrics: &mut StepMetrics, u: &UpdateStats, seconds: f64) {
    for (k, v) in &u.stats {
        let name = match k.as_str() {
            "loss" => names::TRAIN_LOSS.to_string(),
            "clip_frac" => names::TRAIN_CLIP_FRAC.to_string(),
            "ratio/max" => names::TRAIN_RATIO_MAX.to_string(),
            "ratio/min" => names::TRAIN_RATIO_MIN.to_string(),
            "kl" => names::TRAIN_KL.to_string(),
            other => format!("train/{other}"),
        };
        metrics.set(name, *v);
    }
    if !u.grad_norms.is_empty() {
        let finite: Vec<f64> = u
            .grad_norms
            .iter()
            .copied()
            .filter(|g| g.is_finite())
            .collect();
        if !finite.is_empty() {
            metrics.set(
                names::TRAIN_GRAD_NORM,
                finite.iter().sum::<f64>() / finite.len() as f64,
            );
        }
    }
    metrics.set(names::TRAIN_SKIPPED_UPDATES, u.skipped as f64);
    metrics.set(names::TRAIN_TOKENS, u.tokens as f64);
    if u.tokens > 0 {
        metrics.set(names::TRAIN_ENTROPY, u.entropy);
        metrics.set(names::TRAIN_MISMATCH_KL, u.mismatch_kl);
        metrics.set(names::TRAIN_MISMATCH_MAX, u.mismatch_max);
        metrics.set(names::TRAIN_LR, u.lr);
        if seconds > 0.0 {
            metrics.set(names::TRAIN_TOKENS_PER_S, u.tokens as f64 / seconds);
        }
    }
    metrics.set(names::TIME_UPDATE, seconds);
}

/// A seeded permutation of `0..n` for one epoch.
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(derive_seed(seed, "epoch", epoch as usize));
    let mut v: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut v);
    v
}
