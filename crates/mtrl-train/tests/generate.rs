//! Generation: SmolLM2 answers "Paris"; batched decoding equals decoding alone; a group's
//! shared prompt and an episode's earlier turns run through the model once; seeded sampling is
//! reproducible and its RNG restorable; limits end turns with the right reason.

use std::sync::Arc;

use candle_core::Device;
use mtrl_core::Finish;
use mtrl_train::engine::{EngineConfig, GenRequest, Generator};
use mtrl_train::model::{Architecture, CausalLm, ModelConfig, ModelSource, Params};
use mtrl_train::sampler::{Sampler, SamplingParams};
use serde_json::json;

fn tiny() -> Arc<CausalLm> {
    let config = ModelConfig::tiny(Architecture::Llama);
    let params = Params::random(&config, 21, &Device::Cpu).unwrap();
    Arc::new(CausalLm::new(config, params, &Device::Cpu).unwrap())
}

fn request(prompt: Vec<u32>, params: SamplingParams, seed: u64) -> GenRequest {
    GenRequest {
        max_tokens: params.max_tokens,
        prompt,
        params,
        sampler: Sampler::new(seed),
        stop_ids: vec![],
    }
}

#[test]
fn smollm2_says_paris() {
    let path = mtrl_train::assets::smollm2_gguf().expect("SmolLM2 GGUF");
    let loaded = ModelSource::Gguf(path).load(&Device::Cpu).unwrap();
    let text = loaded
        .template
        .render(
            &[json!({"role": "user", "content": "What is the capital of France?"})],
            None,
            true,
        )
        .unwrap();
    let prompt = loaded.tokenizer.encode(&text).unwrap();
    let stop = loaded.tokenizer.stop_ids().to_vec();
    let generator = Generator::start(Arc::new(loaded.model), EngineConfig::default());
    let mut req = request(prompt, SamplingParams::greedy(24), 0);
    req.stop_ids = stop;
    let out = generator
        .generate_blocking(vec![req])
        .pop()
        .unwrap()
        .unwrap();
    let answer = loaded.tokenizer.decode(&out.ids).unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
}

#[test]
fn batched_decoding_equals_decoding_alone() {
    let model = tiny();
    let prompts: Vec<Vec<u32>> = vec![(1..20).collect(), vec![5, 9, 2], (30..41).collect()];
    let params = SamplingParams {
        max_tokens: 12,
        ..SamplingParams::default()
    };
    let together = Generator::start(model.clone(), EngineConfig::default()).generate_blocking(
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| request(p.clone(), params.clone(), i as u64))
            .collect(),
    );
    for (i, p) in prompts.iter().enumerate() {
        let alone = Generator::start(model.clone(), EngineConfig::default())
            .generate_blocking(vec![request(p.clone(), params.clone(), i as u64)])
            .pop()
            .unwrap()
            .unwrap();
        let batched = together[i].as_ref().unwrap();
        assert_eq!(batched.ids, alone.ids, "row {i}");
        for (a, b) in batched.logprobs.iter().zip(&alone.logprobs) {
            assert!((a - b).abs() < 1e-4);
        }
        assert_eq!(batched.finish, Finish::Length);
        assert_eq!(batched.ids.len(), 12);
    }
}

#[test]
fn rows_that_finish_early_leave_the_others_decoding_as_alone() {
    let model = tiny();
    let lengths = [3usize, 9, 5, 12];
    let params = |n: usize| SamplingParams {
        max_tokens: n,
        ..SamplingParams::default()
    };
    let prompt = |i: usize| -> Vec<u32> {
        (0..(5 + i as u32 * 3))
            .map(|x| (x * 11 + i as u32) % 97)
            .collect()
    };
    let together = Generator::start(model.clone(), EngineConfig::default()).generate_blocking(
        lengths
            .iter()
            .enumerate()
            .map(|(i, n)| request(prompt(i), params(*n), i as u64))
            .collect(),
    );
    for (i, n) in lengths.iter().enumerate() {
        let alone = Generator::start(model.clone(), EngineConfig::default())
            .generate_blocking(vec![request(prompt(i), params(*n), i as u64)])
            .pop()
            .unwrap()
            .unwrap();
        let batched = together[i].as_ref().unwrap();
        assert_eq!(batched.ids.len(), *n);
        assert_eq!(batched.ids, alone.ids, "row {i}");
    }
}

#[test]
fn a_group_prefills_its_prompt_once_and_turns_reuse_the_cache() {
    let model = tiny();
    let generator = Generator::start(model, EngineConfig::default());
    let prompt: Vec<u32> = (0..60).map(|i| (i * 13 + 1) % 97).collect();
    let params = SamplingParams {
        max_tokens: 6,
        ..SamplingParams::default()
    };
    let outs: Vec<_> = generator
        .generate_blocking(
            (0..8)
                .map(|s| request(prompt.clone(), params.clone(), s))
                .collect(),
        )
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let prefilled: Vec<usize> = outs.iter().map(|o| o.prefilled).collect();
    assert_eq!(prefilled, [60, 0, 0, 0, 0, 0, 0, 0]);
    let distinct: std::collections::BTreeSet<_> = outs.iter().map(|o| o.ids.clone()).collect();
    assert!(distinct.len() > 1, "different seeds sample differently");

    // The next turn of sample 3: its prompt, its sampled ids, and new tokens.
    let mut next = prompt.clone();
    next.extend_from_slice(&outs[3].ids);
    next.extend_from_slice(&[7, 8, 9]);
    let out = generator
        .generate_blocking(vec![request(next, params.clone(), 99)])
        .pop()
        .unwrap()
        .unwrap();
    // Only the last sampled id (never fed back) and the three new ones run.
    assert_eq!(out.prefilled, 4);
}

