//! `relayward queue …`: inspect and manage the queue of a server, also while it runs.
//!
//! The queue is the interface: with the file spool every change is an atomic, locked update of
//! one message's state; with the PostgreSQL queue it is one statement in the shared database,
//! seen by every node. These commands and running servers never lose each other's writes.
//! After a change, the command tells the server running on this data directory over its admin
//! socket, so its runner looks at once; without the socket (another user, no server here) a
//! running server notices within seconds.

use std::process::ExitCode;

use relayward_delivery::admin::{self, Render, RetryTarget};
use relayward_queue::{MessageId, QueueError};

use crate::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    #[command(subcommand)]
    action: QueueAction,
}

/// The filters of `queue list`.
#[derive(clap::Args, Debug, Default)]
struct ListArgs {
    /// Only messages whose sender contains this text (case-insensitive), e.g. a domain;
    /// `<>` for bounces (the null sender).
    #[arg(long, value_name = "TEXT")]
    from: Option<String>,
    /// Only messages with a recipient containing this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    to: Option<String>,
    /// Only messages queued at least this long ago, e.g. `30m`, `2h`, `1d`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Option<std::time::Duration>,
    /// Only messages in this state: `due` (a recipient's next attempt is due), `deferred`
    /// (waiting for a retry) or `held`.
    #[arg(long, value_name = "STATE", value_parser = ["due", "deferred", "held"])]
    state: Option<String>,
}

impl ListArgs {
    /// Whether any filter was given.
    fn filters_something(&self) -> bool {
        self.from.is_some()
            || self.to.is_some()
            || self.older_than.is_some()
            || self.state.is_some()
    }

