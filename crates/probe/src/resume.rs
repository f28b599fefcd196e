//! `--resume FILE`: a scan that can be killed and started again.
//!
//! The state file is JSON Lines. The first line names the run (a fingerprint of the targets
//! and of every option that changes what a probe does); every further line is one finished
//! input (a target as given or expanded, with all the reports it produced), appended and
//! flushed the moment it finishes. A run started again with the same arguments reads the
//! file, prints the stored reports again, and probes only the inputs not in it, so the output
//! of the run that completes holds every target exactly once, whichever run probed it.
//!
//! A kill can cut the last line short; that line is ignored (and rewritten when its input is
//! probed again). Inputs that were in flight at the kill are simply probed again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::TargetReport;

/// The first line of a state file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Header {
    relayward_probe_resume: u32,
    /// [`fingerprint`] of the run.
    run: String,
    inputs: usize,
}

/// One finished input.
#[derive(Debug, Serialize, Deserialize)]
struct Finished {
    input: String,
    reports: Vec<serde_json::Value>,
}

const VERSION: u32 = 1;

/// An open state file.
pub struct ResumeState {
    path: PathBuf,
    file: File,
    done: HashSet<String>,
    /// Reports of the inputs finished by earlier runs, in file order, as JSON.
    previous: Vec<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("cannot use --resume {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--resume {0} was written by a run with other targets or options; give the same arguments, or another file to start afresh"
    )]
    OtherRun(String),
    #[error("--resume {0} is not a relayward probe state file")]
    NotAState(String),
}

/// A stable 64-bit FNV-1a digest, hex: the same arguments give the same fingerprint in every
/// build (std's hasher promises no such thing).
pub fn fingerprint(parts: &[String]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

impl ResumeState {
    /// Opens (or creates) the state file of the run `run` with `inputs` inputs.
    pub fn open(path: &Path, run: &str, inputs: usize) -> Result<Self, ResumeError> {
        let shown = path.display().to_string();
        let io = |source| ResumeError::Io {
            path: shown.clone(),
            source,
        };
        let header = Header {
            relayward_probe_resume: VERSION,
            run: run.to_string(),
            inputs,
        };
        let (done, previous, valid_len) = match File::open(path) {
            Ok(f) => read_state(f, &header, &shown)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashSet::new(), Vec::new(), 0),
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // Drop a line a kill cut short, so appends start on a fresh line.
        file.set_len(valid_len).map_err(io)?;
        let mut state = ResumeState {
            path: path.to_path_buf(),
            file,
            done,
            previous,
        };
        if valid_len == 0 {
            let line = serde_json::to_string(&header).map_err(|e| io(std::io::Error::other(e)))?;
            state.append(&line).map_err(io)?;
        } else {
            use std::io::Seek;
            state.file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        }
        Ok(state)
    }

    /// Whether an input (by its label) was finished by an earlier run.
    pub fn is_done(&self, input: &str) -> bool {
        self.done.contains(input)
    }

    /// The reports earlier runs stored, to be printed again.
    pub fn previous_reports(&self) -> &[serde_json::Value] {
        &self.previous
    }

    /// [`Self::previous_reports`], handed over: the state no longer holds them, so a resumed
    /// scan does not keep a second copy of every stored report for the rest of the run.
    pub fn take_previous_reports(&mut self) -> Vec<serde_json::Value> {
        std::mem::take(&mut self.previous)
    }

    pub fn finished_inputs(&self) -> usize {
        self.done.len()
    }

    /// Records a finished input: one line, written and flushed at once.
    pub fn record(&mut self, input: &str, reports: &[TargetReport]) -> std::io::Result<()> {
        let finished = Finished {
            input: input.to_string(),
            reports: reports
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect(),
        };
        let line = serde_json::to_string(&finished).map_err(std::io::Error::other)?;
        self.append(&line)?;
        self.done.insert(input.to_string());
        Ok(())
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let mut data = line.as_bytes().to_vec();
        data.push(b'\n');
        self.file.write_all(&data)?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

type Loaded = (HashSet<String>, Vec<serde_json::Value>, u64);

/// Reads a state file: the finished inputs, their reports, and the length of its complete
/// lines (a cut-off last line is left out).
fn read_state(file: File, expected: &Header, shown: &str) -> Result<Loaded, ResumeError> {
    let mut reader = BufReader::new(file);
    let mut done = HashSet::new();
    let mut previous = Vec::new();
    let mut valid_len: u64 = 0;
    let mut first = true;
    loop {
        let mut raw = Vec::new();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|source| ResumeError::Io {
                path: shown.to_string(),
                source,
            })?;
        if n == 0 || raw.last() != Some(&b'\n') {
            break;
        }
        if first {
            let header: Header = serde_json::from_slice(&raw)
                .map_err(|_| ResumeError::NotAState(shown.to_string()))?;
            if header != *expected {
                return Err(ResumeError::OtherRun(shown.to_string()));
            }
            first = false;
        } else {
            let Ok(finished) = serde_json::from_slice::<Finished>(&raw) else {
                break;
            };
            if done.insert(finished.input) {
                previous.extend(finished.reports);
            }
        }
        valid_len += n as u64;
    }
    Ok((done, previous, valid_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_separate_parts() {
        let a = fingerprint(&["127.0.0.1:25".into(), "x".into()]);
        assert_eq!(a, fingerprint(&["127.0.0.1:25".into(), "x".into()]));
        assert_ne!(a, fingerprint(&["127.0.0.1:25x".into()]));
        assert_eq!(fingerprint(&[]), "cbf29ce484222325");
    }

    #[test]
    fn a_cut_off_line_is_dropped_and_other_runs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.jsonl");
        {
            let mut s = ResumeState::open(&path, "run1", 2).expect("open");
            s.record("a:25", &[]).expect("record");
        }
        // A kill in the middle of the next line.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"input\":\"b:2").expect("write");
        drop(f);
        let mut s = ResumeState::open(&path, "run1", 2).expect("reopen");
        assert!(s.is_done("a:25") && !s.is_done("b:25"));
        s.record("b:25", &[]).expect("record");
        drop(s);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.ends_with("\"b:25\",\"reports\":[]}\n"), "{text}");
        assert!(matches!(
            ResumeState::open(&path, "run2", 2),
            Err(ResumeError::OtherRun(_))
        ));
    }

    /// A resumed scan takes the stored reports over (to print them again): the state keeps
    /// what it needs to go on (which inputs are done), not a second copy of every report.
    #[test]
    fn the_stored_reports_are_handed_over_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.jsonl");
        {
            let mut s = ResumeState::open(&path, "run1", 2).expect("open");
            let report = crate::scan::unreachable("a:25", "no route".into());
            s.record("a:25", &[report]).expect("record");
        }
        let mut s = ResumeState::open(&path, "run1", 2).expect("reopen");
        let taken = s.take_previous_reports();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0]["target"], "a:25");
        assert!(s.previous_reports().is_empty());
        assert!(s.is_done("a:25") && s.finished_inputs() == 1);
        s.record("b:25", &[]).expect("record");
    }
}
