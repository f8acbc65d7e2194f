//! Products: list with a status filter, create and edit (every field, validated by
//! `catalog`, errors placed on their fields), publish / archive, and new versions (a
//! multipart form handled here; `static/uploader.js` upgrades it to tus uploads).

use askama::Template;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{major_units, render, render_status, see_other, Dash, DashForm, Errors, Layout};
use crate::app::App;
use crate::catalog::{self, DownloadPolicy, LicensePolicy, NewFile, NewProduct, ProductPatch};
use crate::db::models::{Product, PRODUCT_COLS};
use crate::db::Exec;
use crate::error::{bad_request, not_found, ApiError, ApiResult};
use crate::http::pages::{parse_amount, price_label};
use crate::sql;

async fn own_product(app: &App, dash: &Dash, id: &str) -> ApiResult<Product> {
    if !id.starts_with("prd_") {
        return Err(not_found("product"));
    }
    catalog::find_product(&app.db, id)
        .await?
        .filter(|p| p.seller_id == dash.seller_id)
        .ok_or_else(|| not_found("product"))
}

// ---------- list ----------

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    status: String,
    cursor: String,
    notice: Option<String>,
}

pub struct Row {
    pub id: String,
    /// The cover (served publicly once the product is not a draft), else an initial on a tint.
    pub thumb_url: Option<String>,
    pub initial: String,
    pub hue: u32,
    pub title: String,
    pub slug: String,
    pub status: String,
    pub price: String,
    pub version: String,
    pub sales: i64,
    pub revenue: String,
    pub updated: String,
}

pub struct Filter {
    pub label: &'static str,
    pub href: String,
    pub count: i64,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "dashboard/products.html")]
struct ListPage {
    l: Layout,
    filters: Vec<Filter>,
    rows: Vec<Row>,
    next_href: Option<String>,
    status: String,
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let status = match q.status.as_str() {
        s @ ("draft" | "published" | "archived") => s.to_string(),
        _ => String::new(),
    };
    let mut query = crate::db::Query::new(format!("SELECT {PRODUCT_COLS} FROM products p WHERE p.seller_id = $1"));
    query.args.push(dash.seller_id.clone().into());
    if !status.is_empty() {
        let a = query.arg(status.as_str());
        query.push_sql(&format!(" AND p.status = {a}"));
    }
    if q.cursor.starts_with("prd_") && q.cursor.len() <= 40 {
        let a = query.arg(q.cursor.as_str());
        query.push_sql(&format!(" AND p.id < {a}"));
    }
    query.push_sql(" ORDER BY p.id DESC LIMIT 51");
    let mut products: Vec<Product> = app.db.fetch_all(query).await?;
    let next_href = (products.len() > 50).then(|| {
        products.truncate(50);
        format!(
            "/dashboard/products?status={status}&cursor={}",
            products.last().map(|p| p.id.as_str()).unwrap_or_default()
        )
    });
    let sales: Vec<(String, i64, String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT i.product_id, CAST(SUM(i.quantity) AS BIGINT), o.currency, CAST(SUM(i.total) AS BIGINT)
             FROM order_items i JOIN orders o ON o.id = i.order_id
             WHERE o.seller_id = $1 AND o.paid_at IS NOT NULL AND i.status <> 'refunded' AND i.parent_item_id IS NULL
             GROUP BY i.product_id, o.currency",
            &dash.seller_id
        ))
        .await?;
    let versions: Vec<(String, String)> = app
        .db
        .fetch_all(sql!(
            "SELECT p.id, v.version FROM products p JOIN product_versions v ON v.id = p.current_version_id WHERE p.seller_id = $1",
            &dash.seller_id
        ))
        .await?;
    let rows = products
        .iter()
        .map(|p| {
            let mine: Vec<&(String, i64, String, i64)> = sales.iter().filter(|s| s.0 == p.id).collect();
            Row {
                id: p.id.clone(),
                thumb_url: p
                    .cover_key
                    .as_ref()
                    .filter(|_| p.status != "draft")
                    .map(|_| format!("/media/products/{}/cover", p.id)),
                initial: p
                    .title
                    .chars()
                    .next()
                    .map(|c| c.to_uppercase().to_string())
                    .unwrap_or_default(),
                hue: p.id.bytes().map(u32::from).sum::<u32>() % 5 + 1,
                title: p.title.clone(),
                slug: p.slug.clone(),
                status: p.status.clone(),
                price: price_label(p),
                version: versions
                    .iter()
                    .find(|v| v.0 == p.id)
                    .map(|v| v.1.clone())
                    .unwrap_or_else(|| "—".into()),
                sales: mine.iter().map(|s| s.1).sum(),
                revenue: if mine.is_empty() {
                    "—".into()
                } else {
                    mine.iter()
                        .map(|s| super::money(s.3, &s.2))
                        .collect::<Vec<_>>()
                        .join(" + ")
                },
                updated: super::ago(p.updated_at),
            }
        })
        .collect();
    let counts: Vec<(String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT status, COUNT(*) FROM products WHERE seller_id = $1 GROUP BY status",
            &dash.seller_id
        ))
        .await?;
    let count_of = |s: &str| counts.iter().filter(|c| s.is_empty() || c.0 == s).map(|c| c.1).sum();
    let filters = [
        ("", "All"),
        ("published", "Published"),
        ("draft", "Drafts"),
        ("archived", "Archived"),
    ]
    .iter()
    .map(|(key, label)| Filter {
        label,
        href: if key.is_empty() {
            "/dashboard/products".into()
        } else {
            format!("/dashboard/products?status={key}")
        },
        count: count_of(key),
        selected: *key == status,
    })
    .collect();
    render(&ListPage {
        l: dash.layout("products", "Products").with_notice(q.notice.as_deref()),
        filters,
        rows,
        next_href,
        status,
    })
}

