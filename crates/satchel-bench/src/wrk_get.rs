//! GET load from `wrk` (a separate C process, so the generator does not share Satchel's
//! runtime): every connection cycles through a list of paths, and the Lua script counts each
//! answer whose status is not the expected one — a broken server cannot look fast.

use std::process::Command;
use std::time::Duration;

use crate::Load;

const SCRIPT: &str = r#"
local paths = {}
for line in io.lines(os.getenv("SATCHEL_BENCH_PATHS")) do paths[#paths + 1] = line end
local expect = tonumber(os.getenv("SATCHEL_BENCH_STATUS"))
function init(args)
  i = id
  bad = 0
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
function response(status, headers, body)
  if status ~= expect then bad = bad + 1 end
end
"#;

/// Appended to every script: each thread counts its `bad` answers, and `done` prints the
/// one summary line [`run_script`] reads.
const COMMON: &str = r#"
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("SATCHEL rps=%f p50=%f p99=%f bad=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000, total))
end
"#;

/// Whether `wrk` is installed.
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Runs `wrk` against `base` (scheme://host:port) with `connections` connections for `dur`,
/// requesting `paths` (path + query, no host) in turn, expecting `status`.
pub fn run(base: &str, paths: &[String], status: u16, connections: usize, dur: Duration) -> anyhow::Result<Load> {
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("paths.txt");
    std::fs::write(&list, paths.iter().map(|p| format!("{p}\n")).collect::<String>())?;
    run_script(
        base,
        SCRIPT,
        &[
            ("SATCHEL_BENCH_PATHS", list.to_string_lossy().as_ref()),
            ("SATCHEL_BENCH_STATUS", &status.to_string()),
        ],
        connections,
        dur,
    )
}

/// Runs `wrk` with a Lua `script` that defines `init` (setting `i = id`, `bad = 0`), `request`
/// and `response` (counting unwanted answers in `bad`); the summary is [`COMMON`]'s.
pub fn run_script(
    base: &str,
    script: &str,
    env: &[(&str, &str)],
    connections: usize,
    dur: Duration,
) -> anyhow::Result<Load> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.lua");
    std::fs::write(&path, format!("{script}{COMMON}"))?;
    let out = Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{}s", dur.as_secs()),
        ])
        .arg("-s")
        .arg(&path)
        .arg(base)
        .envs(env.iter().copied())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("SATCHEL "))
        .ok_or_else(|| anyhow::anyhow!("wrk printed no summary: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| anyhow::anyhow!("wrk summary lacks {name}: {line}"))?
            .parse::<f64>()
            .map_err(Into::into)
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Load {
        rps: field("rps")?,
        p50_ms: field("p50")?,
        p99_ms: field("p99")?,
        errors: field("bad")? as usize,
    })
}
