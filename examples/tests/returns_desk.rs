//! The bundled quickstart domain: its decision table, task generation (deterministic, no
//! answer in the inputs), the audit, exact token bookkeeping of the demonstrations, and the
//! whole quickstart pipeline in its smoke size.

use std::sync::Arc;

use mtrl_core::rollout::{Limits, RolloutDriver};
use mtrl_examples::quickstart::{QuickstartOptions, run};
use mtrl_examples::returns_desk::{self, DECISIONS, Expert};

#[test]
fn the_decision_table_and_generated_tasks() {
    assert_eq!(returns_desk::decide("damaged", "open"), "replace");
    assert_eq!(returns_desk::decide("damaged", "closed"), "replace");
    assert_eq!(returns_desk::decide("new", "open"), "refund");
    assert_eq!(returns_desk::decide("used", "closed"), "reject");
    let tasks = returns_desk::tasks(300, 7);
    assert_eq!(tasks.len(), 300);
    assert_eq!(
        tasks,
        returns_desk::tasks(300, 7),
        "generation is deterministic"
    );
    assert_ne!(tasks, returns_desk::tasks(300, 8));
    let ids: std::collections::BTreeSet<&str> = tasks.iter().map(|t| t.id()).collect();
    assert_eq!(ids.len(), 300, "ids are unique");
    for t in &tasks {
        let r = &t.metadata()["record"];
        let want = returns_desk::decide(
            r["condition"].as_str().unwrap(),
            r["window"].as_str().unwrap(),
        );
        assert_eq!(t.ground_truth()["decision"], want);
        assert_eq!(t.inputs().len(), 1, "only the order id is shown");
    }
    // Every decision occurs, none dominates.
    for d in DECISIONS {
        let share = returns_desk::share(&tasks, d);
        assert!((0.2..0.5).contains(&share), "{d}: {share}");
    }
    assert_eq!(
        returns_desk::tasks(5000, 1).len(),
        1000,
        "one task per order id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_passes_the_audit_and_demonstrations_are_exact() {
    let factory = returns_desk::environments().unwrap();
    let (tokenizer, template) = returns_desk::tokenizer_and_template().unwrap();
    let (tokenizer, template) = (Arc::new(tokenizer), Arc::new(template));
    let expert = Expert::new(tokenizer.clone(), template.clone());
    let tasks = returns_desk::tasks(24, 3);
    let report = mtrl_env::audit::Audit::new(returns_desk::NAME)
        .run(&factory, &expert, &tasks)
        .await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let demos = RolloutDriver::new(Limits {
        max_turns: 4,
        ..Limits::default()
    })
    .run_batch(&expert, &factory, &tasks, 1)
    .await;
    let tito = mtrl_train::Tito {
        tokenizer: &tokenizer,
        template: &template,
        format: &mtrl_train::toolcall::Hermes,
    };
    for d in demos.iter().flatten() {
        assert_eq!(d.stop, mtrl_core::StopReason::Answered);
        assert_eq!(d.tool_outcomes().ok, 1, "one successful lookup");
        let check = tito.check(d).unwrap();
        assert!(check.is_exact(), "{check:?}");
        // No word of the conversation falls back to <unk>.
        for seq in d.sequences().unwrap() {
            assert!(!seq.ids.contains(&tokenizer.token_to_id("<unk>").unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_every_stage() {
    let out = std::env::temp_dir().join(format!("mtrl-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = QuickstartOptions::smoke(out.clone());
    let report = run(&opts).await.unwrap();
    assert!(report.audit_findings.is_empty());
    // Untrained, most common, SFT only (the untrained policy scores under 5%), SFT + GRPO.
    assert!(report.warm_start);
    assert_eq!(report.rows.len(), 4);
    assert_eq!(report.gains.len(), 3);
    for r in &report.rows {
        assert!((0.0..=1.0).contains(&r.tsr.value));
        assert!(r.tsr.low <= r.tsr.value && r.tsr.value <= r.tsr.high);
    }
    assert!(report.report.exists());
    assert!(
        out.join("checkpoint")
            .join("trainable.safetensors")
            .exists()
    );
    let metrics = mtrl_eval::monitor::read_metrics(&report.metrics).unwrap();
    assert!(
        metrics.iter().any(|m| m.get("val/tsr").is_some()),
        "validation ran"
    );
    assert!(
        metrics.iter().any(|m| m.get("time/rollout_s").is_some()),
        "RL steps ran"
    );
    let sft = mtrl_eval::monitor::read_metrics(out.join("sft_metrics.jsonl")).unwrap();
    assert!(
        !sft.is_empty() && sft.iter().all(|m| m.get("train/loss").is_some()),
        "the SFT warm start logs its updates"
    );
    let table = report.table(opts.test_tasks);
    assert!(table.contains("SFT + GRPO") && table.contains("most common answer"));
    let _ = std::fs::remove_dir_all(&out);
}

/// `mtrl quickstart --model smollm2` in its smoke size: SmolLM2-135M-Instruct from the model
/// cache, with LoRA, its own tokenizer and chat template, through the untrained evaluation,
/// the warm-start decision, GRPO steps that update the adapters, and the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smollm2_quickstart_runs_every_stage() {
    use mtrl_examples::quickstart::PolicyModel;
    let out = std::env::temp_dir().join(format!("mtrl-quickstart-smollm2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = QuickstartOptions::smoke_of(PolicyModel::Smollm2, out.clone());
    let report = run(&opts).await.unwrap();
    assert_eq!(report.model, PolicyModel::Smollm2);
    assert!(report.audit_findings.is_empty());
    // The warm start runs exactly where the untrained policy scores under 5%.
    assert_eq!(
        report.warm_start,
        report.untrained < mtrl_examples::quickstart::WARM_START_BELOW
    );
    assert_eq!(report.rows.len(), if report.warm_start { 4 } else { 3 });
    assert_eq!(report.rows[0].name, "untrained");
    assert!(
        report
            .rows
            .iter()
            .all(|r| (0.0..=1.0).contains(&r.tsr.value))
    );
    let table = report.table(opts.test_tasks);
    assert!(table.starts_with("smollm2:") && table.contains("- untrained (paired)"));
    // The adapters are what the checkpoint holds: LoRA, not the 135M base weights.
    let saved = out.join("checkpoint").join("trainable.safetensors");
    let size = std::fs::metadata(&saved).unwrap().len();
    assert!(size > 0 && size < 40 << 20, "{size} bytes: adapters only");
    let metrics = mtrl_eval::monitor::read_metrics(&report.metrics).unwrap();
    let steps: Vec<_> = metrics
        .iter()
        .filter(|m| m.get("time/rollout_s").is_some())
        .collect();
    assert_eq!(steps.len(), opts.rl_steps, "every GRPO step ran");
    let _ = std::fs::remove_dir_all(&out);
}
