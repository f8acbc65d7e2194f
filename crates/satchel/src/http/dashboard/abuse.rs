//! Abuse flags: the open (or resolved) flags of the seller's downloads, with Clear, Suspend
//! and Revoke as CSRF forms, through `abuse::flag_action` (as the seller API does). An admin
//! also sees store-wide flags (license key guessing), which can only be cleared.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{datetime_label, render, see_other, Dash, DashForm, Layout};
use crate::abuse::{FlagQuery, Viewer};
use crate::app::App;
use crate::error::ApiResult;

fn viewer(dash: &Dash) -> Viewer {
    Viewer {
        user_id: dash.user_id.clone(),
        seller_id: dash.seller_id.clone(),
        all: dash.is_admin(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    status: String,
    cursor: String,
    notice: Option<String>,
}

pub struct FlagView {
    pub id: String,
    pub is_grant: bool,
    pub product: String,
    pub email: String,
    pub order_id: String,
    pub grant_status: String,
    pub prefixes: Vec<String>,
    pub summary: String,
    pub reason: String,
    pub when: String,
    pub open: bool,
    pub resolution: String,
}

pub struct Tab {
    pub href: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "dashboard/abuse.html")]
struct ListPage {
    l: Layout,
    open_view: bool,
    tabs: Vec<Tab>,
    flags: Vec<FlagView>,
    next_href: Option<String>,
}

fn reason_label(r: &str) -> String {
    match r {
        crate::abuse::REASON => "Download link shared".into(),
        crate::licensing::guessing::REASON => "License key guessing".into(),
        other => other.replace('_', " "),
    }
}

pub async fn list(State(app): State<App>, dash: Dash, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let status = if q.status == "resolved" { "resolved" } else { "open" };
    let (rows, next) = crate::abuse::list_flags(
        &app,
        &viewer(&dash),
        &FlagQuery {
            status: Some(status.into()),
            cursor: Some(q.cursor.clone()).filter(|c| c.starts_with("flag_") && c.len() <= 64),
            limit: Some(50),
        },
    )
    .await?;
    let flags = rows
        .iter()
        .map(|f| {
            let d = f.detail_json();
            let summary = if f.subject_kind == "grant" {
                format!(
                    "{} networks in {} h · {} starts in the last hour",
                    d["distinct_prefixes"], d["window_hours"], d["starts_last_hour"]
                )
            } else {
                d.to_string().chars().take(120).collect()
            };
            FlagView {
                id: f.id.clone(),
                is_grant: f.subject_kind == "grant",
                product: f.product_title.clone().unwrap_or_else(|| "—".into()),
                email: f.email.clone().unwrap_or_default(),
                order_id: f.order_id.clone().unwrap_or_default(),
                grant_status: f.grant_status.clone().unwrap_or_default(),
                prefixes: f.prefixes(),
                summary,
                reason: reason_label(&f.reason),
                when: datetime_label(f.created_at),
                open: f.status == "open",
                resolution: f.resolution.clone().unwrap_or_default(),
            }
        })
        .collect();
    render(&ListPage {
        l: dash.layout("abuse", "Abuse flags").with_notice(q.notice.as_deref()),
        open_view: status == "open",
        tabs: vec![
            Tab {
                href: "/dashboard/abuse",
                label: "Open",
                selected: status == "open",
            },
            Tab {
                href: "/dashboard/abuse?status=resolved",
                label: "Resolved",
                selected: status == "resolved",
            },
        ],
        flags,
        next_href: next.map(|c| format!("/dashboard/abuse?status={status}&cursor={c}")),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ActionForm {
    csrf: String,
    action: String,
}

pub async fn action(
    State(app): State<App>,
    dash: Dash,
    Path(id): Path<String>,
    DashForm(f): DashForm<ActionForm>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    crate::abuse::flag_action(&app, &viewer(&dash), &id, &f.action).await?;
    Ok(see_other(&format!(
        "/dashboard/abuse?notice=flag_{}",
        match f.action.as_str() {
            a @ ("clear" | "suspend" | "revoke") => a,
            _ => "",
        }
    )))
}
