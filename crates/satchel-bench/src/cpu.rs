//! CPU time spent by a process's threads, read from `/proc` (Linux): where a request's cost
//! goes, beside how many requests a second came out of it. A rate on a small machine shared
//! with the load generator mixes everyone's CPU; time per request on each side does not.

use std::path::Path;

/// Nanoseconds on a CPU so far, per thread: (thread name, ns). Empty where `/proc` is not.
pub fn threads(pid: &str) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let dir = t.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            Some((comm.trim().to_string(), on_cpu(&dir)?))
        })
        .collect()
}

/// The first field of `schedstat`: time spent running, in ns.
fn on_cpu(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's CPU so far (every thread), in ns.
pub fn process(pid: &str) -> u64 {
    threads(pid).iter().map(|(_, ns)| ns).sum()
}

/// The CPU so far of the threads named `name` in a process (a name is cut to 15 bytes).
pub fn named(pid: &str, name: &str) -> u64 {
    let short = &name[..name.len().min(15)];
    threads(pid).iter().filter(|(n, _)| n == short).map(|(_, ns)| ns).sum()
}

/// The processes whose parent is `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.file_name().to_string_lossy().to_string();
            name.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces, so read after its `)`.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(name)
        })
        .collect()
}

/// CPU so far of every process named `comm` (PostgreSQL's server processes: its backends,
/// WAL writer, checkpointer), in ns. A process that exits takes its time with it, so read it
/// around a load whose connections stay open.
pub fn comm(comm: &str) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .filter_map(Result::ok)
        .filter(|p| p.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|p| std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .map(|p| process(&p.file_name().to_string_lossy()))
        .sum()
}

/// The machine's (idle, total) CPU time so far over all cores, in clock ticks, from the
/// first line of `/proc/stat` (idle counts `iowait` too).
pub fn machine() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (idle, ticks.iter().take(8).sum())
}

/// The share of all cores idle between two [`machine`] readings, in percent.
#[allow(clippy::cast_precision_loss)]
pub fn idle_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    after.0.saturating_sub(before.0) as f64 * 100.0 / total.max(1) as f64
}

/// Microseconds of CPU per request, from two readings in ns around `requests`.
#[allow(clippy::cast_precision_loss)]
pub fn per_request_us(before: u64, after: u64, requests: f64) -> f64 {
    after.saturating_sub(before) as f64 / 1000.0 / requests.max(1.0)
}

/// CPU so far of this process's children that have been waited for (wrk, after each run),
/// in ns: `cutime` + `cstime` of `/proc/self/stat`, in clock ticks (USER_HZ, 100 on Linux).
pub fn waited_children() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // After `)`: state is field 3, so cutime (16) and cstime (17) are at 13 and 14 here.
    let ticks = |i: usize| {
        rest.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(13) + ticks(14)) * 10_000_000
}
