//! Delivery with real clients and real servers: curl resuming an interrupted download,
//! aria2c's segmented download on a grant of one, the three delivery modes (stream,
//! x-accel behind a real nginx, presign against an S3-compatible server), the continuation
//! rule, and bad tokens and ranges (never a 5xx, nothing counted).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use satchel::catalog::NewFile;
use satchel::config::DeliveryMode;
use satchel::db::Exec;
use satchel::sql;
use satchel::storage::bytes_stream;
use satchel::testing::{add_free_product, backends, free_port, NginxServer, S3Server, TestApp};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Deterministic, incompressible bytes (xorshift), so a wrong offset can never look right.
fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Stores `body` and sells it as a free product limited to `max_downloads`; returns the
/// buyer's download link.
async fn sell(t: &TestApp, slug: &str, name: &str, body: &[u8], max_downloads: i64) -> String {
    let key = format!("test/{slug}/{name}");
    let put = t
        .app
        .storage
        .put(&key, bytes_stream(body.to_vec()), "application/octet-stream")
        .await
        .unwrap();
    let file = NewFile {
        name: name.into(),
        object_key: key,
        size: i64::try_from(put.size).unwrap(),
        sha256: put.sha256,
        content_type: "application/x-satchel-test".into(),
    };
    add_free_product(&t.app, slug, max_downloads, "none", &[file])
        .await
        .unwrap();
    let order = t.buy_paid(slug, "buyer@example.com").await;
    assert_eq!(order["status"], "paid", "{order}");
    order["items"][0]["download_url"].as_str().unwrap().to_string()
}

async fn remaining(t: &TestApp) -> i64 {
    t.app
        .db
        .fetch_i64(sql!(
            "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM download_grants"
        ))
        .await
        .unwrap()
}

/// Counted downloads logged (`started` events).
async fn events(t: &TestApp) -> i64 {
    t.app
        .db
        .fetch_i64(sql!("SELECT COUNT(*) FROM download_events WHERE outcome = 'started'"))
        .await
        .unwrap()
}

