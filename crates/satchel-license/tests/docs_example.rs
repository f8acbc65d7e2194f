//! The worked example in `docs/licensing.md` is real: its key, certificate and answer are
//! verbatim in the document and verify with this crate. Regenerate them with
//! `cargo test -p satchel-license --test docs_example -- --ignored --nocapture`.

use satchel_license::certificate::{fingerprint_hash, sign_certificate, Claims, LicenseType};
use satchel_license::{response, PublicKeys, SigningKey};
use serde_json::json;

const KEY: &str = "PXL-7K2Q-MXW9-D4HT-3NBR-8C6F-PA11";
const KEYS: &str = r#"{"items":[{"alg":"Ed25519","kid":"2026-01","public_key":"IVL40Zt5HSRFMkLhXy6rbLfP-ntqXtMAl5YOBpiB2xI"}],"next_cursor":null}"#;
const CERT: &str = "SCRT1.eyJhY3RpdmF0aW9uX2lkIjoiYWN0XzdUYjIiLCJjaGVja19pbl9ob3VycyI6bnVsbCwiZW50aXRsZW1lbnRzIjpbInByb2RfYXBwIl0sImV4cGlyZXNfYXQiOm51bGwsImZpbmdlcnByaW50IjoiMDMyMDRkZTkyZTExZmM4YzUyODEzOWJlNDE5MDY1OTIwZWI4M2RiZmYxYTQ2NjNiYmVhNDU1YWE2ZTk3MDJiZCIsImlzc3VlZF9hdCI6MTc2NzIyNTYwMCwia2lkIjoiMjAyNi0wMSIsImxpY2Vuc2VfaWQiOiJsaWNfNVFtUjgiLCJtYXhfYWN0aXZhdGlvbnMiOjMsInByb2R1Y3RfaWQiOiJwcm9kX2FwcCIsInR5cGUiOiJwZXJwZXR1YWwiLCJ2IjoxfQ.K94MdV4weIliwv3wzZEydNNOnO71UY15EYhxp7mo_9etGqvQtfjiK5kCFquGokR87M6f63Z2HSPBpWZKaOuDDw";
const ANSWER: &str = r#"{"activation":{"created_at":1767225600,"id":"act_7Tb2","last_check_in_at":1767229200},"code":"VALID","issued_at":1767229200,"kid":"2026-01","license":{"activations":1,"expires_at":null,"id":"lic_5QmR8","max_activations":3,"paid_through":null,"product_id":"prod_app","status":"active","type":"perpetual"},"nonce":"n-123","signature":"rX7sKiuZ0De9DqcqGbWeajcMsfRyHkCAidO9-fPTUreVaaOjrsVBwgMjEZJas5KqOiHeqFgaPkPRwQWf06FNDQ","signed_payload":"eyJhY3RpdmF0aW9uIjp7ImNyZWF0ZWRfYXQiOjE3NjcyMjU2MDAsImlkIjoiYWN0XzdUYjIiLCJsYXN0X2NoZWNrX2luX2F0IjoxNzY3MjI5MjAwfSwiY29kZSI6IlZBTElEIiwiaXNzdWVkX2F0IjoxNzY3MjI5MjAwLCJraWQiOiIyMDI2LTAxIiwibGljZW5zZSI6eyJhY3RpdmF0aW9ucyI6MSwiZXhwaXJlc19hdCI6bnVsbCwiaWQiOiJsaWNfNVFtUjgiLCJtYXhfYWN0aXZhdGlvbnMiOjMsInBhaWRfdGhyb3VnaCI6bnVsbCwicHJvZHVjdF9pZCI6InByb2RfYXBwIiwic3RhdHVzIjoiYWN0aXZlIiwidHlwZSI6InBlcnBldHVhbCJ9LCJub25jZSI6Im4tMTIzIiwidmFsaWQiOnRydWV9","valid":true}"#;

fn docs() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/licensing.md")).expect("docs/licensing.md")
}

#[test]
fn the_documented_example_is_verbatim_in_the_docs_and_verifies() {
    let docs = docs();
    for (name, text) in [("key", KEY), ("keys", KEYS), ("certificate", CERT), ("answer", ANSWER)] {
        assert!(docs.contains(text), "docs/licensing.md lacks the example {name}");
    }
    // The documented key is valid; the same key with its check symbol mistyped is not.
    assert_eq!(satchel_license::parse_key(&KEY.to_lowercase()).unwrap(), KEY);
    assert_eq!(
        satchel_license::parse_key(&KEY.replace("PA11", "PA1V")),
        Err(satchel_license::KeyError::BadCheckCharacter)
    );
    let keys = PublicKeys::from_json(KEYS).unwrap();
    assert_eq!(keys.get("2026-01"), Some(&example_key().verifying_key()));
    let claims = satchel_license::certificate::verify_for_device(CERT, &keys, "device-1", 1_767_229_200).unwrap();
    assert_eq!((claims.license_id.as_str(), claims.expires_at), ("lic_5QmR8", None));
    let body = response::verify_response(ANSWER, &keys, Some("n-123")).unwrap();
    assert_eq!((body.valid, body.license.unwrap().id.as_str()), (true, "lic_5QmR8"));
}

/// A published test key: 32 bytes of 0x42. Never sign real licenses with it.
fn example_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

#[test]
#[ignore = "prints the example for docs/licensing.md"]
fn print_docs_example() {
    let key = example_key();
    let mut keys = PublicKeys::new();
    keys.insert("2026-01", key.verifying_key());
    println!("KEYS {}", keys.to_json());
    let claims = Claims {
        license_id: "lic_5QmR8".into(),
        product_id: "prod_app".into(),
        license_type: LicenseType::Perpetual,
        entitlements: vec!["prod_app".into()],
        fingerprint: fingerprint_hash("device-1"),
        activation_id: "act_7Tb2".into(),
        issued_at: 1_767_225_600,
        expires_at: None,
        max_activations: Some(3),
        check_in_hours: None,
    };
    println!("CERT {}", sign_certificate(&claims, "2026-01", &key));
    let body = json!({
        "valid": true, "code": "VALID", "nonce": "n-123", "issued_at": 1_767_229_200,
        "license": {"id": "lic_5QmR8", "type": "perpetual", "status": "active", "product_id": "prod_app",
                    "expires_at": null, "paid_through": null, "max_activations": 3, "activations": 1},
        "activation": {"id": "act_7Tb2", "created_at": 1_767_225_600, "last_check_in_at": 1_767_229_200},
    });
    println!("ANSWER {}", response::sign_response(&body, "2026-01", &key));
}
