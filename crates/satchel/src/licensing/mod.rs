//! Licensing: keys issued with the order, device activations exact under any concurrency,
//! signed validation answers, and the lifecycle (refund, dispute, subscription end, seller
//! actions).
//!
//! Activation is one transaction: a conditional UPDATE takes a seat only while the license
//! is live and below its limit (`activations < max_activations`), then the activation row is
//! inserted; a partial unique index (one live activation per license and fingerprint) turns a
//! concurrent duplicate of the same device into "return the existing activation". So N
//! parallel activations of a single-use key give exactly one, of a 3-seat key from 10 devices
//! exactly 3, on SQLite and PostgreSQL. Devices are stored and certified by the sha256 of
//! their fingerprint, never the raw value.

pub mod format;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::catalog::LicensePolicy;
use crate::db::{Exec, Tx};
use crate::error::{not_found, unprocessable, ApiError, ApiResult};
use crate::ids::{hash_secret, new_id, now};
use crate::sql;
use axum::http::StatusCode;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct License {
    pub id: String,
    pub license_key: String,
    pub order_id: String,
    pub product_id: String,
    pub email: String,
    pub license_type: String,
    pub max_activations: Option<i64>,
    pub activations: i64,
    pub status: String,
    pub expires_at: Option<i64>,
    pub paid_through: Option<i64>,
    pub check_in_hours: i64,
    pub grace_days: i64,
}

/// Check-ins newer than this are not written again.
const CHECK_IN_WRITE_SECS: i64 = 300;

const LIC_COLS: &str =
    "id, license_key, order_id, product_id, email, license_type, max_activations, activations, status, \
    expires_at, paid_through, check_in_hours, grace_days";

#[derive(Debug, Clone, sqlx::FromRow)]
struct Activation {
    id: String,
    fingerprint: String,
    created_at: i64,
    last_check_in_at: i64,
    deactivated_at: Option<i64>,
}

/// Issues one key per seat for every licensed item of a just-paid order (fulfillment).
pub async fn issue_for_order(tx: &Tx, order_id: &str, email: &str) -> ApiResult<usize> {
    let items: Vec<(String, String, String, i64)> = tx
        .fetch_all(sql!(
            "SELECT i.id, p.id, p.license_policy, i.quantity FROM order_items i JOIN products p ON p.id = i.product_id WHERE i.order_id = $1 ORDER BY i.id",
            order_id
        ))
        .await?;
    let t = now();
    let mut issued = 0;
    for (item_id, product_id, policy, quantity) in items {
        let policy: LicensePolicy = serde_json::from_str(&policy).unwrap_or(LicensePolicy::None);
        let (kind, max, term, prefix, check_in, grace) = match &policy {
            LicensePolicy::None => continue,
            LicensePolicy::Perpetual {
                max_activations,
                term_days,
                key_prefix,
            } => (
                "perpetual",
                Some(*max_activations),
                *term_days,
                key_prefix.clone(),
                24,
                7,
            ),
            LicensePolicy::Subscription {
                check_in_hours,
                grace_days,
                key_prefix,
            } => (
                "subscription",
                None,
                None,
                key_prefix.clone(),
                *check_in_hours,
                *grace_days,
            ),
            LicensePolicy::SingleUse { term_days, key_prefix } => {
                ("single_use", Some(1), *term_days, key_prefix.clone(), 24, 7)
            }
        };
        for _ in 0..quantity {
            tx.execute(sql!(
                "INSERT INTO license_keys (id, license_key, order_id, order_item_id, product_id, email, license_type, max_activations,
                    expires_at, check_in_hours, grace_days, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
                new_id("lic"),
                format::new_key(prefix.as_deref()),
                order_id,
                &item_id,
                &product_id,
                email,
                kind,
                max,
                term.map(|d| t + d * 86_400),
                check_in,
                grace,
                t
            ))
            .await?;
            issued += 1;
        }
    }
    Ok(issued)
}

fn license_error(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, code, message.to_string())
}

/// Parses a typed key, or a 422 saying what is wrong with it.
pub fn parse_key(input: &str) -> ApiResult<String> {
    format::canonical_key(input).map_err(|e| match e {
        format::KeyError::Malformed => unprocessable(
            "invalid_key",
            "this is not a license key; check that you copied all of it",
        ),
        format::KeyError::BadCheckCharacter => unprocessable(
            "bad_check_character",
            "this license key has a typo: one character is wrong or two are swapped",
        ),
    })
}

fn check_fingerprint(fp: &str) -> ApiResult<String> {
    let fp = fp.trim();
    if fp.is_empty() || fp.len() > 512 || fp.chars().any(char::is_control) {
        return Err(unprocessable(
            "invalid_fingerprint",
            "device_fingerprint must be 1–512 printable characters",
        )
        .field("device_fingerprint"));
    }
    Ok(hash_secret(fp))
}

