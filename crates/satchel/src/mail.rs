//! Email: an outbox table, a job that delivers each message, and two transports.
//!
//! [`queue`] writes the message to `email_outbox` and enqueues a [`SendEmail`] job on the
//! caller's transaction, so an email exists if and only if the business change that caused
//! it committed — and sending never blocks or rolls back an order. Delivery retries with the
//! queue's backoff. Transports: SMTP (`SATCHEL_SMTP_URL`, lettre; `smtp://` with optional
//! `?tls=required|opportunistic`, `smtps://` for implicit TLS, credentials in the URL) or,
//! in the embedded shape, `.eml` files in the data dir's outbox that the dashboard lists.
//! Every message is multipart: a plain-text part and an HTML part rendered from the askama
//! layout compiled into the binary.

use askama::Template;
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::db::Exec;
use crate::ids::{new_id, now};
use crate::jobs::{self, Job};
use crate::sql;

/// A message ready to queue.
#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// `receipt`, `new_version`, `refund`, `magic_link`, …
    pub kind: String,
    pub seller_id: Option<String>,
}

#[derive(Template)]
#[template(path = "email/layout.html")]
struct Layout<'a> {
    title: &'a str,
    preheader: &'a str,
    store_name: &'a str,
    accent: &'a str,
    body_html: &'a str,
    footer: &'a str,
}

/// Branding of the store an email is sent for.
#[derive(Debug, Clone)]
pub struct Brand {
    pub store_name: String,
    pub accent: String,
    pub support_email: Option<String>,
}

impl Brand {
    pub async fn of_seller(e: &impl Exec, seller_id: &str) -> anyhow::Result<Self> {
        let s = crate::accounts::find_seller(e, seller_id).await?;
        Ok(match s {
            Some(s) => Brand {
                store_name: s.store_name,
                accent: s.accent_color,
                support_email: s.support_email,
            },
            None => Brand {
                store_name: "Satchel".into(),
                accent: "#5b4bdb".into(),
                support_email: None,
            },
        })
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Wraps an HTML body in the branded layout.
pub fn render_html(brand: &Brand, title: &str, preheader: &str, body_html: &str) -> anyhow::Result<String> {
    let footer = match &brand.support_email {
        Some(e) => format!(
            "Questions? Reply to this email or write to {e}. Sent by {} via Satchel.",
            brand.store_name
        ),
        None => format!("Sent by {} via Satchel.", brand.store_name),
    };
    let accent = if brand.accent.starts_with('#') && brand.accent.len() == 7 {
        brand.accent.as_str()
    } else {
        "#5b4bdb"
    };
    Ok(Layout {
        title,
        preheader,
        store_name: &brand.store_name,
        accent,
        body_html,
        footer: &footer,
    }
    .render()?)
}

/// Email bodies compiled into the binary; a file of the same name in `email.templates_dir`
/// replaces one (read at each render, so edits apply without a restart).
const BUILTIN: &[(&str, &str)] = &[
    ("receipt.html", include_str!("../templates/email/receipt.html")),
    ("receipt.txt", include_str!("../templates/email/receipt.txt")),
    ("refund.html", include_str!("../templates/email/refund.html")),
    ("refund.txt", include_str!("../templates/email/refund.txt")),
    ("new_version.html", include_str!("../templates/email/new_version.html")),
    ("new_version.txt", include_str!("../templates/email/new_version.txt")),
    ("magic_link.html", include_str!("../templates/email/magic_link.html")),
    ("magic_link.txt", include_str!("../templates/email/magic_link.txt")),
    ("reconfirm.html", include_str!("../templates/email/reconfirm.html")),
    ("reconfirm.txt", include_str!("../templates/email/reconfirm.txt")),
    ("abuse_alert.html", include_str!("../templates/email/abuse_alert.html")),
    ("abuse_alert.txt", include_str!("../templates/email/abuse_alert.txt")),
];

/// Renders the `kind` email (`receipt`, `refund`, `new_version`, `magic_link`) with `ctx`:
/// returns (plain text, full branded HTML). `.html` templates auto-escape their values.
pub fn render(
    templates_dir: Option<&std::path::Path>,
    brand: &Brand,
    kind: &str,
    title: &str,
    preheader: &str,
    ctx: &serde_json::Value,
) -> anyhow::Result<(String, String)> {
    let dir = templates_dir.map(std::path::Path::to_path_buf);
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    env.set_loader(move |name| {
        if let Some(d) = &dir {
            let path = d.join(name);
            if !name.contains(['/', '\\']) && path.is_file() {
                return std::fs::read_to_string(&path).map(Some).map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("{}: {e}", path.display()),
                    )
                });
            }
        }
        Ok(BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| (*t).to_string()))
    });
    let mut full = ctx.clone();
    if let Some(obj) = full.as_object_mut() {
        obj.insert("store_name".into(), serde_json::json!(brand.store_name));
    }
    let text = env.get_template(&format!("{kind}.txt"))?.render(&full)?;
    let body = env.get_template(&format!("{kind}.html"))?.render(&full)?;
    Ok((text, render_html(brand, title, preheader, &body)?))
}

