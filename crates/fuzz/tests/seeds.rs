//! Every fuzz target over its seeds (`fuzz/seeds/NAME/`), on stable, in every CI run: the
//! targets' checks hold for each seed and for each of its prefixes (each line's end, for
//! sessions), and the session seeds reach what they are named for.

use std::path::PathBuf;

use relayward_fuzz::{TARGETS, session};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("seed entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("seed"))
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
    seeds
}

/// Runs `check` on `input`, naming the seed and the input if it panics.
fn run_named(target: &str, name: &str, input: &[u8], check: fn(&[u8])) {
    if let Err(panic) = std::panic::catch_unwind(|| check(input)) {
        eprintln!(
            "fuzz target {target}, seed {name}, input {:?}",
            String::from_utf8_lossy(input)
        );
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn every_target_holds_on_its_seeds_and_their_prefixes() {
    for (target, check) in TARGETS {
        for (name, seed) in seeds(target) {
            let cuts: Vec<usize> = if target == "session" {
                // A session costs a runtime (and a TLS handshake): cut at line ends only.
                (1..seed.len()).filter(|&i| seed[i - 1] == b'\n').collect()
            } else {
                (0..seed.len()).collect()
            };
            for cut in cuts {
                run_named(target, &name, &seed[..cut], check);
            }
            run_named(target, &name, &seed, check);
        }
    }
}

fn heard(name: &str) -> session::Heard {
    let (_, seed) = seeds("session")
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no session seed {name}"));
    session::replay(&seed).expect("a session")
}

#[test]
fn session_seeds_reach_what_they_are_named_for() {
    let local = heard("mx-local-delivery");
    assert_eq!(local.codes, [220, 250, 250, 250, 354, 250, 221]);
    assert_eq!(local.queued, 1);

    let relay = heard("mx-relay-refused");
    assert_eq!(relay.queued, 0);
    assert!(relay.codes[3..6].iter().all(|&c| c >= 500), "{relay:?}");

    let authenticated = heard("submissions-auth-relay");
    assert_eq!(
        authenticated.codes,
        [220, 250, 235, 250, 250, 354, 250, 221]
    );
    assert_eq!(authenticated.queued, 1);

    let wrong = heard("submissions-auth-wrong");
    assert_eq!(wrong.queued, 0);
    assert!(wrong.codes.contains(&535), "{wrong:?}");

    // RFC 2920: after EHLO, the rest at once; the relay attempt refused, the rest queued.
    let pipelined = heard("pipelined-mx-local-delivery");
    assert_eq!(pipelined.codes, [220, 250, 250, 250, 554, 354, 250, 221]);
    assert_eq!(pipelined.queued, 1);
    let pipelined_auth = heard("pipelined-submissions-auth");
    assert_eq!(pipelined_auth.queued, 1, "{pipelined_auth:?}");

    // Pipelining after HELO (no PIPELINING offered) and talking before the banner: closed.
    assert_eq!(heard("pipelined-helo").codes, [220, 250, 554]);
    assert_eq!(heard("robot-mx").codes, [220, 554]);

    let smuggled = heard("mx-smuggling");
    assert!(smuggled.queued <= 1, "{smuggled:?}");
}
