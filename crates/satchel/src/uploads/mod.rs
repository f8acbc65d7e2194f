//! Resumable uploads (the tus 1.0 protocol's state machine; HTTP lives in `http/uploads.rs`).
//!
//! An upload is a row in `uploads` plus bytes in storage at a staging key
//! `uploads/{seller_id}/{upload_id}`. Every write (a PATCH) holds a short lease on the row
//! (`lock_token`, `locked_until`), so two requests — or two instances — never write one upload
//! at once, and a crashed writer's lease simply runs out.
//!
//! What is persisted is always consistent: `upload_offset` counts bytes that are durable in
//! storage, and `hash_state` is a [`ResumableSha256`] over a known prefix of them. So a dropped
//! connection keeps what arrived and a restarted server continues where the database says.
//!
//! - **Local storage** appends to the staging file. A checkpoint (every 64 MiB or 5 s, and at
//!   the end of each PATCH) flushes and `fsync`s the file, then records offset and hash. A
//!   file longer than the recorded offset (a crash between the two) is cut back on the next write.
//! - **S3** writes a multipart upload at the staging key, in parts of `part_size` bytes (≥ 8 MiB,
//!   so a 10 GiB file needs 1 280 of S3's 10 000 parts). Bytes that do not fill a part yet are kept
//!   in a small *tail object* `…/{id}.tail-{k}` (k = parts stored before it), rewritten at the end of
//!   each PATCH and read back at the start of the next, so the tail survives restarts and any
//!   instance can continue. Parts are recorded in `upload_parts`; the hash covers exactly the
//!   bytes in recorded parts (the tail is hashed when it becomes a part). The last part may be
//!   short, as S3 allows. Completion is recorded as `finalizing` before `CompleteMultipartUpload`
//!   and as `complete` after, so a crash in between is finished by the next request.
//!
//! With `Upload-Checksum` a PATCH is all or nothing: nothing is recorded until the checksum of
//! its body matches (a mismatch leaves the offset where it was).
//!
//! Publishing (`attach_to_version`) copies a complete upload to the version's key
//! `{seller}/{product}/{version}/original/{file}` (a hard link locally, a server-side copy on
//! S3) before the version's transaction, marks the upload `used` inside it, and deletes the
//! staging object after it commits.

pub mod hash;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::app::App;
use crate::catalog::NewFile;
use crate::db::{Exec, Tx};
use crate::error::{bad_request, conflict, not_found, unprocessable, ApiError, ApiResult};
use crate::ids::{new_id, now, random_token};
use crate::sql;
use crate::storage::{PartInfo, StorageError};
pub use hash::ResumableSha256;

/// The tus protocol version we speak.
pub const TUS_VERSION: &str = "1.0.0";
/// Extensions advertised by `OPTIONS`.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// `Upload-Checksum` algorithms we verify.
pub const CHECKSUM_ALGORITHMS: &str = "sha256,sha1";

/// A write lease; renewed at every checkpoint.
const LEASE_SECS: i64 = 60;
/// A PATCH whose body sends nothing for this long is ended (what arrived is kept).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Local storage checkpoints after this many bytes or this much time.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Smallest S3 part we write (S3 needs ≥ 5 MiB for every part but the last).
const MIN_S3_PART: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Upload {
    pub id: String,
    pub seller_id: String,
    pub length: Option<i64>,
    pub upload_offset: i64,
    pub file_name: String,
    pub content_type: String,
    pub metadata: String,
    pub object_key: String,
    pub backend_state: String,
    pub sha256: Option<String>,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub hash_state: String,
    pub lock_token: Option<String>,
    pub locked_until: Option<i64>,
    pub completed_at: Option<i64>,
    pub version_id: Option<String>,
}

const UPLOAD_COLS: &str =
    "id, seller_id, length, upload_offset, file_name, content_type, metadata, object_key, backend_state, \
    sha256, status, created_at, updated_at, expires_at, hash_state, lock_token, locked_until, completed_at, version_id";

impl Upload {
    pub fn len(&self) -> u64 {
        u64::try_from(self.length.unwrap_or(0)).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn offset(&self) -> u64 {
        u64::try_from(self.upload_offset).unwrap_or(0)
    }
    /// Past its expiry and not yet published: as good as gone.
    pub fn expired(&self, t: i64) -> bool {
        self.status != "used" && self.expires_at < t
    }
    /// The `Upload-Metadata` header value, as the client sent it (re-encoded).
    pub fn metadata_header(&self) -> String {
        let map: BTreeMap<String, String> = serde_json::from_str(&self.metadata).unwrap_or_default();
        map.iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
    pub fn json(&self, public_url: &str) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "url": format!("{public_url}/api/v1/uploads/{}", self.id),
            "length": self.length, "offset": self.upload_offset, "file_name": self.file_name,
            "content_type": self.content_type, "status": self.status, "sha256": self.sha256,
            "created_at": self.created_at, "expires_at": self.expires_at, "version_id": self.version_id,
        })
    }
}

/// S3 bookkeeping kept in `uploads.backend_state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct S3State {
    multipart_id: String,
    part_size: u64,
}

fn staging_key(seller_id: &str, id: &str) -> String {
    format!("uploads/{seller_id}/{id}")
}

fn tail_key(staging: &str, parts: u64) -> String {
    format!("{staging}.tail-{parts}")
}

