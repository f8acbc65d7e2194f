//! The public storefront: server-rendered askama pages (home, catalog, product page,
//! test checkout, success, errors), the site CSS, and the layer every response passes
//! through for browser concerns (security headers, HTML error pages, `?ref=` cookie).
//!
//! Pages are plain axum routes (not in the OpenAPI document: they are not API).
//! State-changing forms carry a double-submit CSRF token: a random value in the
//! `satchel_csrf` cookie (HttpOnly, SameSite=Lax) that the form repeats in a hidden field.
//! A cross-site page can make the browser send the cookie but cannot read it, so it
//! cannot put the same value in the form.

use askama::Template;
use axum::body::Body;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::Value;

use crate::app::App;
use crate::catalog::{self, format_money, ListParams};
use crate::checkout::{self, CartLine};
use crate::db::models::Product;
use crate::db::Exec;
use crate::error::{ApiError, ApiResult};
use crate::sql;

/// The storefront's Content-Security-Policy: no inline styles or scripts anywhere.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Affiliate attribution cookie set from `?ref=CODE` (read by the affiliates module).
pub const REF_COOKIE: &str = "satchel_ref";
/// Double-submit CSRF cookie.
pub const CSRF_COOKIE: &str = "satchel_csrf";
/// The cart: `prd_a:1,prd_b:2` (product ids and quantities; prices are read at checkout).
pub const CART_COOKIE: &str = "satchel_cart";

const APP_CSS: &str = include_str!("../../static/app.css");

pub fn router() -> Router<App> {
    Router::new()
        .route("/", get(home))
        .route("/products", get(catalog_page))
        .route("/p/{slug}", get(product_page))
        .route("/p/{slug}/buy", post(buy))
        .route("/cart", get(cart_page))
        .route("/cart/add", post(cart_add))
        .route("/cart/remove", post(cart_remove))
        .route("/cart/checkout", post(cart_checkout))
        .route("/static/app.css", get(app_css))
        .route("/static/brand.css", get(brand_css))
}

/// The seller's brand: the first seller's store name, accent colour and logo.
#[derive(Clone, Debug)]
pub struct Brand {
    pub store_name: String,
    pub accent: String,
    /// `/media/sellers/{id}/logo?v=…` when the seller set a logo (`sellers.logo_key`).
    pub logo_url: Option<String>,
}

pub async fn brand(app: &App) -> Brand {
    let row: Option<(String, String, String, Option<String>)> = app
        .db
        .fetch_optional(sql!(
            "SELECT id, store_name, accent_color, logo_key FROM sellers WHERE status = 'active' ORDER BY created_at, id LIMIT 1"
        ))
        .await
        .ok()
        .flatten();
    let (seller_id, store_name, accent, logo_key) =
        row.unwrap_or_else(|| (String::new(), "Satchel".into(), "#5b4bdb".into(), None));
    let ok = accent.len() == 7 && accent.starts_with('#') && accent[1..].bytes().all(|b| b.is_ascii_hexdigit());
    Brand {
        store_name,
        accent: if ok { accent } else { "#5b4bdb".into() },
        logo_url: logo_key
            .filter(|k| !k.is_empty())
            .map(|k| crate::http::branding::logo_url(&seller_id, &k)),
    }
}

fn render(t: &impl Template) -> ApiResult<Html<String>> {
    t.render()
        .map(Html)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))
}

async fn app_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        APP_CSS,
    )
        .into_response()
}

/// The accent colour as a stylesheet, so templates need no inline style (CSP).
async fn brand_css(State(app): State<App>) -> Response {
    let b = brand(&app).await;
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        format!(":root{{--accent:{}}}\n", b.accent),
    )
        .into_response()
}

// ---------- view models ----------

pub struct Card {
    pub id: String,
    pub slug: String,
    pub title: String,
    pub summary: String,
    pub price_label: String,
    pub hue: u32,
    pub initial: String,
    /// `/media/products/{id}/cover` when the product has a cover image.
    pub cover_url: Option<String>,
    /// Average of the shown reviews (filled by [`with_ratings`]).
    pub stars: Option<crate::http::views::Stars>,
}

/// Fills in the cards' ratings with one query.
pub async fn with_ratings(app: &App, mut cards: Vec<Card>) -> ApiResult<Vec<Card>> {
    let ids: Vec<String> = cards.iter().map(|c| c.id.clone()).collect();
    let ratings = crate::reviews::ratings(&app.db, &ids).await?;
    for c in &mut cards {
        c.stars = ratings.get(&c.id).and_then(crate::http::views::Stars::of_rating);
    }
    Ok(cards)
}

