//! Reading queue state from rows, and the text forms of enums in the tables.

use std::collections::HashMap;

use relayward_queue::{
    MessageId, MessageOptions, Origin, QueueError, QueuedMessage, RcptDsn, RecipientState,
    RecipientStatus, Route,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::OpError;

/// Columns of `relayward_messages` that make a [`QueuedMessage`] (everything but content).
const MESSAGE_COLUMNS: &str = "id, sender, arrived, client_ip, auth_login, origin, size, held, options FROM relayward_messages";
/// Columns of `relayward_recipients`, with the lease as the database's clock sees it.
const RECIPIENT_COLUMNS: &str = "message_id, address, route, status, attempts, last_error, next_attempt, \
     lease_owner, extract(epoch FROM lease_expires)::bigint, coalesce(lease_expires > now(), false), \
     dsn, delay_notified FROM relayward_recipients";

/// Which messages to read.
pub enum Which<'a> {
    All,
    Ids(&'a [String]),
}

/// A recipient's lease, when it has one that has not run out.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: String,
    /// Unix seconds (database clock).
    pub expires: u64,
}

/// A message's state and the live lease of each recipient (same order).
pub struct Loaded {
    pub message: QueuedMessage,
    pub leases: Vec<Option<Lease>>,
}

/// Reads messages (oldest first) with their recipients, in one consistent snapshot.
pub async fn load(
    client: &mut deadpool_postgres::Object,
    which: Which<'_>,
) -> Result<Vec<Loaded>, OpError> {
    let by_ids = match which {
        Which::Ids(_) => Some(ByIds::prepare(client).await?),
        Which::All => None,
    };
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let (recipients, messages) = match (which, by_ids) {
        (Which::Ids(ids), Some(by_ids)) => by_ids.read(&tx, ids).await?,
        _ => {
            let r = tx
                .query(
                    &format!("SELECT {RECIPIENT_COLUMNS} ORDER BY message_id, position"),
                    &[],
                )
                .await?;
            let m = tx
                .query(&format!("SELECT {MESSAGE_COLUMNS} ORDER BY id"), &[])
                .await?;
            (r, m)
        }
    };
    tx.commit().await?;
    assemble(messages, recipients)
}

/// The two statements that read given messages, prepared once per connection (the runner's
/// claim and `get` run them for every delivery).
pub struct ByIds {
    recipients: Statement,
    messages: Statement,
}

impl ByIds {
    pub async fn prepare(client: &deadpool_postgres::Object) -> Result<ByIds, OpError> {
        let recipients = client
            .prepare_cached(&format!(
                "SELECT {RECIPIENT_COLUMNS} WHERE message_id = ANY($1) ORDER BY message_id, position"
            ))
            .await?;
        let messages = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} WHERE id = ANY($1) ORDER BY id"
            ))
            .await?;
        Ok(ByIds {
            recipients,
            messages,
        })
    }

    /// Recipients, then messages, sent together (one round trip), for [`assemble`].
    ///
    /// In that order because a caller may run them at READ COMMITTED (the claim does, after
    /// its `UPDATE` in the same transaction), where each statement sees its own snapshot: a
    /// message deleted between the two reads is then missing (it is gone), never a message
    /// without recipients (which would read as corrupt). Recipients are never deleted on their
    /// own, only with their message.
    pub async fn read(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        ids: &[String],
    ) -> Result<(Vec<Row>, Vec<Row>), tokio_postgres::Error> {
        let params: [&(dyn ToSql + Sync); 1] = [&ids];
        tokio::try_join!(
            biased;
            tx.query(&self.recipients, &params),
            tx.query(&self.messages, &params),
        )
    }
}

