//! The technician console: a web page served by `labd` over HTTP (loopback by default), with
//! its assets compiled into the binary, and a small JSON API in front of the same gRPC service
//! implementation — so a browser sees exactly what `labctl` sees, with the same token checks
//! and the same tenant scoping.

use crate::api::Api;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protos::labwright::v1 as pb;
use protos::labwright::v1::inventory_server::Inventory as _;
use protos::labwright::v1::lab_server::Lab as _;
use protos::labwright::v1::runs_server::Runs as _;
use serde::Deserialize;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// What every answer carries: the page loads nothing but its own script and style, is never
/// framed by another site, and no answer is sniffed into another type.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// The `Host` names the console answers to; `None`: any (bound to a non-loopback address with
/// no names configured).
#[derive(Debug, Clone)]
pub struct Hosts(Option<Vec<String>>);

impl Hosts {
    /// For a console listening on `addr`: on loopback, only loopback names (a web page elsewhere
    /// cannot reach it through a DNS name it controls — DNS rebinding); `names` adds others.
    pub fn for_listener(addr: std::net::SocketAddr, names: &[String]) -> Hosts {
        let port = addr.port();
        let mut allowed: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        if addr.ip().is_loopback() {
            for name in ["127.0.0.1", "localhost", "[::1]"] {
                allowed.push(name.to_string());
                allowed.push(format!("{name}:{port}"));
            }
            return Hosts(Some(allowed));
        }
        Hosts((!allowed.is_empty()).then_some(allowed))
    }

    fn allows(&self, host: Option<&str>) -> bool {
        match (&self.0, host) {
            (None, _) => true,
            (Some(allowed), Some(h)) => allowed.contains(&h.to_ascii_lowercase()),
            (Some(_), None) => false,
        }
    }
}

/// Refuses requests for another host name (421) and adds the security headers to every answer.
async fn guard(State(hosts): State<Hosts>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let mut res = if hosts.allows(host.as_deref()) {
        next.run(req).await
    } else {
        failure(
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to its own host names (console_hosts in labd.toml)",
        )
    };
    for (name, value) in SECURITY_HEADERS {
        res.headers_mut().insert(name, header::HeaderValue::from_static(value));
    }
    res
}

/// The console's routes. Every `/api` route reads the bearer token the page got at login.
pub fn router(api: Api) -> Router {
    guarded(api, Hosts(None))
}

/// [`router`] answering only to `hosts`.
pub fn guarded(api: Api, hosts: Hosts) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
        .route("/api/whoami", get(whoami))
        .route("/api/instruments", get(instruments))
        .route("/api/instruments/{id}/maintenance", post(maintenance))
        .route("/api/halt", post(halt))
        .route("/api/resume", post(resume))
        .route("/api/schedule", get(schedule))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/analysis", get(run_analysis))
        .route("/api/interventions", get(interventions))
        .route("/api/interventions/{id}/resolve", post(resolve))
        .route("/api/picks", get(picks))
        .route("/api/containers", get(containers))
        .route("/api/stock", get(stock))
        .route("/api/audit", get(audit))
        .route("/api/picks/{run}/{n}/confirm", post(confirm_pick))
        .route("/api/shipments", get(shipments))
        .route("/api/shipments/{id}/receive", post(receive_shipment))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "no such page or API route") })
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(hosts, guard))
}

/// The probes an orchestrator or load balancer calls, unsigned and on any host name (they tell
/// nothing a tenant owns): `/healthz` answers while the process does; `/readyz` says whether
/// labd can do its job now (200) or not (503), and which part is not.
pub fn probes(health: Arc<crate::health::Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render())
                    .into_response()
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = health.readiness();
                async move {
                    let code = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (code, [(header::CACHE_CONTROL, "no-store")], Json(r)).into_response()
                }
            }),
        )
}

