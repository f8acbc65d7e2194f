//! Invoices and credit notes.
//!
//! An invoice is issued in the fulfillment transaction of every paid order, and a credit
//! note in the transaction of every refund. Each is an immutable JSON snapshot (seller,
//! buyer, lines, totals, payment) so a document never changes after it is issued, whatever
//! later happens to the product or the store's settings. Numbers run without gaps per
//! seller and series (`INV-2026-00001`, `CN-2026-00001`): the counter is bumped in the same
//! transaction, so a rolled-back order takes its number with it.
//!
//! Buyers open their documents at `/invoices/{token}`, a MAC-signed link (no expiry: an
//! invoice is for keeps) that the receipt, the success page and the order JSON carry.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::App;
use crate::catalog::format_money;
use crate::checkout::Order;
use crate::db::{Exec, Tx};
use crate::error::{not_found, unprocessable, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

/// A seller's invoice details, kept in `kv_settings` (`scope = seller:{id}`, `name = invoice`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InvoiceSettings {
    /// The legal name printed as the issuer (default: the store name).
    pub legal_name: String,
    /// Postal address, one line per entry.
    pub address: Vec<String>,
    /// VAT / tax number, printed when set.
    pub tax_id: String,
    /// Number prefix for invoices (default `INV`); credit notes use `CN`.
    pub prefix: String,
    /// A closing line (payment terms, thanks, registration numbers…).
    pub footer: String,
}

impl InvoiceSettings {
    fn validate(mut self) -> ApiResult<Self> {
        let too_long = |s: &str, n: usize| s.chars().count() > n || s.chars().any(|c| c.is_control() && c != '\n');
        self.legal_name = self.legal_name.trim().to_string();
        self.tax_id = self.tax_id.trim().to_string();
        self.prefix = self.prefix.trim().to_ascii_uppercase();
        self.footer = self.footer.trim().to_string();
        self.address = self
            .address
            .iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if too_long(&self.legal_name, 200) {
            return Err(unprocessable("invalid_legal_name", "legal_name: at most 200 characters").field("legal_name"));
        }
        if self.address.len() > 8 || self.address.iter().any(|l| too_long(l, 200)) {
            return Err(
                unprocessable("invalid_address", "address: at most 8 lines of 200 characters").field("address"),
            );
        }
        if too_long(&self.tax_id, 64) {
            return Err(unprocessable("invalid_tax_id", "tax_id: at most 64 characters").field("tax_id"));
        }
        if too_long(&self.footer, 500) {
            return Err(unprocessable("invalid_footer", "footer: at most 500 characters").field("footer"));
        }
        if !self.prefix.is_empty()
            && (self.prefix.len() > 12 || !self.prefix.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(unprocessable("invalid_prefix", "prefix: 1–12 letters or digits, like INV").field("prefix"));
        }
        Ok(self)
    }
}

fn settings_scope(seller_id: &str) -> String {
    format!("seller:{seller_id}")
}

pub async fn settings(e: &impl Exec, seller_id: &str) -> ApiResult<InvoiceSettings> {
    let row: Option<(String,)> = e
        .fetch_optional(sql!(
            "SELECT value FROM kv_settings WHERE scope = $1 AND name = 'invoice'",
            settings_scope(seller_id)
        ))
        .await?;
    Ok(row.and_then(|(v,)| serde_json::from_str(&v).ok()).unwrap_or_default())
}

pub async fn save_settings(e: &impl Exec, seller_id: &str, s: InvoiceSettings) -> ApiResult<InvoiceSettings> {
    let s = s.validate()?;
    e.execute(sql!(
        "INSERT INTO kv_settings (scope, name, value) VALUES ($1, 'invoice', $2)
         ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value",
        settings_scope(seller_id),
        serde_json::to_string(&s).map_err(anyhow::Error::from)?
    ))
    .await?;
    Ok(s)
}

/// One issued document.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Invoice {
    pub id: String,
    pub seller_id: String,
    pub order_id: String,
    pub refund_id: Option<String>,
    pub kind: String,
    pub number: String,
    pub currency: String,
    pub total: i64,
    pub issued_at: i64,
    pub document: String,
}

const COLS: &str = "id, seller_id, order_id, refund_id, kind, number, currency, total, issued_at, document";

