//! The buyer's library: sign in by emailed magic link, then every purchase in one place.
//!
//! Magic links are single-use and live 15 minutes; the database keeps only their sha256.
//! Asking for one answers the same whether or not the email ever bought anything. A
//! purchase shows the product's current version with its files (size, sha256), downloads
//! left, a download link, license keys with their devices, and `updated` when a version was
//! published after the buyer's last download.

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
}

impl axum::extract::FromRequestParts<App> for BuyerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Self, ApiError> {
        let token = crate::auth::cookie(&parts.headers, crate::auth::SESSION_COOKIE).ok_or_else(|| {
            unauthorized("sign in to your library with the link we email you (POST /api/v1/library/login)")
        })?;
        let row: Option<(String, String)> = app
            .db
            .fetch_optional(sql!(
                "SELECT u.id, u.email FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2",
                hash_secret(&token),
                now()
            ))
            .await?;
        let (user_id, email) = row.ok_or_else(|| unauthorized("your session has ended; ask for a new sign-in link"))?;
        Ok(BuyerAuth { user_id, email })
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
    let token = random_token(32);
    let t = now();
    let tx = app.db.begin().await?;
    tx.execute(sql!(
        "INSERT INTO magic_links (token_hash, email, purpose, created_at, expires_at) VALUES ($1, $2, 'library', $3, $4)",
        hash_secret(&token),
        &email,
        t,
        t + MAGIC_LINK_MINUTES * 60
    ))
    .await?;
    let brand = crate::mail::Brand::of_seller(&tx, &seller_id).await?;
    let url = format!("{}/auth/magic/{token}", app.cfg.public_url());
    let (text, html) = crate::mail::render(
        app.cfg.email.templates_dir.as_deref(),
        &brand,
        "magic_link",
        "Sign in to your library",
        "Your sign-in link",
        &json!({"url": url, "minutes": MAGIC_LINK_MINUTES}),
    )?;
    crate::mail::queue(
        &tx,
        &crate::mail::Email {
            to: email,
            subject: format!("Your sign-in link for {}", brand.store_name),
            text,
            html,
            kind: "magic_link".into(),
            seller_id: Some(seller_id),
        },
    )
    .await?;
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(())
}

/// Consumes a magic link (once, before it expires) into a buyer session; returns the Set-Cookie.
pub async fn consume_link(app: &App, token: &str) -> ApiResult<String> {
    let t = now();
    let gone = || unauthorized("this sign-in link was already used or has expired; ask for a new one");
    if token.len() > 100 {
        return Err(gone());
    }
    let tx = app.db.begin().await?;
    let row: Option<(String,)> = tx
        .fetch_optional(sql!(
            "UPDATE magic_links SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING email",
            hash_secret(token),
            t
        ))
        .await?;
    let (email,) = row.ok_or_else(gone)?;
    let user_id = match crate::accounts::find_user(&tx, &email).await? {
        Some(u) => u.id,
        None => {
            let id = new_id("usr");
            tx.execute(sql!(
                "INSERT INTO users (id, email, role, created_at) VALUES ($1, $2, 'buyer', $3)",
                &id,
                &email,
                t
            ))
            .await?;
            id
        }
    };
    tx.commit().await?;
    let (cookie, _csrf) = crate::auth::create_session(app, &user_id).await?;
    Ok(cookie)
}

#[derive(sqlx::FromRow)]
struct Purchase {
    order_id: String,
    item_id: String,
    product_id: String,
    title: String,
    paid_at: Option<i64>,
    order_status: String,
}

/// Everything the buyer bought: `{items, next_cursor}`.
pub async fn list(app: &App, buyer: &BuyerAuth) -> ApiResult<Value> {
    let purchases: Vec<Purchase> = app
        .db
        .fetch_all(sql!(
            "SELECT o.id AS order_id, i.id AS item_id, i.product_id, i.title, o.paid_at, o.status AS order_status
             FROM orders o JOIN order_items i ON i.order_id = o.id
             WHERE o.email = $1 AND o.status IN ('paid', 'partially_refunded', 'refunded', 'disputed') ORDER BY o.id DESC, i.id",
            &buyer.email
        ))
        .await?;
    let base = app.cfg.public_url();
    let mut items = Vec::new();
    for p in purchases {
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
                        "SELECT CAST(COALESCE(MAX(at), 0) AS BIGINT) FROM download_events WHERE grant_id = $1",
                        &g.0
                    ))
                    .await?
            }
            None => 0,
        };
        let seen = last_download.max(p.paid_at.unwrap_or(0));
        let licenses: Vec<(String, String, String, Option<i64>, i64)> = app
            .db
            .fetch_all(sql!(
                "SELECT id, license_key, status, max_activations, activations FROM license_keys WHERE order_item_id = $1 ORDER BY id",
                &p.item_id
            ))
            .await?;
        let mut license_json = Vec::new();
        for (lid, key, status, max, count) in licenses {
            let devices: Vec<(String, String, i64, i64)> = app
                .db
                .fetch_all(sql!(
                    "SELECT id, label, created_at, last_check_in_at FROM license_activations WHERE license_id = $1 AND deactivated_at IS NULL ORDER BY id",
                    &lid
                ))
                .await?;
            license_json.push(json!({
                "key": key, "status": status, "max_activations": max, "activations": count,
                "devices": devices.iter().map(|(id, label, at, seen)| json!({"activation_id": id, "label": label, "activated_at": at, "last_seen_at": seen})).collect::<Vec<_>>(),
            }));
        }
        let live = grant
            .as_ref()
            .is_some_and(|g| g.4 == "active" && g.3 > now() && g.2 > 0)
            && matches!(p.order_status.as_str(), "paid" | "partially_refunded");
        items.push(json!({
            "order_id": p.order_id,
            "product": {"id": p.product_id, "title": p.title, "slug": product.as_ref().map(|x| x.slug.clone())},
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
    Ok(json!({"email": buyer.email, "items": items, "next_cursor": null}))
}
