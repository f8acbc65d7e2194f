//! Reviews over HTTP: the public list (`GET /api/v1/products/{id}/reviews` and the
//! `/p/{slug}/reviews` page), the buyer writing or editing theirs (`PUT
//! /api/v1/library/reviews/{product_id}`, library session + CSRF header), and the seller
//! hiding or showing one (`POST /api/v1/seller/reviews/{id}/hide|show`). The product page's
//! review block is built here too ([`reviews_block`]).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::SellerAuth;
use crate::db::models::Product;
use crate::error::{bad_request, not_found, ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::pages::Brand;
use crate::http::views::{self, Stars};
use crate::library::BuyerAuth;
use crate::reviews::{self, Review, ReviewInput};

/// Reviews on the product page before "See all reviews".
pub const ON_PRODUCT_PAGE: i64 = 6;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_reviews))
        .routes(routes!(put_review))
        .routes(routes!(seller_reviews))
        .routes(routes!(hide_review))
        .routes(routes!(show_review))
        .routes(routes!(reviews_page))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// 1–100, default 20.
    limit: Option<i64>,
    /// `next_cursor` from the previous page.
    cursor: Option<String>,
}

fn limit(q: &PageQuery) -> ApiResult<i64> {
    let l = q.limit.unwrap_or(reviews::PAGE);
    if (1..=100).contains(&l) {
        Ok(l)
    } else {
        Err(bad_request("invalid_limit", "limit must be between 1 and 100").field("limit"))
    }
}

async fn public_product(app: &App, id: &str) -> ApiResult<Product> {
    crate::catalog::find_product(&app.db, id)
        .await?
        .filter(|p| p.status != "draft")
        .ok_or_else(|| not_found("product"))
}

/// A product's reviews from verified buyers, newest first, with the rating over all of them:
/// `{items, next_cursor, rating: {average, count}}`. Reviews of refunded purchases and
/// reviews the seller hid are not listed and do not count.
#[utoipa::path(get, path = "/api/v1/products/{id}/reviews", tag = "reviews",
    params(("id" = String, Path, description = "Product id or slug"), PageQuery),
    responses((status = 200, description = "`{items: [Review], next_cursor, rating}`"), (status = 400, description = "Bad limit or cursor"),
        (status = 404, description = "No such product")))]
async fn list_reviews(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let limit = limit(&q)?;
    let p = public_product(&app, &id).await?;
    let (rows, next) = reviews::list_shown(&app.db, &p.id, q.cursor.as_deref(), limit).await?;
    let rating = reviews::rating(&app.db, &p.id).await?;
    Ok(Json(json!({
        "items": rows.iter().map(Review::public_json).collect::<Vec<_>>(),
        "next_cursor": next,
        "rating": rating.json(),
    })))
}

/// Writes the signed-in buyer's review of a product they bought (paid, not refunded), or
/// edits the one they wrote: one review per buyer and product. Needs the library session
/// and its CSRF token in `X-CSRF-Token`. 201 when new, 200 when edited.
#[utoipa::path(put, path = "/api/v1/library/reviews/{product_id}", tag = "library",
    params(("product_id" = String, Path, description = "Product id or slug"), ("X-CSRF-Token" = String, Header, description = "`csrf_token` from GET /api/v1/library")),
    request_body = ReviewInput,
    responses((status = 201, description = "Review written"), (status = 200, description = "Review edited"),
        (status = 401, description = "Not signed in"), (status = 403, description = "Not a buyer of this product, or CSRF token missing"),
        (status = 404, description = "No such product"), (status = 422, description = "Rating not 1–5, or text too long (error.field names it)")))]
async fn put_review(
    State(app): State<App>,
    buyer: BuyerAuth,
    headers: HeaderMap,
    Path(product_id): Path<String>,
    ApiJson(input): ApiJson<ReviewInput>,
) -> ApiResult<Response> {
    buyer.require_csrf(headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))?;
    let (review, created) = reviews::upsert(&app.db, &buyer.email, &product_id, &input).await?;
    let mut body = review.public_json();
    body["hidden_by_seller"] = json!(review.hidden);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SellerReviewQuery {
    /// Only this product (id).
    product_id: Option<String>,
    /// 1–100, default 20.
    limit: Option<i64>,
    /// `next_cursor` from the previous page.
    cursor: Option<String>,
}

