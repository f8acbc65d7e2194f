//! Licenses bought in the store: activation limits exact under concurrency, offline-
//! verifiable certificates and signed answers, and access taken back by refunds.

#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn post(t: &TestApp, key: &str, action: &str, body: Value) -> (u16, Value) {
    t.post_json(&format!("/api/v1/licenses/{key}/{action}"), &body).await
}

async fn public_key(t: &TestApp, kid: &str) -> VerifyingKey {
    let keys: Value = t
        .client
        .get(t.url("/api/v1/licenses/public-keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let k = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let bytes: [u8; 32] = B64
        .decode(k["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    VerifyingKey::from_bytes(&bytes).unwrap()
}

/// Verifies a certificate offline and returns its claims.
async fn verify_certificate(t: &TestApp, cert: &str) -> Value {
    let (payload, sig) = cert.rsplit_once('.').unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(payload.strip_prefix("SCRT1.").unwrap()).unwrap()).unwrap();
    let key = public_key(t, claims["kid"].as_str().unwrap()).await;
    let sig = Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
    key.verify(payload.as_bytes(), &sig).expect("certificate signature");
    claims
}

/// Verifies a signed validation answer and returns the signed body.
async fn verify_answer(t: &TestApp, answer: &Value) -> Value {
    let key = public_key(t, answer["kid"].as_str().unwrap()).await;
    let payload = answer["signed_payload"].as_str().unwrap();
    let sig = Signature::from_slice(&B64.decode(answer["signature"].as_str().unwrap()).unwrap()).unwrap();
    key.verify(payload.as_bytes(), &sig).expect("answer signature");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn a_perpetual_license_activates_n_devices_verifies_offline_and_dies_with_a_refund() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-app", "dev@example.com").await;
        let key = order["items"][0]["license_key"].as_str().unwrap().to_string();
        assert!(key.starts_with("PXL-"), "{key}");

        let mut activations = Vec::new();
        for d in ["laptop", "desktop", "studio"] {
            let (s, a) = post(&t, &key, "activate", json!({"device_fingerprint": d, "label": d})).await;
            assert_eq!(s, 200, "{backend:?}: {a}");
            let claims = verify_certificate(&t, a["certificate"].as_str().unwrap()).await;
            assert_eq!(claims["fingerprint"], hex::encode(Sha256::digest(d.as_bytes())));
            assert_eq!(claims["activation_id"], a["activation_id"]);
            assert_eq!(claims["type"], "perpetual");
            activations.push(a["activation_id"].as_str().unwrap().to_string());
        }
        let (s, again) = post(&t, &key, "activate", json!({"device_fingerprint": "laptop"})).await;
        assert_eq!(
            (s, again["activation_id"].as_str().unwrap()),
            (200, activations[0].as_str()),
            "idempotent per device"
        );
        let (s, e) = post(&t, &key, "activate", json!({"device_fingerprint": "tablet"})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (409, Some("TOO_MANY_ACTIVATIONS")));

        // Signed validation answers, each code.
        let (s, v) = post(
            &t,
            &key,
            "validate",
            json!({"device_fingerprint": "desktop", "nonce": "n-123"}),
        )
        .await;
        assert_eq!(s, 200);
        let signed = verify_answer(&t, &v).await;
        assert_eq!(
            (
                signed["valid"].as_bool(),
                signed["code"].as_str(),
                signed["nonce"].as_str()
            ),
            (Some(true), Some("VALID"), Some("n-123"))
        );
        assert_eq!(signed["license"]["activations"], 3);
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "tablet"})).await;
        assert_eq!(v["code"], "TOO_MANY_ACTIVATIONS");
        let (_, v) = post(
            &t,
            &key,
            "validate",
            json!({"activation_id": activations[1], "device_fingerprint": "laptop"}),
        )
        .await;
        assert_eq!(v["code"], "FINGERPRINT_MISMATCH");
        let unknown = satchel::licensing::format::new_key(Some("PXL"));
        let (s, v) = post(&t, &unknown, "validate", json!({"nonce": "x"})).await;
        assert_eq!((s, v["code"].as_str()), (200, Some("NOT_FOUND")));
        verify_answer(&t, &v).await;
        // A faked server's answer (tampered payload) does not verify.
        let mut forged = v.clone();
        let mut body: Value =
            serde_json::from_slice(&B64.decode(forged["signed_payload"].as_str().unwrap()).unwrap()).unwrap();
        body["valid"] = json!(true);
        forged["signed_payload"] = json!(B64.encode(body.to_string()));
        let key_v = public_key(&t, forged["kid"].as_str().unwrap()).await;
        let sig = Signature::from_slice(&B64.decode(forged["signature"].as_str().unwrap()).unwrap()).unwrap();
        assert!(key_v
            .verify(forged["signed_payload"].as_str().unwrap().as_bytes(), &sig)
            .is_err());

        // Deactivating frees a seat.
        let (s, _) = post(&t, &key, "deactivate", json!({"activation_id": activations[2]})).await;
        assert_eq!(s, 200);
        assert_eq!(
            post(&t, &key, "activate", json!({"device_fingerprint": "tablet"}))
                .await
                .0,
            200
        );

        // A refund revokes: validation says so, activation refuses, the revocation list lists it.
        let tx = t.app.db.begin().await.unwrap();
        let req = satchel::refunds::RefundRequest {
            amount: None,
            reason: String::new(),
            items: vec![],
        };
        satchel::refunds::apply(&t.app, &tx, order["order_id"].as_str().unwrap(), &req, "seller", None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "laptop"})).await;
        assert_eq!(
            (v["valid"].as_bool(), v["code"].as_str()),
            (Some(false), Some("REVOKED")),
            "{backend:?}"
        );
        let (s, e) = post(&t, &key, "activate", json!({"device_fingerprint": "new"})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (403, Some("REVOKED")));
        let list: Value = t
            .client
            .get(t.url("/api/v1/licenses/revocations"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        verify_answer(&t, &list).await;
        assert!(list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["status"] == "revoked"));
        assert!(list["next_cursor"].is_null());
    }
}

