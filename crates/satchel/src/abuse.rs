//! Download abuse: per-grant detection of shared links, the buyer's re-confirmation by
//! email, suspension with a seller alert, and the abuse flags sellers act on.
//!
//! Detection reads `download_events` of one grant: distinct client networks (/24 IPv4,
//! /64 IPv6) within `abuse.window_hours`, and download starts within the last hour.
//! Events before the grant's `abuse_since` (a seller's reset or clear) are ignored.
//! - Crossing a **soft** threshold puts the grant in `reconfirm` and emails the buyer ONE
//!   signed, single-use, short-lived link. Its GET only shows a page with a button (mail
//!   scanners follow GETs); the POST consumes it and the grant is `active` again. The soft
//!   measure is not asked again within the window after the buyer confirmed.
//! - Crossing a **suspend** threshold (from `active` or `reconfirm`) suspends the grant,
//!   raises ONE `abuse_flags` row (subject_kind `grant`, reason `download_sharing`) and
//!   emails the seller ONE alert.
//!
//! Both transitions are a conditional UPDATE on the grant's status, with the flag and the
//! emails written in the same transaction: whichever evaluation wins the UPDATE does the
//! rest, so concurrent downloads (or instances) never duplicate a flag or an email; a
//! unique partial index (one open flag per grant) backs this up.
//!
//! Cost: [`after_start`] runs after a redemption commits. It asks this instance's
//! [`Tracker`] (memory only) whether anything could have changed: a network not seen for
//! this grant in the last [`RECHECK_SECS`], or a local start rate of at least half the
//! lowest velocity threshold. Only then is the evaluation (an aggregate over the grant's
//! events in the window, read by walking its list of events from the newest,
//! [`crate::delivery::events`], and writes only on a transition) spawned off the request.
//! Scaled out, each instance sees its share of the starts, so velocity is caught once one
//! instance sees half the threshold; distinct networks are always checked on first sight.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::config::AbuseConfig;
use crate::db::{Exec, Tx};
use crate::delivery::events;
use crate::error::{conflict, not_found, unprocessable, ApiError, ApiResult};
use crate::ids::{new_id, now, random_token};
use crate::sql;

/// The flag reason for a grant suspended by detection.
pub const REASON: &str = "download_sharing";
/// Seconds after which a (grant, network) pair seen by this instance is checked again.
pub const RECHECK_SECS: i64 = 600;
/// Most grants tracked in memory at once.
pub const MAX_GRANTS: usize = 100_000;

#[derive(Default)]
struct Seen {
    /// (network, last checked at).
    prefixes: Vec<(String, i64)>,
    /// This instance's starts within the last hour (capped).
    starts: VecDeque<i64>,
}

/// What this instance has seen per grant, so that ordinary downloads cost no query.
#[derive(Default)]
pub struct Tracker {
    grants: Mutex<HashMap<String, Seen>>,
}

impl Tracker {
    /// Records a start; whether the grant must be evaluated against the database.
    pub fn should_check(&self, cfg: &AbuseConfig, grant_id: &str, prefix: &str, t: i64) -> bool {
        let Ok(mut map) = self.grants.lock() else {
            return true;
        };
        if map.len() >= MAX_GRANTS {
            map.retain(|_, s| {
                s.starts.back().is_some_and(|&at| at > t - 3600)
                    || s.prefixes.iter().any(|(_, at)| *at > t - RECHECK_SECS)
            });
            if map.len() >= MAX_GRANTS {
                map.clear();
            }
        }
        // A grant already seen is found without making a key (every download start asks).
        let seen = match map.get_mut(grant_id) {
            Some(seen) => seen,
            None => map.entry(grant_id.to_string()).or_default(),
        };
        let velocity = [cfg.soft_starts_per_hour, cfg.suspend_starts_per_hour]
            .into_iter()
            .filter(|&v| v > 0)
            .min();
        let mut due = false;
        if let Some(v) = velocity {
            seen.starts.push_back(t);
            while seen.starts.front().is_some_and(|&at| at <= t - 3600) {
                seen.starts.pop_front();
            }
            while seen.starts.len() > v as usize + 1 {
                seen.starts.pop_front();
            }
            due |= seen.starts.len() * 2 >= v as usize;
        }
        if cfg.soft_prefixes > 0 || cfg.suspend_prefixes > 0 {
            match seen.prefixes.iter_mut().find(|(p, _)| p == prefix) {
                Some((_, at)) if *at > t - RECHECK_SECS => {}
                Some((_, at)) => {
                    *at = t;
                    due = true;
                }
                None => {
                    if seen.prefixes.len() >= 64 {
                        seen.prefixes.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
                        seen.prefixes.truncate(32);
                    }
                    seen.prefixes.push((prefix.to_string(), t));
                    due = true;
                }
            }
        }
        due
    }

