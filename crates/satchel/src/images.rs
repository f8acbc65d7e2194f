//! Preview images of products: PNG, JPEG, WebP or GIF (recognised by their first bytes, not by
//! what the client claims), decoded once with size limits to read their dimensions and make a
//! thumbnail (480 px wide; JPEG, or PNG when the image has transparency), both stored in
//! object storage under `{seller}/{product}/images/`. Images keep the order they were added
//! in; the first one becomes the product's cover when it has none. Served at stable URLs
//! `/media/products/{product}/images/{image}` and `…/thumb`.

use bytes::Bytes;
use serde::Serialize;

use crate::app::App;
use crate::db::models::Product;
use crate::db::Exec;
use crate::error::{not_found, unprocessable, ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

/// Thumbnail width in pixels.
pub const THUMB_WIDTH: u32 = 480;
/// Most images per product.
pub const MAX_IMAGES: i64 = 20;
/// Largest width or height accepted (decoding bombs stop here).
const MAX_DIMENSION: u32 = 12_000;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImageRow {
    pub id: String,
    pub product_id: String,
    pub position: i64,
    pub object_key: String,
    pub content_type: String,
    pub size: i64,
    pub width: i64,
    pub height: i64,
    pub thumb_key: String,
    pub thumb_content_type: String,
    pub thumb_width: i64,
    pub thumb_height: i64,
    pub created_at: i64,
}

const IMAGE_COLS: &str = "id, product_id, position, object_key, content_type, size, width, height, thumb_key, \
    thumb_content_type, thumb_width, thumb_height, created_at";

/// What pages and the API show of an image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub id: String,
    pub url: String,
    pub thumb_url: String,
    pub width: i64,
    pub height: i64,
    pub thumb_width: i64,
    pub thumb_height: i64,
    pub content_type: String,
}

impl ImageRow {
    pub fn view(&self) -> ImageView {
        let url = format!("/media/products/{}/images/{}", self.product_id, self.id);
        ImageView {
            thumb_url: format!("{url}/thumb"),
            url,
            id: self.id.clone(),
            width: self.width,
            height: self.height,
            thumb_width: self.thumb_width,
            thumb_height: self.thumb_height,
            content_type: self.content_type.clone(),
        }
    }
}

/// The format of an image by its magic bytes: (media type, extension, decoder format).
pub fn sniff(b: &[u8]) -> Option<(&'static str, &'static str, image::ImageFormat)> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", "png", image::ImageFormat::Png))
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", "jpg", image::ImageFormat::Jpeg))
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some(("image/gif", "gif", image::ImageFormat::Gif))
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(("image/webp", "webp", image::ImageFormat::WebP))
    } else {
        None
    }
}

struct Decoded {
    width: u32,
    height: u32,
    thumb: Vec<u8>,
    thumb_type: &'static str,
    thumb_ext: &'static str,
    thumb_width: u32,
    thumb_height: u32,
}

fn invalid_image(msg: impl Into<String>) -> ApiError {
    unprocessable("invalid_image", msg).field("image")
}

/// Decodes (with limits) and makes the thumbnail. CPU work: run on a blocking thread.
fn decode(bytes: &[u8], format: image::ImageFormat) -> ApiResult<Decoded> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| {
        invalid_image(format!(
            "the image cannot be read ({e}); send a valid PNG, JPEG, WebP or GIF"
        ))
    })?;
    let (width, height) = (img.width(), img.height());
    let thumb = if width > THUMB_WIDTH {
        img.resize(THUMB_WIDTH, u32::MAX, image::imageops::FilterType::Triangle)
    } else {
        img.clone()
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let (thumb_type, thumb_ext) = if thumb.color().has_alpha() {
        thumb
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("thumbnail: {e}")))?;
        ("image/png", "png")
    } else {
        let rgb = thumb.to_rgb8();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82)
            .encode_image(&rgb)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("thumbnail: {e}")))?;
        ("image/jpeg", "jpg")
    };
    Ok(Decoded {
        width,
        height,
        thumb_width: thumb.width(),
        thumb_height: thumb.height(),
        thumb: out.into_inner(),
        thumb_type,
        thumb_ext,
    })
}

pub async fn list(e: &impl Exec, product_id: &str) -> Result<Vec<ImageRow>, crate::db::DbError> {
    e.fetch_all(sql!(
        format!("SELECT {IMAGE_COLS} FROM product_images WHERE product_id = $1 ORDER BY position, id"),
        product_id
    ))
    .await
}

