//! Resumable uploads (tus 1.0) end to end: the real tus client `tuspy` uploading a multi-GiB
//! sparse file through a proxy that cuts the connection, the server restarted, the upload
//! resumed and published; protocol errors (409, 412, 413, 415, 423, 460), traversal names,
//! rival sellers, termination and the expiry job — on SQLite and PostgreSQL, local disk and S3.

#![allow(clippy::unwrap_used)]

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, S3Server, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A TCP proxy to `target` that, once, cuts the connection carrying the `cut_after`-th byte
/// from client to server (both directions closed at once), then passes everything through.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
}

impl CuttingProxy {
    async fn start(target: std::net::SocketAddr, cut_after: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Arc::new(AtomicU64::new(cut_after));
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (budget, cut) = (budget.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if !cut.load(Ordering::SeqCst) {
                            let left = budget.fetch_sub(n as u64, Ordering::SeqCst);
                            if left <= n as u64 {
                                // Forward what fits, then drop both sides mid-request.
                                let _ = sw.write_all(&buf[..usize::try_from(left).unwrap()]).await;
                                let _ = sw.flush().await;
                                cut.store(true, Ordering::SeqCst);
                                down.abort();
                                return;
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                    let _ = down.await;
                });
            }
        });
        Self { addr, cut }
    }
}

/// A sparse file of `size` bytes with random 4 KiB blocks scattered through it (so an
/// offset mistake changes the hash, which an all-zero file would hide); returns its sha256.
fn sparse_file(path: &Path, size: u64, seed: u64) -> String {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut block = vec![0u8; 4096];
    let step = (size / 9).max(4096);
    let mut at = 0;
    while at + 4096 <= size {
        rng.fill_bytes(&mut block);
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&block).unwrap();
        at += step + 12_345;
    }
    rng.fill_bytes(&mut block);
    let tail = size.min(4096);
    f.seek(SeekFrom::Start(size - tail)).unwrap();
    f.write_all(&block[..usize::try_from(tail).unwrap()]).unwrap();
    drop(f);
    file_sha256(path)
}

fn file_sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

const TUSPY: &str = r#"
import sys
from tusclient import client
from tusclient.storage import filestorage
url, key, path, store, chunk = sys.argv[1:6]
c = client.TusClient(url, headers={"Authorization": "Bearer " + key})
up = c.uploader(path, chunk_size=int(chunk), store_url=True, url_storage=filestorage.FileStorage(store),
                metadata={"filename": "../../big\u0007 file.bin", "filetype": "application/x-satchel-test"})
print("START", up.url, up.offset, flush=True)
up.upload()
print("DONE", up.url, up.offset, flush=True)
"#;

fn tuspy_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import tusclient"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        satchel::testing::skip("tus client tests: tuspy is not installed (pip install tuspy)");
    }
    ok
}