/// The id of the store's one download grant.
async fn only_grant(t: &TestApp) -> String {
    let (gid,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT id FROM download_grants"))
        .await
        .unwrap();
    gid
}

/// The outcomes on the one grant's list of events, newest first (the list checked whole).
async fn outcomes(t: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for id in t.event_list(&only_grant(t).await).await {
        let (o,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT outcome FROM download_events WHERE id = $1", &id))
            .await
            .unwrap();
        out.push(o);
    }
    out
}

/// Continuations logged (`resumed` events: nothing counted) and the bytes they carried.
async fn resumed(t: &TestApp) -> (i64, i64) {
    t.app
        .db
        .fetch_one(sql!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM download_events WHERE outcome = 'resumed'"
        ))
        .await
        .unwrap()
}

/// Redeems a link once (counting one download); returns the delivery URL.
async fn redeem(t: &TestApp, link: &str) -> String {
    let r = t.client.get(link).send().await.unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Refunds every order (free orders have no amount to refund, so the status is set the way
/// a refund leaves it: order refunded, grants voided).
/// Requests served so far on `route` with `status` (from the Prometheus counters).
fn requests(t: &TestApp, route: &str, status: u16) -> u64 {
    let needle = format!("route=\"{route}\",status=\"{status}\"}} ");
    t.app
        .metrics
        .render(0)
        .lines()
        .filter_map(|l| l.split_once(&needle).map(|(_, n)| n.parse::<u64>().unwrap()))
        .sum()
}

async fn refund_all(t: &TestApp) {
    t.app
        .db
        .execute(sql!("UPDATE orders SET status = 'refunded'"))
        .await
        .unwrap();
    t.app
        .db
        .execute(sql!("UPDATE download_grants SET status = 'revoked'"))
        .await
        .unwrap();
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        satchel::testing::skip(&format!("{name} is not installed"));
    }
    ok
}

/// Waits until `path` holds at least `n` bytes (the client is still running), then kills it.
fn interrupt_at(child: std::process::Child, path: &Path, n: u64) {
    tokio::task::block_in_place(|| interrupt_at_blocking(child, path, n));
}

fn interrupt_at_blocking(mut child: std::process::Child, path: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len >= n {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("curl ended ({status}) before it had {n} bytes (it had {len}); is --limit-rate honoured?");
        }
        assert!(Instant::now() < deadline, "curl did not reach {n} bytes");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs a client to completion without stalling the server sharing this runtime.
fn run(mut c: Command) -> std::process::Output {
    tokio::task::block_in_place(|| c.output().unwrap())
}

fn curl(args: &[&str]) -> Command {
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "-f"]).args(args).stdout(Stdio::null());
    c
}

// Multi-threaded: the external clients are awaited with blocking calls (in `block_in_place`)
// while the server keeps serving on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_resumes_an_interrupted_download_without_spending_a_second_one() {
    if !tool("curl") {
        return;
    }
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        // Large beside what curl takes in one burst before `--limit-rate` holds it back (about
        // 9 MB on loopback: the socket buffers), so no run finishes before it is cut.
        let body = bytes_of(64 << 20, 7);
        let link = sell(&t, "resume", "Resumé 1.bin", &body, 3).await;
        let url = redeem(&t, &link).await;
        assert_eq!(remaining(&t).await, 2);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let o = out.to_str().unwrap();

        // Interrupted once on the delivery URL...
        let child = curl(&["--limit-rate", "256K", "-o", o, &url]).spawn().unwrap();
        interrupt_at(child, &out, 1 << 20);
        // ...resumed there with `-C -` and interrupted again...
        let child = curl(&["--limit-rate", "256K", "-C", "-", "-o", o, &url])
            .spawn()
            .unwrap();
        interrupt_at(child, &out, 2 << 20);
        let partial = std::fs::metadata(&out).unwrap().len();
        assert!(partial < body.len() as u64, "the second run was cut short");
        // ...and finished by resuming from the original download link (a continuation).
        let st = run(curl(&["-L", "-C", "-", "-o", o, &link]));
        assert!(
            st.status.success(),
            "{backend:?}: curl -C - on the download link: {st:?}"
        );

        assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&body), "{backend:?}");
        assert_eq!(remaining(&t).await, 2, "{backend:?}: resumes never count");
        assert_eq!(events(&t).await, 1, "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2c_segmented_download_completes_on_a_grant_of_one() {
    if !tool("aria2c") {
        return;
    }
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let body = bytes_of(64 << 20, 11);
        let link = sell(&t, "big", "big.bin", &body, 1).await;
        let dir = tempfile::tempdir().unwrap();
        let mut aria = Command::new("aria2c");
        aria.args([
            "-x8",
            "-s8",
            "-k1M",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--max-tries=1",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
            "-d",
        ])
        .arg(dir.path())
        .args(["-o", "big.bin", &link]);
        let out = run(aria);
        assert!(
            out.status.success(),
            "{backend:?}: aria2c failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(dir.path().join("big.bin")).unwrap();
        assert_eq!(sha(&got), sha(&body), "{backend:?}");
        // aria2c goes back to the download link once per connection, each with a Range past
        // byte 0: every one of them got a delivery URL (none was refused), and the segments
        // really came over several connections.
        let redirected = requests(&t, "/api/v1/downloads/{token}", 302);
        assert!(redirected >= 4, "{backend:?}: {redirected} connections");
        assert_eq!(requests(&t, "/api/v1/downloads/{token}", 403), 0, "{backend:?}");
        assert!(requests(&t, "/files/{token}/{name}", 206) >= 4, "{backend:?}");
        assert_eq!(remaining(&t).await, 0, "{backend:?}");
        assert_eq!(
            events(&t).await,
            1,
            "{backend:?}: one download, however many connections"
        );
        // Its connections are logged as one continuation, on both databases: on PostgreSQL
        // the connections' inserts arrive together and take turns (an advisory lock), so
        // none misses the line another has not yet committed.
        assert_eq!(
            resumed(&t).await.0,
            1,
            "{backend:?}: one resumed line for {redirected} connections"
        );
        // Both are on the grant's list, the download first (the continuations came after).
        assert_eq!(outcomes(&t).await, ["resumed", "started"], "{backend:?}");
        // The grant is spent: a fresh download (no range) is refused.
        let r = t.client.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
}

#[tokio::test]
async fn continuation_needs_a_range_past_zero_the_same_prefix_and_the_window() {
    for backend in backends().await {
        let t = TestApp::start_with(backend, |c| c.server.trust_forwarded_for = true).await;
        let body = bytes_of(100_000, 3);
        let link = sell(&t, "cont", "c.bin", &body, 5).await;
        let get = |range: Option<&str>, ip: &str| {
            let mut r = t.client.get(&link).header("x-forwarded-for", ip);
            if let Some(range) = range {
                r = r.header("range", range);
            }
            r.send()
        };
        assert_eq!(get(None, "203.0.113.5").await.unwrap().status(), 302);
        assert_eq!(remaining(&t).await, 4);
        // Resume from the same /24: not counted, and the URL serves the rest.
        let r = get(Some("bytes=5000-"), "203.0.113.77").await.unwrap();
        assert_eq!(r.status(), 302);
        let url = r.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(remaining(&t).await, 4, "{backend:?}");
        assert_eq!(
            resumed(&t).await,
            (1, 95_000),
            "{backend:?}: logged, with the bytes from 5000 on"
        );
        let part = t.client.get(&url).header("range", "bytes=5000-").send().await.unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap().as_ref(), &body[5000..]);
        // Another continuation from that network within the minute (a second connection of
        // a segmented download): served, not counted, and not logged a second time.
        assert_eq!(get(Some("bytes=50000-"), "203.0.113.9").await.unwrap().status(), 302);
        assert_eq!(remaining(&t).await, 4, "{backend:?}");
        assert_eq!(resumed(&t).await, (1, 95_000), "{backend:?}: one line per minute");
        // A start at byte 0, another network, or an unsatisfiable range: a new download.
        assert_eq!(get(Some("bytes=0-"), "203.0.113.5").await.unwrap().status(), 302);
        assert_eq!(remaining(&t).await, 3, "{backend:?}: range from 0 counts");
        assert_eq!(get(Some("bytes=5000-"), "198.51.100.1").await.unwrap().status(), 302);
        assert_eq!(remaining(&t).await, 2, "{backend:?}: another prefix counts");
        assert_eq!(get(Some("bytes=999999-"), "203.0.113.5").await.unwrap().status(), 302);
        assert_eq!(remaining(&t).await, 1, "{backend:?}: past the end is no resume");
        // Outside the delivery window of every counted start: counts.
        t.app
            .db
            .execute(sql!("UPDATE download_events SET at = at - 100000"))
            .await
            .unwrap();
        assert_eq!(get(Some("bytes=5000-"), "203.0.113.5").await.unwrap().status(), 302);
        assert_eq!(remaining(&t).await, 0, "{backend:?}: window over");
        // Spent grant: a continuation within the window still works...
        assert_eq!(get(Some("bytes=10-"), "203.0.113.5").await.unwrap().status(), 302);
        assert_eq!(get(None, "203.0.113.5").await.unwrap().status(), 403);
        // ...until a refund: then nothing does.
        refund_all(&t).await;
        let r = get(Some("bytes=10-"), "203.0.113.5").await.unwrap();
        assert_eq!(r.status(), 403, "{backend:?}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "access_revoked");
        assert_eq!(events(&t).await, 5, "{backend:?}");
        // The two continuations (5000-, then 10- on the spent grant); the refused one is not.
        assert_eq!(resumed(&t).await.0, 2, "{backend:?}");
        // All seven on the grant's list, newest first, in the order they happened.
        assert_eq!(
            outcomes(&t).await,
            ["resumed", "started", "started", "started", "started", "resumed", "started"],
            "{backend:?}"
        );
    }
}

/// Starts (settled by the batcher) and continuations (logged on the pool) of one grant at
/// once, from many networks: both move the head of the grant's list of events, and the list
/// ends up holding every one of them once.
#[tokio::test]
async fn starts_and_continuations_racing_on_one_grant_keep_its_list_whole() {
    for backend in backends().await {
        let t = TestApp::start_with(backend, |c| {
            c.server.trust_forwarded_for = true;
            // Sixty networks on one grant is what detection is for: off, so nothing refuses.
            c.abuse.soft_prefixes = 0;
            c.abuse.suspend_prefixes = 0;
            c.abuse.soft_starts_per_hour = 0;
            c.abuse.suspend_starts_per_hour = 0;
        })
        .await;
        let body = bytes_of(10_000, 9);
        let link = sell(&t, "race", "r.bin", &body, 1000).await;
        let get = |ip: String, range: Option<&'static str>| {
            let mut r = t.client.get(&link).header("x-forwarded-for", ip);
            if let Some(range) = range {
                r = r.header("range", range);
            }
            r.send()
        };
        // Thirty downloads started, one per network...
        for i in 0..30 {
            assert_eq!(get(format!("10.1.{i}.1"), None).await.unwrap().status(), 302);
        }
        // ...then, all at once, each of them resumed and thirty new ones started elsewhere.
        let mut tasks = Vec::new();
        for i in 0..30 {
            tasks.push(get(format!("10.1.{i}.2"), Some("bytes=100-")));
            tasks.push(get(format!("10.2.{i}.1"), None));
        }
        for r in futures::future::join_all(tasks).await {
            assert_eq!(r.unwrap().status(), 302, "{backend:?}");
        }
        assert_eq!(
            remaining(&t).await,
            1000 - 60,
            "{backend:?}: continuations count nothing"
        );
        assert_eq!(resumed(&t).await.0, 30, "{backend:?}: one line per network");
        let list = outcomes(&t).await;
        assert_eq!(list.len(), 90, "{backend:?}: every event on the list once");
        assert_eq!(list.iter().filter(|o| *o == "resumed").count(), 30, "{backend:?}");
    }
}

