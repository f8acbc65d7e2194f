//! Signing keys: an HMAC key for download tokens and delivery URLs, and Ed25519 keys for
//! license certificates and signed validation responses.
//!
//! Keys live as files in the keys directory (`{data_dir}/keys` by default, 0600), named
//! `{kind}-{created}-{kid}.key` with the hex secret inside. The newest of each kind signs;
//! all of them verify, so a rotation (`satchel admin rotate-keys`) never breaks links or
//! certificates already issued. Generated on first start; in the scaled-out shape every
//! instance reads the same directory (or a copy of it).

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct MacKey {
    pub kid: String,
    pub secret: [u8; 32],
}

#[derive(Clone)]
pub struct EdKey {
    pub kid: String,
    pub key: SigningKey,
}

#[derive(Clone)]
pub struct Keys {
    /// Newest first.
    pub mac: Vec<MacKey>,
    /// Newest first.
    pub ed25519: Vec<EdKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("mac", &self.mac.iter().map(|k| &k.kid).collect::<Vec<_>>())
            .field("ed25519", &self.ed25519.iter().map(|k| &k.kid).collect::<Vec<_>>())
            .finish()
    }
}

fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

fn decode32(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)?;
    let bytes = hex::decode(text.trim()).map_err(|e| anyhow::anyhow!("{}: not hex ({e})", path.display()))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: expected 32 bytes", path.display()))
}

impl Keys {
    /// Loads the keys in `dir`, generating the first ones if there are none.
    pub fn load_or_generate(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "keys directory {} is not writable ({e}); set --data-dir or SATCHEL_KEYS_DIR",
                dir.display()
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut keys = Self::read(dir)?;
        if keys.mac.is_empty() {
            Self::generate_mac(dir)?;
        }
        if keys.ed25519.is_empty() {
            Self::generate_ed25519(dir)?;
        }
        if keys.mac.is_empty() || keys.ed25519.is_empty() {
            keys = Self::read(dir)?;
        }
        Ok(keys)
    }

    fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        files.sort();
        files.reverse(); // newest first: names embed a zero-padded creation time
        let mut keys = Keys {
            mac: Vec::new(),
            ed25519: Vec::new(),
        };
        for path in files {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let mut parts = name.splitn(3, '-');
            let (kind, _created, kid) = (parts.next(), parts.next(), parts.next());
            let Some(kid) = kid.map(str::to_string) else { continue };
            match kind {
                Some("mac") => keys.mac.push(MacKey {
                    kid,
                    secret: decode32(&path)?,
                }),
                Some("ed25519") => keys.ed25519.push(EdKey {
                    kid,
                    key: SigningKey::from_bytes(&decode32(&path)?),
                }),
                _ => {}
            }
        }
        Ok(keys)
    }

    pub fn generate_mac(dir: &Path) -> anyhow::Result<String> {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let kid = hex::encode(&Sha256::digest(secret)[..4]);
        write_secret(
            &dir.join(format!("mac-{:020}-{kid}.key", stamp())),
            &hex::encode(secret),
        )?;
        Ok(kid)
    }

    pub fn generate_ed25519(dir: &Path) -> anyhow::Result<String> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let kid = ed_kid(&key);
        write_secret(
            &dir.join(format!("ed25519-{:020}-{kid}.key", stamp())),
            &hex::encode(key.to_bytes()),
        )?;
        Ok(kid)
    }

    pub fn current_mac(&self) -> &MacKey {
        &self.mac[0]
    }
    pub fn mac_by_kid(&self, kid: &str) -> Option<&MacKey> {
        self.mac.iter().find(|k| k.kid == kid)
    }
    pub fn current_ed25519(&self) -> &EdKey {
        &self.ed25519[0]
    }
}

/// Creation stamp in file names (nanoseconds, zero-padded so names sort by age).
fn stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Key id of an Ed25519 key: the first 8 bytes of sha256(public key), hex.
pub fn ed_kid(key: &SigningKey) -> String {
    hex::encode(&Sha256::digest(key.verifying_key().as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_generated_once_with_0600_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_generate(dir.path()).unwrap();
        let b = Keys::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.current_mac().kid, b.current_mac().kid);
        assert_eq!(a.current_ed25519().kid, b.current_ed25519().kid);
        #[cfg(unix)]
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            use std::os::unix::fs::PermissionsExt;
            let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let new_kid = Keys::generate_ed25519(dir.path()).unwrap();
        let c = Keys::load_or_generate(dir.path()).unwrap();
        assert_eq!(c.current_ed25519().kid, new_kid);
        assert_eq!(c.ed25519.len(), 2, "old key kept for verification");
    }
}
