//! Admin (role `admin` only): every seller on this Satchel, create one, suspend or
//! reactivate one. A suspended seller's sign-in, sessions and API keys stop working at
//! once (`auth` checks the seller's status on every request).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{render, render_status, see_other, Dash, DashForm, Errors, Layout};
use crate::app::App;
use crate::db::Exec;
use crate::error::{bad_request, forbidden, not_found, ApiResult};
use crate::sql;

fn admin_only(dash: &Dash) -> ApiResult<()> {
    if dash.is_admin() {
        Ok(())
    } else {
        Err(forbidden("admin_only", "Only an administrator can manage sellers."))
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct SellerForm {
    pub csrf: String,
    pub email: String,
    pub password: String,
    pub store_name: String,
    pub admin: Option<String>,
}

pub struct Row {
    pub id: String,
    pub store_name: String,
    pub owner: String,
    pub status: String,
    pub products: i64,
    pub orders: i64,
    pub created: String,
    pub is_self: bool,
}

#[derive(Template)]
#[template(path = "dashboard/admin.html")]
struct Page {
    l: Layout,
    rows: Vec<Row>,
    f: SellerForm,
    errors: Errors,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

type SellerRow = (String, String, String, i64, Option<String>, i64, i64);

async fn page_view(app: &App, dash: &Dash, f: SellerForm, errors: Errors) -> ApiResult<Page> {
    let rows: Vec<SellerRow> = app
        .db
        .fetch_all(sql!(
            "SELECT s.id, s.store_name, s.status, s.created_at,
                (SELECT MIN(u.email) FROM users u WHERE u.seller_id = s.id AND u.role IN ('seller', 'admin')),
                (SELECT COUNT(*) FROM products p WHERE p.seller_id = s.id),
                (SELECT COUNT(*) FROM orders o WHERE o.seller_id = s.id AND o.paid_at IS NOT NULL)
             FROM sellers s ORDER BY s.created_at, s.id LIMIT 500"
        ))
        .await?;
    Ok(Page {
        l: dash.layout("admin", "Sellers"),
        rows: rows
            .into_iter()
            .map(|(id, store_name, status, created, owner, products, orders)| Row {
                is_self: id == dash.seller_id,
                id,
                store_name,
                owner: owner.unwrap_or_else(|| "—".into()),
                status,
                products,
                orders,
                created: super::date(created),
            })
            .collect(),
        f,
        errors,
    })
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<NoticeQuery>) -> ApiResult<Response> {
    admin_only(&dash)?;
    let mut page = page_view(&app, &dash, SellerForm::default(), Errors::default()).await?;
    page.l = page.l.with_notice(q.notice.as_deref());
    render(&page)
}

pub async fn create(State(app): State<App>, dash: Dash, DashForm(f): DashForm<SellerForm>) -> ApiResult<Response> {
    admin_only(&dash)?;
    dash.check_csrf(&f.csrf)?;
    let mut errors = Errors::default();
    if f.store_name.trim().is_empty() || f.store_name.trim().chars().count() > 80 {
        errors.add("store_name", "Enter the store's name (up to 80 characters).");
    }
    if errors.is_empty() {
        let role = if f.admin.is_some() { "admin" } else { "seller" };
        let tx = app.db.begin().await?;
        match crate::accounts::create_seller_account(&tx, &f.email, &f.password, &f.store_name, role).await {
            Ok(_) => {
                tx.commit().await?;
                return Ok(see_other("/dashboard/admin/sellers?notice=seller_created"));
            }
            Err(e) => {
                drop(tx);
                errors.absorb(e)?;
            }
        }
    }
    let mut f = f;
    f.password.clear(); // never echoed back
    let page = page_view(&app, &dash, f, errors).await?;
    render_status(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StatusForm {
    csrf: String,
    status: String,
}

pub async fn set_status(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(f): DashForm<StatusForm>,
) -> ApiResult<Response> {
    admin_only(&dash)?;
    dash.check_csrf(&f.csrf)?;
    if !matches!(f.status.as_str(), "active" | "suspended") {
        return Err(bad_request("invalid_status", "status must be active or suspended"));
    }
    if id == dash.seller_id {
        return Err(bad_request(
            "own_store",
            "You cannot suspend the store you are signed in to.",
        ));
    }
    let tx = app.db.begin().await?;
    let n = tx
        .execute(sql!("UPDATE sellers SET status = $2 WHERE id = $1", &id, &f.status))
        .await?;
    if n == 0 {
        return Err(not_found("seller"));
    }
    if f.status == "suspended" {
        tx.execute(sql!(
            "DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE seller_id = $1)",
            &id
        ))
        .await?;
    }
    tx.execute(sql!(
        "INSERT INTO audit_log (id, actor, action, subject_id, detail, at) VALUES ($1, $2, $3, $4, '{}', $5)",
        crate::ids::new_id("aud"),
        &dash.user_id,
        format!("seller.{}", f.status),
        &id,
        crate::ids::now()
    ))
    .await?;
    tx.commit().await?;
    Ok(see_other(&format!(
        "/dashboard/admin/sellers?notice=seller_{}",
        if f.status == "active" { "active" } else { "suspended" }
    )))
}
