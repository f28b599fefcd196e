//! Queue administration: what `relayward queue …` calls.
//!
//! Each function works on any [`Queue`] (the CLI opens the same spool the server uses, so the
//! commands work while the server runs) and returns plain data. Every result implements
//! [`Render`]: `table()` for people, `json()` for scripts. The JSON shapes are documented on
//! each type and are a contract: add fields, never rename or remove them.
//!
//! Times in JSON are Unix seconds (UTC); `null` means "none". Tables show text from outside
//! (addresses, header fields, remote replies) through [`escape_control`], so a header or a
//! reply cannot move the operator's cursor or fake a row; JSON escapes it as JSON does.

use relayward_protocol::text::escape_control;
use relayward_queue::{
    MessageId, Origin, Queue, QueueError, QueuedMessage, RecipientState, RecipientStatus,
};
use serde::Serialize;

use crate::runner::unix_now;

/// Output for people or scripts.
pub trait Render: Serialize {
    /// A human-readable table or block of text, ending with a newline.
    fn table(&self) -> String;

    /// Pretty-printed JSON (see the type's documentation for its shape).
    fn json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode: {e}\"}}"))
    }
}

/// `queue list`. JSON: an array, oldest message first, of
/// ```json
/// {
///   "id": "…", "arrived": 1767225600, "age_seconds": 93, "sender": "a@x.test",
///   "size": 1234, "held": false,
///   "recipients": [ {"address": "b@y.test", "status": "pending", "attempts": 2,
///                    "last_error": "451 4.3.0 try later (from mx.y.test[192.0.2.1]:25, RCPT TO)",
///                    "next_attempt": 1767225900} ],
///   "next_attempt": 1767225900, "last_error": "451 4.3.0 …"
/// }
/// ```
/// `sender` is `""` for the null sender (bounces). `status` is `pending`, `delivered`,
/// `bounced` or `expired`. `next_attempt` and `last_error` at the top level are those of the
/// pending recipient due first (`null` when none is pending).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct QueueList(pub Vec<ListEntry>);

/// One row of [`QueueList`].
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    pub id: MessageId,
    pub arrived: u64,
    pub age_seconds: u64,
    pub sender: String,
    pub size: u64,
    pub held: bool,
    pub recipients: Vec<RecipientState>,
    pub next_attempt: Option<u64>,
    pub last_error: Option<String>,
}

/// `queue show ID`. JSON:
/// ```json
/// {
///   "id": "…", "arrived": 1767225600, "age_seconds": 93, "sender": "a@x.test",
///   "client_ip": "192.0.2.7", "auth_login": "alice@x.test", "origin": "authenticated",
///   "size": 1234, "held": false,
///   "recipients": [ {"address": "…", "status": "pending", "attempts": 0,
///                    "last_error": null, "next_attempt": 1767225600} ],
///   "headers": [ {"name": "Subject", "value": "hello"} ]
/// }
/// ```
/// `headers` are the message's header fields in order, unfolded (continuation lines joined
/// with a space); `auth_login` is `null` for unauthenticated clients. `origin` is how the
/// client stood: `stranger`, `trusted` (a trusted network), `authenticated`, or `local` (a
/// bounce made here); a stranger's message gets a small bounce.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    pub id: MessageId,
    pub arrived: u64,
    pub age_seconds: u64,
    pub sender: String,
    pub client_ip: String,
    pub auth_login: Option<String>,
    pub origin: Origin,
    pub size: u64,
    pub held: bool,
    pub recipients: Vec<RecipientState>,
    pub headers: Vec<Header>,
}

/// One header field of [`MessageDetail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// What `queue retry` acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryTarget {
    One(MessageId),
    All,
}

/// `queue retry`, `queue delete`, `queue hold`, `queue release`. JSON:
/// ```json
/// {"action": "retry", "ids": ["…", "…"]}
/// ```
/// `action` is `retry`, `delete`, `hold` or `release`; `ids` lists the messages acted on
/// (for `retry --all`: every message with a pending recipient, held ones excepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionReport {
    pub action: &'static str,
    pub ids: Vec<MessageId>,
}

