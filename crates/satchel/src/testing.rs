//! Test harness, shared by the crate's tests and the benchmarks.
//!
//! [`TestApp::start`] builds a fresh store on the chosen backend — SQLite in a temporary
//! data dir, or a new PostgreSQL schema — and serves it on a real socket at 127.0.0.1:0.
//! [`backends`] lists the backends to run on: both, or SQLite alone with the reason printed
//! when PostgreSQL is not reachable. With `SATCHEL_TEST_REQUIRE_ALL=1` (CI) a skip panics.
//! [`S3Server`] runs a real S3-compatible server (`s3s-fs`, which checks SigV4 signatures
//! and presigned expiry) on a free port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::db::Backend;

pub fn require_all() -> bool {
    std::env::var("SATCHEL_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1" || v == "true")
}

/// Reports a missing test dependency: a printed skip, or a failure under `SATCHEL_TEST_REQUIRE_ALL`.
pub fn skip(reason: &str) {
    assert!(!require_all(), "SATCHEL_TEST_REQUIRE_ALL is set but: {reason}");
    eprintln!("SKIPPED: {reason}");
}

pub fn pg_admin_url() -> String {
    std::env::var("SATCHEL_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

static PG_READY: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();

/// The PostgreSQL schemas this process made for its stores.
static SCHEMAS_MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Drops every PostgreSQL schema this process made for its stores, once it is done with them;
/// returns how many went. Tests leave theirs for an hour, to be looked at after a failure (the
/// next run drops older ones); the benchmark's are large (200 000 products, hundreds of
/// thousands of download events each) and a few runs in an hour grew the database by most of
/// a gigabyte, so it drops its own when it ends. A schema still locked by a store that is
/// running is left (after 5 s) for the next run's clean-up.
pub async fn drop_schemas_made_here() -> usize {
    let names: Vec<String> = SCHEMAS_MADE
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    if names.is_empty() {
        return 0;
    }
    let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&pg_admin_url())
        .await
    else {
        return 0;
    };
    let mut dropped = 0;
    if sqlx::query("SET lock_timeout = '5s'").execute(&pool).await.is_ok() {
        for name in names {
            match sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&pool)
                .await
            {
                Ok(_) => dropped += 1,
                Err(e) => eprintln!("schema {name} left for a later clean-up: {e}"),
            }
        }
    }
    pool.close().await;
    dropped
}

/// Test schemas and databases are named with the time they were made; the next run drops
/// those older than this (their run ended, or was killed before its own clean-up).
pub const STALE_AFTER_SECS: i64 = 3600;

/// Whether a test schema or database whose name carries the time `stamp` (unix seconds) is
/// stale: made more than [`STALE_AFTER_SECS`] ago, or named without a time at all.
pub fn is_stale(stamp: Option<&str>) -> bool {
    let made = stamp.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    crate::ids::now() - made > STALE_AFTER_SECS
}

async fn pg_available() -> Result<(), String> {
    PG_READY
        .get_or_init(|| async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&pg_admin_url())
                .await
                .map_err(|e| format!("PostgreSQL not reachable at {}: {e}", pg_admin_url()))?;
            // Drop schemas left by test runs more than an hour old (names carry their start time).
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 't\\_%'")
                    .fetch_all(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
            for (name,) in rows {
                if is_stale(name.split('_').nth(1)) {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&pool)
                        .await;
                }
            }
            pool.close().await;
            Ok(())
        })
        .await
        .clone()
}

/// The backends every DB test runs on.
pub async fn backends() -> Vec<Backend> {
    match pg_available().await {
        Ok(()) => vec![Backend::Sqlite, Backend::Postgres],
        Err(reason) => {
            skip(&format!("PostgreSQL tests: {reason}"));
            vec![Backend::Sqlite]
        }
    }
}

