//! The AUTH limiter: growing delays, bans, parallel guesses, no lockout of the real user, and
//! the bound on password checks running at once.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use relayward_server::auth::{
    AuthClient, AuthLimitSettings, AuthLimiter, AuthRefusal, bad_credentials_reply,
};

fn settings() -> AuthLimitSettings {
    AuthLimitSettings {
        failures_per_ip: 5,
        failures_per_login: 10,
        window: Duration::from_secs(3600),
        ban: Duration::from_secs(900),
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(16),
        max_entries: 1000,
        max_verifications: 2,
        verification_wait: Duration::from_millis(50),
    }
}

fn client(text: &str) -> AuthClient {
    AuthClient {
        ip: text.parse().unwrap(),
        trusted: false,
    }
}

fn trusted(text: &str) -> AuthClient {
    AuthClient {
        trusted: true,
        ..client(text)
    }
}

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

/// A wrong password from `who` for `login`: admitted, checked, failed; returns the delay.
fn fail(limiter: &AuthLimiter, who: AuthClient, login: &str, now: Instant) -> Duration {
    let attempt = limiter.begin(who, login, now).expect("admitted");
    limiter.failed(attempt, now)
}

/// The right password from `who`: admitted and succeeded.
fn succeed(limiter: &AuthLimiter, who: AuthClient, login: &str, now: Instant) {
    let attempt = limiter.begin(who, login, now).expect("admitted");
    limiter.succeeded(attempt, now);
}

#[test]
fn delays_grow_then_the_ip_is_banned() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let attacker = client("203.0.113.66");
    let mut delays = Vec::new();
    for i in 0..5 {
        let now = t0 + Duration::from_secs(i * 20);
        assert_eq!(limiter.check(attacker, now), Ok(()), "attempt {i}");
        delays.push(fail(&limiter, attacker, ALICE, now).as_secs());
    }
    assert_eq!(delays, [1, 2, 4, 8, 16]);
    let now = t0 + Duration::from_secs(100);
    let refusal = limiter.check(attacker, now).expect_err("banned");
    assert!(matches!(refusal, AuthRefusal::IpBanned { .. }));
    let reply = refusal.reply();
    assert_eq!(
        (reply.code, reply.enhanced.map(|e| e.to_string())),
        (454, Some("4.7.0".into()))
    );
    // Banned for every login, not just alice.
    assert!(limiter.begin(attacker, BOB, now).is_err());
    // The ban ends; the old failures are still remembered within the window, so the next
    // failure bans again at once.
    let later = t0 + Duration::from_secs(80 + 901);
    assert_eq!(limiter.check(attacker, later), Ok(()));
    limiter.record_failure(attacker, later);
    assert!(limiter.check(attacker, later).is_err());
}

/// Finding 4a: twenty guesses in parallel from one address were all checked, because the
/// failure was recorded only after each check. Counted at admission, the fifth bans and the
/// other fifteen are refused unchecked.
#[test]
fn parallel_guesses_count_against_each_other() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let attacker = client("203.0.113.7");
    let admitted: Vec<_> = (0..20)
        .filter_map(|_| limiter.begin(attacker, ALICE, t0).ok())
        .collect();
    assert_eq!(admitted.len(), 5);
    assert!(matches!(
        limiter.begin(attacker, BOB, t0),
        Err(AuthRefusal::IpBanned { .. })
    ));
    // One of the five was right: it takes its own failure back (and the ban it caused)...
    let mut admitted = admitted.into_iter();
    if let Some(right) = admitted.next() {
        limiter.succeeded(right, t0);
    }
    assert_eq!(limiter.check(attacker, t0), Ok(()));
    // ...while the four wrong ones stand: one more failure bans.
    for wrong in admitted {
        limiter.failed(wrong, t0);
    }
    fail(&limiter, attacker, ALICE, t0);
    assert!(limiter.check(attacker, t0).is_err());
}

/// Finding 4b: a success cleared the address's failures, so an attacker with one account
/// guessed another's password between logins to her own, ~30 guesses a minute. A success
/// now clears only its own login's failures.
#[test]
fn logging_into_ones_own_account_does_not_wipe_guesses_at_another() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let mallory = client("203.0.113.8");
    for _ in 0..2 {
        fail(&limiter, mallory, ALICE, t0);
        fail(&limiter, mallory, ALICE, t0);
        succeed(&limiter, mallory, "mallory@example.test", t0);
    }
    // 4 guesses at alice, 2 logins as mallory in between: the fifth guess bans all the same.
    fail(&limiter, mallory, ALICE, t0);
    assert!(matches!(
        limiter.check(mallory, t0),
        Err(AuthRefusal::IpBanned { .. })
    ));
}

/// Finding 4c: once alice's login had 10 failures from anywhere, one typo at home made her
/// home address "an address that failed" and she was refused with the right password. One
/// typo is forgiven now; a clean address is never refused.
#[test]
fn attack_on_a_login_does_not_lock_out_the_real_user() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    // 2 failures each from 10 attacker addresses: 20 failures on alice's login, no ban.
    for n in 0..10 {
        let attacker = client(&format!("203.0.113.{n}"));
        for _ in 0..2 {
            fail(&limiter, attacker, ALICE, t0);
        }
    }
    let now = t0 + Duration::from_secs(1);
    // Alice's login is refused from addresses that failed for it more than once...
    assert_eq!(
        limiter.begin(client("203.0.113.1"), ALICE, now).err(),
        Some(AuthRefusal::LoginThrottled)
    );
    // ...and another user from such an address is not (it has 2 < 5 failures).
    assert!(limiter.begin(client("203.0.113.1"), BOB, now).is_ok());
    // Alice at home mistypes once, then types the right password: she is in.
    let home = client("198.51.100.20");
    fail(&limiter, home, ALICE, now);
    succeed(&limiter, home, ALICE, now);
    // Her success ended the attack's hold on her login: the attackers start over.
    assert!(limiter.begin(client("203.0.113.1"), ALICE, now).is_ok());
    // From a clean address the owner is never refused, however long the attack goes on.
    for n in 20..40 {
        fail(&limiter, client(&format!("203.0.113.{n}")), ALICE, now);
    }
    assert!(limiter.begin(client("198.51.100.21"), ALICE, now).is_ok());
}

