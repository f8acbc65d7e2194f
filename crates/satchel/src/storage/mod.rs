//! Object storage behind one small interface, with a local-directory and an S3 implementation.
//!
//! Bytes always move as streams of bounded chunks: `put` hashes (sha256) and counts while
//! it writes, `get` reads a byte range. S3 additionally hands out presigned GET/PUT URLs, so
//! in the scaled-out shape the app servers never carry file bytes. Multipart calls exist so
//! resumable uploads can land chunks of a 10 GiB file without holding it anywhere.

mod local;
mod s3;

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use local::LocalStorage;
pub use s3::S3Storage;

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store error: {0}")]
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub size: u64,
    /// Unix seconds.
    pub last_modified: i64,
}

pub struct GetResult {
    pub meta: ObjectMeta,
    /// The bytes of the requested range (or the whole object).
    pub body: ByteStream,
    /// The same bytes as an open local file and a range of it, when the store is a local
    /// directory: the HTTP front hands them to the kernel (`sendfile`) instead of copying
    /// the stream through user space ([`crate::http::front`]).
    pub region: Option<FileRegion>,
}

/// An open file and the byte range of it that a response carries. Set as a response
/// extension, it lets the HTTP front send the range with `sendfile(2)`; every other server
/// path (and every test that calls the router directly) reads the body stream instead.
#[derive(Clone, Debug)]
pub struct FileRegion {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

/// An in-progress multipart upload (S3 multipart; a part directory on local disk).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u16,
    pub etag: String,
    pub size: u64,
}

/// Smallest part S3 accepts, except for the last one.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores a stream under `key`, returning its size and sha256.
    async fn put(&self, key: &str, body: ByteStream, content_type: &str) -> Result<PutResult, StorageError>;
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError>;
    /// Reads `range` (end exclusive) or the whole object.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Presigned GET with a chosen `Content-Disposition`; `None` where the backend has none.
    fn presign_get(&self, key: &str, ttl: Duration, content_disposition: Option<&str>) -> Option<String>;
    /// Presigned GET for a buyer's download: the store answers with this `Content-Disposition`
    /// and `Content-Type` (`response-content-*` query parameters, covered by the signature).
    /// `None` where the backend cannot presign.
    fn presign_download(
        &self,
        key: &str,
        ttl: Duration,
        content_disposition: &str,
        content_type: &str,
    ) -> Option<String> {
        let _ = (key, ttl, content_disposition, content_type);
        None
    }
    fn presign_put(&self, key: &str, ttl: Duration) -> Option<String>;
    async fn multipart_start(&self, key: &str) -> Result<String, StorageError>;
    async fn multipart_put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> Result<PartInfo, StorageError>;
    async fn multipart_complete(&self, key: &str, upload_id: &str, parts: &[PartInfo]) -> Result<(), StorageError>;
    async fn multipart_abort(&self, key: &str, upload_id: &str) -> Result<(), StorageError>;
    /// Reachability for `/readyz`.
    async fn check(&self) -> Result<(), StorageError>;
    fn kind(&self) -> &'static str;
    /// Copies an object within the store without the bytes passing through us where the
    /// backend allows (a hard link on local disk, a server-side copy on S3).
    async fn copy(&self, src: &str, dst: &str) -> Result<(), StorageError>;
    /// The directory behind a local store (resumable uploads append to files in it).
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
}

pub type DynStorage = Arc<dyn Storage>;

/// A parsed `SATCHEL_STORAGE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    Local {
        root: std::path::PathBuf,
    },
    S3 {
        bucket: String,
        endpoint: String,
        region: String,
        path_style: bool,
    },
}

