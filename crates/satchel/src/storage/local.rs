//! Local-directory storage for the embedded shape. Writes go to a temporary file that is
//! renamed into place, so readers never see half an object.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{validate_key, ByteStream, FileRegion, GetResult, ObjectMeta, PartInfo, PutResult, Storage, StorageError};

/// Bytes per read when streaming a file out: every download reads chunks of this size, which
/// is what one stalled download holds (docs/operations.md, memory per in-flight download).
const CHUNK: u64 = 64 * 1024;
/// A download whose client keeps up doubles its chunks up to this size: fewer reads and
/// writes per byte (64 KiB chunks stream ~1.3 GB/s here, 1 MiB ~2 GB/s).
const LARGE_CHUNK: u64 = 1024 * 1024;
/// Most bytes held in chunks larger than [`CHUNK`] by all downloads of the process together,
/// so that many fast downloads stalling at once cannot hold more than this beyond their
/// [`CHUNK`] each: a download that finds the budget spent reads [`CHUNK`]s.
const LARGE_BUDGET: u64 = 64 * 1024 * 1024;
/// A client keeps up when it asks for the next chunk within this time of the previous one.
const KEEPS_UP: Duration = Duration::from_millis(5);

static LARGE_HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A chunk larger than [`CHUNK`]: its size is reserved from [`LARGE_BUDGET`] before it is
/// read and given back when the last reference to its bytes is dropped (after the socket took
/// them, or with an abandoned download).
struct LargeChunk {
    buf: Vec<u8>,
    reserved: u64,
}

impl LargeChunk {
    fn reserve(n: u64) -> Option<Self> {
        use std::sync::atomic::Ordering;
        LARGE_HELD
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + n <= LARGE_BUDGET).then_some(held + n)
            })
            .ok()?;
        Some(LargeChunk {
            buf: Vec::with_capacity(usize::try_from(n).unwrap_or(0)),
            reserved: n,
        })
    }
}

impl AsRef<[u8]> for LargeChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for LargeChunk {
    fn drop(&mut self) {
        LARGE_HELD.fetch_sub(self.reserved, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Reads the next `n` bytes of `f` into `buf`'s spare capacity (no zeroing first).
fn read_chunk(f: &mut std::fs::File, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    use std::io::Read;
    let got = f.take(n as u64).read_to_end(buf)?;
    if got < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file is shorter than it was when opened",
        ));
    }
    Ok(())
}

pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root).map_err(|e| {
            anyhow::anyhow!(
                "storage directory {} is not writable ({e}); choose another with --data-dir or SATCHEL_STORAGE_URL",
                root.display()
            )
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Filesystem path of an object (used by the streaming delivery path).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn parts_dir(&self, upload_id: &str) -> Result<PathBuf, StorageError> {
        if upload_id.is_empty()
            || !upload_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(StorageError::InvalidKey(upload_id.to_string()));
        }
        Ok(self.root.join(".multipart").join(upload_id))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root.join(".tmp").join(crate::ids::new_id("tmp"))
    }
}

fn not_found(key: &str, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound(key.to_string())
    } else {
        StorageError::Io(e)
    }
}

