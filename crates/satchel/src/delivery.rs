//! Delivery: download grants, their signed tokens, the counted redemption, and the short
//! delivery URLs that actually carry the bytes.
//!
//! A download token is `d1.{grant_id}.{expires_at}.{kid}.{mac}` — the MAC (HMAC-SHA256,
//! truncated to 128 bits, base64url) is checked before the database is touched, so forged,
//! truncated or expired tokens cost nothing. The token's expiry is the link's own; the grant's
//! access window is a separate column that subscriptions move forward, so links minted before
//! a renewal keep working until their own expiry and newly shown links carry the new one.
//! The database never holds a usable token: it keeps the sha256 of the first one issued
//! (for support look-ups), and the MAC over the grant id is what authorizes a redemption.
//! Redemption is one conditional UPDATE that decrements `remaining` only for a live grant
//! (order paid, grant active and unexpired, count left, IP policy met): exact under any
//! concurrency. Concurrent starts share one transaction ([`batch`], group commit), so the
//! rate is not capped by commits per second. It answers a 302 to a delivery URL valid long enough for the file: Satchel's
//! `/files/f1.{grant}.{file}.{exp}.{kid}.{mac}/{name}` (streamed, or handed to nginx with
//! `X-Accel-Redirect` in x-accel mode) or, in presign mode, a presigned object-store URL.
//! Ranges and resumes on it never count again; each `/files` request re-checks that the
//! grant is still live, so a refund stops issued URLs at once (presigned ones run out).
//! A return to the download link that continues a counted download (see [`continuation`])
//! gets a delivery URL without counting.

pub mod batch;
pub mod events;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::app::App;
use crate::catalog::DownloadPolicy;
use crate::checkout::Order;
use crate::config::DeliveryMode;
use crate::db::models::{FileRow, Product};
use crate::db::{Exec, Tx};
use crate::error::{ApiError, ApiResult};
use crate::ids::{hash_secret, new_id, now};
use crate::keys::Keys;
use crate::sql;
use axum::http::StatusCode;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Length of a token's MAC: 128 bits in unpadded base64url.
const MAC_LEN: usize = 22;

/// HMAC-SHA256 of `msg` under `secret`, truncated to 128 bits.
///
/// HMAC hashes its key into two blocks before the message; every download start verifies one
/// token and signs another with the same key, so each thread keeps the keyed state of the
/// last key it used and starts each MAC from a copy of it (two SHA-256 blocks fewer per MAC).
/// `None` only if the key were refused (HMAC takes keys of any length): the caller's token
/// then carries an empty MAC, which no verification accepts.
fn mac_bytes(secret: &[u8; 32], msg: &str) -> Option<[u8; 16]> {
    thread_local! {
        static KEYED: std::cell::RefCell<Option<([u8; 32], HmacSha256)>> = const { std::cell::RefCell::new(None) };
    }
    let keyed = KEYED.with_borrow_mut(|keyed| match keyed {
        Some((k, m)) if k == secret => Some(m.clone()),
        _ => {
            let m = HmacSha256::new_from_slice(secret).ok()?;
            *keyed = Some((*secret, m.clone()));
            Some(m)
        }
    });
    let mut m = keyed?;
    m.update(msg.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&m.finalize().into_bytes()[..16]);
    Some(out)
}

fn push_tag(out: &mut String, tag: Option<[u8; 16]>) {
    if let Some(tag) = tag {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(tag, out);
    }
}

/// Signs `{prefix}.{fields…}` with the current MAC key.
pub fn sign(keys: &Keys, prefix: &str, fields: &[&str]) -> String {
    let mut token = String::new();
    push_signed(&mut token, keys, prefix, fields);
    token
}

/// Appends the token [`sign`] makes to `out`, with no string of its own on the way (a
/// download start builds its whole delivery URL in one).
fn push_signed(out: &mut String, keys: &Keys, prefix: &str, fields: &[&str]) {
    let k = keys.current_mac();
    let start = out.len();
    out.reserve(prefix.len() + fields.iter().map(|f| f.len() + 1).sum::<usize>() + k.kid.len() + MAC_LEN + 2);
    out.push_str(prefix);
    for f in fields {
        out.push('.');
        out.push_str(f);
    }
    out.push('.');
    out.push_str(&k.kid);
    let tag = mac_bytes(&k.secret, &out[start..]);
    out.push('.');
    push_tag(out, tag);
}

