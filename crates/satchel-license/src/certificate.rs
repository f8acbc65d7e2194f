//! License certificates: what a device gets when it activates a key, verified offline.
//!
//! ```text
//! SCRT1.<base64url(claims JSON)>.<base64url(Ed25519 signature)>
//! └──────── signed bytes ──────┘
//! ```
//!
//! base64url is RFC 4648 §5 without padding. The signature (64 bytes) is Ed25519 over the
//! ASCII bytes of everything before the last `.` — `SCRT1.` and the encoded claims — so a
//! verifier checks the bytes it received and never re-serializes JSON. The claims are a JSON
//! object: `v` (1), `kid` (the signing key's id), then the fields of [`Claims`]. Verifiers
//! ignore fields they do not know, so v1 can gain optional fields.
//!
//! The device fingerprint is carried as the lowercase hex SHA-256 of the fingerprint string
//! with surrounding whitespace removed ([`fingerprint_hash`]), as the server stores it: the
//! certificate never reveals the raw value, and the software recomputes it to compare.

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{PublicKeys, VerifyError};

/// Everything before the encoded claims.
pub const PREFIX: &str = "SCRT1.";
/// The claims' `v`.
pub const VERSION: u64 = 1;

/// The kind of license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseType {
    /// Valid forever (or for a fixed term), on up to `max_activations` devices.
    Perpetual,
    /// Valid while paid; the certificate expires at paid-through + grace, and the software
    /// checks in online every `check_in_hours`.
    Subscription,
    /// Spent by its first activation; cannot move to another device.
    SingleUse,
}

/// What a certificate says (besides `v` and `kid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub license_id: String,
    pub product_id: String,
    #[serde(rename = "type")]
    pub license_type: LicenseType,
    /// Product ids (or feature names) this certificate unlocks.
    pub entitlements: Vec<String>,
    /// [`fingerprint_hash`] of the activated device's fingerprint.
    pub fingerprint: String,
    pub activation_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; `None` (JSON `null`): never.
    pub expires_at: Option<i64>,
    /// Seats of the license, if limited.
    #[serde(default)]
    pub max_activations: Option<u32>,
    /// Subscriptions: how often the software should validate online.
    #[serde(default)]
    pub check_in_hours: Option<u32>,
}

