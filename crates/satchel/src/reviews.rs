//! Verified-buyer reviews and ratings.
//!
//! A review is 1–5 stars with an optional title, text and display name (plain text: pages
//! escape it, the JSON carries it as typed). Only a buyer can write one — the email of a
//! paid order holding the product (directly or in a bundle) whose item was not refunded —
//! and only one per product: writing again edits it.
//!
//! Whether a review is *shown* is decided when it is read, never stored: it must not be
//! hidden by the seller, and its author must still hold a paid, not-refunded purchase of the
//! product. So a refund (or a lost chargeback) hides the buyer's review at once, and a
//! dispute that is won brings it back, without any hook in the refund code. A buyer editing
//! a review the seller hid does not un-hide it; the seller decides that.
//!
//! Averages are computed from integer sums (the same on SQLite and PostgreSQL) and rounded
//! to one decimal.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::db::{Exec, Query};
use crate::error::{forbidden, not_found, unprocessable, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

pub const MAX_TITLE: usize = 120;
pub const MAX_BODY: usize = 5000;
pub const MAX_NAME: usize = 60;
pub const PAGE: i64 = 20;

/// The buyer still holds a paid, not-refunded purchase of the review's product.
const VERIFIED: &str = "EXISTS (SELECT 1 FROM orders o JOIN order_items i ON i.order_id = o.id
     WHERE o.email = r.email AND i.product_id = r.product_id
       AND o.status IN ('paid', 'partially_refunded') AND i.status <> 'refunded')";

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Review {
    pub id: String,
    pub product_id: String,
    pub seller_id: String,
    pub email: String,
    pub order_id: String,
    pub rating: i64,
    pub title: String,
    pub body: String,
    pub display_name: String,
    pub hidden: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "r.id, r.product_id, r.seller_id, r.email, r.order_id, r.rating, r.title, r.body, r.display_name, r.hidden, r.created_at, r.updated_at";

impl Review {
    /// The name shown with the review ("Verified buyer" unless the buyer gave one).
    pub fn author(&self) -> String {
        if self.display_name.is_empty() {
            "Verified buyer".into()
        } else {
            self.display_name.clone()
        }
    }

    /// What anyone may see: never the buyer's email.
    pub fn public_json(&self) -> Value {
        json!({
            "id": self.id, "product_id": self.product_id, "rating": self.rating,
            "title": self.title, "body": self.body, "author": self.author(),
            "verified_buyer": true,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "edited": self.updated_at > self.created_at,
        })
    }
}

/// A review as the buyer writes it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    /// 1 to 5 stars.
    pub rating: i64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// Shown with the review; empty shows "Verified buyer".
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Trims, drops control characters (keeping line breaks in the text), checks the length.
fn clean(s: Option<&str>, max: usize, field: &str, multiline: bool) -> ApiResult<String> {
    let s: String = s
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| !c.is_control() || (multiline && *c == '\n'))
        .collect();
    if s.chars().count() > max {
        return Err(unprocessable("too_long", format!("{field} can be at most {max} characters")).field(field));
    }
    Ok(s)
}

/// Checked, cleaned input: `(rating, title, body, display_name)`.
pub fn validate(input: &ReviewInput) -> ApiResult<(i64, String, String, String)> {
    if !(1..=5).contains(&input.rating) {
        return Err(
            unprocessable("invalid_rating", "rating must be a whole number of stars from 1 to 5").field("rating"),
        );
    }
    let body = clean(
        input.body.as_deref().map(|b| b.replace("\r\n", "\n")).as_deref(),
        MAX_BODY,
        "body",
        true,
    )?;
    Ok((
        input.rating,
        clean(input.title.as_deref(), MAX_TITLE, "title", false)?,
        body,
        clean(input.display_name.as_deref(), MAX_NAME, "display_name", false)?,
    ))
}

/// The newest paid, not-refunded order of `email` holding `product_id`: `(order_id, seller_id)`.
pub async fn qualifying_order(
    e: &impl Exec,
    email: &str,
    product_id: &str,
) -> Result<Option<(String, String)>, crate::db::DbError> {
    e.fetch_optional(sql!(
        "SELECT o.id, o.seller_id FROM orders o JOIN order_items i ON i.order_id = o.id
         WHERE o.email = $1 AND i.product_id = $2 AND o.status IN ('paid', 'partially_refunded') AND i.status <> 'refunded'
         ORDER BY o.id DESC LIMIT 1",
        email,
        product_id
    ))
    .await
}