/// Serves the console and the probes on `listener` until `shutdown` completes.
pub async fn serve(
    api: Api,
    listener: tokio::net::TcpListener,
    names: Vec<String>,
    health: Arc<crate::health::Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let app = guarded(api, Hosts::for_listener(addr, &names)).merge(probes(health));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn failure(code: StatusCode, message: &str) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A gRPC status as an HTTP answer with the same message.
fn http_error(s: tonic::Status) -> Response {
    use tonic::Code;
    let code = match s.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(code, s.message())
}

/// A gRPC request carrying the browser's bearer token. A header that cannot be carried over
/// (not visible ASCII) is refused here, rather than dropped and reported as missing.
fn request<T>(headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, tonic::Status> {
    let mut r = tonic::Request::new(message);
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok().and_then(|v| v.parse().ok()).ok_or_else(|| {
            tonic::Status::unauthenticated("the authorization header is not plain text: send `Bearer <token>`")
        })?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}

/// Calls a gRPC method with the browser's token; answers with its JSON or its error.
async fn call<T, R, F>(headers: &HeaderMap, message: T, method: impl FnOnce(tonic::Request<T>) -> F) -> Response
where
    R: serde::Serialize,
    F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    match request(headers, message) {
        Ok(r) => answer(method(r).await),
        Err(s) => http_error(s),
    }
}

fn answer<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Response {
    match r {
        Ok(r) => Json(r.into_inner()).into_response(),
        Err(s) => http_error(s),
    }
}

async fn whoami(State(api): State<Api>, headers: HeaderMap) -> Response {
    let r = match request(&headers, ()) {
        Ok(r) => r,
        Err(s) => return http_error(s),
    };
    match api.whoami(&r).await {
        Ok((role, tenant)) => Json(serde_json::json!({ "role": role, "tenant": tenant })).into_response(),
        Err(s) => http_error(s),
    }
}

async fn instruments(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::InstrumentsRequest {}, |r| async move { api.instruments(r).await }).await
}

#[derive(Debug, Deserialize)]
struct MaintenanceBody {
    on: bool,
    #[serde(default)]
    reason: String,
}

async fn maintenance(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<MaintenanceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return failure(StatusCode::BAD_REQUEST, "send JSON {\"on\": true|false, \"reason\": \"...\"}");
    };
    let r = pb::SetMaintenanceRequest { instrument: id, on: b.on, reason: b.reason };
    call(&headers, r, |r| async move { api.set_maintenance(r).await }).await
}

#[derive(Debug, Deserialize)]
struct HaltBody {
    #[serde(default)]
    emergency: bool,
    #[serde(default)]
    reason: String,
}

async fn halt(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<HaltBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return failure(StatusCode::BAD_REQUEST, "send JSON {\"emergency\": true|false, \"reason\": \"...\"}");
    };
    let r = pb::HaltRequest { emergency: b.emergency, reason: b.reason };
    call(&headers, r, |r| async move { api.halt(r).await }).await
}

async fn resume(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::ResumeRequest {}, |r| async move { api.resume(r).await }).await
}

/// `?page_token=…` from the previous page's `next_page_token` (lists come a page at a time).
fn page_token(uri: &axum::http::Uri) -> String {
    uri.query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("page_token="))
        .map(|t| t.replace("%3A", ":").replace("%3a", ":").replace("%40", "@"))
        .unwrap_or_default()
}

async fn schedule(State(api): State<Api>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let r = pb::ScheduleRequest { page_token: page_token(&uri), ..Default::default() };
    call(&headers, r, |r| async move { api.schedule(r).await }).await
}

async fn runs(State(api): State<Api>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let r = pb::ListRunsRequest { page_token: page_token(&uri), ..Default::default() };
    call(&headers, r, |r| async move { api.list(r).await }).await
}

async fn cancel(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&headers, pb::CancelRequest { run_id: id }, |r| async move { api.cancel(r).await }).await
}

async fn interventions(State(api): State<Api>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let r = pb::InterventionsRequest { include_resolved: true, page_token: page_token(&uri), ..Default::default() };
    call(&headers, r, |r| async move { api.interventions(r).await }).await
}

#[derive(Debug, Deserialize)]
struct ResolveBody {
    resolution: String,
    /// Why, for the audit trail (optional).
    #[serde(default)]
    reason: Option<String>,
}

async fn resolve(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ResolveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return failure(StatusCode::BAD_REQUEST, "send JSON {\"resolution\": \"done\"|\"redo\"|\"abort\"}");
    };
    let ask = pb::ResolveRequest { id, resolution: b.resolution, reason: b.reason.unwrap_or_default() };
    call(&headers, ask, |r| async move { api.resolve(r).await }).await
}

