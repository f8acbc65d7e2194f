//! Signed answers of `POST /api/v1/licenses/{key}/validate` (and the revocation list).
//!
//! The server signs exact bytes and ships them inside the answer, so no JSON
//! canonicalization is ever needed:
//!
//! ```text
//! signed_payload = base64url(JSON bytes of the body, which include kid, nonce and issued_at)
//! signature      = base64url(Ed25519(ASCII bytes of signed_payload))
//! answer         = the body's fields (for convenience, untrusted) + kid + signed_payload + signature
//! ```
//!
//! A client trusts only the decoded `signed_payload`, after checking the signature with the
//! answer's `kid` and that the payload's `nonce` is the fresh one it sent. It should also
//! check that the payload is about its own license ([`ValidationBody::license`]`.id`): the
//! signature says the store said it, not which question it answered.

use ed25519_dalek::{Signer, SigningKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::certificate::LicenseType;
use crate::{PublicKeys, VerifyError};

/// The signed body of a validation answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationBody {
    /// Whether the license (and device, if one was named) may be used now.
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `REVOKED`, `SUSPENDED`, `EXPIRED`, `NOT_ACTIVATED`,
    /// `FINGERPRINT_MISMATCH`, `TOO_MANY_ACTIVATIONS` or `CHECK_IN_OVERDUE`.
    pub code: String,
    /// The nonce the client sent (`None` if it sent none).
    pub nonce: Option<String>,
    /// When the server answered (unix seconds).
    pub issued_at: i64,
    /// The license asked about; `None` for `NOT_FOUND`.
    #[serde(default)]
    pub license: Option<LicenseState>,
    /// The device's activation, when a device was named and found.
    #[serde(default)]
    pub activation: Option<ActivationState>,
}

/// A license as the server sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseState {
    pub id: String,
    pub product_id: String,
    #[serde(rename = "type")]
    pub license_type: LicenseType,
    /// `active`, `suspended`, `revoked` or `expired`.
    pub status: String,
    pub expires_at: Option<i64>,
    /// Subscriptions: paid up to (unix seconds).
    #[serde(default)]
    pub paid_through: Option<i64>,
    #[serde(default)]
    pub max_activations: Option<u32>,
    /// Devices activated now.
    pub activations: u32,
}

/// A device's activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationState {
    pub id: String,
    pub created_at: i64,
    pub last_check_in_at: i64,
}

/// A fresh random nonce (128 bits, base64url) to send with a validation.
pub fn new_nonce<R: CryptoRngCore + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    crate::encode(bytes)
}

