//! Publishing a version: stored with sha256, current at once, every buyer emailed (seen at a
//! real SMTP server), duplicates and strangers refused without side effects.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, SmtpServer, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn form(version: &str, name: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text("version", version.to_string())
        .text(
            "changelog",
            "## What's new\n\n- A new chapter on pricing <script>x</script>",
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes)
                .file_name(name.to_string())
                .mime_str("application/pdf")
                .unwrap(),
        )
}

/// The demo store, an API key of its seller, and its `demo-templates` product.
async fn demo_templates(backend: satchel::db::Backend) -> (TestApp, String, satchel::db::models::Product) {
    let t = TestApp::start_demo(backend).await;
    let key = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
        .await
        .unwrap();
    let product = satchel::catalog::find_product(&t.app.db, "demo-templates")
        .await
        .unwrap()
        .unwrap();
    (t, key, product)
}

/// Version claims held now (publishes storing their files).
async fn claims(t: &TestApp) -> i64 {
    t.app
        .db
        .fetch_i64(sql!("SELECT COUNT(*) FROM version_claims"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_version_reaches_every_buyer_and_nobody_else() {
    let Some(smtp) = SmtpServer::start().await else { return };
    for backend in backends().await {
        let url = smtp.url.clone();
        let t = TestApp::start_demo_with(backend, |c| c.email.smtp_url = Some(satchel::config::Secret::new(url))).await;
        let key = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "password123", "Rival", "seller")
            .await
            .unwrap();
        let rival = satchel::accounts::create_api_key(&t.app.db, "rival@example.com", "ci")
            .await
            .unwrap();
        let tag = backend.name();
        let a = t.buy_paid("demo-ebook", &format!("a-{tag}@example.com")).await;
        t.buy_paid("demo-ebook", &format!("b-{tag}@example.com")).await;
        let refunded = t.buy_paid("demo-ebook", &format!("r-{tag}@example.com")).await;
        let tx = t.app.db.begin().await.unwrap();
        let req = satchel::refunds::RefundRequest {
            amount: None,
            reason: String::new(),
            items: vec![],
        };
        satchel::refunds::apply(
            &t.app,
            &tx,
            refunded["order_id"].as_str().unwrap(),
            &req,
            "seller",
            None,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        t.buy_paid("demo-album", &format!("c-{tag}@example.com")).await;
        t.drain_jobs().await;
        let before = smtp.messages().len();

        let product = satchel::catalog::find_product(&t.app.db, "demo-ebook")
            .await
            .unwrap()
            .unwrap();
        let path = format!("/api/v1/products/{}/versions", product.id);
        let new_pdf = satchel::demo_files::ebook_pdf("Second edition");
        let r = t
            .client
            .post(t.url(&path))
            .bearer_auth(&rival)
            .multipart(form("2.0.0", "book.pdf", new_pdf.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "another seller's product does not exist for them");
        let r = t
            .client
            .post(t.url(&path))
            .bearer_auth(&key)
            .multipart(form("2.0.0", "../book v2.pdf", new_pdf.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{backend:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["files"][0]["name"], "book v2.pdf", "file names never become paths");
        assert_eq!(v["files"][0]["sha256"], hex::encode(Sha256::digest(&new_pdf)));
        // A taken version is refused before any byte is stored: the published file, same
        // name and all, keeps its bytes.
        let published_key = satchel::catalog::original_key(&product.seller_id, &product.id, "2.0.0", "book v2.pdf");
        for (version, name) in [("2.0.0", "book v2.pdf"), ("2.0.0", "again.pdf")] {
            let r = t
                .client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(version, name, vec![1, 2, 3]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 409, "{backend:?}: {version}");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "version_exists");
        }
        let stored = satchel::storage::collect(t.app.storage.get(&published_key, None).await.unwrap().body)
            .await
            .unwrap();
        assert_eq!(stored, new_pdf, "{backend:?}: the published file is untouched");

        let (s, e) = t
            .post_json(&path, &json!({"version": "2.1", "uploads": ["upl_nope"]}))
            .await;
        assert_eq!(s, 401, "{e}");
        let r = t
            .client
            .post(t.url(&path))
            .bearer_auth(&key)
            .json(&json!({"version": "2.1", "uploads": ["upl_nope"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_upload");

        // Exactly the two live buyers are emailed, through the real SMTP server.
        t.drain_jobs().await;
        let notices: Vec<(String,)> = t
            .app
            .db
            .fetch_all(sql!(
                "SELECT to_email FROM email_outbox WHERE kind = 'new_version' ORDER BY to_email"
            ))
            .await
            .unwrap();
        let to: Vec<&str> = notices.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            to,
            vec![format!("a-{tag}@example.com"), format!("b-{tag}@example.com")],
            "{backend:?}"
        );
        let msgs = smtp.messages();
        assert_eq!(msgs.len(), before + 2);
        let mail = msgs
            .iter()
            .find(|m| m.contains(&format!("a-{tag}@example.com")) && m.contains("2.0.0"))
            .unwrap();
        assert!(
            mail.contains("Subject: The Indie Maker's Handbook 2.0.0 is out"),
            "{mail}"
        );
        let (html,): (String,) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT body_html FROM email_outbox WHERE kind = 'new_version' ORDER BY id LIMIT 1"
            ))
            .await
            .unwrap();
        assert!(!html.contains("<script>x"), "changelog HTML is sanitized");
        assert!(html.contains("&lt;script&gt;x"), "and shown as text");
        let events = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM domain_events WHERE event_type = 'product.version_published'"
            ))
            .await
            .unwrap();
        assert_eq!(events, 1);

        // The buyer's existing link now serves the new version.
        let link = a["items"][0]["download_url"].as_str().unwrap();
        let r = t.client.get(link).send().await.unwrap();
        let file = r.headers()["location"].to_str().unwrap().to_string();
        let body = t.client.get(&file).send().await.unwrap().bytes().await.unwrap();
        // The demo ebook is watermarked: the buyer's copy is the new file, byte for byte,
        // followed by their own mark.
        assert!(body.len() > new_pdf.len(), "{backend:?}: the new version is marked too");
        assert_eq!(
            hex::encode(Sha256::digest(&body[..new_pdf.len()])),
            hex::encode(Sha256::digest(&new_pdf))
        );
    }
}

#[tokio::test]
async fn versions_that_would_share_storage_are_refused() {
    for backend in backends().await {
        let (t, key, product) = demo_templates(backend).await;
        let path = format!("/api/v1/products/{}/versions", product.id);
        let post = |version: &'static str| {
            t.client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(version, "kit.zip", b"first".to_vec()))
                .send()
        };
        assert_eq!(post("1_1").await.unwrap().status(), 201, "{backend:?}");
        let r = post("1 1").await.unwrap();
        assert_eq!(r.status(), 409, "{backend:?}: \"1 1\" would be stored as 1_1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "version_exists");
        assert!(body["error"]["message"].as_str().unwrap().contains("share its files"));
        let stored = satchel::storage::collect(
            t.app
                .storage
                .get(
                    &satchel::catalog::original_key(&product.seller_id, &product.id, "1_1", "kit.zip"),
                    None,
                )
                .await
                .unwrap()
                .body,
        )
        .await
        .unwrap();
        assert_eq!(stored, b"first");
    }
}

/// Publishes of one version racing each other (a retried CI job, a form sent twice): one
/// wins, the others are refused before they store a byte, and the file stored and served is
/// the winner's, matching its recorded sha256. A claim left by a publish whose process died
/// lapses after the stale limit; a live one refuses the version meanwhile.
#[tokio::test]
async fn racing_publishes_of_one_version_keep_the_winners_files() {
    for backend in backends().await {
        let (t, key, product) = demo_templates(backend).await;
        let path = format!("/api/v1/products/{}/versions", product.id);
        let post = |version: &'static str, fill: u8| {
            t.client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(version, "kit.zip", vec![fill; 1 << 20]))
                .send()
        };
        // Each racer sends its own bytes (1 MiB, so the stores overlap) under one version.
        let answers = futures::future::join_all((0..8u8).map(|i| post("9.9", i))).await;
        let mut winners = Vec::new();
        for (i, r) in answers.into_iter().enumerate() {
            let r = r.unwrap();
            match r.status().as_u16() {
                201 => winners.push(u8::try_from(i).unwrap()),
                409 => {
                    let body: Value = r.json().await.unwrap();
                    let code = body["error"]["code"].as_str().unwrap().to_string();
                    assert!(
                        code == "version_exists" || code == "version_in_progress",
                        "{backend:?}: racer {i}: {body}"
                    );
                }
                s => panic!("{backend:?}: racer {i} got {s}: {}", r.text().await.unwrap()),
            }
        }
        assert_eq!(winners.len(), 1, "{backend:?}: exactly one publish of 9.9 wins");
        let (object_key, sha256, size): (String, String, i64) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT f.object_key, f.sha256, f.size FROM files f JOIN product_versions v ON v.id = f.version_id
                 WHERE v.product_id = $1 AND v.version = '9.9'",
                &product.id
            ))
            .await
            .unwrap();
        let stored = satchel::storage::collect(t.app.storage.get(&object_key, None).await.unwrap().body)
            .await
            .unwrap();
        assert_eq!(size, 1 << 20);
        assert!(
            stored.iter().all(|b| *b == winners[0]),
            "{backend:?}: the stored bytes are the winner's"
        );
        assert_eq!(sha256, hex::encode(Sha256::digest(&stored)), "{backend:?}");
        // A buyer downloads exactly those bytes.
        let order = t.buy_paid("demo-templates", "racer@example.com").await;
        let link = order["items"][0]["download_url"].as_str().unwrap();
        let file = t.client.get(link).send().await.unwrap().headers()["location"]
            .to_str()
            .unwrap()
            .to_string();
        let body = t.client.get(&file).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(hex::encode(Sha256::digest(&body)), sha256, "{backend:?}");
        assert_eq!(claims(&t).await, 0, "{backend:?}: no claim outlives its publish");

        // A live claim (another publish storing its files) refuses the version, storing
        // nothing; a stale one (its publish died) is taken over.
        let now = satchel::ids::now();
        for (segment, at) in [("10.0", now), ("11.0", now - satchel::versions::CLAIM_STALE_SECS - 1)] {
            t.app
                .db
                .execute(sql!(
                    "INSERT INTO version_claims (product_id, segment, token, claimed_at) VALUES ($1, $2, 'vcl_elsewhere', $3)",
                    &product.id,
                    segment,
                    at
                ))
                .await
                .unwrap();
        }
        let r = post("10.0", 7).await.unwrap();
        assert_eq!(r.status(), 409, "{backend:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "version_in_progress");
        let key_10 = satchel::catalog::original_key(&product.seller_id, &product.id, "10.0", "kit.zip");
        assert!(
            t.app.storage.get(&key_10, None).await.is_err(),
            "{backend:?}: nothing stored"
        );
        assert_eq!(post("11.0", 7).await.unwrap().status(), 201, "{backend:?}");
        assert_eq!(claims(&t).await, 1, "{backend:?}: only the live claim is left");
    }
}

