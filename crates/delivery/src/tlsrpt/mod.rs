//! TLS-RPT (RFC 8460) aggregate reports, sent when `[tls_report] enabled = true`.
//!
//! - [`book`]: the runner counts every MX session held to a published policy (MTA-STS,
//!   DANE), successes and failures with their RFC 8460 result type, per policy domain and
//!   period, persisted in `data_dir/tls-report/`.
//! - [`TlsReporter::run`]: at the end of each period (`interval`, default one UTC day) it looks
//!   up each domain's `_smtp._tls` TXT record ([`record`]) and sends the domain its report
//!   ([`report`]): to `mailto:` destinations as a message through relayward's own queue, to
//!   `https:` ones by POST ([`post`]); a POST that failed and may pass later is tried again
//!   for up to 24 hours ([`retry`]). Domains without a record get nothing.
//! - [`TlsReporter::send_now`]: the same at once, for operators and tests (`relayward
//!   tls-report send-now`).
//!
//! No loops: a report message is recognised by the runner ([`is_report`]) and delivered with
//! opportunistic TLS whatever its destination demands (§5.3: reports are delivered despite
//! TLS failures, possibly in clear text), so its own sessions are never held to a policy and
//! never counted in a report.

pub mod book;
mod post;
pub mod record;
pub mod report;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use relayward_config::Live;
use relayward_protocol::route::Routed;
use relayward_protocol::text::Escaped;
use relayward_queue::{NewMessage, NewRecipient, Origin, Queue, QueuedMessage};
use serde::Serialize;

pub use book::{FailureKey, Period, PolicyType, ReportBook, ReportPolicy};
use record::Destination;
use report::{Report, Reporter};
use retry::{FirstAttempt, Next, Retries};

use crate::context::DeliveryContext;
use crate::runner::unix_now;

/// How often counts that changed are written to disk (what a crash may lose).
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Most `https:` retries one turn of the reporter makes.
const RETRIES_PER_TURN: usize = 8;

/// The header field only relayward's own reports carry (§5.3).
const SUBMITTER_FIELD: &str = "TLS-Report-Submitter";

/// Whether `message` is a TLS report made by this server: made here (origin local, which no
/// client can claim) and carrying the report header field.
pub fn is_report(message: &QueuedMessage, content: &[u8]) -> bool {
    message.origin == Origin::Local
        && relayward_protocol::header::first(content, SUBMITTER_FIELD).is_some()
}

/// What became of one domain's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sent {
    pub domain: String,
    pub report_id: String,
    pub successes: u64,
    pub failures: u64,
    /// Destinations that took it: `mailto:ADDR (queued as ID)`, `https://… (HTTP 200)`.
    pub delivered: Vec<String>,
    /// Destinations that did not, and why.
    pub errors: Vec<String>,
    /// Why nothing was sent (no `_smtp._tls` record).
    pub skipped: Option<String>,
}

/// Sends the reports; see the module documentation.
#[derive(Clone)]
pub struct TlsReporter {
    queue: Arc<dyn Queue>,
    live: Live<DeliveryContext>,
    book: Arc<ReportBook>,
    /// `https:` reports to try again, in `tls-report/retry/`.
    retries: Arc<Retries>,
}

impl TlsReporter {
    pub fn new(queue: Arc<dyn Queue>, live: Live<DeliveryContext>, book: Arc<ReportBook>) -> Self {
        let retries = Arc::new(Retries::new(book.dir().join("retry")));
        Self {
            queue,
            live,
            book,
            retries,
        }
    }