impl StorageUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = url::Url::parse(s)
            .map_err(|e| format!("{s:?} is not a URL ({e}); use file:///path or s3://bucket?endpoint=…&region=…"))?;
        match u.scheme() {
            "file" => {
                let root = u.to_file_path().map_err(|()| {
                    format!("{s:?}: file URLs need an absolute path, like file:///var/lib/satchel/files")
                })?;
                Ok(StorageUrl::Local { root })
            }
            "s3" => {
                let bucket = u
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| format!("{s:?}: missing bucket name, like s3://my-bucket"))?
                    .to_string();
                let mut endpoint = None;
                let mut region = None;
                let mut path_style = None;
                for (k, v) in u.query_pairs() {
                    match k.as_ref() {
                        "endpoint" => endpoint = Some(v.to_string()),
                        "region" => region = Some(v.to_string()),
                        "path_style" => path_style = Some(v == "true" || v == "1"),
                        other => {
                            return Err(format!(
                                "{s:?}: unknown parameter {other:?} (known: endpoint, region, path_style)"
                            ))
                        }
                    }
                }
                let region = region.unwrap_or_else(|| "us-east-1".into());
                let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
                let ep = url::Url::parse(&endpoint)
                    .map_err(|e| format!("{s:?}: endpoint {endpoint:?} is not a URL: {e}"))?;
                if !matches!(ep.scheme(), "http" | "https") {
                    return Err(format!("{s:?}: endpoint must be http:// or https://"));
                }
                // Custom endpoints (MinIO, Garage, R2…) almost always want path-style.
                let path_style = path_style.unwrap_or(!endpoint.contains("amazonaws.com"));
                Ok(StorageUrl::S3 {
                    bucket,
                    endpoint,
                    region,
                    path_style,
                })
            }
            other => Err(format!(
                "{s:?}: unsupported storage scheme {other:?}; use file:///path or s3://bucket"
            )),
        }
    }
}

/// Builds the configured storage.
pub fn from_config(cfg: &crate::config::Config) -> anyhow::Result<DynStorage> {
    match StorageUrl::parse(&cfg.storage_url()).map_err(anyhow::Error::msg)? {
        StorageUrl::Local { root } => Ok(Arc::new(LocalStorage::new(root)?)),
        StorageUrl::S3 {
            bucket,
            endpoint,
            region,
            path_style,
        } => {
            let key = cfg.storage.access_key_id.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "S3 storage needs credentials: set SATCHEL_S3_ACCESS_KEY_ID and SATCHEL_S3_SECRET_ACCESS_KEY"
                )
            })?;
            let secret = cfg
                .storage
                .secret_access_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("S3 storage needs SATCHEL_S3_SECRET_ACCESS_KEY"))?;
            Ok(Arc::new(S3Storage::new(
                &endpoint,
                &bucket,
                &region,
                path_style,
                &key,
                secret.expose(),
            )?))
        }
    }
}

/// Rejects keys that could escape a directory or confuse an object store.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.len() > 1024
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(char::is_control)
        || key.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(StorageError::InvalidKey(key.to_string()))
    } else {
        Ok(())
    }
}

/// A stream over one in-memory buffer (small files, tests, demo seeding).
pub fn bytes_stream(b: impl Into<Bytes>) -> ByteStream {
    let b = b.into();
    Box::pin(futures::stream::once(async move { Ok(b) }))
}

/// Collects a stream into memory; only for small objects.
pub async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_parse_and_name_mistakes() {
        assert_eq!(
            StorageUrl::parse("s3://b?endpoint=http://127.0.0.1:9000&region=eu-west-1").unwrap(),
            StorageUrl::S3 {
                bucket: "b".into(),
                endpoint: "http://127.0.0.1:9000".into(),
                region: "eu-west-1".into(),
                path_style: true
            }
        );
        assert!(matches!(
            StorageUrl::parse("file:///tmp/x").unwrap(),
            StorageUrl::Local { .. }
        ));
        assert!(StorageUrl::parse("s3://").unwrap_err().contains("bucket"));
        assert!(StorageUrl::parse("s3://b?endpont=x").unwrap_err().contains("endpont"));
        assert!(StorageUrl::parse("ftp://x").unwrap_err().contains("ftp"));
    }

    #[test]
    fn keys_never_become_escaping_paths() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a\\b", "a/\nb", "./a"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_key("sel_1/prd_2/1.0.0/original/book.pdf").unwrap();
    }
}
