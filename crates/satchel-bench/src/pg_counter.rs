//! PostgreSQL's bare counter, the reference DESIGN §6 names for download starts on
//! PostgreSQL: `pgbench` (a C process of its own, like wrk) decrementing one of 64 counter
//! rows, `UPDATE … SET n = n - 1 WHERE id = $1 AND n > 0`, one transaction and so one WAL
//! flush per update, with as many clients as the download-start load has connections.
//! A download start does more (token, grant checks, an event row, the HTTP round trip), but
//! settles many starts per commit.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// What pgbench measured.
pub struct Counter {
    pub tps: f64,
    pub latency_ms: f64,
    /// Clients pgbench ran: those asked for, or fewer when the server's `max_connections`
    /// leaves less room (pgbench would fail to connect the rest).
    pub clients: usize,
}

/// `pgbench` on the PATH, else the newest Debian PostgreSQL's (it is not linked into PATH).
fn pgbench() -> Option<PathBuf> {
    if Command::new("pgbench").arg("--version").output().is_ok() {
        return Some(PathBuf::from("pgbench"));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin/pgbench")))
        .filter(|p| p.exists())
        .collect();
    // Version directories ("15", "16"): the highest number last.
    found.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

/// Runs the counter load against the database of `url` for `dur` with `clients` clients (at
/// most what the server has room for), in a schema of its own that it drops afterwards.
/// `None` when pgbench is not installed.
pub async fn run(url: &str, clients: usize, dur: Duration) -> anyhow::Result<Option<Counter>> {
    let Some(bin) = pgbench() else {
        return Ok(None);
    };
    let schema = format!("bench_counter_{}", satchel::ids::now());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    // Room left: max_connections, less the superuser reserve, those open, and this pool's.
    let room: i64 = sqlx::query_scalar(
        "SELECT (current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
                - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'))::bigint",
    )
    .fetch_one(&pool)
    .await?;
    let clients = clients.min(usize::try_from(room).unwrap_or(0)).max(1);
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.counters (id INT PRIMARY KEY, n BIGINT NOT NULL)"),
        format!("INSERT INTO {schema}.counters SELECT i, 1000000000000 FROM generate_series(1, 64) i"),
    ] {
        sqlx::query(&sql).execute(&pool).await?;
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("counter.sql");
    std::fs::write(
        &script,
        format!("\\set id random(1, 64)\nUPDATE {schema}.counters SET n = n - 1 WHERE id = :id AND n > 0;\n"),
    )?;
    let out = Command::new(&bin)
        .args(["-n", "-M", "prepared", "-j", "1", "-c", &clients.to_string()])
        .args(["-T", &dur.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output();
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
    pool.close().await;
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "pgbench printed no `{prefix}`: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?
            .parse::<f64>()
            .map_err(Into::into)
    };
    Ok(Some(Counter {
        tps: field("tps = ")?,
        latency_ms: field("latency average = ")?,
        clients,
    }))
}
