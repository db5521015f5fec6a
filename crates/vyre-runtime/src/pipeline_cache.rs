//! The pipeline cache: compiled kernels and driver pipeline-cache data, content-addressed.
//!
//! Backends compile at run time (CUDA: NVRTC, wgpu: the driver's pipeline cache); this
//! module keeps the resulting blobs so a warm start skips the compile. A [`CacheKey`] is the
//! blake3 hash of named parts (kernel source, options, architecture, compiler version,
//! backend, device). [`PipelineCache`] holds a byte-bounded LRU in memory over a directory of
//! `<key hex>.vpc` files (see [`CacheConfig::from_env`] for where).
//!
//! Each file has a header ([`encode_blob`], [`decode_blob`]), all little-endian:
//!
//! | field            | bytes                                  |
//! |------------------|----------------------------------------|
//! | magic            | 8: [`MAGIC`]                           |
//! | format version   | u32: [`FORMAT_VERSION`]                |
//! | producer version | u32 length + UTF-8 ([`PRODUCER_VERSION`]) |
//! | backend          | u32 length + UTF-8                     |
//! | device key       | u32 length + UTF-8                     |
//! | content hash     | 32: blake3 of the payload              |
//! | payload length   | u64                                    |
//! | payload          | payload length bytes, then end of file |
//!
//! Files are written atomically (temporary file in the same directory, fsync, rename). A blob
//! that is truncated, corrupt, foreign, of another format or producer version, or for another
//! backend or device is rejected with a [`BlobError`], logged, removed, and rebuilt: the cache
//! itself never fails a call and never returns a wrong blob. Every outcome is named
//! ([`CacheSource`], [`MissReason`]) so `vyre info` can show cold and warm start times.
//!
//! ```
//! use vyre_runtime::pipeline_cache::{BlobMeta, CacheConfig, CacheKey, CacheSource, PipelineCache};
//!
//! let cache = PipelineCache::new(CacheConfig::memory_only());
//! let key = CacheKey::builder()
//!     .part("backend", "cuda")
//!     .part("arch", "sm_90")
//!     .part("source", "extern \"C\" __global__ void megakernel() {}")
//!     .finish();
//! let meta = BlobMeta::new("cuda", "sm_90");
//! let compile = || Ok::<_, std::convert::Infallible>(b"cubin".to_vec());
//! let cold = cache.get_or_build(&key, &meta, compile).unwrap();
//! assert!(matches!(cold.source, CacheSource::Built { .. }));
//! let warm = cache.get_or_build(&key, &meta, compile).unwrap();
//! assert!(matches!(warm.source, CacheSource::Memory));
//! assert_eq!(&warm.bytes[..], b"cubin");
//! println!("{cold}, {warm}"); // cold start (build; not cached) 0.1 ms, warm start (memory hit) 0.0 ms
//! ```

mod blob;
mod key;
mod lru;

pub use blob::{
    decode_blob, encode_blob, BlobError, BlobMeta, DecodedBlob, FORMAT_VERSION, MAGIC,
    PRODUCER_VERSION,
};
pub use key::{CacheKey, CacheKeyBuilder};

use lru::Lru;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Extension of blob files in the cache directory.
pub const BLOB_EXTENSION: &str = "vpc";
/// Default memory budget of the in-memory LRU: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// Distinguishes temporary files of one process; with the pid, names are unique.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where a [`PipelineCache`] keeps blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The blob directory, created if missing; `None` keeps blobs in memory only.
    pub dir: Option<PathBuf>,
    /// Bytes of payload the in-memory LRU holds at most; a larger blob is kept on disk only.
    pub memory_budget: u64,
}

