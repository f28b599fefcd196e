//! Probing one target: the battery over a careful dialogue, the accept-all calibration, the
//! extra findings, proof of relay, the verdict.
//!
//! The dialogue follows research §8: one session with `RSET` between tests, but a dropped
//! connection or a 421 only costs a reconnect and a retry of the test it interrupted, so a
//! server that disconnects after N errors still gets every test (nmap's failure mode). A MAIL
//! rejection never hides the RCPT test: RCPT is always sent, and retried behind a null sender
//! when the rejected MAIL made the server answer "bad sequence".

use std::sync::Arc;

use relayward_protocol::battery::{self, CalibrationKind, RenderedTrick, TrickContext, TrickKind};
use relayward_protocol::reply::Reply;
use tokio::time::Instant;

use crate::config::{ProbeConfig, Target};
use crate::conn::{Conn, ConnError};
use crate::report::{
    ConfirmResult, Fallback, Findings, Outcome, ReplyInfo, TargetReport, TestResult, Verdict,
};
use crate::session::{self, Greeting, OpenError};
use crate::special::{self, Run, SpecialTrick};
use crate::transcript::{MAX_TARGET_REPLY_BYTES, Transcript};
use crate::verdict::{self, AcceptAll};

/// Consecutive failed (re)connects after which the rest of the battery is abandoned.
const MAX_OPEN_FAILURES: u32 = 3;

/// The note of a test not sent because the server could no longer be reached.
const UNREACHABLE: &str = "server unreachable after repeated reconnects";

/// Probes one target. Never panics on what the server sends; every wait is bounded by the
/// test and host timeouts.
pub async fn probe_target(target: Target, cfg: Arc<ProbeConfig>) -> TargetReport {
    let started = Instant::now();
    let dnsbl = cfg.dnsbl.clone().map(|d| {
        let ip = target.addr.ip();
        tokio::spawn(async move { d.check(ip).await })
    });
    let mut runner = Runner::new(&target, &cfg, instant_after(started, cfg.host_timeout));
    let mut report = runner.execute().await;
    if let Some(task) = dnsbl {
        report.findings.dnsbl = task.await.unwrap_or_default();
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.finished_unix = unix_now();
    report
}

/// The state of one target's run.
struct Runner<'a> {
    target: &'a Target,
    cfg: &'a ProbeConfig,
    host_deadline: Instant,
    log: Transcript,
    conn: Option<Conn>,
    try_starttls: bool,
    connections: u32,
    /// Connections we closed ourselves to stay under the server's error limit; not reported
    /// as reconnects (those mean the server dropped us).
    planned_reconnects: u32,
    /// Error replies (4xx/5xx) on the current connection.
    errors_on_conn: u32,
    open_failures: u32,
    findings: Findings,
    /// The EHLO reply of the current shared connection (after STARTTLS): what it offers.
    hello: Option<Reply>,
}

/// One MAIL/RCPT exchange as far as it got.
#[derive(Default)]
struct Exchange {
    mail: Option<Reply>,
    rcpt: Option<Reply>,
    fallback: Option<Fallback>,
    /// Set when the connection failed (drop, timeout, 421) before the exchange completed.
    broken: Option<String>,
}

/// Error replies we allow ourselves on one connection before starting a fresh one; below the
/// smallest common server limit that slows or drops a client (Postfix's soft limit of 10).
const ERROR_BUDGET: u32 = 6;

impl Exchange {
    /// How many 4xx/5xx replies this exchange drew (each counts toward the server's limit).
    fn error_replies(&self) -> u32 {
        let mut codes = vec![
            self.mail.as_ref().map(|r| r.code),
            self.rcpt.as_ref().map(|r| r.code),
        ];
        if let Some(fb) = &self.fallback {
            codes.push(fb.mail_reply.as_ref().map(|r| r.code));
            codes.push(fb.rcpt_reply.as_ref().map(|r| r.code));
        }
        codes
            .into_iter()
            .flatten()
            .filter(|code| *code >= 400)
            .count() as u32
    }
}

impl<'a> Runner<'a> {
    fn new(target: &'a Target, cfg: &'a ProbeConfig, host_deadline: Instant) -> Self {
        Self {
            target,
            cfg,
            host_deadline,
            log: match (&cfg.live_transcript, cfg.keep_transcript) {
                (Some(sink), true) => Transcript::streaming(target, Arc::clone(sink)),
                (Some(sink), false) => Transcript::streaming(target, Arc::clone(sink)).discarding(),
                (None, true) => Transcript::new(),
                (None, false) => Transcript::counting(),
            },
            conn: None,
            try_starttls: true,
            connections: 0,
            planned_reconnects: 0,
            errors_on_conn: 0,
            open_failures: 0,
            findings: Findings::default(),
            hello: None,
        }
    }