fn meta_of(m: &std::fs::Metadata) -> ObjectMeta {
    let last_modified = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or_default())
        .unwrap_or_default();
    ObjectMeta {
        size: m.len(),
        last_modified,
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put(&self, key: &str, mut body: ByteStream, _content_type: &str) -> Result<PutResult, StorageError> {
        let dest = self.path_of(key)?;
        let tmp = self.tmp_path();
        if let Some(parent) = tmp.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result: Result<(), StorageError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&tmp, &dest).await?;
        Ok(PutResult {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let path = self.path_of(key)?;
        let m = tokio::fs::metadata(&path).await.map_err(|e| not_found(key, e))?;
        Ok(meta_of(&m))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StorageError> {
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| not_found(key, e))?;
        let meta = meta_of(&file.metadata().await?);
        let (start, len) = match range {
            Some(r) if r.start > r.end || r.end > meta.size => return Err(StorageError::RangeNotSatisfiable),
            Some(r) => (r.start, r.end - r.start),
            None => (0, meta.size),
        };
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start)).await?;
        }
        // Each chunk is read (on the blocking pool) into its own fresh buffer that becomes the
        // chunk: nothing stays allocated per download between reads, unlike a buffered reader.
        // Chunks double while the client keeps up (and the large-chunk budget allows), and
        // fall back to `CHUNK` as soon as it does not.
        let file = file.into_std().await;
        // A second descriptor of the same open file, for the front's sendfile path.
        let region = file.try_clone().ok().map(|f| FileRegion {
            file: std::sync::Arc::new(f),
            offset: start,
            len,
        });
        let state = (file, len, CHUNK, None::<std::time::Instant>);
        let body = futures::stream::try_unfold(state, |(mut f, left, size, handed)| async move {
            if left == 0 {
                return Ok(None);
            }
            let keeps_up = handed.is_some_and(|t| t.elapsed() < KEEPS_UP);
            let size = if keeps_up { (size * 2).min(LARGE_CHUNK) } else { CHUNK };
            let want = left.min(size);
            let large = if want > CHUNK { LargeChunk::reserve(want) } else { None };
            let n = if large.is_some() { want } else { left.min(CHUNK) };
            let n_usize = usize::try_from(n).unwrap_or(64 * 1024);
            let (f, bytes) = tokio::task::spawn_blocking(move || match large {
                Some(mut chunk) => {
                    read_chunk(&mut f, &mut chunk.buf, n_usize)?;
                    Ok::<_, std::io::Error>((f, Bytes::from_owner(chunk)))
                }
                None => {
                    let mut buf = Vec::with_capacity(n_usize);
                    read_chunk(&mut f, &mut buf, n_usize)?;
                    Ok((f, Bytes::from(buf)))
                }
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((
                bytes,
                (f, left - n, n.max(CHUNK), Some(std::time::Instant::now())),
            )))
        });
        Ok(GetResult {
            meta,
            body: Box::pin(body),
            region,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn presign_get(&self, _key: &str, _ttl: Duration, _cd: Option<&str>) -> Option<String> {
        None
    }

    fn presign_put(&self, _key: &str, _ttl: Duration) -> Option<String> {
        None
    }

    async fn multipart_start(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        let id = crate::ids::new_id("mp");
        tokio::fs::create_dir_all(self.parts_dir(&id)?).await?;
        Ok(id)
    }

    async fn multipart_put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> Result<PartInfo, StorageError> {
        validate_key(key)?;
        let dir = self.parts_dir(upload_id)?;
        if !tokio::fs::try_exists(&dir).await? {
            return Err(StorageError::NotFound(upload_id.to_string()));
        }
        let tmp = dir.join(format!("{number:05}.tmp"));
        tokio::fs::write(&tmp, &body).await?;
        tokio::fs::rename(&tmp, dir.join(format!("{number:05}"))).await?;
        Ok(PartInfo {
            number,
            etag: hex::encode(&Sha256::digest(&body)[..16]),
            size: body.len() as u64,
        })
    }

    async fn multipart_complete(&self, key: &str, upload_id: &str, parts: &[PartInfo]) -> Result<(), StorageError> {
        let dest = self.path_of(key)?;
        let dir = self.parts_dir(upload_id)?;
        let tmp = self.tmp_path();
        if let Some(parent) = tmp.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut out = tokio::fs::File::create(&tmp).await?;
        let mut ordered = parts.to_vec();
        ordered.sort_by_key(|p| p.number);
        for p in &ordered {
            let mut part = tokio::fs::File::open(dir.join(format!("{:05}", p.number)))
                .await
                .map_err(|e| not_found(upload_id, e))?;
            tokio::io::copy(&mut part, &mut out).await?;
        }
        out.sync_all().await?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&tmp, &dest).await?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Ok(())
    }

    async fn multipart_abort(&self, _key: &str, upload_id: &str) -> Result<(), StorageError> {
        let dir = self.parts_dir(upload_id)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        let probe = self.root.join(".tmp");
        tokio::fs::create_dir_all(&probe).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    async fn copy(&self, src: &str, dst: &str) -> Result<(), StorageError> {
        let from = self.path_of(src)?;
        let to = self.path_of(dst)?;
        if !tokio::fs::try_exists(&from).await? {
            return Err(StorageError::NotFound(src.to_string()));
        }
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // A hard link under a temporary name renamed into place: instant for any size, and
        // readers of `dst` never see a half-written file. Copy where links are not possible.
        let tmp = self.tmp_path();
        if let Some(parent) = tmp.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        if tokio::fs::hard_link(&from, &tmp).await.is_err() {
            tokio::fs::copy(&from, &tmp).await?;
        }
        tokio::fs::rename(&tmp, &to).await?;
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// One test, not two: both use the process-wide budget.
    #[tokio::test]
    async fn chunks_grow_for_a_fast_reader_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path().to_path_buf()).unwrap();
        let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir_all(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/big.bin"), &data).unwrap();

        // A reader that asks at once gets chunks past CHUNK, and every byte in order.
        let mut body = storage.get("s/big.bin", None).await.unwrap().body;
        let (mut got, mut largest) = (Vec::new(), 0);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            largest = largest.max(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
        assert!(
            largest > CHUNK as usize && largest as u64 <= LARGE_CHUNK,
            "largest chunk {largest}"
        );
        drop(body);

        // A range from the middle, across chunk boundaries.
        let r = storage.get("s/big.bin", Some(100_000..3_000_001)).await.unwrap();
        let part = crate::storage::collect(r.body).await.unwrap();
        assert_eq!(part, &data[100_000..3_000_001]);

        // The budget: reservations stop when it is held, and a dropped chunk gives its bytes back.
        let mut held = Vec::new();
        while let Some(c) = LargeChunk::reserve(LARGE_CHUNK) {
            held.push(c);
            assert!(held.len() as u64 <= LARGE_BUDGET / LARGE_CHUNK);
        }
        assert_eq!(held.len() as u64, LARGE_BUDGET / LARGE_CHUNK);
        // With the budget spent, a fast reader still gets every byte, in CHUNK-sized reads.
        let mut body = storage.get("s/big.bin", None).await.unwrap().body;
        let mut n = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() as u64 <= CHUNK);
            n += chunk.len();
        }
        assert_eq!(n, data.len());
        held.pop();
        assert!(LargeChunk::reserve(LARGE_CHUNK).is_some());
    }
}