/// A UTC date for people: `2026-12-22`.
pub fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

/// A call-to-action button for email bodies (href must already be a trusted URL).
pub fn button(href: &str, label: &str) -> String {
    format!(
        "<p style=\"margin:24px 0;\"><a href=\"{}\" style=\"background:#111827;color:#ffffff;padding:12px 22px;border-radius:8px;text-decoration:none;font-weight:600;display:inline-block;\">{}</a></p>",
        escape(href),
        escape(label)
    )
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendEmail {
    pub outbox_id: String,
}

impl Job for SendEmail {
    const KIND: &'static str = "email.send";
    const MAX_ATTEMPTS: i64 = 10;
}

/// Puts a message in the outbox and schedules its delivery (inside the caller's transaction).
pub async fn queue(e: &impl Exec, m: &Email) -> anyhow::Result<String> {
    let id = new_id("eml");
    e.execute(sql!(
        "INSERT INTO email_outbox (id, seller_id, to_email, subject, body_text, body_html, kind, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)",
        &id,
        m.seller_id.clone(),
        &m.to,
        &m.subject,
        &m.text,
        &m.html,
        &m.kind,
        now()
    ))
    .await?;
    jobs::enqueue(e, &SendEmail { outbox_id: id.clone() }).await?;
    Ok(id)
}

#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    id: String,
    /// The store's sender name (dashboard → Settings), when it set one.
    sender_name: Option<String>,
    to_email: String,
    subject: String,
    body_text: String,
    body_html: String,
    status: String,
}

fn build_message(from: &str, row: &OutboxRow) -> anyhow::Result<Message> {
    let mut from: Mailbox = from
        .parse()
        .map_err(|e| anyhow::anyhow!("email.from {from:?} is not a mailbox: {e}"))?;
    if let Some(name) = row.sender_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        from.name = Some(name.to_string());
    }
    let to: Mailbox = row
        .to_email
        .parse()
        .map_err(|e| anyhow::anyhow!("recipient {:?}: {e}", row.to_email))?;
    Ok(Message::builder()
        .from(from)
        .to(to)
        .subject(row.subject.clone())
        .message_id(Some(format!("<{}@satchel>", row.id)))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(row.body_text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(row.body_html.clone()),
                ),
        )?)
}

/// Delivers one outbox message (the `email.send` job).
pub async fn send(app: App, job: SendEmail) -> anyhow::Result<()> {
    let Some(row) = app
        .db
        .fetch_optional::<OutboxRow>(sql!(
            "SELECT e.id, s.sender_name, e.to_email, e.subject, e.body_text, e.body_html, e.status
             FROM email_outbox e LEFT JOIN sellers s ON s.id = e.seller_id WHERE e.id = $1",
            &job.outbox_id
        ))
        .await?
    else {
        return Ok(()); // deleted: nothing to send
    };
    if row.status == "sent" {
        return Ok(()); // a re-run after a crash between send and mark
    }
    let result = deliver(&app, &row).await;
    match &result {
        Ok(()) => {
            app.db
                .execute(sql!(
                    "UPDATE email_outbox SET status = 'sent', sent_at = $2, attempts = attempts + 1, last_error = NULL WHERE id = $1",
                    &row.id,
                    now()
                ))
                .await?;
        }
        Err(e) => {
            app.db
                .execute(sql!(
                    "UPDATE email_outbox SET status = 'retrying', attempts = attempts + 1, last_error = $2 WHERE id = $1",
                    &row.id,
                    format!("{e:#}").chars().take(1000).collect::<String>()
                ))
                .await?;
        }
    }
    result
}

async fn deliver(app: &App, row: &OutboxRow) -> anyhow::Result<()> {
    let msg = build_message(&app.cfg.email.from, row)?;
    match &app.cfg.email.smtp_url {
        Some(url) => {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                .map_err(|e| anyhow::anyhow!("SATCHEL_SMTP_URL is not usable: {e}"))?
                .timeout(Some(std::time::Duration::from_secs(30)))
                .build();
            transport
                .send(msg)
                .await
                .map_err(|e| anyhow::anyhow!("SMTP delivery failed: {e}"))?;
        }
        None => {
            let dir = app.cfg.outbox_dir();
            tokio::fs::create_dir_all(&dir).await?;
            let tmp = dir.join(format!(".{}.eml.tmp", row.id));
            tokio::fs::write(&tmp, msg.formatted()).await?;
            tokio::fs::rename(&tmp, dir.join(format!("{}.eml", row.id))).await?;
        }
    }
    Ok(())
}
