//! Is the database there? Every operation reports its outcome here; the first failure that
//! means "the database cannot be reached" logs one line (new mail gets `451 4.3.0`, delivery
//! pauses), and the first success after it logs one line (both resume). Everything in between
//! is [`QueueError::Unavailable`], which the session answers with `451 4.3.0` and the runner
//! logs only at debug level.

use std::sync::atomic::{AtomicBool, Ordering};

use relayward_protocol::text::Escaped;
use relayward_queue::QueueError;
use tokio_postgres::error::SqlState;

/// The up/down state of the database connection, shared by every task.
#[derive(Debug, Default)]
pub struct Health {
    down: AtomicBool,
}

impl Health {
    /// Whether the last operation found the database unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// An operation succeeded: the database is there.
    pub fn up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::warn!("queue database reachable again: accepting mail and delivering");
        }
    }

    /// An operation failed: the error as the queue reports it, logging the outage once.
    pub fn failed(&self, error: Failure) -> QueueError {
        match error {
            Failure::Unavailable(why) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %Escaped(&why),
                        "queue database unreachable: new mail gets 451 4.3.0 and delivery pauses until it is back"
                    );
                }
                QueueError::Unavailable(why)
            }
            Failure::Other(why) => QueueError::Io(std::io::Error::other(why)),
        }
    }
}

/// A failed database operation, sorted.
#[derive(Debug)]
pub enum Failure {
    /// The database cannot be reached or cannot serve now (down, restarting, failed over to
    /// a read-only standby, out of connections, timed out).
    Unavailable(String),
    /// Anything else: this operation is at fault, not the database.
    Other(String),
}

impl Failure {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Failure::Unavailable(_))
    }

    /// A deadlock or serialization failure: trying the same work again may succeed.
    pub fn is_retryable(error: &tokio_postgres::Error) -> bool {
        matches!(
            error.code(),
            Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
        )
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        let text = describe(&error);
        match error.code() {
            // No SQLSTATE: the connection itself failed (refused, reset, closed, TLS).
            None => Failure::Unavailable(text),
            Some(code) if unavailable_state(code) => Failure::Unavailable(text),
            Some(_) => Failure::Other(text),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => Failure::from(e),
            other => Failure::Unavailable(format!("connection pool: {other}")),
        }
    }
}

/// SQLSTATEs that say the server cannot serve now, not that the statement is wrong.
fn unavailable_state(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    // 08: connection exception; 53: insufficient resources (too many connections, disk full);
    // 57: operator intervention (shutdown, crash recovery, "cannot connect now").
    matches!(class, "08" | "53" | "57")
        // A failover left us on a standby that cannot write.
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// The error with its cause: tokio-postgres's Display alone often says only "db error".
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}
