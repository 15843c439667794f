//! Prefix-shared scoring and gradient passes ([`CausalLm::with_prefix_sharing`]) against every
//! row computed whole: the logprobs and every trainable gradient agree to 1e-5 relative in
//! f32, for Llama, Qwen2 and Qwen3, with LoRA and full fine-tuning, with and without
//! activation checkpointing, on the hand-written backward pass (fused ops) and on candle's
//! autograd (reference ops); with rows of unequal length, right- or left-padded, a group of
//! one, a sample that is all prefix, and identical rows.

use candle_core::{DType, Device, Tensor};
use mtrl_train::model::{Architecture, CausalLm, Lora, LoraConfig, ModelConfig, Module, Params};

const ARCHS: [Architecture; 3] = [
    Architecture::Llama,
    Architecture::Qwen2,
    Architecture::Qwen3,
];

/// A tiny model of `arch`: 3 query heads sharing one key/value head (Llama, Qwen3) or not
/// (Qwen2), odd widths.
fn config(arch: Architecture) -> ModelConfig {
    let mut c = ModelConfig::tiny(arch);
    c.num_heads = 3;
    c.num_kv_heads = if arch == Architecture::Qwen2 { 3 } else { 1 };
    c.head_dim = 6;
    c.hidden_size = 30;
    c
}

/// The model (seeded random weights) with LoRA adapters whose B is non-zero, on the fused or
/// the reference ops, sharing prefixes or not.
fn model(arch: Architecture, lora: bool, reference: bool, dtype: DType, share: bool) -> CausalLm {
    let c = config(arch);
    let params = Params::random(&c, 11, &Device::Cpu).unwrap();
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
            &c,
            5,
            &Device::Cpu,
        )
        .unwrap();
        for (i, (_, var)) in adapters.named_vars().into_iter().enumerate() {
            let values: Vec<f32> = (0..var.elem_count())
                .map(|j| (((j * 37 + i * 11) % 17) as f32 - 8.0) / 40.0)
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        m = m.with_lora(adapters).unwrap();
    }
    m.with_reference_ops(reference).with_prefix_sharing(share)
}

/// A GRPO-like group: one 9-token prompt, then responses of `lens` tokens, each starting with
/// a different token.
fn group(lens: &[usize]) -> Vec<Vec<u32>> {
    let prompt: Vec<u32> = (0..9).map(|i| (i * 13 + 5) % 97).collect();
    lens.iter()
        .enumerate()
        .map(|(r, n)| {
            let mut row = prompt.clone();
            row.extend((0..*n).map(|j| ((r * 29 + j * 7 + 40) % 97) as u32));
            row
        })
        .collect()
}

/// Rows padded to one length, on the right (`left` false) or the left, with their padding.
fn padded(rows: &[Vec<u32>], left: bool) -> (Tensor, Vec<usize>) {
    let t = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut pad = Vec::new();
    for row in rows {
        let fill = std::iter::repeat_n(0u32, t - row.len());
        if left {
            ids.extend(fill);
            ids.extend_from_slice(row);
            pad.push(t - row.len());
        } else {
            ids.extend_from_slice(row);
            ids.extend(fill);
            pad.push(0);
        }
    }
    (
        Tensor::from_vec(ids, (rows.len(), t), &Device::Cpu).unwrap(),
        pad,
    )
}

/// Picks: every response position of each row (from the prompt's last token), and two
/// prompt positions in every other row; positions counted from the row's first token.
fn picks(rows: &[Vec<u32>]) -> Vec<(usize, usize)> {
    let mut at = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        if r % 2 == 0 {
            at.extend([(r, 2), (r, 3)]);
        }
        at.extend((8..row.len() - 1).map(|p| (r, p)));
    }
    at
}

type Named = Vec<(String, Vec<f32>)>;

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Logprobs and the gradients of a weighted sum of them (weights differ per token), through
/// [`CausalLm::grads`] or its left-padded form.
fn run(
    m: &CausalLm,
    ids: &Tensor,
    pad: Option<&[usize]>,
    at: &[(usize, usize)],
    ckpt: bool,
) -> (Vec<f32>, Named) {
    let w: Vec<f32> = (0..at.len())
        .map(|i| ((i % 5) as f32 - 1.5) / 7.0)
        .collect();
    let w = Tensor::from_vec(w, at.len(), &Device::Cpu).unwrap();
    let loss = |lp: &Tensor, _: &Tensor| Ok((Some((lp * &w)?.sum_all()?), lp.detach()));
    let (lp, store) = match pad {
        None => m.grads(ids, at, ckpt, loss).unwrap(),
        Some(pad) => m.grads_left_padded(ids, pad, at, ckpt, loss).unwrap(),
    };
    let store = store.unwrap();
    let named = m
        .trainable()
        .into_iter()
        .map(|(name, var)| {
            let g = store
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            (name, flat(g))
        })
        .collect();
    (flat(&lp), named)
}

/// max |a − b| over max(1e-3, max |b|).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(x.is_finite() && y.is_finite());
            (x - y).abs() / scale
        })
        .fold(0f32, f32::max)
}

fn assert_same(what: &str, a: &(Vec<f32>, Named), b: &(Vec<f32>, Named), tol: f32) {
    let d = rel(&a.0, &b.0);
    assert!(d <= tol, "{what}: logprobs differ by {d:e}");
    assert_eq!(a.1.len(), b.1.len());
    for ((name, ga), (_, gb)) in a.1.iter().zip(&b.1) {
        assert!(
            gb.iter().any(|v| *v != 0.0),
            "{what}: {name} has a zero gradient"
        );
        let d = rel(ga, gb);
        assert!(d <= tol, "{what}: the gradient of {name} differs by {d:e}");
    }
}

