//! The three documented offline verifiers — the crate's `verify` example, Python
//! (`examples/license-verify/verify.py`, `cryptography` package) and JavaScript
//! (`examples/license-verify/verify.mjs`, Node's crypto) — accept what this crate signs and
//! refuse every kind of tampering, with the same CLI.
//!
//! A missing runtime is a printed skip, or a failure with `SATCHEL_TEST_REQUIRE_ALL=1` (CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use rand_core::OsRng;
use satchel_license::certificate::{fingerprint_hash, sign_certificate, Claims, LicenseType};
use satchel_license::response::sign_response;
use satchel_license::{PublicKeys, SigningKey};
use serde_json::{json, Value};

fn require_all() -> bool {
    std::env::var("SATCHEL_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1" || v == "true")
}

fn skip(reason: &str) {
    assert!(!require_all(), "SATCHEL_TEST_REQUIRE_ALL is set but: {reason}");
    eprintln!("SKIPPED: {reason}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each verifier as a command prefix, or why it cannot run here.
fn verifiers() -> Vec<(&'static str, Result<Vec<String>, String>)> {
    let examples = repo_root().join("examples/license-verify");
    let succeeds = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // `cargo test` builds the examples next to the test binary's `deps` directory.
    let rust = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            Some(
                exe.parent()?
                    .parent()?
                    .join("examples")
                    .join(format!("verify{}", std::env::consts::EXE_SUFFIX)),
            )
        })
        .filter(|bin| bin.is_file());
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    vec![
        (
            "rust",
            rust.map(|bin| vec![path(bin)]).ok_or_else(|| {
                "the verify example is not built (run the whole `cargo test -p satchel-license`)".into()
            }),
        ),
        (
            "python",
            if succeeds("python3", &["-c", "import cryptography"]) {
                Ok(vec!["python3".into(), path(examples.join("verify.py"))])
            } else {
                Err("python3 with the `cryptography` package is not installed".into())
            },
        ),
        (
            "javascript",
            if succeeds("node", &["--version"]) {
                Ok(vec!["node".into(), path(examples.join("verify.mjs"))])
            } else {
                Err("node is not installed".into())
            },
        ),
    ]
}

fn claims(license_id: &str) -> Claims {
    Claims {
        license_id: license_id.into(),
        product_id: "prod_app".into(),
        license_type: LicenseType::Perpetual,
        entitlements: vec!["prod_app".into()],
        fingerprint: fingerprint_hash("device-1"),
        activation_id: "act_1".into(),
        issued_at: 1_000,
        expires_at: Some(2_000),
        max_activations: Some(3),
        check_in_hours: None,
    }
}

fn answer_body(license_id: &str, code: &str, nonce: &str) -> Value {
    json!({
        "valid": code == "VALID", "code": code, "nonce": nonce, "issued_at": 1_500,
        "license": {"id": license_id, "type": "perpetual", "status": "active", "product_id": "prod_app",
                    "expires_at": 2_000, "paid_through": null, "max_activations": 3, "activations": 1},
        "activation": {"id": "act_1", "created_at": 1_000, "last_check_in_at": 1_500},
    })
}

