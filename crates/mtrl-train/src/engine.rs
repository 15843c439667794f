//! [`Generator`]: a generation engine on its own thread. Requests that arrive together are
//! decoded together as one left-padded batch with a KV cache, and prompts that share a prefix
//! with an earlier one (the samples of a group, the next turn of an episode) run only what is
//! new through the model.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use candle_core::Tensor;
use mtrl_core::Finish;

use crate::Error;
use crate::model::{CausalLm, KvCache};
use crate::sampler::{Sampler, SamplingParams};

/// A request to continue `prompt`.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The whole token sequence so far (the engine finds what it has already run).
    pub prompt: Vec<u32>,
    /// How to sample.
    pub params: SamplingParams,
    /// The sampler to draw with (returned, advanced, in the output).
    pub sampler: Sampler,
    /// Ids that end the turn (they are sampled and kept).
    pub stop_ids: Vec<u32>,
    /// The most tokens to sample (the turn's budget; the context window also caps it).
    pub max_tokens: usize,
}

/// What a request produced.
#[derive(Debug, Clone)]
pub struct GenOutput {
    /// The sampled ids, the stop token included when one ended the turn.
    pub ids: Vec<u32>,
    /// Their log-probabilities under the policy.
    pub logprobs: Vec<f32>,
    /// Their log-probabilities under the truncated distribution, when top-k/top-p cut it.
    pub behaviour_logprobs: Option<Vec<f32>>,
    /// Why generation ended.
    pub finish: Finish,
    /// The sampler, advanced past this turn.
    pub sampler: Sampler,
    /// Prompt tokens that had to run through the model (the rest came from the prefix cache).
    pub prefilled: usize,
}

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// The most sequences decoded together.
    pub max_batch: usize,
    /// How long to wait for more requests to join a batch.
    pub gather: Duration,
    /// How many tokens of prefixes to keep cached (oldest dropped first).
    pub prefix_cache_tokens: usize,
    /// Prompt tokens run through the model at once.
    pub prefill_chunk: usize,
}

impl EngineConfig {
    /// Decoding whose bits do not depend on timing: each sequence decoded alone (a batch of
    /// one) and no prefix cache. A row's logits computed in a batch, or its prompt computed
    /// after a cached prefix, differ from the same computation done alone in the last bits, and
    /// which batch a request joins depends on timing. With this, one episode at a time (rollout
    /// concurrency of one: interleaved episodes still move the last bits) and a fixed thread
    /// count, two runs of a seed sample the same tokens with the same logprobs, so a resumed
    /// run ends bit for bit where the uninterrupted one ends. It is slower: no batching.
    pub fn deterministic() -> Self {
        Self {
            max_batch: 1,
            gather: Duration::ZERO,
            prefix_cache_tokens: 0,
            ..Self::default()
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            gather: Duration::from_millis(5),
            prefix_cache_tokens: 32_768,
            prefill_chunk: 256,
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<GenOutput, Error>>;

/// A handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Generator {
    tx: mpsc::Sender<(GenRequest, Reply)>,
}

impl Generator {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<CausalLm>, config: EngineConfig) -> Self {
        let (tx, rx) = mpsc::channel::<(GenRequest, Reply)>();
        std::thread::Builder::new()
            .name("mtrl-generator".into())
            .spawn(move || Engine::new(model, config).run(&rx))
            .ok();
        Self { tx }
    }

    /// Generates a continuation.
    ///
    /// # Errors
    /// [`Error::Engine`] when the engine has stopped, or the error of this request.
    pub async fn generate(&self, request: GenRequest) -> Result<GenOutput, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((request, reply))
            .map_err(|_| Error::Engine("the engine thread is gone".into()))?;
        rx.await
            .map_err(|_| Error::Engine("the engine dropped the request".into()))?
    }

    /// Generates continuations of several requests at once (they are batched), in order.
    ///
    /// # Errors
    /// As [`Generator::generate`], for the first that fails.
    pub fn generate_blocking(&self, requests: Vec<GenRequest>) -> Vec<Result<GenOutput, Error>> {
        let receivers: Vec<_> = requests
            .into_iter()
            .map(|r| {
                let (reply, rx) = tokio::sync::oneshot::channel();
                let sent = self.tx.send((r, reply)).is_ok();
                (sent, rx)
            })
            .collect();
        receivers
            .into_iter()
            .map(|(sent, rx)| {
                if !sent {
                    return Err(Error::Engine("the engine thread is gone".into()));
                }
                rx.blocking_recv()
                    .map_err(|_| Error::Engine("the engine dropped the request".into()))?
            })
            .collect()
    }
}

