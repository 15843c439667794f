//! Optimisation: gradients accumulated by name over micro-batches, global-norm clipping,
//! AdamW with saveable state, and learning-rate schedules.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::Error;

mod cpu;

/// Gradients by parameter name, summed over the micro-batches of a step.
#[derive(Default)]
pub struct Grads {
    map: BTreeMap<String, Tensor>,
}

impl Grads {
    /// No gradients yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one backward pass's gradients of `vars` (a parameter that got none is skipped),
    /// accumulated in f32 whatever the parameters' dtype.
    ///
    /// # Errors
    /// A candle error.
    pub fn add(&mut self, store: &GradStore, vars: &[(String, Var)]) -> Result<(), Error> {
        for (name, var) in vars {
            if let Some(g) = store.get(var.as_tensor()) {
                let g = g.detach().to_dtype(DType::F32)?;
                let sum = match self.map.remove(name) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                self.map.insert(name.clone(), sum);
            }
        }
        Ok(())
    }

    /// The gradient of a parameter.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    /// How many parameters have a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The global L2 norm over every gradient (NaN or infinite if any entry is).
    ///
    /// # Errors
    /// A candle error.
    pub fn norm(&self) -> Result<f64, Error> {
        let mut sq = 0f64;
        for g in self.map.values() {
            sq += match cpu::with_f32(&[g], |s| cpu::sum_squares(s[0])) {
                Some(v) => v,
                None => g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
            };
        }
        Ok(sq.sqrt())
    }

    /// Scales every gradient by `factor`.
    ///
    /// # Errors
    /// A candle error.
    pub fn scale(&mut self, factor: f64) -> Result<(), Error> {
        for g in self.map.values_mut() {
            let fused = cpu::with_f32(&[g], |s| cpu::scale(s[0], factor as f32));
            *g = match fused {
                Some(data) => Tensor::from_vec(data, g.shape(), g.device())?,
                None => (&*g * factor)?,
            };
        }
        Ok(())
    }

    /// Clips to a global norm of at most `max_norm` and returns the norm before clipping.
    /// Nothing is scaled when the norm is not finite (the caller skips the update).
    ///
    /// # Errors
    /// A candle error.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64, Error> {
        let norm = self.norm()?;
        if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
            self.scale(max_norm / norm)?;
        }
        Ok(norm)
    }
}

/// AdamW's settings (PyTorch's semantics: decoupled weight decay, bias-corrected moments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// The peak learning rate (the schedule scales it).
    pub lr: f64,
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// Added to `√v̂`.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    /// The f32 master copy of a bf16 or f16 parameter: updates too small for the parameter's
    /// precision accumulate here instead of being rounded away.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named parameters. Moments are f32; a parameter in bf16 or f16 gets an f32
/// master copy that the update applies to, and the parameter is set to its rounding. Its
/// state (moments, master copies and step count) can be saved and restored exactly
/// ([`AdamW::state`], [`AdamW::restore`]).
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    steps: u64,
}

