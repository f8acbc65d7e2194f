//! The seller dashboard: server-rendered askama pages under `/dashboard`.
//!
//! Handlers are thin: they read a form, call the same domain functions the seller API
//! calls (`catalog`, `refunds`, `licensing`, `checkout`, `affiliates`, `accounts`) and
//! render a template from `templates/dashboard/`. Pages work without JavaScript; the only
//! script is `static/uploader.js`, which turns the new-version form into a resumable
//! (tus) upload with a progress bar when the server offers tus.
//!
//! Who: the dashboard session is the seller session of `POST /api/v1/auth/login`
//! (`satchel_session`, HttpOnly, SameSite=Lax, Secure on https). Every page scopes its
//! queries to the session's seller, so another seller's ids answer 404.
//!
//! CSRF: every state-changing form repeats the session's own `csrf_token` (a random value
//! stored with the session) in a hidden `csrf` field; POST handlers compare it in constant
//! time before doing anything. The sign-in form, which has no session yet, uses the
//! storefront's double-submit cookie instead.

mod abuse;
mod admin;
mod affiliates;
mod auth;
pub mod chart;
mod discounts;
mod licenses;
mod orders;
mod outbox;
mod overview;
mod products;
mod settings;

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::App;
use crate::db::Exec;
use crate::error::{ApiError, ApiResult};
use crate::ids::{hash_secret, now};
use crate::sql;

const DASHBOARD_CSS: &str = include_str!("../../../static/dashboard.css");
const UPLOADER_JS: &str = include_str!("../../../static/uploader.js");

pub fn router(app: App) -> Router<App> {
    let uploads = Router::new()
        .route("/dashboard/products/{id}/versions", post(products::create_version))
        .route("/dashboard/settings/logo", post(settings::upload_logo))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::versions::MULTIPART_LIMIT,
        ));
    Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/login", get(auth::login_page).post(auth::login))
        .route("/dashboard/logout", post(auth::logout))
        .route("/dashboard/products", get(products::list))
        .route(
            "/dashboard/products/new",
            get(products::new_page).post(products::create),
        )
        .route(
            "/dashboard/products/{id}",
            get(products::edit_page).post(products::update),
        )
        .route("/dashboard/products/{id}/status", post(products::set_status))
        .route("/dashboard/products/{id}/versions/new", get(products::version_page))
        .route("/dashboard/orders", get(orders::list))
        .route("/dashboard/orders/{id}", get(orders::detail))
        .route("/dashboard/orders/{id}/refund", post(orders::refund))
        .route("/dashboard/orders/{id}/resend", post(orders::resend))
        .route("/dashboard/orders/{id}/grants/{grant_id}", post(orders::grant_action))
        .route("/dashboard/abuse", get(abuse::list))
        .route("/dashboard/abuse/{id}/action", post(abuse::action))
        .route("/dashboard/licenses", get(licenses::list))
        .route("/dashboard/licenses/{id}", get(licenses::detail))
        .route("/dashboard/licenses/{id}/action", post(licenses::action))
        .route("/dashboard/discounts", get(discounts::list).post(discounts::create))
        .route("/dashboard/discounts/{id}/deactivate", post(discounts::deactivate))
        .route("/dashboard/affiliates", get(affiliates::list).post(affiliates::create))
        .route("/dashboard/affiliates/payable.csv", get(affiliates::payable_csv))
        .route("/dashboard/affiliates/mark-paid", post(affiliates::mark_paid))
        .route("/dashboard/emails", get(outbox::list))
        .route("/dashboard/emails/{id}", get(outbox::detail))
        .route("/dashboard/emails/{id}/body", get(outbox::body))
        .route("/dashboard/settings", get(settings::page).post(settings::save))
        .route("/dashboard/settings/logo/remove", post(settings::remove_logo))
        .route("/dashboard/admin/sellers", get(admin::list).post(admin::create))
        .route("/dashboard/admin/sellers/{id}/status", post(admin::set_status))
        .merge(uploads)
        .layer(axum::middleware::from_fn_with_state(app, error_pages))
        .route("/static/dashboard.css", get(dashboard_css))
        .route("/static/uploader.js", get(uploader_js))
}

async fn dashboard_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        DASHBOARD_CSS,
    )
        .into_response()
}