/// Part size for an S3 upload of `length` bytes: ≥ 8 MiB and few enough parts (≤ 9 000).
fn part_size_for(length: u64) -> u64 {
    let mib = 1024 * 1024;
    let needed = length.div_ceil(9_000).div_ceil(mib) * mib;
    needed.max(MIN_S3_PART)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("{e}"))
}

fn storage_err(e: StorageError) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(e))
}

pub fn too_large(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
}

/// Decodes `Upload-Metadata`: comma-separated `key base64value` (or a bare `key`).
pub fn parse_metadata(header: &str) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, ' ');
        let key = it.next().unwrap_or_default();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_graphic() && c != ',') {
            return Err(bad_request(
                "invalid_metadata",
                format!("Upload-Metadata key {key:?} is not valid"),
            ));
        }
        let value = match it.next().map(str::trim) {
            Some(v) if !v.is_empty() => {
                let raw = base64::engine::general_purpose::STANDARD.decode(v).map_err(|_| {
                    bad_request(
                        "invalid_metadata",
                        format!("Upload-Metadata value of {key:?} is not base64"),
                    )
                })?;
                String::from_utf8(raw).map_err(|_| {
                    bad_request(
                        "invalid_metadata",
                        format!("Upload-Metadata value of {key:?} is not UTF-8"),
                    )
                })?
            }
            _ => String::new(),
        };
        if out.insert(key.to_string(), value).is_some() {
            return Err(bad_request(
                "invalid_metadata",
                format!("Upload-Metadata names {key:?} twice"),
            ));
        }
    }
    Ok(out)
}

/// Turns a client's file name into a safe last segment of an object key: the base name
/// only (no directories, so no traversal), no control characters, quotes or backslashes,
/// no leading dots or spaces, at most 200 bytes with the extension kept. Empty → refused.
pub fn sanitize_file_name(raw: &str) -> ApiResult<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '/' | '\u{202e}' | '\u{feff}'))
        .collect();
    let cleaned = cleaned
        .trim()
        .trim_start_matches(['.', ' '])
        .trim_end_matches(['.', ' '])
        .to_string();
    if cleaned.is_empty() {
        return Err(unprocessable(
            "invalid_file_name",
            format!("{raw:?} is not a usable file name; send a name like book.pdf in Upload-Metadata filename"),
        )
        .field("filename"));
    }
    if cleaned.len() <= 200 {
        return Ok(cleaned);
    }
    let (stem, ext) = match cleaned.rsplit_once('.') {
        Some((s, e)) if e.len() <= 16 => (s.to_string(), format!(".{e}")),
        _ => (cleaned.clone(), String::new()),
    };
    let mut short = String::new();
    for c in stem.chars() {
        if short.len() + c.len_utf8() + ext.len() > 200 {
            break;
        }
        short.push(c);
    }
    Ok(format!("{short}{ext}"))
}

/// A media type like `application/pdf` from metadata, else a guess from the file name.
fn content_type_of(meta: &BTreeMap<String, String>, file_name: &str) -> String {
    let given = ["filetype", "content_type", "contentType", "type"]
        .iter()
        .find_map(|k| meta.get(*k))
        .map(|v| v.trim().to_ascii_lowercase());
    if let Some(t) = given {
        let ok = t.len() <= 100
            && t.split_once('/').is_some_and(|(a, b)| {
                let tok =
                    |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c));
                tok(a) && tok(b)
            });
        if ok {
            return t;
        }
    }
    guess_content_type(file_name).to_string()
}

/// A media type from a file name's extension.
pub fn guess_content_type(file_name: &str) -> &'static str {
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "epub" => "application/epub+zip",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" | "md" => "text/plain",
        "gz" | "tgz" => "application/gzip",
        "dmg" => "application/x-apple-diskimage",
        "exe" | "msi" => "application/vnd.microsoft.portable-executable",
        _ => "application/octet-stream",
    }
}

pub async fn find(e: &impl Exec, id: &str) -> Result<Option<Upload>, crate::db::DbError> {
    e.fetch_optional(sql!(format!("SELECT {UPLOAD_COLS} FROM uploads WHERE id = $1"), id))
        .await
}

/// One of `seller_id`'s uploads that is still usable (not expired); 404 for anyone else's.
pub async fn find_own(app: &App, seller_id: &str, id: &str) -> ApiResult<Upload> {
    let up = find(&app.db, id)
        .await?
        .filter(|u| u.seller_id == seller_id)
        .ok_or_else(|| not_found("upload"))?;
    if up.expired(now()) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "upload_expired",
            "this upload expired before it was finished; start a new one",
        ));
    }
    if up.status == "finalizing" {
        return finish_s3_completion(app, up).await;
    }
    Ok(up)
}