    /// Forgets a grant (after a seller reset or clear moved its baseline).
    pub fn forget(&self, grant_id: &str) {
        if let Ok(mut map) = self.grants.lock() {
            map.remove(grant_id);
        }
    }

    pub fn tracked(&self) -> usize {
        self.grants.lock().map_or(0, |m| m.len())
    }
}

/// Called once after a redemption committed: cheap unless this start may cross a threshold,
/// in which case the evaluation is spawned (the download answer does not wait for it).
pub fn after_start(app: &App, grant_id: &str, prefix: &str) {
    let cfg = &app.cfg.abuse;
    if !cfg.enabled() || !app.abuse.should_check(cfg, grant_id, prefix, now()) {
        return;
    }
    let (app, grant_id) = (app.clone(), grant_id.to_string());
    tokio::spawn(async move {
        if let Err(e) = evaluate(&app, &grant_id).await {
            tracing::error!(grant = %grant_id, error = ?e, "abuse evaluation failed");
        }
    });
}

#[derive(Debug, sqlx::FromRow)]
struct GrantInfo {
    id: String,
    order_id: String,
    email: String,
    status: String,
    abuse_since: i64,
    reconfirmed_at: Option<i64>,
    seller_id: String,
    title: String,
}

async fn grant_info(e: &impl Exec, grant_id: &str) -> Result<Option<GrantInfo>, crate::db::DbError> {
    e.fetch_optional(sql!(
        "SELECT g.id, g.order_id, g.email, g.status, g.abuse_since, g.reconfirmed_at, o.seller_id, p.title
         FROM download_grants g JOIN orders o ON o.id = g.order_id JOIN products p ON p.id = g.product_id WHERE g.id = $1",
        grant_id
    ))
    .await
}

/// What detection decided for a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    Reconfirm,
    Suspended,
}