// ---------- the product form ----------

/// Every field as typed (so a re-render shows exactly what the seller entered).
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct ProductForm {
    pub csrf: String,
    /// `save` or `preview`.
    pub intent: String,
    pub title: String,
    pub slug: String,
    pub summary: String,
    pub description: String,
    pub price: String,
    pub currency: String,
    pub kind: String,
    pub billing_interval: String,
    pub pwyw: Option<String>,
    pub pwyw_min: String,
    pub category: String,
    pub tags: String,
    pub license_type: String,
    pub max_activations: String,
    pub term_days: String,
    pub key_prefix: String,
    pub max_downloads: String,
    pub link_days: String,
    pub ip_policy: String,
    pub watermark_policy: String,
    pub status: String,
    pub featured: Option<String>,
}

impl ProductForm {
    fn blank() -> Self {
        Self {
            currency: "USD".into(),
            kind: "one_time".into(),
            billing_interval: "month".into(),
            license_type: "none".into(),
            max_activations: "3".into(),
            max_downloads: "5".into(),
            link_days: "30".into(),
            ip_policy: "none".into(),
            watermark_policy: "none".into(),
            status: "draft".into(),
            ..Self::default()
        }
    }

    fn of(p: &Product) -> Self {
        let lic: LicensePolicy = serde_json::from_str(&p.license_policy).unwrap_or(LicensePolicy::None);
        let dl: DownloadPolicy = serde_json::from_str(&p.download_policy).unwrap_or_default();
        let (license_type, max_activations, term_days, key_prefix) = match lic {
            LicensePolicy::None => ("none", String::from("3"), None, None),
            LicensePolicy::Perpetual {
                max_activations,
                term_days,
                key_prefix,
            } => ("perpetual", max_activations.to_string(), term_days, key_prefix),
            LicensePolicy::Subscription { key_prefix, .. } => ("subscription", "3".into(), None, key_prefix),
            LicensePolicy::SingleUse { term_days, key_prefix } => ("single_use", "1".into(), term_days, key_prefix),
        };
        Self {
            csrf: String::new(),
            intent: String::new(),
            title: p.title.clone(),
            slug: p.slug.clone(),
            summary: p.summary.clone(),
            description: p.description_md.clone(),
            price: major_units(p.price, &p.currency),
            currency: p.currency.clone(),
            kind: p.kind.clone(),
            billing_interval: p.billing_interval.clone().unwrap_or_else(|| "month".into()),
            pwyw: p.pwyw_min.map(|_| "on".into()),
            pwyw_min: p.pwyw_min.map(|m| major_units(m, &p.currency)).unwrap_or_default(),
            category: p.category.clone(),
            tags: p.tags.split_whitespace().collect::<Vec<_>>().join(", "),
            license_type: license_type.into(),
            max_activations,
            term_days: term_days.map(|d| d.to_string()).unwrap_or_default(),
            key_prefix: key_prefix.unwrap_or_default(),
            max_downloads: dl.max_downloads.to_string(),
            link_days: dl.link_days.to_string(),
            ip_policy: dl.ip_policy,
            watermark_policy: p.watermark_policy.clone(),
            status: p.status.clone(),
            featured: p.featured.then(|| "on".into()),
        }
    }

