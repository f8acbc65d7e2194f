//! The affiliate portal over HTTP: `/affiliate/login` (email a sign-in link),
//! `/affiliate/auth/{token}` (follow it), `/affiliate` (the page), and the JSON
//! `GET /api/v1/affiliate/me` and `GET /api/v1/affiliate/programs/{id}/sales`. An affiliate
//! sees only the programs of the email they signed in with.

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::affiliate_portal::{self as portal, AffiliateAuth};
use crate::app::App;
use crate::catalog::format_money;
use crate::error::{bad_request, forbidden, ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::pages::{brand, Brand};
use crate::http::views;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(login_page, login_form))
        .routes(routes!(sign_in_page, consume_link))
        .routes(routes!(portal_page))
        .routes(routes!(logout))
        .routes(routes!(api_login))
        .routes(routes!(me))
        .routes(routes!(sales))
}

fn render(t: &impl Template) -> ApiResult<Html<String>> {
    t.render()
        .map(Html)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))
}

#[derive(Template)]
#[template(path = "store/affiliate_signin.html")]
struct SignInPage {
    brand: Brand,
    sent: bool,
    email: String,
    error: Option<String>,
    notice: Option<&'static str>,
}

/// The affiliate sign-in form (a signed-in affiliate goes straight to `/affiliate`).
#[utoipa::path(get, path = "/affiliate/login", tag = "affiliates",
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 303, description = "Already signed in")))]
async fn login_page(
    State(app): State<App>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<DoneQuery>,
) -> ApiResult<Response> {
    let mut parts = axum::http::Request::new(()).into_parts().0;
    parts.headers = headers;
    if <AffiliateAuth as axum::extract::FromRequestParts<App>>::from_request_parts(&mut parts, &app)
        .await
        .is_ok()
    {
        return Ok(Redirect::to("/affiliate").into_response());
    }
    Ok(render(&SignInPage {
        brand: brand(&app).await,
        sent: false,
        email: String::new(),
        error: None,
        notice: views::notice(q.done.as_deref()),
    })?
    .into_response())
}

#[derive(Deserialize, Default)]
struct DoneQuery {
    done: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
}

/// The sign-in form's target: emails a link if this is an affiliate's email; the same page either way.
#[utoipa::path(post, path = "/affiliate/login", tag = "affiliates",
    request_body(content = LoginRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 422, description = "Not an email address; the form again")))]
async fn login_form(State(app): State<App>, Form(f): Form<LoginRequest>) -> ApiResult<Response> {
    match portal::request_link(&app, &f.email).await {
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

/// Emails an affiliate a single-use sign-in link (15 minutes). Always 202 with the same body.
#[utoipa::path(post, path = "/api/v1/affiliate/login", tag = "affiliates", request_body = LoginRequest,
    responses((status = 202, description = "If this email is an affiliate here, a link is on its way"), (status = 422, description = "Malformed email")))]
async fn api_login(State(app): State<App>, ApiJson(req): ApiJson<LoginRequest>) -> ApiResult<Response> {
    portal::request_link(&app, &req.email).await?;
    let body = json!({"status": "accepted", "message": "If this email address is an affiliate here, a sign-in link is on its way."});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The page an emailed affiliate sign-in link opens: a button that signs in (this GET spends
/// nothing, so mail scanners do not use the link up).
#[utoipa::path(method(get, head), path = "/affiliate/auth/{token}", tag = "affiliates", params(("token" = String, Path)),
    responses((status = 200, description = "HTML page with the sign-in button"), (status = 401, description = "Used or expired link")))]
async fn sign_in_page(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    crate::http::pages::sign_in_link_page(&app, &token, "affiliate", "/affiliate/auth", "the affiliate portal").await
}

/// Uses an affiliate sign-in link (once, before it expires): starts a session and continues
/// to `/affiliate`.
#[utoipa::path(post, path = "/affiliate/auth/{token}", tag = "affiliates", params(("token" = String, Path)),
    responses((status = 303, description = "Signed in; on to /affiliate"), (status = 401, description = "Used or expired link")))]
async fn consume_link(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let (cookie, _) = crate::library::consume_magic_link(&app, &token, "affiliate", "affiliate").await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/affiliate".to_string()),
        ],
    )
        .into_response())
}

/// The signed-in affiliate's programs: code, share links, clicks, sales, conversion,
/// pending / payable / paid earnings and the last 30 days, day by day.
#[utoipa::path(get, path = "/api/v1/affiliate/me", tag = "affiliates",
    responses((status = 200, description = "`{email, items: [program], next_cursor}`"), (status = 401, description = "Not signed in"),
        (status = 403, description = "Signed in, but not an affiliate")))]
