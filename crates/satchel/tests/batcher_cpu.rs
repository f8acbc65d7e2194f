//! `server.batcher_cpu`: the download-start batcher's thread runs only on the CPU named, on
//! both databases, and starts are still counted there; `auto` pins it on PostgreSQL to the
//! CPU taking the disks' interrupts and leaves SQLite's writer unpinned. Its own test binary: it looks for
//! the batcher's thread among this process's threads, so no other test's store may be
//! running beside it.

#![allow(clippy::unwrap_used)]

use satchel::config::BatcherCpu;
use satchel::db::Exec;
use satchel::testing::{backends, TestApp};

/// The CPUs a task may run on, as the kernel lists them (`Cpus_allowed_list` of the
/// `status` file at `path`).
fn allowed_list(path: &str) -> String {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Held by each test that starts stores: they look for batcher threads among this process's,
/// so one test's pinned thread must not answer for another's.
static ONE_STORE_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every live batcher thread of this process: (thread id, its `Cpus_allowed_list`).
fn batcher_threads() -> Vec<(String, String)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|t| {
            std::fs::read_to_string(format!("/proc/self/task/{t}/comm")).is_ok_and(|c| c.trim() == "satchel-downloa")
        })
        .map(|t| {
            let list = allowed_list(&format!("/proc/self/task/{t}/status"));
            (t, list)
        })
        .collect()
}

/// The `Cpus_allowed_list` of each batcher thread not among `before` (those of stores that
/// may still be winding down).
fn new_batcher_threads(before: &[(String, String)]) -> Vec<String> {
    batcher_threads()
        .into_iter()
        .filter(|(tid, _)| !before.iter().any(|(b, _)| b == tid))
        .map(|(_, list)| list)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_runs_only_on_the_cpu_configured() {
    let _alone = ONE_STORE_TEST_AT_A_TIME.lock().await;
    let all = allowed_list("/proc/self/status");
    // The last CPU this process may use: pinned there, the thread's list is that one CPU.
    let cpu: usize = all
        .split(',')
        .next_back()
        .and_then(|r| r.split('-').next_back())
        .unwrap()
        .parse()
        .unwrap();
    for backend in backends().await {
        let before = batcher_threads();
        let t = TestApp::start_demo_with(backend, |c| c.server.batcher_cpu = Some(BatcherCpu::Cpu(cpu))).await;
        let o = t.buy_paid("demo-templates", "pinned@example.com").await;
        let url = o["items"][0]["download_url"].as_str().unwrap();
        let r = t.client.get(url).send().await.unwrap();
        assert_eq!(
            r.status(),
            302,
            "{backend:?}: the start is counted on the pinned batcher"
        );
        let threads = new_batcher_threads(&before);
        assert!(
            threads == [cpu.to_string()],
            "{backend:?}: a batcher thread allowed only CPU {cpu} (this process: {all}); found {threads:?}"
        );
        assert_eq!(spent(&t, &o).await, 1, "{backend:?}: one download spent");
    }
}

/// Downloads spent on the first grant of order `o`.
async fn spent(t: &TestApp, o: &serde_json::Value) -> i64 {
    let gid = t.grant_of(o["order_id"].as_str().unwrap()).await;
    t.app
        .db
        .fetch_i64(satchel::sql!(
            "SELECT max_downloads - remaining FROM download_grants WHERE id = $1",
            &gid
        ))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pins_the_postgresql_batcher_beside_the_disks_interrupts() {
    let _alone = ONE_STORE_TEST_AT_A_TIME.lock().await;
    let all = allowed_list("/proc/self/status");
    let found = satchel::delivery::batch::disk_interrupt_cpu();
    for backend in backends().await {
        let before = batcher_threads();
        let t = TestApp::start_demo_with(backend, |c| c.server.batcher_cpu = Some(BatcherCpu::Auto)).await;
        let o = t.buy_paid("demo-templates", "auto@example.com").await;
        let url = o["items"][0]["download_url"].as_str().unwrap();
        let r = t.client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 302, "{backend:?}: the start is counted");
        let expected = match (backend, found) {
            (satchel::db::Backend::Postgres, Some(cpu)) => cpu.to_string(),
            // SQLite's writer, or no disk found: the kernel places it, on any CPU.
            _ => all.clone(),
        };
        let threads = new_batcher_threads(&before);
        assert!(
            threads == [expected.clone()],
            "{backend:?}: a batcher thread allowed {expected} (disk interrupts on {found:?}); found {threads:?}"
        );
        assert_eq!(spent(&t, &o).await, 1, "{backend:?}: one download spent");
    }
}

/// The error loading a configuration with `SATCHEL_BATCHER_CPU` set to `value` gives.
fn refused(value: &str) -> String {
    let env = [("SATCHEL_BATCHER_CPU".to_string(), value.to_string())]
        .into_iter()
        .collect();
    satchel::config::Config::load_from(None, &env).unwrap_err().to_string()
}

#[test]
fn a_cpu_this_process_may_not_use_is_refused_at_start_up() {
    let err = refused("100000");
    assert!(err.contains("server.batcher_cpu"), "{err}");
    assert!(err.contains("may use"), "names the CPUs to pick from: {err}");
    let err = refused("first");
    assert!(err.contains("SATCHEL_BATCHER_CPU"), "{err}");
    assert!(err.contains("auto"), "names the word it takes: {err}");
}

#[test]
fn the_setting_takes_a_cpu_or_auto_from_the_file_and_the_environment() {
    let env = [("SATCHEL_BATCHER_CPU".to_string(), "auto".to_string())]
        .into_iter()
        .collect();
    let c = satchel::config::Config::load_from(None, &env).unwrap();
    assert_eq!(c.server.batcher_cpu, Some(BatcherCpu::Auto));
    let dir = tempfile::tempdir().unwrap();
    for (written, expected) in [("\"auto\"", Some(BatcherCpu::Auto)), ("0", Some(BatcherCpu::Cpu(0)))] {
        let file = dir.path().join("satchel.toml");
        std::fs::write(&file, format!("[server]\nbatcher_cpu = {written}\n")).unwrap();
        let c = satchel::config::Config::load_from(Some(&file), &Default::default()).unwrap();
        assert_eq!(c.server.batcher_cpu, expected, "{written}");
    }
    std::fs::write(dir.path().join("bad.toml"), "[server]\nbatcher_cpu = \"fast\"\n").unwrap();
    let err = satchel::config::Config::load_from(Some(&dir.path().join("bad.toml")), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("auto"), "{err}");
}