/// Verifies a token made by [`sign`]; returns its fields. No I/O.
pub fn verify<'a>(keys: &Keys, prefix: &str, token: &'a str, n_fields: usize) -> Option<Vec<&'a str>> {
    use subtle::ConstantTimeEq;
    if token.len() > 256 || !token.is_ascii() {
        return None;
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != n_fields + 3 || parts[0] != prefix {
        return None;
    }
    let kid = parts[n_fields + 1];
    let key = keys.mac_by_kid(kid)?;
    let body_len = token.len() - parts[n_fields + 2].len() - 1;
    let tag = mac_bytes(&key.secret, &token[..body_len])?;
    let mut expected = [0u8; MAC_LEN];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(tag, &mut expected)
        .ok()?;
    bool::from(expected[..n].ct_eq(parts[n_fields + 2].as_bytes())).then(|| parts[1..=n_fields].to_vec())
}

fn download_error(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, code, message)
}

pub async fn create_grant(
    tx: &Tx,
    keys: &Keys,
    order: &Order,
    item_id: &str,
    p: &Product,
    policy: &DownloadPolicy,
) -> ApiResult<()> {
    let t = now();
    let id = new_id("grt");
    let expires_at = t + policy.link_days * 86_400;
    // The token is deterministic from (grant, expiry, key), so the success page and the
    // library can show the same link again without the database holding it.
    let token = sign(keys, "d1", &[&id, &expires_at.to_string()]);
    tx.execute(sql!(
        "INSERT INTO download_grants (id, order_id, order_item_id, product_id, email, token_hash, max_downloads, remaining,
            expires_at, ip_policy, ip_allow, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, 'active', $11, $11)",
        &id,
        &order.id,
        item_id,
        &p.id,
        &order.email,
        hash_secret(&token),
        policy.max_downloads,
        expires_at,
        &policy.ip_policy,
        policy.ip_allow.join(","),
        t
    ))
    .await?;
    Ok(())
}

/// The download URL of an order item's grant (re-minted from the grant row).
pub async fn grant_url_for_item(app: &App, item_id: &str) -> ApiResult<Option<String>> {
    let row: Option<(String, i64)> = app
        .db
        .fetch_optional(sql!(
            "SELECT id, expires_at FROM download_grants WHERE order_item_id = $1",
            item_id
        ))
        .await?;
    Ok(row.map(|(id, exp)| {
        let token = sign(&app.keys, "d1", &[&id, &exp.to_string()]);
        format!("{}/api/v1/downloads/{token}", app.cfg.public_url())
    }))
}

/// The /24 (IPv4) or /64 (IPv6) prefix an address belongs to.
pub fn ip_prefix(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct GrantState {
    id: String,
    product_id: String,
    remaining: i64,
    expires_at: i64,
    status: String,
    ip_policy: String,
    ip_bound: Option<String>,
    ip_allow: String,
    order_status: String,
}

/// The grant a download token names, and the time it was checked at: its MAC and expiry
/// hold. No I/O.
fn open_link<'t>(app: &App, token: &'t str) -> ApiResult<(&'t str, i64)> {
    let gone = || {
        download_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "This download link is not valid. Check that you copied the whole link from your receipt.",
        )
    };
    let fields = verify(&app.keys, "d1", token, 2).ok_or_else(gone)?;
    let (grant_id, exp) = (fields[0], fields[1].parse::<i64>().map_err(|_| gone())?);
    let t = now();
    if exp <= t {
        return Err(download_error(
            StatusCode::GONE,
            "link_expired",
            "This download link has expired. Open your library to get a fresh one.",
        ));
    }
    Ok((grant_id, t))
}