pub struct TestApp {
    pub app: App,
    pub addr: SocketAddr,
    pub base_url: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub data_dir: PathBuf,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts with a config tweak (storage URL, delivery mode, Stripe base…).
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cfg = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        cfg.server.bind = addr.to_string();
        cfg.server.public_url = Some(format!("http://{addr}"));
        cfg.server.shutdown_grace_secs = 2;
        cfg.payments.test_mode = Some(true);
        // Tests drive many requests from one address; the rate-limit test turns them back on.
        cfg.server.rate_limits = false;
        let mut schema = None;
        if backend == Backend::Postgres {
            let name = format!(
                "t_{}_{}",
                crate::ids::now(),
                crate::ids::random_token(6).to_lowercase().replace(['-', '_'], "x")
            );
            let pool = sqlx::PgPool::connect(&pg_admin_url()).await.expect("connect postgres");
            sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
                .execute(&pool)
                .await
                .expect("create schema");
            pool.close().await;
            if let Ok(mut made) = SCHEMAS_MADE.lock() {
                made.push(name.clone());
            }
            cfg.database.url = Some(crate::config::Secret::new(pg_admin_url()));
            cfg.database.max_connections = 10;
            schema = Some(name);
        }
        tweak(&mut cfg);
        let app = App::open_with_schema(cfg, schema.as_deref()).await.expect("open app");
        let stop = CancellationToken::new();
        tokio::spawn(crate::http::serve(app.clone(), listener, stop.clone()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let data_dir = app.cfg.data_dir.clone();
        Self {
            app,
            addr,
            base_url: format!("http://{addr}"),
            client,
            backend,
            data_dir,
            stop,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A store with the demo seller and products.
    pub async fn start_demo(backend: Backend) -> Self {
        Self::start_demo_with(backend, |_| {}).await
    }

    pub async fn start_demo_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let t = Self::start_with(backend, tweak).await;
        crate::demo::seed(&t.app).await.expect("seed demo");
        t
    }

    /// The demo seller's id.
    pub async fn demo_seller(&self) -> String {
        let user = crate::accounts::find_user(&self.app.db, crate::demo::DEMO_EMAIL)
            .await
            .expect("db")
            .expect("demo seller");
        user.seller_id.expect("seller")
    }

    /// POSTs JSON; returns the status and the JSON body (`Null` if none).
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Buys one product (pending unless free); asserts 201.
    pub async fn purchase(&self, slug: &str, email: &str) -> serde_json::Value {
        let (status, order) = self
            .post_json(
                &format!("/api/v1/products/{slug}/purchase"),
                &serde_json::json!({ "email": email }),
            )
            .await;
        assert_eq!(status, 201, "purchase {slug}: {order}");
        order
    }

    /// Completes a pending order's TEST MODE checkout; asserts the redirect to the success page.
    pub async fn pay(&self, order: &serde_json::Value) {
        let checkout = order["checkout_url"].as_str().expect("checkout_url");
        let r = self
            .client
            .post(checkout)
            .form(&[("outcome", "succeeded")])
            .send()
            .await
            .expect("pay");
        assert_eq!(r.status(), 303, "test checkout redirects to the success page");
    }

    /// The order as its buyer reads it (`GET /api/v1/orders/{id}` with the access token).
    pub async fn order(&self, order: &serde_json::Value) -> serde_json::Value {
        let id = order["order_id"].as_str().expect("order_id");
        let token = order["access_token"].as_str().expect("access_token");
        let r = self
            .client
            .get(self.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("order");
        assert_eq!(r.status(), 200);
        r.json().await.expect("order json")
    }

    /// The id of an order's (first) download grant.
    pub async fn grant_of(&self, order_id: &str) -> String {
        let (gid,): (String,) = crate::db::Exec::fetch_one(
            &self.app.db,
            crate::sql!(
                "SELECT id FROM download_grants WHERE order_id = $1 ORDER BY id LIMIT 1",
                order_id
            ),
        )
        .await
        .expect("the order has a download grant");
        gid
    }

    /// A grant's download events, newest first, by walking its list from the head
    /// ([`crate::delivery::events`]), checked against the table: every event of the grant
    /// is on the list exactly once, nothing else is, and the grant's `prior_event_id` is
    /// the head's `prev_id`; and no event in the database names a missing grant.
    pub async fn event_list(&self, grant_id: &str) -> Vec<String> {
        use crate::db::Exec;
        let db = &self.app.db;
        let (head, prior): (Option<String>, Option<String>) = db
            .fetch_one(crate::sql!(
                "SELECT last_event_id, prior_event_id FROM download_grants WHERE id = $1",
                grant_id
            ))
            .await
            .expect("the grant exists");
        let mut all: Vec<(String,)> = db
            .fetch_all(crate::sql!(
                "SELECT id FROM download_events WHERE grant_id = $1",
                grant_id
            ))
            .await
            .expect("events");
        let mut list = Vec::new();
        let mut next = head;
        while let Some(id) = next {
            assert!(
                list.len() <= all.len(),
                "grant {grant_id}: its list runs longer than its events (a cycle?)"
            );
            let (of, prev): (String, Option<String>) = db
                .fetch_one(crate::sql!(
                    "SELECT grant_id, prev_id FROM download_events WHERE id = $1",
                    &id
                ))
                .await
                .expect("each event on the list exists");
            assert_eq!(
                of, grant_id,
                "grant {grant_id}: event {id} on its list belongs to another grant"
            );
            if list.is_empty() {
                assert_eq!(prev, prior, "grant {grant_id}: prior_event_id is the head's prev_id");
            }
            list.push(id);
            next = prev;
        }
        let mut walked = list.clone();
        walked.sort();
        all.sort();
        assert_eq!(
            walked,
            all.into_iter().map(|(id,)| id).collect::<Vec<_>>(),
            "grant {grant_id}: its list holds each of its events exactly once"
        );
        // PostgreSQL has no foreign key on `download_events.grant_id` (migration 0017): the
        // writers themselves keep every event on a grant that exists.
        let orphans = db
            .fetch_i64(crate::sql!(
                "SELECT COUNT(*) FROM download_events e
                 WHERE NOT EXISTS (SELECT 1 FROM download_grants g WHERE g.id = e.grant_id)"
            ))
            .await
            .expect("orphan count");
        assert_eq!(orphans, 0, "every download event names a grant that exists");
        list
    }

    /// Buys and pays for one product; returns the paid order as the buyer sees it.
    pub async fn buy_paid(&self, slug: &str, email: &str) -> serde_json::Value {
        let order = self.purchase(slug, email).await;
        if order["status"] == "pending" {
            self.pay(&order).await;
        }
        self.order(&order).await
    }

    /// Runs every job that is due (deterministic stand-in for the background worker).
    pub async fn drain_jobs(&self) -> usize {
        self.app.worker("test-worker".into()).drain().await.expect("drain jobs")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A running `s3s-fs` (S3-compatible, checks SigV4 and presigned expiry).
pub struct S3Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    child: Child,
    _root: tempfile::TempDir,
}

impl S3Server {
    /// Starts one, or returns `None` (after [`skip`]) when the binary is not installed.
    pub async fn start() -> Option<Self> {
        let bin = std::env::var("SATCHEL_TEST_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        if Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            skip("S3 tests: s3s-fs is not installed (cargo install s3s-fs@0.14.1 --features binary --locked)");
            return None;
        }
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("satchel")).expect("bucket dir");
        let port = free_port();
        let (ak, sk) = ("SATCHELTESTKEY".to_string(), "satchel-test-secret-key".to_string());
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                &ak,
                "--secret-key",
                &sk,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        let endpoint = format!("http://127.0.0.1:{port}");
        // Readiness: the port accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not start listening on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Self {
            endpoint,
            access_key: ak,
            secret_key: sk,
            child,
            _root: root,
        })
    }

    /// `SATCHEL_STORAGE_URL` for the bucket `satchel` on this server.
    pub fn storage_url(&self) -> String {
        format!("s3://satchel?endpoint={}&region=us-east-1", self.endpoint)
    }

    pub fn configure(&self, cfg: &mut Config) {
        cfg.storage.url = Some(self.storage_url());
        cfg.storage.access_key_id = Some(self.access_key.clone());
        cfg.storage.secret_access_key = Some(crate::config::Secret::new(self.secret_key.clone()));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server (`aiosmtpd` from PyPI) storing every message in a maildir.
pub struct SmtpServer {
    pub url: String,
    pub maildir: PathBuf,
    child: Child,
    _root: tempfile::TempDir,
}

impl SmtpServer {
    pub async fn start() -> Option<Self> {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip("SMTP tests: aiosmtpd is not installed (pip install aiosmtpd)");
            return None;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let maildir = root.path().join("maildir");
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn aiosmtpd");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start listening on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Self {
            url: format!("smtp://127.0.0.1:{port}"),
            maildir,
            child,
            _root: root,
        })
    }

    /// Every delivered message, raw.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    if let Ok(s) = std::fs::read_to_string(e.path()) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `Stripe-Signature` header built the way Stripe's libraries build test headers:
/// `t={t},v1={hex HMAC-SHA256(secret, "{t}.{payload}")}`.
pub fn stripe_signature(payload: &str, secret: &str, t: i64) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Stripe event envelope around `object`.
pub fn stripe_event(id: &str, kind: &str, created: i64, object: serde_json::Value) -> String {
    serde_json::json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "created": created, "livemode": false,
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}, "type": kind,
        "data": {"object": object},
    })
    .to_string()
}