/// Writes the buyer's review of a product, or edits the one they wrote. Returns the review
/// and whether it is new. 404 unknown product, 403 not a (still paying) buyer, 422 bad input;
/// nothing is written unless everything checks out.
pub async fn upsert(e: &impl Exec, email: &str, product: &str, input: &ReviewInput) -> ApiResult<(Review, bool)> {
    let p = crate::catalog::find_product(e, product)
        .await?
        .filter(|p| p.status != "draft")
        .ok_or_else(|| not_found("product"))?;
    let Some((order_id, seller_id)) = qualifying_order(e, email, &p.id).await? else {
        return Err(forbidden(
            "not_a_buyer",
            "only buyers of this product can review it: sign in to your library with the email you bought it with",
        ));
    };
    let (rating, title, body, display_name) = validate(input)?;
    let id = new_id("rev");
    let t = now();
    let (got,): (String,) = e
        .fetch_one(sql!(
            "INSERT INTO reviews (id, product_id, seller_id, email, order_id, rating, title, body, display_name, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
             ON CONFLICT (product_id, email) DO UPDATE SET rating = excluded.rating, title = excluded.title, body = excluded.body,
                display_name = excluded.display_name, order_id = excluded.order_id, updated_at = excluded.updated_at
             RETURNING id",
            &id,
            &p.id,
            &seller_id,
            email,
            &order_id,
            rating,
            &title,
            &body,
            &display_name,
            t
        ))
        .await?;
    let review = find(e, &got).await?.ok_or_else(|| not_found("review"))?;
    Ok((review, got == id))
}

pub async fn find(e: &impl Exec, id: &str) -> Result<Option<Review>, crate::db::DbError> {
    e.fetch_optional(sql!(format!("SELECT {COLS} FROM reviews r WHERE r.id = $1"), id))
        .await
}

/// The buyer's reviews, by product id.
pub async fn by_buyer(e: &impl Exec, email: &str) -> Result<HashMap<String, Review>, crate::db::DbError> {
    let rows: Vec<Review> = e
        .fetch_all(sql!(format!("SELECT {COLS} FROM reviews r WHERE r.email = $1"), email))
        .await?;
    Ok(rows.into_iter().map(|r| (r.product_id.clone(), r)).collect())
}

/// A product's rating over its shown reviews.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rating {
    /// Rounded to one decimal; `None` without reviews.
    pub average: Option<f64>,
    pub count: i64,
    /// Average in tenths of a star (45 = 4.5), for display classes.
    #[serde(skip)]
    pub tenths: i64,
}

impl Rating {
    fn from_sum(sum: i64, count: i64) -> Self {
        if count <= 0 {
            return Rating::default();
        }
        // Round half up in tenths, in integers.
        let tenths = (sum * 10 * 2 + count) / (count * 2);
        #[allow(clippy::cast_precision_loss)]
        let average = Some(tenths as f64 / 10.0);
        Rating { average, count, tenths }
    }

    pub fn json(&self) -> Value {
        json!({"average": self.average, "count": self.count})
    }
}

/// Ratings of many products in one query (products without shown reviews are absent).
pub async fn ratings(e: &impl Exec, product_ids: &[String]) -> Result<HashMap<String, Rating>, crate::db::DbError> {
    if product_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Query::new(String::new());
    let placeholders: Vec<String> = product_ids.iter().map(|id| q.arg(id)).collect();
    q.push_sql(&format!(
        "SELECT r.product_id, CAST(SUM(r.rating) AS BIGINT), COUNT(*) FROM reviews r
         WHERE r.product_id IN ({}) AND r.hidden = FALSE AND {VERIFIED} GROUP BY r.product_id",
        placeholders.join(", ")
    ));
    let rows: Vec<(String, i64, i64)> = e.fetch_all(q).await?;
    Ok(rows
        .into_iter()
        .map(|(id, sum, count)| (id, Rating::from_sum(sum, count)))
        .collect())
}

pub async fn rating(e: &impl Exec, product_id: &str) -> Result<Rating, crate::db::DbError> {
    Ok(ratings(e, &[product_id.to_string()])
        .await?
        .remove(product_id)
        .unwrap_or_default())
}

/// How many shown reviews give each number of stars: `[1★, 2★, 3★, 4★, 5★]`.
pub async fn distribution(e: &impl Exec, product_id: &str) -> Result<[i64; 5], crate::db::DbError> {
    let rows: Vec<(i64, i64)> = e
        .fetch_all(sql!(
            format!(
                "SELECT r.rating, COUNT(*) FROM reviews r WHERE r.product_id = $1 AND r.hidden = FALSE AND {VERIFIED} GROUP BY r.rating"
            ),
            product_id
        ))
        .await?;
    let mut out = [0; 5];
    for (stars, n) in rows {
        if let Some(slot) = usize::try_from(stars - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = n;
        }
    }
    Ok(out)
}