pub struct Chip {
    pub label: String,
    pub href: String,
    pub selected: bool,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

pub fn price_label(p: &Product) -> String {
    if let Some(min) = p.pwyw_min {
        if min == 0 {
            return "Pay what you want".into();
        }
        return format!("Pay what you want (min {})", format_money(min, &p.currency));
    }
    if p.price == 0 {
        return "Free".into();
    }
    let price = format_money(p.price, &p.currency);
    if p.kind == "subscription" {
        return format!("{price} / {}", p.billing_interval.as_deref().unwrap_or("month"));
    }
    price
}

fn card(p: &Product) -> Card {
    let hue = p.id.bytes().map(u32::from).sum::<u32>() % 5 + 1;
    Card {
        id: p.id.clone(),
        stars: None,
        slug: p.slug.clone(),
        title: p.title.clone(),
        summary: p.summary.clone(),
        price_label: price_label(p),
        hue,
        cover_url: p.cover_key.as_ref().map(|_| format!("/media/products/{}/cover", p.id)),
        initial: p
            .title
            .chars()
            .next()
            .map(|c| c.to_uppercase().to_string())
            .unwrap_or_default(),
    }
}

async fn categories(app: &App, selected: &str) -> ApiResult<Vec<Chip>> {
    let rows: Vec<(String,)> = app
        .db
        .fetch_all(sql!(
            "SELECT DISTINCT category FROM products WHERE status = 'published' AND category <> '' ORDER BY category"
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(c,)| Chip {
            href: format!("/products?category={}", enc(&c)),
            selected: c == selected,
            label: c,
        })
        .collect())
}

// ---------- home and catalog ----------

#[derive(Template)]
#[template(path = "store/home.html")]
struct HomePage {
    brand: Brand,
    featured: Vec<Card>,
    categories: Vec<Chip>,
}

async fn home(State(app): State<App>) -> ApiResult<Html<String>> {
    let params = ListParams {
        limit: Some(100),
        ..ListParams::default()
    };
    let (rows, _) = catalog::list_products(&app.db, &params, None).await?;
    let mut featured: Vec<Card> = rows.iter().filter(|p| p.featured).map(card).collect();
    if featured.is_empty() {
        featured = rows.iter().take(12).map(card).collect();
    }
    featured.truncate(12);
    render(&HomePage {
        brand: brand(&app).await,
        featured: with_ratings(&app, featured).await?,
        categories: categories(&app, "").await?,
    })
}

#[derive(Deserialize, Default)]
struct CatalogQuery {
    q: Option<String>,
    category: Option<String>,
    tag: Option<String>,
    cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "store/products.html")]
struct CatalogPage {
    brand: Brand,
    q: String,
    tag: String,
    categories: Vec<Chip>,
    cards: Vec<Card>,
    next_href: Option<String>,
}

async fn catalog_page(State(app): State<App>, Query(cq): Query<CatalogQuery>) -> ApiResult<Html<String>> {
    let params = ListParams {
        q: cq.q.clone(),
        category: cq.category.clone(),
        tag: cq.tag.clone(),
        limit: Some(12),
        cursor: cq.cursor.clone(),
        ..ListParams::default()
    };
    let (rows, next) = catalog::list_products(&app.db, &params, None).await?;
    let q = cq.q.unwrap_or_default();
    let category = cq.category.unwrap_or_default();
    let tag = cq.tag.unwrap_or_default();
    let next_href = next.map(|c| {
        format!(
            "/products?q={}&category={}&tag={}&cursor={}",
            enc(&q),
            enc(&category),
            enc(&tag),
            enc(&c)
        )
    });
    render(&CatalogPage {
        brand: brand(&app).await,
        categories: categories(&app, &category).await?,
        cards: with_ratings(&app, rows.iter().map(card).collect()).await?,
        q,
        tag,
        next_href,
    })
}

// ---------- product page and buy ----------

pub struct FileView {
    pub name: String,
    pub size: String,
    pub sha256: String,
}

pub struct VersionView {
    pub version: String,
    pub changelog_html: String,
    pub files: Vec<FileView>,
}