impl CacheConfig {
    /// The user's cache directory: `$VYRE_CACHE_DIR` if set, else
    /// `$XDG_CACHE_HOME/vyre/pipelines`, else `$HOME/.cache/vyre/pipelines`; memory only when
    /// none is set. Budget [`DEFAULT_MEMORY_BUDGET`].
    pub fn from_env() -> CacheConfig {
        CacheConfig {
            dir: resolve_cache_dir(|name| std::env::var_os(name)),
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }

    /// Blobs in `dir`, default budget.
    pub fn in_dir(dir: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            dir: Some(dir.into()),
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }

    /// No directory, default budget.
    pub fn memory_only() -> CacheConfig {
        CacheConfig {
            dir: None,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }

    /// The same with another memory budget in bytes.
    #[must_use]
    pub fn with_memory_budget(mut self, bytes: u64) -> CacheConfig {
        self.memory_budget = bytes;
        self
    }
}

impl Default for CacheConfig {
    /// [`CacheConfig::from_env`].
    fn default() -> CacheConfig {
        CacheConfig::from_env()
    }
}

/// The default directory rule of [`CacheConfig::from_env`], over an environment lookup.
/// Empty variables count as unset; a relative `XDG_CACHE_HOME` is ignored, as the XDG
/// specification says.
fn resolve_cache_dir(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("VYRE_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(xdg) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("vyre").join("pipelines"));
    }
    set("HOME").map(|home| home.join(".cache").join("vyre").join("pipelines"))
}

/// Why a configured cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheDirError {
    /// No directory was configured and none of the environment variables is set.
    #[error("no pipeline cache directory: none of VYRE_CACHE_DIR, XDG_CACHE_HOME, HOME is set; set VYRE_CACHE_DIR to keep compiled pipelines across runs")]
    NoLocation,
    /// Creating the directory or a file in it failed.
    #[error("pipeline cache directory {} is not usable; set VYRE_CACHE_DIR to a writable directory", dir.display())]
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Where a [`PipelineCache`] ended up keeping blobs, and why (shown by `vyre info`).
#[derive(Debug)]
pub enum Storage {
    /// Memory over this directory.
    Disk(PathBuf),
    /// Memory only, as configured.
    MemoryOnly,
    /// Memory only because no directory could be used.
    MemoryOnlyFallback(CacheDirError),
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Disk(dir) => write!(f, "disk: {}", dir.display()),
            Storage::MemoryOnly => f.write_str("memory only (configured)"),
            Storage::MemoryOnlyFallback(e) => write!(f, "memory only: {e}"),
        }
    }
}

/// Why a request was built rather than served from the cache.
#[derive(Debug)]
pub enum MissReason {
    /// Neither in memory nor on disk.
    Absent,
    /// On disk from another format or producer version; replaced.
    Stale(BlobError),
    /// On disk but truncated, corrupt, foreign or for another backend/device; removed, replaced.
    Corrupt(BlobError),
    /// On disk but unreadable; removed if possible, replaced.
    Unreadable(BlobError),
}

impl MissReason {
    fn from_error(e: BlobError) -> MissReason {
        match e {
            e @ BlobError::Read { .. } => MissReason::Unreadable(e),
            e if e.is_stale() => MissReason::Stale(e),
            e => MissReason::Corrupt(e),
        }
    }

    /// The rejected blob's error, if a blob was found.
    pub fn error(&self) -> Option<&BlobError> {
        match self {
            MissReason::Absent => None,
            MissReason::Stale(e) | MissReason::Corrupt(e) | MissReason::Unreadable(e) => Some(e),
        }
    }
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissReason::Absent => f.write_str("not cached"),
            MissReason::Stale(e) => write!(f, "stale: {e}"),
            MissReason::Corrupt(e) => write!(f, "corrupt: {e}"),
            MissReason::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

/// Where the bytes of a [`Cached`] came from.
#[derive(Debug)]
pub enum CacheSource {
    /// The in-memory LRU.
    Memory,
    /// A blob file.
    Disk,
    /// The builder ran (compile), for this reason.
    Built {
        /// Why the cache could not serve it.
        reason: MissReason,
    },
}

impl fmt::Display for CacheSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheSource::Memory => f.write_str("warm start (memory hit)"),
            CacheSource::Disk => f.write_str("warm start (disk hit)"),
            CacheSource::Built { reason } => write!(f, "cold start (build; {reason})"),
        }
    }
}

