//! The quickstart's options: which policy, and the sizes of a run (full, smoke) for each.

use std::path::PathBuf;

use mtrl_train::rl::{Aggregation, Estimator, PpoClip, TrainConfig};

use crate::returns_desk::Decisions;

/// Which policy the quickstart trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyModel {
    /// A two-layer model (about 0.2M parameters) trained from scratch, with the domain's
    /// word-level tokenizer and a one-line tools section: a minute or two on a CPU.
    #[default]
    Tiny,
    /// SmolLM2-135M-Instruct (the Q4_1 GGUF of the model cache, dequantized to f32) with LoRA
    /// adapters (rank 16 on every projection), its own tokenizer and chat template, and
    /// Hermes tool calls (`<tool_call>{"name": …, "arguments": …}</tool_call>`, described in
    /// its system message, since its template renders no tools).
    Smollm2,
}

impl PolicyModel {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyModel::Tiny => "tiny",
            PolicyModel::Smollm2 => "smollm2",
        }
    }
}

impl std::str::FromStr for PolicyModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny" => Ok(PolicyModel::Tiny),
            "smollm2" => Ok(PolicyModel::Smollm2),
            other => Err(format!("unknown model {other:?}: tiny or smollm2")),
        }
    }
}

/// The sizes of a quickstart run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickstartOptions {
    /// The policy.
    #[serde(default)]
    pub model: PolicyModel,
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
    /// Training tasks demonstrated for the SFT warm start (each once, or once per decision
    /// with [`Decisions::Balanced`]).
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
    /// ([`EngineConfig::deterministic`](mtrl_train::engine::EngineConfig::deterministic)): slower, but two runs of a seed on the same thread
    /// count (or a run and its resumption) agree bit for bit.
    #[serde(default)]
    pub deterministic: bool,
}

impl QuickstartOptions {
    /// The full run.
    pub fn full(out: PathBuf) -> Self {
        Self {
            model: PolicyModel::Tiny,
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

    /// The full run of SmolLM2 with LoRA (`--model smollm2`): sized for 2 CPU cores.
    pub fn smollm2(out: PathBuf) -> Self {
        Self {
            model: PolicyModel::Smollm2,
            train_tasks: 480,
            val_tasks: 16,
            test_tasks: 100,
            demonstrations: 32,
            sft_epochs: 2,
            rl_steps: 22,
            tasks_per_step: 8,
            group_size: 8,
            sft_lr: 2e-4,
            lr: 3e-4,
            demo_decisions: Decisions::Balanced,
            checkpoint_every: 10,
            ..Self::full(out)
        }
    }

    /// The smoke run of `model` (CI): every stage, a couple of steps.
    pub fn smoke_of(model: PolicyModel, out: PathBuf) -> Self {
        match model {
            PolicyModel::Tiny => Self::smoke(out),
            PolicyModel::Smollm2 => Self {
                train_tasks: 8,
                val_tasks: 2,
                test_tasks: 4,
                demonstrations: 4,
                sft_epochs: 1,
                rl_steps: 2,
                tasks_per_step: 1,
                group_size: 4,
                checkpoint_every: 1,
                ..Self::smollm2(out)
            },
        }
    }

    /// The full run of `model`.
    pub fn full_of(model: PolicyModel, out: PathBuf) -> Self {
        match model {
            PolicyModel::Tiny => Self::full(out),
            PolicyModel::Smollm2 => Self::smollm2(out),
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
        if self.model == PolicyModel::Smollm2 {
            // A micro-batch of one group: its samples share the prompt, computed once
            // (prefix sharing), and a few hundred tokens each fit without checkpointing.
            config.micro_batch = self.group_size;
            // AdamW's first updates move every adapter weight by about the learning rate
            // whatever its gradient; on a few tasks' noisy advantages that collapses the
            // decision to one answer. A short warm-up lets the moments settle first.
            config.warmup = 5;
            config.eval_every = 10;
            config.concurrency = 64;
        }
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
        for (name, v) in [("--lr", self.lr), ("--sft-lr", self.sft_lr)] {
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
