//! Download grants as the seller manages them: list an order's grants, and reset, extend or
//! revoke one. Every action is one transaction with an `audit_log` row; another seller's
//! grant is a 404 and nothing changes.
//!
//! - `reset`: `remaining` back to `max_downloads`, the IP binding cleared, any
//!   re-confirmation or suspension lifted (a revoked grant becomes active again), and abuse
//!   detection starts afresh from now (`abuse_since`).
//! - `extend` `{"days": 1..=3650}`: the access window (`expires_at`) moves later, counted
//!   from now if it has passed. Links already sent keep their own expiry; links shown from
//!   now on (library, resent receipt, the `download_url` this returns) carry the new one.
//! - `revoke`: the grant is dead.
//!
//! A reset or revoke also resolves the grant's open abuse flag (as cleared / revoked).
//!
//! A refunded order's (or refunded item's) grants stay dead whatever the action: reset and
//! extend are refused with 409 `order_refunded`, and redemption checks the order anyway.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::db::Exec;
use crate::error::{conflict, not_found, unprocessable, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

/// Longest extension, in days (ten years).
pub const MAX_EXTEND_DAYS: i64 = 3650;

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct GrantRow {
    pub id: String,
    pub order_id: String,
    pub order_item_id: String,
    pub product_id: String,
    pub product_title: String,
    pub email: String,
    pub max_downloads: i64,
    pub remaining: i64,
    pub expires_at: i64,
    pub status: String,
    pub ip_policy: String,
    pub ip_bound: Option<String>,
    #[serde(skip)]
    pub order_status: String,
    #[serde(skip)]
    pub item_status: String,
}

const GRANT_SELECT: &str = "SELECT g.id, g.order_id, g.order_item_id, g.product_id, p.title AS product_title, g.email,
        g.max_downloads, g.remaining, g.expires_at, g.status, g.ip_policy, g.ip_bound, o.status AS order_status,
        i.status AS item_status
     FROM download_grants g JOIN orders o ON o.id = g.order_id JOIN products p ON p.id = g.product_id
     JOIN order_items i ON i.id = g.order_item_id";

impl GrantRow {
    /// The order (or this item) was refunded: access cannot come back.
    pub fn refunded(&self) -> bool {
        !matches!(self.order_status.as_str(), "paid" | "partially_refunded") || self.item_status == "refunded"
    }

    pub fn json(&self, app: &App) -> Value {
        let mut v = json!(self);
        v["product"] = json!({"id": self.product_id, "title": self.product_title});
        v["download_url"] = json!(format!(
            "{}/api/v1/downloads/{}",
            app.cfg.public_url(),
            crate::delivery::sign(&app.keys, "d1", &[&self.id, &self.expires_at.to_string()])
        ));
        v
    }
}

/// The grants of one order (the caller checked the order is the seller's).
pub async fn for_order(e: &impl Exec, order_id: &str) -> ApiResult<Vec<GrantRow>> {
    Ok(e.fetch_all(sql!(
        format!("{GRANT_SELECT} WHERE g.order_id = $1 ORDER BY g.id"),
        order_id
    ))
    .await?)
}

/// One counted download of a grant, as its seller sees it: when, from where (address and
/// /24 or /64 network), with which client, which file and its size.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct DownloadEvent {
    pub id: String,
    pub at: i64,
    pub ip: String,
    pub ip_prefix: String,
    pub user_agent: String,
    pub outcome: String,
    pub bytes: i64,
    pub file_id: Option<String>,
    pub file_name: Option<String>,
}

/// Which page of a grant's download history: newest first.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1–100, default 50.
    pub limit: Option<i64>,
}

