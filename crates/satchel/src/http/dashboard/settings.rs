//! Settings: the store's brand (name, logo, accent colour, support email) that the
//! storefront and emails use, the sender name of its emails, and — read-only, because they
//! come from the server's configuration — the state of Stripe, delivery, storage and email.
//! Secrets are never shown: only whether they are set.
//!
//! The logo lives in object storage under `branding/{seller}/logo-{random}.{ext}` (a new
//! key per upload, so the public URL changes and caches never show an old logo) and is
//! served at `/media/sellers/{id}/logo`. Only PNG, JPEG and WebP are accepted, recognised
//! by their bytes, up to 1 MiB.

use askama::Template;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::CsrfOnly;
use super::{render, render_status, see_other, Dash, DashForm, Errors, Layout};
use crate::app::App;
use crate::config::DeliveryMode;
use crate::db::Exec;
use crate::error::{bad_request, ApiResult};
use crate::sql;

const LOGO_MAX: usize = 1024 * 1024;

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct BrandForm {
    pub csrf: String,
    pub store_name: String,
    pub accent_color: String,
    pub support_email: String,
    pub sender_name: String,
}

pub struct Fact {
    pub label: &'static str,
    pub value: String,
    /// `ok`, `warn` or `off`
    pub tone: &'static str,
    pub help: String,
}

