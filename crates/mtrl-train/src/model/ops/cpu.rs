//! The CPU kernels of the fused ops: plain functions over contiguous slices, computing in f32
//! whatever the storage dtype, each parallel over rows with rayon. They know nothing of
//! tensors or autograd; [`super`] wraps them as candle custom ops.

use candle_core::WithDType;
use half::{bf16, f16};
use rayon::prelude::*;

/// A storage float the kernels read and write, computing in f32.
pub(crate) trait Float: WithDType + Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn of_f32(v: f32) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn of_f32(v: f32) -> Self {
        v
    }
}

impl Float for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn of_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Float for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn of_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// `e^x` without a libm call: Cody–Waite range reduction and a degree-6 polynomial (within
/// about 2 ulp of libm's), written without branches so that the loops calling it vectorise.
/// Below `-87.33` (where f32 runs out of normal numbers) it is 0, so `-inf` (a masked slot)
/// gives exactly 0; above 88 it saturates at `e^88`; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOW: f32 = -87.336_55;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LOW, 88.0);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = xc - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k from the integer in the low bits of `shifted` (integer ops, no float-to-int
    // conversion): k + 127 as the exponent.
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    if x < LOW { 0.0 } else { y * scale }
}

/// The sum of `v`, in eight lanes (so that it vectorises) added at the end.
#[inline]
fn sum(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The largest element of `v` (`-inf` when empty), in eight lanes.
#[inline]
fn max(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = l.max(*x);
        }
    }
    lanes.iter().copied().fold(rest, f32::max)
}

/// Runs a task's loop compiled for the widest SIMD instructions this CPU has (AVX-512, AVX2,
/// NEON, or none), chosen at run time: the loops vectorise to that width.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Rows per rayon task: enough elements per task (about 16k) that scheduling is noise.
fn rows_per_task(row: usize) -> usize {
    (16_384 / row.max(1)).max(1)
}

/// A fresh output buffer of `n` elements (every element is written by the kernel).
fn buffer<T: Float>(n: usize) -> Vec<T> {
    vec![T::of_f32(0.0); n]
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
#[inline]
fn inv_rms<T: Float>(x: &[T], eps: f32) -> f32 {
    let ss: f32 = x
        .iter()
        .map(|v| {
            let v = v.to_f32();
            v * v
        })
        .sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// RMS norm of each row of `x` (rows of `w.len()`), times `w`.
pub(crate) fn rms_norm<T: Float>(x: &[T], w: &[T], eps: f32) -> Vec<T> {
    let h = w.len();
    let mut out = buffer::<T>(x.len());
    let chunk = rows_per_task(h) * h;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(o, x)| {
            simd(|| {
                for (o, x) in o.chunks_mut(h).zip(x.chunks(h)) {
                    let r = inv_rms(x, eps);
                    for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                        *o = T::of_f32(x.to_f32() * r * w.to_f32());
                    }
                }
            })
        });
    out
}

/// The gradient of [`rms_norm`] with respect to `x`, given the output's gradient `g`:
/// `r · (g·w − x̂ · mean(g·w·x̂))` with `x̂ = r·x`.
pub(crate) fn rms_norm_grad_x<T: Float>(x: &[T], w: &[T], g: &[T], eps: f32) -> Vec<T> {
    let h = w.len();
    let mut out = buffer::<T>(x.len());
    let chunk = rows_per_task(h) * h;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(o, (x, g))| {
            simd(|| {
                for ((o, x), g) in o.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let r = inv_rms(x, eps);
                    let dot: f32 = x
                        .iter()
                        .zip(g)
                        .zip(w)
                        .map(|((x, g), w)| g.to_f32() * w.to_f32() * x.to_f32() * r)
                        .sum();
                    let mean = dot / h as f32;
                    for (((o, x), g), w) in o.iter_mut().zip(x).zip(g).zip(w) {
                        let xhat = x.to_f32() * r;
                        *o = T::of_f32(r * (g.to_f32() * w.to_f32() - xhat * mean));
                    }
                }
            })
        });
    out
}

/// The gradient of [`rms_norm`] with respect to its weight (`h` wide): `Σ_rows g · x̂`. The
/// chunks' partial sums are added in chunk order, so the bits do not depend on how rayon split
/// the work (a parallel `reduce` does, and a resumed run would drift from the uninterrupted
/// one).
pub(crate) fn rms_norm_grad_w<T: Float>(x: &[T], g: &[T], h: usize, eps: f32) -> Vec<T> {
    let chunk = rows_per_task(h) * h;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(chunk)
        .zip(g.par_chunks(chunk))
        .map(|(x, g)| {
            let mut acc = vec![0f32; h];
            for (x, g) in x.chunks(h).zip(g.chunks(h)) {
                let r = inv_rms(x, eps);
                for ((a, x), g) in acc.iter_mut().zip(x).zip(g) {
                    *a += g.to_f32() * x.to_f32() * r;
                }
            }
            acc
        })
        .collect();
    let mut sums = vec![0f32; h];
    for part in &partials {
        for (s, p) in sums.iter_mut().zip(part) {
            *s += p;
        }
    }
    sums.into_iter().map(T::of_f32).collect()
}

