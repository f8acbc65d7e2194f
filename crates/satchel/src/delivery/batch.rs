//! Group commit for download starts.
//!
//! A download start must be durable (the count is the product) and exact under any
//! concurrency, but one transaction per start caps the rate at what the database commits per
//! second (and on SQLite, concurrent writers queue on the busy timeout). So starts are handed
//! to one batcher thread per instance, which takes every start waiting at that moment (up to
//! [`MAX_BATCH`]) and settles them in one transaction:
//!
//! 1. one conditional `UPDATE … FROM (rows) … RETURNING` per *round* decrements every grant
//!    that is live for that request (the same WHERE as a lone start: order paid, grant active
//!    and unexpired, count left, IP policy met, and the file asked for present in the
//!    product's current version) and returns that version. A round holds at most one request
//!    per grant, so two starts of one grant are two statements and the second sees the first:
//!    exactness is the database's, not ours. A (grant, address, file) that failed once fails
//!    for the rest of the batch (state only gets tighter inside the transaction), so 500
//!    starts of a grant of 5 cost six rounds, not 500;
//! 2. the file each counted start delivers comes from the version the decrement returned
//!    (a version's files never change, so they are remembered after the first read);
//! 3. one `download_events` row logs each counted start; then one commit. The decrement
//!    also makes that event the head of the grant's list of events and returns the old head
//!    for its `prev_id` ([`super::events`]), so logging a start writes no index of its own.
//!
//! Statements on the pool take a round's rows as a fixed set of parameters whatever its size
//! (one JSON text read by `json_each` on SQLite; one binary array per column, `unnest`ed, on
//! PostgreSQL), so a batch of any size is the same prepared statement.
//!
//! The batcher runs on a thread of its own, so a batch never waits in the HTTP runtime's
//! queue:
//! - on SQLite it drives its own connection synchronously (rusqlite, the same libsqlite3 as
//!   the pool), one cached statement per start, so a batch is one uninterrupted run with no
//!   round trips between threads; its commits never checkpoint (a checkpointer thread does,
//!   so no start waits on a checkpoint's fsync);
//! - on PostgreSQL it has its own pool on a current-thread runtime, and a round is one
//!   statement (decrement, events and answer in data-modifying CTEs): one round trip, atomic
//!   by itself. A deadlock or serialization failure (several instances) retries that round,
//!   which changed nothing; any other failure ends the batch, but the rounds before it
//!   stand, so their starts are answered as settled, and so are those of a round that
//!   committed though its answer was lost with the connection (found by their events, which
//!   exist exactly when their counts do); when the connection was what failed, the rest are
//!   tried once more on a fresh one (their event ids make that safe), and only what still
//!   fails is answered with the error, having counted nothing. Its connections plan with
//!   sequential scans off and each statement once
//!   ([`Db::dedicated_keyed`](crate::db::Db::dedicated_keyed)): a round finds its grants by
//!   key even on a small store without statistics, and is not planned again per round.
//!
//! Each waiting request learns its own result after the commit, so a 302 is only ever sent
//! for a start that is durable. When the store is idle a batch holds one start and costs what
//! a lone transaction did.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::BatcherCpu;
use crate::db::models::FileRow;
use crate::db::{Backend, Db, DbError, Exec, Query, Tx};

/// Most starts settled by one transaction (bounded so one statement's rows stay small).
pub const MAX_BATCH: usize = 256;
/// Starts waiting for the batcher before callers wait for room (backpressure, not refusal).
const QUEUE: usize = 4096;
/// Shortest time between two checkpoints of the SQLite writer's log.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Log frames (4 KiB pages) past which the checkpointer makes the log start over.
const RESTART_FRAMES: i64 = 2048;
/// Most checkpoint passes beside the running writer before the one that holds it.
const CATCH_UP_PASSES: usize = 8;
/// Frames appended during a catch-up pass small enough that the held pass may follow: it
/// copies about that many (1 MiB) and syncs.
const SHORT_HOLD_FRAMES: i64 = 256;

/// One download start, as the redemption handler saw it.
#[derive(Debug, Clone)]
pub struct Start {
    pub grant_id: String,
    /// The file asked for by name, or the first file of the current version.
    pub file_name: Option<String>,
    pub ip: String,
    pub prefix: String,
    /// At most [`USER_AGENT_MAX`] characters (what the event row keeps).
    pub user_agent: String,
    /// The id of its `download_events` row, should it be counted (made by the caller, so
    /// the batcher's thread does not).
    pub event_id: String,
    pub at: i64,
}

/// Characters of a user agent kept in a download event.
pub const USER_AGENT_MAX: usize = 300;

/// What became of a start.
#[derive(Debug)]
pub enum Settled {
    /// Counted and logged; deliver this file (shared with the batcher's cache of version
    /// files: handing it over allocates nothing).
    Counted(Arc<FileRow>),
    /// The grant is not live for this request, or its current version has no such file
    /// (the caller explains which, read-only). Nothing counted.
    Refused,
}

type Reply = oneshot::Sender<Result<Settled, String>>;

/// The per-instance batcher: a channel into one thread that owns the write transactions.
#[derive(Default)]
pub struct Batcher {
    tx: OnceLock<mpsc::Sender<(Start, Reply)>>,
    counters: Arc<Counters>,
    /// Where its thread is pinned (`server.batcher_cpu`), if anywhere.
    cpu: Option<BatcherCpu>,
}

/// Transactions committed and starts settled by them (their ratio is the mean batch size).
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    starts: AtomicU64,
}

impl Batcher {
    /// A batcher whose thread, once started, runs only on `cpu` (`None`: wherever the
    /// kernel puts it).
    pub fn on_cpu(cpu: Option<BatcherCpu>) -> Self {
        Batcher {
            cpu,
            ..Batcher::default()
        }
    }

    /// Settles one start (batched with whatever else is waiting). `Err` carries a database
    /// failure's text: nothing was counted.
    pub async fn settle(&self, db: &Db, start: Start) -> Result<Settled, String> {
        let sender = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            // The thread holds only its own connection: when the app (and with it the
            // sender) is dropped, `recv` ends and so does the thread.
            if let Err(e) = spawn_thread(db, rx, self.counters.clone(), self.cpu) {
                tracing::error!(error = %e, "download batcher thread did not start");
            }
            tx
        });
        let (reply, answer) = oneshot::channel();
        sender
            .send((start, reply))
            .await
            .map_err(|_| "download batcher stopped".to_string())?;
        answer.await.map_err(|_| "download batcher stopped".to_string())?
    }

    /// Mean starts settled per committed batch so far (`None` before the first batch).
    pub fn mean_batch(&self) -> Option<f64> {
        let batches = self.counters.batches.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        (batches > 0).then(|| self.counters.starts.load(Ordering::Relaxed) as f64 / batches as f64)
    }

    /// Prometheus lines: batches committed and starts settled.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP satchel_download_start_batches_total Batches that settled download starts (group commit: one transaction on SQLite, one statement per round on PostgreSQL).\n\
             # TYPE satchel_download_start_batches_total counter\n\
             satchel_download_start_batches_total {}\n\
             # HELP satchel_download_starts_settled_total Download starts settled (counted or refused).\n\
             # TYPE satchel_download_starts_settled_total counter\n\
             satchel_download_starts_settled_total {}\n",
            self.counters.batches.load(Ordering::Relaxed),
            self.counters.starts.load(Ordering::Relaxed)
        )
    }
}

/// Starts the batcher's thread: a synchronous SQLite writer, or a current-thread runtime with
/// a dedicated pool (PostgreSQL, and SQLite databases that are not a file).
fn spawn_thread(
    db: &Db,
    rx: mpsc::Receiver<(Start, Reply)>,
    counters: Arc<Counters>,
    cpu: Option<BatcherCpu>,
) -> std::io::Result<()> {
    let file = db.sqlite_file();
    let cpu = match cpu {
        Some(BatcherCpu::Cpu(cpu)) => Some(cpu),
        // SQLite's writer syncs nothing at commit and waits on no other process: pinned, it
        // gained nothing in the bench.
        Some(BatcherCpu::Auto) if db.backend() == Backend::Sqlite => None,
        Some(BatcherCpu::Auto) => {
            let found = disk_interrupt_cpu();
            match found {
                Some(cpu) => tracing::info!(cpu, "server.batcher_cpu = auto: the download batcher goes to the CPU taking the disks' interrupts"),
                None => tracing::warn!("server.batcher_cpu = auto: no disk interrupts found in /proc/interrupts; the download batcher runs on any CPU"),
            }
            found
        }
        None => None,
    };
    let db = db.dedicated_keyed(1, "download batcher");
    std::thread::Builder::new()
        .name("satchel-download-batcher".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                match pin_this_thread(cpu) {
                    Ok(()) => tracing::debug!(cpu, "download batcher pinned"),
                    Err(e) => tracing::warn!(cpu, error = %e, "download batcher not pinned (server.batcher_cpu); it runs on any CPU"),
                }
            }
            if let Some(file) = file {
                match SqliteWriter::open(&file) {
                    Ok(w) => return w.run(rx, &counters),
                    Err(e) => {
                        tracing::warn!(error = %e, "download batcher: SQLite writer did not open; using the pool")
                    }
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "download batcher runtime did not start");
                    return;
                }
            };
            rt.block_on(async {
                run_pool(&db, rx, &counters).await;
                db.close().await;
            });
        })
        .map(|_| ())
}