/// Evaluates one grant now and applies the measure it calls for (at most one transition).
pub async fn evaluate(app: &App, grant_id: &str) -> anyhow::Result<Outcome> {
    let cfg = &app.cfg.abuse;
    let t = now();
    let Some(g) = grant_info(&app.db, grant_id).await? else {
        return Ok(Outcome::Nothing);
    };
    if !matches!(g.status.as_str(), "active" | "reconfirm") {
        return Ok(Outcome::Nothing);
    }
    let window = i64::from(cfg.window_hours) * 3600;
    let since = (t - window).max(g.abuse_since);
    let hour = (t - 3600).max(g.abuse_since);
    let (distinct, starts): (i64, Option<i64>) = app
        .db
        .fetch_one(sql!(
            format!(
                "{} SELECT COUNT(DISTINCT ip_prefix), CAST(SUM(CASE WHEN at > $3 THEN 1 ELSE 0 END) AS BIGINT)
                 FROM chain WHERE at > $2 AND outcome = 'started'",
                events::since("$1", "$2")
            ),
            grant_id,
            since,
            hour
        ))
        .await?;
    let starts = starts.unwrap_or(0);
    let over = |limit: u32, n: i64| limit > 0 && n >= i64::from(limit);
    let suspend_by = if over(cfg.suspend_prefixes, distinct) {
        Some("prefixes")
    } else if over(cfg.suspend_starts_per_hour, starts) {
        Some("velocity")
    } else {
        None
    };
    let confirmed_recently = g.reconfirmed_at.is_some_and(|at| at > t - window);
    let soft_by = if g.status != "active" || confirmed_recently {
        None
    } else if over(cfg.soft_prefixes, distinct) {
        Some("prefixes")
    } else if over(cfg.soft_starts_per_hour, starts) {
        Some("velocity")
    } else {
        None
    };
    if suspend_by.is_none() && soft_by.is_none() {
        return Ok(Outcome::Nothing);
    }
    let prefixes: Vec<(String, i64)> = app
        .db
        .fetch_all(sql!(
            format!(
                "{} SELECT ip_prefix, COUNT(*) FROM chain WHERE at > $2 AND outcome = 'started'
                 GROUP BY ip_prefix ORDER BY COUNT(*) DESC, ip_prefix LIMIT 50",
                events::since("$1", "$2")
            ),
            grant_id,
            since
        ))
        .await?;
    let detail = json!({
        "trigger": suspend_by.or(soft_by),
        "distinct_prefixes": distinct,
        "starts_last_hour": starts,
        "window_hours": cfg.window_hours,
        "prefixes": prefixes.iter().map(|(p, n)| json!({"prefix": p, "downloads": n})).collect::<Vec<_>>(),
        "thresholds": {"soft_prefixes": cfg.soft_prefixes, "suspend_prefixes": cfg.suspend_prefixes,
            "soft_starts_per_hour": cfg.soft_starts_per_hour, "suspend_starts_per_hour": cfg.suspend_starts_per_hour},
    });
    if suspend_by.is_some() {
        return Ok(if suspend(app, &g, &detail, t).await? {
            tracing::warn!(grant = %g.id, %detail, "download link suspended for unusual activity");
            Outcome::Suspended
        } else {
            Outcome::Nothing
        });
    }
    Ok(if ask_reconfirm(app, &g, &detail, t).await? {
        tracing::info!(grant = %g.id, %detail, "download link needs the buyer's re-confirmation");
        Outcome::Reconfirm
    } else {
        Outcome::Nothing
    })
}

async fn suspend(app: &App, g: &GrantInfo, detail: &Value, t: i64) -> anyhow::Result<bool> {
    let tx = app.db.begin().await?;
    // Only while the grant's detection window is still the one this decision read: a seller's
    // reset or clear in the meantime starts a new window (`abuse_since`), and a decision drawn
    // from the events before it must not suspend the grant the seller just restored.
    let n = tx
        .execute(sql!(
            "UPDATE download_grants SET status = 'suspended', reconfirm_nonce = NULL, updated_at = $2
             WHERE id = $1 AND status IN ('active', 'reconfirm') AND abuse_since = $3",
            &g.id,
            t,
            g.abuse_since
        ))
        .await?;
    if n == 0 {
        return Ok(false); // another evaluation (or a seller) got there first
    }
    let flag_id = new_id("flag");
    tx.execute(sql!(
        "INSERT INTO abuse_flags (id, seller_id, subject_kind, subject_id, reason, detail, status, created_at)
         SELECT $1, $2, 'grant', $3, $4, $5, 'open', $6
         WHERE NOT EXISTS (SELECT 1 FROM abuse_flags WHERE subject_kind = 'grant' AND subject_id = $3 AND status = 'open')",
        &flag_id,
        &g.seller_id,
        &g.id,
        REASON,
        detail.to_string(),
        t
    ))
    .await?;
    crate::grants::audit(
        &tx,
        "system",
        "grant.suspended",
        &g.id,
        &json!({"flag_id": flag_id, "detail": detail}),
        t,
    )
    .await?;
    seller_alert(app, &tx, g, detail).await?;
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(true)
}

