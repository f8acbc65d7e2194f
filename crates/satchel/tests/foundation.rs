//! Foundation: the database layer and job queue on SQLite and PostgreSQL, storage on the
//! local directory and a real S3-compatible server, and the HTTP contract.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use satchel::db::{Backend, Exec};
use satchel::jobs::{self, Job, Registry, Worker};
use satchel::sql;
use satchel::storage::{self, ByteStream, Storage};
use satchel::testing::{backends, S3Server, TestApp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

async fn seller(t: &TestApp, email: &str) -> String {
    let (s, _) = satchel::accounts::create_seller_account(&t.app.db, email, "password123", "Shop", "seller")
        .await
        .unwrap();
    s.id
}

fn product(title: &str, slug: &str) -> satchel::catalog::NewProduct {
    serde_json::from_value(serde_json::json!({
        "title": title, "slug": slug, "price": 1500, "currency": "usd", "status": "published",
        "summary": format!("{title} summary"), "tags": ["design", "Figma Kits"],
    }))
    .unwrap()
}

#[tokio::test]
async fn catalog_pages_and_searches_on_both_backends() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let sid = seller(&t, "a@example.com").await;
        for i in 0..25 {
            satchel::catalog::create_product(&t.app.db, &sid, product(&format!("Figma kit {i}"), &format!("kit-{i}")))
                .await
                .unwrap();
        }
        satchel::catalog::create_product(&t.app.db, &sid, product("Notion planner", "planner"))
            .await
            .unwrap();
        let mut draft = product("Secret draft", "draft-one");
        draft.status = "draft".into();
        satchel::catalog::create_product(&t.app.db, &sid, draft).await.unwrap();

        // Paging: 26 published products, pages of 10, stable and complete.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = t.url("/api/v1/products?limit=10");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: serde_json::Value = t.client.get(url).send().await.unwrap().json().await.unwrap();
            for item in page["items"].as_array().unwrap() {
                seen.push(item["slug"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 26, "{backend:?}: {seen:?}");
        assert!(!seen.contains(&"draft-one".to_string()), "drafts are not public");
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), 26);

        // Full-text search, prefix match, and filters.
        let r: serde_json::Value = t
            .client
            .get(t.url("/api/v1/products?q=notio"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let slugs: Vec<_> = r["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["slug"].as_str().unwrap())
            .collect();
        assert_eq!(slugs, vec!["planner"], "{backend:?}");
        let r: serde_json::Value = t
            .client
            .get(t.url("/api/v1/products?q=secret"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r["items"].as_array().unwrap().is_empty(), "search never reveals drafts");
        let r: serde_json::Value = t
            .client
            .get(t.url("/api/v1/products?tag=figma-kits&limit=100"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["items"].as_array().unwrap().len(), 26);
        let r: serde_json::Value = t
            .client
            .get(t.url("/api/v1/products?q=%22*)%20OR%201%3D1--"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r["items"].is_array(), "hostile search text is just words");

        // By slug and by id; drafts are 404.
        let one: serde_json::Value = t
            .client
            .get(t.url("/api/v1/products/planner"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(one["price"], 1500);
        assert_eq!(one["currency"], "USD");
        let by_id = t
            .client
            .get(t.url(&format!("/api/v1/products/{}", one["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(by_id.status(), 200);
        let missing = t.client.get(t.url("/api/v1/products/draft-one")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");

        // Bad parameters are 400s in the error shape, never 500s.
        for bad in [
            "/api/v1/products?limit=0",
            "/api/v1/products?limit=abc",
            "/api/v1/products?cursor=zzz",
        ] {
            let r = t.client.get(t.url(bad)).send().await.unwrap();
            assert_eq!(r.status(), 400, "{bad}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string());
        }

        // Duplicate slug: 409 naming the field, nothing written.
        let before = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM products")).await.unwrap();
        let err = satchel::catalog::create_product(&t.app.db, &sid, product("Again", "planner"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 409);
        assert_eq!(err.code(), "slug_taken");
        let mut bad = product("Bad", "bad");
        bad.currency = "XYZ".into();
        assert_eq!(
            satchel::catalog::create_product(&t.app.db, &sid, bad)
                .await
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM products")).await.unwrap(),
            before
        );
    }
}

#[tokio::test]
async fn transactions_roll_back_and_sums_decode_on_both_backends() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let sid = seller(&t, "b@example.com").await;
        {
            let tx = t.app.db.begin().await.unwrap();
            satchel::catalog::create_product(&tx, &sid, product("Gone", "gone"))
                .await
                .unwrap();
            // dropped without commit
        }
        assert!(
            satchel::catalog::find_product(&t.app.db, "gone")
                .await
                .unwrap()
                .is_none(),
            "{backend:?}"
        );
        let tx = t.app.db.begin().await.unwrap();
        satchel::catalog::create_product(&tx, &sid, product("Kept", "kept"))
            .await
            .unwrap();
        satchel::catalog::create_product(&tx, &sid, product("Kept 2", "kept-2"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let sum = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT CAST(SUM(price) AS BIGINT) FROM products WHERE seller_id = $1",
                &sid
            ))
            .await
            .unwrap();
        assert_eq!(sum, 3000);
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    n: i64,
}
impl Job for Record {
    const KIND: &'static str = "test.record";
}

#[derive(Serialize, Deserialize)]
struct AlwaysFails;
impl Job for AlwaysFails {
    const KIND: &'static str = "test.fails";
    const MAX_ATTEMPTS: i64 = 3;
}

type Runs = Arc<Mutex<HashMap<i64, usize>>>;

fn registry() -> Arc<Registry<Runs>> {
    let mut r = Registry::<Runs>::default();
    r.register(|runs: Runs, job: Record| async move {
        tokio::task::yield_now().await;
        *runs.lock().unwrap().entry(job.n).or_default() += 1;
        Ok(())
    });
    r.register(|_: Runs, _: AlwaysFails| async move { anyhow::bail!("boom") });
    Arc::new(r)
}

fn worker(t: &TestApp, id: &str, runs: &Runs, reg: &Arc<Registry<Runs>>) -> Worker<Runs> {
    Worker {
        db: t.app.db.clone(),
        registry: reg.clone(),
        ctx: runs.clone(),
        id: id.into(),
        lease_secs: 60,
        wake: Arc::default(),
    }
}

#[tokio::test]
async fn two_workers_never_run_the_same_job() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let tx = t.app.db.begin().await.unwrap();
        for n in 0..60 {
            jobs::enqueue(&tx, &Record { n }).await.unwrap();
        }
        tx.commit().await.unwrap();
        let runs: Runs = Arc::default();
        let reg = registry();
        let (a, b) = (worker(&t, "a", &runs, &reg), worker(&t, "b", &runs, &reg));
        let (ra, rb) = tokio::join!(a.drain(), b.drain());
        assert_eq!(ra.unwrap() + rb.unwrap(), 60, "{backend:?}");
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs.len(), 60);
        assert!(runs.values().all(|&c| c == 1), "{backend:?}: a job ran twice: {runs:?}");
        let done = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM jobs WHERE status = 'done'"))
            .await
            .unwrap();
        assert_eq!(done, 60);
    }
}

#[tokio::test]
async fn uncommitted_jobs_do_not_exist_and_a_dead_workers_job_runs_again() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        {
            let tx = t.app.db.begin().await.unwrap();
            jobs::enqueue(&tx, &Record { n: 1 }).await.unwrap();
        } // rolled back: the outbox promise
        assert_eq!(t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM jobs")).await.unwrap(), 0);

        jobs::enqueue(&t.app.db, &Record { n: 7 }).await.unwrap();
        // Worker "crashed" claims with a lease that is already over, then never finishes.
        let claimed = jobs::claim(&t.app.db, "crashed", -1).await.unwrap().expect("claimed");
        assert_eq!(claimed.kind, "test.record");
        let runs: Runs = Arc::default();
        let reg = registry();
        let survivor = worker(&t, "survivor", &runs, &reg);
        assert_eq!(
            survivor.drain().await.unwrap(),
            1,
            "{backend:?}: expired lease is reclaimed"
        );
        assert_eq!(runs.lock().unwrap().get(&7), Some(&1));
        // A live lease is not stolen.
        jobs::enqueue(&t.app.db, &Record { n: 8 }).await.unwrap();
        jobs::claim(&t.app.db, "busy", 600).await.unwrap().expect("claimed");
        assert_eq!(survivor.drain().await.unwrap(), 0);
        // Graceful shutdown gives it back.
        assert_eq!(jobs::release_all(&t.app.db, "busy").await.unwrap(), 1);
        assert_eq!(survivor.drain().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn failing_jobs_back_off_then_die() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let id = jobs::enqueue(&t.app.db, &AlwaysFails).await.unwrap();
        let runs: Runs = Arc::default();
        let reg = registry();
        let w = worker(&t, "w", &runs, &reg);
        let mut delays = Vec::new();
        for attempt in 1..=3 {
            let before = satchel::ids::now();
            assert!(w.run_once().await.unwrap(), "attempt {attempt}");
            let (status, run_at, err): (String, i64, Option<String>) = t
                .app
                .db
                .fetch_one(sql!("SELECT status, run_at, last_error FROM jobs WHERE id = $1", &id))
                .await
                .unwrap();
            assert!(err.unwrap().contains("boom"));
            if attempt < 3 {
                assert_eq!(status, "queued");
                delays.push(run_at - before);
                assert!(!w.run_once().await.unwrap(), "not due yet: backoff holds it");
                t.app
                    .db
                    .execute(sql!("UPDATE jobs SET run_at = 0 WHERE id = $1", &id))
                    .await
                    .unwrap();
            } else {
                assert_eq!(status, "dead", "{backend:?}");
            }
        }
        assert!(delays[1] > delays[0], "exponential backoff: {delays:?}");
    }
}

fn chunked(data: &[u8], chunk: usize) -> ByteStream {
    let parts: Vec<std::io::Result<Bytes>> = data.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures::stream::iter(parts))
}

async fn exercise_storage(s: &dyn Storage) {
    // > 8 MiB so S3 goes through multipart; written in odd-sized chunks.
    let data: Vec<u8> = (0..9 * 1024 * 1024 + 123)
        .map(|i: usize| (i * 31 % 251) as u8)
        .collect();
    let put = s
        .put(
            "sel_1/prd_1/1.0/original/big file.bin",
            chunked(&data, 300_001),
            "application/octet-stream",
        )
        .await
        .unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(put.sha256, hex::encode(Sha256::digest(&data)));
    assert_eq!(
        s.head("sel_1/prd_1/1.0/original/big file.bin").await.unwrap().size,
        data.len() as u64
    );
    let whole = storage::collect(s.get("sel_1/prd_1/1.0/original/big file.bin", None).await.unwrap().body)
        .await
        .unwrap();
    assert!(whole == data, "whole object differs");
    let part = s
        .get("sel_1/prd_1/1.0/original/big file.bin", Some(1000..5000))
        .await
        .unwrap();
    assert_eq!(
        part.meta.size,
        data.len() as u64,
        "meta reports the whole object's size"
    );
    assert_eq!(storage::collect(part.body).await.unwrap(), &data[1000..5000]);
    let tail = s
        .get(
            "sel_1/prd_1/1.0/original/big file.bin",
            Some(data.len() as u64 - 10..data.len() as u64),
        )
        .await
        .unwrap();
    assert_eq!(storage::collect(tail.body).await.unwrap(), &data[data.len() - 10..]);
    assert!(matches!(
        s.get("missing/key", None).await,
        Err(storage::StorageError::NotFound(_))
    ));
    assert!(matches!(
        s.put("../escape", storage::bytes_stream("x"), "text/plain").await,
        Err(storage::StorageError::InvalidKey(_))
    ));

    // Multipart by hand (the resumable-upload path).
    let id = s.multipart_start("up/k.bin").await.unwrap();
    let p1 = vec![1u8; storage::MIN_PART_SIZE as usize];
    let p2 = vec![2u8; 1000];
    let a = s
        .multipart_put_part("up/k.bin", &id, 1, Bytes::from(p1.clone()))
        .await
        .unwrap();
    let b = s
        .multipart_put_part("up/k.bin", &id, 2, Bytes::from(p2.clone()))
        .await
        .unwrap();
    s.multipart_complete("up/k.bin", &id, &[b, a]).await.unwrap();
    let got = storage::collect(s.get("up/k.bin", None).await.unwrap().body)
        .await
        .unwrap();
    assert_eq!(got.len(), p1.len() + p2.len());
    assert!(
        got[..p1.len()] == p1[..] && got[p1.len()..] == p2[..],
        "parts assembled out of order"
    );

    s.delete("up/k.bin").await.unwrap();
    assert!(matches!(
        s.head("up/k.bin").await,
        Err(storage::StorageError::NotFound(_))
    ));
    s.delete("up/k.bin").await.unwrap();
    s.check().await.unwrap();
}

#[tokio::test]
async fn local_storage_streams_ranges_and_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage::LocalStorage::new(dir.path().join("files")).unwrap();
    exercise_storage(&s).await;
    assert!(s.presign_get("x", std::time::Duration::from_secs(60), None).is_none());
}

#[tokio::test]
async fn s3_storage_against_a_real_s3_server_checks_signatures_and_expiry() {
    let Some(server) = S3Server::start().await else { return };
    let s3 = storage::S3Storage::new(
        &server.endpoint,
        "satchel",
        "us-east-1",
        true,
        &server.access_key,
        &server.secret_key,
    )
    .unwrap();
    s3.ensure_bucket().await.unwrap();
    exercise_storage(&s3).await;

    s3.put(
        "sel_1/book.pdf",
        storage::bytes_stream(&b"%PDF-1.7 hello"[..]),
        "application/pdf",
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let cd = "attachment; filename=\"book.pdf\"; filename*=UTF-8''b%C3%B6ok.pdf";
    let url = s3
        .presign_get("sel_1/book.pdf", std::time::Duration::from_secs(300), Some(cd))
        .unwrap();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-disposition").unwrap().to_str().unwrap(), cd);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"%PDF-1.7 hello");
    // Ranged GET on a presigned URL.
    let r = http.get(&url).header("range", "bytes=0-3").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"%PDF");

    // A tampered signature and an expired URL are refused by the server.
    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let expired = s3.presign_get_signed_at("sel_1/book.pdf", std::time::Duration::from_secs(60), past);
    assert_eq!(http.get(&expired).send().await.unwrap().status(), 403);

    // Presigned PUT lets a client upload directly.
    let put_url = s3
        .presign_put("sel_1/direct.txt", std::time::Duration::from_secs(300))
        .unwrap();
    assert!(http
        .put(&put_url)
        .body("direct")
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    assert_eq!(
        storage::collect(s3.get("sel_1/direct.txt", None).await.unwrap().body)
            .await
            .unwrap(),
        b"direct"
    );

    // Wrong credentials fail loudly, not silently.
    let wrong = storage::S3Storage::new(
        &server.endpoint,
        "satchel",
        "us-east-1",
        true,
        &server.access_key,
        "nope",
    )
    .unwrap();
    assert!(wrong.check().await.is_err());
}

#[tokio::test]
async fn app_runs_on_s3_storage() {
    let Some(server) = S3Server::start().await else { return };
    let s3 = storage::S3Storage::new(
        &server.endpoint,
        "satchel",
        "us-east-1",
        true,
        &server.access_key,
        &server.secret_key,
    )
    .unwrap();
    s3.ensure_bucket().await.unwrap();
    for backend in backends().await {
        let t = TestApp::start_with(backend, |cfg| server.configure(cfg)).await;
        let r: serde_json::Value = t
            .client
            .get(t.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["storage"]["backend"], "s3");
        assert_eq!(r["status"], "ready");
    }
}

#[tokio::test]
async fn http_contract_health_ready_metrics_errors_and_spec() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let r = t.client.get(t.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-request-id").is_some());
        let ready: serde_json::Value = t
            .client
            .get(t.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["status"], "ready");
        assert_eq!(
            ready["database"]["backend"],
            if backend == Backend::Sqlite {
                "sqlite"
            } else {
                "postgres"
            }
        );

        let r = t
            .client
            .get(t.url("/no/such/thing"))
            .header("x-request-id", "abc-123")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(
            r.headers().get("x-request-id").unwrap(),
            "abc-123",
            "a sane incoming request id is kept"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");

        jobs::enqueue(&t.app.db, &Record { n: 1 }).await.unwrap();
        let m = t
            .client
            .get(t.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.contains("satchel_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("satchel_http_request_duration_seconds_bucket{route=\"/healthz\""),
            "{m}"
        );
        assert!(m.contains("satchel_job_queue_depth 1"), "{m}");

        let spec: serde_json::Value = t
            .client
            .get(t.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for path in [
            "/api/v1/products",
            "/api/v1/products/{id}",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(spec["paths"][path].is_object(), "spec lacks {path}");
        }
    }
}

#[tokio::test]
async fn readiness_reports_a_broken_storage() {
    let t = TestApp::start(Backend::Sqlite).await;
    // Replace the storage root with a file: the check must fail, and /readyz says 503.
    let root = t.data_dir.join("files");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    let r = t.client.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["storage"]["ok"], false);
    assert_eq!(body["database"]["ok"], true);
    let _ = t
        .client
        .get(t.url("/healthz"))
        .send()
        .await
        .unwrap()
        .bytes_stream()
        .next()
        .await;
}

#[tokio::test]
async fn scheduler_enqueues_once_across_instances_and_housekeeping_purges() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        // Two "instances" tick at once: the periodic job is enqueued exactly once.
        let (a, b) = tokio::join!(satchel::scheduler::tick(&t.app), satchel::scheduler::tick(&t.app));
        let enqueued = a.unwrap() + b.unwrap();
        let kinds = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(DISTINCT kind) FROM jobs"))
            .await
            .unwrap();
        let total = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM jobs")).await.unwrap();
        assert!(enqueued >= 1, "{backend:?}");
        assert_eq!(
            (total, kinds),
            (enqueued as i64, enqueued as i64),
            "{backend:?}: each schedule enqueued exactly once"
        );
        let per_kind = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM jobs WHERE kind = 'housekeeping'"))
            .await
            .unwrap();
        assert_eq!(per_kind, 1);
        assert_eq!(
            satchel::scheduler::tick(&t.app).await.unwrap(),
            0,
            "not due again within the hour"
        );
        // An old finished job and an expired session are purged; a fresh done job stays.
        jobs::enqueue(&t.app.db, &Record { n: 1 }).await.unwrap();
        t.app
            .db
            .execute(sql!(
                "UPDATE jobs SET status = 'done', updated_at = 1 WHERE kind = 'test.record'"
            ))
            .await
            .unwrap();
        let sid = seller(&t, "h@example.com").await;
        let uid: (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM users WHERE seller_id = $1", &sid))
            .await
            .unwrap();
        t.app
            .db
            .execute(sql!(
                "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES ('h', $1, 'c', 1, 2)",
                &uid.0
            ))
            .await
            .unwrap();
        assert_eq!(t.drain_jobs().await, 3, "housekeeping, commission release, expiry");
        assert_eq!(
            t.app
                .db
                .fetch_i64(sql!("SELECT COUNT(*) FROM jobs WHERE kind = 'test.record'"))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM sessions")).await.unwrap(),
            0
        );
        let hk = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM jobs WHERE kind = 'housekeeping' AND status = 'done'"
            ))
            .await
            .unwrap();
        assert_eq!(hk, 1, "the housekeeping job itself is recent and kept");
    }
}