#[derive(Template)]
#[template(path = "store/product.html")]
struct ProductPage {
    brand: Brand,
    c: Card,
    product_id: String,
    category: String,
    category_href: String,
    tags: Vec<Chip>,
    description_html: String,
    images: Vec<crate::images::ImageView>,
    version: Option<VersionView>,
    policy: Vec<String>,
    free: bool,
    pwyw_min: Option<String>,
    currency: String,
    csrf: String,
    email: String,
    amount: String,
    error: Option<String>,
    reviews: crate::http::reviews::ReviewsBlock,
}

pub fn human_size(n: i64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

fn policy_words(p: &Product) -> Vec<String> {
    let mut out = Vec::new();
    let dl: catalog::DownloadPolicy = serde_json::from_str(&p.download_policy).unwrap_or_default();
    out.push(format!(
        "Download up to {} times within {} days of purchase.",
        dl.max_downloads, dl.link_days
    ));
    let lic: Value = serde_json::from_str(&p.license_policy).unwrap_or(Value::Null);
    match lic["type"].as_str() {
        Some("perpetual") => out.push(format!(
            "Includes a perpetual license key for up to {} devices.",
            lic["max_activations"].as_i64().unwrap_or(1)
        )),
        Some("subscription") => {
            out.push("Includes a license key, valid while your subscription is active.".into());
        }
        Some("single_use") => out.push("Includes a single-use license key.".into()),
        _ => {}
    }
    if p.watermark_policy != "none" && !p.watermark_policy.is_empty() {
        out.push("Files are personalised for you with an order mark.".into());
    }
    out.push("Instant delivery by email and on the next page.".into());
    out
}

/// Reads the CSRF cookie, or mints one (then the response must set it).
pub fn csrf_token(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(t) = cookie(headers, CSRF_COOKIE).filter(|t| t.len() >= 16 && t.len() <= 64) {
        return (t, None);
    }
    let t = crate::ids::random_token(24);
    let hv = HeaderValue::from_str(&format!("{CSRF_COOKIE}={t}; Path=/; HttpOnly; SameSite=Lax")).ok();
    (t, hv)
}

pub fn csrf_ok(headers: &HeaderMap, form_token: &str) -> bool {
    use subtle::ConstantTimeEq;
    match cookie(headers, CSRF_COOKIE) {
        Some(c) if !c.is_empty() => bool::from(c.as_bytes().ct_eq(form_token.as_bytes())),
        _ => false,
    }
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn published(app: &App, slug: &str) -> ApiResult<Product> {
    catalog::find_for_sale(&app.db, slug)
        .await?
        .ok_or_else(|| crate::error::not_found("product"))
}

async fn product_view(
    app: &App,
    p: &Product,
    csrf: String,
    form: Option<&BuyForm>,
    error: Option<String>,
) -> ApiResult<ProductPage> {
    let version = match catalog::current_version(&app.db, p).await? {
        Some((v, files)) => Some(VersionView {
            version: v.version,
            changelog_html: crate::markdown::to_html(&v.changelog_md),
            files: files
                .into_iter()
                .map(|f| FileView {
                    name: f.name,
                    size: human_size(f.size),
                    sha256: f.sha256,
                })
                .collect(),
        }),
        None => None,
    };
    let mut c = card(p);
    let reviews = crate::http::reviews::reviews_block(app, p).await?;
    c.stars.clone_from(&reviews.stars);
    Ok(ProductPage {
        reviews,
        brand: brand(app).await,
        c,
        product_id: p.id.clone(),
        category_href: format!("/products?category={}", enc(&p.category)),
        category: p.category.clone(),
        tags: p
            .tags
            .split_whitespace()
            .map(|t| Chip {
                label: format!("#{t}"),
                href: format!("/products?tag={}", enc(t)),
                selected: false,
            })
            .collect(),
        description_html: crate::markdown::to_html(&p.description_md),
        images: crate::images::views(&app.db, &p.id).await?,
        version,
        policy: policy_words(p),
        free: p.price == 0 && p.pwyw_min.is_none(),
        pwyw_min: p.pwyw_min.map(|m| format_money(m, &p.currency)),
        currency: p.currency.clone(),
        csrf,
        email: form.map(|f| f.email.clone()).unwrap_or_default(),
        amount: form
            .and_then(|f| f.amount.clone())
            .or_else(|| p.pwyw_min.map(|m| major_units(m.max(p.price), &p.currency)))
            .unwrap_or_default(),
        error,
    })
}

async fn product_page(State(app): State<App>, Path(slug): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let p = published(&app, &slug).await?;
    let (csrf, set) = csrf_token(&headers);
    let page = product_view(&app, &p, csrf, None, None).await?;
    let mut resp = render(&page)?.into_response();
    if let Some(v) = set {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn major_units(minor: i64, currency: &str) -> String {
    let exp = catalog::currency_exponent(currency).unwrap_or(2);
    if exp == 0 {
        return minor.to_string();
    }
    let div = 10_i64.pow(exp);
    format!("{}.{:0width$}", minor / div, minor % div, width = exp as usize)
}

/// "12", "12.5", "12.50" → minor units; `None` for anything else.
pub fn parse_amount(s: &str, currency: &str) -> Option<i64> {
    let exp = catalog::currency_exponent(currency)?;
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 12 {
        return None;
    }
    if frac.len() > exp as usize || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<width$}", width = exp as usize).parse().ok()?
    };
    whole.checked_mul(10_i64.pow(exp))?.checked_add(frac_val)
}

#[derive(Deserialize)]
struct BuyForm {
    csrf: String,
    email: String,
    amount: Option<String>,
}

/// "Buy now": creates the order and sends the buyer to checkout (or, when free, to the
/// success page). Bad input re-renders the product page with the buyer's input.
async fn buy(
    State(app): State<App>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    Form(f): Form<BuyForm>,
) -> ApiResult<Response> {
    if !csrf_ok(&headers, &f.csrf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "This form expired. Go back, reload the page and try again.",
        ));
    }
    let p = published(&app, &slug).await?;
    let amount = match (p.pwyw_min, f.amount.as_deref()) {
        (Some(_), Some(a)) => match parse_amount(a, &p.currency) {
            Some(v) => Some(v),
            None => {
                let page = product_view(
                    &app,
                    &p,
                    f.csrf.clone(),
                    Some(&f),
                    Some("Enter an amount such as 12.50.".into()),
                )
                .await?;
                return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response());
            }
        },
        _ => None,
    };
    let line = CartLine {
        product_id: p.id.clone(),
        quantity: 1,
        amount,
    };
    let tx = app.db.begin().await?;
    let affiliate = crate::auth::cookie(&headers, crate::affiliates::REF_COOKIE);
    match checkout::create_order(&app, &tx, &f.email, &[line], None, affiliate.as_deref()).await {
        Ok((order, token)) => {
            tx.commit().await?;
            app.jobs_enqueued();
            let order = checkout::start_stripe_checkout(&app, &order, &token).await?;
            Ok(Redirect::to(&order_next_url(&order, &token)).into_response())
        }
        Err(ApiError::Client { status, message, .. }) => {
            drop(tx);
            let page = product_view(&app, &p, f.csrf.clone(), Some(&f), Some(message)).await?;
            Ok((status, render(&page)?).into_response())
        }
        Err(e) => Err(e),
    }
}