    fn int(&self, errors: &mut Errors, field: &str, value: &str, what: &str) -> Option<i64> {
        match value.trim().parse::<i64>() {
            Ok(v) => Some(v),
            Err(_) => {
                errors.add(field, format!("Enter {what} as a whole number."));
                None
            }
        }
    }

    /// Parses what the form can check itself; domain validation comes after.
    fn parsed(&self, errors: &mut Errors) -> Option<Parsed> {
        if self.title.trim().is_empty() {
            errors.add("title", "Enter the title buyers will see.");
        }
        let currency = self.currency.trim().to_ascii_uppercase();
        let money_currency = if catalog::currency_exponent(&currency).is_some() {
            currency.clone()
        } else {
            errors.add("currency", "Choose a currency from the list.");
            "USD".to_string()
        };
        let price = if self.price.trim().is_empty() {
            errors.add("price", "Enter a price, or 0 for a free product.");
            None
        } else {
            let p = parse_amount(&self.price, &money_currency);
            if p.is_none() {
                errors.add("price", "Enter the price as a number such as 19 or 19.99.");
            }
            p
        };
        let pwyw_min = if self.pwyw.is_some() {
            if self.pwyw_min.trim().is_empty() {
                Some(0)
            } else {
                let m = parse_amount(&self.pwyw_min, &money_currency);
                if m.is_none() {
                    errors.add(
                        "pwyw_min",
                        "Enter the minimum as a number such as 5 or 4.99 (0 lets buyers pay nothing).",
                    );
                }
                Some(m.unwrap_or(0))
            }
        } else {
            None
        };
        let key_prefix = {
            let k = self.key_prefix.trim().to_ascii_uppercase();
            if k.is_empty() {
                None
            } else if k.len() <= 8 && k.bytes().all(|b| b.is_ascii_alphanumeric()) {
                Some(k)
            } else {
                errors.add("key_prefix", "A key prefix is 1–8 letters or digits, like PXL.");
                None
            }
        };
        let term_days = if self.term_days.trim().is_empty() {
            None
        } else {
            self.int(errors, "term_days", &self.term_days, "the term in days")
        };
        let license = match self.license_type.as_str() {
            "none" | "" => LicensePolicy::None,
            "perpetual" => LicensePolicy::Perpetual {
                max_activations: self
                    .int(errors, "max_activations", &self.max_activations, "the device limit")
                    .unwrap_or(1),
                term_days,
                key_prefix,
            },
            "subscription" => LicensePolicy::Subscription {
                check_in_hours: 24,
                grace_days: 7,
                key_prefix,
            },
            "single_use" => LicensePolicy::SingleUse { term_days, key_prefix },
            _ => {
                errors.add("license_policy", "Choose a license type from the list.");
                LicensePolicy::None
            }
        };
        let download = DownloadPolicy {
            max_downloads: self
                .int(errors, "max_downloads", &self.max_downloads, "the download limit")
                .unwrap_or(1),
            link_days: self
                .int(errors, "link_days", &self.link_days, "the number of days")
                .unwrap_or(1),
            ip_policy: self.ip_policy.clone(),
            ip_allow: Vec::new(),
        };
        let tags = self
            .tags
            .split([',', ' '])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let price = price?;
        errors.is_empty().then_some(Parsed {
            price,
            currency,
            pwyw_min,
            license,
            download,
            tags,
        })
    }