/// Builds each message from its row and its recipients' rows (both as read by [`load`] or
/// [`ByIds::read`]); recipients of messages not among `messages` are ignored.
pub fn assemble(messages: Vec<Row>, recipients: Vec<Row>) -> Result<Vec<Loaded>, OpError> {
    let mut by_message: HashMap<String, Vec<(RecipientState, Option<Lease>)>> = HashMap::new();
    for row in recipients {
        let id: String = row.try_get(0)?;
        let recipient = recipient(&id, &row)?;
        by_message.entry(id).or_default().push(recipient);
    }
    let mut out = Vec::with_capacity(messages.len());
    for row in messages {
        let id: String = row.try_get(0)?;
        let Some(recipients) = by_message.remove(&id) else {
            return Err(OpError::Queue(corrupt(&id, "no recipients")));
        };
        let (recipients, leases): (Vec<_>, Vec<_>) = recipients.into_iter().unzip();
        let origin: String = row.try_get(5)?;
        let options: Option<String> = row.try_get(8)?;
        let options = match options {
            Some(json) => from_json(&id, "options", &json)?,
            None => MessageOptions::default(),
        };
        out.push(Loaded {
            message: QueuedMessage {
                id: MessageId(id),
                sender: row.try_get(1)?,
                arrived: unsigned(row.try_get(2)?),
                client_ip: row.try_get(3)?,
                auth_login: row.try_get(4)?,
                origin: parse_origin(&origin),
                size: unsigned(row.try_get(6)?),
                held: row.try_get(7)?,
                recipients,
                options,
            },
            leases,
        });
    }
    Ok(out)
}

fn recipient(id: &str, row: &Row) -> Result<(RecipientState, Option<Lease>), OpError> {
    let route: Option<String> = row.try_get(2)?;
    let route: Option<Route> = match route {
        Some(json) => Some(from_json(id, "route", &json)?),
        None => None,
    };
    let dsn: Option<String> = row.try_get(10)?;
    let dsn: RcptDsn = match dsn {
        Some(json) => from_json(id, "dsn", &json)?,
        None => RcptDsn::default(),
    };
    let status: String = row.try_get(3)?;
    let status = parse_status(&status)
        .ok_or_else(|| OpError::Queue(corrupt(id, &format!("status {status:?}"))))?;
    let owner: Option<String> = row.try_get(7)?;
    let expires: Option<i64> = row.try_get(8)?;
    let live: bool = row.try_get(9)?;
    let lease = match (owner, expires, live) {
        (Some(owner), Some(expires), true) => Some(Lease {
            owner,
            expires: unsigned(expires),
        }),
        _ => None,
    };
    let attempts: i32 = row.try_get(4)?;
    Ok((
        RecipientState {
            address: row.try_get(1)?,
            status,
            attempts: u32::try_from(attempts).unwrap_or(0),
            last_error: row.try_get(5)?,
            next_attempt: unsigned(row.try_get(6)?),
            route,
            dsn,
            delay_notified: row.try_get(11)?,
        },
        lease,
    ))
}

/// A JSON column read back; a value this binary cannot read makes the entry corrupt.
fn from_json<T: serde::de::DeserializeOwned>(
    id: &str,
    column: &str,
    json: &str,
) -> Result<T, OpError> {
    serde_json::from_str(json).map_err(|e| OpError::Queue(corrupt(id, &format!("{column}: {e}"))))
}

pub fn corrupt(id: &str, reason: &str) -> QueueError {
    QueueError::Corrupt {
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Database integers are signed; times and sizes are never negative here.
pub fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Unix seconds as the database stores them.
pub fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub fn origin_text(origin: Origin) -> &'static str {
    match origin {
        Origin::Stranger => "stranger",
        Origin::Trusted => "trusted",
        Origin::Authenticated => "authenticated",
        Origin::Local => "local",
    }
}

/// The cautious reading for anything unknown: a stranger's message (small bounces).
fn parse_origin(text: &str) -> Origin {
    match text {
        "trusted" => Origin::Trusted,
        "authenticated" => Origin::Authenticated,
        "local" => Origin::Local,
        _ => Origin::Stranger,
    }
}

pub fn status_text(status: RecipientStatus) -> &'static str {
    match status {
        RecipientStatus::Pending => "pending",
        RecipientStatus::Delivered => "delivered",
        RecipientStatus::Bounced => "bounced",
        RecipientStatus::Expired => "expired",
    }
}

fn parse_status(text: &str) -> Option<RecipientStatus> {
    Some(match text {
        "pending" => RecipientStatus::Pending,
        "delivered" => RecipientStatus::Delivered,
        "bounced" => RecipientStatus::Bounced,
        "expired" => RecipientStatus::Expired,
        _ => return None,
    })
}

/// Text from outside (a remote reply in `last_error`, a reason) as PostgreSQL `text` takes it:
/// it refuses NUL, which must not cost the whole batch its commit.
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}