    async fn execute(&mut self) -> TargetReport {
        if let Err(e) = self.connect().await {
            return self.unreachable(e);
        }
        let ctx = self.context();
        let mut tests = self.run_battery(&ctx).await;
        let plain_accepted = tests
            .iter()
            .any(|t| t.id == "plain-external" && t.outcome == Outcome::Accepted);
        // Session-level tricks; failed AUTH last, after the calibration, because servers
        // that ban after failed logins (fail2ban) would cut the rest short.
        for id in [
            special::PIPELINED_RELAY,
            special::LOCAL_THEN_EXTERNAL,
            special::XCLIENT_SPOOF,
            special::PROXY_HEADER_SPOOF,
        ] {
            tests.push(self.run_special(id, &ctx, plain_accepted).await);
        }
        let nonce = crate::confirm::nonce();
        let calibrations = battery::calibration_probes(&ctx, &nonce);
        let mut calib_results = Vec::new();
        for c in &calibrations {
            let r = self
                .run_test(&c.probe, TrickKind::Sender, "accept-all check")
                .await;
            calib_results.push((c.kind, r));
        }
        self.extra_findings().await;
        tests.push(if plain_accepted {
            // It could show nothing plain-external did not, and a failed login counts against
            // the prober's address (servers ban after a few; an admin probing her own server
            // from a trusted network would lock her own users out).
            special_skipped(
                special::FAILED_AUTH_THEN_RELAY,
                "plain-external was accepted, so a failed login could show nothing more",
            )
        } else {
            self.run_special(special::FAILED_AUTH_THEN_RELAY, &ctx, plain_accepted)
                .await
        });
        let confirm = self.confirm(&ctx, &tests).await;
        if let Some(conn) = self.conn.take() {
            conn.quit(&mut self.log).await;
        }
        let pairs: Vec<(CalibrationKind, &TestResult)> =
            calib_results.iter().map(|(k, r)| (*k, r)).collect();
        let accept_all = AcceptAll::from_results(&pairs);
        let evidence = verdict::Evidence {
            tests: &tests,
            accept_all,
            confirm: self.cfg.confirm.as_ref().map(|c| verdict::ConfirmEvidence {
                results: &confirm,
                wait: c.wait,
            }),
            target_ip: self.target.addr.ip(),
        };
        let (verdict, reason) = verdict::decide(&evidence);
        self.report(verdict, reason, tests, calib_results, confirm)
    }

    fn report(
        &mut self,
        mut verdict: Verdict,
        mut reason: String,
        tests: Vec<TestResult>,
        calibration: Vec<(CalibrationKind, TestResult)>,
        confirm: Vec<ConfirmResult>,
    ) -> TargetReport {
        if self.log.flooded() {
            // Whatever it answered before proves nothing; the tests after it were skipped.
            verdict = Verdict::Inconclusive;
            reason = format!(
                "the server sent more than {} KiB of replies (hostile or broken); the probe stopped reading it",
                MAX_TARGET_REPLY_BYTES / 1024
            );
        }
        self.findings.reconnects = self
            .connections
            .saturating_sub(1)
            .saturating_sub(self.planned_reconnects);
        let log = std::mem::take(&mut self.log);
        TargetReport {
            target: self.target.label.clone(),
            ip: self.target.addr.ip().to_string(),
            port: self.target.addr.port(),
            verdict,
            reason,
            accepted: tests
                .iter()
                .filter(|t| t.outcome == Outcome::Accepted)
                .map(|t| t.id.clone())
                .collect(),
            confirmed: confirm
                .iter()
                .filter(|c| c.arrived)
                .map(|c| c.id.clone())
                .collect(),
            tests,
            calibration: calibration.into_iter().map(|(_, r)| r).collect(),
            confirm,
            findings: std::mem::take(&mut self.findings),
            mx: self.target.mx.clone(),
            duration_ms: 0,
            finished_unix: 0,
            transcript: self.cfg.keep_transcript.then(|| log.into_lines()),
        }
    }

    /// The report when the very first session could not be opened.
    fn unreachable(&mut self, e: OpenError) -> TargetReport {
        let (verdict, reason) = open_failure_verdict(&e);
        self.report(verdict, reason, Vec::new(), Vec::new(), Vec::new())
    }

    /// Opens a session; in auto TLS mode a failed handshake is retried in cleartext.
    async fn connect(&mut self) -> Result<(), OpenError> {
        let result = match self.open_once().await {
            Err(OpenError::Tls(msg)) if self.may_fall_back_to_cleartext() => {
                self.try_starttls = false;
                self.findings.tls_error = Some(format!("TLS handshake failed: {msg}"));
                self.log
                    .note(&format!("[TLS failed: {msg}; retrying in cleartext]"));
                self.open_once().await
            }
            other => other,
        };
        match result {
            Ok((conn, greeting)) => {
                if self.connections == 0 {
                    self.record_greeting(&conn, &greeting);
                }
                self.connections += 1;
                self.errors_on_conn = 0;
                self.open_failures = 0;
                self.hello = Some(greeting.hello);
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                self.open_failures += 1;
                Err(e)
            }
        }
    }