/// A store upgraded from before migration 0016 (events indexed by grant, no lists): the
/// migration links each grant's existing events newest first, and downloads after the
/// upgrade go on from the head it set.
#[tokio::test]
async fn upgrading_links_each_grants_existing_events_into_its_list() {
    for backend in backends().await {
        let t = TestApp::start_with(backend, |c| c.server.trust_forwarded_for = true).await;
        let body = bytes_of(10_000, 5);
        let link = sell(&t, "upg", "u.bin", &body, 10).await;
        let get = |range: Option<&str>| {
            let mut r = t.client.get(&link).header("x-forwarded-for", "203.0.113.5");
            if let Some(range) = range {
                r = r.header("range", range);
            }
            r.send()
        };
        for range in [None, Some("bytes=100-"), None, None] {
            assert_eq!(get(range).await.unwrap().status(), 302);
        }
        // Times a second apart, so the order the migration restores is the real one.
        let ids: Vec<(String,)> = t
            .app
            .db
            .fetch_all(sql!("SELECT id FROM download_events ORDER BY at, id"))
            .await
            .unwrap();
        assert_eq!(ids.len(), 4, "{backend:?}: three starts and a continuation");
        for (i, (id,)) in ids.iter().enumerate() {
            let at = satchel::ids::now() - 100 + i64::try_from(i).unwrap();
            t.app
                .db
                .execute(sql!("UPDATE download_events SET at = $1 WHERE id = $2", at, id))
                .await
                .unwrap();
        }
        let newest_first: Vec<String> = ids.iter().rev().map(|(id,)| id.clone()).collect();
        // Back to the shape before 0016, with the events of that time, then upgrade.
        for stmt in [
            "ALTER TABLE download_events DROP COLUMN prev_id",
            "ALTER TABLE download_grants DROP COLUMN last_event_id",
            "ALTER TABLE download_grants DROP COLUMN prior_event_id",
            "CREATE INDEX download_events_grant ON download_events (grant_id, at)",
            "DELETE FROM _sqlx_migrations WHERE version = 16",
        ] {
            t.app.db.execute(sql!(stmt)).await.unwrap();
        }
        t.app.db.migrate().await.unwrap();
        let gid = only_grant(&t).await;
        assert_eq!(t.event_list(&gid).await, newest_first, "{backend:?}");
        // The next start goes on the head of that list.
        assert_eq!(get(None).await.unwrap().status(), 302);
        let list = t.event_list(&gid).await;
        assert_eq!(list.len(), 5, "{backend:?}");
        assert_eq!(list[1..], newest_first[..], "{backend:?}");
        assert_eq!(
            outcomes(&t).await,
            ["started", "started", "started", "resumed", "started"],
            "{backend:?}"
        );
    }
}

