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