#[derive(Template)]
#[template(path = "dashboard/settings.html")]
struct Page {
    l: Layout,
    f: BrandForm,
    errors: Errors,
    logo_url: Option<String>,
    logo_errors: Errors,
    from_address: String,
    payments: Vec<Fact>,
    delivery: Vec<Fact>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

fn fact(label: &'static str, value: impl Into<String>, tone: &'static str, help: impl Into<String>) -> Fact {
    Fact {
        label,
        value: value.into(),
        tone,
        help: help.into(),
    }
}

fn payment_facts(app: &App) -> Vec<Fact> {
    let p = &app.cfg.payments;
    let mut out = Vec::new();
    match &p.stripe_secret_key {
        Some(k) if k.expose().starts_with("sk_test_") || k.expose().starts_with("rk_test_") => out.push(fact(
            "Stripe secret key",
            "Set · test key",
            "warn",
            "Payments go through Stripe's test mode: no real money moves.",
        )),
        Some(_) => out.push(fact(
            "Stripe secret key",
            "Set · live key",
            "ok",
            "Card payments go through Stripe Checkout.",
        )),
        None => out.push(fact(
            "Stripe secret key",
            "Not set",
            "off",
            "Set SATCHEL_STRIPE_SECRET_KEY to take card payments.",
        )),
    }
    out.push(match &p.stripe_webhook_secret {
        Some(_) => fact(
            "Stripe webhook secret",
            "Set",
            "ok",
            "Payment confirmations from Stripe are verified.",
        ),
        None if p.stripe_secret_key.is_some() => fact(
            "Stripe webhook secret",
            "Not set",
            "warn",
            "Without SATCHEL_STRIPE_WEBHOOK_SECRET, Stripe payments are never confirmed. Add the endpoint /api/v1/webhooks/stripe in Stripe and set its signing secret.",
        ),
        None => fact("Stripe webhook secret", "Not set", "off", "Needed once Stripe is set up."),
    });
    out.push(if p.test_mode_enabled() {
        fact(
            "Test-mode checkout",
            "On",
            "warn",
            "Buyers see a clearly labelled TEST MODE page and no payment is taken. It turns off when a Stripe key is set.",
        )
    } else {
        fact("Test-mode checkout", "Off", "ok", "Only real payments complete orders.")
    });
    out
}

fn delivery_facts(app: &App) -> Vec<Fact> {
    let cfg = &app.cfg;
    let mode = match cfg.delivery.mode {
        DeliveryMode::Stream => fact(
            "Download delivery",
            "Streamed by Satchel",
            "ok",
            "Files are streamed from signed, short-lived /files/… URLs, with resume support.",
        ),
        DeliveryMode::XAccel => fact(
            "Download delivery",
            "nginx (X-Accel-Redirect)",
            "ok",
            format!(
                "Satchel checks each download, then nginx sends the bytes from {}.",
                cfg.delivery.x_accel_prefix
            ),
        ),
        DeliveryMode::Presign => fact(
            "Download delivery",
            "Presigned object-store URLs",
            "ok",
            "Buyers download straight from the object store with short-lived links.",
        ),
    };
    let storage = match app.storage.kind() {
        "s3" => fact(
            "File storage",
            "S3-compatible object storage",
            "ok",
            "Files live in your bucket.",
        ),
        other => fact(
            "File storage",
            if other == "local" {
                "Local disk".to_string()
            } else {
                other.to_string()
            },
            "ok",
            format!("Files live under {}.", cfg.data_dir.display()),
        ),
    };
    let email = match &cfg.email.smtp_url {
        Some(_) => fact("Email", "SMTP", "ok", super::outbox::transport_label(app)),
        None => fact(
            "Email",
            "Written to the outbox folder",
            "warn",
            format!(
                "{} Set SATCHEL_SMTP_URL to send real email.",
                super::outbox::transport_label(app)
            ),
        ),
    };
    vec![
        mode,
        fact(
            "Default download limits",
            format!(
                "{} downloads · {} days",
                cfg.delivery.default_max_downloads, cfg.delivery.default_link_days
            ),
            "ok",
            "Each product can set its own in its delivery settings.",
        ),
        if cfg.delivery.bind_to_ip {
            fact(
                "File links",
                "Bound to the buyer's network",
                "ok",
                "A file link works only on the network (/24, /64) that started the download.",
            )
        } else {
            fact(
                "File links",
                "Work from any network",
                "ok",
                "A file link serves whoever has it until it expires (10 minutes and up). Set SATCHEL_DELIVERY_BIND_TO_IP=true to bind it to the network that started the download.",
            )
        },
        storage,
        email,
        fact(
            "Database",
            match app.db.backend() {
                crate::db::Backend::Sqlite => "SQLite",
                crate::db::Backend::Postgres => "PostgreSQL",
            },
            "ok",
            "SQLite for one server; PostgreSQL when you run several.",
        ),
    ]
}

async fn page_view(
    app: &App,
    dash: &Dash,
    f: Option<BrandForm>,
    errors: Errors,
    logo_errors: Errors,
) -> ApiResult<Page> {
    let (store_name, accent, support, sender, logo_key): (String, String, Option<String>, String, Option<String>) = app
        .db
        .fetch_one(sql!(
            "SELECT store_name, accent_color, support_email, sender_name, logo_key FROM sellers WHERE id = $1",
            &dash.seller_id
        ))
        .await?;
    let f = f.unwrap_or(BrandForm {
        csrf: String::new(),
        store_name,
        accent_color: accent,
        support_email: support.unwrap_or_default(),
        sender_name: sender,
    });
    let from_address = app
        .cfg
        .email
        .from
        .parse::<lettre::message::Mailbox>()
        .map(|m| m.email.to_string())
        .unwrap_or_else(|_| app.cfg.email.from.clone());
    Ok(Page {
        l: dash.layout("settings", "Settings"),
        f,
        errors,
        logo_url: logo_key.map(|k| crate::http::branding::logo_url(&dash.seller_id, &k)),
        logo_errors,
        from_address,
        payments: payment_facts(app),
        delivery: delivery_facts(app),
    })
}

pub async fn page(State(app): State<App>, dash: Dash, Query(q): Query<NoticeQuery>) -> ApiResult<Response> {
    let mut page = page_view(&app, &dash, None, Errors::default(), Errors::default()).await?;
    page.l = page.l.with_notice(q.notice.as_deref());
    render(&page)
}

fn valid_accent(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub async fn save(State(app): State<App>, dash: Dash, DashForm(f): DashForm<BrandForm>) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let mut errors = Errors::default();
    let store_name = f.store_name.trim().to_string();
    if store_name.is_empty() || store_name.chars().count() > 80 || store_name.chars().any(char::is_control) {
        errors.add("store_name", "Enter your store's name (up to 80 characters).");
    }
    let accent = f.accent_color.trim().to_ascii_lowercase();
    if !valid_accent(&accent) {
        errors.add("accent_color", "Pick a colour, or type it as #RRGGBB.");
    }
    let support = if f.support_email.trim().is_empty() {
        None
    } else {
        match crate::accounts::normalize_email(&f.support_email) {
            Ok(e) => Some(e),
            Err(_) => {
                errors.add(
                    "support_email",
                    "Enter an email address buyers can write to, or leave it empty.",
                );
                None
            }
        }
    };
    let sender = f.sender_name.trim().to_string();
    if sender.chars().count() > 80
        || sender
            .chars()
            .any(|c| c.is_control() || matches!(c, '<' | '>' | '"' | '@'))
    {
        errors.add(
            "sender_name",
            "Use up to 80 characters without < > \" or @, e.g. your store's name.",
        );
    }
    if !errors.is_empty() {
        let page = page_view(&app, &dash, Some(f), errors, Errors::default()).await?;
        return render_status(StatusCode::UNPROCESSABLE_ENTITY, &page);
    }
    app.db
        .execute(sql!(
            "UPDATE sellers SET store_name = $2, accent_color = $3, support_email = $4, sender_name = $5 WHERE id = $1",
            &dash.seller_id,
            &store_name,
            &accent,
            support,
            &sender
        ))
        .await?;
    Ok(see_other("/dashboard/settings?notice=settings_saved"))
}

/// PNG, JPEG or WebP by their first bytes; `None` for anything else.
fn image_kind(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("png", "image/png"))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("jpg", "image/jpeg"))
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("webp", "image/webp"))
    } else {
        None
    }
}

