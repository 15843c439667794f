//! Remote-environment benchmark: steps per second through HTTP on loopback against the same
//! environment called in process, and the overhead per step, one episode at a time (latency)
//! and 64 at a time (throughput). The environment echoes a 1 KB tool result, so the figures
//! are the adapter's cost (JSON both ways, HTTP, the session table), not an environment's.
//!
//! `cargo run --release -p mtrl-env --features remote --example bench_remote [out.json]`

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use mtrl_core::{Environment, EnvironmentFactory, Episode, Message, Reset, Step, Task};
use mtrl_env::remote::{ClientConfig, EnvServer, RemoteFactory, ServerConfig};
use serde_json::json;

/// Answers each action with a 1 KB observation that depends on the episode and the step.
struct Echo {
    seed: u64,
    n: usize,
}

#[async_trait]
impl Environment for Echo {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> mtrl_core::Result<Reset> {
        self.seed = episode.seed;
        Ok(Reset {
            messages: vec![Message::user(format!("task {}", task.id()))],
            ..Reset::default()
        })
    }

    async fn step(&mut self, action: &Message) -> mtrl_core::Result<Step> {
        self.n += 1;
        let body = format!("{}:{}:{}:", self.seed, self.n, action.content.len()).repeat(64);
        Ok(Step::next(vec![Message::user(
            &body[..1024.min(body.len())],
        )]))
    }
}

fn echo(_: &Task, _: &Episode) -> mtrl_core::Result<Echo> {
    Ok(Echo { seed: 0, n: 0 })
}

const STEPS: usize = 20;

/// Runs `episodes` episodes of `STEPS` steps, `concurrency` at a time; returns steps per
/// second.
async fn run<F: EnvironmentFactory>(factory: &F, episodes: usize, concurrency: usize) -> f64 {
    let action = Message::assistant("x".repeat(256));
    let start = Instant::now();
    let jobs = (0..episodes).map(|i| {
        let action = action.clone();
        async move {
            let task = Task::new(format!("t{i}"), json!({}), json!({})).unwrap();
            let episode = Episode {
                index: 0,
                seed: i as u64,
            };
            let mut env = factory.create(&task, &episode).unwrap();
            env.reset(&task, &episode).await.unwrap();
            for _ in 0..STEPS {
                env.step(&action).await.unwrap();
            }
            env.close().await.unwrap();
        }
    });
    futures::stream::iter(jobs)
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    (episodes * STEPS) as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(async {
        let server = EnvServer::new(echo, ServerConfig::default())
            .bind("127.0.0.1:0".parse()?)
            .await?;
        let remote = Arc::new(RemoteFactory::new(server.url(), ClientConfig::default())?);
        // Warm-up: connections, allocations.
        run(&*remote, 20, 8).await;
        run(&echo, 20, 8).await;
        let mut rows = Vec::new();
        for (episodes, concurrency) in [(200, 1), (1280, 64)] {
            let local = run(&echo, episodes, concurrency).await;
            let http = run(&*remote, episodes, concurrency).await;
            rows.push(json!({
                "concurrency": concurrency,
                "episodes": episodes,
                "steps_per_episode": STEPS,
                "local_steps_per_s": local,
                "http_steps_per_s": http,
                "overhead_us_per_step": (1.0 / http - 1.0 / local) * 1e6,
            }));
        }
        server.shutdown().await?;
        Ok::<_, Box<dyn std::error::Error>>(json!({
            "transport": "HTTP/1.1 on loopback, JSON bodies (reset + 20 steps + close per episode)",
            "observation_bytes": 1024,
            "action_bytes": 256,
            "tokio_worker_threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "runs": rows,
        }))
    })?;
    let text = serde_json::to_string_pretty(&figures)?;
    println!("{text}");
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(path, text)?;
    }
    Ok(())
}