/// The answer of [`PipelineCache::get_or_build`].
#[derive(Debug)]
pub struct Cached {
    /// The blob's payload.
    pub bytes: Arc<[u8]>,
    /// Memory, disk or built.
    pub source: CacheSource,
    /// Time from the call to the answer, build included.
    pub elapsed: Duration,
}

impl fmt::Display for Cached {
    /// E.g. `warm start (disk hit) 3.1 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.elapsed.as_secs_f64() * 1e3;
        write!(f, "{} {ms:.1} ms", self.source)
    }
}

/// Counters since the cache was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Served from memory.
    pub memory_hits: u64,
    /// Served from a blob file.
    pub disk_hits: u64,
    /// Builder calls that succeeded.
    pub builds: u64,
    /// Builder calls that failed.
    pub build_failures: u64,
    /// Blob files rejected as stale.
    pub stale: u64,
    /// Blob files rejected as corrupt, unreadable or mismatched.
    pub rejected: u64,
    /// Memory entries evicted for the budget.
    pub evictions: u64,
    /// Blob files written.
    pub disk_writes: u64,
    /// Blob files that could not be written.
    pub disk_write_failures: u64,
    /// Entries in memory now.
    pub memory_entries: u64,
    /// Payload bytes in memory now.
    pub memory_bytes: u64,
    /// The memory budget.
    pub memory_budget: u64,
}

/// Compiled pipelines by [`CacheKey`]: a byte-bounded LRU in memory over a blob directory.
/// Thread-safe; concurrent requests for one key build it once.
pub struct PipelineCache {
    storage: Storage,
    state: Mutex<State>,
    /// Signalled when a key leaves `State::in_flight`.
    done: Condvar,
}

struct State {
    lru: Lru,
    in_flight: HashSet<CacheKey>,
    stats: CacheStats,
    warned_write: bool,
}