/// A start counts only while the grant's order is paid or partially refunded, whatever code
/// changes the order (a refund, a dispute and its outcome, an operator's SQL): the decrement
/// reads the grant's `order_paid`, which the database's triggers keep equal to the order's
/// state. Checked through every order status and back, for a grant inserted while its order
/// is not paid, and for grants that existed before the column (the migration's backfill).
#[tokio::test]
async fn every_start_rechecks_the_orders_state_whatever_changed_it() {
    for backend in backends().await {
        // Eleven starts within the hour from one address: past the velocity thresholds.
        let t = TestApp::start_with(backend, |c| {
            c.abuse.soft_starts_per_hour = 0;
            c.abuse.suspend_starts_per_hour = 0;
        })
        .await;
        let link = sell(&t, "paid-check", "p.bin", &bytes_of(1000, 9), 100).await;
        redeem(&t, &link).await;
        let set = |status: &'static str| {
            let db = t.app.db.clone();
            async move {
                db.execute(sql!("UPDATE orders SET status = $1", status)).await.unwrap();
            }
        };
        let code = |link: String| {
            let c = t.client.clone();
            async move {
                let r = c.get(&link).header("accept", "application/json").send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, body["error"]["code"].as_str().unwrap_or("").to_string())
            }
        };
        let mut counted = 1;
        for status in ["disputed", "refunded", "pending", "failed", "expired"] {
            set(status).await;
            assert_eq!(
                code(link.clone()).await,
                (403, "access_revoked".to_string()),
                "{backend:?}: order {status}"
            );
            assert_eq!(events(&t).await, counted, "{backend:?}: nothing counted while {status}");
            for live in ["paid", "partially_refunded"] {
                set(live).await;
                assert_eq!(code(link.clone()).await.0, 302, "{backend:?}: {status} → {live}");
                counted += 1;
                assert_eq!(events(&t).await, counted, "{backend:?}");
            }
        }

        // A grant written while its order is not paid takes the order's state.
        set("disputed").await;
        let gid = only_grant(&t).await;
        t.app
            .db
            .execute(sql!(
                "INSERT INTO download_grants (id, order_id, order_item_id, product_id, email, token_hash, max_downloads, remaining, expires_at, ip_policy, ip_allow, status, created_at, updated_at)
                 SELECT 'dlg_copy', order_id, order_item_id, product_id, email, 'copy-hash', max_downloads, remaining, expires_at, ip_policy, ip_allow, status, created_at, updated_at
                 FROM download_grants WHERE id = $1",
                &gid
            ))
            .await
            .unwrap();
        let flags = |db: satchel::db::Db| async move {
            let rows: Vec<(String, i64)> = db
                .fetch_all(sql!(
                    "SELECT id, CAST(CASE WHEN order_paid THEN 1 ELSE 0 END AS BIGINT) FROM download_grants ORDER BY id"
                ))
                .await
                .unwrap();
            rows.into_iter().map(|(_, f)| f).collect::<Vec<_>>()
        };
        assert_eq!(flags(t.app.db.clone()).await, [0, 0], "{backend:?}");
        set("paid").await;
        assert_eq!(flags(t.app.db.clone()).await, [1, 1], "{backend:?}");

        // A grant moved to another order takes that order's state, and back.
        set("disputed").await;
        let other = t.buy_paid("paid-check", "other@example.com").await;
        let other_id = other["order_id"].as_str().unwrap().to_string();
        let moved = |order: String| {
            let db = t.app.db.clone();
            async move {
                db.execute(sql!(
                    "UPDATE download_grants SET order_id = $1 WHERE id = 'dlg_copy'",
                    order
                ))
                .await
                .unwrap();
                let (flag,): (i64,) = db
                    .fetch_one(sql!(
                        "SELECT CAST(CASE WHEN order_paid THEN 1 ELSE 0 END AS BIGINT) FROM download_grants WHERE id = 'dlg_copy'"
                    ))
                    .await
                    .unwrap();
                flag
            }
        };
        assert_eq!(moved(other_id.clone()).await, 1, "{backend:?}: moved to a paid order");
        let first: (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT order_id FROM download_grants WHERE id = $1", &gid))
            .await
            .unwrap();
        assert_eq!(moved(first.0).await, 0, "{backend:?}: moved back to the disputed order");
        // Moved back, its link is refused like the disputed order's others.
        let (copy_expires,): (i64,) = t
            .app
            .db
            .fetch_one(sql!("SELECT expires_at FROM download_grants WHERE id = 'dlg_copy'"))
            .await
            .unwrap();
        let copy_token = satchel::delivery::sign(&t.app.keys, "d1", &["dlg_copy", &copy_expires.to_string()]);
        let copy_link = format!("{}/api/v1/downloads/{copy_token}", t.base_url);
        assert_eq!(
            code(copy_link).await,
            (403, "access_revoked".to_string()),
            "{backend:?}"
        );
        set("paid").await;
        t.app
            .db
            .execute(sql!("DELETE FROM download_grants WHERE id = 'dlg_copy'"))
            .await
            .unwrap();

        // Grants from before the column: the migration reads each one's order.
        set("disputed").await;
        let undo: &[&str] = match backend {
            satchel::db::Backend::Postgres => &[
                "DROP TRIGGER orders_paid_changed ON orders",
                "DROP TRIGGER download_grants_order_paid ON download_grants",
                "DROP TRIGGER download_grants_order_moved ON download_grants",
                "DROP FUNCTION satchel_order_paid_changed()",
                "DROP FUNCTION satchel_grant_order_paid()",
                "DROP FUNCTION satchel_grant_order_moved()",
                "ALTER TABLE download_grants DROP COLUMN order_paid",
            ],
            satchel::db::Backend::Sqlite => &[
                "DROP TRIGGER orders_paid_changed",
                "DROP TRIGGER download_grants_order_paid",
                "DROP TRIGGER download_grants_order_moved",
                "ALTER TABLE download_grants DROP COLUMN order_paid",
            ],
        };
        // Only the order-state migrations (18, and 19 on PostgreSQL) are undone and run again.
        for stmt in undo
            .iter()
            .chain(&["DELETE FROM _sqlx_migrations WHERE version IN (18, 19)"])
        {
            t.app.db.execute(sql!(*stmt)).await.unwrap();
        }
        t.app.db.migrate().await.unwrap();
        assert_eq!(
            code(link.clone()).await.0,
            403,
            "{backend:?}: backfilled from a disputed order"
        );
        set("paid").await;
        assert_eq!(code(link.clone()).await.0, 302, "{backend:?}: the triggers are back");
    }
}