async fn uploader_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        UPLOADER_JS,
    )
        .into_response()
}

// ---------- who is signed in ----------

/// The signed-in seller (or admin) of a dashboard page.
#[derive(Debug, Clone)]
pub struct Dash {
    pub user_id: String,
    pub email: String,
    pub role: String,
    pub seller_id: String,
    pub csrf: String,
    pub store_name: String,
}

impl Dash {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// The session behind the request's `satchel_session` cookie, if it is live and its
    /// seller is active.
    pub async fn from_headers(app: &App, headers: &HeaderMap) -> ApiResult<Option<Self>> {
        let Some(token) = crate::auth::cookie(headers, crate::auth::SESSION_COOKIE) else {
            return Ok(None);
        };
        let row: Option<(String, String, String, String, String, String)> = app
            .db
            .fetch_optional(sql!(
                "SELECT u.id, u.email, u.role, sl.id, s.csrf_token, sl.store_name
                 FROM sessions s JOIN users u ON u.id = s.user_id JOIN sellers sl ON sl.id = u.seller_id
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.role IN ('seller', 'admin') AND sl.status = 'active'",
                hash_secret(&token),
                now()
            ))
            .await?;
        Ok(row.map(|(user_id, email, role, seller_id, csrf, store_name)| Dash {
            user_id,
            email,
            role,
            seller_id,
            csrf,
            store_name,
        }))
    }

    /// Refuses a form whose `csrf` field is not this session's token (403, nothing done).
    pub fn check_csrf(&self, token: &str) -> ApiResult<()> {
        use subtle::ConstantTimeEq;
        if !token.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }

    pub fn layout(&self, section: &'static str, title: impl Into<String>) -> Layout {
        Layout {
            section,
            title: title.into(),
            email: self.email.clone(),
            store_name: self.store_name.clone(),
            csrf: self.csrf.clone(),
            is_admin: self.is_admin(),
            notice: None,
        }
    }
}

pub fn csrf_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_failed",
        "This form expired or did not come from your dashboard. Reload the page and try again.",
    )
}

impl FromRequestParts<App> for Dash {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        match Dash::from_headers(app, &parts.headers).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => {
                let next = if parts.method == Method::GET {
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                let to = if next.is_empty() || next == "/dashboard" {
                    "/dashboard/login".to_string()
                } else {
                    format!("/dashboard/login?next={}", enc(&next))
                };
                Err(Redirect::to(&to).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

// ---------- layout and rendering ----------

/// What the dashboard frame needs on every page.
pub struct Layout {
    pub section: &'static str,
    pub title: String,
    pub email: String,
    pub store_name: String,
    pub csrf: String,
    pub is_admin: bool,
    pub notice: Option<String>,
}

impl Layout {
    #[must_use]
    pub fn with_notice(mut self, code: Option<&str>) -> Self {
        self.notice = code.and_then(notice_text).map(str::to_string);
        self
    }

    /// `"current"` when `s` is this page's section (for `aria-current`).
    pub fn is(&self, s: &str) -> bool {
        self.section == s
    }
}

/// Messages after a redirect (`?notice=code`): only known codes, so nothing can be injected.
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "product_created" => "Product created.",
        "product_saved" => "Changes saved.",
        "published" => "Published: the product is live in your store.",
        "archived" => "Archived: the product is hidden from the store; past buyers keep their downloads.",
        "drafted" => "Moved back to draft: the product is hidden from the store.",
        "version_published" => "New version published. Buyers were emailed and their libraries show the update.",
        "refunded" => "Refund recorded. The buyer's downloads and license keys for the refunded items were revoked.",
        "receipt_queued" => "Receipt queued: the buyer gets it with fresh download links.",
        "license_suspend" => "License suspended. Validation now answers SUSPENDED.",
        "license_extend" => "License extended. The new expiry is below.",
        "license_reinstate" => "License reinstated.",
        "license_revoke" => "License revoked.",
        "license_reset" => "Every device was deactivated; the buyer can activate again.",
        "flag_clear" => "Flag cleared: the download works again and detection starts afresh.",
        "flag_suspend" => "Flag resolved: the download stays suspended.",
        "flag_revoke" => "Flag resolved: the download was revoked.",
        "grant_reset" => "Downloads reset: the full allowance is back, the IP binding and any suspension are cleared.",
        "grant_extend" => "Download access extended. New links carry the new date; resend the receipt to send one.",
        "grant_revoke" => "Download revoked.",
        "discount_created" => "Discount code created.",
        "discount_deactivated" => "Discount code deactivated.",
        "affiliate_created" => "Affiliate created. Share their link to start tracking.",
        "marked_paid" => "Payable commissions marked as paid.",
        "settings_saved" => "Settings saved.",
        "logo_saved" => "Logo updated.",
        "logo_removed" => "Logo removed.",
        "seller_created" => "Seller created. They can sign in now.",
        "seller_suspended" => "Seller suspended: their sessions and API keys stop working.",
        "seller_active" => "Seller reactivated.",
        _ => return None,
    })
}

pub fn render(t: &impl Template) -> ApiResult<Response> {
    t.render()
        .map(|h| Html(h).into_response())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))
}

