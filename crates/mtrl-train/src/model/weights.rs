//! Trainable parameters by name, loaded from safetensors or GGUF, and the per-layer weight
//! views the forward paths read.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::config::ModelConfig;
use super::lora::{Adapter, Lora, Module};
use crate::Error;

/// The model's parameters, as `Var`s under their Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`, …), all in one float dtype (f32 unless converted
/// with [`Params::to_dtype`]).
pub struct Params {
    vars: Vec<(String, Var)>,
    index: HashMap<String, usize>,
}

impl Params {
    /// Parameters from named tensors (converted to f32 on `device`).
    ///
    /// # Errors
    /// A candle error when a tensor cannot be converted.
    pub fn from_tensors(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        device: &Device,
    ) -> Result<Self, Error> {
        let mut vars = Vec::new();
        let mut index = HashMap::new();
        for (name, t) in tensors {
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
            index.insert(name.clone(), vars.len());
            vars.push((name, var));
        }
        Ok(Self { vars, index })
    }

    /// Random parameters for `config`, seeded: near-normal matrices with std `1/√fan_in` (the
    /// input width of each projection, the hidden size for the embeddings), so that a model
    /// trained from scratch starts with attention scores and logits of order one rather than
    /// near a saddle; norms near 1, biases small.
    ///
    /// # Errors
    /// A candle error.
    pub fn random(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self, Error> {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{Rng, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = Vec::new();
        for (name, shape) in expected_shapes(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                (0..n)
                    .map(|_| 1.0 + 0.1 * (uniform(&mut rng) - 0.5))
                    .collect()
            } else {
                let std = match shape.as_slice() {
                    [_, fan_in] => 1.0 / (*fan_in as f32).sqrt(),
                    _ => 0.02,
                };
                // Sum of four uniforms: near-normal.
                (0..n)
                    .map(|_| {
                        let s: f32 = (0..4).map(|_| uniform(&mut rng)).sum::<f32>() - 2.0;
                        s * std / (4.0f32 / 12.0).sqrt()
                    })
                    .collect()
            };
            tensors.push((name, Tensor::from_vec(data, shape, device)?));
        }
        fn uniform(rng: &mut ChaCha8Rng) -> f32 {
            (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
        }
        Self::from_tensors(tensors, device)
    }

    /// The same parameters converted to `dtype` (new variables; f32, bf16 or f16).
    ///
    /// # Errors
    /// [`Error::Config`] for another dtype, or a candle error.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self, Error> {
        super::precision::check_float(dtype)?;
        let vars = self
            .vars
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            vars,
            index: self.index.clone(),
        })
    }

    /// The parameters' dtype.
    ///
    /// # Errors
    /// [`Error::Weights`] when they are not all in one float dtype (f32, bf16 or f16).
    pub fn dtype(&self) -> Result<DType, Error> {
        let dtype = self.vars.first().map_or(DType::F32, |(_, v)| v.dtype());
        if let Some((name, v)) = self.vars.iter().find(|(_, v)| v.dtype() != dtype) {
            return Err(Error::Weights(format!(
                "{name} is {:?}, the other parameters {dtype:?}",
                v.dtype()
            )));
        }
        super::precision::check_float(dtype).map_err(|e| Error::Weights(e.to_string()))?;
        Ok(dtype)
    }

    /// The tensor of a parameter (tracked: gradients flow through it).
    ///
    /// # Errors
    /// [`Error::Weights`] when the model has no such parameter.
    pub fn get(&self, name: &str) -> Result<Tensor, Error> {
        self.index
            .get(name)
            .map(|i| self.vars[*i].1.as_tensor().clone())
            .ok_or_else(|| Error::Weights(format!("missing tensor {name}")))
    }

    /// Whether a parameter exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every parameter, for an optimiser.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Checks names and shapes against `config`.
    ///
    /// # Errors
    /// [`Error::Weights`] naming the first missing or misshapen tensor.
    pub fn check(&self, config: &ModelConfig) -> Result<(), Error> {
        for (name, shape) in expected_shapes(config) {
            if name == "lm_head.weight" && config.tie_word_embeddings {
                continue;
            }
            let t = self.get(&name)?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Weights(format!(
                    "{name} has shape {:?}, the config expects {shape:?}",
                    t.dims()
                )));
            }
        }
        Ok(())
    }
}

