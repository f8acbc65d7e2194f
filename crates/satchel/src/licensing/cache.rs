//! In-process cache of what validations read, on both backends (a validation that reads the
//! database costs several statements; one answered from memory costs its signature).
//!
//! An entry is the `Snapshot` one validation read — a license plus the device it named —
//! kept for at most `licenses.validation_cache_secs`. What keeps it exact:
//!
//! - **Changes made by this process** (any module: seller actions, refunds, disputes,
//!   subscriptions, activations): every committed write to `license_keys` bumps
//!   [`crate::db::cached_writes`] before the call that made it returns, and entries carry the
//!   count they were read at. A change is therefore seen by every validation that starts
//!   after the changing call returned. (Activations and deactivations always move the
//!   license's `activations` counter, so they write `license_keys` too.)
//! - **Changes made by other instances**: on PostgreSQL, database triggers (migration 0010)
//!   `NOTIFY satchel_licenses` at commit; a listener task drops every entry when one arrives,
//!   so another instance's change is seen as soon as the notification is in (about a
//!   millisecond on one host). On SQLite, triggers (migration 0014) move a change counter
//!   that a watcher thread reads on its own connection whenever another connection has
//!   committed (it asks SQLite every [`SQLITE_POLL`], 2 ms, while commits come, and at
//!   most every [`SQLITE_IDLE_POLL`], 50 ms, when the store is idle).
//! - **The listener itself**: it answers a ping through the database every
//!   [`PING_EVERY`]; until its first answer, and from the moment its connection fails or a
//!   ping goes unanswered, the cache is off (every validation reads the database) and
//!   emptied, because notifications may have been missed.
//! - `NOT_FOUND` is never cached, so a new license is seen at once. The one thing allowed to
//!   lag is a device's check-in time as seen by *other* instances (check-ins are not
//!   announced; it lags by at most the cache lifetime, and check-ins are only written every
//!   few minutes anyway).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::Snapshot;

/// The NOTIFY channel of migration 0010's triggers.
pub const CHANNEL: &str = "satchel_licenses";
/// How often the listener proves it still hears the database.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// Most entries kept; a full cache starts over.
const MAX_ENTRIES: usize = 100_000;

/// When an entry was read: the process's write count and the cache's change count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    writes: u64,
    changes: u64,
}

#[derive(Debug)]
struct Entry {
    snapshot: Arc<Snapshot>,
    stamp: Stamp,
    at: Instant,
}

#[derive(Debug)]
pub struct ValidationCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped by every change notification and by every listener outage.
    changes: AtomicU64,
    live: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    reconnects: AtomicU64,
    /// The listener connection's backend pid (0 while there is none).
    listener_pid: AtomicU64,
}

fn cache_key(key: &str, fp: Option<&str>, activation_id: Option<&str>) -> String {
    let (fp, act) = (fp.unwrap_or_default(), activation_id.unwrap_or_default());
    let mut k = String::with_capacity(key.len() + fp.len() + act.len() + 2);
    for part in [key, fp, act] {
        k.push_str(part);
        k.push('\n');
    }
    k
}

impl ValidationCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            listener_pid: AtomicU64::new(0),
        }
    }

    /// Take before reading the database; store the result with it.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            writes: crate::db::cached_writes(),
            changes: self.changes.load(Ordering::Acquire),
        }
    }

    /// Whether the listener is subscribed and answering, i.e. entries may be used.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// A fresh entry for this validation, if any.
    pub(crate) fn get(&self, key: &str, fp: Option<&str>, activation_id: Option<&str>) -> Option<Arc<Snapshot>> {
        if !self.is_live() {
            return None;
        }
        let stamp = self.stamp();
        let found = self.entries.lock().ok().and_then(|entries| {
            entries
                .get(&cache_key(key, fp, activation_id))
                .filter(|e| e.stamp == stamp && e.at.elapsed() < self.ttl)
                .map(|e| e.snapshot.clone())
        });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps what a validation read at `stamp`, unless something changed since.
    pub(crate) fn put(
        &self,
        key: &str,
        fp: Option<&str>,
        activation_id: Option<&str>,
        snapshot: Arc<Snapshot>,
        stamp: Stamp,
    ) {
        if !self.is_live() || self.stamp() != stamp {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            cache_key(key, fp, activation_id),
            Entry {
                snapshot,
                stamp,
                at: Instant::now(),
            },
        );
    }

    /// After this process wrote a device's check-in: the cached copy shows it too (check-ins
    /// are not announced, so nothing else would refresh it).
    pub fn checked_in(&self, key: &str, fp: Option<&str>, activation_id: Option<&str>, at: i64) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if let Some(e) = entries.get_mut(&cache_key(key, fp, activation_id)) {
            let mut s = (*e.snapshot).clone();
            for a in [&mut s.by_fingerprint, &mut s.by_id].into_iter().flatten() {
                a.last_check_in_at = a.last_check_in_at.max(at);
            }
            e.snapshot = Arc::new(s);
        }
    }

    /// Some license changed (or changes may have been missed): drop everything.
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
            self.changed();
        } else {
            self.live.store(true, Ordering::Release);
        }
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// How many times the listener had to connect again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The listener connection's PostgreSQL backend pid, if connected.
    pub fn listener_pid(&self) -> Option<i32> {
        i32::try_from(self.listener_pid.load(Ordering::Acquire))
            .ok()
            .filter(|p| *p != 0)
    }
}

