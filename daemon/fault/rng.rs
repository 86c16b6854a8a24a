//! A small, fast pseudo-random generator for fault decisions
//! (xoshiro256++ seeded through SplitMix64). Not for anything secret: it
//! only decides which datagram to drop or which connection a toxic hits.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

static STREAM: AtomicU64 = AtomicU64::new(0);

impl Rng {
    /// A generator seeded from the clock and a process-wide counter, so
    /// two connections never share a sequence.
    pub fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::seeded(t ^ STREAM.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed))
    }

    pub fn seeded(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.unit() < p)
    }

    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [-d, +d] around `base`, never below zero.
    pub fn jitter(
        &mut self,
        base: std::time::Duration,
        d: std::time::Duration,
    ) -> std::time::Duration {
        if d.is_zero() {
            return base;
        }
        let span = d.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        let off = self.below(2 * span + 1) as i128 - span as i128;
        let ns = (base.as_nanos() as i128 + off).max(0);
        std::time::Duration::from_nanos(ns.min(i128::from(u64::MAX)) as u64)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unit_and_jitter_stay_in_range() {
        let mut r = Rng::seeded(7);
        let mut sum = 0.0;
        for _ in 0..100_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / 100_000.0 - 0.5).abs() < 0.01);
        for _ in 0..1000 {
            let j = r.jitter(Duration::from_millis(10), Duration::from_millis(5));
            assert!(j >= Duration::from_millis(5) && j <= Duration::from_millis(15));
            assert!(r.jitter(Duration::ZERO, Duration::from_millis(5)) <= Duration::from_millis(5));
        }
    }
}
