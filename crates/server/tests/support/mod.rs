//! In-process sessions: the listener's [`serve_connection`] over an in-memory pipe, with a
//! [`SessionContext`] built from a TOML configuration exactly as `relayward serve` builds it,
//! an in-memory queue, and a test certificate for STARTTLS and implicit TLS. Tests talk to it
//! with the testkit's transcript client:
//!
//! ```ignore
//! let server = Server::start(&standard_config(""));
//! server.smtp("mx")
//!     .send("EHLO probe.outside.test").expect(250)
//!     .send("RCPT TO:<a@other.test>").expect_text(503, "5.5.1");
//! assert!(server.queue.is_empty());
//! ```
//!
//! The runtime's clock is paused: time moves only while client and session both wait, and
//! then jumps to the next timer. Greet pauses, AUTH failure delays and timeouts cost nothing,
//! and a timeout test measures exactly the configured time ([`Server::now`]). Password checks
//! run on a blocking thread, during which the clock does not jump.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayward_server::auth::{AuthLimitSettings, AuthLimiter};
use relayward_server::config::{Config, ListenerKind, Live, Severity};
use relayward_server::listener::serve_connection;
use relayward_server::policy::Policy;
use relayward_server::ratelimit::{UserLimitSettings, UserRateLimiter};
use relayward_server::session::{Ending, SessionContext};
use relayward_testkit::client::{Ca, PipeLink};
use relayward_testkit::pki::{TestPki, test_pki};
use relayward_testkit::queue::MemoryQueue;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use relayward_testkit::Smtp;
#[allow(unused_imports)]
pub use relayward_testkit::client::base64;
#[allow(unused_imports)]
pub use relayward_testkit::config::{PASSWORD, config_with_relay, password_hash, standard_config};

/// The longest a client read may wait on the paused clock: past every default timeout (the
/// 30-minute session limit), so the session always speaks first.
const CLIENT_PATIENCE: Duration = Duration::from_secs(3600);

/// One configuration's session side, serving in-process connections.
pub struct Server {
    runtime: Arc<Runtime>,
    /// The context new sessions (and open ones, at their next MAIL) take; [`Server::reload`]
    /// swaps it as SIGHUP does.
    current: Arc<Mutex<Arc<SessionContext>>>,
    auth: Arc<AuthLimiter>,
    users: Arc<UserRateLimiter>,
    /// What the sessions queued.
    pub queue: Arc<MemoryQueue>,
    pki: TestPki,
    shutdown: watch::Sender<bool>,
    sessions: Mutex<Vec<JoinHandle<Option<Ending>>>>,
}

