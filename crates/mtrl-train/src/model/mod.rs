//! The causal LM: one set of weights, two forward paths.
//!
//! - [`CausalLm::forward_train`] is differentiable end to end: projections, RMS norm, RoPE,
//!   the attention softmax and SwiGLU are mtrl's fused ops with a backward pass (`model/ops`),
//!   because candle's fused kernels have no backward and would silently cut the gradient.
//!   With LoRA, the base weights are detached, so no gradient of a frozen weight is computed.
//! - [`CausalLm::forward_cached`] decodes with fused kernels, a KV cache, and weights
//!   detached from the autograd graph (the same storage: an optimiser step is seen at once).
//!
//! Both paths share everything else (projections, grouped-query attention, the MLP), and tests
//! check that they agree.
//!
//! The weights and activations are in one compute dtype ([`CausalLm::dtype`]): f32, or bf16 /
//! f16 with [`CausalLm::with_dtype`] (what [`Precision::Auto`] picks on CUDA). Whatever the
//! dtype, RMS norms, attention softmax and log-softmax run in f32, logits come out in f32, and
//! LoRA adapters stay in f32; the same code runs on the CPU and on CUDA.

mod backward;
mod cache;
mod config;
mod load;
mod lora;
mod ops;
mod passes;
mod precision;
mod skinny;
mod weights;

use candle_core::{DType, Device, Tensor, Var};

pub use cache::KvCache;
pub use config::{Architecture, ModelConfig};
pub use load::{LoadedModel, ModelSource};
use lora::Adapter;
pub use lora::{Lora, LoraConfig, Module, peft_name};
use passes::Picks;
pub use precision::Precision;
pub use weights::Params;
use weights::{Layer, Weights};

use crate::Error;

/// Which forward path: differentiable ops, or fused kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Train,
    Infer,
}

/// A decoder-only causal language model (Llama family, Qwen2, Qwen3).
pub struct CausalLm {
    config: ModelConfig,
    params: Params,
    lora: Option<Lora>,
    train: Weights,
    infer: Weights,
    /// RoPE tables, `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    device: Device,
    /// The compute dtype (the parameters').
    dtype: DType,
    /// Bumped whenever the weights change in place ([`CausalLm::weights_changed`]).
    version: std::sync::atomic::AtomicU64,
    /// The fused ops, or the composed reference ([`CausalLm::with_reference_ops`]).
    ops: ops::OpSet,
    /// Whether the scoring and gradient passes compute a batch's common prefix once
    /// ([`CausalLm::with_prefix_sharing`]).
    share_prefix: bool,
}

