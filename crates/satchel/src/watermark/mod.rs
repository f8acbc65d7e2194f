//! Watermarks: per-buyer marks that trace a leaked file back to its order.
//!
//! A marked file is always *the seller's original up to a cut point, followed by a small
//! per-buyer tail* — a PDF incremental update ([`pdf`]) or an appended ZIP entry with a
//! rewritten central directory ([`zip`]). So no full per-buyer copy is ever stored: the tail
//! (a few KiB) lives in object storage next to the original, and delivery streams
//! `original[..cut] ++ tail`, ranges included ([`Composite`]).
//!
//! Every mark carries a token `wm1.{order_id}.{grant_id}.{kid}.{mac}`, MAC-signed with the
//! store's download keys, so `satchel trace FILE` can name the order and nobody can forge a
//! mark that blames someone else. Tails are prepared by a job enqueued in the fulfillment
//! transaction (never in the way of the receipt) and, if a buyer is faster than the queue,
//! computed on first download by the same code.

pub mod pdf;
pub mod zip;

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::db::models::FileRow;
use crate::db::Exec;
use crate::ids::now;
use crate::keys::Keys;
use crate::sql;
use crate::storage::{ByteStream, DynStorage};

#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("cannot mark this file: {0}")]
    Unsupported(&'static str),
    #[error("cannot read this file: {0}")]
    Malformed(String),
}

/// What a mark says, and the signed token that proves it.
#[derive(Debug, Clone)]
pub struct Mark {
    pub order_id: String,
    pub grant_id: String,
    pub email: String,
    pub store_name: String,
    pub token: String,
}

impl Mark {
    pub fn new(keys: &Keys, order_id: &str, grant_id: &str, email: &str, store_name: &str) -> Self {
        Self {
            order_id: order_id.to_string(),
            grant_id: grant_id.to_string(),
            email: email.to_string(),
            store_name: store_name.to_string(),
            token: crate::delivery::sign(keys, "wm1", &[order_id, grant_id]),
        }
    }

    /// The visible line: who this copy was sold to.
    pub fn stamp_text(&self) -> String {
        format!(
            "Licensed to {} - order {} - {}. Please do not share.",
            self.email, self.order_id, self.store_name
        )
    }

    /// The text of the license file added to archives.
    pub fn license_text(&self, product: &str) -> String {
        format!(
            "{product}\r\n\r\nThis copy was sold by {} to {} (order {}).\r\n\
             It is licensed for their personal use; please do not share it.\r\n\r\nMark: {}\r\n",
            self.store_name, self.email, self.order_id, self.token
        )
    }
}

/// The file formats we can mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pdf,
    Zip,
}

/// Recognises a file by its first bytes (names and content types can lie).
pub fn kind_of(head: &[u8]) -> Option<Kind> {
    if head.starts_with(b"%PDF-") {
        Some(Kind::Pdf)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Kind::Zip)
    } else {
        None
    }
}

/// Signed marks found in `bytes` (order id, grant id), newest first, forged ones dropped.
pub fn find_marks(keys: &Keys, bytes: &[u8]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&bytes[i..], b"wm1.") {
        let start = i + pos;
        let end = bytes[start..]
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b"._-".contains(&b)))
            .map_or(bytes.len(), |n| start + n);
        if let Ok(token) = std::str::from_utf8(&bytes[start..end]) {
            if let Some(f) = crate::delivery::verify(keys, "wm1", token, 2) {
                let m = (f[0].to_string(), f[1].to_string());
                if !found.contains(&m) {
                    found.push(m);
                }
            }
        }
        i = start + 4;
    }
    found.reverse();
    found
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Marks in a file whose streams were re-compressed by another tool: looks inside the
/// PDF's decoded page contents and information dictionary too.
pub fn find_marks_deep(keys: &Keys, bytes: &[u8]) -> Vec<(String, String)> {
    let found = find_marks(keys, bytes);
    if !found.is_empty() || kind_of(bytes) != Some(Kind::Pdf) {
        return found;
    }
    let Ok(doc) = lopdf::Document::load_mem(bytes) else {
        return found;
    };
    let mut text = Vec::new();
    if let Ok(info) = doc.trailer.get(b"Info").and_then(|o| doc.dereference(o)) {
        if let Ok(d) = info.1.as_dict() {
            if let Ok(s) = d.get(b"SatchelMark").and_then(lopdf::Object::as_str) {
                text.extend_from_slice(s);
                text.push(b' ');
            }
        }
    }
    for page in doc.get_pages().into_values() {
        if let Ok(c) = doc.get_page_content(page) {
            text.extend_from_slice(&c);
            text.push(b' ');
        }
    }
    find_marks(keys, &text)
}