// ---------- cart ----------

fn parse_cart(headers: &HeaderMap) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    let Some(raw) = cookie(headers, CART_COOKIE) else {
        return out;
    };
    for part in raw.split(',').take(50) {
        let Some((id, q)) = part.split_once(':') else { continue };
        let sane = id.starts_with("prd_")
            && id.len() <= 40
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let Ok(q) = q.parse::<i64>() else { continue };
        if sane && (1..=99).contains(&q) && !out.iter().any(|(i, _)| i == id) {
            out.push((id.to_string(), q));
        }
    }
    out
}

fn cart_cookie(lines: &[(String, i64)]) -> Option<HeaderValue> {
    let v = lines
        .iter()
        .map(|(i, q)| format!("{i}:{q}"))
        .collect::<Vec<_>>()
        .join(",");
    let max_age = if lines.is_empty() { 0 } else { 2_592_000 };
    HeaderValue::from_str(&format!(
        "{CART_COOKIE}={v}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

fn csrf_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_failed",
        "This form expired. Go back, reload the page and try again.",
    )
}

pub struct CartLineView {
    pub product_id: String,
    pub quantity: i64,
    pub card: Card,
}

#[derive(Template)]
#[template(path = "store/cart.html")]
struct CartPage {
    brand: Brand,
    lines: Vec<CartLineView>,
    subtotal: String,
    csrf: String,
    email: String,
    discount_code: String,
    error: Option<String>,
}

async fn cart_view(
    app: &App,
    lines: &[(String, i64)],
    csrf: String,
    form: Option<&CartCheckoutForm>,
    error: Option<String>,
) -> ApiResult<CartPage> {
    let mut views = Vec::new();
    let mut subtotal = 0_i64;
    let mut currency = String::from("USD");
    for (id, q) in lines {
        if let Some(p) = catalog::find_for_sale(&app.db, id).await? {
            subtotal += p.price.max(p.pwyw_min.unwrap_or(0)) * q;
            currency.clone_from(&p.currency);
            views.push(CartLineView {
                product_id: p.id.clone(),
                quantity: *q,
                card: card(&p),
            });
        }
    }
    Ok(CartPage {
        brand: brand(app).await,
        lines: views,
        subtotal: format_money(subtotal, &currency),
        csrf,
        email: form.map(|f| f.email.clone()).unwrap_or_default(),
        discount_code: form.and_then(|f| f.discount_code.clone()).unwrap_or_default(),
        error,
    })
}

async fn cart_page(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    let (csrf, set) = csrf_token(&headers);
    let page = cart_view(&app, &parse_cart(&headers), csrf, None, None).await?;
    let mut resp = render(&page)?.into_response();
    if let Some(v) = set {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct CartAddForm {
    csrf: String,
    product_id: String,
}

async fn cart_add(State(app): State<App>, headers: HeaderMap, Form(f): Form<CartAddForm>) -> ApiResult<Response> {
    if !csrf_ok(&headers, &f.csrf) {
        return Err(csrf_refused());
    }
    let p = published(&app, &f.product_id).await?;
    let mut lines = parse_cart(&headers);
    if let Some((_, q)) = lines.iter_mut().find(|(i, _)| *i == p.id) {
        *q = (*q + 1).min(99);
    } else if lines.len() < 50 {
        lines.push((p.id.clone(), 1));
    }
    let mut resp = Redirect::to("/cart").into_response();
    if let Some(v) = cart_cookie(&lines) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn cart_remove(headers: HeaderMap, Form(f): Form<CartAddForm>) -> ApiResult<Response> {
    if !csrf_ok(&headers, &f.csrf) {
        return Err(csrf_refused());
    }
    let mut lines = parse_cart(&headers);
    lines.retain(|(i, _)| *i != f.product_id);
    let mut resp = Redirect::to("/cart").into_response();
    if let Some(v) = cart_cookie(&lines) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct CartCheckoutForm {
    csrf: String,
    email: String,
    discount_code: Option<String>,
}

/// "Checkout": one order for the whole cart (with the discount code), then the test
/// checkout page, or the success page when nothing is left to pay. Empties the cart.
async fn cart_checkout(
    State(app): State<App>,
    headers: HeaderMap,
    Form(f): Form<CartCheckoutForm>,
) -> ApiResult<Response> {
    if !csrf_ok(&headers, &f.csrf) {
        return Err(csrf_refused());
    }
    let lines = parse_cart(&headers);
    let cart: Vec<CartLine> = lines
        .iter()
        .map(|(id, q)| CartLine {
            product_id: id.clone(),
            quantity: *q,
            amount: None,
        })
        .collect();
    let code = f.discount_code.as_deref().map(str::trim).filter(|c| !c.is_empty());
    let tx = app.db.begin().await?;
    let affiliate = crate::auth::cookie(&headers, crate::affiliates::REF_COOKIE);
    match checkout::create_order(&app, &tx, &f.email, &cart, code, affiliate.as_deref()).await {
        Ok((order, token)) => {
            tx.commit().await?;
            app.jobs_enqueued();
            let order = checkout::start_stripe_checkout(&app, &order, &token).await?;
            let mut resp = Redirect::to(&order_next_url(&order, &token)).into_response();
            if let Some(v) = cart_cookie(&[]) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        Err(ApiError::Client { status, message, .. }) => {
            drop(tx);
            let page = cart_view(&app, &lines, f.csrf.clone(), Some(&f), Some(message)).await?;
            Ok((status, render(&page)?).into_response())
        }
        Err(e) => Err(e),
    }
}

/// Where a new order goes next: Stripe's page or the test checkout while pending, the success
/// page once paid.
pub fn order_next_url(order: &checkout::Order, token: &str) -> String {
    if order.status == "pending" && order.provider == "stripe" {
        order
            .checkout_url
            .clone()
            .unwrap_or_else(|| format!("/orders/{}/success?token={token}", order.id))
    } else if order.status == "pending" {
        format!("/checkout/test/{}?token={token}", order.id)
    } else {
        format!("/orders/{}/success?token={token}", order.id)
    }
}

// ---------- test checkout, success, errors (rendered for http::commerce) ----------

#[derive(Template)]
#[template(path = "store/checkout.html")]
pub struct CheckoutPage {
    pub brand: Brand,
    pub total: String,
    pub order_id: String,
    pub email: String,
    pub lines: Vec<String>,
    pub discount: Option<String>,
}

pub async fn checkout_page(app: &App, order: &checkout::Order) -> ApiResult<Html<String>> {
    let v = checkout::order_json(app, order, None).await?;
    let lines = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let q = i["quantity"].as_i64().unwrap_or(1);
            let price = format_money(i["unit_price"].as_i64().unwrap_or(0), &order.currency);
            let title = i["title"].as_str().unwrap_or_default();
            if q > 1 {
                format!("{title} × {q} — {price} each")
            } else {
                format!("{title} — {price}")
            }
        })
        .collect();
    render(&CheckoutPage {
        brand: brand(app).await,
        total: format_money(order.total, &order.currency),
        order_id: order.id.clone(),
        email: order.email.clone(),
        lines,
        discount: (order.discount_total > 0)
            .then(|| format!("−{}", format_money(order.discount_total, &order.currency))),
    })
}

pub struct DownloadView {
    pub title: String,
    pub download_url: Option<String>,
    pub license_key: Option<String>,
}

#[derive(Template)]
#[template(path = "store/success.html")]
pub struct SuccessPage {
    pub brand: Brand,
    pub paid: bool,
    pub pending: bool,
    pub status: String,
    pub email: String,
    pub items: Vec<DownloadView>,
    pub invoice_url: Option<String>,
}

pub async fn success_page(app: &App, order: &checkout::Order) -> ApiResult<Html<String>> {
    let v = checkout::order_json(app, order, None).await?;
    let items = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| DownloadView {
            title: i["title"].as_str().unwrap_or_default().to_string(),
            download_url: i["download_url"].as_str().map(str::to_string),
            license_key: i["license_key"].as_str().map(str::to_string),
        })
        .collect();
    render(&SuccessPage {
        brand: brand(app).await,
        paid: matches!(order.status.as_str(), "paid" | "partially_refunded"),
        pending: order.status == "pending",
        status: order.status.clone(),
        email: order.email.clone(),
        items,
        invoice_url: v["invoice_url"].as_str().map(str::to_string),
    })
}

#[derive(Template)]
#[template(path = "store/plain.html")]
struct PlainPage<'a> {
    brand: Brand,
    title: &'a str,
    body: &'a str,
}

/// A page in the store's layout around trusted HTML (callers escape what they interpolate).
pub async fn plain_page(app: &App, title: &str, body_html: &str) -> ApiResult<Html<String>> {
    render(&PlainPage {
        brand: brand(app).await,
        title,
        body: body_html,
    })
}

/// The page an emailed sign-in link opens: who it signs in and one button that does it (a
/// POST to the same address). Opening the link spends nothing, so a mail scanner or a link
/// preview that fetches it first leaves the buyer a link that still works.
/// `base` is the link's address without its token; 401 for a used or expired link.
pub async fn sign_in_link_page(app: &App, token: &str, purpose: &str, base: &str, place: &str) -> ApiResult<Response> {
    let email = crate::library::magic_link_email(app, token, purpose).await?;
    let action = format!("{base}/{token}");
    plain_page(
        app,
        "Sign in",
        &format!(
            "<h1>Sign in to {place}</h1><p>You are signing in as <strong>{}</strong>.</p>\
             <form method=\"post\" action=\"{}\"><button class=\"btn\" id=\"sign-in\">Continue to {place}</button></form>\
             <p class=\"muted\">This link works once and expires {} minutes after it was sent. Didn't ask to sign in? Ignore it: nothing happens until you press the button.</p>",
            esc(&email),
            esc(&action),
            crate::library::MAGIC_LINK_MINUTES,
        ),
    )
    .await
    .map(IntoResponse::into_response)
}

/// HTML-escapes text for `plain_page` bodies.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[derive(Template)]
#[template(path = "store/error.html")]
struct ErrorPage {
    brand: Brand,
    status: u16,
    heading: String,
    message: String,
}

fn heading_for(status: StatusCode, code: &str) -> &'static str {
    match (status.as_u16(), code) {
        (_, "download_limit_reached") => "Download limit reached",
        (_, "reconfirm_required") => "Check your email to continue",
        (_, "link_used") => "Already confirmed",
        (_, "link_replaced") => "A newer link was emailed to you",
        (_, "link_expired") => "This link has expired",
        (_, "access_revoked") => "This download is no longer available",
        (404, _) => "Page not found",
        (403, _) => "Not allowed",
        (410, _) => "Gone",
        (s, _) if s >= 500 => "Something went wrong",
        _ => "That didn't work",
    }
}

// ---------- the browser layer ----------

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn ref_cookie(query: Option<&str>) -> Option<HeaderValue> {
    let code = url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ref")
        .map(|(_, v)| v.into_owned())?;
    let sane = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !sane {
        return None;
    }
    HeaderValue::from_str(&format!(
        "{REF_COOKIE}={code}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

/// Browser concerns for every response: HTML error pages for browsers (JSON stays JSON
/// for API clients), security headers, and the `?ref=` attribution cookie.
pub async fn browser_layer<F, Fut>(app: &App, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let html_client = wants_html(req.headers());
    let path = req.uri().path().to_string();
    let is_api = path.starts_with("/api/") && !path.starts_with("/api/v1/downloads/");
    let set_ref = if is_api || req.method() != axum::http::Method::GET {
        None
    } else {
        ref_cookie(req.uri().query())
    };
    if set_ref.is_some() {
        // A storefront visit with ?ref= is an affiliate click (unknown codes count nothing).
        let code = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "ref")
            .map(|(_, v)| v.into_owned());
        if let Some(code) = code {
            if let Err(e) = crate::affiliates::record_click(&app.db, &code).await {
                tracing::warn!(error = %e, "could not count an affiliate click");
            }
        }
    }
    let mut resp = next(req).await;

    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if html_client && !is_api && is_json && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp = html_error(app, resp, path.starts_with("/api/v1/downloads/")).await;
    }

    let h = resp.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    let is_html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    // A handler that chose its own policy (e.g. a sandboxed email preview) keeps it.
    if is_html && !h.contains_key("content-security-policy") {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    }
    if let Some(v) = set_ref {
        h.append(header::SET_COOKIE, v);
    }
    resp
}

async fn html_error(app: &App, resp: Response, download: bool) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let status = parts.status;
    let message = if status.is_server_error() {
        "We hit a problem on our side. Please try again in a minute.".to_string()
    } else if download && code != "reconfirm_required" {
        format!(
            "{} If you bought this, use the link in your receipt email or contact the store.",
            v["error"]["message"]
                .as_str()
                .unwrap_or("This download link can't be used.")
        )
    } else if status == StatusCode::NOT_FOUND {
        "We couldn't find that page. It may have moved, or the link may be mistyped.".to_string()
    } else {
        v["error"]["message"]
            .as_str()
            .unwrap_or("The request could not be completed.")
            .to_string()
    };
    let page = ErrorPage {
        brand: brand(app).await,
        status: status.as_u16(),
        heading: if download && status == StatusCode::NOT_FOUND {
            "This download link isn't valid".to_string()
        } else {
            heading_for(status, code).to_string()
        },
        message,
    };
    match page.render() {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            if let Some(rid) = parts.headers.get("x-request-id") {
                r.headers_mut().insert("x-request-id", rid.clone());
            }
            r
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_in_minor_units() {
        assert_eq!(parse_amount("12", "USD"), Some(1200));
        assert_eq!(parse_amount("12.5", "USD"), Some(1250));
        assert_eq!(parse_amount("0.05", "USD"), Some(5));
        assert_eq!(parse_amount("300", "JPY"), Some(300));
        assert_eq!(parse_amount("1.234", "USD"), None);
        assert_eq!(parse_amount("-1", "USD"), None);
        assert_eq!(parse_amount("", "USD"), None);
        assert_eq!(major_units(1250, "USD"), "12.50");
    }

    #[test]
    fn ref_cookie_is_sane_only() {
        let v = ref_cookie(Some("a=1&ref=ALICE-2")).unwrap();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("satchel_ref=ALICE-2;"));
        assert!(s.contains("Max-Age=2592000") && s.contains("HttpOnly") && s.contains("SameSite=Lax"));
        assert!(ref_cookie(Some("ref=a;b")).is_none());
        assert!(ref_cookie(Some("x=1")).is_none());
    }
}
