//! Typed configuration: defaults → optional TOML file → `SATCHEL_*` environment.
//!
//! One struct per concern. Unknown keys in the file and unknown `SATCHEL_*` variables stop
//! start-up with a message naming them, because a misspelt setting that is silently ignored
//! (say, a Stripe key that never takes effect) is worse than a refusal to start.
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Display` print `[redacted]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A string that must never reach a log line.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown environment variable {0}: remove it or check the spelling (see docs/operations.md for the list)")]
    UnknownEnv(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where SQLite, local files, keys and the email outbox live in the embedded shape.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub email: EmailConfig,
    pub payments: PaymentsConfig,
    pub delivery: DeliveryConfig,
    pub keys: KeysConfig,
    pub jobs: JobsConfig,
    pub affiliates: AffiliatesConfig,
    pub licenses: LicensesConfig,
    pub uploads: UploadsConfig,
    pub abuse: AbuseConfig,
}

/// Download abuse detection per grant (see `abuse`): distinct client networks (/24 IPv4,
/// /64 IPv6) within `window_hours`, and download starts within the last hour. Crossing a
/// `soft` threshold asks the buyer to re-confirm by email; crossing a `suspend` threshold
/// suspends the link and alerts the seller. 0 turns a threshold off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbuseConfig {
    pub window_hours: u32,
    pub soft_prefixes: u32,
    pub suspend_prefixes: u32,
    pub soft_starts_per_hour: u32,
    pub suspend_starts_per_hour: u32,
    /// Minutes a re-confirmation link stays valid (a new one is emailed on the next
    /// download attempt after it lapsed).
    pub reconfirm_link_minutes: u32,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            window_hours: 24,
            soft_prefixes: 3,
            suspend_prefixes: 6,
            soft_starts_per_hour: 10,
            suspend_starts_per_hour: 30,
            reconfirm_link_minutes: 60,
        }
    }
}

