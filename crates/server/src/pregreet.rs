//! The pregreet test's memory: clients that waited for the banner once are not made to wait
//! again for `greet_pause_ttl` (Postfix postscreen's `postscreen_greet_ttl`).
//!
//! The pause before the banner catches robots that talk first, but it costs every connection
//! `greet_pause`, which caps an MX at sessions ÷ pause messages per second. A real MTA that
//! waited once will wait again, so it pays once per TTL. A client that talks early is never
//! remembered and is refused every time; a remembered client that later talks early or
//! pipelines without permission is forgotten.
//!
//! Clients are remembered by IPv4 address and by IPv6 /64 (one host's usual allocation), and
//! the memory is bounded ([`MAX_CLIENTS`]): it lives as long as the server (SIGHUP keeps it).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most this many clients are remembered (about 5 MB); when full, expired entries go
/// first, then the older half.
pub const MAX_CLIENTS: usize = 100_000;

/// Who passed the pregreet test, and when.
pub struct PregreetCache {
    passed: Mutex<HashMap<IpAddr, Instant>>,
    capacity: usize,
}

impl Default for PregreetCache {
    fn default() -> Self {
        Self::with_capacity(MAX_CLIENTS)
    }
}

impl PregreetCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            passed: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Whether `ip` passed the test less than `ttl` ago.
    pub fn has_passed(&self, ip: IpAddr, ttl: Duration) -> bool {
        let passed = self.lock();
        passed
            .get(&client_key(ip))
            .is_some_and(|at| at.elapsed() < ttl)
    }

    /// `ip` waited for the banner: remember it (unless `ttl` is zero: caching off).
    pub fn record_pass(&self, ip: IpAddr, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut passed = self.lock();
        if passed.len() >= self.capacity {
            passed.retain(|_, at| at.elapsed() < ttl);
        }
        if passed.len() >= self.capacity {
            keep_newer_half(&mut passed);
        }
        passed.insert(client_key(ip), Instant::now());
    }

    /// `ip` behaved like a robot: test it again next time.
    pub fn forget(&self, ip: IpAddr) {
        self.lock().remove(&client_key(ip));
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation is
        // one map call), so a poisoned lock is still usable.
        self.passed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn keep_newer_half(passed: &mut HashMap<IpAddr, Instant>) {
    let mut times: Vec<Instant> = passed.values().copied().collect();
    let middle = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(middle);
    let median = *median;
    passed.retain(|_, at| *at > median);
}

/// IPv4 addresses (also IPv4-mapped IPv6 ones) as they are; IPv6 by /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_lasts_for_the_ttl_and_covers_the_ipv6_64() {
        let cache = PregreetCache::default();
        cache.record_pass(ip("2001:db8:1:2::25"), DAY);
        cache.record_pass(ip("192.0.2.7"), DAY);
        assert!(cache.has_passed(ip("2001:db8:1:2:ffff::1"), DAY));
        assert!(!cache.has_passed(ip("2001:db8:1:3::25"), DAY));
        assert!(cache.has_passed(ip("::ffff:192.0.2.7"), DAY));
        assert!(!cache.has_passed(ip("192.0.2.8"), DAY));
        tokio::time::advance(DAY).await;
        assert!(!cache.has_passed(ip("192.0.2.7"), DAY));
        cache.record_pass(ip("192.0.2.7"), DAY);
        cache.forget(ip("192.0.2.7"));
        assert!(!cache.has_passed(ip("192.0.2.7"), DAY));
        cache.record_pass(ip("192.0.2.9"), Duration::ZERO);
        assert!(!cache.has_passed(ip("192.0.2.9"), DAY));
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_stays_bounded_and_keeps_the_newest() {
        let cache = PregreetCache::with_capacity(100);
        for i in 0..1000u32 {
            cache.record_pass(IpAddr::from(u32::to_be_bytes(0x0a00_0000 + i)), DAY);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(cache.len() <= 100, "{}", cache.len());
        assert!(cache.has_passed(IpAddr::from(u32::to_be_bytes(0x0a00_0000 + 999)), DAY));
        assert!(!cache.has_passed(IpAddr::from(u32::to_be_bytes(0x0a00_0000)), DAY));
    }
}