/// HEAD on a download link (mail scanners, link checkers) counts nothing, logs nothing,
/// mails nothing and hands out no delivery URL; it answers what a GET would meet.
#[tokio::test]
async fn head_checks_a_link_without_spending_it() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let link = sell(&t, "probe", "p.bin", &bytes_of(10_000, 4), 1).await;
        let head = |url: String| {
            let c = t.client.clone();
            async move { c.head(url).send().await.unwrap() }
        };
        for _ in 0..3 {
            let r = head(link.clone()).await;
            assert_eq!(r.status(), 200, "{backend:?}: a live link");
            assert!(r.headers().get("location").is_none(), "no delivery URL on HEAD");
        }
        assert_eq!(
            (remaining(&t).await, events(&t).await),
            (1, 0),
            "{backend:?}: nothing spent"
        );
        // The one download is still there; then HEAD tells the limit a GET would meet.
        redeem(&t, &link).await;
        assert_eq!(head(link.clone()).await.status(), 403, "{backend:?}");
        assert_eq!(t.client.get(&link).send().await.unwrap().status(), 403);
        // A grant waiting for re-confirmation: HEAD sends no confirmation email.
        t.app
            .db
            .execute(sql!("UPDATE download_grants SET status = 'reconfirm', remaining = 1"))
            .await
            .unwrap();
        let jobs = || t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM jobs"));
        let before = jobs().await.unwrap();
        assert_eq!(head(link.clone()).await.status(), 403, "{backend:?}");
        assert_eq!(jobs().await.unwrap(), before, "{backend:?}: HEAD mails nothing");
        let sent: Option<i64> = t
            .app
            .db
            .fetch_one(sql!("SELECT reconfirm_sent_at FROM download_grants"))
            .await
            .map(|(v,): (Option<i64>,)| v)
            .unwrap();
        assert_eq!(sent, None, "{backend:?}");
        // Refunded, forged, expired: the GET's refusals.
        t.app
            .db
            .execute(sql!("UPDATE download_grants SET status = 'active'"))
            .await
            .unwrap();
        assert_eq!(head(link.clone()).await.status(), 200);
        refund_all(&t).await;
        assert_eq!(head(link.clone()).await.status(), 403, "{backend:?}: refunded");
        let forged = format!("{}x", link);
        assert_eq!(head(forged).await.status(), 404);
        assert_eq!(events(&t).await, 1, "{backend:?}: only the GET was logged");
    }
}

/// `delivery.bind_to_ip`: a delivery URL serves only the network (/24, /64) that started the
/// download; elsewhere it is refused (403) and counts nothing. Its network cannot be edited
/// out of the URL. Off (the default), a URL serves any network.
#[tokio::test]
async fn bound_delivery_urls_serve_only_the_network_that_started() {
    for backend in backends().await {
        for bound in [true, false] {
            let t = TestApp::start_with(backend, |c| {
                c.server.trust_forwarded_for = true;
                c.delivery.bind_to_ip = bound;
            })
            .await;
            let body = bytes_of(50_000, 5);
            let link = sell(&t, "bound", "b.bin", &body, 5).await;
            let r = t
                .client
                .get(&link)
                .header("x-forwarded-for", "203.0.113.5")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 302);
            let url = r.headers()["location"].to_str().unwrap().to_string();
            let fetch = |url: String, ip: &'static str| {
                let c = t.client.clone();
                async move { c.get(url).header("x-forwarded-for", ip).send().await.unwrap() }
            };
            // The same /24: the whole file.
            let same = fetch(url.clone(), "203.0.113.77").await;
            assert_eq!(same.status(), 200, "{backend:?} bound={bound}");
            assert_eq!(same.bytes().await.unwrap().as_ref(), &body[..]);
            // Another network, IPv4 or IPv6: refused when bound.
            for other in ["198.51.100.1", "2001:db8::1"] {
                let r = fetch(url.clone(), other).await;
                if bound {
                    assert_eq!(r.status(), 403, "{backend:?} {other}");
                    let err: Value = r.json().await.unwrap();
                    assert_eq!(err["error"]["code"], "ip_not_allowed");
                } else {
                    assert_eq!(r.status(), 200, "{backend:?} {other}: unbound by default");
                }
            }
            if bound {
                // The network is under the URL's MAC: another tag, or none, is not a URL.
                let (head, rest) = url.split_once("/files/").unwrap();
                let (token, name) = rest.split_once('/').unwrap();
                let parts: Vec<&str> = token.split('.').collect();
                assert_eq!(parts.len(), 7, "f1, grant, file, expiry, network, key id, MAC: {token}");
                let mut other_net = parts.clone();
                other_net[4] = "000000000000";
                let mut no_net = parts.clone();
                no_net.remove(4);
                for forged in [other_net.join("."), no_net.join(".")] {
                    let r = fetch(format!("{head}/files/{forged}/{name}"), "203.0.113.5").await;
                    assert_eq!(r.status(), 404, "{backend:?}: {forged}");
                }
            }
            assert_eq!(remaining(&t).await, 4, "{backend:?}: one start, however many fetches");
        }
    }
}