/// A publish whose client goes away mid-upload gives its claim and its bytes up: the same
/// version can be published again at once (not only after the stale limit).
#[tokio::test]
async fn an_abandoned_upload_gives_its_version_back() {
    use tokio::io::AsyncWriteExt;
    for backend in backends().await {
        let (t, key, product) = demo_templates(backend).await;
        // A multipart request by hand: the version, then the start of a file, then the
        // connection closes without the rest.
        let mut conn = tokio::net::TcpStream::connect(t.base_url.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "POST /api/v1/products/{}/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n",
            product.id
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let part = "--XyZ\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n12.0\r\n--XyZ\r\n\
                    Content-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
                    Content-Type: application/octet-stream\r\n\r\n";
        let data = vec![7u8; 64 * 1024];
        for chunk in [part.as_bytes(), &data] {
            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap();
            conn.write_all(chunk).await.unwrap();
            conn.write_all(b"\r\n").await.unwrap();
        }
        conn.flush().await.unwrap();
        // The server has read the version (its claim exists), then the client disappears.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while claims(&t).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: the version was never claimed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(conn);
        while claims(&t).await > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: the claim outlived its client"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let key_12 = satchel::catalog::original_key(&product.seller_id, &product.id, "12.0", "big.bin");
        assert!(
            t.app.storage.get(&key_12, None).await.is_err(),
            "{backend:?}: its bytes are gone"
        );
        let path = format!("/api/v1/products/{}/versions", product.id);
        let r = t
            .client
            .post(t.url(&path))
            .bearer_auth(&key)
            .multipart(form("12.0", "big.bin", b"whole".to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{backend:?}: published again at once");
    }
}

/// A publish whose handler never finishes (its future dropped: a panic unwinding, a shutdown
/// closing the connection) still gives its version up: dropping its guard removes the bytes
/// it stored and ends its claim, on a task of its own.
#[tokio::test]
async fn a_dropped_publish_gives_its_version_up() {
    for backend in backends().await {
        let (t, _, product) = demo_templates(backend).await;
        let claim = satchel::versions::claim_version(&t.app.db, &product.id, "13.0")
            .await
            .unwrap();
        let key = satchel::catalog::original_key(&product.seller_id, &product.id, "13.0", "x.bin");
        t.app
            .storage
            .put(
                &key,
                satchel::storage::bytes_stream("partial"),
                "application/octet-stream",
            )
            .await
            .unwrap();
        let refused = satchel::versions::claim_version(&t.app.db, &product.id, "13.0").await;
        assert_eq!(refused.unwrap_err().code(), "version_in_progress", "{backend:?}");
        let mut guard = satchel::versions::PublishGuard::new(&t.app);
        guard.claim = Some(claim);
        guard.stored.push(key.clone());
        drop(guard);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match satchel::versions::claim_version(&t.app.db, &product.id, "13.0").await {
                Ok(_) => break,
                Err(e) => assert_eq!(e.code(), "version_in_progress", "{backend:?}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: the claim outlived its guard"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            t.app.storage.get(&key, None).await.is_err(),
            "{backend:?}: its bytes are gone"
        );
    }
}

/// A product row carries its current version's first file by name (what a link naming no
/// file delivers, read by every download start), kept by the database's triggers through
/// every write: a new version, a file added to, renamed in or removed from the current
/// version, and not through writes to an older version.
#[tokio::test]
async fn the_product_row_follows_its_current_versions_first_file() {
    for backend in backends().await {
        let (t, _key, product) = demo_templates(backend).await;
        let db = &t.app.db;
        let first = || async {
            db.fetch_one::<(Option<String>, Option<i64>)>(sql!(
                "SELECT first_file_id, first_file_size FROM products WHERE id = $1",
                &product.id
            ))
            .await
            .unwrap()
        };
        let file = |version: &str, name: &str| {
            let (version, name) = (version.to_string(), name.to_string());
            async move {
                db.fetch_one::<(String, i64)>(sql!(
                    "SELECT id, size FROM files WHERE version_id = $1 AND name = $2",
                    &version,
                    &name
                ))
                .await
                .unwrap()
            }
        };
        // The demo's own version, set up by the migrations' and the seeding's writes.
        let seeded: (String, i64) = db
            .fetch_one(sql!(
                "SELECT f.id, f.size FROM files f JOIN products p ON p.current_version_id = f.version_id
                 WHERE p.id = $1 ORDER BY f.name LIMIT 1",
                &product.id
            ))
            .await
            .unwrap();
        assert_eq!(first().await, (Some(seeded.0), Some(seeded.1)), "{backend:?}");

        let new_file = |name: &str, size: i64| satchel::catalog::NewFile {
            name: name.into(),
            object_key: format!("k/{name}"),
            size,
            sha256: "0".repeat(64),
            content_type: "application/octet-stream".into(),
        };
        let v2 = satchel::catalog::insert_version(
            db,
            &product.id,
            "9.0.0",
            "",
            &[new_file("b.pdf", 20), new_file("a.zip", 10)],
        )
        .await
        .unwrap();
        let a = file(&v2.id, "a.zip").await;
        assert_eq!(
            first().await,
            (Some(a.0.clone()), Some(10)),
            "{backend:?}: the first by name, not by insertion"
        );

        // A file added to the current version that sorts first takes over; renamed past the
        // others it gives the place back; a resize follows; removing the first leaves the next.
        db.execute(sql!(
            "INSERT INTO files (id, product_id, version_id, name, object_key, size, sha256, content_type, created_at)
             VALUES ('fil_late', $1, $2, '0-readme.txt', 'k/r', 5, '', 'text/plain', 0)",
            &product.id,
            &v2.id
        ))
        .await
        .unwrap();
        assert_eq!(first().await, (Some("fil_late".into()), Some(5)), "{backend:?}");
        db.execute(sql!("UPDATE files SET name = 'z.txt' WHERE id = 'fil_late'"))
            .await
            .unwrap();
        assert_eq!(first().await, (Some(a.0.clone()), Some(10)), "{backend:?}");
        db.execute(sql!("UPDATE files SET size = 11 WHERE id = $1", &a.0))
            .await
            .unwrap();
        assert_eq!(first().await, (Some(a.0.clone()), Some(11)), "{backend:?}");
        db.execute(sql!("DELETE FROM files WHERE id = $1", &a.0)).await.unwrap();
        let b = file(&v2.id, "b.pdf").await;
        assert_eq!(first().await, (Some(b.0.clone()), Some(20)), "{backend:?}");

        // An older version's files are not what a link delivers.
        let v1 = product.current_version_id.clone().unwrap();
        db.execute(sql!(
            "INSERT INTO files (id, product_id, version_id, name, object_key, size, sha256, content_type, created_at)
             VALUES ('fil_old', $1, $2, '0-old.txt', 'k/o', 1, '', 'text/plain', 0)",
            &product.id,
            &v1
        ))
        .await
        .unwrap();
        assert_eq!(first().await, (Some(b.0.clone()), Some(20)), "{backend:?}");

        // Back to the older version (as a seller's rollback would write it), then a version
        // with no files yet: nothing to deliver.
        db.execute(sql!(
            "UPDATE products SET current_version_id = $1 WHERE id = $2",
            &v1,
            &product.id
        ))
        .await
        .unwrap();
        assert_eq!(first().await, (Some("fil_old".into()), Some(1)), "{backend:?}");
        satchel::catalog::insert_version(db, &product.id, "10.0.0", "", &[])
            .await
            .unwrap();
        assert_eq!(first().await, (None, None), "{backend:?}");
    }
}

/// A version with two files of one name is refused (its files would share one stored object,
/// and a link naming that file could mean either), and nothing of it is kept.
#[tokio::test]
async fn a_version_with_two_files_of_one_name_is_refused() {
    for backend in backends().await {
        let (t, key, product) = demo_templates(backend).await;
        let part = |bytes: &'static [u8]| {
            reqwest::multipart::Part::bytes(bytes)
                .file_name("kit.zip")
                .mime_str("application/zip")
                .unwrap()
        };
        let form = reqwest::multipart::Form::new()
            .text("version", "3.0.0")
            .part("file", part(b"one"))
            .part("file", part(b"two"));
        let r = t
            .client
            .post(t.url(&format!("/api/v1/products/{}/versions", product.id)))
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{backend:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "duplicate_file_name", "{backend:?}: {body}");
        let versions = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM product_versions WHERE product_id = $1 AND version = '3.0.0'",
                &product.id
            ))
            .await
            .unwrap();
        assert_eq!(versions, 0, "{backend:?}");
        let now = satchel::catalog::find_product(&t.app.db, "demo-templates")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.current_version_id, product.current_version_id, "{backend:?}");
        assert_eq!(claims(&t).await, 0, "{backend:?}: the version is free again");
    }
}
