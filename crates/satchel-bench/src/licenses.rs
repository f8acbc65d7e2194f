//! License figures: offline certificate verification (one core) beside `openssl speed
//! ed25519`, and online validations from activated devices (signed answers) with p99,
//! driven two ways: by an in-process reqwest client (shares the CPU with the server) and by
//! `wrk` with a Lua script (a separate C process, cheaper per request, so a fairer figure on
//! a small machine).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use satchel::db::Backend;
use satchel::testing::TestApp;
use satchel_license::{certificate, fingerprint_hash, Claims, LicenseType, PublicKeys};
use serde_json::json;

use crate::{fmt_load, Load, Row};

/// Offline verification of a server-minted certificate (one core), beside OpenSSL's
/// Ed25519 verify/s measured now.
pub fn offline_row(secs: f64) -> anyhow::Result<Row> {
    let ours = offline_verify_per_sec(secs)?;
    let (reference, ratio) = match openssl_verify_per_sec() {
        Some(r) => (
            format!("openssl speed ed25519 {r:.0} verify/s"),
            format!("{:.2}x", ours / r),
        ),
        None => ("openssl not found".into(), "-".into()),
    };
    Ok(Row {
        what: "offline certificate verify (1 core)".into(),
        satchel: format!("{ours:.0}/s"),
        reference,
        ratio,
    })
}

