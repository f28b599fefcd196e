//! Recovery at open, run only when no other process has the spool open (see the spool docs).
//! It checks each message's header and size, not its content's checksum (that would read the
//! whole queue at every start): an entry a crash left torn under `syncfs` is found when the
//! runner first reads its content, and moved to `corrupt/` then.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use relayward_protocol::text::Escaped;

use super::entry::{complete_message_id, parse_state, read_header};
use super::{CONTENT_EXT, Layout, RecoveryReport, STATE_EXT};
use crate::MessageId;
use crate::fsutil::sync_dir;

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

/// A slot a crash left: a complete message (committed in place, its rename to `<id>.eml` not
/// yet on disk) gets its name; anything else (free, or written but never acknowledged) goes.
fn recover_slot(
    layout: &Layout,
    slot: &str,
    entries: &mut BTreeMap<MessageId, Found>,
    report: &mut RecoveryReport,
) {
    let path = layout.msg.join(slot);
    let complete = fs::read(&path)
        .ok()
        .and_then(|bytes| complete_message_id(&bytes));
    match complete {
        Some(id) if !entries.get(&id).is_some_and(|found| found.message) => {
            match fs::rename(&path, layout.message(&id)) {
                Ok(()) => entries.entry(id).or_default().message = true,
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot name a recovered queue message")
                }
            }
        }
        _ => match fs::remove_file(&path) {
            Ok(()) => report.temp_removed += 1,
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot remove a queue slot")
            }
        },
    }
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

/// Checks a message file's header and that its content has the recorded size.
fn check_message(layout: &Layout, id: &MessageId) -> Result<(), String> {
    let file = File::open(layout.message(id)).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    let (state, header_len) = read_header(id, &file).map_err(|e| e.to_string())?;
    let content_len = file_len.saturating_sub(header_len);
    if content_len != state.size {
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