impl fmt::Debug for PipelineCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineCache")
            .field("storage", &self.storage)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PipelineCache {
    /// A cache as configured. The directory is created and probed with a test file; when that
    /// fails the cache keeps working in memory only and says so once with `tracing::warn!`.
    pub fn new(config: CacheConfig) -> PipelineCache {
        PipelineCache::with_storage(open_storage(config.dir, true), config.memory_budget)
    }

    /// A cache in the user's cache directory ([`CacheConfig::from_env`]); memory only, with a
    /// warning, when there is none.
    pub fn open_default() -> PipelineCache {
        let config = CacheConfig::from_env();
        let explicit = config.dir.is_some();
        PipelineCache::with_storage(open_storage(config.dir, explicit), config.memory_budget)
    }

    fn with_storage(storage: Storage, memory_budget: u64) -> PipelineCache {
        match &storage {
            Storage::Disk(dir) => tracing::debug!(dir = %dir.display(), "pipeline cache on disk"),
            Storage::MemoryOnly => tracing::debug!("pipeline cache in memory only (configured)"),
            Storage::MemoryOnlyFallback(e) => {
                tracing::warn!("pipeline cache works in memory only: {e}")
            }
        }
        PipelineCache {
            storage,
            state: Mutex::new(State {
                lru: Lru::new(memory_budget),
                in_flight: Default::default(),
                stats: CacheStats::default(),
                warned_write: false,
            }),
            done: Condvar::new(),
        }
    }

    /// Where blobs are kept.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The blob directory, if on disk.
    pub fn dir(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Disk(dir) => Some(dir),
            _ => None,
        }
    }

    /// The file a key's blob is stored in, if on disk.
    pub fn blob_path(&self, key: &CacheKey) -> Option<PathBuf> {
        self.dir()
            .map(|d| d.join(format!("{}.{BLOB_EXTENSION}", key.hex())))
    }

    /// Counters and memory use.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            memory_entries: state.lru.map.len() as u64,
            memory_bytes: state.lru.bytes,
            memory_budget: state.lru.budget,
            ..state.stats
        }
    }

    /// Drops every in-memory entry (blob files stay).
    pub fn clear_memory(&self) {
        self.lock().lru.clear();
    }

    /// The blob for `key`: from memory, else from disk (checked against `meta`), else from
    /// `build`, whose bytes are then stored. A bad blob file is logged, removed and rebuilt. A
    /// failing `build` is returned as is and nothing is stored. While one thread builds a key,
    /// other threads asking for it wait and then share the result; `build` must therefore not
    /// ask this cache for the same key.
    pub fn get_or_build<E>(
        &self,
        key: &CacheKey,
        meta: &BlobMeta,
        build: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Cached, E> {
        self.get_or_build_keep(key, meta, || build().map(|b| (b, true)))
    }

    /// [`PipelineCache::get_or_build`] whose `build` also says whether its blob is worth
    /// keeping: `false` (e.g. it took microseconds to build) stores nothing, in memory or on
    /// disk.
    pub fn get_or_build_keep<E>(
        &self,
        key: &CacheKey,
        meta: &BlobMeta,
        build: impl FnOnce() -> Result<(Vec<u8>, bool), E>,
    ) -> Result<Cached, E> {
        let start = Instant::now();
        let mut state = self.lock();
        loop {
            if let Some(bytes) = state.lru.get(key, meta) {
                state.stats.memory_hits += 1;
                drop(state);
                tracing::trace!(%key, "pipeline cache memory hit");
                return Ok(Cached {
                    bytes,
                    source: CacheSource::Memory,
                    elapsed: start.elapsed(),
                });
            }
            if state.in_flight.insert(*key) {
                break;
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(state);
        let _flight = InFlight { cache: self, key };

        let reason = match self.load(key, meta) {
            Ok(Some(bytes)) => {
                let mut state = self.lock();
                state.stats.disk_hits += 1;
                state.insert(*key, meta, bytes.clone());
                drop(state);
                let elapsed = start.elapsed();
                tracing::debug!(%key, ?elapsed, "pipeline cache disk hit");
                return Ok(Cached {
                    bytes,
                    source: CacheSource::Disk,
                    elapsed,
                });
            }
            Ok(None) => MissReason::Absent,
            Err(e) => {
                tracing::warn!("{e}");
                remove_file_logged(e.path());
                let mut state = self.lock();
                if e.is_stale() {
                    state.stats.stale += 1;
                } else {
                    state.stats.rejected += 1;
                }
                MissReason::from_error(e)
            }
        };

        let (bytes, keep): (Arc<[u8]>, bool) = match build() {
            Ok((bytes, keep)) => (bytes.into(), keep),
            Err(e) => {
                self.lock().stats.build_failures += 1;
                return Err(e);
            }
        };
        if !keep {
            self.lock().stats.builds += 1;
            return Ok(Cached {
                bytes,
                source: CacheSource::Built { reason },
                elapsed: start.elapsed(),
            });
        }
        let written = self.store(key, meta, &bytes);
        let mut state = self.lock();
        state.stats.builds += 1;
        match written {
            Some(Ok(())) => state.stats.disk_writes += 1,
            Some(Err(e)) => {
                state.stats.disk_write_failures += 1;
                let path = self.blob_path(key).unwrap_or_default();
                if std::mem::replace(&mut state.warned_write, true) {
                    tracing::debug!(path = %path.display(), "cannot write pipeline cache blob: {e}");
                } else {
                    tracing::warn!(path = %path.display(), "cannot write pipeline cache blob, it stays in memory only (further failures are logged at debug): {e}");
                }
            }
            None => {}
        }
        state.insert(*key, meta, bytes.clone());
        drop(state);
        let elapsed = start.elapsed();
        tracing::info!(%key, backend = meta.backend(), %reason, ?elapsed, "pipeline cache miss: built");
        Ok(Cached {
            bytes,
            source: CacheSource::Built { reason },
            elapsed,
        })
    }

    /// Stores `payload` as `key`'s blob, in memory and on disk, replacing what was there
    /// (e.g. a blob whose payload its user could not decode). `None` when memory only.
    pub fn replace(
        &self,
        key: &CacheKey,
        meta: &BlobMeta,
        payload: &[u8],
    ) -> Option<io::Result<()>> {
        self.lock().insert(*key, meta, payload.into());
        self.store(key, meta, payload)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The blob file's payload: `Ok(None)` when absent or memory only.
    fn load(&self, key: &CacheKey, meta: &BlobMeta) -> Result<Option<Arc<[u8]>>, BlobError> {
        let Some(path) = self.blob_path(key) else {
            return Ok(None);
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobError::Read { path, source }),
        };
        let blob = decode_blob(&bytes, &path)?;
        blob.check(meta, &path)?;
        Ok(Some(blob.payload.into()))
    }

    /// Writes the blob file atomically; `None` when memory only.
    fn store(&self, key: &CacheKey, meta: &BlobMeta, payload: &[u8]) -> Option<io::Result<()>> {
        let dir = self.dir()?;
        let path = self.blob_path(key)?;
        Some(write_atomic(dir, &path, &encode_blob(meta, payload)))
    }
}

/// Removes a key from `in_flight` and wakes waiters, also when the builder panics.
struct InFlight<'a> {
    cache: &'a PipelineCache,
    key: &'a CacheKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.cache.lock().in_flight.remove(self.key);
        self.cache.done.notify_all();
    }
}