fn openssl_verify_per_sec() -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "2", "ed25519"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Ed25519"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// What a seller's software does at start: parse the key document once, then verify the
/// certificate for this device (signature, expiry, fingerprint) — the full typed check.
fn offline_verify_per_sec(secs: f64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let keys = satchel::keys::Keys::load_or_generate(dir.path())?;
    let claims = Claims {
        license_id: "lic_01JBENCH".into(),
        product_id: "prod_01JBENCH".into(),
        license_type: LicenseType::Subscription,
        entitlements: vec!["prod_01JBENCH".into()],
        fingerprint: fingerprint_hash("bench-device"),
        activation_id: "act_01JBENCH".into(),
        issued_at: satchel::ids::now(),
        expires_at: Some(satchel::ids::now() + 86_400),
        max_activations: Some(3),
        check_in_hours: Some(24),
    };
    let cert = satchel::licensing::format::certificate(&keys, &claims);
    let doc = satchel::licensing::format::public_keys(&keys).to_json().to_string();
    let pk = PublicKeys::from_json(&doc).map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = satchel::ids::now();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..100 {
            certificate::verify_for_device(&cert, &pk, "bench-device", now).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        n += 100;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Buys and activates one demo-app license per client; returns (key, fingerprint) pairs.
async fn activated_devices(t: &TestApp, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for i in 0..n {
        let o = t.buy_paid("demo-app", &format!("v{i}@example.com")).await;
        let key = o["items"][0]["license_key"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no license key in {o}"))?
            .to_string();
        let fp = format!("dev-{i}");
        let (s, a) = t
            .post_json(
                &format!("/api/v1/licenses/{key}/activate"),
                &json!({"device_fingerprint": fp}),
            )
            .await;
        anyhow::ensure!(s == 200, "activation failed: {a}");
        out.push((key, fp));
    }
    Ok(out)
}

/// Online validations with the in-process client, then with wrk, on one backend.
pub async fn online_rows(t: &TestApp, clients: usize, dur: Duration, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let db = match &t.app.licensing.cache {
        Some(cache) => {
            // Answers come from the cache only once its listener is proven live.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cache.is_live() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            format!("{}, cache on", t.backend.name())
        }
        None if t.backend == Backend::Postgres => "postgres, cache off".to_string(),
        None => t.backend.name().to_string(),
    };
    let devices = Arc::new(activated_devices(t, clients).await?);
    profile_rows(t, &db, &devices[0], rows).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (devices, client, base) = (devices.clone(), client.clone(), t.base_url.clone());
        tasks.push(tokio::spawn(async move {
            let (key, fp) = &devices[w];
            let url = format!("{base}/api/v1/licenses/{key}/validate");
            let body = json!({"device_fingerprint": fp, "nonce": "n"}).to_string();
            let (mut lat, mut bad) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .is_ok_and(|b| b.windows(14).any(|w| w == br#""code":"VALID""#)),
                    _ => false,
                };
                if ok {
                    lat.push(t0.elapsed());
                } else {
                    bad += 1;
                }
            }
            (lat, bad)
        }));
    }
    let (mut lat, mut bad) = (Vec::new(), 0);
    for task in tasks {
        let (l, b) = task.await?;
        lat.extend(l);
        bad += b;
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let ours = Load {
        rps: lat.len() as f64 / dur.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors: bad,
    };
    if let Some(c) = &t.app.licensing.cache {
        let (hits, misses) = c.stats();
        eprintln!("{db}: validation cache {hits} hits, {misses} misses");
    }
    rows.push(goal_row(
        format!("license validate ({db}, {clients} clients, in-process client)"),
        &ours,
    ));
    match wrk(t, &devices, clients, dur)? {
        Some(w) => rows.push(goal_row(
            format!("license validate ({db}, {clients} connections, wrk)"),
            &w,
        )),
        None => eprintln!("wrk not found: install the Debian wrk package for the out-of-process figure"),
    }
    Ok(())
}

/// Where a validation's time goes, without HTTP: `licensing::validate` called in a loop
/// (one caller, so µs/call is latency, not throughput), and the Ed25519 + JSON cost of
/// signing one answer alone.
async fn profile_rows(t: &TestApp, db: &str, device: &(String, String), rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let req = satchel::licensing::ValidateRequest {
        device_fingerprint: Some(device.1.clone()),
        activation_id: None,
        nonce: Some("n".into()),
    };
    let n = 2_000u32;
    for _ in 0..100 {
        satchel::licensing::validate(&t.app, &device.0, &req)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        satchel::licensing::validate(&t.app, &device.0, &req)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let per_call = t0.elapsed() / n;

    let body = satchel::licensing::validate(&t.app, &device.0, &req)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let body: serde_json::Value = serde_json::from_str(&String::from_utf8(base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        body["signed_payload"].as_str().unwrap_or_default(),
    )?)?)?;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(satchel::licensing::format::sign_response(&t.app.keys, &body));
    }
    let sign = t0.elapsed() / n;
    rows.push(Row {
        what: format!("validate() without HTTP ({db}, 1 caller)"),
        satchel: format!("{:.1} µs/call", per_call.as_secs_f64() * 1e6),
        reference: format!("of which signing the answer {:.1} µs", sign.as_secs_f64() * 1e6),
        ratio: format!("{:.0}% signing", sign.as_secs_f64() / per_call.as_secs_f64() * 100.0),
    });
    Ok(())
}

/// A validation figure beside the goal (`errors`: answers that were not a 200 VALID).
fn goal_row(what: String, l: &Load) -> Row {
    Row {
        what,
        satchel: fmt_load(l).replace("errors)", "not VALID)"),
        reference: "goal 10 000/s".into(),
        ratio: format!("{:.2}x goal", l.rps / 10_000.0),
    }
}

/// Cycles every connection through the activated devices; counts answers that are not a
/// 200 with `"code":"VALID"` (checked in Lua, so a broken server cannot look fast).
const WRK_SCRIPT: &str = r#"
local devices = {}
for line in io.lines(os.getenv("SATCHEL_BENCH_DEVICES")) do
  local key, fp = line:match("^(%S+) (%S+)$")
  devices[#devices + 1] = {path = "/api/v1/licenses/" .. key .. "/validate",
                           body = '{"device_fingerprint":"' .. fp .. '","nonce":"n"}'}
end
function init(args)
  i = id
  bad = 0
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  i = i + 1
  local d = devices[(i % #devices) + 1]
  return wrk.format("POST", d.path, nil, d.body)
end
function response(status, headers, body)
  if status ~= 200 or not body:find('"code":"VALID"', 1, true) then bad = bad + 1 end
end
"#;

fn wrk(t: &TestApp, devices: &[(String, String)], connections: usize, dur: Duration) -> anyhow::Result<Option<Load>> {
    if !crate::wrk_get::available() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("devices.txt");
    std::fs::write(
        &list,
        devices.iter().map(|(k, f)| format!("{k} {f}\n")).collect::<String>(),
    )?;
    crate::wrk_get::run_script(
        &t.base_url,
        WRK_SCRIPT,
        &[("SATCHEL_BENCH_DEVICES", list.to_string_lossy().as_ref())],
        connections,
        dur,
    )
    .map(Some)
}

/// `--licenses`: only the license figures on `backend` — on PostgreSQL without and with the
/// validation cache.
pub async fn run(backend: Backend, clients: usize, dur: Duration, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    if backend == Backend::Postgres {
        let t = TestApp::start_demo_with(backend, |c| {
            c.database.max_connections = 32;
            c.licenses.validation_cache_secs = 0;
        })
        .await;
        online_rows(&t, clients, dur, rows).await?;
    }
    let t = TestApp::start_demo_with(backend, |c| c.database.max_connections = 32).await;
    online_rows(&t, clients, dur, rows).await
}