/// Creates an upload of `length` bytes (tus creation). Nothing is stored when it is refused.
pub async fn create(app: &App, seller_id: &str, length: u64, metadata: &str) -> ApiResult<Upload> {
    let max = app.cfg.uploads.max_size;
    if length > max {
        return Err(too_large(format!(
            "Upload-Length {length} exceeds this store's limit of {max} bytes (uploads.max_size)"
        )));
    }
    let length_i64 = i64::try_from(length).map_err(|_| too_large("Upload-Length is too large"))?;
    let meta = parse_metadata(metadata)?;
    let raw_name = ["filename", "name"].iter().find_map(|k| meta.get(*k)).ok_or_else(|| {
        unprocessable(
            "missing_file_name",
            "send the file name in Upload-Metadata, like: Upload-Metadata: filename Ym9vay5wZGY=",
        )
        .field("filename")
    })?;
    let file_name = sanitize_file_name(raw_name)?;
    let content_type = content_type_of(&meta, &file_name);
    let id = new_id("upl");
    let key = staging_key(seller_id, &id);
    let t = now();
    let mut backend_state = "{}".to_string();
    if app.storage.local_root().is_none() && length > 0 {
        let mp = app.storage.multipart_start(&key).await.map_err(storage_err)?;
        backend_state = serde_json::to_string(&S3State {
            multipart_id: mp,
            part_size: part_size_for(length),
        })?;
    } else if let Some(root) = app.storage.local_root() {
        let path = root.join(&key);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::File::create(&path).await?;
    }
    app.db
        .execute(sql!(
            "INSERT INTO uploads (id, seller_id, length, upload_offset, file_name, content_type, metadata, object_key, backend_state,
                status, created_at, updated_at, expires_at, hash_state)
             VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, 'uploading', $9, $9, $10, '')",
            &id,
            seller_id,
            length_i64,
            &file_name,
            &content_type,
            serde_json::to_string(&meta)?,
            &key,
            &backend_state,
            t,
            t + app.cfg.uploads.expire_hours * 3600
        ))
        .await?;
    let up = find(&app.db, &id).await?.ok_or_else(|| internal("upload vanished"))?;
    if length == 0 {
        // Nothing to wait for: an empty file is complete at once.
        if app.storage.local_root().is_none() {
            app.storage
                .put(&key, crate::storage::bytes_stream(Bytes::new()), &content_type)
                .await
                .map_err(storage_err)?;
        }
        mark_complete(app, &up.id, None, &ResumableSha256::new().finish_hex()).await?;
        return find(&app.db, &id).await?.ok_or_else(|| internal("upload vanished"));
    }
    Ok(up)
}

/// The algorithm and expected digest of an `Upload-Checksum` header.
#[derive(Debug, Clone)]
pub struct Checksum {
    pub algorithm: String,
    pub digest: Vec<u8>,
}

impl Checksum {
    pub fn parse(header: &str) -> ApiResult<Self> {
        let (alg, b64) = header.trim().split_once(' ').ok_or_else(|| {
            bad_request(
                "invalid_checksum",
                "Upload-Checksum must be '<algorithm> <base64 digest>'",
            )
        })?;
        let alg = alg.to_ascii_lowercase();
        if !CHECKSUM_ALGORITHMS.split(',').any(|a| a == alg) {
            return Err(bad_request(
                "unsupported_checksum_algorithm",
                format!("checksum algorithm {alg:?} is not supported; use one of {CHECKSUM_ALGORITHMS}"),
            ));
        }
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad_request("invalid_checksum", "the Upload-Checksum digest is not base64"))?;
        Ok(Self { algorithm: alg, digest })
    }
}

#[derive(Clone)]
enum ChunkHasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl ChunkHasher {
    fn new(c: &Checksum) -> Self {
        if c.algorithm == "sha1" {
            ChunkHasher::Sha1(sha1::Sha1::new())
        } else {
            ChunkHasher::Sha256(sha2::Sha256::new())
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            ChunkHasher::Sha256(h) => h.update(b),
            ChunkHasher::Sha1(h) => h.update(b),
        }
    }
    fn finish(&self) -> Vec<u8> {
        match self.clone() {
            ChunkHasher::Sha256(h) => h.finalize().to_vec(),
            ChunkHasher::Sha1(h) => h.finalize().to_vec(),
        }
    }
}

/// Releases the write lease when dropped (also when the request future is cancelled).
struct Lease {
    app: App,
    id: String,
    token: String,
    released: bool,
}

impl Lease {
    /// Gives the lease back before answering, so the client's next request finds it free.
    async fn release(mut self) -> Result<(), crate::db::DbError> {
        self.released = true;
        self.app
            .db
            .execute(sql!(
                "UPDATE uploads SET lock_token = NULL, locked_until = NULL WHERE id = $1 AND lock_token = $2",
                &self.id,
                &self.token
            ))
            .await
            .map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (app, id, token) = (self.app.clone(), self.id.clone(), self.token.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = app
                    .db
                    .execute(sql!(
                        "UPDATE uploads SET lock_token = NULL, locked_until = NULL WHERE id = $1 AND lock_token = $2",
                        &id,
                        &token
                    ))
                    .await;
            });
        }
    }
}

fn locked() -> ApiError {
    ApiError::new(
        StatusCode::LOCKED,
        "upload_locked",
        "another request is writing to this upload; retry in a few seconds (HEAD gives the current offset)",
    )
}

pub fn offset_mismatch(current: u64) -> ApiError {
    conflict(
        "offset_mismatch",
        format!("Upload-Offset does not match the upload's offset, which is {current}; HEAD the upload and continue from there"),
    )
}

