//! The probe service's web page in a real headless browser: Debian's `chromium` driven through
//! `chromedriver` (package `chromium-driver`, installed by scripts/test) with fantoccini.
//!
//! With JavaScript the running page follows the transcript by server-sent events and reloads
//! itself when the test is done; without it the page refreshes itself (`<noscript>` meta
//! refresh) until the verdict is there. The targets are `relayward serve` instances on
//! 127.0.0.3 (closed) and 127.0.0.4 (trusting 127.0.0.0/8: an open relay for the prober).
//!
//! The browser is missing? Then this test fails, on purpose: CI installs it, and a skipped
//! browser test would prove nothing. The finished results page is saved as a PNG under
//! `CARGO_TARGET_TMPDIR`, and to `$RELAYWARD_SCREENSHOT` when set (that is how
//! docs/probe-service-results.png is made).

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::TestServer;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromedriver` on a random loopback port, killed when the test ends.
struct ChromeDriver {
    child: Child,
    url: String,
    profiles: tempfile::TempDir,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        for binary in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install the Debian packages chromium and chromium-driver (scripts/test does)"
            );
        }
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        // A process group of its own: the browsers it starts join it, and Drop ends them all,
        // also when an assertion fails before a session could be closed.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver {
            child,
            url: format!("http://{addr}"),
            profiles: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A fresh headless browser (own profile directory), with or without JavaScript.
    async fn browser(&self, javascript: bool) -> Client {
        let profile = self
            .profiles
            .path()
            .join(if javascript { "js" } else { "nojs" });
        let mut options = serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-extensions",
                "--disable-default-apps",
                "--no-default-browser-check",
                "--disable-crash-reporter",
                "--disable-breakpad",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1100,1500",
                "--hide-scrollbars",
            ],
        });
        if !javascript {
            options["prefs"] =
                serde_json::json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("start a chromium session through {}: {e}", self.url))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // chromedriver's group: chromedriver and every browser it started, by the group's id.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_config(ip: &str, trusted: &str) -> String {
    format!(
        "hostname = \"mx.example.test\"\ndata_dir = \"DATA_DIR\"\n\n[[listen]]\naddress = \"{ip}:0\"\nkind = \"mx\"\n\n[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [{trusted}]\n"
    )
}

async fn text(browser: &Client, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The page's `h1` once it reads `expected`, or whatever it reads after 30 s: a click on
/// submit returns before the browser has loaded the answer.
async fn wait_for_h1(browser: &Client, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h1 = text(browser, "h1").await;
        if h1 == expected || Instant::now() > deadline {
            return h1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of `css` once the page has it (non-empty), or "" after 30 s: like
/// [`wait_for_h1`], for the first look at a page a click is still loading.
async fn wait_for_text(browser: &Client, css: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = text(browser, css).await;
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fills the form on `/` and submits it.
async fn submit(browser: &Client, base: &str, target: &str, ports: &str) {
    browser.goto(&format!("{base}/")).await.expect("load /");
    let field = browser
        .find(Locator::Css("#target"))
        .await
        .expect("#target");
    field.send_keys(target).await.expect("type target");
    let ports_field = browser.find(Locator::Css("#ports")).await.expect("#ports");
    ports_field.clear().await.expect("clear ports");
    ports_field.send_keys(ports).await.expect("type ports");
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
}

/// Waits until the page shows a verdict other than RUNNING.
async fn wait_for_verdict(browser: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let verdict = text(browser, "#verdict").await;
        if !verdict.is_empty() && verdict != "RUNNING" {
            return verdict;
        }
        assert!(Instant::now() < deadline, "no verdict on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trick table: (id, data-outcome, row text) per row.
async fn trick_rows(browser: &Client) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    for row in browser
        .find_all(Locator::Css("table.tricks tr[data-id]"))
        .await
        .expect("rows")
    {
        rows.push((
            row.attr("data-id").await.ok().flatten().unwrap_or_default(),
            row.attr("data-outcome")
                .await
                .ok()
                .flatten()
                .unwrap_or_default(),
            row.text().await.unwrap_or_default(),
        ));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_tests_a_server_in_a_real_browser_with_and_without_javascript() {
    // Every probe connection waits out the greet pause (no pregreet memory), so the test
    // lasts long enough for the page to be seen growing while it runs.
    let closed = TestServer::start(&format!(
        "{}\n[limits]\ngreet_pause_ttl = \"0s\"\n",
        relay_config("127.0.0.3", "")
    ));
    let open = TestServer::start(&relay_config("127.0.0.4", "\"127.0.0.0/8\""));
    let service = TestServer::start_probe_service(
        "[probe_service]\nhttp_listen = \"127.0.0.1:0\"\npublic_name = \"relay-test.example.org\"\ndata_dir = \"DATA_DIR\"\nallow_private_targets = true\ntests_per_target_per_hour = 1\ntest_timeout = \"5s\"\n",
    );
    let base = format!("http://{}", service.addr("http"));
    let driver = ChromeDriver::start();

    // With JavaScript: the transcript grows by server-sent events, then the page reloads.
    let browser = driver.browser(true).await;
    submit(
        &browser,
        &base,
        "127.0.0.3",
        &closed.addr("mx").port().to_string(),
    )
    .await;
    assert!(
        browser.find(Locator::Css("#noscript-note")).await.is_err(),
        "with JavaScript the <noscript> note is not part of the page"
    );
    browser
        .execute("window.sameLoad = true; return true;", vec![])
        .await
        .expect("mark the page");
    let mut grew_in_place = false;
    let mut last_len = text(&browser, "#transcript").await.len();
    let deadline = Instant::now() + Duration::from_secs(90);
    while text(&browser, "#verdict").await == "RUNNING" {
        let same_load = browser
            .execute("return window.sameLoad === true;", vec![])
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let len = text(&browser, "#transcript").await.len();
        if same_load && len > last_len && last_len > 0 {
            grew_in_place = true;
        }
        last_len = len;
        assert!(Instant::now() < deadline, "the test never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(wait_for_verdict(&browser).await, "CLOSED");
    assert!(
        grew_in_place,
        "the transcript never grew without a reload (SSE)"
    );
    let reloaded = browser
        .execute("return window.sameLoad === undefined;", vec![])
        .await
        .expect("script");
    assert_eq!(
        reloaded,
        serde_json::Value::Bool(true),
        "the results come by reload"
    );
    assert_eq!(
        text(&browser, "p.explain").await,
        "It refused every relay attempt: strangers cannot send mail through it."
    );
    let rows = trick_rows(&browser).await;
    assert!(rows.len() >= 64, "{} rows", rows.len());
    let (_, outcome, row) = rows
        .iter()
        .find(|(id, _, _)| id == "plain-external")
        .expect("plain-external row");
    assert_eq!(outcome, "refused");
    assert!(row.contains("RCPT TO:<relaytest@example.net>"), "{row}");
    assert!(
        row.contains("554 5.7.1 <relaytest@example.net>: Relay access denied"),
        "{row}"
    );
    assert!(!rows.iter().any(|(_, o, _)| o == "accepted"), "{rows:?}");
    let findings = text(&browser, "table.findings").await;
    assert!(
        findings.contains("TLSv1_3, certificate CN=mx.example.test"),
        "{findings}"
    );
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe-service-results.png");
    std::fs::write(&shot, &png).expect("save screenshot");
    if let Ok(path) = std::env::var("RELAYWARD_SCREENSHOT") {
        std::fs::write(&path, &png).expect("save screenshot");
    }

    // A second request for the same server within the hour is refused, with when to retry.
    submit(
        &browser,
        &base,
        "127.0.0.3",
        &closed.addr("mx").port().to_string(),
    )
    .await;
    assert_eq!(wait_for_h1(&browser, "Not tested").await, "Not tested");
    let refusal = text(&browser, "#refusal").await;
    assert!(
        refusal.starts_with(
            "127.0.0.3 has been tested as many times as one address may be in an hour"
        ),
        "{refusal}"
    );
    assert_eq!(
        text(&browser, "#retry").await,
        "You can try again in 60 minutes."
    );
    browser.close().await.expect("close");

    // Without JavaScript: the page refreshes itself until the verdict is there.
    let plain = driver.browser(false).await;
    submit(
        &plain,
        &base,
        "127.0.0.4",
        &open.addr("mx").port().to_string(),
    )
    .await;
    // The click returns before the browser has loaded the test page (failed under load).
    assert_eq!(wait_for_text(&plain, "#verdict").await, "RUNNING");
    assert_eq!(
        text(&plain, "#noscript-note").await,
        "This page reloads itself every 3 seconds until the test is done.",
        "JavaScript is off in this browser"
    );
    assert_eq!(wait_for_verdict(&plain).await, "OPEN");
    assert_eq!(
        text(&plain, "p.explain").await,
        "It relays mail for strangers: spammers can send through it. Close it now."
    );
    let rows = trick_rows(&plain).await;
    let (_, outcome, _) = rows
        .iter()
        .find(|(id, _, _)| id == "plain-external")
        .expect("plain-external row");
    assert_eq!(outcome, "accepted");
    plain.close().await.expect("close");
}
