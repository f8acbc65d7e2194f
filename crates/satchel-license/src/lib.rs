//! Offline verification of Satchel licenses, for the software sellers ship.
//!
//! - [`parse_key`] checks a typed license key (its check symbol catches every single typo and
//!   every swap of neighbours) without any network.
//! - [`verify_certificate`] checks a device certificate (`SCRT1.…`) against the store's
//!   published Ed25519 public keys: a leaked public key forges nothing.
//! - [`verify_response`] checks a signed answer of `POST /api/v1/licenses/{key}/validate`,
//!   including the nonce you sent, so a fake or replaying server is detected.
//!
//! Formats are documented byte by byte in `docs/licensing.md`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Crockford base32 symbols.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Random symbols in a key (115 bits), before the check symbol.
pub const KEY_SYMBOLS: usize = 23;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum KeyError {
    Malformed,
    BadCheckCharacter,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyError::Malformed => "not a license key",
            KeyError::BadCheckCharacter => "a character is wrong or two are swapped",
        })
    }
}

impl std::error::Error for KeyError {}

fn value_of(c: u8) -> Option<u32> {
    let c = match c.to_ascii_uppercase() {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&a| a == c)
        .and_then(|p| u32::try_from(p).ok())
}

/// Multiplication in GF(32) modulo x⁵ + x² + 1.
fn gf32_mul(mut a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0b10_0000 != 0 {
            a ^= 0b10_0101;
        }
    }
    p & 0b1_1111
}

/// The check symbol of `values` (symbol values 0–31): Σ αⁱ·vᵢ in GF(32) with α = x. Distinct
/// non-zero weights make every single substitution and adjacent transposition change it.
pub fn check_symbol(values: &[u32]) -> u8 {
    let mut weight = 1;
    let mut sum = 0;
    for &v in values {
        sum ^= gf32_mul(weight, v & 31);
        weight = gf32_mul(weight, 2);
    }
    ALPHABET[sum as usize]
}

/// Groups symbols by four with dashes.
pub fn group(symbols: &str) -> String {
    symbols
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Turns what a person typed into the canonical key (`PXL-7K2Q-MXW9-D4HT-3NBR-8C6F-PA1V`),
/// checking the check symbol. Lenient: case, spaces, missing dashes, O→0, I/L→1.
pub fn parse_key(input: &str) -> Result<String, KeyError> {
    let cleaned: String = input
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if cleaned.is_empty() || cleaned.len() > 64 || !cleaned.is_ascii() {
        return Err(KeyError::Malformed);
    }
    // The body is always the last 24 symbols; anything before it is the product prefix.
    let joined: String = cleaned.split('-').collect();
    if joined.len() < KEY_SYMBOLS + 1 {
        return Err(KeyError::Malformed);
    }
    let (prefix, body) = joined.split_at(joined.len() - (KEY_SYMBOLS + 1));
    if prefix.len() > 8 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyError::Malformed);
    }
    let values: Vec<u32> = body
        .bytes()
        .map(value_of)
        .collect::<Option<Vec<_>>>()
        .ok_or(KeyError::Malformed)?;
    if check_symbol(&values[..KEY_SYMBOLS]) != ALPHABET[values[KEY_SYMBOLS] as usize] {
        return Err(KeyError::BadCheckCharacter);
    }
    let symbols: String = values.iter().map(|&v| ALPHABET[v as usize] as char).collect();
    Ok(if prefix.is_empty() {
        group(&symbols)
    } else {
        format!("{prefix}-{}", group(&symbols))
    })
}

