//! Recovery at open, run only when no other process has the spool open (see the spool docs).
//! It checks each message's header and size, not its content's checksum (that would read the
//! whole queue at every start): an entry a crash left torn under `syncfs` is found when the
//! runner first reads its content, and moved to `corrupt/` then.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::Path;

use relayward_protocol::text::Escaped;

use super::entry::{SlotContent, parse_state, read_header, slot_content};
use super::{CONTENT_EXT, Layout, RecoveryReport, STATE_EXT};
use crate::MessageId;
use crate::fsutil::{sync_dir, try_lock_exclusive};

/// Files of one id found in `msg/`.
#[derive(Default)]
struct Found {
    message: bool,
    state: bool,
}

/// Empties `tmp/`, removes state files whose message is gone, and moves unreadable entries to
/// `corrupt/` with a log line. Never fails because of one bad entry.
pub(super) fn recover(layout: &Layout) -> io::Result<RecoveryReport> {
    let mut report = RecoveryReport {
        temp_removed: clear_dir(&layout.tmp)?,
        ..RecoveryReport::default()
    };
    let (mut entries, strays, slots) = scan_msg_dir(layout)?;
    for slot in slots {
        recover_slot(layout, &slot, &mut entries, &mut report);
    }
    for name in strays {
        quarantine(layout, &name, "not a queue file", &mut report);
    }
    for (id, found) in entries {
        recover_entry(layout, &id, &found, &mut report);
    }
    sync_dir(&layout.msg)?;
    sync_dir(&layout.corrupt)?;
    if report != RecoveryReport::default() {
        tracing::info!(?report, "queue recovered");
    }
    Ok(report)
}

/// Decides the fate of one id's files.
fn recover_entry(layout: &Layout, id: &MessageId, found: &Found, report: &mut RecoveryReport) {
    let message_name = format!("{id}.{CONTENT_EXT}");
    let state_name = format!("{id}.{STATE_EXT}");
    if !found.message {
        // The second half of a removal (the message file goes first): nothing to keep.
        match fs::remove_file(layout.state(id)) {
            Ok(()) => report.orphans_removed += 1,
            Err(err) => tracing::warn!(%id, error = %err, "cannot remove orphan queue state"),
        }
        return;
    }
    if let Err(reason) = check_message(layout, id) {
        quarantine(layout, &message_name, &reason, report);
        if found.state {
            quarantine(layout, &state_name, &reason, report);
        }
        return;
    }
    // A bad state file alone: the message falls back to its initial state, so recipients may
    // be tried again (a duplicate), which beats losing the message.
    if found.state
        && let Err(reason) = check_state(layout, id)
    {
        quarantine(layout, &state_name, &reason, report);
    }
    report.messages += 1;
}

/// A slot a crash left (see [`settle_slot`]); a message it names joins the entries.
fn recover_slot(
    layout: &Layout,
    slot: &str,
    entries: &mut BTreeMap<MessageId, Found>,
    report: &mut RecoveryReport,
) {
    if let Some(id) = settle_slot(layout, slot, report) {
        entries.entry(id).or_default().message = true;
    }
}

/// Settles a slot no living process holds (its maker locks it until it is renamed or
/// removed): a complete message — committed in place, its rename to `<id>.eml` lost — gets
/// its name (returned); an unfinished one (free, or never acknowledged) is removed; a second
/// name of a message that has its own (a rename half on disk) is removed; anything else is
/// quarantined. A slot that is held is left alone.
fn settle_slot(layout: &Layout, slot: &str, report: &mut RecoveryReport) -> Option<MessageId> {
    let path = layout.msg.join(slot);
    let mut file = File::open(&path).ok()?;
    if !try_lock_exclusive(&file).unwrap_or(false) {
        return None;
    }
    let mut bytes = Vec::new();
    if let Err(err) = file.read_to_end(&mut bytes) {
        tracing::warn!(file = %path.display(), error = %err, "cannot read a queue slot");
        return None;
    }
    match slot_content(bytes) {
        SlotContent::Complete(id) if !layout.message(&id).exists() => {
            match fs::rename(&path, layout.message(&id)) {
                Ok(()) => Some(id),
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot name a recovered queue message");
                    None
                }
            }
        }
        SlotContent::Complete(id) if same_file(&path, &layout.message(&id)) => {
            remove_slot(&path, report);
            None
        }
        SlotContent::Complete(id) => {
            let reason = format!("a copy of message {id}, which exists");
            quarantine(layout, slot, &reason, report);
            None
        }
        SlotContent::Unfinished => {
            remove_slot(&path, report);
            None
        }
        SlotContent::Damaged(reason) => {
            quarantine(layout, slot, &reason, report);
            None
        }
    }
}

