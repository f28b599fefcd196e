//! The web door: the form, the test pages, the live transcript (server-sent events) and the
//! JSON API.
//!
//! - `GET /` — the form; `POST /tests` — start a test from it (303 to its page);
//! - `GET /tests/ID` — the test: live while it runs, the results when done;
//! - `GET /tests/ID/events` — the transcript as SSE (`line` events, then one `done`), from
//!   `?from=N` or the `Last-Event-ID` of a reconnecting `EventSource`;
//! - `POST /api/v1/tests` `{"target": "host[:port]"}` (or `"mx:domain"`) — `201 {"id", "url"}`;
//! - `GET /api/v1/tests/ID` — the test record ([`crate::record::TestRecord`]).
//!
//! Refusals are `4xx`/`503` with `{"error": …, "retry_after": seconds}` (JSON) or a page
//! saying the same (form). Every response forbids framing and external content
//! (`Content-Security-Policy`), so even a markup slip could not load anything foreign.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Json, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::admission::{self, Refusal, RefusalKind};
use crate::config::ServiceConfig;
use crate::http_listener::{CappedListener, Caps, Peer};
use crate::live::{self, AsyncEmit};
use crate::pages::{self, Site};
use crate::record::Door;
use crate::service::{Request, Service, TestLookup};

/// Largest request body (a form or a JSON object naming one target).
const MAX_BODY: usize = 8 * 1024;

#[derive(Clone)]
struct App {
    service: Arc<Service>,
    site: Arc<Site>,
}

/// The router of the web door.
pub fn router(service: Arc<Service>) -> Router {
    let cfg = &service.config;
    let site = Site {
        name: cfg.public_name.clone(),
        opt_out: cfg.opt_out_text(),
        telnet: cfg.telnet_listen.map(|a| match a.port() {
            23 => format!("telnet {}", cfg.public_name),
            port => format!("telnet {} {port}", cfg.public_name),
        }),
        max_per_hour: cfg.tests_per_client_per_hour,
    };
    let app = App {
        service,
        site: Arc::new(site),
    };
    Router::new()
        .route("/", get(index))
        .route("/tests", post(submit_form))
        .route("/tests/{id}", get(test_page))
        .route("/tests/{id}/events", get(events))
        .route("/api/v1/tests", post(api_start))
        .route("/api/v1/tests/{id}", get(api_get))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(while_handling))
        .with_state(app)
}

/// Serves the web door until `stop` turns true; then lets open requests (a live transcript
/// following its test) finish. Connections are capped in total and per client
/// ([`crate::http_listener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = CappedListener::new(listener, Caps::web_door(Arc::clone(&service)));
    let app = router(service).into_make_service_with_connect_info::<Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Marks the connection busy while its request is handled, so the idle cut-off
/// (`http_idle_timeout`) never closes it under a handler that is still working — starting a
/// test looks names up for up to 20 s each — and only counts from the answer on.
///
/// The body (at most [`MAX_BODY`]) is read first, before the mark: reading it is the caller's
/// part, like the headers, so a body sent a byte at a time or never is cut off by the same
/// countdown instead of holding the connection for ever under a "busy" handler.
async fn while_handling(
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let api = parts.uri.path().starts_with("/api/");
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return body_refusal(api);
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        // Too long without a Content-Length, or the connection failed (the idle cut-off).
        Err(_) => return body_refusal(api),
    };
    let _busy = peer.handling();
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

/// `413` for a body that is too long (or did not arrive whole: then nobody reads it).
fn body_refusal(api: bool) -> Response {
    let status = StatusCode::PAYLOAD_TOO_LARGE;
    let message = format!(
        "the request body must be whole and at most {} KiB",
        MAX_BODY / 1024
    );
    if api {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        (status, message).into_response()
    }
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // A running test's answers change, and a results URL is its only secret: no cache keeps
    // them (the live stream says `no-cache` itself, which stays).
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn index(State(app): State<App>) -> Html<String> {
    Html(pages::render(pages::index(&app.site)))
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE_CSS,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        pages::LIVE_JS,
    )
}

async fn not_found(State(app): State<App>) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(pages::render(pages::not_found(&app.site))),
    )
        .into_response()
}

/// The form's fields.
#[derive(Debug, Deserialize)]
struct FormInput {
    target: String,
    /// `server` (default) or `mx`: test the domain's MX hosts.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    ports: Option<String>,
}

