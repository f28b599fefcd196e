//! Leases: which node delivers which recipient now.
//!
//! - [`claim`]: one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)` takes every due, pending,
//!   unleased (or expired) recipient of a batch of messages for this node, for
//!   `lease_timeout`; rows another node is claiming at the same moment are skipped, not
//!   waited for. The messages' states are read in the same transaction, with the statements
//!   sent together: one round trip of statements, one commit.
//! - [`due`]: what the runner's own index cannot know: due work nobody holds (another node's
//!   mail, a dead node's expired leases, an admin's retry), from the partial index on
//!   pending recipients' due time.
//! - [`heartbeat`]: every quarter lease the node's row in `relayward_nodes` is touched and
//!   the leases of messages still in delivery here that are past half their time are
//!   extended. A node that dies stops both: its leases run out within `lease_timeout` and
//!   the next [`due`] of another node finds them.
//! - [`release_all`]: on shutdown the node gives back what it holds and removes its row.
//!
//! # Leases do not wait for the disk
//!
//! Claims, releases and heartbeats commit with `synchronous_commit = off` (`SET LOCAL`, for
//! their own transaction only): PostgreSQL answers before their WAL is flushed, so they share
//! flushes with whatever commits next instead of each waiting for one. What a crash of the
//! database can then lose is the last moments of lease bookkeeping, never mail: new messages
//! and delivery results (see [`crate::writer`]) stay synchronous. A lost claim or heartbeat
//! means another node may deliver a recipient this node is delivering too, and a lost release
//! means another node waits for the lease to run out: the first is what the at-least-once
//! contract of the queue already allows (a delivery whose result was not recorded is tried
//! again), the second only delays. PostgreSQL never reorders commits in its WAL, so once any
//! later synchronous commit (the result of that delivery) is on disk, the claim before it is
//! too.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use relayward_queue::{Claim, MessageId, QueuedMessage};
use tokio_postgres::types::ToSql;

use crate::rows::{self, Loaded, signed};
use crate::{Inner, OpError};

/// Most ids one [`due`] look returns.
const DUE_LIMIT: i64 = 1000;

/// Leases and heartbeats are bookkeeping, not mail: their transactions do not wait for the WAL
/// flush (see the module documentation). `SET LOCAL` lasts until the transaction ends, so the
/// connection goes back to the pool with the session's own setting.
const NO_FLUSH: &str = "SET LOCAL synchronous_commit = off";