/// What a `GET` of a download link would meet, found without counting, logging or mailing
/// anything: `Ok` while it would start a download, else the refusal it would get. This
/// answers `HEAD`, which must be safe: mail scanners and link checkers probe the links in a
/// receipt with it, and must not spend the buyer's downloads or trigger a re-confirmation.
pub async fn probe(app: &App, token: &str, file_name: Option<&str>, ip: std::net::IpAddr) -> ApiResult<()> {
    let (grant_id, t) = open_link(app, token)?;
    match refusal(app, grant_id, file_name, ip, t, false).await? {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// Redeems a download token: one atomic decrement, one event, and the delivery URL.
pub async fn redeem(
    app: &App,
    token: &str,
    file_name: Option<&str>,
    ip: std::net::IpAddr,
    user_agent: &str,
) -> ApiResult<String> {
    let (grant_id, t) = open_link(app, token)?;
    let prefix = ip_prefix(ip);
    let start = batch::Start {
        grant_id: grant_id.to_string(),
        file_name: file_name.map(str::to_string),
        ip: ip.to_string(),
        prefix: prefix.clone(),
        user_agent: user_agent.chars().take(batch::USER_AGENT_MAX).collect(),
        event_id: new_id("dle"),
        at: t,
    };
    let settled = app.download_starts.settle(&app.db, start).await.map_err(|e| {
        tracing::error!(error = %e, "download start not recorded");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The download could not start just now; nothing was counted. Try again in a moment.",
        )
    })?;
    match settled {
        batch::Settled::Counted(file) => {
            crate::abuse::after_start(app, grant_id, &prefix);
            delivery_url(app, grant_id, &file, t + delivery_ttl(file.size), &prefix).await
        }
        // Live by the time it is read again (a reset, say): the client may simply retry.
        batch::Settled::Refused => Err(refusal(app, grant_id, file_name, ip, t, true)
            .await?
            .unwrap_or_else(|| {
                download_error(
                    StatusCode::CONFLICT,
                    "try_again",
                    "The download could not start; try again.",
                )
            })),
    }
}

/// Seconds within which further continuations of one file from one network are not logged
/// again (see [`continuation`]).
pub const RESUME_LOG_EVERY: i64 = 60;

/// A resume, or another connection of a segmented download, of a download already counted.
///
/// Download managers (aria2c, curl `-C -` on the original link, browsers resuming) come back
/// to the download link rather than to the delivery URL, once per connection or resume. Such
/// a request is a continuation, and gets a delivery URL without counting, when all hold:
/// it carries a `Range` whose first byte is past 0 (a fresh download starts at 0), it comes
/// from the IP prefix (/24, /64) of a counted start of the same grant and file, the grant is
/// still live, and it falls within that start's delivery window (`delivery_ttl`). The URL it
/// gets expires with that window, so continuations can never stretch one counted download
/// past the time a single delivery URL would have lived. `Ok(None)`: not a continuation —
/// the caller redeems (and counts, or refuses) as usual. A continuation is logged as a
/// `resumed` download event (with the bytes from its first byte on; at most one per file and
/// network per [`RESUME_LOG_EVERY`]), so the seller's history shows it; it counts nothing,
/// and detection reads `started` events only.
pub async fn continuation(
    app: &App,
    token: &str,
    file_name: Option<&str>,
    ip: std::net::IpAddr,
    range: &str,
    user_agent: &str,
) -> ApiResult<Option<String>> {
    let Some(fields) = verify(&app.keys, "d1", token, 2) else {
        return Ok(None);
    };
    let t = now();
    if fields[1].parse::<i64>().map_or(true, |exp| exp <= t) {
        return Ok(None);
    }
    let live: Option<(String,)> = app
        .db
        .fetch_optional(sql!(
            "SELECT g.product_id FROM download_grants g JOIN orders o ON o.id = g.order_id
             WHERE g.id = $1 AND g.status = 'active' AND g.expires_at > $2 AND o.status IN ('paid', 'partially_refunded')",
            fields[0],
            t
        ))
        .await?;
    let Some((product_id,)) = live else {
        return Ok(None);
    };
    let Ok(file) = pick_file(&app.db, &product_id, file_name).await else {
        return Ok(None);
    };
    let size = u64::try_from(file.size).unwrap_or(0);
    let first = match crate::http::ranges::parse_range(range, size) {
        crate::http::ranges::RangeDecision::Partial(start, _) if start > 0 => start,
        _ => return Ok(None),
    };
    let window = delivery_ttl(file.size);
    let started: Option<(i64,)> = app
        .db
        .fetch_optional(sql!(
            format!(
                "{} SELECT at FROM chain
                 WHERE file_id = $2 AND ip_prefix = $3 AND outcome = 'started' AND at > $4
                 ORDER BY at DESC LIMIT 1",
                events::since("$1", "$4")
            ),
            fields[0],
            &file.id,
            ip_prefix(ip),
            t - window
        ))
        .await?;
    let Some((at,)) = started else {
        return Ok(None);
    };
    let prefix = ip_prefix(ip);
    // The log line is for the seller's history; the download does not wait on its failure.
    let logged = log_continuation(
        app,
        ResumedLine {
            grant_id: fields[0],
            file_id: &file.id,
            at: t,
            ip,
            prefix: &prefix,
            user_agent,
            bytes: i64::try_from(size - first).unwrap_or(0),
        },
    )
    .await;
    if let Err(e) = logged {
        tracing::warn!(grant = %fields[0], error = %e, "continuation not logged");
    }
    Ok(Some(delivery_url(app, fields[0], &file, at + window, &prefix).await?))
}

/// A continuation's `resumed` download event.
struct ResumedLine<'a> {
    grant_id: &'a str,
    file_id: &'a str,
    at: i64,
    ip: std::net::IpAddr,
    prefix: &'a str,
    user_agent: &'a str,
    bytes: i64,
}

