//! LoRA: a fresh adapter changes nothing, a trained one equals its merge on both forward paths,
//! it saves in PEFT's names and layout and loads back, and bad adapters are typed errors.
//! Also: the trainer's selected-position logprobs equal the full forward's.

mod common;

use candle_core::{D, Device, Tensor};
use common::{decode_stepwise, max_diff};
use mtrl_train::model::{
    Architecture, CausalLm, Lora, LoraConfig, ModelConfig, Module, Params, peft_name,
};

fn tiny(arch: Architecture) -> (ModelConfig, CausalLm) {
    let config = ModelConfig::tiny(arch);
    let params = Params::random(&config, 7, &Device::Cpu).unwrap();
    let model = CausalLm::new(config.clone(), params, &Device::Cpu).unwrap();
    (config, model)
}

fn ids() -> Tensor {
    let ids: Vec<u32> = (0..24).map(|i| (i * 13 + 5) % 97).collect();
    Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap()
}

/// The fused path over `ids()`: five ids, then one at a time.
fn cached(model: &CausalLm, ids: &Tensor) -> Tensor {
    decode_stepwise(model, ids, 5)
}

fn all_targets() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Module::ALL.to_vec(),
    }
}

/// Gives every B a non-zero value, as training would.
fn perturb(model: &CausalLm) {
    for (i, (name, var)) in model.trainable().into_iter().enumerate() {
        if name.contains("lora_B") {
            let shape = var.as_tensor().shape().clone();
            let v = Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap();
            var.set(&(v + i as f64 * 1e-3).unwrap()).unwrap();
        }
    }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_a_trained_one_equals_its_merge() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let (config, base) = tiny(arch);
        let x = ids();
        let before = base.forward_train(&x).unwrap();
        let lora = Lora::new(all_targets(), &config, 1, &Device::Cpu).unwrap();
        let model = base.with_lora(lora).unwrap();
        assert_eq!(max_diff(&before, &model.forward_train(&x).unwrap()), 0.0);
        perturb(&model);
        let train = model.forward_train(&x).unwrap();
        assert!(
            max_diff(&before, &train) > 1e-3,
            "{arch:?}: the adapter had no effect"
        );
        let merged = model.merged().unwrap();
        assert!(merged.lora().is_none());
        let d = max_diff(&train, &merged.forward_train(&x).unwrap());
        assert!(
            d < 1e-4,
            "{arch:?}: LoRA vs merged (train path) differ by {d}"
        );
        // The decoding path applies the adapters too (and sees updates at once).
        let d = max_diff(&cached(&model, &x), &cached(&merged, &x));
        assert!(
            d < 1e-4,
            "{arch:?}: LoRA vs merged (cached path) differ by {d}"
        );
    }
}

