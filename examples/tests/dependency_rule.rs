//! The workspace's dependency rule, checked on the real manifests through `cargo metadata`.
//!
//! - `mtrl-core` depends on no mtrl crate;
//! - `mtrl-env`, `mtrl-reward` and `mtrl-eval` depend only on `mtrl-core`;
//! - `mtrl-train` may use those four;
//! - `mtrl-examples` sits on top.
//!
//! Normal, dev and build dependencies all follow it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

fn allowed(krate: &str) -> Option<&'static [&'static str]> {
    Some(match krate {
        "mtrl-core" => &[],
        "mtrl-env" | "mtrl-reward" | "mtrl-eval" => &["mtrl-core"],
        "mtrl-train" => &["mtrl-core", "mtrl-env", "mtrl-reward", "mtrl-eval"],
        "mtrl-examples" => &[
            "mtrl-core",
            "mtrl-env",
            "mtrl-reward",
            "mtrl-eval",
            "mtrl-train",
        ],
        _ => return None,
    })
}

/// What `cargo ARGS` prints, run in this package's directory; it must succeed.
fn cargo(args: &[&str]) -> Vec<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Each workspace member with the mtrl crates it depends on, of any kind.
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let out = cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]);
    let meta: Value = serde_json::from_slice(&out).unwrap();
    let members: BTreeSet<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|name| members.contains(name) || name.starts_with("mtrl"))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn no_crate_breaks_the_dependency_rule() {
    let edges = workspace_edges();
    let names: BTreeSet<&str> = edges.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "mtrl-core",
            "mtrl-env",
            "mtrl-reward",
            "mtrl-eval",
            "mtrl-train",
            "mtrl-examples"
        ]),
        "a new crate must be given its place in the rule"
    );
    let mut broken = Vec::new();
    for (krate, deps) in &edges {
        let ok = allowed(krate).unwrap();
        for dep in deps {
            if !ok.contains(&dep.as_str()) {
                broken.push(format!("{krate} -> {dep}"));
            }
        }
    }
    assert!(broken.is_empty(), "dependency rule broken: {broken:?}");
}

#[test]
fn the_rule_itself_rejects_the_forbidden_edges() {
    // Guards the table above against being loosened by mistake.
    assert!(!allowed("mtrl-core").unwrap().contains(&"mtrl-env"));
    for peer in ["mtrl-env", "mtrl-reward", "mtrl-eval"] {
        for other in ["mtrl-env", "mtrl-reward", "mtrl-eval", "mtrl-train"] {
            assert!(
                !allowed(peer).unwrap().contains(&other),
                "{peer} -> {other}"
            );
        }
    }
    assert!(!allowed("mtrl-train").unwrap().contains(&"mtrl-examples"));
}

/// The crates `package` pulls in (normal dependencies, the package itself included) with the
/// given feature flags.
fn tree(package: &str, flags: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["tree", "-p", package, "-e", "normal", "--prefix", "none"];
    args.extend(["--offline", "--format", "{p}"]);
    args.extend(flags);
    let out = cargo(&args);
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A user who wants the contracts and layers alone turns the default features off, and the heavy
/// parts go: SOP-Bench's hub client and TLS stack from mtrl-env, the report's plotting and font
/// crates from mtrl-eval.
#[test]
fn the_minimal_feature_set_leaves_the_heavy_parts_out() {
    let heavy_env = ["hf-hub", "ureq", "rustls", "ring", "sha2"];
    let heavy_eval = ["plotters", "dejavu", "image", "ab_glyph"];
    let full_env = tree("mtrl-env", &[]);
    let full_eval = tree("mtrl-eval", &[]);
    assert!(
        heavy_env.iter().all(|c| full_env.contains(*c)),
        "{full_env:?}"
    );
    assert!(full_eval.contains("plotters") && full_eval.contains("dejavu"));
    let min_env = tree("mtrl-env", &["--no-default-features"]);
    let min_eval = tree("mtrl-eval", &["--no-default-features"]);
    for c in heavy_env {
        assert!(
            !min_env.contains(c),
            "mtrl-env without features still pulls {c}"
        );
    }
    for c in heavy_eval {
        assert!(
            !min_eval.contains(c),
            "mtrl-eval without features still pulls {c}"
        );
    }
    assert!(min_env.contains("mtrl-core") && min_eval.contains("mtrl-core"));
    eprintln!(
        "mtrl-env: {} crates, {} without default features; mtrl-eval: {} crates, {} without",
        full_env.len(),
        min_env.len(),
        full_eval.len(),
        min_eval.len()
    );
}
