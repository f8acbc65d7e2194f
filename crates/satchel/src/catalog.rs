//! Catalog: products, their policies, versions and files; the public listing and search.
//!
//! Listing order is newest first by id (ids are time-ordered), paged by cursor = the last
//! id seen, so every page is an index range scan (`(status, id)`), however deep. Search is
//! the one dialect split: SQLite FTS5 `MATCH` vs PostgreSQL `tsvector @@ to_tsquery`, both
//! fed the same sanitized prefix terms. On SQLite a search walks the FTS index newest first
//! (rowid order, which is insertion order) joined to products, so a common word costs one
//! page of matches, not all of them; its cursor is translated to that rowid.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::db::models::{FileRow, Product, ProductVersion, PRODUCT_COLS};
use crate::db::{Backend, Exec, Query};
use crate::error::{unprocessable, ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

/// License policy of a product (DESIGN §3 "Licenses").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LicensePolicy {
    None,
    Perpetual {
        max_activations: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term_days: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_prefix: Option<String>,
    },
    Subscription {
        #[serde(default = "default_check_in")]
        check_in_hours: i64,
        #[serde(default = "default_grace")]
        grace_days: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_prefix: Option<String>,
    },
    SingleUse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term_days: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_prefix: Option<String>,
    },
}

fn default_check_in() -> i64 {
    24
}
fn default_grace() -> i64 {
    7
}

/// Download policy of a product (DESIGN §3 "Download").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadPolicy {
    #[serde(default = "default_max_downloads")]
    pub max_downloads: i64,
    #[serde(default = "default_link_days")]
    pub link_days: i64,
    /// `none` | `bind_first` (bound to the first /24 or /64 used) | `allow_list`.
    #[serde(default = "default_ip_policy")]
    pub ip_policy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
}

fn default_max_downloads() -> i64 {
    5
}
fn default_link_days() -> i64 {
    30
}
fn default_ip_policy() -> String {
    "none".into()
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        Self {
            max_downloads: 5,
            link_days: 30,
            ip_policy: "none".into(),
            ip_allow: Vec::new(),
        }
    }
}

/// ISO 4217 codes we accept, with their minor-unit exponent.
pub const CURRENCIES: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("NZD", 2),
    ("CHF", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("CZK", 2),
    ("HUF", 2),
    ("RON", 2),
    ("BGN", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("CNY", 2),
    ("HKD", 2),
    ("SGD", 2),
    ("INR", 2),
    ("BRL", 2),
    ("MXN", 2),
    ("ZAR", 2),
    ("TRY", 2),
    ("ILS", 2),
    ("AED", 2),
    ("THB", 2),
    ("MYR", 2),
    ("PHP", 2),
    ("IDR", 2),
    ("CLP", 0),
    ("COP", 2),
    ("ARS", 2),
    ("NGN", 2),
    ("KES", 2),
];

pub fn currency_exponent(code: &str) -> Option<u32> {
    CURRENCIES.iter().find(|(c, _)| *c == code).map(|(_, e)| *e)
}

/// Formats minor units for people: `4900 USD` → `$49.00`.
pub fn format_money(amount: i64, currency: &str) -> String {
    let exp = currency_exponent(currency).unwrap_or(2);
    let symbol = match currency {
        "USD" | "CAD" | "AUD" | "NZD" | "SGD" | "HKD" | "MXN" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" | "CNY" => "¥",
        "INR" => "₹",
        _ => "",
    };
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    let body = if exp == 0 {
        abs.to_string()
    } else {
        let div = 10u64.pow(exp);
        format!("{}.{:0width$}", abs / div, abs % div, width = exp as usize)
    };
    if symbol.is_empty() {
        format!("{sign}{body} {currency}")
    } else {
        format!("{sign}{symbol}{body}")
    }
}

/// What a seller sends to create a product.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub title: String,
    pub slug: Option<String>,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub description: String,
    pub price: i64,
    pub currency: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    pub billing_interval: Option<String>,
    pub pwyw_min: Option<i64>,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "default_license")]
    pub license_policy: LicensePolicy,
    #[serde(default)]
    pub download_policy: DownloadPolicy,
    #[serde(default = "default_watermark")]
    pub watermark_policy: String,
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default)]
    pub featured: bool,
    /// Product ids a bundle contains.
    #[serde(default)]
    pub bundle_products: Vec<String>,
}