/// Lists the queue, oldest first.
pub async fn list(queue: &dyn Queue) -> Result<QueueList, QueueError> {
    list_matching(queue, &ListFilter::default()).await
}

/// Lists the messages `filter` selects, oldest first.
pub async fn list_matching(
    queue: &dyn Queue,
    filter: &ListFilter,
) -> Result<QueueList, QueueError> {
    let now = unix_now();
    let messages = queue.list().await?;
    Ok(QueueList(
        messages
            .into_iter()
            .filter(|m| filter.matches(m, now))
            .map(|m| entry(m, now))
            .collect(),
    ))
}

/// Where a queued message stands, as `queue list --state` and the
/// `relayward_queue_messages{state}` metric name it. `active` (being delivered) only the
/// running server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Held by an admin.
    Held,
    /// Some pending recipient's next attempt is due.
    Due,
    /// Every pending recipient waits for a later retry.
    Deferred,
}

impl MessageState {
    pub fn of(message: &QueuedMessage, now: u64) -> MessageState {
        if message.held {
            MessageState::Held
        } else if message
            .recipients
            .iter()
            .any(|r| !r.status.is_final() && r.next_attempt <= now)
        {
            MessageState::Due
        } else {
            MessageState::Deferred
        }
    }

    pub fn parse(text: &str) -> Option<MessageState> {
        match text {
            "held" => Some(MessageState::Held),
            "due" => Some(MessageState::Due),
            "deferred" => Some(MessageState::Deferred),
            _ => None,
        }
    }
}

/// What `queue list --from/--to/--older-than/--state` selects; every given criterion must
/// hold. Addresses match case-insensitively as substrings (`--from example.test` finds every
/// sender in that domain; `--from '<>'` the null sender).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    /// At least this many seconds in the queue.
    pub older_than: Option<u64>,
    pub state: Option<MessageState>,
}

impl ListFilter {
    pub fn matches(&self, message: &QueuedMessage, now: u64) -> bool {
        let contains = |haystack: &str, needle: &str| {
            haystack
                .to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        };
        let from_ok = self.from.as_deref().is_none_or(|from| {
            if from == "<>" {
                message.sender.is_empty()
            } else {
                contains(&message.sender, from)
            }
        });
        let to_ok = self
            .to
            .as_deref()
            .is_none_or(|to| message.recipients.iter().any(|r| contains(&r.address, to)));
        let age_ok = self
            .older_than
            .is_none_or(|secs| now.saturating_sub(message.arrived) >= secs);
        let state_ok = self
            .state
            .is_none_or(|state| MessageState::of(message, now) == state);
        from_ok && to_ok && age_ok && state_ok
    }
}

/// `queue cat ID`: the message as stored, trace header first. JSON:
/// ```json
/// {"id": "…", "size": 1234, "content": "Received: …\r\n…"}
/// ```
/// (`content` is the octets as UTF-8, invalid sequences replaced by U+FFFD; `--raw` gives the
/// exact octets.) The text form escapes control characters other than tab and the line ends,
/// so a message cannot drive the operator's terminal.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub id: MessageId,
    pub size: usize,
    #[serde(serialize_with = "lossy_text")]
    pub content: Vec<u8>,
}

fn lossy_text<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// One message's stored content.
pub async fn cat(queue: &dyn Queue, id: &MessageId) -> Result<StoredMessage, QueueError> {
    let content = queue.content(id).await?;
    Ok(StoredMessage {
        id: id.clone(),
        size: content.len(),
        content,
    })
}

impl Render for StoredMessage {
    fn table(&self) -> String {
        let mut out = String::with_capacity(self.content.len() + 64);
        let mut lines = self.content.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if lines.peek().is_none() && line.is_empty() {
                break;
            }
            for piece in line.split(|&b| b == b'\t').enumerate() {
                if piece.0 > 0 {
                    out.push('\t');
                }
                out.push_str(&relayward_protocol::text::escape_bytes(piece.1));
            }
            out.push('\n');
        }
        out
    }
}

