//! Orders: search (buyer email, order id, status) with paging, the order's whole story
//! (items, payments, refunds, downloads, license keys, discount, affiliate), refunds with a
//! confirmation step through `refunds::seller_refund` (the same path as
//! `POST /api/v1/orders/{id}/refund`), and "resend receipt".

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::CsrfOnly;
use super::{datetime_label, major_units, money, render, render_status, see_other, Dash, DashForm, Errors, Layout};
use crate::app::App;
use crate::checkout::Order;
use crate::db::Exec;
use crate::error::{conflict, not_found, ApiResult};
use crate::refunds::{RefundOutcome, RefundRequest};
use crate::sql;

const PAGE: i64 = 25;

async fn own_order(app: &App, dash: &Dash, id: &str) -> ApiResult<Order> {
    if !id.starts_with("ord_") || id.len() > 64 {
        return Err(not_found("order"));
    }
    crate::checkout::find_order(&app.db, id)
        .await?
        .filter(|o| o.seller_id == dash.seller_id)
        .ok_or_else(|| not_found("order"))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    q: String,
    status: String,
    cursor: String,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: String,
    email: String,
    status: String,
    currency: String,
    total: i64,
    refunded_total: i64,
    created_at: i64,
    items: i64,
    first_title: Option<String>,
}

pub struct ListRow {
    pub id: String,
    pub email: String,
    pub status: String,
    pub total: String,
    pub refunded: Option<String>,
    pub when: String,
    pub what: String,
}

pub struct Opt {
    pub value: &'static str,
    pub label: &'static str,
}

#[derive(Template)]
#[template(path = "dashboard/orders.html")]
struct ListPage {
    l: Layout,
    q: String,
    status: String,
    statuses: Vec<Opt>,
    rows: Vec<ListRow>,
    next_href: Option<String>,
    first_href: Option<String>,
}

const STATUSES: [Opt; 7] = [
    Opt {
        value: "paid",
        label: "Paid",
    },
    Opt {
        value: "pending",
        label: "Pending",
    },
    Opt {
        value: "refunded",
        label: "Refunded",
    },
    Opt {
        value: "partially_refunded",
        label: "Partly refunded",
    },
    Opt {
        value: "disputed",
        label: "Disputed",
    },
    Opt {
        value: "failed",
        label: "Failed",
    },
    Opt {
        value: "expired",
        label: "Expired",
    },
];

/// `%` and `_` typed by a person match themselves.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let mut query = crate::db::Query::new(
        "SELECT o.id, o.email, o.status, o.currency, o.total, o.refunded_total, o.created_at,
            (SELECT COUNT(*) FROM order_items i WHERE i.order_id = o.id AND i.parent_item_id IS NULL) AS items,
            (SELECT MIN(i.title) FROM order_items i WHERE i.order_id = o.id AND i.parent_item_id IS NULL) AS first_title
         FROM orders o WHERE o.seller_id = $1"
            .to_string(),
    );
    query.args.push(dash.seller_id.clone().into());
    let status = STATUSES
        .iter()
        .find(|s| s.value == q.status)
        .map(|s| s.value.to_string())
        .unwrap_or_default();
    if !status.is_empty() {
        let a = query.arg(status.as_str());
        query.push_sql(&format!(" AND o.status = {a}"));
    }
    let text = q.q.trim().to_string();
    if !text.is_empty() {
        if text.starts_with("ord_") {
            let a = query.arg(text.as_str());
            query.push_sql(&format!(" AND o.id = {a}"));
        } else {
            let a = query.arg(format!("%{}%", like_escape(&text.to_lowercase())));
            query.push_sql(&format!(" AND o.email LIKE {a} ESCAPE '\\'"));
        }
    }
    if q.cursor.starts_with("ord_") && q.cursor.len() <= 64 {
        let a = query.arg(q.cursor.as_str());
        query.push_sql(&format!(" AND o.id < {a}"));
    }
    let a = query.arg(PAGE + 1);
    query.push_sql(&format!(" ORDER BY o.id DESC LIMIT {a}"));
    let mut rows: Vec<OrderRow> = app.db.fetch_all(query).await?;
    let next_href = (rows.len() as i64 > PAGE).then(|| {
        rows.truncate(usize::try_from(PAGE).unwrap_or(25));
        format!(
            "/dashboard/orders?q={}&status={}&cursor={}",
            super::enc(&text),
            status,
            rows.last().map(|r| r.id.as_str()).unwrap_or_default()
        )
    });
    let first_href =
        (!q.cursor.is_empty()).then(|| format!("/dashboard/orders?q={}&status={status}", super::enc(&text)));
    render(&ListPage {
        l: dash.layout("orders", "Orders"),
        statuses: STATUSES
            .iter()
            .map(|s| Opt {
                value: s.value,
                label: s.label,
            })
            .collect(),
        rows: rows
            .into_iter()
            .map(|r| ListRow {
                what: match (r.first_title, r.items) {
                    (Some(t), 1) => t,
                    (Some(t), n) => format!("{t} + {} more", n - 1),
                    (None, _) => "—".into(),
                },
                refunded: (r.refunded_total > 0 && r.refunded_total < r.total)
                    .then(|| money(r.refunded_total, &r.currency)),
                total: money(r.total, &r.currency),
                when: datetime_label(r.created_at),
                id: r.id,
                email: r.email,
                status: r.status,
            })
            .collect(),
        q: text,
        status,
        next_href,
        first_href,
    })
}

