//! Acceptance: SmolLM2 runs end to end on CPU over two customer_service tasks of SOP-Bench, its
//! tool calls served by mtrl-env. The trajectories carry token records that decode back to the
//! conversation, with masks over exactly the sampled tokens.

use candle_core::Device;
use mtrl_core::{Limits, RolloutDriver};
use mtrl_env::sop_bench::{Domain, InputPolicy, Mode, Source};
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::ModelSource;
use mtrl_train::sampler::SamplingParams;
use mtrl_train::{CandleAgent, drift};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_rolls_out_customer_service_tasks_with_exact_token_records() {
    let source = Source::from_env();
    let domain = match Domain::load(&source, "customer_service") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("notice: SOP-Bench is not reachable ({e}); skipping");
            return;
        }
    };
    let tasks: Vec<_> = domain
        .tasks(InputPolicy::Mtrl)
        .unwrap()
        .into_iter()
        .take(2)
        .collect();
    let factory = domain.environment(Mode::Strict).unwrap();
    let path = mtrl_train::assets::smollm2_gguf().expect("SmolLM2 GGUF");
    let loaded = ModelSource::Gguf(path).load(&Device::Cpu).unwrap();
    let params = SamplingParams {
        temperature: 0.7,
        max_tokens: 160,
        ..SamplingParams::default()
    };
    let agent = CandleAgent::new(loaded, params, EngineConfig::default()).with_context_window(8192);
    let driver = RolloutDriver::new(Limits {
        max_turns: 3,
        ..Limits::default()
    });
    let groups = driver.run_batch(&agent, &factory, &tasks, 1).await;
    let tokenizer = agent.tokenizer();
    let mut calls = 0;
    let mut turns = 0;
    for t in groups.iter().flatten() {
        assert!(t.error.is_none(), "{:?}", t.error);
        assert!(!t.turns.is_empty());
        calls += t.tool_calls();
        turns += t.turns.len();
        eprintln!(
            "{}#{}: {} turns, {} tool calls ({} ok), stop {}",
            t.task_id,
            t.episode.index,
            t.turns.len(),
            t.tool_calls(),
            t.tool_outcomes().ok,
            t.stop
        );
    }
    assert!(turns >= 2);
    eprintln!("{calls} tool calls over {turns} turns");
    // The model's calls reached mtrl-env, which answered each one (with a result or a
    // structured error).
    assert!(calls > 0, "SmolLM2 made no tool call");
    for t in groups.iter().flatten() {
        for turn in &t.turns {
            if !turn.action.tool_calls.is_empty() && !turn.observations.is_empty() {
                assert_eq!(turn.observations.len(), turn.action.tool_calls.len());
                assert_eq!(
                    turn.tool_results().unwrap().len(),
                    turn.action.tool_calls.len()
                );
            }
        }
    }
    // The bookkeeping the agent used checks the records against the conversation.
    let tito = agent.tito();
    for t in groups.iter().flatten() {
        let check = tito.check(t).unwrap();
        assert!(check.is_exact(), "{}: {check:?}", t.task_id);
        assert_eq!(check.segments, 1, "ChatML appends only");
        let sampled: usize = t
            .turns
            .iter()
            .map(|x| x.tokens.as_ref().unwrap().sampled_ids().len())
            .sum();
        assert_eq!(
            check.sampled, sampled,
            "the mask covers exactly the sampled tokens"
        );
        let seqs = t.sequences().unwrap();
        let masked: usize = seqs
            .iter()
            .map(|s| s.loss_mask.iter().filter(|m| **m).count())
            .sum();
        assert_eq!(masked, sampled);
        let d = drift(tokenizer, t).unwrap();
        eprintln!(
            "{}: drift {} of {} tokens",
            t.task_id, d.mismatched, d.tokens
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_demonstrations_in_smollm2_tokens_succeed_strictly_and_train() {
    use mtrl_env::sop_bench::{CanonicalAgent, DOMAINS, EVALUATION_ONLY};
    use mtrl_eval::{FinalOutputEvaluator, Summary, evaluate_all};
    use std::sync::Arc;
    let source = Source::from_env();
    if Domain::load(&source, "customer_service").is_err() {
        eprintln!("notice: SOP-Bench is not reachable; skipping");
        return;
    }
    let path = mtrl_train::assets::smollm2_gguf().expect("SmolLM2 GGUF");
    let loaded = ModelSource::Gguf(path).load(&Device::Cpu).unwrap();
    let (tokenizer, template) = (Arc::new(loaded.tokenizer), Arc::new(loaded.template));
    let tito = mtrl_train::Tito {
        tokenizer: &tokenizer,
        template: &template,
        format: &mtrl_train::toolcall::Hermes,
    };
    // Every domain whose licence allows training.
    for name in DOMAINS.iter().filter(|d| !EVALUATION_ONLY.contains(d)) {
        let domain = Domain::load(&source, name).unwrap();
        let tasks: Vec<_> = domain
            .tasks(InputPolicy::Mtrl)
            .unwrap()
            .into_iter()
            .take(3)
            .collect();
        let oracle = mtrl_train::Demonstrator::new(
            CanonicalAgent::new(&domain).answering(&domain),
            tokenizer.clone(),
            template.clone(),
        );
        let demos: Vec<_> = RolloutDriver::new(Limits {
            max_turns: domain.tools().len() + 2,
            ..Limits::default()
        })
        .run_batch(
            &oracle,
            &domain.environment(Mode::Strict).unwrap(),
            &tasks,
            1,
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        // The same script, its calls given directly rather than written by the policy's tokens.
        let direct: Vec<_> = RolloutDriver::new(Limits {
            max_turns: domain.tools().len() + 2,
            ..Limits::default()
        })
        .run_batch(
            &CanonicalAgent::new(&domain).answering(&domain),
            &domain.environment(Mode::Strict).unwrap(),
            &tasks,
            1,
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        let records = evaluate_all(&FinalOutputEvaluator::new(), &tasks, &demos)
            .await
            .unwrap();
        let summary = Summary::from_records(&records).overall;
        assert_eq!(summary.tsr(), 1.0, "{name}: {:?}", summary.failures);
        for (t, d) in demos.iter().zip(&direct) {
            // The calls parsed back from the rendered text reached the tools, and fared as the
            // script's own calls do.
            let o = t.tool_outcomes();
            assert_eq!(o.calls, domain.tools().len(), "{name}");
            assert_eq!(o, d.tool_outcomes(), "{name}");
            for (a, b) in t.turns.iter().zip(&d.turns) {
                let names = |m: &mtrl_core::Message| -> Vec<(String, serde_json::Value)> {
                    m.tool_calls
                        .iter()
                        .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap()))
                        .collect()
                };
                assert_eq!(names(&a.action), names(&b.action), "{name}");
            }
            let check = tito.check(t).unwrap();
            assert!(check.is_exact(), "{name}: {check:?}");
            let samples = mtrl_train::rl::Sample::from_trajectory(t, 0.0).unwrap();
            let trained: usize = samples.iter().map(|s| s.at.len()).sum();
            assert_eq!(
                trained, check.sampled,
                "{name}: every demonstrated token trains"
            );
        }
    }
}
