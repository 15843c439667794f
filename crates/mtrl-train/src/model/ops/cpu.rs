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
            for (o, x) in o.chunks_mut(h).zip(x.chunks(h)) {
                let r = inv_rms(x, eps);
                for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                    *o = T::of_f32(x.to_f32() * r * w.to_f32());
                }
            }
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
        });
    out
}

/// The gradient of [`rms_norm`] with respect to its weight (`h` wide): `Σ_rows g · x̂`.
pub(crate) fn rms_norm_grad_w<T: Float>(x: &[T], g: &[T], h: usize, eps: f32) -> Vec<T> {
    let chunk = rows_per_task(h) * h;
    let sums = x
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
        .reduce(
            || vec![0f32; h],
            |mut a, b| {
                for (a, b) in a.iter_mut().zip(&b) {
                    *a += b;
                }
                a
            },
        );
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
            let mut row_buf = vec![0f32; kv];
            for (i, (o, s)) in o.chunks_mut(kv).zip(s.chunks(kv)).enumerate() {
                let r = task * per + i;
                let m = mask.map(|m| {
                    let (bi, j) = (r / rows_per_batch, (r % rows_per_batch) % t);
                    &m[(bi * t + j) * kv..(bi * t + j + 1) * kv]
                });
                let mut max = f32::NEG_INFINITY;
                for (k, v) in s.iter().enumerate() {
                    let mut z = v.to_f32() * scale;
                    if let Some(m) = m {
                        z += m[k].to_f32();
                    }
                    row_buf[k] = z;
                    max = max.max(z);
                }
                let mut sum = 0f32;
                for z in row_buf.iter_mut() {
                    *z = (*z - max).exp();
                    sum += *z;
                }
                let inv = 1.0 / sum;
                for (o, z) in o.iter_mut().zip(&row_buf) {
                    *o = T::of_f32(z * inv);
                }
            }
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
            for ((o, p), g) in o.chunks_mut(kv).zip(p.chunks(kv)).zip(g.chunks(kv)) {
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p.to_f32() * g.to_f32()).sum();
                for ((o, p), g) in o.iter_mut().zip(p).zip(g) {
                    *o = T::of_f32(scale * p.to_f32() * (g.to_f32() - dot));
                }
            }
        });
    out
}

/// `silu(a) = a · σ(a)`.
#[inline(always)]
fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

/// Which SwiGLU gradient a pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SwigluGrad {
    /// `g · up · σ(a) · (1 + a · (1 − σ(a)))`.
    Gate,
    /// `g · silu(a)`.
    Up,
}

/// `silu(gate) · up`, element-wise.
pub(crate) fn swiglu<T: Float>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = buffer::<T>(gate.len());
    out.par_chunks_mut(16_384)
        .zip(gate.par_chunks(16_384).zip(up.par_chunks(16_384)))
        .for_each(|(o, (a, u))| {
            for ((o, a), u) in o.iter_mut().zip(a).zip(u) {
                *o = T::of_f32(silu(a.to_f32()) * u.to_f32());
            }
        });
    out
}

/// One of the gradients of [`swiglu`], given the output's gradient `g`.
pub(crate) fn swiglu_grad<T: Float>(gate: &[T], up: &[T], g: &[T], which: SwigluGrad) -> Vec<T> {
    let mut out = buffer::<T>(gate.len());
    out.par_chunks_mut(16_384)
        .zip(
            gate.par_chunks(16_384)
                .zip(up.par_chunks(16_384).zip(g.par_chunks(16_384))),
        )
        .for_each(|(o, (a, (u, g)))| {
            for (((o, a), u), g) in o.iter_mut().zip(a).zip(u).zip(g) {
                let (a, u, g) = (a.to_f32(), u.to_f32(), g.to_f32());
                *o = T::of_f32(match which {
                    SwigluGrad::Up => g * silu(a),
                    SwigluGrad::Gate => {
                        let s = 1.0 / (1.0 + (-a).exp());
                        g * u * s * (1.0 + a * (1.0 - s))
                    }
                });
            }
        });
    out
}
