//! The server's handles on the wire formats, all implemented once in the `satchel-license`
//! crate that sellers embed (keys, `SCRT1` certificates, signed answers; byte by byte in
//! docs/licensing.md): minting keys, signing with the current Ed25519 key, and publishing
//! every key that still verifies.

use rand::rngs::OsRng;
use satchel_license::{certificate, response, Claims, LicenseKey, PublicKeys};
use serde_json::Value;

use crate::keys::Keys;

pub use satchel_license::KeyError;

/// A new key with an optional product prefix (1–8 of A–Z 0–9). A prefix the key format
/// cannot carry (a product saved before prefixes were checked) is left out rather than
/// minting a key nobody could type back.
pub fn new_key(prefix: Option<&str>) -> String {
    let prefix = prefix.filter(|p| {
        let ok = satchel_license::is_valid_prefix(p);
        if !ok {
            tracing::warn!(
                prefix = p,
                "license key prefix is not 1–8 of A–Z 0–9; minting the key without it"
            );
        }
        ok
    });
    // Cannot fail: the prefix is valid or gone.
    LicenseKey::generate(prefix, &mut OsRng)
        .map(String::from)
        .unwrap_or_default()
}

/// Parses what a person typed into the canonical key, checking the check symbol offline
/// (the same code the sellers' software runs).
pub fn canonical_key(input: &str) -> Result<String, KeyError> {
    satchel_license::parse_key(input)
}

/// Signs certificate claims with the current key.
pub fn certificate(keys: &Keys, claims: &Claims) -> String {
    let k = keys.current_ed25519();
    certificate::sign_certificate(claims, &k.kid, &k.key)
}

/// Signs an answer body (validation answer, revocation list) with the current key.
pub fn sign_response(keys: &Keys, body: &Value) -> Value {
    let k = keys.current_ed25519();
    response::sign_response(body, &k.kid, &k.key)
}

/// Every Ed25519 key that still verifies, newest and older ones (rotation).
pub fn public_keys(keys: &Keys) -> PublicKeys {
    let mut out = PublicKeys::new();
    for k in &keys.ed25519 {
        out.insert(k.kid.clone(), k.key.verifying_key());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use satchel_license::{fingerprint_hash, LicenseType};

    #[test]
    fn minted_keys_parse_and_bad_prefixes_are_left_out() {
        let key = new_key(Some("pxl"));
        assert!(key.starts_with("PXL-"), "{key}");
        assert_eq!(canonical_key(&key.to_lowercase().replace('-', " ")).unwrap(), key);
        for bad in ["my-app!", "TOOLONGPREFIX"] {
            let key = new_key(Some(bad));
            assert_eq!(key.len(), 24 + 5, "{key}");
            assert_eq!(canonical_key(&key).unwrap(), key);
        }
        assert_eq!(canonical_key("hello"), Err(KeyError::Malformed));
    }

    #[test]
    fn what_the_server_signs_verifies_with_what_it_publishes_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let old = Keys::load_or_generate(dir.path()).unwrap();
        let claims = Claims {
            license_id: "lic_1".into(),
            product_id: "prod_1".into(),
            license_type: LicenseType::Perpetual,
            entitlements: vec!["prod_1".into()],
            fingerprint: fingerprint_hash("dev"),
            activation_id: "act_1".into(),
            issued_at: 1,
            expires_at: None,
            max_activations: Some(3),
            check_in_hours: None,
        };
        let old_cert = certificate(&old, &claims);
        Keys::generate_ed25519(dir.path()).unwrap();
        let keys = Keys::load_or_generate(dir.path()).unwrap();
        let published = PublicKeys::from_json(&public_keys(&keys).to_json().to_string()).unwrap();
        for cert in [old_cert, certificate(&keys, &claims)] {
            let got = satchel_license::certificate::verify_for_device(&cert, &published, "dev", 2).unwrap();
            assert_eq!(got, claims);
        }
        let answer = sign_response(&keys, &serde_json::json!({"valid": true, "nonce": "n1"}));
        assert_eq!(
            satchel_license::verify_response(&answer, &published, Some("n1")).unwrap()["valid"],
            true
        );
    }
}