async fn seller_alert(app: &App, tx: &Tx, g: &GrantInfo, detail: &Value) -> anyhow::Result<()> {
    let to: Option<(String,)> = tx
        .fetch_optional(sql!(
            "SELECT u.email FROM users u WHERE u.seller_id = $1 AND u.role IN ('seller', 'admin') ORDER BY u.created_at, u.id LIMIT 1",
            &g.seller_id
        ))
        .await?;
    let to = match to {
        Some((e,)) => e,
        None => match crate::accounts::find_seller(tx, &g.seller_id)
            .await?
            .and_then(|s| s.support_email)
        {
            Some(e) => e,
            None => {
                tracing::warn!(seller = %g.seller_id, "no address for the abuse alert");
                return Ok(());
            }
        },
    };
    let brand = crate::mail::Brand::of_seller(tx, &g.seller_id).await?;
    let base = app.cfg.public_url();
    let prefixes: Vec<String> = detail["prefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["prefix"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let (text, html) = crate::mail::render(
        app.cfg.email.templates_dir.as_deref(),
        &brand,
        "abuse_alert",
        "A download link was suspended",
        "Unusual download activity",
        &json!({
            "product": g.title, "buyer": g.email, "order_id": g.order_id,
            "networks": detail["distinct_prefixes"], "starts": detail["starts_last_hour"],
            "window_hours": detail["window_hours"], "prefixes": prefixes.join(", "),
            "flags_url": format!("{base}/dashboard/abuse"), "order_url": format!("{base}/dashboard/orders/{}", g.order_id),
        }),
    )?;
    crate::mail::queue(
        tx,
        &crate::mail::Email {
            to,
            subject: format!("Download link suspended: {} ({})", g.title, g.email),
            text,
            html,
            kind: "abuse_alert".into(),
            seller_id: Some(g.seller_id.clone()),
        },
    )
    .await?;
    Ok(())
}

async fn ask_reconfirm(app: &App, g: &GrantInfo, _detail: &Value, t: i64) -> anyhow::Result<bool> {
    let tx = app.db.begin().await?;
    let nonce = random_token(12);
    let window = i64::from(app.cfg.abuse.window_hours) * 3600;
    let n = tx
        .execute(sql!(
            "UPDATE download_grants SET status = 'reconfirm', reconfirm_nonce = $2, reconfirm_sent_at = $3, updated_at = $3
             WHERE id = $1 AND status = 'active' AND (reconfirmed_at IS NULL OR reconfirmed_at <= $4) AND abuse_since = $5",
            &g.id,
            &nonce,
            t,
            t - window,
            g.abuse_since
        ))
        .await?;
    if n == 0 {
        return Ok(false);
    }
    crate::grants::audit(&tx, "system", "grant.reconfirm_requested", &g.id, &json!({}), t).await?;
    reconfirm_email(app, &tx, g, &nonce, t).await?;
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(true)
}

fn link_ttl(app: &App) -> i64 {
    i64::from(app.cfg.abuse.reconfirm_link_minutes.max(1)) * 60
}

/// The re-confirmation link for a grant's current nonce.
pub fn reconfirm_url(app: &App, grant_id: &str, nonce: &str, t: i64) -> String {
    let token = crate::delivery::sign(&app.keys, "c1", &[grant_id, &(t + link_ttl(app)).to_string(), nonce]);
    format!("{}/downloads/reconfirm/{token}", app.cfg.public_url())
}

async fn reconfirm_email(app: &App, tx: &Tx, g: &GrantInfo, nonce: &str, t: i64) -> anyhow::Result<()> {
    let brand = crate::mail::Brand::of_seller(tx, &g.seller_id).await?;
    let (text, html) = crate::mail::render(
        app.cfg.email.templates_dir.as_deref(),
        &brand,
        "reconfirm",
        "Confirm it's you to keep downloading",
        "One click to continue your downloads",
        &json!({"url": reconfirm_url(app, &g.id, nonce, t), "product": g.title,
            "minutes": app.cfg.abuse.reconfirm_link_minutes, "order_id": g.order_id}),
    )?;
    crate::mail::queue(
        tx,
        &crate::mail::Email {
            to: g.email.clone(),
            subject: format!("Confirm your downloads of {}", g.title),
            text,
            html,
            kind: "download_reconfirm".into(),
            seller_id: Some(g.seller_id.clone()),
        },
    )
    .await?;
    Ok(())
}

