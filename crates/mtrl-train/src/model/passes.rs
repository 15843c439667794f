//! The scoring and gradient passes over a batch of token rows ([`CausalLm::grads`],
//! [`CausalLm::next_token_logprobs_detached`]), which compute the rows' longest common prefix
//! once.
//!
//! The samples of a GRPO group share their prompt token for token; an SOP-Bench prompt is
//! 2,000–4,000 tokens, each sample's own part a few hundred. Causal attention makes every
//! position's activations depend only on the tokens up to it, so the prefix's activations are
//! the same in every row. A batch is computed as two streams ([`Layout`]):
//! - the prefix, once, as a batch of one row;
//! - every row that goes past it, from the prefix's end, attending to the prefix's keys and
//!   values (per layer) before its own ([`super::Keys::After`]).
//!
//! In the backward pass, each layer's key and value gradients at the prefix's slots are summed
//! over the rows and added to the prefix's own ([`CausalLm::layer_backward`]), so the gradient
//! through the prefix accumulates from all the samples. The logprobs and gradients equal those
//! of every row computed whole, up to rounding (tests check 1e-5 relative in f32).
//!
//! Left-padded rows ([`CausalLm::grads_left_padded`]) are first stripped of their padding, so
//! they share as well as unpadded ones; right padding is never part of the shared prefix.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::backward::{Saved, accumulate};
use super::weights::Weights;
use super::{CausalLm, Keys, LayerOut, Path};
use crate::Error;

/// Flat rows and next-token targets picked for the output layer.
pub(super) struct Picks {
    /// Each pick's row in the stacked final hidden states (`[prefix; suffix rows]`).
    pub rows: Vec<u32>,
    /// Each pick's target id.
    pub targets: Vec<u32>,
}

/// A batch as it is computed: its rows' longest common prefix (`[1, P]`), then every row that
/// goes past it from position `P` (`[n, S]`, right-padded).
pub(super) struct Layout {
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    suffix_rows: usize,
    suffix_len: usize,
    picks: Picks,
}

impl Layout {
    /// The layout of `rows` (without padding) for the picks `at` (`(row, position)`, each with
    /// a next token in its row): with `share`, the prefix that every row with a pick shares
    /// up to its last picked position; without, no prefix and every row whole.
    fn new(rows: &[&[u32]], at: &[(usize, usize)], share: bool) -> Self {
        // The tokens each row runs through the model: up to its last picked position.
        let mut need = vec![0usize; rows.len()];
        for &(r, p) in at {
            need[r] = need[r].max(p + 1);
        }
        let live: Vec<usize> = (0..rows.len()).filter(|r| need[*r] > 0).collect();
        let prefix_len = match (share, live.split_first()) {
            (true, Some((first, rest))) => rest.iter().fold(need[*first], |len, r| {
                let (a, b) = (&rows[*first][..len], &rows[*r][..need[*r]]);
                a.iter().zip(b).take_while(|(x, y)| x == y).count()
            }),
            _ => 0,
        };
        let prefix = live
            .first()
            .map(|r| rows[*r][..prefix_len].to_vec())
            .unwrap_or_default();
        // Rows past the prefix, each to its end (so that a batch without a shared prefix is
        // computed exactly as given).
        let past: Vec<usize> = if share {
            live.iter()
                .copied()
                .filter(|r| need[*r] > prefix_len)
                .collect()
        } else {
            (0..rows.len()).collect()
        };
        let suffix_len = past
            .iter()
            .map(|r| rows[*r].len() - prefix_len)
            .max()
            .unwrap_or(0);
        let mut slot = vec![usize::MAX; rows.len()];
        let mut suffix = Vec::with_capacity(past.len() * suffix_len);
        for (i, r) in past.iter().enumerate() {
            slot[*r] = i;
            let tail = &rows[*r][prefix_len..];
            suffix.extend_from_slice(tail);
            suffix.extend(std::iter::repeat_n(0u32, suffix_len - tail.len()));
        }
        let mut picks = Picks {
            rows: Vec::with_capacity(at.len()),
            targets: Vec::with_capacity(at.len()),
        };
        for &(r, p) in at {
            let row = if p < prefix_len {
                p
            } else {
                prefix_len + slot[r] * suffix_len + (p - prefix_len)
            };
            picks.rows.push(row as u32);
            picks.targets.push(rows[r][p + 1]);
        }
        Self {
            prefix,
            suffix,
            suffix_rows: past.len(),
            suffix_len,
            picks,
        }
    }

