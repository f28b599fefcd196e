//! Group commit: every write that answers a waiter (new messages, delivery results) goes
//! through a few committer tasks that put whatever is waiting into one transaction.
//!
//! A committer takes the first waiting operation plus every other one already queued (up to
//! `max_batch`), runs them in one transaction (one `INSERT … SELECT FROM unnest(…)` per table
//! for the messages, one `UPDATE … FROM unnest(…)` for the results) and commits once; only
//! then does each waiter get its answer. While one committer waits for its commit (the WAL
//! flush), the next collects the following batch, so commits per message fall as load rises,
//! with no timer adding latency at low load. `synchronous_commit` is at least `on` on our
//! sessions (see [`crate::connect`]), so a committed batch is on disk before anyone hears
//! `250`.
//!
//! A batch that fails because of one operation's data (not the database being away) is split:
//! each operation is tried alone, so one bad message cannot refuse its neighbours. A deadlock
//! or serialization failure is tried again. The enqueue path is [`insert_messages`], one
//! function, so a different content representation (a streamed body) changes one place.

use std::collections::HashSet;
use std::sync::Arc;

use relayward_queue::{
    MessageId, MessageOptions, NewMessage, QueueError, QueuedMessage, RecipientUpdate,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::health::Failure;
use crate::rows::{origin_text, signed, status_text, storable};
use crate::{Inner, OpError};

/// One write waiting for a commit.
pub enum Op {
    Enqueue {
        id: MessageId,
        message: NewMessage,
        arrived: u64,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    Update {
        id: MessageId,
        updates: Vec<RecipientUpdate>,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
}

/// Attempts at a batch that hit a deadlock or serialization failure.
const RETRIES: usize = 3;

/// Starts `count` committers sharing one channel; they end when every sender is dropped.
pub fn spawn(
    inner: &Arc<Inner>,
    count: usize,
    max_batch: usize,
) -> (mpsc::UnboundedSender<Op>, Vec<tokio::task::JoinHandle<()>>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let receiver = Arc::new(Mutex::new(receiver));
    let tasks = (0..count.max(1))
        .map(|_| {
            let inner = Arc::clone(inner);
            let receiver = Arc::clone(&receiver);
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch.max(1)).await {
                    commit(&inner, batch).await;
                }
            })
        })
        .collect();
    (sender, tasks)
}

/// Waits for one operation, then takes every other one already waiting.
async fn next_batch(
    receiver: &Mutex<mpsc::UnboundedReceiver<Op>>,
    max_batch: usize,
) -> Option<Vec<Op>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max_batch {
        match receiver.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Commits one batch and answers its waiters; splits it when one operation is at fault.
async fn commit(inner: &Inner, batch: Vec<Op>) {
    match attempt(inner, &batch).await {
        Ok(missing) => {
            inner.health.up();
            inner
                .batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            answer(inner, batch, &missing);
        }
        Err(failure) if failure.is_unavailable() || batch.len() == 1 => {
            let text = match &failure {
                Failure::Unavailable(t) | Failure::Other(t) => t.clone(),
            };
            let unavailable = failure.is_unavailable();
            let first = inner.health.failed(failure);
            let mut first = Some(first);
            for op in batch {
                let error = first.take().unwrap_or_else(|| {
                    if unavailable {
                        QueueError::Unavailable(text.clone())
                    } else {
                        QueueError::Io(std::io::Error::other(text.clone()))
                    }
                });
                reply_to(op, Err(error));
            }
        }
        Err(_) => {
            for op in batch {
                Box::pin(commit(inner, vec![op])).await;
            }
        }
    }
}

/// One transaction for the whole batch (tried again on deadlock); the ids of updated messages
/// that no longer exist.
async fn attempt(inner: &Inner, batch: &[Op]) -> Result<HashSet<String>, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        match transaction(inner, batch).await {
            Err(OpError::Db(e)) if tries < RETRIES && Failure::is_retryable(&e) => continue,
            Err(OpError::Db(e)) => return Err(Failure::from(e)),
            Err(OpError::Pool(e)) => return Err(Failure::from(e)),
            Err(OpError::Queue(e)) => return Err(Failure::Other(e.to_string())),
            Ok(missing) => return Ok(missing),
        }
    }
}

async fn transaction(inner: &Inner, batch: &[Op]) -> Result<HashSet<String>, OpError> {
    let mut client = inner.pool.get().await?;
    let tx = client.transaction().await?;
    let enqueues: Vec<(&MessageId, &NewMessage, u64)> = batch
        .iter()
        .filter_map(|op| match op {
            Op::Enqueue {
                id,
                message,
                arrived,
                ..
            } => Some((id, message, *arrived)),
            Op::Update { .. } => None,
        })
        .collect();
    if !enqueues.is_empty() {
        insert_messages(&tx, &enqueues, inner).await?;
    }
    let updates: Vec<(&MessageId, &RecipientUpdate)> = batch
        .iter()
        .filter_map(|op| match op {
            Op::Update { id, updates, .. } => Some(updates.iter().map(move |u| (id, u))),
            Op::Enqueue { .. } => None,
        })
        .flatten()
        .collect();
    let missing = if updates.is_empty() {
        HashSet::new()
    } else {
        apply_updates(&tx, updates, &inner.owner).await?
    };
    tx.commit().await?;
    Ok(missing)
}