#[test]
fn only_adapters_are_trainable_and_gradients_reach_them() {
    let (config, base) = tiny(Architecture::Llama);
    let n_params = base.trainable().len();
    let lora = Lora::new(
        LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec![Module::Q, Module::V],
        },
        &config,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let model = base.with_lora(lora).unwrap();
    let vars = model.trainable();
    assert_eq!(vars.len(), config.num_layers * 2 * 2);
    assert!(vars.len() < n_params);
    perturb(&model);
    let loss = model
        .forward_train(&ids())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn adapters_save_in_peft_layout_and_load_back() {
    let (config, base) = tiny(Architecture::Qwen2);
    let lora = Lora::new(
        LoraConfig {
            rank: 4,
            alpha: 16.0,
            targets: vec![Module::Q, Module::V, Module::Down],
        },
        &config,
        5,
        &Device::Cpu,
    )
    .unwrap();
    let model = base.with_lora(lora).unwrap();
    perturb(&model);
    let dir = std::env::temp_dir().join(format!("mtrl-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    model.lora().unwrap().save_peft(&dir, "tiny-qwen2").unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    let tensors =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(tensors.len(), config.num_layers * 3 * 2);
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    assert_eq!(a.dims(), &[4, config.hidden_size]);
    let b = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(b.dims(), &[config.hidden_size, 4]);
    assert_eq!(
        peft_name(0, Module::V, "lora_B"),
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    );
    // Loaded onto a fresh base, it gives the same logits.
    let loaded = Lora::load_peft(&dir, &config, &Device::Cpu).unwrap();
    let (_, fresh) = tiny(Architecture::Qwen2);
    let again = fresh.with_lora(loaded).unwrap();
    let x = ids();
    assert_eq!(
        max_diff(
            &model.forward_train(&x).unwrap(),
            &again.forward_train(&x).unwrap()
        ),
        0.0
    );
    // Broken adapters: a missing tensor, a wrong shape, an unknown target.
    let mut broken = tensors.clone();
    broken.remove("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    candle_core::safetensors::save(&broken, dir.join("adapter_model.safetensors")).unwrap();
    let err = Lora::load_peft(&dir, &config, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("q_proj.lora_A"), "{err}");
    let mut broken = tensors.clone();
    broken.insert(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
        Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&broken, dir.join("adapter_model.safetensors")).unwrap();
    assert!(Lora::load_peft(&dir, &config, &Device::Cpu).is_err());
    let text = std::fs::read_to_string(dir.join("adapter_config.json"))
        .unwrap()
        .replace("down_proj", "lm_head");
    std::fs::write(dir.join("adapter_config.json"), text).unwrap();
    let err = Lora::load_peft(&dir, &config, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("lm_head"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn selected_next_token_logprobs_equal_the_full_forward() {
    let (_, model) = tiny(Architecture::Qwen3);
    let x = ids();
    let full = candle_nn::ops::log_softmax(&model.forward_train(&x).unwrap(), D::Minus1).unwrap();
    let at = [(0usize, 0usize), (0, 7), (1, 3), (1, 10)];
    let (lp, entropy) = model.next_token_logprobs(&x, &at).unwrap();
    let lp = lp.to_vec1::<f32>().unwrap();
    let ids = x.to_vec2::<u32>().unwrap();
    for (i, &(r, p)) in at.iter().enumerate() {
        let row = full.get(r).unwrap().get(p).unwrap();
        let want = row
            .get(ids[r][p + 1] as usize)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((lp[i] - want).abs() < 1e-5, "{i}: {} vs {want}", lp[i]);
        let probs = row.exp().unwrap();
        let h = -(probs * &row)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let got = entropy.get(i).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - h).abs() < 1e-4, "entropy {i}: {got} vs {h}");
    }
    assert!(
        model.next_token_logprobs(&x, &[(0, 11)]).is_err(),
        "no next token"
    );
    assert!(
        model.next_token_logprobs(&x, &[(2, 0)]).is_err(),
        "no such row"
    );
}

/// The gradients of `Σ wᵢ·logpᵢ` by name, through the plain graph or with checkpointing.
fn grads_of(model: &CausalLm, checkpointed: bool) -> Vec<(String, Tensor)> {
    let x = ids();
    let at: Vec<(usize, usize)> = (0..2).flat_map(|r| (3..11).map(move |p| (r, p))).collect();
    let weights = Tensor::from_vec(
        (0..at.len())
            .map(|i| 0.5 - i as f32 * 0.07)
            .collect::<Vec<_>>(),
        at.len(),
        &Device::Cpu,
    )
    .unwrap();
    let vars = model.trainable();
    let store = if checkpointed {
        let (value, store) = model
            .checkpointed_grads(&x, &at, |lp, _| {
                let l = (lp * &weights)?.sum_all()?;
                let v = l.to_scalar::<f32>()?;
                Ok((Some(l), v))
            })
            .unwrap();
        assert!(value.is_finite());
        store.expect("a backward pass ran")
    } else {
        let (lp, _) = model.next_token_logprobs(&x, &at).unwrap();
        (lp * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    vars.iter()
        .map(|(name, var)| {
            let g = store
                .get(var.as_tensor())
                .expect("every parameter gets a gradient");
            (name.clone(), g.clone())
        })
        .collect()
}

/// Each gradient within 1e-4 of the largest entry of its plain counterpart.
fn assert_close(plain: &[(String, Tensor)], ckpt: &[(String, Tensor)], arch: Architecture) {
    assert_eq!(plain.len(), ckpt.len());
    for ((name, a), (_, b)) in plain.iter().zip(ckpt) {
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_diff(a, b);
        assert!(
            d <= 1e-4 * scale.max(1e-3),
            "{arch:?} {name}: {d} (scale {scale})"
        );
    }
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        // Full fine-tuning.
        let (config, model) = tiny(arch);
        let (plain, ckpt) = (grads_of(&model, false), grads_of(&model, true));
        assert_close(&plain, &ckpt, arch);
        // LoRA: only the adapters, which must all get a gradient.
        let lora = Lora::new(all_targets(), &config, 3, &Device::Cpu).unwrap();
        let model = model.with_lora(lora).unwrap();
        perturb(&model);
        let (plain, ckpt) = (grads_of(&model, false), grads_of(&model, true));
        assert!(plain.iter().all(|(n, _)| n.contains("lora_")));
        assert_close(&plain, &ckpt, arch);
    }
}

#[test]
fn detached_logprobs_equal_the_differentiable_ones_bit_for_bit() {
    let (config, model) = tiny(Architecture::Qwen3);
    let lora = Lora::new(all_targets(), &config, 3, &Device::Cpu).unwrap();
    let model = model.with_lora(lora).unwrap();
    perturb(&model);
    let at: Vec<(usize, usize)> = (0..2).flat_map(|r| (0..11).map(move |p| (r, p))).collect();
    let (a, ea) = model.next_token_logprobs(&ids(), &at).unwrap();
    let (b, eb) = model.next_token_logprobs_detached(&ids(), &at).unwrap();
    assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    assert_eq!(ea.to_vec1::<f32>().unwrap(), eb.to_vec1::<f32>().unwrap());
}

#[test]
fn a_skipped_checkpointed_backward_returns_no_gradients() {
    let (_, model) = tiny(Architecture::Llama);
    let at = [(0, 2), (1, 4)];
    let (seen, store) = model
        .checkpointed_grads(&ids(), &at, |lp, entropy| {
            Ok((None, (lp.dims1()?, entropy.dims1()?)))
        })
        .unwrap();
    assert_eq!(seen, (2, 2));
    assert!(store.is_none());
    let err = model.checkpointed_grads(&ids(), &[(0, 11)], |_, _| Ok((None, ())));
    assert!(err.is_err(), "position 11 has no next token");
}