    /// The picks, in the order asked.
    pub(super) fn picks(&self) -> &Picks {
        &self.picks
    }

    /// Token positions the model computes: the prefix once, then each row past it.
    fn tokens(&self) -> usize {
        self.prefix.len() + self.suffix_rows * self.suffix_len
    }
}

/// One stream of a [`Layout`]: its ids, positions' RoPE tables and causal mask.
struct Stream {
    ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    /// The prefix's slots before the stream's own in its attention (0 for the prefix).
    shared: usize,
}

/// The two streams: the shared prefix and the rows past it (either may be empty).
struct Streams {
    prefix: Option<Stream>,
    suffix: Option<Stream>,
}

/// What a stream holds through the passes: per layer, the input or the activations.
type Pair<T> = (Option<T>, Option<T>);

impl CausalLm {
    /// The [`Layout`] of `ids [batch, time]` (left-padded by `pad`, if given) for the picks
    /// `at`, sharing the common prefix when `share`.
    ///
    /// # Errors
    /// [`Error::Weights`] for a pick without a next token or on padding, or padding that does
    /// not fit the batch.
    pub(super) fn layout(
        &self,
        ids: &Tensor,
        pad: Option<&[usize]>,
        at: &[(usize, usize)],
        share: bool,
    ) -> Result<Layout, Error> {
        let (b, t) = ids.dims2()?;
        let pad = pad.map(<[usize]>::to_vec).unwrap_or_else(|| vec![0; b]);
        if pad.len() != b || pad.iter().any(|p| *p > t) {
            return Err(Error::Weights(format!(
                "left padding {pad:?} does not fit a [{b}, {t}] batch"
            )));
        }
        let all = ids.to_vec2::<u32>()?;
        let rows: Vec<&[u32]> = all.iter().zip(&pad).map(|(r, p)| &r[*p..]).collect();
        let mut rel = Vec::with_capacity(at.len());
        for &(r, p) in at {
            if r >= b || p + 1 >= t {
                return Err(Error::Weights(format!(
                    "position ({r}, {p}) has no next token in a [{b}, {t}] batch"
                )));
            }
            if p < pad[r] {
                return Err(Error::Weights(format!(
                    "position ({r}, {p}) is padding (the row starts at {})",
                    pad[r]
                )));
            }
            rel.push((r, p - pad[r]));
        }
        Ok(Layout::new(&rows, &rel, share))
    }

    /// How many token positions [`CausalLm::grads`] and
    /// [`CausalLm::next_token_logprobs_detached`] compute for `ids` and `at` (each layer once
    /// per position): with prefix sharing, the common prefix once plus each row past it;
    /// without, every row whole.
    ///
    /// # Errors
    /// As [`CausalLm::grads`].
    pub fn tokens_computed(&self, ids: &Tensor, at: &[(usize, usize)]) -> Result<usize, Error> {
        Ok(self.layout(ids, None, at, self.share_prefix)?.tokens())
    }

    /// The streams of `layout`.
    fn streams(&self, layout: &Layout) -> Result<Streams, Error> {
        let (p, n, s) = (layout.prefix.len(), layout.suffix_rows, layout.suffix_len);
        let stream = |ids: &[u32], b: usize, t: usize, start: usize| -> Result<Stream, Error> {
            let positions = Tensor::arange(start as u32, (start + t) as u32, &self.device)?
                .unsqueeze(0)?
                .repeat((b, 1))?;
            let (cos, sin) = self.rope_tables(&positions, b, t)?;
            Ok(Stream {
                ids: Tensor::from_vec(ids.to_vec(), (b, t), &self.device)?,
                cos,
                sin,
                mask: self.causal_mask(b, t, start, &vec![0; b])?,
                shared: start,
            })
        };
        let window = self.config.max_position_embeddings;
        if p + s > window {
            return Err(Error::Context {
                needed: p + s,
                window,
            });
        }
        Ok(Streams {
            prefix: (p > 0)
                .then(|| stream(&layout.prefix, 1, p, 0))
                .transpose()?,
            suffix: (n > 0 && s > 0)
                .then(|| stream(&layout.suffix, n, s, p))
                .transpose()?,
        })
    }

