//! Loading from a Hugging Face directory (sharded safetensors, tokenizer, template) and from a
//! local hf-hub cache in offline mode gives the same model that was saved; bad inputs are typed
//! errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mtrl_train::Error;
use mtrl_train::model::{Architecture, CausalLm, ModelConfig, ModelSource, Params};
use serde_json::json;

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a tiny random Qwen3 as a Hugging Face directory, in two shards, with Qwen3's real
/// tokenizer files (its vocabulary is larger than the model's, which only matters for ids the
/// test does not use).
fn write_hf_dir(dir: &Path) -> CausalLm {
    let mut config = ModelConfig::tiny(Architecture::Qwen3);
    config.vocab_size = 300;
    let params = Params::random(&config, 4, &Device::Cpu).unwrap();
    let tensors: Vec<(String, Tensor)> = params
        .vars()
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .collect();
    let half = tensors.len() / 2;
    for (i, part) in [&tensors[..half], &tensors[half..]].iter().enumerate() {
        let map: HashMap<String, Tensor> = part.iter().cloned().collect();
        candle_core::safetensors::save(
            &map,
            dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let hf = json!({
        "model_type": "qwen3", "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings
    });
    std::fs::write(dir.join("config.json"), hf.to_string()).unwrap();
    let tok = mtrl_train::assets::npm_tokenizer("qwen3").expect("Qwen3 tokenizer package");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.join(f)).unwrap();
    }
    CausalLm::new(config, params, &Device::Cpu).unwrap()
}

fn same_logits(a: &CausalLm, b: &CausalLm) {
    let x = Tensor::new(&[[1u32, 5, 9, 200, 7]], &Device::Cpu).unwrap();
    let (la, lb) = (a.forward_train(&x).unwrap(), b.forward_train(&x).unwrap());
    let diff = (la - lb)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn a_hugging_face_directory_loads_with_its_tokenizer_and_template() {
    let dir = tmp("hf-dir");
    let saved = write_hf_dir(&dir);
    let loaded = ModelSource::HfDir(dir.clone()).load(&Device::Cpu).unwrap();
    assert_eq!(loaded.model.config(), saved.config());
    same_logits(&saved, &loaded.model);
    assert!(loaded.template.supports_tools());
    assert_eq!(loaded.tokenizer.eos_token(), Some("<|im_end|>"));
    let ids = loaded
        .tokenizer
        .encode("<|im_start|>user\nhi<|im_end|>")
        .unwrap();
    assert_eq!(
        ids[0],
        loaded.tokenizer.token_to_id("<|im_start|>").unwrap()
    );
}

#[test]
fn the_hub_source_reads_a_local_cache_offline() {
    let dir = tmp("hub-src");
    let saved = write_hf_dir(&dir);
    // hf-hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/<files>}.
    let cache = tmp("hub-cache");
    let repo = cache.join("models--mtrl--tiny-qwen3");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, snapshot.join(p.file_name().unwrap())).unwrap();
    }
    let source = ModelSource::Hub {
        repo: "mtrl/tiny-qwen3".into(),
        revision: None,
        cache_dir: Some(cache.clone()),
        offline: true,
    };
    let loaded = source.load(&Device::Cpu).unwrap();
    same_logits(&saved, &loaded.model);

    let missing = ModelSource::Hub {
        repo: "mtrl/absent".into(),
        revision: None,
        cache_dir: Some(cache),
        offline: true,
    };
    assert!(matches!(missing.load(&Device::Cpu), Err(Error::Hub(_))));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dir = tmp("hf-bad");
    let absent = ModelSource::HfDir(dir.clone()).load(&Device::Cpu);
    assert!(
        matches!(absent, Err(Error::Io { .. })),
        "{:?}",
        absent.err()
    );
    std::fs::write(
        dir.join("config.json"),
        json!({"model_type": "gpt2"}).to_string(),
    )
    .unwrap();
    let unsupported = ModelSource::HfDir(dir.clone()).load(&Device::Cpu);
    assert!(matches!(unsupported, Err(Error::Config(_))));
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(matches!(
        ModelSource::HfDir(dir.clone()).load(&Device::Cpu),
        Err(Error::Config(_))
    ));
    std::fs::write(dir.join("model.gguf"), b"not a gguf file").unwrap();
    assert!(
        ModelSource::Gguf(dir.join("model.gguf"))
            .load(&Device::Cpu)
            .is_err()
    );
    // Weights that do not fit the config are named.
    let config = ModelConfig::tiny(Architecture::Llama);
    let mut other = config.clone();
    other.hidden_size = 16;
    other.head_dim = 4;
    let params = Params::random(&other, 1, &Device::Cpu).unwrap();
    match CausalLm::new(config, params, &Device::Cpu) {
        Err(Error::Weights(why)) => assert!(why.contains("shape"), "{why}"),
        other => panic!("{:?}", other.err()),
    }
}