#[tokio::test]
async fn activation_limits_are_exact_under_concurrency() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let single = t.buy_paid("demo-single", "s@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        let three = t.buy_paid("demo-app", "p@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        for (key, devices, expected) in [(single.clone(), 20, 1), (three.clone(), 10, 3)] {
            let mut tasks = Vec::new();
            for d in 0..devices {
                let (c, url) = (t.client.clone(), t.url(&format!("/api/v1/licenses/{key}/activate")));
                tasks.push(tokio::spawn(async move {
                    c.post(url)
                        .json(&json!({"device_fingerprint": format!("device-{d}")}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                }));
            }
            let mut ok = 0;
            for task in tasks {
                match task.await.unwrap() {
                    200 => ok += 1,
                    409 => {}
                    other => panic!("{backend:?}: unexpected {other}"),
                }
            }
            assert_eq!(ok, expected, "{backend:?}: {key}");
            let live = t
                .app
                .db
                .fetch_i64(sql!(
                    "SELECT COUNT(*) FROM license_activations a JOIN license_keys l ON l.id = a.license_id WHERE l.license_key = $1 AND a.deactivated_at IS NULL",
                    &key
                ))
                .await
                .unwrap();
            assert_eq!(live, expected);
        }
        // The same device racing itself gets one activation.
        let mut tasks = Vec::new();
        let fresh = t.buy_paid("demo-app", "q@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        for _ in 0..8 {
            let (c, url) = (t.client.clone(), t.url(&format!("/api/v1/licenses/{fresh}/activate")));
            tasks.push(tokio::spawn(async move {
                let r: Value = c
                    .post(url)
                    .json(&json!({"device_fingerprint": "same"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r["activation_id"].as_str().unwrap().to_string()
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap());
        }
        assert_eq!(ids.len(), 1, "{backend:?}: one activation for one device");
        // Single-use keys cannot be moved.
        let (s, e) = post(&t, &single, "deactivate", json!({"device_fingerprint": "device-0"})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (409, Some("KEY_CONSUMED")));
    }
}

#[tokio::test]
async fn subscription_licenses_expire_after_cancellation_and_grace() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-pro", "pro@example.com").await;
        let key = order["items"][0]["license_key"].as_str().unwrap().to_string();
        let (s, a) = post(&t, &key, "activate", json!({"device_fingerprint": "mac"})).await;
        assert_eq!(s, 200);
        let claims = verify_certificate(&t, a["certificate"].as_str().unwrap()).await;
        let paid_through: i64 = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT paid_through FROM license_keys WHERE license_key = $1",
                &key
            ))
            .await
            .unwrap();
        assert_eq!(
            claims["expires_at"].as_i64(),
            Some(paid_through + 7 * 86_400),
            "offline until paid-through + grace"
        );
        assert_eq!(claims["check_in_hours"], 24);
        // Canceled with its period ended more than 7 days ago: expired.
        let sub = format!("test_sub_{}", order["order_id"].as_str().unwrap());
        t.app
            .db
            .execute(sql!(
                "UPDATE subscriptions SET current_period_end = $1 WHERE provider_subscription_id = $2",
                satchel::ids::now() - 8 * 86_400,
                &sub
            ))
            .await
            .unwrap();
        let tx = t.app.db.begin().await.unwrap();
        satchel::subscriptions::on_deleted(&tx, &sub, 10).await.unwrap();
        tx.commit().await.unwrap();
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "mac"})).await;
        assert_eq!(v["code"], "EXPIRED", "{backend:?}");
        assert_eq!(satchel::subscriptions::expire_due(&t.app.db).await.unwrap(), 1);
        let (s, e) = post(&t, &key, "activate", json!({"device_fingerprint": "pc"})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (403, Some("EXPIRED")));
    }
}

