//! The buyer's library as pages: sign in by emailed link, then purchases (current version,
//! "updated" badge, download, files), license keys with their devices (Deactivate),
//! subscriptions (Cancel / Resume, with what happens in plain words) and reviews.
//!
//! Every form is a plain POST that works without JavaScript, carries the session's CSRF
//! token (`csrf`), and redirects back to `/library?done=…#anchor` on success. A review with
//! bad input re-renders the page with the buyer's text and the message next to the field
//! (422). The domain work is the same code the JSON API calls.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::catalog::format_money;
use crate::error::{ApiError, ApiResult};
use crate::http::pages::{brand, Brand};
use crate::http::views::{self, Stars};
use crate::library::BuyerAuth;
use crate::reviews::ReviewInput;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(library_page))
        .routes(routes!(library_login_form))
        .routes(routes!(library_logout))
        .routes(routes!(deactivate_form))
        .routes(routes!(cancel_form))
        .routes(routes!(resume_form))
        .routes(routes!(review_form))
}

// ---------- view models ----------

pub struct DeviceView {
    pub id: String,
    pub name: String,
    pub activated: String,
    pub last_seen: String,
    pub can_deactivate: bool,
}

pub struct LicenseView {
    pub key: String,
    pub status: String,
    pub live: bool,
    pub seats: String,
    pub devices: Vec<DeviceView>,
}

pub struct FileLine {
    pub name: String,
    pub size: String,
    pub sha256: String,
}

pub struct MyReview {
    pub view: crate::http::reviews::ReviewView,
    pub hidden: bool,
}

pub struct ReviewForm {
    pub rating: i64,
    pub title: String,
    pub body: String,
    pub display_name: String,
    pub error: Option<String>,
    pub error_field: String,
    pub open: bool,
}

impl ReviewForm {
    /// The message for `field`, if the last submission failed there.
    pub fn err(&self, field: &str) -> Option<&str> {
        let mine = self.error_field == field
            || (field == "form" && !["rating", "title", "body", "display_name"].contains(&self.error_field.as_str()));
        self.error.as_deref().filter(|_| mine)
    }
}

pub struct PurchaseView {
    pub dom_id: String,
    pub product_id: String,
    pub title: String,
    pub href: Option<String>,
    pub cover_url: Option<String>,
    pub hue: u32,
    pub initial: String,
    pub updated: bool,
    pub version: Option<String>,
    pub bought: String,
    pub invoice_url: Option<String>,
    pub status_note: Option<String>,
    pub download_url: Option<String>,
    pub downloads_note: Option<String>,
    pub files: Vec<FileLine>,
    pub files_summary: String,
    pub licenses: Vec<LicenseView>,
    /// Shown once per product (on its newest purchase).
    pub review_here: bool,
    pub can_review: bool,
    pub review: Option<MyReview>,
    pub form: ReviewForm,
}

pub struct SubView {
    pub id: String,
    pub title: String,
    pub href: Option<String>,
    pub badge: String,
    pub badge_class: String,
    pub plan: Option<String>,
    pub facts: Vec<(String, String)>,
    pub what: String,
    pub can_cancel: bool,
    pub can_resume: bool,
}

#[derive(Template)]
#[template(path = "store/library.html")]
struct LibraryPage {
    brand: Brand,
    email: String,
    csrf: String,
    notice: Option<&'static str>,
    error: Option<String>,
    subscriptions: Vec<SubView>,
    purchases: Vec<PurchaseView>,
}

#[derive(Template)]
#[template(path = "store/library_signin.html")]
struct SignInPage {
    brand: Brand,
    sent: bool,
    email: String,
    error: Option<String>,
    notice: Option<&'static str>,
}