#[test]
fn shared_prefix_passes_equal_the_unshared_ones_for_every_architecture_and_mode() {
    // Unequal responses; the last row's single token is only a target, so that row is all
    // prefix.
    let rows = group(&[5, 3, 6, 1]);
    let (ids, _) = padded(&rows, false);
    let at = picks(&rows);
    for arch in ARCHS {
        for lora in [true, false] {
            for reference in [false, true] {
                let shared = model(arch, lora, reference, DType::F32, true);
                let whole = model(arch, lora, reference, DType::F32, false);
                // The prompt once (9), then three rows of 6: not 4 rows of 15.
                assert_eq!(shared.tokens_computed(&ids, &at).unwrap(), 9 + 3 * 6);
                assert_eq!(whole.tokens_computed(&ids, &at).unwrap(), 4 * 15);
                for ckpt in [false, true] {
                    let what = format!("{arch:?} lora={lora} reference={reference} ckpt={ckpt}");
                    let a = run(&shared, &ids, None, &at, ckpt);
                    let b = run(&whole, &ids, None, &at, ckpt);
                    assert_same(&what, &a, &b, 1e-5);
                    // The detached pass (old-policy and reference logprobs) too.
                    let (lp, _) = shared.next_token_logprobs_detached(&ids, &at).unwrap();
                    assert!(rel(&flat(&lp), &b.0) <= 1e-5, "{what}: detached logprobs");
                }
            }
        }
    }
}

#[test]
fn left_padded_rows_share_their_prefix_and_score_like_single_rows() {
    let rows = group(&[4, 7, 2]);
    let at = picks(&rows);
    let (right, _) = padded(&rows, false);
    let (left, pad) = padded(&rows, true);
    // Positions in slots of the left-padded batch.
    let at_left: Vec<(usize, usize)> = at.iter().map(|&(r, p)| (r, p + pad[r])).collect();
    for arch in ARCHS {
        for ckpt in [false, true] {
            let shared = model(arch, true, false, DType::F32, true);
            let whole = model(arch, true, false, DType::F32, false);
            let reference = run(&whole, &right, None, &at, ckpt);
            let a = run(&shared, &left, Some(&pad), &at_left, ckpt);
            assert_same(
                &format!("{arch:?} left-padded, ckpt={ckpt}"),
                &a,
                &reference,
                1e-5,
            );
            // Each row alone, unpadded, on candle's autograd path.
            let mut alone = Vec::new();
            for (r, row) in rows.iter().enumerate() {
                let one = Tensor::from_vec(row.clone(), (1, row.len()), &Device::Cpu).unwrap();
                let mine: Vec<(usize, usize)> = at
                    .iter()
                    .filter(|(q, _)| *q == r)
                    .map(|&(_, p)| (0, p))
                    .collect();
                alone.extend(flat(&whole.next_token_logprobs(&one, &mine).unwrap().0));
            }
            let (lp, _) = shared
                .next_token_logprobs_left_padded(&left, &pad, &at_left)
                .unwrap();
            assert!(
                rel(&flat(&lp), &alone) <= 1e-5,
                "{arch:?}: left-padded logprobs"
            );
        }
    }
    // A pick on padding is a typed error, not a silent score.
    let m = model(Architecture::Llama, true, false, DType::F32, true);
    let err = m
        .next_token_logprobs_left_padded(&left, &pad, &[(2, 0)])
        .unwrap_err();
    assert!(err.to_string().contains("padding"), "{err}");
    let err = m
        .next_token_logprobs_left_padded(&left, &[0, 1], &at_left)
        .unwrap_err();
    assert!(err.to_string().contains("left padding"), "{err}");
}

#[test]
fn a_group_of_one_a_sample_that_is_all_prefix_and_identical_rows_are_exact() {
    let one = group(&[6]);
    // The first sample is a prefix of the second, token for token.
    let mut nested = group(&[2]);
    let mut longer = nested[0].clone();
    longer.extend([61, 62, 63, 64]);
    nested.push(longer);
    let same = vec![group(&[5])[0].clone(); 3];
    for (name, rows, tokens) in [
        ("a group of one", one, 14),
        ("a sample that is all prefix", nested, 10 + 5),
        ("identical rows", same, 13),
    ] {
        let (ids, _) = padded(&rows, false);
        let at = picks(&rows);
        for arch in ARCHS {
            for lora in [true, false] {
                let shared = model(arch, lora, false, DType::F32, true);
                let whole = model(arch, lora, false, DType::F32, false);
                assert_eq!(shared.tokens_computed(&ids, &at).unwrap(), tokens, "{name}");
                for ckpt in [false, true] {
                    let what = format!("{name}: {arch:?} lora={lora} ckpt={ckpt}");
                    let a = run(&shared, &ids, None, &at, ckpt);
                    let b = run(&whole, &ids, None, &at, ckpt);
                    assert_same(&what, &a, &b, 1e-5);
                }
            }
        }
    }
}

#[test]
fn shared_bf16_gradients_stay_within_the_bf16_bound() {
    // bf16 rounds each product to 8 bits of mantissa: the shared and unshared passes round
    // differently, so they agree to bf16's precision (a stated bound), not to f32's.
    let rows = group(&[5, 3, 6]);
    let (ids, _) = padded(&rows, false);
    let at = picks(&rows);
    for arch in ARCHS {
        let shared = model(arch, true, false, DType::BF16, true);
        let whole = model(arch, true, false, DType::BF16, false);
        let a = run(&shared, &ids, None, &at, true);
        let b = run(&whole, &ids, None, &at, true);
        assert_same(&format!("{arch:?} bf16"), &a, &b, 5e-2);
    }
}