async fn run_tuspy(script: &Path, url: &str, key: &str, file: &Path, store: &Path, chunk: u64) -> (bool, String) {
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([url, key])
        .arg(file)
        .arg(store)
        .arg(chunk.to_string())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[derive(sqlx::FromRow, Debug)]
struct Row {
    id: String,
    upload_offset: i64,
    status: String,
    sha256: Option<String>,
    file_name: String,
    content_type: String,
    lock_token: Option<String>,
}

async fn upload_rows(t: &TestApp, seller: &str) -> Vec<Row> {
    t.app
        .db
        .fetch_all(sql!(
            "SELECT id, upload_offset, status, sha256, file_name, content_type, lock_token FROM uploads WHERE seller_id = $1 ORDER BY id",
            seller
        ))
        .await
        .unwrap()
}

/// The upload's offset once no request holds its lease and it stayed put for half a second.
async fn settled_offset(t: &TestApp, seller: &str, label: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    let mut stable = 0;
    loop {
        let rows = upload_rows(t, seller).await;
        assert_eq!(rows.len(), 1, "{label}: one upload");
        let now = (rows[0].lock_token.is_none() && rows[0].upload_offset > 0).then_some(rows[0].upload_offset);
        if now.is_some() && now == last {
            stable += 1;
            if stable >= 5 {
                return u64::try_from(rows[0].upload_offset).unwrap();
            }
        } else {
            stable = 0;
        }
        last = now;
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: the server never settled: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Peak resident memory of this process (VmHWM), bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn create_product(t: &TestApp, key: &str, slug: &str) -> String {
    let r = t
        .client
        .post(t.url("/api/v1/products"))
        .bearer_auth(key)
        .json(&json!({"title": slug, "slug": slug, "price": 900, "currency": "USD", "status": "published"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// Streams an object from storage and hashes it.
async fn stored_sha256(t: &TestApp, key: &str) -> (u64, String) {
    use futures::StreamExt;
    let mut got = t.app.storage.get(key, None).await.unwrap();
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = got.body.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    (n, hex::encode(h.finalize()))
}

#[tokio::test]
async fn tuspy_resumes_a_multi_gib_upload_after_a_cut_and_a_restart() {
    if !tuspy_available() {
        return;
    }
    let Some(s3) = S3Server::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tus_upload.py");
    std::fs::write(&script, TUSPY).unwrap();
    let backends = backends().await;
    for (bi, backend) in backends.iter().copied().enumerate() {
        for on_s3 in [false, true] {
            // Multi-GiB on one pass per storage kind (SQLite+local, PostgreSQL+S3 when both
            // databases run); the other passes use a smaller file through the same path.
            let big = (bi == 0 && !on_s3) || (bi == backends.len() - 1 && on_s3);
            let size = if big { 2 * 1024 * MIB + 12_345 } else { 40 * MIB + 777 };
            let chunk = 20 * MIB + 1;
            let label = format!("{}/{}", backend.name(), if on_s3 { "s3" } else { "local" });
            let clock = std::time::Instant::now();
            let phase = |what: &str| eprintln!("{label}: {what} at {:.1} s", clock.elapsed().as_secs_f64());
            eprintln!("{label}: {size} bytes");
            let mut t = TestApp::start_with(backend, |c| {
                if on_s3 {
                    s3.configure(c);
                }
            })
            .await;
            let (seller, key) = t.seller_with_key(&format!("big-{bi}-{on_s3}@example.com")).await;
            let product = create_product(&t, &key, &format!("big-{bi}-{on_s3}")).await;
            let file = dir.path().join(format!("big-{bi}-{on_s3}.bin"));
            let expected = sparse_file(&file, size, 42 + bi as u64);
            let store = dir.path().join(format!("tus-urls-{bi}-{on_s3}.json"));
            let rss_before = peak_rss();
            phase("file ready");

            // 1. Through a proxy that cuts the connection about a third of the way in.
            let proxy = CuttingProxy::start(t.addr, size / 3).await;
            let (ok, out) = run_tuspy(
                &script,
                &format!("http://{}/api/v1/uploads", proxy.addr),
                &key,
                &file,
                &store,
                chunk,
            )
            .await;
            assert!(!ok, "{label}: the cut upload must fail: {out}");
            assert!(
                proxy.cut.load(Ordering::SeqCst),
                "{label}: the proxy cut the connection: {out}"
            );
            // The server notices the cut, keeps what arrived and releases its lease.
            let kept = settled_offset(&t, &seller, &label).await;
            assert!(kept < size, "{label}: not complete yet");
            assert_ne!(
                kept % chunk,
                0,
                "{label}: the bytes of the interrupted PATCH that arrived were kept ({kept})"
            );

            phase("cut");
            // 2. Restart the server: the offset comes back from the database.
            t.restart().await;
            let rows = upload_rows(&t, &seller).await;
            let url = t.url(&format!("/api/v1/uploads/{}", rows[0].id));
            let r = t
                .client
                .head(&url)
                .bearer_auth(&key)
                .header("tus-resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{label}");
            assert_eq!(r.headers()["upload-offset"].to_str().unwrap(), kept.to_string());
            assert_eq!(r.headers()["upload-length"].to_str().unwrap(), size.to_string());
            assert_eq!(r.headers()["tus-resumable"], "1.0.0");

            // 3. tuspy finds its stored URL, asks for the offset and finishes (directly now).
            let (ok, out) = run_tuspy(&script, &t.url("/api/v1/uploads"), &key, &file, &store, chunk).await;
            assert!(ok, "{label}: resumed upload: {out}");
            phase("resumed and complete");
            assert!(
                out.contains(&format!("/api/v1/uploads/{} {kept}\n", rows[0].id)),
                "{label}: tuspy resumed at {kept}, not from 0: {out}"
            );
            let rows = upload_rows(&t, &seller).await;
            assert_eq!(rows.len(), 1, "{label}: resumed, not restarted");
            assert_eq!(rows[0].status, "complete");
            assert_eq!(rows[0].upload_offset as u64, size);
            assert_eq!(rows[0].sha256.as_deref(), Some(expected.as_str()), "{label}: sha256");
            assert_eq!(
                rows[0].file_name, "big file.bin",
                "{label}: traversal and control characters removed"
            );
            assert_eq!(rows[0].content_type, "application/x-satchel-test");

            // 4. Published as a version: the file at the version key is byte-identical.
            let r = t
                .client
                .post(t.url(&format!("/api/v1/products/{product}/versions")))
                .bearer_auth(&key)
                .json(&json!({"version": "1.0.0", "changelog": "First", "uploads": [url]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{label}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["files"][0]["sha256"], expected.as_str());
            assert_eq!(v["files"][0]["size"], size);
            phase("published");
            let final_key = satchel::catalog::original_key(&seller, &product, "1.0.0", "big file.bin");
            let (n, sha) = stored_sha256(&t, &final_key).await;
            assert_eq!((n, sha.as_str()), (size, expected.as_str()), "{label}: stored bytes");
            let staging = format!("uploads/{seller}/{}", rows[0].id);
            assert!(
                t.app.storage.head(&staging).await.is_err(),
                "{label}: the staging copy is gone after publishing"
            );
            let rows = upload_rows(&t, &seller).await;
            assert_eq!(rows[0].status, "used");
            if big {
                let grew = peak_rss().saturating_sub(rss_before);
                assert!(
                    grew < 300 * MIB,
                    "{label}: memory stays flat for a {size}-byte upload (peak grew {grew} bytes)"
                );
            }
            phase("verified");
            std::fs::remove_file(&file).unwrap();
        }
    }
}

fn tus(req: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    req.bearer_auth(key).header("tus-resumable", "1.0.0")
}

async fn create(t: &TestApp, key: &str, length: u64, name: &str) -> reqwest::Response {
    tus(t.client.post(t.url("/api/v1/uploads")), key)
        .header("upload-length", length.to_string())
        .header(
            "upload-metadata",
            format!("filename {},filetype {}", b64(name), b64("text/plain")),
        )
        .send()
        .await
        .unwrap()
}

async fn patch(
    t: &TestApp,
    key: &str,
    url: &str,
    offset: u64,
    body: Vec<u8>,
    checksum: Option<String>,
) -> reqwest::Response {
    let mut req = tus(t.client.patch(url), key)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string());
    if let Some(c) = checksum {
        req = req.header("upload-checksum", c);
    }
    req.body(body).send().await.unwrap()
}

async fn offset_of(t: &TestApp, key: &str, url: &str) -> u64 {
    let r = tus(t.client.head(url), key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["upload-offset"].to_str().unwrap().parse().unwrap()
}

fn sha256_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b))
}

async fn error_code(r: reqwest::Response) -> String {
    r.json::<Value>().await.unwrap()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every file under the storage root except directories (what a refused request must not add).
fn stored_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn tus_protocol_rules_and_bad_input() {
    let Some(s3) = S3Server::start().await else { return };
    for backend in backends().await {
        for on_s3 in [false, true] {
            let label = format!("{}/{}", backend.name(), if on_s3 { "s3" } else { "local" });
            let t = TestApp::start_with(backend, |c| {
                c.uploads.max_size = 64 * MIB;
                if on_s3 {
                    s3.configure(c);
                }
            })
            .await;
            let (seller, key) = t.seller_with_key("owner@example.com").await;
            let (_, rival) = t.seller_with_key("rival@example.com").await;

            // Discovery.
            let r = t
                .client
                .request(reqwest::Method::OPTIONS, t.url("/api/v1/uploads"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204, "{label}");
            assert_eq!(r.headers()["tus-version"], "1.0.0");
            let ext = r.headers()["tus-extension"].to_str().unwrap().to_string();
            for e in [
                "creation",
                "creation-with-upload",
                "termination",
                "checksum",
                "expiration",
            ] {
                assert!(ext.split(',').any(|x| x == e), "{label}: {e} advertised in {ext}");
            }
            assert_eq!(r.headers()["tus-max-size"], (64 * MIB).to_string().as_str());
            assert!(r.headers()["tus-checksum-algorithm"]
                .to_str()
                .unwrap()
                .contains("sha256"));

            // 412: wrong or missing protocol version; 401 without a key.
            for v in [Some("0.2.2"), None] {
                let mut req = t
                    .client
                    .post(t.url("/api/v1/uploads"))
                    .bearer_auth(&key)
                    .header("upload-length", "10");
                if let Some(v) = v {
                    req = req.header("tus-resumable", v);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 412, "{label}: Tus-Resumable {v:?}");
                assert_eq!(r.headers()["tus-version"], "1.0.0");
            }
            let r = t
                .client
                .post(t.url("/api/v1/uploads"))
                .header("tus-resumable", "1.0.0")
                .header("upload-length", "10")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);

            // 413 before anything is stored.
            let files_before = t.app.storage.local_root().map(stored_files);
            let r = create(&t, &key, 64 * MIB + 1, "huge.bin").await;
            assert_eq!(r.status(), 413, "{label}");
            assert_eq!(error_code(r).await, "too_large");
            assert!(upload_rows(&t, &seller).await.is_empty(), "{label}: nothing recorded");
            assert_eq!(
                t.app.storage.local_root().map(stored_files),
                files_before,
                "{label}: nothing stored"
            );

            // File names never become paths; unusable names are refused.
            for (raw, want) in [
                ("../../../etc/passwd", Some("passwd")),
                ("..\\..\\windows\\win.ini", Some("win.ini")),
                ("/abs/olute/\u{1b}[31mred.txt", Some("[31mred.txt")),
                ("..", None),
                ("  ", None),
            ] {
                let r = create(&t, &key, 5, raw).await;
                match want {
                    Some(name) => {
                        assert_eq!(r.status(), 201, "{label}: {raw:?}");
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["file_name"], name, "{label}: {raw:?}");
                    }
                    None => {
                        assert_eq!(r.status(), 422, "{label}: {raw:?}");
                        assert_eq!(error_code(r).await, "invalid_file_name");
                    }
                }
            }

            // A 20-byte upload, written in steps.
            let r = create(&t, &key, 20, "notes.txt").await;
            assert_eq!(r.status(), 201);
            assert_eq!(r.headers()["upload-offset"], "0");
            assert!(r.headers().contains_key("upload-expires"));
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            assert!(loc.starts_with("/api/v1/uploads/upl_"), "{loc}");
            let url = t.url(&loc);

            // 409 wrong offset; 415 wrong content type; 413 past the length: offset unchanged.
            let r = patch(&t, &key, &url, 3, b"hello".to_vec(), None).await;
            assert_eq!(r.status(), 409, "{label}");
            assert_eq!(error_code(r).await, "offset_mismatch");
            let r = tus(t.client.patch(&url), &key)
                .header("content-type", "application/octet-stream")
                .header("upload-offset", "0")
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415);
            let r = patch(&t, &key, &url, 0, vec![b'x'; 21], None).await;
            assert_eq!(r.status(), 413, "{label}");
            assert_eq!(offset_of(&t, &key, &url).await, 0);

            // 460 on a bad checksum (nothing kept), then the right checksum is accepted.
            let r = patch(
                &t,
                &key,
                &url,
                0,
                b"hello ".to_vec(),
                Some(format!("sha256 {}", sha256_b64(b"hullo "))),
            )
            .await;
            assert_eq!(r.status(), 460, "{label}");
            assert_eq!(error_code(r).await, "checksum_mismatch");
            assert_eq!(
                offset_of(&t, &key, &url).await,
                0,
                "{label}: offset unchanged after 460"
            );
            let r = patch(
                &t,
                &key,
                &url,
                0,
                b"hello ".to_vec(),
                Some(format!("sha256 {}", sha256_b64(b"hello "))),
            )
            .await;
            assert_eq!(r.status(), 204, "{label}");
            assert_eq!(r.headers()["upload-offset"], "6");
            assert_eq!(r.headers()["tus-resumable"], "1.0.0");
            let r = patch(&t, &key, &url, 6, b"x".to_vec(), Some("md5 AAAA".into())).await;
            assert_eq!(r.status(), 400, "{label}: unsupported algorithm");
            assert_eq!(offset_of(&t, &key, &url).await, 6);
            let sha1 = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b"tus "));
            let r = patch(&t, &key, &url, 6, b"tus ".to_vec(), Some(format!("sha1 {sha1}"))).await;
            assert_eq!(r.status(), 204, "{label}: sha1 (what tuspy sends)");

            // Another seller's upload does not exist for them.
            for m in [reqwest::Method::HEAD, reqwest::Method::GET, reqwest::Method::DELETE] {
                let r = tus(t.client.request(m.clone(), &url), &rival).send().await.unwrap();
                assert_eq!(r.status(), 404, "{label}: rival {m}");
            }
            let r = patch(&t, &rival, &url, 10, b"evil".to_vec(), None).await;
            assert_eq!(r.status(), 404, "{label}: rival PATCH");
            assert_eq!(offset_of(&t, &key, &url).await, 10);

            // Finish it; the JSON view has the sha256 of the whole.
            let r = patch(&t, &key, &url, 10, b"0123456789".to_vec(), None).await;
            assert_eq!(r.status(), 204);
            assert_eq!(r.headers()["upload-offset"], "20");
            let v: Value = tus(t.client.get(&url), &key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["status"], "complete", "{label}");
            assert_eq!(v["sha256"], hex::encode(Sha256::digest(b"hello tus 0123456789")));

            // creation-with-upload: the POST body is the first chunk.
            let r = tus(t.client.post(t.url("/api/v1/uploads")), &key)
                .header("upload-length", "11")
                .header("upload-metadata", format!("filename {}", b64("cwu.txt")))
                .header("content-type", "application/offset+octet-stream")
                .body("hello")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{label}");
            assert_eq!(r.headers()["upload-offset"], "5", "{label}: creation-with-upload");
            let cwu = t.url(r.headers()["location"].to_str().unwrap());

            // Termination removes the upload and its bytes.
            let r = patch(&t, &key, &cwu, 5, b" wo".to_vec(), None).await;
            assert_eq!(r.status(), 204);
            let id = cwu.rsplit('/').next().unwrap().to_string();
            let r = tus(t.client.delete(&cwu), &key).send().await.unwrap();
            assert_eq!(r.status(), 204, "{label}");
            let r = tus(t.client.head(&cwu), &key).send().await.unwrap();
            assert_eq!(r.status(), 404, "{label}: terminated");
            if let Some(root) = t.app.storage.local_root() {
                assert!(
                    !root.join(format!("uploads/{seller}/{id}")).exists(),
                    "{label}: bytes deleted"
                );
            }

            // An empty file is complete at creation.
            let r = create(&t, &key, 0, "empty.txt").await;
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["status"], "complete", "{label}");
            assert_eq!(v["sha256"], hex::encode(Sha256::digest(b"")));
        }
    }
}

#[tokio::test]
async fn concurrent_patches_on_one_upload_write_it_once() {
    let Some(s3) = S3Server::start().await else { return };
    for backend in backends().await {
        for on_s3 in [false, true] {
            let label = format!("{}/{}", backend.name(), if on_s3 { "s3" } else { "local" });
            let t = TestApp::start_with(backend, |c| {
                if on_s3 {
                    s3.configure(c);
                }
            })
            .await;
            let (seller, key) = t.seller_with_key("racer@example.com").await;
            let body: Vec<u8> = (0..(9 * MIB as usize)).map(|i| (i % 251) as u8).collect();
            let r = create(&t, &key, body.len() as u64, "race.bin").await;
            let url = t.url(r.headers()["location"].to_str().unwrap());
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (t2, key, url, body) = (t.client.clone(), key.clone(), url.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    t2.patch(&url)
                        .bearer_auth(&key)
                        .header("tus-resumable", "1.0.0")
                        .header("content-type", "application/offset+octet-stream")
                        .header("upload-offset", "0")
                        .body(body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                }));
            }
            let mut statuses = Vec::new();
            for task in tasks {
                statuses.push(task.await.unwrap());
            }
            assert_eq!(
                statuses.iter().filter(|s| **s == 204).count(),
                1,
                "{label}: {statuses:?}"
            );
            assert!(
                statuses.iter().all(|s| [204, 409, 423].contains(s)),
                "{label}: the others see a moved offset or a busy upload: {statuses:?}"
            );
            let rows = upload_rows(&t, &seller).await;
            assert_eq!(rows[0].status, "complete");
            assert_eq!(
                rows[0].sha256.as_deref(),
                Some(hex::encode(Sha256::digest(&body)).as_str())
            );
            let (n, sha) = stored_sha256(&t, &format!("uploads/{seller}/{}", rows[0].id)).await;
            assert_eq!(
                (n, sha),
                (body.len() as u64, hex::encode(Sha256::digest(&body))),
                "{label}"
            );
        }
    }
}

