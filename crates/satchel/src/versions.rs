//! Publishing a product version: files stored under
//! `{seller}/{product}/{version}/original/{name}` with size and sha256, the version made
//! current, and — in the same transaction — one email to every buyer of the product and a
//! `product.version_published` event. Buyers' libraries show the purchase as "updated".

use serde_json::json;

use crate::app::App;
use crate::catalog::{self, NewFile};
use crate::db::models::{Product, ProductVersion};
use crate::db::{Exec, Tx};
use crate::error::{unprocessable, ApiResult};
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
pub async fn ensure_new_version(e: &impl Exec, product_id: &str, version: &str) -> ApiResult<()> {
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