/// A rendered page with a non-200 status (a form re-rendered with errors).
pub fn render_status(status: StatusCode, t: &impl Template) -> ApiResult<Response> {
    let mut r = render(t)?;
    *r.status_mut() = status;
    Ok(r)
}

/// 303 to `to` after a successful POST.
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Field-level messages of a form.
#[derive(Default, Debug)]
pub struct Errors {
    items: Vec<(String, String)>,
    /// A message for the form as a whole.
    pub general: Option<String>,
}

impl Errors {
    pub fn add(&mut self, field: &str, msg: impl Into<String>) {
        if !self.has(field) {
            self.items.push((field.to_string(), msg.into()));
        }
    }
    pub fn has(&self, field: &str) -> bool {
        self.items.iter().any(|(f, _)| f == field)
    }
    pub fn get(&self, field: &str) -> Option<&str> {
        self.items.iter().find(|(f, _)| f == field).map(|(_, m)| m.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.general.is_none()
    }
    /// (element id, message) pairs for the summary at the top of a form; fields the
    /// domain names as a whole policy point at the input that starts it.
    pub fn list(&self) -> Vec<(String, String)> {
        self.items
            .iter()
            .map(|(f, m)| {
                let anchor = match f.as_str() {
                    "license_policy" => "license_type",
                    "download_policy" => "max_downloads",
                    "uploads" | "file_name" => "files",
                    other => other,
                };
                (anchor.to_string(), m.clone())
            })
            .collect()
    }
    /// Takes a client error from domain code: its `field` places it, else it is general.
    /// Anything else (a 500) is returned for the caller to propagate.
    pub fn absorb(&mut self, e: ApiError) -> ApiResult<()> {
        match e {
            ApiError::Client { message, field, .. } => {
                let msg = capitalize(&message);
                match field {
                    Some(f) => self.add(&f, msg),
                    None => self.general = Some(msg),
                }
                Ok(())
            }
            other => Err(other),
        }
    }
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// `axum::Form` whose rejection is a 400 in our error shape. Form structs use
/// `#[serde(default)]`, so a missing `csrf` reaches the handler and is refused with 403.
pub struct DashForm<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for DashForm<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::extract::Form::<T>::from_request(req, state)
            .await
            .map(|axum::extract::Form(v)| DashForm(v))
            .map_err(|e| crate::error::bad_request("invalid_form", e.body_text()))
    }
}

// ---------- formatting helpers shared by the pages ----------

pub fn money(v: i64, currency: &str) -> String {
    crate::catalog::format_money(v, currency)
}

/// `4900` USD → `49.00` (what a price input shows).
pub fn major_units(minor: i64, currency: &str) -> String {
    let exp = crate::catalog::currency_exponent(currency).unwrap_or(2);
    if exp == 0 {
        return minor.to_string();
    }
    let div = 10_i64.pow(exp);
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.abs();
    format!("{sign}{}.{:0width$}", m / div, m % div, width = exp as usize)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn datetime(unix: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()
}

/// `3 Mar 2025` (UTC).
pub fn date(unix: i64) -> String {
    datetime(unix)
        .map(|t| {
            format!(
                "{} {} {}",
                t.day(),
                MONTHS[usize::from(u8::from(t.month())) - 1],
                t.year()
            )
        })
        .unwrap_or_default()
}

/// `3 Mar` (UTC).
pub fn day_month(unix: i64) -> String {
    datetime(unix)
        .map(|t| format!("{} {}", t.day(), MONTHS[usize::from(u8::from(t.month())) - 1]))
        .unwrap_or_default()
}

/// `3 Mar 2025, 14:05 UTC`.
pub fn datetime_label(unix: i64) -> String {
    datetime(unix)
        .map(|t| format!("{}, {:02}:{:02} UTC", date(unix), t.hour(), t.minute()))
        .unwrap_or_default()
}

/// `2025-03-03` for `<input type="date">`.
pub fn iso_date(unix: i64) -> String {
    datetime(unix).map(|t| t.date().to_string()).unwrap_or_default()
}

/// `2025-03-03` → unix seconds at the end of that day (UTC), so "expires on" includes it.
pub fn parse_iso_date_end(s: &str) -> Option<i64> {
    let mut parts = s.trim().splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() + 86_399)
}

