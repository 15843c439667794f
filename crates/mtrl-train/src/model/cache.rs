//! [`KvCache`]: keys and values of the tokens seen so far, per layer, for a batch of rows that
//! may be left-padded.

use candle_core::Tensor;

use crate::Error;

/// The attention keys and values of a batch of sequences, per layer: `[batch, kv_heads, len,
/// head_dim]`. Rows shorter than the longest are left-padded; `pad()[row]` slots at the start of
/// that row are padding, masked from attention.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pad: Vec<usize>,
    len: usize,
    /// Preallocated buffers `[batch, kv_heads, capacity, head_dim]` written in place, owned by
    /// this cache alone (see [`KvCache::reserve`]); `layers` then holds views of them.
    buffers: Option<Vec<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `batch` rows of a model with `layers` layers.
    pub fn new(layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; layers],
            pad: vec![0; batch],
            len: 0,
            buffers: None,
        }
    }

    /// An empty cache whose rows start with this much padding (for a left-padded prefill).
    pub fn with_padding(layers: usize, pad: Vec<usize>) -> Self {
        Self {
            layers: vec![None; layers],
            pad,
            len: 0,
            buffers: None,
        }
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.pad.len()
    }

    /// Slots filled (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Padding slots at the start of each row.
    pub fn pad(&self) -> &[usize] {
        &self.pad
    }

    /// Tokens of `row` (its slots minus its padding).
    pub fn row_len(&self, row: usize) -> usize {
        self.len - self.pad[row]
    }

    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), Error> {
        let t = k.dim(2)?;
        if let Some(buffers) = &self.buffers {
            let (bk, bv) = &buffers[layer];
            if self.len + t <= bk.dim(2)? {
                bk.slice_set(&k.contiguous()?, 2, self.len)?;
                bv.slice_set(&v.contiguous()?, 2, self.len)?;
                let kv = (
                    bk.narrow(2, 0, self.len + t)?,
                    bv.narrow(2, 0, self.len + t)?,
                );
                self.layers[layer] = Some(kv.clone());
                return Ok(kv);
            }
        }
        let kv = match &self.layers[layer] {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
        if self
            .buffers
            .as_ref()
            .and_then(|b| b.first())
            .is_some_and(|(k, _)| k.dim(2).is_ok_and(|cap| self.len > cap))
        {
            // Past the reserve: later appends concatenate.
            self.buffers = None;
        }
    }

    /// Makes room for `extra` more slots in fresh buffers this cache alone owns, so that
    /// appending writes in place instead of copying the whole cache at every step. Clones of
    /// the cache share the buffers: reserve again before appending to a clone.
    ///
    /// # Errors
    /// A candle error.
    pub fn reserve(&mut self, extra: usize) -> Result<(), Error> {
        let Some((k0, _)) = self.layers.iter().flatten().next() else {
            return Ok(());
        };
        let (b, h, _, d) = k0.dims4()?;
        let cap = self.len + extra;
        let mut buffers = Vec::with_capacity(self.layers.len());
        for l in self.layers.iter_mut() {
            let Some((k, v)) = l.as_ref() else {
                return Ok(());
            };
            let bk = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
            let bv = Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?;
            bk.slice_set(&k.contiguous()?, 2, 0)?;
            bv.slice_set(&v.contiguous()?, 2, 0)?;
            *l = Some((bk.narrow(2, 0, self.len)?, bv.narrow(2, 0, self.len)?));
            buffers.push((bk, bv));
        }
        self.buffers = Some(buffers);
        Ok(())
    }

    /// Applies `f` to the keys and the values of every filled layer.
    fn map_layers(
        &self,
        f: impl Fn(&Tensor) -> Result<Tensor, Error>,
    ) -> Result<Vec<Option<(Tensor, Tensor)>>, Error> {
        self.layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok((f(k)?, f(v)?))).transpose())
            .collect()
    }

    /// The cache of some rows, in the given order, keeping the batch's padding.
    ///
    /// # Errors
    /// A candle error.
    pub fn select_rows(&self, rows: &[usize]) -> Result<KvCache, Error> {
        let (Some(first), true) = (self.layers.iter().flatten().next(), !rows.is_empty()) else {
            return Ok(KvCache {
                layers: self.layers.clone(),
                pad: rows.iter().map(|r| self.pad[*r]).collect(),
                len: self.len,
                buffers: None,
            });
        };
        let idx = Tensor::from_vec(
            rows.iter().map(|r| *r as u32).collect::<Vec<_>>(),
            rows.len(),
            first.0.device(),
        )?;
        let layers = self.map_layers(|t| Ok(t.contiguous()?.index_select(&idx, 0)?))?;
        // Padding no row needs any more is dropped.
        let pad: Vec<usize> = rows.iter().map(|r| self.pad[*r]).collect();
        let mut out = KvCache {
            layers,
            pad,
            len: self.len,
            buffers: None,
        };
        out.trim_padding()?;
        Ok(out)
    }

    /// Drops leading slots that are padding in every row.
    fn trim_padding(&mut self) -> Result<(), Error> {
        let common = self.pad.iter().copied().min().unwrap_or(0);
        if common == 0 {
            return Ok(());
        }
        let keep = self.len - common;
        for l in self.layers.iter_mut().flatten() {
            *l = (
                l.0.narrow(2, common, keep)?.contiguous()?,
                l.1.narrow(2, common, keep)?.contiguous()?,
            );
        }
        for p in &mut self.pad {
            *p -= common;
        }
        self.len = keep;
        Ok(())
    }

    /// The first `len` slots of a one-row cache.
    ///
    /// # Errors
    /// [`Error::Weights`] for a batch or a length past the end, or a candle error.
    pub fn truncated(&self, len: usize) -> Result<KvCache, Error> {
        if self.batch() != 1 || self.pad[0] != 0 || len > self.len {
            return Err(Error::Weights(format!(
                "cannot cut a {}-row cache of {} slots to {len}",
                self.batch(),
                self.len
            )));
        }
        let layers = self.map_layers(|t| Ok(t.narrow(2, 0, len)?))?;
        Ok(KvCache {
            layers,
            pad: vec![0],
            len,
            buffers: None,
        })
    }

    /// The cache of one row, without its padding.
    ///
    /// # Errors
    /// A candle error.
    pub fn row(&self, row: usize) -> Result<KvCache, Error> {
        let (p, n) = (self.pad[row], self.row_len(row));
        let layers =
            self.map_layers(|t| Ok(t.narrow(0, row, 1)?.narrow(2, p, n)?.contiguous()?))?;
        Ok(KvCache {
            layers,
            pad: vec![0],
            len: n,
            buffers: None,
        })
    }

    /// Stacks single-row caches into one batch, left-padding the shorter rows.
    ///
    /// # Errors
    /// [`Error::Weights`] for caches of different models or with several rows, or a candle
    /// error.
    pub fn stack(rows: &[&KvCache]) -> Result<KvCache, Error> {
        let Some(first) = rows.first() else {
            return Err(Error::Weights("no cache rows to stack".into()));
        };
        if rows
            .iter()
            .any(|r| r.batch() != 1 || r.layers.len() != first.layers.len())
        {
            return Err(Error::Weights(
                "stack takes one-row caches of one model".into(),
            ));
        }
        let len = rows.iter().map(|r| r.len).max().unwrap_or(0);
        let pad: Vec<usize> = rows.iter().map(|r| len - r.len).collect();
        let mut layers = Vec::with_capacity(first.layers.len());
        for l in 0..first.layers.len() {
            let Some((k0, _)) = rows.iter().find_map(|r| r.layers[l].as_ref()) else {
                layers.push(None);
                continue;
            };
            let (_, h, _, d) = k0.dims4()?;
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for (r, p) in rows.iter().zip(&pad) {
                let (k, v) = match &r.layers[l] {
                    Some(kv) => kv.clone(),
                    None => {
                        let z = Tensor::zeros((1, h, 0, d), k0.dtype(), k0.device())?;
                        (z.clone(), z)
                    }
                };
                if *p > 0 {
                    let z = Tensor::zeros((1, h, *p, d), k0.dtype(), k0.device())?;
                    ks.push(Tensor::cat(&[&z, &k], 2)?);
                    vs.push(Tensor::cat(&[&z, &v], 2)?);
                } else {
                    ks.push(k);
                    vs.push(v);
                }
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(KvCache {
            layers,
            pad,
            len,
            buffers: None,
        })
    }
}