impl TestApp {
    /// Delivers a signed Stripe event to the webhook endpoint.
    pub async fn deliver_stripe(&self, payload: &str, secret: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url("/api/v1/webhooks/stripe"))
            .header("stripe-signature", stripe_signature(payload, secret, crate::ids::now()))
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send()
            .await
            .expect("deliver");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// Buyer library and affiliate portal sessions, signed in the way people do it: ask for the
/// link, follow the newest one the outbox holds for that address.
impl TestApp {
    async fn magic_session(&self, ask: &str, email: &str, kind: &str, marker: &str) -> String {
        let r = self
            .client
            .post(self.url(ask))
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .expect("ask for a sign-in link");
        assert_eq!(r.status(), 202, "{ask}");
        let (body,): (String,) = crate::db::Exec::fetch_one(
            &self.app.db,
            crate::sql!(
                "SELECT body_text FROM email_outbox WHERE kind = $1 AND to_email = $2 ORDER BY id DESC LIMIT 1",
                kind,
                email
            ),
        )
        .await
        .expect("a sign-in email in the outbox");
        let link = body
            .split_whitespace()
            .find(|w| w.contains(marker))
            .expect("the link")
            .to_string();
        // Opening the link shows the button; pressing it (a POST) signs in.
        let r = self.client.get(&link).send().await.expect("open the link");
        assert_eq!(r.status(), 200, "{link}");
        let r = self.client.post(&link).send().await.expect("press the button");
        assert_eq!(r.status(), 303, "{link}");
        r.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .expect("cookie pair")
            .to_string()
    }