/// The enqueue path: the messages and their recipients, one statement per table. The
/// recipients are leased to this node from the start, for `lease_timeout` (the heartbeat
/// extends it): the runner here delivers them a moment later without asking the database
/// (see [`crate::fresh`]), and no other node may take them meanwhile.
pub async fn insert_messages(
    tx: &deadpool_postgres::Transaction<'_>,
    messages: &[(&MessageId, &NewMessage, u64)],
    inner: &Inner,
) -> Result<(), OpError> {
    let node = inner.node.as_str();
    let ids: Vec<&str> = messages.iter().map(|(id, _, _)| id.0.as_str()).collect();
    let senders: Vec<&str> = messages.iter().map(|(_, m, _)| m.sender.as_str()).collect();
    let arrived: Vec<i64> = messages.iter().map(|(_, _, at)| signed(*at)).collect();
    let client_ips: Vec<&str> = messages
        .iter()
        .map(|(_, m, _)| m.client_ip.as_str())
        .collect();
    let logins: Vec<Option<&str>> = messages
        .iter()
        .map(|(_, m, _)| m.auth_login.as_deref())
        .collect();
    let origins: Vec<&str> = messages
        .iter()
        .map(|(_, m, _)| origin_text(m.origin))
        .collect();
    let sizes: Vec<i64> = messages
        .iter()
        .map(|(_, m, _)| signed(m.content.len() as u64))
        .collect();
    let options: Vec<Option<String>> = messages
        .iter()
        .map(|(_, m, _)| message_options(m))
        .collect::<Result<_, _>>()?;
    let contents: Vec<&[u8]> = messages
        .iter()
        .map(|(_, m, _)| m.content.as_slice())
        .collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO relayward_messages
                 (id, sender, arrived, client_ip, auth_login, origin, size, accepted_by, content,
                  options)
             SELECT u.id, u.sender, u.arrived, u.client_ip, u.auth_login, u.origin, u.size, $8,
                    u.content, u.options
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                         $7::int8[], $9::bytea[], $10::text[])
                  AS u(id, sender, arrived, client_ip, auth_login, origin, size, content, options)",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 10] = [
        &ids,
        &senders,
        &arrived,
        &client_ips,
        &logins,
        &origins,
        &sizes,
        &node,
        &contents,
        &options,
    ];
    tx.execute(&insert, &params).await?;

    let mut message_ids = Vec::new();
    let mut positions = Vec::new();
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    let mut dsns = Vec::new();
    let mut due = Vec::new();
    for (id, message, arrived) in messages {
        for (position, recipient) in message.recipients.iter().enumerate() {
            message_ids.push(id.0.as_str());
            positions.push(i32::try_from(position).unwrap_or(i32::MAX));
            addresses.push(recipient.address.as_str());
            routes.push(to_json(&recipient.route)?);
            dsns.push(recipient_dsn(message, position)?);
            due.push(signed(*arrived));
        }
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO relayward_recipients
                 (message_id, position, address, route, next_attempt, dsn, lease_owner,
                  lease_expires)
             SELECT u.*, $7::text, now() + make_interval(secs => $8::float8)
             FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::text[])
                  AS u(message_id, position, address, route, next_attempt, dsn)",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 8] = [
        &message_ids,
        &positions,
        &addresses,
        &routes,
        &due,
        &dsns,
        &inner.owner,
        &inner.lease_secs,
    ];
    tx.execute(&insert, &params).await?;
    Ok(())
}

/// The message's SMTPUTF8 / `RET=` / `ENVID=` as stored: JSON, or NULL when plain.
fn message_options(message: &NewMessage) -> Result<Option<String>, OpError> {
    let options = MessageOptions {
        smtputf8: message.esmtp.smtputf8,
        dsn: message.esmtp.dsn.clone(),
    };
    if options.is_plain() {
        return Ok(None);
    }
    to_json(&options).map(Some)
}

