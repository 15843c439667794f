//! Loading a model with its tokenizer and chat template: from a Hugging Face directory, a hub
//! repository (through hf-hub), or a GGUF file (dequantized to f32 for training).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::CausalLm;
use super::config::{Architecture, ModelConfig};
use super::weights::Params;
use crate::Error;
use crate::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face directory: `config.json`, `*.safetensors` (sharded or not),
    /// `tokenizer.json`, `tokenizer_config.json`.
    HfDir(PathBuf),
    /// A hub repository, fetched through hf-hub's cache.
    Hub {
        /// The repository id (`HuggingFaceTB/SmolLM2-135M-Instruct`).
        repo: String,
        /// A branch, tag or commit (`main` when unset).
        revision: Option<String>,
        /// The cache directory (hf-hub's default when unset).
        cache_dir: Option<PathBuf>,
        /// Read only from the cache.
        offline: bool,
    },
    /// A GGUF file: weights dequantized, tokenizer and chat template from its metadata.
    Gguf(PathBuf),
}

/// A model ready to roll out: the network, its tokenizer and its chat template.
pub struct LoadedModel {
    /// The network.
    pub model: CausalLm,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template.
    pub template: ChatTemplate,
}

impl ModelSource {
    /// Loads the model onto `device`.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Config`], [`Error::Weights`], [`Error::Tokenizer`],
    /// [`Error::Template`] or [`Error::Hub`], each naming what is wrong.
    pub fn load(&self, device: &Device) -> Result<LoadedModel, Error> {
        match self {
            ModelSource::HfDir(dir) => load_hf_dir(dir, device),
            ModelSource::Hub {
                repo,
                revision,
                cache_dir,
                offline,
            } => {
                let dir = fetch_hub(repo, revision.as_deref(), cache_dir.as_deref(), *offline)?;
                load_hf_dir(&dir, device)
            }
            ModelSource::Gguf(path) => load_gguf(path, device),
        }
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn load_hf_dir(dir: &Path, device: &Device) -> Result<LoadedModel, Error> {
    let config_json: Value = serde_json::from_str(&read(&dir.join("config.json"))?)
        .map_err(|e| Error::Config(format!("config.json: {e}")))?;
    let config = ModelConfig::from_hf_json(&config_json)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Weights(format!(
            "no *.safetensors in {}",
            dir.display()
        )));
    }
    let mut tensors = Vec::new();
    for f in &files {
        let loaded = candle_core::safetensors::load(f, device).map_err(|e| {
            Error::Weights(format!("{}: {}", f.display(), crate::without_backtrace(e)))
        })?;
        tensors.extend(loaded);
    }
    let params = Params::from_tensors(tensors, device)?;
    let model = CausalLm::new(config, params, device)?;
    let config_path = dir.join("tokenizer_config.json");
    let tokenizer = Tokenizer::from_hf_files(
        &dir.join("tokenizer.json"),
        Some(config_path.as_path()).filter(|p| p.exists()),
    )?;
    let template =
        ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"), &tokenizer)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
    })
}

fn fetch_hub(
    repo: &str,
    revision: Option<&str>,
    cache_dir: Option<&Path>,
    offline: bool,
) -> Result<PathBuf, Error> {
    let revision = revision.unwrap_or("main").to_string();
    let cache = match cache_dir {
        Some(d) => hf_hub::Cache::new(d.to_path_buf()),
        None => hf_hub::Cache::from_env(),
    };
    let wanted = ["config.json", "tokenizer.json", "tokenizer_config.json"];
    if offline {
        let repo_cache = cache.repo(hf_hub::Repo::with_revision(
            repo.to_string(),
            hf_hub::RepoType::Model,
            revision,
        ));
        let config = repo_cache
            .get("config.json")
            .ok_or_else(|| Error::Hub(format!("{repo}: config.json is not in the cache")))?;
        let dir = config
            .parent()
            .ok_or_else(|| Error::Hub(format!("{repo}: odd cache layout")))?
            .to_path_buf();
        return Ok(dir);
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(false)
        .build()
        .map_err(|e| Error::Hub(e.to_string()))?;
    let r = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision,
    ));
    let mut dir = None;
    for f in wanted {
        let p = r
            .get(f)
            .map_err(|e| Error::Hub(format!("{repo}/{f}: {e}")))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    let info = r.info().map_err(|e| Error::Hub(format!("{repo}: {e}")))?;
    for s in info.siblings {
        if s.rfilename.ends_with(".safetensors") {
            r.get(&s.rfilename)
                .map_err(|e| Error::Hub(format!("{repo}/{}: {e}", s.rfilename)))?;
        }
    }
    dir.ok_or_else(|| Error::Hub(format!("{repo}: nothing fetched")))
}