fn default_kind() -> String {
    "one_time".into()
}
fn default_license() -> LicensePolicy {
    LicensePolicy::None
}
fn default_watermark() -> String {
    "none".into()
}
fn default_status() -> String {
    "draft".into()
}

pub fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(80).collect()
}

fn validate_slug(slug: &str) -> ApiResult<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 80
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.starts_with("prd_");
    if ok {
        Ok(())
    } else {
        Err(unprocessable("invalid_slug", "slug must be 1–80 characters of a-z, 0-9 and '-'").field("slug"))
    }
}

impl NewProduct {
    /// Checks every field; the error names the field.
    pub fn validate(&mut self) -> ApiResult<()> {
        self.title = self.title.trim().to_string();
        if self.title.is_empty() || self.title.chars().count() > 200 {
            return Err(unprocessable("invalid_title", "title must be 1–200 characters").field("title"));
        }
        let slug = self.slug.clone().unwrap_or_else(|| slugify(&self.title));
        validate_slug(&slug)?;
        self.slug = Some(slug);
        if self.price < 0 {
            return Err(unprocessable(
                "invalid_price",
                "price is in minor units (cents) and cannot be negative",
            )
            .field("price"));
        }
        self.currency = self.currency.trim().to_ascii_uppercase();
        if currency_exponent(&self.currency).is_none() {
            return Err(unprocessable(
                "invalid_currency",
                format!("{:?} is not a supported ISO 4217 currency code", self.currency),
            )
            .field("currency"));
        }
        match self.kind.as_str() {
            "one_time" | "bundle" => self.billing_interval = None,
            "subscription" => match self.billing_interval.as_deref() {
                Some("day" | "week" | "month" | "year") => {}
                None => self.billing_interval = Some("month".into()),
                Some(_) => {
                    return Err(
                        unprocessable("invalid_interval", "billing_interval must be day, week, month or year")
                            .field("billing_interval"),
                    )
                }
            },
            _ => {
                return Err(
                    unprocessable("invalid_kind", "kind must be one_time, subscription or bundle").field("kind"),
                )
            }
        }
        if let Some(min) = self.pwyw_min {
            if min < 0 || min > self.price.max(min) {
                return Err(
                    unprocessable("invalid_pwyw_min", "pay-what-you-want minimum must be ≥ 0").field("pwyw_min"),
                );
            }
        }
        let key_prefix = match &self.license_policy {
            LicensePolicy::Perpetual { key_prefix, .. }
            | LicensePolicy::Subscription { key_prefix, .. }
            | LicensePolicy::SingleUse { key_prefix, .. } => key_prefix.as_deref(),
            LicensePolicy::None => None,
        };
        if key_prefix.is_some_and(|p| p.is_empty() || !satchel_license::is_valid_prefix(p)) {
            return Err(unprocessable(
                "invalid_license_policy",
                "key_prefix must be 1–8 letters or digits (it leads every key: PREFIX-XXXX-…)",
            )
            .field("license_policy"));
        }
        match &self.license_policy {
            LicensePolicy::Perpetual { max_activations, .. } if !(1..=10_000).contains(max_activations) => {
                return Err(
                    unprocessable("invalid_license_policy", "max_activations must be 1–10000").field("license_policy"),
                );
            }
            LicensePolicy::Subscription {
                check_in_hours,
                grace_days,
                ..
            } if *check_in_hours < 1 || *grace_days < 0 => {
                return Err(
                    unprocessable("invalid_license_policy", "check_in_hours ≥ 1 and grace_days ≥ 0")
                        .field("license_policy"),
                );
            }
            _ => {}
        }
        let dp = &self.download_policy;
        if dp.max_downloads < 1
            || dp.link_days < 1
            || !matches!(dp.ip_policy.as_str(), "none" | "bind_first" | "allow_list")
        {
            return Err(unprocessable(
                "invalid_download_policy",
                "max_downloads ≥ 1, link_days ≥ 1, ip_policy none|bind_first|allow_list",
            )
            .field("download_policy"));
        }
        if !matches!(self.watermark_policy.as_str(), "none" | "stamp") {
            return Err(
                unprocessable("invalid_watermark_policy", "watermark_policy must be none or stamp")
                    .field("watermark_policy"),
            );
        }
        if !matches!(self.status.as_str(), "draft" | "published" | "archived") {
            return Err(unprocessable("invalid_status", "status must be draft, published or archived").field("status"));
        }
        self.tags = self
            .tags
            .iter()
            .map(|t| slugify(t))
            .filter(|t| !t.is_empty())
            .take(20)
            .collect();
        self.tags.dedup();
        Ok(())
    }
}

