//! Persistence: one query code path for SQLite and PostgreSQL.
//!
//! Every query is written once, in the SQL both engines share, with `$1, $2…` placeholders
//! (sqlx's SQLite driver maps `$N` to the N-th argument, so the text is identical). A
//! [`Query`] carries its SQL and its arguments as plain values ([`Arg`]); [`Exec`] runs it on
//! whichever backend the URL chose, on a pool or inside a [`Tx`], and decodes rows with one
//! `#[derive(sqlx::FromRow)]` struct that implements `FromRow` for both row types.
//!
//! Rules that keep the two engines in step (see docs/architecture.md):
//! - integers are `BIGINT` (i64) everywhere; times are unix seconds in `BIGINT`;
//! - `SUM()` is wrapped in `CAST(… AS BIGINT)` (PostgreSQL widens it to NUMERIC);
//! - booleans are `BOOLEAN` (SQLite stores 0/1, decoding is the same);
//! - the only dialect switches are [`Backend::skip_locked`] and full-text search.
//!
//! Write transactions on SQLite start with `BEGIN IMMEDIATE`, so two writers queue on the
//! busy timeout instead of failing when a read lock is upgraded.

pub mod models;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{FromRow, Postgres, Sqlite};
use tokio::sync::Mutex;

pub use sqlx::Error as DbError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Row-locking suffix for queue claims: PostgreSQL skips rows other workers hold;
    /// SQLite has one writer at a time, so the plain statement is already exclusive.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A parsed database URL.
#[derive(Debug, Clone)]
pub enum DbUrl {
    Sqlite(String),
    Postgres(String),
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(DbUrl::Sqlite(url.to_string())),
            "postgres" | "postgresql" => {
                url::Url::parse(url).map_err(|e| format!("malformed PostgreSQL URL: {e}"))?;
                Ok(DbUrl::Postgres(url.to_string()))
            }
            "" => Err("empty database URL: use sqlite:///path/satchel.db or postgres://user@host/db".into()),
            other => Err(format!(
                "database backend {other:?} is not compiled into this build: use sqlite:///path/satchel.db or postgres://user@host/db"
            )),
        }
    }
}

/// One bound value. Nulls keep their type because PostgreSQL checks parameter types.
#[derive(Debug, Clone)]
pub enum Arg {
    I64(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
    /// A PostgreSQL `text[]`, sent in binary (no text to parse on the server). SQLite has no
    /// arrays: there it is bound as a JSON array (`json_each` reads it).
    TextArray(Vec<String>),
    /// A PostgreSQL `bigint[]`, sent in binary; a JSON array on SQLite.
    I64Array(Vec<i64>),
}

macro_rules! arg_from {
    ($t:ty, $variant:ident, $conv:expr) => {
        impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                Arg::$variant(Some($conv(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Self {
                Arg::$variant(v.map($conv))
            }
        }
    };
}
arg_from!(i64, I64, |v| v);
arg_from!(i32, I64, i64::from);
arg_from!(u32, I64, i64::from);
arg_from!(bool, Bool, |v| v);
arg_from!(String, Text, |v| v);
arg_from!(&str, Text, |v: &str| v.to_string());
arg_from!(&String, Text, |v: &String| v.clone());
arg_from!(Vec<u8>, Bytes, |v| v);

impl From<Vec<String>> for Arg {
    fn from(v: Vec<String>) -> Self {
        Arg::TextArray(v)
    }
}
impl From<Vec<i64>> for Arg {
    fn from(v: Vec<i64>) -> Self {
        Arg::I64Array(v)
    }
}

impl Arg {
    /// An array argument as the JSON text SQLite binds instead.
    fn json_array(&self) -> Option<String> {
        match self {
            Arg::TextArray(v) => serde_json::to_string(v).ok(),
            Arg::I64Array(v) => serde_json::to_string(v).ok(),
            _ => None,
        }
    }
}

/// SQL text plus its arguments, runnable on either backend.
#[derive(Debug, Clone)]
pub struct Query {
    pub sql: Cow<'static, str>,
    pub args: Vec<Arg>,
}

impl Query {
    pub fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
        }
    }
    #[must_use]
    pub fn bind(mut self, a: impl Into<Arg>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Adds an argument and returns its placeholder (`$N`), for queries built piece by piece.
    pub fn arg(&mut self, a: impl Into<Arg>) -> String {
        self.args.push(a.into());
        format!("${}", self.args.len())
    }
    pub fn push_sql(&mut self, s: &str) {
        self.sql.to_mut().push_str(s);
    }
    /// Keyset pagination, newest first, after the query's `WHERE`: rows whose `col` sorts
    /// below `cursor` (when there is one), by `col` descending, `limit + 1` of them, so that
    /// [`next_page`] can tell whether another page follows.
    pub fn page_desc(&mut self, col: &str, cursor: Option<&str>, limit: i64) {
        if let Some(c) = cursor.filter(|c| !c.is_empty()) {
            let a = self.arg(c);
            self.push_sql(&format!(" AND {col} < {a}"));
        }
        let a = self.arg(limit + 1);
        self.push_sql(&format!(" ORDER BY {col} DESC LIMIT {a}"));
    }
    fn sqlite(&self) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
        let mut q = sqlx::query(&self.sql);
        for a in &self.args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Bool(v) => q.bind(*v),
                Arg::Bytes(v) => q.bind(v.as_deref()),
                Arg::TextArray(_) | Arg::I64Array(_) => q.bind(a.json_array()),
            };
        }
        q
    }
    fn pg(&self) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(&self.sql);
        for a in &self.args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Bool(v) => q.bind(*v),
                Arg::Bytes(v) => q.bind(v.as_deref()),
                Arg::TextArray(v) => q.bind(v.as_slice()),
                Arg::I64Array(v) => q.bind(v.as_slice()),
            };
        }
        q
    }
}

