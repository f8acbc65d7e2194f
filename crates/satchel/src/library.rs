//! The buyer's library: sign in by emailed magic link, then every purchase in one place.
//!
//! Magic links are single-use and live 15 minutes; the database keeps only their sha256 and
//! their purpose (`library` here, `affiliate` for the affiliate portal, same machinery).
//! Asking for one answers the same whether or not the email ever bought anything. A
//! purchase shows the product's current version with its files (size, sha256), downloads
//! left, a download link, license keys with their devices, the buyer's review, and `updated`
//! when a version was published after the buyer's last download. Subscriptions are listed
//! with their paid-through date and whether they can be canceled or resumed.
//!
//! Cookie-authenticated writes (deactivate a device, cancel/resume, review) must carry the
//! session's CSRF token: the `csrf` form field on pages, the `X-CSRF-Token` header on the
//! JSON API (`GET /api/v1/library` returns it as `csrf_token`).

use serde_json::{json, Value};

use crate::app::App;
use crate::db::Exec;
use crate::error::{unauthorized, ApiError, ApiResult};
use crate::ids::{hash_secret, new_id, now, random_token};
use crate::sql;

pub const MAGIC_LINK_MINUTES: i64 = 15;

/// An authenticated buyer.
#[derive(Debug, Clone)]
pub struct BuyerAuth {
    pub user_id: String,
    pub email: String,
    /// The session's CSRF token, which every state-changing request must repeat.
    pub csrf_token: String,
}

impl BuyerAuth {
    /// Constant-time check of a submitted CSRF token against the session's.
    pub fn csrf_ok(&self, submitted: &str) -> bool {
        use subtle::ConstantTimeEq;
        !submitted.is_empty() && bool::from(self.csrf_token.as_bytes().ct_eq(submitted.as_bytes()))
    }

    /// `Err(403 csrf_failed)` unless `submitted` is the session's token.
    pub fn require_csrf(&self, submitted: Option<&str>) -> ApiResult<()> {
        if self.csrf_ok(submitted.unwrap_or_default()) {
            Ok(())
        } else {
            Err(crate::error::forbidden(
                "csrf_failed",
                "this request is missing the session's CSRF token (form field `csrf`, or the X-CSRF-Token header with the `csrf_token` from GET /api/v1/library); reload the page and try again",
            ))
        }
    }
}

impl axum::extract::FromRequestParts<App> for BuyerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Self, ApiError> {
        let token = crate::auth::cookie(&parts.headers, crate::auth::SESSION_COOKIE).ok_or_else(|| {
            unauthorized("sign in to your library with the link we email you (POST /api/v1/library/login)")
        })?;
        let row: Option<(String, String, String)> = app
            .db
            .fetch_optional(sql!(
                "SELECT u.id, u.email, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2",
                hash_secret(&token),
                now()
            ))
            .await?;
        let (user_id, email, csrf_token) =
            row.ok_or_else(|| unauthorized("your session has ended; ask for a new sign-in link"))?;
        Ok(BuyerAuth {
            user_id,
            email,
            csrf_token,
        })
    }
}

/// Emails a sign-in link if `email` has bought anything here. Always succeeds the same way.
pub async fn request_link(app: &App, email: &str) -> ApiResult<()> {
    let email = crate::accounts::normalize_email(email)?;
    let bought = app
        .db
        .fetch_optional::<(String,)>(sql!(
            "SELECT seller_id FROM orders WHERE email = $1 AND status IN ('paid', 'partially_refunded', 'refunded') ORDER BY id DESC LIMIT 1",
            &email
        ))
        .await?;
    let Some((seller_id,)) = bought else { return Ok(()) };
    send_magic_link(
        app,
        &email,
        &seller_id,
        "library",
        &format!("{}/auth/magic", app.cfg.public_url()),
        "Sign in to your library",
    )
    .await
}

/// Mints a single-use link for `purpose` (stored as a hash), emails `{link_base}/{token}` in
/// the seller's brand, in one transaction with the outbox row.
pub async fn send_magic_link(
    app: &App,
    email: &str,
    seller_id: &str,
    purpose: &str,
    link_base: &str,
    heading: &str,
) -> ApiResult<()> {
    let token = random_token(32);
    let t = now();
    let tx = app.db.begin().await?;
    tx.execute(sql!(
        "INSERT INTO magic_links (token_hash, email, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        hash_secret(&token),
        email,
        purpose,
        t,
        t + MAGIC_LINK_MINUTES * 60
    ))
    .await?;
    let brand = crate::mail::Brand::of_seller(&tx, seller_id).await?;
    let url = format!("{link_base}/{token}");
    let (text, html) = crate::mail::render(
        app.cfg.email.templates_dir.as_deref(),
        &brand,
        "magic_link",
        heading,
        "Your sign-in link",
        &json!({"url": url, "minutes": MAGIC_LINK_MINUTES}),
    )?;
    crate::mail::queue(
        &tx,
        &crate::mail::Email {
            to: email.to_string(),
            subject: format!("Your sign-in link for {}", brand.store_name),
            text,
            html,
            kind: if purpose == "library" {
                "magic_link".into()
            } else {
                format!("magic_link_{purpose}")
            },
            seller_id: Some(seller_id.to_string()),
        },
    )
    .await?;
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(())
}

