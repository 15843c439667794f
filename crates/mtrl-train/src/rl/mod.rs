//! Reinforcement learning (and supervised warm starts) on mtrl trajectories: advantages,
//! losses, optimisation, and the trainer that runs them.

mod advantage;
mod loss;
mod optim;
mod trainer;
mod triage;

pub use advantage::{AdvantageEstimator, DrGrpo, Estimator, Grpo, Rloo, has_variance};
pub use loss::{Aggregation, LossBatch, LossOutput, NextTokenNll, PolicyLoss, PpoClip};
pub use optim::{AdamW, AdamWConfig, Decay, Grads, Schedule};
pub use trainer::{
    CheckpointScan, FoundCheckpoint, MANIFEST, Manifest, ManifestEntry, Sample, TrainConfig,
    TrainState, Trainer, TrainerBuilder, checkpoint_dirs, latest_checkpoint, verify_checkpoint,
};
pub use triage::GroupTriage;
