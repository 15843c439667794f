//! Every `mtrl` subcommand, given bad input: it exits non-zero with one line of error, no panic
//! and no backtrace (with `RUST_BACKTRACE=1` set), and leaves an earlier run's outputs exactly
//! as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory for one test, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bad-input-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// An earlier run's outputs: the files each command writes, with recognisable contents.
fn earlier_run(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::create_dir_all(dir.join("eval")).unwrap();
    std::fs::create_dir_all(dir.join("report")).unwrap();
    for (file, text) in [
        ("recipe.toml", "# the earlier run's recipe\n"),
        (
            "metrics.jsonl",
            "{\"step\": 1, \"rollout/reward/mean\": 0.5}\n",
        ),
        ("eval/eval-test.jsonl", "earlier evaluation\n"),
        ("eval/eval-test.trajectories.jsonl", "earlier episodes\n"),
        ("report/report.html", "<p>earlier report</p>\n"),
        ("audit.json", "[]\n"),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    snapshot(dir)
}

/// Runs `mtrl args…` and checks the failure: non-zero exit, exactly one line of error (the
/// last line of stderr), no panic, no backtrace. Returns the error line.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mtrl"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("MTRL_SOP_BENCH_DIR")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace") && !stderr.contains(" at /"),
        "{args:?}: a panic or a backtrace:\n{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: one line of error:\n{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "{args:?}: the error comes last:\n{stderr}"
    );
    errors[0].to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sop_bench() -> Option<PathBuf> {
    std::env::var_os("MTRL_SOP_BENCH_DIR").map(PathBuf::from)
}

#[test]
fn no_command_or_an_unknown_one() {
    fails(&[]);
    let e = fails(&["trian"]);
    assert!(e.contains("trian"), "{e}");
    fails(&["audit", "--all", "--domain", "customer_service"]);
}

#[test]
fn quickstart_with_bad_options_writes_nothing() {
    let dir = scratch("quickstart");
    let fresh = dir.join("fresh");
    for args in [
        vec!["--lr", "-1"],
        vec!["--lr", "NaN"],
        vec!["--kl", "inf"],
        vec!["--demos", "0"],
        vec!["--demos", "100000"],
        vec!["--steps", "many"],
        vec!["--seed", "-4"],
    ] {
        let mut all = vec!["quickstart", "--smoke", "--out", path(&fresh)];
        all.extend(args);
        fails(&all);
        assert!(!fresh.exists(), "{all:?} wrote its output directory");
    }
    // An earlier run's directory is refused, as it is.
    let earlier = dir.join("earlier");
    let before = earlier_run(&earlier);
    let e = fails(&["quickstart", "--smoke", "--out", path(&earlier)]);
    assert!(e.contains("pass --force"), "{e}");
    assert_eq!(snapshot(&earlier), before);
    // A file where the directory should be.
    let file = earlier.join("recipe.toml");
    let e = fails(&["quickstart", "--smoke", "--out", path(&file)]);
    assert!(e.contains("is not a directory"), "{e}");
    assert_eq!(snapshot(&earlier), before);
}

/// A recipe file with `body`, its `out` set to `out`.
fn recipe(dir: &Path, name: &str, out: &Path, body: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, format!("out = {:?}\n{body}", path(out))).unwrap();
    file
}

#[test]
fn train_and_eval_with_bad_recipes_write_nothing() {
    let dir = scratch("recipes");
    let earlier = dir.join("earlier");
    let before = earlier_run(&earlier);
    let fresh = dir.join("fresh");
    let data = sop_bench().map(|d| format!("dir = {:?}\n", path(&d)));
    let valid_data = data.clone().unwrap_or_default();
    let gguf = dir.join("junk.gguf");
    std::fs::write(&gguf, b"GGUF but not really a model file").unwrap();
    let mut cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (dir.join("missing.toml"), vec![], "missing.toml"),
        (
            recipe(&dir, "syntax.toml", &fresh, "[model\ngguf = 1"),
            vec![],
            "recipe",
        ),
        (
            recipe(
                &dir,
                "unknown-domain.toml",
                &fresh,
                &format!(
                    "[model]\ngguf = \"x.gguf\"\n[data]\ndomain = \"no_such_domain\"\n{valid_data}"
                ),
            ),
            vec![],
            "no_such_domain",
        ),
        (
            recipe(
                &dir,
                "huge.toml",
                &fresh,
                "[model]\ngguf = \"x.gguf\"\n[data]\ndomain = \"customer_service\"\n",
            ),
            vec!["--set", "rollout.max_turns=99999999999999999999"],
            "out of range",
        ),
        (
            recipe(
                &dir,
                "no-dir.toml",
                &fresh,
                "[model]\ngguf = \"x.gguf\"\n[data]\ndomain = \"customer_service\"\ndir = \"/no_such_sop_bench_dir\"\n",
            ),
            vec![],
            "does not exist",
        ),
    ];
    if let Some(data) = &data {
        // The domain loads; the model does not (missing, then not a GGUF file).
        cases.push((
            recipe(
                &dir,
                "missing-model.toml",
                &fresh,
                &format!(
                    "[model]\ngguf = \"/no_such_model.gguf\"\n[data]\ndomain = \"traffic_spoofing_detection\"\n{data}"
                ),
            ),
            vec![],
            "no_such_model.gguf",
        ));
        cases.push((
            recipe(
                &dir,
                "junk-model.toml",
                &fresh,
                &format!(
                    "[model]\ngguf = {:?}\n[data]\ndomain = \"traffic_spoofing_detection\"\n{data}",
                    path(&gguf)
                ),
            ),
            vec![],
            "junk.gguf",
        ));
    }
    for (file, extra, needle) in &cases {
        for command in ["train", "eval"] {
            let mut args = vec![command, "--config", path(file)];
            args.extend(extra.iter().copied());
            let e = fails(&args);
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!fresh.exists(), "{args:?} wrote {}", fresh.display());
        }
    }
    // A valid recipe pointed at an earlier run's directory is refused before anything else.
    let into_earlier = recipe(
        &dir,
        "earlier.toml",
        &earlier,
        &format!(
            "[model]\ngguf = \"x.gguf\"\n[data]\ndomain = \"traffic_spoofing_detection\"\n{valid_data}"
        ),
    );
    let e = fails(&["train", "--config", path(&into_earlier)]);
    assert!(e.contains("pass --force"), "{e}");
    let e = fails(&["eval", "--config", path(&into_earlier)]);
    assert!(e.contains("eval-test.jsonl exists already"), "{e}");
    let e = fails(&[
        "eval",
        "--config",
        path(&into_earlier),
        "--split",
        "training",
    ]);
    assert!(e.contains("unknown split"), "{e}");
    let e = fails(&[
        "eval",
        "--config",
        path(&into_earlier),
        "--split",
        "validation",
        "--checkpoint",
        "/no_such_checkpoint",
    ]);
    assert!(e.contains("no_such_checkpoint"), "{e}");
    assert_eq!(snapshot(&earlier), before);
}

