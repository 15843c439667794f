//! [`EpisodeSources`]: the only random, clock and uuid sources a simulated tool may use, all
//! derived from the episode seed, so that an episode replays exactly.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// The simulated clock starts here (2026-01-01T00:00:00, in Unix seconds), plus a seed-derived
/// offset of up to a year.
const CLOCK_BASE_UNIX: i64 = 1_767_225_600;
const YEAR_SECS: u64 = 365 * 24 * 3600;

/// Seeded randomness, a simulated clock and uuids for one episode.
///
/// Two episodes with the same seed see the same numbers, times and ids; different seeds see
/// different ones. The clock moves forward one second each time it is read.
#[derive(Debug, Clone)]
pub struct EpisodeSources {
    seed: u64,
    rng: ChaCha8Rng,
    clock_unix: i64,
}

impl EpisodeSources {
    /// Sources for the episode with this seed.
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let offset = rng.next_u64() % YEAR_SECS;
        Self {
            seed,
            rng,
            clock_unix: CLOCK_BASE_UNIX + offset as i64,
        }
    }

    /// The episode seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next random 64-bit integer.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// The next random float in `[0, 1)`, with 53 random bits.
    pub fn random(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The simulated time, in Unix seconds; each read advances it by one second.
    pub fn now_unix(&mut self) -> i64 {
        let now = self.clock_unix;
        self.clock_unix += 1;
        now
    }

    /// The simulated time as `YYYY-MM-DDTHH:MM:SS` (local time has no zone in the simulation).
    pub fn now_iso(&mut self) -> String {
        let t = self.now_unix();
        let (y, m, d) = civil_from_days(t.div_euclid(86_400));
        let s = t.rem_euclid(86_400);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            s / 3600,
            (s / 60) % 60,
            s % 60
        )
    }

    /// A random version-4 uuid as 32 lower-case hex digits.
    pub fn uuid4_hex(&mut self) -> String {
        let hi = self.rng.next_u64();
        let lo = self.rng.next_u64();
        let hi = (hi & !0xf000) | 0x4000; // version 4
        let lo = (lo & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
        format!("{hi:016x}{lo:016x}")
    }
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let mut a = EpisodeSources::new(7);
        let mut b = EpisodeSources::new(7);
        let mut c = EpisodeSources::new(8);
        let va = (a.random(), a.now_iso(), a.uuid4_hex());
        let vb = (b.random(), b.now_iso(), b.uuid4_hex());
        let vc = (c.random(), c.now_iso(), c.uuid4_hex());
        assert_eq!(va, vb);
        assert_ne!(va.0, vc.0);
        assert_ne!(va.1, vc.1);
        assert_ne!(va.2, vc.2);
    }

    #[test]
    fn values_are_well_formed() {
        let mut s = EpisodeSources::new(1);
        for _ in 0..1000 {
            let r = s.random();
            assert!((0.0..1.0).contains(&r));
        }
        let id = s.uuid4_hex();
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4", "{id}");
        assert!(matches!(&id[16..17], "8" | "9" | "a" | "b"), "{id}");
        let t0 = s.now_unix();
        assert_eq!(s.now_unix(), t0 + 1);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
