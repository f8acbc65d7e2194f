//! Group commit for download starts.
//!
//! A download start must be durable (the count is the product) and exact under any
//! concurrency, but one transaction per start caps the rate at what the database commits per
//! second (and on SQLite, concurrent writers queue on the busy timeout). So starts are handed
//! to one batcher task per instance, which takes every start waiting at that moment (up to
//! [`MAX_BATCH`]) and settles them in one transaction:
//!
//! 1. one read finds, for every grant in the batch, the files of its product's current
//!    version — a start naming a file that does not exist is refused before anything counts;
//! 2. one conditional `UPDATE … FROM (VALUES …)` per *round* decrements every grant that is
//!    live for that request (the same WHERE as a lone start: order paid, grant active and
//!    unexpired, count left, IP policy met). A round holds at most one request per grant, so
//!    two starts of one grant are two statements and the second sees the first: exactness is
//!    the database's, not ours. A (grant, address) pair that failed once fails for the rest of
//!    the batch (state only gets tighter inside the transaction), so 500 starts of a grant of 5
//!    cost six rounds, not 500;
//! 3. one INSERT logs a `download_events` row per counted start; then one commit.
//!
//! Each statement takes its rows as one JSON parameter (`json_each` on SQLite,
//! `json_to_recordset` on PostgreSQL — the one dialect switch here), so a batch of any size
//! is the same prepared statement.
//!
//! Each waiting request learns its own result after the commit, so a 302 is only ever sent
//! for a start that is durable. When the store is idle a batch holds one start and costs what
//! a lone transaction did. A deadlock or serialization failure (PostgreSQL, several
//! instances) retries the whole batch, which nothing outside has seen yet.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::db::models::FileRow;
use crate::db::{Backend, Db, DbError, Exec, Query, Tx};
use crate::ids::new_id;

/// Most starts settled by one transaction (bounded so one statement's parameters stay far
/// below both engines' limits).
pub const MAX_BATCH: usize = 256;
/// Starts waiting for the batcher before callers wait for room (backpressure, not refusal).
const QUEUE: usize = 4096;

/// One download start, as the redemption handler saw it.
#[derive(Debug, Clone)]
pub struct Start {
    pub grant_id: String,
    /// The file asked for by name, or the first file of the current version.
    pub file_name: Option<String>,
    pub ip: String,
    pub prefix: String,
    pub user_agent: String,
    pub at: i64,
}

/// What became of a start.
#[derive(Debug)]
pub enum Settled {
    /// Counted and logged; deliver this file.
    Counted(FileRow),
    /// The grant is not live for this request (the caller explains why, read-only).
    Refused,
    /// The grant's product has no such file; nothing counted.
    NoSuchFile,
}

type Reply = oneshot::Sender<Result<Settled, String>>;

/// The per-instance batcher: a channel into one task that owns the write transactions.
#[derive(Default)]
pub struct Batcher {
    tx: OnceLock<mpsc::Sender<(Start, Reply)>>,
    counters: Arc<Counters>,
}

/// Transactions committed and starts settled by them (their ratio is the mean batch size).
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    starts: AtomicU64,
}

impl Batcher {
    /// Settles one start (batched with whatever else is waiting). `Err` carries a database
    /// failure's text: nothing was counted.
    pub async fn settle(&self, db: &Db, start: Start) -> Result<Settled, String> {
        let sender = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            // The task holds only the pool: when the app (and with it the sender) is
            // dropped, `recv` ends and so does the task.
            tokio::spawn(run(db.clone(), rx, self.counters.clone()));
            tx
        });
        let (reply, answer) = oneshot::channel();
        sender
            .send((start, reply))
            .await
            .map_err(|_| "download batcher stopped".to_string())?;
        answer.await.map_err(|_| "download batcher stopped".to_string())?
    }

    /// Prometheus lines: batches committed and starts settled.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP satchel_download_start_batches_total Transactions that settled download starts (group commit).\n\
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

