//! The fused ops against the composed reference: values and gradients, in f32 and bf16, on odd
//! sizes, grouped-query ratios 1, 3 and 7, causal and left-padded masks.

use candle_core::{DType, Device, Tensor, Var};

use super::{
    attn_softmax, linear, lora_linear, picked_log_softmax, reference, rms_norm, rope, swiglu,
};

/// Deterministic values in about `[-scale, scale]` (a small LCG: no global RNG in tests).
fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, scale: f32, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(data(n, seed, scale), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The largest absolute difference, relative to the reference's largest magnitude (at least 1).
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    assert_eq!(a.dtype(), b.dtype());
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert!(x.is_finite() && y.is_finite(), "{x} vs {y}");
            (x - y).abs() / scale
        })
        .fold(0f32, f32::max)
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        _ => 2e-2,
    }
}

/// Runs `op` and `reference` on the same inputs (the first `trained` of them tracked), and
/// checks the outputs and the gradients of a weighted sum of the outputs.
fn check(
    name: &str,
    inputs: &[Tensor],
    trained: usize,
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let dtype = inputs[0].dtype();
    let run = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| {
        let vars: Vec<Var> = inputs[..trained]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let mut args: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        args.extend(inputs[trained..].iter().cloned());
        let y = f(&args).unwrap();
        let weights = tensor(y.dims(), 99, 1.0, DType::F32);
        let loss = (y.to_dtype(DType::F32).unwrap() * weights)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("a gradient").clone())
            .collect();
        (y, g)
    };
    let (y, g) = run(&op);
    let (y_ref, g_ref) = run(&reference);
    let tol = tolerance(dtype);
    let d = rel_diff(&y, &y_ref);
    assert!(d <= tol, "{name} {dtype:?}: output differs by {d}");
    for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
        let d = rel_diff(a, b);
        assert!(d <= tol, "{name} {dtype:?}: gradient {i} differs by {d}");
    }
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

#[test]
fn linear_matches_the_reference_and_skips_frozen_weights() {
    for dtype in DTYPES {
        let x = tensor(&[7, 13], 1, 1.0, dtype);
        let w = tensor(&[11, 13], 2, 0.5, dtype);
        check(
            "linear",
            &[x.clone(), w.clone()],
            2,
            |a| linear(&a[0], &a[1]),
            |a| reference::linear(&a[0], &a[1]),
        );
        // A frozen weight gets no gradient: only the input is in the store.
        let xv = Var::from_tensor(&x).unwrap();
        let frozen = w.detach();
        let grads = linear(xv.as_tensor(), &frozen)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(xv.as_tensor()).is_some());
        assert!(grads.get(&frozen).is_none(), "{dtype:?}");
    }
}

#[test]
fn lora_linear_matches_the_composed_projection_and_adapter() {
    // f32 takes the fused op; bf16 (f32 adapters) the composed fallback.
    for dtype in DTYPES {
        for (rows, k, out, r) in [(1, 5, 3, 1), (7, 13, 11, 4), (33, 64, 96, 8)] {
            let x = tensor(&[rows, k], 16, 1.0, dtype);
            let a = tensor(&[r, k], 17, 0.5, DType::F32);
            let b = tensor(&[out, r], 18, 0.5, DType::F32);
            let w = tensor(&[out, k], 19, 0.5, dtype);
            check(
                "lora_linear",
                &[x, a, b, w],
                3,
                |t| lora_linear(&t[0], &t[3], &t[1], &t[2], 2.0),
                |t| {
                    let y = reference::linear(&t[0], &t[3])?;
                    y.clone() + reference::lora_delta(&t[0], &t[1], &t[2], 2.0, y.dtype())?
                },
            );
        }
    }
}

#[test]
fn rms_norm_matches_the_reference() {
    for dtype in DTYPES {
        for (rows, h) in [(1, 8), (7, 33), (12, 576)] {
            let x = tensor(&[rows, 1, h], 3, 2.0, dtype);
            let w = tensor(&[h], 4, 1.0, dtype);
            check(
                "rms_norm",
                &[x, w],
                2,
                |a| rms_norm(&a[0], &a[1], 1e-5),
                |a| reference::rms_norm(&a[0], &a[1], 1e-5, dtype),
            );
        }
    }
}

#[test]
fn rope_matches_the_reference() {
    for dtype in DTYPES {
        for (b, heads, t, hd) in [(1, 1, 1, 2), (2, 3, 7, 6), (3, 2, 13, 64)] {
            let x = tensor(&[b, heads, t, hd], 5, 1.0, dtype);
            let angles = tensor(&[b, t, hd / 2], 6, 3.0, DType::F32);
            let cos = angles.cos().unwrap().to_dtype(dtype).unwrap();
            let sin = angles.sin().unwrap().to_dtype(dtype).unwrap();
            check(
                "rope",
                &[x, cos, sin],
                1,
                |a| rope(&a[0], &a[1], &a[2]),
                |a| reference::rope(&a[0], &a[1], &a[2]),
            );
        }
    }
}