    /// A library session for `email`: `(cookie "satchel_session=…", csrf_token)`.
    pub async fn library_session(&self, email: &str) -> (String, String) {
        let cookie = self
            .magic_session("/api/v1/library/login", email, "magic_link", "/auth/magic/")
            .await;
        let lib: serde_json::Value = self
            .client
            .get(self.url("/api/v1/library"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("library")
            .json()
            .await
            .expect("library json");
        let csrf = lib["csrf_token"].as_str().expect("csrf_token").to_string();
        (cookie, csrf)
    }

    /// An affiliate portal session for `email`: the cookie `satchel_session=…`.
    pub async fn affiliate_session(&self, email: &str) -> String {
        self.magic_session(
            "/api/v1/affiliate/login",
            email,
            "magic_link_affiliate",
            "/affiliate/auth/",
        )
        .await
    }
}

impl TestApp {
    /// Waits (up to 10 s) until the validation cache, if this instance has one, answers.
    pub async fn license_cache_live(&self) -> bool {
        let Some(cache) = &self.app.licensing.cache else {
            return false;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cache.is_live() {
            assert!(
                std::time::Instant::now() < deadline,
                "the license cache listener never came up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }
}

impl TestApp {
    /// Stops this server abruptly and starts a fresh [`App`] on the same data dir, database
    /// (the same PostgreSQL schema), storage and address — what a restart or a crash and
    /// restart of the process looks like to clients. In-flight requests are cut.
    pub async fn restart(&mut self) {
        let schema = self.pg_schema().await;
        self.stop.cancel();
        // The old server drops its listener once it stops accepting; then the port is ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "cannot rebind {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let app = App::open_with_schema(self.app.cfg.clone(), schema.as_deref())
            .await
            .expect("reopen app");
        let stop = CancellationToken::new();
        tokio::spawn(crate::http::serve(app.clone(), listener, stop.clone()));
        self.app = app;
        self.stop = stop;
    }

    /// Ends, from the server's side (`pg_terminate_backend`), this store's PostgreSQL
    /// connections opened for `task` (a dedicated pool's name, see `Db::dedicated`), as a
    /// server restart or an administrator would; returns how many it ended.
    pub async fn end_pg_connections(&self, task: &str) -> i64 {
        use crate::db::Exec;
        let schema = self.pg_schema().await.expect("a PostgreSQL store");
        self.app
            .db
            .fetch_i64(crate::sql!(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1) AS k",
                format!("satchel:{schema} ({task})")
            ))
            .await
            .expect("end connections")
    }

    /// This store's PostgreSQL schema (`None` on SQLite).
    async fn pg_schema(&self) -> Option<String> {
        use crate::db::Exec;
        if self.backend != Backend::Postgres {
            return None;
        }
        let (s,): (String,) = self
            .app
            .db
            .fetch_one(crate::sql!("SELECT CAST(current_schema() AS TEXT)"))
            .await
            .expect("current schema");
        Some(s)
    }

    /// A second instance of this store, as a scaled-out deployment runs one: a new [`App`]
    /// (its own pools, download-start batcher and caches) on the same database, data dir and
    /// keys, serving on an address of its own until this one stops. Returns its base URL.
    pub async fn second_instance(&self) -> String {
        let schema = self.pg_schema().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = App::open_with_schema(self.app.cfg.clone(), schema.as_deref())
            .await
            .expect("open a second instance");
        tokio::spawn(crate::http::serve(app, listener, self.stop.clone()));
        format!("http://{addr}")
    }

    /// A new seller account with an API key: returns (seller id, key).
    pub async fn seller_with_key(&self, email: &str) -> (String, String) {
        let (seller, _) = crate::accounts::create_seller_account(&self.app.db, email, "password123", "Shop", "seller")
            .await
            .expect("create seller");
        let key = crate::accounts::create_api_key(&self.app.db, email, "test")
            .await
            .expect("api key");
        (seller.id, key)
    }
}

/// Adds a free, published product whose current version holds `files` (already in
/// storage), sold by `files@satchel.test`; returns the product's slug. Tests and the
/// benchmark use it to sell a file of a chosen size or name with a chosen download limit.
pub async fn add_free_product(
    app: &App,
    slug: &str,
    max_downloads: i64,
    watermark_policy: &str,
    files: &[crate::catalog::NewFile],
) -> anyhow::Result<String> {
    use crate::catalog::{DownloadPolicy, LicensePolicy, NewProduct};
    const SELLER: &str = "files@satchel.test";
    let seller_id = match crate::accounts::find_user(&app.db, SELLER).await? {
        Some(u) => u.seller_id.ok_or_else(|| anyhow::anyhow!("{SELLER} is not a seller"))?,
        None => {
            crate::accounts::create_seller_account(&app.db, SELLER, "password123", "Files", "seller")
                .await
                .map_err(|e| anyhow::anyhow!("seller: {e:?}"))?
                .0
                .id
        }
    };
    let tx = app.db.begin().await?;
    let p = crate::catalog::create_product(
        &tx,
        &seller_id,
        NewProduct {
            title: format!("Product {slug}"),
            slug: Some(slug.into()),
            summary: String::new(),
            description: String::new(),
            price: 0,
            currency: "USD".into(),
            kind: "one_time".into(),
            billing_interval: None,
            pwyw_min: None,
            category: String::new(),
            tags: Vec::new(),
            license_policy: LicensePolicy::None,
            download_policy: DownloadPolicy {
                max_downloads,
                ..DownloadPolicy::default()
            },
            watermark_policy: watermark_policy.into(),
            status: "published".into(),
            featured: false,
            bundle_products: Vec::new(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("product: {e:?}"))?;
    crate::catalog::insert_version(&tx, &p.id, "1.0.0", "", files)
        .await
        .map_err(|e| anyhow::anyhow!("version: {e:?}"))?;
    tx.commit().await?;
    Ok(slug.to_string())
}

/// A real nginx (`/usr/sbin/nginx`, or `SATCHEL_TEST_NGINX`) in front of Satchel, configured
/// as docs/operations.md describes for `delivery.mode = "x-accel"`: everything is proxied to
/// Satchel, and an `internal` location aliased to the storage root serves the bytes.
pub struct NginxServer {
    pub base_url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago (for a server that must know its address up front).
///
/// Drawn below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), so no
/// `bind(…:0)` can take it between this call and the server's own bind — neither a
/// [`TestApp`]'s listener nor any connection's local port. A port taken from `bind(…:0)` and
/// released was once handed to the very next `TestApp`: nginx then could not listen, and its
/// readiness check reached Satchel itself. Never the same port twice in one process, from a
/// random start so that parallel test processes keep apart; each is checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const LOW: u32 = 10_000;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_536);
    if high < LOW + 1_000 {
        // An unusual range leaves no room below it: the kernel's choice, as before.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
    }
    let span = high - LOW;
    let start = *START.get_or_init(|| rand::random::<u32>() % span);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOW + (start + n) % span) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {high}");
}

impl NginxServer {
    /// The nginx config for a Satchel at `upstream` whose local storage root is `root`.
    pub fn config(
        listen: u16,
        upstream: SocketAddr,
        accel_prefix: &str,
        root: &std::path::Path,
        dir: &std::path::Path,
    ) -> String {
        let d = dir.display();
        format!(
            r#"user root root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://{upstream};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            client_max_body_size 0;
        }}
        location {accel_prefix} {{
            internal;
            alias {root}/;
        }}
    }}
}}
"#,
            root = root.display()
        )
    }