/// The `NOTIFY=` / `ORCPT=` of the recipient at `position` as stored: JSON, or NULL if none.
fn recipient_dsn(message: &NewMessage, position: usize) -> Result<Option<String>, OpError> {
    match message.esmtp.recipients.get(position) {
        Some(dsn) if !dsn.is_empty() => to_json(dsn).map(Some),
        _ => Ok(None),
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<String, OpError> {
    serde_json::to_string(value)
        .map_err(|e| OpError::Queue(QueueError::Io(std::io::Error::other(e))))
}

/// Records delivery results; final statuses are sticky (only pending rows change). Gives up
/// this node's lease on each updated recipient (another node's lease is left alone), then
/// removes messages with nothing pending. Returns the ids that no longer exist.
async fn apply_updates(
    tx: &deadpool_postgres::Transaction<'_>,
    mut updates: Vec<(&MessageId, &RecipientUpdate)>,
    owner: &str,
) -> Result<HashSet<String>, OpError> {
    // One lock order for every writer: fewer deadlocks between committers and nodes.
    updates.sort_by(|a, b| (&a.0.0, &a.1.address).cmp(&(&b.0.0, &b.1.address)));
    let mut ids: Vec<&str> = updates.iter().map(|(id, _)| id.0.as_str()).collect();
    ids.dedup();
    let present = tx
        .prepare_cached("SELECT id FROM relayward_messages WHERE id = ANY($1)")
        .await?;
    let present: HashSet<String> = tx
        .query(&present, &[&ids])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let message_ids: Vec<&str> = updates.iter().map(|(id, _)| id.0.as_str()).collect();
    let addresses: Vec<&str> = updates.iter().map(|(_, u)| u.address.as_str()).collect();
    let statuses: Vec<&str> = updates.iter().map(|(_, u)| status_text(u.status)).collect();
    let errors: Vec<Option<String>> = updates
        .iter()
        .map(|(_, u)| u.last_error.as_deref().map(|e| storable(e).into_owned()))
        .collect();
    let next: Vec<i64> = updates
        .iter()
        .map(|(_, u)| signed(u.next_attempt))
        .collect();
    let notified: Vec<bool> = updates.iter().map(|(_, u)| u.delay_notified).collect();
    let update = tx
        .prepare_cached(
            "UPDATE relayward_recipients r
             SET status = u.status, last_error = u.last_error, next_attempt = u.next_attempt,
                 attempts = r.attempts + 1,
                 delay_notified = r.delay_notified OR u.delay_notified,
                 lease_owner = CASE WHEN r.lease_owner = $6 THEN NULL ELSE r.lease_owner END,
                 lease_expires = CASE WHEN r.lease_owner = $6 THEN NULL ELSE r.lease_expires END
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $7::bool[])
                  AS u(message_id, address, status, last_error, next_attempt, delay_notified)
             WHERE r.message_id = u.message_id AND r.address = u.address AND r.status = 'pending'",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 7] = [
        &message_ids,
        &addresses,
        &statuses,
        &errors,
        &next,
        &owner,
        &notified,
    ];
    tx.execute(&update, &params).await?;
    let finished = tx
        .prepare_cached(
            "DELETE FROM relayward_messages m WHERE m.id = ANY($1) AND NOT EXISTS
                 (SELECT 1 FROM relayward_recipients r
                  WHERE r.message_id = m.id AND r.status = 'pending')",
        )
        .await?;
    tx.execute(&finished, &[&ids]).await?;
    Ok(ids
        .into_iter()
        .filter(|id| !present.contains(*id))
        .map(str::to_owned)
        .collect())
}

/// Answers a committed batch: new messages are kept for the runner (see [`crate::fresh`])
/// and reported to it before their clients hear `250`; updated recipients are no longer held
/// by this node.
fn answer(inner: &Inner, batch: Vec<Op>, missing: &HashSet<String>) {
    let mut accepted = Vec::new();
    let mut replies = Vec::new();
    let mut updates_done = Vec::new();
    for op in batch {
        match op {
            Op::Enqueue {
                id,
                message,
                arrived,
                reply,
            } => {
                let state = QueuedMessage::accepted(id, &message, arrived);
                accepted.push((state, message.content));
                replies.push(reply);
            }
            Op::Update { id, updates, reply } => updates_done.push((id, updates, reply)),
        }
    }
    if !accepted.is_empty() {
        let ids: Vec<MessageId> = accepted.iter().map(|(m, _)| m.id.clone()).collect();
        inner
            .committed
            .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        inner.note_fresh(accepted);
        inner.note_enqueued(ids);
    }
    for reply in replies {
        let _ = reply.send(Ok(()));
    }
    for (id, updates, reply) in updates_done {
        inner.leases_given_up(&id, updates.iter().map(|u| u.address.as_str()));
        let result = if missing.contains(&id.0) {
            Err(QueueError::NotFound(id.0.clone()))
        } else {
            Ok(())
        };
        let _ = reply.send(result);
    }
}

fn reply_to(op: Op, result: Result<(), QueueError>) {
    match op {
        Op::Enqueue { reply, .. } | Op::Update { reply, .. } => {
            let _ = reply.send(result);
        }
    }
}