// ---------- detail ----------

pub struct ItemView {
    pub id: String,
    pub title: String,
    pub quantity: i64,
    pub unit: String,
    pub total: String,
    pub status: String,
    pub bundled: bool,
}

pub struct PaymentView {
    pub provider: String,
    pub reference: String,
    pub amount: String,
    pub status: String,
    pub when: String,
}

pub struct RefundView {
    pub amount: String,
    pub reason: String,
    pub source: String,
    pub when: String,
}

pub struct GrantView {
    pub id: String,
    pub title: String,
    pub remaining: i64,
    pub max: i64,
    pub expires: String,
    pub expired: bool,
    pub status: String,
    pub ip_bound: Option<String>,
    /// The purchase (or this item) was refunded: no action brings it back.
    pub refunded: bool,
    /// The latest downloads, newest first; `more`: older ones exist (in the API).
    pub history: Vec<DownloadView>,
    pub more: bool,
}

/// One download in a grant's history.
pub struct DownloadView {
    pub when: String,
    /// A resume or another connection of a counted download (nothing counted).
    pub resumed: bool,
    pub ip: String,
    pub network: String,
    pub client: String,
    pub user_agent: String,
    pub file: String,
    pub size: String,
}

/// Downloads shown per grant on the order page.
const HISTORY: i64 = 10;

impl DownloadView {
    fn new(e: crate::grants::DownloadEvent) -> Self {
        DownloadView {
            when: datetime_label(e.at),
            resumed: e.outcome == "resumed",
            ip: e.ip,
            network: e.ip_prefix,
            client: client_label(&e.user_agent),
            user_agent: e.user_agent,
            file: e.file_name.unwrap_or_else(|| "—".into()),
            size: crate::http::pages::human_size(e.bytes),
        }
    }
}

/// A user agent as a seller reads it: the product tokens (`curl/8.5.0`, `Firefox/128.0`),
/// not the whole string, which the page's tooltip keeps. Empty: "unknown".
fn client_label(ua: &str) -> String {
    // Most specific first: Edge and Opera also say Chrome, and Chrome also says Safari.
    let known = [
        "Edg/", "OPR/", "Firefox/", "Chrome/", "Safari/", "curl/", "Wget/", "aria2/",
    ];
    let token = known
        .iter()
        .find_map(|k| ua.split_whitespace().find(|t| t.starts_with(k)));
    match (token, ua.split_whitespace().next()) {
        (Some(t), _) => t.to_string(),
        (None, Some(first)) => first.chars().take(40).collect(),
        (None, None) => "unknown".into(),
    }
}

pub struct LicenseView {
    pub id: String,
    pub key: String,
    pub status: String,
    pub activations: i64,
    pub max: String,
}

pub struct RefundForm {
    pub amount: String,
    pub reason: String,
    pub items: Vec<String>,
}

impl RefundForm {
    pub fn has(&self, item_id: &str) -> bool {
        self.items.iter().any(|i| i == item_id)
    }
}