#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    Malformed(&'static str),
    UnknownKeyId(String),
    BadSignature,
    Expired,
    WrongDevice,
    NonceMismatch,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Malformed(what) => write!(f, "malformed {what}"),
            VerifyError::UnknownKeyId(kid) => write!(f, "unknown key id {kid}: refresh the public keys"),
            VerifyError::BadSignature => f.write_str("bad signature: not issued by the store"),
            VerifyError::Expired => f.write_str("expired"),
            VerifyError::WrongDevice => f.write_str("issued for another device"),
            VerifyError::NonceMismatch => f.write_str("nonce mismatch: a replayed answer"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The store's public keys by key id (from `GET /api/v1/licenses/public-keys`).
#[derive(Debug, Clone, Default)]
pub struct PublicKeys(Vec<(String, VerifyingKey)>);

impl PublicKeys {
    /// Parses the public-keys document (`{"items": [{"kid", "alg", "public_key"}]}`).
    pub fn from_json(doc: &str) -> Result<Self, VerifyError> {
        let v: Value = serde_json::from_str(doc).map_err(|_| VerifyError::Malformed("public keys document"))?;
        let mut keys = Vec::new();
        for k in v["items"]
            .as_array()
            .ok_or(VerifyError::Malformed("public keys document"))?
        {
            if k["alg"] != "Ed25519" {
                continue;
            }
            let kid = k["kid"].as_str().ok_or(VerifyError::Malformed("key id"))?;
            let raw = B64
                .decode(k["public_key"].as_str().unwrap_or_default())
                .map_err(|_| VerifyError::Malformed("public key"))?;
            let bytes: [u8; 32] = raw.try_into().map_err(|_| VerifyError::Malformed("public key"))?;
            keys.push((
                kid.to_string(),
                VerifyingKey::from_bytes(&bytes).map_err(|_| VerifyError::Malformed("public key"))?,
            ));
        }
        Ok(Self(keys))
    }

    fn get(&self, kid: &str) -> Result<&VerifyingKey, VerifyError> {
        self.0
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, v)| v)
            .ok_or_else(|| VerifyError::UnknownKeyId(kid.to_string()))
    }
}

fn check(key: &VerifyingKey, message: &[u8], signature_b64: &str) -> Result<(), VerifyError> {
    let sig = B64
        .decode(signature_b64)
        .map_err(|_| VerifyError::Malformed("signature"))?;
    let sig = Signature::from_slice(&sig).map_err(|_| VerifyError::Malformed("signature"))?;
    key.verify(message, &sig).map_err(|_| VerifyError::BadSignature)
}

