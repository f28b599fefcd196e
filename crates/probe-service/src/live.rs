//! A running test as its readers see it: the record so far and the transcript growing line by
//! line, with a wake-up for every change so the telnet door and the SSE stream can follow it
//! as it happens (from any line on: a page that reloads, an `EventSource` that reconnects).

use std::sync::Mutex;

use tokio::sync::watch;

use crate::record::TestRecord;

/// Transcript lines kept per test (the probe already caps each target's dialogue; a test of
/// several addresses and ports is bounded again as a whole).
pub const MAX_TEST_LINES: usize = 50_000;
/// Bytes of dialogue kept per test. The probe keeps up to 2 MiB of one address's replies, and
/// a test probes up to 8: a talkative server would make each of its tests megabytes on disk
/// and in every answer serving it. An honest test is tens of KB.
pub const MAX_TEST_BYTES: usize = 1 << 20;

pub struct LiveTest {
    record: Mutex<TestRecord>,
    /// Bytes of dialogue kept, lines not kept.
    kept: Mutex<(usize, usize)>,
    /// Bumped on every new line and when the test ends.
    changed: watch::Sender<u64>,
}

impl LiveTest {
    pub fn new(record: TestRecord) -> Self {
        Self {
            record: Mutex::new(record),
            kept: Mutex::new((0, 0)),
            changed: watch::channel(0).0,
        }
    }

    pub fn id(&self) -> String {
        self.lock().id.clone()
    }

    /// Appends one line of the dialogue (already escaped by the probe) and wakes the readers;
    /// past [`MAX_TEST_LINES`] or [`MAX_TEST_BYTES`] it is not kept.
    pub fn push_line(&self, line: &str) {
        {
            let mut record = self.lock();
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let (bytes, dropped) = &mut *kept;
            if *dropped == 0
                && record.transcript.len() < MAX_TEST_LINES
                && *bytes + line.len() <= MAX_TEST_BYTES
            {
                *bytes += line.len();
                record.transcript.push(line.to_string());
            } else {
                if *dropped == 0 {
                    record
                        .transcript
                        .push("[further lines not kept]".to_string());
                }
                *dropped += 1;
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Appends one of the service's own lines (a heading, an address not probed, a verdict):
    /// always kept, also after the dialogue's limits — there are a few per address.
    pub fn push_own_line(&self, line: &str) {
        self.lock().transcript.push(line.to_string());
        self.changed.send_modify(|n| *n += 1);
    }

    /// The record as it stands.
    pub fn snapshot(&self) -> TestRecord {
        self.lock().clone()
    }

    /// Transcript lines from index `from` on, and whether the test is over (no more will come).
    pub fn lines_from(&self, from: usize) -> (Vec<String>, bool) {
        let record = self.lock();
        let lines = record.transcript.get(from..).unwrap_or_default().to_vec();
        (lines, !record.is_running())
    }

    /// Changes the record (the end of the test) and wakes the readers.
    pub fn update(&self, change: impl FnOnce(&mut TestRecord)) {
        change(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
    }

    /// A receiver that wakes on every change after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TestRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Follows a test: calls `emit` with every line from `from` on as it comes, returns when the
/// test is over and every line was handed out. `emit` returning false (the reader left) stops.
pub async fn follow(live: &LiveTest, from: usize, emit: &mut impl AsyncEmit) -> usize {
    let mut rx = live.subscribe();
    let mut next = from;
    loop {
        let (lines, done) = live.lines_from(next);
        for line in &lines {
            if !emit.emit(line).await {
                return next;
            }
            next += 1;
        }
        if done || rx.changed().await.is_err() {
            return next;
        }
    }
}

/// Where [`follow`] hands lines: the telnet client, an SSE channel.
pub trait AsyncEmit {
    fn emit(&mut self, line: &str) -> impl std::future::Future<Output = bool> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Door, RUNNING};
    use std::sync::Arc;

    struct Collect(Arc<Mutex<Vec<String>>>);
    impl AsyncEmit for Collect {
        async fn emit(&mut self, line: &str) -> bool {
            self.0.lock().unwrap().push(line.to_string());
            true
        }
    }

    fn live() -> Arc<LiveTest> {
        Arc::new(LiveTest::new(TestRecord {
            id: "x".into(),
            url: "/tests/x".into(),
            target: "192.0.2.7:25".into(),
            door: Door::Web,
            verdict: RUNNING.into(),
            reason: String::new(),
            started_unix: 0,
            finished_unix: None,
            duration_ms: None,
            not_probed: Vec::new(),
            reports: Vec::new(),
            transcript: Vec::new(),
        }))
    }

    #[test]
    fn the_dialogue_is_capped_in_bytes_and_the_service_s_own_lines_are_kept() {
        let test = live();
        let line = "x".repeat(1000);
        for _ in 0..(MAX_TEST_BYTES / 1000 + 10) {
            test.push_line(&line);
        }
        test.push_line("<<< 250 short");
        test.push_own_line("Verdict: CLOSED - all 66 relay tricks refused");
        let transcript = test.snapshot().transcript;
        let kept = MAX_TEST_BYTES / 1000;
        assert_eq!(transcript.len(), kept + 2);
        assert_eq!(transcript[kept], "[further lines not kept]");
        assert_eq!(
            transcript[kept + 1],
            "Verdict: CLOSED - all 66 relay tricks refused"
        );
    }

    #[tokio::test]
    async fn a_reader_gets_every_line_as_it_comes_and_stops_at_the_end() {
        let test = live();
        test.push_line("Connecting to 192.0.2.7:25 ...");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (test, seen) = (Arc::clone(&test), Arc::clone(&seen));
            tokio::spawn(async move { follow(&test, 0, &mut Collect(seen)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "the backlog first");
        test.push_line("<<< 220 mx");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(seen.lock().unwrap().len(), 2, "then each line as it comes");
        assert!(!reader.is_finished());
        test.update(|r| r.verdict = "CLOSED".into());
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), reader)
            .await
            .expect("ends with the test")
            .unwrap();
        assert_eq!(next, 2);
        // A late reader starting at line 1 gets the rest and returns at once.
        let late = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(follow(&test, 1, &mut Collect(Arc::clone(&late))).await, 2);
        assert_eq!(*late.lock().unwrap(), ["<<< 220 mx"]);
    }
}
