//! Optimisation: gradients accumulated by name over micro-batches, global-norm clipping,
//! AdamW with saveable state, and learning-rate schedules.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::Error;

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
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(sq.sqrt())
    }

    /// Scales every gradient by `factor`.
    ///
    /// # Errors
    /// A candle error.
    pub fn scale(&mut self, factor: f64) -> Result<(), Error> {
        for g in self.map.values_mut() {
            *g = (&*g * factor)?;
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
                let z = t.zeros_like()?.to_dtype(DType::F32)?;
                let master = match t.dtype() {
                    DType::F32 => None,
                    _ => Some(t.detach().to_dtype(DType::F32)?),
                };
                Ok(Slot {
                    name,
                    master,
                    m: z.clone(),
                    v: z,
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
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.name) else {
                continue;
            };
            slot.m = ((&slot.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&slot.m / bc1)?;
            let v_hat = (&slot.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let theta = match &slot.master {
                Some(m) => m.clone(),
                None => slot.var.as_tensor().detach(),
            };
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            let next = (decayed - (update * lr)?)?;
            match &mut slot.master {
                Some(m) => {
                    slot.var.set(&next.to_dtype(slot.var.dtype())?)?;
                    *m = next;
                }
                None => slot.var.set(&next)?,
            }
        }
        Ok(())
    }

    /// The moments by name (`m/<param>`, `v/<param>`), the master copies of bf16 or f16
    /// parameters (`master/<param>`) and the step count, for a checkpoint.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m/{}", s.name), s.m.clone());
            out.insert(format!("v/{}", s.name), s.v.clone());
            if let Some(m) = &s.master {
                out.insert(format!("master/{}", s.name), m.clone());
            }
        }
        (out, self.steps)
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
            Ok(Some(t.to_dtype(DType::F32)?.to_device(like.device())?))
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