/// Lowercase hex SHA-256 of `fingerprint` without surrounding whitespace — the form
/// certificates carry.
pub fn fingerprint_hash(fingerprint: &str) -> String {
    Sha256::digest(fingerprint.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signs `claims` with `key`, whose id `kid` is written into the certificate.
pub fn sign_certificate(claims: &Claims, kid: &str, key: &SigningKey) -> String {
    let payload = serde_json::json!({
        "v": VERSION,
        "kid": kid,
        "license_id": claims.license_id,
        "product_id": claims.product_id,
        "type": claims.license_type,
        "entitlements": claims.entitlements,
        "fingerprint": claims.fingerprint,
        "activation_id": claims.activation_id,
        "issued_at": claims.issued_at,
        "expires_at": claims.expires_at,
        "max_activations": claims.max_activations,
        "check_in_hours": claims.check_in_hours,
    });
    let signed = format!("{PREFIX}{}", crate::encode(payload.to_string()));
    let signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", crate::encode(signature.to_bytes()))
}

/// Verifies a certificate's signature (by its `kid`), version and expiry at `now` (unix
/// seconds), and returns its claims. Does not look at the device: see [`verify_for_device`].
pub fn verify_certificate(cert: &str, keys: &PublicKeys, now: i64) -> Result<Claims, VerifyError> {
    let claims: Claims = serde_json::from_value(Value::Object(open(cert, keys)?))
        .map_err(|_| VerifyError::Malformed("certificate claims"))?;
    check_expiry(claims.expires_at, now)?;
    Ok(claims)
}

/// [`verify_certificate`], and checks that it was issued for this device's `fingerprint`
/// (the raw value the software sent when activating).
pub fn verify_for_device(cert: &str, keys: &PublicKeys, fingerprint: &str, now: i64) -> Result<Claims, VerifyError> {
    let claims = verify_certificate(cert, keys, now)?;
    check_fingerprint(Some(&claims.fingerprint), fingerprint)?;
    Ok(claims)
}

/// Checks the format, `kid` and signature, then the version; returns the claims object.
pub(crate) fn open(cert: &str, keys: &PublicKeys) -> Result<Map<String, Value>, VerifyError> {
    let cert = cert.trim();
    let rest = cert
        .strip_prefix(PREFIX)
        .ok_or(VerifyError::Malformed("certificate (expected SCRT1.)"))?;
    let (claims_b64, signature) = rest.split_once('.').ok_or(VerifyError::Malformed("certificate"))?;
    let Value::Object(claims) = crate::decode_json(claims_b64, "certificate claims")? else {
        return Err(VerifyError::Malformed("certificate claims"));
    };
    let kid = claims
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(VerifyError::Malformed("certificate kid"))?;
    let signed = &cert[..PREFIX.len() + claims_b64.len()];
    keys.verify(kid, signed.as_bytes(), signature)?;
    if claims.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(VerifyError::Malformed("certificate version"));
    }
    Ok(claims)
}

pub(crate) fn check_expiry(expires_at: Option<i64>, now: i64) -> Result<(), VerifyError> {
    match expires_at {
        Some(e) if e <= now => Err(VerifyError::Expired),
        _ => Ok(()),
    }
}

pub(crate) fn check_fingerprint(hash: Option<&str>, fingerprint: &str) -> Result<(), VerifyError> {
    if hash == Some(fingerprint_hash(fingerprint).as_str()) {
        Ok(())
    } else {
        Err(VerifyError::WrongFingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    pub(crate) fn claims() -> Claims {
        Claims {
            license_id: "lic_1".into(),
            product_id: "prod_1".into(),
            license_type: LicenseType::Subscription,
            entitlements: vec!["prod_1".into(), "pro-export".into()],
            fingerprint: fingerprint_hash("device-1"),
            activation_id: "act_1".into(),
            issued_at: 1_000,
            expires_at: Some(2_000),
            max_activations: Some(3),
            check_in_hours: Some(24),
        }
    }

    fn setup() -> (SigningKey, PublicKeys) {
        let key = SigningKey::generate(&mut OsRng);
        let mut keys = PublicKeys::new();
        keys.insert("k1", key.verifying_key());
        (key, keys)
    }

    #[test]
    fn signed_certificates_verify_on_the_right_device_until_they_expire() {
        let (key, keys) = setup();
        let cert = sign_certificate(&claims(), "k1", &key);
        assert!(cert.starts_with("SCRT1.ey"));
        assert_eq!(verify_certificate(&cert, &keys, 1_500).unwrap(), claims());
        assert_eq!(
            verify_for_device(&format!(" {cert}\n"), &keys, " device-1\n", 1_999).unwrap(),
            claims()
        );
        assert_eq!(
            verify_for_device(&cert, &keys, "device-2", 1_500),
            Err(VerifyError::WrongFingerprint)
        );
        assert_eq!(verify_certificate(&cert, &keys, 2_000), Err(VerifyError::Expired));
        let forever = sign_certificate(
            &Claims {
                expires_at: None,
                ..claims()
            },
            "k1",
            &key,
        );
        assert!(verify_certificate(&forever, &keys, i64::MAX).is_ok());

        // The untyped form agrees, and accepts claims with fields it does not know.
        let value = crate::verify_certificate(&cert, &keys, Some("device-1"), 1_500).unwrap();
        assert_eq!((value["v"].as_u64(), value["kid"].as_str()), (Some(1), Some("k1")));
        assert_eq!(
            crate::verify_certificate(&cert, &keys, Some("x"), 1_500),
            Err(VerifyError::WrongFingerprint)
        );
        assert_eq!(
            crate::verify_certificate(&cert, &keys, None, 2_500),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn rotation_keeps_old_certificates_verifying() {
        let (old, mut keys) = setup();
        let new = SigningKey::generate(&mut OsRng);
        keys.insert("k2", new.verifying_key());
        for (kid, key) in [("k1", &old), ("k2", &new)] {
            assert!(verify_certificate(&sign_certificate(&claims(), kid, key), &keys, 0).is_ok());
        }
        let wrong_kid = sign_certificate(&claims(), "k2", &old);
        assert_eq!(verify_certificate(&wrong_kid, &keys, 0), Err(VerifyError::BadSignature));
        let unknown = sign_certificate(&claims(), "k3", &new);
        assert_eq!(
            verify_certificate(&unknown, &keys, 0),
            Err(VerifyError::UnknownKeyId("k3".into()))
        );
    }

    #[test]
    fn any_tampering_is_refused() {
        let (key, keys) = setup();
        let cert = sign_certificate(&claims(), "k1", &key);
        // Flip every character of the certificate in turn.
        for i in 0..cert.len() {
            let mut bytes = cert.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(verify_certificate(&tampered, &keys, 0).is_err(), "position {i}");
        }
        // Re-signed claims with another key, a changed expiry, or unsigned claims.
        let (intruder, _) = setup();
        assert_eq!(
            verify_certificate(&sign_certificate(&claims(), "k1", &intruder), &keys, 0),
            Err(VerifyError::BadSignature)
        );
        let (signed, sig) = cert.rsplit_once('.').unwrap();
        let mut other = serde_json::to_value(claims()).unwrap();
        other["kid"] = "k1".into();
        other["v"] = 1.into();
        other["expires_at"] = Value::Null;
        let swapped = format!("{PREFIX}{}.{sig}", crate::encode(other.to_string()));
        assert_eq!(verify_certificate(&swapped, &keys, 0), Err(VerifyError::BadSignature));
        for bad in [
            "",
            "SCRT1.",
            "SCRT2.e30.AA",
            signed,
            &format!("{signed}."),
            &format!("{signed}.{sig}.x"),
        ] {
            assert!(
                matches!(verify_certificate(bad, &keys, 0), Err(VerifyError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_version_or_shape_is_malformed_even_when_signed() {
        let (key, keys) = setup();
        let sign_raw = |payload: Value| {
            let signed = format!("{PREFIX}{}", crate::encode(payload.to_string()));
            format!("{signed}.{}", crate::encode(key.sign(signed.as_bytes()).to_bytes()))
        };
        let mut v2 = serde_json::to_value(claims()).unwrap();
        v2["kid"] = "k1".into();
        v2["v"] = 2.into();
        assert_eq!(
            verify_certificate(&sign_raw(v2.clone()), &keys, 0),
            Err(VerifyError::Malformed("certificate version"))
        );
        v2["v"] = 1.into();
        v2["expires_at"] = "soon".into();
        assert!(matches!(
            verify_certificate(&sign_raw(v2.clone()), &keys, 0),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            crate::verify_certificate(&sign_raw(v2), &keys, None, 0),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            verify_certificate(&sign_raw(serde_json::json!([1])), &keys, 0),
            Err(VerifyError::Malformed(_))
        ));
    }
}