#[tokio::test]
async fn bad_tokens_and_ranges_are_4xx_and_count_nothing() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let body = bytes_of(10_000, 5);
        let link = sell(&t, "bad", "b.bin", &body, 5).await;
        let url = redeem(&t, &link).await;
        let (rem, ev) = (remaining(&t).await, events(&t).await);
        let token = link.rsplit('/').next().unwrap().to_string();
        let ftoken = url
            .split("/files/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let parts: Vec<&str> = token.split('.').collect();
        let other_keys = satchel::keys::Keys::load_or_generate(tempfile::tempdir().unwrap().path()).unwrap();
        let resigned_elsewhere = satchel::delivery::sign(&other_keys, "d1", &[parts[1], parts[2]]);
        let expired = satchel::delivery::sign(&t.app.keys, "d1", &[parts[1], "1000"]);
        let longer_life = format!("d1.{}.{}.{}.{}", parts[1], "99999999999", parts[3], parts[4]);
        let cases: Vec<(String, u16)> = vec![
            ("garbage".into(), 404),
            (token[..token.len() - 3].into(), 404),
            (format!("{token}x"), 404),
            ("d".repeat(5000), 404),
            (resigned_elsewhere, 404),
            (longer_life, 404),
            (ftoken.clone(), 404),
            ("d1.%C3%A9.1.k.m".into(), 404),
            (expired, 410),
        ];
        for (bad, want) in &cases {
            for range in [None, Some("bytes=100-")] {
                let mut req = t.client.get(t.url(&format!("/api/v1/downloads/{bad}")));
                if let Some(r) = range {
                    req = req.header("range", r);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status().as_u16(), *want, "{backend:?} {bad:.60}");
                let err: Value = r.json().await.unwrap();
                assert!(err["error"]["code"].is_string(), "{err}");
            }
        }
        for bad in [
            "garbage".to_string(),
            ftoken[..ftoken.len() - 2].to_string(),
            token.clone(),
            "f".repeat(4000),
        ] {
            let r = t
                .client
                .get(t.url(&format!("/files/{bad}/b.bin")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{bad:.60}");
        }
        // Ranges on a valid delivery URL.
        let size = body.len();
        let get = |range: String| t.client.get(&url).header("range", range).send();
        let r = get(format!("bytes={size}-")).await.unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], format!("bytes */{size}").as_str());
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "range_not_satisfiable");
        for ignored in [
            "bytes=500-100",
            "bytes=0-1,5-6",
            "bytes=abc",
            "bytes=--5",
            "lines=1-2",
            "bytes=-",
        ] {
            let r = get(ignored.into()).await.unwrap();
            assert_eq!(r.status(), 200, "{ignored}: ignored, whole file");
            assert_eq!(r.bytes().await.unwrap().len(), size);
        }
        let r = get("bytes=-100".into()).await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[size - 100..]);
        // Huge headers: refused or ignored, never a server error.
        for (name, value) in [
            ("range", format!("bytes={}", "1".repeat(60_000))),
            ("range", format!("bytes=0-1{}", ",2-3".repeat(10_000))),
            ("if-range", "\"".repeat(30_000)),
        ] {
            let r = t.client.get(&url).header(name, value).send().await.unwrap();
            assert!(
                r.status().is_client_error() || r.status() == 200,
                "{name}: {}",
                r.status()
            );
        }
        // Past 32 KiB Satchel refuses with its JSON error; past the 64 KiB connection buffer
        // hyper refuses before parsing the request (a bare 431).
        let r = t
            .client
            .get(&link)
            .header("range", format!("bytes={}", "9".repeat(40_000)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "oversized headers are refused before any work");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "headers_too_large");
        let r = t
            .client
            .get(&link)
            .header("range", format!("bytes={}", "9".repeat(100_000)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431);
        assert_eq!(
            (remaining(&t).await, events(&t).await),
            (rem, ev),
            "{backend:?}: nothing counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_accel_through_a_real_nginx() {
    for backend in backends().await {
        let port = free_port();
        let t = TestApp::start_with(backend, |c| {
            c.delivery.mode = DeliveryMode::XAccel;
            c.server.public_url = Some(format!("http://127.0.0.1:{port}"));
            c.server.trust_forwarded_for = true;
        })
        .await;
        let root = t.app.storage.local_root().unwrap().to_path_buf();
        let prefix = t.app.cfg.delivery.x_accel_prefix.clone();
        let Some(nginx) = NginxServer::start(port, t.addr, &prefix, &root).await else {
            return;
        };
        let body = bytes_of(3 << 20, 13);
        let name = "Bïg fíle #1?.bin";
        let link = sell(&t, "accel", name, &body, 2).await;
        assert!(link.starts_with(&nginx.base_url), "{link}");
        let url = redeem(&t, &link).await;
        assert!(url.starts_with(&format!("{}/files/", nginx.base_url)), "{url}");

        // Satchel itself answers with the redirect and no body.
        let direct = url.replace(&nginx.base_url, &t.base_url);
        let r = t.client.get(&direct).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let accel = r.headers()["x-accel-redirect"].to_str().unwrap().to_string();
        assert_eq!(accel, format!("{prefix}test/accel/B%C3%AFg%20f%C3%ADle%20%231%3F.bin"));
        assert!(r.bytes().await.unwrap().is_empty());

        // Through nginx: the bytes, our headers, ranges.
        let r = t.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let cd = r.headers()["content-disposition"].to_str().unwrap().to_string();
        assert!(
            cd.contains("filename*=UTF-8''B%C3%AFg%20f%C3%ADle%20%231%3F%2Ebin"),
            "{cd}"
        );
        assert_eq!(r.headers()["content-type"], "application/x-satchel-test");
        assert!(r.headers().get("x-accel-redirect").is_none());
        assert_eq!(sha(&r.bytes().await.unwrap()), sha(&body));
        let r = t
            .client
            .get(&url)
            .header("range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 1000-1999/{}", body.len()).as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[1000..2000]);

        // An interrupted download (the first MiB on disk) resumed with curl through nginx,
        // once on the delivery URL and once from the download link.
        if tool("curl") {
            let dir = tempfile::tempdir().unwrap();
            for (i, start) in [&url, &link].into_iter().enumerate() {
                let out = dir.path().join(format!("out{i}.bin"));
                std::fs::write(&out, &body[..1 << 20]).unwrap();
                let st = run(curl(&["-L", "-C", "-", "-o", out.to_str().unwrap(), start]));
                assert!(st.status.success(), "{backend:?}: curl -C - {start}: {st:?}");
                assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&body), "{backend:?}");
            }
        }
        assert_eq!(remaining(&t).await, 1, "{backend:?}: counted exactly once");
        assert_eq!(events(&t).await, 1);

        // A refund stops the issued delivery URL, through nginx too.
        refund_all(&t).await;
        let r = t.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 403, "{backend:?}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "access_revoked");
        drop(nginx);
    }
}