impl State {
    fn insert(&mut self, key: CacheKey, meta: &BlobMeta, bytes: Arc<[u8]>) {
        self.stats.evictions += self.lru.insert(key, meta, bytes);
    }
}

/// Creates and probes the directory. No directory is [`Storage::MemoryOnly`] when `explicit`
/// (configured so), else a fallback to warn about (the default location was asked for).
fn open_storage(dir: Option<PathBuf>, explicit: bool) -> Storage {
    let Some(dir) = dir else {
        return if explicit {
            Storage::MemoryOnly
        } else {
            Storage::MemoryOnlyFallback(CacheDirError::NoLocation)
        };
    };
    match probe_dir(&dir) {
        Ok(()) => Storage::Disk(dir),
        Err(source) => Storage::MemoryOnlyFallback(CacheDirError::Unusable { dir, source }),
    }
}

fn probe_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = temp_path(dir, "probe");
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"vyre"));
    let _ = fs::remove_file(&probe);
    result
}

/// `.<stem>.<pid>.<counter>.tmp` in `dir`: never a `.vpc` name, unique across processes.
fn temp_path(dir: &Path, stem: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{stem}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to a temporary file in `dir`, fsyncs it, renames it over `path`, and fsyncs
/// the directory where the platform allows. The temporary file is removed on failure.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("blob");
    let tmp = temp_path(dir, stem);
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Makes the rename durable on Unix; opening a directory fails elsewhere, which is fine.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn remove_file_logged(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot remove bad pipeline cache blob: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_resolution_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = env(&[
            ("VYRE_CACHE_DIR", "/v"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(resolve_cache_dir(all), Some(PathBuf::from("/v")));
        let xdg = env(&[
            ("VYRE_CACHE_DIR", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(
            resolve_cache_dir(xdg),
            Some(PathBuf::from("/x/vyre/pipelines"))
        );
        let rel = env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(
            resolve_cache_dir(rel),
            Some(PathBuf::from("/h/.cache/vyre/pipelines"))
        );
        assert_eq!(resolve_cache_dir(env(&[("HOME", "")])), None);
    }
}
