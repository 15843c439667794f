//! The training path's backward pass through the decoder layers, written by hand.
//!
//! Candle's autograd walks the graph node by node and, for every input of every node,
//! allocates a zeroed gradient and adds the incoming one into it: a full write and a full
//! read-modify-write per activation, plus the graph's bookkeeping. Here the forward pass runs
//! on detached weights and keeps each layer's activations ([`Saved`]); the backward pass calls
//! the ops' gradient kernels ([`super::ops::backward`]) and matrix products directly, and
//! writes each trainable parameter's gradient once. Only the top of the model (final norm,
//! output layer, log-softmax and the loss) stays on candle's autograd, which is what lets the
//! loss be any differentiable function of the logprobs.
//!
//! It runs where the fused ops run (the CPU); elsewhere, and with the reference ops,
//! [`CausalLm::grads`] uses candle's autograd over the whole model. Tests check that both give
//! the same gradients.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::lora::Module;
use super::ops::backward::{
    LowRank, attn_softmax_grad, linear_grads, rms_norm_grads, rope_grad, swiglu_grads,
};
use super::weights::Layer;
use super::{CausalLm, Path, ops};
use crate::Error;

/// One layer's activations that its backward pass reads, from the forward pass.
pub(super) struct Saved {
    /// The layer's input `[batch, time, hidden]`.
    pub x: Tensor,
    /// The attention norm's output `[rows, hidden]`.
    pub hn1: Tensor,
    /// Queries and keys `[batch, time, heads, head_dim]` before their norms (Qwen3).
    pub pre_norm: Option<(Tensor, Tensor)>,
    /// Queries after RoPE, `[batch, kv_heads, rep · time, head_dim]`.
    pub q: Tensor,
    /// Keys after RoPE and values, `[batch, kv_heads, time, head_dim]`.
    pub k: Tensor,
    pub v: Tensor,
    /// The attention probabilities `[batch, kv_heads, rep · time, time]`.
    pub probs: Tensor,
    /// The attention output `[rows, heads · head_dim]`, the output projection's input.
    pub attn: Tensor,
    /// The residual stream after attention `[batch, time, hidden]`.
    pub x_mid: Tensor,
    /// The MLP norm's output `[rows, hidden]`.
    pub hn2: Tensor,
    /// The MLP's gate and up projections and their SwiGLU product `[rows, intermediate]`.
    pub gate: Tensor,
    pub up: Tensor,
    pub act: Tensor,
}

/// Adds `grad` to the gradient of `key` in `store`.
fn accumulate(store: &mut GradStore, key: &Tensor, grad: Tensor) -> Result<(), Error> {
    let sum = match store.remove(key) {
        Some(prev) => (prev + grad)?,
        None => grad,
    };
    store.insert(key, sum);
    Ok(())
}