/// Logs a continuation unless one of the same grant, file and network was logged within
/// [`RESUME_LOG_EVERY`]: a segmented download (aria2c -x8) comes back once per connection
/// within a second, and eight "resumed" lines would push the download itself out of the
/// history the order page shows.
///
/// The check and the move of the grant's list head ([`events`]) are one statement, then the
/// line is inserted in the same transaction; they take turns: SQLite runs one writer at a
/// time, and on PostgreSQL a transaction-scoped advisory lock on (grant, file, network) makes
/// connections that arrive together wait for each other, so the second sees the first's
/// committed line (without it, each would miss the others' uncommitted one).
async fn log_continuation(app: &App, line: ResumedLine<'_>) -> Result<(), crate::db::DbError> {
    let tx = app.db.begin().await?;
    if tx.backend() == crate::db::Backend::Postgres {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("resumed\n{}\n{}\n{}", line.grant_id, line.file_id, line.prefix));
        let key = i64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
        tx.execute(sql!("SELECT pg_advisory_xact_lock($1)", key)).await?;
    }
    let id = new_id("dle");
    let moved: Option<(Option<String>,)> = tx
        .fetch_optional(sql!(
            format!(
                "UPDATE download_grants SET {}
                 WHERE id = $2 AND NOT EXISTS ({} SELECT 1 FROM chain
                                               WHERE file_id = $3 AND ip_prefix = $4 AND outcome = 'resumed' AND at > $5)
                 RETURNING prior_event_id",
                events::push("$1"),
                events::since("$2", "$5")
            ),
            &id,
            line.grant_id,
            line.file_id,
            line.prefix,
            line.at - RESUME_LOG_EVERY
        ))
        .await?;
    let Some((prev,)) = moved else {
        // Logged within the last minute already (or the grant is gone): nothing to add.
        return Ok(());
    };
    tx.execute(sql!(
        "INSERT INTO download_events (id, grant_id, file_id, at, ip, ip_prefix, user_agent, outcome, bytes, prev_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'resumed', $8, $9)",
        &id,
        line.grant_id,
        line.file_id,
        line.at,
        line.ip.to_string(),
        line.prefix,
        line.user_agent.chars().take(batch::USER_AGENT_MAX).collect::<String>(),
        line.bytes,
        prev
    ))
    .await?;
    tx.commit().await
}

async fn pick_file(e: &impl Exec, product_id: &str, name: Option<&str>) -> ApiResult<FileRow> {
    // One query: the named file (or the first by name) of the product's current version.
    let file: Option<FileRow> = e
        .fetch_optional(sql!(
            "SELECT f.id, f.product_id, f.version_id, f.name, f.object_key, f.size, f.sha256, f.content_type, f.created_at
             FROM products p JOIN files f ON f.version_id = p.current_version_id
             WHERE p.id = $1 AND ($2 = '' OR f.name = $2) ORDER BY f.name LIMIT 1",
            product_id,
            name.unwrap_or("")
        ))
        .await?;
    file.ok_or_else(|| crate::error::not_found("file"))
}