/// Takes the next number of `series` for this seller (inside the caller's transaction).
async fn next_number(tx: &Tx, seller_id: &str, series: &str) -> ApiResult<String> {
    let (n,): (i64,) = tx
        .fetch_one(sql!(
            "INSERT INTO invoice_counters (seller_id, series, last_number) VALUES ($1, $2, 1)
             ON CONFLICT (seller_id, series) DO UPDATE SET last_number = invoice_counters.last_number + 1
             RETURNING last_number",
            seller_id,
            series
        ))
        .await?;
    Ok(format!("{series}-{n:05}"))
}

fn year_of(unix: i64) -> i32 {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or(1970, |t| t.year())
}

async fn seller_block(tx: &Tx, seller_id: &str) -> ApiResult<(Value, InvoiceSettings)> {
    let seller = crate::accounts::find_seller(tx, seller_id)
        .await?
        .ok_or_else(|| not_found("seller"))?;
    let s = settings(tx, seller_id).await?;
    let legal = if s.legal_name.is_empty() {
        seller.store_name.clone()
    } else {
        s.legal_name.clone()
    };
    Ok((
        json!({
            "store_name": seller.store_name, "legal_name": legal, "address": s.address,
            "tax_id": s.tax_id, "email": seller.support_email, "footer": s.footer,
        }),
        s,
    ))
}

fn payment_method(provider: &str, total: i64) -> &'static str {
    match provider {
        _ if total == 0 => "No payment due (free)",
        "stripe" => "Card, via Stripe",
        "test" => "Test mode — no money was charged",
        _ => "Online payment",
    }
}

#[derive(sqlx::FromRow)]
struct LineRow {
    id: String,
    parent_item_id: Option<String>,
    title: String,
    unit_price: i64,
    quantity: i64,
    discount: i64,
    total: i64,
}

/// Issues the order's invoice (once: a second call returns the first). Call inside the
/// fulfillment transaction, after the order is `paid`.
pub async fn issue_for_order(tx: &Tx, order: &Order) -> ApiResult<Invoice> {
    if let Some(existing) = invoice_of_order(tx, &order.id).await? {
        return Ok(existing);
    }
    let issued_at = order.paid_at.unwrap_or_else(now);
    let (seller, s) = seller_block(tx, &order.seller_id).await?;
    let prefix = if s.prefix.is_empty() { "INV" } else { s.prefix.as_str() };
    let number = next_number(tx, &order.seller_id, &format!("{prefix}-{}", year_of(issued_at))).await?;
    let rows: Vec<LineRow> = tx
        .fetch_all(sql!(
            "SELECT id, parent_item_id, title, unit_price, quantity, discount, total FROM order_items WHERE order_id = $1 ORDER BY id",
            &order.id
        ))
        .await?;
    let lines: Vec<Value> = rows
        .iter()
        .filter(|r| r.parent_item_id.is_none())
        .map(|r| {
            let includes: Vec<&str> = rows
                .iter()
                .filter(|m| m.parent_item_id.as_deref() == Some(r.id.as_str()))
                .map(|m| m.title.as_str())
                .collect();
            json!({"title": r.title, "quantity": r.quantity, "unit_price": r.unit_price,
                   "discount": r.discount, "total": r.total, "includes": includes})
        })
        .collect();
    let payment_ref: Option<(Option<String>,)> = tx
        .fetch_optional(sql!(
            "SELECT provider_ref FROM payments WHERE order_id = $1 AND kind = 'charge' ORDER BY created_at, id LIMIT 1",
            &order.id
        ))
        .await?;
    let document = json!({
        "kind": "invoice", "number": number, "issued_at": issued_at, "order_id": order.id,
        "seller": seller, "buyer": {"email": order.email}, "currency": order.currency,
        "lines": lines, "subtotal": order.subtotal, "discount": order.discount_total, "total": order.total,
        "paid_at": order.paid_at,
        "payment": {"method": payment_method(&order.provider, order.total), "reference": payment_ref.and_then(|r| r.0)},
    });
    insert(tx, order, None, "invoice", &number, order.total, issued_at, &document).await
}

