//! The application: configuration plus every shared handle (database, storage, keys,
//! job registry). Cheap to clone; handlers, jobs and the CLI all take an [`App`].

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::db::Db;
use crate::http::metrics::Metrics;
use crate::jobs::{Registry, Worker};
use crate::keys::Keys;
use crate::storage::DynStorage;

pub struct AppInner {
    pub cfg: Config,
    pub db: Db,
    pub storage: DynStorage,
    pub keys: Keys,
    pub metrics: Metrics,
    pub rate_limiter: crate::http::ratelimit::RateLimiter,
    /// Group commit of download starts (see `delivery::batch`).
    pub download_starts: crate::delivery::batch::Batcher,
    /// Key-guessing counters and the validation cache of this instance.
    pub licensing: crate::licensing::Runtime,
    /// What this instance has seen of each grant's downloads (abuse detection's pre-filter).
    pub abuse: crate::abuse::Tracker,
    /// Rung after a commit that enqueued jobs, so the in-process worker starts at once.
    pub job_wake: Arc<Notify>,
    pub registry: Arc<Registry<App>>,
}

#[derive(Clone)]
pub struct App(Arc<AppInner>);

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Every job kind the app knows, in one place.
fn registry() -> Registry<App> {
    let mut r = Registry::default();
    r.register(crate::scheduler::run_housekeeping);
    r.register(crate::mail::send);
    r.register(crate::affiliates::run_release);
    r.register(crate::subscriptions::run_expire);
    r.register(crate::watermark::run_prepare);
    r
}

impl App {
    /// Connects to the database (applying migrations), opens storage and loads keys.
    pub async fn open(cfg: Config) -> anyhow::Result<Self> {
        Self::open_with_schema(cfg, None).await
    }

    pub async fn open_with_schema(cfg: Config, pg_schema: Option<&str>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "data directory {} is not writable ({e}); choose another with --data-dir",
                cfg.data_dir.display()
            )
        })?;
        check_writable(&cfg.data_dir)?;
        cfg.check_delivery()?;
        let db = Db::connect(&cfg.database_url(), cfg.database.max_connections, pg_schema)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e:#}"))?;
        db.migrate()
            .await
            .map_err(|e| anyhow::anyhow!("database migration failed: {e:#}"))?;
        let storage = crate::storage::from_config(&cfg)?;
        let keys = Keys::load_or_generate(&cfg.keys_dir())?;
        let licensing = crate::licensing::Runtime::new(&cfg.licenses, &db);
        let download_starts = crate::delivery::batch::Batcher::on_cpu(cfg.server.batcher_cpu);
        Ok(App(Arc::new(AppInner {
            cfg,
            db,
            storage,
            keys,
            metrics: Metrics::default(),
            rate_limiter: crate::http::ratelimit::RateLimiter::default(),
            download_starts,
            licensing,
            abuse: crate::abuse::Tracker::default(),
            job_wake: Arc::new(Notify::new()),
            registry: Arc::new(registry()),
        })))
    }

    pub fn worker(&self, id: String) -> Worker<App> {
        Worker {
            db: self.db.clone(),
            registry: self.registry.clone(),
            ctx: self.clone(),
            id,
            lease_secs: self.cfg.jobs.lease_secs,
            wake: self.job_wake.clone(),
        }
    }

    /// Wakes the in-process worker (call after committing a transaction that enqueued jobs).
    pub fn jobs_enqueued(&self) {
        self.job_wake.notify_waiters();
    }
}

fn check_writable(dir: &std::path::Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| {
        anyhow::anyhow!(
            "data directory {} is not writable ({e}); choose another with --data-dir",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
