//! Rolls SmolLM2 out on SOP-Bench customer_service tasks and prints each turn.
//!
//! `MTRL_SOP_BENCH_DIR=../shared/sop-bench-data cargo run --release -p mtrl-train --example rollout_smollm2 -- [tasks] [samples]`

use std::time::Instant;

use candle_core::Device;
use mtrl_core::{Limits, RolloutDriver};
use mtrl_env::sop_bench::{Domain, InputPolicy, Mode, Source};
use mtrl_train::CandleAgent;
use mtrl_train::engine::EngineConfig;
use mtrl_train::model::ModelSource;
use mtrl_train::sampler::SamplingParams;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n_tasks: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let samples: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let domain = Domain::load(&Source::from_env(), "customer_service")?;
    let tasks: Vec<_> = domain
        .tasks(InputPolicy::Mtrl)?
        .into_iter()
        .take(n_tasks)
        .collect();
    let factory = domain.environment(Mode::Strict)?;
    let loaded = ModelSource::Gguf(mtrl_train::assets::smollm2_gguf()?).load(&Device::Cpu)?;
    let params = SamplingParams {
        temperature: 0.7,
        max_tokens: 160,
        ..SamplingParams::default()
    };
    let agent = CandleAgent::new(loaded, params, EngineConfig::default());
    let driver = RolloutDriver::new(Limits {
        max_turns: 4,
        ..Limits::default()
    });
    let start = Instant::now();
    let groups = driver.run_batch(&agent, &factory, &tasks, samples).await;
    println!("{:.1} s", start.elapsed().as_secs_f64());
    for t in groups.iter().flatten() {
        println!(
            "== {}#{} stop {} ({} tool calls, {} ok)",
            t.task_id,
            t.episode.index,
            t.stop,
            t.tool_calls(),
            t.tool_outcomes().ok
        );
        for turn in &t.turns {
            println!(
                "-- assistant ({} tokens):\n{}",
                turn.tokens.as_ref().map_or(0, |r| r.sampled_ids().len()),
                turn.action.content
            );
            for o in &turn.observations {
                println!("-- {:?}: {:.300}", o.role, o.content);
            }
        }
    }
    Ok(())
}
