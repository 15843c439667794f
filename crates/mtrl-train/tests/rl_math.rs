//! Advantages, losses, aggregation, optimiser and schedule against hand-computed values.

use candle_core::{Device, Tensor, Var};
use mtrl_train::rl::{
    AdamW, AdamWConfig, AdvantageEstimator, Aggregation, Decay, DrGrpo, Grads, Grpo, LossBatch,
    NextTokenNll, PolicyLoss, PpoClip, Rloo, Schedule, has_variance,
};

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
    }
}

fn t(v: &[f64]) -> Tensor {
    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
}

fn vec(x: &Tensor) -> Vec<f64> {
    x.to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

#[test]
fn group_advantages_match_hand_computed_values() {
    let r = [1.0, 0.0, 0.0, 1.0];
    // mean 0.5, sample std sqrt(1/3).
    let s = (1.0f64 / 3.0).sqrt();
    close(
        &Grpo { eps: 0.0 }.advantages(&r),
        &[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s],
        1e-12,
    );
    close(&DrGrpo.advantages(&r), &[0.5, -0.5, -0.5, 0.5], 1e-12);
    // RLOO: 1 − mean(0, 0, 1) = 2/3; 0 − mean(1, 0, 1) = −2/3.
    close(
        &Rloo.advantages(&r),
        &[2.0 / 3.0, -2.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0],
        1e-12,
    );
    // Uneven rewards: [3, 1, 2] → mean 2, sample std 1.
    close(
        &Grpo { eps: 0.0 }.advantages(&[3.0, 1.0, 2.0]),
        &[1.0, -1.0, 0.0],
        1e-12,
    );
    close(&Rloo.advantages(&[3.0, 1.0, 2.0]), &[1.5, -1.5, 0.0], 1e-12);
    // A group of one has no baseline.
    assert_eq!(Grpo::default().advantages(&[1.0]), vec![0.0]);
    assert!(has_variance(&[0.0, 0.0, 1.0]));
    assert!(!has_variance(&[0.5, 0.5, 0.5]));
    assert!(!has_variance(&[1.0]));
}

#[test]
fn aggregation_weights_per_token() {
    close(&Aggregation::TokenMean.weights(&[2, 3]), &[0.2; 5], 1e-12);
    close(
        &Aggregation::SequenceMean.weights(&[2, 3]),
        &[0.25, 0.25, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0],
        1e-12,
    );
    close(
        &Aggregation::ConstantNorm(10.0).weights(&[2, 3]),
        &[0.05; 5],
        1e-12,
    );
}

#[test]
fn ppo_clip_matches_hand_computed_loss_gradient_and_statistics() {
    // ratios 1.5, 0.5, 1 against advantages 1, −1, 2.
    let new = Var::from_tensor(&t(&[1.5f64.ln(), 0.5f64.ln(), 0.0])).unwrap();
    let old = t(&[0.0, 0.0, 0.0]);
    let adv = t(&[1.0, -1.0, 2.0]);
    let w = t(&[1.0 / 3.0; 3]);
    let batch = LossBatch {
        logprobs: new.as_tensor(),
        old_logprobs: &old,
        behaviour_logprobs: &old,
        ref_logprobs: None,
        advantages: &adv,
        weights: &w,
    };
    let out = PpoClip::default().loss(&batch).unwrap();
    // max(−A·r, −A·clip(r)) = [−1.2, 0.8, −2] → mean −0.8.
    let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((loss + 0.8).abs() < 1e-6, "{loss}");
    assert!((out.stats["clip_frac"] - 2.0 / 3.0).abs() < 1e-6);
    assert!((out.stats["ratio/mean"] - 1.0).abs() < 1e-6);
    assert!((out.stats["ratio/max"] - 1.5).abs() < 1e-6);
    // Clipped tokens get no gradient; the third gets −A·r/3 = −2/3.
    let grads = out.loss.backward().unwrap();
    let g = vec(grads.get(new.as_tensor()).unwrap());
    close(&g, &[0.0, 0.0, -2.0 / 3.0], 1e-6);
}

#[test]
fn truncated_importance_weights_and_k3_kl() {
    let new = Var::from_tensor(&t(&[0.0, 0.0, 0.0])).unwrap();
    let old = t(&[0.0, 0.0, 0.0]);
    // π_old / π_behaviour = 3, 1, 0.5 → capped at 2: 2, 1, 0.5.
    let behaviour = t(&[-(3.0f64.ln()), 0.0, 2.0f64.ln()]);
    let reference = t(&[0.0, 2.0f64.ln(), -(2.0f64.ln())]);
    let adv = t(&[1.0, 1.0, 1.0]);
    let w = t(&[1.0 / 3.0; 3]);
    let batch = LossBatch {
        logprobs: new.as_tensor(),
        old_logprobs: &old,
        behaviour_logprobs: &behaviour,
        ref_logprobs: Some(&reference),
        advantages: &adv,
        weights: &w,
    };
    let loss = PpoClip {
        tis_cap: Some(2.0),
        kl_coef: 0.5,
        ..PpoClip::default()
    };
    let out = loss.loss(&batch).unwrap();
    assert!((out.stats["tis/mean"] - 3.5 / 3.0).abs() < 1e-6);
    // pg: −1 · ratio 1 · tis weight → −(2 + 1 + 0.5) / 3.
    assert!((out.stats["pg_loss"] + 3.5 / 3.0).abs() < 1e-6);
    // k3 with d = ref − new: e^d − d − 1 = 0, 1 − ln 2, 0.5 + ln 2 − 1.
    let k3 = [0.0, 1.0 - 2.0f64.ln(), 0.5 + 2.0f64.ln() - 1.0];
    let kl = k3.iter().sum::<f64>() / 3.0;
    assert!((out.stats["kl"] - kl).abs() < 1e-6);
    let total = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((total - (-3.5 / 3.0 + 0.5 * kl)).abs() < 1e-6, "{total}");
    // Without reference logprobs the KL term is a typed error, not a silent zero.
    let batch = LossBatch {
        ref_logprobs: None,
        ..batch
    };
    assert!(loss.loss(&batch).is_err());
}

#[test]
fn nll_is_the_weighted_negative_logprob() {
    let lp = t(&[-1.0, -2.0, -0.5]);
    let w = t(&[0.5, 0.25, 0.25]);
    let z = t(&[0.0; 3]);
    let out = NextTokenNll
        .loss(&LossBatch {
            logprobs: &lp,
            old_logprobs: &z,
            behaviour_logprobs: &z,
            ref_logprobs: None,
            advantages: &z,
            weights: &w,
        })
        .unwrap();
    assert!((out.stats["loss"] - 1.125).abs() < 1e-6);
}

#[test]
fn adamw_matches_hand_computed_updates() {
    let p = Var::from_tensor(&t(&[1.0, -2.0])).unwrap();
    let config = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 0.0,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], config).unwrap();
    let grad = |g: &[f64]| {
        let x = Var::from_tensor(&t(&[0.0, 0.0])).unwrap();
        let loss = (x.as_tensor() * t(g)).unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let mut grads = Grads::new();
        grads.add(&store, &[("p".into(), x)]).unwrap();
        grads
    };
    // Step 1: m̂ = g, v̂ = g² → θ ← θ(1 − lr·wd) − lr·sign(g).
    opt.step(&grad(&[0.5, -4.0]), 0.1).unwrap();
    let after1 = [1.0 * 0.99 - 0.1, -2.0 * 0.99 + 0.1];
    close(&vec(p.as_tensor()), &after1, 1e-6);
    // Step 2 with g = (1, 1): m = 0.9·m1 + 0.1·g, v = 0.999·v1 + 0.001·g².
    opt.step(&grad(&[1.0, 1.0]), 0.1).unwrap();
    let mut want = [0.0; 2];
    for (i, (g1, g2)) in [(0.5f64, 1.0f64), (-4.0, 1.0)].into_iter().enumerate() {
        let m = 0.9 * (0.1 * g1) + 0.1 * g2;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
        want[i] = after1[i] * 0.99 - 0.1 * mh / vh.sqrt();
    }
    close(&vec(p.as_tensor()), &want, 1e-5);
    assert_eq!(opt.steps(), 2);
    // State round-trips: a restored optimiser takes the same next step.
    let (state, steps) = opt.state().unwrap();
    let q = Var::from_tensor(&p.as_tensor().detach().copy().unwrap()).unwrap();
    let mut twin = AdamW::new(vec![("p".into(), q.clone())], opt.config().clone()).unwrap();
    twin.restore(state, steps).unwrap();
    opt.step(&grad(&[0.3, -0.7]), 0.05).unwrap();
    twin.step(&grad(&[0.3, -0.7]), 0.05).unwrap();
    assert_eq!(vec(p.as_tensor()), vec(q.as_tensor()));
}