/// Why a grant refuses this request now, read from the database (`None`: it would not).
/// `mail`: a grant waiting for re-confirmation (re)sends its confirmation email, at most
/// once per link lifetime.
async fn refusal(
    app: &App,
    grant_id: &str,
    file_name: Option<&str>,
    ip: std::net::IpAddr,
    t: i64,
    mail: bool,
) -> ApiResult<Option<ApiError>> {
    let prefix = ip_prefix(ip);
    let g: Option<GrantState> = app
        .db
        .fetch_optional(sql!(
            "SELECT g.id, g.product_id, g.remaining, g.expires_at, g.status, g.ip_policy, g.ip_bound, g.ip_allow, o.status AS order_status
             FROM download_grants g JOIN orders o ON o.id = g.order_id WHERE g.id = $1",
            grant_id
        ))
        .await?;
    let Some(g) = g else {
        return Ok(Some(download_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "This download link is not valid.",
        )));
    };
    let _ = &g.id;
    let ip_allowed = match g.ip_policy.as_str() {
        "bind_first" => g.ip_bound.as_deref().is_none_or(|b| b == prefix),
        "allow_list" => g.ip_allow.split(',').any(|a| a.trim() == ip.to_string()),
        _ => true,
    };
    let order_live = matches!(g.order_status.as_str(), "paid" | "partially_refunded");
    if order_live && g.status == "reconfirm" {
        return Ok(Some(if mail {
            crate::abuse::reconfirm_refusal(app, grant_id).await?
        } else {
            crate::abuse::reconfirm_required()
        }));
    }
    if order_live && g.status == "suspended" {
        return Ok(Some(crate::abuse::suspended_refusal()));
    }
    Ok(if !order_live || g.status != "active" {
        Some(download_error(StatusCode::FORBIDDEN, "access_revoked", "Access to this download has been revoked (for example after a refund). Contact the store if this is a mistake."))
    } else if g.expires_at <= t {
        Some(download_error(
            StatusCode::GONE,
            "link_expired",
            "This download link has expired. Open your library to get a fresh one.",
        ))
    } else if g.remaining <= 0 {
        Some(download_error(
            StatusCode::FORBIDDEN,
            "download_limit_reached",
            "You have used every download this purchase includes. Contact the store to reset it.",
        ))
    } else if !ip_allowed {
        Some(download_error(
            StatusCode::FORBIDDEN,
            "ip_not_allowed",
            "This link is bound to another network. Download from the network you first used, or contact the store.",
        ))
    } else {
        // The grant is live; its current version may still lack the file asked for.
        pick_file(&app.db, &g.product_id, file_name).await.err()
    })
}

/// Seconds a delivery URL lives: 10 minutes, plus a minute per 50 MB, at most 6 hours.
pub fn delivery_ttl(size: i64) -> i64 {
    (600 + size / (50 * 1024 * 1024) * 60).min(6 * 3600)
}

/// The URL that carries the bytes, valid until `exp`, by delivery mode: a presigned
/// object-store URL in `presign` mode, else Satchel's signed `/files/…` URL (which answers
/// with an `X-Accel-Redirect` in `x-accel` mode). Watermarked products are always streamed
/// by Satchel: nginx and the object store only hold the unmarked original.
async fn delivery_url(app: &App, grant_id: &str, f: &FileRow, exp: i64, prefix: &str) -> ApiResult<String> {
    if app.cfg.delivery.mode == DeliveryMode::Presign && !watermarked(app, &f.product_id).await? {
        let ttl = Duration::from_secs(u64::try_from(exp - now()).unwrap_or(0).max(1));
        let disposition = crate::http::ranges::content_disposition(&f.name);
        if let Some(url) = app
            .storage
            .presign_download(&f.object_key, ttl, &disposition, &f.content_type)
        {
            return Ok(url);
        }
    }
    let network = app.cfg.delivery.bind_to_ip.then(|| network_tag(prefix));
    Ok(files_url(app, grant_id, f, exp, network.as_deref()))
}

/// What a bound delivery URL carries of the client's network: 12 hex digits of the SHA-256
/// of its prefix (/24, /64). The URL's MAC covers it, so it cannot be changed.
fn network_tag(prefix: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(prefix.as_bytes())[..6])
}

async fn watermarked(app: &App, product_id: &str) -> ApiResult<bool> {
    let policy: Option<(String,)> = app
        .db
        .fetch_optional(sql!("SELECT watermark_policy FROM products WHERE id = $1", product_id))
        .await?;
    // Unknown product: err on the side of streaming (Satchel re-checks everything there).
    Ok(policy.is_none_or(|(p,)| p != "none"))
}

/// Satchel's signed `/files/…` URL: grant, file and expiry, and with `network`, the tag of
/// the only network ([`network_tag`]) it serves.
fn files_url(app: &App, grant_id: &str, f: &FileRow, exp: i64, network: Option<&str>) -> String {
    let exp = exp.to_string();
    let mut url = String::with_capacity(128 + grant_id.len() + f.id.len() + 3 * f.name.len());
    app.cfg.push_public_url(&mut url);
    url.push_str("/files/");
    match network {
        Some(tag) => push_signed(&mut url, &app.keys, "f1", &[grant_id, &f.id, &exp, tag]),
        None => push_signed(&mut url, &app.keys, "f1", &[grant_id, &f.id, &exp]),
    }
    url.push('/');
    url.extend(percent_encoding::utf8_percent_encode(
        &f.name,
        percent_encoding::NON_ALPHANUMERIC,
    ));
    url
}