/// A page of one of the seller's grants' download history, newest first, and the cursor of
/// the next page. 404 for a grant of another store.
pub async fn events(
    e: &impl Exec,
    seller_id: &str,
    grant_id: &str,
    q: &EventQuery,
) -> ApiResult<(Vec<DownloadEvent>, Option<String>)> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(unprocessable("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    own_grant(e, seller_id, grant_id).await?;
    history(e, grant_id, q.cursor.as_deref(), limit).await
}

/// A page of a grant's download history whose owner the caller has checked (the order page
/// already has the seller's order): newest first, `limit` rows, and the next page's cursor.
pub async fn history(
    e: &impl Exec,
    grant_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> ApiResult<(Vec<DownloadEvent>, Option<String>)> {
    // The grant's list of events, walked from the newest (or from after the cursor's event).
    let mut rows: Vec<DownloadEvent> = e
        .fetch_all(sql!(
            format!(
                "{} SELECT c.id, c.at, c.ip, c.ip_prefix, c.user_agent, c.outcome, c.bytes, c.file_id, f.name AS file_name
                 FROM chain c LEFT JOIN files f ON f.id = c.file_id ORDER BY c.depth",
                crate::delivery::events::page("$1", "$2", "$3")
            ),
            grant_id,
            cursor.unwrap_or_default(),
            limit + 1
        ))
        .await?;
    let next = crate::db::next_page(&mut rows, limit, |r| &r.id);
    Ok((rows, next))
}

async fn own_grant(e: &impl Exec, seller_id: &str, grant_id: &str) -> ApiResult<GrantRow> {
    e.fetch_optional(sql!(
        format!("{GRANT_SELECT} WHERE g.id = $1 AND o.seller_id = $2"),
        grant_id,
        seller_id
    ))
    .await?
    .ok_or_else(|| not_found("download grant"))
}

/// A state change on a grant, shared by the seller's grant actions and abuse flag actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reset,
    Extend(i64),
    Revoke,
    Suspend,
    /// Lift a re-confirmation or suspension (abuse flag cleared) with a fresh detection baseline.
    Clear,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::Extend(_) => "extend",
            Action::Revoke => "revoke",
            Action::Suspend => "suspend",
            Action::Clear => "clear",
        }
    }
}

/// The `abuse_since` a reset or clear sets (`$2` the time): a new abuse-detection window from
/// now, and always forward (one second past the old one if that is not before now), because
/// an evaluation running meanwhile acts only while the window it read is still current
/// (`abuse::suspend`): two resets within one second must still be told apart.
const NEW_WINDOW: &str = "CASE WHEN abuse_since >= $2 THEN abuse_since + 1 ELSE $2 END";

/// Applies `action` to a grant inside the caller's transaction.
pub async fn apply(e: &impl Exec, grant_id: &str, action: Action, t: i64) -> ApiResult<()> {
    match action {
        Action::Reset => {
            e.execute(sql!(
                format!(
                    "UPDATE download_grants SET remaining = max_downloads, ip_bound = NULL, status = 'active',
                        reconfirm_nonce = NULL, reconfirmed_at = NULL, abuse_since = {NEW_WINDOW}, updated_at = $2 WHERE id = $1"
                ),
                grant_id,
                t
            ))
            .await?;
        }
        Action::Extend(days) => {
            e.execute(sql!(
                "UPDATE download_grants SET expires_at = CASE WHEN expires_at > $2 THEN expires_at ELSE $2 END + $3,
                    updated_at = $2 WHERE id = $1",
                grant_id,
                t,
                days * 86_400
            ))
            .await?;
        }
        Action::Revoke => {
            e.execute(sql!(
                "UPDATE download_grants SET status = 'revoked', reconfirm_nonce = NULL, updated_at = $2 WHERE id = $1",
                grant_id,
                t
            ))
            .await?;
        }
        Action::Suspend => {
            e.execute(sql!(
                "UPDATE download_grants SET status = 'suspended', reconfirm_nonce = NULL, updated_at = $2
                 WHERE id = $1 AND status <> 'revoked'",
                grant_id,
                t
            ))
            .await?;
        }
        Action::Clear => {
            e.execute(sql!(
                format!(
                    "UPDATE download_grants SET status = 'active', reconfirm_nonce = NULL, reconfirmed_at = NULL,
                        abuse_since = {NEW_WINDOW}, updated_at = $2 WHERE id = $1 AND status IN ('suspended', 'reconfirm')"
                ),
                grant_id,
                t
            ))
            .await?;
        }
    }
    Ok(())
}

