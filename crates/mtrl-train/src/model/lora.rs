//! LoRA adapters: low-rank updates `W + (alpha / r) · B·A` on chosen projections, saved and
//! loaded in PEFT's format (`adapter_config.json` plus `adapter_model.safetensors`, tensors named
//! `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight`, …).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use crate::Error;

/// A projection a LoRA adapter can target, by its PEFT name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// `self_attn.q_proj`.
    #[serde(rename = "q_proj")]
    Q,
    /// `self_attn.k_proj`.
    #[serde(rename = "k_proj")]
    K,
    /// `self_attn.v_proj`.
    #[serde(rename = "v_proj")]
    V,
    /// `self_attn.o_proj`.
    #[serde(rename = "o_proj")]
    O,
    /// `mlp.gate_proj`.
    #[serde(rename = "gate_proj")]
    Gate,
    /// `mlp.up_proj`.
    #[serde(rename = "up_proj")]
    Up,
    /// `mlp.down_proj`.
    #[serde(rename = "down_proj")]
    Down,
}

impl Module {
    /// Every module, in layer order.
    pub const ALL: [Module; 7] = [
        Module::Q,
        Module::K,
        Module::V,
        Module::O,
        Module::Gate,
        Module::Up,
        Module::Down,
    ];

    /// The PEFT / Hugging Face short name (`q_proj`, …).
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    /// The module from its short name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The path of the module inside a layer (`self_attn.q_proj`, `mlp.up_proj`, …).
    pub fn path(self) -> String {
        let block = match self {
            Module::Q | Module::K | Module::V | Module::O => "self_attn",
            _ => "mlp",
        };
        format!("{block}.{}", self.name())
    }

    /// `(out, in)` of the module's weight.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        match self {
            Module::Q => (q, h),
            Module::K | Module::V => (kv, h),
            Module::O => (h, q),
            Module::Gate | Module::Up => (i, h),
            Module::Down => (h, i),
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// The rank `r`.
    pub rank: usize,
    /// `alpha`: the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// The projections that get adapters.
    pub targets: Vec<Module>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: vec![Module::Q, Module::K, Module::V, Module::O],
        }
    }
}

