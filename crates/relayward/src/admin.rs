//! The admin socket: `data_dir/admin.sock`, a Unix socket only the server's own user (and
//! root) can open (mode 0600), through which the CLI talks to a running server.
//!
//! One JSON request line, one JSON reply line, then the server closes. Requests:
//! `{"command":"status"}`, `{"command":"bans"}`, `{"command":"unban","address":"192.0.2.7"}`
//! or `{"command":"unban","all":true}`, and `{"command":"queue-changed"}`, which `relayward
//! queue …` sends after each change so the runner sees it at once instead of at its next scan,
//! and `{"command":"tls-report-send"}` (`relayward tls-report send-now`), which ends the TLS
//! report period now and answers with what became of each domain's report.
//! Replies are `{"ok":true,…}` or `{"ok":false,"error":"…"}`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::view::{ServerView, unix_seconds};

/// The socket's name inside `data_dir`.
pub const SOCKET_NAME: &str = "admin.sock";

/// Longest request line; requests are a few dozen octets.
const MAX_REQUEST: u64 = 4096;

/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the socket (replacing one a crashed server left behind) with mode 0600.
pub fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context as _;
    let path = socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another relayward serve is running on {} (it answers on {}); stop it first or give this one its own data_dir",
                data_dir.display(),
                path.display()
            );
        }
        // Nobody answers: left behind by a server that did not stop cleanly.
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the old {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot create the admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// Answers requests until `shutdown`; removes the socket when it stops.
pub fn spawn(
    listener: UnixListener,
    path: PathBuf,
    view: Arc<ServerView>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, Arc::clone(&view)));
                }
                Err(e) => {
                    tracing::warn!("admin socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

async fn answer(stream: UnixStream, view: Arc<ServerView>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let reply = match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match serde_json::from_str::<Value>(&line) {
            Ok(request) => handle(&request, &view).await,
            Err(e) => failure(format!("not a JSON request: {e}")),
        },
        Ok(Err(e)) => failure(format!("cannot read the request: {e}")),
        Err(_) => failure("no request within 5 s".to_string()),
    };
    let mut text = reply.to_string();
    text.push('\n');
    let _ = tokio::time::timeout(TIMEOUT, write.write_all(text.as_bytes())).await;
}

fn failure(error: String) -> Value {
    json!({ "ok": false, "error": error })
}

async fn handle(request: &Value, view: &ServerView) -> Value {
    match request["command"].as_str() {
        Some("status") => status(view).await,
        Some("bans") => bans(view),
        Some("unban") => unban(request, view),
        Some("queue-changed") => {
            tracing::info!("queue changed by an admin command; rescanning now");
            view.queue_changed();
            json!({ "ok": true })
        }
        Some("tls-report-send") => match view.send_tls_reports().await {
            Ok(reports) => json!({ "ok": true, "reports": reports }),
            Err(e) => failure(e),
        },
        Some(other) => failure(format!(
            "unknown command {:?}",
            relayward_protocol::text::escape_control(other)
        )),
        None => failure("the request has no \"command\"".to_string()),
    }
}

async fn status(view: &ServerView) -> Value {
    let snapshot = view.current().load();
    let listeners: Vec<Value> = view
        .listeners()
        .iter()
        .map(|l| {
            json!({
                "address": l.address.to_string(),
                "kind": l.kind.to_string(),
                "accepting": l.health.check().is_ok(),
            })
        })
        .collect();
    let queue = match view.queue_counts().await {
        Ok(counts) => json!({
            "active": counts.active,
            "due": counts.due,
            "deferred": counts.deferred,
            "held": counts.held,
            "total": counts.total(),
            "oldest_seconds": counts.oldest_seconds,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    json!({
        "ok": true,
        "pid": std::process::id(),
        "started": unix_seconds(view.started()),
        "config": {
            "file": snapshot.origin.file.as_ref().map(|p| p.display().to_string()),
            "loaded": unix_seconds(snapshot.origin.loaded),
        },
        "hostname": snapshot.config.hostname,
        "listeners": listeners,
        "sessions": view.gate().connections(),
        "queue": queue,
        "auth_bans": view.auth().bans(Instant::now()).len(),
    })
}

fn bans(view: &ServerView) -> Value {
    let now = Instant::now();
    let auth: Vec<Value> = view
        .auth()
        .bans(now)
        .into_iter()
        .map(|ban| {
            json!({
                "address": ban.address.to_string(),
                "kind": "auth",
                "failures": ban.failures,
                "remaining_seconds": ban.remaining.as_secs(),
            })
        })
        .collect();
    let connection: Vec<Value> = view
        .gate()
        .throttled(now)
        .into_iter()
        .map(|t| {
            json!({
                "address": t.address.to_string(),
                "kind": "connection",
                "failures": t.connections,
                "remaining_seconds": t.remaining.as_secs(),
            })
        })
        .collect();
    json!({ "ok": true, "bans": auth.into_iter().chain(connection).collect::<Vec<_>>() })
}

fn unban(request: &Value, view: &ServerView) -> Value {
    if request["all"].as_bool() == Some(true) {
        let lifted = view.auth().lift_all(Instant::now()) + view.gate().forgive_all();
        tracing::info!(lifted, "all bans lifted (admin socket)");
        return json!({ "ok": true, "lifted": lifted });
    }
    let Some(text) = request["address"].as_str() else {
        return failure("give an \"address\" or \"all\": true".to_string());
    };
    let Ok(address) = text.parse::<IpAddr>() else {
        return failure(format!(
            "{:?} is not an IP address",
            relayward_protocol::text::escape_control(text)
        ));
    };
    let lifted = usize::from(view.auth().lift(address, Instant::now()))
        + usize::from(view.gate().forgive(address));
    tracing::info!(client = %address, lifted, "ban lifted (admin socket)");
    json!({ "ok": true, "lifted": lifted })
}

/// Sends one request to the server running on `data_dir`; `Ok(None)` when none runs there
/// (no socket, or nobody answers on it).
pub async fn request(data_dir: &Path, request: &Value) -> Result<Option<Value>, String> {
    request_within(data_dir, request, TIMEOUT).await
}

/// [`request`], waiting up to `limit` for the answer (a command that does network work).
pub async fn request_within(
    data_dir: &Path,
    request: &Value,
    limit: Duration,
) -> Result<Option<Value>, String> {
    let path = socket_path(data_dir);
    let stream = match tokio::time::timeout(TIMEOUT, UnixStream::connect(&path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Ok(Err(e)) => return Err(format!("cannot open {}: {e}", path.display())),
        Err(_) => return Err(format!("{} does not answer", path.display())),
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = request.to_string();
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(read).read_line(&mut reply).await?;
        Ok::<String, std::io::Error>(reply)
    };
    let reply = match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(format!("admin socket {}: {e}", path.display())),
        Err(_) => return Err(format!("{} does not answer", path.display())),
    };
    let value: Value =
        serde_json::from_str(&reply).map_err(|e| format!("the server's reply is not JSON: {e}"))?;
    if value["ok"] == Value::Bool(true) {
        Ok(Some(value))
    } else {
        Err(value["error"]
            .as_str()
            .unwrap_or("the server refused the request")
            .to_string())
    }
}