/// Starts the listener that keeps `cache` exact; it ends when the cache is dropped.
pub fn spawn_listener(cache: &Arc<ValidationCache>, pool: PgPool) {
    let weak = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            let Some(cache) = weak.upgrade() else { return };
            if !first {
                cache.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            drop(cache);
            match listen(&weak, &pool).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, "license cache listener: connection lost; validations read the database until it is back");
                }
            }
            let Some(cache) = weak.upgrade() else { return };
            cache.listener_pid.store(0, Ordering::Release);
            cache.set_live(false);
            drop(cache);
            if pool.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

/// One listener connection's life: subscribe, prove it with a ping, then drop entries on
/// every change until the connection fails or stops answering pings.
async fn listen(weak: &Weak<ValidationCache>, pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let (schema, pid): (String, i32) = sqlx::query_as("SELECT current_schema(), pg_backend_pid()")
        .fetch_one(&mut listener)
        .await?;
    let ping_prefix = format!("{schema} ping {} ", crate::ids::random_token(8));
    let mut seq = 0u64;
    let mut awaiting: Option<(String, Instant)> = None;
    let mut next_ping = Instant::now();
    match weak.upgrade() {
        Some(c) => c.listener_pid.store(u64::try_from(pid).unwrap_or(0), Ordering::Release),
        None => return Ok(()),
    }
    loop {
        if awaiting.is_none() && Instant::now() >= next_ping {
            seq += 1;
            let token = format!("{ping_prefix}{seq}");
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&token)
                .execute(pool)
                .await?;
            awaiting = Some((token, Instant::now()));
        }
        let wake = match &awaiting {
            Some((_, sent)) => *sent + PING_EVERY,
            None => next_ping,
        };
        let got = tokio::time::timeout_at(tokio::time::Instant::from_std(wake), listener.try_recv()).await;
        let Some(cache) = weak.upgrade() else { return Ok(()) };
        match got {
            Err(_) => {
                if let Some((_, sent)) = &awaiting {
                    if sent.elapsed() >= PING_EVERY {
                        return Err(sqlx::Error::Protocol("no answer to the liveness ping".into()));
                    }
                }
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Some(n))) => {
                let payload = n.payload();
                let Some(rest) = payload.strip_prefix(&schema).and_then(|r| r.strip_prefix(' ')) else {
                    continue; // another schema's (another store's, or another test's) change
                };
                if awaiting.as_ref().is_some_and(|(token, _)| token == payload) {
                    awaiting = None;
                    next_ping = Instant::now() + PING_EVERY;
                    cache.set_live(true);
                } else if !rest.starts_with("ping ") {
                    cache.changed();
                }
            }
        }
    }
}

/// How often the SQLite watcher looks for commits by other connections while the database is
/// being written: the most another process's change can lag on this instance then.
pub const SQLITE_POLL: Duration = Duration::from_millis(2);
/// The longest the watcher waits between looks once nothing has been committed for a while
/// (it doubles its wait from [`SQLITE_POLL`] up to this): the most another process's change
/// can lag on an idle store.
pub const SQLITE_IDLE_POLL: Duration = Duration::from_millis(50);

/// The watcher's next wait: back to [`SQLITE_POLL`] after a look that found commits, else
/// twice the last, up to [`SQLITE_IDLE_POLL`].
fn next_wait(last: Duration, seen: Seen) -> Duration {
    match seen {
        Seen::Quiet => (last * 2).min(SQLITE_IDLE_POLL),
        Seen::Commits | Seen::LicenseChange => SQLITE_POLL,
    }
}