fn entry(message: QueuedMessage, now: u64) -> ListEntry {
    let first_due = message
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .min_by_key(|r| r.next_attempt);
    let next_attempt = first_due.map(|r| r.next_attempt);
    let last_error = first_due
        .and_then(|r| r.last_error.clone())
        .or_else(|| message.recipients.iter().find_map(|r| r.last_error.clone()));
    ListEntry {
        age_seconds: now.saturating_sub(message.arrived),
        id: message.id,
        arrived: message.arrived,
        sender: message.sender,
        size: message.size,
        held: message.held,
        recipients: message.recipients,
        next_attempt,
        last_error,
    }
}

/// One message: envelope, per-recipient status and header fields.
pub async fn show(queue: &dyn Queue, id: &MessageId) -> Result<MessageDetail, QueueError> {
    let message = queue.get(id).await?;
    let content = queue.content(id).await?;
    Ok(MessageDetail {
        age_seconds: unix_now().saturating_sub(message.arrived),
        id: message.id,
        arrived: message.arrived,
        sender: message.sender,
        client_ip: message.client_ip,
        auth_login: message.auth_login,
        origin: message.origin,
        size: message.size,
        held: message.held,
        recipients: message.recipients,
        headers: parse_headers(&content),
    })
}

/// Makes the pending recipients of one message, or of every non-held message, due now.
pub async fn retry(queue: &dyn Queue, target: RetryTarget) -> Result<ActionReport, QueueError> {
    let ids = match target {
        RetryTarget::One(id) => vec![id],
        RetryTarget::All => queue
            .list()
            .await?
            .into_iter()
            .filter(|m| !m.held && m.recipients.iter().any(|r| !r.status.is_final()))
            .map(|m| m.id)
            .collect(),
    };
    for id in &ids {
        queue.retry_now(id).await?;
    }
    Ok(ActionReport {
        action: "retry",
        ids,
    })
}

/// Removes a message without delivering or bouncing it.
pub async fn delete(queue: &dyn Queue, id: &MessageId) -> Result<ActionReport, QueueError> {
    queue.delete(id).await?;
    Ok(single("delete", id))
}

/// Stops the runner from picking a message until it is released.
pub async fn hold(queue: &dyn Queue, id: &MessageId) -> Result<ActionReport, QueueError> {
    queue.set_held(id, true).await?;
    Ok(single("hold", id))
}

/// Lets the runner pick a held message again.
pub async fn release(queue: &dyn Queue, id: &MessageId) -> Result<ActionReport, QueueError> {
    queue.set_held(id, false).await?;
    Ok(single("release", id))
}

fn single(action: &'static str, id: &MessageId) -> ActionReport {
    ActionReport {
        action,
        ids: vec![id.clone()],
    }
}

/// Header fields of a message, unfolded. Lines that are not `name: value` are skipped.
pub fn parse_headers(content: &[u8]) -> Vec<Header> {
    relayward_protocol::header::fields(content)
        .into_iter()
        .map(|f| Header {
            name: f.name,
            value: f.value,
        })
        .collect()
}

impl Render for QueueList {
    fn table(&self) -> String {
        if self.0.is_empty() {
            return "Queue is empty.\n".into();
        }
        let mut rows = vec![[
            "ID".to_string(),
            "AGE".into(),
            "SENDER".into(),
            "RECIPIENTS".into(),
            "NEXT ATTEMPT".into(),
            "LAST ERROR".into(),
        ]];
        let now = unix_now();
        for e in &self.0 {
            rows.push([
                if e.held {
                    format!("{} (held)", e.id)
                } else {
                    e.id.to_string()
                },
                duration(e.age_seconds),
                display_sender(&e.sender),
                recipients_cell(&e.recipients),
                e.next_attempt
                    .map(|t| relative(t, now))
                    .unwrap_or_else(|| "-".into()),
                e.last_error
                    .as_deref()
                    .map_or_else(|| "-".into(), |error| escape_control(error).into_owned()),
            ]);
        }
        let mut out = columns(&rows);
        out.push_str(&format!("{} message(s)\n", self.0.len()));
        out
    }
}

