//! Helpers shared by the model tests (each test file uses some of them).
#![allow(dead_code)]

use candle_core::Tensor;
use mtrl_train::model::{CausalLm, KvCache};

/// The largest absolute entry of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest absolute difference between `a` and `b`.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// The fused path's logits for ids `[batch, time]`: the first `first` ids in one chunk, then
/// one id at a time through the KV cache.
pub fn decode_stepwise(model: &CausalLm, ids: &Tensor, first: usize) -> Tensor {
    let (batch, time) = ids.dims2().unwrap();
    let mut cache = KvCache::new(model.config().num_layers, batch);
    let head = ids.narrow(1, 0, first).unwrap();
    let mut parts = vec![model.forward_cached(&head, &mut cache).unwrap()];
    for j in first..time {
        let x = ids.narrow(1, j, 1).unwrap();
        parts.push(model.forward_cached(&x, &mut cache).unwrap());
    }
    Tensor::cat(&parts, 1).unwrap()
}