/// Tables whose rows some module keeps in an in-process cache (`licensing::cache`: license
/// rows behind validations). A committed statement that writes one bumps
/// [`cached_writes`], before the call that committed returns, so a cache entry read at an
/// older count is known to be stale: in this process a change is seen by every read that
/// starts after the change returned, whichever module made it.
pub const CACHED_TABLES: &[&str] = &["license_keys"];

static CACHED_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many committed writes to [`CACHED_TABLES`] this process has made.
pub fn cached_writes() -> u64 {
    CACHED_WRITES.load(std::sync::atomic::Ordering::Acquire)
}

fn bump_cached_writes() {
    CACHED_WRITES.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

impl Query {
    /// Whether this statement may write one of the [`CACHED_TABLES`].
    fn writes_cached_table(&self) -> bool {
        let head = self.sql.trim_start().get(..6).unwrap_or_default();
        !head.eq_ignore_ascii_case("select") && CACHED_TABLES.iter().any(|t| self.sql.contains(t))
    }
}

/// `sql!("SELECT … WHERE id = $1", id)` builds a [`Query`].
#[macro_export]
macro_rules! sql {
    ($sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::db::Query::new($sql)$(.bind($arg))*
    };
}

/// A row type decodable from both backends: derive `sqlx::FromRow` and it qualifies.
pub trait FromDbRow: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}
impl<T> FromDbRow for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

/// Something queries run on: the pool ([`Db`]) or an open transaction ([`Tx`]).
#[async_trait]
pub trait Exec: Send + Sync {
    fn backend(&self) -> Backend;
    /// Runs a statement; returns the number of rows it touched.
    async fn execute(&self, q: Query) -> Result<u64, DbError>;
    async fn fetch_all<T: FromDbRow>(&self, q: Query) -> Result<Vec<T>, DbError>;
    async fn fetch_optional<T: FromDbRow>(&self, q: Query) -> Result<Option<T>, DbError>;
    async fn fetch_one<T: FromDbRow>(&self, q: Query) -> Result<T, DbError> {
        self.fetch_optional(q).await?.ok_or(DbError::RowNotFound)
    }
    /// First column of the first row as i64 (`COUNT(*)`, `CAST(SUM(x) AS BIGINT)`, …).
    async fn fetch_i64(&self, q: Query) -> Result<i64, DbError> {
        let (v,): (Option<i64>,) = self.fetch_one(q).await?;
        Ok(v.unwrap_or(0))
    }
}

