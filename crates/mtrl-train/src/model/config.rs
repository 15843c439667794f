//! [`ModelConfig`]: the shape of a decoder-only causal LM of the Llama family (Llama, SmolLM2),
//! Qwen2 / Qwen2.5 or Qwen3.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// Which family a model belongs to; it decides the small differences between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Llama and its descendants (SmolLM2): no attention biases, no q/k norms.
    Llama,
    /// Qwen2 and Qwen2.5: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: RMS norms on q and k per head, no biases.
    Qwen3,
}

/// The hyper-parameters of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The family.
    pub architecture: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMS norm epsilon.
    pub rms_norm_eps: f64,
    /// The longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q, k and v projections have biases (Qwen2).
    pub attention_bias: bool,
    /// Whether q and k get an RMS norm per head (Qwen3).
    pub qk_norm: bool,
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`Error::Config`] for an unsupported architecture or a missing field.
    pub fn from_hf_json(json: &Value) -> Result<Self, Error> {
        let kind = json["model_type"].as_str().unwrap_or_default();
        let architecture = match kind {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(Error::Config(format!(
                    "unsupported model_type {other:?} (supported: llama, qwen2, qwen3)"
                )));
            }
        };
        let int = |k: &str| {
            json[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("config.json lacks {k}")))
        };
        let hidden_size = int("hidden_size")?;
        let num_heads = int("num_attention_heads")?;
        let head_dim = json["head_dim"]
            .as_u64()
            .map_or(hidden_size / num_heads.max(1), |v| v as usize);
        let config = Self {
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads: json["num_key_value_heads"]
                .as_u64()
                .map_or(num_heads, |v| v as usize),
            head_dim,
            rope_theta: json["rope_theta"].as_f64().unwrap_or(10_000.0),
            rms_norm_eps: json["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            max_position_embeddings: int("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: json["tie_word_embeddings"].as_bool().unwrap_or(false),
            attention_bias: json["attention_bias"]
                .as_bool()
                .unwrap_or(architecture == Architecture::Qwen2),
            qk_norm: architecture == Architecture::Qwen3,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the shapes fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first inconsistency.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Config(why));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0
        {
            return bad(format!(
                "{} query heads cannot share {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return bad("empty model dimensions".into());
        }
        Ok(())
    }

    /// SmolLM2-135M's shape (for random-weight benchmarks on machines without the GGUF).
    pub fn smollm2_135m() -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
        }
    }

    /// Qwen2.5-0.5B's shape (for random-weight benchmarks).
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            architecture: Architecture::Qwen2,
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 32_768,
            tie_word_embeddings: true,
            attention_bias: true,
            qk_norm: false,
        }
    }

    /// A tiny Llama-shaped config, for tests.
    pub fn tiny(architecture: Architecture) -> Self {
        Self {
            architecture,
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 256,
            tie_word_embeddings: architecture == Architecture::Llama,
            attention_bias: architecture == Architecture::Qwen2,
            qk_norm: architecture == Architecture::Qwen3,
        }
    }
}