/// Checks a delivery token and that its grant is still live; returns the grant id and the file.
/// `ip` is the client's address; a URL bound to a network serves only that network.
pub async fn open_delivery(app: &App, token: &str, ip: std::net::IpAddr) -> ApiResult<(String, FileRow)> {
    let bad = || download_error(StatusCode::NOT_FOUND, "not_found", "This file link is not valid.");
    let f = verify(&app.keys, "f1", token, 3)
        .or_else(|| verify(&app.keys, "f1", token, 4))
        .ok_or_else(bad)?;
    let exp: i64 = f[2].parse().map_err(|_| bad())?;
    if exp <= now() {
        return Err(download_error(
            StatusCode::GONE,
            "link_expired",
            "This file link has expired; start the download again from your link or library.",
        ));
    }
    if f.get(3).is_some_and(|tag| *tag != network_tag(&ip_prefix(ip))) {
        return Err(download_error(
            StatusCode::FORBIDDEN,
            "ip_not_allowed",
            "This file link works only on the network that started the download. Start the download again from your download link or your library.",
        ));
    }
    let live: Option<(String,)> = app
        .db
        .fetch_optional(sql!(
            "SELECT g.id FROM download_grants g JOIN orders o ON o.id = g.order_id
             WHERE g.id = $1 AND g.status = 'active' AND o.status IN ('paid', 'partially_refunded')",
            f[0]
        ))
        .await?;
    if live.is_none() {
        return Err(download_error(
            StatusCode::FORBIDDEN,
            "access_revoked",
            "Access to this download has been revoked.",
        ));
    }
    let file = app
        .db
        .fetch_optional::<FileRow>(sql!(
            "SELECT id, product_id, version_id, name, object_key, size, sha256, content_type, created_at FROM files WHERE id = $1",
            f[1]
        ))
        .await?
        .ok_or_else(bad)?;
    Ok((f[0].to_string(), file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_reject_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_generate(dir.path()).unwrap();
        let t = sign(&keys, "d1", &["grt_1", "123"]);
        assert_eq!(verify(&keys, "d1", &t, 2).unwrap(), vec!["grt_1", "123"]);
        assert!(verify(&keys, "f1", &t, 2).is_none(), "prefix is bound");
        assert!(verify(&keys, "d1", &t.replace("grt_1", "grt_2"), 2).is_none());
        assert!(verify(&keys, "d1", &t[..t.len() - 1], 2).is_none(), "truncated");
        assert!(verify(&keys, "d1", "garbage", 2).is_none());
        assert!(verify(&keys, "d1", &"x".repeat(5000), 2).is_none());
    }

    /// Tokens are HMAC-SHA256 of `{prefix}.{fields}.{kid}`, truncated to 128 bits: the same
    /// whichever key the thread's keyed copy last held (a rotation verifies old and new keys
    /// in turn on one thread).
    #[test]
    fn tokens_are_the_documented_hmac_under_each_key_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let old = Keys::load_or_generate(dir.path()).unwrap();
        Keys::generate_mac(dir.path()).unwrap();
        let both = Keys::load_or_generate(dir.path()).unwrap();
        assert_eq!(both.mac.len(), 2);
        assert_ne!(both.current_mac().kid, old.current_mac().kid, "the new key signs");
        let by_hand = |k: &crate::keys::MacKey, body: &str| {
            let mut m = HmacSha256::new_from_slice(&k.secret).unwrap();
            m.update(body.as_bytes());
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&m.finalize().into_bytes()[..16])
        };
        for _ in 0..3 {
            for keys in [&old, &both] {
                let k = keys.current_mac();
                let t = sign(keys, "f1", &["grt_1", "fil_2", "99"]);
                let body = format!("f1.grt_1.fil_2.99.{}", k.kid);
                assert_eq!(t, format!("{body}.{}", by_hand(k, &body)));
                assert_eq!(verify(&both, "f1", &t, 3).unwrap(), vec!["grt_1", "fil_2", "99"]);
            }
        }
        // A token whose MAC was made with the other key under this key's id is refused.
        let forged_body = format!("d1.grt_1.5.{}", both.current_mac().kid);
        let forged = format!("{forged_body}.{}", by_hand(old.current_mac(), &forged_body));
        assert!(verify(&both, "d1", &forged, 2).is_none());
    }

    #[test]
    fn prefixes() {
        assert_eq!(ip_prefix("203.0.113.9".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(ip_prefix("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::/64");
    }
}
