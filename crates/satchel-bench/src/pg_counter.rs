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
    let script = format!("\\set id random(1, 64)\nUPDATE {schema}.counters SET n = n - 1 WHERE id = :id AND n > 0;\n");
    let out = pgbench_run(&bin, url, None, &script, clients, dur);
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
    pool.close().await;
    let (tps, latency_ms) = out?;
    Ok(Some(Counter {
        tps,
        latency_ms,
        clients,
    }))
}

/// Runs `script` with pgbench (`-n -M prepared -j 1`, no TLS) against `url`, with
/// `search_path` set to `schema` when given: (transactions per second, mean latency in ms).
fn pgbench_run(
    bin: &std::path::Path,
    url: &str,
    schema: Option<&str>,
    script: &str,
    clients: usize,
    dur: Duration,
) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script)?;
    let mut cmd = Command::new(bin);
    // Without TLS, as Satchel connects (its PostgreSQL driver is built without it): libpq's
    // default `sslmode=prefer` encrypts every message when the server offers TLS, as
    // Debian's does: ~13 % of the backend's time in a one-start round under perf.
    cmd.env("PGSSLMODE", "disable");
    if let Some(schema) = schema {
        cmd.env("PGOPTIONS", format!("-c search_path={schema}"));
    }
    let out = cmd
        .args(["-n", "-M", "prepared", "-j", "1", "-c", &clients.to_string()])
        .args(["-T", &dur.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(&file)
        .arg(url)
        .output()?;
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
    Ok((field("tps = ")?, field("latency average = ")?))
}

/// PostgreSQL's own ceiling for download starts: Satchel's round statement
/// ([`satchel::delivery::batch::pg_round_sql`]) run by pgbench alone — no HTTP, no Satchel —
/// on the store's own schema and grants, in rounds of `per_round` starts (the size Satchel's
/// rounds had), by one client, as Satchel runs one round at a time. Each round's rows are
/// built in SQL from the grant ids (array aggregates: a little more PostgreSQL work than
/// binding Satchel's arrays). Its events carry the user agent `pgbench`, so the caller counts
/// what was really counted. Returns rounds per second; `None` without pgbench or with fewer
/// grants than one round.
pub fn round_alone(
    url: &str,
    schema: &str,
    grants: &[String],
    per_round: usize,
    dur: Duration,
) -> anyhow::Result<Option<f64>> {
    let Some(bin) = pgbench() else {
        return Ok(None);
    };
    let per_round = per_round.max(1);
    if grants.len() < per_round {
        return Ok(None);
    }
    let ids = grants
        .iter()
        .map(|g| format!("'{}'", g.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(",");
    let at = satchel::ids::now();
    // Each of the round's column arrays, built in SQL per round from the same grants.
    let column =
        |element: &str| format!("(SELECT array_agg({element}) FROM unnest((ARRAY[{ids}])[1:{per_round}]) AS g)");
    let sql = satchel::delivery::batch::pg_round_sql()
        .replace("$2::text[]", &column("g"))
        .replace("$3::text[]", &column("'10.99.0.0/24'::text"))
        .replace("$4::text[]", &column("'10.99.0.1'::text"))
        .replace("$5::text[]", &column("''::text"))
        // Event ids that sort by time, as Satchel's do (`ids::new_id`: the time, then random
        // bits), so each round appends to the right edge of the events' primary key: random
        // ids (a UUID) scatter the inserts over the index and cost PostgreSQL ~5 µs more per
        // start (docs/operations.md, "A faster machine"). 30 characters, like Satchel's;
        // unique within a round by the grant's own last characters.
        .replace(
            "$6::text[]",
            &column("'dle_' || to_char(clock_timestamp(), 'YYYYMMDDHH24MISSUS') || right(g, 6)"),
        )
        .replace("$7::text[]", &column("'pgbench'::text"))
        .replace("$8::bigint[]", &column(&format!("{at}::bigint")))
        .replace("$1", &at.to_string());
    let script = format!("{};\n", sql.split_whitespace().collect::<Vec<_>>().join(" "));
    let (tps, _) = pgbench_run(&bin, url, Some(schema), &script, 1, dur)?;
    Ok(Some(tps))
}