#[derive(Template)]
#[template(path = "dashboard/order.html")]
struct DetailPage {
    l: Layout,
    o: Order,
    email_q: String,
    status_label: String,
    created: String,
    paid: Option<String>,
    provider: String,
    subtotal: String,
    discount: Option<String>,
    discount_code: Option<String>,
    total: String,
    refunded: Option<String>,
    remaining: String,
    affiliate: Option<String>,
    items: Vec<ItemView>,
    payments: Vec<PaymentView>,
    refunds: Vec<RefundView>,
    grants: Vec<GrantView>,
    licenses: Vec<LicenseView>,
    refundable: bool,
    receipt_ok: bool,
    form: RefundForm,
    errors: Errors,
    /// The confirmation step: what will happen, in words.
    confirm: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DetailQuery {
    notice: Option<String>,
}

/// (id, title, quantity, unit price, total, status, parent item)
type ItemRow = (String, String, i64, i64, i64, String, Option<String>);

async fn detail_view(app: &App, dash: &Dash, o: Order) -> ApiResult<DetailPage> {
    let (refunded_total, provider_payment_id, discount_code_id, affiliate_id): (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = app
        .db
        .fetch_one(sql!(
            "SELECT refunded_total, provider_payment_id, discount_code_id, affiliate_id FROM orders WHERE id = $1",
            &o.id
        ))
        .await?;
    let items: Vec<ItemRow> = app
        .db
        .fetch_all(sql!(
            "SELECT id, title, quantity, unit_price, total, status, parent_item_id FROM order_items WHERE order_id = $1 ORDER BY id",
            &o.id
        ))
        .await?;
    let payments: Vec<(String, Option<String>, i64, String, String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT provider, provider_ref, amount, currency, status, created_at FROM payments WHERE order_id = $1 ORDER BY id",
            &o.id
        ))
        .await?;
    let refunds: Vec<(i64, String, String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT amount, reason, source, created_at FROM refunds WHERE order_id = $1 ORDER BY id",
            &o.id
        ))
        .await?;
    let grants = crate::grants::for_order(&app.db, &o.id).await?;
    let mut histories = Vec::with_capacity(grants.len());
    for g in &grants {
        // `own_order` checked the order is this seller's, and with it its grants.
        let (events, next) = crate::grants::history(&app.db, &g.id, None, HISTORY).await?;
        histories.push((events.into_iter().map(DownloadView::new).collect(), next.is_some()));
    }
    let t = crate::ids::now();
    let licenses: Vec<(String, String, String, i64, Option<i64>)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, license_key, status, activations, max_activations FROM license_keys WHERE order_id = $1 ORDER BY id",
            &o.id
        ))
        .await?;
    let discount_code = match discount_code_id {
        Some(id) => app
            .db
            .fetch_optional::<(String,)>(sql!("SELECT code FROM discount_codes WHERE id = $1", &id))
            .await?
            .map(|r| r.0),
        None => None,
    };
    let affiliate = match affiliate_id {
        Some(id) => {
            let a: Option<(String, String)> = app
                .db
                .fetch_optional(sql!("SELECT code, email FROM affiliates WHERE id = $1", &id))
                .await?;
            let c: Option<(i64, i64, String)> = app
                .db
                .fetch_optional(sql!(
                    "SELECT amount, reversed_amount, status FROM commissions WHERE order_id = $1 AND affiliate_id = $2",
                    &o.id,
                    &id
                ))
                .await?;
            a.map(|(code, email)| match c {
                Some((amount, reversed, status)) => format!(
                    "{code} ({email}) · commission {} {status}",
                    money(amount - reversed, &o.currency)
                ),
                None => format!("{code} ({email})"),
            })
        }
        None => None,
    };
    let remaining = o.total - refunded_total;
    let refundable = matches!(o.status.as_str(), "paid" | "partially_refunded" | "disputed") && remaining > 0;
    let c = o.currency.clone();
    Ok(DetailPage {
        l: dash.layout("orders", format!("Order {}", o.id)),
        email_q: super::enc(&o.email),
        status_label: o.status.replace('_', " "),
        created: datetime_label(o.created_at),
        paid: o.paid_at.map(datetime_label),
        provider: match (o.provider.as_str(), provider_payment_id) {
            ("stripe", Some(pi)) => format!("Stripe · {pi}"),
            ("stripe", None) => "Stripe".into(),
            ("test", _) => "Test mode (no real payment)".into(),
            (other, _) => other.to_string(),
        },
        subtotal: money(o.subtotal, &c),
        discount: (o.discount_total > 0).then(|| money(o.discount_total, &c)),
        discount_code,
        total: money(o.total, &c),
        refunded: (refunded_total > 0).then(|| money(refunded_total, &c)),
        remaining: money(remaining, &c),
        affiliate,
        items: items
            .into_iter()
            .map(|(id, title, quantity, unit, total, status, parent)| ItemView {
                id,
                title,
                quantity,
                unit: money(unit, &c),
                total: money(total, &c),
                status,
                bundled: parent.is_some(),
            })
            .collect(),
        payments: payments
            .into_iter()
            .map(|(provider, reference, amount, currency, status, at)| PaymentView {
                provider: match provider.as_str() {
                    "test" => "test mode".into(),
                    "stripe" => "Stripe".into(),
                    _ => provider,
                },
                reference: reference.unwrap_or_else(|| "—".into()),
                amount: money(amount, &currency),
                status,
                when: datetime_label(at),
            })
            .collect(),
        refunds: refunds
            .into_iter()
            .map(|(amount, reason, source, at)| RefundView {
                amount: money(amount, &c),
                reason: if reason.is_empty() { "—".into() } else { reason },
                source,
                when: datetime_label(at),
            })
            .collect(),
        grants: grants
            .into_iter()
            .zip(histories)
            .map(|(g, (history, more))| GrantView {
                history,
                more,
                refunded: g.refunded(),
                expired: g.expires_at <= t,
                expires: super::date(g.expires_at),
                id: g.id,
                title: g.product_title,
                remaining: g.remaining,
                max: g.max_downloads,
                status: g.status,
                ip_bound: g.ip_bound,
            })
            .collect(),
        licenses: licenses
            .into_iter()
            .map(|(id, key, status, activations, max)| LicenseView {
                id,
                key,
                status,
                activations,
                max: max.map_or_else(|| "∞".into(), |m| m.to_string()),
            })
            .collect(),
        refundable,
        receipt_ok: matches!(o.status.as_str(), "paid" | "partially_refunded"),
        form: RefundForm {
            amount: major_units(remaining.max(0), &c),
            reason: String::new(),
            items: Vec::new(),
        },
        errors: Errors::default(),
        confirm: None,
        o,
    })
}