/// Takes the write lease on an upload at `offset` (so a stale offset or a busy upload fails).
async fn take_lease(app: &App, up: &Upload, offset: u64) -> ApiResult<Lease> {
    let token = random_token(12);
    let t = now();
    let n = app
        .db
        .execute(sql!(
            "UPDATE uploads SET lock_token = $2, locked_until = $3
             WHERE id = $1 AND status = 'uploading' AND upload_offset = $4 AND (lock_token IS NULL OR locked_until < $5)",
            &up.id,
            &token,
            t + LEASE_SECS,
            i64::try_from(offset).map_err(internal)?,
            t
        ))
        .await?;
    if n == 1 {
        return Ok(Lease {
            app: app.clone(),
            id: up.id.clone(),
            token,
            released: false,
        });
    }
    let now_row = find(&app.db, &up.id).await?.ok_or_else(|| not_found("upload"))?;
    if now_row.offset() != offset {
        return Err(offset_mismatch(now_row.offset()));
    }
    if now_row.status != "uploading" {
        return Err(conflict("upload_complete", "this upload is already complete"));
    }
    Err(locked())
}

/// The result of a PATCH.
#[derive(Debug)]
pub struct Written {
    pub offset: u64,
    pub complete: bool,
    pub expires_at: i64,
}

/// Why a PATCH body ended early.
enum BodyEnd {
    /// The client went away or stalled: keep what arrived (unless a checksum was asked for).
    Interrupted(String),
    /// More bytes than the upload's length: discard the PATCH.
    TooLong,
}

/// Appends a PATCH body at `offset` (tus core + checksum). `declared` is the Content-Length.
pub async fn write<S, E>(
    app: &App,
    up: &Upload,
    offset: u64,
    declared: Option<u64>,
    checksum: Option<Checksum>,
    body: S,
) -> ApiResult<Written>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    if up.status != "uploading" {
        if offset == up.offset() && declared.unwrap_or(0) == 0 {
            return Ok(Written {
                offset: up.offset(),
                complete: true,
                expires_at: up.expires_at,
            });
        }
        return Err(conflict("upload_complete", "this upload is already complete"));
    }
    if offset != up.offset() {
        return Err(offset_mismatch(up.offset()));
    }
    let remaining = up.len() - up.offset();
    if declared.is_some_and(|n| n > remaining) {
        return Err(too_large(format!(
            "this PATCH would go past the declared Upload-Length ({} bytes; {remaining} remain)",
            up.len()
        )));
    }
    let lease = take_lease(app, up, offset).await?;
    let result = if app.storage.local_root().is_some() {
        write_local(app, up, &lease, checksum, body).await
    } else {
        write_s3(app, up, &lease, checksum, body).await
    };
    lease.release().await?;
    result
}

/// Reads the next chunk, ending on error, end of body, or idleness.
async fn next_chunk<S, E>(body: &mut S) -> Result<Option<Bytes>, String>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
        Err(_) => Err(format!("no data for {} s", IDLE_TIMEOUT.as_secs())),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(b))) => Ok(Some(b)),
    }
}

fn checksum_failed() -> ApiError {
    ApiError::new(
        StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
        "checksum_mismatch",
        "the chunk's Upload-Checksum does not match its bytes; nothing was stored, send the chunk again",
    )
}

async fn write_local<S, E>(
    app: &App,
    up: &Upload,
    lease: &Lease,
    checksum: Option<Checksum>,
    mut body: S,
) -> ApiResult<Written>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let root = app.storage.local_root().ok_or_else(|| internal("not local storage"))?;
    crate::storage::validate_key(&up.object_key).map_err(storage_err)?;
    let path = root.join(&up.object_key);
    let start = up.offset();
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .await?;
    let on_disk = file.metadata().await?.len();
    if on_disk < start {
        return Err(internal(format!(
            "partial file {} has {on_disk} bytes but {start} are recorded",
            path.display()
        )));
    }
    if on_disk > start {
        // Bytes written after the last checkpoint by a writer that died: not ours to keep.
        file.set_len(start).await?;
    }
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
    let mut hasher = ResumableSha256::restore(&up.hash_state).ok_or_else(|| internal("bad hash state"))?;
    let mut chunk_hash = checksum.as_ref().map(ChunkHasher::new);
    let length = up.len();
    let mut offset = start;
    let (mut since_bytes, mut since) = (0u64, Instant::now());
    let ended: Option<BodyEnd> = loop {
        match next_chunk(&mut body).await {
            Ok(None) => break None,
            Err(e) => break Some(BodyEnd::Interrupted(e)),
            Ok(Some(chunk)) => {
                if offset + chunk.len() as u64 > length {
                    break Some(BodyEnd::TooLong);
                }
                hasher.update(&chunk);
                if let Some(h) = chunk_hash.as_mut() {
                    h.update(&chunk);
                }
                out.write_all(&chunk).await?;
                offset += chunk.len() as u64;
                since_bytes += chunk.len() as u64;
                if since_bytes >= CHECKPOINT_BYTES || since.elapsed() >= CHECKPOINT_EVERY {
                    out.flush().await?;
                    if chunk_hash.is_none() {
                        out.get_ref().sync_data().await?;
                        checkpoint(app, up, lease, offset, &hasher).await?;
                    } else {
                        renew(app, up, lease).await?;
                    }
                    (since_bytes, since) = (0, Instant::now());
                }
            }
        }
    };
    out.flush().await?;
    let discard = match &ended {
        Some(BodyEnd::TooLong) => Some(too_large(format!(
            "this PATCH went past the declared Upload-Length ({length} bytes); nothing of it was kept"
        ))),
        Some(BodyEnd::Interrupted(why)) if chunk_hash.is_some() => Some(bad_request(
            "incomplete_body",
            format!("the request body ended early ({why}); with Upload-Checksum nothing of it was kept"),
        )),
        None => match (&chunk_hash, &checksum) {
            (Some(h), Some(c)) if h.finish() != c.digest => Some(checksum_failed()),
            _ => None,
        },
        Some(BodyEnd::Interrupted(_)) => None,
    };
    if let Some(err) = discard {
        let f = out.into_inner();
        f.set_len(start).await?;
        f.sync_data().await?;
        return Err(err);
    }
    out.get_ref().sync_data().await?;
    if offset == length {
        mark_complete(app, &up.id, Some(&lease.token), &hasher.finish_hex()).await?;
        return Ok(Written {
            offset,
            complete: true,
            expires_at: now() + app.cfg.uploads.expire_hours * 3600,
        });
    }
    let expires_at = checkpoint(app, up, lease, offset, &hasher).await?;
    if let Some(BodyEnd::Interrupted(why)) = ended {
        tracing::info!(upload = %up.id, offset, %why, "upload interrupted; kept what arrived");
        return Err(bad_request(
            "incomplete_body",
            format!("the request body ended early ({why}); {offset} bytes are kept, continue from there"),
        ));
    }
    Ok(Written {
        offset,
        complete: false,
        expires_at,
    })
}

