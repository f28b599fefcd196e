//! Finished tests on disk: one JSON file per test in `data_dir/tests/`, written to a temporary
//! file, synced and renamed into place (a reader never sees half a result), and bounded: past
//! `max_stored_tests` the oldest files are removed. Ids start with the time they were made, so
//! the names sort oldest first and the bound needs no index beyond the directory listing.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::Rng;

use crate::record::TestRecord;

/// Longest stored file read back; a bigger one is not ours (a test's file is well below it:
/// the probe caps transcripts and replies).
const MAX_FILE: u64 = 64 << 20;

pub struct Store {
    dir: PathBuf,
    max: usize,
    /// Ids on disk, oldest first.
    ids: Mutex<BTreeSet<String>>,
}

/// A new test id: 11 hex digits of Unix milliseconds (in order until the year 2527), then 9
/// random letters and digits (not guessable: a result is seen by whoever has its link).
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut rng = rand::rng();
    let tail: String = (0..9)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{millis:011x}{tail}")
}

/// Whether `id` can be one of ours: checked before it becomes part of a path.
pub fn valid_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Store {
    /// Opens (creating) `data_dir/tests`, removes temporary files a crash left behind and
    /// applies the bound.
    pub fn open(data_dir: &Path, max: usize) -> io::Result<Store> {
        let dir = data_dir.join("tests");
        std::fs::create_dir_all(&dir)?;
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".json") {
                Some(id) if valid_id(id) => {
                    ids.insert(id.to_string());
                }
                _ if name.starts_with(".tmp") => {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        let store = Store {
            dir,
            max: max.max(1),
            ids: Mutex::new(ids),
        };
        store.prune()?;
        Ok(store)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a finished test durably, then removes the oldest past the bound.
    pub fn save(&self, record: &TestRecord) -> io::Result<()> {
        if !valid_id(&record.id) {
            return Err(io::Error::other("invalid test id"));
        }
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.dir)?;
        tmp.write_all(&json)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(&record.id)).map_err(|e| e.error)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.lock().insert(record.id.clone());
        self.prune()
    }

    /// A stored test; `Ok(None)` when there is none by that id.
    pub fn load(&self, id: &str) -> io::Result<Option<TestRecord>> {
        if !valid_id(id) {
            return Ok(None);
        }
        let file = match std::fs::File::open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_FILE), &mut text)?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// How many tests are stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the oldest files while more than `max` are stored.
    fn prune(&self) -> io::Result<()> {
        let mut ids = self.lock();
        while ids.len() > self.max {
            let Some(oldest) = ids.pop_first() else { break };
            match std::fs::remove_file(self.path(&oldest)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    ids.insert(oldest);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Door, RUNNING};

    fn record(id: &str) -> TestRecord {
        TestRecord {
            id: id.to_string(),
            url: format!("/tests/{id}"),
            target: "192.0.2.7:25".into(),
            door: Door::Api,
            verdict: RUNNING.into(),
            reason: String::new(),
            started_unix: 1,
            finished_unix: None,
            duration_ms: None,
            not_probed: Vec::new(),
            reports: Vec::new(),
            transcript: vec!["<<< 220 \\x1b[2J".into()],
        }
    }

    #[test]
    fn ids_sort_by_time_and_are_safe_in_paths() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), 20);
        assert!(valid_id(&a));
        for bad in ["", "../etc/passwd", "ABC", "a.json", &"a".repeat(41)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_oldest_results_go_past_the_bound_and_stay_gone_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        for id in [
            "00000000001aaaaaaaaa",
            "00000000002aaaaaaaaa",
            "00000000003aaaaaaaaa",
        ] {
            store.save(&record(id)).unwrap();
        }
        assert_eq!(store.len(), 2);
        assert!(store.load("00000000001aaaaaaaaa").unwrap().is_none());
        let kept = store
            .load("00000000003aaaaaaaaa")
            .unwrap()
            .expect("newest kept");
        assert_eq!(kept.transcript, ["<<< 220 \\x1b[2J"]);
        assert!(store.load("../../x").unwrap().is_none());
        std::fs::write(dir.path().join("tests/.tmpXYZ"), b"half").unwrap();
        let reopened = Store::open(dir.path(), 1).unwrap();
        assert_eq!(reopened.len(), 1);
        assert!(reopened.load("00000000002aaaaaaaaa").unwrap().is_none());
        assert!(
            !dir.path().join("tests/.tmpXYZ").exists(),
            "crash leftovers removed"
        );
    }
}