/// Creates a product for `seller_id` (validating first). Duplicate slug → 409 naming `slug`.
pub async fn create_product(e: &impl Exec, seller_id: &str, mut p: NewProduct) -> ApiResult<Product> {
    p.validate()?;
    let id = new_id("prd");
    let t = now();
    let slug = p.slug.clone().unwrap_or_default();
    let r = e
        .execute(sql!(
            "INSERT INTO products (id, seller_id, slug, title, summary, description_md, price, currency, kind, billing_interval,
                pwyw_min, category, tags, license_policy, download_policy, watermark_policy, status, featured, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19)",
            &id,
            seller_id,
            &slug,
            &p.title,
            &p.summary,
            &p.description,
            p.price,
            &p.currency,
            &p.kind,
            p.billing_interval.clone(),
            p.pwyw_min,
            &p.category,
            p.tags.join(" "),
            serde_json::to_string(&p.license_policy)?,
            serde_json::to_string(&p.download_policy)?,
            &p.watermark_policy,
            &p.status,
            p.featured,
            t
        ))
        .await;
    match r {
        Ok(_) => {}
        Err(err) if crate::db::is_unique_violation(&err) => {
            return Err(crate::error::conflict(
                "slug_taken",
                format!("the slug {slug:?} is already used by another product"),
            )
            .field("slug"));
        }
        Err(err) => return Err(err.into()),
    }
    for tag in &p.tags {
        e.execute(sql!(
            "INSERT INTO product_tags (product_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &id,
            tag
        ))
        .await?;
    }
    for member in &p.bundle_products {
        e.execute(sql!(
            "INSERT INTO bundle_items (bundle_id, product_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &id,
            member
        ))
        .await?;
    }
    Ok(e.fetch_one(sql!(
        format!("SELECT {PRODUCT_COLS} FROM products p WHERE p.id = $1"),
        &id
    ))
    .await?)
}

/// A partial update: every field optional; what is given is validated like a new product.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    pub title: Option<String>,
    pub slug: Option<String>,
    pub summary: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub currency: Option<String>,
    pub pwyw_min: Option<Option<i64>>,
    pub category: Option<String>,
    pub tags: Option<Vec<String>>,
    pub license_policy: Option<LicensePolicy>,
    pub download_policy: Option<DownloadPolicy>,
    pub watermark_policy: Option<String>,
    pub status: Option<String>,
    pub featured: Option<bool>,
}

