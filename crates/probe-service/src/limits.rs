//! What keeps the service from being an attack tool by volume: per-client and per-target
//! hourly budgets and a global cap on tests running at once.
//!
//! Budgets are sliding windows of one hour: a test counts from the moment it starts, and the
//! refusal says when the oldest test in the window leaves it (`retry_after`). A client is its
//! address, an IPv6 client its /64 (one host owns a whole /64 and could rotate through it); a
//! target is the exact address probed, so two names for one server share its budget. A test is
//! charged only when it really starts: refusals cost nothing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The window every budget counts over.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// A network (IPv4 /24, IPv6 /48) may start this many times one client's hourly share between
/// all its addresses: whoever holds a network must not multiply the client budget by its
/// addresses (a /48, a site's usual share, has 65,536 /64s).
pub const NETWORK_SHARE: u32 = 4;

/// Keys tracked before stale ones are swept out (a flood of one-off clients cannot grow the
/// maps for an hour).
const SWEEP_AT: usize = 10_000;

/// Why a test may not start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The caller started its share of tests this hour.
    Client { retry_after: Duration },
    /// The caller's network ([`network_key`]) started its share of tests this hour.
    Network {
        /// `192.0.2.0/24`, `2001:db8:1::/48`.
        network: String,
        retry_after: Duration,
    },
    /// This address was tested its share of times this hour (by anyone).
    Target { ip: IpAddr, retry_after: Duration },
}

/// One hourly budget per key.
#[derive(Debug)]
struct Budget {
    per_hour: usize,
    used: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Budget {
    fn new(per_hour: u32) -> Self {
        Self {
            per_hour: per_hour.max(1) as usize,
            used: HashMap::new(),
        }
    }

    /// `None` when `key` may start one more test now; else how long until it may.
    fn wait_for(&mut self, key: IpAddr, now: Instant) -> Option<Duration> {
        let times = self.used.get_mut(&key)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() < self.per_hour {
            return None;
        }
        let oldest = *times.front()?;
        Some(WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    fn charge(&mut self, key: IpAddr, now: Instant) {
        if self.used.len() >= SWEEP_AT {
            self.used.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
        }
        self.used.entry(key).or_default().push_back(now);
    }
}

/// The service's budgets and its cap on running tests.
#[derive(Debug)]
pub struct Limits {
    /// Clients, targets, networks of clients.
    budgets: Mutex<(Budget, Budget, Budget)>,
    slots: Arc<Semaphore>,
    max_running: usize,
}

/// A test's place among the running ones; dropped when the test ends.
pub type Slot = OwnedSemaphorePermit;

impl Limits {
    pub fn new(max_running: usize, per_client: u32, per_target: u32) -> Self {
        Self {
            budgets: Mutex::new((
                Budget::new(per_client),
                Budget::new(per_target),
                Budget::new(per_client.saturating_mul(NETWORK_SHARE)),
            )),
            slots: Arc::new(Semaphore::new(max_running.max(1))),
            max_running: max_running.max(1),
        }
    }

    /// A running-test slot, or `None` when `max_concurrent_tests` are running.
    pub fn slot(&self) -> Option<Slot> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Whether `max_concurrent_tests` are running (a [`Limits::slot`] would fail now).
    pub fn is_full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Whether `client` could start a test now (checked before any name lookup, not charged).
    pub fn check_client(&self, client: IpAddr) -> Result<(), Denied> {
        let mut budgets = self.lock();
        let (clients, _, networks) = &mut *budgets;
        client_wait(clients, networks, client, Instant::now())
    }

    /// Checks the client's budget and every target's, and charges them all at once (or none):
    /// two requests racing cannot both take the last place.
    pub fn charge(&self, client: IpAddr, targets: &[IpAddr]) -> Result<(), Denied> {
        let now = Instant::now();
        let mut budgets = self.lock();
        let (clients, target_budget, networks) = &mut *budgets;
        client_wait(clients, networks, client, now)?;
        let mut distinct: Vec<IpAddr> = targets.iter().map(|ip| ip.to_canonical()).collect();
        distinct.sort();
        distinct.dedup();
        for &ip in &distinct {
            if let Some(retry_after) = target_budget.wait_for(ip, now) {
                return Err(Denied::Target { ip, retry_after });
            }
        }
        clients.charge(client_key(client), now);
        networks.charge(network_key(client).0, now);
        for ip in distinct {
            target_budget.charge(ip, now);
        }
        Ok(())
    }

    /// Waits until no test holds a slot, or `deadline` passes; true when all are done.
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        let all = u32::try_from(self.max_running).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout_at(deadline, self.slots.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Budget, Budget, Budget)> {
        // The budgets hold plain counters: a panic elsewhere cannot leave them inconsistent.
        self.budgets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `client` and its network may start one more test at `now`.
fn client_wait(
    clients: &mut Budget,
    networks: &mut Budget,
    client: IpAddr,
    now: Instant,
) -> Result<(), Denied> {
    if let Some(retry_after) = clients.wait_for(client_key(client), now) {
        return Err(Denied::Client { retry_after });
    }
    let (network, prefix) = network_key(client);
    match networks.wait_for(network, now) {
        Some(retry_after) => Err(Denied::Network {
            network: format!("{network}/{prefix}"),
            retry_after,
        }),
        None => Ok(()),
    }
}

/// The network a client's budget is shared with, and its prefix length: the IPv4 /24, the
/// IPv6 /48.
pub fn network_key(ip: IpAddr) -> (IpAddr, u8) {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (IpAddr::V6([s[0], s[1], s[2], 0, 0, 0, 0, 0].into()), 48)
        }
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            (IpAddr::V4([a, b, c, 0].into()), 24)
        }
    }
}

/// The key a client is counted under: its address, or its /64 for IPv6.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
        }
        v4 => v4,
    }
}

