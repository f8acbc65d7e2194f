//! Publishing a product version: files stored under
//! `{seller}/{product}/{version}/original/{name}` with size and sha256, the version made
//! current, and — in the same transaction — one email to every buyer of the product and a
//! `product.version_published` event. Buyers' libraries show the purchase as "updated".
//!
//! The keys are named after the version string and written before the version row exists,
//! so every publish first takes a [`Claim`] on (product, version segment): while one publish
//! stores its bytes, another of the same version is refused (409 `version_in_progress`)
//! rather than overwriting them, or deleting them when it fails.

use serde_json::json;

use crate::app::App;
use crate::catalog::{self, NewFile};
use crate::db::models::{Product, ProductVersion};
use crate::db::{Db, Exec, Tx};
use crate::error::{conflict, unprocessable, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

/// Checks a version string: 1–64 printable characters.
pub fn validate_version(v: &str) -> ApiResult<String> {
    let v = v.trim();
    if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
        return Err(unprocessable(
            "invalid_version",
            "version must be 1–64 printable characters, like 1.2.0",
        )
        .field("version"));
    }
    Ok(v.to_string())
}

/// 409 when the product already has this version (checked before any file is copied).
async fn ensure_new_version(e: &impl Exec, product_id: &str, version: &str) -> ApiResult<()> {
    let existing: Vec<(String,)> = e
        .fetch_all(sql!(
            "SELECT version FROM product_versions WHERE product_id = $1",
            product_id
        ))
        .await?;
    let segment = crate::catalog::version_segment(version);
    if let Some((taken,)) = existing
        .iter()
        .find(|(v,)| v == version || crate::catalog::version_segment(v) == segment)
    {
        let message = if taken == version {
            format!("version {version:?} already exists for this product")
        } else {
            format!("version {version:?} would share its files with version {taken:?}; choose another version string")
        };
        return Err(crate::error::conflict("version_exists", message).field("version"));
    }
    Ok(())
}

/// A claim older than this is a publish whose process died mid-upload: another may take it.
pub const CLAIM_STALE_SECS: i64 = 12 * 3600;

/// The right to store a version's files: held from before the first byte is stored until
/// the version is published ([`Claim::settle`], in the publishing transaction) or given up
/// ([`Claim::release`]).
#[derive(Debug)]
pub struct Claim {
    product_id: String,
    segment: String,
    token: String,
}

/// Claims `version` of a product for one publish: 409 `version_exists` when the product has
/// it (or a version stored under the same segment), 409 `version_in_progress` while another
/// publish of it is storing its files.
pub async fn claim_version(db: &Db, product_id: &str, version: &str) -> ApiResult<Claim> {
    ensure_new_version(db, product_id, version).await?;
    let claim = Claim {
        product_id: product_id.to_string(),
        segment: crate::catalog::version_segment(version),
        token: new_id("vcl"),
    };
    let t = now();
    let taken = db
        .execute(sql!(
            "INSERT INTO version_claims (product_id, segment, token, claimed_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (product_id, segment) DO UPDATE SET token = excluded.token, claimed_at = excluded.claimed_at
             WHERE version_claims.claimed_at < $5",
            &claim.product_id,
            &claim.segment,
            &claim.token,
            t,
            t - CLAIM_STALE_SECS
        ))
        .await?;
    if taken == 0 {
        return Err(conflict(
            "version_in_progress",
            format!("version {version:?} is being published by another request; wait for it to finish, then reload"),
        )
        .field("version"));
    }
    // Published between the check above and the claim (its claim settled with it): the
    // version row is committed by now, so this check sees it.
    if let Err(e) = ensure_new_version(db, product_id, version).await {
        claim.release(db).await;
        return Err(e);
    }
    Ok(claim)
}

impl Claim {
    /// Removes this claim (and no later one that took it over when it went stale).
    fn end(&self) -> crate::db::Query {
        sql!(
            "DELETE FROM version_claims WHERE product_id = $1 AND segment = $2 AND token = $3",
            &self.product_id,
            &self.segment,
            &self.token
        )
    }

    /// Ends the claim in the publishing transaction: from its commit the version row guards
    /// the keys.
    pub async fn settle(&self, tx: &Tx) -> ApiResult<()> {
        tx.execute(self.end()).await?;
        Ok(())
    }