/// Applies a patch to one of `seller_id`'s products (404 for anyone else's).
pub async fn update_product(e: &impl Exec, seller_id: &str, id: &str, patch: ProductPatch) -> ApiResult<Product> {
    let p = find_product(e, id)
        .await?
        .filter(|p| p.seller_id == seller_id)
        .ok_or_else(|| crate::error::not_found("product"))?;
    let mut merged = NewProduct {
        title: patch.title.unwrap_or(p.title.clone()),
        slug: Some(patch.slug.unwrap_or(p.slug.clone())),
        summary: patch.summary.unwrap_or(p.summary.clone()),
        description: patch.description.unwrap_or(p.description_md.clone()),
        price: patch.price.unwrap_or(p.price),
        currency: patch.currency.unwrap_or(p.currency.clone()),
        kind: p.kind.clone(),
        billing_interval: p.billing_interval.clone(),
        pwyw_min: patch.pwyw_min.unwrap_or(p.pwyw_min),
        category: patch.category.unwrap_or(p.category.clone()),
        tags: patch
            .tags
            .unwrap_or_else(|| p.tags.split_whitespace().map(str::to_string).collect()),
        license_policy: match patch.license_policy {
            Some(l) => l,
            None => serde_json::from_str(&p.license_policy).unwrap_or(LicensePolicy::None),
        },
        download_policy: match patch.download_policy {
            Some(d) => d,
            None => serde_json::from_str(&p.download_policy).unwrap_or_default(),
        },
        watermark_policy: patch.watermark_policy.unwrap_or(p.watermark_policy.clone()),
        status: patch.status.unwrap_or(p.status.clone()),
        featured: patch.featured.unwrap_or(p.featured),
        bundle_products: Vec::new(),
    };
    merged.validate()?;
    let slug = merged.slug.clone().unwrap_or_default();
    let r = e
        .execute(sql!(
            "UPDATE products SET slug = $2, title = $3, summary = $4, description_md = $5, price = $6, currency = $7, pwyw_min = $8,
                category = $9, tags = $10, license_policy = $11, download_policy = $12, watermark_policy = $13, status = $14,
                featured = $15, updated_at = $16
             WHERE id = $1",
            &p.id,
            &slug,
            &merged.title,
            &merged.summary,
            &merged.description,
            merged.price,
            &merged.currency,
            merged.pwyw_min,
            &merged.category,
            merged.tags.join(" "),
            serde_json::to_string(&merged.license_policy)?,
            serde_json::to_string(&merged.download_policy)?,
            &merged.watermark_policy,
            &merged.status,
            merged.featured,
            now()
        ))
        .await;
    match r {
        Ok(_) => {}
        Err(err) if crate::db::is_unique_violation(&err) => {
            return Err(crate::error::conflict(
                "slug_taken",
                format!("the slug {slug:?} is already used by another product"),
            )
            .field("slug"));
        }
        Err(err) => return Err(err.into()),
    }
    e.execute(sql!("DELETE FROM product_tags WHERE product_id = $1", &p.id))
        .await?;
    for tag in &merged.tags {
        e.execute(sql!(
            "INSERT INTO product_tags (product_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &p.id,
            tag
        ))
        .await?;
    }
    find_product(e, &p.id)
        .await?
        .ok_or_else(|| crate::error::not_found("product"))
}

/// Deletes a draft nobody bought; anything sold is archived instead (buyers keep access).
/// Returns the resulting status (`deleted` or `archived`).
pub async fn delete_product(e: &impl Exec, seller_id: &str, id: &str) -> ApiResult<&'static str> {
    let p = find_product(e, id)
        .await?
        .filter(|p| p.seller_id == seller_id)
        .ok_or_else(|| crate::error::not_found("product"))?;
    let sold = e
        .fetch_i64(sql!("SELECT COUNT(*) FROM order_items WHERE product_id = $1", &p.id))
        .await?;
    let bundled = e
        .fetch_i64(sql!("SELECT COUNT(*) FROM bundle_items WHERE product_id = $1", &p.id))
        .await?;
    if p.status == "draft" && sold == 0 && bundled == 0 {
        e.execute(sql!("DELETE FROM products WHERE id = $1", &p.id)).await?;
        Ok("deleted")
    } else {
        e.execute(sql!(
            "UPDATE products SET status = 'archived', updated_at = $2 WHERE id = $1",
            &p.id,
            now()
        ))
        .await?;
        Ok("archived")
    }
}

/// Finds a product by id (`prd_…`) or slug.
pub async fn find_product(e: &impl Exec, id_or_slug: &str) -> Result<Option<Product>, crate::db::DbError> {
    let col = if id_or_slug.starts_with("prd_") { "id" } else { "slug" };
    e.fetch_optional(sql!(
        format!("SELECT {PRODUCT_COLS} FROM products p WHERE p.{col} = $1"),
        id_or_slug
    ))
    .await
}

/// A product buyers can see and buy: published, from a store that is not suspended.
pub async fn find_for_sale(e: &impl Exec, id_or_slug: &str) -> Result<Option<Product>, crate::db::DbError> {
    let col = if id_or_slug.starts_with("prd_") { "id" } else { "slug" };
    e.fetch_optional(sql!(
        format!(
            "SELECT {PRODUCT_COLS} FROM products p JOIN sellers s ON s.id = p.seller_id
             WHERE p.{col} = $1 AND p.status = 'published' AND s.status = 'active'"
        ),
        id_or_slug
    ))
    .await
}