/// A buyer's marked file: `original[..cut]` then `tail`.
#[derive(Debug, Clone)]
pub struct Composite {
    pub object_key: String,
    pub cut: u64,
    pub tail: Bytes,
    /// Distinguishes this buyer's bytes from the original's in `ETag`s.
    pub tag: String,
}

impl Composite {
    pub fn size(&self) -> u64 {
        self.cut + self.tail.len() as u64
    }

    /// The bytes of `range` (end exclusive) of the composite, streamed.
    pub async fn stream(
        &self,
        storage: &DynStorage,
        range: Range<u64>,
    ) -> Result<ByteStream, crate::storage::StorageError> {
        let (start, end) = (range.start.min(self.size()), range.end.min(self.size()));
        let tail_part = |from: u64, to: u64| {
            let a = usize::try_from(from - self.cut).unwrap_or(0);
            let b = usize::try_from(to - self.cut).unwrap_or(0);
            self.tail.slice(a..b)
        };
        if start >= self.cut {
            return Ok(crate::storage::bytes_stream(tail_part(start, end)));
        }
        let head = storage
            .get(&self.object_key, Some(start..end.min(self.cut)))
            .await?
            .body;
        if end <= self.cut {
            return Ok(head);
        }
        let rest = tail_part(self.cut, end);
        Ok(Box::pin(head.chain(futures::stream::once(async move { Ok(rest) }))))
    }
}

/// Where a buyer's tail is kept: beside the original, under `marks/`.
fn tail_key(file: &FileRow, grant_id: &str) -> String {
    let dir = file
        .object_key
        .rsplit_once("/original/")
        .map_or(file.object_key.as_str(), |(d, _)| d);
    format!("{dir}/marks/{grant_id}/{}.tail", file.id)
}

#[derive(sqlx::FromRow)]
struct MarkRow {
    status: String,
    cut: i64,
    tail_key: String,
}

#[derive(sqlx::FromRow)]
struct GrantInfo {
    order_id: String,
    email: String,
    watermark_policy: String,
    store_name: String,
    title: String,
}

async fn grant_info(app: &App, grant_id: &str) -> anyhow::Result<Option<GrantInfo>> {
    Ok(app
        .db
        .fetch_optional(sql!(
            "SELECT g.order_id, g.email, p.watermark_policy, s.store_name, p.title
             FROM download_grants g JOIN products p ON p.id = g.product_id JOIN sellers s ON s.id = p.seller_id
             WHERE g.id = $1",
            grant_id
        ))
        .await?)
}

async fn read_all(storage: &DynStorage, key: &str, range: Option<Range<u64>>) -> anyhow::Result<Vec<u8>> {
    let got = storage.get(key, range).await?;
    Ok(crate::storage::collect(got.body).await?)
}

/// Computes the tail of `file` for `mark`: `(cut, tail)`.
async fn compute(
    storage: &DynStorage,
    file: &FileRow,
    mark: &Mark,
    product: &str,
) -> Result<(u64, Vec<u8>), anyhow::Error> {
    let size = u64::try_from(file.size).unwrap_or(0);
    let head = read_all(storage, &file.object_key, Some(0..size.min(8))).await?;
    match kind_of(&head) {
        Some(Kind::Pdf) => {
            if size > pdf::MAX_PDF_BYTES as u64 {
                return Err(WatermarkError::Unsupported("PDF larger than 512 MiB").into());
            }
            let original = read_all(storage, &file.object_key, None).await?;
            let tail = tokio::task::spawn_blocking({
                let mark = mark.clone();
                move || pdf::overlay(&original, &mark)
            })
            .await??;
            Ok((size, tail))
        }
        Some(Kind::Zip) => {
            let window = zip::tail_window(size);
            let end = read_all(storage, &file.object_key, Some(size - window..size)).await?;
            let dir = zip::locate(&end, size)?;
            if dir.cd_size > 64 * 1024 * 1024 {
                return Err(WatermarkError::Unsupported("central directory larger than 64 MiB").into());
            }
            let cd = read_all(
                storage,
                &file.object_key,
                Some(dir.cd_offset..dir.cd_offset + dir.cd_size),
            )
            .await?;
            let body = mark.license_text(product);
            let comment = format!("Licensed to {} - {}", mark.email, mark.token);
            Ok((
                dir.cd_offset,
                zip::overlay(&dir, &cd, "LICENSE-satchel.txt", body.as_bytes(), &comment, now()),
            ))
        }
        None => Err(WatermarkError::Unsupported("only PDF and ZIP-based files carry marks for now").into()),
    }
}