/// Consumes a library magic link (once, before it expires) into a buyer session; returns the Set-Cookie.
pub async fn consume_link(app: &App, token: &str) -> ApiResult<String> {
    consume_magic_link(app, token, "library", "buyer")
        .await
        .map(|(cookie, _)| cookie)
}

/// The email a magic link of `purpose` signs in, while it is unused and unexpired. Reads
/// only: the emailed link opens a page whose button consumes it, so that mail scanners and
/// link previews, which fetch links with GET or HEAD, do not spend the single use.
pub async fn magic_link_email(app: &App, token: &str, purpose: &str) -> ApiResult<String> {
    let row: Option<(String,)> = if token.len() > 100 {
        None
    } else {
        app.db
            .fetch_optional(sql!(
                "SELECT email FROM magic_links WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
                hash_secret(token),
                purpose,
                now()
            ))
            .await?
    };
    row.map(|(email,)| email).ok_or_else(link_gone)
}

fn link_gone() -> ApiError {
    unauthorized("this sign-in link was already used or has expired; ask for a new one")
}

/// Consumes a magic link of `purpose` into a session for its email (creating the user with
/// `role_if_new` the first time); returns `(Set-Cookie, email)`.
pub async fn consume_magic_link(
    app: &App,
    token: &str,
    purpose: &str,
    role_if_new: &str,
) -> ApiResult<(String, String)> {
    let t = now();
    let gone = link_gone;
    if token.len() > 100 {
        return Err(gone());
    }
    let tx = app.db.begin().await?;
    let row: Option<(String,)> = tx
        .fetch_optional(sql!(
            "UPDATE magic_links SET used_at = $2 WHERE token_hash = $1 AND purpose = $3 AND used_at IS NULL AND expires_at > $2 RETURNING email",
            hash_secret(token),
            t,
            purpose
        ))
        .await?;
    let (email,) = row.ok_or_else(gone)?;
    let user_id = match crate::accounts::find_user(&tx, &email).await? {
        Some(u) => u.id,
        None => {
            let id = new_id("usr");
            tx.execute(sql!(
                "INSERT INTO users (id, email, role, created_at) VALUES ($1, $2, $3, $4)",
                &id,
                &email,
                role_if_new,
                t
            ))
            .await?;
            id
        }
    };
    tx.execute(sql!("UPDATE users SET last_login_at = $2 WHERE id = $1", &user_id, t))
        .await?;
    tx.commit().await?;
    let (cookie, _csrf) = crate::auth::create_session(app, &user_id).await?;
    Ok((cookie, email))
}

/// Ends the session behind `token` (sign out) and returns a Set-Cookie that clears it.
pub async fn sign_out(app: &App, token: Option<&str>) -> ApiResult<String> {
    crate::auth::logout(app, token).await?;
    Ok(format!(
        "{}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
        crate::auth::SESSION_COOKIE
    ))
}

/// Frees one of the buyer's device seats through the licensing code (404 for a device of
/// another buyer's license; 409 for single-use keys, which are spent by their activation).
pub async fn deactivate_device(app: &App, buyer: &BuyerAuth, activation_id: &str) -> ApiResult<Value> {
    let row: Option<(String,)> = app
        .db
        .fetch_optional(sql!(
            "SELECT l.license_key FROM license_activations a JOIN license_keys l ON l.id = a.license_id
             WHERE a.id = $1 AND l.email = $2 AND a.deactivated_at IS NULL",
            activation_id,
            &buyer.email
        ))
        .await?;
    let (key,) = row.ok_or_else(|| crate::error::not_found("device"))?;
    crate::licensing::deactivate(
        app,
        &key,
        &crate::licensing::DeactivateRequest {
            activation_id: Some(activation_id.to_string()),
            device_fingerprint: None,
        },
    )
    .await
}

#[derive(sqlx::FromRow)]
struct Purchase {
    order_id: String,
    item_id: String,
    product_id: String,
    title: String,
    paid_at: Option<i64>,
    order_status: String,
    item_status: String,
}

