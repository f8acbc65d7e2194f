//! ZIP (and EPUB, JAR, …) marks: one stored entry appended after the last file entry, the
//! central directory written again with that entry added, and the archive comment carrying
//! the signed mark. The buyer's file is the original up to its central directory, followed
//! by a small tail: the original's entries are never touched or recompressed, and only the
//! central directory is read to compute the tail (ZIP64 archives included).

use super::WatermarkError;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;

/// Where an archive's central directory is, read from its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub entries: u64,
    pub cd_offset: u64,
    pub cd_size: u64,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// How many bytes from the end hold the end-of-central-directory records.
pub fn tail_window(size: u64) -> u64 {
    size.min(22 + 65_535 + 20 + 56)
}

/// Finds the central directory from the archive's last [`tail_window`] bytes (`end`), and
/// the ZIP64 record when the classic one says so (`read_at` fetches it if not in `end`).
pub fn locate(end: &[u8], size: u64) -> Result<Directory, WatermarkError> {
    let bad = |m: &str| WatermarkError::Malformed(format!("ZIP: {m}"));
    let base = size - end.len() as u64;
    let pos = (0..end.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(end, i) == Some(EOCD_SIG) && u16_at(end, i + 20).map(usize::from) == Some(end.len() - i - 22))
        .ok_or_else(|| bad("no end-of-central-directory record (not a ZIP archive)"))?;
    let entries = u64::from(u16_at(end, pos + 10).unwrap_or(0));
    let cd_size = u64::from(u32_at(end, pos + 12).unwrap_or(0));
    let cd_offset = u64::from(u32_at(end, pos + 16).unwrap_or(0));
    let dir = if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let loc = pos.checked_sub(20).ok_or_else(|| bad("ZIP64 locator missing"))?;
        if u32_at(end, loc) != Some(ZIP64_LOCATOR_SIG) {
            return Err(bad("ZIP64 locator missing"));
        }
        let rec = u64_at(end, loc + 8).ok_or_else(|| bad("ZIP64 locator truncated"))?;
        let i = usize::try_from(rec.checked_sub(base).ok_or_else(|| bad("ZIP64 record out of reach"))?)
            .map_err(|_| bad("ZIP64 record out of reach"))?;
        if u32_at(end, i) != Some(ZIP64_EOCD_SIG) {
            return Err(bad("ZIP64 end record missing"));
        }
        Directory {
            entries: u64_at(end, i + 32).ok_or_else(|| bad("ZIP64 record truncated"))?,
            cd_size: u64_at(end, i + 40).ok_or_else(|| bad("ZIP64 record truncated"))?,
            cd_offset: u64_at(end, i + 48).ok_or_else(|| bad("ZIP64 record truncated"))?,
        }
    } else {
        Directory {
            entries,
            cd_offset,
            cd_size,
        }
    };
    if dir.cd_offset.checked_add(dir.cd_size).is_none_or(|e| e > size) {
        return Err(bad("central directory points past the end"));
    }
    Ok(dir)
}

/// DOS date and time of a unix second (UTC).
fn dos_time(unix: i64) -> (u16, u16) {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(unix) else {
        return (0, 0x21);
    };
    let time = (u16::from(t.hour()) << 11) | (u16::from(t.minute()) << 5) | (u16::from(t.second()) / 2);
    let year = u16::try_from(t.year() - 1980).unwrap_or(0).min(127);
    let date = (year << 9) | (u16::from(u8::from(t.month())) << 5) | u16::from(t.day());
    (time, date)
}