/// Search terms: alphanumeric words, lower-cased, at most 8, each used as a prefix.
pub fn search_terms(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().chars().take(40).collect())
        .take(8)
        .collect()
}

#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Full-text search (prefix match on every word).
    pub q: Option<String>,
    pub category: Option<String>,
    pub tag: Option<String>,
    /// A seller id.
    pub seller: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One page of published (or, for `seller_scope`, that seller's any-status) products.
pub async fn list_products(
    e: &impl Exec,
    params: &ListParams,
    seller_scope: Option<&str>,
) -> ApiResult<(Vec<Product>, Option<String>)> {
    let limit = params.limit.unwrap_or(20);
    let mut rows: Vec<Product> = match list_plan(e.backend(), params, seller_scope)? {
        ListPlan::Empty => return Ok((Vec::new(), None)),
        ListPlan::One(q) => e.fetch_all(q).await?,
        ListPlan::PgSearch {
            window,
            boundary,
            older,
        } => {
            let mut rows: Vec<Product> = e.fetch_all(window).await?;
            let want = usize::try_from(limit + 1).unwrap_or(21);
            if rows.len() < want {
                let edge: Option<(String,)> = e.fetch_optional(boundary).await?;
                if let Some((edge,)) = edge {
                    let more: Vec<Product> = e.fetch_all(older(&edge, want - rows.len())).await?;
                    rows.extend(more);
                }
            }
            rows
        }
    };
    let next = if rows.len() as i64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(20));
        rows.last().map(|p| p.id.clone())
    } else {
        None
    };
    Ok((rows, next))
}

/// Rows a PostgreSQL search first looks at, newest first, before asking the GIN index.
pub const PG_SEARCH_WINDOW: i64 = 5_000;

/// Builds the GIN query for matches below a window edge (edge id, rows wanted).
pub type OlderMatches = Box<dyn Fn(&str, usize) -> Query + Send + Sync>;

/// How a listing is fetched.
pub enum ListPlan {
    /// No usable search terms: nothing matches.
    Empty,
    /// One query (`limit + 1` rows, newest first).
    One(Query),
    /// PostgreSQL search. The planner cannot tell a word in every fifth product from one in
    /// none (prefix `tsquery` estimates), and either plan is wrong for the other: walking the
    /// id index until a page of matches stops early for common words but reads everything for
    /// rare ones; the GIN index is instant for rare words but collects every match of a common
    /// one before sorting. So: `window` checks the newest [`PG_SEARCH_WINDOW`] rows (bounded);
    /// if that does not fill the page, `boundary` finds the window's last id and `older` asks the
    /// GIN index (a materialized CTE, so no plan can turn it into a scan of the id index) for
    /// the matches below it — few, since the word was rare in the window.
    PgSearch {
        window: Query,
        boundary: Query,
        older: OlderMatches,
    },
}

impl ListPlan {
    /// Every statement the plan may run (for EXPLAIN in the benchmark).
    pub fn queries(&self) -> Vec<Query> {
        match self {
            ListPlan::Empty => Vec::new(),
            ListPlan::One(q) => vec![q.clone()],
            ListPlan::PgSearch {
                window,
                boundary,
                older,
            } => vec![window.clone(), boundary.clone(), older("prd_", 21)],
        }
    }
}

/// How a listing's cursor becomes a condition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CursorBy {
    /// `p.id < cursor` (the listing order).
    Id,
    /// The FTS rowid of the cursor's product (SQLite search order).
    Rowid,
    /// Not here (the caller bounds the rows another way).
    Omit,
}