/// The buyer's marked version of `file`, preparing it when needed; `None` when the
/// product is not watermarked or the file cannot carry a mark (it is then delivered as is,
/// and the reason is recorded for the seller).
pub async fn composite(app: &App, grant_id: &str, file: &FileRow) -> anyhow::Result<Option<Composite>> {
    let Some(info) = grant_info(app, grant_id).await? else {
        return Ok(None);
    };
    if info.watermark_policy == "none" {
        return Ok(None);
    }
    let row: Option<MarkRow> = app
        .db
        .fetch_optional(sql!(
            "SELECT status, cut, tail_key FROM watermarks WHERE grant_id = $1 AND file_id = $2",
            grant_id,
            &file.id
        ))
        .await?;
    let (cut, tail_key) = match row {
        Some(r) if r.status == "ready" => (u64::try_from(r.cut).unwrap_or(0), r.tail_key),
        Some(r) if r.status == "unsupported" => return Ok(None),
        _ => match prepare(app, grant_id, file, &info).await? {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    let tail = Bytes::from(read_all(&app.storage, &tail_key, None).await?);
    Ok(Some(Composite {
        object_key: file.object_key.clone(),
        cut,
        tag: format!(
            "{}-{}",
            &file.sha256[..file.sha256.len().min(16)],
            &crate::ids::hash_secret(&tail_key)[..16]
        ),
        tail,
    }))
}

/// Computes and stores the tail for one file of a grant (idempotent: the row is keyed by
/// grant and file, and a second writer's identical result simply replaces the first).
async fn prepare(app: &App, grant_id: &str, file: &FileRow, info: &GrantInfo) -> anyhow::Result<Option<(u64, String)>> {
    let mark = Mark::new(&app.keys, &info.order_id, grant_id, &info.email, &info.store_name);
    let key = tail_key(file, grant_id);
    let t = now();
    match compute(&app.storage, file, &mark, &info.title).await {
        Ok((cut, tail)) => {
            let len = i64::try_from(tail.len()).unwrap_or(i64::MAX);
            app.storage
                .put(&key, crate::storage::bytes_stream(tail), "application/octet-stream")
                .await?;
            app.db
                .execute(sql!(
                    "INSERT INTO watermarks (grant_id, file_id, status, cut, tail_key, tail_size, detail, created_at)
                     VALUES ($1, $2, 'ready', $3, $4, $5, '', $6)
                     ON CONFLICT (grant_id, file_id) DO UPDATE SET status = 'ready', cut = excluded.cut,
                        tail_key = excluded.tail_key, tail_size = excluded.tail_size, detail = '', created_at = excluded.created_at",
                    grant_id,
                    &file.id,
                    i64::try_from(cut).unwrap_or(0),
                    &key,
                    len,
                    t
                ))
                .await?;
            Ok(Some((cut, key)))
        }
        Err(e) if e.downcast_ref::<WatermarkError>().is_some() => {
            tracing::warn!(grant_id, file = %file.name, error = %e, "file delivered without a watermark");
            app.db
                .execute(sql!(
                    "INSERT INTO watermarks (grant_id, file_id, status, cut, tail_key, tail_size, detail, created_at)
                     VALUES ($1, $2, 'unsupported', 0, '', 0, $3, $4)
                     ON CONFLICT (grant_id, file_id) DO UPDATE SET status = 'unsupported', detail = excluded.detail",
                    grant_id,
                    &file.id,
                    e.to_string(),
                    t
                ))
                .await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The job enqueued at fulfillment for every grant of a watermarked product.
#[derive(Debug, Serialize, Deserialize)]
pub struct PrepareMarks {
    pub grant_id: String,
}

impl crate::jobs::Job for PrepareMarks {
    const KIND: &'static str = "watermark.prepare";
}

/// Prepares the marked copies of every file of the grant's current version.
pub async fn run_prepare(app: App, job: PrepareMarks) -> anyhow::Result<()> {
    let files: Vec<FileRow> = app
        .db
        .fetch_all(sql!(
            "SELECT f.id, f.product_id, f.version_id, f.name, f.object_key, f.size, f.sha256, f.content_type, f.created_at
             FROM download_grants g JOIN products p ON p.id = g.product_id JOIN files f ON f.version_id = p.current_version_id
             WHERE g.id = $1 AND p.watermark_policy <> 'none' ORDER BY f.name",
            &job.grant_id
        ))
        .await?;
    for f in &files {
        composite(&app, &job.grant_id, f).await?;
    }
    Ok(())
}

/// What `satchel trace` reports about a mark.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Traced {
    pub order_id: String,
    pub email: String,
    pub status: String,
    pub product: String,
}

pub async fn describe(e: &impl Exec, order_id: &str, grant_id: &str) -> anyhow::Result<Option<Traced>> {
    Ok(e.fetch_optional(sql!(
        "SELECT o.id AS order_id, o.email, o.status, p.title AS product
         FROM download_grants g JOIN orders o ON o.id = g.order_id JOIN products p ON p.id = g.product_id
         WHERE g.id = $1 AND o.id = $2",
        grant_id,
        order_id
    ))
    .await?)
}