/// The tail that follows `original[..dir.cd_offset]`: the new entry (`name`, stored),
/// the original central directory (`cd`, as read), its entry for the new file, and the end
/// records with `comment`.
pub fn overlay(dir: &Directory, cd: &[u8], name: &str, body: &[u8], comment: &str, at: i64) -> Vec<u8> {
    let (time, date) = dos_time(at);
    let crc = crc32fast::hash(body);
    let name = name.as_bytes();
    let size = body.len() as u64;
    let entry_offset = dir.cd_offset;
    let mut out = Vec::with_capacity(cd.len() + body.len() + 256);
    // Local file header (sizes fit in 32 bits: the body is small).
    out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
    out.extend_from_slice(&20u16.to_le_bytes()); // version needed
    out.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 name
    out.extend_from_slice(&0u16.to_le_bytes()); // stored
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&date.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    let size32 = u32::try_from(size).unwrap_or(u32::MAX);
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(body);
    // Central directory: the original's records, then ours.
    let new_cd_offset = entry_offset + out.len() as u64;
    out.extend_from_slice(cd);
    let big_offset = entry_offset >= 0xFFFF_FFFF;
    let mut extra = Vec::new();
    if big_offset {
        extra.extend_from_slice(&1u16.to_le_bytes());
        extra.extend_from_slice(&8u16.to_le_bytes());
        extra.extend_from_slice(&entry_offset.to_le_bytes());
    }
    out.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
    out.extend_from_slice(&0x031Eu16.to_le_bytes()); // made by: Unix, 3.0
    out.extend_from_slice(&(if big_offset { 45u16 } else { 20 }).to_le_bytes());
    out.extend_from_slice(&0x0800u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&date.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&u16::try_from(extra.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out.extend_from_slice(&0u16.to_le_bytes()); // disk
    out.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    out.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes()); // -rw-r--r--
    out.extend_from_slice(&u32::try_from(entry_offset).unwrap_or(0xFFFF_FFFF).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&extra);
    let cd_size = entry_offset + out.len() as u64 - new_cd_offset;
    let entries = dir.entries + 1;
    let zip64 = entries >= 0xFFFF || cd_size >= 0xFFFF_FFFF || new_cd_offset >= 0xFFFF_FFFF;
    if zip64 {
        let record_offset = entry_offset + out.len() as u64;
        out.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&0x031Eu16.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&entries.to_le_bytes());
        out.extend_from_slice(&entries.to_le_bytes());
        out.extend_from_slice(&cd_size.to_le_bytes());
        out.extend_from_slice(&new_cd_offset.to_le_bytes());
        out.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&record_offset.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    let comment: Vec<u8> = comment.bytes().filter(u8::is_ascii).take(65_535).collect();
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    let e16 = if zip64 {
        0xFFFF
    } else {
        u16::try_from(entries).unwrap_or(0xFFFF)
    };
    out.extend_from_slice(&e16.to_le_bytes());
    out.extend_from_slice(&e16.to_le_bytes());
    let clamp32 = |v: u64| {
        if zip64 {
            0xFFFF_FFFF
        } else {
            u32::try_from(v).unwrap_or(0xFFFF_FFFF)
        }
    };
    out.extend_from_slice(&clamp32(cd_size).to_le_bytes());
    out.extend_from_slice(&clamp32(new_cd_offset).to_le_bytes());
    out.extend_from_slice(&u16::try_from(comment.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&comment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("a.txt", opts).expect("start");
        z.write_all(&b"hello zip ".repeat(100)).expect("write");
        z.start_file("dir/b.bin", opts).expect("start");
        z.write_all(&[7u8; 5000]).expect("write");
        z.set_comment("original comment");
        z.finish().expect("finish");
        buf.into_inner()
    }

    #[test]
    fn appended_entry_reads_back_with_every_original_entry_intact() {
        let original = archive();
        let size = original.len() as u64;
        let end = &original[usize::try_from(size - tail_window(size)).expect("fits")..];
        let dir = locate(end, size).expect("locate");
        assert_eq!(dir.entries, 2);
        let cd = &original[dir.cd_offset as usize..(dir.cd_offset + dir.cd_size) as usize];
        let tail = overlay(&dir, cd, "LICENSE.txt", b"Licensed to a@b.c", "wm1.mark", 1_767_225_600);
        let mut marked = original[..dir.cd_offset as usize].to_vec();
        marked.extend_from_slice(&tail);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(marked)).expect("valid zip");
        assert_eq!(z.len(), 3);
        assert_eq!(z.comment(), b"wm1.mark");
        let mut s = String::new();
        std::io::Read::read_to_string(&mut z.by_name("a.txt").expect("a"), &mut s).expect("read");
        assert_eq!(s, "hello zip ".repeat(100));
        let mut l = String::new();
        std::io::Read::read_to_string(&mut z.by_name("LICENSE.txt").expect("license"), &mut l).expect("read");
        assert_eq!(l, "Licensed to a@b.c");
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut z.by_name("dir/b.bin").expect("b"), &mut b).expect("read");
        assert_eq!(b, vec![7u8; 5000]);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(locate(b"not a zip at all, just text", 27).is_err());
        let mut fake = vec![0u8; 30];
        fake[8..12].copy_from_slice(&EOCD_SIG.to_le_bytes());
        fake[8 + 16..8 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            locate(&fake, 30).is_err(),
            "directory past the end / missing ZIP64 locator"
        );
    }
}
