//! The AUTH failure limiter: growing delays, bans, and no lockout of the real user.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use relayward_server::auth::{AuthLimitSettings, AuthLimiter, AuthRefusal, bad_credentials_reply};

fn settings() -> AuthLimitSettings {
    AuthLimitSettings {
        failures_per_ip: 5,
        failures_per_login: 10,
        window: Duration::from_secs(3600),
        ban: Duration::from_secs(900),
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(16),
        max_entries: 1000,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const ALICE: Option<&str> = Some("alice@example.test");

#[test]
fn delays_grow_then_the_ip_is_banned() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let attacker = ip("203.0.113.66");
    let mut delays = Vec::new();
    for i in 0..5 {
        let now = t0 + Duration::from_secs(i * 20);
        assert_eq!(limiter.check(attacker, ALICE, now), Ok(()), "attempt {i}");
        delays.push(limiter.record_failure(attacker, ALICE, now).as_secs());
    }
    assert_eq!(delays, [1, 2, 4, 8, 16]);
    let now = t0 + Duration::from_secs(100);
    let refusal = limiter.check(attacker, None, now).expect_err("banned");
    assert!(matches!(refusal, AuthRefusal::IpBanned { .. }));
    let reply = refusal.reply();
    assert_eq!(
        (reply.code, reply.enhanced.map(|e| e.to_string())),
        (454, Some("4.7.0".into()))
    );
    // Banned for every login, not just alice.
    assert!(
        limiter
            .check(attacker, Some("bob@example.test"), now)
            .is_err()
    );
    // The ban ends; the old failures are still remembered within the window, so the next
    // failure bans again at once.
    let later = t0 + Duration::from_secs(80 + 901);
    assert_eq!(limiter.check(attacker, None, later), Ok(()));
    limiter.record_failure(attacker, None, later);
    assert!(limiter.check(attacker, None, later).is_err());
}

#[test]
fn failures_expire_after_the_window() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let client = ip("198.51.100.4");
    for _ in 0..4 {
        limiter.record_failure(client, None, t0);
    }
    let later = t0 + Duration::from_secs(3601);
    assert_eq!(
        limiter.record_failure(client, None, later),
        Duration::from_secs(1)
    );
    assert_eq!(limiter.check(client, None, later), Ok(()));
}

/// An attacker hammering alice's login from A (and then from many addresses) must not lock
/// alice out from B, where she has not failed.
#[test]
fn attack_on_a_login_does_not_lock_out_the_real_user() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    // 4 failures each from 10 attacker addresses: 40 failures on alice's login, no ban.
    for n in 0..10 {
        let attacker = ip(&format!("203.0.113.{n}"));
        for _ in 0..4 {
            limiter.record_failure(attacker, ALICE, t0);
        }
    }
    let now = t0 + Duration::from_secs(1);
    // Alice, from home, with no failures of her own: allowed, and no delay on success.
    let home = ip("198.51.100.20");
    assert_eq!(limiter.check(home, ALICE, now), Ok(()));
    limiter.record_success(home, now);
    assert_eq!(limiter.check(home, ALICE, now), Ok(()));
    // Another user from an attacker address is not banned either (A has 4 < 5 failures)...
    assert_eq!(
        limiter.check(ip("203.0.113.1"), Some("bob@example.test"), now),
        Ok(())
    );
    // ...but alice's login is refused from addresses that failed themselves.
    assert_eq!(
        limiter.check(ip("203.0.113.1"), ALICE, now),
        Err(AuthRefusal::LoginThrottled)
    );
    // A single mistyped password at home then counts alice's attack for her too: tolerable,
    // and it ends with the window. It never happens to a clean address.
    limiter.record_failure(home, ALICE, now);
    assert_eq!(
        limiter.check(home, ALICE, now),
        Err(AuthRefusal::LoginThrottled)
    );
    assert_eq!(limiter.check(ip("198.51.100.21"), ALICE, now), Ok(()));
}

#[test]
fn login_failures_slow_only_addresses_that_failed() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    for n in 0..6 {
        limiter.record_failure(ip(&format!("203.0.113.{n}")), ALICE, t0);
    }
    // A new address failing alice's login gets the login's delay (7th failure: 16 s cap)...
    assert_eq!(
        limiter.record_failure(ip("192.0.2.50"), ALICE, t0),
        Duration::from_secs(16)
    );
    // ...while a failure on another login from a new address starts at 1 s.
    assert_eq!(
        limiter.record_failure(ip("192.0.2.51"), Some("bob"), t0),
        Duration::from_secs(1)
    );
}

#[test]
fn ipv6_clients_are_counted_by_their_64() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    for n in 1..=5 {
        limiter.record_failure(ip(&format!("2001:db8:1:2::{n}")), None, t0);
    }
    assert!(
        limiter.check(ip("2001:db8:1:2:ffff::1"), None, t0).is_err(),
        "same /64"
    );
    assert_eq!(
        limiter.check(ip("2001:db8:1:3::1"), None, t0),
        Ok(()),
        "other /64"
    );
    // IPv4-mapped addresses count as their IPv4 address.
    for _ in 0..5 {
        limiter.record_failure(ip("::ffff:192.0.2.9"), None, t0);
    }
    assert!(limiter.check(ip("192.0.2.9"), None, t0).is_err());
}

#[test]
fn success_clears_the_address() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let client = ip("198.51.100.7");
    for _ in 0..4 {
        limiter.record_failure(client, Some("carol"), t0);
    }
    limiter.record_success(client, t0);
    assert_eq!(
        limiter.record_failure(client, None, t0),
        Duration::from_secs(1)
    );
}

#[test]
fn memory_is_bounded() {
    let limiter = AuthLimiter::new(AuthLimitSettings {
        max_entries: 100,
        ..settings()
    });
    let t0 = Instant::now();
    for n in 0..1000u32 {
        let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        limiter.record_failure(
            client,
            Some(&format!("user{n}")),
            t0 + Duration::from_millis(u64::from(n)),
        );
    }
    let (ips, logins) = limiter.tracked_entries();
    assert!(ips <= 100 && logins <= 100, "{ips} IPs, {logins} logins");
    // The most recent entries survive.
    let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
    for _ in 0..4 {
        limiter.record_failure(last, None, t0 + Duration::from_secs(2));
    }
    assert!(
        limiter
            .check(last, None, t0 + Duration::from_secs(2))
            .is_err()
    );
}

#[test]
fn bad_credentials_reply_is_535() {
    let reply = bad_credentials_reply();
    assert_eq!(
        reply.to_string(),
        "535 5.7.8 Authentication credentials invalid"
    );
}
