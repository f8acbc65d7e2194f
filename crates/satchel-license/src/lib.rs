//! Satchel licenses: the server mints keys and signs; the seller's software verifies offline.
//!
//! - [`key`]: [`LicenseKey`] — short, typeable keys whose check symbol catches every single
//!   typo and every swap of neighbours without any network.
//! - [`certificate`]: `SCRT1.…` device certificates, Ed25519-signed claims the seller's
//!   software verifies offline against the store's published public keys ([`PublicKeys`]).
//!   Only the server's private key can sign: a leaked public key forges nothing.
//! - [`response`]: signed answers of `POST /api/v1/licenses/{key}/validate` that echo the
//!   client's nonce, so a fake or replaying server is detected.
//!
//! Key rotation is by key id (`kid`): every certificate and answer names the key that
//! signed it, and [`PublicKeys`] holds all keys still published.
//! Formats are documented byte by byte in `docs/licensing.md`.
//!
//! ```
//! use satchel_license::{certificate, PublicKeys};
//! # fn demo(keys_json: &str, cert: &str, fingerprint: &str, now: i64) -> Result<(), satchel_license::VerifyError> {
//! let keys = PublicKeys::from_json(keys_json)?; // saved GET /api/v1/licenses/public-keys
//! let claims = certificate::verify_for_device(cert, &keys, fingerprint, now)?;
//! println!("licensed: {} until {:?}", claims.product_id, claims.expires_at);
//! # Ok(()) }
//! ```
//!
//! The free functions at the crate root ([`parse_key`], [`verify_certificate`],
//! [`verify_response`]) are the untyped forms the server and its tests use.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::Signature;
use serde_json::Value;

pub mod certificate;
pub mod key;
pub mod response;

pub use certificate::{fingerprint_hash, Claims, LicenseType};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use key::{check_symbol, group, is_valid_prefix, parse_key, KeyError, LicenseKey, ALPHABET, KEY_SYMBOLS};
pub use response::ValidationBody;

/// Why a certificate or signed answer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Not in the documented format (the text says which part).
    Malformed(&'static str),
    /// Signed with a key id this [`PublicKeys`] does not know: refresh the public keys.
    UnknownKeyId(String),
    /// The signature does not match: not issued by the store, or altered.
    BadSignature,
    /// The certificate's `expires_at` has passed.
    Expired,
    /// The certificate was issued for another device.
    WrongFingerprint,
    /// The answer does not echo the nonce sent: replayed or faked.
    NonceMismatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Malformed(what) => write!(f, "malformed {what}"),
            VerifyError::UnknownKeyId(kid) => write!(f, "unknown key id {kid:?}: refresh the public keys"),
            VerifyError::BadSignature => f.write_str("bad signature: not issued by the store, or altered"),
            VerifyError::Expired => f.write_str("certificate expired"),
            VerifyError::WrongFingerprint => f.write_str("certificate is for another device"),
            VerifyError::NonceMismatch => f.write_str("nonce mismatch: a replayed or faked answer"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The store's Ed25519 public keys by key id.
///
/// Built from the JSON of `GET /api/v1/licenses/public-keys`:
/// `{"items": [{"kid": "…", "alg": "Ed25519", "public_key": "<base64url of 32 bytes>"}], "next_cursor": null}`
/// (a top-level `"keys"` array is accepted in place of `"items"`; entries of other `alg`s are
/// skipped, so new algorithms can be published alongside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicKeys(BTreeMap<String, VerifyingKey>);

impl PublicKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the public-keys document.
    pub fn from_json(doc: &str) -> Result<Self, VerifyError> {
        const WHAT: &str = "public keys document";
        let doc: Value = serde_json::from_str(doc).map_err(|_| VerifyError::Malformed(WHAT))?;
        let entries = doc
            .get("items")
            .or_else(|| doc.get("keys"))
            .and_then(Value::as_array)
            .ok_or(VerifyError::Malformed(WHAT))?;
        let mut keys = Self::new();
        for entry in entries.iter().filter(|e| e["alg"] == "Ed25519") {
            let kid = entry["kid"].as_str().ok_or(VerifyError::Malformed("key id"))?;
            let raw = entry["public_key"]
                .as_str()
                .and_then(|k| B64.decode(k).ok())
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or(VerifyError::Malformed("public key"))?;
            let key = VerifyingKey::from_bytes(&raw).map_err(|_| VerifyError::Malformed("public key"))?;
            keys.insert(kid, key);
        }
        Ok(keys)
    }

    /// The public-keys document, as the server publishes it.
    pub fn to_json(&self) -> Value {
        let items: Vec<Value> = self
            .0
            .iter()
            .map(|(kid, key)| serde_json::json!({"kid": kid, "alg": "Ed25519", "public_key": B64.encode(key.as_bytes())}))
            .collect();
        serde_json::json!({ "items": items, "next_cursor": null })
    }

    /// Adds (or replaces) the key with id `kid`.
    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.0.insert(kid.into(), key);
    }

    /// The key with id `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.0.get(kid)
    }

    /// Checks `signature_b64` (base64url, unpadded) over `message` with the key `kid`.
    fn verify(&self, kid: &str, message: &[u8], signature_b64: &str) -> Result<(), VerifyError> {
        let key = self
            .get(kid)
            .ok_or_else(|| VerifyError::UnknownKeyId(kid.to_string()))?;
        let sig = B64
            .decode(signature_b64)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or(VerifyError::Malformed("signature"))?;
        key.verify_strict(message, &sig).map_err(|_| VerifyError::BadSignature)
    }
}

