//! The optimiser's CPU kernels: AdamW's update (in place: the two moments, then the
//! parameters), the gradients' squared norm and their scaling, each a parallel pass over
//! contiguous f32 slices instead of a chain of tensor ops that each allocate a
//! parameter-sized tensor (a dozen for AdamW). They compute exactly what the
//! composed tensor ops compute, operation for operation in f32, so the two paths agree bit
//! for bit (the norm excepted: it accumulates in f64); [`super`] falls back to the composed ops
//! off the CPU.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};
use rayon::prelude::*;

use super::AdamWConfig;

/// Elements per rayon task.
const CHUNK: usize = 1 << 16;

/// AdamW's per-step constants, as the composed ops apply them (scalars rounded to f32).
#[derive(Debug, Clone, Copy)]
pub(super) struct AdamCoefs {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 / (1 − β₁ᵗ)` and `1 / (1 − β₂ᵗ)`: candle divides by a scalar as a multiplication
    /// by its inverse.
    pub inv_bc1: f32,
    pub inv_bc2: f32,
    pub eps: f32,
    /// `1 − lr · weight_decay`.
    pub decay: f32,
    pub lr: f32,
}

impl AdamCoefs {
    /// The constants of update `t` (1-based) at learning rate `lr`.
    pub fn new(c: &AdamWConfig, lr: f64, t: i32) -> Self {
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        Self {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: c.eps as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
            lr: lr as f32,
        }
    }
}

pub(super) use crate::cpu_storage::with_f32;
use crate::cpu_storage::{elements, f32_elements_mut as f32_mut};

/// A moment's update in place: `m ← m·β + g·(1 − β)`, or with `g²` for the second moment.
pub(super) struct Moment {
    beta: f32,
    one_minus_beta: f32,
    squared: bool,
}

impl Moment {
    /// The first moment's update.
    pub fn first(k: &AdamCoefs) -> Self {
        Self {
            beta: k.beta1,
            one_minus_beta: k.one_minus_beta1,
            squared: false,
        }
    }

    /// The second moment's update.
    pub fn second(k: &AdamCoefs) -> Self {
        Self {
            beta: k.beta2,
            one_minus_beta: k.one_minus_beta2,
            squared: true,
        }
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "mtrl-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
    ) -> Result<()> {
        let op = self.name();
        let m = f32_mut(dst, dst_l, op)?;
        let g = elements::<f32>(g, g_l, op)?;
        if m.len() != g.len() {
            candle_core::bail!("{op}: {} moments, {} gradients", m.len(), g.len());
        }
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = if self.squared { g * g } else { g };
                    *m = *m * self.beta + g * self.one_minus_beta;
                }
            });
        Ok(())
    }
}

/// The parameters' update in place from the updated moments `m`, `v`:
/// `θ ← θ·(1 − lr·wd) − lr · m̂ / (sqrt(v̂) + eps)`.
pub(super) struct Param(pub AdamCoefs);

impl InplaceOp3 for Param {
    fn name(&self) -> &'static str {
        "mtrl-adamw-param"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let op = self.name();
        let k = self.0;
        let theta = f32_mut(dst, dst_l, op)?;
        let (m, v) = (elements::<f32>(m, m_l, op)?, elements::<f32>(v, v_l, op)?);
        if m.len() != theta.len() || v.len() != theta.len() {
            candle_core::bail!(
                "{op}: {} parameters, {} and {} moments",
                theta.len(),
                m.len(),
                v.len()
            );
        }
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(t, (m, v))| {
                for ((t, &m), &v) in t.iter_mut().zip(m).zip(v) {
                    let m_hat = m * k.inv_bc1;
                    let v_hat = v * k.inv_bc2;
                    let update = m_hat / (v_hat.sqrt() + k.eps);
                    *t = *t * k.decay - update * k.lr;
                }
            });
        Ok(())
    }
}

/// `Σ x²`, accumulated in f64. The chunks' partial sums are added in order, so the result
/// does not depend on how rayon split the work (a parallel `sum` does).
pub(super) fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// `x · factor`.
pub(super) fn scale(x: &[f32], factor: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o = x * factor;
            }
        });
    out
}
