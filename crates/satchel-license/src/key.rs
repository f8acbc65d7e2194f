//! License keys: short, typeable, and checked offline before anything goes over the network.
//!
//! ```text
//! PXL-7K2Q-MXW9-D4HT-3NBR-8C6F-PA1V
//! └┬┘ └─────────────┬────────────┘ └─ check symbol (24th symbol)
//!  │        23 random symbols (115 bits), grouped by four with the check symbol
//!  └ optional product prefix: 1–8 of A–Z 0–9
//! ```
//!
//! Symbols are Crockford base32 ([`ALPHABET`]: no I, L, O, U). The check symbol is
//! `Σ αⁱ·vᵢ` over the 23 symbol values `vᵢ` in GF(32) = GF(2)\[x\]/(x⁵+x²+1), α = x
//! ([`check_symbol`]). Because it is linear with distinct non-zero weights, **every single
//! wrong symbol and every swap of two neighbours** (including the check symbol itself) is
//! detected; other typos slip through with probability 1/32. The prefix is not covered: a
//! typo there is answered `NOT_FOUND` by the server.
//!
//! Parsing is lenient — case, spaces and dashes are ignored, `O`→`0`, `I`/`L`→`1` — and
//! gives the canonical form above. The body is always the last 24 symbols; whatever comes
//! before it is the prefix.

use std::fmt;
use std::str::FromStr;

use rand_core::CryptoRngCore;

/// Crockford base32 symbols, by value.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Random symbols in a key (115 bits), before the check symbol.
pub const KEY_SYMBOLS: usize = 23;
/// Longest product prefix.
pub const MAX_PREFIX_LEN: usize = 8;
const GROUP: usize = 4;

/// Why a typed key was refused.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum KeyError {
    /// Not shaped like a key (wrong length, characters outside the alphabet, bad prefix).
    Malformed,
    /// Shaped like a key, but the check symbol does not match: a typo.
    BadCheckCharacter,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Malformed => "not a license key",
            KeyError::BadCheckCharacter => "a character is wrong or two are swapped",
        })
    }
}

impl std::error::Error for KeyError {}

/// A license key in canonical form (upper case, grouped, check symbol verified).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LicenseKey(String);

impl LicenseKey {
    /// Parses what a person typed, leniently, and checks the check symbol.
    pub fn parse(input: &str) -> Result<Self, KeyError> {
        if input.len() > 128 || !input.is_ascii() {
            return Err(KeyError::Malformed);
        }
        let symbols: Vec<u8> = input
            .bytes()
            .filter(|b| *b != b'-' && !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_uppercase())
            .collect();
        let body_len = KEY_SYMBOLS + 1;
        if symbols.len() < body_len || symbols.len() > body_len + MAX_PREFIX_LEN {
            return Err(KeyError::Malformed);
        }
        let (prefix, body) = symbols.split_at(symbols.len() - body_len);
        if !prefix.iter().all(u8::is_ascii_alphanumeric) {
            return Err(KeyError::Malformed);
        }
        let values = body
            .iter()
            .map(|&b| value_of(b))
            .collect::<Option<Vec<u32>>>()
            .ok_or(KeyError::Malformed)?;
        let (random, check) = values.split_at(KEY_SYMBOLS);
        if check.first().map(|&c| symbol(c)) != Some(check_symbol(random)) {
            return Err(KeyError::BadCheckCharacter);
        }
        Ok(Self::assemble(&String::from_utf8_lossy(prefix), &values))
    }

    /// A new random key with an optional product prefix (1–8 of A–Z 0–9, any case; an empty
    /// prefix is none). `rng` must be a CSPRNG, e.g. `rand_core::OsRng`.
    pub fn generate<R: CryptoRngCore + ?Sized>(prefix: Option<&str>, rng: &mut R) -> Result<Self, KeyError> {
        let prefix = prefix.unwrap_or_default().to_ascii_uppercase();
        if !is_valid_prefix(&prefix) {
            return Err(KeyError::Malformed);
        }
        let mut bytes = [0u8; KEY_SYMBOLS];
        rng.fill_bytes(&mut bytes);
        // 32 divides 256: the low five bits of a uniform byte are a uniform symbol.
        let mut values: Vec<u32> = bytes.iter().map(|b| u32::from(b & 31)).collect();
        let check = check_symbol(&values);
        values.extend(value_of(check));
        Ok(Self::assemble(&prefix, &values))
    }