impl LoraConfig {
    /// The scale `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks the rank and targets.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero rank, a non-finite alpha, or no targets.
    pub fn validate(&self) -> Result<(), Error> {
        if self.rank == 0 {
            return Err(Error::Config("LoRA rank must be at least 1".into()));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Config(format!(
                "LoRA alpha {} is not finite",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Config(
                "LoRA needs at least one target module".into(),
            ));
        }
        Ok(())
    }
}

/// The adapter of one projection, as a forward path reads it.
#[derive(Clone)]
pub(crate) struct Adapter {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scale: f64,
}

/// The trainable adapters of a model: `A [r, in]` and `B [out, r]` per targeted projection and
/// layer. `A` starts uniform in `±1/√in` (PEFT's default), `B` at zero, so a fresh adapter
/// changes nothing.
pub struct Lora {
    config: LoraConfig,
    /// `(layer, module) → (A, B)`.
    vars: HashMap<(usize, Module), (Var, Var)>,
}

impl Lora {
    /// Fresh adapters for `model_config`, seeded.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config, or a candle error.
    pub fn new(
        config: LoraConfig,
        model_config: &ModelConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self, Error> {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{Rng, SeedableRng};
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vars = HashMap::new();
        for l in 0..model_config.num_layers {
            for m in dedup(&config.targets) {
                let (out, inp) = m.shape(model_config);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| {
                        let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
                        (2.0 * u - 1.0) * bound
                    })
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, inp), device)?)?;
                let b = Var::zeros((out, config.rank), DType::F32, device)?;
                vars.insert((l, m), (a, b));
            }
        }
        Ok(Self { config, vars })
    }

    /// The settings.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every adapter tensor under its PEFT name, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::with_capacity(self.vars.len() * 2);
        for ((l, m), (a, b)) in &self.vars {
            out.push((peft_name(*l, *m, "lora_A"), a));
            out.push((peft_name(*l, *m, "lora_B"), b));
        }
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }

    pub(crate) fn adapter(&self, layer: usize, m: Module, detached: bool) -> Option<Adapter> {
        self.vars.get(&(layer, m)).map(|(a, b)| {
            let (a, b) = (a.as_tensor(), b.as_tensor());
            Adapter {
                a: if detached { a.detach() } else { a.clone() },
                b: if detached { b.detach() } else { b.clone() },
                scale: self.config.scale(),
            }
        })
    }

    /// The low-rank update `scale · B·A` of one projection, `[out, in]`, if it has an adapter.
    ///
    /// # Errors
    /// A candle error.
    pub fn delta(&self, layer: usize, m: Module) -> Result<Option<Tensor>, Error> {
        match self.vars.get(&(layer, m)) {
            None => Ok(None),
            Some((a, b)) => Ok(Some(
                (b.as_tensor().matmul(a.as_tensor())? * self.config.scale())?,
            )),
        }
    }

    /// Writes the adapter in PEFT's layout: `dir/adapter_config.json` and
    /// `dir/adapter_model.safetensors`.
    ///
    /// # Errors
    /// [`Error::Io`] or a candle error.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let targets: Vec<&str> = dedup(&self.config.targets)
            .iter()
            .map(|m| m.name())
            .collect();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": 0.0,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "use_rslora": false,
            "modules_to_save": null,
        });
        let path = dir.join("adapter_config.json");
        let text =
            serde_json::to_string_pretty(&config).map_err(|e| Error::Weights(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
        Ok(())
    }

    /// Reads an adapter saved in PEFT's layout, checked against `model_config`.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Config`] for an unsupported config, [`Error::Weights`] for
    /// missing, unexpected or misshapen tensors.
    pub fn load_peft(
        dir: &Path,
        model_config: &ModelConfig,
        device: &Device,
    ) -> Result<Self, Error> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let field = |k: &str| {
            raw.get(k)
                .ok_or_else(|| Error::Config(format!("adapter_config.json has no {k}")))
        };
        if field("peft_type")?.as_str() != Some("LORA") {
            return Err(Error::Config("only LORA adapters are supported".into()));
        }
        let rank = field("r")?
            .as_u64()
            .ok_or_else(|| Error::Config("r is not an integer".into()))?
            as usize;
        let alpha = field("lora_alpha")?
            .as_f64()
            .ok_or_else(|| Error::Config("lora_alpha is not a number".into()))?;
        let targets = field("target_modules")?
            .as_array()
            .ok_or_else(|| Error::Config("target_modules is not a list".into()))?
            .iter()
            .map(|t| {
                t.as_str()
                    .and_then(Module::from_name)
                    .ok_or_else(|| Error::Config(format!("unsupported target module {t}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = LoraConfig {
            rank,
            alpha,
            targets,
        };
        config.validate()?;
        let file = dir.join("adapter_model.safetensors");
        let mut tensors = candle_core::safetensors::load(&file, device)?;
        let mut vars = HashMap::new();
        for l in 0..model_config.num_layers {
            for m in dedup(&config.targets) {
                let (out, inp) = m.shape(model_config);
                let mut take = |part: &str, shape: (usize, usize)| -> Result<Var, Error> {
                    let name = peft_name(l, m, part);
                    let t = tensors
                        .remove(&name)
                        .ok_or_else(|| Error::Weights(format!("adapter has no {name}")))?;
                    if t.dims() != [shape.0, shape.1] {
                        return Err(Error::Weights(format!(
                            "{name} has shape {:?}, expected {shape:?}",
                            t.dims()
                        )));
                    }
                    Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
                };
                let a = take("lora_A", (rank, inp))?;
                let b = take("lora_B", (out, rank))?;
                vars.insert((l, m), (a, b));
            }
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::Weights(format!(
                "adapter has an unexpected tensor {extra}"
            )));
        }
        Ok(Self { config, vars })
    }
}

/// PEFT's tensor name for part `lora_A` / `lora_B` of a projection.
pub fn peft_name(layer: usize, m: Module, part: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{part}.weight",
        m.path()
    )
}

fn dedup(targets: &[Module]) -> Vec<Module> {
    let mut t = targets.to_vec();
    t.sort();
    t.dedup();
    t
}