/// Issues the credit note of a refund (once per refund).
pub async fn issue_credit_note(
    tx: &Tx,
    order: &Order,
    refund_id: &str,
    amount: i64,
    reason: &str,
) -> ApiResult<Invoice> {
    let existing: Option<Invoice> = tx
        .fetch_optional(sql!(
            format!("SELECT {COLS} FROM invoices WHERE refund_id = $1"),
            refund_id
        ))
        .await?;
    if let Some(e) = existing {
        return Ok(e);
    }
    let t = now();
    let original = invoice_of_order(tx, &order.id).await?;
    let (seller, _) = seller_block(tx, &order.seller_id).await?;
    let number = next_number(tx, &order.seller_id, &format!("CN-{}", year_of(t))).await?;
    let document = json!({
        "kind": "credit_note", "number": number, "issued_at": t, "order_id": order.id,
        "seller": seller, "buyer": {"email": order.email}, "currency": order.currency,
        "refers_to": original.as_ref().map(|i| i.number.clone()),
        "reason": reason,
        "lines": [{"title": match &original { Some(i) => format!("Refund for invoice {}", i.number), None => format!("Refund for order {}", order.id) },
                   "quantity": 1, "unit_price": -amount, "discount": 0, "total": -amount, "includes": []}],
        "subtotal": -amount, "discount": 0, "total": -amount,
        "paid_at": t,
        "payment": {"method": "Refunded to the original payment method", "reference": refund_id},
    });
    insert(
        tx,
        order,
        Some(refund_id),
        "credit_note",
        &number,
        -amount,
        t,
        &document,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn insert(
    tx: &Tx,
    order: &Order,
    refund_id: Option<&str>,
    kind: &str,
    number: &str,
    total: i64,
    issued_at: i64,
    document: &Value,
) -> ApiResult<Invoice> {
    let inv = Invoice {
        id: new_id("inv"),
        seller_id: order.seller_id.clone(),
        order_id: order.id.clone(),
        refund_id: refund_id.map(str::to_string),
        kind: kind.to_string(),
        number: number.to_string(),
        currency: order.currency.clone(),
        total,
        issued_at,
        document: document.to_string(),
    };
    tx.execute(sql!(
        format!("INSERT INTO invoices ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
        &inv.id,
        &inv.seller_id,
        &inv.order_id,
        inv.refund_id.clone(),
        &inv.kind,
        &inv.number,
        &inv.currency,
        inv.total,
        inv.issued_at,
        &inv.document
    ))
    .await?;
    Ok(inv)
}

pub async fn invoice_of_order(e: &impl Exec, order_id: &str) -> ApiResult<Option<Invoice>> {
    Ok(e.fetch_optional(sql!(
        format!("SELECT {COLS} FROM invoices WHERE order_id = $1 AND kind = 'invoice'"),
        order_id
    ))
    .await?)
}

/// Every document of an order, oldest first (the invoice, then credit notes).
pub async fn documents_of_order(e: &impl Exec, order_id: &str) -> ApiResult<Vec<Invoice>> {
    Ok(e.fetch_all(sql!(
        format!("SELECT {COLS} FROM invoices WHERE order_id = $1 ORDER BY issued_at, id"),
        order_id
    ))
    .await?)
}

/// The buyer-facing link of a document.
pub fn url(app: &App, invoice_id: &str) -> String {
    format!(
        "{}/invoices/{}",
        app.cfg.public_url(),
        crate::delivery::sign(&app.keys, "i1", &[invoice_id])
    )
}

/// The document a link names, if its signature holds.
pub async fn from_token(app: &App, token: &str) -> ApiResult<Invoice> {
    let id = crate::delivery::verify(&app.keys, "i1", token, 1)
        .and_then(|f| f.first().map(|s| (*s).to_string()))
        .ok_or_else(|| not_found("invoice"))?;
    app.db
        .fetch_optional(sql!(format!("SELECT {COLS} FROM invoices WHERE id = $1"), &id))
        .await?
        .ok_or_else(|| not_found("invoice"))
}

/// Public JSON of a document (the snapshot plus its link).
pub fn to_json(app: &App, inv: &Invoice) -> Value {
    json!({
        "id": inv.id, "kind": inv.kind, "number": inv.number, "order_id": inv.order_id,
        "currency": inv.currency, "total": inv.total,
        "total_display": format_money(inv.total, &inv.currency),
        "issued_at": inv.issued_at, "url": url(app, &inv.id),
    })
}

/// Seller's documents, newest first, cursor-paged by id.
pub async fn list_for_seller(
    e: &impl Exec,
    seller_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> ApiResult<(Vec<Invoice>, Option<String>)> {
    let limit = limit.clamp(1, 200);
    let mut rows: Vec<Invoice> = e
        .fetch_all(sql!(
            format!(
                "SELECT {COLS} FROM invoices WHERE seller_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
            ),
            seller_id,
            cursor.unwrap_or(""),
            limit + 1
        ))
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok((rows, next))
}
