//! Affiliates: who sends buyers, with clicks, sales and commission by state (pending →
//! payable → paid); create one (`affiliates::create`), export what is payable as CSV, and
//! mark it paid once paid out.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::CsrfOnly;
use super::{money, render, render_status, see_other, Dash, DashForm, Errors, Layout};
use crate::affiliates::NewAffiliate;
use crate::app::App;
use crate::db::Exec;
use crate::error::ApiResult;
use crate::sql;

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct AffiliateForm {
    pub csrf: String,
    pub email: String,
    pub code: String,
    pub commission_percent: String,
    pub product_id: String,
}

pub struct Row {
    pub email: String,
    pub link: String,
    pub rate: String,
    pub scope: String,
    pub clicks: i64,
    pub sales: i64,
    pub pending: String,
    pub payable: String,
    pub paid: String,
    pub has_payable: bool,
}

pub struct ProductOpt {
    pub id: String,
    pub title: String,
}

#[derive(Template)]
#[template(path = "dashboard/affiliates.html")]
struct Page {
    l: Layout,
    rows: Vec<Row>,
    products: Vec<ProductOpt>,
    f: AffiliateForm,
    errors: Errors,
    payable_total: String,
    any_payable: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

/// Sums per (currency) of one state, as `$12.00` (`+ €3.00` when several currencies).
fn sum_label(parts: &[(String, i64)]) -> String {
    let nonzero: Vec<String> = parts
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(c, v)| money(*v, c))
        .collect();
    if nonzero.is_empty() {
        "—".into()
    } else {
        nonzero.join(" + ")
    }
}

async fn page_view(app: &App, dash: &Dash, f: AffiliateForm, errors: Errors) -> ApiResult<Page> {
    let affiliates: Vec<(String, String, String, i64, Option<String>, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, email, code, commission_bps, product_id, clicks FROM affiliates WHERE seller_id = $1 ORDER BY id DESC",
            &dash.seller_id
        ))
        .await?;
    let sums: Vec<(String, String, String, i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT c.affiliate_id, c.status, c.currency, CAST(SUM(c.amount - c.reversed_amount) AS BIGINT), COUNT(*)
             FROM commissions c JOIN affiliates a ON a.id = c.affiliate_id
             WHERE a.seller_id = $1 GROUP BY c.affiliate_id, c.status, c.currency",
            &dash.seller_id
        ))
        .await?;
    let products: Vec<(String, String)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, title FROM products WHERE seller_id = $1 AND status <> 'archived' ORDER BY title",
            &dash.seller_id
        ))
        .await?;
    let base = app.cfg.public_url();
    let of = |aff: &str, status: &str| -> Vec<(String, i64)> {
        sums.iter()
            .filter(|s| s.0 == aff && s.1 == status)
            .map(|s| (s.2.clone(), s.3))
            .collect()
    };
    let rows = affiliates
        .iter()
        .map(|(id, email, code, bps, product, clicks)| Row {
            email: email.clone(),
            link: format!("{base}/r/{code}"),
            #[allow(clippy::cast_precision_loss)]
            rate: format!("{}%", (*bps as f64 / 100.0)),
            scope: match product {
                Some(pid) => products
                    .iter()
                    .find(|p| &p.0 == pid)
                    .map_or_else(|| "One product".into(), |p| p.1.clone()),
                None => "Whole store".into(),
            },
            clicks: *clicks,
            sales: sums
                .iter()
                .filter(|s| &s.0 == id && s.1 != "reversed")
                .map(|s| s.4)
                .sum(),
            pending: sum_label(&of(id, "pending")),
            payable: sum_label(&of(id, "payable")),
            paid: sum_label(&of(id, "paid")),
            has_payable: of(id, "payable").iter().any(|(_, v)| *v > 0),
        })
        .collect::<Vec<_>>();
    let mut payable: Vec<(String, i64)> = Vec::new();
    for s in sums.iter().filter(|s| s.1 == "payable") {
        match payable.iter_mut().find(|p| p.0 == s.2) {
            Some(p) => p.1 += s.3,
            None => payable.push((s.2.clone(), s.3)),
        }
    }
    let mut f = f;
    if f.commission_percent.is_empty() {
        f.commission_percent = "30".into();
    }
    Ok(Page {
        l: dash.layout("affiliates", "Affiliates"),
        any_payable: rows.iter().any(|r| r.has_payable),
        payable_total: sum_label(&payable),
        rows,
        products: products
            .into_iter()
            .map(|(id, title)| ProductOpt { id, title })
            .collect(),
        f,
        errors,
    })
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<NoticeQuery>) -> ApiResult<Response> {
    let mut page = page_view(&app, &dash, AffiliateForm::default(), Errors::default()).await?;
    page.l = page.l.with_notice(q.notice.as_deref());
    render(&page)
}

pub async fn create(State(app): State<App>, dash: Dash, DashForm(f): DashForm<AffiliateForm>) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let mut errors = Errors::default();
    let pct = if f.commission_percent.trim().is_empty() {
        None
    } else {
        let p = f
            .commission_percent
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse::<f64>()
            .ok();
        if p.is_none() {
            errors.add(
                "commission_percent",
                "Enter the commission as a percentage, such as 30.",
            );
        }
        p
    };
    if errors.is_empty() {
        let a = NewAffiliate {
            email: f.email.clone(),
            code: Some(f.code.trim().to_string()).filter(|c| !c.is_empty()),
            commission_percent: pct,
            product_id: Some(f.product_id.clone()).filter(|p| !p.is_empty()),
        };
        match crate::affiliates::create(&app.db, &dash.seller_id, &a).await {
            Ok(_) => return Ok(see_other("/dashboard/affiliates?notice=affiliate_created")),
            Err(e) => errors.absorb(e)?,
        }
    }
    let page = page_view(&app, &dash, f, errors).await?;
    render_status(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

/// The same CSV as `GET /api/v1/affiliates/payable.csv`, for the signed-in seller.
pub async fn payable_csv(State(app): State<App>, dash: Dash) -> ApiResult<Response> {
    let csv = crate::affiliates::payable_csv(&app.db, &dash.seller_id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"payable-commissions.csv\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        csv,
    )
        .into_response())
}

pub async fn mark_paid(State(app): State<App>, dash: Dash, DashForm(f): DashForm<CsrfOnly>) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    crate::affiliates::mark_paid(&app.db, &dash.seller_id).await?;
    Ok(see_other("/dashboard/affiliates?notice=marked_paid"))
}