/// The refusal for a redemption of a grant waiting for re-confirmation. If the emailed link
/// has lapsed, a fresh one is emailed (once per link lifetime, whatever the concurrency).
pub async fn reconfirm_refusal(app: &App, grant_id: &str) -> ApiResult<ApiError> {
    let t = now();
    // Read first: refusals while the link is live (the common case) write nothing.
    let sent: Option<(Option<i64>,)> = app
        .db
        .fetch_optional(sql!(
            "SELECT reconfirm_sent_at FROM download_grants WHERE id = $1",
            grant_id
        ))
        .await?;
    let lapsed = sent.is_some_and(|(at,)| at.is_none_or(|at| at <= t - link_ttl(app)));
    let info = if lapsed {
        grant_info(&app.db, grant_id).await?
    } else {
        None
    };
    if let Some(g) = info {
        let tx = app.db.begin().await?;
        let nonce = random_token(12);
        let n = tx
            .execute(sql!(
                "UPDATE download_grants SET reconfirm_nonce = $2, reconfirm_sent_at = $3
                 WHERE id = $1 AND status = 'reconfirm' AND (reconfirm_sent_at IS NULL OR reconfirm_sent_at <= $4)",
                grant_id,
                &nonce,
                t,
                t - link_ttl(app)
            ))
            .await?;
        if n == 1 {
            reconfirm_email(app, &tx, &g, &nonce, t).await?;
            tx.commit().await?;
            app.jobs_enqueued();
        }
    }
    Ok(reconfirm_required())
}

/// The refusal of a grant waiting for its buyer to re-confirm (no email sent here).
pub fn reconfirm_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "reconfirm_required",
        "This download link was used from several networks, so we emailed you a link to confirm it's you. Open that email (from this store, sent to the address you bought with), press the button, then start the download again.",
    )
}

/// The refusal for a suspended grant.
pub fn suspended_refusal() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "access_revoked",
        "This download link was suspended for unusual activity (downloads from many networks). Contact the store to restore it.",
    )
}

/// What a re-confirmation token names, if its MAC and expiry hold. No I/O.
fn parse_reconfirm(app: &App, token: &str) -> Result<(String, String), ApiError> {
    let bad = || not_found("confirmation link");
    let f = crate::delivery::verify(&app.keys, "c1", token, 3).ok_or_else(bad)?;
    let exp: i64 = f[1].parse().map_err(|_| bad())?;
    if exp <= now() {
        return Err(ApiError::new(
            StatusCode::GONE,
            "link_expired",
            "This confirmation link has expired. Start the download again and we will email you a new one.",
        ));
    }
    Ok((f[0].to_string(), f[2].to_string()))
}

/// State of a re-confirmation link, read-only (the GET page).
pub enum LinkState {
    /// Valid: press the button to confirm.
    Ready { product: String },
    /// Already used (the grant is active again).
    Used,
    /// The grant is suspended, revoked or its order refunded: confirming cannot help.
    Closed,
}

pub async fn reconfirm_state(app: &App, token: &str) -> ApiResult<LinkState> {
    let (grant_id, nonce) = parse_reconfirm(app, token)?;
    let g: Option<(String, Option<String>, String)> = app
        .db
        .fetch_optional(sql!(
            "SELECT g.status, g.reconfirm_nonce, p.title FROM download_grants g JOIN products p ON p.id = g.product_id WHERE g.id = $1",
            &grant_id
        ))
        .await?;
    let Some((status, current, product)) = g else {
        return Err(not_found("confirmation link"));
    };
    Ok(match status.as_str() {
        "reconfirm" if current.as_deref() == Some(nonce.as_str()) => LinkState::Ready { product },
        "reconfirm" => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "link_replaced",
                "A newer confirmation link was emailed to you; use the most recent email.",
            ))
        }
        "active" => LinkState::Used,
        _ => LinkState::Closed,
    })
}

