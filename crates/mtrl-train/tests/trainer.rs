//! The trainer on a tiny random policy with a word-level tokenizer and a one-turn toy task:
//! the first on-policy update has a PPO ratio of exactly 1, a failed rollout drops only its
//! group, a NaN loss skips its update and is never checkpointed, a killed-and-resumed run ends
//! with the same weights (hash) and metrics as an uninterrupted one, and SFT lowers the loss
//! on its demonstrations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use candle_core::{DType, Device};
use mtrl_core::rollout::Limits;
use mtrl_core::trajectory::Episode;
use mtrl_core::{
    Environment, Evaluation, Evaluator, Message, Reset, Reward, RewardValue, Step, Task, Trajectory,
};
use mtrl_eval::monitor::{StepMetrics, names};
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::{Architecture, CausalLm, ModelConfig, Params};
use mtrl_train::rl::{LossBatch, LossOutput, PolicyLoss, PpoClip, TrainConfig, Trainer};
use mtrl_train::sampler::SamplingParams;
use mtrl_train::{CandleAgent, ChatTemplate, ScriptedTokenAgent, Tokenizer};
use serde_json::json;

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn tokenizer() -> Arc<Tokenizer> {
    let words: Vec<String> = ["pick", "or", "user", "assistant", "system"]
        .map(String::from)
        .to_vec();
    let specials = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
    Arc::new(Tokenizer::from_words(&words, &specials, "<|im_end|>").unwrap())
}

fn template() -> Arc<ChatTemplate> {
    Arc::new(ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap())
}

fn model(seed: u64) -> Arc<CausalLm> {
    model_in(seed, DType::F32)
}

/// The model computing in `dtype`.
fn model_in(seed: u64, dtype: DType) -> Arc<CausalLm> {
    let mut config = ModelConfig::tiny(Architecture::Llama);
    config.vocab_size = tokenizer().vocab_size();
    let params = Params::random(&config, seed, &Device::Cpu).unwrap();
    let model = CausalLm::new(config, params, &Device::Cpu).unwrap();
    Arc::new(model.with_dtype(dtype).unwrap())
}

fn agent(model: &Arc<CausalLm>) -> CandleAgent {
    CandleAgent::with_parts(
        model.clone(),
        tokenizer(),
        template(),
        SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        },
        EngineConfig::default(),
    )
}

/// One turn: the user asks to pick a letter.
struct Pick;

#[async_trait]
impl Environment for Pick {
    async fn reset(&mut self, _task: &Task, _episode: &Episode) -> mtrl_core::Result<Reset> {
        Ok(Reset {
            messages: vec![Message::user("pick a or b.")],
            ..Reset::default()
        })
    }

    async fn step(&mut self, _action: &Message) -> mtrl_core::Result<Step> {
        Ok(Step::done(Vec::new()))
    }
}

fn factory(task: &Task, _episode: &Episode) -> mtrl_core::Result<Pick> {
    match task.id() {
        "broken" => Err(mtrl_core::Error::environment("the sandbox did not start")),
        "panics" => panic!("the factory panicked"),
        _ => Ok(Pick),
    }
}

fn answer(t: &Trajectory) -> String {
    t.turns
        .last()
        .map(|turn| turn.action.content.trim().to_string())
        .unwrap_or_default()
}

/// 1 when the answer has a vowel: a dense toy reward, so that a random policy's groups vary.
struct Vowel;

#[async_trait]
impl Reward for Vowel {
    async fn score(&self, _task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let hit = answer(t).to_lowercase().contains(['a', 'e', 'i', 'o', 'u']);
        Ok(RewardValue::new(f64::from(u8::from(hit))))
    }
}

struct Exact;

#[async_trait]
impl Evaluator for Exact {
    async fn evaluate(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<Evaluation> {
        let want = task.ground_truth()["letter"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let success = answer(t) == want;
        Ok(Evaluation {
            success,
            completed: true,
            ..Evaluation::default()
        })
    }
}

fn tasks(ids: &[&str]) -> Vec<Task> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let letter = if i % 2 == 0 { "a" } else { "b" };
            Task::new(*id, json!({}), json!({ "letter": letter })).unwrap()
        })
        .collect()
}

fn config() -> TrainConfig {
    let mut c = TrainConfig {
        steps: 4,
        tasks_per_step: 2,
        group_size: 6,
        updates_per_step: 2,
        micro_batch: 4,
        concurrency: 1,
        eval_every: 0,
        seed: 11,
        ..TrainConfig::default()
    };
    c.optimizer.lr = 3e-2;
    c
}