fn render(t: &impl Template) -> ApiResult<Html<String>> {
    t.render()
        .map(Html)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn hue(id: &str) -> u32 {
    id.bytes().map(u32::from).sum::<u32>() % 5 + 1
}

fn sub_view(v: &Value, at: i64) -> SubView {
    let end = v["current_period_end"].as_i64();
    let access = v["access_until"].as_i64();
    let grace = v["grace_days"].as_i64().unwrap_or(0);
    let end_s = end.map(views::date).unwrap_or_default();
    let access_s = access.map(views::date).unwrap_or_default();
    let status = v["status"].as_str().unwrap_or_default();
    let canceling = v["cancel_at_period_end"] == true;
    let ended = v["ended"] == true;
    let plan = match (v["price"].as_i64(), v["currency"].as_str()) {
        (Some(p), Some(c)) => Some(format!(
            "{} / {}",
            format_money(p, c),
            v["billing_interval"].as_str().unwrap_or("month")
        )),
        _ => None,
    };
    let still = access.is_some_and(|a| a > at);
    let (badge, badge_class, what, facts) = if ended {
        (
            "Ended",
            "off",
            if still {
                format!("This subscription is over. Downloads and your license keep working until {access_s}; after that, buy it again from the store to continue.")
            } else {
                "This subscription is over. Buy it again from the store to continue.".to_string()
            },
            vec![("Access until".to_string(), access_s.clone())],
        )
    } else if canceling {
        (
            "Cancels at period end",
            "warn",
            format!("You won't be charged again. Downloads and your license keep working until {access_s} — the end of the paid period on {end_s} plus a {grace}-day grace period. Changed your mind? Resume before {end_s} and nothing is interrupted."),
            vec![("Paid through".to_string(), end_s.clone()), ("Access until".to_string(), access_s.clone())],
        )
    } else if status == "past_due" {
        (
            "Payment failed",
            "warn",
            format!("The latest payment did not go through and is being retried. Access continues until {access_s} ({grace} days of grace after {end_s}). Update your card from the payment email to keep it going."),
            vec![("Paid through".to_string(), end_s.clone()), ("Access until".to_string(), access_s.clone())],
        )
    } else {
        (
            "Active",
            "ok",
            format!("Renews on {end_s}. If you cancel, you won't be charged again and keep access until {access_s} — the end of the paid period plus a {grace}-day grace period. You can resume any time before {end_s}."),
            vec![("Renews".to_string(), end_s.clone()), ("Access until".to_string(), access_s.clone())],
        )
    };
    SubView {
        id: s(&v["id"]),
        title: s(&v["product"]["title"]),
        href: v["product"]["slug"].as_str().map(|sl| format!("/p/{sl}")),
        badge: badge.to_string(),
        badge_class: badge_class.to_string(),
        plan,
        facts,
        what,
        can_cancel: v["can_cancel"] == true,
        can_resume: v["can_resume"] == true,
    }
}

fn review_form_view(item: &Value, pending: Option<&PendingReview>) -> ReviewForm {
    let product_id = item["product"]["id"].as_str().unwrap_or_default();
    if let Some(p) = pending.filter(|p| p.product_id == product_id) {
        return ReviewForm {
            rating: p.input.rating,
            title: p.input.title.clone().unwrap_or_default(),
            body: p.input.body.clone().unwrap_or_default(),
            display_name: p.input.display_name.clone().unwrap_or_default(),
            error: Some(p.message.clone()),
            error_field: p.field.clone(),
            open: true,
        };
    }
    let r = &item["review"];
    ReviewForm {
        rating: r["rating"].as_i64().unwrap_or(0),
        title: s(&r["title"]),
        body: s(&r["body"]),
        display_name: s(&r["display_name"]),
        error: None,
        error_field: String::new(),
        open: false,
    }
}

fn purchase_view(item: &Value, nth_of_product: usize, pending: Option<&PendingReview>) -> PurchaseView {
    let first_of_product = nth_of_product == 0;
    let title = s(&item["product"]["title"]);
    let product_id = s(&item["product"]["id"]);
    let order_status = item["order_status"].as_str().unwrap_or_default();
    let status_note = match order_status {
        "refunded" => Some("Refunded — downloads and license keys of this purchase no longer work.".to_string()),
        "disputed" => {
            Some("A payment dispute is open for this order; access is paused until it is resolved.".to_string())
        }
        _ => None,
    };
    let files: Vec<FileLine> = item["current_version"]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| FileLine {
            name: s(&f["name"]),
            size: crate::http::pages::human_size(f["size"].as_i64().unwrap_or(0)),
            sha256: s(&f["sha256"]),
        })
        .collect();
    let total: i64 = item["current_version"]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["size"].as_i64())
        .sum();
    let files_summary = format!(
        "{} file{} · {}",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        crate::http::pages::human_size(total)
    );
    let downloads_note = item["downloads"].as_object().map(|d| {
        let left = d.get("remaining").and_then(Value::as_i64).unwrap_or(0);
        let max = d.get("max").and_then(Value::as_i64).unwrap_or(0);
        let until = d
            .get("expires_at")
            .and_then(Value::as_i64)
            .map(views::mid_date)
            .unwrap_or_default();
        let status = d.get("status").and_then(Value::as_str).unwrap_or_default();
        if item["download_url"].is_string() {
            format!("{left} of {max} downloads left · until {until}")
        } else if status == "reconfirm" {
            "This download link was used from several networks: we emailed you a link to confirm it's you, then downloads continue.".to_string()
        } else if status == "suspended" {
            "Downloads were suspended for unusual activity. Contact the store to restore them.".to_string()
        } else if left == 0 {
            "No downloads left on this purchase. Contact the store if you need another.".to_string()
        } else {
            "Downloads are no longer available for this purchase.".to_string()
        }
    });
    let licenses = item["licenses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let max = l["max_activations"].as_i64();
            let used = l["activations"].as_i64().unwrap_or(0);
            let kind = l["type"].as_str().unwrap_or_default();
            LicenseView {
                key: s(&l["key"]),
                status: s(&l["status"]),
                live: l["status"] == "active",
                seats: match (kind, max) {
                    ("single_use", _) => {
                        if used > 0 {
                            "Single use · used".into()
                        } else {
                            "Single use".into()
                        }
                    }
                    (_, Some(m)) => format!("{used} of {m} device{} in use", if m == 1 { "" } else { "s" }),
                    (_, None) => format!("{used} device{} in use", if used == 1 { "" } else { "s" }),
                },
                devices: l["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        let label = d["label"].as_str().unwrap_or_default();
                        DeviceView {
                            id: s(&d["activation_id"]),
                            name: if label.is_empty() {
                                format!("Device {}", d["device_hint"].as_str().unwrap_or_default())
                            } else {
                                label.to_string()
                            },
                            activated: d["activated_at"].as_i64().map(views::mid_date).unwrap_or_default(),
                            last_seen: d["last_seen_at"].as_i64().map(views::mid_date).unwrap_or_default(),
                            can_deactivate: d["can_deactivate"] == true,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let review = item["review"].as_object().map(|r| {
        let view = crate::http::reviews::ReviewView {
            id: r.get("id").map(s).unwrap_or_default(),
            stars: Stars::of_stars(r.get("rating").and_then(Value::as_i64).unwrap_or(0)),
            title: r.get("title").map(s).unwrap_or_default(),
            body: r.get("body").map(s).unwrap_or_default(),
            author: r.get("author").map(s).unwrap_or_default(),
            named: r
                .get("display_name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty()),
            date: r
                .get("updated_at")
                .and_then(Value::as_i64)
                .map(views::date)
                .unwrap_or_default(),
            edited: r.get("edited") == Some(&Value::Bool(true)),
        };
        MyReview {
            view,
            hidden: r.get("hidden_by_seller") == Some(&Value::Bool(true)),
        }
    });
    PurchaseView {
        dom_id: if first_of_product {
            format!("p-{product_id}")
        } else {
            format!("p-{product_id}-{nth_of_product}")
        },
        href: item["product"]["slug"].as_str().map(|sl| format!("/p/{sl}")),
        cover_url: item["product"]["cover_url"].as_str().map(str::to_string),
        hue: hue(&product_id),
        initial: title
            .chars()
            .next()
            .map(|c| c.to_uppercase().to_string())
            .unwrap_or_default(),
        updated: item["updated"] == true,
        version: item["current_version"]["version"].as_str().map(str::to_string),
        bought: item["paid_at"].as_i64().map(views::mid_date).unwrap_or_default(),
        invoice_url: item["invoice_url"].as_str().map(str::to_string),
        status_note,
        download_url: item["download_url"].as_str().map(str::to_string),
        downloads_note,
        files,
        files_summary,
        licenses,
        review_here: first_of_product,
        can_review: item["can_review"] == true,
        review,
        form: review_form_view(item, pending),
        title,
        product_id,
    }
}

/// A review the buyer submitted that needs fixing, shown again with its message.
struct PendingReview {
    product_id: String,
    input: ReviewInput,
    message: String,
    field: String,
}

async fn library_view(
    app: &App,
    buyer: &BuyerAuth,
    notice: Option<&'static str>,
    error: Option<String>,
    pending: Option<&PendingReview>,
) -> ApiResult<LibraryPage> {
    let lib = crate::library::list(app, buyer).await?;
    let at = crate::ids::now();
    // A product can be reviewed if any of its purchases still stands (the form sits on the newest).
    let reviewable: std::collections::HashSet<String> = lib["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["can_review"] == true)
        .filter_map(|i| i["product"]["id"].as_str().map(str::to_string))
        .collect();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let purchases = lib["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let n = seen
                .entry(item["product"]["id"].as_str().unwrap_or_default().to_string())
                .or_insert(0);
            let mut view = purchase_view(item, *n, pending);
            view.can_review = reviewable.contains(&view.product_id);
            *n += 1;
            view
        })
        .collect();
    let subscriptions = lib["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| sub_view(v, at))
        .collect();
    Ok(LibraryPage {
        brand: brand(app).await,
        email: buyer.email.clone(),
        csrf: buyer.csrf_token.clone(),
        notice,
        error,
        subscriptions,
        purchases,
    })
}

async fn signed_in(app: &App, headers: &HeaderMap) -> Option<BuyerAuth> {
    let mut parts = axum::http::Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    <BuyerAuth as axum::extract::FromRequestParts<App>>::from_request_parts(&mut parts, app)
        .await
        .ok()
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DoneQuery {
    /// What the previous form did (shows a one-line notice).
    done: Option<String>,
}

/// The library page: purchases, license keys and devices, subscriptions and reviews when
/// signed in; the sign-in form otherwise.
#[utoipa::path(get, path = "/library", tag = "library", params(DoneQuery),
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn library_page(State(app): State<App>, headers: HeaderMap, Query(q): Query<DoneQuery>) -> ApiResult<Response> {
    let notice = views::notice(q.done.as_deref());
    let Some(buyer) = signed_in(&app, &headers).await else {
        return Ok(render(&SignInPage {
            brand: brand(&app).await,
            sent: false,
            email: String::new(),
            error: None,
            notice,
        })?
        .into_response());
    };
    let page = library_view(&app, &buyer, notice, None, None).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], render(&page)?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginForm {
    email: String,
}

/// The sign-in form's target: emails the link, then says so (the same page whatever the email).
#[utoipa::path(post, path = "/library/login", tag = "library", request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 422, description = "Not an email address; the form again")))]
async fn library_login_form(State(app): State<App>, Form(f): Form<LoginForm>) -> ApiResult<Response> {
    match crate::library::request_link(&app, &f.email).await {
        Ok(()) => Ok(render(&SignInPage {
            brand: brand(&app).await,
            sent: true,
            email: f.email.trim().to_string(),
            error: None,
            notice: None,
        })?
        .into_response()),
        Err(ApiError::Client { message, .. }) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&SignInPage {
                brand: brand(&app).await,
                sent: false,
                email: f.email,
                error: Some(format!("That doesn't look like an email address ({message}).")),
                notice: None,
            })?,
        )
            .into_response()),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CsrfForm {
    /// The session's CSRF token (from the page).
    #[serde(default)]
    csrf: String,
}

fn back(done: &str, anchor: &str) -> Response {
    Redirect::to(&format!("/library?done={done}#{anchor}")).into_response()
}

/// Signs out of the library (ends the session).
#[utoipa::path(post, path = "/library/logout", tag = "library", request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed out; back to /library"), (status = 403, description = "CSRF token missing")))]
async fn library_logout(
    State(app): State<App>,
    buyer: BuyerAuth,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    buyer.require_csrf(Some(&f.csrf))?;
    let cookie = crate::library::sign_out(
        &app,
        crate::auth::cookie(&headers, crate::auth::SESSION_COOKIE).as_deref(),
    )
    .await?;
    let mut resp = Redirect::to("/library?done=signed_out").into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Deactivates one of the buyer's devices (frees the seat), then back to the library.
#[utoipa::path(post, path = "/library/devices/{activation_id}/deactivate", tag = "library", params(("activation_id" = String, Path)),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done; back to /library"), (status = 403, description = "CSRF token missing"),
        (status = 404, description = "Not a device of this buyer's licenses")))]
async fn deactivate_form(
    State(app): State<App>,
    buyer: BuyerAuth,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    buyer.require_csrf(Some(&f.csrf))?;
    crate::library::deactivate_device(&app, &buyer, &id).await?;
    Ok(back("deactivated", "licenses"))
}

async fn set_cancel(app: &App, buyer: &BuyerAuth, id: &str, cancel: bool) -> ApiResult<Response> {
    match crate::subscriptions::buyer_set_cancel(app, &buyer.email, id, cancel).await {
        Ok(_) => Ok(back(if cancel { "canceled" } else { "resumed" }, &format!("sub-{id}"))),
        // Stripe unreachable or refusing: the page again, saying nothing changed.
        Err(ApiError::Client { status, message, .. })
            if status == StatusCode::BAD_GATEWAY || status == StatusCode::CONFLICT =>
        {
            let page = library_view(app, buyer, None, Some(message), None).await?;
            Ok((status, render(&page)?).into_response())
        }
        Err(e) => Err(e),
    }
}

/// Cancels a subscription at the end of the paid period (through Stripe when it is a Stripe subscription).
#[utoipa::path(post, path = "/library/subscriptions/{id}/cancel", tag = "library", params(("id" = String, Path)),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done; back to /library"), (status = 403, description = "CSRF token missing"),
        (status = 404, description = "Not this buyer's subscription"), (status = 502, description = "Stripe could not be reached; nothing changed")))]
