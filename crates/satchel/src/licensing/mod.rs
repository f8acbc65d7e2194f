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
//!
//! Keys, certificates and signed answers are minted through the `satchel-license` crate that
//! sellers embed ([`format`](mod@format)), so there is one implementation of each wire format.
//! A validation is one read (`snapshot`: the license and the named device together),
//! usually answered from [`cache`] (both backends); the only write is a device's check-in,
//! every few minutes at most. [`guessing`] flags and throttles networks that guess keys.

pub mod cache;
pub mod format;
pub mod guessing;

use std::sync::Arc;
use std::time::Duration;

use satchel_license::{Claims, LicenseType};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::catalog::LicensePolicy;
use crate::db::{Exec, Tx};
use crate::error::{not_found, unprocessable, ApiError, ApiResult};
use crate::ids::{hash_secret, new_id, now};
use crate::sql;
use axum::http::StatusCode;

/// What licensing keeps per instance: the key-guessing counters and, on PostgreSQL, the
/// validation cache with its listener.
#[derive(Debug)]
pub struct Runtime {
    pub guesses: guessing::GuessWatch,
    pub cache: Option<Arc<cache::ValidationCache>>,
}

impl Runtime {
    /// Starts the cache and its change watcher when `validation_cache_secs` > 0.
    pub fn new(cfg: &crate::config::LicensesConfig, db: &crate::db::Db) -> Self {
        let cache = match db {
            crate::db::Db::Postgres(pool) if cfg.validation_cache_secs > 0 => {
                let c = Arc::new(cache::ValidationCache::new(Duration::from_secs(
                    cfg.validation_cache_secs,
                )));
                cache::spawn_listener(&c, pool.clone());
                Some(c)
            }
            crate::db::Db::Sqlite(_) if cfg.validation_cache_secs > 0 => {
                let c = Arc::new(cache::ValidationCache::new(Duration::from_secs(
                    cfg.validation_cache_secs,
                )));
                cache::spawn_sqlite_watcher(&c, db.sqlite_file());
                Some(c)
            }
            _ => None,
        };
        Self {
            guesses: guessing::GuessWatch::new(guessing::Limits {
                threshold: cfg.guess_threshold,
                window: Duration::from_secs(cfg.guess_window_secs.max(1)),
                throttle: Duration::from_secs(cfg.guess_throttle_secs.max(1)),
            }),
            cache,
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Activation {
    pub id: String,
    pub fingerprint: String,
    pub created_at: i64,
    pub last_check_in_at: i64,
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

/// Until when a device may use the license offline: subscriptions until paid-through +
/// grace, other types until their term (or forever).
fn offline_until(l: &License) -> Option<i64> {
    match l.license_type.as_str() {
        "subscription" => l.paid_through.map(|p| p + l.grace_days * 86_400).or(l.expires_at),
        _ => l.expires_at,
    }
}

fn license_type(l: &License) -> LicenseType {
    match l.license_type.as_str() {
        "subscription" => LicenseType::Subscription,
        "single_use" => LicenseType::SingleUse,
        _ => LicenseType::Perpetual,
    }
}

fn certificate(app: &App, l: &License, activation_id: &str, fingerprint_hash: &str, t: i64) -> String {
    let subscription = l.license_type == "subscription";
    let claims = Claims {
        license_id: l.id.clone(),
        product_id: l.product_id.clone(),
        license_type: license_type(l),
        entitlements: vec![l.product_id.clone()],
        fingerprint: fingerprint_hash.to_string(),
        activation_id: activation_id.to_string(),
        issued_at: t,
        expires_at: offline_until(l),
        max_activations: l.max_activations.and_then(|m| u32::try_from(m).ok()),
        check_in_hours: subscription.then(|| u32::try_from(l.check_in_hours).ok()).flatten(),
    };
    format::certificate(&app.keys, &claims)
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
            "SELECT id, fingerprint, created_at, last_check_in_at FROM license_activations
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
                    "SELECT id, fingerprint, created_at, last_check_in_at FROM license_activations
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
    json!({
        "activation_id": activation_id,
        "certificate": certificate(app, l, activation_id, fp, t),
        "expires_at": offline_until(l),
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
///
/// One read answers it (`snapshot`: the license and the named device's activation in one
/// query); the only write is the device's check-in, at most once per
/// `CHECK_IN_WRITE_SECS`.
pub async fn validate(app: &App, key: &str, req: &ValidateRequest) -> ApiResult<Value> {
    let key = parse_key(key)?;
    if req.nonce.as_ref().is_some_and(|n| n.len() > 128) {
        return Err(unprocessable("invalid_nonce", "nonce must be at most 128 characters").field("nonce"));
    }
    if req.activation_id.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(
            unprocessable("invalid_activation_id", "activation_id must be at most 64 characters")
                .field("activation_id"),
        );
    }
    let fp = req.device_fingerprint.as_deref().map(check_fingerprint).transpose()?;
    let t = now();
    let (fp, act) = (fp.as_deref(), req.activation_id.as_deref());
    let cache = app.licensing.cache.as_deref();
    let snap = match cache.and_then(|c| c.get(&key, fp, act)) {
        Some(hit) => Some(hit),
        None => {
            let stamp = cache.map(cache::ValidationCache::stamp);
            let read = snapshot(app, &key, fp, act).await?.map(Arc::new);
            if let (Some(c), Some(stamp), Some(s)) = (cache, stamp, &read) {
                c.put(&key, fp, act, s.clone(), stamp);
            }
            read
        }
    };
    let (code, license, activation) = match &snap {
        None => ("NOT_FOUND", Value::Null, Value::Null),
        Some(s) => {
            let d = decide(s, fp, act.is_some(), t);
            if let (Some(a), true) = (d.activation, d.check_in) {
                // A validation from the activated device is its check-in. Check-ins matter at
                // hour and day scale, so one write per few minutes keeps validations read-only.
                app.db
                    .execute(sql!(
                        "UPDATE license_activations SET last_check_in_at = $2 WHERE id = $1 AND last_check_in_at < $2",
                        &a.id,
                        t
                    ))
                    .await?;
                if let Some(c) = cache {
                    c.checked_in(&key, fp, act, t);
                }
            }
            let a_json = d
                .activation
                .map(|a| json!({"id": a.id, "created_at": a.created_at, "last_check_in_at": a.last_check_in_at}));
            (d.code, license_json(&s.license), a_json.unwrap_or(Value::Null))
        }
    };
    let body = json!({
        "valid": code == "VALID", "code": code, "license": license, "activation": activation,
        "nonce": req.nonce, "issued_at": t,
    });
    Ok(format::sign_response(&app.keys, &body))
}

/// A license and the live activations a validation names (by fingerprint hash and/or id).
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub license: License,
    pub by_fingerprint: Option<Activation>,
    pub by_id: Option<Activation>,
}

#[derive(Debug, sqlx::FromRow)]
struct SnapshotRow {
    #[sqlx(flatten)]
    license: License,
    act_id: Option<String>,
    act_fingerprint: Option<String>,
    act_created_at: Option<i64>,
    act_last_check_in_at: Option<i64>,
}

/// Reads a license and the named device's live activation in one query (at most two rows:
/// the activation with this fingerprint, the one with this id).
pub(crate) async fn snapshot(
    app: &App,
    key: &str,
    fp: Option<&str>,
    activation_id: Option<&str>,
) -> Result<Option<Snapshot>, crate::db::DbError> {
    let rows: Vec<SnapshotRow> = app
        .db
        .fetch_all(sql!(
            "SELECT l.id, l.license_key, l.order_id, l.product_id, l.email, l.license_type, l.max_activations,
                l.activations, l.status, l.expires_at, l.paid_through, l.check_in_hours, l.grace_days,
                a.id AS act_id, a.fingerprint AS act_fingerprint, a.created_at AS act_created_at,
                a.last_check_in_at AS act_last_check_in_at
             FROM license_keys l LEFT JOIN license_activations a
               ON a.license_id = l.id AND a.deactivated_at IS NULL AND (a.fingerprint = $2 OR a.id = $3)
             WHERE l.license_key = $1",
            key,
            fp,
            activation_id
        ))
        .await?;
    let mut snap: Option<Snapshot> = None;
    for row in rows {
        let activation = match (
            row.act_id,
            row.act_fingerprint,
            row.act_created_at,
            row.act_last_check_in_at,
        ) {
            (Some(id), Some(fingerprint), Some(created_at), Some(last_check_in_at)) => Some(Activation {
                id,
                fingerprint,
                created_at,
                last_check_in_at,
            }),
            _ => None,
        };
        let s = snap.get_or_insert(Snapshot {
            license: row.license,
            by_fingerprint: None,
            by_id: None,
        });
        if let Some(a) = activation {
            if activation_id == Some(a.id.as_str()) {
                s.by_id = Some(a.clone());
            }
            if fp == Some(a.fingerprint.as_str()) {
                s.by_fingerprint = Some(a);
            }
        }
    }
    Ok(snap)
}

/// What a validation answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decision<'a> {
    pub code: &'static str,
    /// The device's activation, shown in the answer.
    pub activation: Option<&'a Activation>,
    /// Whether to record this validation as the device's check-in.
    pub check_in: bool,
}

/// The validation rules, on a [`Snapshot`] read at `t`. `fp` is the device fingerprint's
/// hash; `by_id_asked` whether the client named an activation id.
pub(crate) fn decide<'a>(s: &'a Snapshot, fp: Option<&str>, by_id_asked: bool, t: i64) -> Decision<'a> {
    let l = &s.license;
    let refuse = |code| Decision {
        code,
        activation: None,
        check_in: false,
    };
    if let Some(code) = blocked(l, t) {
        return refuse(code);
    }
    if l.license_type == "subscription" && l.paid_through.is_some_and(|p| p + l.grace_days * 86_400 <= t) {
        return refuse("EXPIRED");
    }
    if by_id_asked && s.by_id.is_none() {
        return refuse("NOT_ACTIVATED");
    }
    let activation = match (&s.by_id, fp) {
        (Some(a), Some(fp)) if a.fingerprint != fp => return refuse("FINGERPRINT_MISMATCH"),
        (Some(a), _) => Some(a),
        (None, Some(_)) => match &s.by_fingerprint {
            Some(a) => Some(a),
            None => {
                let full = l.max_activations.is_some_and(|m| l.activations >= m);
                return refuse(if full { "TOO_MANY_ACTIVATIONS" } else { "NOT_ACTIVATED" });
            }
        },
        (None, None) => None,
    };
    let Some(a) = activation else {
        return refuse("VALID");
    };
    let overdue =
        l.license_type == "subscription" && a.last_check_in_at + l.check_in_hours * 3600 + l.grace_days * 86_400 < t;
    if overdue && fp.is_none() {
        return Decision {
            code: "CHECK_IN_OVERDUE",
            activation: Some(a),
            check_in: false,
        };
    }
    Decision {
        code: "VALID",
        activation: Some(a),
        check_in: fp.is_some() && a.last_check_in_at < t - CHECK_IN_WRITE_SECS,
    }
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

/// Body of the seller's `extend` action: exactly one of `days` or `until`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Days to add (1–36500), counted from the current expiry, or from now if it has passed.
    pub days: Option<i64>,
    /// The new expiry (unix seconds): later than now and than the current expiry.
    pub until: Option<i64>,
}

/// Longest extension, in days (a century).
const MAX_EXTEND_DAYS: i64 = 36_500;

/// The seller's actions on one of their licenses, in one transaction:
/// - `suspend` (active → suspended), `reinstate` (suspended or revoked → active), `revoke`;
/// - `reset`: every device deactivated, all seats free;
/// - `extend` with [`ExtendRequest`] `body`: pushes `expires_at` (an `expired` license becomes
///   active again; suspended and revoked ones stay so). Refused for licenses that never
///   expire and for subscription licenses, whose expiry follows their billing (each paid
///   invoice sets it to paid-through + grace, which would undo a manual extension).
///
/// Another seller's license is a 404 and nothing changes. Returns the license's new state.
pub async fn seller_action(
    app: &App,
    license_id: &str,
    seller_id: &str,
    action: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let tx = app.db.begin().await?;
    let l: License = tx
        .fetch_optional(sql!(
            "SELECT l.id, l.license_key, l.order_id, l.product_id, l.email, l.license_type, l.max_activations,
                l.activations, l.status, l.expires_at, l.paid_through, l.check_in_hours, l.grace_days
             FROM license_keys l JOIN orders o ON o.id = l.order_id WHERE l.id = $1 AND o.seller_id = $2",
            license_id,
            seller_id
        ))
        .await?
        .ok_or_else(|| not_found("license"))?;
    let t = now();
    let event = match action {
        "suspend" => {
            tx.execute(sql!(
                "UPDATE license_keys SET status = 'suspended', updated_at = $2 WHERE id = $1 AND status = 'active'",
                &l.id,
                t
            ))
            .await?;
            "license.suspended"
        }
        "reinstate" => {
            tx.execute(sql!("UPDATE license_keys SET status = 'active', updated_at = $2 WHERE id = $1 AND status IN ('suspended', 'revoked')", &l.id, t))
                .await?;
            "license.reinstated"
        }
        "revoke" => {
            tx.execute(sql!(
                "UPDATE license_keys SET status = 'revoked', updated_at = $2 WHERE id = $1",
                &l.id,
                t
            ))
            .await?;
            "license.revoked"
        }
        "reset" => {
            tx.execute(sql!(
                "UPDATE license_activations SET deactivated_at = $2 WHERE license_id = $1 AND deactivated_at IS NULL",
                &l.id,
                t
            ))
            .await?;
            tx.execute(sql!(
                "UPDATE license_keys SET activations = 0, updated_at = $2 WHERE id = $1",
                &l.id,
                t
            ))
            .await?;
            "license.reset"
        }
        "extend" => {
            let until = extension(&l, body, t)?;
            tx.execute(sql!(
                "UPDATE license_keys SET expires_at = $2, status = CASE WHEN status = 'expired' THEN 'active' ELSE status END,
                    updated_at = $3 WHERE id = $1",
                &l.id,
                until,
                t
            ))
            .await?;
            "license.extended"
        }
        _ => {
            return Err(unprocessable(
                "invalid_action",
                "action must be suspend, reinstate, revoke, reset or extend",
            )
            .field("action"))
        }
    };
    let after: License = tx
        .fetch_one(sql!(
            format!("SELECT {LIC_COLS} FROM license_keys WHERE id = $1"),
            &l.id
        ))
        .await?;
    tx.execute(sql!(
        "INSERT INTO domain_events (id, seller_id, event_type, subject_id, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        new_id("evt"),
        seller_id,
        event,
        &l.id,
        json!({"before": license_json(&l), "after": license_json(&after)}).to_string(),
        t
    ))
    .await?;
    tx.commit().await?;
    Ok(license_json(&after))
}

/// The new `expires_at` an `extend` body asks for, or why it cannot be.
fn extension(l: &License, body: &[u8], t: i64) -> ApiResult<i64> {
    let req: ExtendRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExtendRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            crate::error::bad_request(
                "invalid_json",
                format!("{e}; send {{\"days\": N}} or {{\"until\": unix_seconds}}"),
            )
        })?
    };
    if l.license_type == "subscription" {
        return Err(crate::error::conflict(
            "subscription_license",
            "a subscription license follows its billing: each paid invoice sets its expiry; extend the subscription instead",
        ));
    }
    let Some(current) = l.expires_at else {
        return Err(crate::error::conflict(
            "never_expires",
            "this license never expires; there is nothing to extend",
        ));
    };
    match (req.days, req.until) {
        (Some(days), None) if (1..=MAX_EXTEND_DAYS).contains(&days) => Ok(current.max(t) + days * 86_400),
        (Some(_), None) => {
            Err(unprocessable("invalid_days", format!("days must be 1–{MAX_EXTEND_DAYS}")).field("days"))
        }
        (None, Some(until)) if until > t && until > current && until <= t + MAX_EXTEND_DAYS * 86_400 => Ok(until),
        (None, Some(_)) => Err(unprocessable(
            "invalid_until",
            "until must be later than now and than the license's current expiry, and within a century",
        )
        .field("until")),
        _ => Err(unprocessable("invalid_extension", "send exactly one of days or until")),
    }
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
        &json!({"items": items, "next_cursor": next, "issued_at": now()}),
    ))
}
