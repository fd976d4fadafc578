//! One retry policy for every remote call the tool makes (the Engram sink, the OpenAI-compatible embedder):
//! exponential backoff with jitter, so the retries of many in-flight requests do not hit a recovering server
//! together.

use std::time::Duration;

/// Whether a failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// The request itself is wrong, or the credentials: sending it again gives the same answer.
    No,
    /// The server is busy, restarting or shedding load (5xx, 408, 429, transport errors): back off and retry.
    WithBackoff,
}

/// Attempt n waits a random time in [d/2, d], d = base * 2^n capped at `cap` ("full jitter" over the upper half).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 6,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based); `salt` (a memory id, a batch size) makes concurrent
    /// requests wait different times.
    pub fn delay(&self, attempt: u32, salt: &str) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        let r =
            xxhash_rust::xxh3::xxh3_64_with_seed(salt.as_bytes(), nanos as u64 ^ attempt as u64);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64; // uniform in [0, 1)
        d.mul_f64(0.5 + 0.5 * frac)
    }

    /// Whether retry number `attempt` (0-based) is still allowed.
    pub fn allows(&self, attempt: u32) -> bool {
        attempt + 1 < self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let b = Backoff::default();
        for attempt in 0..10 {
            let full = b.base.saturating_mul(1 << attempt).min(b.cap);
            let d = b.delay(attempt, "id-1");
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} vs {full:?}");
        }
        let distinct: std::collections::HashSet<_> =
            (0..20).map(|i| b.delay(3, &format!("id-{i}"))).collect();
        assert!(distinct.len() > 10, "jitter spreads retries");
        assert!(b.allows(4) && !b.allows(5), "6 attempts: 5 retries");
    }
}