/// What one look of the SQLite watcher found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// No other connection committed since the last look.
    Quiet,
    /// Commits, none of which changed a license.
    Commits,
    /// A license changed.
    LicenseChange,
}

/// SQLite: changes by other processes (a `satchel worker`, an admin command) are seen through
/// migration 0014's `license_changes` counter, which triggers move with every license change.
///
/// A thread of its own (not a task: nothing of it touches the HTTP runtime) holds its own
/// connection and asks SQLite whether any other connection committed since its last look
/// (`PRAGMA data_version`, answered from the log's shared-memory index: two file-lock calls,
/// no I/O); only then does it read the counter, and a moved counter empties the cache. It
/// looks every [`SQLITE_POLL`] (2 ms) while commits come, and waits twice as long after each
/// quiet look, up to [`SQLITE_IDLE_POLL`] (50 ms), so an idle store wakes it 20 times a
/// second, not 500 (which cost ~1.7 % of a core on a 2-core VM, nearly all the timer's
/// wake-ups). (It first read the counter through the pool's async driver every 2 ms: a hop to
/// the driver's worker thread and back each time, 5.6 % of a core with the store idle,
/// ~1.5 µs per download start under load.) Until the first read — or from a failed one — the
/// cache is off.
///
/// `file` is the database file; `None` (an in-memory database) has no other process that
/// could write it, so the cache is live at once with no watcher.
pub fn spawn_sqlite_watcher(cache: &Arc<ValidationCache>, file: Option<std::path::PathBuf>) {
    let Some(file) = file else {
        cache.set_live(true);
        return;
    };
    let weak = Arc::downgrade(cache);
    let spawned = std::thread::Builder::new()
        .name("satchel-license-watch".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(50);
            loop {
                match ChangeWatch::open(&file) {
                    Ok(watch) => {
                        if watch_until_failure(watch, &weak, &mut backoff).is_none() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "license cache watcher: cannot open its connection; validations read the database");
                    }
                }
                let Some(cache) = weak.upgrade() else { return };
                cache.reconnects.fetch_add(1, Ordering::Relaxed);
                cache.set_live(false);
                drop(cache);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "license cache watcher thread did not start; validations read the database");
    }
}

/// Looks through `watch` until a read fails (`Some`: open another connection) or the cache is
/// gone (`None`: the watcher ends). A good read makes the cache live and resets `backoff`.
fn watch_until_failure(mut watch: ChangeWatch, weak: &Weak<ValidationCache>, backoff: &mut Duration) -> Option<()> {
    let mut wait = SQLITE_POLL;
    loop {
        let cache = weak.upgrade()?;
        match watch.poll() {
            Ok(seen) => {
                if seen == Seen::LicenseChange {
                    cache.changed();
                }
                if !cache.is_live() {
                    cache.set_live(true);
                }
                wait = next_wait(wait, seen);
                *backoff = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(error = %e, "license cache watcher: read failed; validations read the database until it is back");
                cache.set_live(false);
                return Some(());
            }
        }
        drop(cache);
        std::thread::sleep(wait);
    }
}

/// The SQLite watcher's connection and what it last saw.
struct ChangeWatch {
    conn: rusqlite::Connection,
    /// `PRAGMA data_version` at the last poll: moves when another connection commits.
    version: Option<i64>,
    /// The `license_changes` counter at the last read.
    counter: Option<i64>,
}

