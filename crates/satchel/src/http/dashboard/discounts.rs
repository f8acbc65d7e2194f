//! Discount codes: list, create (percent or fixed, expiry, redemption limit, once per
//! customer, one product or the whole store) through `checkout::create_discount`, deactivate.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::CsrfOnly;
use super::{money, parse_iso_date_end, render, render_status, see_other, Dash, DashForm, Errors, Layout};
use crate::app::App;
use crate::checkout::NewDiscount;
use crate::db::Exec;
use crate::error::{not_found, ApiResult};
use crate::ids::now;
use crate::sql;

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct DiscountForm {
    pub csrf: String,
    pub code: String,
    pub kind: String,
    pub amount: String,
    pub currency: String,
    pub product_id: String,
    pub max_redemptions: String,
    pub once_per_customer: Option<String>,
    pub expires: String,
}

pub struct Row {
    pub id: String,
    pub code: String,
    pub what: String,
    pub scope: String,
    pub used: String,
    pub expires: String,
    pub state: &'static str,
    pub once: bool,
}

pub struct ProductOpt {
    pub id: String,
    pub title: String,
}

#[derive(Template)]
#[template(path = "dashboard/discounts.html")]
struct Page {
    l: Layout,
    rows: Vec<Row>,
    products: Vec<ProductOpt>,
    currencies: Vec<&'static str>,
    f: DiscountForm,
    errors: Errors,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

async fn page_view(app: &App, dash: &Dash, f: DiscountForm, errors: Errors) -> ApiResult<Page> {
    let codes = crate::checkout::list_discounts(&app.db, &dash.seller_id).await?;
    let products: Vec<(String, String, String)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, title, currency FROM products WHERE seller_id = $1 AND status <> 'archived' ORDER BY title",
            &dash.seller_id
        ))
        .await?;
    let t = now();
    let rows = codes
        .into_iter()
        .map(|d| Row {
            what: if d.kind == "percent" {
                format!("{}% off", d.amount)
            } else {
                format!("{} off", money(d.amount, d.currency.as_deref().unwrap_or("USD")))
            },
            scope: match &d.product_id {
                Some(pid) => products
                    .iter()
                    .find(|p| &p.0 == pid)
                    .map_or_else(|| "One product".into(), |p| p.1.clone()),
                None => "Whole store".into(),
            },
            used: match d.max_redemptions {
                Some(m) => format!("{} of {m}", d.redemptions),
                None => d.redemptions.to_string(),
            },
            expires: d.expires_at.map_or_else(|| "Never".into(), super::date),
            state: if !d.active {
                "inactive"
            } else if d.expires_at.is_some_and(|x| x <= t) {
                "expired"
            } else if d.max_redemptions.is_some_and(|m| d.redemptions >= m) {
                "used-up"
            } else {
                "active"
            },
            once: d.once_per_customer,
            id: d.id,
            code: d.code,
        })
        .collect();
    let default_currency = products.first().map_or_else(|| "USD".to_string(), |p| p.2.clone());
    let mut f = f;
    if f.currency.is_empty() {
        f.currency = default_currency;
    }
    if f.kind.is_empty() {
        f.kind = "percent".into();
    }
    Ok(Page {
        l: dash.layout("discounts", "Discount codes"),
        rows,
        products: products
            .into_iter()
            .map(|(id, title, _)| ProductOpt { id, title })
            .collect(),
        currencies: crate::catalog::CURRENCIES.iter().map(|(c, _)| *c).collect(),
        f,
        errors,
    })
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<NoticeQuery>) -> ApiResult<Response> {
    let mut page = page_view(&app, &dash, DiscountForm::default(), Errors::default()).await?;
    page.l = page.l.with_notice(q.notice.as_deref());
    render(&page)
}

pub async fn create(State(app): State<App>, dash: Dash, DashForm(f): DashForm<DiscountForm>) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let mut errors = Errors::default();
    let currency = f.currency.trim().to_ascii_uppercase();
    let amount = match f.kind.as_str() {
        "fixed" => crate::http::pages::parse_amount(&f.amount, &currency),
        _ => f.amount.trim().trim_end_matches('%').trim().parse::<i64>().ok(),
    };
    if amount.is_none() {
        errors.add(
            "amount",
            if f.kind == "fixed" {
                "Enter the amount off, such as 5 or 4.99."
            } else {
                "Enter a whole percentage from 1 to 100."
            },
        );
    }
    let max_redemptions = if f.max_redemptions.trim().is_empty() {
        None
    } else {
        let m = f.max_redemptions.trim().parse::<i64>().ok();
        if m.is_none() {
            errors.add(
                "max_redemptions",
                "Enter how many times the code can be used, or leave it empty.",
            );
        }
        m
    };
    let expires_at = if f.expires.trim().is_empty() {
        None
    } else {
        match parse_iso_date_end(&f.expires) {
            Some(t) if t > now() => Some(t),
            Some(_) => {
                errors.add("expires", "Choose a date in the future, or leave it empty.");
                None
            }
            None => {
                errors.add("expires", "Enter the date as YYYY-MM-DD.");
                None
            }
        }
    };
    if errors.is_empty() {
        let d = NewDiscount {
            code: f.code.clone(),
            kind: f.kind.clone(),
            amount: amount.unwrap_or(0),
            currency: (f.kind == "fixed").then(|| currency.clone()),
            product_id: Some(f.product_id.clone()).filter(|p| !p.is_empty()),
            max_redemptions,
            once_per_customer: f.once_per_customer.is_some(),
            expires_at,
        };
        match crate::checkout::create_discount(&app.db, &dash.seller_id, &d).await {
            Ok(_) => return Ok(see_other("/dashboard/discounts?notice=discount_created")),
            Err(e) => errors.absorb(e)?,
        }
    }
    let page = page_view(&app, &dash, f, errors).await?;
    render_status(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

pub async fn deactivate(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(f): DashForm<CsrfOnly>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let n = app
        .db
        .execute(sql!(
            "UPDATE discount_codes SET active = FALSE WHERE id = $1 AND seller_id = $2",
            &id,
            &dash.seller_id
        ))
        .await?;
    if n == 0 {
        return Err(not_found("discount code"));
    }
    Ok(see_other("/dashboard/discounts?notice=discount_deactivated"))
}