async fn submit_form(
    State(app): State<App>,
    ConnectInfo(Peer { addr: peer, .. }): ConnectInfo<Peer>,
    headers: HeaderMap,
    form: Result<Form<FormInput>, FormRejection>,
) -> Response {
    let client = client_ip(&app.service.config, peer, &headers);
    let request = foreign_page(&app.service.config, &headers)
        .and_then(|()| form.map_err(|e| Refusal::bad(format!("the form could not be read: {e}"))))
        .and_then(|Form(f)| form_request(f, client));
    let started = match request {
        Ok(request) => app.service.start(request).await,
        Err(refusal) => Err(refusal),
    };
    match started {
        Ok(live) => Redirect::to(&format!("/tests/{}", live.id())).into_response(),
        Err(refusal) => {
            let page = pages::render(pages::refusal(&app.site, &refusal));
            with_retry_after(status_of(&refusal), &refusal, Html(page))
        }
    }
}

fn form_request(form: FormInput, client: IpAddr) -> Result<Request, Refusal> {
    let ports = admission::parse_ports(form.ports.as_deref().unwrap_or(""))?;
    let target = form.target.trim();
    let wants_mx = form.kind.as_deref() == Some("mx");
    let text = if wants_mx && !target.to_ascii_lowercase().starts_with("mx:") {
        format!("mx:{target}")
    } else {
        target.to_string()
    };
    let (label, inputs) = admission::parse_target(&text, &ports)?;
    Ok(Request {
        label,
        inputs,
        door: Door::Web,
        client,
    })
}

/// Refuses a test another web site's page asks for through a visitor's browser (CSRF): a
/// hidden form that submits itself would start a test from every visitor's address, on the
/// visitor's budget, against a target of that site's choosing. Browsers say where a request
/// comes from: `Sec-Fetch-Site` (`same-origin`, or `none` for one the user made), else
/// `Origin`, which must be this service (the `Host` asked for, or `public_url`). A request
/// with neither header is no browser's (a script, `curl`) and is served.
fn foreign_page(cfg: &ServiceConfig, headers: &HeaderMap) -> Result<(), Refusal> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let foreign = match (text("sec-fetch-site"), text("origin")) {
        (Some(site), _) => {
            !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"))
        }
        (None, Some(origin)) => {
            let authority = origin.split_once("://").map(|(_, rest)| rest);
            let host = text("host");
            let own = authority.is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h)))
                || origin.eq_ignore_ascii_case(public_origin(&cfg.public_base_url()));
            !own
        }
        (None, None) => false,
    };
    if foreign {
        return Err(Refusal::new(
            RefusalKind::CrossSite,
            "this test was asked for by another web site's page: start tests from this service's own page or with a script",
        ));
    }
    Ok(())
}

/// `https://relay-test.example.org:8443/some/path` → `https://relay-test.example.org:8443`.
fn public_origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(end) => &url[..start + end],
        None => url,
    }
}

/// Who is asking: the peer, or behind a trusted proxy the last `X-Forwarded-For` address that
/// is not a trusted proxy itself (the entries before it are the client's own word).
fn client_ip(cfg: &ServiceConfig, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    if !cfg.is_trusted_proxy(client) {
        return client;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    for ip in forwarded.into_iter().rev() {
        client = ip.to_canonical();
        if !cfg.is_trusted_proxy(client) {
            break;
        }
    }
    client
}

async fn test_page(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.service.get(&id).await {
        Some(found) => {
            Html(pages::render(pages::test_page(&app.site, &found.record()))).into_response()
        }
        None => not_found(State(app)).await,
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    from: Option<usize>,
}

/// The transcript as server-sent events: `line` events (id = the index of the next line, so a
/// reconnecting `EventSource` resumes where it was), then `done` with the verdict.
async fn events(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(found) = app.service.get(&id).await else {
        return not_found(State(app)).await;
    };
    let idle_timeout = app.service.config.http_idle_timeout;
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or(query.from)
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut out = SseLines { tx, next: from };
        let record = match &found {
            TestLookup::Live(test) => {
                live::follow(test, from, &mut out).await;
                test.snapshot()
            }
            TestLookup::Stored(record) => {
                for line in record.transcript.iter().skip(from) {
                    if !out.emit(line).await {
                        return;
                    }
                }
                (**record).clone()
            }
        };
        let _ = out
            .tx
            .send(Event::default().event("done").data(record.verdict))
            .await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive_interval(idle_timeout)))
        .into_response()
}