    /// One layer over both streams: the prefix first, whose keys and values the suffix rows
    /// attend to.
    fn layer_pair(
        &self,
        w: &Weights,
        l: usize,
        streams: &Streams,
        x: (Option<&Tensor>, Option<&Tensor>),
        save: bool,
    ) -> Result<Pair<LayerOut>, Error> {
        let layer = &w.layers[l];
        let prefix = match (&streams.prefix, x.0) {
            (Some(s), Some(x)) => Some(self.layer_parts(
                Path::Train,
                layer,
                x,
                &s.cos,
                &s.sin,
                s.mask.as_ref(),
                Keys::Own,
                save,
            )?),
            _ => None,
        };
        let suffix = match (&streams.suffix, x.1) {
            (Some(s), Some(x)) => {
                let keys = match &prefix {
                    Some(out) => Keys::After(&out.kv.0, &out.kv.1),
                    None => Keys::Own,
                };
                Some(self.layer_parts(
                    Path::Train,
                    layer,
                    x,
                    &s.cos,
                    &s.sin,
                    s.mask.as_ref(),
                    keys,
                    save,
                )?)
            }
            _ => None,
        };
        Ok((prefix, suffix))
    }

    /// The final norm of both streams' top hidden states, stacked into rows `[prefix; suffix
    /// rows]` for [`CausalLm::picked_logprobs`].
    fn stacked_top(
        &self,
        w: &Weights,
        top: (Option<&Tensor>, Option<&Tensor>),
    ) -> Result<Tensor, Error> {
        let h = self.config.hidden_size;
        let mut parts = Vec::with_capacity(2);
        for x in [top.0, top.1].into_iter().flatten() {
            let normed = self.norm(Path::Train, x, &w.norm)?;
            let (b, t, _) = normed.dims3()?;
            parts.push(normed.reshape((b * t, h))?);
        }
        match parts.as_slice() {
            [one] => Ok(one.clone()),
            _ => Ok(Tensor::cat(&parts, 0)?),
        }
    }

    /// [`CausalLm::next_token_logprobs`] without gradients, one layer's activations in memory
    /// at a time, and with the batch's common prefix computed once
    /// ([`CausalLm::with_prefix_sharing`]): the values the passes that only read the logprobs
    /// (old-policy and reference) need, which would otherwise hold every layer's activations
    /// until the result is dropped. Without prefix sharing they equal
    /// [`CausalLm::next_token_logprobs`] bit for bit; with it, up to rounding.
    ///
    /// # Errors
    /// As [`CausalLm::next_token_logprobs`].
    pub fn next_token_logprobs_detached(
        &self,
        ids: &Tensor,
        at: &[(usize, usize)],
    ) -> Result<(Tensor, Tensor), Error> {
        let layout = self.layout(ids, None, at, self.share_prefix)?;
        self.layout_logprobs(&layout)
    }

    /// [`CausalLm::next_token_logprobs_detached`] of rows left-padded by `pad` (slots at the
    /// start of each row that are not part of it, as [`KvCache::pad`](super::KvCache::pad)
    /// reports): each row is scored as if it started at position 0, and positions in `at` count
    /// slots of `ids`, padding included.
    ///
    /// # Errors
    /// As [`CausalLm::next_token_logprobs`], or [`Error::Weights`] for a pick on padding.
    pub fn next_token_logprobs_left_padded(
        &self,
        ids: &Tensor,
        pad: &[usize],
        at: &[(usize, usize)],
    ) -> Result<(Tensor, Tensor), Error> {
        let layout = self.layout(ids, Some(pad), at, self.share_prefix)?;
        self.layout_logprobs(&layout)
    }

    fn layout_logprobs(&self, layout: &Layout) -> Result<(Tensor, Tensor), Error> {
        let (out, _) = self.layout_grads(layout, Mode::Detached, |lp, entropy| {
            Ok((None, (lp.detach(), entropy.clone())))
        })?;
        Ok(out)
    }

