//! Connections: the pool every operation takes a client from, and what each new connection is
//! told before it is used.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

use crate::{OpenError, PgOptions};

/// How long a connection attempt may take: a database that is down on loopback refuses at
/// once; one cut off by the network would otherwise hold sessions for the TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a free connection from the pool.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// The pool for `options`. Connections are made on demand (none at build time).
pub fn pool(options: &PgOptions) -> Result<Pool, OpenError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| OpenError::Url(e.to_string()))?;
    if let Some(password) = &options.password {
        config.password(password.as_bytes());
    }
    config
        .application_name(format!("relayward {}", options.node_name))
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(Duration::from_secs(30));
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &options.tls {
        Some(tls) => {
            // The rustls configuration verifies the chain and the host name: stronger than
            // libpq's "require", like its "verify-full".
            config.ssl_mode(SslMode::Require);
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(Arc::unwrap_or_clone(
                Arc::clone(tls),
            ));
            Manager::from_config(config, connector, manager_config)
        }
        None => {
            config.ssl_mode(SslMode::Disable);
            Manager::from_config(config, NoTls, manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(options.pool_size.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT * 2))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move { prepare_session(client).await.map_err(HookError::Backend) })
        }))
        .build()
        .map_err(|e| OpenError::Pool(e.to_string()))
}

/// Settings every session of ours runs with:
/// - `synchronous_commit` never weaker than `on`: a `250` must follow a commit that reached
///   the disk (and a synchronous standby, if the administrator set that up); `off` would answer
///   before the WAL is flushed. `local`, `remote_write` and `remote_apply` are kept as set.
/// - `idle_in_transaction_session_timeout`: a transaction left open by mistake must not hold
///   back vacuum (the xmin horizon) and bloat the queue tables.
async fn prepare_session(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await?;
    let current: String = row.get(0);
    let mut setup = String::from("SET idle_in_transaction_session_timeout = '60s';");
    if current == "off" {
        setup.push_str("SET synchronous_commit = on;");
    }
    client.batch_execute(&setup).await
}