    fn may_fall_back_to_cleartext(&self) -> bool {
        self.cfg.tls == crate::config::TlsMode::Auto
            && self.try_starttls
            && !self.cfg.implicit_tls
            && self.target.addr.port() != 465
    }

    async fn open_once(&mut self) -> Result<(Conn, Greeting), OpenError> {
        self.wait_for_slot().await?;
        let deadline = self.deadline_in(self.cfg.test_timeout.saturating_mul(2));
        session::open(
            self.target,
            self.cfg,
            self.try_starttls,
            deadline,
            &mut self.log,
        )
        .await
    }

    /// Waits for a `--rate` slot, but not past the host timeout: a connection opened after
    /// it could not be used (its deadline is the host's), so neither reserve a slot for it
    /// once the timeout has passed (the VRFY/EXPN and confirm steps still ask) nor sleep past
    /// it for one.
    async fn wait_for_slot(&self) -> Result<(), OpenError> {
        if Instant::now() >= self.host_deadline {
            return Err(OpenError::ConnectTimeout);
        }
        tokio::time::timeout_at(
            self.host_deadline,
            session::wait_for_slot(self.target, self.cfg),
        )
        .await
        .map_err(|_| OpenError::ConnectTimeout)
    }

    fn deadline_in(&self, d: std::time::Duration) -> Instant {
        instant_after(Instant::now(), d).min(self.host_deadline)
    }

    fn record_greeting(&mut self, conn: &Conn, g: &Greeting) {
        let f = &mut self.findings;
        f.banner = Some(g.banner.text());
        f.ehlo_greeting = g.hello.lines.first().cloned();
        f.esmtp = g.esmtp;
        f.starttls_offered = g.starttls_offered;
        f.tls = g.tls.clone();
        if f.tls_error.is_none() {
            f.tls_error = g.tls_error.clone();
        }
        let cleartext_hello = g
            .hello_before_tls
            .as_ref()
            .or((!conn.is_tls()).then_some(&g.hello));
        if let Some(h) = cleartext_hello {
            f.auth_before_tls = session::keyword_args(h, "AUTH").unwrap_or_default();
        }
        if conn.is_tls() {
            f.auth_after_tls = session::keyword_args(&g.hello, "AUTH").unwrap_or_default();
        }
        let names = [
            session::host_name_from(&g.banner),
            session::host_name_from(&g.hello),
            self.target.host.as_deref().and_then(session::domain_name),
        ];
        for name in names.into_iter().flatten() {
            if !f.host_names.contains(&name) {
                f.host_names.push(name);
            }
        }
    }

    /// The trick context: host name from banner, then EHLO, then the command line; local
    /// domain from the options or guessed by dropping the host name's first label.
    fn context(&self) -> TrickContext {
        let mut ctx = TrickContext::new(
            &self.cfg.from_domain,
            &self.cfg.to_domain,
            self.target.addr.ip().to_canonical(),
        );
        ctx.target_host = self.findings.host_names.first().cloned();
        ctx.local_domain = self
            .cfg
            .local_domain
            .clone()
            .or_else(|| self.target.local_domain.clone())
            .or_else(|| guess_local_domain(ctx.target_host.as_deref()?));
        ctx
    }

    async fn run_battery(&mut self, ctx: &TrickContext) -> Vec<TestResult> {
        let mut results = Vec::new();
        for trick in battery::battery() {
            let result = match battery::render(trick, ctx) {
                Some(r) => self.run_test(&r, trick.kind, trick.description).await,
                None => skipped(
                    trick.id,
                    trick.kind,
                    trick.description,
                    "needs a host name or local domain the target did not give",
                ),
            };
            results.push(result);
        }
        results
    }

    /// One test, retried once on a fresh connection if the server dropped or 421ed us.
    async fn run_test(
        &mut self,
        r: &RenderedTrick,
        kind: TrickKind,
        description: &str,
    ) -> TestResult {
        let mut attempts = 0;
        loop {
            if Instant::now() >= self.host_deadline {
                return skipped(r.id, kind, description, "host timeout reached");
            }
            if self.log.flooded() {
                return skipped(r.id, kind, description, "the server sent too much");
            }
            if self.open_failures >= MAX_OPEN_FAILURES {
                // Not sent because the server stopped taking the probe: no usable answer
                // (an `error`), so a server that cuts the probe off early is not CLOSED on
                // the few tricks that ran.
                let mut result = skipped(r.id, kind, description, UNREACHABLE);
                result.outcome = Outcome::Error;
                return result;
            }
            attempts += 1;
            let ex = self.attempt(r, kind).await;
            if ex.broken.is_none() || attempts >= 2 {
                return finish(r, kind, description, ex, attempts);
            }
        }
    }