    fn new_product(&self, p: Parsed) -> NewProduct {
        NewProduct {
            title: self.title.clone(),
            slug: Some(self.slug.trim().to_string()).filter(|s| !s.is_empty()),
            summary: self.summary.trim().to_string(),
            description: self.description.clone(),
            price: p.price,
            currency: p.currency,
            kind: self.kind.clone(),
            billing_interval: (self.kind == "subscription").then(|| self.billing_interval.clone()),
            pwyw_min: p.pwyw_min,
            category: self.category.trim().to_string(),
            tags: p.tags,
            license_policy: p.license,
            download_policy: p.download,
            watermark_policy: self.watermark_policy.clone(),
            status: self.status.clone(),
            featured: self.featured.is_some(),
            bundle_products: Vec::new(),
        }
    }

    fn patch(&self, p: Parsed) -> ProductPatch {
        ProductPatch {
            title: Some(self.title.clone()),
            slug: Some(self.slug.trim().to_string()),
            summary: Some(self.summary.trim().to_string()),
            description: Some(self.description.clone()),
            price: Some(p.price),
            currency: Some(p.currency),
            pwyw_min: Some(p.pwyw_min),
            category: Some(self.category.trim().to_string()),
            tags: Some(p.tags),
            license_policy: Some(p.license),
            download_policy: Some(p.download),
            watermark_policy: Some(self.watermark_policy.clone()),
            status: Some(self.status.clone()),
            featured: Some(self.featured.is_some()),
        }
    }
}

struct Parsed {
    price: i64,
    currency: String,
    pwyw_min: Option<i64>,
    license: LicensePolicy,
    download: DownloadPolicy,
    tags: Vec<String>,
}

pub struct Opt {
    pub value: &'static str,
    pub label: &'static str,
}

const fn opt(value: &'static str, label: &'static str) -> Opt {
    Opt { value, label }
}

pub struct VersionRow {
    pub version: String,
    pub when: String,
    pub files: Vec<String>,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "dashboard/product_form.html")]
struct FormPage {
    l: Layout,
    /// `None` for a new product.
    product_id: Option<String>,
    product_slug: String,
    product_status: String,
    f: ProductForm,
    errors: Errors,
    preview_html: Option<String>,
    currencies: Vec<&'static str>,
    kinds: Vec<Opt>,
    intervals: Vec<Opt>,
    license_types: Vec<Opt>,
    ip_policies: Vec<Opt>,
    watermarks: Vec<Opt>,
    statuses: Vec<Opt>,
    versions: Vec<VersionRow>,
}

impl FormPage {
    fn new(l: Layout, product: Option<&Product>, f: ProductForm, errors: Errors) -> Self {
        FormPage {
            l,
            product_id: product.map(|p| p.id.clone()),
            product_slug: product.map(|p| p.slug.clone()).unwrap_or_default(),
            product_status: product.map(|p| p.status.clone()).unwrap_or_default(),
            f,
            errors,
            preview_html: None,
            currencies: catalog::CURRENCIES.iter().map(|(c, _)| *c).collect(),
            kinds: vec![
                opt("one_time", "One-time purchase"),
                opt("subscription", "Subscription"),
            ],
            intervals: vec![
                opt("day", "Daily"),
                opt("week", "Weekly"),
                opt("month", "Monthly"),
                opt("year", "Yearly"),
            ],
            license_types: vec![
                opt("none", "None"),
                opt("perpetual", "Perpetual"),
                opt("subscription", "While subscribed"),
                opt("single_use", "Single use"),
            ],
            ip_policies: vec![
                opt("none", "Any network"),
                opt("bind_first", "Bind to the first network used"),
            ],
            watermarks: vec![
                opt("none", "No watermark"),
                opt("stamp", "Stamp each copy with the buyer's order"),
            ],
            statuses: vec![
                opt("draft", "Draft (hidden)"),
                opt("published", "Published"),
                opt("archived", "Archived"),
            ],
            versions: Vec::new(),
        }
    }
}