/// The filters every listing shares (scope, category, tag, seller, cursor) as SQL conditions
/// appended to `q`.
fn push_filters(q: &mut Query, params: &ListParams, seller_scope: Option<&str>, cursor: CursorBy) -> ApiResult<()> {
    match seller_scope {
        Some(s) => {
            let a = q.arg(s);
            q.push_sql(&format!("p.seller_id = {a}"));
        }
        // Suspended stores are few: the subquery is a small hashed set, not a join per row.
        None => q.push_sql(
            "p.status = 'published' AND p.seller_id NOT IN (SELECT id FROM sellers WHERE status <> 'active')",
        ),
    }
    if let Some(c) = params.category.as_deref().filter(|c| !c.is_empty()) {
        let a = q.arg(c);
        q.push_sql(&format!(" AND p.category = {a}"));
    }
    if let Some(t) = params.tag.as_deref().filter(|t| !t.is_empty()) {
        let a = q.arg(slugify(t));
        q.push_sql(&format!(
            " AND p.id IN (SELECT product_id FROM product_tags WHERE tag = {a})"
        ));
    }
    if let Some(s) = params.seller.as_deref().filter(|s| !s.is_empty()) {
        let a = q.arg(s);
        q.push_sql(&format!(" AND p.seller_id = {a}"));
    }
    if let Some(c) = params.cursor.as_deref().filter(|c| !c.is_empty()) {
        if !c.starts_with("prd_") || c.len() > 40 {
            return Err(crate::error::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor value from a previous page",
            )
            .field("cursor"));
        }
        match cursor {
            CursorBy::Rowid => {
                let a = q.arg(c);
                q.push_sql(&format!(
                    " AND products_fts.rowid < (SELECT rowid FROM products WHERE id = {a})"
                ));
            }
            CursorBy::Id => {
                let a = q.arg(c);
                q.push_sql(&format!(" AND p.id < {a}"));
            }
            CursorBy::Omit => {}
        }
    }
    Ok(())
}

/// How to fetch one page for `params` on `backend`. Public so the benchmark can EXPLAIN the
/// very statements the API runs.
pub fn list_plan(backend: Backend, params: &ListParams, seller_scope: Option<&str>) -> ApiResult<ListPlan> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(crate::error::bad_request("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    let terms = match params.q.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(text) => {
            let terms = search_terms(text);
            if terms.is_empty() {
                return Ok(ListPlan::Empty);
            }
            Some(terms)
        }
        None => None,
    };
    let Some(terms) = terms else {
        let mut q = Query::new(format!("SELECT {PRODUCT_COLS} FROM products p WHERE "));
        push_filters(&mut q, params, seller_scope, CursorBy::Id)?;
        let a = q.arg(limit + 1);
        q.push_sql(&format!(" ORDER BY p.id DESC LIMIT {a}"));
        return Ok(ListPlan::One(q));
    };
    match backend {
        Backend::Sqlite => {
            // Driven by the FTS index in rowid order (newest first), so it stops after one page
            // of matches instead of collecting every match of a common word.
            let mut q = Query::new(format!(
                "SELECT {PRODUCT_COLS} FROM products_fts JOIN products p ON p.rowid = products_fts.rowid WHERE "
            ));
            push_filters(&mut q, params, seller_scope, CursorBy::Rowid)?;
            let expr = terms.iter().map(|t| format!("\"{t}\"*")).collect::<Vec<_>>().join(" ");
            let a = q.arg(expr);
            q.push_sql(&format!(" AND products_fts MATCH {a}"));
            let a = q.arg(limit + 1);
            q.push_sql(&format!(" ORDER BY products_fts.rowid DESC LIMIT {a}"));
            Ok(ListPlan::One(q))
        }
        Backend::Postgres => {
            let tsquery = terms.iter().map(|t| format!("{t}:*")).collect::<Vec<_>>().join(" & ");
            let mut window = Query::new(format!("SELECT {PRODUCT_COLS} FROM (SELECT * FROM products p WHERE "));
            push_filters(&mut window, params, seller_scope, CursorBy::Id)?;
            let w = window.arg(PG_SEARCH_WINDOW);
            let t = window.arg(tsquery.clone());
            let n = window.arg(limit + 1);
            window.push_sql(&format!(
                " ORDER BY p.id DESC LIMIT {w}) p WHERE p.search @@ to_tsquery('simple', {t}) ORDER BY p.id DESC LIMIT {n}"
            ));
            let mut boundary = Query::new("SELECT p.id FROM products p WHERE ".to_string());
            push_filters(&mut boundary, params, seller_scope, CursorBy::Id)?;
            let o = boundary.arg(PG_SEARCH_WINDOW - 1);
            boundary.push_sql(&format!(" ORDER BY p.id DESC OFFSET {o} LIMIT 1"));
            let mut base = Query::new("WITH m AS MATERIALIZED (SELECT p.id FROM products p WHERE ".to_string());
            // The cursor and the window edge are applied outside the CTE: inside, PostgreSQL
            // would AND the GIN bitmap with an id-range bitmap of nearly the whole table.
            push_filters(&mut base, params, seller_scope, CursorBy::Omit)?;
            let t = base.arg(tsquery);
            base.push_sql(&format!(" AND p.search @@ to_tsquery('simple', {t}))"));
            let older = move |edge: &str, n: usize| {
                let mut q = base.clone();
                let e = q.arg(edge);
                let n = q.arg(i64::try_from(n).unwrap_or(21));
                q.push_sql(&format!(
                    ", top AS (SELECT id FROM m WHERE id < {e} ORDER BY id DESC LIMIT {n}) \
                     SELECT {PRODUCT_COLS} FROM products p JOIN top ON top.id = p.id ORDER BY p.id DESC"
                ));
                q
            };
            Ok(ListPlan::PgSearch {
                window,
                boundary,
                older: Box::new(older),
            })
        }
    }
}

