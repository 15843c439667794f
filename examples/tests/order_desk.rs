//! The order desk example (`examples/examples/order_desk.rs`), run as a test: the careful clerk
//! passes strict evaluation, the liar fails exactly where the state had to change, the
//! recordings replay to identical verdicts, and the audit is clean.

#[allow(dead_code)]
#[path = "../examples/order_desk.rs"]
mod order_desk;

#[tokio::test]
async fn the_order_desk_example_shows_what_it_says() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("order-desk");
    let figures = order_desk::run(&dir, 40).await.unwrap();
    assert_eq!(figures.tasks, 40);
    assert!(figures.audit.is_empty(), "{:?}", figures.audit);
    let [careful, liar] = figures.agents.as_slice() else {
        panic!("two agents")
    };

    // The careful clerk recovers from its malformed call and does the work.
    assert_eq!(careful.tsr, 1.0, "{careful:?}");
    assert_eq!(careful.answers_right, 1.0);
    assert!(careful.failures.is_empty(), "{careful:?}");
    assert!((careful.reward - 1.0).abs() < 1e-12, "{careful:?}");
    // Without the tolerance, float refunds fail some of its cancellations.
    assert!(careful.tsr_exact < 1.0, "{careful:?}");

    // The liar says the same, but the state shows it never acted.
    assert_eq!(liar.answers_right, 1.0, "{liar:?}");
    assert!(
        liar.tsr < 1.0 && liar.tsr > 0.0,
        "it is right only where nothing had to change"
    );
    let lies = (40.0 * (1.0 - liar.tsr)).round() as usize;
    assert_eq!(liar.failures.get("wrong_outcome"), Some(&lies), "{liar:?}");
    assert!(liar.reward < careful.reward);

    // Both recordings replay to the very same verdicts and rewards.
    assert!(careful.replay_identical && liar.replay_identical);
    assert!(dir.join("careful.jsonl").is_file() && dir.join("liar.jsonl").is_file());
}