impl CausalLm {
    /// A model from its config and parameters (checked against each other). It computes in
    /// the parameters' dtype.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Weights`] when they do not fit or are not all in one
    /// float dtype (f32, bf16 or f16), or a candle error.
    pub fn new(config: ModelConfig, params: Params, device: &Device) -> Result<Self, Error> {
        config.validate()?;
        params.check(&config)?;
        let dtype = params.dtype()?;
        let train = Weights::new(&params, &config, false, None, false)?;
        let infer = Weights::new(&params, &config, true, None, true)?;
        let half = config.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_theta
                    .powf(2.0 * i as f64 / config.head_dim as f64) as f32
            })
            .collect();
        let max = config.max_position_embeddings;
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, max as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            config,
            params,
            lora: None,
            train,
            infer,
            device: device.clone(),
            dtype,
            version: std::sync::atomic::AtomicU64::new(0),
            ops: ops::OpSet::Fused,
            share_prefix: true,
        })
    }

    /// The model running its layers on the composed reference ops (`on`) instead of the fused
    /// ones: ordinary candle tensor ops, slower and heavier, which compute the same values and
    /// gradients up to rounding. For checking the fused ops, or for isolating a suspected
    /// kernel bug; devices without fused kernels use the reference anyway.
    pub fn with_reference_ops(mut self, on: bool) -> Self {
        self.ops = if on {
            ops::OpSet::Reference
        } else {
            ops::OpSet::Fused
        };
        self
    }

    /// The model computing in `dtype`: its parameters converted (bf16 or f16 halve the
    /// memory of f32 and run on CUDA's tensor cores). LoRA adapters, if any, stay in f32.
    /// Full fine-tuning of a bf16 or f16 model keeps f32 master weights in the optimiser
    /// ([`crate::rl::AdamW`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a dtype other than f32, bf16 or f16, or a candle error.
    pub fn with_dtype(self, dtype: DType) -> Result<Self, Error> {
        precision::check_float(dtype)?;
        if dtype == self.dtype {
            return Ok(self);
        }
        let params = self.params.to_dtype(dtype)?;
        let mut out = CausalLm::new(self.config, params, &self.device)?;
        out.ops = self.ops;
        out.share_prefix = self.share_prefix;
        if let Some(lora) = self.lora {
            out = out.with_lora(lora)?;
        }
        Ok(out)
    }

    /// The model computing the longest common prefix of a batch's rows once in its scoring and
    /// gradient passes (`on`, the default: [`CausalLm::grads`],
    /// [`CausalLm::next_token_logprobs_detached`]), or every row whole (`off`: the reference
    /// that tests and benchmarks compare against). The samples of a GRPO group share their
    /// prompt token for token, so with sharing a group of 8 computes its 2,500-token prompt
    /// once instead of 8 times; the logprobs and gradients are the same up to rounding.
    pub fn with_prefix_sharing(mut self, on: bool) -> Self {
        self.share_prefix = on;
        self
    }

    /// The compute dtype: the parameters' and the activations'.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters (for an optimiser).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The model with LoRA adapters on top of its (then frozen) weights; both forward paths
    /// apply them.
    ///
    /// # Errors
    /// [`Error::Config`] when the model already has adapters, or a candle error.
    pub fn with_lora(mut self, lora: Lora) -> Result<Self, Error> {
        if self.lora.is_some() {
            return Err(Error::Config("the model already has LoRA adapters".into()));
        }
        // The base weights are frozen: detached on both paths, so that backward passes compute
        // gradients of the adapters only.
        self.train = Weights::new(&self.params, &self.config, true, Some(&lora), false)?;
        self.infer = Weights::new(&self.params, &self.config, true, Some(&lora), true)?;
        self.lora = Some(lora);
        Ok(self)
    }

    /// Records that the weights changed in place (an optimiser step, a restored checkpoint):
    /// generation engines over this model then drop the keys and values they cached with the
    /// old weights. The trainer calls it after every update; call it after changing weights
    /// yourself.
    pub fn weights_changed(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The weights' version (see [`CausalLm::weights_changed`]).
    pub fn weights_version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The LoRA adapters, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// What an optimiser updates, by name: the adapters under their PEFT names when the model
    /// has LoRA, else every parameter under its Hugging Face name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(lora) => lora
                .named_vars()
                .into_iter()
                .map(|(n, v)| (n, v.clone()))
                .collect(),
            None => self
                .params
                .vars()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        }
    }

    /// A copy of the model with its adapters merged into the weights (`W + scale · B·A`) and no
    /// adapters left.
    ///
    /// # Errors
    /// A candle error.
    pub fn merged(&self) -> Result<CausalLm, Error> {
        let mut tensors = Vec::new();
        for (name, var) in self.params.vars() {
            let mut t = var.as_tensor().copy()?;
            if let Some(lora) = &self.lora {
                if let Some((l, m)) = parse_projection(name) {
                    if let Some(delta) = lora.delta(l, m)? {
                        t = (t.to_dtype(DType::F32)? + delta)?;
                    }
                }
            }
            tensors.push((name.to_string(), t));
        }
        let params = Params::from_tensors(tensors, &self.device)?.to_dtype(self.dtype)?;
        let mut out = CausalLm::new(self.config.clone(), params, &self.device)?;
        out.ops = self.ops;
        out.share_prefix = self.share_prefix;
        Ok(out)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[batch, time, vocab]` for token ids `[batch, time]` (each row starting at
    /// position 0), through the differentiable path.
    ///
    /// # Errors
    /// A candle error (for example ids out of the vocabulary range).
    pub fn forward_train(&self, ids: &Tensor) -> Result<Tensor, Error> {
        self.logits(Path::Train, &self.hidden_train(ids)?)
    }

    /// The differentiable path's final hidden states for ids `[batch, time]`, each row
    /// starting at position 0 under a causal mask.
    fn hidden_train(&self, ids: &Tensor) -> Result<Tensor, Error> {
        let (b, t) = ids.dims2()?;
        let (positions, mask) = self.train_positions(b, t)?;
        self.hidden(Path::Train, ids, &positions, mask.as_ref(), None)
    }

    /// Positions `[batch, time]` from 0 and the causal mask of the training path.
    fn train_positions(&self, b: usize, t: usize) -> Result<(Tensor, Option<Tensor>), Error> {
        let positions = Tensor::arange(0u32, t as u32, &self.device)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        let mask = self.causal_mask(b, t, 0, &vec![0; b])?;
        Ok((positions, mask))
    }

    /// The embeddings `[batch, time, hidden]` of ids `[batch, time]`.
    fn embed(&self, w: &Weights, ids: &Tensor) -> Result<Tensor, Error> {
        let (b, t) = ids.dims2()?;
        Ok(w.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.config.hidden_size,
        ))?)
    }

    /// RoPE's cosine and sine tables `[batch, time, head_dim / 2]` at `positions`.
    fn rope_tables(
        &self,
        positions: &Tensor,
        b: usize,
        t: usize,
    ) -> Result<(Tensor, Tensor), Error> {
        let flat_pos = positions.flatten_all()?;
        let half = self.config.head_dim / 2;
        let table = |x: &Tensor| -> Result<Tensor, Error> {
            Ok(x.index_select(&flat_pos, 0)?
                .reshape((b, t, half))?
                .to_dtype(self.dtype)?)
        };
        Ok((table(&self.cos)?, table(&self.sin)?))
    }

    /// Logits `[batch, time, vocab]` for the next `[batch, time]` ids, through the fused path,
    /// reading and extending `cache`. Rows may be left-padded ([`KvCache::pad`]): their padding
    /// is masked and their positions start after it.
    ///
    /// # Errors
    /// [`Error::Context`] past the model's context window, or a candle error.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor, Error> {
        let (b, t) = ids.dims2()?;
        if cache.batch() != b {
            return Err(Error::Weights(format!(
                "cache holds {} rows, the input {b}",
                cache.batch()
            )));
        }
        let start = cache.len();
        if start + t > self.config.max_position_embeddings {
            return Err(Error::Context {
                needed: start + t,
                window: self.config.max_position_embeddings,
            });
        }
        let mut pos = Vec::with_capacity(b * t);
        for row in 0..b {
            let pad = cache.pad()[row];
            pos.extend((0..t).map(|j| (start + j).saturating_sub(pad) as u32));
        }
        let positions = Tensor::from_vec(pos, (b, t), &self.device)?;
        let mask = self.causal_mask(b, t, start, cache.pad())?;
        let out = self.forward(Path::Infer, ids, &positions, mask.as_ref(), Some(cache))?;
        Ok(out)
    }

    /// The final hidden states `[batch, time, hidden]` (after the last norm).
    fn hidden(
        &self,
        path: Path,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor, Error> {
        let w = self.weights(path);
        let (b, t) = ids.dims2()?;
        let mut x = self.embed(w, ids)?;
        let (cos, sin) = self.rope_tables(positions, b, t)?;
        for (l, layer) in w.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| (c, l));
            x = self.layer(path, layer, &x, &cos, &sin, mask, kv)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.norm(path, &x, &w.norm)
    }

    fn forward(
        &self,
        path: Path,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor, Error> {
        let x = self.hidden(path, ids, positions, mask, cache)?;
        self.logits(path, &x)
    }

    /// Logits `[batch, time, vocab]`, in f32, of final hidden states `[batch, time, hidden]`.
    fn logits(&self, path: Path, x: &Tensor) -> Result<Tensor, Error> {
        let (b, t, h) = x.dims3()?;
        let logits = self.project(
            path,
            &x.reshape((b * t, h))?,
            &self.weights(path).lm_head,
            None,
        )?;
        Ok(logits
            .to_dtype(DType::F32)?
            .reshape((b, t, self.config.vocab_size))?)
    }

    /// The additive attention mask `[batch, t, start + t]` in the compute dtype: a query at
    /// slot `start + j` of row `r` sees the keys at slots `pad[r] ..= start + j` (a padding
    /// slot sees itself). `None` when nothing is masked (one new token, no padding).
    fn causal_mask(
        &self,
        b: usize,
        t: usize,
        start: usize,
        pad: &[usize],
    ) -> Result<Option<Tensor>, Error> {
        if t == 1 && pad.iter().all(|p| *p == 0) {
            return Ok(None);
        }
        let kv = start + t;
        let mut data = Vec::with_capacity(b * t * kv);
        for p in pad.iter().take(b) {
            for j in 0..t {
                for s in 0..kv {
                    // A padding slot sees only itself, so that no row is masked entirely
                    // (which would make NaNs that leak into the cache).
                    let visible = (s >= *p && s <= start + j) || s == start + j;
                    data.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let mask = Tensor::from_vec(data, (b, t, kv), &self.device)?;
        Ok(Some(mask.to_dtype(self.dtype)?))
    }

    fn weights(&self, path: Path) -> &Weights {
        match path {
            Path::Train => &self.train,
            Path::Infer => &self.infer,
        }
    }

    /// Differentiable log-probabilities of chosen next tokens, and the (detached) entropy of
    /// the distribution at each: for every `(row, position)` in `at`, the logprob that the
    /// model, having read `ids[row][..=position]`, gives to `ids[row][position + 1]`.
    /// Only those positions go through the output layer, so long prompts cost no
    /// `[time, vocab]` logits.
    ///
    /// # Errors
    /// [`Error::Weights`] for a position without a next token, or a candle error.
    pub fn next_token_logprobs(
        &self,
        ids: &Tensor,
        at: &[(usize, usize)],
    ) -> Result<(Tensor, Tensor), Error> {
        // Every row whole, on candle's autograd: the reference the shared passes are checked
        // against.
        let layout = self.layout(ids, None, at, false)?;
        let x = self.hidden_train(ids)?;
        let (b, t, h) = x.dims3()?;
        self.picked_logprobs(&x.reshape((b * t, h))?, layout.picks())
    }

    /// The logprobs of the picked targets from final hidden states `x [rows, hidden]`, and the
    /// (detached) entropies there.
    fn picked_logprobs(&self, x: &Tensor, picks: &Picks) -> Result<(Tensor, Tensor), Error> {
        let n = picks.rows.len();
        let rows = Tensor::from_vec(picks.rows.clone(), n, &self.device)?;
        let picked = x.index_select(&rows, 0)?;
        let logits = self
            .project(Path::Train, &picked, &self.train.lm_head, None)?
            .to_dtype(DType::F32)?;
        let targets = Tensor::from_vec(picks.targets.clone(), n, &self.device)?;
        // Per row: the target's logprob, the entropy and the log-sum-exp.
        let stats = self.ops.picked_log_softmax(&logits, &targets)?;
        let chosen = stats.narrow(1, 0, 1)?.squeeze(1)?;
        let entropy = stats.narrow(1, 1, 1)?.squeeze(1)?.detach();
        Ok((chosen, entropy))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        path: Path,
        w: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, Error> {
        let keys = match cache {
            Some((cache, l)) => Keys::Cache(cache, l),
            None => Keys::Own,
        };
        Ok(self.layer_parts(path, w, x, cos, sin, mask, keys, false)?.y)
    }

    /// One decoder layer attending to `keys`; with `save`, also the activations that its
    /// backward pass reads ([`backward::Saved`]).
    #[allow(clippy::too_many_arguments)]
    fn layer_parts(
        &self,
        path: Path,
        w: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        keys: Keys<'_>,
        save: bool,
    ) -> Result<LayerOut, Error> {
        let c = &self.config;
        let (b, t, h) = x.dims3()?;
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / kvh;
        let hn = self.norm(path, x, &w.attn_norm)?.reshape((b * t, h))?;
        let ad = |m: Module| w.adapters[m.index()].as_ref();
        let proj = |wt: &Tensor,
                    m: Module,
                    bias: &Option<Tensor>,
                    heads: usize|
         -> Result<Tensor, Error> {
            let mut y = self.project(path, &hn, wt, ad(m))?;
            if let Some(bias) = bias {
                y = y.broadcast_add(bias)?;
            }
            Ok(y.reshape((b, t, heads, hd))?)
        };
        let mut q = proj(&w.q, Module::Q, &w.q_bias, nh)?;
        let mut k = proj(&w.k, Module::K, &w.k_bias, kvh)?;
        let v = proj(&w.v, Module::V, &w.v_bias, kvh)?;
        let mut pre_norm = None;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            pre_norm = Some((q.clone(), k.clone()));
            q = self.norm(path, &q, qn)?;
            k = self.norm(path, &k, kn)?;
        }
        let q = self.rope(path, &q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = self.rope(path, &k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let own = (k.clone(), v.clone());
        let (k, v) = match keys {
            Keys::Own => (k, v),
            Keys::Cache(cache, l) => cache.append(l, &k, &v)?,
            Keys::After(pk, pv) => {
                // The prefix's slots first, the same for every row.
                let shape = (b, kvh, pk.dim(2)?, hd);
                let pk = pk.broadcast_as(shape)?.contiguous()?;
                let pv = pv.broadcast_as(shape)?.contiguous()?;
                (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
            }
        };
        // Grouped-query attention without copying k and v: the query heads that share a
        // key/value head are stacked along time.
        let q = q.reshape((b, kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(&k.t()?)?;
        let probs = match (path, self.ops) {
            (Path::Infer, ops::OpSet::Fused) => ops::attn_softmax_infer(&scores, mask, scale)?,
            _ => self.ops.attn_softmax(&scores, mask, scale)?,
        };
        let attn = probs
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?;
        let x_mid = (x + self
            .project(path, &attn, &w.o, ad(Module::O))?
            .reshape((b, t, h))?)?;
        let hn2 = self.norm(path, &x_mid, &w.mlp_norm)?.reshape((b * t, h))?;
        let gate = self.project(path, &hn2, &w.gate, ad(Module::Gate))?;
        let up = self.project(path, &hn2, &w.up, ad(Module::Up))?;
        let act = self.ops.swiglu(&gate, &up)?;
        let mlp = self
            .project(path, &act, &w.down, ad(Module::Down))?
            .reshape((b, t, h))?;
        let y = (&x_mid + mlp)?;
        let saved = save.then(|| backward::Saved {
            x: x.clone(),
            hn1: hn,
            pre_norm,
            q,
            k,
            v,
            probs,
            attn,
            x_mid,
            hn2,
            gate,
            up,
            act,
        });
        Ok(LayerOut { y, saved, kv: own })
    }

    fn norm(&self, path: Path, x: &Tensor, w: &Tensor) -> Result<Tensor, Error> {
        let eps = self.config.rms_norm_eps;
        Ok(match path {
            Path::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
            Path::Train => self.ops.rms_norm(x, w, eps)?,
        })
    }

    /// RoPE on `[batch, heads, time, head_dim]` with per-row tables `[batch, time, head_dim/2]`
    /// (the non-interleaved, rotate-half convention of Hugging Face).
    fn rope(&self, path: Path, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, Error> {
        Ok(match path {
            Path::Infer => candle_nn::rotary_emb::rope(x, cos, sin)?,
            Path::Train => self.ops.rope(x, cos, sin)?,
        })
    }

    /// `x [rows, in] · wᵀ` for a weight `w [out, in]`, plus the LoRA update
    /// `(scale · x·Aᵀ)·Bᵀ` when the projection has an adapter (computed in the adapter's
    /// dtype, f32). Decoding a few rows on the CPU goes through the skinny kernel
    /// ([`skinny`]), training through the fused projection ([`ops::linear`], or
    /// [`ops::lora_linear`] with an adapter), whose backward skips frozen weights.
    fn project(
        &self,
        path: Path,
        x: &Tensor,
        w: &Tensor,
        adapter: Option<&Adapter>,
    ) -> Result<Tensor, Error> {
        if let (Path::Train, ops::OpSet::Fused, Some(a)) = (path, self.ops, adapter) {
            return Ok(ops::lora_linear(x, w, &a.a, &a.b, a.scale)?);
        }
        let y = match path {
            Path::Infer => match skinny::matmul_t(x, w)? {
                Some(y) => y,
                None => x.matmul(&w.t()?)?,
            },
            Path::Train => self.ops.linear(x, w)?,
        };
        Ok(match adapter {
            None => y,
            Some(a) => {
                let delta = ops::reference::lora_delta(x, &a.a, &a.b, a.scale, y.dtype())?;
                (y + delta)?
            }
        })
    }
}

/// `(layer, module)` of a projection weight's Hugging Face name
/// (`model.layers.3.self_attn.q_proj.weight` → `(3, Q)`).
fn parse_projection(name: &str) -> Option<(usize, Module)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight")?;
    Module::ALL
        .into_iter()
        .find(|m| m.path() == rest)
        .map(|m| (layer, m))
}

/// What a layer's attention reads besides the keys and values of its own input.
enum Keys<'a> {
    /// Nothing: its own only.
    Own,
    /// A decoding cache's, for this layer, extended with its own.
    Cache(&'a mut KvCache, usize),
    /// A shared prefix's `[1, kv_heads, prefix, head_dim]` (after RoPE), before its own.
    After(&'a Tensor, &'a Tensor),
}

/// A decoder layer's output.
struct LayerOut {
    /// The output `[batch, time, hidden]`.
    y: Tensor,
    /// The activations its backward pass reads, when asked for.
    saved: Option<backward::Saved>,
    /// Its own keys (after RoPE) and values `[batch, kv_heads, time, head_dim]`, for rows
    /// that continue it ([`Keys::After`]).
    kv: (Tensor, Tensor),
}