pub async fn current_version(
    e: &impl Exec,
    p: &Product,
) -> Result<Option<(ProductVersion, Vec<FileRow>)>, crate::db::DbError> {
    let Some(vid) = &p.current_version_id else {
        return Ok(None);
    };
    let Some(v) = e
        .fetch_optional::<ProductVersion>(sql!(
            "SELECT id, product_id, version, changelog_md, created_at FROM product_versions WHERE id = $1",
            vid
        ))
        .await?
    else {
        return Ok(None);
    };
    let files = version_files(e, &v.id).await?;
    Ok(Some((v, files)))
}

pub async fn version_files(e: &impl Exec, version_id: &str) -> Result<Vec<FileRow>, crate::db::DbError> {
    e.fetch_all(sql!(
        "SELECT id, product_id, version_id, name, object_key, size, sha256, content_type, created_at FROM files WHERE version_id = $1 ORDER BY name",
        version_id
    ))
    .await
}

/// Public JSON of a product; `detail` adds the rendered description and the current version.
pub async fn product_json(e: &impl Exec, p: &Product, detail: bool) -> ApiResult<Value> {
    let license: Value = serde_json::from_str(&p.license_policy).unwrap_or(json!({"type": "none"}));
    let download: Value = serde_json::from_str(&p.download_policy).unwrap_or(json!({}));
    let mut v = json!({
        "id": p.id,
        "slug": p.slug,
        "title": p.title,
        "summary": p.summary,
        "price": p.price,
        "currency": p.currency,
        "price_display": format_money(p.price, &p.currency),
        "kind": p.kind,
        "billing_interval": p.billing_interval,
        "pay_what_you_want": p.pwyw_min.is_some(),
        "pwyw_min": p.pwyw_min,
        "free": p.price == 0 && p.pwyw_min.is_none(),
        "category": p.category,
        "tags": p.tags.split_whitespace().collect::<Vec<_>>(),
        "license_policy": license,
        "download_policy": download,
        "watermark_policy": p.watermark_policy,
        "status": p.status,
        "featured": p.featured,
        "seller_id": p.seller_id,
        "cover_url": p.cover_key.as_ref().map(|_| format!("/media/products/{}/cover", p.id)),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    });
    if detail {
        // Lists fill ratings for the whole page in one query (see http::catalog).
        v["rating"] = crate::reviews::rating(e, &p.id).await?.json();
        v["images"] = json!(crate::images::views(e, &p.id).await?);
        v["description_md"] = json!(p.description_md);
        v["description_html"] = json!(crate::markdown::to_html(&p.description_md));
        v["current_version"] = match current_version(e, p).await? {
            Some((ver, files)) => json!({
                "version": ver.version,
                "changelog_md": ver.changelog_md,
                "changelog_html": crate::markdown::to_html(&ver.changelog_md),
                "published_at": ver.created_at,
                "files": files.iter().map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256, "content_type": f.content_type})).collect::<Vec<_>>(),
            }),
            None => Value::Null,
        };
    }
    Ok(v)
}