/// A live transcript writes at least this often, so the web door's idle cut-off
/// (`http_idle_timeout`, see `crate::http_listener`) never ends one: every 15 s (the usual
/// keep-alive), or more often under a shorter timeout.
fn keep_alive_interval(idle_timeout: std::time::Duration) -> std::time::Duration {
    (idle_timeout / 3).min(std::time::Duration::from_secs(15))
}

/// Transcript lines into an SSE channel.
struct SseLines {
    tx: mpsc::Sender<Event>,
    next: usize,
}

impl AsyncEmit for SseLines {
    async fn emit(&mut self, line: &str) -> bool {
        self.next += 1;
        // The probe escapes control characters; a CR or LF would still end an SSE field.
        let line = line.replace(['\r', '\n'], " ");
        let event = Event::default()
            .event("line")
            .id(self.next.to_string())
            .data(line);
        self.tx.send(event).await.is_ok()
    }
}

/// `POST /api/v1/tests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiRequest {
    /// `host`, `host:port`, `192.0.2.7:25`, `[2001:db8::7]:25`, `mx:example.com[:port]`.
    target: String,
    /// Ports for a target given without one (default `[25]`).
    #[serde(default)]
    ports: Vec<u16>,
}

async fn api_start(
    State(app): State<App>,
    ConnectInfo(Peer { addr: peer, .. }): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Json<ApiRequest>, JsonRejection>,
) -> Response {
    let client = client_ip(&app.service.config, peer, &headers);
    let request = foreign_page(&app.service.config, &headers)
        .and_then(|()| {
            body.map_err(|e| {
            Refusal::bad(format!(
                "the body must be a JSON object like {{\"target\": \"mail.example.com:25\"}}: {}",
                e.body_text()
            ))
        })
        })
        .and_then(|Json(body)| {
            let (label, inputs) = admission::parse_target(&body.target, &body.ports)?;
            Ok(Request {
                label,
                inputs,
                door: Door::Api,
                client,
            })
        });
    let started = match request {
        Ok(request) => app.service.start(request).await,
        Err(refusal) => Err(refusal),
    };
    match started {
        Ok(live) => {
            let id = live.id();
            let url = format!("/tests/{id}");
            (
                StatusCode::CREATED,
                [(header::LOCATION, format!("/api/v1/tests/{id}"))],
                Json(serde_json::json!({ "id": id, "url": url })),
            )
                .into_response()
        }
        Err(refusal) => api_refusal(&refusal),
    }
}

async fn api_get(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.service.get(&id).await {
        Some(found) => Json(found.record()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no test with id {:?}", relayward_protocol::text::escape_control(&id)) })),
        )
            .into_response(),
    }
}

fn api_refusal(refusal: &Refusal) -> Response {
    let mut body = serde_json::json!({ "error": refusal.message });
    if let Some(seconds) = refusal.retry_after {
        body["retry_after"] = seconds.into();
    }
    with_retry_after(status_of(refusal), refusal, Json(body))
}

fn with_retry_after(status: StatusCode, refusal: &Refusal, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    if let Some(seconds) = refusal.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal.kind {
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        RefusalKind::Private | RefusalKind::Excluded | RefusalKind::CrossSite => {
            StatusCode::FORBIDDEN
        }
        RefusalKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        RefusalKind::Busy | RefusalKind::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ServiceConfig {
        ServiceConfig::from_toml_str(
            &format!("[probe_service]\nhttp_listen = \"127.0.0.1:0\"\npublic_name = \"t.example\"\ndata_dir = \"x\"\n{extra}"),
            "t",
        )
        .expect("config")
    }

    #[test]
    fn the_form_tests_a_domain_s_mx_hosts_on_the_ports_given() {
        let form = FormInput {
            target: " Example.com ".into(),
            kind: Some("mx".into()),
            ports: Some("25, 587".into()),
        };
        let request = form_request(form, "192.0.2.1".parse().unwrap()).expect("request");
        assert_eq!(request.label, "mx:example.com:25, mx:example.com:587");
        assert_eq!(request.door, Door::Web);
        let form = FormInput {
            target: "mail.example.com".into(),
            kind: None,
            ports: Some("".into()),
        };
        assert_eq!(
            form_request(form, "192.0.2.1".parse().unwrap())
                .unwrap()
                .label,
            "mail.example.com:25"
        );
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.0.0.2"),
        );
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let proxied = cfg("trusted_proxies = [\"10.0.0.0/24\"]");
        assert_eq!(
            client_ip(&proxied, peer, &headers),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let direct = cfg("");
        assert_eq!(
            client_ip(&direct, peer, &headers),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&proxied, peer, &HeaderMap::new()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