    /// The gradients of a loss of [`CausalLm::next_token_logprobs`]: `loss` receives the
    /// logprobs and entropies and returns the scalar to differentiate (or `None` to skip the
    /// backward pass, for example when it is not finite) with anything it wants returned.
    /// The gradients, of the trainable parameters ([`CausalLm::trainable`]) only, equal those
    /// of `loss.backward()` on [`CausalLm::next_token_logprobs`] up to rounding; `None` when
    /// the backward pass was skipped.
    ///
    /// The batch's common prefix is computed once ([`CausalLm::with_prefix_sharing`]), in the
    /// forward and the backward pass.
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
        let layout = self.layout(ids, None, at, self.share_prefix)?;
        self.layout_grads(&layout, Mode::Grads { checkpointing }, loss)
    }

    /// [`CausalLm::grads`] of rows left-padded by `pad` (see
    /// [`CausalLm::next_token_logprobs_left_padded`]).
    ///
    /// # Errors
    /// As [`CausalLm::grads`], or [`Error::Weights`] for a pick on padding.
    pub fn grads_left_padded<T>(
        &self,
        ids: &Tensor,
        pad: &[usize],
        at: &[(usize, usize)],
        checkpointing: bool,
        loss: impl FnOnce(&Tensor, &Tensor) -> Result<(Option<Tensor>, T), Error>,
    ) -> Result<(T, Option<GradStore>), Error> {
        let layout = self.layout(ids, Some(pad), at, self.share_prefix)?;
        self.layout_grads(&layout, Mode::Grads { checkpointing }, loss)
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

    /// The passes over `layout`.
    fn layout_grads<T>(
        &self,
        layout: &Layout,
        mode: Mode,
        loss: impl FnOnce(&Tensor, &Tensor) -> Result<(Option<Tensor>, T), Error>,
    ) -> Result<(T, Option<GradStore>), Error> {
        let manual = self.manual_backward();
        let streams = self.streams(layout)?;
        let checkpointing = match mode {
            Mode::Detached => true,
            Mode::Grads { checkpointing } => checkpointing,
        };
        let keys = &self.train;
        if !manual && !checkpointing {
            // One graph through both streams, on candle's autograd.
            let mut x = self.embed_pair(keys, &streams)?;
            for l in 0..keys.layers.len() {
                let (p, s) =
                    self.layer_pair(keys, l, &streams, (x.0.as_ref(), x.1.as_ref()), false)?;
                x = (p.map(|o| o.y), s.map(|o| o.y));
            }
            let top = self.stacked_top(keys, (x.0.as_ref(), x.1.as_ref()))?;
            let (lp, entropy) = self.picked_logprobs(&top, &layout.picks)?;
            let (scalar, out) = loss(&lp, &entropy)?;
            let store = scalar.map(|s| s.backward()).transpose()?;
            return Ok((out, store));
        }
        // The hand-written pass computes on detached weights and keys the gradients by the
        // tracked ones; candle's autograd computes on the tracked ones.
        let forward = if manual { &self.infer } else { keys };
        // Forward: each layer's activations (the hand-written pass without checkpointing), or
        // only its input, detached (the graph of each layer is dropped at once), or nothing
        // (the detached pass).
        let keep_all = manual && !checkpointing;
        let keep_inputs = checkpointing && mode != Mode::Detached;
        let layers = forward.layers.len();
        let mut inputs: Vec<Pair<Tensor>> = Vec::with_capacity(layers);
        let mut saved: Vec<Pair<Saved>> = Vec::with_capacity(layers);
        let mut x = self.embed_pair(forward, &streams)?;
        x = (x.0.map(|t| t.detach()), x.1.map(|t| t.detach()));
        for l in 0..layers {
            let (p, s) =
                self.layer_pair(forward, l, &streams, (x.0.as_ref(), x.1.as_ref()), keep_all)?;
            if keep_inputs {
                inputs.push(x);
            }
            let (mut p, mut s) = (p, s);
            if keep_all {
                saved.push((
                    p.as_mut().and_then(|o| o.saved.take()),
                    s.as_mut().and_then(|o| o.saved.take()),
                ));
            }
            x = (p.map(|o| o.y.detach()), s.map(|o| o.y.detach()));
        }
        let tops = (
            x.0.as_ref().map(Var::from_tensor).transpose()?,
            x.1.as_ref().map(Var::from_tensor).transpose()?,
        );
        let top = self.stacked_top(
            keys,
            (
                tops.0.as_ref().map(|v| v.as_tensor()),
                tops.1.as_ref().map(|v| v.as_tensor()),
            ),
        )?;
        let (lp, entropy) = self.picked_logprobs(&top, &layout.picks)?;
        let (scalar, out) = loss(&lp, &entropy)?;
        let Some(scalar) = scalar else {
            return Ok((out, None));
        };
        if mode == Mode::Detached {
            return Err(Error::Weights("the detached pass has no backward".into()));
        }
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
        // A stream none of whose positions is picked still gets gradients through the other's
        // attention: its upstream gradient is then zero.
        let upstream = |store: &mut GradStore, v: &Option<Var>| -> Result<Option<Tensor>, Error> {
            v.as_ref()
                .map(|v| match store.remove(v.as_tensor()) {
                    Some(g) => Ok(g),
                    None => Ok(v.as_tensor().zeros_like()?),
                })
                .transpose()
        };
        let mut g = (
            upstream(&mut store, &tops.0)?,
            upstream(&mut store, &tops.1)?,
        );
        keep(&mut total, &mut store)?;
        drop(store);
        drop(tops);
        // Backward, one layer at a time.
        for l in (0..layers).rev() {
            if !manual {
                // Recompute the layer from its inputs and pull the gradients arriving at its
                // outputs through it (d/dθ of Σ y·g is g's pull-back).
                let (xp, xs) = &inputs[l];
                let vars = (
                    xp.as_ref().map(Var::from_tensor).transpose()?,
                    xs.as_ref().map(Var::from_tensor).transpose()?,
                );
                let (p, s) = self.layer_pair(
                    forward,
                    l,
                    &streams,
                    (
                        vars.0.as_ref().map(|v| v.as_tensor()),
                        vars.1.as_ref().map(|v| v.as_tensor()),
                    ),
                    false,
                )?;
                let mut objective: Option<Tensor> = None;
                for (out, grad) in [(p, &g.0), (s, &g.1)] {
                    if let (Some(out), Some(grad)) = (out, grad) {
                        let term = (out.y * grad)?.sum_all()?;
                        objective = Some(match objective {
                            Some(o) => (o + term)?,
                            None => term,
                        });
                    }
                }
                let Some(objective) = objective else { break };
                let mut store = objective.backward()?;
                g = (
                    upstream(&mut store, &vars.0)?,
                    upstream(&mut store, &vars.1)?,
                );
                keep(&mut total, &mut store)?;
                continue;
            }
            let (sp, ss) = match saved.pop() {
                Some(pair) => pair,
                None => {
                    let (xp, xs) = &inputs[l];
                    let (p, s) =
                        self.layer_pair(forward, l, &streams, (xp.as_ref(), xs.as_ref()), true)?;
                    (p.and_then(|o| o.saved), s.and_then(|o| o.saved))
                }
            };
            let (w, k) = (&forward.layers[l], &keys.layers[l]);
            // The rows past the prefix first: their gradients at the prefix's keys and values
            // join the prefix's own.
            let mut extra = None;
            if let (Some(s), Some(grad), Some(st)) = (&ss, &g.1, &streams.suffix) {
                let out = self
                    .layer_backward(w, k, s, grad, &st.cos, &st.sin, &mut total, st.shared, None)?;
                g.1 = Some(out.x);
                extra = out.prefix;
            }
            drop(ss);
            if let (Some(s), Some(grad), Some(st)) = (&sp, &g.0, &streams.prefix) {
                let out =
                    self.layer_backward(w, k, s, grad, &st.cos, &st.sin, &mut total, 0, extra)?;
                g.0 = Some(out.x);
            }
        }
        if keys.embed.is_variable() {
            // The embedding's gradient: each position's gradient added into its token's row,
            // on top of the tied output projection's gradient where there is one (no zeroed
            // table and no second pass to sum the two).
            let (vocab, h) = keys.embed.dims2()?;
            let base = match total.remove(&keys.embed) {
                Some(tied) => tied,
                None => Tensor::zeros((vocab, h), keys.embed.dtype(), keys.embed.device())?,
            };
            let mut table = base;
            for (st, grad) in [(&streams.prefix, &g.0), (&streams.suffix, &g.1)] {
                if let (Some(st), Some(grad)) = (st, grad) {
                    let rows = st.ids.flatten_all()?;
                    let n = rows.dim(0)?;
                    let grad = grad.reshape((n, h))?.to_dtype(keys.embed.dtype())?;
                    table = table.index_add(&rows, &grad, 0)?;
                }
            }
            total.insert(&keys.embed, table);
        }
        Ok((out, Some(total)))
    }

    /// Both streams' embeddings.
    fn embed_pair(&self, w: &Weights, streams: &Streams) -> Result<Pair<Tensor>, Error> {
        Ok((
            streams
                .prefix
                .as_ref()
                .map(|s| self.embed(w, &s.ids))
                .transpose()?,
            streams
                .suffix
                .as_ref()
                .map(|s| self.embed(w, &s.ids))
                .transpose()?,
        ))
    }
}

/// Which passes [`CausalLm::layout_grads`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The forward pass only, keeping nothing of it.
    Detached,
    /// Forward and backward.
    Grads { checkpointing: bool },
}
