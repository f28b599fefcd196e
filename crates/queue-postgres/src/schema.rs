//! The schema and its migrations, applied at open.
//!
//! Every migration is a step from version N to N+1, kept here forever in order; the version
//! the database is at lives in `relayward_schema`. [`migrate`] runs under a transaction-scoped
//! advisory lock, so nodes starting at the same moment apply each step once. A database at a
//! version newer than this binary knows was migrated by a newer relayward: running on it could
//! misread or damage what that version wrote, so [`migrate`] refuses (upgrade this node, or
//! point it at another database).
//!
//! Designed against bloat (see the crate documentation): the lease columns are in no index,
//! so a claim is a HOT update when the page has room (`fillfactor`); finished messages are
//! deleted, never kept as tombstones; autovacuum is told to visit these small, busy tables
//! early rather than at its default 20% of dead rows.

use tokio_postgres::Client;

/// The schema version this binary writes and understands.
pub const LATEST: i32 = 1;

/// Key of the advisory lock migrations take (any constant; "rw-queue" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_77_2d_71_75_65_75_65;

/// Step N+1 is `MIGRATIONS[N]`.
const MIGRATIONS: [&str; LATEST as usize] = [r#"
CREATE TABLE relayward_messages (
    id          text PRIMARY KEY,
    sender      text NOT NULL,
    arrived     bigint NOT NULL,
    client_ip   text NOT NULL,
    auth_login  text,
    origin      text NOT NULL,
    size        bigint NOT NULL,
    held        boolean NOT NULL DEFAULT false,
    accepted_by text NOT NULL,
    -- SMTPUTF8, RET= and ENVID= as JSON (relayward_queue::MessageOptions); NULL when plain.
    options     text,
    content     bytea NOT NULL
) WITH (fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.05,
        autovacuum_analyze_scale_factor = 0.05);

CREATE TABLE relayward_recipients (
    message_id    text NOT NULL REFERENCES relayward_messages (id) ON DELETE CASCADE,
    position      integer NOT NULL,
    address       text NOT NULL,
    route         text,
    -- NOTIFY= and ORCPT= as JSON (relayward_queue::RcptDsn); NULL when the client gave none.
    dsn           text,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'delivered', 'bounced', 'expired')),
    attempts      integer NOT NULL DEFAULT 0,
    -- A delay notice (RFC 3464 Action: delayed) went out: at most one per recipient.
    delay_notified boolean NOT NULL DEFAULT false,
    last_error    text,
    next_attempt  bigint NOT NULL,
    lease_owner   text,
    lease_expires timestamptz,
    PRIMARY KEY (message_id, position)
) WITH (fillfactor = 70,
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.05,
        autovacuum_analyze_scale_factor = 0.05);

-- What is due: pending recipients only, so delivered ones never weigh on the scan.
CREATE INDEX relayward_recipients_due ON relayward_recipients (next_attempt)
    WHERE status = 'pending';

CREATE TABLE relayward_nodes (
    owner     text PRIMARY KEY,
    name      text NOT NULL,
    started   timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE relayward_quarantine (
    id       text PRIMARY KEY,
    reason   text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now(),
    moved_by text NOT NULL,
    envelope text NOT NULL,
    content  bytea NOT NULL
);
"#];

/// Why the schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the queue database has schema version {found}, newer than this relayward knows (up to {LATEST}): \
         it was upgraded by a newer relayward; upgrade this node too (never run an older binary on a newer schema)"
    )]
    Newer { found: i32 },
    #[error("cannot migrate the queue database: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// Brings the database to [`LATEST`], or refuses a newer one. Returns the version found.
pub async fn migrate(client: &mut Client, node: &str) -> Result<i32, SchemaError> {
    let tx = client.transaction().await?;
    // `CREATE TABLE IF NOT EXISTS` on an existing table sends a NOTICE, which the client
    // would log at every start of every node.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS relayward_schema (
             singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
             version    integer NOT NULL,
             updated_by text NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_opt("SELECT version FROM relayward_schema", &[])
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > LATEST {
        return Err(SchemaError::Newer { found });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        tracing::info!(version = step + 1, "queue database schema migrated");
    }
    if found < LATEST {
        tx.execute(
            "INSERT INTO relayward_schema (version, updated_by) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE
                 SET version = EXCLUDED.version, updated_by = EXCLUDED.updated_by, updated_at = now()",
            &[&LATEST, &node],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
