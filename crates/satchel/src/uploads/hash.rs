//! A SHA-256 whose running state can be saved in the database and resumed in another
//! process: the eight state words, the byte count, and the (< 64) bytes of an unfinished
//! block. `sha2::compress256` does the block work (with SHA-NI where the CPU has it); the
//! padding at the end is ours (FIPS 180-4 §5.1.1).

use sha2::digest::generic_array::GenericArray;

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far (including `buf`).
    len: u64,
    buf: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self {
            state: H0,
            len: 0,
            buf: Vec::with_capacity(64),
        }
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < 64 {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.buf);
            sha2::compress256(&mut self.state, &[block]);
            self.buf.clear();
        }
        let full = data.len() / 64 * 64;
        for block in data[..full].chunks_exact(64) {
            sha2::compress256(&mut self.state, std::slice::from_ref(GenericArray::from_slice(block)));
        }
        self.buf.extend_from_slice(&data[full..]);
    }

    /// The digest of everything hashed so far (the running state is left as it is).
    pub fn finish(&self) -> [u8; 32] {
        let mut state = self.state;
        let mut tail = self.buf.clone();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        let blocks: Vec<GenericArray<u8, _>> = tail.chunks_exact(64).map(GenericArray::clone_from_slice).collect();
        sha2::compress256(&mut state, &blocks);
        let mut out = [0u8; 32];
        for (i, w) in state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    pub fn finish_hex(&self) -> String {
        hex::encode(self.finish())
    }

    /// `s1:{state hex}:{len}:{pending bytes hex}` — what the database keeps.
    pub fn save(&self) -> String {
        let mut words = [0u8; 32];
        for (i, w) in self.state.iter().enumerate() {
            words[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        format!("s1:{}:{}:{}", hex::encode(words), self.len, hex::encode(&self.buf))
    }

    /// Restores a saved state; `""` is a fresh hash. `None` for anything malformed.
    pub fn restore(saved: &str) -> Option<Self> {
        if saved.is_empty() {
            return Some(Self::new());
        }
        let mut it = saved.split(':');
        if it.next()? != "s1" {
            return None;
        }
        let words = hex::decode(it.next()?).ok()?;
        let len: u64 = it.next()?.parse().ok()?;
        let buf = hex::decode(it.next()?).ok()?;
        if words.len() != 32 || buf.len() >= 64 || len % 64 != buf.len() as u64 || it.next().is_some() {
            return None;
        }
        let mut state = [0u32; 8];
        for (i, w) in state.iter_mut().enumerate() {
            *w = u32::from_be_bytes([words[i * 4], words[i * 4 + 1], words[i * 4 + 2], words[i * 4 + 3]]);
        }
        Some(Self { state, len, buf })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};
    use sha2::{Digest, Sha256};

    #[test]
    fn known_answers() {
        assert_eq!(
            ResumableSha256::new().finish_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        assert_eq!(
            h.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_splits_and_save_restore_match_sha2() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..300 {
            let len = match round % 3 {
                0 => rng.gen_range(0..200),
                1 => rng.gen_range(0..5000),
                _ => rng.gen_range(60_000..200_000),
            };
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            let mut h = ResumableSha256::new();
            let mut at = 0;
            while at < data.len() {
                let n = rng.gen_range(0..=(data.len() - at).min(70_000));
                h.update(&data[at..at + n]);
                at += n;
                if rng.gen_bool(0.3) {
                    // As if the process restarted: only the saved text survives.
                    h = ResumableSha256::restore(&h.save()).unwrap();
                }
            }
            assert_eq!(h.len(), len as u64);
            assert_eq!(h.finish_hex(), hex::encode(Sha256::digest(&data)), "len {len}");
        }
    }

    #[test]
    fn malformed_saves_are_refused() {
        for bad in [
            "x",
            "s1:00:0:",
            "s2:",
            "s1:zz:1:",
            &format!("s1:{}:3:00", "0".repeat(64)),
        ] {
            assert!(ResumableSha256::restore(bad).is_none(), "{bad}");
        }
    }
}