/// A page of a product's shown reviews, newest first: `(reviews, next_cursor)`.
pub async fn list_shown(
    e: &impl Exec,
    product_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> ApiResult<(Vec<Review>, Option<String>)> {
    let limit = limit.clamp(1, 100);
    let rows: Vec<Review> = e
        .fetch_all(sql!(
            format!(
                "SELECT {COLS} FROM reviews r WHERE r.product_id = $1 AND r.hidden = FALSE AND {VERIFIED}
                 AND ($2 IS NULL OR r.id < $2) ORDER BY r.id DESC LIMIT $3"
            ),
            product_id,
            cursor.map(str::to_string),
            limit + 1
        ))
        .await?;
    Ok(page(rows, limit))
}

fn page(mut rows: Vec<Review>, limit: i64) -> (Vec<Review>, Option<String>) {
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    (rows, next)
}

/// A seller's reviews (hidden ones too), newest first, optionally of one product. Each row
/// says whether the public sees it and why not.
pub async fn list_for_seller(
    e: &impl Exec,
    seller_id: &str,
    product_id: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> ApiResult<(Vec<Value>, Option<String>)> {
    let limit = limit.clamp(1, 100);
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        r: Review,
        verified: bool,
    }
    let rows: Vec<Row> = e
        .fetch_all(sql!(
            format!(
                "SELECT {COLS}, CASE WHEN {VERIFIED} THEN TRUE ELSE FALSE END AS verified FROM reviews r
                 WHERE r.seller_id = $1 AND ($2 IS NULL OR r.product_id = $2) AND ($3 IS NULL OR r.id < $3)
                 ORDER BY r.id DESC LIMIT $4"
            ),
            seller_id,
            product_id.map(str::to_string),
            cursor.map(str::to_string),
            limit + 1
        ))
        .await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    let mut items: Vec<Value> = Vec::new();
    let mut last = None;
    for row in rows.into_iter().take(usize::try_from(limit).unwrap_or(0)) {
        let mut v = row.r.public_json();
        v["email"] = json!(row.r.email);
        v["order_id"] = json!(row.r.order_id);
        v["hidden"] = json!(row.r.hidden);
        v["buyer_refunded"] = json!(!row.verified);
        v["shown"] = json!(!row.r.hidden && row.verified);
        last = Some(row.r.id.clone());
        items.push(v);
    }
    Ok((items, if more { last } else { None }))
}

/// A seller hides or shows one of their reviews (another seller's is not found).
pub async fn set_hidden(e: &impl Exec, seller_id: &str, review_id: &str, hidden: bool) -> ApiResult<Review> {
    let n = e
        .execute(sql!(
            "UPDATE reviews SET hidden = $3 WHERE id = $1 AND seller_id = $2",
            review_id,
            seller_id,
            hidden
        ))
        .await?;
    if n == 0 {
        return Err(not_found("review"));
    }
    find(e, review_id).await?.ok_or_else(|| not_found("review"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_round_to_one_decimal_in_integers() {
        assert_eq!(Rating::from_sum(9, 2).average, Some(4.5));
        assert_eq!(Rating::from_sum(13, 3).average, Some(4.3)); // 4.333…
        assert_eq!(Rating::from_sum(14, 3).average, Some(4.7)); // 4.666…
        assert_eq!(Rating::from_sum(5, 1).tenths, 50);
        assert_eq!(Rating::from_sum(0, 0), Rating::default());
    }

    #[test]
    fn input_is_checked_and_cleaned() {
        let ok = ReviewInput {
            rating: 5,
            title: Some("  Great \u{7} book ".into()),
            body: Some("Line one\r\nLine two".into()),
            display_name: None,
        };
        let (r, t, b, n) = validate(&ok).unwrap();
        assert_eq!(
            (r, t.as_str(), b.as_str(), n.as_str()),
            (5, "Great  book", "Line one\nLine two", "")
        );
        for bad in [0, 6, -1] {
            let e = validate(&ReviewInput {
                rating: bad,
                ..ok.clone()
            })
            .unwrap_err();
            assert_eq!(e.code(), "invalid_rating");
        }
        let long = ReviewInput {
            title: Some("x".repeat(MAX_TITLE + 1)),
            ..ok
        };
        assert_eq!(validate(&long).unwrap_err().code(), "too_long");
    }
}