async fn versions_of(app: &App, product: &Product) -> ApiResult<Vec<VersionRow>> {
    let rows: Vec<(String, String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, version, created_at FROM product_versions WHERE product_id = $1 ORDER BY created_at DESC, id DESC LIMIT 20",
            &product.id
        ))
        .await?;
    let mut out = Vec::new();
    for (id, version, at) in rows {
        let files = catalog::version_files(&app.db, &id).await?;
        out.push(VersionRow {
            current: product.current_version_id.as_deref() == Some(id.as_str()),
            version,
            when: super::date(at),
            files: files
                .iter()
                .map(|f| format!("{} ({})", f.name, crate::http::pages::human_size(f.size)))
                .collect(),
        });
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

pub async fn new_page(dash: Dash) -> ApiResult<Response> {
    let page = FormPage::new(
        dash.layout("products", "New product"),
        None,
        ProductForm::blank(),
        Errors::default(),
    );
    render(&page)
}

pub async fn create(State(app): State<App>, dash: Dash, DashForm(f): DashForm<ProductForm>) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let mut errors = Errors::default();
    let mut preview = None;
    if f.intent == "preview" {
        preview = Some(crate::markdown::to_html(&f.description));
    } else if let Some(parsed) = f.parsed(&mut errors) {
        let tx = app.db.begin().await?;
        match catalog::create_product(&tx, &dash.seller_id, f.new_product(parsed)).await {
            Ok(p) => {
                tx.commit().await?;
                return Ok(see_other(&format!(
                    "/dashboard/products/{}?notice=product_created",
                    p.id
                )));
            }
            Err(e) => errors.absorb(e)?,
        }
    }
    let mut page = FormPage::new(dash.layout("products", "New product"), None, f, errors);
    page.preview_html = preview;
    let status = if page.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render_status(status, &page)
}