/// Whether this process may run on `cpu`, so that `server.batcher_cpu` can pin the batcher
/// there; the message says what to choose instead.
pub fn check_cpu(cpu: usize) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        let allowed =
            rustix::thread::sched_getaffinity(None).map_err(|e| format!("cannot read this process's CPUs: {e}"))?;
        if cpu < rustix::thread::CpuSet::MAX_CPU && allowed.is_set(cpu) {
            return Ok(());
        }
        let list: Vec<String> = (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|c| allowed.is_set(*c))
            .map(|c| c.to_string())
            .collect();
        Err(format!(
            "CPU {cpu} is not one this process may run on (it may use {}); pick one of those, or leave it unset",
            list.join(", ")
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(format!(
            "pinning the batcher (CPU {cpu}) is supported on Linux only; leave it unset"
        ))
    }
}

/// The CPU that has taken the most interrupts from the machine's disks (their queues' rows
/// in `/proc/interrupts`, named after each disk's device: `virtio1-req.0`, `nvme0q1`, …),
/// or `None` where none is found (or not on Linux). A local database's backend wakes there
/// after each commit's flush, so the batcher pinned to it hands rounds back and forth with
/// the backend without a cross-CPU wake-up (`server.batcher_cpu = auto`).
pub fn disk_interrupt_cpu() -> Option<usize> {
    let devices: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|d| std::fs::read_link(d.path().join("device")).ok())
        .filter_map(|link| Some(link.file_name()?.to_string_lossy().to_string()))
        .collect();
    busiest_cpu(&std::fs::read_to_string("/proc/interrupts").ok()?, &devices)
}

/// The CPU column with the largest total over the rows of an `/proc/interrupts` `table`
/// whose name starts with one of `devices`; `None` if they have none.
fn busiest_cpu(table: &str, devices: &[String]) -> Option<usize> {
    if devices.is_empty() {
        return None;
    }
    let mut lines = table.lines();
    let cpus = lines.next()?.split_whitespace().count();
    let mut totals = vec![0u64; cpus];
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = fields.last() else { continue };
        if fields.len() < cpus + 2 || !devices.iter().any(|d| name.starts_with(d.as_str())) {
            continue;
        }
        for (total, count) in totals.iter_mut().zip(&fields[1..=cpus]) {
            *total += count.parse::<u64>().unwrap_or(0);
        }
    }
    let (cpu, most) = totals.iter().enumerate().max_by_key(|(_, n)| **n)?;
    (*most > 0).then_some(cpu)
}

/// Pins the calling thread to `cpu`.
fn pin_this_thread(cpu: usize) -> std::io::Result<()> {
    check_cpu(cpu).map_err(std::io::Error::other)?;
    #[cfg(target_os = "linux")]
    {
        let mut only = rustix::thread::CpuSet::new();
        only.set(cpu);
        rustix::thread::sched_setaffinity(None, &only)?;
    }
    Ok(())
}

/// Takes the next batch: waits for one start, then takes whatever else is already waiting.
fn take_batch(first: (Start, Reply), rx: &mut mpsc::Receiver<(Start, Reply)>) -> (Vec<Start>, Vec<Reply>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch.into_iter().unzip()
}

/// A batch that failed, and what it had settled before it failed.
#[derive(Debug)]
struct Failure {
    error: String,
    /// Each start's outcome where a round that committed before the failure settled it — on
    /// PostgreSQL every round commits by itself, so its counts stand and its starts are
    /// answered as counted (or refused), not as failed; `None` for the rest, which counted
    /// nothing. Empty when nothing was settled (a SQLite batch rolls back whole).
    settled: Vec<Option<Settled>>,
    /// The connection failed, not the statement ([`connection_lost`]): the unsettled starts
    /// may be tried again on a fresh one.
    connection_lost: bool,
}

impl Failure {
    /// A failure before anything was settled.
    fn whole(error: impl ToString) -> Self {
        Failure {
            error: error.to_string(),
            settled: Vec::new(),
            connection_lost: false,
        }
    }
}

/// Answers every waiting request of a batch.
fn reply_all(counters: &Counters, replies: Vec<Reply>, result: Result<Vec<Settled>, Failure>) {
    match result {
        Ok(outcomes) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.starts.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(Failure { error, settled, .. }) => {
            let n = replies.len();
            let mut settled = settled.into_iter();
            let mut answered = 0;
            for reply in replies {
                let _ = reply.send(match settled.next().flatten() {
                    Some(outcome) => {
                        answered += 1;
                        Ok(outcome)
                    }
                    None => Err(error.clone()),
                });
            }
            tracing::error!(%error, starts = n, settled_before = answered,
                "download start batch failed; its starts not settled before the failure counted nothing");
        }
    }
}

/// Settles batches one at a time on one connection held for as long as it works: the starts
/// that arrive while a batch runs and commits make the next batch, so under load batches grow
/// (up to [`MAX_BATCH`]) and the database pays its per-statement and per-commit work once for
/// more starts. Measured on PostgreSQL in the bench (2 cores shared with PostgreSQL and wrk,
/// alternating runs): one batch in flight 12.4k–21.3k starts/s at ~28 per commit, two
/// 12.9k–16.6k at ~16, four 12.2k–15.5k at ~11 (docs/operations.md, "One round in flight").
/// Exactness does not depend on it: a round is one statement, and two statements decrementing
/// one grant (from two instances) queue on its row lock, the second re-checking the row it
/// finds.
///
/// On PostgreSQL the connection is held rather than taken from the pool per batch: taking and
/// giving back each cost a round trip (sqlx pings the connection both ways), two exchanges
/// with the server in every round's critical path ([`Held`](crate::db::Held)); holding it
/// made 19 % more starts per second in the bench (docs/operations.md, "The held connection").
/// After [`IDLE_CHECK`] without a batch it is pinged before the next one (the server may have
/// restarted meanwhile), and a batch that fails drops it: the next batch takes a fresh one.
async fn run_pool(db: &Db, mut rx: mpsc::Receiver<(Start, Reply)>, counters: &Counters) {
    let versions = std::cell::RefCell::new(VersionFiles::default());
    let mut held: Option<(crate::db::Held, std::time::Instant)> = None;
    while let Some(first) = rx.recv().await {
        let (starts, replies) = take_batch(first, &mut rx);
        let result = if db.backend() == Backend::Sqlite {
            settle_pool(db, &starts, &versions).await
        } else {
            if let Some((conn, used)) = &held {
                if used.elapsed() > IDLE_CHECK && !conn.alive().await {
                    held = None;
                }
            }
            let conn = match held.take() {
                Some((conn, _)) => Ok(conn),
                None => db.hold().await,
            };
            match conn {
                Ok(conn) => match settle_pg(&conn, &starts, &versions).await {
                    Ok(outcomes) => {
                        held = Some((conn, std::time::Instant::now()));
                        Ok(outcomes)
                    }
                    // A failed batch drops the connection with it (it may be broken), and
                    // asks a fresh one which of its rounds committed after all.
                    Err(mut failure) => {
                        drop(conn);
                        // Bounded: with the server down, a fresh connection would be waited
                        // for as long as the pool's acquire timeout; the requests get their
                        // error sooner.
                        let settle_what_can_be = async {
                            recover(db, &starts, &mut failure).await;
                            if failure.connection_lost {
                                retry_unsettled(db, &starts, &versions, &mut failure).await;
                            }
                        };
                        if tokio::time::timeout(RECOVER_WITHIN, settle_what_can_be).await.is_err() {
                            tracing::warn!("download batcher: no fresh connection within {RECOVER_WITHIN:?} to recover a failed batch");
                        }
                        Err(failure)
                    }
                },
                Err(e) => Err(Failure::whole(e)),
            }
        };
        reply_all(counters, replies, result);
    }
}

