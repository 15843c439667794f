//! Which groups of a step can teach: the first thing an RL step decides after scoring.

use mtrl_core::{Scored, Trajectory};

use super::advantage::has_variance;

/// The groups of one step, sorted by what training does with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTriage {
    /// The groups that train, by index: every episode usable ([`Scored::usable`]: it ended by
    /// the task's rules, after any retries, and its reward is finite) and the rewards not all
    /// equal.
    pub trainable: Vec<usize>,
    /// Groups left out because an episode failed (after its retries) or could not be scored:
    /// training on the rest of such a group would bias its advantages.
    pub dropped: usize,
    /// Groups left out because every reward was equal: no advantage, no signal.
    pub zero_variance: usize,
}

impl GroupTriage {
    /// Sorts `groups` (the step's batch, group by group) by their `scored` rows, which come in
    /// the same order ([`mtrl_core::score_groups`]). A group whose rows are missing is dropped.
    pub fn of(groups: &[Vec<Trajectory>], scored: &[Scored]) -> Self {
        let mut triage = Self::default();
        let mut start = 0usize;
        for (g, group) in groups.iter().enumerate() {
            let end = start.saturating_add(group.len());
            let Some(rows) = scored.get(start..end) else {
                triage.dropped += 1;
                start = end;
                continue;
            };
            start = end;
            if group.is_empty() || !rows.iter().all(Scored::usable) {
                triage.dropped += 1;
                continue;
            }
            let totals: Vec<f64> = rows.iter().map(|r| r.reward.total).collect();
            if has_variance(&totals) {
                triage.trainable.push(g);
            } else {
                triage.zero_variance += 1;
            }
        }
        triage
    }
}
