//! `relayward queue summary`: the queue's shape, like Postfix's `qshape`: pending recipients
//! counted by destination domain and by how long their message has waited, so a domain that
//! stopped taking mail stands out (its row fills the right-hand columns).

use std::collections::BTreeMap;

use relayward_protocol::text::escape_control;
use relayward_queue::{Queue, QueueError, QueuedMessage};
use serde::Serialize;

use crate::admin::{Render, columns};
use crate::runner::unix_now;

/// Upper bounds of the age buckets, in minutes (qshape's): a message 7 minutes old counts
/// under `10`; the last column holds everything older than 1280 minutes (about 21 hours).
pub const BUCKET_MINUTES: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// `queue summary`. JSON:
/// ```json
/// {
///   "buckets": ["5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+"],
///   "total": {"domain": "TOTAL", "total": 3, "counts": [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]},
///   "domains": [{"domain": "example.org", "total": 2, "counts": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]}]
/// }
/// ```
/// Rows count pending recipients (held messages included), busiest domain first.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSummary {
    pub buckets: Vec<String>,
    pub total: SummaryRow,
    pub domains: Vec<SummaryRow>,
}

/// One row of [`QueueSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    pub domain: String,
    pub total: usize,
    pub counts: Vec<usize>,
}

impl SummaryRow {
    fn new(domain: &str) -> Self {
        SummaryRow {
            domain: domain.to_string(),
            total: 0,
            counts: vec![0; BUCKET_MINUTES.len() + 1],
        }
    }

    fn add(&mut self, bucket: usize) {
        self.total += 1;
        self.counts[bucket] += 1;
    }
}

/// The column a message `age_seconds` old falls in.
fn bucket_of(age_seconds: u64) -> usize {
    BUCKET_MINUTES
        .iter()
        .position(|&minutes| age_seconds <= minutes * 60)
        .unwrap_or(BUCKET_MINUTES.len())
}

/// Reads the queue and counts it.
pub async fn summary(queue: &dyn Queue) -> Result<QueueSummary, QueueError> {
    Ok(shape(&queue.list().await?, unix_now()))
}

/// Counts the pending recipients of `messages` at `now`.
pub fn shape(messages: &[QueuedMessage], now: u64) -> QueueSummary {
    let mut total = SummaryRow::new("TOTAL");
    let mut domains: BTreeMap<String, SummaryRow> = BTreeMap::new();
    for message in messages {
        let bucket = bucket_of(now.saturating_sub(message.arrived));
        for r in message.recipients.iter().filter(|r| !r.status.is_final()) {
            let domain = r
                .address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            domains
                .entry(domain.clone())
                .or_insert_with(|| SummaryRow::new(&domain))
                .add(bucket);
            total.add(bucket);
        }
    }
    let mut domains: Vec<SummaryRow> = domains.into_values().collect();
    domains.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    let mut buckets: Vec<String> = BUCKET_MINUTES.iter().map(|m| format!("{m}m")).collect();
    buckets.push(format!("{}m+", BUCKET_MINUTES[BUCKET_MINUTES.len() - 1]));
    QueueSummary {
        buckets,
        total,
        domains,
    }
}

impl Render for QueueSummary {
    fn table(&self) -> String {
        const N: usize = BUCKET_MINUTES.len() + 3;
        let mut header: [String; N] = Default::default();
        header[0] = "DOMAIN".into();
        header[1] = "T".into();
        for (i, bucket) in self.buckets.iter().enumerate() {
            header[i + 2] = bucket.clone();
        }
        let mut rows = vec![header];
        for row in std::iter::once(&self.total).chain(&self.domains) {
            let mut cells: [String; N] = Default::default();
            cells[0] = escape_control(&row.domain).into_owned();
            cells[1] = row.total.to_string();
            for (i, count) in row.counts.iter().enumerate() {
                cells[i + 2] = count.to_string();
            }
            rows.push(cells);
        }
        columns(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_queue::{MessageId, RecipientState, RecipientStatus};

    fn message(arrived: u64, recipients: &[(&str, RecipientStatus)]) -> QueuedMessage {
        QueuedMessage {
            id: MessageId("0".repeat(24)),
            sender: "a@example.test".into(),
            recipients: recipients
                .iter()
                .map(|(address, status)| RecipientState {
                    address: address.to_string(),
                    status: *status,
                    attempts: 0,
                    last_error: None,
                    next_attempt: 0,
                    route: None,
                    dsn: Default::default(),
                    delay_notified: Default::default(),
                })
                .collect(),
            arrived,
            client_ip: "192.0.2.1".into(),
            auth_login: None,
            origin: Default::default(),
            size: 1,
            held: false,
            options: Default::default(),
        }
    }

    #[test]
    fn pending_recipients_by_domain_and_age() {
        use RecipientStatus::{Delivered, Pending};
        let now = 1_000_000;
        let messages = [
            message(
                now - 60,
                &[("a@Slow.test", Pending), ("b@fast.test", Delivered)],
            ),
            message(now - 7 * 60, &[("c@slow.test", Pending)]),
            message(
                now - 2 * 86_400,
                &[("d@slow.test", Pending), ("e@other.test", Pending)],
            ),
        ];
        let summary = shape(&messages, now);
        assert_eq!(summary.total.total, 4);
        assert_eq!(summary.domains[0].domain, "slow.test");
        assert_eq!(
            summary.domains[0].counts,
            vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(summary.domains[1].domain, "other.test");
        assert!(summary.domains.iter().all(|r| r.domain != "fast.test"));
        let table = summary.table();
        assert!(table.starts_with("DOMAIN"), "{table}");
        assert!(
            table.lines().nth(1).is_some_and(|l| l.starts_with("TOTAL")),
            "{table}"
        );
    }

    #[test]
    fn control_characters_in_domains_are_escaped() {
        let messages = [message(
            0,
            &[("a@evil\u{1b}[2J.test", RecipientStatus::Pending)],
        )];
        let table = shape(&messages, 10).table();
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(table.contains("\\x1b"), "{table}");
    }
}