impl AdamW {
    /// An optimiser for `vars`, moments at zero.
    ///
    /// # Errors
    /// A candle error.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self, Error> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                // Two allocations: the moments are updated in place.
                let zeros = || t.zeros_like()?.to_dtype(DType::F32)?.copy();
                let master = match t.dtype() {
                    DType::F32 => None,
                    _ => Some(t.detach().to_dtype(DType::F32)?),
                };
                Ok(Slot {
                    name,
                    master,
                    m: zeros()?,
                    v: zeros()?,
                    var,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            config,
            slots,
            steps: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters, by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.var.clone()))
            .collect()
    }

    /// One update with learning rate `lr` (the schedule already applied). Parameters without a
    /// gradient are left alone (their moments too).
    ///
    /// # Errors
    /// A candle error.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<(), Error> {
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as i32;
        let coefs = cpu::AdamCoefs::new(c, lr, t);
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.name) else {
                continue;
            };
            let theta = match &slot.master {
                Some(m) => m.clone(),
                None => slot.var.as_tensor().detach(),
            };
            // In place on the CPU; the same operations composed of tensor ops elsewhere.
            let in_place = cpu::with_f32(&[&theta, g, &slot.m, &slot.v], |_| ()).is_some();
            let next = if in_place {
                slot.m.inplace_op2(g, &cpu::Moment::first(&coefs))?;
                slot.v.inplace_op2(g, &cpu::Moment::second(&coefs))?;
                theta.inplace_op3(&slot.m, &slot.v, &cpu::Param(coefs))?;
                theta
            } else {
                let (next, m, v) = composed_update(&theta, g, &slot.m, &slot.v, c, lr, t)?;
                slot.m = m;
                slot.v = v;
                next
            };
            match &mut slot.master {
                Some(m) => {
                    slot.var.set(&next.to_dtype(slot.var.dtype())?)?;
                    *m = next;
                }
                // Updated in place already.
                None if in_place => {}
                None => slot.var.set(&next)?,
            }
        }
        Ok(())
    }

    /// The moments by name (`m/<param>`, `v/<param>`), the master copies of bf16 or f16
    /// parameters (`master/<param>`) and the step count, for a checkpoint: copies, which
    /// later steps (that update the moments in place) leave as they are.
    ///
    /// # Errors
    /// A candle error.
    pub fn state(&self) -> Result<(HashMap<String, Tensor>, u64), Error> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m/{}", s.name), s.m.copy()?);
            out.insert(format!("v/{}", s.name), s.v.copy()?);
            if let Some(m) = &s.master {
                out.insert(format!("master/{}", s.name), m.copy()?);
            }
        }
        Ok((out, self.steps))
    }

    /// Restores what [`AdamW::state`] saved. A master copy missing from the state (one saved
    /// from an f32 run) is taken from the parameter as it is now.
    ///
    /// # Errors
    /// [`Error::Weights`] when a moment is missing or misshapen.
    pub fn restore(
        &mut self,
        mut tensors: HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<(), Error> {
        // A saved tensor of a slot, checked against its parameter, in f32 on its device.
        let mut take = |name: String, var: &Var| -> Result<Option<Tensor>, Error> {
            let Some(t) = tensors.remove(&name) else {
                return Ok(None);
            };
            let like = var.as_tensor();
            if t.dims() != like.dims() {
                return Err(Error::Weights(format!(
                    "optimiser state {name} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    like.dims()
                )));
            }
            // A copy of its own: the moments and master copies are updated in place.
            Ok(Some(
                t.to_dtype(DType::F32)?.to_device(like.device())?.copy()?,
            ))
        };
        for s in &mut self.slots {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let name = format!("{key}/{}", s.name);
                *dst = take(name.clone(), &s.var)?
                    .ok_or_else(|| Error::Weights(format!("optimiser state has no {name}")))?;
            }
            if s.master.is_some() {
                s.master = Some(match take(format!("master/{}", s.name), &s.var)? {
                    Some(t) => t,
                    None => s.var.as_tensor().detach().to_dtype(DType::F32)?,
                });
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// AdamW's update of step `t` composed of tensor ops, for any device and layout: the new
/// `(theta, m, v)`. The CPU kernel ([`cpu::adamw`]) computes the same, bit for bit.
fn composed_update(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: &AdamWConfig,
    lr: f64,
    t: i32,
) -> Result<(Tensor, Tensor, Tensor), Error> {
    let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
    let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let m_hat = (&m / bc1)?;
    let v_hat = (&v / bc2)?;
    let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
    let decayed = (theta * (1.0 - lr * c.weight_decay))?;
    Ok(((decayed - (update * lr)?)?, m, v))
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decay {
    /// Stays at the peak.
    Constant,
    /// Half a cosine from the peak down to `min_ratio · peak` at the last step.
    Cosine {
        /// The final fraction of the peak.
        min_ratio: f64,
    },
}

/// A learning-rate schedule: linear warm-up over `warmup` updates, then [`Decay`] until `total`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Warm-up updates (the first has `lr / warmup`).
    pub warmup: usize,
    /// Total updates of the run.
    pub total: usize,
    /// After warm-up.
    pub decay: Decay,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            warmup: 0,
            total: 1,
            decay: Decay::Constant,
        }
    }
}

impl Schedule {
    /// The factor of the peak learning rate for update `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            return (step + 1) as f64 / self.warmup as f64;
        }
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine { min_ratio } => {
                let span = self.total.saturating_sub(self.warmup).max(1);
                let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
                min_ratio
                    + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{AdamWConfig, composed_update, cpu};

    fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    #[test]
    fn the_in_place_adamw_update_equals_the_composed_one_bit_for_bit() {
        let n = 200_003;
        let c = AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let dev = Device::Cpu;
        let tensor = |v: Vec<f32>| Tensor::from_vec(v, n, &dev).unwrap();
        let (mut theta, mut m, mut v) = (
            tensor(data(n, 1, 1.0)),
            tensor(vec![0.0; n]),
            tensor(vec![0.0; n]),
        );
        for t in 1..=3 {
            let g = tensor(data(n, 10 + t as u32, 0.01 * t as f32));
            let lr = c.lr / t as f64;
            let (want_theta, want_m, want_v) =
                composed_update(&theta, &g, &m, &v, &c, lr, t).unwrap();
            let coefs = cpu::AdamCoefs::new(&c, lr, t);
            let (got_theta, got_m, got_v) =
                (theta.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
            got_m.inplace_op2(&g, &cpu::Moment::first(&coefs)).unwrap();
            got_v.inplace_op2(&g, &cpu::Moment::second(&coefs)).unwrap();
            got_theta
                .inplace_op3(&got_m, &got_v, &cpu::Param(coefs))
                .unwrap();
            let bits = |x: &Tensor| {
                x.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&got_theta), bits(&want_theta), "theta, step {t}");
            assert_eq!(bits(&got_m), bits(&want_m), "m, step {t}");
            assert_eq!(bits(&got_v), bits(&want_v), "v, step {t}");
            (theta, m, v) = (got_theta, got_m, got_v);
        }
    }

    #[test]
    fn tensors_the_kernels_cannot_read_are_left_to_the_composed_ops() {
        let x = Tensor::from_vec(data(12, 3, 1.0), (3, 4), &Device::Cpu).unwrap();
        assert!(cpu::with_f32(&[&x], |_| ()).is_some());
        assert!(
            cpu::with_f32(&[&x.t().unwrap()], |_| ()).is_none(),
            "strided"
        );
        let bf = x.to_dtype(candle_core::DType::BF16).unwrap();
        assert!(cpu::with_f32(&[&x, &bf], |_| ()).is_none(), "bf16");
    }
}