    /// MAIL, RCPT (and the fallback), then RSET. Marks the exchange broken on a connection
    /// failure or a 421 and drops the connection so the next attempt reconnects.
    async fn attempt(&mut self, r: &RenderedTrick, kind: TrickKind) -> Exchange {
        let mut ex = Exchange::default();
        if self.conn.is_none()
            && let Err(e) = self.connect().await
        {
            ex.broken = Some(format!("reconnect failed: {e}"));
            return ex;
        }
        self.log.heading(r.id);
        let deadline = self.deadline_in(self.cfg.test_timeout);
        let Some(mut conn) = self.conn.take() else {
            ex.broken = Some("no connection".into());
            return ex;
        };
        conn.deadline = deadline;
        let keep = self.exchange(&mut conn, r, kind, &mut ex).await;
        self.errors_on_conn += ex.error_replies();
        if keep && self.errors_on_conn >= ERROR_BUDGET {
            // Leave before the server's error limit: Postfix sleeps a second before every
            // reply past 10 errors and drops at 20, relayward drops at 10, Exim sooner. A
            // fresh connection costs a few round trips; being throttled costs seconds a test.
            conn.quit(&mut self.log).await;
            self.planned_reconnects += 1;
        } else if keep {
            self.conn = Some(conn);
        }
        ex
    }

    /// Returns whether the connection is still usable.
    async fn exchange(
        &mut self,
        conn: &mut Conn,
        r: &RenderedTrick,
        kind: TrickKind,
        ex: &mut Exchange,
    ) -> bool {
        let log = &mut self.log;
        match conn.command(&r.mail_from, log).await {
            Ok(reply) => ex.mail = Some(reply),
            Err(e) => return broken(ex, e.to_string()),
        }
        if ex.mail.as_ref().is_some_and(|m| m.code == 421) {
            return broken(ex, "server closed the session (421) at MAIL".into());
        }
        match conn.command(&r.rcpt_to, log).await {
            Ok(reply) => ex.rcpt = Some(reply),
            Err(e) => return broken(ex, e.to_string()),
        }
        if ex.rcpt.as_ref().is_some_and(|m| m.code == 421) {
            return broken(ex, "server closed the session (421) at RCPT".into());
        }
        let mail_refused = ex.mail.as_ref().is_some_and(|m| m.code >= 400);
        let bad_sequence = ex.rcpt.as_ref().is_some_and(|m| m.code == 503);
        if kind != TrickKind::Sender
            && mail_refused
            && bad_sequence
            && !self.fallback(conn, r, ex).await
        {
            return false;
        }
        rset(conn, &mut self.log).await
    }

    /// RSET, `MAIL FROM:<>`, the same RCPT: the recipient trick judged on its own.
    async fn fallback(&mut self, conn: &mut Conn, r: &RenderedTrick, ex: &mut Exchange) -> bool {
        if !rset(conn, &mut self.log).await {
            ex.broken = Some("connection lost before the fallback".into());
            return false;
        }
        let mail_from = "MAIL FROM:<>".to_string();
        let mut fb = Fallback {
            mail_from: mail_from.clone(),
            mail_reply: None,
            rcpt_reply: None,
        };
        let ok = match conn.command(&mail_from, &mut self.log).await {
            Ok(m) if m.code == 421 => false,
            Ok(m) => {
                fb.mail_reply = Some(ReplyInfo::from(&m));
                match conn.command(&r.rcpt_to, &mut self.log).await {
                    Ok(rc) => {
                        fb.rcpt_reply = Some(ReplyInfo::from(&rc));
                        rc.code != 421
                    }
                    Err(_) => false,
                }
            }
            Err(_) => false,
        };
        ex.fallback = Some(fb);
        ok
    }

    /// VRFY/EXPN postmaster: does the server disclose addresses? Asked after the battery so
    /// their errors cannot count against it.
    /// One session-level trick, retried once on a fresh connection when the connection broke.
    async fn run_special(
        &mut self,
        id: &str,
        ctx: &TrickContext,
        plain_accepted: bool,
    ) -> TestResult {
        let Some(trick) = special::special(id) else {
            return skipped(id, TrickKind::Sender, "", "unknown session-level trick");
        };
        let mut attempts = 0;
        loop {
            if Instant::now() >= self.host_deadline {
                return Run::skipped("host timeout reached").into_result(trick, attempts);
            }
            if self.log.flooded() {
                return Run::skipped("the server sent too much").into_result(trick, attempts);
            }
            if self.open_failures >= MAX_OPEN_FAILURES {
                let run = Run {
                    broken: Some(UNREACHABLE.to_string()),
                    ..Run::default()
                };
                return run.into_result(trick, attempts);
            }
            attempts += 1;
            let run = self.special_attempt(trick, ctx, None).await;
            let accepted = run.rcpt.as_ref().is_some_and(Reply::is_positive_completion);
            if run.broken.is_none() || accepted || attempts >= 2 {
                let mut result = run.into_result(trick, attempts);
                if result.outcome == Outcome::Accepted && plain_accepted {
                    let also = "plain-external was accepted too, so this shows no more than it";
                    result.note = Some(match result.note.take() {
                        Some(n) => format!("{n}; {also}"),
                        None => also.to_string(),
                    });
                }
                return result;
            }
        }
    }