/// Records progress under the lease; returns the new expiry.
async fn checkpoint(app: &App, up: &Upload, lease: &Lease, offset: u64, hasher: &ResumableSha256) -> ApiResult<i64> {
    let t = now();
    let expires = t + app.cfg.uploads.expire_hours * 3600;
    let n = app
        .db
        .execute(sql!(
            "UPDATE uploads SET upload_offset = $2, hash_state = $3, locked_until = $4, updated_at = $5, expires_at = $6
             WHERE id = $1 AND lock_token = $7",
            &up.id,
            i64::try_from(offset).map_err(internal)?,
            hasher.save(),
            t + LEASE_SECS,
            t,
            expires,
            &lease.token
        ))
        .await?;
    if n == 0 {
        return Err(locked());
    }
    Ok(expires)
}

async fn renew(app: &App, up: &Upload, lease: &Lease) -> ApiResult<()> {
    let n = app
        .db
        .execute(sql!(
            "UPDATE uploads SET locked_until = $2 WHERE id = $1 AND lock_token = $3",
            &up.id,
            now() + LEASE_SECS,
            &lease.token
        ))
        .await?;
    if n == 0 {
        return Err(locked());
    }
    Ok(())
}

/// Marks an upload complete with its sha256 (and releases the lease).
async fn mark_complete(app: &App, id: &str, token: Option<&str>, sha256: &str) -> ApiResult<()> {
    let t = now();
    app.db
        .execute(sql!(
            "UPDATE uploads SET status = 'complete', upload_offset = length, sha256 = $2, hash_state = '', completed_at = $3,
                updated_at = $3, expires_at = $4, lock_token = NULL, locked_until = NULL
             WHERE id = $1 AND (lock_token IS NULL OR lock_token = $5) AND status IN ('uploading', 'finalizing')",
            id,
            sha256,
            t,
            t + app.cfg.uploads.expire_hours * 3600,
            token.unwrap_or_default()
        ))
        .await?;
    Ok(())
}

fn s3_state(up: &Upload) -> ApiResult<S3State> {
    serde_json::from_str(&up.backend_state).map_err(|e| internal(format!("upload {} backend state: {e}", up.id)))
}

async fn stored_parts(e: &impl Exec, id: &str) -> ApiResult<Vec<PartInfo>> {
    let rows: Vec<(i64, String, i64)> = e
        .fetch_all(sql!(
            "SELECT number, etag, size FROM upload_parts WHERE upload_id = $1 ORDER BY number",
            id
        ))
        .await?;
    rows.into_iter()
        .map(|(n, etag, size)| {
            Ok(PartInfo {
                number: u16::try_from(n).map_err(internal)?,
                etag,
                size: u64::try_from(size).map_err(internal)?,
            })
        })
        .collect()
}