/// The seller's reviews, hidden ones too, newest first. Each says whether the public sees it
/// (`shown`), and why not (`hidden` by the seller, or `buyer_refunded`).
#[utoipa::path(get, path = "/api/v1/seller/reviews", tag = "seller", params(SellerReviewQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 401, description = "Not signed in")))]
async fn seller_reviews(
    State(app): State<App>,
    auth: SellerAuth,
    ApiQuery(q): ApiQuery<SellerReviewQuery>,
) -> ApiResult<Json<Value>> {
    let l = limit(&PageQuery {
        limit: q.limit,
        cursor: None,
    })?;
    let (items, next) = reviews::list_for_seller(
        &app.db,
        &auth.seller_id,
        q.product_id.as_deref(),
        q.cursor.as_deref(),
        l,
    )
    .await?;
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

fn seller_json(r: &Review) -> Value {
    let mut v = r.public_json();
    v["hidden"] = json!(r.hidden);
    v
}

/// Hides one of the seller's reviews from the product page, the API and the rating.
#[utoipa::path(post, path = "/api/v1/seller/reviews/{id}/hide", tag = "seller", params(("id" = String, Path)),
    responses((status = 200, description = "The review, now hidden"), (status = 404, description = "Not one of this seller's reviews")))]
async fn hide_review(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(seller_json(
        &reviews::set_hidden(&app.db, &auth.seller_id, &id, true).await?,
    )))
}

/// Shows a review the seller hid (it is listed again if its buyer's purchase still stands).
#[utoipa::path(post, path = "/api/v1/seller/reviews/{id}/show", tag = "seller", params(("id" = String, Path)),
    responses((status = 200, description = "The review, shown again"), (status = 404, description = "Not one of this seller's reviews")))]
async fn show_review(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(seller_json(
        &reviews::set_hidden(&app.db, &auth.seller_id, &id, false).await?,
    )))
}

// ---------- pages ----------

pub struct ReviewView {
    pub id: String,
    pub stars: Stars,
    pub title: String,
    pub body: String,
    pub author: String,
    /// The buyer gave a display name (else the author is just "Verified buyer").
    pub named: bool,
    pub date: String,
    pub edited: bool,
}

impl ReviewView {
    pub fn of(r: &Review) -> Self {
        ReviewView {
            id: r.id.clone(),
            stars: Stars::of_stars(r.rating),
            title: r.title.clone(),
            body: r.body.clone(),
            author: r.author(),
            named: !r.display_name.is_empty(),
            date: views::mid_date(r.created_at),
            edited: r.updated_at > r.created_at,
        }
    }
}

/// One bar of the "how many gave N stars" chart.
pub struct Bar {
    pub stars: i64,
    pub count: i64,
    pub total: i64,
}

/// The product page's reviews section.
pub struct ReviewsBlock {
    pub stars: Option<Stars>,
    pub bars: Vec<Bar>,
    pub items: Vec<ReviewView>,
    pub more_href: Option<String>,
    pub product_id: String,
}

pub async fn reviews_block(app: &App, p: &Product) -> ApiResult<ReviewsBlock> {
    let rating = reviews::rating(&app.db, &p.id).await?;
    let dist = reviews::distribution(&app.db, &p.id).await?;
    let (rows, next) = reviews::list_shown(&app.db, &p.id, None, ON_PRODUCT_PAGE).await?;
    Ok(ReviewsBlock {
        stars: Stars::of_rating(&rating),
        bars: (1..=5)
            .rev()
            .map(|n| Bar {
                stars: n,
                count: dist[usize::try_from(n - 1).unwrap_or(0)],
                total: rating.count,
            })
            .collect(),
        items: rows.iter().map(ReviewView::of).collect(),
        more_href: next.map(|_| format!("/p/{}/reviews", p.slug)),
        product_id: p.id.clone(),
    })
}

#[derive(Template)]
#[template(path = "store/reviews.html")]
struct ReviewsPage {
    brand: Brand,
    title: String,
    slug: String,
    reviews: ReviewsBlock,
    next_href: Option<String>,
}

/// Every review of a product, 20 a page.
#[utoipa::path(get, path = "/p/{slug}/reviews", tag = "reviews", params(("slug" = String, Path), PageQuery),
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 404, description = "No such product")))]
async fn reviews_page(
    State(app): State<App>,
    Path(slug): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Html<String>> {
    let p = crate::catalog::find_for_sale(&app.db, &slug)
        .await?
        .ok_or_else(|| not_found("product"))?;
    let mut block = reviews_block(&app, &p).await?;
    let (rows, next) = reviews::list_shown(&app.db, &p.id, q.cursor.as_deref(), reviews::PAGE).await?;
    block.items = rows.iter().map(ReviewView::of).collect();
    block.more_href = None;
    let page = ReviewsPage {
        brand: crate::http::pages::brand(&app).await,
        title: p.title.clone(),
        next_href: next.map(|c| format!("/p/{}/reviews?cursor={c}", p.slug)),
        slug: p.slug,
        reviews: block,
    };
    page.render()
        .map(Html)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))
}
