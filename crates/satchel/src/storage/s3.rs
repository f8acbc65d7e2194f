//! S3-compatible storage (AWS S3, R2, MinIO, Garage…): `rusty-s3` signs, `reqwest` carries.
//!
//! Every request is a SigV4 presigned URL, which keeps this file small and lets the same
//! code hand a URL to a buyer's browser. Uploads of unknown length buffer one 8 MiB part at
//! a time (bounded memory) and switch to multipart once more than one part is needed.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use rusty_s3::actions::{CreateMultipartUpload, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use sha2::{Digest, Sha256};

use super::{validate_key, ByteStream, GetResult, ObjectMeta, PartInfo, PutResult, Storage, StorageError};

const PART_SIZE: usize = 8 * 1024 * 1024;
const SIGN_TTL: Duration = Duration::from_secs(600);
/// Largest object S3 copies in one `CopyObject`; bigger ones are copied part by part.
pub const COPY_SINGLE_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Part size of a multipart server-side copy.
pub const COPY_PART: u64 = 1024 * 1024 * 1024;

/// Characters kept as they are in `x-amz-copy-source` (S3 wants the key URL-encoded, `/` kept).
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub struct S3Storage {
    bucket: Bucket,
    creds: Credentials,
    http: reqwest::Client,
}

fn remote(e: impl std::fmt::Display) -> StorageError {
    StorageError::Remote(e.to_string())
}

