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
    to_email: String,
    subject: String,
    body_text: String,
    body_html: String,
    status: String,
}

fn build_message(from: &str, row: &OutboxRow) -> anyhow::Result<Message> {
    let from: Mailbox = from
        .parse()
        .map_err(|e| anyhow::anyhow!("email.from {from:?} is not a mailbox: {e}"))?;
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
            "SELECT id, to_email, subject, body_text, body_html, status FROM email_outbox WHERE id = $1",
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
