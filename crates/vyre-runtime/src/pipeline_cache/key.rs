//! [`CacheKey`]: blake3 over named, length-prefixed parts.

use std::fmt;

const KEY_CONTEXT: &str = "vyre 2025-01 pipeline cache key v1";

/// A content address: blake3 over named parts, in order. Build one with [`CacheKey::builder`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Starts a key; add every input that changes the compiled blob with [`CacheKeyBuilder::part`].
    pub fn builder() -> CacheKeyBuilder {
        CacheKeyBuilder {
            hasher: blake3::Hasher::new_derive_key(KEY_CONTEXT),
        }
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 lowercase hex digits (also the blob's file stem).
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.hex())
    }
}

/// Accumulates the named parts of a [`CacheKey`].
///
/// Each part is hashed as its name and its value, each preceded by its length, so parts cannot
/// run into each other: `("a", "bc")` and `("ab", "c")` give different keys. Order matters.
#[derive(Clone)]
pub struct CacheKeyBuilder {
    hasher: blake3::Hasher,
}

impl CacheKeyBuilder {
    /// Adds one part, e.g. `("arch", "sm_90")`, `("source", kernel_text)`.
    #[must_use]
    pub fn part(mut self, name: &str, value: impl AsRef<[u8]>) -> CacheKeyBuilder {
        let value = value.as_ref();
        self.hasher.update(&(name.len() as u64).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self
    }

    /// The key of the parts added so far.
    pub fn finish(&self) -> CacheKey {
        CacheKey(*self.hasher.finalize().as_bytes())
    }
}

impl fmt::Debug for CacheKeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKeyBuilder").finish_non_exhaustive()
    }
}

/// Lowercase hex digits of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: &[(&str, &str)]) -> CacheKey {
        parts
            .iter()
            .fold(CacheKey::builder(), |b, (n, v)| b.part(n, v))
            .finish()
    }

    #[test]
    fn key_parts_cannot_run_into_each_other() {
        assert_ne!(key(&[("a", "bc")]), key(&[("ab", "c")]));
        assert_ne!(
            key(&[("x", "ab"), ("y", "")]),
            key(&[("x", "a"), ("y", "b")])
        );
        assert_ne!(
            key(&[("x", "1"), ("y", "2")]),
            key(&[("y", "2"), ("x", "1")])
        );
        assert_ne!(key(&[]), key(&[("", "")]));
        assert_eq!(key(&[("arch", "sm_90")]), key(&[("arch", "sm_90")]));
        let hex = key(&[("arch", "sm_90")]).hex();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
