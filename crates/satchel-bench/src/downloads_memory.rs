//! `--downloads-memory`: the memory a separately spawned `satchel serve` (the built binary,
//! SQLite, stream delivery) needs to hold many slow downloads at once, and to stream a
//! 10 GiB file.
//!
//! Phase 1 streams a 10 GiB sparse file to one client at full speed, sampling the server's
//! RSS every 100 ms: memory must stay flat whatever the size. Phase 2 opens N (default
//! 10 000) downloads of a 1 MiB file from clients with small receive buffers that read the
//! response head and a few KiB, then stop reading until every one of the N is in flight —
//! the server then holds N stalled downloads, and its RSS is read — then read the rest slowly
//! and check every byte. Per-download memory = (RSS while holding − RSS before) / N.
//! Traffic goes only to 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use satchel::app::App;
use satchel::catalog::NewFile;
use satchel::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SMALL: usize = 1 << 20;
const HUGE: u64 = 10 << 30;

/// Resident memory of `pid` in KiB (`VmRSS` from /proc).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8).collect()
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `satchel` binary next to this benchmark (`cargo build --release -p satchel`).
fn satchel_bin() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("satchel");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it first with `cargo build --release -p satchel`",
        bin.display()
    );
    Ok(bin)
}

/// Seeds two free products (1 MiB of a known pattern, and a 10 GiB sparse file) straight
/// into the data dir, before the server starts.
async fn seed(data: &Path) -> anyhow::Result<()> {
    let cfg = Config {
        data_dir: data.to_path_buf(),
        ..Config::default()
    };
    let app = App::open(cfg).await?;
    let put = app
        .storage
        .put(
            "bench/small.bin",
            satchel::storage::bytes_stream(pattern(SMALL)),
            "application/octet-stream",
        )
        .await?;
    let small = NewFile {
        name: "small.bin".into(),
        object_key: "bench/small.bin".into(),
        size: i64::try_from(put.size)?,
        sha256: put.sha256,
        content_type: "application/octet-stream".into(),
    };
    satchel::testing::add_free_product(&app, "bench-small", 5, "none", &[small]).await?;
    let root = app
        .storage
        .local_root()
        .ok_or_else(|| anyhow::anyhow!("local storage expected"))?;
    std::fs::create_dir_all(root.join("bench"))?;
    std::fs::File::create(root.join("bench/huge.bin"))?.set_len(HUGE)?;
    let huge = NewFile {
        name: "huge.bin".into(),
        object_key: "bench/huge.bin".into(),
        size: i64::try_from(HUGE)?,
        sha256: "0".repeat(64),
        content_type: "application/octet-stream".into(),
    };
    satchel::testing::add_free_product(&app, "bench-huge", 5, "none", &[huge]).await?;
    app.db.close().await;
    Ok(())
}

async fn start(data: &Path) -> anyhow::Result<Server> {
    let port = satchel::testing::free_port();
    let conf = data.join("satchel.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nrate_limits = false\n"
        ),
    )?;
    let child = Command::new(satchel_bin()?)
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(&conf)
        .arg("serve")
        .env("SATCHEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "satchel serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Buys the free product `slug` and redeems its link once: the delivery URL.
async fn delivery_url(base: &str, slug: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let order: serde_json::Value = client
        .post(format!("{base}/api/v1/products/{slug}/purchase"))
        .json(&serde_json::json!({"email": "bench@example.com"}))
        .send()
        .await?
        .json()
        .await?;
    let link = order["items"][0]["download_url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no download_url in {order}"))?;
    let r = client.get(link).send().await?;
    anyhow::ensure!(r.status() == 302, "redeem: {}", r.status());
    Ok(r.headers()["location"].to_str()?.to_string())
}

/// Streams the 10 GiB file once at full speed; returns (bytes, seconds, min RSS, max RSS).
async fn huge_stream(pid: u32, url: &str) -> anyhow::Result<(u64, f64, u64, u64)> {
    use futures::StreamExt;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut lo, mut hi) = (u64::MAX, 0);
            while !done.load(Ordering::Relaxed) {
                let r = rss_kib(pid);
                lo = lo.min(r);
                hi = hi.max(r);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (lo, hi)
        })
    };
    let t0 = Instant::now();
    let r = reqwest::get(url).await?;
    anyhow::ensure!(r.status() == 200, "huge file: {}", r.status());
    let mut body = r.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let c = chunk?;
        anyhow::ensure!(c.iter().all(|&b| b == 0), "a sparse file reads as zeros");
        n += c.len() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (lo, hi) = sampler.await?;
    Ok((n, secs, lo, hi))
}