/// The logo form (multipart): `csrf` first, then `logo`.
pub async fn upload_logo(State(app): State<App>, dash: Dash, req: Request) -> ApiResult<Response> {
    let mut mp = Multipart::from_request(req, &app).await.map_err(|e| {
        bad_request(
            "invalid_multipart",
            format!("{e}; send the form as multipart/form-data"),
        )
    })?;
    let mut csrf_checked = false;
    let mut logo: Option<Vec<u8>> = None;
    let mut errors = Errors::default();
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| bad_request("invalid_multipart", e.body_text()))?
    {
        match field.name().unwrap_or_default() {
            "csrf" => {
                let t = field
                    .text()
                    .await
                    .map_err(|e| bad_request("invalid_multipart", e.body_text()))?;
                dash.check_csrf(&t)?;
                csrf_checked = true;
            }
            "logo" if csrf_checked => {
                let mut buf = Vec::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| bad_request("invalid_multipart", e.body_text()))?
                {
                    if buf.len() + chunk.len() > LOGO_MAX {
                        errors.add(
                            "logo",
                            "That image is larger than 1 MB. Export a smaller one (a logo needs at most 600 px wide).",
                        );
                        break;
                    }
                    buf.extend_from_slice(&chunk);
                }
                if errors.is_empty() {
                    logo = Some(buf);
                }
            }
            _ if !csrf_checked => return Err(super::csrf_refused()),
            _ => {}
        }
    }
    if !csrf_checked {
        return Err(super::csrf_refused());
    }
    let kind = match &logo {
        Some(b) if b.is_empty() => {
            errors.add("logo", "Choose an image file.");
            None
        }
        Some(b) => {
            let k = image_kind(b);
            if k.is_none() {
                errors.add("logo", "Use a PNG, JPEG or WebP image.");
            }
            k
        }
        None => {
            if errors.is_empty() {
                errors.add("logo", "Choose an image file.");
            }
            None
        }
    };
    let (Some(bytes), Some((ext, content_type)), true) = (logo, kind, errors.is_empty()) else {
        let page = page_view(&app, &dash, None, Errors::default(), errors).await?;
        return render_status(StatusCode::UNPROCESSABLE_ENTITY, &page);
    };
    let key = format!(
        "branding/{}/logo-{}.{ext}",
        dash.seller_id,
        crate::ids::random_token(8).replace(['-', '_'], "x")
    );
    app.storage
        .put(&key, crate::storage::bytes_stream(bytes), content_type)
        .await?;
    let old: (Option<String>,) = app
        .db
        .fetch_one(sql!("SELECT logo_key FROM sellers WHERE id = $1", &dash.seller_id))
        .await?;
    app.db
        .execute(sql!(
            "UPDATE sellers SET logo_key = $2 WHERE id = $1",
            &dash.seller_id,
            &key
        ))
        .await?;
    if let Some(old) = old.0 {
        if let Err(e) = app.storage.delete(&old).await {
            tracing::warn!(key = old, error = %e, "could not delete the previous logo");
        }
    }
    Ok(see_other("/dashboard/settings?notice=logo_saved"))
}

pub async fn remove_logo(State(app): State<App>, dash: Dash, DashForm(f): DashForm<CsrfOnly>) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let old: (Option<String>,) = app
        .db
        .fetch_one(sql!("SELECT logo_key FROM sellers WHERE id = $1", &dash.seller_id))
        .await?;
    app.db
        .execute(sql!(
            "UPDATE sellers SET logo_key = NULL WHERE id = $1",
            &dash.seller_id
        ))
        .await?;
    if let Some(old) = old.0 {
        if let Err(e) = app.storage.delete(&old).await {
            tracing::warn!(key = old, error = %e, "could not delete the removed logo");
        }
    }
    Ok(see_other("/dashboard/settings?notice=logo_removed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn images_are_recognised_by_their_bytes() {
        assert_eq!(super::image_kind(b"\x89PNG\r\n\x1a\nrest").unwrap().0, "png");
        assert_eq!(super::image_kind(&[0xFF, 0xD8, 0xFF, 0xE0]).unwrap().0, "jpg");
        assert_eq!(super::image_kind(b"RIFF\0\0\0\0WEBPVP8 ").unwrap().0, "webp");
        assert!(super::image_kind(b"<svg onload=alert(1)>").is_none());
        assert!(super::valid_accent("#12abef") && !super::valid_accent("red"));
    }
}