/// Consumes a re-confirmation link: the grant is active again. Returns a fresh download URL.
pub async fn confirm(app: &App, token: &str) -> ApiResult<String> {
    let (grant_id, nonce) = parse_reconfirm(app, token)?;
    let t = now();
    let tx = app.db.begin().await?;
    let row: Option<(String, i64)> = tx
        .fetch_optional(sql!(
            "UPDATE download_grants SET status = 'active', reconfirm_nonce = NULL, reconfirmed_at = $3, updated_at = $3
             WHERE id = $1 AND status = 'reconfirm' AND reconfirm_nonce = $2 RETURNING id, expires_at",
            &grant_id,
            &nonce,
            t
        ))
        .await?;
    let Some((gid, exp)) = row else {
        drop(tx);
        return Err(match reconfirm_state(app, token).await? {
            LinkState::Used => ApiError::new(
                StatusCode::GONE,
                "link_used",
                "This confirmation link was already used; your downloads work again.",
            ),
            LinkState::Closed => ApiError::new(
                StatusCode::FORBIDDEN,
                "access_revoked",
                "This download link can no longer be used. Contact the store.",
            ),
            LinkState::Ready { .. } => conflict("try_again", "The confirmation could not be saved; try again."),
        });
    };
    crate::grants::audit(&tx, "buyer", "grant.reconfirmed", &gid, &json!({}), t).await?;
    tx.commit().await?;
    let token = crate::delivery::sign(&app.keys, "d1", &[&gid, &exp.to_string()]);
    Ok(format!("{}/api/v1/downloads/{token}", app.cfg.public_url()))
}

// ---------- flags ----------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FlagQuery {
    /// `open` (default), `resolved` or `all`.
    pub status: Option<String>,
    pub cursor: Option<String>,
    /// 1–100, default 50.
    pub limit: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct FlagRow {
    pub id: String,
    pub seller_id: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub reason: String,
    pub detail: String,
    pub status: String,
    pub resolution: Option<String>,
    pub created_at: i64,
    pub resolved_at: Option<i64>,
    pub order_id: Option<String>,
    pub email: Option<String>,
    pub grant_status: Option<String>,
    pub remaining: Option<i64>,
    pub max_downloads: Option<i64>,
    pub product_id: Option<String>,
    pub product_title: Option<String>,
}

impl FlagRow {
    pub fn detail_json(&self) -> Value {
        serde_json::from_str(&self.detail).unwrap_or(Value::Null)
    }

    /// The networks named in the detail (`prefixes` of grant flags, the subject of network flags).
    pub fn prefixes(&self) -> Vec<String> {
        if self.subject_kind == "network" {
            return vec![self.subject_id.clone()];
        }
        self.detail_json()["prefixes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["prefix"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        let mut v = json!({
            "id": self.id, "seller_id": self.seller_id, "subject_kind": self.subject_kind, "subject_id": self.subject_id,
            "reason": self.reason, "detail": self.detail_json(), "status": self.status, "resolution": self.resolution,
            "created_at": self.created_at, "resolved_at": self.resolved_at,
            "actions": if self.status != "open" { json!([]) } else if self.subject_kind == "grant" { json!(["clear", "suspend", "revoke"]) } else { json!(["clear"]) },
        });
        if self.subject_kind == "grant" {
            v["grant"] = json!({"id": self.subject_id, "order_id": self.order_id, "buyer_email": self.email,
                "status": self.grant_status, "remaining": self.remaining, "max_downloads": self.max_downloads,
                "product_id": self.product_id, "product_title": self.product_title});
        }
        v
    }
}