/// The additive mask `[batch, t, start + t]` of the model: a query at slot `start + j` of row
/// `r` sees the keys at slots `pad[r] ..= start + j`, and a padding slot sees itself.
fn mask(t: usize, start: usize, pad: &[usize], dtype: DType) -> Tensor {
    let kv = start + t;
    let mut out = Vec::new();
    for p in pad {
        for j in 0..t {
            for s in 0..kv {
                let visible = (s >= *p && s <= start + j) || s == start + j;
                out.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
            }
        }
    }
    Tensor::from_vec(out, (pad.len(), t, kv), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

#[test]
fn attention_softmax_matches_the_reference_across_gqa_ratios_and_padding() {
    for dtype in DTYPES {
        for rep in [1, 3, 7] {
            // Training (causal, from 0), a cached step with left padding, and no mask.
            for (t, start, pad) in [(5, 0, vec![0, 0]), (3, 4, vec![0, 2]), (1, 6, vec![0, 0])] {
                let (b, kvh) = (pad.len(), 2);
                let scores = tensor(&[b, kvh, rep * t, start + t], 7, 4.0, dtype);
                let m = (t > 1 || pad.iter().any(|p| *p > 0)).then(|| mask(t, start, &pad, dtype));
                let scale = 1.0 / 8f64.sqrt();
                let inputs = match &m {
                    Some(m) => vec![scores, m.clone()],
                    None => vec![scores],
                };
                check(
                    "attn_softmax",
                    &inputs,
                    1,
                    |a| attn_softmax(&a[0], a.get(1), scale),
                    |a| reference::attn_softmax(&a[0], a.get(1), scale),
                );
            }
        }
    }
}

#[test]
fn padded_slots_get_probability_zero() {
    let scores = tensor(&[1, 1, 3, 7], 8, 4.0, DType::F32);
    let m = mask(3, 4, &[2], DType::F32);
    let p = attn_softmax(&scores, Some(&m), 0.5).unwrap();
    let p = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (j, row) in p.chunks(7).enumerate() {
        assert_eq!(&row[..2], &[0.0, 0.0], "row {j} sees the padding");
        assert!(
            row[4 + j + 1..].iter().all(|v| *v == 0.0),
            "row {j} sees the future"
        );
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}

#[test]
fn swiglu_matches_the_reference() {
    for dtype in DTYPES {
        let gate = tensor(&[5, 37], 9, 6.0, dtype);
        let up = tensor(&[5, 37], 10, 2.0, dtype);
        check(
            "swiglu",
            &[gate, up],
            2,
            |a| swiglu(&a[0], &a[1]),
            |a| reference::swiglu(&a[0], &a[1]),
        );
    }
}

#[test]
fn picked_log_softmax_matches_the_reference_with_every_gradient() {
    // Odd vocabularies, SmolLM2's and Qwen's; sharp and flat distributions; targets at both
    // ends. The check weights all three outputs, so the entropy's and log-sum-exp's
    // gradients are tested beside the pick's.
    for (n, vocab, scale) in [
        (1, 2, 1.0),
        (5, 37, 30.0),
        (3, 49_152, 8.0),
        (2, 151_936, 4.0),
    ] {
        let logits = tensor(&[n, vocab], 14, scale, DType::F32);
        let ids: Vec<u32> = (0..n as u32)
            .map(|i| match i % 3 {
                0 => 0,
                1 => vocab as u32 - 1,
                _ => (i * 7919) % vocab as u32,
            })
            .collect();
        let targets = Tensor::from_vec(ids, n, &Device::Cpu).unwrap();
        check(
            "picked_log_softmax",
            &[logits, targets],
            1,
            |a| picked_log_softmax(&a[0], &a[1]),
            |a| reference::picked_log_softmax(&a[0], &a[1]),
        );
    }
}

#[test]
fn picked_log_softmax_refuses_a_target_outside_the_vocabulary() {
    let logits = tensor(&[2, 5], 15, 1.0, DType::F32);
    let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    let err = picked_log_softmax(&logits, &targets).unwrap_err();
    assert!(err.to_string().contains("out of the vocabulary"), "{err}");
    assert!(err.to_string().contains("target 5 of row 1"), "{err}");
    let short = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    assert!(picked_log_softmax(&logits, &short).is_err());
}

#[test]
fn the_kernels_exp_is_within_a_few_ulp_of_libm_and_exact_at_the_edges() {
    let mut worst = 0f32;
    for i in -87_000..88_000 {
        let x = i as f32 / 1000.0 + 0.000_37;
        let (got, want) = (super::cpu::exp(x), x.exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 4e-7, "relative error {worst}");
    assert_eq!(super::cpu::exp(0.0), 1.0);
    assert_eq!(super::cpu::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(super::cpu::exp(-1e30), 0.0);
    assert!(super::cpu::exp(f32::NAN).is_nan());
    assert!(super::cpu::exp(f32::INFINITY).is_finite());
}

#[test]
fn inputs_the_kernels_cannot_take_fall_back_to_the_reference() {
    // Mixed dtypes are an error, as in candle; a strided input is made contiguous.
    let x = tensor(&[4, 6], 11, 1.0, DType::F32);
    let w = tensor(&[6], 12, 1.0, DType::BF16);
    assert!(rms_norm(&x, &w, 1e-6).is_err());
    let xt = tensor(&[6, 4], 13, 1.0, DType::F32).t().unwrap();
    let wf = w.to_dtype(DType::F32).unwrap();
    let y = rms_norm(&xt, &wf, 1e-6).unwrap();
    let y_ref = reference::rms_norm(&xt.contiguous().unwrap(), &wf, 1e-6, DType::F32).unwrap();
    assert!(rel_diff(&y, &y_ref) < 1e-6);
}