#[tokio::test]
async fn presign_sends_buyers_to_the_object_store() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| {
            s3.configure(c);
            c.delivery.mode = DeliveryMode::Presign;
        })
        .await;
        let body = bytes_of(2 << 20, 17);
        let link = sell(&t, &format!("pre-{}", backend_name(&t)), "Prëset 1.bin", &body, 2).await;
        let url = redeem(&t, &link).await;
        assert!(url.starts_with(&s3.endpoint), "{url}");
        let parsed = url::Url::parse(&url).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        let ttl = satchel::delivery::delivery_ttl(i64::try_from(body.len()).unwrap());
        let expires: i64 = q["X-Amz-Expires"].parse().unwrap();
        assert!((ttl - 2..=ttl).contains(&expires), "{expires} vs {ttl}");
        assert!(q["response-content-disposition"].contains("filename*=UTF-8''Pr%C3%ABset"));
        assert_eq!(q["response-content-type"], "application/x-satchel-test");

        let plain = reqwest::Client::new();
        let r = plain.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // The store answers with the headers signed into the URL.
        assert_eq!(r.headers()["content-type"], "application/x-satchel-test");
        let cd = r.headers()["content-disposition"].to_str().unwrap().to_string();
        assert!(
            cd.starts_with("attachment;") && cd.contains("filename*=UTF-8''Pr%C3%ABset%201%2Ebin"),
            "{cd}"
        );
        assert_eq!(sha(&r.bytes().await.unwrap()), sha(&body), "{backend:?}");
        let r = plain.get(&url).header("range", "bytes=100-199").send().await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[100..200]);
        // The signature covers the response headers: changing one breaks it.
        let tampered = url.replace("response-content-type=application", "response-content-type=text");
        assert_eq!(plain.get(&tampered).send().await.unwrap().status(), 403);
        assert_eq!(remaining(&t).await, 1, "{backend:?}");

        // Watermarked products keep being streamed by Satchel (the store holds the original only).
        let order = t.buy_paid("demo-ebook", "marked@example.com").await;
        let link = order["items"][0]["download_url"].as_str().unwrap();
        let url = redeem(&t, link).await;
        assert!(url.starts_with(&format!("{}/files/", t.base_url)), "{url}");
        let r = t.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

fn backend_name(t: &TestApp) -> &'static str {
    match t.backend {
        satchel::db::Backend::Sqlite => "sqlite",
        satchel::db::Backend::Postgres => "pg",
    }
}

/// One response read off a raw connection: status, headers (lower-case names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Splits the bytes of pipelined responses; `heads` marks the answers to HEAD (no body).
fn split_responses(mut wire: &[u8], heads: &[bool]) -> Vec<Raw> {
    let mut out = Vec::new();
    for &head_only in heads {
        let end = wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("a complete head in {:?}", String::from_utf8_lossy(wire)));
        let text = std::str::from_utf8(&wire[..end]).unwrap();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        wire = &wire[end + 4..];
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let body = if head_only { Vec::new() } else { wire[..len].to_vec() };
        if !head_only {
            wire = &wire[len..];
        }
        out.push(Raw { status, headers, body });
    }
    assert!(wire.is_empty(), "nothing after the last response");
    out
}

fn sendfile_bytes(t: &TestApp) -> u64 {
    metric(t, "satchel_sendfile_bytes_total")
}

