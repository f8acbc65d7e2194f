//! Licenses: search by key, buyer email or product; a license with its devices; suspend,
//! reinstate, revoke and reset through `licensing::seller_action` (as the seller API does).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{datetime_label, render, see_other, Dash, DashForm, Layout};
use crate::app::App;
use crate::db::Exec;
use crate::error::{not_found, ApiResult};
use crate::sql;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    q: String,
    product: String,
    cursor: String,
}

#[derive(sqlx::FromRow)]
struct LicRow {
    id: String,
    license_key: String,
    email: String,
    license_type: String,
    status: String,
    max_activations: Option<i64>,
    activations: i64,
    title: String,
    created_at: i64,
}

pub struct Row {
    pub id: String,
    pub key: String,
    pub email: String,
    pub kind: String,
    pub status: String,
    pub devices: String,
    pub product: String,
    pub when: String,
}

pub struct ProductOpt {
    pub id: String,
    pub title: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "dashboard/licenses.html")]
struct ListPage {
    l: Layout,
    q: String,
    products: Vec<ProductOpt>,
    rows: Vec<Row>,
    next_href: Option<String>,
    filtered: bool,
}

fn kind_label(t: &str) -> String {
    match t {
        "perpetual" => "Perpetual".into(),
        "subscription" => "Subscription".into(),
        "single_use" => "Single use".into(),
        other => other.to_string(),
    }
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let mut query = crate::db::Query::new(
        "SELECT l.id, l.license_key, l.email, l.license_type, l.status, l.max_activations, l.activations, p.title, l.created_at
         FROM license_keys l JOIN orders o ON o.id = l.order_id JOIN products p ON p.id = l.product_id
         WHERE o.seller_id = $1"
            .to_string(),
    );
    query.args.push(dash.seller_id.clone().into());
    let text = q.q.trim().to_string();
    if !text.is_empty() {
        if let Ok(key) = crate::licensing::format::canonical_key(&text) {
            let a = query.arg(key);
            query.push_sql(&format!(" AND l.license_key = {a}"));
        } else {
            let escaped = text
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let a = query.arg(format!("%{escaped}%"));
            query.push_sql(&format!(" AND l.email LIKE {a} ESCAPE '\\'"));
        }
    }
    if q.product.starts_with("prd_") {
        let a = query.arg(q.product.as_str());
        query.push_sql(&format!(" AND l.product_id = {a}"));
    }
    if q.cursor.starts_with("lic_") && q.cursor.len() <= 64 {
        let a = query.arg(q.cursor.as_str());
        query.push_sql(&format!(" AND l.id < {a}"));
    }
    query.push_sql(" ORDER BY l.id DESC LIMIT 51");
    let mut rows: Vec<LicRow> = app.db.fetch_all(query).await?;
    let next_href = (rows.len() > 50).then(|| {
        rows.truncate(50);
        format!(
            "/dashboard/licenses?q={}&product={}&cursor={}",
            super::enc(&text),
            super::enc(&q.product),
            rows.last().map(|r| r.id.as_str()).unwrap_or_default()
        )
    });
    let products: Vec<(String, String)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, title FROM products WHERE seller_id = $1 AND license_policy NOT LIKE '%\"none\"%' ORDER BY title",
            &dash.seller_id
        ))
        .await?;
    render(&ListPage {
        l: dash.layout("licenses", "Licenses"),
        filtered: !text.is_empty() || !q.product.is_empty(),
        q: text,
        products: products
            .into_iter()
            .map(|(id, title)| ProductOpt {
                selected: id == q.product,
                id,
                title,
            })
            .collect(),
        rows: rows
            .into_iter()
            .map(|r| Row {
                devices: match r.max_activations {
                    Some(m) => format!("{} of {m}", r.activations),
                    None => r.activations.to_string(),
                },
                kind: kind_label(&r.license_type),
                when: super::date(r.created_at),
                id: r.id,
                key: r.license_key,
                email: r.email,
                status: r.status,
                product: r.title,
            })
            .collect(),
        next_href,
    })
}

pub struct DeviceView {
    pub fingerprint: String,
    pub label: String,
    pub ip: String,
    pub activated: String,
    pub last_seen: String,
    pub active: bool,
}

#[derive(Template)]
#[template(path = "dashboard/license.html")]
struct DetailPage {
    l: Layout,
    id: String,
    key: String,
    email: String,
    kind: String,
    status: String,
    product: String,
    product_id: String,
    order_id: String,
    devices_used: i64,
    max: String,
    expires: Option<String>,
    paid_through: Option<String>,
    created: String,
    devices: Vec<DeviceView>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DetailQuery {
    notice: Option<String>,
}

type LicenseDetailRow = (
    String,
    String,
    String,
    String,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    String,
    String,
    i64,
);

pub async fn detail(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> ApiResult<Response> {
    let row: Option<LicenseDetailRow> = app
        .db
        .fetch_optional(sql!(
            "SELECT l.license_key, l.email, l.license_type, l.status, l.max_activations, l.activations, l.expires_at, l.paid_through,
                    p.title, p.id, l.order_id, l.created_at
             FROM license_keys l JOIN orders o ON o.id = l.order_id JOIN products p ON p.id = l.product_id
             WHERE l.id = $1 AND o.seller_id = $2",
            &id,
            &dash.seller_id
        ))
        .await?;
    let Some((key, email, kind, status, max, used, expires, paid_through, product, product_id, order_id, created)) =
        row
    else {
        return Err(not_found("license"));
    };
    let devices: Vec<(String, String, String, i64, i64, Option<i64>)> = app
        .db
        .fetch_all(sql!(
            "SELECT fingerprint, label, ip, created_at, last_check_in_at, deactivated_at FROM license_activations
             WHERE license_id = $1 ORDER BY created_at DESC, id DESC LIMIT 100",
            &id
        ))
        .await?;
    render(&DetailPage {
        l: dash
            .layout("licenses", format!("License {key}"))
            .with_notice(q.notice.as_deref()),
        id,
        key,
        email,
        kind: kind_label(&kind),
        status,
        product,
        product_id,
        order_id,
        devices_used: used,
        max: max.map_or_else(|| "unlimited".into(), |m| m.to_string()),
        expires: expires.map(super::date),
        paid_through: paid_through.map(super::date),
        created: datetime_label(created),
        devices: devices
            .into_iter()
            .map(|(fp, label, ip, at, seen, off)| DeviceView {
                fingerprint: fp.chars().take(12).collect(),
                label: if label.is_empty() {
                    "Unnamed device".into()
                } else {
                    label
                },
                ip: if ip.is_empty() { "—".into() } else { ip },
                activated: super::date(at),
                last_seen: super::ago(seen),
                active: off.is_none(),
            })
            .collect(),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ActionForm {
    csrf: String,
    action: String,
    /// Days to add, for `extend`.
    days: Option<i64>,
}

pub async fn action(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(f): DashForm<ActionForm>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let body = match f.days {
        Some(days) if f.action == "extend" => serde_json::json!({ "days": days }).to_string(),
        _ => String::new(),
    };
    crate::licensing::seller_action(&app, &id, &dash.seller_id, &f.action, body.as_bytes()).await?;
    Ok(see_other(&format!(
        "/dashboard/licenses/{id}?notice=license_{}",
        match f.action.as_str() {
            a @ ("suspend" | "reinstate" | "revoke" | "reset" | "extend") => a,
            _ => "",
        }
    )))
}