macro_rules! run_on {
    ($backend:ident, $exec:expr, $q:expr, execute) => {{
        let r = $q.$backend().execute($exec).await?;
        Ok(r.rows_affected())
    }};
    ($backend:ident, $exec:expr, $q:expr, fetch_all) => {{
        let rows = $q.$backend().fetch_all($exec).await?;
        rows.iter().map(|r| T::from_row(r)).collect()
    }};
    ($backend:ident, $exec:expr, $q:expr, fetch_optional) => {{
        match $q.$backend().fetch_optional($exec).await? {
            Some(r) => Ok(Some(T::from_row(&r)?)),
            None => Ok(None),
        }
    }};
}

/// The connection pool of the configured backend.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[async_trait]
impl Exec for Db {
    fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }
    async fn execute(&self, q: Query) -> Result<u64, DbError> {
        let watched = q.writes_cached_table();
        let r = match self {
            Db::Sqlite(p) => run_on!(sqlite, p, q, execute),
            Db::Postgres(p) => run_on!(pg, p, q, execute),
        };
        if watched {
            bump_cached_writes();
        }
        r
    }
    async fn fetch_all<T: FromDbRow>(&self, q: Query) -> Result<Vec<T>, DbError> {
        let watched = q.writes_cached_table();
        let r = match self {
            Db::Sqlite(p) => run_on!(sqlite, p, q, fetch_all),
            Db::Postgres(p) => run_on!(pg, p, q, fetch_all),
        };
        if watched {
            bump_cached_writes();
        }
        r
    }
    async fn fetch_optional<T: FromDbRow>(&self, q: Query) -> Result<Option<T>, DbError> {
        let watched = q.writes_cached_table();
        let r = match self {
            Db::Sqlite(p) => run_on!(sqlite, p, q, fetch_optional),
            Db::Postgres(p) => run_on!(pg, p, q, fetch_optional),
        };
        if watched {
            bump_cached_writes();
        }
        r
    }
}

enum TxInner {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    backend: Backend,
    /// A statement wrote one of the [`CACHED_TABLES`]: bump the count once committed.
    wrote_cached: std::sync::atomic::AtomicBool,
    // A mutex so that `&Tx` can run queries like `&Db` does; a transaction is used by one
    // task at a time, so the lock is never contended.
    inner: Mutex<TxInner>,
}

impl Tx {
    pub async fn commit(self) -> Result<(), DbError> {
        let wrote_cached = self.wrote_cached.load(std::sync::atomic::Ordering::Acquire);
        // Bumped whether or not the commit reported success: an error can come after the
        // database committed, and a needless bump only costs a cache refill.
        let r = match self.inner.into_inner() {
            TxInner::Sqlite(t) => t.commit().await,
            TxInner::Postgres(t) => t.commit().await,
        };
        if wrote_cached {
            bump_cached_writes();
        }
        r
    }

