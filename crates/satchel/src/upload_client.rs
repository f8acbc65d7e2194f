//! `satchel product upload`: publishes a version from the command line against a running
//! store, uploading each file with tus (resumable) and a progress bar.
//!
//! Each file's upload URL is remembered in a small state file (default
//! `~/.cache/satchel/uploads.json`), keyed by store URL, absolute path, size and modification
//! time. Run the same command again after an interruption (network, Ctrl-C, a reboot) and each
//! file continues from the offset the store reports; a changed file starts over. Within one
//! run, transient failures (a dropped connection, a busy or restarting store) are retried
//! from the store's offset with backoff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(clap::Subcommand, Debug)]
pub enum ProductCommand {
    /// Upload files (resumable) and publish them as a new version of a product.
    #[command(
        long_about = "Upload files (resumable, with progress) and publish them as a new version of a product.\n\n\
        Every buyer of the product is emailed the changelog. An interrupted run resumes where it stopped when you run\n\
        the same command again.\n\n\
        Example:\n  satchel product upload --product my-ebook --version 1.2.0 --changelog CHANGES.md book.pdf book.epub"
    )]
    Upload(UploadArgs),
}

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// The product's slug (or id).
    #[arg(long, value_name = "SLUG")]
    pub product: String,
    /// The new version, like 1.2.0 (must not exist yet).
    #[arg(long, value_name = "VERSION")]
    pub version: String,
    /// A Markdown file with the changelog buyers are emailed.
    #[arg(long, value_name = "FILE")]
    pub changelog: Option<PathBuf>,
    /// The store's URL.
    #[arg(
        long,
        env = "SATCHEL_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    /// An API key of the seller (`satchel admin create-api-key`, or the dashboard).
    #[arg(long, env = "SATCHEL_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Bytes per request (e.g. 8M, 64M); smaller chunks lose less on a bad connection.
    #[arg(long, default_value = "32M", value_parser = parse_size_arg, value_name = "SIZE")]
    pub chunk_size: u64,
    /// Cap the upload rate in bytes per second (e.g. 5M); unlimited by default.
    #[arg(long, value_parser = parse_size_arg, value_name = "RATE")]
    pub limit_rate: Option<u64>,
    /// Where upload URLs are remembered for resuming (default ~/.cache/satchel/uploads.json).
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// The files of the version.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    crate::config::parse_size(s)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size like 32M, 1G or 65536"))
}

pub async fn run(cmd: ProductCommand) -> anyhow::Result<()> {
    match cmd {
        ProductCommand::Upload(args) => upload(args).await,
    }
}

const MAX_RETRIES: u32 = 8;

struct Store {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// An error answer from the store, as `(status, code, message)`.
async fn api_error(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"].as_str().unwrap_or("(no message)").to_string(),
    )
}

fn refused_key() -> anyhow::Error {
    anyhow!(
        "the store refused the API key (wrong or revoked). Create one with `satchel admin create-api-key --seller-email YOU` \
         or in the dashboard, and pass it with --api-key or SATCHEL_API_KEY"
    )
}

impl Store {
    fn tus(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.key).header("tus-resumable", "1.0.0")
    }
}

/// Upload URLs remembered between runs.
struct StateFile {
    path: PathBuf,
    map: BTreeMap<String, String>,
}

impl StateFile {
    fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("satchel").join("uploads.json")
    }

    fn load(path: PathBuf) -> Self {
        let map = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        Self { path, map }
    }

    fn save(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.map)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

struct LocalFile {
    path: PathBuf,
    name: String,
    size: u64,
    /// Identity for resuming: store, absolute path, size and modification time.
    state_key: String,
}

fn describe(path: &Path, base: &str) -> anyhow::Result<LocalFile> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    let abs = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    Ok(LocalFile {
        state_key: format!("{base}|{}|{}|{mtime}", abs.display(), meta.len()),
        path: abs,
        name,
        size: meta.len(),
    })
}