#[tokio::test]
async fn expired_uploads_are_cleaned_by_the_job_and_publishing_rules_hold() {
    let Some(s3) = S3Server::start().await else { return };
    for backend in backends().await {
        for on_s3 in [false, true] {
            let label = format!("{}/{}", backend.name(), if on_s3 { "s3" } else { "local" });
            let t = TestApp::start_with(backend, |c| {
                if on_s3 {
                    s3.configure(c);
                }
            })
            .await;
            let (seller, key) = t.seller_with_key("tidy@example.com").await;
            let (_, rival) = t.seller_with_key("rival@example.com").await;
            let product = create_product(&t, &key, "tidy-product").await;

            // An unfinished upload with stored bytes: a full S3 part plus a tail.
            let chunk: Vec<u8> = (0..(9 * MIB as usize)).map(|i| (i % 13) as u8).collect();
            let r = create(&t, &key, 30 * MIB, "stale.bin").await;
            let url = t.url(r.headers()["location"].to_str().unwrap());
            assert_eq!(patch(&t, &key, &url, 0, chunk.clone(), None).await.status(), 204);
            let id = url.rsplit('/').next().unwrap().to_string();
            let staging = format!("uploads/{seller}/{id}");
            let (mp, part_size): (String, u64) = {
                let (state,): (String,) = t
                    .app
                    .db
                    .fetch_one(sql!("SELECT backend_state FROM uploads WHERE id = $1", &id))
                    .await
                    .unwrap();
                let v: Value = serde_json::from_str(&state).unwrap();
                (
                    v["multipart_id"].as_str().unwrap_or_default().to_string(),
                    v["part_size"].as_u64().unwrap_or(0),
                )
            };
            if on_s3 {
                assert!(!mp.is_empty() && part_size == 8 * MIB, "{label}: {mp} {part_size}");
                let tail = format!("{staging}.tail-1");
                assert_eq!(
                    t.app.storage.head(&tail).await.unwrap().size,
                    MIB,
                    "{label}: the tail object"
                );
            } else {
                let root = t.app.storage.local_root().unwrap();
                assert_eq!(std::fs::metadata(root.join(&staging)).unwrap().len(), 9 * MIB);
            }
            // A finished but never published upload, too.
            let r = create(&t, &key, 3, "done.txt").await;
            let done_url = t.url(r.headers()["location"].to_str().unwrap());
            assert_eq!(patch(&t, &key, &done_url, 0, b"abc".to_vec(), None).await.status(), 204);
            let done_id = done_url.rsplit('/').next().unwrap().to_string();

            // Not yet expired: the job leaves them alone.
            t.app
                .db
                .execute(sql!("DELETE FROM kv_settings WHERE scope = 'schedule'"))
                .await
                .unwrap();
            satchel::scheduler::tick(&t.app).await.unwrap();
            t.drain_jobs().await;
            assert_eq!(upload_rows(&t, &seller).await.len(), 2, "{label}");

            // Expired: both rows and all their bytes go, and the S3 multipart upload is aborted.
            t.app
                .db
                .execute(sql!("UPDATE uploads SET expires_at = $1", satchel::ids::now() - 1))
                .await
                .unwrap();
            let r = tus(t.client.head(&url), &key).send().await.unwrap();
            assert_eq!(r.status(), 410, "{label}: expired uploads are gone for clients at once");
            t.app
                .db
                .execute(sql!("DELETE FROM kv_settings WHERE scope = 'schedule'"))
                .await
                .unwrap();
            satchel::scheduler::tick(&t.app).await.unwrap();
            t.drain_jobs().await;
            assert!(upload_rows(&t, &seller).await.is_empty(), "{label}: rows removed");
            assert!(
                t.app
                    .storage
                    .head(&format!("uploads/{seller}/{done_id}"))
                    .await
                    .is_err(),
                "{label}"
            );
            if on_s3 {
                assert!(
                    t.app.storage.head(&format!("{staging}.tail-1")).await.is_err(),
                    "{label}: tail deleted"
                );
                let again = t
                    .app
                    .storage
                    .multipart_put_part(&staging, &mp, 2, bytes::Bytes::from_static(b"late"))
                    .await;
                assert!(again.is_err(), "{label}: the multipart upload was aborted");
            } else {
                assert!(
                    !t.app.storage.local_root().unwrap().join(&staging).exists(),
                    "{label}: partial file deleted"
                );
            }

            // Publishing: only complete uploads of your own, each once, distinct names.
            let mk = |name: &'static str| {
                let (t, key) = (&t, &key);
                async move {
                    let r = create(t, key, 4, name).await;
                    let u = t.url(r.headers()["location"].to_str().unwrap());
                    assert_eq!(patch(t, key, &u, 0, b"data".to_vec(), None).await.status(), 204);
                    u
                }
            };
            let a = mk("a.txt").await;
            let a2 = mk("a.txt").await;
            let b = mk("b.txt").await;
            let path = format!("/api/v1/products/{product}/versions");
            let publish = |k: &str, uploads: Vec<&str>, version: &str| {
                t.client
                    .post(t.url(&path))
                    .bearer_auth(k)
                    .json(&json!({"version": version, "uploads": uploads}))
                    .send()
            };
            let r = publish(&rival, vec![&a], "1.0").await.unwrap();
            assert_eq!(r.status(), 404, "{label}: not the rival's product");
            let r = publish(&key, vec![&a, &a2], "1.0").await.unwrap();
            assert_eq!(r.status(), 422, "{label}");
            assert_eq!(error_code(r).await, "duplicate_file_name");
            let r = publish(&key, vec![&a, &b], "1.0").await.unwrap();
            assert_eq!(r.status(), 201, "{label}");
            let r = publish(&key, vec![&a2], "1.0").await.unwrap();
            assert_eq!(r.status(), 409, "{label}: version exists");
            let r = publish(&key, vec![&a], "1.1").await.unwrap();
            assert_eq!(r.status(), 422, "{label}: an upload is published once");
            let p: Value = t
                .client
                .get(t.url(&format!("/api/v1/products/{product}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let names: Vec<&str> = p["current_version"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["a.txt", "b.txt"], "{label}");
            let key_a = satchel::catalog::original_key(&seller, &product, "1.0", "a.txt");
            assert_eq!(stored_sha256(&t, &key_a).await.1, hex::encode(Sha256::digest(b"data")));
        }
    }
}

#[tokio::test]
async fn the_resumable_hash_survives_a_restart_between_patches() {
    // A restart between two PATCHes of one upload (no tus client involved): the second
    // process continues the sha256 from the saved state, on both storages.
    let Some(s3) = S3Server::start().await else { return };
    for backend in backends().await {
        for on_s3 in [false, true] {
            let label = format!("{}/{}", backend.name(), if on_s3 { "s3" } else { "local" });
            let mut t = TestApp::start_with(backend, |c| {
                if on_s3 {
                    s3.configure(c);
                }
            })
            .await;
            let (_, key) = t.seller_with_key("restart@example.com").await;
            let data: Vec<u8> = (0..(17 * MIB as usize + 333)).map(|i| (i * 7 % 255) as u8).collect();
            let r = create(&t, &key, data.len() as u64, "r.bin").await;
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let cut = 9 * MIB as usize + 5;
            assert_eq!(
                patch(&t, &key, &t.url(&loc), 0, data[..cut].to_vec(), None)
                    .await
                    .status(),
                204
            );
            t.restart().await;
            let url = t.url(&loc);
            assert_eq!(offset_of(&t, &key, &url).await, cut as u64, "{label}");
            let r = patch(&t, &key, &url, cut as u64, data[cut..].to_vec(), None).await;
            assert_eq!(r.status(), 204, "{label}");
            let v: Value = tus(t.client.get(&url), &key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["sha256"], hex::encode(Sha256::digest(&data)), "{label}");
            assert_eq!(v["status"], "complete");
        }
    }
}

fn cli(t: &TestApp, key: &str, state: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_satchel"));
    c.args(["product", "upload", "--url", &t.base_url, "--state-file"])
        .arg(state)
        .args(args)
        .env("SATCHEL_API_KEY", key)
        .env_remove("SATCHEL_PUBLIC_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

async fn cli_output(mut c: tokio::process::Command) -> (bool, String, String) {
    let out = c.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn the_cli_resumes_an_interrupted_upload_and_publishes() {
    use rand::{RngCore, SeedableRng};
    for backend in backends().await {
        let label = backend.name();
        let t = TestApp::start(backend).await;
        let (seller, key) = t.seller_with_key("cli@example.com").await;
        create_product(&t, &key, "cli-product").await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app-1.2.0.zip");
        let mut data = vec![0u8; 48 * MIB as usize + 4321];
        rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data);
        std::fs::write(&file, &data).unwrap();
        let expected = hex::encode(Sha256::digest(&data));
        let changelog = dir.path().join("CHANGES.md");
        std::fs::write(&changelog, "## 1.2.0\n\n- Faster start").unwrap();
        let state = dir.path().join("state.json");
        let file_s = file.to_str().unwrap();
        let changelog_s = changelog.to_str().unwrap();
        let base = [
            "--product",
            "cli-product",
            "--version",
            "1.2.0",
            "--changelog",
            changelog_s,
            "--chunk-size",
            "4M",
        ];

        // Interrupted: killed (SIGKILL) once some chunks are stored.
        let mut args = base.to_vec();
        args.extend(["--limit-rate", "12M", file_s]);
        let mut child = cli(&t, &key, &state, &args).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rows = upload_rows(&t, &seller).await;
            if rows.first().is_some_and(|r| r.upload_offset >= 8 * MIB as i64) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{label}: no progress: {rows:?}");
            assert!(
                child.try_wait().unwrap().is_none(),
                "{label}: the CLI finished before it could be interrupted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().await.unwrap();
        let settled = settled_offset(&t, &seller, label).await;
        assert!(settled >= 8 * MIB && settled < data.len() as u64, "{label}: {settled}");

        // Run again: it resumes from the store's offset and publishes.
        let mut args = base.to_vec();
        args.push(file_s);
        let (ok, stdout, stderr) = cli_output(cli(&t, &key, &state, &args)).await;
        assert!(ok, "{label}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("app-1.2.0.zip: resuming at byte {settled} of {}", data.len())),
            "{label}: resumed, not restarted: {stderr}"
        );
        assert!(
            stdout.contains("published cli-product 1.2.0 (1 file)"),
            "{label}: {stdout}"
        );
        assert!(stdout.contains(&expected), "{label}: prints the sha256: {stdout}");
        let rows = upload_rows(&t, &seller).await;
        assert_eq!(rows.len(), 1, "{label}: one upload, resumed");
        assert_eq!(rows[0].status, "used");
        assert_eq!(rows[0].sha256.as_deref(), Some(expected.as_str()));
        let p: Value = t
            .client
            .get(t.url("/api/v1/products/cli-product"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(p["current_version"]["version"], "1.2.0");
        assert_eq!(p["current_version"]["files"][0]["sha256"], expected.as_str());
        assert!(p["current_version"]["changelog_md"]
            .as_str()
            .unwrap()
            .contains("Faster start"));
        let state_left: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        assert_eq!(state_left, json!({}), "{label}: published uploads are forgotten");

        // Mistakes are named, before any byte is sent.
        let (ok, _, stderr) = cli_output(cli(&t, &key, &state, &args)).await;
        assert!(
            !ok && stderr.contains("version 1.2.0 already exists"),
            "{label}: {stderr}"
        );
        let mut other = args.clone();
        other[1] = "no-such-product";
        let (ok, _, stderr) = cli_output(cli(&t, &key, &state, &other)).await;
        assert!(
            !ok && stderr.contains("there is no product \"no-such-product\""),
            "{label}: {stderr}"
        );
        let (ok, _, stderr) = cli_output(cli(&t, "sk_live_wrong", &state, &args)).await;
        assert!(!ok && stderr.contains("refused the API key"), "{label}: {stderr}");
        let mut missing = args.clone();
        missing[3] = "1.3.0";
        *missing.last_mut().unwrap() = "/no/such/file.zip";
        let (ok, _, stderr) = cli_output(cli(&t, &key, &state, &missing)).await;
        assert!(
            !ok && stderr.contains("cannot read /no/such/file.zip"),
            "{label}: {stderr}"
        );
        assert_eq!(
            upload_rows(&t, &seller).await.len(),
            1,
            "{label}: refused runs upload nothing"
        );
    }
}

#[tokio::test]
async fn server_side_copies_work_in_one_request_and_in_parts() {
    // Publishing copies an upload inside the store. Objects over 5 GiB go part by part
    // (UploadPartCopy); the threshold is lowered here so that path runs on a 13 MiB object.
    let Some(s3) = S3Server::start().await else { return };
    let store = satchel::storage::S3Storage::new(
        &s3.endpoint,
        "satchel",
        "us-east-1",
        true,
        &s3.access_key,
        &s3.secret_key,
    )
    .unwrap();
    let data: Vec<u8> = (0..(13 * MIB as usize + 17)).map(|i| (i * 31 % 253) as u8).collect();
    use satchel::storage::Storage;
    store
        .put(
            "copy/src.bin",
            satchel::storage::bytes_stream(data.clone()),
            "application/octet-stream",
        )
        .await
        .unwrap();
    store
        .copy_sized("copy/src.bin", "copy/one.bin", data.len() as u64, u64::MAX, 0)
        .await
        .unwrap();
    store
        .copy_sized("copy/src.bin", "copy/parts.bin", data.len() as u64, MIB, 5 * MIB)
        .await
        .unwrap();
    for key in ["copy/one.bin", "copy/parts.bin"] {
        let got = satchel::storage::collect(store.get(key, None).await.unwrap().body)
            .await
            .unwrap();
        assert!(got == data, "{key}: byte-identical copy");
    }
    assert!(store.copy("copy/missing.bin", "copy/x.bin").await.is_err());

    let dir = tempfile::tempdir().unwrap();
    let local = satchel::storage::LocalStorage::new(dir.path().to_path_buf()).unwrap();
    local
        .put(
            "a/src.bin",
            satchel::storage::bytes_stream(data.clone()),
            "application/octet-stream",
        )
        .await
        .unwrap();
    local.copy("a/src.bin", "b/dst.bin").await.unwrap();
    local.delete("a/src.bin").await.unwrap();
    let got = satchel::storage::collect(local.get("b/dst.bin", None).await.unwrap().body)
        .await
        .unwrap();
    assert!(got == data, "local copy survives deleting the source");
}