/// "3 minutes ago", "2 days ago" (for lists).
pub fn ago(unix: i64) -> String {
    let d = now() - unix;
    match d {
        i64::MIN..=59 => "just now".into(),
        60..=3599 => plural(d / 60, "minute"),
        3600..=86_399 => plural(d / 3600, "hour"),
        86_400..=2_591_999 => plural(d / 86_400, "day"),
        _ => date(unix),
    }
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

// ---------- error pages in the dashboard frame ----------

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage {
    l: Layout,
    status: u16,
    heading: String,
    message: String,
}

#[derive(Template)]
#[template(path = "dashboard/error_bare.html")]
struct ErrorBarePage {
    status: u16,
    heading: String,
    message: String,
}

/// JSON errors from dashboard handlers become pages in the dashboard's frame (the status
/// is kept: 403 for a refused form, 404 for someone else's order…).
async fn error_pages(State(app): State<App>, req: Request, next: Next) -> Response {
    let headers = req.headers().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let dash = Dash::from_headers(&app, &headers).await.ok().flatten();
    let (heading, message) = match status.as_u16() {
        404 => (
            "Not found".to_string(),
            "There is nothing here, or it belongs to another store.".to_string(),
        ),
        403 if code == "csrf_failed" => (
            "This form expired".to_string(),
            v["error"]["message"].as_str().unwrap_or_default().to_string(),
        ),
        403 => (
            "Not allowed".to_string(),
            v["error"]["message"].as_str().unwrap_or_default().to_string(),
        ),
        s if s >= 500 => (
            "Something went wrong".to_string(),
            format!(
                "We hit a problem on our side; nothing you did. Try again in a minute. Request id: {}",
                v["error"]["request_id"].as_str().unwrap_or_default()
            ),
        ),
        _ => (
            "That didn't work".to_string(),
            capitalize(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("The request could not be completed."),
            ),
        ),
    };
    let rendered = match &dash {
        Some(d) => ErrorPage {
            l: d.layout("", heading.clone()),
            status: status.as_u16(),
            heading,
            message,
        }
        .render(),
        None => ErrorBarePage {
            status: status.as_u16(),
            heading,
            message,
        }
        .render(),
    };
    match rendered {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            if let Some(rid) = parts.headers.get("x-request-id") {
                r.headers_mut().insert("x-request-id", rid.clone());
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_amounts() {
        assert_eq!(date(0), "1 Jan 1970");
        assert_eq!(iso_date(86_400 * 31), "1970-02-01");
        assert_eq!(parse_iso_date_end("1970-02-01"), Some(86_400 * 32 - 1));
        assert_eq!(parse_iso_date_end("1970-13-01"), None);
        assert_eq!(parse_iso_date_end("nope"), None);
        assert_eq!(major_units(4900, "USD"), "49.00");
        assert_eq!(major_units(500, "JPY"), "500");
        assert_eq!(notice_text("<script>"), None);
    }

    #[test]
    fn errors_place_domain_messages_on_fields() {
        let mut e = Errors::default();
        e.absorb(crate::error::unprocessable("invalid_title", "title must be 1–200 characters").field("title"))
            .unwrap();
        e.absorb(crate::error::conflict("x", "something else")).unwrap();
        assert_eq!(e.get("title"), Some("Title must be 1–200 characters"));
        assert_eq!(e.general.as_deref(), Some("Something else"));
        assert!(e.absorb(ApiError::Internal(anyhow::anyhow!("db"))).is_err());
    }
}