pub async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let key = args.api_key.clone().filter(|k| !k.trim().is_empty()).ok_or_else(|| {
        anyhow!("no API key: pass --api-key or set SATCHEL_API_KEY (create one with `satchel admin create-api-key`)")
    })?;
    let base = args.url.trim_end_matches('/').to_string();
    url::Url::parse(&base).with_context(|| format!("--url {base:?} is not a URL like http://127.0.0.1:8080"))?;
    let changelog = match &args.changelog {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read the changelog {}", p.display()))?,
        None => String::new(),
    };
    let files: Vec<LocalFile> = args
        .files
        .iter()
        .map(|p| describe(p, &base))
        .collect::<anyhow::Result<_>>()?;
    let store = Store {
        base: base.clone(),
        key: key.trim().to_string(),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?,
    };

    // Fail before sending any byte: the key, the product, the version, the size limit.
    let product_path = format!(
        "{base}/api/v1/products/{}/versions",
        percent_encoding::utf8_percent_encode(&args.product, percent_encoding::NON_ALPHANUMERIC)
    );
    let resp = store
        .http
        .get(&product_path)
        .bearer_auth(&store.key)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the store at {base} (is it running? set --url or SATCHEL_PUBLIC_URL)")
        })?;
    match resp.status().as_u16() {
        200 => {}
        401 => return Err(refused_key()),
        404 => bail!(
            "there is no product {:?} in your store (check the slug with GET /api/v1/seller/products)",
            args.product
        ),
        _ => {
            let (s, code, msg) = api_error(resp).await;
            bail!("the store answered {s} {code}: {msg}");
        }
    }
    let existing: serde_json::Value = resp.json().await?;
    if existing["items"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v["version"].as_str() == Some(args.version.trim())))
    {
        bail!(
            "version {} already exists for {}; choose another --version",
            args.version.trim(),
            args.product
        );
    }
    let max = store
        .http
        .request(reqwest::Method::OPTIONS, format!("{base}/api/v1/uploads"))
        .send()
        .await?
        .headers()
        .get("tus-max-size")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some((max, big)) = max.and_then(|m| files.iter().find(|f| f.size > m).map(|f| (m, f))) {
        bail!(
            "{} is {} bytes; this store accepts at most {max} bytes per file",
            big.name,
            big.size
        );
    }

    let mut state = StateFile::load(args.state_file.clone().unwrap_or_else(StateFile::default_path));
    let mut urls = Vec::new();
    for f in &files {
        urls.push(upload_file(&store, f, &mut state, args.chunk_size, args.limit_rate).await?);
    }

    let resp = store
        .http
        .post(&product_path)
        .bearer_auth(&store.key)
        .json(&serde_json::json!({"version": args.version.trim(), "changelog": changelog, "uploads": urls}))
        .send()
        .await?;
    if resp.status().as_u16() != 201 {
        let (s, code, msg) = api_error(resp).await;
        match (s, code.as_str()) {
            (401, _) => return Err(refused_key()),
            (409, "version_exists") => bail!(
                "version {} already exists for {}; choose another --version (your uploads are kept and can be published with it)",
                args.version.trim(),
                args.product
            ),
            _ => bail!("publishing failed: {s} {code}: {msg}"),
        }
    }
    let v: serde_json::Value = resp.json().await?;
    for f in &files {
        state.map.remove(&f.state_key);
    }
    state.save()?;
    println!(
        "published {} {} ({} file{})",
        args.product,
        v["version"].as_str().unwrap_or_default(),
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    for f in v["files"].as_array().into_iter().flatten() {
        println!(
            "  {}  {} bytes  sha256 {}",
            f["name"].as_str().unwrap_or_default(),
            f["size"],
            f["sha256"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn progress_bar(f: &LocalFile) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(f.size), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(f.name.clone());
    bar
}

/// Asks the store for an upload's offset. `None` when it no longer exists.
async fn remote_offset(store: &Store, url: &str, size: u64) -> anyhow::Result<Option<u64>> {
    let resp = store.tus(store.http.head(url)).send().await?;
    match resp.status().as_u16() {
        200 => {
            let get = |h: &str| {
                resp.headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if get("upload-length") != Some(size) {
                return Ok(None);
            }
            Ok(get("upload-offset"))
        }
        401 => Err(refused_key()),
        404 | 410 => Ok(None),
        s => bail!("the store answered {s} when asked for the upload's offset"),
    }
}

async fn create_upload(store: &Store, f: &LocalFile) -> anyhow::Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let resp = store
        .tus(store.http.post(format!("{}/api/v1/uploads", store.base)))
        .header("upload-length", f.size)
        .header(
            "upload-metadata",
            format!(
                "filename {},filetype {}",
                b64(&f.name),
                b64(crate::uploads::guess_content_type(&f.name))
            ),
        )
        .send()
        .await?;
    if resp.status().as_u16() != 201 {
        let (s, code, msg) = api_error(resp).await;
        if s == 401 {
            return Err(refused_key());
        }
        bail!("the store refused to start the upload of {}: {s} {code}: {msg}", f.name);
    }
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow!("the store did not say where the upload is (no Location)"))?;
    Ok(url::Url::parse(&format!("{}/api/v1/uploads", store.base))?
        .join(location)?
        .to_string())
}

/// Uploads one file (resuming a remembered upload when the store still has it); returns its URL.
async fn upload_file(
    store: &Store,
    f: &LocalFile,
    state: &mut StateFile,
    chunk_size: u64,
    limit_rate: Option<u64>,
) -> anyhow::Result<String> {
    let mut offset = 0;
    let mut url = None;
    if let Some(u) = state.map.get(&f.state_key).cloned() {
        if let Some(o) = remote_offset(store, &u, f.size).await? {
            eprintln!("{}: resuming at byte {o} of {}", f.name, f.size);
            offset = o;
            url = Some(u);
        }
    }
    let url = match url {
        Some(u) => u,
        None => {
            let u = create_upload(store, f).await?;
            state.map.insert(f.state_key.clone(), u.clone());
            state.save()?;
            eprintln!("{}: uploading {} bytes", f.name, f.size);
            u
        }
    };
    let bar = progress_bar(f);
    bar.set_position(offset);
    let mut file = tokio::fs::File::open(&f.path)
        .await
        .with_context(|| format!("cannot read {}", f.path.display()))?;
    let started = Instant::now();
    let mut sent_this_run = 0u64;
    let mut failures = 0u32;
    while offset < f.size {
        let len = chunk_size.min(f.size - offset);
        let mut chunk = vec![0u8; usize::try_from(len)?];
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        file.read_exact(&mut chunk).await?;
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&chunk));
        let body = paced_body(chunk, bar.clone(), limit_rate, started, sent_this_run);
        let result = store
            .tus(store.http.patch(&url))
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset)
            .header("upload-checksum", format!("sha256 {checksum}"))
            .header("content-length", len)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        let retry_why = match result {
            Ok(resp) if resp.status().as_u16() == 204 => {
                let new = resp
                    .headers()
                    .get("upload-offset")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| anyhow!("the store did not return the new offset"))?;
                sent_this_run += new.saturating_sub(offset);
                offset = new;
                bar.set_position(offset);
                failures = 0;
                continue;
            }
            Ok(resp) => {
                let (s, code, msg) = api_error(resp).await;
                match s {
                    401 => return Err(refused_key()),
                    404 | 410 => {
                        state.map.remove(&f.state_key);
                        state.save()?;
                        bail!("the store no longer has this upload ({code}); run the command again to start it over");
                    }
                    413 => bail!("{}: {msg}", f.name),
                    409 | 423 | 460 | 500..=599 => format!("{s} {code}"),
                    _ => bail!("{}: the store answered {s} {code}: {msg}", f.name),
                }
            }
            Err(e) => format!("connection: {e}"),
        };
        failures += 1;
        if failures > MAX_RETRIES {
            bar.abandon();
            bail!(
                "{}: giving up after {MAX_RETRIES} retries ({retry_why}); run the same command again to resume",
                f.name
            );
        }
        let wait = Duration::from_millis(500 * 2u64.pow(failures.min(6)));
        bar.println(format!(
            "{}: {retry_why}; retrying in {:.1} s",
            f.name,
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
        match remote_offset(store, &url, f.size).await {
            Ok(Some(o)) => {
                offset = o;
                bar.set_position(offset);
            }
            Ok(None) => bail!("the store no longer has this upload; run the command again to start it over"),
            Err(e) => bar.println(format!("{}: cannot ask for the offset yet ({e})", f.name)),
        }
    }
    bar.finish();
    eprintln!("{}: uploaded ({} bytes)", f.name, f.size);
    Ok(url)
}

/// The chunk as a stream of 256 KiB pieces that moves the progress bar as the bytes go out
/// and, with `--limit-rate`, waits so the run's average stays under the rate.
fn paced_body(
    chunk: Vec<u8>,
    bar: indicatif::ProgressBar,
    limit_rate: Option<u64>,
    started: Instant,
    sent_before: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let data = bytes::Bytes::from(chunk);
    let start_pos = bar.position();
    futures::stream::unfold((data, 0usize), move |(data, at)| {
        let bar = bar.clone();
        async move {
            if at >= data.len() {
                return None;
            }
            let end = (at + 256 * 1024).min(data.len());
            if let Some(rate) = limit_rate {
                let due = (sent_before + end as u64) as f64 / rate as f64;
                let elapsed = started.elapsed().as_secs_f64();
                if due > elapsed {
                    tokio::time::sleep(Duration::from_secs_f64(due - elapsed)).await;
                }
            }
            bar.set_position(start_pos + end as u64);
            Some((Ok(data.slice(at..end)), (data, end)))
        }
    })
}
