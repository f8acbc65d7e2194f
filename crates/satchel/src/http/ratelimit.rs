//! Rate limits on unauthenticated endpoints, per client IP prefix (/24 IPv4, /64 IPv6), so
//! one network cannot hammer downloads, brute-force license keys or flood sign-in emails.
//! A token bucket per (class, prefix), in memory per instance; over the limit answers 429
//! with `Retry-After` and the JSON error `rate_limited`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::error::ApiError;

/// (burst, tokens per second) for each class of endpoint.
fn class_of(method: &axum::http::Method, path: &str) -> Option<(&'static str, f64, f64)> {
    let post = method == axum::http::Method::POST;
    if path.starts_with("/api/v1/downloads/") || path.starts_with("/downloads/reconfirm/") {
        Some(("downloads", 30.0, 2.0))
    } else if path.starts_with("/api/v1/licenses/") {
        Some(("licenses", 60.0, 10.0))
    } else if post
        && (path.starts_with("/api/v1/auth/")
            || path == "/api/v1/library/login"
            || path == "/library/login"
            || path == "/api/v1/affiliate/login"
            || path == "/affiliate/login"
            || path == "/dashboard/login"
            || path == "/api/v1/orders/lookup")
    {
        Some(("sign-in", 10.0, 0.2))
    } else if post
        && (path == "/api/v1/checkout" || (path.starts_with("/api/v1/products/") && path.ends_with("/purchase")))
    {
        Some(("purchase", 20.0, 1.0))
    } else {
        None
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(&'static str, String), Bucket>>,
}

impl RateLimiter {
    /// Takes a token; on refusal returns the seconds until one is available.
    fn take(&self, class: &'static str, prefix: String, burst: f64, per_sec: f64) -> Result<(), u64> {
        let Ok(mut map) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if map.len() > 50_000 {
            // Forget prefixes whose buckets have refilled: they are the same as new ones.
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = map.entry((class, prefix)).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// The client's address: the first `X-Forwarded-For` hop when `server.trust_forwarded_for`
/// is on (behind a reverse proxy), else the peer.
pub fn client_ip(app: &App, headers: &axum::http::HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
    let forwarded = app
        .cfg
        .server
        .trust_forwarded_for
        .then(|| {
            headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        })
        .flatten();
    forwarded.or(peer)
}

/// The rate-limit step of the request envelope (`http::envelope`): a request of a limited
/// class over its network's budget gets 429 and never reaches `next`.
pub async fn limit<F, Fut>(app: &App, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    if !app.cfg.server.rate_limits {
        return next(req).await;
    }
    let Some((class, burst, per_sec)) = class_of(req.method(), req.uri().path()) else {
        return next(req).await;
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let Some(ip) = client_ip(app, req.headers(), peer) else {
        return next(req).await;
    };
    match app
        .rate_limiter
        .take(class, crate::delivery::ip_prefix(ip), burst, per_sec)
    {
        Ok(()) => next(req).await,
        Err(wait) => too_many(&format!("too many {class} requests from your network"), wait),
    }
}

/// 429 `rate_limited` saying `what`, with `Retry-After: wait`.
pub fn too_many(what: &str, wait: u64) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("{what}; try again in {wait} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    resp
}