async fn cancel_form(
    State(app): State<App>,
    buyer: BuyerAuth,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    buyer.require_csrf(Some(&f.csrf))?;
    set_cancel(&app, &buyer, &id, true).await
}

/// Takes back a cancellation before the period ends.
#[utoipa::path(post, path = "/library/subscriptions/{id}/resume", tag = "library", params(("id" = String, Path)),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done; back to /library"), (status = 403, description = "CSRF token missing"),
        (status = 404, description = "Not this buyer's subscription"), (status = 409, description = "Already ended")))]
async fn resume_form(
    State(app): State<App>,
    buyer: BuyerAuth,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    buyer.require_csrf(Some(&f.csrf))?;
    set_cancel(&app, &buyer, &id, false).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ReviewFormBody {
    #[serde(default)]
    csrf: String,
    /// 1–5 (radio buttons; missing = 0, refused).
    #[serde(default)]
    rating: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    display_name: String,
}

/// Writes or edits the buyer's review of a product; bad input shows the form again with the
/// buyer's text and a message by the field.
#[utoipa::path(post, path = "/library/reviews/{product_id}", tag = "library", params(("product_id" = String, Path)),
    request_body(content = ReviewFormBody, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Saved; back to /library"), (status = 403, description = "CSRF token missing, or not a buyer"),
        (status = 422, description = "The library again, with the message by the field", content_type = "text/html")))]