async fn write_s3<S, E>(
    app: &App,
    up: &Upload,
    lease: &Lease,
    checksum: Option<Checksum>,
    mut body: S,
) -> ApiResult<Written>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let st = s3_state(up)?;
    let part_size = st.part_size;
    let stored = stored_parts(&app.db, &up.id).await?;
    let parts_before = stored.len() as u64;
    let in_parts = parts_before * part_size;
    let start = up.offset();
    let tail_len = start
        .checked_sub(in_parts)
        .ok_or_else(|| internal("offset behind stored parts"))?;
    let mut buf = BytesMut::with_capacity(usize::try_from(part_size).map_err(internal)? + 256 * 1024);
    if tail_len > 0 {
        let got = app
            .storage
            .get(&tail_key(&up.object_key, parts_before), Some(0..tail_len))
            .await
            .map_err(storage_err)?;
        let bytes = crate::storage::collect(got.body).await?;
        if bytes.len() as u64 != tail_len {
            return Err(internal(format!(
                "tail of {} has {} bytes, expected {tail_len}",
                up.id,
                bytes.len()
            )));
        }
        buf.extend_from_slice(&bytes);
    }
    // The hash covers exactly the bytes in stored parts; the tail is hashed as it becomes a part.
    let mut hasher = ResumableSha256::restore(&up.hash_state).ok_or_else(|| internal("bad hash state"))?;
    let mut chunk_hash = checksum.as_ref().map(ChunkHasher::new);
    let length = up.len();
    let mut offset = start;
    let mut new_parts: Vec<PartInfo> = Vec::new();
    let mut since = Instant::now();
    let ended: Option<BodyEnd> = loop {
        match next_chunk(&mut body).await {
            Ok(None) => break None,
            Err(e) => break Some(BodyEnd::Interrupted(e)),
            Ok(Some(chunk)) => {
                if offset + chunk.len() as u64 > length {
                    break Some(BodyEnd::TooLong);
                }
                if let Some(h) = chunk_hash.as_mut() {
                    h.update(&chunk);
                }
                offset += chunk.len() as u64;
                buf.extend_from_slice(&chunk);
                while buf.len() as u64 >= part_size {
                    let part = buf.split_to(usize::try_from(part_size).map_err(internal)?).freeze();
                    hasher.update(&part);
                    let number = u16::try_from(parts_before + new_parts.len() as u64 + 1).map_err(internal)?;
                    let info = app
                        .storage
                        .multipart_put_part(&up.object_key, &st.multipart_id, number, part)
                        .await
                        .map_err(storage_err)?;
                    if chunk_hash.is_none() {
                        // Durable at a part boundary: record it now, so a crash loses at most a part.
                        record_parts(
                            app,
                            up,
                            lease,
                            std::slice::from_ref(&info),
                            offset - buf.len() as u64,
                            &hasher,
                        )
                        .await?;
                        since = Instant::now();
                    }
                    new_parts.push(info);
                }
                if since.elapsed() >= CHECKPOINT_EVERY {
                    renew(app, up, lease).await?;
                    since = Instant::now();
                }
            }
        }
    };
    let discard = match &ended {
        Some(BodyEnd::TooLong) => Some(too_large(format!(
            "this PATCH went past the declared Upload-Length ({length} bytes); nothing of it was kept"
        ))),
        Some(BodyEnd::Interrupted(why)) if chunk_hash.is_some() => Some(bad_request(
            "incomplete_body",
            format!("the request body ended early ({why}); with Upload-Checksum nothing of it was kept"),
        )),
        None => match (&chunk_hash, &checksum) {
            (Some(h), Some(c)) if h.finish() != c.digest => Some(checksum_failed()),
            _ => None,
        },
        Some(BodyEnd::Interrupted(_)) => None,
    };
    if let Some(err) = discard {
        // Parts sent during this PATCH are not recorded; later writes overwrite their numbers.
        return Err(err);
    }
    let parts_now = parts_before + new_parts.len() as u64;
    if checksum.is_some() && !new_parts.is_empty() {
        record_parts(app, up, lease, &new_parts, parts_now * part_size, &hasher).await?;
    }
    if offset == length {
        let mut last = Vec::new();
        if !buf.is_empty() {
            let part = buf.split().freeze();
            hasher.update(&part);
            let number = u16::try_from(parts_now + 1).map_err(internal)?;
            last.push(
                app.storage
                    .multipart_put_part(&up.object_key, &st.multipart_id, number, part)
                    .await
                    .map_err(storage_err)?,
            );
        }
        // Recorded as finalizing first: if we die before S3 completes, the next request finishes.
        let tx = app.db.begin().await?;
        insert_parts(&tx, &up.id, &last).await?;
        let n = tx
            .execute(sql!(
                "UPDATE uploads SET status = 'finalizing', upload_offset = length, sha256 = $2, updated_at = $3
                 WHERE id = $1 AND lock_token = $4",
                &up.id,
                hasher.finish_hex(),
                now(),
                &lease.token
            ))
            .await?;
        if n == 0 {
            return Err(locked());
        }
        tx.commit().await?;
        for k in [parts_before, parts_now] {
            let _ = app.storage.delete(&tail_key(&up.object_key, k)).await;
        }
        let up = find(&app.db, &up.id).await?.ok_or_else(|| not_found("upload"))?;
        let done = finish_s3_completion(app, up).await?;
        return Ok(Written {
            offset,
            complete: true,
            expires_at: done.expires_at,
        });
    }
    // Keep what did not fill a part as the tail object, then record the offset.
    if !buf.is_empty() {
        app.storage
            .put(
                &tail_key(&up.object_key, parts_now),
                crate::storage::bytes_stream(buf.split().freeze()),
                "application/octet-stream",
            )
            .await
            .map_err(storage_err)?;
    }
    let expires_at = checkpoint(app, up, lease, offset, &hasher).await?;
    if parts_now != parts_before {
        let _ = app.storage.delete(&tail_key(&up.object_key, parts_before)).await;
    }
    if let Some(BodyEnd::Interrupted(why)) = ended {
        tracing::info!(upload = %up.id, offset, %why, "upload interrupted; kept what arrived");
        return Err(bad_request(
            "incomplete_body",
            format!("the request body ended early ({why}); {offset} bytes are kept, continue from there"),
        ));
    }
    Ok(Written {
        offset,
        complete: false,
        expires_at,
    })
}