/// Rotary embedding (rotate-half) of `x [batch, heads, time, head_dim]` with per-row tables
/// `cos, sin [batch, time, head_dim / 2]`; `sign = -1` applies the inverse rotation (the
/// backward pass).
pub(crate) fn rope<T: Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    (b, heads, t, hd): (usize, usize, usize, usize),
    sign: f32,
) -> Vec<T> {
    let half = hd / 2;
    let mut out = buffer::<T>(x.len());
    // One task per (batch, head): its `t` rows of `hd`.
    out.par_chunks_mut(t * hd)
        .zip(x.par_chunks(t * hd))
        .enumerate()
        .for_each(|(bh, (o, x))| {
            simd(|| {
                let bi = bh / heads;
                debug_assert!(bi < b);
                for j in 0..t {
                    let tab = (bi * t + j) * half;
                    let (c, s) = (&cos[tab..tab + half], &sin[tab..tab + half]);
                    let (x, o) = (&x[j * hd..(j + 1) * hd], &mut o[j * hd..(j + 1) * hd]);
                    let (x1, x2) = x.split_at(half);
                    let (o1, o2) = o.split_at_mut(half);
                    for i in 0..half {
                        let (c, s) = (c[i].to_f32(), sign * s[i].to_f32());
                        let (a, bb) = (x1[i].to_f32(), x2[i].to_f32());
                        o1[i] = T::of_f32(a * c - bb * s);
                        o2[i] = T::of_f32(bb * c + a * s);
                    }
                }
            })
        });
    out
}

/// The attention softmax of `scores [batch, kv_heads, rep · t, kv]` (rows of `kv`), scaled by
/// `scale`, plus the additive `mask [batch, t, kv]` when given (shared by every head: row `r`
/// of a batch entry uses the mask row `r mod t`).
pub(crate) fn attn_softmax<T: Float>(
    scores: &[T],
    mask: Option<&[T]>,
    kv: usize,
    t: usize,
    rows_per_batch: usize,
    scale: f32,
) -> Vec<T> {
    let mut out = buffer::<T>(scores.len());
    let per = rows_per_task(kv);
    out.par_chunks_mut(per * kv)
        .zip(scores.par_chunks(per * kv))
        .enumerate()
        .for_each(|(task, (o, s))| {
            simd(|| {
                let mut row_buf = vec![0f32; kv];
                for (i, (o, s)) in o.chunks_mut(kv).zip(s.chunks(kv)).enumerate() {
                    let r = task * per + i;
                    let m = mask.map(|m| {
                        let (bi, j) = (r / rows_per_batch, (r % rows_per_batch) % t);
                        &m[(bi * t + j) * kv..(bi * t + j + 1) * kv]
                    });
                    for ((z, v), k) in row_buf.iter_mut().zip(s).zip(0..) {
                        *z = v.to_f32() * scale + m.map_or(0.0, |m| m[k].to_f32());
                    }
                    let top = max(&row_buf);
                    for z in row_buf.iter_mut() {
                        *z = exp(*z - top);
                    }
                    let sum = sum(&row_buf);
                    let inv = 1.0 / sum;
                    for (o, z) in o.iter_mut().zip(&row_buf) {
                        *o = T::of_f32(z * inv);
                    }
                }
            })
        });
    out
}

/// The gradient of [`attn_softmax`] with respect to the scores, from its output `p` and the
/// output's gradient `g`: `scale · p · (g − Σ p·g)` per row.
pub(crate) fn attn_softmax_grad<T: Float>(p: &[T], g: &[T], kv: usize, scale: f32) -> Vec<T> {
    let mut out = buffer::<T>(p.len());
    let chunk = rows_per_task(kv) * kv;
    out.par_chunks_mut(chunk)
        .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(o, (p, g))| {
            simd(|| {
                for ((o, p), g) in o.chunks_mut(kv).zip(p.chunks(kv)).zip(g.chunks(kv)) {
                    let dot: f32 = p.iter().zip(g).map(|(p, g)| p.to_f32() * g.to_f32()).sum();
                    for ((o, p), g) in o.iter_mut().zip(p).zip(g) {
                        *o = T::of_f32(scale * p.to_f32() * (g.to_f32() - dot));
                    }
                }
            })
        });
    out
}

/// `silu(a) = a · σ(a)`.
#[inline(always)]
fn silu(a: f32) -> f32 {
    a / (1.0 + exp(-a))
}