    /// Saves the counts every [`SAVE_EVERY`], reports each period when it ends (and a period a
    /// crash left unreported, at once) and tries failed `https:` reports again when they are
    /// due, until `shutdown`; then saves once more.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            let enabled = self.live.current().settings.tls_report.enabled;
            if enabled && (self.book.has_pending() || self.book.is_due(unix_now())) {
                // A failure is logged by `report`, and retried at the next turn.
                let _ = self.report().await;
            }
            self.save();
            if enabled {
                tokio::select! {
                    _ = &mut shutdown => break,
                    () = self.retry_due() => {}
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(SAVE_EVERY) => {}
            }
        }
        self.save();
    }

    /// Ends the current period now and reports it (`relayward tls-report send-now`).
    pub async fn send_now(&self) -> Result<Vec<Sent>, String> {
        if !self.live.current().settings.tls_report.enabled {
            return Err("TLS reports are off: set [tls_report] enabled = true".into());
        }
        self.report().await
    }

    /// Closes the period (the pending one first) and sends its reports. Fails only when the
    /// period cannot be closed (its files cannot be written): then nothing was sent, and
    /// `send-now` must say so rather than "nothing to send".
    async fn report(&self) -> Result<Vec<Sent>, String> {
        // One period is reported at a time (the schedule and `send-now` may meet).
        let _turn = self.book.turn.lock().await;
        let ctx = self.live.current();
        let interval = ctx.settings.tls_report.interval;
        let period = match self.book.close(unix_now(), interval) {
            Ok(period) => period,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the TLS report counts; reports wait");
                return Err(format!(
                    "cannot close the TLS report period (writing its counts failed: {e}); nothing was sent, the counts are kept"
                ));
            }
        };
        let mut sent = Vec::new();
        for domain in period.domains() {
            let outcome = self.send_domain(&ctx, &period, &domain).await;
            log_sent(&outcome);
            sent.push(outcome);
        }
        if let Err(e) = self.book.sent() {
            tracing::error!(error = %e, "cannot forget the reported TLS period; it may be reported again");
        }
        Ok(sent)
    }

    async fn send_domain(&self, ctx: &DeliveryContext, period: &Period, domain: &str) -> Sent {
        let reporter = reporter(ctx);
        let report = Report::build(&reporter, domain, period);
        let (successes, failures) = report.policies.iter().fold((0, 0), |(s, f), p| {
            (
                s + p.summary.total_successful_session_count,
                f + p.summary.total_failure_session_count,
            )
        });
        let mut sent = Sent {
            domain: domain.to_string(),
            report_id: report.report_id.clone(),
            successes,
            failures,
            delivered: Vec::new(),
            errors: Vec::new(),
            skipped: None,
        };
        let destinations = match record::lookup(&ctx.resolver, domain).await {
            Ok(destinations) => destinations,
            Err(e) => {
                sent.errors.push(format!("_smtp._tls.{domain}: {e}"));
                return sent;
            }
        };
        if destinations.is_empty() {
            sent.skipped = Some(format!("no TLSRPT record at _smtp._tls.{domain}"));
            return sent;
        }
        let mail: Vec<String> = destinations
            .iter()
            .filter_map(|d| match d {
                Destination::Mail(address) => Some(address.clone()),
                Destination::Https(_) => None,
            })
            .collect();
        if !mail.is_empty() {
            self.mail(ctx, &reporter, &report, period, &mail, &mut sent)
                .await;
        }
        // Compressed once, when the first HTTPS destination needs it (a record may name 8),
        // and shared by every destination and address without a copy.
        let mut compressed: Option<Result<hyper::body::Bytes, String>> = None;
        for destination in &destinations {
            let Destination::Https(url) = destination else {
                continue;
            };
            let body = match compressed
                .get_or_insert_with(|| report.gzip().map(Into::into).map_err(|e| e.to_string()))
            {
                Ok(body) => body.clone(),
                Err(e) => {
                    sent.errors.push(format!("{url}: cannot compress: {e}"));
                    continue;
                }
            };
            let timeout = ctx.settings.timeouts.connect;
            match post::post(&ctx.resolver, &ctx.verified, url, body.clone(), timeout).await {
                Ok(status) => sent.delivered.push(format!("{url} ({status})")),
                Err(e) if e.permanent => sent.errors.push(format!("{url}: {}", e.reason)),
                Err(e) => {
                    let failed = FirstAttempt {
                        domain,
                        report_id: &report.report_id,
                        url,
                        body: &body,
                        error: &e.reason,
                        at: unix_now(),
                    };
                    let kept = self
                        .retries
                        .keep(failed, ctx.settings.tls_report.retry_after);
                    sent.errors.push(match kept {
                        Ok(next) => format!(
                            "{url}: {}; tried again from {} for up to 24 hours",
                            e.reason,
                            report::rfc3339(next)
                        ),
                        Err(io) => {
                            format!("{url}: {}; cannot keep it to try again: {io}", e.reason)
                        }
                    });
                }
            }
        }
        sent
    }

    /// Posts the `https:` reports whose next attempt has come (see [`retry`]), at most
    /// [`RETRIES_PER_TURN`] of them, so that a report server that hangs delays the counts'
    /// next save by a bounded time (the rest wait for the next turn).
    async fn retry_due(&self) {
        let retries = Arc::clone(&self.retries);
        let now = unix_now();
        let due = tokio::task::spawn_blocking(move || retries.due(now))
            .await
            .unwrap_or_default();
        if due.is_empty() {
            return;
        }
        let ctx = self.live.current();
        let timeout = ctx.settings.timeouts.connect;
        for (path, pending) in due.into_iter().take(RETRIES_PER_TURN) {
            let names = (
                pending.domain.clone(),
                pending.url.clone(),
                pending.report_id.clone(),
            );
            let (domain, url, report_id) =
                (Escaped(&names.0), Escaped(&names.1), Escaped(&names.2));
            let body = match pending.body() {
                Ok(body) => hyper::body::Bytes::from(body),
                Err(e) => {
                    tracing::warn!(%domain, %url, error = %e, "unreadable TLS report retry removed");
                    self.retries.forget(&path);
                    continue;
                }
            };
            let attempt = pending.attempts + 1;
            match post::post(&ctx.resolver, &ctx.verified, &pending.url, body, timeout).await {
                Ok(status) => {
                    tracing::info!(%domain, %report_id, %url, attempt, status = %status, "TLS report sent");
                    self.retries.forget(&path);
                }
                Err(e) if e.permanent => {
                    tracing::warn!(%domain, %report_id, %url, attempt, error = %Escaped(&e.reason), "TLS report refused; not tried again");
                    self.retries.forget(&path);
                }
                Err(e) => {
                    let retry_after = ctx.settings.tls_report.retry_after;
                    let next = self.retries.failed_again(
                        &path,
                        pending,
                        &e.reason,
                        unix_now(),
                        retry_after,
                    );
                    match next {
                        Ok(Next::At(at)) => {
                            tracing::info!(%domain, %report_id, %url, attempt, error = %Escaped(&e.reason), next = %report::rfc3339(at), "TLS report not delivered; trying again later")
                        }
                        Ok(Next::GaveUp) => {
                            tracing::warn!(%domain, %report_id, %url, attempt, error = %Escaped(&e.reason), "TLS report not delivered within 24 hours; given up")
                        }
                        Err(io) => {
                            tracing::warn!(%domain, %report_id, %url, error = %io, "cannot record a TLS report retry")
                        }
                    }
                }
            }
        }
    }

    /// Queues one message to every `mailto:` destination that has a route.
    async fn mail(
        &self,
        ctx: &DeliveryContext,
        reporter: &Reporter,
        report: &Report,
        period: &Period,
        addresses: &[String],
        sent: &mut Sent,
    ) {
        let mut recipients = Vec::new();
        for address in addresses {
            match ctx.router.route_address(address) {
                Some(Ok(Routed { address, route, .. })) => {
                    recipients.push(NewRecipient { address, route })
                }
                _ => sent.errors.push(format!(
                    "mailto:{address}: not an address this server can send to"
                )),
            }
        }
        if recipients.is_empty() {
            return;
        }
        let names: Vec<String> = recipients.iter().map(|r| r.address.clone()).collect();
        let content = match report.message(reporter, period, &names) {
            Ok(content) => content,
            Err(e) => {
                sent.errors
                    .push(format!("cannot build the report message: {e}"));
                return;
            }
        };
        let queued = self
            .queue
            .enqueue(NewMessage {
                sender: reporter.from.clone(),
                recipients,
                content,
                client_ip: "127.0.0.1".into(),
                auth_login: None,
                origin: Origin::Local,
                esmtp: Default::default(),
            })
            .await;
        match queued {
            Ok(id) => sent.delivered.extend(
                names
                    .iter()
                    .map(|name| format!("mailto:{name} (queued as {id})")),
            ),
            Err(e) => sent
                .errors
                .push(format!("mailto:{}: cannot queue: {e}", names.join(","))),
        }
    }

    fn save(&self) {
        if let Err(e) = self.book.save() {
            tracing::warn!(error = %e, "cannot save the TLS report counts; trying again");
        }
    }
}

fn reporter(ctx: &DeliveryContext) -> Reporter {
    let settings = &ctx.settings.tls_report;
    let hostname = &ctx.settings.hostname;
    Reporter {
        organization: settings.organization_name(hostname),
        contact: settings.contact_info(hostname),
        submitter: settings.submitter(hostname),
        from: settings.from_address(hostname),
    }
}

fn log_sent(sent: &Sent) {
    let domain = Escaped(&sent.domain);
    if let Some(why) = &sent.skipped {
        tracing::info!(%domain, successes = sent.successes, failures = sent.failures, skipped = %Escaped(why), "TLS report not sent");
        return;
    }
    for to in &sent.delivered {
        tracing::info!(%domain, report_id = %Escaped(&sent.report_id), successes = sent.successes, failures = sent.failures, to = %Escaped(to), "TLS report sent");
    }
    for error in &sent.errors {
        tracing::warn!(%domain, report_id = %Escaped(&sent.report_id), error = %Escaped(error), "TLS report not delivered");
    }
}
