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

/// Each workspace member with the mtrl crates it depends on, of any kind.
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
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
