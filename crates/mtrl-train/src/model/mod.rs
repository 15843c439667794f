//! The causal LM: one set of weights, two forward paths.
//!
//! - [`CausalLm::forward_train`] is differentiable end to end: RMS norm, RoPE and softmax are
//!   written with ordinary tensor ops, because candle's fused kernels for them have no backward
//!   and would silently cut the gradient.
//! - [`CausalLm::forward_cached`] decodes with candle's fused kernels, a KV cache, and weights
//!   detached from the autograd graph (the same storage: an optimiser step is seen at once).
//!
//! Both paths share everything else (projections, grouped-query attention, the MLP), and tests
//! check that they agree.

mod cache;
mod config;
mod load;
mod skinny;
mod weights;

use candle_core::{D, DType, Device, Tensor};

pub use cache::KvCache;
pub use config::{Architecture, ModelConfig};
pub use load::{LoadedModel, ModelSource};
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
    train: Weights,
    infer: Weights,
    /// RoPE tables, `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl CausalLm {
    /// A model from its config and parameters (checked against each other).
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Weights`] when they do not fit, or a candle error.
    pub fn new(config: ModelConfig, params: Params, device: &Device) -> Result<Self, Error> {
        config.validate()?;
        params.check(&config)?;
        let train = Weights::new(&params, &config, false)?;
        let infer = Weights::new(&params, &config, true)?;
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
            train,
            infer,
            device: device.clone(),
        })
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters (for an optimiser).
    pub fn params(&self) -> &Params {
        &self.params
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
        let (b, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, &self.device)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        let mask = causal_mask(b, t, 0, &vec![0; b], &self.device)?;
        self.forward(Path::Train, ids, &positions, mask.as_ref(), None)
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
        let mask = causal_mask(b, t, start, cache.pad(), &self.device)?;
        let out = self.forward(Path::Infer, ids, &positions, mask.as_ref(), Some(cache))?;
        Ok(out)
    }

    fn forward(
        &self,
        path: Path,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor, Error> {
        let w = match path {
            Path::Train => &self.train,
            Path::Infer => &self.infer,
        };
        let (b, t) = ids.dims2()?;
        let h = self.config.hidden_size;
        let mut x = w
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let flat_pos = positions.flatten_all()?;
        let half = self.config.head_dim / 2;
        let cos = self.cos.index_select(&flat_pos, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&flat_pos, 0)?.reshape((b, t, half))?;
        for (l, layer) in w.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| (c, l));
            x = self.layer(path, layer, &x, &cos, &sin, mask, kv)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = self.norm(path, &x, &w.norm)?;
        let logits = project(path, &x.reshape((b * t, h))?, &w.lm_head)?;
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
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
        let c = &self.config;
        let (b, t, h) = x.dims3()?;
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / kvh;
        let hn = self.norm(path, x, &w.attn_norm)?.reshape((b * t, h))?;
        let proj = |wt: &Tensor, bias: &Option<Tensor>, heads: usize| -> Result<Tensor, Error> {
            let mut y = project(path, &hn, wt)?;
            if let Some(bias) = bias {
                y = y.broadcast_add(bias)?;
            }
            Ok(y.reshape((b, t, heads, hd))?)
        };
        let mut q = proj(&w.q, &w.q_bias, nh)?;
        let mut k = proj(&w.k, &w.k_bias, kvh)?;
        let v = proj(&w.v, &w.v_bias, kvh)?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            q = self.norm(path, &q, qn)?;
            k = self.norm(path, &k, kn)?;
        }
        let q = self.rope(path, &q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = self.rope(path, &k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match cache {
            Some((cache, l)) => cache.append(l, &k, &v)?,
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        // Grouped-query attention without copying k and v: the query heads that share a
        // key/value head are stacked along time.
        let q = q.reshape((b, kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores
                .reshape((b, kvh, rep, t, kv_len))?
                .broadcast_add(&m.reshape((b, 1, 1, t, kv_len))?)?
                .reshape((b, kvh, rep * t, kv_len))?,
            None => scores,
        };
        let probs = match path {
            Path::Train => candle_nn::ops::softmax(&scores, D::Minus1)?,
            Path::Infer => candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?,
        };
        let attn = probs
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?;
        let x = (x + project(path, &attn, &w.o)?.reshape((b, t, h))?)?;
        let hn = self.norm(path, &x, &w.mlp_norm)?.reshape((b * t, h))?;
        let gate = project(path, &hn, &w.gate)?.silu()?;
        let up = project(path, &hn, &w.up)?;
        let mlp = project(path, &(gate * up)?, &w.down)?.reshape((b, t, h))?;
        Ok((x + mlp)?)
    }

    fn norm(&self, path: Path, x: &Tensor, w: &Tensor) -> Result<Tensor, Error> {
        let eps = self.config.rms_norm_eps;
        Ok(match path {
            Path::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
            Path::Train => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?
            }
        })
    }

    /// RoPE on `[batch, heads, time, head_dim]` with per-row tables `[batch, time, head_dim/2]`
    /// (the non-interleaved, rotate-half convention of Hugging Face).
    fn rope(&self, path: Path, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, Error> {
        Ok(match path {
            Path::Infer => candle_nn::rotary_emb::rope(x, cos, sin)?,
            Path::Train => {
                let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
                let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
                let half = x.dim(D::Minus1)? / 2;
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?
            }
        })
    }
}

/// `x [rows, in] · wᵀ` for a weight `w [out, in]`. Decoding a few rows on the CPU goes through
/// the skinny kernel ([`skinny`]); everything else through candle's matmul.
fn project(path: Path, x: &Tensor, w: &Tensor) -> Result<Tensor, Error> {
    if path == Path::Infer {
        if let Some(y) = skinny::matmul_t(x, w)? {
            return Ok(y);
        }
    }
    Ok(x.matmul(&w.t()?)?)
}

/// The additive attention mask `[batch, t, start + t]`: a query at slot `start + j` of row `r`
/// sees the keys at slots `pad[r] ..= start + j` (a padding slot sees itself). `None` when nothing is masked (one new token,
/// no padding).
fn causal_mask(
    b: usize,
    t: usize,
    start: usize,
    pad: &[usize],
    device: &Device,
) -> Result<Option<Tensor>, Error> {
    if t == 1 && pad.iter().all(|p| *p == 0) {
        return Ok(None);
    }
    let kv = start + t;
    let mut data = Vec::with_capacity(b * t * kv);
    for p in pad.iter().take(b) {
        for j in 0..t {
            for s in 0..kv {
                // A padding slot sees only itself, so that no row is masked entirely (which
                // would make NaNs that leak into the cache).
                let visible = (s >= *p && s <= start + j) || s == start + j;
                data.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
            }
        }
    }
    Ok(Some(Tensor::from_vec(data, (b, t, kv), device)?))
}
