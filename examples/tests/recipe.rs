//! Recipes: parsing, overrides and their errors; and the real-model recipe's CPU smoke run
//! (SmolLM2 with LoRA on SOP-Bench traffic_spoofing_detection, one step), then `mtrl eval`
//! from its checkpoint.

use std::path::{Path, PathBuf};

use mtrl_examples::recipe::{Recipe, RecipeError, eval, train};
use mtrl_train::model::Precision;

const MINIMAL: &str = r#"
out = "runs/x"
[model]
gguf = "model.gguf"
[data]
domain = "traffic_spoofing_detection"
"#;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn overrides_set_nested_values_as_toml_or_strings() {
    let r = Recipe::parse(
        MINIMAL,
        &strings(&[
            "train.steps=3",
            "train.optimizer.lr=2e-4",
            "train.activation_checkpointing=true",
            "lora.rank=4",
            "lora.alpha=8.0",
            "lora.targets=[\"q_proj\", \"v_proj\"]",
            "out=runs/y",
            "data.max_test=5",
            "model.precision=bf16",
        ]),
    )
    .unwrap();
    assert_eq!(r.train.steps, 3);
    assert_eq!(r.train.optimizer.lr, 2e-4);
    assert!(r.train.activation_checkpointing);
    let lora = r.lora.unwrap();
    assert_eq!((lora.rank, lora.targets.len()), (4, 2));
    assert_eq!(r.out, PathBuf::from("runs/y"));
    assert_eq!(r.data.max_test, Some(5));
    assert_eq!(r.model.precision, Precision::Bf16);
    // Defaults where the file is silent.
    assert_eq!(r.data.fractions, [0.6, 0.2, 0.2]);
    assert_eq!(r.reward.exact_match, 1.0);
}

#[test]
fn bad_recipes_are_typed_errors_that_name_the_problem() {
    let bad = |text: &str, overrides: &[&str], needle: &str| {
        let err = Recipe::parse(text, &strings(overrides)).unwrap_err();
        assert!(matches!(err, RecipeError::Invalid(_)));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    };
    bad(MINIMAL, &["train.stepz=3"], "stepz");
    bad(MINIMAL, &["train.steps=-1"], "steps");
    bad(MINIMAL, &["train.steps"], "key=value");
    bad(MINIMAL, &["out.x=1"], "not a section");
    bad(MINIMAL, &["model.hub=a/b"], "exactly one");
    bad(MINIMAL, &["data.fractions=[0.5, 0.5, 0.5]"], "fractions");
    bad(MINIMAL, &["train.group_size=0"], "group_size");
    bad(MINIMAL, &["model.precision=f8"], "precision");
    bad(
        MINIMAL,
        &["rollout.max_turns=99999999999999999999"],
        "99999999999999999999 is out of range",
    );
    bad(MINIMAL, &["rollout.max_turns=-3"], "max_turns");
    bad("out = ", &[], "recipe");
    let missing = Recipe::load(Path::new("/nonexistent/recipe.toml"), &[]).unwrap_err();
    assert!(matches!(missing, RecipeError::Io { .. }));
}

#[test]
fn the_shipped_recipe_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smollm2_traffic_spoofing.toml");
    let r = Recipe::load(&path, &[]).unwrap();
    assert!(r.train.activation_checkpointing, "SOP prompts need it");
    assert!(r.lora.is_some());
    assert_eq!(
        r.model.precision,
        Precision::Auto,
        "bf16 on CUDA, f32 on the CPU"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smollm2_recipe_trains_a_step_on_cpu_and_evaluates_its_checkpoint() {
    if std::env::var_os("MTRL_SOP_BENCH_DIR").is_none() {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; skipping");
        return;
    }
    let out = std::env::temp_dir().join(format!("mtrl-recipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smollm2_traffic_spoofing.toml");
    let overrides = strings(&[
        "train.steps=1",
        "train.tasks_per_step=1",
        "train.group_size=2",
        "data.max_train=2",
        "data.max_validation=1",
        "data.max_test=1",
        "rollout.max_turns=2",
        "rollout.max_tokens_per_turn=48",
    ]);
    let mut overrides = overrides;
    overrides.push(format!("out=\"{}\"", out.display()));
    let recipe = Recipe::load(&path, &overrides).unwrap();
    let lines = train(&recipe, false).await.unwrap();
    assert!(lines.iter().any(|l| l.starts_with("before: strict TSR")));
    assert!(lines.iter().any(|l| l.starts_with("after: strict TSR")));
    assert!(lines.iter().any(|l| l.starts_with("checkpoint: ")));
    for file in [
        "recipe.toml",
        "metrics.jsonl",
        "report/report.html",
        "eval/before.trajectories.jsonl",
        "checkpoint/state.json",
        "checkpoint/adapter/adapter_config.json",
        "checkpoint/adapter/adapter_model.safetensors",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let metrics = mtrl_eval::monitor::read_metrics(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.iter().any(|m| m.get("time/rollout_s").is_some()));
    // Run again into the same directory: refused before anything is touched.
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let e = train(&recipe, false).await.unwrap_err().to_string();
    assert!(e.contains("pass --force"), "{e}");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    let lines = eval(&recipe, Some(&out.join("checkpoint")), "test", false)
        .await
        .unwrap();
    assert!(lines[0].starts_with("eval-test: strict TSR"), "{lines:?}");
    let e = eval(&recipe, None, "test", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("eval-test.jsonl exists already"), "{e}");
    assert!(eval(&recipe, None, "training", true).await.is_err());
    let _ = std::fs::remove_dir_all(&out);
}
