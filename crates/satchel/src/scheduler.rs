//! The scheduler: periodic jobs, safe to run in every instance at once.
//!
//! Each schedule has a row in `kv_settings` (`scope = 'schedule'`) holding the unix second
//! of its last enqueue. A tick claims a due slot with one conditional UPDATE; only the
//! instance whose UPDATE touched the row enqueues the job (in the same transaction), so N
//! servers ticking together enqueue it once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::db::{Db, Exec};
use crate::ids::now;
use crate::jobs::{self, Job};
use crate::sql;

/// Deletes finished jobs, expired sessions, used or expired magic links, and expired uploads
/// (with their bytes and S3 multipart uploads).
#[derive(Debug, Serialize, Deserialize)]
pub struct Housekeeping {
    /// Keep finished (`done`) jobs this many seconds.
    pub keep_done_secs: i64,
}

impl Job for Housekeeping {
    const KIND: &'static str = "housekeeping";
}

pub async fn run_housekeeping(app: App, job: Housekeeping) -> anyhow::Result<()> {
    let t = now();
    let jobs = app
        .db
        .execute(sql!(
            "DELETE FROM jobs WHERE status = 'done' AND updated_at < $1",
            t - job.keep_done_secs
        ))
        .await?;
    let sessions = app
        .db
        .execute(sql!("DELETE FROM sessions WHERE expires_at < $1", t))
        .await?;
    let links = app
        .db
        .execute(sql!(
            "DELETE FROM magic_links WHERE expires_at < $1 OR used_at IS NOT NULL",
            t - 86_400
        ))
        .await?;
    let uploads = crate::uploads::cleanup_expired(&app).await?;
    tracing::info!(jobs, sessions, links, uploads, "housekeeping done");
    Ok(())
}

/// Enqueues `job` if its schedule `name` is due (`every_secs` since the last enqueue).
/// Returns whether this caller enqueued it.
pub async fn enqueue_if_due<J: Job>(db: &Db, name: &str, every_secs: i64, job: &J) -> anyhow::Result<bool> {
    let t = now();
    let tx = db.begin().await?;
    tx.execute(sql!(
        "INSERT INTO kv_settings (scope, name, value) VALUES ('schedule', $1, '0') ON CONFLICT DO NOTHING",
        name
    ))
    .await?;
    let claimed = tx
        .execute(sql!(
            "UPDATE kv_settings SET value = $2 WHERE scope = 'schedule' AND name = $1 AND CAST(value AS BIGINT) <= $3",
            name,
            t.to_string(),
            t - every_secs
        ))
        .await?;
    if claimed == 1 {
        jobs::enqueue(&tx, job).await?;
    }
    tx.commit().await?;
    Ok(claimed == 1)
}

/// One pass over every schedule.
pub async fn tick(app: &App) -> anyhow::Result<usize> {
    let mut n = 0;
    if enqueue_if_due(
        &app.db,
        Housekeeping::KIND,
        3600,
        &Housekeeping {
            keep_done_secs: 7 * 86_400,
        },
    )
    .await?
    {
        n += 1;
    }
    if enqueue_if_due(
        &app.db,
        crate::affiliates::ReleaseCommissions::KIND,
        3600,
        &crate::affiliates::ReleaseCommissions,
    )
    .await?
    {
        n += 1;
    }
    if enqueue_if_due(
        &app.db,
        crate::subscriptions::ExpireAccess::KIND,
        600,
        &crate::subscriptions::ExpireAccess,
    )
    .await?
    {
        n += 1;
    }
    if n > 0 {
        app.jobs_enqueued();
    }
    Ok(n)
}

/// Ticks every 30 seconds until `stop`.
pub async fn run(app: App, stop: CancellationToken) {
    loop {
        if let Err(e) = tick(&app).await {
            tracing::error!(error = %format!("{e:#}"), "scheduler tick failed");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