#[tokio::test]
async fn bad_license_input_is_a_clear_4xx_and_changes_nothing() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let key = t.buy_paid("demo-app", "b@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        let mut typo: Vec<char> = key.chars().collect();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        for (k, body, status, code) in [
            ("not-a-key", json!({"device_fingerprint": "d"}), 422, "invalid_key"),
            (
                typo.as_str(),
                json!({"device_fingerprint": "d"}),
                422,
                "bad_check_character",
            ),
            (
                key.as_str(),
                json!({"device_fingerprint": ""}),
                422,
                "invalid_fingerprint",
            ),
            (
                key.as_str(),
                json!({"device_fingerprint": "x".repeat(10_000)}),
                422,
                "invalid_fingerprint",
            ),
            (key.as_str(), json!({"fingerprint": "wrong-field"}), 400, "invalid_json"),
        ] {
            let (s, e) = post(&t, k, "activate", body.clone()).await;
            assert_eq!((s, e["error"]["code"].as_str()), (status, Some(code)), "{body}");
        }
        let r = t
            .client
            .post(t.url(&format!("/api/v1/licenses/{key}/activate")))
            .header("content-type", "application/json")
            .body("{oops")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(
            t.app
                .db
                .fetch_i64(sql!("SELECT COUNT(*) FROM license_activations"))
                .await
                .unwrap(),
            0
        );
        // Lenient typing: lower case and spaces instead of dashes still work.
        let typed = key.to_lowercase().replace('-', " ");
        assert_eq!(
            post(&t, &typed, "activate", json!({"device_fingerprint": "d"})).await.0,
            200
        );
    }
}

/// The documented verifiers — Python (`cryptography`), JavaScript (Node's crypto) and Rust
/// (`satchel-license`) — accept what the server issued and reject tampering.
#[tokio::test]
async fn the_python_javascript_and_rust_verifiers_accept_server_issued_licenses() {
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    let key = t.buy_paid("demo-app", "v@example.com").await["items"][0]["license_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, act) = post(&t, &key, "activate", json!({"device_fingerprint": "dev-1"})).await;
    let (_, answer) = post(
        &t,
        &key,
        "validate",
        json!({"device_fingerprint": "dev-1", "nonce": "nonce-42"}),
    )
    .await;
    let keys_doc = t
        .client
        .get(t.url("/api/v1/licenses/public-keys"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (keys_path, cert_path, answer_path, bad_path) = (
        dir.path().join("keys.json"),
        dir.path().join("cert.txt"),
        dir.path().join("answer.json"),
        dir.path().join("bad.txt"),
    );
    std::fs::write(&keys_path, &keys_doc).unwrap();
    let cert = act["certificate"].as_str().unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&answer_path, answer.to_string()).unwrap();
    let (payload, sig) = cert.rsplit_once('.').unwrap();
    let mut bad_sig: Vec<char> = sig.chars().collect();
    bad_sig[3] = if bad_sig[3] == 'A' { 'B' } else { 'A' };
    std::fs::write(
        &bad_path,
        format!("{payload}.{}", bad_sig.into_iter().collect::<String>()),
    )
    .unwrap();
    let license_id = act["license"]["id"].as_str().unwrap();

    // Rust, through the crate sellers embed.
    let pk = satchel_license::PublicKeys::from_json(&keys_doc).unwrap();
    let claims = satchel_license::verify_certificate(cert, &pk, Some("dev-1"), satchel::ids::now()).unwrap();
    assert_eq!(claims["license_id"], license_id);
    assert_eq!(
        satchel_license::verify_response(&answer, &pk, Some("nonce-42")).unwrap()["code"],
        "VALID"
    );
    assert!(satchel_license::verify_certificate(&std::fs::read_to_string(&bad_path).unwrap(), &pk, None, 0).is_err());
    assert_eq!(satchel_license::parse_key(&key.to_lowercase()).unwrap(), key);

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/license-verify");
    for (tool, script, probe) in [
        ("python3", "verify.py", "import cryptography"),
        ("node", "verify.mjs", ""),
    ] {
        let available = if probe.is_empty() {
            std::process::Command::new(tool).arg("--version").output().is_ok()
        } else {
            std::process::Command::new(tool)
                .args(["-c", probe])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !available {
            satchel::testing::skip(&format!("{tool} verifier: runtime or package missing"));
            continue;
        }
        let run = |cert: &std::path::Path, extra: &[&str]| {
            std::process::Command::new(tool)
                .arg(examples.join(script))
                .arg(&keys_path)
                .arg(cert)
                .args(extra)
                .output()
                .unwrap()
        };
        let ok = run(
            &cert_path,
            &[
                "--fingerprint",
                "dev-1",
                "--response",
                answer_path.to_str().unwrap(),
                "--nonce",
                "nonce-42",
            ],
        );
        assert!(
            ok.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), format!("OK {license_id}"));
        for (cert, extra) in [
            (bad_path.as_path(), vec![]),
            (cert_path.as_path(), vec!["--fingerprint", "other-device"]),
            (
                cert_path.as_path(),
                vec!["--response", answer_path.to_str().unwrap(), "--nonce", "replayed"],
            ),
        ] {
            let out = run(cert, &extra);
            assert!(!out.status.success(), "{tool} must reject {extra:?}");
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("FAILED"));
        }
    }
}