    fn assemble(prefix: &str, values: &[u32]) -> Self {
        let symbols: String = values.iter().map(|&v| char::from(symbol(v))).collect();
        Self(if prefix.is_empty() {
            group(&symbols)
        } else {
            format!("{prefix}-{}", group(&symbols))
        })
    }

    /// The canonical form, e.g. `PXL-7K2Q-MXW9-D4HT-3NBR-8C6F-PA1V`.
    pub fn canonical(&self) -> &str {
        &self.0
    }

    /// The product prefix, if the key has one.
    pub fn prefix(&self) -> Option<&str> {
        // The grouped body: 24 symbols and (24 - 1) / 4 dashes.
        let body = KEY_SYMBOLS + 1 + KEY_SYMBOLS / GROUP;
        let len = self.0.len().checked_sub(body)?;
        self.0.get(..len).and_then(|p| p.strip_suffix('-'))
    }
}

impl fmt::Display for LicenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for LicenseKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

impl AsRef<str> for LicenseKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<LicenseKey> for String {
    fn from(key: LicenseKey) -> String {
        key.0
    }
}

/// Whether `prefix` can lead a key: at most 8 of A–Z, a–z, 0–9 (empty: no prefix).
pub fn is_valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX_LEN && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// [`LicenseKey::parse`], as the canonical string.
pub fn parse_key(input: &str) -> Result<String, KeyError> {
    LicenseKey::parse(input).map(String::from)
}

fn symbol(value: u32) -> u8 {
    ALPHABET[(value & 31) as usize]
}

/// The value of a typed symbol (case-insensitive; `O`→0, `I`/`L`→1).
fn value_of(c: u8) -> Option<u32> {
    let c = match c.to_ascii_uppercase() {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    ALPHABET.iter().zip(0..).find(|(&a, _)| a == c).map(|(_, v)| v)
}

/// Multiplication in GF(32) modulo x⁵ + x² + 1.
fn gf32_mul(mut a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0b10_0000 != 0 {
            a ^= 0b10_0101;
        }
    }
    p & 31
}

/// The check symbol (a byte of [`ALPHABET`]) of symbol values `values` (each 0–31):
/// `Σ αⁱ·vᵢ` in GF(32) with α = x, i.e. weights 1, 2, 4, 8, 16, 5, 10, … (addition is XOR).
pub fn check_symbol(values: &[u32]) -> u8 {
    let mut weight = 1;
    let mut sum = 0;
    for &v in values {
        sum ^= gf32_mul(weight, v & 31);
        weight = gf32_mul(weight, 2);
    }
    symbol(sum)
}