async fn me(State(app): State<App>, who: AffiliateAuth) -> ApiResult<Json<Value>> {
    Ok(Json(portal::me(&app, &who.email).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// 1–100, default 20.
    limit: Option<i64>,
    /// `next_cursor` from the previous page.
    cursor: Option<String>,
}

/// One program's sales (commissions), newest first: amount, commission, status and when it
/// becomes payable. No buyer details. Another affiliate's program is not found.
#[utoipa::path(get, path = "/api/v1/affiliate/programs/{id}/sales", tag = "affiliates", params(("id" = String, Path), PageQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 401, description = "Not signed in"),
        (status = 404, description = "Not one of this affiliate's programs")))]
async fn sales(
    State(app): State<App>,
    who: AffiliateAuth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad_request("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    let (items, next) = portal::sales(&app.db, &who.email, &id, q.cursor.as_deref(), limit).await?;
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

// ---------- the page ----------

pub struct Kpi {
    pub label: &'static str,
    pub value: String,
    pub hint: String,
}

pub struct ChartBar {
    pub x: i64,
    pub click_y: i64,
    pub click_h: i64,
    pub sale_y: i64,
    pub sale_h: i64,
    pub title: String,
}

pub struct SaleView {
    pub date: String,
    pub products: String,
    pub sale: String,
    pub commission: String,
    pub status: String,
    pub status_class: &'static str,
    pub note: String,
}

pub struct ProgramView {
    pub id: String,
    pub store_name: String,
    pub code: String,
    pub terms: String,
    pub active: bool,
    pub share_url: String,
    pub product_links: Vec<(String, String)>,
    pub kpis: Vec<Kpi>,
    pub money: Vec<Kpi>,
    pub bars: Vec<ChartBar>,
    pub chart_label: String,
    pub axis: Vec<(i64, String)>,
    pub sales: Vec<SaleView>,
    pub more_sales: bool,
}

#[derive(Template)]
#[template(path = "store/affiliate.html")]
struct PortalPage {
    brand: Brand,
    email: String,
    csrf: String,
    programs: Vec<ProgramView>,
}

const CHART_H: i64 = 120;
const BAR_W: i64 = 20;

fn chart(daily: &[Value]) -> (Vec<ChartBar>, Vec<(i64, String)>, String) {
    // One scale for both, so a day's sales read against its clicks.
    let max = daily
        .iter()
        .flat_map(|d| [d["clicks"].as_i64(), d["sales"].as_i64()])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut clicks, mut sales) = (0, 0);
    let mut bars = Vec::new();
    let mut axis = Vec::new();
    let n = i64::try_from(daily.len()).unwrap_or(0);
    for (i, d) in (0_i64..).zip(daily) {
        let c = d["clicks"].as_i64().unwrap_or(0);
        let s = d["sales"].as_i64().unwrap_or(0);
        clicks += c;
        sales += s;
        let day = d["day"].as_i64().unwrap_or(0);
        let click_h = if c > 0 { (c * CHART_H / max).max(2) } else { 0 };
        // Sales are drawn as a narrower, darker bar in front of the day's clicks.
        let sale_h = if s > 0 { (s * CHART_H / max).max(3) } else { 0 };
        bars.push(ChartBar {
            x: i * BAR_W,
            click_y: CHART_H - click_h,
            click_h,
            sale_y: CHART_H - sale_h,
            sale_h,
            title: format!(
                "{}: {c} click{}, {s} sale{}",
                views::short_date(day),
                if c == 1 { "" } else { "s" },
                if s == 1 { "" } else { "s" }
            ),
        });
        if i == 0 || i == n - 1 || i == n / 2 {
            axis.push((i * BAR_W + BAR_W / 2, views::short_date(day)));
        }
    }
    let label = format!("Last {n} days: {clicks} clicks and {sales} sales");
    (bars, axis, label)
}

/// 3000 bps → "30%", 1250 → "12.5%".
fn percent(bps: i64) -> String {
    if bps % 100 == 0 {
        format!("{}%", bps / 100)
    } else {
        format!(
            "{}%",
            format!("{:.2}", f64::from(i32::try_from(bps).unwrap_or(0)) / 100.0).trim_end_matches('0')
        )
    }
}

fn sale_view(v: &Value) -> SaleView {
    let cur = v["currency"].as_str().unwrap_or("USD");
    let money = |k: &str| format_money(v[k].as_i64().unwrap_or(0), cur);
    let reversed = v["reversed"].as_i64().unwrap_or(0);
    let (status, class) = match v["status"].as_str().unwrap_or_default() {
        "pending" => ("Pending", "warn"),
        "payable" => ("Payable", "ok"),
        "paid" => ("Paid", "ok"),
        _ => ("Reversed", "off"),
    };
    let note = match v["status"].as_str().unwrap_or_default() {
        "pending" => format!(
            "Payable from {}",
            views::mid_date(v["payable_at"].as_i64().unwrap_or(0))
        ),
        "reversed" => "The sale was refunded".to_string(),
        _ if reversed > 0 => format!("{} reversed by a partial refund", format_money(reversed, cur)),
        _ => String::new(),
    };
    SaleView {
        date: views::mid_date(v["at"].as_i64().unwrap_or(0)),
        products: v["products"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        sale: money("sale_amount"),
        commission: money("net_commission"),
        status: status.to_string(),
        status_class: class,
        note,
    }
}

/// The affiliate's page: every program with its numbers, chart and sales.
#[utoipa::path(get, path = "/affiliate", tag = "affiliates",
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 303, description = "Not signed in: to /affiliate/login")))]
async fn portal_page(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    let mut parts = axum::http::Request::new(()).into_parts().0;
    parts.headers = headers;
    let who = match <AffiliateAuth as axum::extract::FromRequestParts<App>>::from_request_parts(&mut parts, &app).await
    {
        Ok(w) => w,
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => return Ok(Redirect::to("/affiliate/login").into_response()),
        Err(e) => return Err(e),
    };
    let at = crate::ids::now();
    let mut programs = Vec::new();
    for p in portal::programs(&app.db, &who.email).await? {
        let v = portal::program_json(&app, &p, at).await?;
        let cur = v["currency"].as_str().unwrap_or("USD").to_string();
        let (rows, next) = portal::sales(&app.db, &who.email, &p.id, None, 20).await?;
        let daily: Vec<Value> = v["daily"].as_array().cloned().unwrap_or_default();
        let (bars, axis, chart_label) = chart(&daily);
        let conversion = v["conversion"]
            .as_f64()
            .map_or_else(|| "—".to_string(), |c| format!("{:.1}%", c * 100.0));
        let e = &v["earnings"];
        let m = |k: &str| format_money(e[k].as_i64().unwrap_or(0), &cur);
        programs.push(ProgramView {
            id: p.id.clone(),
            store_name: p.store_name.clone(),
            code: p.code.clone(),
            terms: format!(
                "{} commission on {}",
                percent(p.commission_bps),
                p.product_title
                    .as_ref()
                    .map_or_else(|| "every sale in the store".to_string(), |t| format!("sales of {t}"))
            ),
            active: p.status == "active",
            share_url: v["share_url"].as_str().unwrap_or_default().to_string(),
            product_links: v["product_links"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    (
                        l["title"].as_str().unwrap_or_default().to_string(),
                        l["url"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            kpis: vec![
                Kpi {
                    label: "Clicks",
                    value: p.clicks.to_string(),
                    hint: "Visits through your links".into(),
                },
                Kpi {
                    label: "Sales",
                    value: v["sales"].to_string(),
                    hint: "Paid orders you referred".into(),
                },
                Kpi {
                    label: "Conversion",
                    value: conversion,
                    hint: "Sales per click".into(),
                },
            ],
            money: vec![
                Kpi {
                    label: "Pending",
                    value: m("pending"),
                    hint: "Within the store's refund window".into(),
                },
                Kpi {
                    label: "Payable",
                    value: m("payable"),
                    hint: "Owed to you at the next payout".into(),
                },
                Kpi {
                    label: "Paid",
                    value: m("paid"),
                    hint: "Paid out so far".into(),
                },
            ],
            bars,
            axis,
            chart_label,
            sales: rows.iter().map(sale_view).collect(),
            more_sales: next.is_some(),
        });
    }
    let page = PortalPage {
        brand: brand(&app).await,
        email: who.email.clone(),
        csrf: who.csrf_token.clone(),
        programs,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], render(&page)?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Signs the affiliate out.
#[utoipa::path(post, path = "/affiliate/logout", tag = "affiliates", request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed out"), (status = 403, description = "CSRF token missing")))]
async fn logout(
    State(app): State<App>,
    who: AffiliateAuth,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    if !who.csrf_ok(&f.csrf) {
        return Err(forbidden(
            "csrf_failed",
            "This form expired. Go back, reload the page and try again.",
        ));
    }
    let cookie = crate::library::sign_out(
        &app,
        crate::auth::cookie(&headers, crate::auth::SESSION_COOKIE).as_deref(),
    )
    .await?;
    let mut resp = Redirect::to("/affiliate/login?done=signed_out").into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percents_read_like_people_write_them() {
        assert_eq!(super::percent(3000), "30%");
        assert_eq!(super::percent(1250), "12.5%");
        assert_eq!(super::percent(1234), "12.34%");
    }
}