impl Render for MessageDetail {
    fn table(&self) -> String {
        let now = unix_now();
        let mut out = format!(
            "ID:       {}\nArrived:  {} ({} ago)\nSender:   {}\nClient:   {}{}\nOrigin:   {}\nSize:     {} octets\nHeld:     {}\n\nRecipients:\n",
            self.id,
            crate::dsn::rfc5322_date(self.arrived),
            duration(self.age_seconds),
            display_sender(&self.sender),
            escape_control(&self.client_ip),
            self.auth_login
                .as_ref()
                .map(|l| format!(" (authenticated as {})", escape_control(l)))
                .unwrap_or_default(),
            origin(self.origin),
            self.size,
            if self.held { "yes" } else { "no" },
        );
        for r in &self.recipients {
            out.push_str(&format!(
                "  {} {} (attempts: {}",
                status(r.status),
                escape_control(&r.address),
                r.attempts
            ));
            if r.status == RecipientStatus::Pending {
                out.push_str(&format!(", next: {}", relative(r.next_attempt, now)));
            }
            out.push(')');
            if let Some(e) = &r.last_error {
                out.push_str(&format!("\n      last error: {}", escape_control(e)));
            }
            out.push('\n');
        }
        out.push_str("\nHeaders:\n");
        for h in &self.headers {
            let (name, value) = (escape_control(&h.name), escape_control(&h.value));
            out.push_str(&format!("  {name}: {value}\n"));
        }
        out
    }
}

impl Render for ActionReport {
    fn table(&self) -> String {
        let verb = match self.action {
            "retry" => "scheduled for immediate retry",
            "delete" => "deleted",
            "hold" => "held",
            "release" => "released",
            other => other,
        };
        if self.ids.is_empty() {
            return format!("No message {verb}.\n");
        }
        self.ids
            .iter()
            .map(|id| format!("{id}: {verb}\n"))
            .collect()
    }
}

fn origin(origin: Origin) -> &'static str {
    match origin {
        Origin::Stranger => "stranger (neither authenticated nor trusted: small bounces)",
        Origin::Trusted => "trusted network",
        Origin::Authenticated => "authenticated",
        Origin::Local => "this server (a bounce)",
    }
}

fn status(s: RecipientStatus) -> &'static str {
    match s {
        RecipientStatus::Pending => "pending  ",
        RecipientStatus::Delivered => "delivered",
        RecipientStatus::Bounced => "bounced  ",
        RecipientStatus::Expired => "expired  ",
    }
}

fn display_sender(sender: &str) -> String {
    if sender.is_empty() {
        "<>".into()
    } else {
        escape_control(sender).into_owned()
    }
}

fn recipients_cell(recipients: &[RecipientState]) -> String {
    let pending: Vec<std::borrow::Cow<'_, str>> = recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .map(|r| escape_control(&r.address))
        .collect();
    match pending.len() {
        0 => "-".into(),
        1..=2 => pending.join(", "),
        n => format!("{}, {} (+{} more)", pending[0], pending[1], n - 2),
    }
}

/// `4m`, `2h13m`, `3d4h`: compact ages.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn relative(at: u64, now: u64) -> String {
    if at <= now {
        "now".into()
    } else {
        format!("in {}", duration(at - now))
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub(crate) fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_unfolded_and_stop_at_the_body() {
        let h = parse_headers(b"Subject: a\r\n  b\r\nFrom: x@y.test\r\n\r\nNot: header\r\n");
        assert_eq!(
            h,
            vec![
                Header {
                    name: "Subject".into(),
                    value: "a b".into()
                },
                Header {
                    name: "From".into(),
                    value: "x@y.test".into()
                },
            ]
        );
    }

    #[test]
    fn compact_durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m");
        assert_eq!(duration(3 * 3600 + 120), "3h2m");
        assert_eq!(duration(2 * 86_400 + 3600), "2d1h");
    }
}
