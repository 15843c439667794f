//! Prefix-shared group training against every sample computed whole
//! ([`CausalLm::with_prefix_sharing`]): one GRPO group of SmolLM2-135M-Instruct (GGUF
//! dequantized, LoRA rank 8 on q, k, v, o) whose samples share a `--prompt`-token prompt and
//! each add a different `--suffix`-token response. One step is what the trainer runs per
//! micro-batch: the old-policy logprobs (the detached pass), then the gradient pass with
//! activation checkpointing and an AdamW update. Each way runs in its own child process, so
//! that each peak resident memory is its own. Prints one JSON object (and writes it to the
//! first argument, if given) with the tokens computed, the step time and the peak memory of
//! each, and the ratios.
//!
//! `cargo run --release -p mtrl-train --example bench_prefix [out.json] [--random]
//! [--prompt 2500] [--suffix 500] [--group 8] [--steps 1] [--full] [--no-checkpointing]`
//! (`--random`: random weights of SmolLM2's shape; `--full`: full fine-tuning instead of
//! LoRA; `--steps`: the median of that many steps after none of warm-up, since one step of
//! the unshared group takes minutes.)

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use mtrl_train::model::{CausalLm, Lora, LoraConfig, ModelConfig, ModelSource, Module, Params};
use mtrl_train::rl::{AdamW, AdamWConfig, Grads};
use serde_json::{Value, json};

type Failure = Box<dyn std::error::Error>;

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    value(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The group: one prompt, then `group` different suffixes; the picks are every suffix token
/// (what GRPO trains), as `(row, position)`.
fn group(
    prompt: usize,
    suffix: usize,
    group: usize,
    vocab: u32,
) -> (Vec<u32>, Vec<(usize, usize)>) {
    let token = |i: usize| (i as u32).wrapping_mul(7919).wrapping_add(17) % vocab;
    let mut ids = Vec::with_capacity(group * (prompt + suffix));
    let mut at = Vec::new();
    for r in 0..group {
        ids.extend((0..prompt).map(token));
        ids.extend((0..suffix).map(|j| token(1_000_003 + r * suffix + j)));
        at.extend((prompt - 1..prompt + suffix - 1).map(|p| (r, p)));
    }
    (ids, at)
}

/// One way (`shared` or not), in this process: figures of its steps.
fn child(args: &[String], shared: bool) -> Result<Value, Failure> {
    mtrl_train::memory::retain_freed_memory();
    let device = Device::Cpu;
    let (prompt, suffix, size) = (
        arg(args, "--prompt", 2500),
        arg(args, "--suffix", 500),
        arg(args, "--group", 8),
    );
    let steps = arg(args, "--steps", 1).max(1);
    let checkpointing = !args.iter().any(|a| a == "--no-checkpointing");
    let full = args.iter().any(|a| a == "--full");
    let base = if args.iter().any(|a| a == "--random") {
        let config = ModelConfig::smollm2_135m();
        CausalLm::new(
            config.clone(),
            Params::random(&config, 0, &device)?,
            &device,
        )?
    } else {
        ModelSource::Gguf(mtrl_train::assets::smollm2_gguf()?)
            .load(&device)?
            .model
    };
    let model = if full {
        base
    } else {
        let lora = Lora::new(
            LoraConfig {
                rank: 8,
                alpha: 16.0,
                targets: vec![Module::Q, Module::K, Module::V, Module::O],
            },
            base.config(),
            0,
            &device,
        )?;
        base.with_lora(lora)?
    }
    .with_prefix_sharing(shared);
    let (ids, at) = group(prompt, suffix, size, 40_000);
    let ids = Tensor::from_vec(ids, (size, prompt + suffix), &device)?;
    let advantages: Vec<f32> = (0..at.len())
        .map(|i| if (at[i].0 % 2) == 0 { 1.0 } else { -1.0 } / at.len() as f32)
        .collect();
    let advantages = Tensor::from_vec(advantages, at.len(), &device)?;
    let vars = model.trainable();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: 1e-5,
            ..AdamWConfig::default()
        },
    )?;
    let (mut old_s, mut grad_s, mut step_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut checksum = 0.0f64;
    for _ in 0..steps {
        let t = Instant::now();
        let (old, _) = model.next_token_logprobs_detached(&ids, &at)?;
        old_s.push(t.elapsed().as_secs_f64());
        let g = Instant::now();
        let mut grads = Grads::new();
        // The PPO ratio's gradient at the first update (ratio 1): advantage-weighted logprobs.
        let ((), store) = model.grads(&ids, &at, checkpointing, |lp, _| {
            let ratio = (lp - &old)?.exp()?;
            Ok((Some((ratio * &advantages)?.sum_all()?.neg()?), ()))
        })?;
        if let Some(store) = store {
            grads.add(&store, &vars)?;
        }
        let norm = grads.clip(1.0)?;
        opt.step(&grads, 1e-5)?;
        grad_s.push(g.elapsed().as_secs_f64());
        step_s.push(t.elapsed().as_secs_f64());
        checksum = old.sum_all()?.to_scalar::<f32>()? as f64 + norm;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(json!({
        "tokens_computed": model.tokens_computed(&ids, &at)?,
        "step_s": median(&mut step_s),
        "old_logprobs_s": median(&mut old_s),
        "gradient_and_update_s": median(&mut grad_s),
        "peak_rss_gib": mtrl_train::memory::peak_resident_gib(),
        "checksum": checksum,
    }))
}

/// Runs this binary again as the child of one way and reads its figures.
fn spawn(args: &[String], way: &str) -> Result<Value, Failure> {
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .args(["--way", way])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the {way} run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().ok_or("the child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(way) = value(&args, "--way") {
        let figures = child(&args, way == "shared")?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    let valued = ["--prompt", "--suffix", "--group", "--steps"];
    let out_path = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || !valued.contains(&args[i - 1].as_str())))
        .map(|(_, a)| a.clone());
    let passed: Vec<String> = args
        .iter()
        .filter(|a| Some(*a) != out_path.as_ref())
        .cloned()
        .collect();
    let shared = spawn(&passed, "shared")?;
    let unshared = spawn(&passed, "unshared")?;
    let ratio = |key: &str| -> Option<f64> {
        Some(unshared.get(key)?.as_f64()? / shared.get(key)?.as_f64()?)
    };
    let figures = json!({
        "model": if args.iter().any(|a| a == "--random") {
            "random weights, SmolLM2-135M shape"
        } else {
            "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized)"
        },
        "training": if args.iter().any(|a| a == "--full") { "full fine-tuning" } else { "LoRA r8 q,k,v,o" },
        "activation_checkpointing": !args.iter().any(|a| a == "--no-checkpointing"),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "group": arg(&args, "--group", 8),
        "prompt_tokens": arg(&args, "--prompt", 2500),
        "suffix_tokens": arg(&args, "--suffix", 500),
        "shared": shared,
        "unshared": unshared,
        "speedup": ratio("step_s"),
        "tokens_ratio": ratio("tokens_computed"),
        "peak_memory_ratio_shared_over_unshared": ratio("peak_rss_gib").map(|r| 1.0 / r),
    });
    let text = serde_json::to_string_pretty(&figures)?;
    println!("{text}");
    if let Some(path) = out_path {
        std::fs::write(path, text)?;
    }
    Ok(())
}