/// One slow download: read the head and a little, wait for `go`, then read the rest slowly.
async fn slow_client(
    addr: std::net::SocketAddr,
    request: Arc<Vec<u8>>,
    expected: Arc<Vec<u8>>,
    holding: Arc<AtomicUsize>,
    mut go: tokio::sync::watch::Receiver<bool>,
    connects: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let mut s = {
        // Bounded connect concurrency keeps the accept backlog from overflowing.
        let _permit = connects.acquire().await?;
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_recv_buffer_size(8 * 1024)?;
        sock.connect(addr).await?
    };
    s.write_all(&request).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = Vec::with_capacity(16 * 1024);
    let head_end = loop {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed before the response head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "status: {}",
        head.lines().next().unwrap_or("")
    );
    anyhow::ensure!(
        head.to_ascii_lowercase().contains(&format!("content-length: {SMALL}")),
        "content-length missing"
    );
    let mut body_pos = got.len() - head_end;
    anyhow::ensure!(got[head_end..] == expected[..body_pos], "first bytes differ");
    holding.fetch_add(1, Ordering::SeqCst);
    // Stalled: the server now holds this download with a full socket.
    while !*go.borrow() {
        go.changed().await?;
    }
    // Keep-alive, as browsers do: the client closes once it has the whole body, so no socket
    // is left orphaned with unsent data (the kernel resets those under memory pressure).
    while body_pos < SMALL {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed after {body_pos} bytes");
        anyhow::ensure!(body_pos + n <= SMALL, "more bytes than the file has");
        anyhow::ensure!(
            buf[..n] == expected[body_pos..body_pos + n],
            "bytes differ at {body_pos}"
        );
        body_pos += n;
        // Read slowly: a pause after every read.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::ensure!(body_pos == SMALL, "short body: {body_pos} bytes");
    Ok(())
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    // Each of the N downloads is a socket here and one in the server (which inherits this).
    let want = (n as u64) * 2 + 1024;
    let got = rlimit::increase_nofile_limit(want)?;
    anyhow::ensure!(
        got >= n as u64 + 512,
        "RLIMIT_NOFILE is {got}; {n} downloads need about {want} (raise the hard limit)"
    );
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    eprintln!("seeding a 1 MiB and a 10 GiB (sparse) product…");
    seed(&data).await?;
    let server = start(&data).await?;
    let pid = server.child.id();
    let idle = rss_kib(pid);
    println!("satchel serve (pid {pid}) idle RSS: {}", mib(idle));

    let huge_url = delivery_url(&server.base, "bench-huge").await?;
    let before = rss_kib(pid);
    let (bytes, secs, lo, hi) = huge_stream(pid, &huge_url).await?;
    let after = rss_kib(pid);
    anyhow::ensure!(bytes == HUGE, "10 GiB stream ended after {bytes} bytes");
    println!(
        "10 GiB stream: {:.2} GiB/s; RSS before {}, during min {} / max {}, after {}",
        bytes as f64 / secs / f64::from(1 << 30),
        mib(before),
        mib(lo),
        mib(hi),
        mib(after)
    );

    // The same stream to curl (a client that does no per-byte work), for the throughput.
    match crate::curl_rate(&huge_url).await {
        Ok((size, gbs)) => println!(
            "10 GiB stream to curl: {:.2} GiB/s ({size} bytes); RSS after {}",
            gbs * 1e9 / f64::from(1 << 30),
            mib(rss_kib(pid))
        ),
        Err(e) => eprintln!("10 GiB stream to curl skipped: {e:#}"),
    }

    let small_url = url::Url::parse(&delivery_url(&server.base, "bench-small").await?)?;
    let addr: std::net::SocketAddr = format!(
        "{}:{}",
        small_url.host_str().unwrap_or("127.0.0.1"),
        small_url.port().unwrap_or(80)
    )
    .parse()?;
    let request = Arc::new(format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", small_url.path(), addr).into_bytes());
    let expected = Arc::new(pattern(SMALL));
    let holding = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let connects = Arc::new(tokio::sync::Semaphore::new(256));
    let before = rss_kib(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tasks.push(tokio::spawn(slow_client(
            addr,
            request.clone(),
            expected.clone(),
            holding.clone(),
            go_rx.clone(),
            connects.clone(),
        )));
    }
    // Wait until all N are in flight and stalled (or some failed: they are counted below).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut finished_early = 0;
    while holding.load(Ordering::SeqCst) + finished_early < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        finished_early = tasks.iter().filter(|t| t.is_finished()).count();
    }
    let held = holding.load(Ordering::SeqCst);
    // Let the server settle on the stalled sockets, then read its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_kib(pid);
    println!(
        "{held} of {n} downloads in flight after {:.1} s; RSS before {}, while holding them {}",
        t0.elapsed().as_secs_f64(),
        mib(before),
        mib(during)
    );
    go_tx.send(true)?;
    let mut ok = 0;
    let mut errors = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(()) => ok += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    let total = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    println!(
        "{ok} of {n} slow downloads complete and byte-identical in {total:.1} s; RSS after {}",
        mib(after)
    );
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        println!("errors ({}): {:?}", n - ok, &errors[..errors.len().min(5)]);
    }
    let per = (during.saturating_sub(before)) as f64 / held.max(1) as f64;
    println!("memory per in-flight download: {per:.1} KiB");
    drop(server);
    anyhow::ensure!(ok == n, "{} downloads failed", n - ok);
    Ok(())
}
