//! Runs that survive a kill. `mtrl quickstart --resume` and `mtrl train --resume`: a run
//! killed (SIGKILL) after a checkpoint, its latest checkpoint then damaged and a save left cut
//! short, resumes from the checkpoint before, skipping the damaged one by name, and ends bit
//! for bit where the uninterrupted run ends: the same weights, optimiser and state, the same
//! metrics with no step twice (timings excepted), and the same printed results.
//!
//! The quickstart's GRPO steps update the weights (its groups' rewards vary after the warm
//! start). `mtrl train` runs on the real SOP-Bench data with the real SmolLM2 tokenizer and chat
//! template and a small random network (`[model.random]`): its warm start moves the weights,
//! but such a network never answers right, so its GRPO groups carry no signal there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mtrl_eval::monitor::{StepMetrics, read_metrics_log};

fn mtrl(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtrl"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn ok(c: &mut Command) -> (String, String) {
    let out = c.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

/// The run's metrics, timings removed; no step may appear twice.
fn metrics(out: &Path) -> Vec<StepMetrics> {
    let log = read_metrics_log(out.join("metrics.jsonl")).unwrap();
    assert!(
        log.resumptions.is_empty(),
        "a step appears twice: {:?}",
        log.resumptions
    );
    log.steps
        .into_iter()
        .map(|mut m| {
            m.values
                .retain(|k, _| !k.starts_with("time/") && !k.ends_with("_per_s"));
            m
        })
        .collect()
}

/// The files that fix where a run ended.
fn ending(out: &Path, files: &[&str]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|f| {
            let path = out.join("checkpoint").join(f);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (f.to_string(), bytes)
        })
        .collect()
}

fn step_dir(out: &Path, step: usize) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

/// Waits for the checkpoint of `step` to be complete, then kills the run (SIGKILL); returns
/// the last complete checkpoint's step.
fn kill_after(mut child: Child, out: &Path, step: usize, steps: usize) -> usize {
    let started = Instant::now();
    while !step_dir(out, step).join("manifest.json").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before checkpoint {step}"
        );
        assert!(started.elapsed() < Duration::from_secs(600));
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success(), "killed, not finished");
    assert!(
        !out.join("checkpoint").exists(),
        "the kill came before the end of the run"
    );
    let latest = mtrl_train::rl::checkpoint_dirs(&out.join("checkpoints"))
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    let name = latest.file_name().unwrap().to_str().unwrap();
    let at: usize = name.trim_start_matches("step-").parse().unwrap();
    assert!((step..steps).contains(&at), "killed after step {at}");
    at
}

