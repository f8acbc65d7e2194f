//! Wire formats of license keys, certificates and signed validation responses.
//!
//! Key parsing and the check symbol come from the `satchel-license` crate that sellers embed,
//! so the server and their software share one implementation; signing lives here.
//! Formats (documented byte by byte in docs/licensing.md):
//!
//! - **Key**: optional product prefix, then 23 random Crockford base32 symbols (115 bits) and
//!   one check symbol, in six groups of four: `PXL-7K2Q-MXW9-D4HT-3NBR-8C6F-PA1V`. The check symbol
//!   is Σ αⁱ·vᵢ computed in GF(32) (polynomial x⁵+x²+1, α = x): the weights are distinct and
//!   non-zero, so every single-symbol substitution and every adjacent transposition changes
//!   it; typing is lenient (case, spaces, O→0, I/L→1, missing dashes).
//! - **Certificate**: `SCRT1.{base64url(JSON claims)}.{base64url(Ed25519 signature)}`, the
//!   signature over the ASCII bytes `SCRT1.{base64url(JSON)}`; claims carry the signing `kid`.
//! - **Signed response**: the JSON body plus `signature` (base64url Ed25519 over the exact
//!   bytes of `signed_payload`, itself the base64url of the canonical body) and `kid`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::Signer;
use rand::Rng;
use serde_json::Value;

use crate::keys::Keys;

use satchel_license::{check_symbol, group, ALPHABET, KEY_SYMBOLS as BODY};

/// A new key with an optional uppercase prefix (1–8 of A-Z0-9).
pub fn new_key(prefix: Option<&str>) -> String {
    let mut rng = rand::rngs::OsRng;
    let values: Vec<u32> = (0..BODY).map(|_| rng.gen_range(0..32u32)).collect();
    let mut s: String = values.iter().map(|&v| ALPHABET[v as usize] as char).collect();
    s.push(check_symbol(&values) as char);
    match prefix.filter(|p| !p.is_empty()) {
        Some(p) => format!("{}-{}", p.to_ascii_uppercase(), group(&s)),
        None => group(&s),
    }
}

pub use satchel_license::KeyError;

/// Parses what a person typed into the canonical key, checking the check symbol offline
/// (the same code the sellers' software runs, from the `satchel-license` crate).
pub fn canonical_key(input: &str) -> Result<String, KeyError> {
    satchel_license::parse_key(input)
}

/// Signs certificate claims (the signing `kid` is added to them).
pub fn certificate(keys: &Keys, mut claims: Value) -> String {
    let k = keys.current_ed25519();
    claims["kid"] = Value::String(k.kid.clone());
    claims["v"] = Value::from(1);
    let payload = format!("SCRT1.{}", B64.encode(claims.to_string()));
    let sig = k.key.sign(payload.as_bytes());
    format!("{payload}.{}", B64.encode(sig.to_bytes()))
}

/// Signs a validation body: adds `signed_payload` (base64url of the body's JSON), `signature`
/// (Ed25519 over the ASCII of `signed_payload`) and `kid`, so clients verify exact bytes.
pub fn sign_response(keys: &Keys, mut body: Value) -> Value {
    let k = keys.current_ed25519();
    body["kid"] = Value::String(k.kid.clone());
    let signed_payload = B64.encode(body.to_string());
    let sig = k.key.sign(signed_payload.as_bytes());
    body["signed_payload"] = Value::String(signed_payload);
    body["signature"] = Value::String(B64.encode(sig.to_bytes()));
    body
}

/// Public keys as published at `GET /api/v1/licenses/public-keys`.
pub fn public_keys(keys: &Keys) -> Value {
    Value::Array(
        keys.ed25519
            .iter()
            .map(|k| serde_json::json!({"kid": k.kid, "alg": "Ed25519", "public_key": B64.encode(k.key.verifying_key().as_bytes())}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_catch_typos() {
        for _ in 0..200 {
            let key = new_key(Some("pxl"));
            assert!(key.starts_with("PXL-"));
            assert_eq!(canonical_key(&key).unwrap(), key);
            assert_eq!(
                canonical_key(&key.to_lowercase().replace('-', " ")).unwrap(),
                key,
                "lenient typing"
            );
            let body: Vec<char> = key[4..].chars().filter(|c| *c != '-').collect();
            // Every single-symbol substitution is caught.
            for i in 0..body.len() {
                for &alt in ALPHABET {
                    if alt as char != body[i] {
                        let mut b = body.clone();
                        b[i] = alt as char;
                        let typed: String = b.into_iter().collect();
                        assert!(canonical_key(&format!("PXL-{typed}")).is_err(), "{typed}");
                    }
                }
            }
            // Every adjacent transposition of distinct symbols is caught.
            for i in 0..body.len() - 1 {
                if body[i] != body[i + 1] {
                    let mut b = body.clone();
                    b.swap(i, i + 1);
                    let typed: String = b.into_iter().collect();
                    assert_eq!(canonical_key(&format!("PXL-{typed}")), Err(KeyError::BadCheckCharacter));
                }
            }
        }
        assert_eq!(canonical_key("hello"), Err(KeyError::Malformed));
        assert_eq!(
            canonical_key("ÄÖÜ-ÄÖÜÄÖ-ÄÖÜÄÖ-ÄÖÜÄÖ-ÄÖÜÄÖ-ÄÖÜÄÖ"),
            Err(KeyError::Malformed),
            "never a panic on non-ASCII"
        );
        assert_eq!(canonical_key(&"A".repeat(500)), Err(KeyError::Malformed));
        let plain = new_key(None);
        assert_eq!(plain.len(), 24 + 5);
        assert_eq!(canonical_key(&plain).unwrap(), plain);
    }

    #[test]
    fn certificates_and_responses_verify_with_the_public_key() {
        use ed25519_dalek::{Signature, Verifier};
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_generate(dir.path()).unwrap();
        let cert = certificate(&keys, serde_json::json!({"license_id": "lic_1"}));
        let (payload, sig) = cert.rsplit_once('.').unwrap();
        let sig = Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
        keys.current_ed25519()
            .key
            .verifying_key()
            .verify(payload.as_bytes(), &sig)
            .unwrap();
        let claims: Value =
            serde_json::from_slice(&B64.decode(payload.strip_prefix("SCRT1.").unwrap()).unwrap()).unwrap();
        assert_eq!(claims["kid"], keys.current_ed25519().kid.as_str());
        let resp = sign_response(&keys, serde_json::json!({"valid": true, "nonce": "n1"}));
        let sig = Signature::from_slice(&B64.decode(resp["signature"].as_str().unwrap()).unwrap()).unwrap();
        keys.current_ed25519()
            .key
            .verifying_key()
            .verify(resp["signed_payload"].as_str().unwrap().as_bytes(), &sig)
            .unwrap();
    }
}