pub async fn edit_page(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> ApiResult<Response> {
    let p = own_product(&app, &dash, &id).await?;
    let mut page = FormPage::new(
        dash.layout("products", p.title.clone())
            .with_notice(q.notice.as_deref()),
        Some(&p),
        ProductForm::of(&p),
        Errors::default(),
    );
    page.versions = versions_of(&app, &p).await?;
    render(&page)
}

pub async fn update(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(mut f): DashForm<ProductForm>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let p = own_product(&app, &dash, &id).await?;
    f.kind.clone_from(&p.kind); // a product's kind is fixed once created
    let mut errors = Errors::default();
    let mut preview = None;
    if f.intent == "preview" {
        preview = Some(crate::markdown::to_html(&f.description));
    } else if let Some(parsed) = f.parsed(&mut errors) {
        let tx = app.db.begin().await?;
        match catalog::update_product(&tx, &dash.seller_id, &p.id, f.patch(parsed)).await {
            Ok(_) => {
                tx.commit().await?;
                return Ok(see_other(&format!("/dashboard/products/{}?notice=product_saved", p.id)));
            }
            Err(e) => errors.absorb(e)?,
        }
    }
    let mut page = FormPage::new(dash.layout("products", p.title.clone()), Some(&p), f, errors);
    page.preview_html = preview;
    page.versions = versions_of(&app, &p).await?;
    let status = if page.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render_status(status, &page)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StatusForm {
    csrf: String,
    status: String,
}

/// Publish, archive or move back to draft in one click.
pub async fn set_status(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(f): DashForm<StatusForm>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    let p = own_product(&app, &dash, &id).await?;
    let notice = match f.status.as_str() {
        "published" => "published",
        "archived" => "archived",
        "draft" => "drafted",
        _ => {
            return Err(bad_request(
                "invalid_status",
                "status must be draft, published or archived",
            ))
        }
    };
    let tx = app.db.begin().await?;
    catalog::update_product(
        &tx,
        &dash.seller_id,
        &p.id,
        ProductPatch {
            status: Some(f.status.clone()),
            ..ProductPatch::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(see_other(&format!("/dashboard/products/{}?notice={notice}", p.id)))
}

// ---------- new version ----------

#[derive(Template)]
#[template(path = "dashboard/version_form.html")]
struct VersionPage {
    l: Layout,
    product_id: String,
    product_title: String,
    current: Option<String>,
    version: String,
    changelog: String,
    errors: Errors,
    versions: Vec<VersionRow>,
    multipart_limit: String,
}

/// `1.2.3` → `1.2.4`; anything else → empty (the seller types it).
fn next_version(v: &str) -> String {
    let mut parts: Vec<&str> = v.split('.').collect();
    if let Some(last) = parts.pop() {
        if let Ok(n) = last.parse::<u64>() {
            let bumped = (n + 1).to_string();
            parts.push(&bumped);
            return parts.join(".");
        }
    }
    String::new()
}

async fn version_view(
    app: &App,
    dash: &Dash,
    p: &Product,
    version: String,
    changelog: String,
    errors: Errors,
) -> ApiResult<VersionPage> {
    let current = catalog::current_version(&app.db, p).await?.map(|(v, _)| v.version);
    Ok(VersionPage {
        l: dash.layout("products", format!("New version of {}", p.title)),
        product_id: p.id.clone(),
        product_title: p.title.clone(),
        version: if version.is_empty() {
            current.as_deref().map(next_version).unwrap_or_else(|| "1.0.0".into())
        } else {
            version
        },
        current,
        changelog,
        errors,
        versions: versions_of(app, p).await?,
        multipart_limit: crate::http::pages::human_size(
            i64::try_from(crate::http::versions::MULTIPART_LIMIT).unwrap_or(i64::MAX),
        ),
    })
}

pub async fn version_page(State(app): State<App>, dash: Dash, Path(id): Path<String>) -> ApiResult<Response> {
    let p = own_product(&app, &dash, &id).await?;
    let page = version_view(&app, &dash, &p, String::new(), String::new(), Errors::default()).await?;
    render(&page)
}

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "These files are too large for one form upload. Turn on JavaScript for resumable uploads, or use the API's resumable uploads (/api/v1/uploads).",
        )
    } else {
        bad_request("invalid_multipart", e.body_text())
    }
}

/// The multipart new-version form: `csrf` first (checked before any byte is stored), then
/// `version`, `changelog` and the files, streamed to storage as they arrive; then the same
/// `versions::publish` the API uses (buyers emailed, libraries show "updated").
pub async fn create_version(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let p = own_product(&app, &dash, &id).await?;
    let mut mp = Multipart::from_request(req, &app).await.map_err(|e| {
        bad_request(
            "invalid_multipart",
            format!("{e}; send the form as multipart/form-data"),
        )
    })?;
    // The version's claim, from before its first file is stored (`versions::claim_version`),
    // and the keys written under it.
    let mut guard = crate::versions::PublishGuard::new(&app);
    let read = read_version_form(&app, &dash, &p, &mut mp, &mut guard).await;
    let published = match read {
        Ok((version, changelog, files, errors)) => {
            publish_version_form(&app, &dash, &p, &mut guard, version, changelog, files, errors).await
        }
        Err(e) => Err(e),
    };
    // Unless published (the guard then holds nothing), the bytes stored for this attempt are
    // removed again and the version's claim ends.
    guard.give_up().await;
    match published? {
        VersionForm::Published(to) => Ok(to),
        VersionForm::Invalid(page) => render_status(StatusCode::UNPROCESSABLE_ENTITY, &*page),
    }
}

/// What became of the new-version form.
enum VersionForm {
    /// Published: the redirect to the product page.
    Published(Response),
    /// Not published: the form again with its errors.
    Invalid(Box<VersionPage>),
}

type ReadForm = (String, String, Vec<NewFile>, Errors);

/// Reads the new-version form (see [`create_version`]), claiming the version before its
/// first file is stored; every key written is added to the guard.
async fn read_version_form(
    app: &App,
    dash: &Dash,
    p: &Product,
    mp: &mut Multipart,
    guard: &mut crate::versions::PublishGuard,
) -> ApiResult<ReadForm> {
    let mut csrf_checked = false;
    let (mut version, mut changelog, mut files): (String, String, Vec<NewFile>) =
        (String::new(), String::new(), Vec::new());
    let mut errors = Errors::default();
    while let Some(field) = mp.next_field().await.map_err(|e| multipart_error(&e))? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "csrf" {
            let token = field.text().await.map_err(|e| multipart_error(&e))?;
            dash.check_csrf(&token)?;
            csrf_checked = true;
            continue;
        }
        if !csrf_checked {
            return Err(super::csrf_refused());
        }
        match name.as_str() {
            "version" => version = field.text().await.map_err(|e| multipart_error(&e))?,
            "changelog" => changelog = field.text().await.map_err(|e| multipart_error(&e))?,
            _ => {
                let Some(raw_name) = field.file_name().map(str::to_string).filter(|n| !n.is_empty()) else {
                    continue; // an empty file input
                };
                if !errors.is_empty() {
                    continue;
                }
                let v = match crate::versions::validate_version(&version) {
                    Ok(v) => v,
                    Err(e) => {
                        errors.absorb(e)?;
                        continue;
                    }
                };
                // Never overwrite the files of a published version, nor those another
                // publish of the same version (a double-submitted form) is storing.
                if guard.claim.is_none() {
                    match crate::versions::claim_version(&app.db, &p.id, &v).await {
                        Ok(c) => guard.claim = Some(c),
                        Err(e) if e.code() == "version_exists" => {
                            // Taken, or stored under the same path as another version's
                            // ("1 1" and "1_1"): that message names the other version.
                            let message = e_message(e);
                            errors.add(
                                "version",
                                if message.contains("already exists") {
                                    format!("Version {v} already exists. Choose a new version number.")
                                } else {
                                    super::capitalize(&message)
                                },
                            );
                            continue;
                        }
                        Err(e) if e.code() == "version_in_progress" => {
                            errors.add(
                                "version",
                                format!("Version {v} is being published by another request (this form sent twice?). Wait a moment, then open the product."),
                            );
                            continue;
                        }
                        Err(e) => {
                            errors.absorb(e)?;
                            continue;
                        }
                    }
                }
                let file_name = match catalog::safe_file_name(&raw_name) {
                    Ok(n) => n,
                    Err(e) => {
                        errors.add("files", super::capitalize(&e_message(e)));
                        continue;
                    }
                };
                let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
                let key = catalog::original_key(&dash.seller_id, &p.id, &v, &file_name);
                let mut field = field;
                let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
                let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
                let feed = async move {
                    loop {
                        match field.chunk().await {
                            Ok(Some(c)) => {
                                if tx.send(Ok(c)).await.is_err() {
                                    return Ok(());
                                }
                            }
                            Ok(None) => return Ok(()),
                            Err(e) => {
                                let err = multipart_error(&e);
                                let _ = tx.send(Err(std::io::Error::other("upload interrupted"))).await;
                                return Err(err);
                            }
                        }
                    }
                };
                guard.stored.push(key.clone());
                let (put, fed) = tokio::join!(app.storage.put(&key, Box::pin(stream), &content_type), feed);
                fed?;
                let put = put?;
                files.push(NewFile {
                    name: file_name,
                    object_key: key,
                    size: i64::try_from(put.size)?,
                    sha256: put.sha256,
                    content_type,
                });
            }
        }
    }
    if !csrf_checked {
        return Err(super::csrf_refused());
    }
    Ok((version, changelog, files, errors))
}

