//! Whole models on the fused ops against the same models on the composed reference ops
//! ([`CausalLm::with_reference_ops`]): logprobs and every trainable gradient, with LoRA and
//! with full fine-tuning, in f32 and bf16, for grouped-query ratios 1, 3 and 7 and odd
//! lengths; and left-padded batched decoding.

use candle_core::{DType, Device, Tensor};
use mtrl_train::model::{
    Architecture, CausalLm, KvCache, Lora, LoraConfig, ModelConfig, Module, Params,
};

/// A tiny model of `arch` with `heads` query heads sharing `kv_heads` key/value heads.
fn config(arch: Architecture, heads: usize, kv_heads: usize) -> ModelConfig {
    let mut c = ModelConfig::tiny(arch);
    c.num_heads = heads;
    c.num_kv_heads = kv_heads;
    c.head_dim = 6;
    c.hidden_size = 30;
    c
}

/// The model (random weights, seeded), with LoRA adapters whose B is non-zero (so that every
/// adapter gradient is), in `dtype`, on the fused or the reference ops.
fn model(c: &ModelConfig, lora: bool, dtype: DType, reference: bool) -> CausalLm {
    let params = Params::random(c, 3, &Device::Cpu).unwrap();
    let mut m = CausalLm::new(c.clone(), params, &Device::Cpu)
        .unwrap()
        .with_dtype(dtype)
        .unwrap();
    if lora {
        let adapters = Lora::new(
            LoraConfig {
                rank: 4,
                alpha: 8.0,
                targets: Module::ALL.to_vec(),
            },
            c,
            5,
            &Device::Cpu,
        )
        .unwrap();
        for (i, (_, var)) in adapters.named_vars().into_iter().enumerate() {
            let n = var.elem_count();
            let values: Vec<f32> = (0..n)
                .map(|j| (((j * 37 + i * 11) % 17) as f32 - 8.0) / 40.0)
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        m = m.with_lora(adapters).unwrap();
    }
    m.with_reference_ops(reference)
}

/// How the gradients are taken.
#[derive(Debug, Clone, Copy)]
enum How {
    /// `backward()` on [`CausalLm::next_token_logprobs`]: candle's autograd.
    Autograd,
    /// [`CausalLm::grads`], without or with activation checkpointing: on the fused ops, the
    /// hand-written backward pass.
    Grads { checkpointing: bool },
}

/// Logprobs at every position and the gradients of their mean, by trainable name.
fn logprobs_and_grads(m: &CausalLm, ids: &Tensor, how: How) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let (b, t) = ids.dims2().unwrap();
    let at: Vec<(usize, usize)> = (0..b)
        .flat_map(|r| (0..t - 1).map(move |p| (r, p)))
        .collect();
    let (lp, grads) = match how {
        How::Autograd => {
            let (lp, _) = m.next_token_logprobs(ids, &at).unwrap();
            let grads = lp.mean_all().unwrap().backward().unwrap();
            (lp, grads)
        }
        How::Grads { checkpointing } => {
            let (lp, grads) = m
                .grads(ids, &at, checkpointing, |lp, _| {
                    Ok((Some(lp.mean_all()?), lp.detach()))
                })
                .unwrap();
            (lp, grads.unwrap())
        }
    };
    let flat = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let named = m
        .trainable()
        .into_iter()
        .map(|(name, var)| {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            (name, flat(g))
        })
        .collect();
    (flat(&lp), named)
}

/// max |a − b| over max(1, max |b|).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(x.is_finite() && y.is_finite());
            (x - y).abs() / scale
        })
        .fold(0f32, f32::max)
}

#[test]
fn fused_and_reference_ops_give_the_same_logprobs_and_gradients() {
    let ids = Tensor::new(
        &[[3u32, 14, 15, 92, 65, 35, 89], [79, 32, 38, 46, 26, 43, 38]],
        &Device::Cpu,
    )
    .unwrap();
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        for (heads, kv_heads) in [(2, 2), (3, 1), (7, 1)] {
            let c = config(arch, heads, kv_heads);
            for dtype in [DType::F32, DType::BF16] {
                // bf16 rounds each op's output once in the fused ops and up to three times
                // in the reference, and the differences compound through the layers.
                let tol = if dtype == DType::F32 { 1e-4 } else { 6e-2 };
                for (lora, how) in [true, false].into_iter().flat_map(|lora| {
                    [
                        How::Autograd,
                        How::Grads {
                            checkpointing: false,
                        },
                        How::Grads {
                            checkpointing: true,
                        },
                    ]
                    .map(|how| (lora, how))
                }) {
                    let what = format!("{arch:?} {heads}/{kv_heads} {dtype:?} lora={lora} {how:?}");
                    let (lp, grads) = logprobs_and_grads(&model(&c, lora, dtype, false), &ids, how);
                    // The reference takes the same way: autograd over the whole model, or
                    // (with checkpointing) layer by layer.
                    let (lp_ref, grads_ref) =
                        logprobs_and_grads(&model(&c, lora, dtype, true), &ids, how);
                    let d = rel(&lp, &lp_ref);
                    assert!(d <= tol, "{what}: logprobs differ by {d}");
                    assert_eq!(grads.len(), grads_ref.len());
                    for ((name, g), (_, g_ref)) in grads.iter().zip(&grads_ref) {
                        assert!(
                            g_ref.iter().any(|v| *v != 0.0),
                            "{what}: {name} is all zero"
                        );
                        let d = rel(g, g_ref);
                        assert!(d <= tol, "{what}: the gradient of {name} differs by {d}");
                    }
                }
            }
        }
    }
}

#[test]
fn lora_training_computes_no_gradient_for_frozen_weights() {
    let c = config(Architecture::Llama, 3, 1);
    let m = model(&c, true, DType::F32, false);
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 5]], &Device::Cpu).unwrap();
    let (lp, _) = m.next_token_logprobs(&ids, &[(0, 0), (0, 3)]).unwrap();
    let grads = lp.mean_all().unwrap().backward().unwrap();
    for (name, var) in m.params().vars() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "{name} got a gradient under LoRA"
        );
    }
    assert!(
        m.trainable()
            .iter()
            .all(|(_, v)| grads.get(v.as_tensor()).is_some())
    );
}

#[test]
fn left_padded_decoding_on_fused_ops_matches_the_reference() {
    for (heads, kv_heads) in [(2, 2), (3, 1), (7, 1)] {
        let c = config(Architecture::Qwen3, heads, kv_heads);
        let run = |reference: bool| {
            let m = model(&c, true, DType::F32, reference);
            let mut cache = KvCache::with_padding(c.num_layers, vec![0, 3, 1]);
            let prompt = Tensor::new(
                &[[5u32, 6, 7, 8, 9], [0, 0, 0, 20, 21], [0, 30, 31, 32, 33]],
                &Device::Cpu,
            )
            .unwrap();
            let first = m.forward_cached(&prompt, &mut cache).unwrap();
            let next = Tensor::new(&[[40u32], [41], [42]], &Device::Cpu).unwrap();
            let second = m.forward_cached(&next, &mut cache).unwrap();
            let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            (flat(first), flat(second))
        };
        let (a1, a2) = run(false);
        let (b1, b2) = run(true);
        let d = rel(&a1, &b1).max(rel(&a2, &b2));
        assert!(d <= 1e-4, "{heads}/{kv_heads}: logits differ by {d}");
    }
}