/// After a failed PostgreSQL batch: finds the starts whose round committed though its answer
/// never came back (the connection dropped between the commit and the reply) and answers
/// them as counted — their download is spent, so their request gets the link. A round writes
/// its starts' events in the same statement as their decrements, so a start's event exists
/// exactly when its count does. Starts without one counted nothing and keep the error; if
/// the database cannot be asked either, every unsettled start keeps it, as before.
async fn recover(db: &impl Exec, starts: &[Start], failure: &mut Failure) {
    failure.settled.resize_with(starts.len(), || None);
    let unsettled: Vec<String> = starts
        .iter()
        .zip(&failure.settled)
        .filter(|(_, o)| o.is_none())
        .map(|(s, _)| s.event_id.clone())
        .collect();
    if unsettled.is_empty() {
        return;
    }
    let counted = match committed_events(db, unsettled).await {
        Ok(counted) if counted.is_empty() => return,
        Ok(counted) => counted,
        Err(e) => {
            tracing::warn!(error = %e, "download batcher: could not ask which starts of a failed batch committed");
            return;
        }
    };
    for (s, outcome) in starts.iter().zip(failure.settled.iter_mut()) {
        if outcome.is_none() {
            if let Some(file) = counted.get(&s.event_id) {
                *outcome = Some(Settled::Counted(Arc::clone(file)));
            }
        }
    }
    tracing::warn!(
        recovered = counted.len(),
        "download batcher: starts of a failed batch had committed before the failure; answered as counted"
    );
}

/// After [`recover`], when the batch failed with its connection: the starts still unsettled
/// are settled once more on a fresh connection, so a server restart or a dropped connection
/// costs their requests a moment, not a 503. Safe whatever became of the lost statement:
/// each start keeps its event id, so had its round committed after all (unseen by
/// [`recover`]) the retry's event insert would collide with it on the primary key and the
/// whole retried statement would change nothing. A retry that fails too leaves its starts
/// with the error.
async fn retry_unsettled(
    db: &Db,
    starts: &[Start],
    versions: &std::cell::RefCell<VersionFiles>,
    failure: &mut Failure,
) {
    failure.settled.resize_with(starts.len(), || None);
    let (idx, again): (Vec<usize>, Vec<Start>) = starts
        .iter()
        .enumerate()
        .filter(|(i, _)| failure.settled[*i].is_none())
        .map(|(i, s)| (i, s.clone()))
        .unzip();
    if again.is_empty() {
        return;
    }
    let conn = match db.hold().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "download batcher: no fresh connection to retry a failed batch on");
            return;
        }
    };
    let outcomes: Vec<Option<Settled>> = match settle_pg(&conn, &again, versions).await {
        Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
        Err(f) => f.settled,
    };
    let retried = outcomes.iter().filter(|o| o.is_some()).count();
    for (i, outcome) in idx.into_iter().zip(outcomes) {
        failure.settled[i] = outcome;
    }
    tracing::warn!(
        retried,
        of = again.len(),
        "download batcher: retried a batch's starts on a fresh connection"
    );
}