/// Everything the buyer bought: `{items, next_cursor}`.
pub async fn list(app: &App, buyer: &BuyerAuth) -> ApiResult<Value> {
    let purchases: Vec<Purchase> = app
        .db
        .fetch_all(sql!(
            "SELECT o.id AS order_id, i.id AS item_id, i.product_id, i.title, o.paid_at, o.status AS order_status, i.status AS item_status
             FROM orders o JOIN order_items i ON i.order_id = o.id
             WHERE o.email = $1 AND o.status IN ('paid', 'partially_refunded', 'refunded', 'disputed') ORDER BY o.id DESC, i.id",
            &buyer.email
        ))
        .await?;
    let base = app.cfg.public_url();
    let reviews = crate::reviews::by_buyer(&app.db, &buyer.email).await?;
    let mut items = Vec::new();
    let mut invoices: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for p in purchases {
        if !invoices.contains_key(&p.order_id) {
            let url = crate::invoices::invoice_of_order(&app.db, &p.order_id)
                .await?
                .map(|i| crate::invoices::url(app, &i.id));
            invoices.insert(p.order_id.clone(), url);
        }
        let product = crate::catalog::find_product(&app.db, &p.product_id).await?;
        let version = match &product {
            Some(prod) => crate::catalog::current_version(&app.db, prod).await?,
            None => None,
        };
        let grant: Option<(String, i64, i64, i64, String)> = app
            .db
            .fetch_optional(sql!(
                "SELECT id, max_downloads, remaining, expires_at, status FROM download_grants WHERE order_item_id = $1",
                &p.item_id
            ))
            .await?;
        let last_download = match &grant {
            Some(g) => {
                app.db
                    .fetch_i64(sql!(
                        // The newest event heads the grant's list (crate::delivery::events).
                        "SELECT CAST(COALESCE(MAX(e.at), 0) AS BIGINT)
                         FROM download_grants g JOIN download_events e ON e.id = g.last_event_id WHERE g.id = $1",
                        &g.0
                    ))
                    .await?
            }
            None => 0,
        };
        let seen = last_download.max(p.paid_at.unwrap_or(0));
        let licenses: Vec<(String, String, String, Option<i64>, i64, String)> = app
            .db
            .fetch_all(sql!(
                "SELECT id, license_key, status, max_activations, activations, license_type FROM license_keys WHERE order_item_id = $1 ORDER BY id",
                &p.item_id
            ))
            .await?;
        let mut license_json = Vec::new();
        for (lid, key, status, max, count, license_type) in licenses {
            let devices: Vec<(String, String, i64, i64, String)> = app
                .db
                .fetch_all(sql!(
                    "SELECT id, label, created_at, last_check_in_at, fingerprint FROM license_activations WHERE license_id = $1 AND deactivated_at IS NULL ORDER BY id",
                    &lid
                ))
                .await?;
            license_json.push(json!({
                "id": lid, "key": key, "type": license_type, "status": status, "max_activations": max, "activations": count,
                "devices": devices.iter().map(|(id, label, at, seen, fp)| json!({
                    "activation_id": id, "label": label, "activated_at": at, "last_seen_at": seen,
                    "device_hint": fp.chars().take(8).collect::<String>(),
                    "can_deactivate": license_type != "single_use",
                })).collect::<Vec<_>>(),
            }));
        }
        let live = grant
            .as_ref()
            .is_some_and(|g| g.4 == "active" && g.3 > now() && g.2 > 0)
            && matches!(p.order_status.as_str(), "paid" | "partially_refunded");
        let can_review =
            matches!(p.order_status.as_str(), "paid" | "partially_refunded") && p.item_status != "refunded";
        items.push(json!({
            "order_id": p.order_id,
            "item_id": p.item_id,
            "order_status": p.order_status,
            "paid_at": p.paid_at,
            "invoice_url": invoices.get(&p.order_id).cloned().flatten(),
            "can_review": can_review,
            "review": reviews.get(&p.product_id).map(|r| {
                let mut v = r.public_json();
                v["display_name"] = json!(r.display_name);
                v["hidden_by_seller"] = json!(r.hidden);
                v
            }),
            "product": {"id": p.product_id, "title": p.title, "slug": product.as_ref().map(|x| x.slug.clone()),
                "cover_url": product.as_ref().and_then(|x| x.cover_key.as_ref().map(|_| format!("/media/products/{}/cover", x.id)))},
            "current_version": version.as_ref().map(|(v, files)| json!({
                "version": v.version, "published_at": v.created_at, "changelog_md": v.changelog_md,
                "files": files.iter().map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256})).collect::<Vec<_>>(),
            })),
            "updated": version.as_ref().is_some_and(|(v, _)| v.created_at > seen),
            "downloads": grant.as_ref().map(|g| json!({"max": g.1, "remaining": g.2, "expires_at": g.3, "status": g.4})),
            "download_url": grant.as_ref().filter(|_| live).map(|g| {
                format!("{base}/api/v1/downloads/{}", crate::delivery::sign(&app.keys, "d1", &[&g.0, &g.3.to_string()]))
            }),
            "licenses": license_json,
        }));
    }
    let at = now();
    let subscriptions: Vec<Value> = crate::subscriptions::for_buyer(&app.db, &buyer.email)
        .await?
        .iter()
        .map(|s| s.json(at))
        .collect();
    Ok(json!({
        "email": buyer.email, "csrf_token": buyer.csrf_token, "subscriptions": subscriptions,
        "items": items, "next_cursor": null,
    }))
}