/// Views of a product's images, in order.
pub async fn views(e: &impl Exec, product_id: &str) -> Result<Vec<ImageView>, crate::db::DbError> {
    Ok(list(e, product_id).await?.iter().map(ImageRow::view).collect())
}

pub async fn find(e: &impl Exec, product_id: &str, image_id: &str) -> Result<Option<ImageRow>, crate::db::DbError> {
    e.fetch_optional(sql!(
        format!("SELECT {IMAGE_COLS} FROM product_images WHERE product_id = $1 AND id = $2"),
        product_id,
        image_id
    ))
    .await
}

/// Adds an image (already read, at most the configured size) to a product; stores the
/// original and its thumbnail, appends it to the order, and makes it the cover if none.
pub async fn add(app: &App, product: &Product, bytes: Bytes) -> ApiResult<ImageRow> {
    let (content_type, ext, format) = sniff(&bytes).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
            "preview images must be PNG, JPEG, WebP or GIF files",
        )
        .field("image")
    })?;
    let count = app
        .db
        .fetch_i64(sql!(
            "SELECT COUNT(*) FROM product_images WHERE product_id = $1",
            &product.id
        ))
        .await?;
    if count >= MAX_IMAGES {
        return Err(crate::error::conflict(
            "too_many_images",
            format!("a product has at most {MAX_IMAGES} images; delete one first"),
        ));
    }
    let data = bytes.clone();
    let d = tokio::task::spawn_blocking(move || decode(&data, format))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("decoder task: {e}")))??;
    let id = new_id("img");
    let dir = format!("{}/{}/images", product.seller_id, product.id);
    let key = format!("{dir}/{id}.{ext}");
    let thumb_key = format!("{dir}/{id}-thumb.{}", d.thumb_ext);
    let size = i64::try_from(bytes.len())?;
    app.storage
        .put(&key, crate::storage::bytes_stream(bytes), content_type)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    app.storage
        .put(&thumb_key, crate::storage::bytes_stream(d.thumb), d.thumb_type)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let tx = app.db.begin().await?;
    let position = tx
        .fetch_i64(sql!(
            "SELECT CAST(COALESCE(MAX(position), 0) + 1 AS BIGINT) FROM product_images WHERE product_id = $1",
            &product.id
        ))
        .await?;
    tx.execute(sql!(
        format!(
            "INSERT INTO product_images ({IMAGE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ),
        &id,
        &product.id,
        position,
        &key,
        content_type,
        size,
        i64::from(d.width),
        i64::from(d.height),
        &thumb_key,
        d.thumb_type,
        i64::from(d.thumb_width),
        i64::from(d.thumb_height),
        now()
    ))
    .await?;
    tx.execute(sql!(
        "UPDATE products SET cover_key = $2, updated_at = $3 WHERE id = $1 AND cover_key IS NULL",
        &product.id,
        &key,
        now()
    ))
    .await?;
    tx.commit().await?;
    find(&app.db, &product.id, &id).await?.ok_or_else(|| not_found("image"))
}

/// Deletes an image and its files; a cover that was this image moves to the next one.
pub async fn delete(app: &App, product: &Product, image_id: &str) -> ApiResult<()> {
    let img = find(&app.db, &product.id, image_id)
        .await?
        .ok_or_else(|| not_found("image"))?;
    let tx = app.db.begin().await?;
    tx.execute(sql!("DELETE FROM product_images WHERE id = $1", &img.id))
        .await?;
    tx.execute(sql!(
        "UPDATE products SET cover_key = (SELECT object_key FROM product_images WHERE product_id = $1 ORDER BY position, id LIMIT 1),
            updated_at = $3
         WHERE id = $1 AND cover_key = $2",
        &product.id,
        &img.object_key,
        now()
    ))
    .await?;
    tx.commit().await?;
    for k in [&img.object_key, &img.thumb_key] {
        if let Err(e) = app.storage.delete(k).await {
            tracing::warn!(image = %img.id, error = %e, "could not delete an image file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest").map(|s| s.0), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]).map(|s| s.0), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a....").map(|s| s.0), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 ").map(|s| s.0), Some("image/webp"));
        assert!(sniff(b"<svg xmlns=").is_none());
        assert!(sniff(b"%PDF-1.7").is_none());
    }
}