/// Adds a version with already-stored files and makes it current. Used by demo seeding and
/// by the versions endpoint once the files are in storage.
pub async fn insert_version(
    e: &impl Exec,
    product_id: &str,
    version: &str,
    changelog: &str,
    files: &[NewFile],
) -> ApiResult<ProductVersion> {
    // A link names a file by its name, and its stored copy is keyed by it: two of one name
    // would share one object and leave the link's file ambiguous.
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = files.iter().find(|f| !names.insert(f.name.as_str())) {
        return Err(unprocessable(
            "duplicate_file_name",
            format!(
                "two files are named {:?}: give each file of a version its own name",
                twice.name
            ),
        )
        .field("file"));
    }
    let vid = new_id("ver");
    let t = now();
    let r = e
        .execute(sql!(
            "INSERT INTO product_versions (id, product_id, version, changelog_md, created_at) VALUES ($1, $2, $3, $4, $5)",
            &vid,
            product_id,
            version,
            changelog,
            t
        ))
        .await;
    match r {
        Ok(_) => {}
        Err(err) if crate::db::is_unique_violation(&err) => {
            return Err(crate::error::conflict(
                "version_exists",
                format!("version {version:?} already exists for this product"),
            )
            .field("version"));
        }
        Err(err) => return Err(err.into()),
    }
    for f in files {
        e.execute(sql!(
            "INSERT INTO files (id, product_id, version_id, name, object_key, size, sha256, content_type, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            new_id("fil"),
            product_id,
            &vid,
            &f.name,
            &f.object_key,
            f.size,
            &f.sha256,
            &f.content_type,
            t
        ))
        .await?;
    }
    e.execute(sql!(
        "UPDATE products SET current_version_id = $1, updated_at = $2 WHERE id = $3",
        &vid,
        t,
        product_id
    ))
    .await?;
    Ok(ProductVersion {
        id: vid,
        product_id: product_id.to_string(),
        version: version.to_string(),
        changelog_md: changelog.to_string(),
        created_at: t,
    })
}

#[derive(Debug, Clone)]
pub struct NewFile {
    pub name: String,
    pub object_key: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
}

/// A file name that is safe as the last segment of an object key and in a header.
pub fn safe_file_name(name: &str) -> Result<String, ApiError> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    let ok = !base.is_empty()
        && base != "."
        && base != ".."
        && base.len() <= 200
        && !base.chars().any(|c| c.is_control() || c == '"');
    if ok {
        Ok(base.to_string())
    } else {
        Err(unprocessable("invalid_file_name", format!("{name:?} is not a usable file name")).field("file_name"))
    }
}

/// Object key of a version's original file: `{seller}/{product}/{version}/original/{name}`.
pub fn original_key(seller_id: &str, product_id: &str, version: &str, file_name: &str) -> String {
    format!(
        "{seller_id}/{product_id}/{}/original/{file_name}",
        version_segment(version)
    )
}

/// A version string as a storage path segment (other characters become `_`). Two versions
/// with the same segment would share files, so a product never has two (see
/// `versions::claim_version`).
pub fn version_segment(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_formats_for_people() {
        assert_eq!(format_money(4900, "USD"), "$49.00");
        assert_eq!(format_money(1999, "EUR"), "€19.99");
        assert_eq!(format_money(500, "JPY"), "¥500");
        assert_eq!(format_money(1234, "SEK"), "12.34 SEK");
    }

    #[test]
    fn search_terms_are_sanitized() {
        assert_eq!(
            search_terms("Figma UI-kit \"*) OR 1=1"),
            vec!["figma", "ui", "kit", "or", "1", "1"]
        );
    }

    #[test]
    fn file_names_never_become_paths() {
        assert_eq!(safe_file_name("../../etc/passwd").unwrap(), "passwd");
        assert!(safe_file_name("..").is_err());
        assert!(safe_file_name("a\u{0}b").is_err());
        assert_eq!(safe_file_name("C:\\x\\book.pdf").unwrap(), "book.pdf");
    }
}