/// Damages the checkpoint of step `at` (one byte of its weights flipped) and leaves a cut
/// save of the next one beside it; returns the cut save's directory.
fn damage(out: &Path, at: usize) -> PathBuf {
    let weights = step_dir(out, at).join("trainable.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let i = bytes.len() - 9;
    bytes[i] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    let cut = out
        .join("checkpoints")
        .join(format!(".step-{:06}.tmp-1-1", at + 1));
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::write(cut.join("state.json"), b"{\"sta").unwrap();
    cut
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn line(text: &str, start: &str) -> Option<String> {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .map(str::to_string)
}

fn scratch(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

#[test]
fn a_killed_quickstart_resumed_ends_bit_for_bit_where_the_uninterrupted_one_ends() {
    const STEPS: usize = 10;
    let root = scratch("resume-quickstart");
    let (whole, killed) = (root.join("whole"), root.join("killed"));
    let args = |out: &Path| -> Vec<String> {
        [
            "quickstart",
            "--smoke",
            "--deterministic",
            "--steps",
            &STEPS.to_string(),
            "--sft-epochs",
            "12",
            "--demos",
            "32",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (printed, _) = ok(&mut mtrl(&strs(&args(&whole))));
    let child = mtrl(&strs(&args(&killed)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let at = kill_after(child, &killed, 4, STEPS);
    let cut = damage(&killed, at);

    let (stdout, stderr) = ok(&mut mtrl(&[
        "quickstart",
        "--resume",
        "--out",
        killed.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("skipping a checkpoint")
            && stderr.contains(&format!("step-{at:06}/trainable.safetensors"))
            && stderr.contains("damaged"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("resuming GRPO at step {} of {STEPS}", at - 1)),
        "{stderr}"
    );
    assert!(!cut.exists(), "the cut save's leftovers are cleared");

    let files = [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
    ];
    assert_eq!(
        ending(&killed, &files),
        ending(&whole, &files),
        "the same weights, bit for bit"
    );
    let (a, b) = (metrics(&whole), metrics(&killed));
    let updates = a.iter().filter(|m| m.get("train/loss").is_some()).count();
    assert!(updates >= 3, "GRPO updated the weights: {updates} updates");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "step {}", x.step);
    }
    for start in [
        "SFT only",
        "SFT + GRPO ",
        "SFT + GRPO - untrained",
        "SFT + GRPO - SFT",
        "SFT + GRPO - most common",
        "untrained policy",
    ] {
        assert!(line(&printed, start).is_some(), "{start}: {printed}");
        assert_eq!(line(&stdout, start), line(&printed, start), "{start}");
    }

    // Nothing to resume: a clear error.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = mtrl(&["quickstart", "--resume", "--out", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("options.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}

const TRAIN_STEPS: usize = 8;

fn recipe(out: &Path) -> String {
    format!(
        r#"out = {out:?}

[model]
gguf = "smollm2"
context_window = 8192

[model.random]
hidden_size = 64
intermediate_size = 128
layers = 2
heads = 4
kv_heads = 2
seed = 3

[lora]
rank = 4
alpha = 8.0
targets = ["q_proj", "v_proj"]

[data]
domain = "traffic_spoofing_detection"
max_train = 4
max_validation = 1
max_test = 1

[rollout]
max_turns = 8
max_tokens_per_turn = 96

[sft]
demonstrations = 1
epochs = 1
batch = 1
lr = 1e-3

[train]
seed = 0
steps = {TRAIN_STEPS}
tasks_per_step = 1
group_size = 2
micro_batch = 2
eval_every = 3
checkpoint_every = 1
concurrency = 2

[train.optimizer]
lr = 1e-3
"#,
        out = out.display().to_string()
    )
}

#[test]
fn a_killed_sop_bench_run_resumed_ends_bit_for_bit_where_the_uninterrupted_one_ends() {
    if std::env::var_os("MTRL_SOP_BENCH_DIR").is_none() {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    }
    let root = scratch("resume-train");
    let (whole, killed) = (root.join("whole"), root.join("killed"));
    for out in [&whole, &killed] {
        std::fs::write(out.with_extension("toml"), recipe(out)).unwrap();
    }
    let config = |out: &Path| out.with_extension("toml").to_str().unwrap().to_string();
    let (printed, _) = ok(&mut mtrl(&["train", "--config", &config(&whole)]));
    let child = mtrl(&["train", "--config", &config(&killed)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let at = kill_after(child, &killed, 2, TRAIN_STEPS);
    let cut = damage(&killed, at);

    let (stdout, stderr) = ok(&mut mtrl(&["train", "--resume", killed.to_str().unwrap()]));
    assert!(
        stderr.contains("skipping a checkpoint")
            && stderr.contains(&format!("step-{at:06}/trainable.safetensors"))
            && stderr.contains("damaged"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("resuming at step {} of {TRAIN_STEPS}", at - 1)),
        "{stderr}"
    );
    assert!(!cut.exists(), "the cut save's leftovers are cleared");

    let files = [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
        "adapter/adapter_model.safetensors",
    ];
    assert_eq!(ending(&killed, &files), ending(&whole, &files));
    // The warm start moved the adapters: their B matrices start at zero.
    let start = std::fs::read(step_dir(&whole, 0).join("trainable.safetensors")).unwrap();
    let after_sft =
        candle_core::safetensors::load_buffer(&start, &candle_core::Device::Cpu).unwrap();
    let b_sum: f32 = after_sft
        .iter()
        .filter(|(name, _)| name.contains("lora_B"))
        .map(|(_, t)| {
            t.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .sum();
    assert!(b_sum > 0.0, "SFT left the adapters at zero");
    let (a, b) = (metrics(&whole), metrics(&killed));
    assert!(a.len() > TRAIN_STEPS, "{}", a.len());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "step {}", x.step);
    }
    for start in ["before:", "sft:", "after:", "reward-hacking"] {
        assert!(line(&printed, start).is_some(), "{start}: {printed}");
        assert_eq!(line(&stdout, start), line(&printed, start), "{start}");
    }

    // Not a run's directory: a clear error.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = mtrl(&["train", "--resume", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recipe.toml"));
    let _ = std::fs::remove_dir_all(&root);
}