/// The sha256 (hex) of a device fingerprint, as certificates carry it.
pub fn fingerprint_hash(fingerprint: &str) -> String {
    hex_lower(&Sha256::digest(fingerprint.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies a certificate and returns its claims. `fingerprint`: this device's fingerprint
/// (checked against the certificate); `now`: unix seconds.
pub fn verify_certificate(
    cert: &str,
    keys: &PublicKeys,
    fingerprint: Option<&str>,
    now: i64,
) -> Result<Value, VerifyError> {
    let cert = cert.trim();
    let (payload, sig) = cert.rsplit_once('.').ok_or(VerifyError::Malformed("certificate"))?;
    let claims_b64 = payload
        .strip_prefix("SCRT1.")
        .ok_or(VerifyError::Malformed("certificate (expected SCRT1.)"))?;
    let claims: Value = B64
        .decode(claims_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VerifyError::Malformed("certificate claims"))?;
    let kid = claims["kid"]
        .as_str()
        .ok_or(VerifyError::Malformed("certificate key id"))?;
    check(keys.get(kid)?, payload.as_bytes(), sig)?;
    if claims["expires_at"].as_i64().is_some_and(|e| e <= now) {
        return Err(VerifyError::Expired);
    }
    if let Some(fp) = fingerprint {
        if claims["fingerprint"].as_str() != Some(fingerprint_hash(fp).as_str()) {
            return Err(VerifyError::WrongDevice);
        }
    }
    Ok(claims)
}

/// Verifies a signed validation answer (the JSON the server returned) and the nonce you
/// sent; returns the signed body (`valid`, `code`, `license`, …).
pub fn verify_response(answer: &Value, keys: &PublicKeys, nonce: Option<&str>) -> Result<Value, VerifyError> {
    let kid = answer["kid"].as_str().ok_or(VerifyError::Malformed("answer key id"))?;
    let payload = answer["signed_payload"]
        .as_str()
        .ok_or(VerifyError::Malformed("signed_payload"))?;
    let sig = answer["signature"]
        .as_str()
        .ok_or(VerifyError::Malformed("signature"))?;
    check(keys.get(kid)?, payload.as_bytes(), sig)?;
    let body: Value = B64
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VerifyError::Malformed("signed_payload"))?;
    if body["nonce"].as_str() != nonce {
        return Err(VerifyError::NonceMismatch);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_from(values: &[u32]) -> String {
        let mut s: String = values.iter().map(|&v| ALPHABET[v as usize] as char).collect();
        s.push(check_symbol(values) as char);
        group(&s)
    }

    #[test]
    fn every_single_typo_and_adjacent_swap_is_caught() {
        let mut seed = 7u64;
        for _ in 0..200 {
            let values: Vec<u32> = (0..KEY_SYMBOLS)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    u32::try_from(seed >> 59).unwrap_or(0)
                })
                .collect();
            let key = key_from(&values);
            assert_eq!(parse_key(&key).unwrap(), key);
            let body: Vec<char> = key.chars().filter(|c| *c != '-').collect();
            for i in 0..body.len() {
                for &alt in ALPHABET {
                    if alt as char != body[i] {
                        let mut b = body.clone();
                        b[i] = alt as char;
                        assert!(parse_key(&b.iter().collect::<String>()).is_err());
                    }
                }
                if i + 1 < body.len() && body[i] != body[i + 1] {
                    let mut b = body.clone();
                    b.swap(i, i + 1);
                    assert_eq!(
                        parse_key(&b.iter().collect::<String>()),
                        Err(KeyError::BadCheckCharacter)
                    );
                }
            }
        }
    }

    #[test]
    fn typing_is_lenient_and_garbage_is_refused() {
        let key = key_from(&[
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
        ]);
        let prefixed = format!("APP-{key}");
        assert_eq!(parse_key(&prefixed.to_lowercase().replace('-', " ")).unwrap(), prefixed);
        assert_eq!(parse_key(&prefixed.replace('0', "O")).unwrap(), prefixed);
        for bad in [
            "",
            "hello",
            "ÄÖÜ-ÄÖÜÄ-ÖÜÄÖ-ÜÄÖÜ-ÄÖÜÄ-ÖÜÄÖ",
            &"A".repeat(500),
            "TOOLONGPREFIX-ABCD-ABCD-ABCD-ABCD-ABCD-ABCD",
        ] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificates_and_answers_verify_and_tampering_fails() {
        use ed25519_dalek::{Signer, SigningKey};
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let keys = PublicKeys::from_json(
            &serde_json::json!({"items": [{"kid": "k1", "alg": "Ed25519", "public_key": B64.encode(sk.verifying_key().as_bytes())}]}).to_string(),
        )
        .unwrap();
        let claims = serde_json::json!({"kid": "k1", "license_id": "lic_1", "fingerprint": fingerprint_hash("dev"), "expires_at": 2000});
        let payload = format!("SCRT1.{}", B64.encode(claims.to_string()));
        let cert = format!("{payload}.{}", B64.encode(sk.sign(payload.as_bytes()).to_bytes()));
        assert_eq!(
            verify_certificate(&cert, &keys, Some("dev"), 1000).unwrap()["license_id"],
            "lic_1"
        );
        assert_eq!(
            verify_certificate(&cert, &keys, Some("other"), 1000),
            Err(VerifyError::WrongDevice)
        );
        assert_eq!(verify_certificate(&cert, &keys, None, 3000), Err(VerifyError::Expired));
        let forged = cert.replacen("SCRT1.e", "SCRT1.f", 1);
        assert!(verify_certificate(&forged, &keys, None, 1000).is_err());
        let body = serde_json::json!({"valid": true, "code": "VALID", "nonce": "n"});
        let signed = B64.encode(body.to_string());
        let answer = serde_json::json!({"kid": "k1", "signed_payload": signed, "signature": B64.encode(sk.sign(signed.as_bytes()).to_bytes())});
        assert_eq!(verify_response(&answer, &keys, Some("n")).unwrap()["code"], "VALID");
        assert_eq!(
            verify_response(&answer, &keys, Some("other")),
            Err(VerifyError::NonceMismatch)
        );
    }
}