impl AbuseConfig {
    /// Whether any threshold is on.
    pub fn enabled(&self) -> bool {
        self.window_hours > 0
            && (self.soft_prefixes > 0
                || self.suspend_prefixes > 0
                || self.soft_starts_per_hour > 0
                || self.suspend_starts_per_hour > 0)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LicensesConfig {
    /// Unknown or malformed keys from one network (/24, /64) within `guess_window_secs` that
    /// raise a `license_key_guessing` abuse flag and throttle it (0 = off).
    pub guess_threshold: u32,
    pub guess_window_secs: u64,
    /// While flagged, the network gets one license call per this many seconds.
    pub guess_throttle_secs: u64,
    /// PostgreSQL: seconds a validation may answer from the in-process cache of license
    /// rows (kept exact by NOTIFY from the database; 0 = always read the database).
    pub validation_cache_secs: u64,
}

impl Default for LicensesConfig {
    fn default() -> Self {
        Self {
            guess_threshold: 20,
            guess_window_secs: 600,
            guess_throttle_secs: 10,
            validation_cache_secs: 60,
        }
    }
}

/// Resumable uploads (tus) and product images.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Largest resumable upload in bytes (default 10 GiB); bigger `Upload-Length`s get 413.
    pub max_size: u64,
    /// Hours an unfinished (or finished but unpublished) upload is kept after its last write.
    pub expire_hours: i64,
    /// Largest preview image in bytes (default 10 MiB).
    pub image_max_bytes: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024 * 1024,
            expire_hours: 24,
            image_max_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Parses a byte size: `1048576`, `512K`, `100M`, `10G`, `1T` (binary units; `MiB`, `GB`… accepted).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffiliatesConfig {
    /// Days a commission stays pending (refundable) before it becomes payable.
    pub refund_window_days: i64,
}

impl Default for AffiliatesConfig {
    fn default() -> Self {
        Self { refund_window_days: 30 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    /// The URL buyers reach the store at; links in emails are built from it.
    pub public_url: Option<String>,
    /// `human` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Trust `X-Forwarded-For` from a reverse proxy for client addresses.
    pub trust_forwarded_for: bool,
    /// Per-network rate limits on unauthenticated endpoints (downloads, licenses, sign-in, purchase).
    pub rate_limits: bool,
    /// Threads serving HTTP (`SATCHEL_WORKERS`); 0 = one per core. The download-start writer
    /// has a thread of its own beside them, so on a small machine shared with other busy
    /// processes one fewer than the cores can serve more (docs/operations.md, Benchmarks).
    pub workers: usize,
    /// Pins the download-start batcher's thread to a CPU (`SATCHEL_BATCHER_CPU`; Linux): a
    /// CPU number, or `auto`. Off by default. With PostgreSQL on the same machine, the
    /// batcher and the database's backend hand every round back and forth; on the CPU that
    /// takes the disk's interrupts (where the backend wakes after each commit's flush) those
    /// hand-offs need no cross-CPU wake-up (docs/operations.md, "The batcher's CPU").
    pub batcher_cpu: Option<BatcherCpu>,
}

/// Where the download-start batcher's thread runs (`server.batcher_cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BatcherCpuSetting")]
pub enum BatcherCpu {
    /// This CPU (as `taskset -c` numbers them).
    Cpu(usize),
    /// On PostgreSQL, the CPU that has taken the most interrupts from the machine's disks
    /// when the batcher starts ([`crate::delivery::batch::disk_interrupt_cpu`]); unpinned if
    /// none is found. SQLite's writer is left unpinned: pinning it gained nothing.
    Auto,
}

/// `server.batcher_cpu` as written: a number or a word.
#[derive(Deserialize)]
#[serde(untagged)]
enum BatcherCpuSetting {
    Cpu(usize),
    Word(String),
}

impl TryFrom<BatcherCpuSetting> for BatcherCpu {
    type Error = String;
    fn try_from(s: BatcherCpuSetting) -> Result<Self, String> {
        match s {
            BatcherCpuSetting::Cpu(cpu) => Ok(BatcherCpu::Cpu(cpu)),
            BatcherCpuSetting::Word(w) => w.parse(),
        }
    }
}

impl std::str::FromStr for BatcherCpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(BatcherCpu::Auto),
            n => n.parse().map(BatcherCpu::Cpu).map_err(|_| {
                format!("expected a CPU number, as `taskset -c` takes it (0 is the first), or `auto`; not {n:?}")
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the process's log subscriber: `SATCHEL_LOG` (an `EnvFilter`, default info with
/// sqlx and tower-http at warn) to stderr, one JSON object per line or human-readable.
/// `satchel serve` and the bench's `--serve-logging` use it.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SATCHEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:///path/file.db` or `postgres://user@host/db`; default: SQLite in the data dir.
    pub url: Option<Secret>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `file:///path` or `s3://bucket?endpoint=http://127.0.0.1:9000&region=us-east-1`.
    pub url: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// `smtp://user:pass@host:587?tls=starttls`; unset = `.eml` files in the data dir's outbox.
    pub smtp_url: Option<Secret>,
    pub from: String,
    /// Folder with template overrides (same file names as the built-in ones).
    pub templates_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    pub stripe_secret_key: Option<Secret>,
    pub stripe_webhook_secret: Option<Secret>,
    pub stripe_api_base: String,
    /// Built-in test-mode checkout. Defaults to on when no Stripe key is set, off otherwise.
    pub test_mode: Option<bool>,
}

impl PaymentsConfig {
    pub fn test_mode_enabled(&self) -> bool {
        self.test_mode.unwrap_or(self.stripe_secret_key.is_none())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Satchel streams the bytes from a signed `/files/…` URL.
    Stream,
    /// `X-Accel-Redirect` to an nginx internal location.
    XAccel,
    /// 302 to a presigned object-store URL (S3 storage only).
    Presign,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// Internal nginx location prefix for `x-accel` mode.
    pub x_accel_prefix: String,
    pub default_max_downloads: i64,
    pub default_link_days: i64,
    /// Bind each delivery URL (the `/files/…` address a download link redirects to) to the
    /// IP prefix (/24, /64) that started the download, so a URL posted elsewhere serves
    /// nobody else during its lifetime. Off by default: a dual-stack client may fetch the
    /// file over IPv6 after starting over IPv4 (or move networks mid-download), and then
    /// has to start again from its link. Presigned object-store URLs cannot be bound.
    pub bind_to_ip: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Directory of signing keys; default `{data_dir}/keys`. Share it (or its contents)
    /// between instances in the scaled-out shape.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Run the job worker inside `satchel serve` (default true).
    pub in_process: bool,
    pub concurrency: usize,
    pub max_attempts: i64,
    pub lease_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("satchel-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            email: EmailConfig::default(),
            payments: PaymentsConfig::default(),
            delivery: DeliveryConfig::default(),
            keys: KeysConfig::default(),
            jobs: JobsConfig::default(),
            affiliates: AffiliatesConfig::default(),
            licenses: LicensesConfig::default(),
            uploads: UploadsConfig::default(),
            abuse: AbuseConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: None,
            log_format: LogFormat::Human,
            shutdown_grace_secs: 20,
            trust_forwarded_for: false,
            rate_limits: true,
            workers: 0,
            batcher_cpu: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
        }
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Satchel Store <store@satchel.localhost>".into(),
            templates_dir: None,
        }
    }
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            stripe_api_base: "https://api.stripe.com".into(),
            test_mode: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Stream,
            x_accel_prefix: "/_satchel_protected/".into(),
            default_max_downloads: 5,
            default_link_days: 30,
            bind_to_ip: false,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            in_process: true,
            concurrency: 4,
            max_attempts: 8,
            lease_secs: 300,
        }
    }
}

/// Environment variables we read, each applied by `apply_env`.
const ENV_KEYS: &[&str] = &[
    "SATCHEL_DATA_DIR",
    "SATCHEL_BIND",
    "SATCHEL_PUBLIC_URL",
    "SATCHEL_LOG_FORMAT",
    "SATCHEL_TRUST_FORWARDED_FOR",
    "SATCHEL_WORKERS",
    "SATCHEL_BATCHER_CPU",
    "SATCHEL_DATABASE_URL",
    "SATCHEL_DATABASE_MAX_CONNECTIONS",
    "SATCHEL_STORAGE_URL",
    "SATCHEL_S3_ACCESS_KEY_ID",
    "SATCHEL_S3_SECRET_ACCESS_KEY",
    "SATCHEL_SMTP_URL",
    "SATCHEL_EMAIL_FROM",
    "SATCHEL_STRIPE_SECRET_KEY",
    "SATCHEL_STRIPE_WEBHOOK_SECRET",
    "SATCHEL_STRIPE_API_BASE",
    "SATCHEL_TEST_MODE",
    "SATCHEL_DELIVERY_MODE",
    "SATCHEL_X_ACCEL_PREFIX",
    "SATCHEL_DELIVERY_BIND_TO_IP",
    "SATCHEL_KEYS_DIR",
    "SATCHEL_CONFIG",
    "SATCHEL_LOG",
    "SATCHEL_UPLOAD_MAX_SIZE",
    "SATCHEL_UPLOAD_EXPIRE_HOURS",
    "SATCHEL_ABUSE_WINDOW_HOURS",
    "SATCHEL_ABUSE_SOFT_PREFIXES",
    "SATCHEL_ABUSE_SUSPEND_PREFIXES",
    "SATCHEL_ABUSE_SOFT_STARTS_PER_HOUR",
    "SATCHEL_ABUSE_SUSPEND_STARTS_PER_HOUR",
    "SATCHEL_ABUSE_RECONFIRM_LINK_MINUTES",
    // Read by `satchel product upload` (the client), not by the server.
    "SATCHEL_API_KEY",
];

impl Config {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    pub fn load_from(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for key in env.keys() {
            // SATCHEL_TEST_* belongs to the test harness, not to the server.
            if key.starts_with("SATCHEL_") && !key.starts_with("SATCHEL_TEST_") && !ENV_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownEnv(key.clone()));
            }
        }
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let parse_bool = |k: &str, v: String| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(k, format!("expected true or false, got {v:?}"))),
        };
        if let Some(v) = get("SATCHEL_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("SATCHEL_BIND") {
            self.server.bind = v;
        }
        if let Some(v) = get("SATCHEL_PUBLIC_URL") {
            self.server.public_url = Some(v);
        }
        if let Some(v) = get("SATCHEL_LOG_FORMAT") {
            self.server.log_format = match v.as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                _ => return Err(invalid("SATCHEL_LOG_FORMAT", "expected human or json")),
            };
        }
        if let Some(v) = get("SATCHEL_WORKERS") {
            self.server.workers = v
                .parse()
                .map_err(|_| invalid("SATCHEL_WORKERS", "expected a number of threads (0 = one per core)"))?;
        }
        if let Some(v) = get("SATCHEL_BATCHER_CPU") {
            self.server.batcher_cpu = Some(v.parse().map_err(|m: String| invalid("SATCHEL_BATCHER_CPU", m))?);
        }
        if let Some(v) = get("SATCHEL_TRUST_FORWARDED_FOR") {
            self.server.trust_forwarded_for = parse_bool("SATCHEL_TRUST_FORWARDED_FOR", v)?;
        }
        if let Some(v) = get("SATCHEL_DATABASE_URL") {
            self.database.url = Some(Secret::new(v));
        }
        if let Some(v) = get("SATCHEL_DATABASE_MAX_CONNECTIONS") {
            self.database.max_connections = v
                .parse()
                .map_err(|_| invalid("SATCHEL_DATABASE_MAX_CONNECTIONS", "expected a positive integer"))?;
        }
        if let Some(v) = get("SATCHEL_STORAGE_URL") {
            self.storage.url = Some(v);
        }
        if let Some(v) = get("SATCHEL_S3_ACCESS_KEY_ID").or_else(|| get("AWS_ACCESS_KEY_ID")) {
            self.storage.access_key_id = Some(v);
        }
        if let Some(v) = get("SATCHEL_S3_SECRET_ACCESS_KEY").or_else(|| get("AWS_SECRET_ACCESS_KEY")) {
            self.storage.secret_access_key = Some(Secret::new(v));
        }
        if let Some(v) = get("SATCHEL_SMTP_URL") {
            self.email.smtp_url = Some(Secret::new(v));
        }
        if let Some(v) = get("SATCHEL_EMAIL_FROM") {
            self.email.from = v;
        }
        if let Some(v) = get("SATCHEL_STRIPE_SECRET_KEY") {
            self.payments.stripe_secret_key = Some(Secret::new(v));
        }
        if let Some(v) = get("SATCHEL_STRIPE_WEBHOOK_SECRET") {
            self.payments.stripe_webhook_secret = Some(Secret::new(v));
        }
        if let Some(v) = get("SATCHEL_STRIPE_API_BASE") {
            self.payments.stripe_api_base = v;
        }
        if let Some(v) = get("SATCHEL_TEST_MODE") {
            self.payments.test_mode = Some(parse_bool("SATCHEL_TEST_MODE", v)?);
        }
        if let Some(v) = get("SATCHEL_DELIVERY_MODE") {
            self.delivery.mode = match v.as_str() {
                "stream" => DeliveryMode::Stream,
                "x-accel" => DeliveryMode::XAccel,
                "presign" => DeliveryMode::Presign,
                _ => return Err(invalid("SATCHEL_DELIVERY_MODE", "expected stream, x-accel or presign")),
            };
        }
        if let Some(v) = get("SATCHEL_X_ACCEL_PREFIX") {
            self.delivery.x_accel_prefix = v;
        }
        if let Some(v) = get("SATCHEL_DELIVERY_BIND_TO_IP") {
            self.delivery.bind_to_ip = parse_bool("SATCHEL_DELIVERY_BIND_TO_IP", v)?;
        }
        if let Some(v) = get("SATCHEL_KEYS_DIR") {
            self.keys.dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("SATCHEL_UPLOAD_MAX_SIZE") {
            self.uploads.max_size = parse_size(&v).ok_or_else(|| {
                invalid(
                    "SATCHEL_UPLOAD_MAX_SIZE",
                    format!("{v:?} is not a size like 10G, 500M or 1048576"),
                )
            })?;
        }
        if let Some(v) = get("SATCHEL_UPLOAD_EXPIRE_HOURS") {
            self.uploads.expire_hours = v
                .parse()
                .map_err(|_| invalid("SATCHEL_UPLOAD_EXPIRE_HOURS", "expected a whole number of hours"))?;
        }
        for (k, slot) in [
            ("SATCHEL_ABUSE_WINDOW_HOURS", &mut self.abuse.window_hours),
            ("SATCHEL_ABUSE_SOFT_PREFIXES", &mut self.abuse.soft_prefixes),
            ("SATCHEL_ABUSE_SUSPEND_PREFIXES", &mut self.abuse.suspend_prefixes),
            (
                "SATCHEL_ABUSE_SOFT_STARTS_PER_HOUR",
                &mut self.abuse.soft_starts_per_hour,
            ),
            (
                "SATCHEL_ABUSE_SUSPEND_STARTS_PER_HOUR",
                &mut self.abuse.suspend_starts_per_hour,
            ),
            (
                "SATCHEL_ABUSE_RECONFIRM_LINK_MINUTES",
                &mut self.abuse.reconfirm_link_minutes,
            ),
        ] {
            if let Some(v) = get(k) {
                *slot = v
                    .parse()
                    .map_err(|_| invalid(k, format!("expected a whole number (0 = off), got {v:?}")))?;
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.bind",
                format!("{:?} is not an address like 127.0.0.1:8080", self.server.bind),
            ));
        }
        if let Some(u) = &self.server.public_url {
            let parsed = url::Url::parse(u).map_err(|e| invalid("server.public_url", format!("{u:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid("server.public_url", "must start with http:// or https://"));
            }
        }
        if let Some(u) = &self.database.url {
            crate::db::DbUrl::parse(u.expose()).map_err(|m| invalid("database.url", m))?;
        }
        if let Some(u) = &self.storage.url {
            crate::storage::StorageUrl::parse(u).map_err(|m| invalid("storage.url", m))?;
        }
        if let Some(u) = &self.email.smtp_url {
            let parsed = url::Url::parse(u.expose()).map_err(|e| invalid("email.smtp_url", e.to_string()))?;
            if !matches!(parsed.scheme(), "smtp" | "smtps") {
                return Err(invalid("email.smtp_url", "must start with smtp:// or smtps://"));
            }
        }
        url::Url::parse(&self.payments.stripe_api_base)
            .map_err(|e| invalid("payments.stripe_api_base", e.to_string()))?;
        if self.delivery.default_max_downloads < 1 {
            return Err(invalid("delivery.default_max_downloads", "must be at least 1"));
        }
        if let Some(BatcherCpu::Cpu(cpu)) = self.server.batcher_cpu {
            crate::delivery::batch::check_cpu(cpu).map_err(|m| invalid("server.batcher_cpu", m))?;
        }
        self.check_delivery()?;
        if self.uploads.max_size == 0 {
            return Err(invalid("uploads.max_size", "must be at least 1 byte"));
        }
        if self.uploads.expire_hours < 1 {
            return Err(invalid("uploads.expire_hours", "must be at least 1"));
        }
        if self.abuse.reconfirm_link_minutes == 0 {
            return Err(invalid("abuse.reconfirm_link_minutes", "must be at least 1"));
        }
        if self.abuse.window_hours > 24 * 90 {
            return Err(invalid("abuse.window_hours", "at most 2160 (90 days)"));
        }
        if self.jobs.concurrency == 0 {
            return Err(invalid("jobs.concurrency", "must be at least 1"));
        }
        Ok(())
    }

    /// The delivery mode must fit the storage: nginx can only serve files it can see on disk,
    /// and only an object store can presign. Checked at load and again when the app opens.
    pub fn check_delivery(&self) -> Result<(), ConfigError> {
        let storage = crate::storage::StorageUrl::parse(&self.storage_url()).map_err(|m| invalid("storage.url", m))?;
        let local = matches!(storage, crate::storage::StorageUrl::Local { .. });
        match self.delivery.mode {
            DeliveryMode::Stream => {}
            DeliveryMode::XAccel if !local => {
                return Err(invalid(
                    "delivery.mode",
                    "x-accel needs local storage (nginx serves the files from disk); use a file:/// storage.url, \
                     or delivery.mode = \"presign\" to let the object store serve downloads",
                ))
            }
            DeliveryMode::XAccel => {
                let p = &self.delivery.x_accel_prefix;
                if !(p.starts_with('/') && p.ends_with('/') && p.len() > 2)
                    || p.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(invalid(
                        "delivery.x_accel_prefix",
                        format!("{p:?} must be an nginx location path like /_satchel_protected/ (leading and trailing slash, no spaces)"),
                    ));
                }
            }
            DeliveryMode::Presign if local => {
                return Err(invalid(
                    "delivery.mode",
                    "presign needs S3 storage (local files cannot be presigned); set storage.url to s3://…, \
                     or use delivery.mode = \"x-accel\" behind nginx or \"stream\"",
                ))
            }
            DeliveryMode::Presign => {}
        }
        Ok(())
    }

    /// The public base URL without a trailing slash.
    pub fn public_url(&self) -> String {
        let mut url = String::new();
        self.push_public_url(&mut url);
        url
    }

    /// Appends [`Config::public_url`] to `out` (no string of its own: every download start
    /// puts it in its delivery URL).
    pub fn push_public_url(&self, out: &mut String) {
        let start = out.len();
        match &self.server.public_url {
            Some(url) => out.push_str(url),
            None => {
                use std::fmt::Write as _;
                let _ = write!(out, "http://{}", self.server.bind);
            }
        }
        while out.len() > start && out.ends_with('/') {
            out.pop();
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.keys.dir.clone().unwrap_or_else(|| self.data_dir.join("keys"))
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) => u.expose().to_string(),
            None => format!("sqlite://{}", self.data_dir.join("satchel.db").display()),
        }
    }

    pub fn storage_url(&self) -> String {
        match &self.storage.url {
            Some(u) => u.clone(),
            None => format!("file://{}", absolute(&self.data_dir.join("files")).display()),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("satchel.toml");
        std::fs::write(
            &file,
            "[server]\nbind = \"127.0.0.1:9000\"\n[payments]\nstripe_api_base = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let cfg = Config::load_from(Some(&file), &env(&[("SATCHEL_BIND", "127.0.0.1:9100")])).unwrap();
        assert_eq!(cfg.server.bind, "127.0.0.1:9100");
        assert_eq!(cfg.payments.stripe_api_base, "http://127.0.0.1:1");
        assert_eq!(cfg.delivery.default_max_downloads, 5);
        assert_eq!(cfg.server.workers, 0, "one HTTP thread per core by default");
        let cfg = Config::load_from(Some(&file), &env(&[("SATCHEL_WORKERS", "1")])).unwrap();
        assert_eq!(cfg.server.workers, 1);
        let err = Config::load_from(Some(&file), &env(&[("SATCHEL_WORKERS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SATCHEL_WORKERS"), "{err}");
        assert!(!cfg.delivery.bind_to_ip, "delivery URLs unbound by default");
        std::fs::write(&file, "[delivery]\nbind_to_ip = true\n").unwrap();
        assert!(Config::load_from(Some(&file), &env(&[])).unwrap().delivery.bind_to_ip);
        let cfg = Config::load_from(Some(&file), &env(&[("SATCHEL_DELIVERY_BIND_TO_IP", "off")])).unwrap();
        assert!(!cfg.delivery.bind_to_ip, "the environment wins");
        let err = Config::load_from(None, &env(&[("SATCHEL_DELIVERY_BIND_TO_IP", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SATCHEL_DELIVERY_BIND_TO_IP"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("satchel.toml");
        std::fs::write(&file, "[server]\nbnd = \"x\"\n").unwrap();
        let err = Config::load_from(Some(&file), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("bnd"), "{err}");
    }

    #[test]
    fn unknown_env_and_bad_urls_are_named() {
        let err = Config::load_from(None, &env(&[("SATCHEL_DATABSE_URL", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SATCHEL_DATABSE_URL"), "{err}");
        let err = Config::load_from(None, &env(&[("SATCHEL_DATABASE_URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.url") && err.contains("mysql"), "{err}");
        let err = Config::load_from(None, &env(&[("SATCHEL_STORAGE_URL", "s3://")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.url"), "{err}");
        assert!(Config::load_from(None, &env(&[("SATCHEL_TEST_REQUIRE_ALL", "1")])).is_ok());
    }

    #[test]
    fn upload_limits_come_from_env_with_units() {
        let cfg = Config::load_from(
            None,
            &env(&[("SATCHEL_UPLOAD_MAX_SIZE", "2G"), ("SATCHEL_API_KEY", "sk_live_x")]),
        )
        .unwrap();
        assert_eq!(cfg.uploads.max_size, 2 << 30);
        assert_eq!(Config::default().uploads.max_size, 10 << 30);
        let err = Config::load_from(None, &env(&[("SATCHEL_UPLOAD_MAX_SIZE", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SATCHEL_UPLOAD_MAX_SIZE"), "{err}");
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("12x"), None);
    }

    #[test]
    fn abuse_thresholds_come_from_env() {
        let cfg = Config::load_from(
            None,
            &env(&[
                ("SATCHEL_ABUSE_SOFT_PREFIXES", "4"),
                ("SATCHEL_ABUSE_SUSPEND_STARTS_PER_HOUR", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.abuse.soft_prefixes, 4);
        assert_eq!(cfg.abuse.suspend_starts_per_hour, 0);
        assert_eq!(cfg.abuse.window_hours, 24);
        assert!(cfg.abuse.enabled());
        let err = Config::load_from(None, &env(&[("SATCHEL_ABUSE_WINDOW_HOURS", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SATCHEL_ABUSE_WINDOW_HOURS"), "{err}");
    }

    #[test]
    fn delivery_modes_must_fit_the_storage() {
        let err = Config::load_from(None, &env(&[("SATCHEL_DELIVERY_MODE", "presign")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.mode") && err.contains("S3"), "{err}");
        let s3 = ("SATCHEL_STORAGE_URL", "s3://b?endpoint=http://127.0.0.1:9000");
        Config::load_from(None, &env(&[("SATCHEL_DELIVERY_MODE", "presign"), s3])).unwrap();
        let err = Config::load_from(None, &env(&[("SATCHEL_DELIVERY_MODE", "x-accel"), s3]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("local storage"), "{err}");
        let cfg = Config::load_from(None, &env(&[("SATCHEL_DELIVERY_MODE", "x-accel")])).unwrap();
        assert_eq!(cfg.delivery.x_accel_prefix, "/_satchel_protected/");
        let err = Config::load_from(
            None,
            &env(&[
                ("SATCHEL_DELIVERY_MODE", "x-accel"),
                ("SATCHEL_X_ACCEL_PREFIX", "protected"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x_accel_prefix"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let cfg = Config::load_from(None, &env(&[("SATCHEL_STRIPE_SECRET_KEY", "sk_test_supersecret")])).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("supersecret"));
        assert!(dbg.contains("[redacted]"));
        assert!(
            !cfg.payments.test_mode_enabled(),
            "stripe key turns test mode off by default"
        );
    }
}