/// Whole seconds to wait, rounded up, at least 1 (what `retry_after` and `Retry-After` say).
pub fn retry_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_its_hourly_share_then_a_time_to_retry() {
        let limits = Limits::new(4, 2, 100);
        let client = ip("192.0.2.7");
        assert_eq!(limits.charge(client, &[ip("198.51.100.1")]), Ok(()));
        assert_eq!(limits.charge(client, &[ip("198.51.100.2")]), Ok(()));
        match limits.charge(client, &[ip("198.51.100.3")]) {
            Err(Denied::Client { retry_after }) => {
                assert!(retry_after > Duration::from_secs(3590), "{retry_after:?}");
                assert!(retry_after <= WINDOW);
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.check_client(client).is_err());
        // Another client is not affected; an IPv6 client counts by its /64.
        assert_eq!(
            limits.charge(ip("192.0.2.8"), &[ip("198.51.100.4")]),
            Ok(())
        );
        let v6 = Limits::new(4, 1, 100);
        assert_eq!(v6.charge(ip("2001:db8:1:2::1"), &[]), Ok(()));
        assert!(v6.charge(ip("2001:db8:1:2::ffff"), &[]).is_err());
        assert_eq!(v6.charge(ip("2001:db8:1:3::1"), &[]), Ok(()));
    }

    #[test]
    fn a_network_shares_four_client_budgets() {
        let limits = Limits::new(4, 1, 100);
        for host in 1..=4 {
            assert_eq!(limits.charge(ip(&format!("192.0.2.{host}")), &[]), Ok(()));
        }
        assert!(matches!(
            limits.check_client(ip("192.0.2.5")),
            Err(Denied::Network { network, .. }) if network == "192.0.2.0/24"
        ));
        assert_eq!(limits.charge(ip("192.0.3.1"), &[]), Ok(()));
        for net in 1..=4 {
            assert_eq!(
                limits.charge(ip(&format!("2001:db8:7:{net}::1")), &[]),
                Ok(())
            );
        }
        assert!(matches!(
            limits.charge(ip("2001:db8:7:ffff::1"), &[]),
            Err(Denied::Network { network, .. }) if network == "2001:db8:7::/48"
        ));
    }

    #[test]
    fn a_target_budget_is_shared_by_every_client_and_nothing_is_charged_on_refusal() {
        let limits = Limits::new(4, 10, 1);
        let target = ip("198.51.100.9");
        assert_eq!(limits.charge(ip("192.0.2.1"), &[target]), Ok(()));
        assert!(matches!(
            limits.charge(ip("192.0.2.2"), &[ip("198.51.100.10"), ip("::ffff:198.51.100.9")]),
            Err(Denied::Target { ip, .. }) if ip == target
        ));
        // The refused request charged neither the client nor its other target.
        assert_eq!(
            limits.charge(ip("192.0.2.2"), &[ip("198.51.100.10")]),
            Ok(())
        );
    }

    #[test]
    fn the_running_cap_hands_out_slots_until_full() {
        let limits = Limits::new(2, 10, 10);
        let a = limits.slot().expect("first");
        let _b = limits.slot().expect("second");
        assert!(limits.is_full());
        assert!(limits.slot().is_none(), "a third test must wait");
        drop(a);
        assert!(limits.slot().is_some());
    }

    #[test]
    fn retry_seconds_round_up() {
        assert_eq!(retry_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_seconds(Duration::from_secs(3600)), 3600);
        assert_eq!(retry_seconds(Duration::from_millis(3_599_001)), 3600);
    }
}
