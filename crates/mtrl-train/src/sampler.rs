//! [`Sampler`]: picks the next token and reports its log-probability under the policy (the
//! temperature-scaled full softmax), and under the truncated distribution actually sampled
//! from when top-k or top-p cut it.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How to sample a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 is greedy (then logprobs are those of temperature 1).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this mass (1 keeps all).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: usize,
    /// The most tokens of one turn.
    pub max_tokens: usize,
}

impl Default for SamplingParams {
    /// Training rollouts: temperature 1, no truncation, 512 tokens a turn.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 512,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens,
        }
    }

    /// Whether top-k or top-p can cut the distribution (then behaviour logprobs differ from
    /// the policy's).
    pub fn truncates(&self) -> bool {
        self.temperature > 0.0 && (self.top_k > 0 || self.top_p < 1.0)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Sampling`] for a negative or non-finite temperature or a top-p outside (0, 1].
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Sampling(format!("temperature {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Sampling(format!(
                "top_p {} not in (0, 1]",
                self.top_p
            )));
        }
        if self.max_tokens == 0 {
            return Err(Error::Sampling("max_tokens must be at least 1".into()));
        }
        Ok(())
    }
}

/// The saved state of a [`Sampler`]'s random stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The seed.
    pub seed: [u8; 32],
    /// How far into the stream it has read (in 32-bit words).
    pub word_pos: u128,
}

/// One sampled token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub id: u32,
    /// Its log-probability under the policy: the temperature-scaled softmax over the whole
    /// vocabulary (temperature 1 when greedy).
    pub logprob: f32,
    /// Its log-probability under the distribution sampled from, when top-k or top-p truncated
    /// it.
    pub behaviour_logprob: Option<f32>,
}

/// A seeded token sampler whose random stream can be saved and restored exactly.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The current state of its random stream.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.rng.get_seed(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// A sampler that continues exactly from `state`.
    pub fn restore(state: SamplerState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_word_pos(state.word_pos);
        Self { rng }
    }

    /// Samples from `logits` (one row of the vocabulary).
    ///
    /// # Errors
    /// [`Error::Sampling`] for empty or non-finite logits.
    pub fn sample(&mut self, logits: &[f32], params: &SamplingParams) -> Result<Sampled, Error> {
        if logits.is_empty() {
            return Err(Error::Sampling("no logits".into()));
        }
        let t = if params.temperature > 0.0 {
            params.temperature
        } else {
            1.0
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Err(Error::Sampling("the logits are not finite".into()));
        }
        // One pass of exponentials: unnormalised probabilities of logits / t.
        let weights: Vec<f32> = logits.iter().map(|l| ((l - max) / t).exp()).collect();
        let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        let log_total = total.ln();
        let logprob = |i: usize| (f64::from((logits[i] - max) / t) - log_total) as f32;
        if params.temperature == 0.0 {
            let id = argmax(logits);
            return Ok(Sampled {
                id: id as u32,
                logprob: logprob(id),
                behaviour_logprob: None,
            });
        }
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if !params.truncates() {
            // Inverse CDF over the full distribution.
            let target = u * total;
            let mut acc = 0.0;
            let mut pick = logits.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                acc += f64::from(*w);
                if target < acc {
                    pick = i;
                    break;
                }
            }
            return Ok(Sampled {
                id: pick as u32,
                logprob: logprob(pick),
                behaviour_logprob: None,
            });
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
        if params.top_k > 0 {
            order.truncate(params.top_k);
        }
        let mut kept = Vec::with_capacity(order.len());
        let mut mass = 0.0;
        for i in order {
            let p = f64::from(weights[i]) / total;
            kept.push((i, p));
            mass += p;
            if mass >= f64::from(params.top_p) {
                break;
            }
        }
        let target = u * mass;
        let mut acc = 0.0;
        let mut pick = kept[kept.len() - 1];
        for &(i, p) in &kept {
            acc += p;
            if target < acc {
                pick = (i, p);
                break;
            }
        }
        Ok(Sampled {
            id: pick.0 as u32,
            logprob: logprob(pick.0),
            behaviour_logprob: Some((pick.1 / mass).ln() as f32),
        })
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}