pub async fn detail(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> ApiResult<Response> {
    let o = own_order(&app, &dash, &id).await?;
    let mut page = detail_view(&app, &dash, o).await?;
    page.l = page.l.with_notice(q.notice.as_deref());
    render(&page)
}

/// The refund form, read by hand: `items` repeats (one checkbox per item).
struct RefundPost {
    csrf: String,
    step: String,
    amount: String,
    reason: String,
    items: Vec<String>,
}

fn parse_refund(body: &[u8]) -> RefundPost {
    let mut f = RefundPost {
        csrf: String::new(),
        step: String::new(),
        amount: String::new(),
        reason: String::new(),
        items: Vec::new(),
    };
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "csrf" => f.csrf = v.into_owned(),
            "step" => f.step = v.into_owned(),
            "amount" => f.amount = v.into_owned(),
            "reason" => f.reason = v.into_owned(),
            "items" if f.items.len() < 200 => f.items.push(v.into_owned()),
            _ => {}
        }
    }
    f
}

/// Step 1 (`step=review`): checks everything with a dry run and shows what will happen.
/// Step 2 (`step=confirm`): refunds through `refunds::seller_refund`.
pub async fn refund(State(app): State<App>, dash: Dash, Path(id): Path<String>, body: Bytes) -> ApiResult<Response> {
    let f = parse_refund(&body);
    dash.check_csrf(&f.csrf)?;
    let o = own_order(&app, &dash, &id).await?;
    let mut errors = Errors::default();
    let amount = crate::http::pages::parse_amount(&f.amount, &o.currency);
    if amount.is_none() {
        errors.add("amount", "Enter the amount to refund, such as 19.00.");
    }
    let reason = f.reason.trim().chars().take(500).collect::<String>();
    let req = RefundRequest {
        amount,
        reason: reason.clone(),
        items: f.items.clone(),
    };
    let mut confirm = None;
    if errors.is_empty() {
        if f.step == "confirm" {
            match crate::refunds::seller_refund(&app, &dash.seller_id, &o.id, &req).await {
                Ok(RefundOutcome::Applied { .. } | RefundOutcome::AlreadyApplied) => {
                    return Ok(see_other(&format!("/dashboard/orders/{}?notice=refunded", o.id)));
                }
                Err(e) => errors.absorb(e)?,
            }
        } else {
            // A dry run in a transaction that is rolled back: every check, no effect.
            let tx = app.db.begin().await?;
            match crate::refunds::apply(&app, &tx, &o.id, &req, "seller", None).await {
                Ok(RefundOutcome::Applied { status, .. }) => {
                    drop(tx);
                    let amt = money(amount.unwrap_or(0), &o.currency);
                    let mut lines = vec![format!("{amt} goes back to {} (order {}).", o.email, o.id)];
                    if status == "refunded" {
                        lines.push("This refunds everything that is left, so the order becomes refunded and every download link and license key of it stops working at once.".into());
                    } else if f.items.is_empty() {
                        lines.push("A partial refund: downloads and license keys keep working (tick items to end their access).".into());
                    } else {
                        lines.push(format!(
                            "A partial refund: access ends for {} ticked item(s); the rest keeps working.",
                            f.items.len()
                        ));
                    }
                    if o.provider == "stripe" {
                        lines.push("Stripe refunds the card; this cannot be undone.".into());
                    } else {
                        lines.push("This is a test-mode order, so no real money moves.".into());
                    }
                    lines.push(
                        "The buyer gets a refund email; an affiliate's commission is reversed in proportion.".into(),
                    );
                    confirm = Some(lines);
                }
                Ok(RefundOutcome::AlreadyApplied) => {
                    drop(tx);
                    return Err(conflict("already_refunded", "this refund was already applied"));
                }
                Err(e) => {
                    drop(tx);
                    errors.absorb(e)?;
                }
            }
        }
    }
    let mut page = detail_view(&app, &dash, o).await?;
    page.form = RefundForm {
        amount: f.amount,
        reason,
        items: f.items,
    };
    let failed = !errors.is_empty();
    page.errors = errors;
    page.confirm = confirm;
    render_status(
        if failed {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        },
        &page,
    )
}

