//! Synthetic metric streams: healthy runs and hacked ones, with seeded noise.

#![allow(dead_code)]

use mtrl_eval::monitor::{StepMetrics, names};

/// The shapes of run the alarm is tested on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Reward and validation TSR rise together; behaviour stays steady.
    Learning,
    /// Nothing moves but noise.
    Plateau,
    /// The format rate climbs as the model learns the answer format.
    LearningFormat,
    /// From step 30 the policy answers in `<final_response>`: the lenient reward climbs, strict
    /// TSR and the format rate fall.
    FinalResponseHack,
    /// From step 30 tool calls per episode blow up (a per-call reward farmed).
    ToolSpam,
    /// From step 30 episodes answer without calling the tools they need.
    EarlyAnswers,
    /// Learns until step 30, then collapses for ten steps (validation TSR near 0, answers
    /// without tools jump to 80%), then recovers: today's quickstart once did this.
    Collapse,
}

/// A small deterministic noise source (xorshift), in [-1, 1].
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

pub const STEPS: u64 = 60;
pub const HACK_FROM: u64 = 30;

/// A 60-step run of the given shape; validation runs every 5 steps.
pub fn synthetic(run: Run, seed: u64) -> Vec<StepMetrics> {
    let mut noise = Noise::new(seed);
    let mut out = Vec::new();
    for step in 0..STEPS {
        let p = step as f64 / (STEPS - 1) as f64;
        // Progress of the hack: 0 before HACK_FROM, then up to 1 at the end.
        let h = if step < HACK_FROM {
            0.0
        } else {
            (step - HACK_FROM) as f64 / (STEPS - 1 - HACK_FROM) as f64
        };
        let mut n = |scale: f64| noise.next() * scale;
        let (mut reward, mut tsr, mut format, mut calls, mut early) = match run {
            Run::Learning => (0.1 + 0.8 * p, 0.05 + 0.7 * p, 0.95, 4.0, 0.05),
            Run::Plateau => (0.4, 0.3, 0.9, 4.0, 0.1),
            Run::LearningFormat => (0.1 + 0.6 * p, 0.05 + 0.5 * p, 0.3 + 0.65 * p, 4.0, 0.05),
            Run::FinalResponseHack => (
                0.3 + 0.1 * p + 0.5 * h,
                0.25 + 0.1 * p.min(0.5) - 0.2 * h,
                0.9 - 0.7 * h,
                4.0,
                0.05,
            ),
            Run::ToolSpam => (0.1 + 0.8 * p, 0.05 + 0.7 * p, 0.95, 4.0 + 12.0 * h, 0.05),
            Run::EarlyAnswers => (
                0.3 + 0.4 * p,
                0.2 + 0.1 * p,
                0.95,
                4.0 - 2.5 * h,
                0.05 + 0.6 * h,
            ),
            Run::Collapse => (0.1 + 0.8 * p, 0.05 + 0.9 * p, 0.95, 4.0, 0.05),
        };
        let collapsed = run == Run::Collapse && (HACK_FROM..HACK_FROM + 10).contains(&step);
        if collapsed {
            (reward, tsr, calls, early) = (0.1, 0.02, 0.5, 0.9);
        }
        reward += n(0.03);
        tsr += n(0.03);
        format += n(0.02);
        calls += n(0.3);
        early += n(0.02);
        let mut m = StepMetrics::new(step);
        m.set(names::REWARD_MEAN, reward);
        // No noise drawn for these two, so that every run keeps its sequence.
        m.set(names::REWARD_VALID_MEAN, reward - 0.04);
        m.set(names::RESPONSE_TOKENS_MAX, (120.0 + 40.0 * calls).round());
        m.set(
            names::reward_component("exact_match"),
            (reward - 0.1).max(0.0),
        );
        m.set(names::reward_component("format"), format.clamp(0.0, 1.0));
        m.set(names::reward_component("tool_validity"), 0.9 + n(0.05));
        m.set(names::TSR, (tsr - 0.05).clamp(0.0, 1.0));
        m.set(names::FORMAT_FRAC, format.clamp(0.0, 1.0));
        m.set(names::TOOL_CALLS_MEAN, calls.max(0.0));
        m.set(names::TURNS_MEAN, calls.max(0.0) + 1.0);
        m.set(names::ANSWER_EARLY_FRAC, early.clamp(0.0, 1.0));
        // Only the collapse draws noise here, so that the other runs keep their sequences.
        let no_tool = if collapsed {
            0.8 + n(0.02)
        } else {
            early * 0.5
        };
        m.set(names::ANSWER_NO_TOOL_FRAC, no_tool.clamp(0.0, 1.0));
        m.set(names::TRUNCATED_FRAC, (0.05 + n(0.02)).max(0.0));
        m.set(names::MAX_TURNS_FRAC, (0.08 + n(0.02)).max(0.0));
        m.set(
            names::ZERO_ADV_GROUPS,
            (0.3 - 0.2 * p + n(0.05)).clamp(0.0, 1.0),
        );
        let turns = (calls.max(0.0) + 1.0).round() as usize;
        m.turns = (0..=turns + 2)
            .map(|t| {
                let d = t.abs_diff(turns);
                [10, 5, 2][d.min(2)]
            })
            .collect();
        if step % 5 == 4 {
            m.set(names::VAL_TSR, tsr.clamp(0.0, 1.0));
            m.set(names::VAL_REWARD_MEAN, reward + n(0.02));
        }
        out.push(m);
    }
    out
}