/// Claims the due recipients of `ids` for this node and reads the messages' states, in one
/// transaction and one round trip of statements; see the module documentation.
pub async fn claim(inner: &Inner, ids: &[MessageId], now: u64) -> Result<Vec<Claim>, OpError> {
    let ids: Vec<String> = ids
        .iter()
        .filter(|id| id.is_valid())
        .map(|id| id.0.clone())
        .collect();
    let mut client = inner.pool.get().await?;
    let take = client
        .prepare_cached(
            "UPDATE relayward_recipients r
             SET lease_owner = $3, lease_expires = now() + make_interval(secs => $4::float8)
             FROM (SELECT r2.message_id, r2.position
                   FROM relayward_recipients r2
                   JOIN relayward_messages m ON m.id = r2.message_id
                   WHERE r2.message_id = ANY($1) AND r2.status = 'pending'
                     AND r2.next_attempt <= $2 AND NOT m.held
                     AND (r2.lease_owner IS NULL OR r2.lease_owner = $3 OR r2.lease_expires < now())
                   ORDER BY r2.message_id, r2.position
                   FOR UPDATE OF r2 SKIP LOCKED) due
             WHERE r.message_id = due.message_id AND r.position = due.position
             RETURNING r.message_id, r.address",
        )
        .await?;
    let by_ids = rows::ByIds::prepare(&client).await?;
    let give_back = client.prepare_cached(RELEASE_MESSAGES).await?;
    let tx = client.transaction().await?;
    let params: [&(dyn ToSql + Sync); 4] = [&ids, &signed(now), &inner.owner, &inner.lease_secs];
    // Sent together, executed in this order: the reads see the leases just taken.
    let ((), taken, (recipients, messages)) = tokio::try_join!(
        biased;
        tx.batch_execute(NO_FLUSH),
        tx.query(&take, &params),
        by_ids.read(&tx, &ids),
    )?;
    let loaded = rows::assemble(messages, recipients)?;
    // Held messages are claimed by nobody; the leases this node took on them when it accepted
    // them go back, so that a release makes them due for every node at once.
    let held_here: Vec<&str> = loaded
        .iter()
        .filter(|l| {
            l.message.held
                && l.leases
                    .iter()
                    .flatten()
                    .any(|lease| lease.owner == inner.owner)
        })
        .map(|l| l.message.id.0.as_str())
        .collect();
    if !held_here.is_empty() {
        tx.execute(&give_back, &[&held_here, &inner.owner]).await?;
    }
    tx.commit().await?;
    for id in held_here {
        inner.leases_dropped(id);
    }
    let mut claimed: HashSet<String> = HashSet::new();
    let mut leased: HashMap<String, HashSet<String>> = HashMap::new();
    for row in &taken {
        let id: String = row.get(0);
        let address: String = row.get(1);
        inner.lease_taken(&id, address.clone());
        leased.entry(id.clone()).or_default().insert(address);
        claimed.insert(id);
    }
    let mut claims = Vec::with_capacity(ids.len());
    let mut found: HashSet<String> = HashSet::new();
    for Loaded { message, leases } in loaded {
        found.insert(message.id.0.clone());
        let message = for_this_node(message, &leases, &inner.owner);
        if claimed.contains(&message.id.0) {
            let not_before = now + inner.lease_secs.ceil() as u64;
            claims.push(Claim::Taken(only_what_was_leased(
                message, &leased, not_before,
            )));
        } else {
            let id = message.id.clone();
            claims.push(Claim::Later {
                at: message.next_attempt(),
                id,
            });
        }
    }
    for id in &ids {
        if !found.contains(id) {
            // Claimed a moment ago and deleted since, or never there.
            inner.leases_dropped(id);
            claims.push(Claim::Later {
                id: MessageId(id.clone()),
                at: None,
            });
        }
    }
    Ok(claims)
}

/// Gives up this node's leases on the messages `$1` (`$2`: this node's owner id).
const RELEASE_MESSAGES: &str =
    "UPDATE relayward_recipients SET lease_owner = NULL, lease_expires = NULL
     WHERE message_id = ANY($1) AND lease_owner = $2";

/// A taken message as this claim may deliver it: a pending recipient whose row the `UPDATE`
/// skipped (another node was claiming it at that moment, not yet committed, so the read above
/// still shows it unleased) is not due before `not_before` (when that lease would end); after
/// this delivery the runner reads the message again and sees the real lease.
fn only_what_was_leased(
    mut message: QueuedMessage,
    leased: &HashMap<String, HashSet<String>>,
    not_before: u64,
) -> QueuedMessage {
    let ours = leased.get(&message.id.0);
    for recipient in &mut message.recipients {
        if !recipient.status.is_final()
            && !ours.is_some_and(|addresses| addresses.contains(&recipient.address))
        {
            recipient.next_attempt = recipient.next_attempt.max(not_before);
        }
    }
    message
}

/// The message as this node should see it: a pending recipient another node holds is due
/// when that lease ends, not before.
fn for_this_node(
    mut message: QueuedMessage,
    leases: &[Option<rows::Lease>],
    owner: &str,
) -> QueuedMessage {
    for (recipient, lease) in message.recipients.iter_mut().zip(leases) {
        if let Some(lease) = lease
            && lease.owner != owner
            && !recipient.status.is_final()
        {
            recipient.next_attempt = recipient.next_attempt.max(lease.expires);
        }
    }
    message
}