    fn filter(&self) -> admin::ListFilter {
        admin::ListFilter {
            from: self.from.clone(),
            to: self.to.clone(),
            older_than: self.older_than.map(|d| d.as_secs()),
            state: self.state.as_deref().and_then(admin::MessageState::parse),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
enum QueueAction {
    /// List queued messages: id, age, sender, recipients, next attempt, last error; the
    /// filters narrow the list (all given must match).
    List(ListArgs),
    /// Print one message as stored (trace header first), like postcat. Control characters
    /// other than tab and line ends are escaped unless --raw is given.
    Cat {
        /// Message id (from `queue list`).
        id: String,
        /// Write the stored octets unchanged (to a file or another program).
        #[arg(long)]
        raw: bool,
    },
    /// Count pending recipients by destination domain and message age, like qshape
    /// (columns: total, then up to 5, 10, 20 … 1280 minutes, and older).
    Summary,
    /// Show one message: envelope, per-recipient status and headers.
    Show {
        /// Message id (from `queue list`).
        id: String,
    },
    /// Make a message (or --all messages) due for delivery now.
    Retry {
        /// Message id (from `queue list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Retry every message that is not held.
        #[arg(long)]
        all: bool,
    },
    /// Delete a message without delivering or bouncing it.
    Delete {
        /// Message id (from `queue list`).
        id: String,
    },
    /// Hold a message: it is not delivered until released.
    Hold {
        /// Message id (from `queue list`).
        id: String,
    },
    /// Release a held message.
    Release {
        /// Message id (from `queue list`).
        id: String,
    },
}

pub async fn run(args: QueueArgs, config_arg: ConfigArg, json: bool) -> ExitCode {
    let config = match crate::load_config(&config_arg) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("relayward queue: {message}");
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    match spool_exists(&config, &config_arg) {
        Ok(true) => {}
        Ok(false) => return finish(without_queue(args.action, json)),
        Err(message) => {
            eprintln!("relayward queue: {message}");
            return ExitCode::FAILURE;
        }
    }
    let queue = match crate::queue_backend::OpenQueue::open(&config).await {
        Ok(queue) => queue,
        Err(e) => {
            eprintln!("relayward queue: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let changes = args.action.changes_queue();
    let result = act(&*queue.queue(), args.action, json).await;
    queue.shutdown().await;
    if changes && result.is_ok() {
        tell_server(&config.data_dir).await;
    }
    finish(result)
}

fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            if !text.is_empty() && !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayward queue: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The answers of an empty queue, for a configuration whose `serve` has not run yet (no
/// `data_dir/queue`), without creating one there.
fn without_queue(action: QueueAction, json: bool) -> Result<String, String> {
    let render = |r: &dyn RenderBoth| if json { r.as_json() } else { r.as_table() };
    let not_found = |id: &str| -> Result<String, String> {
        Err(describe(QueueError::NotFound(parse_id(id)?.to_string())))
    };
    match action {
        QueueAction::List(_) => Ok(render(&admin::QueueList(Vec::new()))),
        QueueAction::Summary => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Ok(render(&relayward_delivery::shape::shape(&[], now)))
        }
        QueueAction::Retry { all: true, .. } => Ok(render(&admin::ActionReport {
            action: "retry",
            ids: Vec::new(),
        })),
        QueueAction::Retry { id: None, .. } => Err("give a message id or --all".into()),
        QueueAction::Retry { id: Some(id), .. }
        | QueueAction::Cat { id, .. }
        | QueueAction::Show { id }
        | QueueAction::Delete { id }
        | QueueAction::Hold { id }
        | QueueAction::Release { id } => not_found(&id),
    }
}

/// Whether the file spool is there (always true for PostgreSQL). Opening it creates
/// `data_dir/queue`, which a command that only looks must not do: without `--config` the
/// embedded default's `./relayward-data` is relative to wherever the command runs, so it would
/// make an empty queue in the current directory and answer "Queue is empty." instead of
/// saying it looked in the wrong place. That case is an error; a configuration that was named
/// but has not been served yet has an empty queue (`Ok(false)`).
fn spool_exists(
    config: &relayward_server::config::Config,
    config_arg: &ConfigArg,
) -> Result<bool, String> {
    if config.queue.backend != relayward_config::QueueBackend::File {
        return Ok(true);
    }
    let dir = config.data_dir.join("queue");
    if dir.is_dir() {
        return Ok(true);
    }
    match &config_arg.config {
        None => Err(format!(
            "no queue in {}: that is the data_dir of the embedded default configuration \
             (neither --config FILE nor RELAYWARD_CONFIG was given); name the server's \
             configuration with --config FILE",
            dir.display()
        )),
        Some(_) => Ok(false),
    }
}

impl QueueAction {
    /// Whether the action changes the queue (a running server should look again).
    fn changes_queue(&self) -> bool {
        !matches!(
            self,
            QueueAction::List(_)
                | QueueAction::Show { .. }
                | QueueAction::Cat { .. }
                | QueueAction::Summary
        )
    }
}

/// Asks a running server to rescan its queue now; silent when none runs.
async fn tell_server(data_dir: &std::path::Path) {
    let request = serde_json::json!({ "command": "queue-changed" });
    if let Err(e) = crate::admin::request(data_dir, &request).await {
        eprintln!(
            "relayward queue: note: could not tell the running server ({e}); it sees the change within a second"
        );
    }
}

async fn act(
    queue: &dyn relayward_queue::Queue,
    action: QueueAction,
    json: bool,
) -> Result<String, String> {
    let render = |r: &dyn RenderBoth| if json { r.as_json() } else { r.as_table() };
    let text = match action {
        QueueAction::List(args) => {
            let list = admin::list_matching(queue, &args.filter())
                .await
                .map_err(describe)?;
            if list.0.is_empty() && !json && args.filters_something() {
                // "Queue is empty." would be wrong when only the filters left nothing.
                let total = queue.list().await.map_err(describe)?.len();
                if total > 0 {
                    return Ok(format!(
                        "No message matches the filters ({total} message(s) in the queue).\n"
                    ));
                }
            }
            render(&list)
        }
        QueueAction::Cat { id, raw } => {
            let stored = admin::cat(queue, &parse_id(&id)?).await.map_err(describe)?;
            if raw && !json {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(&stored.content)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write the message: {e}"))?;
                return Ok(String::new());
            }
            render(&stored)
        }
        QueueAction::Summary => render(
            &relayward_delivery::shape::summary(queue)
                .await
                .map_err(describe)?,
        ),
        QueueAction::Show { id } => render(
            &admin::show(queue, &parse_id(&id)?)
                .await
                .map_err(describe)?,
        ),
        QueueAction::Retry { id, all } => {
            let target = match (id, all) {
                (_, true) => RetryTarget::All,
                (Some(id), false) => RetryTarget::One(parse_id(&id)?),
                (None, false) => return Err("give a message id or --all".into()),
            };
            render(&admin::retry(queue, target).await.map_err(describe)?)
        }
        QueueAction::Delete { id } => render(
            &admin::delete(queue, &parse_id(&id)?)
                .await
                .map_err(describe)?,
        ),
        QueueAction::Hold { id } => render(
            &admin::hold(queue, &parse_id(&id)?)
                .await
                .map_err(describe)?,
        ),
        QueueAction::Release { id } => render(
            &admin::release(queue, &parse_id(&id)?)
                .await
                .map_err(describe)?,
        ),
    };
    Ok(text)
}

/// Object-safe view of [`Render`] (which is generic over serde).
trait RenderBoth {
    fn as_table(&self) -> String;
    fn as_json(&self) -> String;
}

impl<T: Render> RenderBoth for T {
    fn as_table(&self) -> String {
        self.table()
    }
    fn as_json(&self) -> String {
        self.json()
    }
}

fn parse_id(text: &str) -> Result<MessageId, String> {
    MessageId::parse(text)
        .map_err(|_| format!("{text:?} is not a message id (see `relayward queue list`)"))
}

fn describe(error: QueueError) -> String {
    match error {
        QueueError::NotFound(id) => format!(
            "no message {id} in the queue (it may have been delivered already: the mail log \
             names every delivery by id, including mail answered `250 … delivered as {id}`, \
             which was never queued)"
        ),
        other => other.to_string(),
    }
}