async fn insert_parts(e: &impl Exec, id: &str, parts: &[PartInfo]) -> ApiResult<()> {
    for p in parts {
        e.execute(sql!(
            "INSERT INTO upload_parts (upload_id, number, etag, size) VALUES ($1, $2, $3, $4)
             ON CONFLICT (upload_id, number) DO UPDATE SET etag = excluded.etag, size = excluded.size",
            id,
            i64::from(p.number),
            &p.etag,
            i64::try_from(p.size).map_err(internal)?
        ))
        .await?;
    }
    Ok(())
}

/// Records stored parts with the offset and hash they complete, in one transaction.
async fn record_parts(
    app: &App,
    up: &Upload,
    lease: &Lease,
    parts: &[PartInfo],
    offset: u64,
    hasher: &ResumableSha256,
) -> ApiResult<()> {
    let t = now();
    let tx = app.db.begin().await?;
    insert_parts(&tx, &up.id, parts).await?;
    let n = tx
        .execute(sql!(
            "UPDATE uploads SET upload_offset = $2, hash_state = $3, locked_until = $4, updated_at = $5, expires_at = $6
             WHERE id = $1 AND lock_token = $7",
            &up.id,
            i64::try_from(offset).map_err(internal)?,
            hasher.save(),
            t + LEASE_SECS,
            t,
            t + app.cfg.uploads.expire_hours * 3600,
            &lease.token
        ))
        .await?;
    if n == 0 {
        return Err(locked());
    }
    tx.commit().await?;
    Ok(())
}

/// Completes the S3 multipart upload of a `finalizing` upload (idempotent: a second call
/// after S3 already completed it checks the object and records completion).
async fn finish_s3_completion(app: &App, up: Upload) -> ApiResult<Upload> {
    if up.status != "finalizing" {
        return Ok(up);
    }
    let st = s3_state(&up)?;
    let parts = stored_parts(&app.db, &up.id).await?;
    match app
        .storage
        .multipart_complete(&up.object_key, &st.multipart_id, &parts)
        .await
    {
        Ok(()) => {}
        Err(e) => {
            // Already completed by an earlier attempt? Then the object is there, whole.
            let whole = app.storage.head(&up.object_key).await.is_ok_and(|m| m.size == up.len());
            if !whole {
                return Err(storage_err(e));
            }
        }
    }
    let t = now();
    app.db
        .execute(sql!(
            "UPDATE uploads SET status = 'complete', hash_state = '', completed_at = $2, updated_at = $2, expires_at = $3,
                lock_token = NULL, locked_until = NULL
             WHERE id = $1 AND status = 'finalizing'",
            &up.id,
            t,
            t + app.cfg.uploads.expire_hours * 3600
        ))
        .await?;
    app.db
        .execute(sql!("DELETE FROM upload_parts WHERE upload_id = $1", &up.id))
        .await?;
    find(&app.db, &up.id).await?.ok_or_else(|| not_found("upload"))
}

/// Removes an upload and whatever it stored (tus termination, expiry). A running write keeps
/// its lease: 423 then.
pub async fn terminate(app: &App, up: &Upload) -> ApiResult<()> {
    let t = now();
    let n = app
        .db
        .execute(sql!(
            "DELETE FROM uploads WHERE id = $1 AND (lock_token IS NULL OR locked_until < $2)",
            &up.id,
            t
        ))
        .await?;
    if n == 0 {
        return Err(locked());
    }
    discard_storage(app, up).await;
    Ok(())
}

/// Best-effort removal of an upload's bytes (staging object or partial file, S3 parts, tails).
async fn discard_storage(app: &App, up: &Upload) {
    if up.status == "used" {
        return;
    }
    if app.storage.local_root().is_none() {
        if let Ok(st) = s3_state(up) {
            if !st.multipart_id.is_empty() && up.status != "complete" {
                if let Err(e) = app.storage.multipart_abort(&up.object_key, &st.multipart_id).await {
                    tracing::warn!(upload = %up.id, error = %e, "could not abort the multipart upload");
                }
            }
            if let Some(parts) = up.offset().checked_div(st.part_size) {
                for k in [parts.saturating_sub(1), parts] {
                    let _ = app.storage.delete(&tail_key(&up.object_key, k)).await;
                }
            }
        }
    }
    if let Err(e) = app.storage.delete(&up.object_key).await {
        tracing::warn!(upload = %up.id, error = %e, "could not delete upload data");
    }
}

/// Deletes expired uploads (unfinished, or finished and never published) and their bytes,
/// including S3 multipart uploads. Run by the hourly housekeeping job.
pub async fn cleanup_expired(app: &App) -> anyhow::Result<usize> {
    let t = now();
    let rows: Vec<Upload> = app
        .db
        .fetch_all(sql!(
            format!(
                "SELECT {UPLOAD_COLS} FROM uploads WHERE status IN ('uploading', 'finalizing', 'complete') AND expires_at < $1
                 AND (lock_token IS NULL OR locked_until < $1) ORDER BY expires_at LIMIT 500"
            ),
            t
        ))
        .await?;
    let mut removed = 0;
    for up in rows {
        match terminate(app, &up).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(upload = %up.id, error = ?e, "expired upload not removed"),
        }
    }
    // Rows of published uploads are only history; keep them a month.
    app.db
        .execute(sql!(
            "DELETE FROM uploads WHERE status = 'used' AND updated_at < $1",
            t - 30 * 86_400
        ))
        .await?;
    Ok(removed)
}

