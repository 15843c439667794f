//! Policy benchmark for SmolLM2-135M (GGUF dequantized to f32): decode tokens/s at batch 1 and
//! batch 8, and the prefill of one group of 8 sharing a 2,000-token prefix against 8 separate
//! prefills. Prints one JSON object, and writes it to the path given as the first argument.
//!
//! `cargo run --release -p mtrl-train --example bench_policy [out.json] [--random]`
//! (CUDA: build with `--features cuda`; the GPU is used when one is found.) `--random` uses
//! random weights of SmolLM2-135M's shape instead of the GGUF, for machines without the file;
//! the timings do not depend on the weights' values. `--decode-only` stops after the decode
//! figures. Set `RAYON_NUM_THREADS` (see the README): the figures depend on it.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mtrl_train::engine::{EngineConfig, GenRequest, Generator};
use mtrl_train::model::{CausalLm, ModelConfig, ModelSource, Params};
use mtrl_train::sampler::{Sampler, SamplingParams};
use serde_json::json;

const NEW_TOKENS: usize = 128;

fn request(prompt: &[u32], max_tokens: usize, seed: u64) -> GenRequest {
    GenRequest {
        prompt: prompt.to_vec(),
        params: SamplingParams {
            max_tokens,
            ..SamplingParams::default()
        },
        sampler: Sampler::new(seed),
        // No stop ids: every request decodes exactly `max_tokens`.
        stop_ids: vec![],
        max_tokens,
    }
}

fn run(
    generator: &Generator,
    requests: Vec<GenRequest>,
) -> Result<(f64, usize, usize), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let outs = generator.generate_blocking(requests);
    let secs = start.elapsed().as_secs_f64();
    let mut tokens = 0;
    let mut prefilled = 0;
    for o in outs {
        let o = o?;
        tokens += o.ids.len();
        prefilled += o.prefilled;
    }
    Ok((secs, tokens, prefilled))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `mtrl` binary does: freed tensors are reused, not faulted in again.
    mtrl_train::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let random = args.iter().any(|a| a == "--random");
    let out_path = args.iter().find(|a| !a.starts_with("--")).cloned();
    let device = Device::cuda_if_available(0)?;
    let (model, prompt) = if random {
        let config = ModelConfig::smollm2_135m();
        let params = Params::random(&config, 0, &device)?;
        let prompt: Vec<u32> = (0..24u32).map(|i| 100 + i * 37).collect();
        (CausalLm::new(config, params, &device)?, prompt)
    } else {
        let loaded = ModelSource::Gguf(mtrl_train::assets::smollm2_gguf()?).load(&device)?;
        let text = "<|im_start|>user\nList the steps to reset a router, one per line.<|im_end|>\n<|im_start|>assistant\n";
        let prompt = loaded.tokenizer.encode(text)?;
        (loaded.model, prompt)
    };
    let vocab = model.config().vocab_size as u32;
    let model = Arc::new(model);
    let engine = EngineConfig {
        max_batch: 16,
        gather: std::time::Duration::from_millis(20),
        prefix_cache_tokens: 200_000,
        prefill_chunk: 512,
    };

    // Decode: the prompt is cached first, so only decoding is timed.
    let generator = Generator::start(model.clone(), engine);
    run(&generator, vec![request(&prompt, 1, 0)])?;
    run(&generator, vec![request(&prompt, 8, 1)])?; // warm-up
    let (s1, t1, p1) = run(&generator, vec![request(&prompt, NEW_TOKENS, 2)])?;
    let (s8, t8, p8) = run(
        &generator,
        (0..8)
            .map(|i| request(&prompt, NEW_TOKENS, 10 + i))
            .collect(),
    )?;
    // At most the last prompt token is re-run per batch: the timings are decoding.
    assert!(
        p1 + p8 <= 2,
        "decode timings must not include prefill ({p1} + {p8})"
    );
    let b1 = t1 as f64 / s1;
    let b8 = t8 as f64 / s8;
    if args.iter().any(|a| a == "--decode-only") {
        let figures = json!({
            "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "decode_batch1_tok_s": b1,
            "decode_batch8_tok_s": b8,
            "batch8_over_batch1": b8 / b1,
        });
        println!("{figures}");
        return Ok(());
    }

    // Prefill: one group of 8 sharing a 2,000-token prompt, against 8 different prompts.
    let long: Vec<u32> = (0..2000u32)
        .map(|i| (i * 7919 + 17) % vocab.min(40_000))
        .collect();
    let shared_gen = Generator::start(model.clone(), engine);
    let (shared_s, _, shared_p) = run(&shared_gen, (0..8).map(|i| request(&long, 1, i)).collect())?;
    let separate_gen = Generator::start(model, engine);
    let separate: Vec<GenRequest> = (0..8u32)
        .map(|i| {
            let mut p = long.clone();
            p[0] = 100 + i;
            request(&p, 1, u64::from(i))
        })
        .collect();
    let (separate_s, _, separate_p) = run(&separate_gen, separate)?;

    let figures = json!({
        "device": format!("{device:?}"),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "model": if random { "random weights, SmolLM2-135M shape, f32" } else { "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32)" },
        "decode_batch1_tok_s": b1,
        "decode_batch8_tok_s": b8,
        "batch8_over_batch1": b8 / b1,
        "prefill_group8_shared_s": shared_s,
        "prefill_group8_shared_tokens": shared_p,
        "prefill_8_separate_s": separate_s,
        "prefill_8_separate_tokens": separate_p,
        "shared_prefill_speedup": separate_s / shared_s,
        "targets": {"batch1_tok_s": ">= 10", "batch8_over_batch1": ">= 4", "shared_prefill_speedup": ">= 5"},
    });
    let text = serde_json::to_string_pretty(&figures)?;
    println!("{text}");
    if let Some(path) = out_path {
        std::fs::write(path, text)?;
    }
    Ok(())
}
