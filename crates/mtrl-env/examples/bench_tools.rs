//! Tool-call throughput on one core: the whole path of a call (parse the argument JSON,
//! validate it in strict mode, run the binding, write the text), with no caching of results.
//! Every tool is called on every row with the row's canonical arguments; each figure is the
//! median of five one-second runs.
//!
//! ```text
//! cargo build --release -p mtrl-env --example bench_tools
//! MTRL_SOP_BENCH_DIR=../shared/sop-bench-data taskset -c 1 target/release/examples/bench_tools
//! ```
//!
//! (`taskset` keeps the run on one core; without it the scheduler may move it.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mtrl_core::{Episode, Message, ToolCall};
use mtrl_env::sop_bench::{CanonicalAgent, Domain, InputPolicy, Mode, SopBenchFactory, Source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let domain_name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "customer_service".into());
    let domain = Domain::load(&Source::from_env(), &domain_name)?;
    let tasks = domain.tasks(InputPolicy::Mtrl)?;
    let SopBenchFactory::Strict(factory) = domain.environment(Mode::Strict)? else {
        unreachable!("strict mode")
    };
    // Every tool on every row, with the row's canonical arguments.
    let agent = CanonicalAgent::new(&domain);
    let rows = domain.rows_by_task();
    let mut calls = Vec::new();
    for task in &tasks {
        let row: &HashMap<String, String> = &rows[task.id()];
        for tool in domain.tools() {
            let args = agent.arguments(tool, row, &[]);
            calls.push(ToolCall::new(
                "c",
                tool.name(),
                &serde_json::Value::Object(args),
            ));
        }
    }
    let mut env = factory.environment();
    env.reset_sync(&tasks[0], &Episode::default())?;
    // Warm up, and count outcomes once.
    let mut ok = 0;
    for c in &calls {
        ok += usize::from(!env.call_tool(c)?.is_error);
    }
    type CallFn = dyn Fn(&mut mtrl_env::ToolEnvironment, &ToolCall) -> usize;
    let measure = |env: &mut mtrl_env::ToolEnvironment, calls: &[ToolCall], f: &CallFn| {
        let mut bytes = 0usize;
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let mut n = 0usize;
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(1) {
                    for c in calls {
                        bytes += f(env, c);
                        n += 1;
                    }
                }
                n as f64 / start.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        (rates[2], bytes)
    };
    let (calls_per_s, _) = measure(&mut env, &calls, &|env, c| {
        env.call_tool(c).map(|o| o.text.len()).unwrap_or(0)
    });
    let (good, bad): (Vec<ToolCall>, Vec<ToolCall>) = calls
        .iter()
        .cloned()
        .partition(|c| env.call_tool(c).is_ok_and(|o| !o.is_error));
    let (good_per_s, _) = measure(&mut env, &good, &|env, c| {
        env.call_tool(c).map(|o| o.text.len()).unwrap_or(0)
    });
    let (bad_per_s, _) = measure(&mut env, &bad, &|env, c| {
        env.call_tool(c).map(|o| o.text.len()).unwrap_or(0)
    });
    let actions: Vec<Message> = calls
        .iter()
        .map(|c| Message::assistant_with_calls("", vec![c.clone()]))
        .collect();
    let mut n = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for a in &actions {
            let step = env.step_sync(a)?;
            n += step.messages.len();
        }
    }
    let steps_per_s = n as f64 / start.elapsed().as_secs_f64();
    // Parity mode: no schema validation, upstream's exact text.
    let SopBenchFactory::Parity(parity) = domain.environment(Mode::Parity)? else {
        unreachable!("parity mode")
    };
    let mut penv = parity.environment();
    let mut n = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for c in &calls {
            n += usize::from(!penv.call_raw(&c.name, &c.arguments).text.is_empty());
        }
    }
    let parity_per_s = n as f64 / start.elapsed().as_secs_f64();
    println!("domain: {domain_name}");
    println!(
        "calls: {} distinct ({} tools × {} rows), {ok} succeed",
        calls.len(),
        domain.tools().len(),
        tasks.len()
    );
    println!("tool calls per second (one core, strict mode, whole path): {calls_per_s:.0}");
    println!("  of which succeeding calls only:                          {good_per_s:.0}");
    println!("  of which failing calls only (validation or tool errors): {bad_per_s:.0}");
    println!("environment steps per second (one call per step):        {steps_per_s:.0}");
    println!("tool calls per second in parity mode (no validation):     {parity_per_s:.0}");
    Ok(())
}
