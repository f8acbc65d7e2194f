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

async fn seller_call(t: &TestApp, method: &str, path: &str, key: &str, body: Option<&str>) -> (u16, Value) {
    let mut req = t.client.request(method.parse().unwrap(), t.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn license_row(t: &TestApp, key: &str) -> (String, String, i64, Option<i64>) {
    t.app
        .db
        .fetch_one(sql!(
            "SELECT id, status, activations, expires_at FROM license_keys WHERE license_key = $1",
            key
        ))
        .await
        .unwrap()
}

/// `extend` next to suspend/reinstate/revoke/reset: validated bodies, refused where it makes
/// no sense (no expiry, subscriptions), and a second seller gets 404 for every action while
/// nothing changes.
#[tokio::test]
async fn sellers_extend_licenses_and_only_their_own() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let mine = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "password123", "Rival", "seller")
            .await
            .unwrap();
        let theirs = satchel::accounts::create_api_key(&t.app.db, "rival@example.com", "ci")
            .await
            .unwrap();
        // A prefix keys could not carry is refused when the product is saved.
        let product = |prefix: &str| {
            json!({"title": "Term App", "slug": "term-app", "price": 900, "currency": "USD", "status": "published",
                   "license_policy": {"type": "perpetual", "max_activations": 2, "term_days": 30, "key_prefix": prefix}})
            .to_string()
        };
        let (s, e) = seller_call(&t, "POST", "/api/v1/products", &mine, Some(&product("MY-APP!"))).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (422, Some("invalid_license_policy")),
            "{e}"
        );
        let (s, e) = seller_call(&t, "POST", "/api/v1/products", &mine, Some(&product("trm"))).await;
        assert_eq!(s, 201, "{e}");

        let key = t.buy_paid("term-app", "term@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(key.starts_with("TRM-"), "{key}");
        assert_eq!(
            post(&t, &key, "activate", json!({"device_fingerprint": "a"})).await.0,
            200
        );
        let (id, _, _, expires0) = license_row(&t, &key).await;
        let expires0 = expires0.expect("a 30-day term");
        assert!((expires0 - satchel::ids::now() - 30 * 86_400).abs() < 60);
        let path = |action: &str| format!("/api/v1/seller/licenses/{id}/{action}");

        // The rival: 404 for every action, and nothing changes.
        for action in ["suspend", "reinstate", "revoke", "reset", "extend"] {
            let (s, e) = seller_call(&t, "POST", &path(action), &theirs, Some(r#"{"days": 10}"#)).await;
            assert_eq!(
                (s, e["error"]["code"].as_str()),
                (404, Some("not_found")),
                "{backend:?} {action}"
            );
        }
        assert_eq!(
            license_row(&t, &key).await,
            (id.clone(), "active".into(), 1, Some(expires0))
        );
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "a"})).await;
        assert_eq!(v["code"], "VALID");

        // Bad bodies: a clear 4xx, nothing changes.
        let now = satchel::ids::now();
        for (body, status, code) in [
            ("", 422, "invalid_extension"),
            ("{}", 422, "invalid_extension"),
            (r#"{"days": 0}"#, 422, "invalid_days"),
            (r#"{"days": 36501}"#, 422, "invalid_days"),
            (r#"{"days": -3}"#, 422, "invalid_days"),
            (&format!(r#"{{"until": {}}}"#, now - 5), 422, "invalid_until"),
            (&format!(r#"{{"until": {expires0}}}"#), 422, "invalid_until"),
            (
                &format!(r#"{{"days": 1, "until": {}}}"#, expires0 + 86_400),
                422,
                "invalid_extension",
            ),
            (r#"{"weeks": 1}"#, 400, "invalid_json"),
            (r#"{"days": "ten"}"#, 400, "invalid_json"),
            ("{oops", 400, "invalid_json"),
        ] {
            let (s, e) = seller_call(&t, "POST", &path("extend"), &mine, Some(body)).await;
            assert_eq!((s, e["error"]["code"].as_str()), (status, Some(code)), "{body}");
        }
        assert_eq!(license_row(&t, &key).await.3, Some(expires0));

        // By days from the current expiry, then to a date.
        let (s, l) = seller_call(&t, "POST", &path("extend"), &mine, Some(r#"{"days": 10}"#)).await;
        assert_eq!(
            (s, l["expires_at"].as_i64()),
            (200, Some(expires0 + 10 * 86_400)),
            "{l}"
        );
        let until = expires0 + 100 * 86_400;
        let (s, l) = seller_call(
            &t,
            "POST",
            &path("extend"),
            &mine,
            Some(&format!(r#"{{"until": {until}}}"#)),
        )
        .await;
        assert_eq!(
            (s, l["expires_at"].as_i64(), l["status"].as_str()),
            (200, Some(until), Some("active"))
        );
        // A new activation's certificate carries the new expiry.
        let (_, a) = post(&t, &key, "activate", json!({"device_fingerprint": "b"})).await;
        assert_eq!(a["expires_at"].as_i64(), Some(until));

        // An expired term comes back to life for N days from now; a suspended one stays suspended.
        t.app
            .db
            .execute(sql!(
                "UPDATE license_keys SET expires_at = $2 WHERE id = $1",
                &id,
                now - 10
            ))
            .await
            .unwrap();
        assert_eq!(satchel::subscriptions::expire_due(&t.app.db).await.unwrap(), 1);
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "a"})).await;
        assert_eq!(v["code"], "EXPIRED");
        let (s, l) = seller_call(&t, "POST", &path("extend"), &mine, Some(r#"{"days": 5}"#)).await;
        assert_eq!((s, l["status"].as_str()), (200, Some("active")), "{l}");
        assert!((l["expires_at"].as_i64().unwrap() - satchel::ids::now() - 5 * 86_400).abs() < 60);
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "a"})).await;
        assert_eq!(v["code"], "VALID", "{backend:?}");
        assert_eq!(
            seller_call(&t, "POST", &path("suspend"), &mine, None).await.1["status"],
            "suspended"
        );
        let (s, l) = seller_call(&t, "POST", &path("extend"), &mine, Some(r#"{"days": 5}"#)).await;
        assert_eq!((s, l["status"].as_str()), (200, Some("suspended")));
        let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "a"})).await;
        assert_eq!(v["code"], "SUSPENDED");

        // Licenses that never expire, and subscriptions (their expiry follows billing): 409.
        for (slug, code) in [("demo-app", "never_expires"), ("demo-pro", "subscription_license")] {
            let key = t.buy_paid(slug, "x@example.com").await["items"][0]["license_key"]
                .as_str()
                .unwrap()
                .to_string();
            let (id, status, _, expires) = license_row(&t, &key).await;
            let (s, e) = seller_call(
                &t,
                "POST",
                &format!("/api/v1/seller/licenses/{id}/extend"),
                &mine,
                Some(r#"{"days": 30}"#),
            )
            .await;
            assert_eq!((s, e["error"]["code"].as_str()), (409, Some(code)), "{slug}");
            assert_eq!(license_row(&t, &key).await, (id, status, 0, expires));
        }
        let events = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM domain_events WHERE event_type = 'license.extended' AND subject_id = $1",
                &id
            ))
            .await
            .unwrap();
        assert_eq!(events, 4, "one event per extension that happened");
    }
}

async fn post_from(t: &TestApp, ip: &str, key: &str, action: &str, body: Value) -> reqwest::Response {
    t.client
        .post(t.url(&format!("/api/v1/licenses/{key}/{action}")))
        .header("x-forwarded-for", ip)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Many unknown, malformed or mistyped keys from one network: one store-wide abuse flag per
/// window with the counts, and that network throttled hard while others are untouched.
#[tokio::test]
async fn key_guessing_from_one_network_is_flagged_once_and_throttled() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| {
            c.server.trust_forwarded_for = true;
            c.licenses.guess_threshold = 12;
        })
        .await;
        let key = t.buy_paid("demo-app", "g@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            post(&t, &key, "activate", json!({"device_fingerprint": "d"})).await.0,
            200
        );
        let mut typo: Vec<char> = key.chars().collect();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        let flags = || async {
            t.app
                .db
                .fetch_all::<(String, String, String, String, String, String)>(sql!(
                    "SELECT seller_id, subject_kind, subject_id, reason, detail, status FROM abuse_flags"
                ))
                .await
                .unwrap()
        };
        // 11 misses of every kind, spread over the /24: counted, nothing raised yet. Calls
        // with a real key do not count.
        for i in 0..11u32 {
            let ip = format!("203.0.113.{}", i + 1);
            let unknown = satchel::licensing::format::new_key(Some("PXL"));
            let (action, k, status) = match i % 4 {
                0 => ("validate", unknown.as_str(), 200),
                1 => ("activate", unknown.as_str(), 404),
                2 => ("activate", "NOT-A-KEY", 422),
                _ => ("deactivate", typo.as_str(), 422),
            };
            let r = post_from(&t, &ip, k, action, json!({"device_fingerprint": "x"})).await;
            assert_eq!(r.status(), status, "{backend:?} {action}");
            let r = post_from(&t, &ip, &key, "validate", json!({"device_fingerprint": "d"})).await;
            assert_eq!(r.status(), 200);
        }
        assert!(flags().await.is_empty(), "{backend:?}: below the threshold");

        // The 12th raises exactly one flag, with the counts.
        let r = post_from(&t, "203.0.113.200", "NOT-A-KEY", "validate", json!({})).await;
        assert_eq!(r.status(), 422);
        let raised = flags().await;
        assert_eq!(raised.len(), 1, "{backend:?}");
        let (seller, kind, subject, reason, detail, status) = &raised[0];
        assert_eq!(
            (
                seller.as_str(),
                kind.as_str(),
                subject.as_str(),
                reason.as_str(),
                status.as_str()
            ),
            ("", "network", "203.0.113.0/24", "license_key_guessing", "open")
        );
        let detail: Value = serde_json::from_str(detail).unwrap();
        assert_eq!(
            (
                detail["misses"].as_u64(),
                detail["unknown_keys"].as_u64(),
                detail["malformed_keys"].as_u64(),
                detail["bad_check_characters"].as_u64(),
                detail["window_secs"].as_u64()
            ),
            (Some(12), Some(6), Some(4), Some(2), Some(600)),
            "{detail}"
        );

        // That network is throttled at once, even with a real key; others are not.
        for _ in 0..5 {
            let r = post_from(&t, "203.0.113.50", &key, "validate", json!({"device_fingerprint": "d"})).await;
            assert_eq!(r.status(), 429, "{backend:?}");
            let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=10).contains(&wait), "{wait}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "rate_limited");
        }
        let r = post_from(&t, "198.51.100.1", &key, "validate", json!({"device_fingerprint": "d"})).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "VALID");
        let r = post_from(&t, "198.51.100.1", &typo, "validate", json!({})).await;
        assert_eq!(r.status(), 422);
        assert_eq!(flags().await.len(), 1, "raised once per window");
        // Nothing about the real license changed.
        assert_eq!(license_row(&t, &key).await.1, "active");
    }
}

/// Every license call, every kind of bad input: a 4xx with a code, and nothing changes (the
/// license row, its activations, the check-in times).
#[tokio::test]
async fn bad_input_on_every_license_call_is_a_coded_4xx_and_changes_nothing() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let key = t.buy_paid("demo-app", "bad@example.com").await["items"][0]["license_key"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, a) = post(&t, &key, "activate", json!({"device_fingerprint": "d"})).await;
        assert_eq!(s, 200);
        let state = || async {
            let l = license_row(&t, &key).await;
            let acts: Vec<(String, i64, Option<i64>)> = t
                .app
                .db
                .fetch_all(sql!(
                    "SELECT id, last_check_in_at, deactivated_at FROM license_activations ORDER BY id"
                ))
                .await
                .unwrap();
            (l, acts)
        };
        let before = state().await;
        let unknown = satchel::licensing::format::new_key(Some("PXL"));
        // Two neighbours swapped: the commonest typo after a wrong character.
        let mut typo: Vec<char> = key.chars().collect();
        let i = (4..typo.len() - 1)
            .find(|&i| typo[i] != typo[i + 1] && typo[i] != '-' && typo[i + 1] != '-')
            .unwrap();
        typo.swap(i, i + 1);
        let typo: String = typo.into_iter().collect();
        let big = "x".repeat(10_000);
        let act = a["activation_id"].as_str().unwrap();
        let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
            (
                "activate",
                "not-a-key",
                json!({"device_fingerprint": "d2"}),
                422,
                "invalid_key",
            ),
            (
                "activate",
                &typo,
                json!({"device_fingerprint": "d2"}),
                422,
                "bad_check_character",
            ),
            (
                "activate",
                &unknown,
                json!({"device_fingerprint": "d2"}),
                404,
                "NOT_FOUND",
            ),
            (
                "activate",
                &key,
                json!({"device_fingerprint": "  "}),
                422,
                "invalid_fingerprint",
            ),
            (
                "activate",
                &key,
                json!({"device_fingerprint": "a\u{0}b"}),
                422,
                "invalid_fingerprint",
            ),
            (
                "activate",
                &key,
                json!({"device_fingerprint": "d2", "meta": {"x": big}}),
                422,
                "invalid_meta",
            ),
            ("activate", &key, json!({"device_fingerprint": 7}), 400, "invalid_json"),
            ("activate", &key, json!({}), 400, "invalid_json"),
            ("validate", "not-a-key", json!({}), 422, "invalid_key"),
            ("validate", &typo, json!({}), 422, "bad_check_character"),
            (
                "validate",
                &key,
                json!({"device_fingerprint": ""}),
                422,
                "invalid_fingerprint",
            ),
            (
                "validate",
                &key,
                json!({"device_fingerprint": big}),
                422,
                "invalid_fingerprint",
            ),
            (
                "validate",
                &key,
                json!({"nonce": "n".repeat(129)}),
                422,
                "invalid_nonce",
            ),
            (
                "validate",
                &key,
                json!({"activation_id": big}),
                422,
                "invalid_activation_id",
            ),
            ("validate", &key, json!({"fingerprint": "d"}), 400, "invalid_json"),
            (
                "deactivate",
                "not-a-key",
                json!({"activation_id": act}),
                422,
                "invalid_key",
            ),
            (
                "deactivate",
                &typo,
                json!({"activation_id": act}),
                422,
                "bad_check_character",
            ),
            ("deactivate", &unknown, json!({"activation_id": act}), 404, "NOT_FOUND"),
            ("deactivate", &key, json!({}), 422, "missing_device"),
            (
                "deactivate",
                &key,
                json!({"device_fingerprint": ""}),
                422,
                "invalid_fingerprint",
            ),
            (
                "deactivate",
                &key,
                json!({"device_fingerprint": big}),
                422,
                "invalid_fingerprint",
            ),
            (
                "deactivate",
                &key,
                json!({"activation_id": "act_nope"}),
                404,
                "NOT_ACTIVATED",
            ),
            ("deactivate", &key, json!({"activation_id": 5}), 400, "invalid_json"),
        ];
        for (action, k, body, status, code) in cases {
            let (s, e) = post(&t, k, action, body.clone()).await;
            assert_eq!(
                (s, e["error"]["code"].as_str()),
                (status, Some(code)),
                "{backend:?} {action} {body}"
            );
        }
        for action in ["activate", "validate", "deactivate"] {
            for bad in ["{oops", "", "[]", "null"] {
                let r = t
                    .client
                    .post(t.url(&format!("/api/v1/licenses/{key}/{action}")))
                    .header("content-type", "application/json")
                    .body(bad)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 400, "{action} {bad:?}");
                let e: Value = r.json().await.unwrap();
                assert_eq!(e["error"]["code"], "invalid_json");
            }
            let r = t
                .client
                .post(t.url(&format!("/api/v1/licenses/{key}/{action}")))
                .body(r#"{"device_fingerprint": "d"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415, "{action} without a JSON content type");
        }
        assert_eq!(state().await, before, "{backend:?}: nothing changed");
        // An unknown key validates as a signed NOT_FOUND (200), and also changes nothing.
        let (s, v) = post(&t, &unknown, "validate", json!({"device_fingerprint": "d"})).await;
        assert_eq!(
            (s, v["code"].as_str(), v["valid"].as_bool()),
            (200, Some("NOT_FOUND"), Some(false))
        );
        assert_eq!(state().await, before);
    }
}
