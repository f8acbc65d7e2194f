//! What abuse detection costs a download start (a measurement, not a timed test; ignored
//! by default): `cargo test --release -p satchel --test abuse_cost -- --ignored --nocapture`.
//! Download starts/s with detection off and on (network spread; velocity off because each
//! client hammers one grant by design), one grant per client, and the in-memory pre-check
//! alone in ns per call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use satchel::testing::{backends, TestApp};

async fn starts_per_sec(detect: bool, backend: satchel::db::Backend) -> f64 {
    let t = TestApp::start_demo_with(backend, |c| {
        c.database.max_connections = 16;
        c.abuse.soft_starts_per_hour = 0;
        c.abuse.suspend_starts_per_hour = 0;
        if !detect {
            c.abuse.soft_prefixes = 0;
            c.abuse.suspend_prefixes = 0;
        }
    })
    .await;
    let clients = 16;
    let mut links = Vec::new();
    for i in 0..clients {
        let o = t.buy_paid("demo-templates", &format!("c{i}@example.com")).await;
        let url = o["items"][0]["download_url"].as_str().unwrap().to_string();
        satchel::db::Exec::execute(
            &t.app.db,
            satchel::sql!("UPDATE download_grants SET max_downloads = 1000000000, remaining = 1000000000"),
        )
        .await
        .unwrap();
        links.push(url);
    }
    let stop = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for url in links {
        let client = t.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 302);
                n += 1;
            }
            n
        }));
    }
    let t0 = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --release -- --ignored --nocapture"]
async fn download_start_cost_of_abuse_detection() {
    let cfg = satchel::config::AbuseConfig::default();
    let tracker = satchel::abuse::Tracker::default();
    let ids: Vec<String> = (0..10_000).map(|i| format!("grt_{i:026}")).collect();
    let n = 1_000_000;
    let t0 = Instant::now();
    for i in 0..n {
        tracker.should_check(
            &cfg,
            &ids[i % ids.len()],
            "203.0.113.0/24",
            1_000_000 + (i / 1000) as i64,
        );
    }
    println!(
        "pre-check: {:.0} ns per start (10 000 grants tracked)",
        t0.elapsed().as_nanos() as f64 / n as f64
    );
    for backend in backends().await {
        let off = starts_per_sec(false, backend).await;
        let on = starts_per_sec(true, backend).await;
        println!(
            "{}: download starts/s, 16 clients: detection off {off:.0}, on {on:.0} ({:+.1} %)",
            backend.name(),
            (on / off - 1.0) * 100.0
        );
    }
}