/// `silu(gate) · up`, element-wise.
pub(crate) fn swiglu<T: Float>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = buffer::<T>(gate.len());
    out.par_chunks_mut(16_384)
        .zip(gate.par_chunks(16_384).zip(up.par_chunks(16_384)))
        .for_each(|(o, (a, u))| {
            simd(|| {
                for ((o, a), u) in o.iter_mut().zip(a).zip(u) {
                    *o = T::of_f32(silu(a.to_f32()) * u.to_f32());
                }
            })
        });
    out
}

/// Both gradients of [`swiglu`], given the output's gradient `g`, in one pass: `gate`'s
/// (`g · up · σ(a) · (1 + a · (1 − σ(a)))`) in the first `n` elements, then `up`'s
/// (`g · silu(a)`).
pub(crate) fn swiglu_grad<T: Float>(gate: &[T], up: &[T], g: &[T]) -> Vec<T> {
    let n = gate.len();
    let mut out = buffer::<T>(2 * n);
    let (d_gate, d_up) = out.split_at_mut(n);
    d_gate
        .par_chunks_mut(16_384)
        .zip(d_up.par_chunks_mut(16_384))
        .zip(
            gate.par_chunks(16_384)
                .zip(up.par_chunks(16_384).zip(g.par_chunks(16_384))),
        )
        .for_each(|((dg, du), (a, (u, g)))| {
            simd(|| {
                for ((((dg, du), a), u), g) in dg.iter_mut().zip(du).zip(a).zip(u).zip(g) {
                    let (a, u, g) = (a.to_f32(), u.to_f32(), g.to_f32());
                    let s = 1.0 / (1.0 + exp(-a));
                    *dg = T::of_f32(g * u * s * (1.0 + a * (1.0 - s)));
                    *du = T::of_f32(g * a * s);
                }
            })
        });
    out
}

/// Per row of `logits [n, vocab]`: the log-probability of the row's target, the entropy of
/// the row's distribution, and its log-sum-exp, as `[n, 3]` (row-major). `None` when a
/// target is out of the vocabulary.
pub(crate) fn picked_log_softmax(
    logits: &[f32],
    targets: &[u32],
    vocab: usize,
) -> Option<Vec<f32>> {
    if targets.iter().any(|&t| t as usize >= vocab) {
        return None;
    }
    let mut out = vec![0f32; targets.len() * 3];
    out.par_chunks_mut(3)
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .for_each(|(o, (z, &target))| {
            simd(|| {
                let top = max(z);
                // Σ e^(z−max) and Σ e^(z−max)·(z−max), in eight lanes: the entropy is
                // ln S − (Σ e·(z−max)) / S.
                let (mut sums, mut weighted) = ([0f32; 8], [0f32; 8]);
                let chunks = z.chunks_exact(8);
                let (mut sum_rest, mut weighted_rest) = (0f32, 0f32);
                for &v in chunks.remainder() {
                    let d = v - top;
                    let e = exp(d);
                    sum_rest += e;
                    // A `-inf` logit adds nothing (not 0 · -inf).
                    weighted_rest += if e > 0.0 { e * d } else { 0.0 };
                }
                for c in chunks {
                    for ((s, w), &v) in sums.iter_mut().zip(weighted.iter_mut()).zip(c) {
                        let d = v - top;
                        let e = exp(d);
                        *s += e;
                        *w += if e > 0.0 { e * d } else { 0.0 };
                    }
                }
                let sum = sums.iter().sum::<f32>() + sum_rest;
                let weighted = weighted.iter().sum::<f32>() + weighted_rest;
                let log_sum = sum.ln();
                let lse = top + log_sum;
                o[0] = z[target as usize] - lse;
                o[1] = log_sum - weighted / sum;
                o[2] = lse;
            })
        });
    Some(out)
}

/// The gradient of [`picked_log_softmax`] with respect to the logits, from rows `res_g [n, 6]`
/// that hold the op's output `(pick, H, lse)` and then that output's gradient `(g₀, g₁, g₂)`:
/// per element, with `p = softmax(z)`, `g₀·(1[j = target] − p) − g₁·p·(ln p + H) + g₂·p`.
pub(crate) fn picked_log_softmax_grad(
    logits: &[f32],
    targets: &[u32],
    res_g: &[f32],
    vocab: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    out.par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter().zip(res_g.par_chunks(6)))
        .for_each(|((o, z), (&target, rg))| {
            simd(|| {
                let (entropy, lse) = (rg[1], rg[2]);
                let (g_pick, g_entropy, g_lse) = (rg[3], rg[4], rg[5]);
                for (o, &v) in o.iter_mut().zip(z) {
                    let logp = v - lse;
                    let p = exp(logp);
                    *o = p * (g_lse - g_pick - g_entropy * (logp + entropy));
                }
                o[target as usize] += g_pick;
            })
        });
    out
}