impl ChangeWatch {
    fn open(file: &std::path::Path) -> rusqlite::Result<Self> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Self {
            conn,
            version: None,
            counter: None,
        })
    }

    /// What changed since the last look. The data version is read before the counter, so a
    /// commit landing between the two moves it again and is read next time.
    fn poll(&mut self) -> rusqlite::Result<Seen> {
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.version == Some(version) {
            return Ok(Seen::Quiet);
        }
        let counter: i64 = self
            .conn
            .prepare_cached("SELECT n FROM license_changes WHERE id = 1")?
            .query_row([], |r| r.get(0))?;
        self.version = Some(version);
        let moved = self.counter.is_some_and(|c| c != counter);
        self.counter = Some(counter);
        Ok(if moved { Seen::LicenseChange } else { Seen::Commits })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::licensing::{Activation, License};

    fn snapshot(last_check_in_at: i64) -> Arc<Snapshot> {
        let a = Activation {
            id: "act_1".into(),
            fingerprint: "fp".into(),
            created_at: 1,
            last_check_in_at,
        };
        Arc::new(Snapshot {
            license: License {
                id: "lic_1".into(),
                license_key: "K".into(),
                order_id: "o".into(),
                product_id: "p".into(),
                email: "e".into(),
                license_type: "perpetual".into(),
                max_activations: Some(3),
                activations: 1,
                status: "active".into(),
                expires_at: None,
                paid_through: None,
                check_in_hours: 24,
                grace_days: 7,
            },
            by_fingerprint: Some(a),
            by_id: None,
        })
    }

    #[test]
    fn entries_serve_only_while_live_unchanged_and_fresh() {
        let c = ValidationCache::new(Duration::from_secs(60));
        let s = c.stamp();
        c.put("K", Some("fp"), None, snapshot(5), s);
        assert!(c.get("K", Some("fp"), None).is_none(), "not live: nothing kept");
        c.set_live(true);
        c.put("K", Some("fp"), None, snapshot(5), c.stamp());
        assert!(c.get("K", Some("fp"), None).is_some());
        assert!(c.get("K", None, None).is_none(), "another question, another entry");
        c.checked_in("K", Some("fp"), None, 99);
        let got = c.get("K", Some("fp"), None).unwrap();
        assert_eq!(got.by_fingerprint.as_ref().unwrap().last_check_in_at, 99);

        // A read that started before a change is not kept, and a change empties the cache.
        let before = c.stamp();
        c.changed();
        c.put("K", Some("fp"), None, snapshot(5), before);
        assert!(c.get("K", Some("fp"), None).is_none());
        // Losing the listener empties it and stops it.
        c.put("K", Some("fp"), None, snapshot(5), c.stamp());
        c.set_live(false);
        assert!(c.get("K", Some("fp"), None).is_none());
        c.set_live(true);
        assert!(c.get("K", Some("fp"), None).is_none(), "emptied");

        let short = ValidationCache::new(Duration::ZERO);
        short.set_live(true);
        short.put("K", None, None, snapshot(5), short.stamp());
        assert!(short.get("K", None, None).is_none(), "expired at once");
    }

    /// The SQLite watcher reads the counter only after another connection committed, and
    /// reports a change only when the counter moved: an idle store costs it a pragma per poll.
    #[test]
    fn the_sqlite_watcher_reads_the_counter_only_after_a_commit_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.db");
        let other = rusqlite::Connection::open(&file).unwrap();
        other
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE license_changes (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
                 INSERT INTO license_changes VALUES (1, 0);
                 CREATE TABLE unrelated (x INTEGER);",
            )
            .unwrap();
        let mut watch = ChangeWatch::open(&file).unwrap();
        assert_eq!(
            watch.poll().unwrap(),
            Seen::Commits,
            "the first read only learns the counter"
        );
        assert_eq!(watch.counter, Some(0));
        // Nothing committed since: the data version stands, so the counter is not read.
        let seen = watch.version;
        assert_eq!(watch.poll().unwrap(), Seen::Quiet);
        assert_eq!(watch.version, seen);

        other.execute("INSERT INTO unrelated VALUES (1)", []).unwrap();
        assert_eq!(
            watch.poll().unwrap(),
            Seen::Commits,
            "a commit elsewhere that moved no counter"
        );
        assert_ne!(watch.version, seen, "but it was noticed");

        other.execute("UPDATE license_changes SET n = n + 1", []).unwrap();
        assert_eq!(
            watch.poll().unwrap(),
            Seen::LicenseChange,
            "a license changed in another process"
        );
        assert_eq!(watch.poll().unwrap(), Seen::Quiet, "reported once");

        // A missing file is an error (the watcher retries), never a new empty database.
        assert!(ChangeWatch::open(&dir.path().join("missing.db")).is_err());
        assert!(!dir.path().join("missing.db").exists());
    }

    /// The watcher looks every 2 ms while commits come and backs off to 50 ms when quiet.
    #[test]
    fn the_sqlite_watcher_backs_off_while_quiet_and_returns_at_the_first_commit() {
        let mut wait = SQLITE_POLL;
        let mut waits = Vec::new();
        for _ in 0..7 {
            wait = next_wait(wait, Seen::Quiet);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [4, 8, 16, 32, 50, 50, 50]);
        assert_eq!(next_wait(wait, Seen::Commits), SQLITE_POLL);
        assert_eq!(next_wait(wait, Seen::LicenseChange), SQLITE_POLL);
    }

    /// An in-memory store has no other process to watch: its cache is live at once.
    #[test]
    fn an_in_memory_store_needs_no_watcher() {
        let c = Arc::new(ValidationCache::new(Duration::from_secs(60)));
        spawn_sqlite_watcher(&c, None);
        assert!(c.is_live());
    }
}