    /// One run of a session-level trick; `message` (confirm mode) is sent with DATA after an
    /// accepted RCPT.
    async fn special_attempt(
        &mut self,
        trick: &SpecialTrick,
        ctx: &TrickContext,
        message: Option<&str>,
    ) -> Run {
        let Some(plain) = battery::trick("plain-external").and_then(|t| battery::render(t, ctx))
        else {
            return Run::skipped("the plain external relay cannot be rendered");
        };
        if trick.own_connection {
            self.special_own_connection(trick, &plain, message).await
        } else {
            self.special_shared(trick, ctx, &plain, message).await
        }
    }

    fn heading(&mut self, id: &str, confirm: bool) {
        if confirm {
            self.log.heading(&format!("{id} (confirm)"));
        } else {
            self.log.heading(id);
        }
    }

    /// Pipelined and mixed-recipient tricks: on the shared connection, RSET afterwards.
    async fn special_shared(
        &mut self,
        trick: &SpecialTrick,
        ctx: &TrickContext,
        plain: &RenderedTrick,
        message: Option<&str>,
    ) -> Run {
        let mut run = Run::default();
        if self.conn.is_none()
            && let Err(e) = self.connect().await
        {
            run.broken = Some(format!("reconnect failed: {e}"));
            return run;
        }
        let offers = |kw: &str| {
            self.hello
                .as_ref()
                .is_some_and(|h| session::has_keyword(h, kw))
        };
        if trick.id == special::PIPELINED_RELAY && !offers("PIPELINING") {
            return Run::skipped("PIPELINING not offered");
        }
        let Some(mut conn) = self.conn.take() else {
            run.broken = Some("no connection".into());
            return run;
        };
        self.heading(trick.id, message.is_some());
        conn.deadline = self.deadline_in(self.cfg.test_timeout);
        let usable = if trick.id == special::PIPELINED_RELAY {
            special::pipelined(&mut conn, &mut self.log, &mut run, plain, message).await
        } else {
            let local = special::local_recipient(
                ctx.local_domain.as_deref(),
                ctx.target_host.as_deref(),
                ctx.target_ip,
            );
            special::transaction(
                &mut conn,
                &mut self.log,
                &mut run,
                plain,
                Some(&local),
                message,
            )
            .await
        };
        if usable && rset(&mut conn, &mut self.log).await {
            self.conn = Some(conn);
        }
        run
    }

