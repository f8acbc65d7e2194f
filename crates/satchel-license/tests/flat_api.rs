//! The crate-root functions and the key format's pieces, as code outside the crate uses them
//! (the server's tests, `satchel-bench`, and anyone implementing the documented key format by
//! hand): this file failing to compile means those would too.

use rand_core::{OsRng, RngCore};
use satchel_license::{
    check_symbol, group, KeyError, LicenseKey, PublicKeys, SigningKey, ALPHABET, KEY_SYMBOLS as BODY,
};
use serde_json::{json, Value};

/// A key assembled from the documented pieces (symbols, check symbol, groups of four).
fn by_hand(prefix: Option<&str>) -> String {
    let values: Vec<u32> = (0..BODY).map(|_| OsRng.next_u32() % 32).collect();
    let mut s: String = values.iter().map(|&v| ALPHABET[v as usize] as char).collect();
    s.push(check_symbol(&values) as char);
    match prefix.filter(|p| !p.is_empty()) {
        Some(p) => format!("{}-{}", p.to_ascii_uppercase(), group(&s)),
        None => group(&s),
    }
}

#[test]
fn keys_by_hand_and_by_the_server_parse_alike() {
    let key = by_hand(Some("pxl"));
    assert_eq!(satchel_license::parse_key(&key.to_lowercase()).unwrap(), key);
    assert_eq!(by_hand(None).len(), 24 + 5);
    // What the server mints (`LicenseKey::generate`) has the same shape.
    let minted = LicenseKey::generate(Some("pxl"), &mut OsRng).unwrap();
    assert_eq!(minted.canonical().len(), key.len());
    assert_eq!(
        satchel_license::parse_key(minted.canonical()).unwrap(),
        minted.canonical()
    );
    let err = satchel_license::parse_key("hello").unwrap_err();
    assert!(matches!(err, KeyError::Malformed | KeyError::BadCheckCharacter));
    assert_eq!(err, KeyError::Malformed);
}

#[test]
fn untyped_verification_as_the_server_tests_and_bench_call_it() {
    let sk = SigningKey::from_bytes(&[9; 32]);
    let mut pk = PublicKeys::new();
    pk.insert("k", sk.verifying_key());
    // The bench's minimal claims (no product, type…) still verify in the untyped form.
    let minimal = satchel_license::certificate::sign_certificate(
        &serde_json::from_value(json!({
            "license_id": "lic_1", "product_id": "p", "type": "perpetual", "entitlements": [],
            "fingerprint": satchel_license::fingerprint_hash("dev-1"), "activation_id": "a",
            "issued_at": 0, "expires_at": null
        }))
        .unwrap(),
        "k",
        &sk,
    );
    let keys_doc: String =
        json!({"items": pk.to_json()["items"], "keys": pk.to_json()["items"], "next_cursor": null}).to_string();
    let pk = PublicKeys::from_json(&keys_doc).map_err(|e| format!("{e}")).unwrap();
    let claims = satchel_license::verify_certificate(&minimal, &pk, Some("dev-1"), 1).unwrap();
    assert_eq!(claims["license_id"], "lic_1");
    satchel_license::verify_certificate(&minimal, &pk, None, 0)
        .map_err(|e| format!("{e}"))
        .unwrap();

    let answer: Value = satchel_license::response::sign_response(
        &json!({"valid": true, "code": "VALID", "nonce": "nonce-42", "issued_at": 1}),
        "k",
        &sk,
    );
    assert_eq!(
        satchel_license::verify_response(&answer, &pk, Some("nonce-42")).unwrap()["code"],
        "VALID"
    );
    assert!(satchel_license::verify_response(&answer, &pk, Some("replayed")).is_err());
}
