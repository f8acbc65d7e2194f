//! Identifiers and time.
//!
//! Ids are `prefix_` + 26 Crockford base32 characters (48-bit millisecond time, 80 random
//! bits), so they sort by creation time — which gives every list a stable cursor order —
//! and a reader can tell an order id from a product id at a glance.

use rand::RngCore;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new time-ordered id such as `ord_01JD5M3Q7W9X2K4N6P8R0T2V4X`.
pub fn new_id(prefix: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
        & ((1u128 << 48) - 1);
    let mut rnd = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut rnd);
    let mut value = ms << 80;
    for (i, b) in rnd.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    // Monotonic within the process: ids made in the same millisecond still sort in the
    // order they were made (so cart items keep their order, cursors stay stable).
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    if let Ok(mut last) = LAST.lock() {
        if value <= *last {
            value = *last + 1;
        }
        *last = value;
    }
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        let idx = ((value >> (i * 5)) & 31) as usize;
        out.push(CROCKFORD[idx] as char);
    }
    out
}

/// A request id such as `req_3F9K2M7Q1X-0000000001A7`: unique per process run (a random
/// prefix drawn once, then a counter), for correlating logs. Cheaper than [`new_id`] (no
/// lock, no random draw per request); it need not sort or be unguessable.
pub fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static RUN: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let run = RUN.get_or_init(|| {
        let mut rnd = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut rnd);
        let v = u64::from_le_bytes(rnd);
        (0..10)
            .map(|i| CROCKFORD[((v >> (i * 5)) & 31) as usize] as char)
            .collect()
    });
    format!("req_{run}-{:012X}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Random URL-safe secret of `bytes` bytes (base64url, no padding).
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// SHA-256 of a secret, hex; what the database stores instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Current UTC time in unix seconds. Every `*_at` column holds this unit.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_header_safe() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert!(a.starts_with("req_") && a.len() <= 64);
        assert!(
            a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
    }

    #[test]
    fn ids_sort_by_time_and_carry_prefix() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("ord")).collect();
        assert!(ids[0].starts_with("ord_") && ids[0].len() == 30);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids sort in creation order, even within a millisecond"
        );
    }
}
