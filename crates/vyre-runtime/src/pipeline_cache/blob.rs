//! The blob file format (see the table in [`super`]): encode, checked decode, [`BlobError`].

use super::key::hex;
use std::io;
use std::path::{Path, PathBuf};

/// First 8 bytes of every blob file.
pub const MAGIC: [u8; 8] = *b"VYREPC\0\x01";
/// Version of the file layout described in the module documentation.
pub const FORMAT_VERSION: u32 = 1;
/// The producer version written into every blob; a blob from another version is stale.
pub const PRODUCER_VERSION: &str = env!("CARGO_PKG_VERSION");

const HEADER_FIXED: usize = 8 + 4;

/// What a blob is for, written into its header and checked on load.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlobMeta {
    backend: String,
    device_key: String,
}

impl BlobMeta {
    /// `backend` is the backend name (`cuda`, `wgpu`); `device_key` names the device and driver
    /// the blob is valid for (e.g. `"sm_90/driver 12.4"`).
    pub fn new(backend: impl Into<String>, device_key: impl Into<String>) -> BlobMeta {
        BlobMeta {
            backend: backend.into(),
            device_key: device_key.into(),
        }
    }

    /// The backend name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The device key.
    pub fn device_key(&self) -> &str {
        &self.device_key
    }
}

/// Why a blob file was rejected. The cache removes the file and rebuilds; every message says
/// which file, what is wrong and what to do if it keeps happening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The file exists but could not be read.
    #[error("cannot read pipeline cache blob {}; it is rebuilt, check the cache directory's permissions if this repeats", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file ends inside a field.
    #[error("pipeline cache blob {} is truncated: {field} needs {needed} bytes at offset {offset} but the file has {len}; it is rebuilt, check free disk space if this repeats", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The field cut short.
        field: &'static str,
        /// Where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// The file's length.
        len: u64,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{} is not a vyre pipeline cache blob (magic {found:02x?}); it is removed, keep other files out of the cache directory", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes found (fewer than 8 when the file is shorter).
        found: Vec<u8>,
    },
    /// Another file layout version.
    #[error("pipeline cache blob {} has format version {found}, this build reads {supported}; stale, it is rebuilt", path.display())]
    FormatVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// Written by another vyre version.
    #[error("pipeline cache blob {} was written by vyre-runtime {found}, this is {current}; stale, it is rebuilt", path.display())]
    ProducerVersion {
        /// The file.
        path: PathBuf,
        /// The producer version in the file.
        found: String,
        /// [`PRODUCER_VERSION`].
        current: &'static str,
    },
    /// A header string is not UTF-8.
    #[error("pipeline cache blob {} is corrupt: {field} is not UTF-8; it is rebuilt", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
    },
    /// The header names another backend or device than the key was asked for.
    #[error("pipeline cache blob {} is for {field} `{found}`, expected `{expected}`; it is rebuilt, include the {field} in the cache key", path.display())]
    MetaMismatch {
        /// The file.
        path: PathBuf,
        /// `backend` or `device key`.
        field: &'static str,
        /// What the header says.
        found: String,
        /// What the caller asked for.
        expected: String,
    },
    /// The file is longer than its header says.
    #[error("pipeline cache blob {} is corrupt: header declares a {declared}-byte payload but {actual} bytes follow; it is rebuilt", path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Payload length in the header.
        declared: u64,
        /// Bytes after the header.
        actual: u64,
    },
    /// The payload's blake3 does not match the header.
    #[error("pipeline cache blob {} is corrupt: payload hash {} does not match header hash {}; it is rebuilt, check the disk if this repeats", path.display(), hex(found), hex(expected))]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// Hash in the header.
        expected: [u8; 32],
        /// Hash of the payload.
        found: [u8; 32],
    },
}

impl BlobError {
    /// The file concerned.
    pub fn path(&self) -> &Path {
        match self {
            BlobError::Read { path, .. }
            | BlobError::Truncated { path, .. }
            | BlobError::BadMagic { path, .. }
            | BlobError::FormatVersion { path, .. }
            | BlobError::ProducerVersion { path, .. }
            | BlobError::InvalidUtf8 { path, .. }
            | BlobError::MetaMismatch { path, .. }
            | BlobError::TrailingBytes { path, .. }
            | BlobError::HashMismatch { path, .. } => path,
        }
    }

    /// True when the blob is well-formed but from another format or producer version.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            BlobError::FormatVersion { .. } | BlobError::ProducerVersion { .. }
        )
    }
}

/// A structurally valid blob whose payload matches its hash. Producer version, backend and
/// device are not yet checked against a request: see [`DecodedBlob::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBlob<'a> {
    /// Producer version in the header.
    pub producer_version: &'a str,
    /// Backend in the header.
    pub backend: &'a str,
    /// Device key in the header.
    pub device_key: &'a str,
    /// The payload (its blake3 is verified).
    pub payload: &'a [u8],
}

