//! The bodies of relayward's fuzz targets, one module a target, each a plain
//! `fn run(input: &[u8])` that panics when the property it checks is broken.
//!
//! Two runners call them:
//! - `fuzz/` (cargo-fuzz, libFuzzer, nightly): each `fuzz_targets/NAME.rs` is one line,
//!   `fuzz_target!(|input: &[u8]| relayward_fuzz::NAME::run(input))`, fed generated input;
//! - `tests/seeds.rs` (stable, part of `cargo test --workspace`): every file of
//!   `fuzz/seeds/NAME/` through the same function, so CI exercises every target and its checks
//!   without nightly, and libFuzzer starts from the same seeds.
//!
//! The targets:
//! - [`command`]: the command parser; whatever parses reads back the same from `to_line`.
//! - [`path`]: the RFC 5321 path parsers refuse, never panic.
//! - [`line`]: the line buffer gives the same lines however reads split the stream.
//! - [`data`]: DATA framing gives the same outcome and content however reads split it.
//! - [`reply`]: the reply parser (the probe and the delivery client read hostile servers with
//!   it) assembles only consistent replies, which read back the same from their wire form.
//! - [`session`]: whole SMTP sessions in-process: no panic, every line written is a reply, and
//!   a message is queued exactly when a `250 … queued as` says so.

pub mod command;
pub mod data;
pub mod line;
pub mod path;
pub mod reply;
pub mod session;

/// The property of the stream targets: `read` gives the same result for the stream whole as
/// for the stream in two reads. The first byte of `input` says where the second read starts;
/// the rest is the stream.
pub fn same_however_split<T: PartialEq + std::fmt::Debug>(input: &[u8], read: fn(&[&[u8]]) -> T) {
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let whole = read(&[stream]);
    let (head, tail) = stream.split_at(usize::from(cut).min(stream.len()));
    assert_eq!(read(&[head, tail]), whole);
}

/// A target's body: panics when its property breaks.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/seeds/NAME/` and `cargo fuzz run NAME` spell them.
pub const TARGETS: [(&str, Target); 6] = [
    ("command", command::run),
    ("data", data::run),
    ("line", line::run),
    ("path", path::run),
    ("reply", reply::run),
    ("session", session::run),
];
