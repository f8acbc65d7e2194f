//! The job queue: a `jobs` table, typed jobs, a registry, and a lease-based worker.
//!
//! A job is enqueued with [`enqueue`] on the caller's transaction, so it exists if and only
//! if the business write that caused it committed (transactional outbox). A worker claims
//! one job with a single `UPDATE … RETURNING` that sets a lease (`locked_until`); on
//! PostgreSQL the inner select adds `FOR UPDATE SKIP LOCKED` so workers never wait on each
//! other. No transaction is held while the job runs. Success marks it `done`; failure
//! re-queues it with exponential backoff until `max_attempts`, then `dead`. A worker that
//! dies leaves a lease that expires, after which another worker claims the job again — so
//! handlers must be idempotent (they are: each checks the state it is about to change).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Notify;

use crate::db::{Db, Exec};
use crate::ids::{new_id, now};
use crate::sql;

/// A typed job. `KIND` is stored in the table and names the handler in the registry.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    const KIND: &'static str;
    const MAX_ATTEMPTS: i64 = 8;
}

type BoxFut = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Handler<C> = Arc<dyn Fn(C, String) -> BoxFut + Send + Sync>;

/// Maps job kinds to handlers. `C` is the context handed to every handler (the app).
pub struct Registry<C> {
    handlers: HashMap<&'static str, Handler<C>>,
}

impl<C: Clone + Send + Sync + 'static> Default for Registry<C> {
    fn default() -> Self {
        Self {
            handlers: HashMap::new(),
        }
    }
}

impl<C: Clone + Send + Sync + 'static> Registry<C> {
    pub fn register<J, F, Fut>(&mut self, f: F)
    where
        J: Job,
        F: Fn(C, J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.handlers.insert(
            J::KIND,
            Arc::new(move |ctx: C, payload: String| -> BoxFut {
                let f = f.clone();
                Box::pin(async move {
                    let job: J = serde_json::from_str(&payload)
                        .map_err(|e| anyhow::anyhow!("job {} payload does not parse: {e}", J::KIND))?;
                    f(ctx, job).await
                })
            }),
        );
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }
}

/// Puts a job on the queue, inside whatever transaction `e` is (or directly on the pool).
pub async fn enqueue<J: Job>(e: &impl Exec, job: &J) -> anyhow::Result<String> {
    enqueue_at(e, job, now()).await
}

pub async fn enqueue_at<J: Job>(e: &impl Exec, job: &J, run_at: i64) -> anyhow::Result<String> {
    let id = new_id("job");
    let t = now();
    e.execute(sql!(
        "INSERT INTO jobs (id, kind, payload, status, attempts, max_attempts, run_at, created_at, updated_at)
         VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $6)",
        &id,
        J::KIND,
        serde_json::to_string(job)?,
        J::MAX_ATTEMPTS,
        run_at,
        t
    ))
    .await?;
    Ok(id)
}

#[derive(Debug, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
    pub max_attempts: i64,
}

/// Claims the next runnable job (queued and due, or running with an expired lease).
pub async fn claim(db: &Db, worker_id: &str, lease_secs: i64) -> anyhow::Result<Option<ClaimedJob>> {
    let t = now();
    let q = format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, locked_until = $2, updated_at = $3
         WHERE id = (
             SELECT id FROM jobs
             WHERE (status = 'queued' AND run_at <= $3) OR (status = 'running' AND locked_until < $3)
             ORDER BY run_at, id
             LIMIT 1{}
         )
         RETURNING id, kind, payload, attempts, max_attempts",
        db.backend().skip_locked()
    );
    Ok(db.fetch_optional(sql!(q, worker_id, t + lease_secs, t)).await?)
}

/// Seconds to wait before attempt `attempts + 1`: 2, 4, 8 … capped at one hour.
pub fn backoff_secs(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 12)).unwrap_or(12);
    2i64.pow(exp).min(3600)
}

pub async fn finish(db: &Db, job: &ClaimedJob, worker_id: &str, result: &anyhow::Result<()>) -> anyhow::Result<()> {
    let t = now();
    match result {
        Ok(()) => {
            db.execute(sql!(
                "UPDATE jobs SET status = 'done', locked_by = NULL, locked_until = NULL, last_error = NULL, updated_at = $2
                 WHERE id = $1 AND locked_by = $3",
                &job.id,
                t,
                worker_id
            ))
            .await?;
        }
        Err(e) => {
            let dead = job.attempts >= job.max_attempts;
            let status = if dead { "dead" } else { "queued" };
            let msg: String = format!("{e:#}").chars().take(2000).collect();
            db.execute(sql!(
                "UPDATE jobs SET status = $2, run_at = $3, locked_by = NULL, locked_until = NULL, last_error = $4, updated_at = $5
                 WHERE id = $1 AND locked_by = $6",
                &job.id,
                status,
                t + backoff_secs(job.attempts),
                msg,
                t,
                worker_id
            ))
            .await?;
        }
    }
    Ok(())
}

/// Gives back every job this worker holds (graceful shutdown).
pub async fn release_all(db: &Db, worker_id: &str) -> anyhow::Result<u64> {
    Ok(db
        .execute(sql!(
            "UPDATE jobs SET status = 'queued', attempts = attempts - 1, locked_by = NULL, locked_until = NULL, updated_at = $2
             WHERE status = 'running' AND locked_by = $1",
            worker_id,
            now()
        ))
        .await?)
}

/// Jobs waiting (queued or running), for `/metrics`.
pub async fn depth(db: &Db) -> anyhow::Result<i64> {
    Ok(db
        .fetch_i64(sql!("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"))
        .await?)
}

/// A worker loop: claims and runs jobs until `stop` is notified.
pub struct Worker<C> {
    pub db: Db,
    pub registry: Arc<Registry<C>>,
    pub ctx: C,
    pub id: String,
    pub lease_secs: i64,
    /// Rung by `enqueue` callers after commit so new jobs start at once instead of on the next poll.
    pub wake: Arc<Notify>,
}

impl<C: Clone + Send + Sync + 'static> Worker<C> {
    /// Runs one job if one is due; returns whether it did.
    pub async fn run_once(&self) -> anyhow::Result<bool> {
        let Some(job) = claim(&self.db, &self.id, self.lease_secs).await? else {
            return Ok(false);
        };
        let result = match self.registry.handlers.get(job.kind.as_str()) {
            Some(h) => {
                let fut = h(self.ctx.clone(), job.payload.clone());
                match tokio::time::timeout(Duration::from_secs(u64::try_from(self.lease_secs).unwrap_or(300)), fut)
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("job timed out after {}s", self.lease_secs)),
                }
            }
            None => Err(anyhow::anyhow!("no handler registered for job kind {:?}", job.kind)),
        };
        if let Err(e) = &result {
            tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempts, error = %format!("{e:#}"), "job failed");
        }
        finish(&self.db, &job, &self.id, &result).await?;
        Ok(true)
    }

    /// Runs every job that is due now, then returns (tests use this to drain the queue).
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        while self.run_once().await? {
            n += 1;
        }
        Ok(n)
    }

    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.run_once().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::error!(error = %format!("{e:#}"), "job worker error"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        match release_all(&self.db, &self.id).await {
            Ok(n) if n > 0 => tracing::info!(released = n, "released leased jobs on shutdown"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not release leased jobs"),
        }
    }
}