    /// Gives the claim up (the publish failed); a failure is logged, and the claim then
    /// lapses after [`CLAIM_STALE_SECS`].
    pub async fn release(&self, db: &Db) {
        let r = db.execute(self.end()).await;
        if let Err(e) = r {
            tracing::warn!(product = %self.product_id, segment = %self.segment, error = %e, "version claim not released");
        }
    }
}

/// What a publish in progress holds: its version's [`Claim`] and the object keys it has
/// written. The handler ends it with [`PublishGuard::published`] after its commit or
/// [`PublishGuard::give_up`] on an error; if its future is dropped before either (a panic
/// unwinding, a shutdown closing the connection mid-upload), dropping the guard gives both up
/// on a task of their own, so the version is not held until the claim goes stale.
pub struct PublishGuard {
    app: App,
    pub claim: Option<Claim>,
    pub stored: Vec<String>,
}

impl PublishGuard {
    pub fn new(app: &App) -> Self {
        PublishGuard {
            app: app.clone(),
            claim: None,
            stored: Vec::new(),
        }
    }

    /// The version is committed: its row guards the keys now, which stay.
    pub fn published(&mut self) {
        self.claim = None;
        self.stored.clear();
    }

    /// Nothing was published: removes the keys written, then ends the claim (in that order:
    /// while the claim holds, no other publish writes these keys).
    pub async fn give_up(&mut self) {
        let (stored, claim) = (std::mem::take(&mut self.stored), self.claim.take());
        abandon(&self.app, stored, claim).await;
    }
}

async fn abandon(app: &App, stored: Vec<String>, claim: Option<Claim>) {
    for key in &stored {
        if let Err(e) = app.storage.delete(key).await {
            tracing::warn!(key, error = %e, "could not remove an unpublished file");
        }
    }
    if let Some(claim) = claim {
        claim.release(&app.db).await;
    }
}

impl Drop for PublishGuard {
    fn drop(&mut self) {
        if self.claim.is_none() && self.stored.is_empty() {
            return;
        }
        let (app, stored, claim) = (self.app.clone(), std::mem::take(&mut self.stored), self.claim.take());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { abandon(&app, stored, claim).await });
            }
            Err(_) => tracing::warn!("a dropped publish could not give its version up; its claim lapses when stale"),
        }
    }
}

/// Inserts the version (409 on a duplicate), makes it current, and notifies every buyer.
pub async fn publish(
    app: &App,
    tx: &Tx,
    product: &Product,
    version: &str,
    changelog: &str,
    files: &[NewFile],
) -> ApiResult<ProductVersion> {
    if files.is_empty() {
        return Err(unprocessable("no_files", "a version needs at least one file").field("files"));
    }
    let v = catalog::insert_version(tx, &product.id, version, changelog, files).await?;
    let buyers: Vec<(String,)> = tx
        .fetch_all(sql!(
            "SELECT DISTINCT o.email FROM orders o JOIN order_items i ON i.order_id = o.id
             WHERE i.product_id = $1 AND o.status IN ('paid', 'partially_refunded') AND i.status <> 'refunded'
             ORDER BY o.email",
            &product.id
        ))
        .await?;
    let brand = crate::mail::Brand::of_seller(tx, &product.seller_id).await?;
    let library_url = format!("{}/library", app.cfg.public_url());
    let ctx = json!({
        "product": product.title, "version": version, "changelog": changelog,
        "changelog_html": crate::markdown::to_html(changelog), "library_url": library_url,
    });
    let (text, html) = crate::mail::render(
        app.cfg.email.templates_dir.as_deref(),
        &brand,
        "new_version",
        &format!("{} {version} is out", product.title),
        "A new version is ready in your library",
        &ctx,
    )?;
    for (email,) in &buyers {
        crate::mail::queue(
            tx,
            &crate::mail::Email {
                to: email.clone(),
                subject: format!("{} {version} is out", product.title),
                text: text.clone(),
                html: html.clone(),
                kind: "new_version".into(),
                seller_id: Some(product.seller_id.clone()),
            },
        )
        .await?;
    }
    tx.execute(sql!(
        "INSERT INTO domain_events (id, seller_id, event_type, subject_id, payload, created_at) VALUES ($1, $2, 'product.version_published', $3, $4, $5)",
        new_id("evt"),
        &product.seller_id,
        &product.id,
        json!({"product_id": product.id, "version": version, "version_id": v.id, "buyers_notified": buyers.len()}).to_string(),
        now()
    ))
    .await?;
    Ok(v)
}
