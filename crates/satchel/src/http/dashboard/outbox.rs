//! The email outbox (`email_outbox`): what the store sent or is about to send — receipts,
//! refunds, update notices, sign-in links — with status, errors, and each message.
//!
//! An email's HTML is someone else's markup as far as the dashboard is concerned: it is
//! served from its own URL with its own policy (`sandbox`, no scripts, nothing loaded but
//! inline styles and images) and shown in a sandboxed `<iframe>`, so it can neither run
//! code nor reach the dashboard. The plain-text part is shown as text.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::{datetime_label, render, Dash, Layout};
use crate::app::App;
use crate::db::Exec;
use crate::error::{not_found, ApiResult};

/// The policy of an email preview: no script, no network but images, no forms, framed only
/// by the dashboard itself.
pub const EMAIL_PREVIEW_CSP: &str =
    "default-src 'none'; img-src data: https:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'self'; form-action 'none'; base-uri 'none'";

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    status: String,
    cursor: String,
}

pub struct Row {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub kind: String,
    pub status: String,
    pub when: String,
    pub error: Option<String>,
}

pub struct Tab {
    pub label: &'static str,
    pub href: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "dashboard/emails.html")]
struct ListPage {
    l: Layout,
    tabs: Vec<Tab>,
    rows: Vec<Row>,
    next_href: Option<String>,
    transport: String,
}

/// Which outbox rows a dashboard user sees: their store's, and for an admin also the
/// store-less system messages.
fn scope_sql(dash: &Dash, q: &mut crate::db::Query) {
    let a = q.arg(dash.seller_id.as_str());
    if dash.is_admin() {
        q.push_sql(&format!(" (seller_id = {a} OR seller_id IS NULL)"));
    } else {
        q.push_sql(&format!(" seller_id = {a}"));
    }
}

pub fn transport_label(app: &App) -> String {
    match &app.cfg.email.smtp_url {
        Some(url) => {
            let host = url::Url::parse(url.expose())
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| "your SMTP server".into());
            format!("Sent by SMTP through {host}.")
        }
        None => format!(
            "No SMTP server is configured: each message is written as an .eml file to {}.",
            app.cfg.outbox_dir().display()
        ),
    }
}

/// (id, to, subject, kind, status, created_at, last_error)
type OutboxListRow = (String, String, String, String, String, i64, Option<String>);

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let mut query = crate::db::Query::new(
        "SELECT id, to_email, subject, kind, status, created_at, last_error FROM email_outbox WHERE".to_string(),
    );
    scope_sql(&dash, &mut query);
    let status = match q.status.as_str() {
        s @ ("queued" | "sent" | "retrying") => s,
        _ => "",
    };
    if !status.is_empty() {
        let a = query.arg(status);
        query.push_sql(&format!(" AND status = {a}"));
    }
    if q.cursor.starts_with("eml_") && q.cursor.len() <= 64 {
        let a = query.arg(q.cursor.as_str());
        query.push_sql(&format!(" AND id < {a}"));
    }
    query.push_sql(" ORDER BY id DESC LIMIT 51");
    let mut rows: Vec<OutboxListRow> = app.db.fetch_all(query).await?;
    let next_href = (rows.len() > 50).then(|| {
        rows.truncate(50);
        format!(
            "/dashboard/emails?status={status}&cursor={}",
            rows.last().map(|r| r.0.as_str()).unwrap_or_default()
        )
    });
    render(&ListPage {
        l: dash.layout("emails", "Emails"),
        tabs: [
            ("All", "", "/dashboard/emails"),
            ("Queued", "queued", "/dashboard/emails?status=queued"),
            ("Sent", "sent", "/dashboard/emails?status=sent"),
            ("Failed", "retrying", "/dashboard/emails?status=retrying"),
        ]
        .iter()
        .map(|(label, key, href)| Tab {
            label,
            href,
            selected: *key == status,
        })
        .collect(),
        rows: rows
            .into_iter()
            .map(|(id, to, subject, kind, status, at, error)| Row {
                id,
                to,
                subject,
                kind: kind.replace('_', " "),
                status,
                when: datetime_label(at),
                error: error.map(|e| e.chars().take(140).collect()),
            })
            .collect(),
        next_href,
        transport: transport_label(&app),
    })
}

#[derive(sqlx::FromRow)]
struct Email {
    id: String,
    to_email: String,
    subject: String,
    body_text: String,
    kind: String,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
    sent_at: Option<i64>,
}

async fn own_email(app: &App, dash: &Dash, id: &str) -> ApiResult<Email> {
    let mut q = crate::db::Query::new(
        "SELECT id, to_email, subject, body_text, kind, status, attempts, last_error, created_at, sent_at FROM email_outbox WHERE"
            .to_string(),
    );
    scope_sql(dash, &mut q);
    let a = q.arg(id);
    q.push_sql(&format!(" AND id = {a}"));
    app.db
        .fetch_optional::<Email>(q)
        .await?
        .ok_or_else(|| not_found("email"))
}

#[derive(Template)]
#[template(path = "dashboard/email.html")]
struct DetailPage {
    l: Layout,
    id: String,
    to: String,
    subject: String,
    text: String,
    kind: String,
    status: String,
    attempts: i64,
    error: Option<String>,
    created: String,
    sent: Option<String>,
    transport: String,
}

pub async fn detail(State(app): State<App>, dash: Dash, Path(id): Path<String>) -> ApiResult<Response> {
    let e = own_email(&app, &dash, &id).await?;
    render(&DetailPage {
        l: dash.layout("emails", e.subject.clone()),
        id: e.id,
        to: e.to_email,
        subject: e.subject,
        text: e.body_text,
        kind: e.kind.replace('_', " "),
        status: e.status,
        attempts: e.attempts,
        error: e.last_error,
        created: datetime_label(e.created_at),
        sent: e.sent_at.map(datetime_label),
        transport: transport_label(&app),
    })
}

/// The HTML part, under the preview policy (for the sandboxed frame on the detail page).
pub async fn body(State(app): State<App>, dash: Dash, Path(id): Path<String>) -> ApiResult<Response> {
    let e = own_email(&app, &dash, &id).await?;
    let (html,): (String,) = app
        .db
        .fetch_one(crate::sql!("SELECT body_html FROM email_outbox WHERE id = $1", &e.id))
        .await?;
    Ok((
        [
            (header::CONTENT_SECURITY_POLICY, EMAIL_PREVIEW_CSP),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response())
}