/// Which of `event_ids` were written, each with the file its event names.
async fn committed_events(db: &impl Exec, event_ids: Vec<String>) -> Result<HashMap<String, Arc<FileRow>>, DbError> {
    let events: Vec<(String, String)> = db
        .fetch_all(
            Query::new("SELECT id, file_id FROM download_events WHERE id = ANY($1) AND file_id IS NOT NULL")
                .bind(event_ids),
        )
        .await?;
    if events.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = events.iter().map(|(_, f)| f.clone()).collect();
    let files: Vec<FileRow> = db
        .fetch_all(Query::new(format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ANY($1)")).bind(ids))
        .await?;
    let files: HashMap<String, Arc<FileRow>> = files.into_iter().map(|f| (f.id.clone(), Arc::new(f))).collect();
    Ok(events
        .into_iter()
        .filter_map(|(event, file)| files.get(&file).map(|f| (event, Arc::clone(f))))
        .collect())
}

/// Longest a failed batch's requests wait while the batcher asks a fresh connection what
/// committed and retries the rest.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);

/// Idle time after which the batcher's held PostgreSQL connection is pinged before use (as
/// the pools do with theirs).
const IDLE_CHECK: Duration = crate::db::TRUST_IDLE;

/// Failures of the connection rather than of the statement: the socket (a server restart, a
/// dropped network), the server ending the session (57P01–57P03: an administrator's
/// `pg_terminate_backend`, a shutdown, a crash), or a connection exception (class 08).
fn connection_lost(e: &DbError) -> bool {
    match e {
        DbError::Io(_) | DbError::Protocol(_) => true,
        DbError::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Deadlocks (40P01) and serialization failures (40001) between instances: the statement is
/// retried. SQLite's busy errors are waited out by its busy timeout already.
fn retryable(e: &DbError) -> bool {
    match e {
        DbError::Database(d) => matches!(d.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// The rounds of one batch: which starts go into the next decrement, and what became of
/// each. The same for every backend; only the statements differ.
struct Plan<'a> {
    starts: &'a [Start],
    queue: HashMap<&'a str, VecDeque<usize>>,
    dead: HashSet<(&'a str, &'a str, Option<&'a str>)>,
    outcomes: Vec<Option<Settled>>,
    /// Counted starts: the version each delivers and the grant's event before it.
    counted: Vec<(usize, Counted)>,
    at: i64,
}

impl<'a> Plan<'a> {
    fn new(starts: &'a [Start]) -> Self {
        let mut queue: HashMap<&str, VecDeque<usize>> = HashMap::new();
        for (i, s) in starts.iter().enumerate() {
            queue.entry(s.grant_id.as_str()).or_default().push_back(i);
        }
        Plan {
            starts,
            queue,
            dead: HashSet::new(),
            outcomes: starts.iter().map(|_| None).collect(),
            counted: Vec::with_capacity(starts.len()),
            at: starts.iter().map(|s| s.at).max().unwrap_or_default(),
        }
    }

    fn key(s: &'a Start) -> (&'a str, &'a str, Option<&'a str>) {
        (s.grant_id.as_str(), s.ip.as_str(), s.file_name.as_deref())
    }

    /// The next round: at most one start per grant, in grant order so two instances'
    /// batches lock rows in the same order; `None` when done.
    fn next_round(&mut self) -> Option<Vec<usize>> {
        let mut round: Vec<usize> = Vec::new();
        for pending in self.queue.values_mut() {
            while let Some(i) = pending.pop_front() {
                if self.dead.contains(&Self::key(&self.starts[i])) {
                    self.outcomes[i] = Some(Settled::Refused);
                    continue;
                }
                round.push(i);
                break;
            }
        }
        if round.is_empty() {
            return None;
        }
        round.sort_by(|a, b| self.starts[*a].grant_id.cmp(&self.starts[*b].grant_id));
        Some(round)
    }

    /// A round's rows as the JSON parameter of [`decrement_sql`] (SQLite databases that are
    /// not a file; PostgreSQL takes arrays: [`Plan::pg_round`]).
    ///
    /// Written straight from the starts' fields into one string: building a `serde_json::Value`
    /// per row first cost a map and a copy of every key and value, allocations the batcher's
    /// thread made and the HTTP threads' frees handed back across cores.
    fn round_json(&self, round: &[usize]) -> String {
        #[derive(serde::Serialize)]
        struct Row<'s> {
            gid: &'s str,
            prefix: &'s str,
            ip: &'s str,
            name: &'s str,
            eid: &'s str,
        }
        let rows: Vec<Row<'_>> = round
            .iter()
            .map(|i| {
                let s = &self.starts[*i];
                Row {
                    gid: &s.grant_id,
                    prefix: &s.prefix,
                    ip: &s.ip,
                    name: s.file_name.as_deref().unwrap_or(""),
                    eid: &s.event_id,
                }
            })
            .collect();
        // Strings always serialize.
        serde_json::to_string(&rows).unwrap_or_default()
    }

    /// A round as [`PG_ROUND`] with its arguments: the time, then one array per column
    /// (element `i` of each is the round's `i`-th start). Bound in PostgreSQL's binary array
    /// format, they reach the executor without a parse: the JSON text the round took before
    /// cost PostgreSQL's JSON lexer ~9 % of its time in the round (docs/operations.md,
    /// "Columns, not JSON").
    fn pg_round(&self, round: &[usize]) -> Query {
        let column =
            |f: fn(&Start) -> &str| -> Vec<String> { round.iter().map(|i| f(&self.starts[*i]).to_string()).collect() };
        Query::new(PG_ROUND.as_str())
            .bind(self.at)
            .bind(column(|s| &s.grant_id))
            .bind(column(|s| &s.prefix))
            .bind(column(|s| &s.ip))
            .bind(column(|s| s.file_name.as_deref().unwrap_or("")))
            .bind(column(|s| &s.event_id))
            .bind(column(|s| &s.user_agent))
            .bind(round.iter().map(|i| self.starts[*i].at).collect::<Vec<i64>>())
    }

    /// Records a round's result: the grants counted, each with what its decrement returned.
    fn record(&mut self, round: Vec<usize>, mut got: HashMap<String, Counted>) {
        for i in round {
            let s = &self.starts[i];
            match got.remove(s.grant_id.as_str()) {
                Some(counted) => self.counted.push((i, counted)),
                None => {
                    self.dead.insert(Self::key(s));
                    self.outcomes[i] = Some(Settled::Refused);
                }
            }
        }
    }

    fn counted_versions(&self) -> Vec<&str> {
        self.counted.iter().map(|(_, c)| c.version.as_str()).collect()
    }

    /// Every start's outcome, handing `event` the event of each counted start. The decrement
    /// only counts a start whose file exists in that version, so a miss here is a broken
    /// invariant: the error rolls the whole batch back (nothing counted) rather than count a
    /// download that cannot be delivered.
    fn resolve(mut self, versions: &VersionFiles, mut event: impl FnMut(Event<'a>)) -> Result<Vec<Settled>, String> {
        for (i, Counted { version, prev }) in std::mem::take(&mut self.counted) {
            let s = &self.starts[i];
            let file = versions
                .pick(&version, s.file_name.as_deref())
                .ok_or_else(|| format!("grant {} counted without a file in version {version}", s.grant_id))?;
            self.outcomes[i] = Some(Settled::Counted(Arc::clone(file)));
            event(Event {
                start: s,
                file: Arc::clone(file),
                prev,
            });
        }
        Ok(self
            .outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Settled::Refused))
            .collect())
    }

    /// The event of each counted start (for the caller to write) and every start's outcome.
    fn finish(self, versions: &VersionFiles) -> Result<(Vec<Event<'a>>, Vec<Settled>), String> {
        let mut events = Vec::with_capacity(self.counted.len());
        let outcomes = self.resolve(versions, |e| events.push(e))?;
        Ok((events, outcomes))
    }

    /// Every start's outcome so far, when its round wrote the events itself (PostgreSQL):
    /// `None` for a start no round settled (the batch failed before it), and for a counted
    /// start whose version lacks its file — a broken invariant, described in the second
    /// value.
    fn settled(mut self, versions: &VersionFiles) -> (Vec<Option<Settled>>, Option<String>) {
        let mut broken = None;
        for (i, Counted { version, .. }) in std::mem::take(&mut self.counted) {
            let s = &self.starts[i];
            self.outcomes[i] = versions
                .pick(&version, s.file_name.as_deref())
                .map(|file| Settled::Counted(Arc::clone(file)));
            if self.outcomes[i].is_none() {
                broken
                    .get_or_insert_with(|| format!("grant {} counted without a file in version {version}", s.grant_id));
            }
        }
        (self.outcomes, broken)
    }
}

/// What a round's decrement returned for a grant it counted.
struct Counted {
    /// The product's current version: the file delivered comes from it.
    version: String,
    /// The grant's event before this start's (its list's old head), if any.
    prev: Option<String>,
}

impl Counted {
    /// A decrement's row (grant, version, old head) as the grant and what it counted; a row
    /// without a version (a product with none) counts nothing.
    fn from_row((grant, version, prev): (String, Option<String>, Option<String>)) -> Option<(String, Counted)> {
        Some((
            grant,
            Counted {
                version: version?,
                prev,
            },
        ))
    }
}

/// A `download_events` row for a counted start.
struct Event<'a> {
    start: &'a Start,
    /// The file it delivers.
    file: Arc<FileRow>,
    /// The grant's event before it.
    prev: Option<String>,
}

impl Event<'_> {
    /// Events as the JSON parameter of [`events_sql`].
    fn json(events: &[Event<'_>]) -> String {
        let rows: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                let s = e.start;
                serde_json::json!({
                    "id": s.event_id, "g": s.grant_id, "f": e.file.id, "at": s.at, "ip": s.ip, "p": s.prefix,
                    "ua": s.user_agent, "b": e.file.size, "prev": e.prev,
                })
            })
            .collect();
        serde_json::Value::Array(rows).to_string()
    }
}

/// The files of every version a batch has delivered, by version id. A published version's
/// files never change (a new upload is a new version), so an entry never goes stale; the
/// version a grant delivers is the one its decrement returned, read in the same statement.
#[derive(Default)]
struct VersionFiles(HashMap<String, Vec<Arc<FileRow>>>);

impl VersionFiles {
    /// The versions not yet known, as the JSON parameter of [`files_sql`] (`None`: all known).
    fn missing(&mut self, ids: &[&str]) -> Option<String> {
        let missing: HashSet<&str> = ids.iter().copied().filter(|v| !self.0.contains_key(*v)).collect();
        if missing.is_empty() {
            return None;
        }
        if self.0.len() > 4096 {
            self.0.clear();
        }
        let rows: Vec<serde_json::Value> = missing.into_iter().map(|v| serde_json::json!({ "v": v })).collect();
        Some(serde_json::Value::Array(rows).to_string())
    }

    fn add(&mut self, rows: Vec<FileRow>) {
        let mut by_version: HashMap<String, Vec<Arc<FileRow>>> = HashMap::new();
        for f in rows {
            by_version.entry(f.version_id.clone()).or_default().push(Arc::new(f));
        }
        self.0.extend(by_version);
    }

    /// The named file of a version, or its first file by name.
    fn pick(&self, version: &str, name: Option<&str>) -> Option<&Arc<FileRow>> {
        let files = self.0.get(version)?;
        match name {
            None => files.first(),
            Some(n) => files.iter().find(|f| f.name == n),
        }
    }
}

/// A row source reading a JSON array of objects from one text parameter, so every batch,
/// whatever its size, is the same statement (prepared once, cached) with one argument —
/// rather than hundreds of `$n` parameters bound one by one. `cols` are (key, PostgreSQL type).
fn json_rows(backend: Backend, param: &str, cols: &[(&str, &str)]) -> String {
    match backend {
        Backend::Sqlite => format!(
            "SELECT {} FROM json_each({param})",
            cols.iter()
                .map(|(k, _)| format!("json_extract(value, '$.{k}') AS {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Backend::Postgres => format!(
            "SELECT * FROM json_to_recordset({param}::json) AS x({})",
            cols.iter()
                .map(|(k, t)| format!("{k} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The new state of a grant a start counts on: one download fewer, with `bind_first` the
/// first network it is used from, and the start's event `eid` the head of its list of events
/// (the statement returns the old head as `prior_event_id`). `at` is the time, `prefix` the
/// request's network.
fn counted_set(at: &str, prefix: &str, eid: &str) -> String {
    format!(
        "SET remaining = remaining - 1, updated_at = {at},
             ip_bound = CASE WHEN ip_policy = 'bind_first' AND ip_bound IS NULL THEN {prefix} ELSE ip_bound END,
             {}",
        super::events::push(eid)
    )
}

/// When a grant is live for one request (the same on every statement shape and backend):
/// active, unexpired, a download left, the IP policy met by the request's `prefix` and `ip`,
/// and its order still paid — re-checked at every redemption, so a refund stops links at once.
///
/// The order's state is read from the grant's own `order_paid`, which the database's triggers
/// keep equal to "its order is paid or partially refunded" on every write (migration
/// `0018_grant_order_paid`): no look-up of the order per start, ~10 µs of PostgreSQL's CPU
/// per start on a 2-core VM (docs/operations.md, "The order's state on the grant").
fn live(at: &str, prefix: &str, ip: &str) -> String {
    format!(
        "download_grants.status = 'active' AND download_grants.remaining > 0 AND download_grants.order_paid
           AND download_grants.expires_at > {at}
           AND (download_grants.ip_policy <> 'bind_first' OR download_grants.ip_bound IS NULL OR download_grants.ip_bound = {prefix})
           AND (download_grants.ip_policy <> 'allow_list' OR (',' || download_grants.ip_allow || ',') LIKE ('%,' || {ip} || ',%'))"
    )
}

/// The request's values a decrement reads, as SQL expressions.
struct StartSql<'a> {
    gid: &'a str,
    prefix: &'a str,
    ip: &'a str,
    name: &'a str,
    /// The id of the event it logs if counted.
    eid: &'a str,
}

/// Column `col` (`id` or `size`) of the file a start delivers, as SQL over the grant's
/// product `p` and the start's file `name` (`''` for none): the product's own copy of its
/// current version's first file (migration `0021_product_first_file`, kept by triggers), so a
/// link naming no file looks no file up; else the current version's file of that name. NULL
/// when there is no such file.
fn delivered_file(col: &str, name: &str) -> String {
    format!(
        "CASE WHEN {name} = '' THEN p.first_file_{col}
              ELSE (SELECT f.{col} FROM files f WHERE f.version_id = p.current_version_id AND f.name = {name} LIMIT 1) END"
    )
}

/// The decrement of one start on SQLite (a row source in `from`, or none for parameters),
/// `at` the time. It counts only for a grant [`live`] for that request whose product's
/// current version has the file asked for, and returns the grant, that version and the
/// grant's previous event.
fn decrement(from: &str, at: &str, s: &StartSql<'_>) -> String {
    let StartSql {
        gid,
        prefix,
        ip,
        name,
        eid,
    } = s;
    format!(
        "UPDATE download_grants {}
         {from}
         WHERE download_grants.id = {gid} AND {}
           AND EXISTS (SELECT 1 FROM products p
                       WHERE p.id = download_grants.product_id AND ({}) IS NOT NULL)
         RETURNING download_grants.id,
             (SELECT p.current_version_id FROM products p WHERE p.id = download_grants.product_id) AS version_id,
             download_grants.prior_event_id",
        counted_set(at, prefix, eid),
        live(at, prefix, ip),
        delivered_file("id", name)
    )
}

/// A round's decrements in one statement: `$1` the time, `$2` the rows (JSON).
fn decrement_sql(backend: Backend) -> String {
    format!(
        "WITH r AS ({}) {}",
        json_rows(
            backend,
            "$2",
            &[
                ("gid", "text"),
                ("prefix", "text"),
                ("ip", "text"),
                ("name", "text"),
                ("eid", "text")
            ]
        ),
        decrement(
            "FROM r",
            "$1",
            &StartSql {
                gid: "r.gid",
                prefix: "r.prefix",
                ip: "r.ip",
                name: "r.name",
                eid: "r.eid"
            }
        )
    )
}

/// A [`FileRow`]'s columns, as the batcher's file look-ups select them.
const FILE_COLUMNS: &str = "id, product_id, version_id, name, object_key, size, sha256, content_type, created_at";

/// The files of the listed versions (`$1`), by version and name.
fn files_sql(backend: Backend) -> String {
    format!(
        "SELECT {FILE_COLUMNS}
         FROM files WHERE version_id IN (SELECT v FROM ({}) AS j) ORDER BY version_id, name",
        json_rows(backend, "$1", &[("v", "text")])
    )
}

/// One event row per counted start (`$1`).
fn events_sql(backend: Backend) -> String {
    format!(
        "INSERT INTO download_events (id, grant_id, file_id, at, ip, ip_prefix, user_agent, outcome, bytes, prev_id)
         SELECT id, g, f, at, ip, p, ua, 'started', b, prev FROM ({}) AS j",
        json_rows(
            backend,
            "$1",
            &[
                ("id", "text"),
                ("g", "text"),
                ("f", "text"),
                ("at", "bigint"),
                ("ip", "text"),
                ("p", "text"),
                ("ua", "text"),
                ("b", "bigint"),
                ("prev", "text"),
            ],
        )
    )
}

/// One round on PostgreSQL in one statement, so one round trip: the decrement, the event of
/// each counted start and the answer. A statement is atomic on its own, so each round commits
/// by itself; a later round of the batch sees the earlier ones, as inside one transaction.
///
/// The product and its current version are joined into the decrement, and the file delivered
/// read off the product row ([`delivered_file`]; looked up only for a link naming a file), so
/// each is read once per start and the event is written from the decrement's own row: a grant
/// whose current version lacks the file asked for has no row to update, as [`decrement`]'s
/// `EXISTS` refuses it on SQLite. Measured with `pgbench` on this statement against the one
/// with separate lookups (see docs/operations.md): 25–35 % more starts per second of
/// PostgreSQL CPU; and against a per-start file look-up (a `LATERAL` subquery): see "The
/// first file on the product" there.
static PG_ROUND: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH r AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[])
                    AS x(gid, prefix, ip, name, eid, ua, at)),
         u AS (UPDATE download_grants {}
               FROM r, products p
               WHERE download_grants.id = r.gid AND p.id = download_grants.product_id AND {}
                 AND ({}) IS NOT NULL
               RETURNING download_grants.id, p.current_version_id AS version_id, {} AS file_id, {} AS size,
                         r.eid, r.ua, r.at, r.ip, r.prefix, download_grants.prior_event_id AS prev),
         e AS (INSERT INTO download_events (id, grant_id, file_id, at, ip, ip_prefix, user_agent, outcome, bytes, prev_id)
               SELECT u.eid, u.id, u.file_id, u.at, u.ip, u.prefix, u.ua, 'started', u.size, u.prev FROM u)
         SELECT u.id, u.version_id FROM u",
        counted_set("$1", "r.prefix", "r.eid"),
        live("$1", "r.prefix", "r.ip"),
        delivered_file("id", "r.name"),
        delivered_file("id", "r.name"),
        delivered_file("size", "r.name")
    )
});

/// The PostgreSQL round statement, `$1` the time and `$2`…`$8` the round's columns as arrays
/// (bound by `Plan::pg_round`; what the bench runs alone under `pgbench`, as PostgreSQL's own
/// ceiling for download starts).
pub fn pg_round_sql() -> &'static str {
    PG_ROUND.as_str()
}

/// A batch on PostgreSQL: a statement per round ([`PG_ROUND`]), each retried alone on a
/// deadlock or serialization failure (it changed nothing then).
///
/// Each round commits by itself, so when a round fails (the connection lost, the server
/// shutting down) the rounds before it stand: their starts are answered as they were settled
/// — a counted start gets its link, since its download is spent — and only the rest fail,
/// having counted nothing.
async fn settle_pg(
    db: &impl Exec,
    starts: &[Start],
    versions: &std::cell::RefCell<VersionFiles>,
) -> Result<Vec<Settled>, Failure> {
    let mut plan = Plan::new(starts);
    let mut failed: Option<DbError> = None;
    while let Some(round) = plan.next_round() {
        let mut attempt = 0;
        let got: Result<Vec<(String, Option<String>)>, DbError> = loop {
            match db.fetch_all(plan.pg_round(&round)).await {
                Err(e) if retryable(&e) && attempt < 4 => attempt += 1,
                r => break r,
            }
        };
        match got {
            // The round wrote each event with its `prev_id` already: no old head comes back.
            Ok(got) => plan.record(
                round,
                got.into_iter()
                    .filter_map(|(g, v)| Counted::from_row((g, v, None)))
                    .collect(),
            ),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // The rounds wrote the events; only each counted start's file is left to pick.
    let missing = versions.borrow_mut().missing(&plan.counted_versions());
    if let Some(ids) = missing {
        match db.fetch_all(Query::new(files_sql(Backend::Postgres)).bind(ids)).await {
            Ok(rows) => versions.borrow_mut().add(rows),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    let connection_lost = failed.as_ref().is_some_and(connection_lost);
    let (settled, broken) = plan.settled(&versions.borrow());
    match failed.map(|e| e.to_string()).or(broken) {
        None => Ok(settled.into_iter().map(|o| o.unwrap_or(Settled::Refused)).collect()),
        Some(error) => Err(Failure {
            error,
            settled,
            connection_lost,
        }),
    }
}

/// A batch in one transaction on the dedicated pool (SQLite databases that are not a file).
async fn settle_pool(
    db: &Db,
    starts: &[Start],
    versions: &std::cell::RefCell<VersionFiles>,
) -> Result<Vec<Settled>, Failure> {
    if db.backend() == Backend::Postgres {
        return settle_pg(db, starts, versions).await;
    }
    settle_sqlite_pool(db, starts, versions).await.map_err(Failure::whole)
}

/// [`settle_pool`] on SQLite: all in one transaction, so a failure rolls it all back.
async fn settle_sqlite_pool(
    db: &Db,
    starts: &[Start],
    versions: &std::cell::RefCell<VersionFiles>,
) -> Result<Vec<Settled>, DbError> {
    let tx: Tx = db.begin().await?;
    let backend = tx.backend();
    let mut plan = Plan::new(starts);
    while let Some(round) = plan.next_round() {
        let rows = plan.round_json(&round);
        let got: Vec<(String, Option<String>, Option<String>)> = tx
            .fetch_all(Query::new(decrement_sql(backend)).bind(plan.at).bind(rows))
            .await?;
        plan.record(round, got.into_iter().filter_map(Counted::from_row).collect());
    }
    let missing = versions.borrow_mut().missing(&plan.counted_versions());
    if let Some(ids) = missing {
        let rows: Vec<FileRow> = tx.fetch_all(Query::new(files_sql(backend)).bind(ids)).await?;
        versions.borrow_mut().add(rows);
    }
    let (events, outcomes) = plan.finish(&versions.borrow()).map_err(DbError::Protocol)?;
    if !events.is_empty() {
        tx.execute(Query::new(events_sql(backend)).bind(Event::json(&events)))
            .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// A pause the checkpointer asks of the SQLite writer between two batches. SQLite's own
/// busy waiting cannot get it: the writer takes the write lock again the moment it commits.
#[derive(Default)]
struct Pause {
    asked: std::sync::atomic::AtomicBool,
    /// `true` while the writer waits for the checkpointer to finish.
    paused: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Pause {
    /// Writer side, before each batch: one atomic load unless a pause was asked for.
    fn yield_if_asked(&self) {
        if !self.asked.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut paused) = self.paused.lock() else { return };
        *paused = true;
        self.changed.notify_all();
        while *paused && self.asked.load(Ordering::Acquire) {
            match self.changed.wait(paused) {
                Ok(p) => paused = p,
                Err(_) => return,
            }
        }
    }

    /// Checkpointer side: runs `f` while the writer is paused between batches. A writer with
    /// nothing to do (it never reaches a batch) does not need holding: `f` runs anyway.
    fn hold<T>(&self, f: impl FnOnce() -> T) -> T {
        self.asked.store(true, Ordering::Release);
        if let Ok(paused) = self.paused.lock() {
            let _ = self.changed.wait_timeout_while(paused, CHECKPOINT_EVERY, |p| !*p);
        }
        let out = f();
        self.asked.store(false, Ordering::Release);
        if let Ok(mut paused) = self.paused.lock() {
            *paused = false;
        }
        self.changed.notify_all();
        out
    }
}

/// Checkpoint passes beside the running writer: one, then while the log is long more, each
/// copying what was appended during the one before, until one finds little appended
/// ([`SHORT_HOLD_FRAMES`]) or [`CATCH_UP_PASSES`] have run. Returns the last reading
/// (frames in the log, frames copied back).
///
/// The pass that then holds the writer copies what the last of these left, and every start
/// arriving meanwhile waits for it: its length is the p99 of download starts. A fixed two
/// passes left it ~9 ms on the bench (two passes cannot catch up with ~60k frames/s); passes
/// until little is left take it to ~3 ms, mostly its two fsyncs.
fn catch_up(mut passive: impl FnMut() -> rusqlite::Result<(i64, i64)>) -> rusqlite::Result<(i64, i64)> {
    let mut log = passive();
    let mut passes = 0;
    while let Ok((before, _)) = log {
        if before <= RESTART_FRAMES || passes == CATCH_UP_PASSES {
            break;
        }
        log = passive();
        passes += 1;
        if matches!(log, Ok((frames, _)) if frames - before <= SHORT_HOLD_FRAMES) {
            break;
        }
    }
    log
}

/// The SQLite writer: its own connection to the database file, driven synchronously on the
/// batcher's thread with cached statements. It opens the file with the pool's settings (WAL,
/// `synchronous = FULL`, foreign keys, busy timeout) and writes with `BEGIN IMMEDIATE` like
/// every other writer, so it queues with them rather than failing.
///
/// `synchronous = FULL`: a batch's commit returns once its log frames are on the disk, so
/// every start answered survives a power cut or a host crash, not only a crash of Satchel
/// (with `NORMAL` the starts since the log's last sync would be undone). The sync holds the
/// writer while starts gather for the next batch, which grows (~22 starts per commit against
/// ~12): in the bench 12 % fewer starts per second than `NORMAL` (24.5k → 21.6k/s, means of
/// six and five runs). A thread of its own syncing the log beside the writer, answering each
/// batch after the sync, measured no better (19.3k/s: one more hand-off per batch) and was not
/// kept (docs/operations.md, "A durable count on SQLite").
///
/// Statements are per start here (prepared once, so each is a bind and a step): with no
/// round trip per statement, that is cheaper than building and parsing a JSON row source.
struct SqliteWriter {
    conn: rusqlite::Connection,
    /// Rung after every commit; the checkpointer thread copies the log back.
    checkpoint: std::sync::mpsc::SyncSender<()>,
    /// Where the checkpointer stops the writer between batches to start the log over.
    pause: Arc<Pause>,
    decrement: String,
    files: String,
    event: &'static str,
}

impl SqliteWriter {
    fn connect(file: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
             PRAGMA temp_store = memory; PRAGMA mmap_size = 268435456;
             PRAGMA journal_size_limit = 67108864;",
        )?;
        Ok(conn)
    }

    /// Opens the writer, and beside it the checkpointer: the writer's commits never run a
    /// checkpoint themselves (`wal_autocheckpoint = 0`), since a checkpoint's fsyncs would
    /// stall every start waiting for the batch. A thread of its own copies the log back into
    /// the database (PASSIVE: never blocking a writer) after commits, at most every
    /// [`CHECKPOINT_EVERY`], and holds the writer only when the log must start over
    /// ([`RESTART_FRAMES`]). The pool's connections keep SQLite's automatic checkpoints.
    fn open(file: &std::path::Path) -> Result<Self, String> {
        let conn = Self::connect(file).map_err(|e| e.to_string())?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(|e| e.to_string())?;
        conn.set_prepared_statement_cache_capacity(8);
        let checkpointer = Self::connect(file).map_err(|e| e.to_string())?;
        let (checkpoint, rung) = std::sync::mpsc::sync_channel::<()>(1);
        let pause = Arc::new(Pause::default());
        let writer_pause = pause.clone();
        std::thread::Builder::new()
            .name("satchel-checkpointer".into())
            .spawn(move || {
                // (frames in the log, frames copied back), PASSIVE: never waits for anyone.
                let passive = || {
                    checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    })
                };
                // Ends when the writer (the only sender) is gone.
                while rung.recv().is_ok() {
                    // Under steady starts the writer appends while a checkpoint copies, so
                    // the copy never reaches the end of the log and the log never starts
                    // over (it grew by ~170 MB/s in the bench, each commit then extending
                    // the file and each page look-up searching a longer index). Past
                    // RESTART_FRAMES: more passes while the writer runs, each leaving only
                    // what was appended during the one before, then one pass with the
                    // writer held between two batches (`Pause`) for that short rest and its
                    // fsyncs; the writer's next commit starts the log over. (Not RESTART:
                    // it waits out readers in SQLite's busy sleeps of up to 100 ms, which
                    // would hold the writer that long. A reader on an old snapshot only
                    // defers the restart to a later round.)
                    let log = catch_up(&passive);
                    // Held whenever the log is long, even when the last pass caught up: the
                    // log starts over only at a write transaction that begins with every
                    // frame copied, and only a held writer is sure to begin one then.
                    let long = matches!(log, Ok((frames, _)) if frames > RESTART_FRAMES);
                    let result = if long { pause.hold(passive) } else { log };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
                    }
                    std::thread::sleep(CHECKPOINT_EVERY);
                }
            })
            .map_err(|e| format!("checkpointer thread did not start: {e}"))?;
        Ok(SqliteWriter {
            conn,
            checkpoint,
            pause: writer_pause,
            decrement: decrement(
                "",
                "?1",
                &StartSql {
                    gid: "?2",
                    prefix: "?3",
                    ip: "?4",
                    name: "?5",
                    eid: "?6",
                },
            ),
            files: files_sql(Backend::Sqlite),
            event: "INSERT INTO download_events (id, grant_id, file_id, at, ip, ip_prefix, user_agent, outcome, bytes, prev_id)
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'started', ?8, ?9)",
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<(Start, Reply)>, counters: &Counters) {
        let mut versions = VersionFiles::default();
        while let Some(first) = rx.blocking_recv() {
            let (starts, replies) = take_batch(first, &mut rx);
            self.pause.yield_if_asked();
            let result = self.settle(&starts, &mut versions);
            reply_all(counters, replies, result.map_err(Failure::whole));
        }
    }

    fn settle(&mut self, starts: &[Start], versions: &mut VersionFiles) -> Result<Vec<Settled>, String> {
        use rusqlite::OptionalExtension;
        let e = |e: rusqlite::Error| e.to_string();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let mut plan = Plan::new(starts);
        while let Some(round) = plan.next_round() {
            let mut stmt = tx.prepare_cached(&self.decrement).map_err(e)?;
            let mut got = HashMap::new();
            for i in &round {
                let s = &starts[*i];
                let counted = stmt
                    .query_row(
                        rusqlite::params![
                            plan.at,
                            s.grant_id,
                            s.prefix,
                            s.ip,
                            s.file_name.as_deref().unwrap_or(""),
                            s.event_id
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(e)?;
                if let Some((g, counted)) = counted.and_then(Counted::from_row) {
                    got.insert(g, counted);
                }
            }
            plan.record(round, got);
        }
        if let Some(ids) = versions.missing(&plan.counted_versions()) {
            let mut stmt = tx.prepare_cached(&self.files).map_err(e)?;
            let rows = stmt
                .query_map(rusqlite::named_params! { "$1": ids }, |r| {
                    Ok(FileRow {
                        id: r.get(0)?,
                        product_id: r.get(1)?,
                        version_id: r.get(2)?,
                        name: r.get(3)?,
                        object_key: r.get(4)?,
                        size: r.get(5)?,
                        sha256: r.get(6)?,
                        content_type: r.get(7)?,
                        created_at: r.get(8)?,
                    })
                })
                .map_err(e)?
                .collect::<rusqlite::Result<Vec<FileRow>>>()
                .map_err(e)?;
            versions.add(rows);
        }
        let (events, outcomes) = plan.finish(versions)?;
        if !events.is_empty() {
            let mut stmt = tx.prepare_cached(self.event).map_err(e)?;
            for ev in &events {
                let s = ev.start;
                stmt.execute(rusqlite::params![
                    s.event_id,
                    s.grant_id,
                    ev.file.id,
                    s.at,
                    s.ip,
                    s.prefix,
                    s.user_agent,
                    ev.file.size,
                    ev.prev
                ])
                .map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        // A full channel means a checkpoint is already due: nothing to add.
        let _ = self.checkpoint.try_send(());
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn the_busiest_cpu_is_read_off_the_disks_rows_of_the_interrupt_table() {
        let table = "           CPU0       CPU1       CPU2
  1:          9          0          0   IO-APIC   1-edge      i8042
 24:        120       4510        300   PCI-MSI 1-edge      virtio1-req.0
 25:       9000          0          0   PCI-MSI 2-edge      virtio2-input.0
 26:          0          7        900   PCI-MSI 3-edge      nvme0q1
LOC:     100000     100000     100000   Local timer interrupts
";
        let devices = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            busiest_cpu(table, &devices(&["virtio1"])),
            Some(1),
            "the disk's own row, not the NIC's"
        );
        assert_eq!(
            busiest_cpu(table, &devices(&["virtio1", "nvme0"])),
            Some(1),
            "summed over the disks: 4517 on CPU 1"
        );
        assert_eq!(busiest_cpu(table, &devices(&["nvme0"])), Some(2));
        assert_eq!(busiest_cpu(table, &devices(&["sda"])), None, "no row: no pin");
        assert_eq!(busiest_cpu(table, &[]), None);
        assert_eq!(busiest_cpu("", &devices(&["virtio1"])), None);
    }

    /// A start of `gid` from one address, with an event id of its own.
    fn start_of(gid: &str) -> Start {
        Start {
            grant_id: gid.to_string(),
            file_name: None,
            ip: "192.0.2.7".into(),
            prefix: "192.0.2.0/24".into(),
            user_agent: "test".into(),
            event_id: crate::ids::new_id("dle"),
            at: crate::ids::now(),
        }
    }

    /// A PostgreSQL demo store with one paid order (`None` without PostgreSQL) and its grant.
    async fn pg_store_with_grant(email: &str) -> Option<(crate::testing::TestApp, String)> {
        if !crate::testing::backends().await.contains(&Backend::Postgres) {
            return None;
        }
        let t = crate::testing::TestApp::start_demo(Backend::Postgres).await;
        let order = t.buy_paid("demo-templates", email).await;
        let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
        Some((t, gid))
    }

    async fn remaining(t: &crate::testing::TestApp, gid: &str) -> i64 {
        t.app
            .db
            .fetch_i64(crate::sql!(
                "SELECT remaining FROM download_grants WHERE id = $1",
                gid.to_string()
            ))
            .await
            .unwrap()
    }

    /// The pool's batches (PostgreSQL's rounds; SQLite when the writer cannot open its file)
    /// count like the writer does and put each counted start's event on the grant's list:
    /// two batches of three on a grant of five count five, newest event first.
    #[tokio::test]
    async fn pool_batches_count_and_list_their_events() {
        for backend in crate::testing::backends().await {
            let t = crate::testing::TestApp::start_demo(backend).await;
            let order = t.buy_paid("demo-templates", "pool@example.com").await;
            let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
            let db = t.app.db.dedicated(1, "test");
            let versions = std::cell::RefCell::new(VersionFiles::default());
            let mut ids = Vec::new();
            let mut counted = 0;
            for _ in 0..2 {
                let starts: Vec<Start> = (0..3).map(|_| start_of(&gid)).collect();
                for (s, outcome) in starts.iter().zip(settle_pool(&db, &starts, &versions).await.unwrap()) {
                    if let Settled::Counted(file) = outcome {
                        assert!(!file.name.is_empty());
                        ids.push(s.event_id.clone());
                        counted += 1;
                    }
                }
            }
            assert_eq!(counted, 5, "{backend:?}: the grant's five, no more");
            ids.reverse();
            assert_eq!(t.event_list(&gid).await, ids, "{backend:?}: newest first");
            db.close().await;
        }
    }

    /// On a SQLite file every commit is on the disk before it is answered: the pool's
    /// connections and the download writer's (and its checkpointer's) run with
    /// `synchronous = FULL`, and the writer still counts exactly.
    #[tokio::test]
    async fn sqlite_commits_are_synced_before_they_return() {
        let t = crate::testing::TestApp::start_demo(Backend::Sqlite).await;
        let file = t.app.db.sqlite_file().expect("the test store is a file");
        let (pool,): (i64,) = t.app.db.fetch_one(Query::new("PRAGMA synchronous")).await.unwrap();
        assert_eq!(pool, 2, "the pool commits with synchronous = FULL");
        let writer = SqliteWriter::connect(&file).unwrap();
        let synchronous: i64 = writer.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(synchronous, 2, "the download writer commits with synchronous = FULL");
        let order = t.buy_paid("demo-templates", "synced@example.com").await;
        let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
        let starts = (0..8).map(|_| t.app.download_starts.settle(&t.app.db, start_of(&gid)));
        let outcomes = futures::future::join_all(starts).await;
        let counted = outcomes.iter().filter(|o| matches!(o, Ok(Settled::Counted(_)))).count();
        assert_eq!(counted, 5, "the grant's five: {outcomes:?}");
    }

    /// A PostgreSQL batch whose second round fails (here a trigger refuses the grant's second
    /// event; in life a lost connection) keeps its first round: that start was counted and
    /// committed, so its request gets the link it paid a download for, and only the start of
    /// the failed round is answered with the error, having counted nothing.
    #[tokio::test]
    async fn a_failed_round_keeps_the_rounds_committed_before_it() {
        let Some((t, gid)) = pg_store_with_grant("rounds@example.com").await else {
            return;
        };
        t.app
            .db
            .execute(Query::new(
                "CREATE FUNCTION refuse_second_event() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.prev_id IS NOT NULL THEN RAISE EXCEPTION 'second event refused'; END IF; RETURN NEW; END $$",
            ))
            .await
            .unwrap();
        t.app
            .db
            .execute(Query::new(
                "CREATE TRIGGER refuse_second_event BEFORE INSERT ON download_events
                 FOR EACH ROW EXECUTE FUNCTION refuse_second_event()",
            ))
            .await
            .unwrap();
        let before = remaining(&t, &gid).await;
        // Two starts of one grant: two rounds, the second refused by the trigger.
        let starts: Vec<Start> = (0..2).map(|_| start_of(&gid)).collect();
        let db = t.app.db.dedicated_keyed(1, "test");
        let versions = std::cell::RefCell::new(VersionFiles::default());
        let failure = settle_pool(&db, &starts, &versions).await.unwrap_err();
        assert!(failure.error.contains("second event refused"), "{}", failure.error);
        assert!(
            matches!(failure.settled[0], Some(Settled::Counted(_))),
            "{:?}",
            failure.settled
        );
        assert!(failure.settled[1].is_none(), "{:?}", failure.settled);
        assert_eq!(
            remaining(&t, &gid).await,
            before - 1,
            "the first round's count stands, the second counted nothing"
        );
        assert_eq!(t.event_list(&gid).await, vec![starts[0].event_id.clone()]);

        // Each waiting request learns its own: the counted start its file, the other the error.
        let (replies, answers): (Vec<_>, Vec<_>) = (0..2).map(|_| oneshot::channel()).unzip();
        reply_all(&Counters::default(), replies, Err(failure));
        let answers: Vec<_> = answers.into_iter().map(|mut a| a.try_recv().unwrap()).collect();
        assert!(matches!(answers[0], Ok(Settled::Counted(_))), "{answers:?}");
        assert!(
            matches!(&answers[1], Err(e) if e.contains("second event refused")),
            "{answers:?}"
        );
        db.close().await;
    }

    /// A round that committed but whose answer was lost (the connection dropped between the
    /// commit and the reply): asked afterwards, the database shows its start's event, so that
    /// start is answered as counted with its file; a start whose round never ran has no event
    /// and keeps the error. Asking counts nothing.
    #[tokio::test]
    async fn a_lost_answer_is_recovered_from_the_events() {
        let Some((t, gid)) = pg_store_with_grant("lost@example.com").await else {
            return;
        };
        let (committed, never_ran) = (start_of(&gid), start_of(&gid));
        let db = t.app.db.dedicated_keyed(1, "test");
        let versions = std::cell::RefCell::new(VersionFiles::default());
        let done = settle_pool(&db, std::slice::from_ref(&committed), &versions)
            .await
            .unwrap();
        let Settled::Counted(file) = &done[0] else {
            panic!("{done:?}")
        };
        let before = remaining(&t, &gid).await;

        // The batch of both, as if its answer had been lost.
        let starts = [committed, never_ran];
        let mut failure = Failure::whole("connection lost");
        recover(&t.app.db, &starts, &mut failure).await;
        match &failure.settled[0] {
            Some(Settled::Counted(f)) => assert_eq!(f.id, file.id, "the file its event names"),
            other => panic!("the committed start is answered as counted: {other:?}"),
        }
        assert!(failure.settled[1].is_none(), "{:?}", failure.settled);
        assert_eq!(remaining(&t, &gid).await, before, "asking counts nothing");
        db.close().await;
    }

    /// The batcher's connections find a round's grants by key even where the planner, on a
    /// small store without statistics (new, or autovacuum off), would scan every grant once
    /// per row of the round: the same generic plan on a plain dedicated connection scans. And
    /// the file a link names comes from the (version, name) index, unsorted (a link naming
    /// none reads it off the product row).
    #[tokio::test]
    async fn the_batchers_round_looks_grants_up_by_key_without_statistics() {
        let Some((t, _)) = pg_store_with_grant("plan@example.com").await else {
            return;
        };
        let plan = |db: Db| async move {
            let conn = db.hold().await.unwrap();
            let (mode,): (String,) = conn.fetch_one(Query::new("SHOW plan_cache_mode")).await.unwrap();
            conn.execute(Query::new("SET plan_cache_mode = force_generic_plan"))
                .await
                .unwrap();
            conn.execute(Query::new(format!(
                "PREPARE round_plan(bigint, text[], text[], text[], text[], text[], text[], bigint[]) AS {}",
                pg_round_sql()
            )))
            .await
            .unwrap();
            let rows: Vec<(String,)> = conn
                .fetch_all(Query::new(
                    "EXPLAIN EXECUTE round_plan(1, '{g}', '{p}', '{i}', '{\"\"}', '{e}', '{u}', '{1}')",
                ))
                .await
                .unwrap();
            drop(conn);
            db.close().await;
            (mode, rows.into_iter().map(|(l,)| l).collect::<Vec<_>>().join("\n"))
        };
        let (_, plain) = plan(t.app.db.dedicated(1, "plain")).await;
        assert!(
            plain.contains("Seq Scan on download_grants"),
            "this store is small enough to tempt the planner into a scan (else the check below proves nothing):\n{plain}"
        );
        let (mode, keyed) = plan(t.app.db.dedicated_keyed(1, "keyed")).await;
        // Planned once, whatever the first rounds looked like (the plan above is forced
        // generic on both connections, to compare like with like).
        assert_eq!(
            mode, "force_generic_plan",
            "the batcher's connections plan each statement once"
        );
        assert!(
            keyed.contains("Index Scan using download_grants_pkey on download_grants")
                && !keyed.contains("Seq Scan on download_grants"),
            "the batcher's round finds each grant by key:\n{keyed}"
        );
        // The file a link names is found by the (version, name) index: no sort of the
        // version's files per start (migration 0020).
        assert!(
            keyed.contains("Index Scan using files_version_name on files") && !keyed.contains("Sort"),
            "the round reads a named file from the (version, name) index without sorting:\n{keyed}"
        );
    }

    /// The batcher's held PostgreSQL connection, closed by the server (a restart, an
    /// administrator's `pg_terminate_backend`): a start after the store sat idle is counted
    /// as usual on a fresh connection, and so is a start right after the loss — its batch
    /// fails on the lost connection and is tried again on a fresh one — counted once.
    #[tokio::test]
    async fn a_lost_held_connection_is_replaced() {
        if !crate::testing::backends().await.contains(&Backend::Postgres) {
            return;
        }
        let t = crate::testing::TestApp::start_demo(Backend::Postgres).await;
        let order = t.buy_paid("demo-templates", "held@example.com").await;
        let link = order["items"][0]["download_url"].as_str().unwrap().to_string();
        let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
        let get = || async { t.client.get(&link).send().await.unwrap() };
        assert_eq!(get().await.status(), 302);
        let served = std::time::Instant::now();
        let before = remaining(&t, &gid).await;
        assert_eq!(
            t.end_pg_connections("download batcher").await,
            1,
            "the batcher holds one connection, named in pg_stat_activity"
        );

        // Right after the loss (well within IDLE_CHECK, unless this machine stalled): that
        // batch fails on the lost connection, is retried on a fresh one, and counts once.
        let on_the_lost_connection = served.elapsed() < IDLE_CHECK / 2;
        assert_eq!(get().await.status(), 302, "a start on the lost connection, retried");
        assert_eq!(remaining(&t, &gid).await, before - 1, "counted once");
        if !on_the_lost_connection {
            eprintln!("the start did not meet the lost connection: the test ran too slowly");
        }
        assert_eq!(get().await.status(), 302, "the next start");
        assert_eq!(remaining(&t, &gid).await, before - 2);

        // Lost while idle: noticed before use, so no start fails at all.
        assert_eq!(t.end_pg_connections("download batcher").await, 1);
        tokio::time::sleep(IDLE_CHECK + Duration::from_millis(100)).await;
        assert_eq!(get().await.status(), 302, "the idle connection is checked and replaced");
        assert_eq!(remaining(&t, &gid).await, before - 3);
    }

    /// Catch-up passes run while the log is long and each finds much appended since the one
    /// before; they stop at a short log, at a small increment, at an error, or at the cap.
    #[test]
    fn catch_up_passes_run_until_little_is_left_for_the_held_pass() {
        let run = |readings: &[rusqlite::Result<(i64, i64)>]| {
            let mut calls = 0;
            let last = catch_up(|| {
                calls += 1;
                match &readings[calls - 1] {
                    Ok(r) => Ok(*r),
                    Err(_) => Err(rusqlite::Error::InvalidQuery),
                }
            });
            (calls, last.ok())
        };
        // A short log: one pass, nothing more (no hold follows either).
        assert_eq!(run(&[Ok((100, 100))]), (1, Some((100, 100))));
        // Long, and 3 000 then 1 000 frames appended during passes: on until an increment of
        // at most SHORT_HOLD_FRAMES.
        assert_eq!(
            run(&[
                Ok((9_000, 9_000)),
                Ok((12_000, 12_000)),
                Ok((13_000, 13_000)),
                Ok((13_200, 13_200))
            ]),
            (4, Some((13_200, 13_200)))
        );
        // An error ends the passes (the caller logs it; the next round retries).
        assert_eq!(
            run(&[Ok((9_000, 9_000)), Err(rusqlite::Error::InvalidQuery)]),
            (2, None)
        );
        // A writer appending as fast as passes copy: capped.
        let endless: Vec<_> = (0..=CATCH_UP_PASSES as i64)
            .map(|i| Ok((5_000 + i * 4_000, 0)))
            .collect();
        assert_eq!(run(&endless).0, CATCH_UP_PASSES + 1);
    }

    /// The checkpointer's `hold` runs only while the writer stands between two batches, even
    /// though the writer starts its next batch the moment one ends; a writer that is idle
    /// never blocks it; and the writer carries on afterwards.
    #[test]
    fn the_writer_is_held_between_batches_for_a_log_restart() {
        let pause = Arc::new(Pause::default());
        let in_batch = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicU64::new(0));
        let writer = {
            let (pause, in_batch, stop, batches) = (pause.clone(), in_batch.clone(), stop.clone(), batches.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    pause.yield_if_asked();
                    in_batch.store(true, Ordering::Release);
                    std::thread::sleep(Duration::from_micros(200));
                    in_batch.store(false, Ordering::Release);
                    batches.fetch_add(1, Ordering::AcqRel);
                }
            })
        };
        for _ in 0..5 {
            pause.hold(|| {
                let at_hold = batches.load(Ordering::Acquire);
                for _ in 0..20 {
                    assert!(!in_batch.load(Ordering::Acquire), "no batch runs while held");
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert_eq!(batches.load(Ordering::Acquire), at_hold, "no batch ended while held");
            });
            let held_at = batches.load(Ordering::Acquire);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while batches.load(Ordering::Acquire) < held_at + 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer carries on after the hold"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        stop.store(true, Ordering::Release);
        writer.join().unwrap();
        // No writer at all: the hold gives up waiting after one interval and runs anyway.
        let idle = Pause::default();
        let t0 = std::time::Instant::now();
        assert_eq!(idle.hold(|| 7), 7);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