/// Replaces the character at `at` (chars from the start) with another base64url symbol.
fn flip(s: &str, at: usize) -> String {
    s.char_indices()
        .map(|(i, c)| {
            if i == at {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn rust_python_and_javascript_verifiers_accept_signed_licenses_and_refuse_tampering() {
    let dir = std::env::temp_dir().join(format!("satchel-license-verifiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write fixture");
        p.to_string_lossy().into_owned()
    };

    // Two published keys: the certificate is signed with the older one (rotation).
    let (old, new, intruder) = (
        SigningKey::generate(&mut OsRng),
        SigningKey::generate(&mut OsRng),
        SigningKey::generate(&mut OsRng),
    );
    let mut keys = PublicKeys::new();
    keys.insert("2025-01", old.verifying_key());
    keys.insert("2026-01", new.verifying_key());
    let keys_json = write("keys.json", &keys.to_json().to_string());
    let keys_alias = write("keys-alias.json", &json!({"keys": keys.to_json()["items"]}).to_string());
    let mut new_only = PublicKeys::new();
    new_only.insert("2026-01", new.verifying_key());
    let keys_new_only = write("keys-new-only.json", &new_only.to_json().to_string());

    let cert = sign_certificate(&claims("lic_1"), "2025-01", &old);
    let (signed, sig) = cert.rsplit_once('.').expect("cert has a signature");
    let cert_path = write("cert.txt", &format!("{cert}\n"));
    let bad_claims = write("bad-claims.txt", &format!("{}.{sig}", flip(signed, signed.len() / 2)));
    let bad_sig = write("bad-sig.txt", &format!("{signed}.{}", flip(sig, sig.len() / 2)));
    let forged = write("forged.txt", &sign_certificate(&claims("lic_1"), "2025-01", &intruder));

    let answer = |body: Value, key: &SigningKey| sign_response(&body, "2026-01", key);
    let good = answer(answer_body("lic_1", "VALID", "n-1"), &new);
    let answer_path = write("answer.json", &good.to_string());
    let mut tampered = good.clone();
    let payload = good["signed_payload"].as_str().expect("signed_payload");
    tampered["signed_payload"] = flip(payload, payload.len() / 2).into();
    let mut lying = answer(answer_body("lic_1", "REVOKED", "n-1"), &new);
    lying["valid"] = true.into();
    lying["code"] = "VALID".into();
    let answers = [
        ("tampered answer", write("a-tampered.json", &tampered.to_string())),
        ("unsigned plain fields", write("a-lying.json", &lying.to_string())),
        (
            "another license's answer",
            write(
                "a-other.json",
                &answer(answer_body("lic_2", "VALID", "n-1"), &new).to_string(),
            ),
        ),
        (
            "forged answer",
            write(
                "a-forged.json",
                &answer(answer_body("lic_1", "VALID", "n-1"), &intruder).to_string(),
            ),
        ),
    ];

    let ok_args = |keys: &str| {
        vec![
            keys.to_string(),
            cert_path.clone(),
            "--fingerprint".into(),
            "device-1".into(),
            "--response".into(),
            answer_path.clone(),
            "--nonce".into(),
            "n-1".into(),
            "--now".into(),
            "1500".into(),
        ]
    };
    let args = |keys: &str, cert: &str, extra: &[&str]| {
        let mut a = vec![keys.to_string(), cert.to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut refused: Vec<(&str, Vec<String>)> = vec![
        ("tampered claims", args(&keys_json, &bad_claims, &["--now", "1500"])),
        ("tampered signature", args(&keys_json, &bad_sig, &["--now", "1500"])),
        ("forged certificate", args(&keys_json, &forged, &["--now", "1500"])),
        ("expired", args(&keys_json, &cert_path, &["--now", "2000"])),
        (
            "other device",
            args(&keys_json, &cert_path, &["--fingerprint", "device-2", "--now", "1500"]),
        ),
        ("unknown kid", args(&keys_new_only, &cert_path, &["--now", "1500"])),
        (
            "replayed answer",
            args(
                &keys_json,
                &cert_path,
                &["--response", &answer_path, "--nonce", "n-0", "--now", "1500"],
            ),
        ),
        (
            "missing nonce",
            args(&keys_json, &cert_path, &["--response", &answer_path, "--now", "1500"]),
        ),
    ];
    for (name, path) in &answers {
        refused.push((
            name,
            args(
                &keys_json,
                &cert_path,
                &["--response", path, "--nonce", "n-1", "--now", "1500"],
            ),
        ));
    }

    for (verifier, command) in verifiers() {
        let command = match command {
            Ok(c) => c,
            Err(reason) => {
                skip(&format!("{verifier} verifier: {reason}"));
                continue;
            }
        };
        let run = |args: &[String]| {
            let out = Command::new(&command[0])
                .args(&command[1..])
                .args(args)
                .output()
                .expect("run verifier");
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        for keys in [&keys_json, &keys_alias] {
            let (code, stdout, stderr) = run(&ok_args(keys));
            assert_eq!(
                (code, stdout.as_str()),
                (Some(0), "OK lic_1"),
                "{verifier} must accept: {stderr}"
            );
        }
        for (case, args) in &refused {
            let (code, stdout, stderr) = run(args);
            assert_eq!(
                code,
                Some(1),
                "{verifier} must refuse {case} (stdout {stdout:?}, stderr {stderr:?})"
            );
            assert!(
                stdout.starts_with("FAILED ") && !stdout.contains('\n'),
                "{verifier}, {case}: {stdout} {stderr}"
            );
        }
        let (code, _, _) = run(std::slice::from_ref(&keys_json));
        assert_eq!(code, Some(2), "{verifier}: usage");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
