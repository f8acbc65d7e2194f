//! Who is calling: sellers by API key (`Authorization: Bearer sk_live_…`) or dashboard
//! session cookie, with roles (admin, seller).
//!
//! API keys and session tokens are random secrets the database stores only as sha256. A
//! session is created by `POST /api/v1/auth/login` (argon2id password check) and carried in
//! the `satchel_session` cookie: HttpOnly, SameSite=Lax, Secure when the store is served over
//! https. Every seller endpoint takes a [`SellerAuth`] and scopes its queries to its
//! `seller_id`, so another seller's objects are simply not found.
//!
//! An admin acts on another seller's store by adding `X-Act-As-Seller: sel_…` to any seller
//! request: the extractor then carries that seller's id (the admin's user id and role stay),
//! so every seller endpoint works unchanged for the admin. Anyone else sending the header gets
//! 403; an unknown seller id is 404.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::app::App;
use crate::db::Exec;
use crate::error::{unauthorized, ApiError, ApiResult};
use crate::ids::{hash_secret, now, random_token};
use crate::sql;

pub const SESSION_COOKIE: &str = "satchel_session";
/// Header with which an admin acts as another seller.
pub const ACT_AS_HEADER: &str = "x-act-as-seller";
const SESSION_DAYS: i64 = 14;

/// An authenticated seller (or admin acting for their own store).
#[derive(Debug, Clone)]
pub struct SellerAuth {
    pub user_id: String,
    pub seller_id: String,
    pub role: String,
}

/// The value of cookie `name` in a request's headers.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<App> for SellerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let who = authenticate(parts, app).await?;
        let Some(target) = parts.headers.get(ACT_AS_HEADER) else {
            return Ok(who);
        };
        let target = target.to_str().unwrap_or_default().trim().to_string();
        if who.role != "admin" {
            return Err(crate::error::forbidden(
                "admin_only",
                "only an admin can act as another seller (X-Act-As-Seller)",
            ));
        }
        if crate::accounts::find_seller(&app.db, &target).await?.is_none() {
            return Err(crate::error::not_found("seller"));
        }
        tracing::info!(admin = %who.user_id, seller = %target, "admin acting as seller");
        Ok(SellerAuth {
            seller_id: target,
            ..who
        })
    }
}

/// An admin (role `admin`); 403 for sellers.
#[derive(Debug, Clone)]
pub struct AdminAuth(pub SellerAuth);

impl FromRequestParts<App> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let who = authenticate(parts, app).await?;
        if who.role != "admin" {
            return Err(crate::error::forbidden("admin_only", "this needs an admin account"));
        }
        Ok(AdminAuth(who))
    }
}

/// Who is calling, by API key or session, before any act-as.
async fn authenticate(parts: &Parts, app: &App) -> Result<SellerAuth, ApiError> {
    let t = now();
    if let Some(key) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        let row: Option<(String, String, String, String, Option<i64>)> = app
            .db
            .fetch_optional(sql!(
                "SELECT k.id, u.id, k.seller_id, u.role, k.last_used_at FROM api_keys k JOIN users u ON u.id = k.user_id
                 JOIN sellers sl ON sl.id = k.seller_id
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND sl.status = 'active'",
                hash_secret(key.trim())
            ))
            .await?;
        let Some((key_id, user_id, seller_id, role, last_used)) = row else {
            return Err(unauthorized(
                "this API key is unknown or revoked; create one with `satchel admin create-api-key`",
            ));
        };
        if last_used.is_none_or(|l| l < t - 60) {
            app.db
                .execute(sql!("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", &key_id, t))
                .await?;
        }
        return Ok(SellerAuth {
            user_id,
            seller_id,
            role,
        });
    }
    if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
        let row: Option<(String, Option<String>, String, String)> = app
            .db
            .fetch_optional(sql!(
                "SELECT u.id, u.seller_id, u.role, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id
                 JOIN sellers sl ON sl.id = u.seller_id
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND sl.status = 'active'",
                hash_secret(&token),
                t
            ))
            .await?;
        if let Some((user_id, Some(seller_id), role, csrf)) = row.filter(|r| r.2 == "seller" || r.2 == "admin") {
            // A browser sends the cookie with any request, so a request that changes
            // something must also prove it came from our pages: the session's CSRF token
            // (from the sign-in answer or the dashboard) in `X-CSRF-Token`.
            if !parts.method.is_safe() {
                use subtle::ConstantTimeEq;
                let sent = parts
                    .headers
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
                    return Err(crate::error::forbidden(
                        "csrf_failed",
                        "requests signed in by session cookie must send X-CSRF-Token (the csrf_token from POST /api/v1/auth/login); scripts should use an API key",
                    ));
                }
            }
            return Ok(SellerAuth {
                user_id,
                seller_id,
                role,
            });
        }
    }
    Err(unauthorized(
        "sign in (POST /api/v1/auth/login) or send Authorization: Bearer <API key>",
    ))
}

/// A new session for `user_id`: returns (cookie value, Set-Cookie header, CSRF token).
pub async fn create_session(app: &App, user_id: &str) -> ApiResult<(String, String)> {
    let token = random_token(32);
    let csrf = random_token(16);
    let t = now();
    app.db
        .execute(sql!(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            hash_secret(&token),
            user_id,
            &csrf,
            t,
            t + SESSION_DAYS * 86_400
        ))
        .await?;
    let secure = if app.cfg.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let set_cookie = format!(
        "{SESSION_COOKIE}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{secure}",
        SESSION_DAYS * 86_400
    );
    Ok((set_cookie, csrf))
}

/// Checks a seller's email and password. The same answer for a wrong email and a wrong
/// password, and the same work (a hash check) either way.
pub async fn login(app: &App, email: &str, password: &str) -> ApiResult<crate::db::models::User> {
    let email = email.trim().to_lowercase();
    let user = crate::accounts::find_user(&app.db, &email).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    // A real hash for unknown emails, so they cost the same argon2 work as known ones.
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| crate::accounts::hash_password("no such account").unwrap_or_default());
    let ok = crate::accounts::verify_password(password, hash.as_deref().unwrap_or(dummy)) && hash.is_some();
    match user {
        Some(u) if ok && (u.role == "seller" || u.role == "admin") => {
            // A suspended store's owner is told so (only after the password was right).
            let active = match &u.seller_id {
                Some(sid) => crate::accounts::find_seller(&app.db, sid)
                    .await?
                    .is_some_and(|s| s.status == "active"),
                None => false,
            };
            if !active {
                return Err(crate::error::forbidden(
                    "seller_suspended",
                    "this store is suspended; contact the administrator of this Satchel",
                ));
            }
            app.db
                .execute(sql!("UPDATE users SET last_login_at = $2 WHERE id = $1", &u.id, now()))
                .await?;
            Ok(u)
        }
        _ => Err(unauthorized("wrong email or password")),
    }
}

pub async fn logout(app: &App, parts_cookie: Option<&str>) -> ApiResult<()> {
    if let Some(token) = parts_cookie {
        app.db
            .execute(sql!("DELETE FROM sessions WHERE token_hash = $1", hash_secret(token)))
            .await?;
    }
    Ok(())
}