pub async fn find(e: &impl Exec, canonical: &str) -> Result<Option<License>, crate::db::DbError> {
    e.fetch_optional(sql!(
        format!("SELECT {LIC_COLS} FROM license_keys WHERE license_key = $1"),
        canonical
    ))
    .await
}

/// Why a license cannot be used right now, as a validation code (`None` = live).
fn blocked(l: &License, t: i64) -> Option<&'static str> {
    match l.status.as_str() {
        "revoked" => Some("REVOKED"),
        "suspended" => Some("SUSPENDED"),
        "expired" => Some("EXPIRED"),
        _ if l.expires_at.is_some_and(|e| e <= t) => Some("EXPIRED"),
        _ => None,
    }
}

fn license_json(l: &License) -> Value {
    json!({
        "id": l.id, "type": l.license_type, "status": l.status, "product_id": l.product_id,
        "expires_at": l.expires_at, "paid_through": l.paid_through,
        "max_activations": l.max_activations, "activations": l.activations,
    })
}

fn certificate(app: &App, l: &License, activation_id: &str, fingerprint_hash: &str, t: i64) -> String {
    // Subscriptions: valid offline until paid-through + grace; others until their term (or forever).
    let expires = match l.license_type.as_str() {
        "subscription" => l.paid_through.map(|p| p + l.grace_days * 86_400).or(l.expires_at),
        _ => l.expires_at,
    };
    format::certificate(
        &app.keys,
        json!({
            "license_id": l.id, "product_id": l.product_id, "type": l.license_type,
            "entitlements": [l.product_id], "fingerprint": fingerprint_hash, "activation_id": activation_id,
            "max_activations": l.max_activations, "issued_at": t, "expires_at": expires,
            "check_in_hours": (l.license_type == "subscription").then_some(l.check_in_hours),
        }),
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    pub device_fingerprint: String,
    pub label: Option<String>,
    pub meta: Option<Value>,
}

/// Activates a device: `{activation_id, certificate, expires_at, license}`.
pub async fn activate(app: &App, key: &str, req: &ActivateRequest, ip: &str) -> ApiResult<Value> {
    let key = parse_key(key)?;
    let fp = check_fingerprint(&req.device_fingerprint)?;
    let label: String = req
        .label
        .clone()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let meta = req.meta.clone().unwrap_or(json!({})).to_string();
    if meta.len() > 4096 {
        return Err(unprocessable("invalid_meta", "meta must be at most 4 KB of JSON").field("meta"));
    }
    let t = now();
    let tx = app.db.begin().await?;
    let l = find(&tx, &key)
        .await?
        .ok_or_else(|| license_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no license has this key"))?;
    if let Some(code) = blocked(&l, t) {
        return Err(license_error(
            StatusCode::FORBIDDEN,
            code,
            "this license cannot be activated now",
        ));
    }
    let existing: Option<Activation> = tx
        .fetch_optional(sql!(
            "SELECT id, fingerprint, created_at, last_check_in_at, deactivated_at FROM license_activations
             WHERE license_id = $1 AND fingerprint = $2 AND deactivated_at IS NULL",
            &l.id,
            &fp
        ))
        .await?;
    if let Some(a) = existing {
        tx.execute(sql!(
            "UPDATE license_activations SET last_check_in_at = $2 WHERE id = $1",
            &a.id,
            t
        ))
        .await?;
        tx.commit().await?;
        return Ok(activation_json(app, &l, &a.id, &fp, t));
    }
    let took = tx
        .execute(sql!(
            "UPDATE license_keys SET activations = activations + 1, updated_at = $2
             WHERE id = $1 AND status = 'active' AND (expires_at IS NULL OR expires_at > $2)
               AND (max_activations IS NULL OR activations < max_activations)",
            &l.id,
            t
        ))
        .await?;
    if took == 0 {
        let code = if l.license_type == "single_use" {
            "KEY_CONSUMED"
        } else {
            "TOO_MANY_ACTIVATIONS"
        };
        let msg = if code == "KEY_CONSUMED" {
            "this single-use key has already been used"
        } else {
            "every seat of this license is in use; deactivate a device first"
        };
        return Err(license_error(StatusCode::CONFLICT, code, msg));
    }
    let activation_id = new_id("act");
    let inserted = tx
        .execute(sql!(
            "INSERT INTO license_activations (id, license_id, fingerprint, label, meta, ip, created_at, last_check_in_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            &activation_id,
            &l.id,
            &fp,
            &label,
            &meta,
            ip,
            t
        ))
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if crate::db::is_unique_violation(&e) => {
            // The same device won a race with itself: hand back the activation that exists.
            drop(tx);
            let a: Activation = app
                .db
                .fetch_one(sql!(
                    "SELECT id, fingerprint, created_at, last_check_in_at, deactivated_at FROM license_activations
                     WHERE license_id = $1 AND fingerprint = $2 AND deactivated_at IS NULL",
                    &l.id,
                    &fp
                ))
                .await?;
            return Ok(activation_json(app, &l, &a.id, &fp, t));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    let l = find(&app.db, &key).await?.ok_or_else(|| not_found("license"))?;
    Ok(activation_json(app, &l, &activation_id, &fp, t))
}

fn activation_json(app: &App, l: &License, activation_id: &str, fp: &str, t: i64) -> Value {
    let cert = certificate(app, l, activation_id, fp, t);
    json!({
        "activation_id": activation_id,
        "certificate": cert,
        "expires_at": match l.license_type.as_str() {
            "subscription" => l.paid_through.map(|p| p + l.grace_days * 86_400).or(l.expires_at),
            _ => l.expires_at,
        },
        "license": license_json(l),
    })
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub device_fingerprint: Option<String>,
    pub activation_id: Option<String>,
    /// Echoed in the signed answer so a client can tell a replayed or faked server.
    pub nonce: Option<String>,
}

/// Validates a key (and a device): a signed `{valid, code, license, nonce, …}`.
pub async fn validate(app: &App, key: &str, req: &ValidateRequest) -> ApiResult<Value> {
    let key = parse_key(key)?;
    if req.nonce.as_ref().is_some_and(|n| n.len() > 128) {
        return Err(unprocessable("invalid_nonce", "nonce must be at most 128 characters").field("nonce"));
    }
    let fp = req.device_fingerprint.as_deref().map(check_fingerprint).transpose()?;
    let t = now();
    let l = find(&app.db, &key).await?;
    let (code, license, activation) = match &l {
        None => ("NOT_FOUND", Value::Null, Value::Null),
        Some(l) => {
            let (code, activation) = validation_code(app, l, fp.as_deref(), req.activation_id.as_deref(), t).await?;
            (code, license_json(l), activation)
        }
    };
    let body = json!({
        "valid": code == "VALID", "code": code, "license": license, "activation": activation,
        "nonce": req.nonce, "issued_at": t,
    });
    Ok(format::sign_response(&app.keys, body))
}

async fn validation_code(
    app: &App,
    l: &License,
    fp: Option<&str>,
    activation_id: Option<&str>,
    t: i64,
) -> ApiResult<(&'static str, Value)> {
    if let Some(code) = blocked(l, t) {
        return Ok((code, Value::Null));
    }
    if l.license_type == "subscription" && l.paid_through.is_some_and(|p| p + l.grace_days * 86_400 <= t) {
        return Ok(("EXPIRED", Value::Null));
    }
    let by_id = match activation_id {
        Some(id) => app
            .db
            .fetch_optional::<Activation>(sql!(
                "SELECT id, fingerprint, created_at, last_check_in_at, deactivated_at FROM license_activations WHERE id = $1 AND license_id = $2",
                id,
                &l.id
            ))
            .await?
            .filter(|a| a.deactivated_at.is_none()),
        None => None,
    };
    if activation_id.is_some() && by_id.is_none() {
        return Ok(("NOT_ACTIVATED", Value::Null));
    }
    let activation = match (by_id, fp) {
        (Some(a), Some(fp)) if a.fingerprint != fp => return Ok(("FINGERPRINT_MISMATCH", Value::Null)),
        (Some(a), _) => Some(a),
        (None, Some(fp)) => {
            let a = app
                .db
                .fetch_optional::<Activation>(sql!(
                    "SELECT id, fingerprint, created_at, last_check_in_at, deactivated_at FROM license_activations
                     WHERE license_id = $1 AND fingerprint = $2 AND deactivated_at IS NULL",
                    &l.id,
                    fp
                ))
                .await?;
            match a {
                Some(a) => Some(a),
                None => {
                    let full = l.max_activations.is_some_and(|m| l.activations >= m);
                    return Ok((if full { "TOO_MANY_ACTIVATIONS" } else { "NOT_ACTIVATED" }, Value::Null));
                }
            }
        }
        (None, None) => None,
    };
    let Some(a) = activation else {
        return Ok(("VALID", Value::Null));
    };
    let overdue =
        l.license_type == "subscription" && a.last_check_in_at + l.check_in_hours * 3600 + l.grace_days * 86_400 < t;
    let a_json = json!({"id": a.id, "created_at": a.created_at, "last_check_in_at": a.last_check_in_at});
    if overdue && fp.is_none() {
        return Ok(("CHECK_IN_OVERDUE", a_json));
    }
    if fp.is_some() && a.last_check_in_at < t - CHECK_IN_WRITE_SECS {
        // A validation from the activated device is its check-in. Check-ins matter at hour
        // and day scale, so one write per few minutes keeps validations mostly read-only.
        app.db
            .execute(sql!(
                "UPDATE license_activations SET last_check_in_at = $2 WHERE id = $1 AND last_check_in_at < $2",
                &a.id,
                t
            ))
            .await?;
    }
    Ok(("VALID", a_json))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    pub activation_id: Option<String>,
    pub device_fingerprint: Option<String>,
}

/// Frees a device's seat (not for single-use keys: those are spent by their first activation).
pub async fn deactivate(app: &App, key: &str, req: &DeactivateRequest) -> ApiResult<Value> {
    let key = parse_key(key)?;
    let fp = req.device_fingerprint.as_deref().map(check_fingerprint).transpose()?;
    if req.activation_id.is_none() && fp.is_none() {
        return Err(unprocessable(
            "missing_device",
            "send activation_id or device_fingerprint",
        ));
    }
    let tx = app.db.begin().await?;
    let l = find(&tx, &key)
        .await?
        .ok_or_else(|| license_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no license has this key"))?;
    if l.license_type == "single_use" {
        return Err(license_error(
            StatusCode::CONFLICT,
            "KEY_CONSUMED",
            "a single-use key cannot be moved to another device",
        ));
    }
    let t = now();
    let n = tx
        .execute(sql!(
            "UPDATE license_activations SET deactivated_at = $4
             WHERE license_id = $1 AND deactivated_at IS NULL AND (id = $2 OR fingerprint = $3)",
            &l.id,
            req.activation_id.clone(),
            fp,
            t
        ))
        .await?;
    if n == 0 {
        return Err(license_error(
            StatusCode::NOT_FOUND,
            "NOT_ACTIVATED",
            "this device is not activated on this license",
        ));
    }
    tx.execute(sql!(
        "UPDATE license_keys SET activations = CASE WHEN activations >= $2 THEN activations - $2 ELSE 0 END, updated_at = $3 WHERE id = $1",
        &l.id,
        i64::try_from(n).unwrap_or(1),
        t
    ))
    .await?;
    tx.commit().await?;
    let l = find(&app.db, &key).await?.ok_or_else(|| not_found("license"))?;
    Ok(json!({"deactivated": true, "license": license_json(&l)}))
}

/// Seller actions on a license: `suspend`, `reinstate`, `revoke`, `reset` (all devices off).
pub async fn seller_action(e: &impl Exec, license_id: &str, seller_id: &str, action: &str) -> ApiResult<()> {
    let owned = e
        .fetch_i64(sql!(
            "SELECT COUNT(*) FROM license_keys l JOIN orders o ON o.id = l.order_id WHERE l.id = $1 AND o.seller_id = $2",
            license_id,
            seller_id
        ))
        .await?;
    if owned == 0 {
        return Err(not_found("license"));
    }
    let t = now();
    let q = match action {
        "suspend" => sql!("UPDATE license_keys SET status = 'suspended', updated_at = $2 WHERE id = $1 AND status = 'active'", license_id, t),
        "reinstate" => sql!("UPDATE license_keys SET status = 'active', updated_at = $2 WHERE id = $1 AND status IN ('suspended', 'revoked')", license_id, t),
        "revoke" => sql!("UPDATE license_keys SET status = 'revoked', updated_at = $2 WHERE id = $1", license_id, t),
        "reset" => {
            e.execute(sql!("UPDATE license_activations SET deactivated_at = $2 WHERE license_id = $1 AND deactivated_at IS NULL", license_id, t))
                .await?;
            sql!("UPDATE license_keys SET activations = 0, updated_at = $2 WHERE id = $1", license_id, t)
        }
        _ => return Err(unprocessable("invalid_action", "action must be suspend, reinstate, revoke or reset").field("action")),
    };
    e.execute(q).await?;
    Ok(())
}

/// Licenses that stopped being valid since `since` (revoked, suspended, expired): what an
/// offline client that comes back online must forget. Signed like a validation answer.
pub async fn revocations(app: &App, since: i64, cursor: Option<&str>, limit: i64) -> ApiResult<Value> {
    let rows: Vec<(String, String, String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, product_id, status, updated_at FROM license_keys
             WHERE status IN ('revoked', 'suspended', 'expired') AND updated_at >= $1 AND id > $2 ORDER BY id LIMIT $3",
            since,
            cursor.unwrap_or(""),
            limit + 1
        ))
        .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Value> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(100))
        .map(|(id, product, status, at)| json!({"license_id": id, "product_id": product, "status": status, "at": at}))
        .collect();
    let next = if more {
        items.last().and_then(|i| i["license_id"].as_str()).map(str::to_string)
    } else {
        None
    };
    Ok(format::sign_response(
        &app.keys,
        json!({"items": items, "next_cursor": next, "issued_at": now()}),
    ))
}