/// Decodes base64url (unpadded) JSON.
fn decode_json(b64: &str, what: &'static str) -> Result<Value, VerifyError> {
    B64.decode(b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(VerifyError::Malformed(what))
}

/// Encodes bytes as base64url without padding.
fn encode(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

/// Untyped [`certificate::verify_certificate`] / [`certificate::verify_for_device`]: checks
/// the signature, version, `expires_at` and, if given, the device `fingerprint`, and returns
/// the claims as JSON without requiring every documented field.
pub fn verify_certificate(
    cert: &str,
    keys: &PublicKeys,
    fingerprint: Option<&str>,
    now: i64,
) -> Result<Value, VerifyError> {
    let claims = certificate::open(cert, keys)?;
    let expires_at = match claims.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(e) => Some(e.as_i64().ok_or(VerifyError::Malformed("certificate expires_at"))?),
    };
    certificate::check_expiry(expires_at, now)?;
    if let Some(fp) = fingerprint {
        certificate::check_fingerprint(claims.get("fingerprint").and_then(Value::as_str), fp)?;
    }
    Ok(Value::Object(claims))
}

/// Untyped [`response::verify_response`]: checks a signed answer (already parsed) and the
/// nonce, and returns the signed body as JSON. Also fits the signed revocation list.
pub fn verify_response(answer: &Value, keys: &PublicKeys, nonce: Option<&str>) -> Result<Value, VerifyError> {
    let body = response::open(answer, keys)?;
    if body.get("nonce").and_then(Value::as_str) != nonce {
        return Err(VerifyError::NonceMismatch);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_and_accept_either_list_name() {
        let a = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let b = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let mut keys = PublicKeys::new();
        keys.insert("k1", a);
        keys.insert("k2", b);
        let doc = keys.to_json();
        assert_eq!(PublicKeys::from_json(&doc.to_string()).unwrap(), keys);
        let renamed = serde_json::json!({ "keys": doc["items"] });
        assert_eq!(PublicKeys::from_json(&renamed.to_string()).unwrap(), keys);
        let other_alg = serde_json::json!({"items": [{"kid": "pq", "alg": "ML-DSA-65", "public_key": "AAAA"}]});
        assert_eq!(
            PublicKeys::from_json(&other_alg.to_string()).unwrap(),
            PublicKeys::new()
        );
        for bad in [
            "",
            "[]",
            r#"{"items": 1}"#,
            r#"{"items": [{"alg": "Ed25519", "public_key": "AAAA"}]}"#,
            r#"{"items": [{"kid": "k", "alg": "Ed25519", "public_key": "AAAA"}]}"#,
            r#"{"items": [{"kid": "k", "alg": "Ed25519"}]}"#,
        ] {
            assert!(
                matches!(PublicKeys::from_json(bad), Err(VerifyError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