impl DecodedBlob<'_> {
    /// Checks that the blob is from this producer version and for `meta`; `path` is for the error.
    pub fn check(&self, meta: &BlobMeta, path: &Path) -> Result<(), BlobError> {
        if self.producer_version != PRODUCER_VERSION {
            return Err(BlobError::ProducerVersion {
                path: path.to_path_buf(),
                found: self.producer_version.to_string(),
                current: PRODUCER_VERSION,
            });
        }
        for (field, found, expected) in [
            ("backend", self.backend, meta.backend()),
            ("device key", self.device_key, meta.device_key()),
        ] {
            if found != expected {
                return Err(BlobError::MetaMismatch {
                    path: path.to_path_buf(),
                    field,
                    found: found.to_string(),
                    expected: expected.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Encodes a blob file: header for `meta` and this producer version, then `payload`.
pub fn encode_blob(meta: &BlobMeta, payload: &[u8]) -> Vec<u8> {
    let strings = [PRODUCER_VERSION, meta.backend(), meta.device_key()];
    let strings_len: usize = strings.iter().map(|s| 4 + s.len()).sum();
    let mut out = Vec::with_capacity(HEADER_FIXED + strings_len + 40 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for s in strings {
        let len = u32::try_from(s.len()).expect("header strings are shorter than 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes untrusted blob bytes: magic, format version, lengths and the payload hash. `path`
/// only names the file in errors.
pub fn decode_blob<'a>(bytes: &'a [u8], path: &Path) -> Result<DecodedBlob<'a>, BlobError> {
    let mut r = Reader {
        bytes,
        pos: 0,
        path,
    };
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] {
        return Err(BlobError::BadMagic {
            path: path.to_path_buf(),
            found: head.to_vec(),
        });
    }
    r.take(MAGIC.len(), "magic")?;
    let format = r.u32("format version")?;
    if format != FORMAT_VERSION {
        return Err(BlobError::FormatVersion {
            path: path.to_path_buf(),
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let producer_version = r.string("producer version")?;
    let backend = r.string("backend")?;
    let device_key = r.string("device key")?;
    let expected: [u8; 32] = r.take(32, "content hash")?.try_into().expect("32 bytes");
    let declared = r.u64("payload length")?;
    let actual = (bytes.len() - r.pos) as u64;
    if actual < declared {
        return Err(r.truncated("payload", declared));
    }
    if actual > declared {
        return Err(BlobError::TrailingBytes {
            path: path.to_path_buf(),
            declared,
            actual,
        });
    }
    let payload = &bytes[r.pos..];
    let found = *blake3::hash(payload).as_bytes();
    if found != expected {
        return Err(BlobError::HashMismatch {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(DecodedBlob {
        producer_version,
        backend,
        device_key,
        payload,
    })
}

struct Reader<'a, 'p> {
    bytes: &'a [u8],
    pos: usize,
    path: &'p Path,
}

impl<'a> Reader<'a, '_> {
    fn truncated(&self, field: &'static str, needed: u64) -> BlobError {
        BlobError::Truncated {
            path: self.path.to_path_buf(),
            field,
            offset: self.pos as u64,
            needed,
            len: self.bytes.len() as u64,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BlobError> {
        if self.bytes.len() - self.pos < n {
            return Err(self.truncated(field, n as u64));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, BlobError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, BlobError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, field: &'static str) -> Result<&'a str, BlobError> {
        let len = self.u32(field)? as usize;
        let b = self.take(len, field)?;
        std::str::from_utf8(b).map_err(|_| BlobError::InvalidUtf8 {
            path: self.path.to_path_buf(),
            field,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_every_truncation_is_an_error() {
        let meta = BlobMeta::new("cuda", "sm_90");
        let payload = b"ptx or cubin bytes";
        let blob = encode_blob(&meta, payload);
        let path = Path::new("x.vpc");
        let decoded = decode_blob(&blob, path).unwrap();
        assert_eq!(decoded.payload, payload);
        assert_eq!(decoded.backend, "cuda");
        assert_eq!(decoded.device_key, "sm_90");
        assert_eq!(decoded.producer_version, PRODUCER_VERSION);
        decoded.check(&meta, path).unwrap();
        let other = BlobMeta::new("cuda", "sm_80");
        assert!(matches!(
            decoded.check(&other, path),
            Err(BlobError::MetaMismatch {
                field: "device key",
                ..
            })
        ));
        for len in 0..blob.len() {
            let err = decode_blob(&blob[..len], path).unwrap_err();
            assert!(matches!(err, BlobError::Truncated { .. }), "{len}: {err}");
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(matches!(
            decode_blob(&long, path),
            Err(BlobError::TrailingBytes {
                declared: 18,
                actual: 19,
                ..
            })
        ));
    }

    #[test]
    fn no_single_byte_change_yields_a_wrong_payload() {
        let meta = BlobMeta::new("wgpu", "vendor 0x10de");
        let payload = b"driver pipeline cache data";
        let blob = encode_blob(&meta, payload);
        let path = Path::new("x.vpc");
        for at in 0..blob.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[at] ^= flip;
                match decode_blob(&bad, path) {
                    Err(_) => {}
                    Ok(d) => {
                        assert_eq!(d.payload, payload, "byte {at} ^ {flip:#x}");
                        assert!(d.check(&meta, path).is_err(), "byte {at} ^ {flip:#x}");
                    }
                }
            }
        }
        let foreign = decode_blob(b"\x7fELF\x02\x01\x01\0", path).unwrap_err();
        assert!(matches!(foreign, BlobError::BadMagic { .. }), "{foreign}");
    }
}