/// Gives up this node's leases on one message.
pub async fn release(inner: &Inner, id: &str) -> Result<(), OpError> {
    let mut client = inner.pool.get().await?;
    let statement = client.prepare_cached(RELEASE_MESSAGES).await?;
    let tx = client.transaction().await?;
    let ids: &[&str] = &[id];
    let params: [&(dyn ToSql + Sync); 2] = [&ids, &inner.owner];
    tokio::try_join!(
        biased;
        tx.batch_execute(NO_FLUSH),
        tx.execute(&statement, &params),
    )?;
    tx.commit().await?;
    Ok(())
}

/// Due messages that nobody holds, oldest due first.
pub async fn due(inner: &Inner, now: u64) -> Result<Vec<MessageId>, OpError> {
    let client = inner.pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT r.message_id FROM relayward_recipients r
             JOIN relayward_messages m ON m.id = r.message_id
             WHERE r.status = 'pending' AND r.next_attempt <= $1 AND NOT m.held
               AND (r.lease_owner IS NULL OR r.lease_expires < now())
             GROUP BY r.message_id
             ORDER BY min(r.next_attempt)
             LIMIT $2",
        )
        .await?;
    let rows = client
        .query(&statement, &[&signed(now), &DUE_LIMIT])
        .await?;
    Ok(rows.iter().map(|row| MessageId(row.get(0))).collect())
}

/// One heartbeat: the node's row, and the leases of its messages in delivery that are past
/// half their time; one transaction, one round trip of statements.
pub async fn heartbeat(inner: &Inner) -> Result<(), OpError> {
    let mut client = inner.pool.get().await?;
    let touch = client
        .prepare_cached(
            "INSERT INTO relayward_nodes (owner, name) VALUES ($1, $2)
             ON CONFLICT (owner) DO UPDATE SET heartbeat = now()",
        )
        .await?;
    let renew = client
        .prepare_cached(
            "UPDATE relayward_recipients
             SET lease_expires = now() + make_interval(secs => $3::float8)
             WHERE message_id = ANY($1) AND lease_owner = $2
               AND lease_expires < now() + make_interval(secs => $3::float8 / 2)",
        )
        .await?;
    // Rows of nodes gone for a long time (killed, never shut down) are only history.
    let forget = client
        .prepare_cached(
            "DELETE FROM relayward_nodes WHERE heartbeat < now() - make_interval(secs => $1::float8 * 100)",
        )
        .await?;
    let held = inner.held_messages();
    let node: [&(dyn ToSql + Sync); 2] = [&inner.owner, &inner.node];
    let leases: [&(dyn ToSql + Sync); 3] = [&held, &inner.owner, &inner.lease_secs];
    let gone: [&(dyn ToSql + Sync); 1] = [&inner.lease_secs];
    let tx = client.transaction().await?;
    tokio::try_join!(
        biased;
        tx.batch_execute(NO_FLUSH),
        tx.execute(&touch, &node),
        async {
            if held.is_empty() {
                return Ok(0);
            }
            tx.execute(&renew, &leases).await
        },
        tx.execute(&forget, &gone),
    )?;
    tx.commit().await?;
    Ok(())
}

/// Gives back every lease of this node and removes its row (orderly shutdown).
pub async fn release_all(inner: &Inner) -> Result<(), OpError> {
    let client = inner.pool.get().await?;
    let held = inner.held_messages();
    client
        .execute(RELEASE_MESSAGES, &[&held, &inner.owner])
        .await?;
    client
        .execute(
            "DELETE FROM relayward_nodes WHERE owner = $1",
            &[&inner.owner],
        )
        .await?;
    Ok(())
}

/// How often the heartbeat runs: a quarter of the lease, between 250 ms and 30 s.
pub fn heartbeat_interval(lease_timeout: Duration) -> Duration {
    (lease_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
}