async fn run(db: Db, mut rx: mpsc::Receiver<(Start, Reply)>, counters: Arc<Counters>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (starts, replies): (Vec<Start>, Vec<Reply>) = batch.drain(..).unzip();
        let mut result = settle_batch(&db, &starts).await;
        for _ in 0..4 {
            match &result {
                Err(e) if retryable(e) => result = settle_batch(&db, &starts).await,
                _ => break,
            }
        }
        match result {
            Ok(outcomes) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters.starts.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, starts = starts.len(), "download start batch failed; nothing counted");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Deadlocks (40P01) and serialization failures (40001) between instances: the batch is
/// retried whole. SQLite's busy errors are waited out by its busy timeout already.
fn retryable(e: &DbError) -> bool {
    match e {
        DbError::Database(d) => matches!(d.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

#[derive(sqlx::FromRow)]
struct GrantFile {
    grant_id: String,
    #[sqlx(flatten)]
    file: FileRow,
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

async fn settle_batch(db: &Db, starts: &[Start]) -> Result<Vec<Settled>, DbError> {
    let tx = db.begin().await?;
    let mut outcomes: Vec<Option<Settled>> = starts.iter().map(|_| None).collect();

    // 1. The files each grant can deliver, and the file each start gets.
    let backend = tx.backend();
    let grants: HashSet<&str> = starts.iter().map(|s| s.grant_id.as_str()).collect();
    let ids: Vec<serde_json::Value> = grants.iter().map(|g| serde_json::json!({ "g": g })).collect();
    let rows: Vec<GrantFile> = tx
        .fetch_all(Query::new(format!(
            "SELECT g.id AS grant_id, f.id, f.product_id, f.version_id, f.name, f.object_key, f.size, f.sha256, f.content_type, f.created_at
             FROM download_grants g JOIN products p ON p.id = g.product_id JOIN files f ON f.version_id = p.current_version_id
             WHERE g.id IN (SELECT g FROM ({}) AS j) ORDER BY f.name",
            json_rows(backend, "$1", &[("g", "text")])
        ))
        .bind(serde_json::Value::Array(ids).to_string()))
        .await?;
    let mut files: HashMap<&str, Vec<&FileRow>> = HashMap::new();
    for r in &rows {
        files.entry(r.grant_id.as_str()).or_default().push(&r.file);
    }
    let mut chosen: Vec<Option<&FileRow>> = Vec::with_capacity(starts.len());
    for (i, s) in starts.iter().enumerate() {
        let of_grant = files.get(s.grant_id.as_str());
        let file = match (&s.file_name, of_grant) {
            (_, None) => None,
            (None, Some(fs)) => fs.first().copied(),
            (Some(name), Some(fs)) => fs.iter().find(|f| &f.name == name).copied(),
        };
        if file.is_none() {
            // An unknown grant id is refused (and explained as not found) by the caller; a
            // known grant without that file is the caller's 404 for the file.
            outcomes[i] = Some(if of_grant.is_some() || s.file_name.is_some() {
                Settled::NoSuchFile
            } else {
                Settled::Refused
            });
        }
        chosen.push(file);
    }

    // 2. Rounds of conditional decrements, one request per grant per round.
    let mut queue: HashMap<&str, std::collections::VecDeque<usize>> = HashMap::new();
    for (i, s) in starts.iter().enumerate() {
        if outcomes[i].is_none() {
            queue.entry(s.grant_id.as_str()).or_default().push_back(i);
        }
    }
    let mut dead: HashSet<(&str, &str)> = HashSet::new();
    let at = starts.iter().map(|s| s.at).max().unwrap_or_default();
    loop {
        let mut round: Vec<usize> = Vec::new();
        for pending in queue.values_mut() {
            while let Some(i) = pending.pop_front() {
                let s = &starts[i];
                if dead.contains(&(s.grant_id.as_str(), s.ip.as_str())) {
                    outcomes[i] = Some(Settled::Refused);
                    continue;
                }
                round.push(i);
                break;
            }
        }
        if round.is_empty() {
            break;
        }
        // Lock grants in one order, so two instances' batches cannot deadlock on each other.
        round.sort_by(|a, b| starts[*a].grant_id.cmp(&starts[*b].grant_id));
        let counted = decrement_round(&tx, starts, &round, at).await?;
        for i in round {
            let s = &starts[i];
            if counted.contains(s.grant_id.as_str()) {
                outcomes[i] = chosen[i].map(|f| Settled::Counted(f.clone()));
            } else {
                dead.insert((s.grant_id.as_str(), s.ip.as_str()));
                outcomes[i] = Some(Settled::Refused);
            }
        }
    }

    // 3. One event row per counted start, then the commit that makes them all true.
    let counted: Vec<(usize, &FileRow)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Some(Settled::Counted(f)) => Some((i, f)),
            _ => None,
        })
        .collect();
    if !counted.is_empty() {
        let rows: Vec<serde_json::Value> = counted
            .iter()
            .map(|(i, f)| {
                let s = &starts[*i];
                serde_json::json!({
                    "id": new_id("dle"), "g": s.grant_id, "f": f.id, "at": s.at, "ip": s.ip, "p": s.prefix,
                    "ua": s.user_agent.chars().take(300).collect::<String>(), "b": f.size,
                })
            })
            .collect();
        tx.execute(
            Query::new(format!(
                "INSERT INTO download_events (id, grant_id, file_id, at, ip, ip_prefix, user_agent, outcome, bytes)
                 SELECT id, g, f, at, ip, p, ua, 'started', b FROM ({}) AS j",
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
                        ("b", "bigint")
                    ]
                )
            ))
            .bind(serde_json::Value::Array(rows).to_string()),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes.into_iter().map(|o| o.unwrap_or(Settled::Refused)).collect())
}

/// One statement: decrements each listed request's grant if it is live for that request.
/// Returns the grant ids that were counted.
async fn decrement_round(tx: &Tx, starts: &[Start], round: &[usize], at: i64) -> Result<HashSet<String>, DbError> {
    let rows: Vec<serde_json::Value> = round
        .iter()
        .map(|i| {
            let s = &starts[*i];
            serde_json::json!({ "gid": s.grant_id, "prefix": s.prefix, "ip": s.ip })
        })
        .collect();
    let q = Query::new(format!(
        "WITH r AS ({})
         UPDATE download_grants
         SET remaining = remaining - 1, updated_at = $1,
             ip_bound = CASE WHEN ip_policy = 'bind_first' AND ip_bound IS NULL THEN r.prefix ELSE ip_bound END
         FROM r
         WHERE download_grants.id = r.gid AND status = 'active' AND remaining > 0 AND expires_at > $1
           AND (ip_policy <> 'bind_first' OR ip_bound IS NULL OR ip_bound = r.prefix)
           AND (ip_policy <> 'allow_list' OR (',' || ip_allow || ',') LIKE ('%,' || r.ip || ',%'))
           AND EXISTS (SELECT 1 FROM orders o WHERE o.id = download_grants.order_id AND o.status IN ('paid', 'partially_refunded'))
         RETURNING download_grants.id",
        json_rows(tx.backend(), "$2", &[("gid", "text"), ("prefix", "text"), ("ip", "text")])
    ))
    .bind(at)
    .bind(serde_json::Value::Array(rows).to_string());
    let rows: Vec<(String,)> = tx.fetch_all(q).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