/// Signs `body` (server side): returns the answer — `body`'s fields, `kid`,
/// `signed_payload` and `signature`. `body` should be a JSON object carrying the client's
/// `nonce` and `issued_at`; `kid` is added to it before signing. (Any other JSON value is
/// signed as it is.)
pub fn sign_response(body: &Value, kid: &str, key: &SigningKey) -> Value {
    let mut body = body.clone();
    if let Value::Object(fields) = &mut body {
        fields.insert("kid".into(), kid.into());
    }
    let signed_payload = crate::encode(body.to_string());
    let signature = crate::encode(key.sign(signed_payload.as_bytes()).to_bytes());
    let mut answer = match body {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    answer.insert("kid".into(), kid.into());
    answer.insert("signed_payload".into(), signed_payload.into());
    answer.insert("signature".into(), signature.into());
    Value::Object(answer)
}

/// Verifies a validation answer (the response text) and that it echoes `expected_nonce`
/// (what the client sent, `None` if nothing); returns the signed body.
pub fn verify_response(
    answer_json: &str,
    keys: &PublicKeys,
    expected_nonce: Option<&str>,
) -> Result<ValidationBody, VerifyError> {
    let body: ValidationBody =
        serde_json::from_value(verify_signed(answer_json, keys)?).map_err(|_| VerifyError::Malformed("answer body"))?;
    if body.nonce.as_deref() != expected_nonce {
        return Err(VerifyError::NonceMismatch);
    }
    Ok(body)
}

/// Verifies any signed answer (e.g. `GET /api/v1/licenses/revocations`) and returns its
/// signed body, whatever its fields.
pub fn verify_signed(answer_json: &str, keys: &PublicKeys) -> Result<Value, VerifyError> {
    let answer: Value = serde_json::from_str(answer_json).map_err(|_| VerifyError::Malformed("answer"))?;
    open(&answer, keys)
}

pub(crate) fn open(answer: &Value, keys: &PublicKeys) -> Result<Value, VerifyError> {
    let field = |name: &'static str| {
        answer
            .get(name)
            .and_then(Value::as_str)
            .ok_or(VerifyError::Malformed(name))
    };
    let signed_payload = field("signed_payload")?;
    keys.verify(field("kid")?, signed_payload.as_bytes(), field("signature")?)?;
    crate::decode_json(signed_payload, "signed_payload")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use serde_json::json;

    fn body(nonce: &str) -> Value {
        json!({
            "valid": true, "code": "VALID", "nonce": nonce, "issued_at": 1_795_367_067,
            "license": {"id": "lic_1", "type": "perpetual", "status": "active", "product_id": "prod_1",
                        "expires_at": null, "paid_through": null, "max_activations": 3, "activations": 1},
            "activation": {"id": "act_1", "created_at": 1_795_000_000, "last_check_in_at": 1_795_367_000},
        })
    }

    fn setup() -> (SigningKey, PublicKeys) {
        let key = SigningKey::generate(&mut OsRng);
        let mut keys = PublicKeys::new();
        keys.insert("k1", key.verifying_key());
        (key, keys)
    }

    #[test]
    fn signed_answers_verify_and_echo_the_nonce() {
        let (key, keys) = setup();
        let nonce = new_nonce(&mut OsRng);
        assert_eq!(nonce.len(), 22);
        let answer = sign_response(&body(&nonce), "k1", &key);
        assert_eq!(
            (answer["code"].as_str(), answer["kid"].as_str()),
            (Some("VALID"), Some("k1"))
        );
        let text = answer.to_string();
        let got = verify_response(&text, &keys, Some(&nonce)).unwrap();
        assert!(got.valid);
        assert_eq!(got.license.unwrap().id, "lic_1");
        assert_eq!(got.activation.unwrap().id, "act_1");
        assert_eq!(
            verify_response(&text, &keys, Some("old")),
            Err(VerifyError::NonceMismatch)
        );
        assert_eq!(verify_response(&text, &keys, None), Err(VerifyError::NonceMismatch));
        assert_eq!(verify_signed(&text, &keys).unwrap()["kid"], "k1");
        assert_eq!(
            crate::verify_response(&answer, &keys, Some(&nonce)).unwrap()["code"],
            "VALID"
        );
        assert_eq!(
            crate::verify_response(&answer, &keys, Some("x")),
            Err(VerifyError::NonceMismatch)
        );

        let not_found = json!({"valid": false, "code": "NOT_FOUND", "license": null, "activation": null,
                               "nonce": null, "issued_at": 1});
        let got = verify_response(&sign_response(&not_found, "k1", &key).to_string(), &keys, None).unwrap();
        assert_eq!((got.valid, got.license, got.activation), (false, None, None));
    }

    #[test]
    fn only_the_signed_payload_counts() {
        let (key, keys) = setup();
        let refused = json!({"valid": false, "code": "REVOKED", "nonce": "n", "issued_at": 1});
        let mut answer = sign_response(&refused, "k1", &key);
        answer["valid"] = true.into(); // the convenience copy is not trusted
        answer["code"] = "VALID".into();
        let got = verify_response(&answer.to_string(), &keys, Some("n")).unwrap();
        assert_eq!((got.valid, got.code.as_str()), (false, "REVOKED"));

        let good = sign_response(&body("n"), "k1", &key);
        let signed = good["signed_payload"].as_str().unwrap();
        for i in 0..signed.len() {
            let mut tampered = good.clone();
            let mut bytes = signed.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            tampered["signed_payload"] = String::from_utf8(bytes).unwrap().into();
            assert!(
                verify_response(&tampered.to_string(), &keys, Some("n")).is_err(),
                "position {i}"
            );
        }
        let (intruder, _) = setup();
        let forged = sign_response(&body("n"), "k1", &intruder);
        assert_eq!(
            verify_response(&forged.to_string(), &keys, Some("n")),
            Err(VerifyError::BadSignature)
        );
        let mut unknown = good.clone();
        unknown["kid"] = "k9".into();
        assert_eq!(
            verify_response(&unknown.to_string(), &keys, Some("n")),
            Err(VerifyError::UnknownKeyId("k9".into()))
        );
        for missing in ["kid", "signed_payload", "signature"] {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(missing);
            assert_eq!(
                verify_response(&bad.to_string(), &keys, Some("n")),
                Err(VerifyError::Malformed(missing))
            );
        }
        assert!(matches!(
            verify_response("not json", &keys, None),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn revocation_lists_verify_with_verify_signed() {
        let (key, keys) = setup();
        let list = json!({"items": [{"license_id": "lic_1", "product_id": "p", "status": "revoked", "at": 5}],
                          "next_cursor": null, "issued_at": 6});
        let answer = sign_response(&list, "k1", &key).to_string();
        assert_eq!(verify_signed(&answer, &keys).unwrap()["items"][0]["status"], "revoked");
        assert!(matches!(
            verify_response(&answer, &keys, None),
            Err(VerifyError::Malformed(_))
        ));
    }
}