/// Groups symbols by four with dashes: `ABCDEFGH` → `ABCD-EFGH`.
pub fn group(symbols: &str) -> String {
    let mut out = String::with_capacity(symbols.len() + symbols.len() / GROUP);
    for (i, c) in symbols.chars().enumerate() {
        if i > 0 && i % GROUP == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{OsRng, RngCore};

    #[test]
    fn every_single_substitution_and_adjacent_swap_is_caught() {
        for n in 0..300 {
            let prefix = ["", "APP", "x1", "ABCDEFGH"][n % 4];
            let key = LicenseKey::generate(Some(prefix), &mut OsRng).unwrap();
            assert_eq!(LicenseKey::parse(key.canonical()).unwrap(), key);
            let head = key.prefix().map(|p| format!("{p}-")).unwrap_or_default();
            let body: Vec<u8> = key.canonical()[head.len()..].bytes().filter(|&b| b != b'-').collect();
            assert_eq!(body.len(), KEY_SYMBOLS + 1);
            let typed = |b: &[u8]| format!("{head}{}", String::from_utf8_lossy(b));
            for i in 0..body.len() {
                for &alt in ALPHABET.iter().filter(|&&a| a != body[i]) {
                    let mut b = body.clone();
                    b[i] = alt;
                    assert_eq!(LicenseKey::parse(&typed(&b)), Err(KeyError::BadCheckCharacter));
                }
                if i + 1 < body.len() && body[i] != body[i + 1] {
                    let mut b = body.clone();
                    b.swap(i, i + 1);
                    assert_eq!(LicenseKey::parse(&typed(&b)), Err(KeyError::BadCheckCharacter));
                }
            }
        }
    }

    #[test]
    fn every_error_pattern_is_caught_whatever_the_key() {
        // The check is linear, so whether an error is caught depends only on the error: a
        // substitution adds d ≠ 0 at position i, a swap adds d at i and i+1 (d = a ⊕ b ≠ 0).
        let mut base = [0u32; KEY_SYMBOLS + 1];
        base[KEY_SYMBOLS] = value_of(check_symbol(&base[..KEY_SYMBOLS])).unwrap();
        let caught = |v: &[u32]| symbol(v[KEY_SYMBOLS]) != check_symbol(&v[..KEY_SYMBOLS]);
        for i in 0..=KEY_SYMBOLS {
            for d in 1..32 {
                let mut v = base;
                v[i] ^= d;
                assert!(caught(&v), "substitution at {i}");
                if i < KEY_SYMBOLS {
                    v[i + 1] ^= d;
                    assert!(caught(&v), "swap at {i}");
                }
            }
        }
    }

    #[test]
    fn typing_is_lenient() {
        let key = LicenseKey::generate(Some("app"), &mut OsRng).unwrap();
        assert_eq!(key.prefix(), Some("APP"));
        assert_eq!(key.canonical().len(), 4 + 24 + 5);
        let typed = key.canonical().to_lowercase().replace('-', " ");
        assert_eq!(LicenseKey::parse(&format!("  {typed}\n")).unwrap(), key);
        assert_eq!(parse_key(&key.canonical().replace('-', "")).unwrap(), key.canonical());
        let aliased = key.canonical()[4..].replace('0', "o").replace('1', "l");
        assert_eq!(LicenseKey::parse(&format!("APP-{aliased}")).unwrap(), key);
        assert_eq!(key.to_string().parse::<LicenseKey>().unwrap(), key);

        let plain = LicenseKey::generate(None, &mut OsRng).unwrap();
        assert_eq!(plain.prefix(), None);
        assert_eq!(plain.canonical().len(), 24 + 5);
        assert_eq!(LicenseKey::generate(Some(""), &mut OsRng).unwrap().prefix(), None);
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let valid = LicenseKey::generate(None, &mut OsRng).unwrap();
        for bad in [
            String::new(),
            "hello".into(),
            "ÄÖÜ-ÄÖÜÄ-ÖÜÄÖ-ÜÄÖÜ-ÄÖÜÄ-ÖÜÄÖ".into(),
            "A".repeat(500),
            format!("TOOLONGPREFIX-{valid}"),
            format!("AP_P-{valid}"),
            valid.canonical().replace('-', "").replacen(|_| true, "U", 1),
            valid.canonical()[1..].to_string(),
        ] {
            assert_eq!(LicenseKey::parse(&bad), Err(KeyError::Malformed), "{bad}");
        }
        for bad_prefix in ["TOOLONGPX", "A-B", "ÄB"] {
            assert_eq!(
                LicenseKey::generate(Some(bad_prefix), &mut OsRng),
                Err(KeyError::Malformed)
            );
        }
        let mut junk = [0u8; 64];
        for _ in 0..2000 {
            OsRng.fill_bytes(&mut junk);
            let _ = LicenseKey::parse(&String::from_utf8_lossy(&junk[..(junk[0] % 64) as usize]));
        }
    }

    #[test]
    fn weights_are_the_powers_of_alpha() {
        let unit = |i: usize| {
            let mut v = [0u32; KEY_SYMBOLS];
            v[i] = 1;
            check_symbol(&v)
        };
        assert_eq!((0..7).map(unit).collect::<Vec<_>>(), b"1248G5A");
    }
}
