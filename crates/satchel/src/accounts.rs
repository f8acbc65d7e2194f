//! Accounts: sellers, users and API keys.
//!
//! Passwords are argon2id hashes. API keys are `sk_live_` + 32 random bytes (base64url),
//! shown once; the database keeps only their sha256 and an 8-character prefix for display.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::db::models::{Seller, User};
use crate::db::Exec;
use crate::error::{conflict, unprocessable, ApiResult};
use crate::ids::{hash_secret, new_id, now, random_token};
use crate::sql;

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Normalizes and checks an email address (enough to refuse obvious mistakes).
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',');
    if valid {
        Ok(e)
    } else {
        Err(unprocessable("invalid_email", format!("{email:?} is not a valid email address")).field("email"))
    }
}

const USER_COLS: &str = "id, email, name, password_hash, role, seller_id, created_at";

pub async fn find_user(e: &impl Exec, email: &str) -> Result<Option<User>, crate::db::DbError> {
    e.fetch_optional(sql!(format!("SELECT {USER_COLS} FROM users WHERE email = $1"), email))
        .await
}

pub async fn find_seller(e: &impl Exec, id: &str) -> Result<Option<Seller>, crate::db::DbError> {
    e.fetch_optional(sql!(
        "SELECT id, name, store_name, accent_color, support_email, status, created_at FROM sellers WHERE id = $1",
        id
    ))
    .await
}

/// Creates a seller (store) and its owner account. `role` is `seller` or `admin`.
pub async fn create_seller_account(
    e: &impl Exec,
    email: &str,
    password: &str,
    store_name: &str,
    role: &str,
) -> ApiResult<(Seller, User)> {
    let email = normalize_email(email)?;
    if password.chars().count() < 8 {
        return Err(unprocessable("weak_password", "password must be at least 8 characters").field("password"));
    }
    if find_user(e, &email).await?.is_some() {
        return Err(conflict("email_taken", format!("an account for {email} already exists")).field("email"));
    }
    let t = now();
    let seller_id = new_id("sel");
    let name = store_name.trim();
    e.execute(sql!(
        "INSERT INTO sellers (id, name, store_name, support_email, created_at) VALUES ($1, $2, $2, $3, $4)",
        &seller_id,
        name,
        &email,
        t
    ))
    .await?;
    let user_id = new_id("usr");
    e.execute(sql!(
        "INSERT INTO users (id, email, name, password_hash, role, seller_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &user_id,
        &email,
        name,
        hash_password(password)?,
        role,
        &seller_id,
        t
    ))
    .await?;
    let seller = find_seller(e, &seller_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("seller vanished"))?;
    let user = find_user(e, &email)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user vanished"))?;
    Ok((seller, user))
}

/// A new API key for `seller_id`, owned by `user_id`: returns (key id, key). The key is
/// shown once; only its sha256 and a display prefix are stored.
pub async fn mint_api_key(e: &impl Exec, seller_id: &str, user_id: &str, name: &str) -> ApiResult<(String, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(
            unprocessable("invalid_name", "name must be 1–100 printable characters, like \"CI\"").field("name"),
        );
    }
    let key = format!("sk_live_{}", random_token(32));
    let id = new_id("key");
    e.execute(sql!(
        "INSERT INTO api_keys (id, seller_id, user_id, name, prefix, key_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &id,
        seller_id,
        user_id,
        name,
        key.chars().take(12).collect::<String>(),
        hash_secret(&key),
        now()
    ))
    .await?;
    Ok((id, key))
}

/// Mints an API key for the seller that `email` belongs to; returns the key (shown once).
pub async fn create_api_key(e: &impl Exec, seller_email: &str, name: &str) -> ApiResult<String> {
    let email = normalize_email(seller_email)?;
    let user = find_user(e, &email)
        .await?
        .ok_or_else(|| crate::error::not_found("seller account"))?;
    let seller_id = user
        .seller_id
        .clone()
        .ok_or_else(|| unprocessable("not_a_seller", format!("{email} is not a seller account")))?;
    let key = format!("sk_live_{}", random_token(32));
    e.execute(sql!(
        "INSERT INTO api_keys (id, seller_id, user_id, name, prefix, key_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        new_id("key"),
        &seller_id,
        &user.id,
        name,
        key.chars().take(12).collect::<String>(),
        hash_secret(&key),
        now()
    ))
    .await?;
    Ok(key)
}