/// Every parameter the config calls for, with its shape.
pub(crate) fn expected_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let mut add = |n: &str, s: Vec<usize>| out.push((format!("{p}.{n}"), s));
        add("self_attn.q_proj.weight", vec![q, h]);
        add("self_attn.k_proj.weight", vec![kv, h]);
        add("self_attn.v_proj.weight", vec![kv, h]);
        add("self_attn.o_proj.weight", vec![h, q]);
        if c.attention_bias {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
        if c.qk_norm {
            add("self_attn.q_norm.weight", vec![hd]);
            add("self_attn.k_norm.weight", vec![hd]);
        }
        add("mlp.gate_proj.weight", vec![i, h]);
        add("mlp.up_proj.weight", vec![i, h]);
        add("mlp.down_proj.weight", vec![h, i]);
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

/// One layer's weights, as the forward paths read them.
#[derive(Clone)]
pub(crate) struct Layer {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
    pub attn_norm: Tensor,
    pub mlp_norm: Tensor,
    /// LoRA adapters by [`Module::index`].
    pub adapters: [Option<Adapter>; 7],
}

/// All the weights, tracked (for training) or detached (for decoding).
#[derive(Clone)]
pub(crate) struct Weights {
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Tensor,
}

impl Weights {
    /// Views of `params` and of the adapters in `lora`; `detached` cuts the parameters from the
    /// autograd graph (same storage), `adapters_detached` the adapters.
    pub fn new(
        params: &Params,
        c: &ModelConfig,
        detached: bool,
        lora: Option<&Lora>,
        adapters_detached: bool,
    ) -> Result<Self, Error> {
        let get = |n: &str| -> Result<Tensor, Error> {
            let t = params.get(n)?;
            Ok(if detached { t.detach() } else { t })
        };
        let opt = |n: &str, on: bool| -> Result<Option<Tensor>, Error> {
            if on { get(n).map(Some) } else { Ok(None) }
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = |n: &str| format!("model.layers.{l}.{n}");
            layers.push(Layer {
                q: get(&p("self_attn.q_proj.weight"))?,
                k: get(&p("self_attn.k_proj.weight"))?,
                v: get(&p("self_attn.v_proj.weight"))?,
                o: get(&p("self_attn.o_proj.weight"))?,
                q_bias: opt(&p("self_attn.q_proj.bias"), c.attention_bias)?,
                k_bias: opt(&p("self_attn.k_proj.bias"), c.attention_bias)?,
                v_bias: opt(&p("self_attn.v_proj.bias"), c.attention_bias)?,
                q_norm: opt(&p("self_attn.q_norm.weight"), c.qk_norm)?,
                k_norm: opt(&p("self_attn.k_norm.weight"), c.qk_norm)?,
                gate: get(&p("mlp.gate_proj.weight"))?,
                up: get(&p("mlp.up_proj.weight"))?,
                down: get(&p("mlp.down_proj.weight"))?,
                attn_norm: get(&p("input_layernorm.weight"))?,
                mlp_norm: get(&p("post_attention_layernorm.weight"))?,
                adapters: Module::ALL
                    .map(|m| lora.and_then(|lo| lo.adapter(l, m, adapters_detached))),
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = if c.tie_word_embeddings || !params.contains("lm_head.weight") {
            embed.clone()
        } else {
            get("lm_head.weight")?
        };
        Ok(Self {
            embed,
            layers,
            norm: get("model.norm.weight")?,
            lm_head,
        })
    }
}