fn metric(t: &TestApp, name: &str) -> u64 {
    t.app
        .metrics
        .render(0)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether the kernel can say, without waiting, that a file's first page is not cached.
#[cfg(target_os = "linux")]
fn evicted(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let mut byte = [0u8; 1];
    let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
    matches!(
        rustix::io::preadv2(&f, &mut bufs, 0, rustix::io::ReadWriteFlags::NOWAIT),
        Err(rustix::io::Errno::AGAIN)
    )
}

/// A file whose pages are not in the page cache is sent from the blocking pool (its disk
/// reads do not hold an HTTP thread), byte for byte; once cached, from the HTTP thread.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_not_in_the_cache_are_sent_off_the_http_threads() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let body = bytes_of(20 << 20, 9);
        let link = sell(&t, "cold", "cold.bin", &body, 5).await;
        let path = t.data_dir.join("files").join("test/cold/cold.bin");
        assert!(path.exists(), "{path:?}");
        let url = redeem(&t, &link).await;
        if !evicted(&path) {
            eprintln!("this file system keeps the pages or cannot tell (RWF_NOWAIT); skipping");
            return;
        }
        // A fresh connection: the test client's pooled one went to hyper with a POST earlier,
        // and only connections that start with a delivery request stay in the front.
        let fresh = reqwest::Client::new();
        let cold0 = metric(&t, "satchel_sendfile_cold_bytes_total");
        let got = fresh.get(&url).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(
            sha(&got.bytes().await.unwrap()),
            sha(&body),
            "{backend:?}: byte for byte"
        );
        let cold = metric(&t, "satchel_sendfile_cold_bytes_total") - cold0;
        assert!(
            cold > 0,
            "{backend:?}: the uncached pages went out from the blocking pool"
        );
        // Now cached: the file again, and nothing more from the blocking pool. The kernel may
        // drop pages between two requests at any time (CI machines run DAMON, which pages out
        // memory it sees as idle), so an attempt that found some gone is made again: a front
        // that sent cached pages from the pool would fail every attempt.
        let mut from_the_http_thread = false;
        for _ in 0..5 {
            std::fs::read(&path).unwrap();
            let (all0, cold1) = (sendfile_bytes(&t), metric(&t, "satchel_sendfile_cold_bytes_total"));
            let got = fresh.get(&url).header("range", "bytes=1000-").send().await.unwrap();
            assert_eq!(got.status(), 206);
            assert_eq!(got.bytes().await.unwrap().as_ref(), &body[1000..]);
            assert_eq!(sendfile_bytes(&t) - all0, body.len() as u64 - 1000);
            if metric(&t, "satchel_sendfile_cold_bytes_total") == cold1 {
                from_the_http_thread = true;
                break;
            }
        }
        assert!(
            from_the_http_thread,
            "{backend:?}: a cached file went out from the blocking pool in every attempt"
        );
    }
}

/// The HTTP/1 front answers delivery requests itself and sends local files with sendfile;
/// pipelined requests, HEAD, a keep-alive switch to hyper for any other request, and
/// `Connection: close` all behave as HTTP/1.1 says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_sends_files_with_sendfile_and_hands_the_rest_to_hyper() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let body = bytes_of(1 << 20, 11);
        let link = sell(&t, "front", "f.bin", &body, 5).await;
        let link_path = link.split_once(&t.base_url).unwrap().1.to_string();
        let url = redeem(&t, &link).await;
        let path = url.split_once(&t.base_url).unwrap().1.to_string();
        assert_eq!(sendfile_bytes(&t), 0);

        // Four requests in one write: a range, a HEAD, a start on the download link, and a
        // request only hyper serves (which also closes the connection).
        let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        let wire = format!(
            "GET {path} HTTP/1.1\r\nHost: s\r\nRange: bytes=10-19\r\n\r\n\
             HEAD {path} HTTP/1.1\r\nHost: s\r\n\r\n\
             GET {link_path} HTTP/1.1\r\nHost: s\r\nAccept: application/json\r\n\r\n\
             GET /healthz HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(wire.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got))
            .await
            .expect("the server closes the connection after `Connection: close`")
            .unwrap();
        let r = split_responses(&got, &[false, true, false, false]);
        assert_eq!(r[0].status, 206, "{backend:?}");
        assert_eq!(r[0].body, &body[10..20]);
        assert_eq!(r[0].header("content-range"), Some("bytes 10-19/1048576"));
        assert!(r[0].header("date").is_some() && r[0].header("x-request-id").is_some());
        assert_eq!(r[1].status, 200);
        assert_eq!(r[1].header("content-length"), Some("1048576"), "HEAD tells the size");
        assert_eq!(r[2].status, 302);
        assert!(r[2].header("location").unwrap().contains("/files/"));
        assert_eq!(r[3].status, 200);
        assert!(String::from_utf8_lossy(&r[3].body).contains("ok"), "healthz from hyper");
        assert_eq!(r[3].header("connection"), Some("close"));
        assert_eq!(sendfile_bytes(&t), 10, "{backend:?}: the range went out with sendfile");
        assert_eq!(remaining(&t).await, 3, "{backend:?}: one start on the raw connection");

        // A whole file, by curl (following the 302 on the same connection): byte-identical,
        // and every byte sent by the kernel.
        if tool("curl") {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("f.bin");
            let st = run(curl(&["-L", "-o", out.to_str().unwrap(), &link]));
            assert!(st.status.success(), "{st:?}");
            assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&body), "{backend:?}");
            assert_eq!(sendfile_bytes(&t), 10 + (1 << 20), "{backend:?}");
        }

        // A request with a body on a connection the front started: hyper takes over and
        // reads the body; a malformed head gets hyper's 400, never a 5xx.
        let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        let wire = format!(
            "GET {path} HTTP/1.1\r\nHost: s\r\nRange: bytes=0-0\r\n\r\n\
             POST /api/v1/library/login HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        conn.write_all(wire.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        let r = split_responses(&got, &[false, false]);
        assert_eq!((r[0].status, r[0].body.as_slice()), (206, &body[..1]));
        assert!((400..500).contains(&r[1].status), "{backend:?}: {}", r[1].status);
        let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nBad Header: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
}