type TestTrainer = Trainer<CandleAgent, fn(&Task, &Episode) -> mtrl_core::Result<Pick>>;

fn trainer(model: Arc<CausalLm>, config: TrainConfig, train: &[&str]) -> TestTrainer {
    let agent = agent(&model);
    Trainer::builder(model, agent, factory as fn(&Task, &Episode) -> _)
        .reward(Arc::new(Vowel))
        .evaluator(Arc::new(Exact))
        .tasks(tasks(train), Vec::new())
        .limits(Limits {
            max_turns: 1,
            ..Limits::default()
        })
        .config(config)
        .build()
        .unwrap()
}

fn weight_hash(model: &CausalLm) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, var) in model.trainable() {
        name.hash(&mut h);
        for v in var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        {
            v.to_bits().hash(&mut h);
        }
    }
    h.finish()
}

/// Metrics without the timings.
fn untimed(m: &StepMetrics) -> StepMetrics {
    let mut m = m.clone();
    m.values
        .retain(|k, _| !k.starts_with("time/") && k != names::TRAIN_TOKENS_PER_S);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_on_policy_update_has_a_ratio_of_exactly_one() {
    for recompute in [true, false] {
        let mut c = config();
        c.updates_per_step = 1;
        c.recompute_old_logprobs = recompute;
        let mut t = trainer(model(1), c, &["t0", "t1", "t2", "t3"]);
        let mut trained = false;
        for _ in 0..3 {
            let m = t.step().await.unwrap();
            if m.get(names::TRAIN_TOKENS).unwrap_or(0.0) > 0.0 {
                let (max, min) = (
                    m.get(names::TRAIN_RATIO_MAX).unwrap(),
                    m.get(names::TRAIN_RATIO_MIN).unwrap(),
                );
                if recompute {
                    assert_eq!((max, min), (1.0, 1.0), "{m:?}");
                } else {
                    // Against the stored rollout logprobs: 1 up to the two paths' rounding.
                    assert!(
                        (max - 1.0).abs() < 1e-3 && (min - 1.0).abs() < 1e-3,
                        "{m:?}"
                    );
                }
                assert_eq!(m.get(names::TRAIN_CLIP_FRAC), Some(0.0));
                // The stored rollout logprobs and the training forward agree closely (this
                // caught the engine reusing keys and values cached before an update); without
                // the recomputing pass, the gradient pass measures it.
                let kl = m.get(names::TRAIN_MISMATCH_KL).unwrap();
                assert!(kl.abs() < 1e-4, "mismatch KL {kl}");
                assert!(m.get(names::TRAIN_MISMATCH_MAX).unwrap() < 1e-3);
                assert!(m.get(names::TRAIN_ENTROPY).unwrap() > 0.0);
                assert!(m.get(names::TRAIN_GRAD_NORM).unwrap() > 0.0);
                trained = true;
            }
            for key in [names::TIME_ROLLOUT, names::TIME_REWARD, names::TIME_UPDATE] {
                assert!(m.get(key).is_some(), "{key} missing");
            }
        }
        assert!(trained, "no step had a group with reward variance");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_drops_only_its_group() {
    let mut c = config();
    c.tasks_per_step = 4;
    let mut t = trainer(model(2), c, &["t0", "broken", "t2", "panics"]);
    let before = weight_hash(t.model());
    let m = t.step().await.unwrap();
    assert_eq!(m.get(names::TRAIN_DROPPED_GROUPS), Some(2.0), "{m:?}");
    assert_eq!(m.get(names::FAILED_FRAC), Some(0.5));
    // These two never start, so every one of their 2 x 6 episodes was retried twice first.
    assert_eq!(m.get(names::TRAIN_RETRIED_EPISODES), Some(24.0), "{m:?}");
    let kept = 2.0 - m.get(names::TRAIN_ZERO_VAR_GROUPS).unwrap();
    if kept > 0.0 {
        assert!(m.get(names::TRAIN_TOKENS).unwrap() > 0.0);
        assert_ne!(before, weight_hash(t.model()), "the healthy groups trained");
    }
    // The run goes on.
    t.step().await.unwrap();
    assert_eq!(t.state().step, 2);
}

/// PPO-clip, but NaN while `poison` is set.
struct Poisoned {
    inner: PpoClip,
    poison: Arc<AtomicBool>,
}

impl PolicyLoss for Poisoned {
    fn name(&self) -> &str {
        "poisoned"
    }

    fn loss(&self, batch: &LossBatch<'_>) -> Result<LossOutput, mtrl_train::Error> {
        let mut out = self.inner.loss(batch)?;
        if self.poison.load(Ordering::SeqCst) {
            out.loss = (out.loss * f64::NAN)?;
            out.stats.insert("loss".into(), f64::NAN);
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_loss_skips_the_update_and_is_never_checkpointed() {
    let poison = Arc::new(AtomicBool::new(true));
    let m = model(3);
    let agent = agent(&m);
    let mut c = config();
    c.updates_per_step = 1;
    let mut t = Trainer::builder(m, agent, factory as fn(&Task, &Episode) -> _)
        .reward(Arc::new(Vowel))
        .evaluator(Arc::new(Exact))
        .tasks(tasks(&["t0", "t1"]), Vec::new())
        .limits(Limits {
            max_turns: 1,
            ..Limits::default()
        })
        .config(c)
        .loss(Box::new(Poisoned {
            inner: PpoClip::default(),
            poison: poison.clone(),
        }))
        .build()
        .unwrap();
    let mut skipped = 0.0;
    for _ in 0..4 {
        let before = weight_hash(t.model());
        let m = t.step().await.unwrap();
        if m.get(names::TRAIN_TOKENS).unwrap_or(0.0) > 0.0 {
            assert_eq!(m.get(names::TRAIN_SKIPPED_UPDATES), Some(1.0), "{m:?}");
            assert_eq!(
                before,
                weight_hash(t.model()),
                "a NaN update changed the weights"
            );
            skipped += 1.0;
        }
    }
    assert!(skipped > 0.0, "no step trained");
    assert_eq!(t.state().skipped_updates as f64, skipped);
    // The weights stayed finite, so a checkpoint is written; once they are not, none is.
    let dir = std::env::temp_dir().join(format!("mtrl-nan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    t.save_checkpoint(&dir.join("ok")).unwrap();
    let (_, var) = t.model().trainable().into_iter().next().unwrap();
    var.set(&(var.as_tensor() * f64::NAN).unwrap()).unwrap();
    assert!(t.save_checkpoint(&dir.join("bad")).is_err());
    assert!(!dir.join("bad").join("trainable.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
    // Healthy again: the update happens.
    poison.store(false, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_ends_with_the_same_weights_and_metrics() {
    // In f32, and in bf16 (full fine-tuning: the optimiser's f32 master weights are saved).
    for dtype in [DType::F32, DType::BF16] {
        resume_matches_uninterrupted(dtype).await;
    }
}

async fn resume_matches_uninterrupted(dtype: DType) {
    let model = |seed| model_in(seed, dtype);
    let train = ["t0", "t1", "t2", "t3", "t4"];
    // Uninterrupted.
    let mut full = trainer(model(4), config(), &train);
    full.run(None).await.unwrap();
    let full_hash = weight_hash(full.model());
    let full_metrics: Vec<StepMetrics> = full.history().iter().map(untimed).collect();
    assert_eq!(full.state().step, 4);
    assert!(
        full_metrics
            .iter()
            .any(|m| m.get(names::TRAIN_TOKENS).unwrap_or(0.0) > 0.0),
        "{dtype:?}: nothing trained"
    );

    // Killed after two steps...
    let dir = std::env::temp_dir().join(format!("mtrl-resume-{}-{dtype:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut first = trainer(model(4), config(), &train);
    first.step().await.unwrap();
    first.step().await.unwrap();
    first.save_checkpoint(&dir).unwrap();
    let first_metrics: Vec<StepMetrics> = first.history().iter().map(untimed).collect();
    drop(first);
    // ...and resumed by a fresh process: a new model from the same initialisation.
    let mut resumed = trainer(model(4), config(), &train);
    resumed.resume(&dir).unwrap();
    assert_eq!(resumed.state().step, 2);
    resumed.run(None).await.unwrap();
    let mut metrics = first_metrics;
    metrics.extend(resumed.history().iter().map(untimed));
    assert_eq!(weight_hash(resumed.model()), full_hash, "{dtype:?}");
    assert_eq!(metrics, full_metrics, "{dtype:?}");
    assert_ne!(
        full_hash,
        weight_hash(&model(4)),
        "{dtype:?}: training changed nothing"
    );
    assert!(
        resumed
            .model()
            .trainable()
            .iter()
            .all(|(_, v)| v.dtype() == dtype)
    );

    // A checkpoint of another config is refused.
    let mut other = config();
    other.seed = 99;
    let mut wrong = trainer(model(4), other, &train);
    let e = wrong.resume(&dir).unwrap_err().to_string();
    assert!(
        e.starts_with("checkpoint ") && e.contains("state.json"),
        "{e}"
    );
    assert!(e.contains("different train config"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_checkpoint_names_the_file_that_is_wrong() {
    let train = ["t0", "t1"];
    let dir = std::env::temp_dir().join(format!("mtrl-broken-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = trainer(model(4), config(), &train);
    t.step().await.unwrap();
    t.save_checkpoint(&dir).unwrap();
    let copy = |name: &str| {
        let to = dir.with_extension(name);
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to).unwrap();
        for f in [
            "state.json",
            "trainable.safetensors",
            "optimizer.safetensors",
            "manifest.json",
        ] {
            std::fs::copy(dir.join(f), to.join(f)).unwrap();
        }
        to
    };
    for file in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        // Cut short: half the file.
        let cut = copy("cut");
        let bytes = std::fs::read(cut.join(file)).unwrap();
        std::fs::write(cut.join(file), &bytes[..bytes.len() / 2]).unwrap();
        let mut fresh = trainer(model(4), config(), &train);
        let e = fresh.resume(&cut).unwrap_err().to_string();
        assert!(
            e.starts_with("checkpoint ") && e.contains(file),
            "{file}: {e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        // Missing.
        let gone = copy("gone");
        std::fs::remove_file(gone.join(file)).unwrap();
        let e = fresh.resume(&gone).unwrap_err().to_string();
        assert!(e.contains(file), "{file}: {e}");
        // Changed in place, same size: one byte flipped in the middle.
        let flipped = copy("flipped");
        let mut bytes = std::fs::read(flipped.join(file)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(flipped.join(file), &bytes).unwrap();
        let e = fresh.resume(&flipped).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains("damaged"), "{file}: {e}");
        let _ = std::fs::remove_dir_all(&cut);
        let _ = std::fs::remove_dir_all(&gone);
        let _ = std::fs::remove_dir_all(&flipped);
    }
    // No manifest: a save that never finished.
    let unsealed = copy("unsealed");
    std::fs::remove_file(unsealed.join("manifest.json")).unwrap();
    let mut fresh = trainer(model(4), config(), &train);
    let e = fresh.resume(&unsealed).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("incomplete"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&unsealed);
    // The intact checkpoint still resumes.
    fresh.resume(&dir).unwrap();
    assert_eq!(fresh.state().step, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_written_whole_or_not_at_all_and_the_latest_complete_one_is_found() {
    let train = ["t0", "t1"];
    let root = std::env::temp_dir().join(format!("mtrl-atomic-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut t = trainer(model(4), config(), &train);
    t.step().await.unwrap();
    let first = root.join("step-000001");
    t.save_checkpoint(&first).unwrap();
    let manifest = mtrl_train::rl::verify_checkpoint(&first).unwrap();
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        listed,
        [
            "optimizer.safetensors",
            "state.json",
            "trainable.safetensors"
        ]
    );
    // A save killed midway: its temporary directory, and a step directory with no manifest.
    let killed = root.join(".step-000002.tmp-999-1");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("trainable.safetensors"), b"half").unwrap();
    let unsealed = root.join("step-000003");
    std::fs::create_dir_all(&unsealed).unwrap();
    std::fs::copy(first.join("state.json"), unsealed.join("state.json")).unwrap();
    let dirs = mtrl_train::rl::checkpoint_dirs(&root).unwrap();
    assert_eq!(
        dirs,
        [first.clone(), unsealed.clone()],
        "temporaries are not checkpoints"
    );
    let scan = mtrl_train::rl::latest_checkpoint(&dirs);
    assert_eq!(scan.latest.as_ref().unwrap().dir, first);
    assert_eq!(scan.latest.as_ref().unwrap().state.step, 1);
    assert_eq!(scan.refused.len(), 1);
    assert!(scan.refused[0].to_string().contains("manifest.json"));

    // The next save of step 2 clears the killed one's leftovers and lands whole.
    t.step().await.unwrap();
    let second = root.join("step-000002");
    t.save_checkpoint(&second).unwrap();
    assert!(!killed.exists());
    let dirs = mtrl_train::rl::checkpoint_dirs(&root).unwrap();
    let scan = mtrl_train::rl::latest_checkpoint(&dirs);
    assert_eq!(scan.latest.unwrap().state.step, 2);
    // Saving over an existing checkpoint replaces it whole; nothing else is left beside it.
    t.save_checkpoint(&first).unwrap();
    assert_eq!(
        mtrl_train::rl::verify_checkpoint(&first)
            .unwrap()
            .files
            .len(),
        3
    );
    let mut fresh = trainer(model(4), config(), &train);
    fresh.resume(&first).unwrap();
    assert_eq!(fresh.state().step, 2);
    assert_eq!(weight_hash(fresh.model()), weight_hash(t.model()));
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sft_lowers_the_loss_on_its_demonstrations() {
    let m = model(5);
    let tasks = tasks(&["t0", "t1", "t2", "t3"]);
    // A scripted expert always answers "a".
    let expert = ScriptedTokenAgent::new(tokenizer(), template(), vec!["a".into()]);
    let driver = mtrl_core::rollout::RolloutDriver::new(Limits {
        max_turns: 1,
        ..Limits::default()
    });
    let demos: Vec<Trajectory> = driver
        .run_batch(&expert, &factory, &tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(demos.iter().all(|d| d.has_token_records()));
    let mut c = config();
    c.optimizer.lr = 1e-2;
    let mut t = trainer(m, c, &["t0"]);
    let log = t.sft(&demos, 15, 2, 1e-2).unwrap();
    assert_eq!(log.len(), 30);
    let first = log[0].get(names::TRAIN_LOSS).unwrap();
    let last = log.last().unwrap().get(names::TRAIN_LOSS).unwrap();
    assert!(last < first * 0.5, "SFT loss {first} → {last}");
    // Demonstrations without token records are refused, not silently skipped.
    let mut bare = demos[0].clone();
    for turn in &mut bare.turns {
        turn.tokens = None;
    }
    assert!(t.sft(&[bare], 1, 1, 1e-2).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kl_term_needs_a_reference_and_is_logged() {
    let mut c = config();
    c.loss.kl_coef = 0.1;
    c.updates_per_step = 1;
    let m = model(6);
    let mut t = trainer(m.clone(), c, &["t0", "t1", "t2"]);
    let err = t.step().await.expect_err("no reference: a typed error");
    assert!(err.to_string().contains("reference"), "{err}");
    t.set_reference(Arc::new(m.merged().unwrap()));
    let mut kls = Vec::new();
    for _ in 0..4 {
        let s = t.step().await.unwrap();
        if s.get(names::TRAIN_TOKENS).unwrap_or(0.0) > 0.0 {
            kls.push(s.get(names::TRAIN_KL).expect("train/kl logged"));
        }
    }
    assert!(!kls.is_empty(), "no step trained");
    // The reference equals the policy until the first update: the KL starts at 0, then the
    // updated policy moves away from it.
    assert!(kls[0].abs() < 1e-6, "{kls:?}");
    if kls.len() > 1 {
        assert!(
            kls[1..].iter().all(|k| *k > 0.0 && k.is_finite()),
            "{kls:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_checkpointing_trains_like_the_plain_backward() {
    let run = |checkpointing: bool| async move {
        let mut c = config();
        c.activation_checkpointing = checkpointing;
        let mut t = trainer(model(5), c, &["t0", "t1", "t2", "t3"]);
        let mut losses = Vec::new();
        for _ in 0..2 {
            let m = t.step().await.unwrap();
            losses.push(m.get(names::TRAIN_LOSS));
        }
        let weights: Vec<Vec<f32>> = t
            .model()
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (losses, weights)
    };
    let (plain_losses, plain) = run(false).await;
    let (ckpt_losses, ckpt) = run(true).await;
    assert!(
        plain_losses.iter().any(Option::is_some),
        "some step trained"
    );
    for (a, b) in plain_losses.iter().zip(&ckpt_losses) {
        match (a, b) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-5, "{a} vs {b}"),
            (a, b) => assert_eq!(a.is_some(), b.is_some()),
        }
    }
    let mut max = 0f32;
    for (a, b) in plain.iter().zip(&ckpt) {
        for (x, y) in a.iter().zip(b) {
            max = max.max((x - y).abs());
        }
    }
    assert!(max < 1e-4, "weights differ by {max}");
}
