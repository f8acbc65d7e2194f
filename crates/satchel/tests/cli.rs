//! The `satchel` binary as an operator uses it.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use satchel::db::Backend;
use satchel::testing::{backends, pg_admin_url};

fn satchel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_satchel"));
    // Keep the developer's own SATCHEL_* settings out of these runs.
    for (k, _) in std::env::vars() {
        if k.starts_with("SATCHEL_") && !k.starts_with("SATCHEL_TEST_") {
            c.env_remove(k);
        }
    }
    c.env("SATCHEL_LOG", "warn");
    c
}

#[test]
fn help_explains_every_command() {
    let out = satchel().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "worker", "migrate", "admin", "--data-dir", "--config"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = satchel().args(["admin", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("create-api-key"));
}

/// A new, empty PostgreSQL database for one run of the CLI (named `satchel_cli_<unix time>_…`),
/// and its URL; first drops the stale ones earlier runs left behind (`testing::is_stale`).
async fn fresh_pg_database() -> (String, String) {
    let pool = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    let existing: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'satchel\\_cli\\_%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (name,) in existing {
        // Names from before the time was part of them count as stale.
        if satchel::testing::is_stale(name.trim_start_matches("satchel_cli_").split('_').next()) {
            // Another run may be dropping it too: an error here changes nothing.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&pool)
                .await;
        }
    }
    let name = format!(
        "satchel_cli_{}_{}",
        satchel::ids::now(),
        satchel::ids::random_token(6).to_lowercase().replace(['-', '_'], "x")
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let mut url = url::Url::parse(&pg_admin_url()).unwrap();
    url.set_path(&name);
    (name, url.to_string())
}

/// Drops a database [`fresh_pg_database`] made.
async fn drop_pg_database(name: &str) {
    let pool = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn admin_creates_sellers_and_api_keys_on_both_backends() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![];
        let mut database = None;
        if backend == Backend::Postgres {
            let (name, url) = fresh_pg_database().await;
            env.push(("SATCHEL_DATABASE_URL", url));
            database = Some(name);
        }
        let run = |args: &[&str]| {
            let mut c = satchel();
            c.arg("--data-dir").arg(dir.path()).args(args);
            for (k, v) in &env {
                c.env(k, v);
            }
            c.output().unwrap()
        };
        let out = run(&["migrate"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = run(&[
            "admin",
            "create-seller",
            "--email",
            "Maker@Example.com",
            "--password",
            "longenough",
            "--store-name",
            "Maker",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = run(&["admin", "create-api-key", "--seller-email", "maker@example.com"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let key = stdout.lines().last().unwrap();
        assert!(key.starts_with("sk_live_") && key.len() > 40, "{backend:?}: {stdout:?}");

        // Mistakes: clear message, non-zero exit, nothing created.
        let out = run(&[
            "admin",
            "create-seller",
            "--email",
            "maker@example.com",
            "--password",
            "longenough",
        ]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
        let out = run(&["admin", "create-api-key", "--seller-email", "nobody@example.com"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
        if let Some(name) = database {
            drop_pg_database(&name).await;
        }
    }
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = satchel()
        .arg("--data-dir")
        .arg(dir.path())
        .env("SATCHEL_DATABASE_URL", "mysql://x/y")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database.url") && err.contains("not compiled"), "{err}");

    let out = satchel()
        .arg("--data-dir")
        .arg(dir.path())
        .env("SATCHEL_STORGE_URL", "x")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SATCHEL_STORGE_URL"));

    let cfg = dir.path().join("satchel.toml");
    std::fs::write(&cfg, "[storage]\nurl = \"s3://\"\n").unwrap();
    let out = satchel().arg("--config").arg(&cfg).arg("migrate").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.url"));
    std::fs::write(&cfg, "[payments]\nstripe_key = \"x\"\n").unwrap();
    let out = satchel().arg("--config").arg(&cfg).arg("migrate").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("stripe_key"));

    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = satchel().arg("--data-dir").arg(&file).arg("migrate").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not writable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_healthy(base: &str, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("satchel exited early: {status}");
        }
        assert!(Instant::now() < deadline, "satchel did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &std::process::Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn serve_demo_seeds_once_and_shuts_down_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let slugs = [
        "demo-ebook",
        "demo-templates",
        "demo-app",
        "demo-single",
        "demo-pro",
        "demo-free",
        "demo-album",
    ];
    for round in 0..2 {
        let port = satchel::testing::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = satchel()
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--demo", "--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        wait_healthy(&base, &mut child).await;
        let list: serde_json::Value = reqwest::get(format!("{base}/api/v1/products?limit=100"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["slug"].as_str().unwrap())
            .collect();
        assert_eq!(got.len(), 7, "round {round}: {got:?}");
        for s in slugs {
            assert!(got.contains(&s), "missing {s}");
        }
        let app: serde_json::Value = reqwest::get(format!("{base}/api/v1/products/demo-app"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(app["license_policy"]["type"], "perpetual");
        assert_eq!(app["license_policy"]["max_activations"], 3);
        assert_eq!(app["current_version"]["version"], "1.0.0");
        let ebook: serde_json::Value = reqwest::get(format!("{base}/api/v1/products/demo-ebook"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ebook["download_policy"]["max_downloads"], 5);
        assert_eq!(ebook["watermark_policy"], "stamp");
        let f = &ebook["current_version"]["files"][0];
        assert_eq!(f["content_type"], "application/pdf");
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
        let cover = reqwest::get(format!("{base}{}", ebook["cover_url"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(cover.status(), 200);
        assert_eq!(cover.headers()["content-type"], "image/svg+xml");
        assert!(cover.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert!(cover.text().await.unwrap().starts_with("<svg"));
        let free: serde_json::Value = reqwest::get(format!("{base}/api/v1/products/demo-free"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(free["free"], true);
        let pro: serde_json::Value = reqwest::get(format!("{base}/api/v1/products/demo-pro"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(pro["kind"], "subscription");
        assert_eq!(pro["license_policy"]["type"], "subscription");

        sigterm(&child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "graceful exit: {status}");
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(
            out.contains("demo@satchel.test") && out.contains("demo-password"),
            "{out}"
        );
    }
}

#[test]
fn generated_pdf_passes_pdfinfo() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.pdf");
    std::fs::write(&path, satchel::demo_files::ebook_pdf("Check")).unwrap();
    match Command::new("pdfinfo").arg(&path).output() {
        Ok(out) => {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let info = String::from_utf8_lossy(&out.stdout);
            assert!(
                info.lines()
                    .any(|l| l.starts_with("Pages:") && l.trim_end().ends_with(" 3")),
                "{info}"
            );
        }
        Err(_) => satchel::testing::skip("pdfinfo (poppler-utils) not installed"),
    }
}
