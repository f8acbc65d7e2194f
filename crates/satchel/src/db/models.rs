//! Row types. Each derives `sqlx::FromRow`, which makes it decodable from both backends.

use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Seller {
    pub id: String,
    pub name: String,
    pub store_name: String,
    pub accent_color: String,
    pub support_email: Option<String>,
    pub status: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: Option<String>,
    pub role: String,
    pub seller_id: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Product {
    pub id: String,
    pub seller_id: String,
    pub slug: String,
    pub title: String,
    pub summary: String,
    pub description_md: String,
    pub price: i64,
    pub currency: String,
    pub kind: String,
    pub billing_interval: Option<String>,
    pub pwyw_min: Option<i64>,
    pub category: String,
    pub tags: String,
    pub license_policy: String,
    pub download_policy: String,
    pub watermark_policy: String,
    pub status: String,
    pub featured: bool,
    pub cover_key: Option<String>,
    pub current_version_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Columns of [`Product`], for `SELECT {PRODUCT_COLS} FROM products p`.
pub const PRODUCT_COLS: &str = "p.id, p.seller_id, p.slug, p.title, p.summary, p.description_md, p.price, p.currency, p.kind, \
    p.billing_interval, p.pwyw_min, p.category, p.tags, p.license_policy, p.download_policy, p.watermark_policy, p.status, \
    p.featured, p.cover_key, p.current_version_id, p.created_at, p.updated_at";

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ProductVersion {
    pub id: String,
    pub product_id: String,
    pub version: String,
    pub changelog_md: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct FileRow {
    pub id: String,
    pub product_id: String,
    pub version_id: String,
    pub name: String,
    pub object_key: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub created_at: i64,
}