fn remove_slot(path: &Path, report: &mut RecoveryReport) {
    match fs::remove_file(path) {
        Ok(()) => report.temp_removed += 1,
        Err(err) => {
            tracing::warn!(file = %path.display(), error = %err, "cannot remove a queue slot")
        }
    }
}

/// Whether two names are links to one file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Settles the slots that processes which died left, when recovery did not run because
/// another process holds the spool (see [`settle_slot`]; slots of living processes are held
/// and left alone).
pub(super) fn adopt_slots(layout: &Layout) -> io::Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let mut named = false;
    for entry in fs::read_dir(&layout.msg)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if super::slots::is_slot_name(&name) && settle_slot(layout, &name, &mut report).is_some() {
            report.messages += 1;
            named = true;
        }
    }
    if named {
        sync_dir(&layout.msg)?;
    }
    if report != RecoveryReport::default() {
        tracing::info!(
            ?report,
            "queue files left by a process that stopped were settled"
        );
    }
    Ok(report)
}

/// Sorts the names in `msg/` into queue files (by id), strays and slots.
type Scanned = (BTreeMap<MessageId, Found>, Vec<String>, Vec<String>);

fn scan_msg_dir(layout: &Layout) -> io::Result<Scanned> {
    let mut entries: BTreeMap<MessageId, Found> = BTreeMap::new();
    let mut strays = Vec::new();
    let mut slots = Vec::new();
    for entry in fs::read_dir(&layout.msg)? {
        let name = entry?.file_name();
        let text = name.to_string_lossy().into_owned();
        if super::slots::is_slot_name(&text) {
            slots.push(text);
            continue;
        }
        match super::split_queue_name(&text) {
            Some((id, CONTENT_EXT)) => entries.entry(id).or_default().message = true,
            Some((id, STATE_EXT)) => entries.entry(id).or_default().state = true,
            _ => strays.push(text),
        }
    }
    Ok((entries, strays, slots))
}

/// Checks a message file's header and that its content has at least the recorded size.
fn check_message(layout: &Layout, id: &MessageId) -> Result<(), String> {
    let file = File::open(layout.message(id)).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    let (state, header_len) = read_header(id, &file).map_err(|e| e.to_string())?;
    let content_len = file_len.saturating_sub(header_len);
    // Longer is a preallocated file's padding (zeros, checked when the content is read).
    if content_len < state.size {
        return Err(format!(
            "content has {content_len} octets, header says {}",
            state.size
        ));
    }
    Ok(())
}

fn check_state(layout: &Layout, id: &MessageId) -> Result<(), String> {
    let bytes = fs::read(layout.state(id)).map_err(|e| format!("cannot read state: {e}"))?;
    parse_state(id, &bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Moves a file from `msg/` to `corrupt/`, logging why; never fails the open.
fn quarantine(layout: &Layout, name: &str, reason: &str, report: &mut RecoveryReport) {
    let from = layout.msg.join(name);
    let mut to = layout.corrupt.join(name);
    if to.exists() {
        to = layout
            .corrupt
            .join(format!("{name}.{:016x}", rand::random::<u64>()));
    }
    tracing::warn!(file = %from.display(), reason = %Escaped(reason), "quarantining corrupt queue entry");
    match fs::rename(&from, &to) {
        Ok(()) => report.quarantined.push(name.to_owned()),
        Err(err) => tracing::warn!(file = %from.display(), error = %err, "cannot quarantine"),
    }
}

/// Removes every entry of a directory; returns how many.
fn clear_dir(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(err) => tracing::warn!(file = %path.display(), error = %err, "cannot remove temp"),
        }
    }
    Ok(removed)
}
