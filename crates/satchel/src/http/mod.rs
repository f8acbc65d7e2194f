//! HTTP: the router (every route registered once, with its OpenAPI description, through
//! `utoipa_axum`), the request middleware (request id, tracing span, metrics), health and
//! readiness, and the server loop with graceful shutdown.

pub mod abuse;
pub mod accounts;
pub mod affiliate_portal;
pub mod branding;
pub mod catalog;
pub mod commerce;
pub mod dashboard;
pub mod extract;
pub mod front;
pub mod images;
pub mod invoices;
pub mod library;
pub mod library_pages;
pub mod licenses;
pub mod metrics;
pub mod ops;
pub mod pages;
pub mod ranges;
pub mod ratelimit;
pub mod reviews;
pub mod seller;
pub mod uploads;
pub mod versions;
pub mod views;

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;
use crate::error::{ApiError, REQUEST_ID};

#[derive(OpenApi)]
#[openapi(
    info(title = "Satchel API", version = "1", description = "Self-hosted digital downloads store. Every JSON list is `{\"items\": [...], \"next_cursor\": ...}`; every client error is `{\"error\": {\"code\", \"message\"}}`."),
    tags(
        (name = "catalog", description = "Public product catalog"),
        (name = "ops", description = "Health, readiness and metrics"),
        (name = "checkout", description = "Purchases, orders and the test-mode checkout"),
        (name = "delivery", description = "Counted downloads and file delivery"),
        (name = "licenses", description = "License activation, validation and offline verification keys"),
        (name = "library", description = "The buyer's library (magic-link sign-in)"),
        (name = "seller", description = "Seller API: API key (Bearer) or dashboard session"),
        (name = "reviews", description = "Verified-buyer reviews and ratings"),
        (name = "affiliates", description = "The affiliate portal (magic-link sign-in; an affiliate sees only their own data)"),
        (name = "uploads", description = "Resumable uploads (tus 1.0) for version files"),
    )
)]
struct ApiDoc;

/// All routes plus the OpenAPI document describing them.
pub fn routes() -> (Router<App>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::routes())
        .merge(catalog::routes())
        .merge(commerce::routes())
        .merge(licenses::routes())
        .merge(seller::routes())
        .merge(abuse::routes())
        .merge(library::routes())
        .merge(invoices::routes())
        .merge(library_pages::routes())
        .merge(reviews::routes())
        .merge(affiliate_portal::routes())
        .merge(branding::routes())
        .merge(versions::routes().layer(axum::extract::DefaultBodyLimit::max(versions::MULTIPART_LIMIT)))
        .merge(uploads::routes())
        .merge(accounts::routes())
        .merge(images::routes())
        .split_for_parts()
}

pub fn router(app: App) -> Router {
    let (router, spec) = routes();
    let spec_json = spec.to_pretty_json().unwrap_or_default();
    router
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let body = spec_json.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .merge(pages::router())
        .merge(invoices::static_router())
        .merge(dashboard::router(app.clone()))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(app.clone(), envelope))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(app)
}

/// Headers adding up to more than this are refused (431) before any handler runs: no browser,
/// API client or download manager comes near it (nginx's own default is 4 × 8 KiB).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Every request's envelope, in one middleware (one layer costs a boxed future and a service
/// clone per request, so the steps are plain calls), outermost first:
/// 1. request id, tracing span and metrics ([`observe`]);
/// 2. the header-size limit (431);
/// 3. browser concerns: HTML error pages, security headers, `?ref=` ([`pages::browser_layer`]);
/// 4. rate limits per network ([`ratelimit::limit`]);
/// 5. the route's handler.
async fn envelope(State(app): State<App>, req: Request, next: Next) -> Response {
    enveloped(&app, req, |req| next.run(req)).await
}

/// [`envelope`]'s steps around `handler`. The HTTP front calls it directly for the hot
/// download-start route ([`front`]), so that request skips only the router's own machinery
/// (route matching, boxed services, extractors), not the envelope.
pub(crate) async fn enveloped<F, Fut>(app: &App, req: Request, handler: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    observe(app, req, |req| async {
        if let Some(refused) = headers_too_large(&req) {
            return refused;
        }
        pages::browser_layer(app, req, |req| ratelimit::limit(app, req, handler)).await
    })
    .await
}

/// The route a request answered without the router belongs to, as the router would have
/// matched it (metrics and logs label requests by route).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrontRoute(pub &'static str);

fn headers_too_large(req: &Request) -> Option<Response> {
    let total: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (total > MAX_HEADER_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("The request headers add up to {total} bytes; at most {MAX_HEADER_BYTES} are accepted."),
        )
        .into_response()
    })
}

async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "No such endpoint. The API is described at /api/openapi.json.",
    )
}

pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// Request id (taken from `X-Request-Id` when sane, else minted), a tracing span, and metrics.
async fn observe<F, Fut>(app: &App, mut req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let started = Instant::now();
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .unwrap_or_else(crate::ids::request_id);
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let front_route = req.extensions().get::<FrontRoute>().copied();
    let route = matched
        .as_ref()
        .map(MatchedPath::as_str)
        .or(front_route.map(|r| r.0))
        .unwrap_or("unmatched");
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(rid.clone()));
    let span = tracing::info_span!("request", request_id = %rid, method = %method, route = %route);
    let mut resp = REQUEST_ID
        .scope(rid.clone(), tracing::Instrument::instrument(next(req), span.clone()))
        .await;
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    app.metrics.observe(&method, route, status, secs);
    span.in_scope(|| tracing::debug!(status, ms = secs * 1000.0, "done"));
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Largest write buffer hyper keeps per HTTP/1 connection (and largest request head). hyper's
/// default (~400 KiB) lets every stalled download park that much of the file in memory; 64 KiB
/// bounds a slow download to its queued chunk plus the one being read (docs/operations.md).
const CONN_BUF: usize = 64 * 1024;

/// Serves until SIGTERM/ctrl-c (or `stop`), then lets in-flight requests finish within the grace period.
///
/// A plain accept loop rather than `axum::serve`: each connection starts in the HTTP/1
/// [`front`] (delivery requests, `sendfile` for local files) and is handed to hyper, with
/// the per-connection buffer bounded (`CONN_BUF`), for anything else. Each request gets
/// `ConnectInfo` like `into_make_service_with_connect_info`.
pub async fn serve(app: App, listener: tokio::net::TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    use hyper_util::rt::TokioExecutor;
    let grace = Duration::from_secs(app.cfg.server.shutdown_grace_secs);
    let mut hyper = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    hyper
        .http1()
        .max_buf_size(CONN_BUF)
        .timer(hyper_util::rt::TokioTimer::new());
    let front = std::sync::Arc::new(front::Front {
        router: router(app.clone()),
        app,
        hyper,
        stop: stop.clone(),
        max_head: CONN_BUF,
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the open connections.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = io.set_nodelay(true);
        connections.spawn(front::connection(front.clone(), io, peer, graceful.watcher()));
    }
    drop(listener);
    connections.close();
    // Connections in the front finish their response and close; hyper's are told to finish theirs.
    let drained = async {
        graceful.shutdown().await;
        connections.wait().await;
    };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period; closing");
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