/// The audit trail's latest entries (technicians and admins).
async fn audit(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::AuditRequest { since_ms: 0, limit: AUDIT_SHOWN }, |r| async move {
        pb::lab_server::Lab::audit(&api, r).await
    })
    .await
}

/// Audit entries the console shows (`labctl audit` reads further back).
const AUDIT_SHOWN: u32 = 50;

/// Every run's pick-list items still to fetch (technicians and admins).
async fn picks(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::PickListRequest { run_id: String::new() }, |r| async move { api.pick_list(r).await }).await
}

/// The containers the lab holds: a scientist's tenant's own, every tenant's for staff.
async fn containers(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::ContainersRequest {}, |r| async move { api.containers(r).await }).await
}

/// The lab's stock of reagents and consumables (technicians and admins).
async fn stock(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::StockRequest {}, |r| async move { api.stock(r).await }).await
}

#[derive(Debug, Deserialize)]
struct ScanBody {
    barcode: String,
}

/// A scanned barcode for item `n` of a run's pick list.
async fn confirm_pick(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((run, n)): Path<(String, i64)>,
    body: Result<Json<ScanBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return failure(StatusCode::BAD_REQUEST, "send JSON {\"barcode\": \"...\"}");
    };
    let r = pb::ConfirmPickRequest { run_id: run, n, barcode: b.barcode };
    call(&headers, r, |r| async move { api.confirm_pick(r).await }).await
}

/// Shipments declared and not received yet (a scientist's tenant's own; every tenant's for staff).
async fn shipments(State(api): State<Api>, headers: HeaderMap) -> Response {
    call(&headers, pb::ShipmentsRequest {}, |r| async move { api.shipments(r).await }).await
}

#[derive(Debug, Deserialize)]
struct ReceiveBody {
    /// Every barcode scanned at the bench.
    scanned: Vec<String>,
    /// A storage unit; the receiving bench when absent.
    #[serde(default)]
    location: Option<String>,
}

/// Receives a declared shipment once every container has been scanned (technicians and admins).
async fn receive_shipment(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ReceiveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return failure(StatusCode::BAD_REQUEST, "send JSON {\"scanned\": [\"barcode\", ...], \"location\": \"unit\"}");
    };
    let r = pb::ReceiveRequest {
        shipment_id: id,
        scanned: b.scanned,
        location: b.location.unwrap_or_default(),
        ..Default::default()
    };
    call(&headers, r, |r| async move { api.receive(r).await }).await
}

/// A run's reads analysed, for its results page: each read's heatmap and curves (SVG, every
/// text in them escaped), replicate statistics and fits — what `labctl results --plot` writes.
/// The run and its results come through the gRPC implementation with the browser's token, so
/// another tenant's run is not found here either.
async fn run_analysis(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let info = match request(&headers, pb::GetRunRequest { run_id: id.clone() }) {
        Ok(r) => api.get(r).await,
        Err(s) => return http_error(s),
    };
    let info = match info {
        Ok(r) => r.into_inner(),
        Err(s) => return http_error(s),
    };
    let results = match request(&headers, pb::ResultsRequest { run_id: id }) {
        Ok(r) => api.results(r).await,
        Err(s) => return http_error(s),
    };
    let results = match results {
        Ok(r) => r.into_inner().results,
        Err(s) => return http_error(s),
    };
    // Fitting is CPU work: off the async workers.
    let analysed = tokio::task::spawn_blocking(move || {
        let reads: Vec<serde_json::Value> = crate::results::reads(&info, &results)
            .iter()
            .enumerate()
            .map(|(i, read)| {
                let a = analysis::analyze(read);
                let pictures: Vec<serde_json::Value> = analysis::plot::pictures(read, &a, i)
                    .into_iter()
                    .map(|(name, svg)| serde_json::json!({"name": name, "svg": svg}))
                    .collect();
                serde_json::json!({"index": i, "analysis": a, "pictures": pictures})
            })
            .collect();
        let run = serde_json::json!({"id": info.id, "name": info.name, "state": info.state});
        serde_json::json!({"run": run, "reads": reads})
    })
    .await;
    match analysed {
        Ok(body) => Json(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "analysing a run's results stopped");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the results could not be analysed (a bug); the raw results are in labctl results",
            )
        }
    }
}