pub async fn resend(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(f): DashForm<CsrfOnly>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let o = own_order(&app, &dash, &id).await?;
    if !crate::checkout::resend_receipt(&app, &o.id).await? {
        return Err(conflict("order_not_paid", "only paid orders have a receipt to send"));
    }
    Ok(see_other(&format!("/dashboard/orders/{}?notice=receipt_queued", o.id)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct GrantForm {
    csrf: String,
    action: String,
    /// Days to add, for `extend`.
    days: String,
}

/// Reset, extend or revoke one of the order's downloads through `grants::seller_action`.
pub async fn grant_action(
    State(app): State<App>,
    dash: Dash,
    Path((id, grant_id)): Path<(String, String)>,
    DashForm(f): DashForm<GrantForm>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let o = own_order(&app, &dash, &id).await?;
    let belongs = crate::grants::for_order(&app.db, &o.id)
        .await?
        .iter()
        .any(|g| g.id == grant_id);
    if !belongs {
        return Err(not_found("download"));
    }
    let body = if f.action == "extend" {
        match f.days.trim().parse::<i64>() {
            Ok(days) => serde_json::json!({ "days": days }).to_string(),
            Err(_) => {
                return Err(crate::error::unprocessable(
                    "invalid_days",
                    "enter the number of days to extend by (1–3650)",
                ))
            }
        }
    } else {
        String::new()
    };
    crate::grants::seller_action(
        &app,
        &dash.seller_id,
        &dash.user_id,
        &grant_id,
        &f.action,
        body.as_bytes(),
    )
    .await?;
    Ok(see_other(&format!(
        "/dashboard/orders/{}?notice=grant_{}#downloads",
        o.id,
        match f.action.as_str() {
            a @ ("reset" | "extend" | "revoke") => a,
            _ => "",
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::client_label;

    #[test]
    fn clients_are_named_by_their_product_token() {
        let chrome =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(client_label(chrome), "Chrome/120.0.0.0");
        assert_eq!(
            client_label(&format!("{chrome} Edg/120.0.2210.91")),
            "Edg/120.0.2210.91"
        );
        assert_eq!(
            client_label("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
            "Firefox/128.0"
        );
        assert_eq!(client_label("curl/8.5.0"), "curl/8.5.0");
        assert_eq!(client_label("MyDownloader 2.1"), "MyDownloader");
        assert_eq!(client_label(""), "unknown");
    }

    #[test]
    fn like_patterns_are_literal() {
        assert_eq!(super::like_escape("a_b%c"), "a\\_b\\%c");
        let f = super::parse_refund(b"csrf=x&amount=1.50&items=a&items=b&reason=r");
        assert_eq!(f.items, vec!["a", "b"]);
        assert_eq!(f.amount, "1.50");
    }
}
