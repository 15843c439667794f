//! Combinators, in the manner of tower's layers: each wraps rewards and keeps every component
//! of theirs, named.

use std::collections::BTreeMap;
use std::sync::Arc;

use mtrl_core::{Reward, RewardValue, Task, Trajectory, async_trait};

use crate::Error;

/// A shared, type-erased reward.
pub type SharedReward = Arc<dyn Reward>;

/// Merges `from` into `into`; the same name with a different value is a configuration error
/// (two terms logging under one name would hide one of them).
fn merge(into: &mut BTreeMap<String, f64>, from: BTreeMap<String, f64>) -> Result<(), Error> {
    for (name, value) in from {
        match into.get(&name) {
            Some(old) if old.to_bits() != value.to_bits() => {
                return Err(Error::ComponentClash(name));
            }
            _ => {
                into.insert(name, value);
            }
        }
    }
    Ok(())
}

/// `Σ weight × term`; the components are the union of the terms' components, unweighted.
#[derive(Clone, Default)]
pub struct WeightedSum {
    terms: Vec<(f64, SharedReward)>,
}

impl WeightedSum {
    /// An empty sum (it scores 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a term with its weight.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a non-finite weight.
    pub fn term(mut self, weight: f64, reward: impl Reward + 'static) -> Result<Self, Error> {
        if !weight.is_finite() {
            return Err(Error::InvalidConfig(format!(
                "a weight must be finite, got {weight}"
            )));
        }
        self.terms.push((weight, Arc::new(reward)));
        Ok(self)
    }
}

#[async_trait]
impl Reward for WeightedSum {
    async fn score(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let mut out = RewardValue::default();
        for (weight, term) in &self.terms {
            let v = term.score(task, t).await?;
            out.total += weight * v.total;
            merge(&mut out.components, v.components)?;
        }
        Ok(out)
    }
}

/// Clamps the total into `[low, high]`; the components stay as they were.
#[derive(Clone)]
pub struct Clip<R> {
    inner: R,
    low: f64,
    high: f64,
}

impl<R> Clip<R> {
    /// Clamps `inner` into `[low, high]`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless `low <= high`, both finite.
    pub fn new(inner: R, low: f64, high: f64) -> Result<Self, Error> {
        if !(low.is_finite() && high.is_finite() && low <= high) {
            return Err(Error::InvalidConfig(format!(
                "clip bounds must be finite with low <= high, got [{low}, {high}]"
            )));
        }
        Ok(Self { inner, low, high })
    }
}

#[async_trait]
impl<R: Reward> Reward for Clip<R> {
    async fn score(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let mut v = self.inner.score(task, t).await?;
        v.total = v.total.clamp(self.low, self.high);
        Ok(v)
    }
}

/// Credits `inner` only when `gate` scores at least `threshold` (for example: no answer
/// credit without the format); otherwise the total is `closed`. The components of both are
/// kept, so a closed gate shows why.
#[derive(Clone)]
pub struct Gate<G, R> {
    gate: G,
    inner: R,
    threshold: f64,
    closed: f64,
}

impl<G, R> Gate<G, R> {
    /// `inner` when `gate >= threshold`, else 0.
    pub fn new(gate: G, threshold: f64, inner: R) -> Self {
        Self {
            gate,
            inner,
            threshold,
            closed: 0.0,
        }
    }

    /// The total when the gate is closed (0 by default).
    #[must_use]
    pub fn closed_value(mut self, value: f64) -> Self {
        self.closed = value;
        self
    }
}

#[async_trait]
impl<G: Reward, R: Reward> Reward for Gate<G, R> {
    async fn score(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let gate = self.gate.score(task, t).await?;
        let inner = self.inner.score(task, t).await?;
        let mut out = RewardValue::new(if gate.total >= self.threshold {
            inner.total
        } else {
            self.closed
        });
        merge(&mut out.components, gate.components)?;
        merge(&mut out.components, inner.components)?;
        Ok(out)
    }
}

/// Prefixes every component of `inner` with `prefix/`, to tell apart two uses of one block.
#[derive(Clone)]
pub struct Prefixed<R> {
    inner: R,
    prefix: String,
}

impl<R> Prefixed<R> {
    /// Prefixes `inner`'s components.
    pub fn new(inner: R, prefix: impl Into<String>) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
        }
    }
}

#[async_trait]
impl<R: Reward> Reward for Prefixed<R> {
    async fn score(&self, task: &Task, t: &Trajectory) -> mtrl_core::Result<RewardValue> {
        let v = self.inner.score(task, t).await?;
        Ok(RewardValue {
            total: v.total,
            components: v
                .components
                .into_iter()
                .map(|(k, v)| (format!("{}/{k}", self.prefix), v))
                .collect(),
        })
    }
}

/// Wrapping methods for every reward, tower-style: `reward.clip(0.0, 1.0)?.gated_by(…)`.
pub trait RewardExt: Reward + Sized {
    /// Clamps the total into `[low, high]` ([`Clip`]).
    ///
    /// # Errors
    /// As [`Clip::new`].
    fn clip(self, low: f64, high: f64) -> Result<Clip<Self>, Error> {
        Clip::new(self, low, high)
    }

    /// Credits this reward only when `gate` scores at least `threshold` ([`Gate`]).
    fn gated_by<G: Reward>(self, gate: G, threshold: f64) -> Gate<G, Self> {
        Gate::new(gate, threshold, self)
    }

    /// Prefixes the components ([`Prefixed`]).
    fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self> {
        Prefixed::new(self, prefix)
    }

    /// Type-erases the reward.
    fn shared(self) -> SharedReward
    where
        Self: 'static,
    {
        Arc::new(self)
    }
}

impl<R: Reward> RewardExt for R {}