/// A complete upload, about to become a version file.
pub struct Attached {
    pub upload_id: String,
    pub staging_key: String,
    pub file: NewFile,
}

/// Copies the named complete uploads of `seller_id` to the version's keys, each key added to
/// `stored` before its copy starts (so a failed publish can remove what it wrote). Nothing in
/// the database changes here; [`mark_used`] does that inside the version's transaction. The
/// caller holds the version's claim (`versions::claim_version`): no other publish writes
/// these keys meanwhile.
pub async fn attach_to_version(
    app: &App,
    seller_id: &str,
    product_id: &str,
    version: &str,
    refs: &[String],
    stored: &mut Vec<String>,
) -> ApiResult<Vec<Attached>> {
    if refs.is_empty() {
        return Err(unprocessable("no_files", "name at least one completed upload").field("uploads"));
    }
    let mut out: Vec<Attached> = Vec::new();
    for r in refs {
        // Accept the upload's URL or its bare id.
        let id = r.trim().trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        let up = match find(&app.db, id).await?.filter(|u| u.seller_id == seller_id) {
            Some(u) if u.status == "finalizing" => finish_s3_completion(app, u).await?,
            Some(u) => u,
            None => {
                return Err(
                    unprocessable("invalid_upload", format!("{r} is not a completed upload of yours")).field("uploads"),
                )
            }
        };
        if up.status != "complete" || up.expired(now()) {
            let why = match up.status.as_str() {
                "used" => "was already published in a version",
                "uploading" => "is not finished yet",
                _ => "has expired",
            };
            return Err(unprocessable("invalid_upload", format!("upload {r} {why}")).field("uploads"));
        }
        if out.iter().any(|a| a.upload_id == up.id) {
            return Err(unprocessable("duplicate_upload", format!("upload {r} is named twice")).field("uploads"));
        }
        if out.iter().any(|a| a.file.name == up.file_name) {
            return Err(unprocessable(
                "duplicate_file_name",
                format!(
                    "two uploads are both named {:?}; a version's files need distinct names",
                    up.file_name
                ),
            )
            .field("uploads"));
        }
        out.push(Attached {
            upload_id: up.id.clone(),
            staging_key: up.object_key.clone(),
            file: NewFile {
                name: up.file_name.clone(),
                object_key: crate::catalog::original_key(seller_id, product_id, version, &up.file_name),
                size: up.length.unwrap_or(0),
                sha256: up.sha256.clone().unwrap_or_default(),
                content_type: up.content_type.clone(),
            },
        });
    }
    for a in &out {
        stored.push(a.file.object_key.clone());
        app.storage
            .copy(&a.staging_key, &a.file.object_key)
            .await
            .map_err(storage_err)?;
    }
    Ok(out)
}

/// Marks attached uploads used by `version_id`, inside the version's transaction. If one was
/// published concurrently by another request, this fails and the version rolls back.
pub async fn mark_used(tx: &Tx, attached: &[Attached], version_id: &str) -> ApiResult<()> {
    for a in attached {
        let n = tx
            .execute(sql!(
                "UPDATE uploads SET status = 'used', version_id = $2, updated_at = $3 WHERE id = $1 AND status = 'complete'",
                &a.upload_id,
                version_id,
                now()
            ))
            .await?;
        if n == 0 {
            return Err(conflict(
                "upload_already_used",
                format!("upload {} was published by another request just now", a.upload_id),
            )
            .field("uploads"));
        }
    }
    Ok(())
}

/// After the version committed: the staging copies are no longer needed.
pub async fn drop_staging(app: &App, attached: &[Attached]) {
    for a in attached {
        if let Err(e) = app.storage.delete(&a.staging_key).await {
            tracing::warn!(upload = %a.upload_id, error = %e, "could not delete a published upload's staging copy");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_parses_and_refuses_garbage() {
        let m = parse_metadata("filename Ym9vay5wZGY=,is_confidential, filetype YXBwbGljYXRpb24vcGRm").unwrap();
        assert_eq!(m["filename"], "book.pdf");
        assert_eq!(m["is_confidential"], "");
        assert_eq!(m["filetype"], "application/pdf");
        assert!(parse_metadata("filename ***").is_err());
        assert!(parse_metadata("a YQ==,a YQ==").is_err());
    }

    #[test]
    fn file_names_are_sanitised_never_paths() {
        assert_eq!(sanitize_file_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\boot.ini").unwrap(), "boot.ini");
        assert_eq!(sanitize_file_name("a\u{0}b\nc.pdf").unwrap(), "abc.pdf");
        assert_eq!(sanitize_file_name("...hidden").unwrap(), "hidden");
        assert!(sanitize_file_name("..").is_err());
        assert!(sanitize_file_name("/").is_err());
        assert!(sanitize_file_name(" \u{7} ").is_err());
        let long = format!("{}.zip", "é".repeat(300));
        let s = sanitize_file_name(&long).unwrap();
        assert!(s.len() <= 200 && s.ends_with(".zip"), "{s}");
    }

    #[test]
    fn part_sizes_keep_under_s3_part_limits() {
        assert_eq!(part_size_for(1), MIN_S3_PART);
        assert_eq!(part_size_for(10 << 30), MIN_S3_PART);
        let huge = 5u64 << 40;
        assert!(huge.div_ceil(part_size_for(huge)) <= 9_000);
    }
}