#[test]
fn login_failures_slow_only_addresses_that_failed() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    for n in 0..6 {
        fail(&limiter, client(&format!("203.0.113.{n}")), ALICE, t0);
    }
    // A new address failing alice's login gets the login's delay (7th failure: 16 s cap)...
    assert_eq!(
        fail(&limiter, client("192.0.2.50"), ALICE, t0),
        Duration::from_secs(16)
    );
    // ...while a failure on another login from a new address starts at 1 s.
    assert_eq!(
        fail(&limiter, client("192.0.2.51"), "bob", t0),
        Duration::from_secs(1)
    );
}

/// Issue 11 item 3: trusted networks (the admin's own machines, where her users are) are
/// slowed like anyone but never banned or refused, so probing her own server from there does
/// not lock them out.
#[test]
fn trusted_networks_are_slowed_never_banned() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let webmail = trusted("127.0.0.1");
    let delays: Vec<u64> = (0..12)
        .map(|_| fail(&limiter, webmail, ALICE, t0).as_secs())
        .collect();
    assert_eq!(delays[..5], [1, 2, 4, 8, 16]);
    assert!(delays[5..].iter().all(|d| *d == 16));
    assert_eq!(limiter.check(webmail, t0), Ok(()));
    // The failures still count for alice's login: a stranger failing it waits the longest.
    assert_eq!(
        fail(&limiter, client("203.0.113.9"), ALICE, t0),
        Duration::from_secs(16)
    );
    succeed(&limiter, webmail, ALICE, t0);
}

#[test]
fn ipv6_clients_are_counted_by_their_64() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    for n in 1..=5 {
        limiter.record_failure(client(&format!("2001:db8:1:2::{n}")), t0);
    }
    assert!(
        limiter.check(client("2001:db8:1:2:ffff::1"), t0).is_err(),
        "same /64"
    );
    assert_eq!(
        limiter.check(client("2001:db8:1:3::1"), t0),
        Ok(()),
        "other /64"
    );
    // IPv4-mapped addresses count as their IPv4 address.
    for _ in 0..5 {
        limiter.record_failure(client("::ffff:192.0.2.9"), t0);
    }
    assert!(limiter.check(client("192.0.2.9"), t0).is_err());
}

#[test]
fn failures_expire_after_the_window() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let who = client("198.51.100.4");
    for _ in 0..4 {
        limiter.record_failure(who, t0);
    }
    let later = t0 + Duration::from_secs(3601);
    assert_eq!(limiter.record_failure(who, later), Duration::from_secs(1));
    assert_eq!(limiter.check(who, later), Ok(()));
}

#[test]
fn a_withdrawn_attempt_counts_for_nothing() {
    let limiter = AuthLimiter::new(settings());
    let t0 = Instant::now();
    let who = client("198.51.100.5");
    for _ in 0..10 {
        let attempt = limiter.begin(who, ALICE, t0).expect("admitted");
        limiter.withdraw(attempt);
    }
    assert_eq!(fail(&limiter, who, ALICE, t0), Duration::from_secs(1));
}

#[test]
fn memory_is_bounded() {
    let limiter = AuthLimiter::new(AuthLimitSettings {
        max_entries: 100,
        ..settings()
    });
    let t0 = Instant::now();
    for n in 0..1000u32 {
        let who = AuthClient {
            ip: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)),
            trusted: false,
        };
        fail(
            &limiter,
            who,
            &format!("user{n}"),
            t0 + Duration::from_millis(u64::from(n)),
        );
    }
    let (ips, logins) = limiter.tracked_entries();
    assert!(ips <= 100 && logins <= 100, "{ips} IPs, {logins} logins");
    // The most recent entries survive.
    let last = AuthClient {
        ip: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 999)),
        trusted: false,
    };
    for _ in 0..4 {
        limiter.record_failure(last, t0 + Duration::from_secs(2));
    }
    assert!(limiter.check(last, t0 + Duration::from_secs(2)).is_err());
}

/// Finding 3: nothing bounded how many argon2 checks (19 MiB each) ran at once. At most
/// `max_verifications` slots are handed out; the next attempt waits `verification_wait`,
/// then is refused `454 4.7.0`, and gets a slot as soon as one is returned.
#[tokio::test]
async fn password_checks_are_bounded_and_the_excess_is_refused() {
    let limiter = AuthLimiter::new(settings());
    let first = limiter.verification_slot().await.expect("slot 1");
    let _second = limiter.verification_slot().await.expect("slot 2");
    let refused = limiter
        .verification_slot()
        .await
        .expect_err("no third slot");
    assert_eq!(refused, AuthRefusal::Busy);
    assert_eq!(
        refused.reply().to_string(),
        "454 4.7.0 Too many authentication attempts in progress, try again later"
    );
    drop(first);
    assert!(limiter.verification_slot().await.is_ok());
}

#[test]
fn bad_credentials_reply_is_535() {
    let reply = bad_credentials_reply();
    assert_eq!(
        reply.to_string(),
        "535 5.7.8 Authentication credentials invalid"
    );
}