async fn review_form(
    State(app): State<App>,
    buyer: BuyerAuth,
    Path(product_id): Path<String>,
    Form(f): Form<ReviewFormBody>,
) -> ApiResult<Response> {
    buyer.require_csrf(Some(&f.csrf))?;
    let input = ReviewInput {
        rating: f.rating.trim().parse().unwrap_or(0),
        title: Some(f.title),
        body: Some(f.body),
        display_name: Some(f.display_name),
    };
    match crate::reviews::upsert(&app.db, &buyer.email, &product_id, &input).await {
        Ok((r, created)) => Ok(back(
            if created { "reviewed" } else { "review_updated" },
            &format!("p-{}", r.product_id),
        )),
        Err(ApiError::Client {
            status, message, field, ..
        }) if status == StatusCode::UNPROCESSABLE_ENTITY => {
            let message = if field.as_deref() == Some("rating") {
                "Choose from 1 to 5 stars.".to_string()
            } else {
                message
            };
            let pending = PendingReview {
                product_id: crate::catalog::find_product(&app.db, &product_id)
                    .await?
                    .map_or(product_id, |p| p.id),
                input,
                message,
                field: field.unwrap_or_default(),
            };
            let page = library_view(&app, &buyer, None, None, Some(&pending)).await?;
            Ok((status, render(&page)?).into_response())
        }
        Err(e) => Err(e),
    }
}
