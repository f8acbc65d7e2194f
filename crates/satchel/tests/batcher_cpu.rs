//! `server.batcher_cpu`: the download-start batcher's thread runs only on the CPU named, on
//! both databases, and starts are still counted there. Its own test binary: it looks for
//! the batcher's thread among this process's threads, so no other test's store may be
//! running beside it.

#![allow(clippy::unwrap_used)]

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

/// The `Cpus_allowed_list` of every live batcher thread of this process.
fn batcher_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|t| {
            std::fs::read_to_string(format!("/proc/self/task/{t}/comm")).is_ok_and(|c| c.trim() == "satchel-downloa")
        })
        .map(|t| allowed_list(&format!("/proc/self/task/{t}/status")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_runs_only_on_the_cpu_configured() {
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
        let t = TestApp::start_demo_with(backend, |c| c.server.batcher_cpu = Some(cpu)).await;
        let o = t.buy_paid("demo-templates", "pinned@example.com").await;
        let url = o["items"][0]["download_url"].as_str().unwrap();
        let r = t.client.get(url).send().await.unwrap();
        assert_eq!(
            r.status(),
            302,
            "{backend:?}: the start is counted on the pinned batcher"
        );
        let threads = batcher_threads();
        assert!(
            threads.contains(&cpu.to_string()),
            "{backend:?}: a batcher thread allowed only CPU {cpu} (this process: {all}); found {threads:?}"
        );
        let gid = t.grant_of(o["order_id"].as_str().unwrap()).await;
        let spent: i64 = t
            .app
            .db
            .fetch_i64(satchel::sql!(
                "SELECT max_downloads - remaining FROM download_grants WHERE id = $1",
                &gid
            ))
            .await
            .unwrap();
        assert_eq!(spent, 1, "{backend:?}: one download spent");
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
}