#[test]
fn gradient_clipping_scales_to_the_norm_and_leaves_non_finite_gradients_alone() {
    let x = Var::from_tensor(&t(&[0.0, 0.0])).unwrap();
    let loss = (x.as_tensor() * t(&[3.0, 4.0])).unwrap().sum_all().unwrap();
    let mut grads = Grads::new();
    grads
        .add(&loss.backward().unwrap(), &[("x".into(), x.clone())])
        .unwrap();
    // Two micro-batches add up.
    grads
        .add(&loss.backward().unwrap(), &[("x".into(), x.clone())])
        .unwrap();
    assert!((grads.norm().unwrap() - 10.0).abs() < 1e-6);
    let before = grads.clip(1.0).unwrap();
    assert!((before - 10.0).abs() < 1e-6);
    close(&vec(grads.get("x").unwrap()), &[0.6, 0.8], 1e-6);
    let nan = (x.as_tensor() * t(&[f64::NAN, 1.0]))
        .unwrap()
        .sum_all()
        .unwrap();
    let mut bad = Grads::new();
    bad.add(&nan.backward().unwrap(), &[("x".into(), x)])
        .unwrap();
    assert!(bad.clip(1.0).unwrap().is_nan());
}

#[test]
fn schedules_warm_up_then_decay() {
    let cosine = Schedule {
        warmup: 2,
        total: 10,
        decay: Decay::Cosine { min_ratio: 0.1 },
    };
    close(
        &[0, 1, 2, 6, 10, 20].map(|s| cosine.factor(s)),
        &[0.5, 1.0, 1.0, 0.55, 0.1, 0.1],
        1e-12,
    );
    let constant = Schedule {
        warmup: 4,
        total: 10,
        decay: Decay::Constant,
    };
    close(
        &[0, 3, 9].map(|s| constant.factor(s)),
        &[0.25, 1.0, 1.0],
        1e-12,
    );
}