#[test]
fn audit_with_bad_input_writes_nothing() {
    let dir = scratch("audit");
    let before = earlier_run(&dir);
    let out = dir.join("audit.json");
    let e = fails(&[
        "audit",
        "--domain",
        "no_such_domain",
        "--data",
        "/no_such_dir",
    ]);
    assert!(e.contains("no_such_domain"), "{e}");
    let e = fails(&[
        "audit",
        "--domain",
        "customer_service",
        "--data",
        "/no_such_dir",
    ]);
    assert!(e.contains("/no_such_dir does not exist"), "{e}");
    let e = fails(&[
        "audit",
        "--domain",
        "customer_service",
        "--json",
        "--out",
        path(&out),
    ]);
    assert!(e.contains("pass --force"), "{e}");
    fails(&[
        "audit",
        "--domain",
        "customer_service",
        "--target",
        "nobody",
    ]);
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn report_with_bad_metrics_writes_nothing() {
    let dir = scratch("report");
    let before = earlier_run(&dir);
    let out = dir.join("report");
    let metrics = |name: &str, bytes: &[u8]| {
        let p = dir.with_extension(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let line = b"{\"step\": 1, \"rollout/reward/mean\": 0.5}\n";
    let copied = metrics("copied.jsonl", &[&line[..], &line[..]].concat());
    let latin1 = metrics("latin1.jsonl", b"{\"step\": 1, \"caf\xe9\": 0.5}\n");
    let garbage = metrics("garbage.jsonl", b"{\"step\": 1}\nnot json\n");
    let fresh = dir.with_extension("fresh");
    let _ = std::fs::remove_dir_all(&fresh);
    for (file, needle) in [
        (dir.join("no_such_metrics.jsonl"), "no_such_metrics.jsonl"),
        (copied.clone(), "line 2 repeats line 1"),
        (latin1.clone(), "line 1"),
        (garbage.clone(), "line 2"),
    ] {
        for target in [&out, &fresh] {
            let e = fails(&["report", "--metrics", path(&file), "--out", path(target)]);
            assert!(e.contains(path(&file)) && e.contains(needle), "{e}");
        }
        assert!(!fresh.exists());
    }
    // Good metrics, but a report is already there.
    let good = metrics("good.jsonl", line);
    let e = fails(&["report", "--metrics", path(&good), "--out", path(&out)]);
    assert!(e.contains("report.html exists already"), "{e}");
    fails(&[
        "report",
        "--metrics",
        path(&good),
        "--out",
        path(&out),
        "--window",
        "x",
    ]);
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn serve_env_with_bad_input() {
    for (args, needle) in [
        (vec!["--domain", "no_such_domain"], "no_such_domain"),
        (
            vec!["--domain", "customer_service", "--data", "/no_such_dir"],
            "does not exist",
        ),
        (
            vec!["--domain", "customer_service", "--addr", "nowhere"],
            "nowhere",
        ),
        (
            vec!["--domain", "customer_service", "--step-timeout=-1"],
            "step-timeout",
        ),
        (
            vec!["--domain", "customer_service", "--idle-timeout", "inf"],
            "idle-timeout",
        ),
        (
            vec!["--domain", "customer_service", "--max-sessions=-5"],
            "max-sessions",
        ),
        (
            vec!["--domain", "customer_service", "--max-sessions", "0"],
            "max-sessions",
        ),
    ] {
        let mut all = vec!["serve-env"];
        all.extend(args);
        let e = fails(&all);
        assert!(e.contains(needle), "{all:?}: {e}");
    }
}