/// A cached prefix: its ids, its one-row KV cache, and the logits after its last id.
struct Entry {
    ids: Vec<u32>,
    cache: KvCache,
    logits: Option<Vec<f32>>,
    used: u64,
}

struct Engine {
    model: Arc<CausalLm>,
    config: EngineConfig,
    prefixes: Vec<Entry>,
    clock: u64,
    /// The model's weights version the cached prefixes were computed with.
    version: u64,
}

/// A sequence being decoded.
struct Live {
    reply: Reply,
    request: GenRequest,
    out: GenOutput,
    max: usize,
    /// The ids whose keys and values are in the cache row.
    cached_ids: Vec<u32>,
}

impl Engine {
    fn new(model: Arc<CausalLm>, config: EngineConfig) -> Self {
        Self {
            model,
            config,
            prefixes: Vec::new(),
            clock: 0,
            version: 0,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<(GenRequest, Reply)>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch.max(1) {
                match rx.recv_timeout(self.config.gather) {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, batch: Vec<(GenRequest, Reply)>) {
        // Keys and values computed with other weights are stale: drop them.
        let version = self.model.weights_version();
        if version != self.version {
            self.prefixes.clear();
            self.version = version;
        }
        let window = self.model.config().max_position_embeddings;
        let mut live: Vec<Live> = Vec::new();
        let mut rows: Vec<KvCache> = Vec::new();
        let mut first_logits: Vec<Vec<f32>> = Vec::new();
        for (request, reply) in batch {
            let out = GenOutput {
                ids: Vec::new(),
                logprobs: Vec::new(),
                behaviour_logprobs: request.params.truncates().then(Vec::new),
                finish: Finish::Stop,
                sampler: request.sampler.clone(),
                prefilled: 0,
            };
            if let Err(e) = request.params.validate() {
                let _ = reply.send(Err(e));
                continue;
            }
            if request.prompt.is_empty() {
                let _ = reply.send(Err(Error::Sampling("an empty prompt".into())));
                continue;
            }
            if request.prompt.len() >= window {
                let mut out = out;
                out.finish = Finish::ContextOverflow;
                let _ = reply.send(Ok(out));
                continue;
            }
            match self.prefill(&request.prompt) {
                Ok((cache, logits, prefilled)) => {
                    let max = request
                        .max_tokens
                        .min(request.params.max_tokens)
                        .min(window - request.prompt.len());
                    let mut out = out;
                    out.prefilled = prefilled;
                    live.push(Live {
                        cached_ids: request.prompt.clone(),
                        reply,
                        request,
                        out,
                        max,
                    });
                    rows.push(cache);
                    first_logits.push(logits);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if live.is_empty() {
            return;
        }
        if let Err(e) = self.decode(&mut live, rows, first_logits) {
            // Every sequence still running gets the error; the engine keeps serving.
            for seq in live.drain(..) {
                let _ = seq.reply.send(Err(Error::Engine(e.to_string())));
            }
        }
    }

    /// Runs what is new of `prompt` through the model, starting from the cached sequence that
    /// shares the longest prefix with it (another sample of the group, the episode's previous
    /// turn, another task with the same system prompt); returns its one-row cache, the logits
    /// after its last token, and how many tokens ran.
    fn prefill(&mut self, prompt: &[u32]) -> Result<(KvCache, Vec<f32>, usize), Error> {
        self.clock += 1;
        let layers = self.model.config().num_layers;
        let best = self
            .prefixes
            .iter_mut()
            .map(|e| {
                let common = e.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                (common, e)
            })
            .filter(|(common, _)| *common > 0)
            .max_by_key(|(common, _)| *common);
        let mut cache = KvCache::new(layers, 1);
        let mut start = 0;
        if let Some((common, e)) = best {
            e.used = self.clock;
            if common == prompt.len() && e.ids.len() == prompt.len() {
                if let Some(logits) = &e.logits {
                    return Ok((e.cache.clone(), logits.clone(), 0));
                }
            }
            // Reuse the common part, but run at least the prompt's last token for its logits.
            let reuse = common.min(prompt.len() - 1).min(e.cache.len());
            if reuse > 0 {
                cache = e.cache.truncated(reuse)?;
                start = reuse;
            }
        }
        let rest = &prompt[start..];
        // In chunks, so that attention scores stay small however long the prompt.
        let mut last = Vec::new();
        for chunk in rest.chunks(self.config.prefill_chunk.max(1)) {
            let x = Tensor::new(chunk, self.model.device())?.unsqueeze(0)?;
            let logits = self.model.forward_cached(&x, &mut cache)?;
            last = logits
                .narrow(1, chunk.len() - 1, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?;
        }
        self.remember(prompt.to_vec(), cache.clone(), Some(last.clone()));
        Ok((cache, last, rest.len()))
    }

    /// Keeps a prefix, dropping the cached prefixes it extends and the oldest past the budget.
    fn remember(&mut self, ids: Vec<u32>, cache: KvCache, logits: Option<Vec<f32>>) {
        self.prefixes
            .retain(|e| !(e.ids.len() < ids.len() && ids.starts_with(&e.ids)));
        if self.prefixes.iter().any(|e| e.ids == ids) {
            return;
        }
        self.prefixes.push(Entry {
            ids,
            cache,
            logits,
            used: self.clock,
        });
        let mut total: usize = self.prefixes.iter().map(|e| e.ids.len()).sum();
        while total > self.config.prefix_cache_tokens && self.prefixes.len() > 1 {
            let oldest = self
                .prefixes
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            total -= self.prefixes[oldest].ids.len();
            self.prefixes.swap_remove(oldest);
        }
    }

    fn decode(
        &mut self,
        live: &mut Vec<Live>,
        rows: Vec<KvCache>,
        first_logits: Vec<Vec<f32>>,
    ) -> Result<(), Error> {
        let refs: Vec<&KvCache> = rows.iter().collect();
        let mut cache = KvCache::stack(&refs)?;
        drop(rows);
        let longest = live.iter().map(|s| s.max).max().unwrap_or(0);
        cache.reserve(longest)?;
        let mut logits = first_logits;
        loop {
            // Sample one token per live row; note which rows are done.
            let mut done = Vec::new();
            for (i, (seq, row)) in live.iter_mut().zip(&logits).enumerate() {
                let s = seq.out.sampler.sample(row, &seq.request.params)?;
                seq.out.ids.push(s.id);
                seq.out.logprobs.push(s.logprob);
                if let Some(b) = seq.out.behaviour_logprobs.as_mut() {
                    b.push(s.behaviour_logprob.unwrap_or(s.logprob));
                }
                let window = self.model.config().max_position_embeddings;
                if seq.request.stop_ids.contains(&s.id) {
                    seq.out.finish = Finish::Stop;
                    done.push(i);
                } else if seq.out.ids.len() >= seq.max {
                    seq.out.finish = if seq.request.prompt.len() + seq.out.ids.len() >= window {
                        Finish::ContextOverflow
                    } else {
                        Finish::Length
                    };
                    done.push(i);
                }
            }
            if !done.is_empty() {
                for &i in done.iter().rev() {
                    let seq = live.remove(i);
                    // Keep what this turn ran (all but the last sampled id) for the next turn.
                    if let Ok(row) = cache.row(i) {
                        let mut ids = seq.cached_ids.clone();
                        ids.truncate(row.len());
                        if ids.len() == row.len() {
                            self.remember(ids, row, None);
                        }
                    }
                    let _ = seq.reply.send(Ok(seq.out));
                }
                if live.is_empty() {
                    return Ok(());
                }
                let keep: Vec<usize> = (0..cache.batch()).filter(|i| !done.contains(i)).collect();
                cache = cache.select_rows(&keep)?;
                let left = live
                    .iter()
                    .map(|s| s.max - s.out.ids.len())
                    .max()
                    .unwrap_or(0);
                cache.reserve(left)?;
            }
            let next: Vec<u32> = live
                .iter()
                .map(|s| *s.out.ids.last().unwrap_or(&0))
                .collect();
            for seq in live.iter_mut() {
                let id = *seq.out.ids.last().unwrap_or(&0);
                seq.cached_ids.push(id);
            }
            let x = Tensor::from_vec(next, (live.len(), 1), self.model.device())?;
            // The whole step runs on a worker of the thread pool, so that its two hundred or so
            // parallel products hand work to a pool already awake instead of each waking it
            // from this thread.
            let model = &self.model;
            let out = rayon::scope(|_| model.forward_cached(&x, &mut cache))?;
            logits = out
                .squeeze(1)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2::<f32>()?;
        }
    }
}