/// One `audit_log` row (`actor`: a user id, `system` or `buyer`).
pub async fn audit(
    e: &impl Exec,
    actor: &str,
    action: &str,
    subject_id: &str,
    detail: &Value,
    t: i64,
) -> Result<(), crate::db::DbError> {
    e.execute(sql!(
        "INSERT INTO audit_log (id, actor, action, subject_id, detail, at) VALUES ($1, $2, $3, $4, $5, $6)",
        new_id("aud"),
        actor,
        action,
        subject_id,
        detail.to_string(),
        t
    ))
    .await?;
    Ok(())
}

/// Body of `extend`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendGrant {
    /// Days to add (1–3650), counted from the current expiry, or from now if it has passed.
    pub days: i64,
}

fn parse_action(action: &str, body: &[u8]) -> ApiResult<Action> {
    match action {
        "reset" => Ok(Action::Reset),
        "revoke" => Ok(Action::Revoke),
        "extend" => {
            let req: ExtendGrant = serde_json::from_slice(body).map_err(|e| {
                crate::error::bad_request(
                    "invalid_json",
                    format!("{e}; send {{\"days\": N}} with N from 1 to {MAX_EXTEND_DAYS}"),
                )
            })?;
            if !(1..=MAX_EXTEND_DAYS).contains(&req.days) {
                return Err(unprocessable("invalid_days", format!("days must be 1–{MAX_EXTEND_DAYS}")).field("days"));
            }
            Ok(Action::Extend(req.days))
        }
        _ => Err(unprocessable("invalid_action", "action must be reset, extend or revoke").field("action")),
    }
}

/// The seller's `reset` | `extend` | `revoke` on one of their grants. Returns the grant's new state.
pub async fn seller_action(
    app: &App,
    seller_id: &str,
    actor: &str,
    grant_id: &str,
    action: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let action = parse_action(action, body)?;
    let tx = app.db.begin().await?;
    let before = own_grant(&tx, seller_id, grant_id).await?;
    if before.refunded() && action != Action::Revoke {
        return Err(conflict(
            "order_refunded",
            "this purchase was refunded, so its download stays revoked; nothing was changed",
        ));
    }
    let t = now();
    apply(&tx, &before.id, action, t).await?;
    // A reset or revoke settles the grant's open abuse flag, if any (the seller decided).
    let settles = match action {
        Action::Reset => Some("cleared"),
        Action::Revoke => Some("revoked"),
        _ => None,
    };
    if let Some(resolution) = settles {
        tx.execute(sql!(
            "UPDATE abuse_flags SET status = 'resolved', resolution = $2, resolved_by = $3, resolved_at = $4
             WHERE subject_kind = 'grant' AND subject_id = $1 AND status = 'open'",
            &before.id,
            resolution,
            actor,
            t
        ))
        .await?;
    }
    let after = own_grant(&tx, seller_id, grant_id).await?;
    audit(
        &tx,
        actor,
        &format!("grant.{}", action.name()),
        &before.id,
        &json!({"order_id": before.order_id, "before": {"remaining": before.remaining, "expires_at": before.expires_at,
            "status": before.status, "ip_bound": before.ip_bound},
            "after": {"remaining": after.remaining, "expires_at": after.expires_at, "status": after.status, "ip_bound": after.ip_bound}}),
        t,
    )
    .await?;
    tx.commit().await?;
    if action == Action::Reset {
        app.abuse.forget(&before.id);
    }
    Ok(after.json(app))
}