const FLAG_SELECT: &str =
    "SELECT f.id, f.seller_id, f.subject_kind, f.subject_id, f.reason, f.detail, f.status, f.resolution,
        f.created_at, f.resolved_at, g.order_id, g.email, g.status AS grant_status, g.remaining, g.max_downloads,
        g.product_id, p.title AS product_title
     FROM abuse_flags f
     LEFT JOIN download_grants g ON f.subject_kind = 'grant' AND g.id = f.subject_id
     LEFT JOIN products p ON p.id = g.product_id";

/// Whose flags a caller sees: a seller its own; an admin (not acting as a seller) every
/// flag, including store-wide ones (`seller_id` '').
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: String,
    pub seller_id: String,
    pub all: bool,
}

/// Flags, newest first: `(rows, next_cursor)`.
pub async fn list_flags(app: &App, who: &Viewer, q: &FlagQuery) -> ApiResult<(Vec<FlagRow>, Option<String>)> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(unprocessable("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    let status = q.status.as_deref().unwrap_or("open");
    let mut query = crate::db::Query::new(format!("{FLAG_SELECT} WHERE 1 = 1"));
    if !who.all {
        let a = query.arg(who.seller_id.as_str());
        query.push_sql(&format!(" AND f.seller_id = {a}"));
    }
    match status {
        "open" => query.push_sql(" AND f.status = 'open'"),
        "resolved" => query.push_sql(" AND f.status <> 'open'"),
        "all" => {}
        _ => return Err(unprocessable("invalid_status", "status must be open, resolved or all").field("status")),
    }
    query.page_desc("f.id", q.cursor.as_deref(), limit);
    let mut rows: Vec<FlagRow> = app.db.fetch_all(query).await?;
    let next = crate::db::next_page(&mut rows, limit, |r| &r.id);
    Ok((rows, next))
}

pub async fn find_flag(e: &impl Exec, who: &Viewer, flag_id: &str) -> ApiResult<FlagRow> {
    let row: Option<FlagRow> = e
        .fetch_optional(sql!(format!("{FLAG_SELECT} WHERE f.id = $1"), flag_id))
        .await?;
    row.filter(|f| who.all || (f.seller_id == who.seller_id && !f.seller_id.is_empty()))
        .ok_or_else(|| not_found("abuse flag"))
}

/// `clear` (the flag is resolved, the grant active again with a fresh baseline and no
/// re-confirmation), `suspend` or `revoke` (the grant; the flag is resolved). Network flags
/// (license key guessing) only clear. One transaction, audit-logged.
pub async fn flag_action(app: &App, who: &Viewer, flag_id: &str, action: &str) -> ApiResult<Value> {
    if !matches!(action, "clear" | "suspend" | "revoke") {
        return Err(unprocessable("invalid_action", "action must be clear, suspend or revoke").field("action"));
    }
    let tx = app.db.begin().await?;
    let f = find_flag(&tx, who, flag_id).await?;
    if f.status != "open" {
        return Err(conflict(
            "flag_resolved",
            format!(
                "this flag was already resolved ({}); change the download itself from its order's grant actions",
                f.resolution.as_deref().unwrap_or("resolved")
            ),
        ));
    }
    if f.subject_kind != "grant" && action != "clear" {
        return Err(conflict(
            "action_not_applicable",
            format!(
                "a {} flag ({}) names a network, not a download: it can only be cleared",
                f.subject_kind, f.reason
            ),
        ));
    }
    let t = now();
    if f.subject_kind == "grant" {
        let grant_action = match action {
            "clear" => crate::grants::Action::Clear,
            "suspend" => crate::grants::Action::Suspend,
            _ => crate::grants::Action::Revoke,
        };
        crate::grants::apply(&tx, &f.subject_id, grant_action, t).await?;
    }
    let resolution = match action {
        "clear" => "cleared",
        "suspend" => "suspended",
        _ => "revoked",
    };
    tx.execute(sql!(
        "UPDATE abuse_flags SET status = 'resolved', resolution = $2, resolved_by = $3, resolved_at = $4 WHERE id = $1",
        &f.id,
        resolution,
        &who.user_id,
        t
    ))
    .await?;
    crate::grants::audit(
        &tx,
        &who.user_id,
        &format!("abuse_flag.{action}"),
        &f.id,
        &json!({"subject_kind": f.subject_kind, "subject_id": f.subject_id}),
        t,
    )
    .await?;
    tx.commit().await?;
    if f.subject_kind == "grant" {
        app.abuse.forget(&f.subject_id);
    }
    let after = find_flag(&app.db, who, &f.id).await?;
    Ok(after.json())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tracker_checks_new_networks_and_rising_rates_only() {
        let cfg = AbuseConfig::default();
        let tr = Tracker::default();
        assert!(tr.should_check(&cfg, "g1", "1.2.3.0/24", 1000), "first sight");
        assert!(
            !tr.should_check(&cfg, "g1", "1.2.3.0/24", 1001),
            "known network, low rate"
        );
        assert!(tr.should_check(&cfg, "g1", "1.2.4.0/24", 1002), "new network");
        assert!(
            tr.should_check(&cfg, "g1", "1.2.3.0/24", 1000 + RECHECK_SECS + 1),
            "rechecked after a while"
        );
        // Half of the soft velocity threshold (10/h) from one network: checked from then on.
        let tr = Tracker::default();
        let mut due = Vec::new();
        for i in 0..8 {
            due.push(tr.should_check(&cfg, "g2", "9.9.9.0/24", 5000 + i));
        }
        assert_eq!(due, [true, false, false, false, true, true, true, true]);
        let off = AbuseConfig {
            soft_prefixes: 0,
            suspend_prefixes: 0,
            soft_starts_per_hour: 0,
            suspend_starts_per_hour: 0,
            ..AbuseConfig::default()
        };
        assert!(!off.enabled());
        assert!(!tr.should_check(&off, "g3", "1.1.1.0/24", 1));
        tr.forget("g2");
        assert!(tr.should_check(&cfg, "g2", "9.9.9.0/24", 5010));
    }

    /// An evaluation reads the grant, counts its events, then acts. A seller's reset landing
    /// in between (seen in CI: the evaluation of a grant's first start still running when the
    /// second start's had suspended it and the seller reset it) starts a new detection window;
    /// the decision drawn from the old one must change nothing, neither suspend nor ask for
    /// re-confirmation, while one drawn from the current window still acts.
    #[tokio::test]
    async fn a_decision_from_before_a_reset_changes_nothing() {
        for backend in crate::testing::backends().await {
            let t = crate::testing::TestApp::start_demo(backend).await;
            let order = t.buy_paid("demo-templates", "stale@example.com").await;
            let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
            let stale = grant_info(&t.app.db, &gid).await.unwrap().unwrap();
            let seller = t.demo_seller().await;
            crate::grants::seller_action(&t.app, &seller, "test", &gid, "reset", b"")
                .await
                .unwrap();
            let status = || async {
                let (s,): (String,) = t
                    .app
                    .db
                    .fetch_one(sql!("SELECT status FROM download_grants WHERE id = $1", &gid))
                    .await
                    .unwrap();
                s
            };
            let detail = json!({"trigger": "prefixes"});
            let at = now();
            assert!(!suspend(&t.app, &stale, &detail, at).await.unwrap(), "{backend:?}");
            assert!(
                !ask_reconfirm(&t.app, &stale, &detail, at).await.unwrap(),
                "{backend:?}"
            );
            assert_eq!(status().await, "active", "{backend:?}");
            let current = grant_info(&t.app.db, &gid).await.unwrap().unwrap();
            assert!(suspend(&t.app, &current, &detail, at).await.unwrap(), "{backend:?}");
            assert_eq!(status().await, "suspended", "{backend:?}");
        }
    }
}