impl Server {
    /// Builds the session side of `toml` (`DATA_DIR` may stay: nothing is written) the way
    /// `serve` does; panics with the configuration's errors if `serve` would refuse it.
    #[track_caller]
    pub fn start(toml: &str) -> Server {
        let config = checked_config(toml);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let pki = test_pki(&["localhost"]);
        let queue = Arc::new(MemoryQueue::new());
        let auth = AuthLimiter::new(AuthLimitSettings::from_limits(&config.limits));
        let users = UserRateLimiter::new(UserLimitSettings::from_limits(&config.limits));
        let (auth, users) = (Arc::new(auth), Arc::new(users));
        let ctx = SessionContext::from_config(
            &config,
            Policy::from_config(&config).expect("policy"),
            Some(pki.acceptor()),
            Arc::clone(&queue) as _,
            Arc::clone(&auth),
            Arc::clone(&users),
        );
        Server {
            runtime: Arc::new(runtime),
            current: Arc::new(Mutex::new(Arc::new(ctx))),
            auth,
            users,
            queue,
            pki,
            shutdown: watch::channel(false).0,
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// Puts `toml` in force as a SIGHUP does: a new context for new sessions and for open
    /// ones at their next transaction; the queue and the abuse counters carry over.
    #[track_caller]
    pub fn reload(&self, toml: &str) {
        let config = checked_config(toml);
        let ctx = SessionContext::from_config(
            &config,
            Policy::from_config(&config).expect("policy"),
            Some(self.pki.acceptor()),
            Arc::clone(&self.queue) as _,
            Arc::clone(&self.auth),
            Arc::clone(&self.users),
        );
        *self.current.lock().expect("context") = Arc::new(ctx);
    }

    fn sessions(&self) -> Live<SessionContext> {
        let current = Arc::clone(&self.current);
        Live::new(move || {
            let ctx = current.lock().map(|c| Arc::clone(&c));
            ctx.expect("context")
        })
    }

    /// The CA a client trusts for this server's certificate.
    pub fn ca(&self) -> Ca {
        self.pki.ca()
    }

    /// A connection to the `kind` listener ("mx", "submission", "submissions") from
    /// 127.0.0.1, banner read (after the TLS handshake on "submissions").
    #[track_caller]
    pub fn smtp(&self, kind: &str) -> Smtp {
        self.smtp_from(kind, "127.0.0.1")
    }

    /// [`Server::smtp`] from another client address.
    #[track_caller]
    pub fn smtp_from(&self, kind: &str, ip: &str) -> Smtp {
        let mut smtp = self.connect_silent_from(kind, ip);
        if kind == "submissions" {
            smtp.upgrade_without_command(self.ca());
        }
        smtp.expect(220);
        smtp
    }

    /// A connection from 127.0.0.1 that has read nothing yet (to talk first, or to send
    /// garbage instead of a TLS ClientHello).
    pub fn connect_silent(&self, kind: &str) -> Smtp {
        self.connect_silent_from(kind, "127.0.0.1")
    }

    pub fn connect_silent_from(&self, kind: &str, ip: &str) -> Smtp {
        let kind = listener_kind(kind);
        let ip: IpAddr = ip.parse().expect("client IP");
        let client = SocketAddr::new(ip, 40000);
        let (client_end, server_end) = tokio::io::duplex(1024 * 1024);
        let sessions = self.sessions();
        let shutdown = self.shutdown.subscribe();
        let session = self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + sessions.current().limits.session_timeout;
            serve_connection(server_end, client, kind, sessions, shutdown, deadline).await
        });
        self.sessions.lock().expect("sessions").push(session);
        let mut smtp = Smtp::over(PipeLink::new(Arc::clone(&self.runtime), client_end));
        smtp.read_timeout(CLIENT_PATIENCE);
        smtp
    }

    /// The server's clock (paused: it moves only while everyone waits).
    pub fn now(&self) -> tokio::time::Instant {
        self.runtime.block_on(async { tokio::time::Instant::now() })
    }

    /// Moves the paused clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.runtime.block_on(tokio::time::advance(by));
    }

    /// Waits for every session started so far to end; how each ended (`None`: the implicit
    /// TLS handshake failed). Drop the clients first, or make the server close them.
    pub fn endings(&self) -> Vec<Option<Ending>> {
        let sessions: Vec<_> = self.sessions.lock().expect("sessions").drain(..).collect();
        self.runtime.block_on(async {
            let mut endings = Vec::new();
            for session in sessions {
                let ending = tokio::time::timeout(CLIENT_PATIENCE, session)
                    .await
                    .expect("session ended")
                    .expect("session did not panic");
                endings.push(ending);
            }
            endings
        })
    }
}

/// `toml` parsed (`DATA_DIR` may stay: nothing is written); panics with the configuration's
/// errors if `serve` would refuse it.
#[track_caller]
fn checked_config(toml: &str) -> Config {
    let text = toml.replace("DATA_DIR", "/nonexistent/relayward-test");
    let config = Config::from_toml_str(&text, "test.toml").expect("configuration parses");
    if let Err(problems) = config.validate() {
        let errors: Vec<String> = problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "serve would refuse this: {errors:?}");
    }
    config
}

fn listener_kind(kind: &str) -> ListenerKind {
    match kind {
        "mx" => ListenerKind::Mx,
        "submission" => ListenerKind::Submission,
        "submissions" => ListenerKind::Submissions,
        other => panic!("no listener kind {other:?}"),
    }
}