    /// XCLIENT, PROXY and failed-AUTH tricks: a session of their own, closed afterwards, so
    /// whatever trust they win cannot leak into other tests. Not counted as reconnects.
    async fn special_own_connection(
        &mut self,
        trick: &SpecialTrick,
        plain: &RenderedTrick,
        message: Option<&str>,
    ) -> Run {
        let mut run = Run::default();
        let shared_auth = self
            .hello
            .as_ref()
            .and_then(|h| session::keyword_args(h, "AUTH"))
            .unwrap_or_default();
        if trick.id == special::FAILED_AUTH_THEN_RELAY && shared_auth.is_empty() {
            return Run::skipped("AUTH not offered");
        }
        self.heading(trick.id, message.is_some());
        let preamble = (trick.id == special::PROXY_HEADER_SPOOF)
            .then(|| special::proxy_line(self.target.addr));
        let opened = match self.wait_for_slot().await {
            Ok(()) => {
                let deadline = self.deadline_in(self.cfg.test_timeout.saturating_mul(2));
                session::open_with(
                    self.target,
                    self.cfg,
                    self.try_starttls,
                    deadline,
                    &mut self.log,
                    preamble.as_deref(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let (mut conn, greeting) = match opened {
            Ok(x) => x,
            Err(e) => {
                match (&preamble, e) {
                    (Some(p), OpenError::Refused(r)) => {
                        run.step(p, Some(&r));
                        run.refused = Some(format!(
                            "session refused after the PROXY header: {}",
                            ReplyInfo::from(&r)
                        ));
                    }
                    (Some(p), OpenError::Conn(ConnError::Closed)) => {
                        run.step(p, None);
                        run.refused =
                            Some("server closed the connection after the PROXY header".into());
                    }
                    (_, e) => run.broken = Some(format!("connect failed: {e}")),
                }
                return run;
            }
        };
        conn.deadline = self.deadline_in(self.cfg.test_timeout);
        let log = &mut self.log;
        let usable = match trick.id {
            special::PROXY_HEADER_SPOOF => {
                let line = preamble.unwrap_or_default();
                run.step(&line, greeting.preamble_reply.as_ref());
                match &greeting.preamble_reply {
                    Some(r) => {
                        run.refused = Some(format!(
                            "the PROXY header was answered as a command ({}): not honoured",
                            ReplyInfo::from(r)
                        ));
                        true
                    }
                    None => special::proxy_relay(&mut conn, log, &mut run, plain, message).await,
                }
            }
            special::XCLIENT_SPOOF => {
                let advertised = session::has_keyword(&greeting.hello, "XCLIENT");
                special::xclient(
                    &mut conn,
                    log,
                    &mut run,
                    &self.cfg.helo,
                    advertised,
                    plain,
                    message,
                )
                .await
            }
            _ => {
                let mechanisms = session::keyword_args(&greeting.hello, "AUTH")
                    .filter(|m| !m.is_empty())
                    .unwrap_or(shared_auth);
                special::failed_auth(
                    &mut conn,
                    log,
                    &mut run,
                    &mechanisms,
                    &crate::confirm::nonce(),
                    plain,
                    message,
                )
                .await
            }
        };
        if usable {
            conn.quit(&mut self.log).await;
        }
        run
    }

    /// Confirm mode for a session-level trick: the same dialogue with DATA after the RCPT.
    async fn send_special_token(
        &mut self,
        trick: &SpecialTrick,
        ctx: &TrickContext,
        token: String,
    ) -> ConfirmResult {
        let message = confirm_message(&self.cfg.from_domain, self.target, trick.id, &token);
        let run = self.special_attempt(trick, ctx, Some(&message)).await;
        let note = run
            .broken
            .clone()
            .or(run.refused.clone())
            .or(run.skipped.clone())
            .or_else(|| {
                run.rcpt
                    .as_ref()
                    .filter(|r| !r.is_positive_completion())
                    .map(|r| format!("RCPT: {}", ReplyInfo::from(r)))
            })
            .or_else(|| {
                run.data_refused
                    .as_ref()
                    .map(|r| format!("DATA: {}", ReplyInfo::from(r)))
            });
        ConfirmResult {
            id: trick.id.to_string(),
            token,
            sent: run.data.as_ref().is_some_and(Reply::is_positive_completion),
            data_reply: run.data.as_ref().map(ReplyInfo::from),
            arrived: false,
            note,
            delivered_by: None,
            received: Vec::new(),
        }
    }

    async fn extra_findings(&mut self) {
        for verb in ["VRFY", "EXPN"] {
            if self.conn.is_none() && self.connect().await.is_err() {
                return;
            }
            let Some(mut conn) = self.conn.take() else {
                return;
            };
            conn.deadline = self.deadline_in(self.cfg.test_timeout);
            let Ok(reply) = conn
                .command(&format!("{verb} postmaster"), &mut self.log)
                .await
            else {
                continue;
            };
            let answers = matches!(reply.code, 250 | 251);
            let info = Some(ReplyInfo::from(&reply));
            if verb == "VRFY" {
                (self.findings.vrfy, self.findings.vrfy_answers) = (info, answers);
            } else {
                (self.findings.expn, self.findings.expn_answers) = (info, answers);
            }
            if reply.code != 421 {
                self.conn = Some(conn);
            }
        }
    }

    /// Confirm mode: send a token through every accepted trick, then wait for the tokens.
    async fn confirm(&mut self, ctx: &TrickContext, tests: &[TestResult]) -> Vec<ConfirmResult> {
        let Some(settings) = self.cfg.confirm.clone() else {
            return Vec::new();
        };
        let mut results = Vec::new();
        for test in tests.iter().filter(|t| t.outcome == Outcome::Accepted) {
            if let Some(trick) = special::special(&test.id) {
                let token = crate::confirm::new_token();
                settings.server.expect(&token);
                let result = self.send_special_token(trick, ctx, token).await;
                results.push(result);
                continue;
            }
            let Some(rendered) = battery::trick(&test.id).and_then(|t| battery::render(t, ctx))
            else {
                continue;
            };
            if !names_domain(&rendered.rcpt_to, &ctx.to_domain) {
                // `relaytest@[192.0.2.1]`: relayed, it goes to TEST-NET, never to the confirm
                // listener; waiting for it would only cost --confirm-wait.
                results.push(not_sendable(&test.id));
                continue;
            }
            let token = crate::confirm::new_token();
            settings.server.expect(&token);
            let result = self.send_token(&rendered, token).await;
            results.push(result);
        }
        let registered: Vec<String> = results
            .iter()
            .filter(|r| !r.token.is_empty())
            .map(|r| r.token.clone())
            .collect();
        let tokens: Vec<String> = results
            .iter()
            .filter(|r| r.sent)
            .map(|r| r.token.clone())
            .collect();
        if tokens.is_empty() {
            settings.server.forget(&registered);
            return results;
        }
        self.log.note(&format!(
            "[waiting up to {} for {} token(s)]",
            humantime::format_duration(settings.wait),
            tokens.len()
        ));
        let arrived = settings.server.wait_for(&tokens, settings.wait).await;
        settings.server.forget(&registered);
        for r in &mut results {
            if let Some(a) = arrived.get(&r.token) {
                r.arrived = true;
                r.delivered_by = Some(a.delivered_by.to_string());
                r.received = a.received.clone();
            }
        }
        results
    }

    async fn send_token(&mut self, r: &RenderedTrick, token: String) -> ConfirmResult {
        let mut result = ConfirmResult {
            id: r.id.to_string(),
            token,
            sent: false,
            data_reply: None,
            arrived: false,
            note: None,
            delivered_by: None,
            received: Vec::new(),
        };
        if self.conn.is_none()
            && let Err(e) = self.connect().await
        {
            result.note = Some(format!("reconnect failed: {e}"));
            return result;
        }
        let Some(mut conn) = self.conn.take() else {
            return result;
        };
        conn.deadline = self.deadline_in(self.cfg.test_timeout);
        self.log.heading(&format!("{} (confirm)", r.id));
        let message = confirm_message(&self.cfg.from_domain, self.target, r.id, &result.token);
        match send_message(&mut conn, r, &message, &mut self.log).await {
            Ok(reply) => {
                result.sent = reply.is_positive_completion();
                result.data_reply = Some(ReplyInfo::from(&reply));
                if reply.code != 421 && rset(&mut conn, &mut self.log).await {
                    self.conn = Some(conn);
                }
            }
            Err(note) => result.note = Some(note),
        }
        result
    }
}

/// MAIL, RCPT, DATA, the message, the final dot. `Err` with a note when a step was refused.
async fn send_message(
    conn: &mut Conn,
    r: &RenderedTrick,
    message: &str,
    log: &mut Transcript,
) -> Result<Reply, String> {
    for line in [r.mail_from.as_str(), r.rcpt_to.as_str()] {
        let reply = conn.command(line, log).await.map_err(|e| e.to_string())?;
        if reply.code / 100 != 2 {
            return Err(format!("{line}: {}", ReplyInfo::from(&reply)));
        }
    }
    match special::data(conn, message, log).await {
        Ok((reply, true)) => Ok(reply),
        Ok((reply, false)) => Err(format!("DATA: {}", ReplyInfo::from(&reply))),
        Err(e) => Err(e.to_string()),
    }
}

/// The proof message: the token in the subject and the body; no line starts with a dot.
fn confirm_message(from_domain: &str, target: &Target, id: &str, token: &str) -> String {
    format!(
        "From: relayward probe <antispam@{from_domain}>\n\
         To: relay test <relaytest@{from_domain}>\n\
         Subject: relayward relay test {token}\n\
         Message-ID: <{token}@{from_domain}>\n\
         \n\
         This message tests whether {} relays mail for anyone.\n\
         If you received it, it did, through the trick \"{}\".\n\
         Token: {token}\n",
        target.label, id
    )
}

/// RSET between tests; false when the connection is no longer usable.
async fn rset(conn: &mut Conn, log: &mut Transcript) -> bool {
    matches!(conn.command("RSET", log).await, Ok(reply) if reply.code == 250)
}

fn broken(ex: &mut Exchange, why: String) -> bool {
    ex.broken = Some(why);
    false
}

fn finish(
    r: &RenderedTrick,
    kind: TrickKind,
    description: &str,
    ex: Exchange,
    attempts: u32,
) -> TestResult {
    let mail = ex.mail.as_ref().map(ReplyInfo::from);
    let rcpt = ex.rcpt.as_ref().map(ReplyInfo::from);
    let mut outcome = verdict::classify(mail.as_ref(), rcpt.as_ref());
    if let Some(fb) = &ex.fallback
        && outcome != Outcome::Accepted
        && let Some(fb_rcpt) = &fb.rcpt_reply
    {
        outcome = verdict::classify(fb.mail_reply.as_ref(), Some(fb_rcpt));
    }
    if ex.broken.is_some() && outcome != Outcome::Accepted {
        outcome = Outcome::Error;
    }
    TestResult {
        id: r.id.to_string(),
        kind: kind.as_str().to_string(),
        description: description.to_string(),
        mail_from: r.mail_from.clone(),
        rcpt_to: r.rcpt_to.clone(),
        mail_reply: mail,
        rcpt_reply: rcpt,
        fallback: ex.fallback,
        outcome,
        note: ex.broken,
        attempts,
        setup: Vec::new(),
    }
}

fn skipped(id: &str, kind: TrickKind, description: &str, why: &str) -> TestResult {
    TestResult {
        id: id.to_string(),
        kind: kind.as_str().to_string(),
        description: description.to_string(),
        mail_from: String::new(),
        rcpt_to: String::new(),
        mail_reply: None,
        rcpt_reply: None,
        fallback: None,
        outcome: Outcome::Skipped,
        note: Some(why.to_string()),
        attempts: 0,
        setup: Vec::new(),
    }
}

/// Whether a RCPT line's address mentions `domain` (case-insensitive), in ASCII or in any
/// spelling that UTS 46 maps to it (fullwidth letters, U-labels): a relayed token can only
/// reach the confirm listener through a recipient at the confirm domain, and a relay that
/// maps `ｃｏｎｆｉｒｍ．ｔｅｓｔ` to `confirm.test` delivers there.
fn names_domain(rcpt_line: &str, domain: &str) -> bool {
    let domain = domain.to_ascii_lowercase();
    if rcpt_line.to_ascii_lowercase().contains(&domain) {
        return true;
    }
    rcpt_line
        .split(|c: char| c.is_whitespace() || "<>@%!:\",[]".contains(c))
        .filter(|part| !part.is_ascii())
        .filter_map(crate::confirm::canonical_domain)
        .any(|ascii| ascii == domain)
}

/// The confirm entry of an accepted trick whose recipient is not at the confirm domain.
fn not_sendable(id: &str) -> ConfirmResult {
    ConfirmResult {
        id: id.to_string(),
        token: String::new(),
        sent: false,
        data_reply: None,
        arrived: false,
        note: Some("its recipient is not at --confirm-domain, so no token can come back".into()),
        delivered_by: None,
        received: Vec::new(),
    }
}

/// `start + d`, or a point decades away when that is past what an `Instant` holds: a
/// `--test-timeout 1000000y` means "no limit", not a panic of the probe task.
pub fn instant_after(start: Instant, d: std::time::Duration) -> Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);
    start
        .checked_add(d)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A session-level trick not run, with the reason.
fn special_skipped(id: &str, why: &str) -> TestResult {
    match special::special(id) {
        Some(trick) => Run::skipped(why).into_result(trick, 0),
        None => skipped(id, TrickKind::Sender, "", why),
    }
}

/// `mx1.example.net` → `example.net`; a two-label name is not guessed from (it may be the
/// host itself, and the host-name tricks already cover it).
fn guess_local_domain(host: &str) -> Option<String> {
    let (_, rest) = host.split_once('.')?;
    rest.contains('.').then(|| rest.to_string())
}

/// The verdict when a target's first session could not be opened. A connection this machine
/// could not make (out of file descriptors, socket buffers or memory: EMFILE, ENFILE,
/// ENOBUFS, ENOMEM) says nothing about the target, so it is inconclusive, not unreachable.
fn open_failure_verdict(e: &OpenError) -> (Verdict, String) {
    match e {
        OpenError::Refused(r) if r.is_permanent() => (
            Verdict::Closed,
            format!("server refuses every session: {}", ReplyInfo::from(r)),
        ),
        OpenError::Refused(r) => (
            Verdict::Inconclusive,
            format!("session refused for now: {}", ReplyInfo::from(r)),
        ),
        OpenError::Connect(_) if e.is_local_shortage() => (
            Verdict::Inconclusive,
            format!(
                "this machine could not open the connection ({e}): lower --concurrency or \
                 raise the open files limit"
            ),
        ),
        OpenError::TlsRequired | OpenError::Tls(_) => (Verdict::Inconclusive, e.to_string()),
        OpenError::Conn(c @ ConnError::OutOfStep) => (
            Verdict::Inconclusive,
            format!("the server's replies do not follow the commands: {c}"),
        ),
        OpenError::Conn(c) if c.is_excess() => (
            Verdict::Inconclusive,
            format!("the server's replies exceed the probe's limits: {c}"),
        ),
        _ => (Verdict::Unreachable, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EMFILE at connect is this machine's shortage: the target may well be an open relay.
    #[test]
    fn a_connection_this_machine_could_not_make_is_inconclusive_not_unreachable() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            let e = OpenError::Connect(std::io::Error::from_raw_os_error(errno.raw_os_error()));
            let (verdict, reason) = open_failure_verdict(&e);
            assert_eq!(verdict, Verdict::Inconclusive, "{reason}");
            assert!(reason.contains("--concurrency"), "{reason}");
        }
        let refused =
            OpenError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(open_failure_verdict(&refused).0, Verdict::Unreachable);
        assert_eq!(
            open_failure_verdict(&OpenError::ConnectTimeout).0,
            Verdict::Unreachable
        );
    }

    #[test]
    fn local_domain_guess() {
        assert_eq!(
            guess_local_domain("mx1.example.net").as_deref(),
            Some("example.net")
        );
        assert_eq!(guess_local_domain("example.net"), None);
        assert_eq!(guess_local_domain("localhost"), None);
    }

    #[test]
    fn nonces_are_lowercase_alnum() {
        let n = crate::confirm::nonce();
        assert_eq!(n.len(), 12);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn a_recipient_names_the_confirm_domain_in_any_spelling_that_maps_to_it() {
        let d = "confirm.test";
        assert!(names_domain("RCPT TO:<u@confirm.test>", d));
        assert!(names_domain("RCPT TO:<u%CONFIRM.TEST@example.test>", d));
        assert!(names_domain("RCPT TO:<u@ｃｏｎｆｉｒｍ．ｔｅｓｔ>", d));
        assert!(names_domain(
            "RCPT TO:<\"u@ｃｏｎｆｉｒｍ．ｔｅｓｔ\"@ｅｘａｍｐｌｅ．ｔｅｓｔ>",
            d
        ));
        // A look-alike (Cyrillic о) is another domain; so is a longer name.
        assert!(!names_domain("RCPT TO:<u@cоnfirm.test>", d));
        assert!(!names_domain(
            "RCPT TO:<u@ｃｏｎｆｉｒｍ．ｔｅｓｔ．ｅｖｉｌ>",
            d
        ));
        assert!(!names_domain("RCPT TO:<u@example.test>", d));
    }
}