impl CausalLm {
    /// Whether [`CausalLm::grads`] runs the hand-written backward pass: with the fused ops on
    /// the CPU, where their gradient kernels are.
    fn manual_backward(&self) -> bool {
        self.ops == ops::OpSet::Fused
            && self.device.is_cpu()
            && self.config.head_dim % 2 == 0
            && matches!(self.dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    /// The gradients of a loss of [`CausalLm::next_token_logprobs`]: `loss` receives the
    /// logprobs and entropies and returns the scalar to differentiate (or `None` to skip the
    /// backward pass, for example when it is not finite) with anything it wants returned.
    /// The gradients, of the trainable parameters ([`CausalLm::trainable`]) only, equal those
    /// of `loss.backward()` on [`CausalLm::next_token_logprobs`] up to rounding; `None` when
    /// the backward pass was skipped.
    ///
    /// With `checkpointing` (activation checkpointing), the forward pass keeps only each
    /// layer's input, and the backward pass recomputes one layer at a time, so memory holds
    /// one layer's activations instead of all of them (what lets a 4,000-token SOP prompt
    /// train on a CPU).
    ///
    /// On the CPU the backward pass through the layers is written by hand over the fused
    /// ops' gradient kernels, which is faster and lighter than candle's autograd; elsewhere,
    /// or with [`CausalLm::with_reference_ops`], it is candle's autograd.
    ///
    /// # Errors
    /// As [`CausalLm::next_token_logprobs`], or the error of `loss`.
    pub fn grads<T>(
        &self,
        ids: &Tensor,
        at: &[(usize, usize)],
        checkpointing: bool,
        loss: impl FnOnce(&Tensor, &Tensor) -> Result<(Option<Tensor>, T), Error>,
    ) -> Result<(T, Option<GradStore>), Error> {
        let manual = self.manual_backward();
        if !manual && !checkpointing {
            let (lp, entropy) = self.next_token_logprobs(ids, at)?;
            let (scalar, out) = loss(&lp, &entropy)?;
            let store = scalar.map(|s| s.backward()).transpose()?;
            return Ok((out, store));
        }
        let picks = self.picks(ids, at)?;
        let (b, t) = ids.dims2()?;
        // The hand-written pass computes on detached weights and keys the gradients by the
        // tracked ones; candle's autograd computes on the tracked ones.
        let keys = &self.train;
        let forward = if manual { &self.infer } else { keys };
        let (positions, mask) = self.train_positions(b, t)?;
        let (cos, sin) = self.rope_tables(&positions, b, t)?;
        let layer = |l: usize, x: &Tensor, save: bool| {
            let w = &forward.layers[l];
            self.layer_parts(Path::Train, w, x, &cos, &sin, mask.as_ref(), None, save)
        };
        // Forward: each layer's activations (the hand-written pass without checkpointing), or
        // only its input, detached (the graph of each layer is dropped at once).
        let keep_all = manual && !checkpointing;
        let mut inputs = Vec::with_capacity(forward.layers.len());
        let mut saved = Vec::with_capacity(forward.layers.len());
        let mut x = self.embed(forward, ids)?.detach();
        for l in 0..forward.layers.len() {
            let (y, s) = layer(l, &x, keep_all)?;
            if keep_all {
                saved.push(s);
            } else {
                inputs.push(x);
            }
            x = y.detach();
        }
        let top = Var::from_tensor(&x)?;
        let normed = self.norm(Path::Train, top.as_tensor(), &keys.norm)?;
        let (lp, entropy) = self.picked_logprobs(&normed, &picks)?;
        let (scalar, out) = loss(&lp, &entropy)?;
        let Some(scalar) = scalar else {
            return Ok((out, None));
        };
        // Each autograd store also holds the gradients of everything it met (the attention
        // mask's, as large as the attention scores): only the parameters' are kept, summed.
        let trainable = self.trainable();
        let mut total = GradStore::default();
        let keep = |total: &mut GradStore, store: &mut GradStore| -> Result<(), Error> {
            for (_, var) in &trainable {
                if let Some(g) = store.remove(var.as_tensor()) {
                    accumulate(total, var.as_tensor(), g)?;
                }
            }
            Ok(())
        };
        let mut store = scalar.backward()?;
        let mut upstream = store.remove(top.as_tensor());
        keep(&mut total, &mut store)?;
        drop(store);
        // Backward, one layer at a time.
        for l in (0..forward.layers.len()).rev() {
            let Some(g) = upstream else { break };
            if !manual {
                // Recompute the layer from its input and pull the gradient arriving at its
                // output through it (d/dθ of Σ y·g is g's pull-back).
                let xv = Var::from_tensor(&inputs[l])?;
                let (y, _) = layer(l, xv.as_tensor(), false)?;
                let mut store = (y * g)?.sum_all()?.backward()?;
                upstream = store.remove(xv.as_tensor());
                keep(&mut total, &mut store)?;
                continue;
            }
            let s = match saved.pop().flatten() {
                Some(s) => s,
                None => match layer(l, &inputs[l], true)?.1 {
                    Some(s) => s,
                    None => return Err(Error::Weights("a layer kept no activations".into())),
                },
            };
            let (w, k) = (&forward.layers[l], &keys.layers[l]);
            upstream = Some(self.layer_backward(w, k, &s, &g, &cos, &sin, &mut total)?);
        }
        if let (Some(g), true) = (upstream, keys.embed.is_variable()) {
            // The embedding's gradient: each row's gradient added into its token's row, on top
            // of the tied output projection's gradient where there is one (no zeroed table and
            // no second pass to sum the two).
            let (vocab, h) = keys.embed.dims2()?;
            let rows = ids.flatten_all()?;
            let g = g.reshape((b * t, h))?.to_dtype(keys.embed.dtype())?;
            let base = match total.remove(&keys.embed) {
                Some(tied) => tied,
                None => Tensor::zeros((vocab, h), g.dtype(), g.device())?,
            };
            total.insert(&keys.embed, base.index_add(&rows, &g, 0)?);
        }
        Ok((out, Some(total)))
    }

    /// [`CausalLm::grads`] with activation checkpointing.
    ///
    /// # Errors
    /// As [`CausalLm::grads`].
    pub fn checkpointed_grads<T>(
        &self,
        ids: &Tensor,
        at: &[(usize, usize)],
        loss: impl FnOnce(&Tensor, &Tensor) -> Result<(Option<Tensor>, T), Error>,
    ) -> Result<(T, Option<GradStore>), Error> {
        self.grads(ids, at, true, loss)
    }

    /// One layer's backward pass: given the gradient `g [batch, time, hidden]` at its output,
    /// adds its trainable parameters' gradients to `total` (keyed by the tracked weights in
    /// `keys`) and returns the gradient at its input. `w` holds the detached weights that
    /// computed `s`.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        w: &Layer,
        keys: &Layer,
        s: &Saved,
        g: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        total: &mut GradStore,
    ) -> Result<Tensor, Error> {
        let c = &self.config;
        let (b, t, h) = s.x.dims3()?;
        let n = b * t;
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / kvh;
        let eps = c.rms_norm_eps;
        let project = |total: &mut GradStore,
                       m: Module,
                       wt: &Tensor,
                       key: &Tensor,
                       x: &Tensor,
                       g: &Tensor| {
            let i = m.index();
            let low = w.adapters[i].as_ref().map(|a| LowRank {
                a: &a.a,
                b: &a.b,
                scale: a.scale,
            });
            let r = linear_grads(x, wt, low, g, key.is_variable())?;
            if let Some(dw) = r.w {
                accumulate(total, key, dw)?;
            }
            if let (Some((da, db)), Some(ak)) = (r.adapter, keys.adapters[i].as_ref()) {
                accumulate(total, &ak.a, da)?;
                accumulate(total, &ak.b, db)?;
            }
            Ok::<_, Error>(r.x)
        };
        // MLP: y = x_mid + down(swiglu(gate(hn2), up(hn2))).
        let g2 = g.reshape((n, h))?;
        let d_act = project(total, Module::Down, &w.down, &keys.down, &s.act, &g2)?;
        let (d_gate, d_up) = swiglu_grads(&s.gate, &s.up, &d_act)?;
        let d_hn2 = (project(total, Module::Gate, &w.gate, &keys.gate, &s.hn2, &d_gate)?
            + project(total, Module::Up, &w.up, &keys.up, &s.hn2, &d_up)?)?;
        let (dx, dw) = rms_norm_grads(
            &s.x_mid,
            &w.mlp_norm,
            &d_hn2.reshape((b, t, h))?,
            eps,
            keys.mlp_norm.is_variable(),
        )?;
        if let Some(dw) = dw {
            accumulate(total, &keys.mlp_norm, dw)?;
        }
        let d_mid = (g + dx)?;
        // Attention: x_mid = x + o(softmax(q·kᵀ · scale + mask) · v).
        let d_attn = project(
            total,
            Module::O,
            &w.o,
            &keys.o,
            &s.attn,
            &d_mid.reshape((n, h))?,
        )?
        .reshape((b, t, nh, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, kvh, rep * t, hd))?;
        let d_probs = d_attn.matmul(&s.v.t()?)?;
        let dv = s.probs.t()?.matmul(&d_attn)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let d_scores = attn_softmax_grad(&s.probs, &d_probs, scale)?;
        let dq = d_scores.matmul(&s.k)?.reshape((b, nh, t, hd))?;
        let dk = d_scores.t()?.matmul(&s.q)?;
        let mut dq = rope_grad(&dq, cos, sin)?.transpose(1, 2)?;
        let mut dk = rope_grad(&dk, cos, sin)?.transpose(1, 2)?;
        if let (Some((q_pre, k_pre)), Some(qn), Some(kn)) = (&s.pre_norm, &w.q_norm, &w.k_norm) {
            let (key_q, key_k) = (keys.q_norm.as_ref(), keys.k_norm.as_ref());
            let want_q = key_q.is_some_and(|k| k.is_variable());
            let want_k = key_k.is_some_and(|k| k.is_variable());
            let (dxq, dwq) = rms_norm_grads(q_pre, qn, &dq, eps, want_q)?;
            let (dxk, dwk) = rms_norm_grads(k_pre, kn, &dk, eps, want_k)?;
            if let (Some(dw), Some(key)) = (dwq, key_q) {
                accumulate(total, key, dw)?;
            }
            if let (Some(dw), Some(key)) = (dwk, key_k) {
                accumulate(total, key, dw)?;
            }
            (dq, dk) = (dxq, dxk);
        }
        let rows = |d: Tensor, heads: usize| d.contiguous()?.reshape((n, heads * hd));
        let (dq, dk, dv) = (
            rows(dq, nh)?,
            rows(dk, kvh)?,
            rows(dv.transpose(1, 2)?, kvh)?,
        );
        for (bias, d) in [
            (&keys.q_bias, &dq),
            (&keys.k_bias, &dk),
            (&keys.v_bias, &dv),
        ] {
            if let Some(bias) = bias.as_ref().filter(|b| b.is_variable()) {
                accumulate(total, bias, d.sum(0)?)?;
            }
        }
        let d_hn1 = ((project(total, Module::Q, &w.q, &keys.q, &s.hn1, &dq)?
            + project(total, Module::K, &w.k, &keys.k, &s.hn1, &dk)?)?
            + project(total, Module::V, &w.v, &keys.v, &s.hn1, &dv)?)?;
        let (dx, dw) = rms_norm_grads(
            &s.x,
            &w.attn_norm,
            &d_hn1.reshape((b, t, h))?,
            eps,
            keys.attn_norm.is_variable(),
        )?;
        if let Some(dw) = dw {
            accumulate(total, &keys.attn_norm, dw)?;
        }
        Ok((d_mid + dx)?)
    }
}