/// Reads a GGUF file: its config, dequantized f32 weights under Hugging Face names (Q and K
/// un-permuted from llama.cpp's layout for Llama models), its tokenizer and chat template.
fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel, Error> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        Error::Weights(format!(
            "{}: not a GGUF model file: {}",
            path.display(),
            crate::without_backtrace(e)
        ))
    })?;
    let md = &content.metadata;
    let arch_name = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let architecture = match arch_name.as_str() {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => {
            return Err(Error::Config(format!(
                "unsupported GGUF architecture {other:?} (supported: llama, qwen2, qwen3)"
            )));
        }
    };
    let num = |k: &str| -> Result<usize, Error> {
        let key = format!("{arch_name}.{k}");
        md.get(&key)
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .map(|v| v as usize)
                    .or_else(|| v.to_u64().ok().map(|v| v as usize))
            })
            .ok_or_else(|| Error::Config(format!("GGUF metadata lacks {key}")))
    };
    let float = |k: &str, default: f64| -> f64 {
        md.get(&format!("{arch_name}.{k}"))
            .and_then(|v| v.to_f32().ok())
            .map_or(default, f64::from)
    };
    let hidden_size = num("embedding_length")?;
    let num_heads = num("attention.head_count")?;
    let tokenizer = Tokenizer::from_gguf(md)?;
    let config = ModelConfig {
        architecture,
        vocab_size: tokenizer.vocab_size(),
        hidden_size,
        intermediate_size: num("feed_forward_length")?,
        num_layers: num("block_count")?,
        num_heads,
        num_kv_heads: num("attention.head_count_kv").unwrap_or(num_heads),
        head_dim: num("attention.key_length").unwrap_or(hidden_size / num_heads.max(1)),
        rope_theta: float("rope.freq_base", 10_000.0),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
        max_position_embeddings: num("context_length").unwrap_or(4096),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        qk_norm: content
            .tensor_infos
            .contains_key("blk.0.attn_q_norm.weight"),
    };
    config.validate()?;
    let mut tensors = Vec::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else {
            continue;
        };
        let q = content.tensor(&mut file, name, device).map_err(|e| {
            Error::Weights(format!(
                "{} tensor {name}: {}",
                path.display(),
                crate::without_backtrace(e)
            ))
        })?;
        let mut t = q.dequantize(device)?;
        if architecture == Architecture::Llama {
            if hf.ends_with("q_proj.weight") {
                t = unpermute(&t, config.num_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = unpermute(&t, config.num_kv_heads)?;
            }
        }
        tensors.push((hf, t));
    }
    let params = Params::from_tensors(tensors, device)?;
    let model = CausalLm::new(config, params, device)?;
    let template = ChatTemplate::from_gguf(md, &tokenizer)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
    })
}

/// Undoes llama.cpp's permutation of Q or K rows: `w.reshape(h, out/h/2, 2, in)
/// .transpose(1, 2).reshape(out, in)`.
pub(crate) fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor, Error> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?)
}

/// The Hugging Face name of a GGUF tensor; `None` for tensors the model does not use.
fn hf_name(gguf: &str) -> Option<String> {
    let top: HashMap<&str, &str> = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ]
    .into_iter()
    .collect();
    if let Some(n) = top.get(gguf) {
        return Some((*n).to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let hf = match name {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}
