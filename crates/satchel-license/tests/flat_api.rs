//! The crate-root functions, used exactly as `crates/satchel` (key minting, its tests) and
//! `satchel-bench` use them: this file failing to compile means those crates would too.

use rand_core::{OsRng, RngCore};
use satchel_license::{check_symbol, group, KeyError, PublicKeys, SigningKey, ALPHABET, KEY_SYMBOLS as BODY};
use serde_json::{json, Value};

/// `crates/satchel/src/licensing/format.rs::new_key`, minus the server's `rand`.
fn new_key(prefix: Option<&str>) -> String {
    let values: Vec<u32> = (0..BODY).map(|_| OsRng.next_u32() % 32).collect();
    let mut s: String = values.iter().map(|&v| ALPHABET[v as usize] as char).collect();
    s.push(check_symbol(&values) as char);
    match prefix.filter(|p| !p.is_empty()) {
        Some(p) => format!("{}-{}", p.to_ascii_uppercase(), group(&s)),
        None => group(&s),
    }
}

#[test]
fn keys_minted_the_servers_way_parse() {
    let key = new_key(Some("pxl"));
    assert_eq!(satchel_license::parse_key(&key.to_lowercase()).unwrap(), key);
    assert_eq!(new_key(None).len(), 24 + 5);
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
