//! Train-step benchmark: forward, backward and an AdamW update of the differentiable path, for
//! SmolLM2-135M (GGUF dequantized) with LoRA (rank 8 on q, k, v, o) and with full
//! fine-tuning, on `batch × length` token sequences whose every position is trained. Prints one
//! JSON object (and writes it to the first argument, if given).
//!
//! `cargo run --release -p mtrl-train --example bench_train [out.json] [--random]
//! [--shape smollm2|qwen2.5-0.5b] [--dtype auto|f32|bf16|f16] [--batch B] [--length T]
//! [--steps N] [--checkpointing] [--lora-only] [--full-only]`
//! (`--random`: random weights of SmolLM2's shape; `--shape qwen2.5-0.5b`: random weights of
//! Qwen2.5-0.5B's shape; `--dtype`: the compute precision, `auto` = bf16 on CUDA and f32 on
//! the CPU; `--checkpointing`: activation checkpointing ([`CausalLm::grads`]);
//! `--lora-only`: skip full fine-tuning, so that the peak memory reported is LoRA's;
//! `--full-only`: skip LoRA, so that a profile shows full fine-tuning alone; CUDA:
//! build with `--features cuda`.) On Linux the figures include the process's peak resident
//! memory (host memory: sample `nvidia-smi` for the GPU's).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use mtrl_train::model::{
    CausalLm, Lora, LoraConfig, ModelConfig, ModelSource, Module, Params, Precision,
};
use mtrl_train::rl::{AdamW, AdamWConfig, Grads};
use serde_json::json;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    value(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The model: random weights of `shape` (`Some`), else the SmolLM2 GGUF; in `dtype`.
fn load(
    shape: Option<&ModelConfig>,
    dtype: DType,
    device: &Device,
) -> Result<CausalLm, Box<dyn std::error::Error>> {
    let model = match shape {
        Some(config) => {
            let params = Params::random(config, 0, device)?;
            CausalLm::new(config.clone(), params, device)?
        }
        None => {
            ModelSource::Gguf(mtrl_train::assets::smollm2_gguf()?)
                .load(device)?
                .model
        }
    };
    Ok(model.with_dtype(dtype)?)
}

/// Seconds per step (median of `steps` after one warm-up step).
fn time_steps(
    model: &CausalLm,
    ids: &Tensor,
    at: &[(usize, usize)],
    steps: usize,
    checkpointing: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let vars = model.trainable();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: 1e-5,
            ..AdamWConfig::default()
        },
    )?;
    let mut times = Vec::new();
    for i in 0..=steps {
        let t = Instant::now();
        let mut grads = Grads::new();
        let ((), store) = model.grads(ids, at, checkpointing, |lp, _| {
            Ok((Some(lp.neg()?.mean_all()?), ()))
        })?;
        if let Some(store) = store {
            grads.add(&store, &vars)?;
        }
        grads.clip(1.0)?;
        opt.step(&grads, 1e-5)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `mtrl` binary does: freed tensors are reused, not faulted in again.
    mtrl_train::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Random weights of a shape (with its name), or the SmolLM2 GGUF (`None`).
    let random = args.iter().any(|a| a == "--random");
    let shape = match value(&args, "--shape") {
        Some("qwen2.5-0.5b") => Some(("Qwen2.5-0.5B", ModelConfig::qwen2_5_0_5b())),
        None | Some("smollm2") if random => Some(("SmolLM2-135M", ModelConfig::smollm2_135m())),
        None | Some("smollm2") => None,
        Some(other) => return Err(format!("unknown --shape {other}").into()),
    };
    let precision: Precision = match value(&args, "--dtype") {
        Some(name) => serde_json::from_value(json!(name))
            .map_err(|_| format!("unknown --dtype {name}: auto, f32, bf16 or f16"))?,
        None => Precision::Auto,
    };
    let valued = ["--batch", "--length", "--steps", "--shape", "--dtype"];
    let out_path = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || !valued.contains(&args[i - 1].as_str())))
        .map(|(_, a)| a.clone());
    let batch = arg(&args, "--batch", 2);
    let length = arg(&args, "--length", 256);
    let steps = arg(&args, "--steps", 3);
    let checkpointing = args.iter().any(|a| a == "--checkpointing");
    let lora_only = args.iter().any(|a| a == "--lora-only");
    let full_only = args.iter().any(|a| a == "--full-only");
    if lora_only && full_only {
        return Err("--lora-only and --full-only exclude each other: pass one of them".into());
    }
    let device = Device::cuda_if_available(0)?;
    let dtype = precision.dtype(&device);
    let vocab = 40_000u32;
    let ids: Vec<u32> = (0..batch * length)
        .map(|i| (i as u32).wrapping_mul(7919).wrapping_add(17) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, length), &device)?;
    let at: Vec<(usize, usize)> = (0..batch)
        .flat_map(|r| (0..length - 1).map(move |p| (r, p)))
        .collect();
    let tokens = (batch * length) as f64;

    let lora = if full_only {
        None
    } else {
        let lora_model = load(shape.as_ref().map(|(_, c)| c), dtype, &device)?;
        let adapter = Lora::new(
            LoraConfig {
                rank: 8,
                alpha: 16.0,
                targets: vec![Module::Q, Module::K, Module::V, Module::O],
            },
            lora_model.config(),
            0,
            &device,
        )?;
        let lora_model = lora_model.with_lora(adapter)?;
        let lora_s = time_steps(&lora_model, &ids, &at, steps, checkpointing)?;
        Some(json!({"step_s": lora_s, "tokens_per_s": tokens / lora_s}))
    };
    let full = if lora_only {
        None
    } else {
        let full_model = load(shape.as_ref().map(|(_, c)| c), dtype, &device)?;
        let full_s = time_steps(&full_model, &ids, &at, steps, checkpointing)?;
        Some(json!({"step_s": full_s, "tokens_per_s": tokens / full_s}))
    };

    let figures = json!({
        "device": format!("{device:?}"),
        "model": match &shape {
            Some((name, _)) => format!("random weights, {name} shape"),
            None => "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized)".to_string(),
        },
        "dtype": format!("{dtype:?}"),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "batch": batch,
        "length": length,
        "lora_r8_qkvo": lora,
        "full_fine_tuning": full,
        "activation_checkpointing": checkpointing,
        "peak_rss_gib": mtrl_train::memory::peak_resident_gib(),
    });
    let text = serde_json::to_string_pretty(&figures)?;
    println!("{text}");
    if let Some(path) = out_path {
        std::fs::write(path, text)?;
    }
    Ok(())
}