    /// Starts nginx on `port` in front of `upstream`; `None` (after [`skip`]) when nginx is missing.
    pub async fn start(port: u16, upstream: SocketAddr, accel_prefix: &str, root: &std::path::Path) -> Option<Self> {
        let bin = std::env::var("SATCHEL_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        if Command::new(&bin).arg("-v").stderr(Stdio::null()).status().is_err() {
            skip("nginx tests: nginx is not installed (apt-get install nginx-light)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, Self::config(port, upstream, accel_prefix, root, dir.path())).expect("write nginx.conf");
        let mut child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx");
        let base_url = format!("http://127.0.0.1:{port}");
        // Readiness: Satchel's health check answers through nginx — nginx's own `Server`
        // header on it, so an answer from anything else on the port does not count.
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{base_url}/healthz")).send().await {
                let by_nginx = r
                    .headers()
                    .get("server")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("nginx"));
                if r.status().is_success() && by_nginx {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}) instead of listening on {port}: {log}");
            }
            assert!(std::time::Instant::now() < deadline, "nginx did not come up on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Self {
            base_url,
            child,
            _dir: dir,
        })
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its worker; SIGKILL would leave the worker orphaned.
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_stale_after_an_hour_or_without_a_time() {
        let now = crate::ids::now();
        assert!(!is_stale(Some(&now.to_string())));
        assert!(!is_stale(Some(&(now - STALE_AFTER_SECS + 5).to_string())));
        assert!(is_stale(Some(&(now - STALE_AFTER_SECS - 5).to_string())));
        assert!(is_stale(None), "a name from before times were part of it");
        assert!(is_stale(Some("x8f3k2")), "a name whose part is not a time");
    }
}