#[test]
fn seeded_sampling_is_reproducible_and_the_rng_restorable() {
    let model = tiny();
    let params = SamplingParams {
        max_tokens: 10,
        ..SamplingParams::default()
    };
    let a = Generator::start(model.clone(), EngineConfig::default())
        .generate_blocking(vec![request(vec![1, 2, 3], params.clone(), 5)])
        .pop()
        .unwrap()
        .unwrap();
    let b = Generator::start(model, EngineConfig::default())
        .generate_blocking(vec![request(vec![1, 2, 3], params, 5)])
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.sampler.state(), b.sampler.state());

    let logits: Vec<f32> = (0..50).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
    let p = SamplingParams::default();
    let mut s = Sampler::new(42);
    for _ in 0..5 {
        s.sample(&logits, &p).unwrap();
    }
    let saved = s.state();
    let ahead: Vec<u32> = (0..20).map(|_| s.sample(&logits, &p).unwrap().id).collect();
    let mut resumed = Sampler::restore(saved);
    let again: Vec<u32> = (0..20)
        .map(|_| resumed.sample(&logits, &p).unwrap().id)
        .collect();
    assert_eq!(ahead, again);
}

#[test]
fn logprobs_are_the_policy_and_behaviour_distributions() {
    let logits = [2.0f32, 1.0, 0.5, -1.0];
    let lse = logits.iter().map(|l| (*l as f64).exp()).sum::<f64>().ln();
    let mut s = Sampler::new(1);
    let greedy = s.sample(&logits, &SamplingParams::greedy(1)).unwrap();
    assert_eq!(greedy.id, 0);
    assert!((greedy.logprob as f64 - (2.0 - lse)).abs() < 1e-6);
    assert_eq!(greedy.behaviour_logprob, None);

    let top1 = SamplingParams {
        top_k: 1,
        ..SamplingParams::default()
    };
    let t = s.sample(&logits, &top1).unwrap();
    assert_eq!(t.id, 0);
    assert_eq!(t.behaviour_logprob, Some(0.0));

    // Temperature scales the policy distribution that logprobs report.
    let hot = SamplingParams {
        temperature: 2.0,
        ..SamplingParams::default()
    };
    let lse2 = logits
        .iter()
        .map(|l| (*l as f64 / 2.0).exp())
        .sum::<f64>()
        .ln();
    for _ in 0..20 {
        let x = s.sample(&logits, &hot).unwrap();
        let expected = logits[x.id as usize] as f64 / 2.0 - lse2;
        assert!((x.logprob as f64 - expected).abs() < 1e-6);
    }
    let nucleus = SamplingParams {
        top_p: 0.5,
        ..SamplingParams::default()
    };
    for _ in 0..20 {
        let x = s.sample(&logits, &nucleus).unwrap();
        assert!(x.behaviour_logprob.unwrap() >= x.logprob);
    }
    assert!(s.sample(&[], &SamplingParams::default()).is_err());
    assert!(
        s.sample(&[f32::NAN; 3], &SamplingParams::default())
            .is_err()
    );
    for bad in [
        SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            max_tokens: 0,
            ..SamplingParams::default()
        },
    ] {
        assert!(bad.validate().is_err());
    }
}

#[test]
fn limits_end_turns_with_their_reason() {
    let model = tiny(); // a 256-token window
    let generator = Generator::start(model, EngineConfig::default());
    let params = SamplingParams {
        max_tokens: 100,
        ..SamplingParams::default()
    };
    let long: Vec<u32> = (0..256).map(|i| i % 97).collect();
    let out = generator
        .generate_blocking(vec![request(long, params.clone(), 0)])
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((out.finish, out.ids.len()), (Finish::ContextOverflow, 0));
    let near: Vec<u32> = (0..250).map(|i| i % 97).collect();
    let out = generator
        .generate_blocking(vec![request(near, params.clone(), 0)])
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((out.finish, out.ids.len()), (Finish::ContextOverflow, 6));
    let mut short = request(vec![1, 2], params, 0);
    short.max_tokens = 3;
    let out = generator
        .generate_blocking(vec![short])
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((out.finish, out.ids.len()), (Finish::Length, 3));
    // A stop id ends the turn and is kept.
    let greedy = generator
        .generate_blocking(vec![request(vec![4, 5], SamplingParams::greedy(5), 0)])
        .pop()
        .unwrap()
        .unwrap();
    let mut stopped = request(vec![4, 5], SamplingParams::greedy(5), 0);
    stopped.stop_ids = vec![greedy.ids[1]];
    let out = generator
        .generate_blocking(vec![stopped])
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(out.finish, Finish::Stop);
    assert_eq!(
        out.ids,
        greedy.ids[..=greedy.ids.iter().position(|i| *i == greedy.ids[1]).unwrap()]
    );
}