    fn note(&self, q: &Query) {
        if q.writes_cached_table() {
            self.wrote_cached.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

#[async_trait]
impl Exec for Tx {
    fn backend(&self) -> Backend {
        self.backend
    }
    async fn execute(&self, q: Query) -> Result<u64, DbError> {
        self.note(&q);
        let mut g = self.inner.lock().await;
        match &mut *g {
            TxInner::Sqlite(t) => run_on!(sqlite, &mut **t, q, execute),
            TxInner::Postgres(t) => run_on!(pg, &mut **t, q, execute),
        }
    }
    async fn fetch_all<T: FromDbRow>(&self, q: Query) -> Result<Vec<T>, DbError> {
        self.note(&q);
        let mut g = self.inner.lock().await;
        match &mut *g {
            TxInner::Sqlite(t) => run_on!(sqlite, &mut **t, q, fetch_all),
            TxInner::Postgres(t) => run_on!(pg, &mut **t, q, fetch_all),
        }
    }
    async fn fetch_optional<T: FromDbRow>(&self, q: Query) -> Result<Option<T>, DbError> {
        self.note(&q);
        let mut g = self.inner.lock().await;
        match &mut *g {
            TxInner::Sqlite(t) => run_on!(sqlite, &mut **t, q, fetch_optional),
            TxInner::Postgres(t) => run_on!(pg, &mut **t, q, fetch_optional),
        }
    }
}

/// One connection taken from a pool and kept by its holder (the download-start batcher):
/// statements on it skip the pool's acquire and release. Each of those costs a round trip to
/// the database: sqlx pings a connection when it is taken (`test_before_acquire`) and again,
/// always, when it is given back — on PostgreSQL two exchanges with the server around every
/// statement. Dropped, the connection goes back to its pool.
pub struct Held {
    backend: Backend,
    inner: Mutex<HeldInner>,
}

enum HeldInner {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    Postgres(sqlx::pool::PoolConnection<Postgres>),
}

impl Held {
    /// Whether the connection still answers (one round trip): a connection idle for a while
    /// may have been closed by the server (a restart) since its last statement.
    pub async fn alive(&self) -> bool {
        use sqlx::Connection;
        let mut g = self.inner.lock().await;
        match &mut *g {
            HeldInner::Sqlite(c) => c.ping().await.is_ok(),
            HeldInner::Postgres(c) => c.ping().await.is_ok(),
        }
    }
}

/// One statement on a [`Held`] connection (the same steps for every kind of statement).
macro_rules! on_held {
    ($held:expr, $q:expr, $op:ident) => {{
        let watched = $q.writes_cached_table();
        let mut g = $held.inner.lock().await;
        let r = match &mut *g {
            HeldInner::Sqlite(c) => run_on!(sqlite, &mut **c, $q, $op),
            HeldInner::Postgres(c) => run_on!(pg, &mut **c, $q, $op),
        };
        if watched {
            bump_cached_writes();
        }
        r
    }};
}

#[async_trait]
impl Exec for Held {
    fn backend(&self) -> Backend {
        self.backend
    }
    async fn execute(&self, q: Query) -> Result<u64, DbError> {
        on_held!(self, q, execute)
    }
    async fn fetch_all<T: FromDbRow>(&self, q: Query) -> Result<Vec<T>, DbError> {
        on_held!(self, q, fetch_all)
    }
    async fn fetch_optional<T: FromDbRow>(&self, q: Query) -> Result<Option<T>, DbError> {
        on_held!(self, q, fetch_optional)
    }
}

/// A PostgreSQL connection back from its last statement less than this ago is used without
/// a ping first (see `pg_pool_options`).
pub const TRUST_IDLE: Duration = Duration::from_secs(1);

/// PostgreSQL pools: sqlx by default pings every connection it hands out
/// (`test_before_acquire`), a round trip to the server before every statement on top of the
/// one it always makes when a connection is given back. A connection given back less than
/// [`TRUST_IDLE`] ago has just answered that ping, so only connections idle for longer — when
/// a server restart or a dropped network could have ended them — are pinged; one that does
/// not answer is closed and another opened in its place, so the caller never sees it.
fn pg_pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(60))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                use sqlx::Connection;
                Ok(meta.idle_for < TRUST_IDLE || conn.ping().await.is_ok())
            })
        })
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// The SQLite database's file, for the threads that open connections of their own beside
    /// the pool (the download-start writer, the license cache's watcher); `None` on
    /// PostgreSQL and for an in-memory database (`sqlite::memory:`, which sqlx names
    /// `file:sqlx-in-memory-N`, or a `?mode=memory` URL, whose name is no file), which no
    /// other connection could open by name.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        let Db::Sqlite(pool) = self else { return None };
        let options = pool.connect_options();
        let file = options.get_filename();
        // sqlx keeps `mode=memory` in a field it does not expose but prints (the test below
        // notices if that ever changes).
        let in_memory = file.as_os_str().is_empty()
            || file.as_os_str() == ":memory:"
            || format!("{options:?}").contains("in_memory: true");
        (!in_memory).then(|| file.to_path_buf())
    }

    /// Connects to `url`. `pg_schema` puts every connection's `search_path` on one schema
    /// (the test harness gives each test its own).
    pub async fn connect(url: &str, max_connections: u32, pg_schema: Option<&str>) -> anyhow::Result<Self> {
        match DbUrl::parse(url).map_err(anyhow::Error::msg)? {
            DbUrl::Sqlite(u) => {
                let opts = SqliteConnectOptions::from_str(&u)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // Every commit reaches the disk before it returns: a paid order, a grant or
                    // a license answered to a buyer survives a power cut or a host crash (with
                    // NORMAL, the commits since the log's last sync would be undone). So
                    // does the download-start writer (`delivery::batch::SqliteWriter`).
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
                    // Statement journals (multi-row writes) in memory, not temp files; pages
                    // read through a shared mapping instead of copied per connection, so a
                    // connection whose cache another writer invalidated re-reads cheaply.
                    .pragma("temp_store", "memory")
                    .pragma("mmap_size", "268435456");
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections.clamp(1, 8))
                    .acquire_timeout(Duration::from_secs(60))
                    // A file on this machine: there is no server whose end could have gone,
                    // and sqlx's ping is a round trip to the connection's worker thread.
                    .test_before_acquire(false)
                    .connect_with(opts)
                    .await?;
                Ok(Db::Sqlite(pool))
            }
            DbUrl::Postgres(u) => {
                // Named in `pg_stat_activity` (the URL's `application_name` wins when it has one).
                let mut opts = PgConnectOptions::from_str(&u)?;
                if opts.get_application_name().is_none() {
                    opts = opts.application_name(
                        match pg_schema {
                            Some(schema) => format!("satchel:{schema}"),
                            None => "satchel".to_string(),
                        }
                        .as_str(),
                    );
                }
                if let Some(schema) = pg_schema {
                    opts = opts.options([("search_path", schema)]);
                }
                let pool = pg_pool_options()
                    .max_connections(max_connections.max(2))
                    .connect_with(opts)
                    .await?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Db::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    pub async fn begin(&self) -> Result<Tx, DbError> {
        let inner = match self {
            Db::Sqlite(p) => TxInner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => TxInner::Postgres(p.begin().await?),
        };
        Ok(Tx {
            backend: self.backend(),
            wrote_cached: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(inner),
        })
    }

    /// Takes one connection from the pool to keep ([`Held`]).
    pub async fn hold(&self) -> Result<Held, DbError> {
        let inner = match self {
            Db::Sqlite(p) => HeldInner::Sqlite(p.acquire().await?),
            Db::Postgres(p) => HeldInner::Postgres(p.acquire().await?),
        };
        Ok(Held {
            backend: self.backend(),
            inner: Mutex::new(inner),
        })
    }

    /// A pool of its own (at most `max` connections, opened lazily) to the same database, for
    /// a task that keeps a writer busy — download-start batches: its connection's page cache
    /// stays warm, and it never queues behind the shared pool (nor the pool behind it).
    /// On PostgreSQL its connections are named after `task` in `pg_stat_activity`.
    pub fn dedicated(&self, max: u32, task: &str) -> Db {
        self.dedicated_with(max, task, &[])
    }

    /// [`Db::dedicated`] for a task whose every statement finds its rows by key (the download
    /// batcher: a round's grants by primary key, their products and files by key). On
    /// PostgreSQL its connections plan with sequential scans off: on a small store whose
    /// statistics are missing (new, or autovacuum off) the planner otherwise takes a round
    /// as a scan of every grant re-run for each of the round's rows — a cost per round of
    /// grants × starts, which at 256 clients made PostgreSQL spend 95 µs per start instead of
    /// 15 (docs/operations.md, "Where PostgreSQL's rate stands"). With sequential scans
    /// off it looks each grant up by key whatever the statistics say. Bitmap scans are off
    /// too: without them a start's file is the first entry of the `(version_id, name)` index
    /// in name order, where a bitmap scan collected the version's files and sorted them for
    /// every start. And each statement is planned once, generically (`plan_cache_mode`): by
    /// default PostgreSQL plans a prepared statement afresh for its first five runs, then keeps
    /// doing so for as long as those plans look cheaper than the generic one — which small
    /// rounds on a quiet store can make it believe for the connection's whole life. Planning
    /// the round statement each time cost a third of its rate under `pgbench` (760 against
    /// 1 190 rounds/s of 22 starts; docs/operations.md, "The first file on the product").
    pub fn dedicated_keyed(&self, max: u32, task: &str) -> Db {
        self.dedicated_with(
            max,
            task,
            &[
                ("enable_seqscan", "off"),
                ("enable_bitmapscan", "off"),
                ("plan_cache_mode", "force_generic_plan"),
            ],
        )
    }

    fn dedicated_with(&self, max: u32, task: &str, pg_settings: &[(&str, &str)]) -> Db {
        match self {
            Db::Sqlite(p) => Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
            Db::Postgres(p) => {
                let opts = (*p.connect_options()).clone();
                let name = format!("{} ({task})", opts.get_application_name().unwrap_or("satchel"));
                Db::Postgres(
                    pg_pool_options()
                        .max_connections(max)
                        .connect_lazy_with(opts.application_name(&name).options(pg_settings.iter().copied())),
                )
            }
        }
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.execute(Query::new("SELECT 1")).await.map(|_| ())
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// True when the error is a unique-constraint violation (turned into 409s by callers).
pub fn is_unique_violation(e: &DbError) -> bool {
    match e {
        DbError::Database(d) => d.is_unique_violation(),
        _ => false,
    }
}

/// Cuts rows fetched with [`Query::page_desc`] to `limit`; returns the cursor of the next
/// page (the last row's key), or `None` on the last page.
pub fn next_page<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> &str) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|r| key(r).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a database on disk has a file the writer and the license watcher may open.
    #[tokio::test]
    async fn only_a_database_on_disk_names_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let on_disk = Db::connect(&format!("sqlite://{}", path.display()), 1, None)
            .await
            .unwrap();
        assert_eq!(on_disk.sqlite_file(), Some(path));
        for url in ["sqlite::memory:", "sqlite://elsewhere.db?mode=memory"] {
            let db = Db::connect(url, 1, None).await.unwrap();
            assert_eq!(db.sqlite_file(), None, "{url}");
            db.close().await;
        }
        assert!(!std::path::Path::new("elsewhere.db").exists(), "no file made for it");
        on_disk.close().await;
    }

    /// A pooled PostgreSQL connection the server ended while it sat idle (a restart, an
    /// administrator's `pg_terminate_backend`) is noticed when handed out and replaced: the
    /// statement that gets it does not fail.
    #[tokio::test]
    async fn a_connection_ended_while_idle_is_replaced_unseen() {
        if !crate::testing::backends().await.contains(&Backend::Postgres) {
            return;
        }
        let t = crate::testing::TestApp::start(Backend::Postgres).await;
        // A pool of one connection, so the next statement gets the one that was ended.
        let pool = t.app.db.dedicated(1, "idle test");
        let one = crate::sql!("SELECT CAST(1 AS BIGINT)");
        assert_eq!(pool.fetch_i64(one.clone()).await.unwrap(), 1);
        let Db::Postgres(p) = &pool else { unreachable!() };
        // Given back (sqlx pings it on the way back to the pool).
        while p.num_idle() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            t.end_pg_connections("idle test").await,
            1,
            "the pool's one connection was ended"
        );
        tokio::time::sleep(TRUST_IDLE + Duration::from_millis(100)).await;
        assert_eq!(
            pool.fetch_i64(one)
                .await
                .expect("the ended connection is noticed and replaced"),
            1
        );
        assert_eq!(p.size(), 1);
    }
}