/// Publishes what [`read_version_form`] read, or gives the form back with its errors.
#[allow(clippy::too_many_arguments)]
async fn publish_version_form(
    app: &App,
    dash: &Dash,
    p: &Product,
    guard: &mut crate::versions::PublishGuard,
    version: String,
    changelog: String,
    files: Vec<NewFile>,
    mut errors: Errors,
) -> ApiResult<VersionForm> {
    let valid_version = match crate::versions::validate_version(&version) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.absorb(e)?;
            None
        }
    };
    if files.is_empty() && !errors.has("files") && errors.is_empty() {
        errors.add("files", "Choose at least one file for this version.");
    }
    if let (Some(v), true) = (valid_version, errors.is_empty()) {
        let tx = app.db.begin().await?;
        let published = match crate::versions::publish(app, &tx, p, &v, &changelog, &files).await {
            Ok(_) => match guard.claim.as_ref() {
                Some(c) => c.settle(&tx).await,
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => {
                tx.commit().await?;
                guard.published();
                app.jobs_enqueued();
                return Ok(VersionForm::Published(see_other(&format!(
                    "/dashboard/products/{}?notice=version_published",
                    p.id
                ))));
            }
            Err(e) => {
                drop(tx);
                errors.absorb(e)?;
            }
        }
    }
    Ok(VersionForm::Invalid(Box::new(
        version_view(app, dash, p, version, changelog, errors).await?,
    )))
}

fn e_message(e: ApiError) -> String {
    match e {
        ApiError::Client { message, .. } => message,
        ApiError::Internal(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_versions() {
        assert_eq!(super::next_version("1.2.3"), "1.2.4");
        assert_eq!(super::next_version("2"), "3");
        assert_eq!(super::next_version("1.0-beta"), "");
    }
}
