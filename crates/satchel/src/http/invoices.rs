//! Invoice pages and the seller's invoice API.
//!
//! `/invoices/{token}` renders one document (invoice or credit note) as a printable page
//! with its own small stylesheet (`/static/invoice.css`, A4 print rules). The seller lists
//! documents and sets the details printed on them (legal name, address, tax id, prefix).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::SellerAuth;
use crate::catalog::format_money;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::invoices::{self, InvoiceSettings};

const INVOICE_CSS: &str = include_str!("../../static/invoice.css");

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(invoice_page))
        .routes(routes!(list_invoices))
        .routes(routes!(get_settings, put_settings))
}

struct Line {
    title: String,
    includes: String,
    quantity: i64,
    unit_price: String,
    discount: Option<String>,
    total: String,
}

#[derive(Template)]
#[template(path = "invoice/document.html")]
struct DocumentPage {
    heading: &'static str,
    number: String,
    issued: String,
    order_id: String,
    seller_name: String,
    store_name: String,
    seller_address: Vec<String>,
    seller_tax_id: String,
    seller_email: String,
    buyer_email: String,
    lines: Vec<Line>,
    subtotal: String,
    discount: Option<String>,
    total: String,
    paid_label: &'static str,
    paid_on: String,
    method: String,
    reference: String,
    refers_to: String,
    reason: String,
    footer: String,
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn page_of(inv: &invoices::Invoice) -> ApiResult<DocumentPage> {
    let d: Value = serde_json::from_str(&inv.document).map_err(anyhow::Error::from)?;
    let cur = inv.currency.as_str();
    let money = |v: &Value| format_money(v.as_i64().unwrap_or(0), cur);
    let credit = inv.kind == "credit_note";
    let lines = d["lines"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| Line {
                    title: s(&l["title"]),
                    includes: l["includes"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    quantity: l["quantity"].as_i64().unwrap_or(1),
                    unit_price: money(&l["unit_price"]),
                    discount: (l["discount"].as_i64().unwrap_or(0) > 0).then(|| format!("−{}", money(&l["discount"]))),
                    total: money(&l["total"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let seller = &d["seller"];
    let legal = s(&seller["legal_name"]);
    Ok(DocumentPage {
        heading: if credit { "Credit note" } else { "Invoice" },
        number: inv.number.clone(),
        issued: crate::mail::date(inv.issued_at),
        order_id: inv.order_id.clone(),
        store_name: s(&seller["store_name"]),
        seller_name: legal,
        seller_address: seller["address"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default(),
        seller_tax_id: s(&seller["tax_id"]),
        seller_email: s(&seller["email"]),
        buyer_email: s(&d["buyer"]["email"]),
        lines,
        subtotal: money(&d["subtotal"]),
        discount: (d["discount"].as_i64().unwrap_or(0) > 0).then(|| format!("−{}", money(&d["discount"]))),
        total: money(&d["total"]),
        paid_label: if credit { "Refunded" } else { "Paid" },
        paid_on: d["paid_at"].as_i64().map(crate::mail::date).unwrap_or_default(),
        method: s(&d["payment"]["method"]),
        reference: s(&d["payment"]["reference"]),
        refers_to: s(&d["refers_to"]),
        reason: s(&d["reason"]),
        footer: s(&seller["footer"]),
    })
}

/// One invoice or credit note as a printable page (the link in receipts and on the success page).
#[utoipa::path(get, path = "/invoices/{token}", tag = "checkout", params(("token" = String, Path, description = "Signed document link")),
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 404, description = "No such document")))]
async fn invoice_page(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let inv = invoices::from_token(&app, &token).await?;
    let html = page_of(&inv)?
        .render()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))?;
    // Documents hold a buyer's email: never cached by shared caches, never indexed.
    Ok((
        [
            (header::CACHE_CONTROL, "private, no-store"),
            (header::HeaderName::from_static("x-robots-tag"), "noindex"),
        ],
        Html(html),
    )
        .into_response())
}

/// Plain routes (not API): the invoice stylesheet.
pub fn static_router() -> axum::Router<App> {
    axum::Router::new().route("/static/invoice.css", axum::routing::get(invoice_css))
}

/// The invoice stylesheet (screen and A4 print).
async fn invoice_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        INVOICE_CSS,
    )
        .into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
struct Page {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// The seller's invoices and credit notes, newest first.
#[utoipa::path(get, path = "/api/v1/seller/invoices", tag = "seller", params(Page),
    responses((status = 200, description = "`{items, next_cursor}`; each item has `url`, the printable document")))]
async fn list_invoices(
    State(app): State<App>,
    auth: SellerAuth,
    ApiQuery(p): ApiQuery<Page>,
) -> ApiResult<Json<Value>> {
    let (rows, next) =
        invoices::list_for_seller(&app.db, &auth.seller_id, p.cursor.as_deref(), p.limit.unwrap_or(50)).await?;
    Ok(Json(json!({
        "items": rows.iter().map(|i| invoices::to_json(&app, i)).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// The details printed on the seller's invoices.
#[utoipa::path(get, path = "/api/v1/seller/invoice-settings", tag = "seller",
    responses((status = 200, description = "Invoice settings", body = InvoiceSettings)))]
async fn get_settings(State(app): State<App>, auth: SellerAuth) -> ApiResult<Json<InvoiceSettings>> {
    Ok(Json(invoices::settings(&app.db, &auth.seller_id).await?))
}

/// Sets the details printed on invoices issued from now on (issued ones never change).
#[utoipa::path(put, path = "/api/v1/seller/invoice-settings", tag = "seller", request_body = InvoiceSettings,
    responses((status = 200, description = "Saved", body = InvoiceSettings), (status = 422, description = "Invalid field")))]
async fn put_settings(
    State(app): State<App>,
    auth: SellerAuth,
    ApiJson(s): ApiJson<InvoiceSettings>,
) -> ApiResult<Json<InvoiceSettings>> {
    Ok(Json(invoices::save_settings(&app.db, &auth.seller_id, s).await?))
}