impl S3Storage {
    /// A presigned GET as if signed at `at` (tests prove expired URLs are refused).
    pub fn presign_get_signed_at(&self, key: &str, ttl: Duration, at: time::OffsetDateTime) -> String {
        self.bucket
            .get_object(Some(&self.creds), key)
            .sign_with_time(ttl, &at)
            .to_string()
    }

    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        path_style: bool,
        key: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        let style = if path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            url::Url::parse(endpoint)?,
            style,
            bucket.to_string(),
            region.to_string(),
        )?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            bucket,
            creds: Credentials::new(key, secret),
            http,
        })
    }

    /// Creates the bucket if it does not exist (used by tests and `satchel migrate`).
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        let url = self.bucket.head_bucket(Some(&self.creds)).sign(SIGN_TTL);
        let resp = self.http.head(url).send().await.map_err(remote)?;
        if resp.status().is_success() {
            return Ok(());
        }
        let url = self.bucket.create_bucket(&self.creds).sign(SIGN_TTL);
        let resp = self.http.put(url).send().await.map_err(remote)?;
        check(resp, "create bucket").await.map(|_| ())
    }

    fn copy_source(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            self.bucket.name(),
            percent_encoding::utf8_percent_encode(key, COPY_SOURCE)
        )
    }

    /// Server-side copy: one `CopyObject` up to `single_max` bytes, else a multipart upload
    /// whose parts are `UploadPartCopy` ranges of `part` bytes. No byte passes through us.
    pub async fn copy_sized(
        &self,
        src: &str,
        dst: &str,
        size: u64,
        single_max: u64,
        part: u64,
    ) -> Result<(), StorageError> {
        validate_key(src)?;
        validate_key(dst)?;
        let source = self.copy_source(src);
        if size <= single_max {
            let mut action = self.bucket.put_object(Some(&self.creds), dst);
            action.headers_mut().insert("x-amz-copy-source", source.clone());
            let url = action.sign(SIGN_TTL);
            let resp = self
                .http
                .put(url)
                .header("x-amz-copy-source", &source)
                .send()
                .await
                .map_err(remote)?;
            let text = check(resp, src).await?.text().await.map_err(remote)?;
            // S3 can answer 200 and report the failure in the body.
            if text.contains("<Error>") {
                return Err(StorageError::Remote(format!(
                    "copy {src} → {dst}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
            return Ok(());
        }
        let part = part.max(super::MIN_PART_SIZE);
        let upload_id = self.multipart_start(dst).await?;
        let result: Result<Vec<PartInfo>, StorageError> = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            while start < size {
                let end = (start + part).min(size);
                let number = u16::try_from(parts.len() + 1).map_err(|_| remote("more than 65535 parts"))?;
                let range = format!("bytes={}-{}", start, end - 1);
                let mut action = self.bucket.upload_part(Some(&self.creds), dst, number, &upload_id);
                action.headers_mut().insert("x-amz-copy-source", source.clone());
                action.headers_mut().insert("x-amz-copy-source-range", range.clone());
                let url = action.sign(SIGN_TTL);
                let resp = self
                    .http
                    .put(url)
                    .header("x-amz-copy-source", &source)
                    .header("x-amz-copy-source-range", &range)
                    .send()
                    .await
                    .map_err(remote)?;
                let text = check(resp, src).await?.text().await.map_err(remote)?;
                let etag = xml_value(&text, "ETag")
                    .ok_or_else(|| remote(format!("upload part copy: no ETag in {text:.200}")))?;
                parts.push(PartInfo {
                    number,
                    etag: etag.replace("&quot;", "\""),
                    size: end - start,
                });
                start = end;
            }
            Ok(parts)
        }
        .await;
        match result {
            Ok(parts) => self.multipart_complete(dst, &upload_id, &parts).await,
            Err(e) => {
                let _ = self.multipart_abort(dst, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn put_single(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StorageError> {
        let url = self.bucket.put_object(Some(&self.creds), key).sign(SIGN_TTL);
        let resp = self
            .http
            .put(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map_err(remote)?;
        check(resp, key).await.map(|_| ())
    }
}

async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, StorageError> {
    let status = resp.status();
    if status.is_success() || status.as_u16() == 206 {
        return Ok(resp);
    }
    if status.as_u16() == 404 {
        return Err(StorageError::NotFound(what.to_string()));
    }
    if status.as_u16() == 416 {
        return Err(StorageError::RangeNotSatisfiable);
    }
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(300).collect();
    Err(StorageError::Remote(format!("{what}: HTTP {status}: {snippet}")))
}

/// The text of the first `<tag>…</tag>` in an XML answer.
fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_string())
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn last_modified(resp: &reqwest::Response) -> i64 {
    resp.headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or_default())
        .unwrap_or_default()
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &str, mut body: ByteStream, content_type: &str) -> Result<PutResult, StorageError> {
        validate_key(key)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = BytesMut::with_capacity(PART_SIZE);
        let mut upload: Option<(String, Vec<PartInfo>)> = None;
        let outcome: Result<(), StorageError> = async {
            loop {
                let next = body.next().await;
                let done = next.is_none();
                if let Some(chunk) = next {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                    buf.extend_from_slice(&chunk);
                }
                while buf.len() >= PART_SIZE || (done && upload.is_some() && !buf.is_empty()) {
                    let take = buf.len().min(PART_SIZE);
                    let part = buf.split_to(take).freeze();
                    if upload.is_none() {
                        upload = Some((self.multipart_start(key).await?, Vec::new()));
                    }
                    if let Some((id, parts)) = upload.as_mut() {
                        let number = u16::try_from(parts.len() + 1).map_err(|_| remote("more than 65535 parts"))?;
                        parts.push(self.multipart_put_part(key, id, number, part).await?);
                    }
                }
                if done {
                    break;
                }
            }
            match &upload {
                Some((id, parts)) => self.multipart_complete(key, id, parts).await,
                None => self.put_single(key, buf.split().freeze(), content_type).await,
            }
        }
        .await;
        if let Err(e) = outcome {
            if let Some((id, _)) = &upload {
                let _ = self.multipart_abort(key, id).await;
            }
            return Err(e);
        }
        Ok(PutResult {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let url = self.bucket.head_object(Some(&self.creds), key).sign(SIGN_TTL);
        let resp = check(self.http.head(url).send().await.map_err(remote)?, key).await?;
        Ok(ObjectMeta {
            size: header_u64(&resp, "content-length").unwrap_or(0),
            last_modified: last_modified(&resp),
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StorageError> {
        validate_key(key)?;
        let url = self.bucket.get_object(Some(&self.creds), key).sign(SIGN_TTL);
        let mut req = self.http.get(url);
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(StorageError::RangeNotSatisfiable);
            }
            if r.start == r.end {
                // An empty range: S3 cannot express it, and there is nothing to read.
                let meta = self.head(key).await?;
                if r.end > meta.size {
                    return Err(StorageError::RangeNotSatisfiable);
                }
                return Ok(GetResult {
                    meta,
                    body: super::bytes_stream(Bytes::new()),
                    region: None,
                });
            }
            req = req.header("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let resp = check(req.send().await.map_err(remote)?, key).await?;
        let size = match range {
            Some(_) => resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            None => header_u64(&resp, "content-length").unwrap_or(0),
        };
        let meta = ObjectMeta {
            size,
            last_modified: last_modified(&resp),
        };
        let body = resp.bytes_stream().map_err(std::io::Error::other);
        Ok(GetResult {
            meta,
            body: Box::pin(body),
            region: None,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let url = self.bucket.delete_object(Some(&self.creds), key).sign(SIGN_TTL);
        match check(self.http.delete(url).send().await.map_err(remote)?, key).await {
            Ok(_) | Err(StorageError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn presign_get(&self, key: &str, ttl: Duration, content_disposition: Option<&str>) -> Option<String> {
        let mut action = self.bucket.get_object(Some(&self.creds), key);
        if let Some(cd) = content_disposition {
            action
                .query_mut()
                .insert("response-content-disposition", cd.to_string());
        }
        Some(action.sign(ttl).to_string())
    }

    fn presign_download(
        &self,
        key: &str,
        ttl: Duration,
        content_disposition: &str,
        content_type: &str,
    ) -> Option<String> {
        validate_key(key).ok()?;
        let mut action = self.bucket.get_object(Some(&self.creds), key);
        let q = action.query_mut();
        q.insert("response-content-disposition", content_disposition.to_string());
        q.insert("response-content-type", content_type.to_string());
        Some(action.sign(ttl).to_string())
    }

    fn presign_put(&self, key: &str, ttl: Duration) -> Option<String> {
        Some(self.bucket.put_object(Some(&self.creds), key).sign(ttl).to_string())
    }

    async fn multipart_start(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), key)
            .sign(SIGN_TTL);
        let resp = check(self.http.post(url).send().await.map_err(remote)?, key).await?;
        let text = resp.text().await.map_err(remote)?;
        let parsed = CreateMultipartUpload::parse_response(&text).map_err(remote)?;
        Ok(parsed.upload_id().to_string())
    }

    async fn multipart_put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> Result<PartInfo, StorageError> {
        validate_key(key)?;
        let size = body.len() as u64;
        let url = self
            .bucket
            .upload_part(Some(&self.creds), key, number, upload_id)
            .sign(SIGN_TTL);
        let resp = check(self.http.put(url).body(body).send().await.map_err(remote)?, key).await?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| remote("upload part: no ETag in response"))?
            .to_string();
        Ok(PartInfo { number, etag, size })
    }

    async fn multipart_complete(&self, key: &str, upload_id: &str, parts: &[PartInfo]) -> Result<(), StorageError> {
        validate_key(key)?;
        let mut sorted = parts.to_vec();
        sorted.sort_by_key(|p| p.number);
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            upload_id,
            sorted.iter().map(|p| p.etag.as_str()),
        );
        let url = action.sign(SIGN_TTL);
        let body = action.body();
        let resp = check(self.http.post(url).body(body).send().await.map_err(remote)?, key).await?;
        // S3 may answer 200 with an error document when completion fails late.
        let text = resp.text().await.map_err(remote)?;
        if text.contains("<Error>") {
            return Err(StorageError::Remote(format!(
                "complete multipart: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        Ok(())
    }

    async fn multipart_abort(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.creds), key, upload_id)
            .sign(SIGN_TTL);
        match check(self.http.delete(url).send().await.map_err(remote)?, key).await {
            Ok(_) | Err(StorageError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        let url = self.bucket.head_bucket(Some(&self.creds)).sign(SIGN_TTL);
        check(self.http.head(url).send().await.map_err(remote)?, "bucket")
            .await
            .map(|_| ())
    }

    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn copy(&self, src: &str, dst: &str) -> Result<(), StorageError> {
        let size = self.head(src).await?.size;
        self.copy_sized(src, dst, size, COPY_SINGLE_MAX, COPY_PART).await
    }
}
