//! The reader thread: opens files, schedules reads, reorders completions into per-file
//! order, handles short reads, shrinking files, refused O_DIRECT and read errors, and
//! sends events. Safe code; the reads themselves are in `io.rs`.

use crate::io::{self, Io, PlainIo, ReadOp, UringIo};
use crate::pool::Pool;
use crate::region::Region;
use crate::{
    Chunk, Counters, Direct, EngineChoice, EngineKind, Event, FileEnd, FileError, FileErrorKind,
    IngestConfig, IngestError,
};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

/// Files smaller than this are read buffered (O_DIRECT buys nothing for them).
const TINY: u64 = 4096;
/// Most events handed to the consumer at once.
pub(crate) const BATCH: usize = 64;
/// Alignment of O_DIRECT offsets and lengths.
const ALIGN: u64 = 4096;

/// Picks the reader: io_uring unless told otherwise or unavailable.
pub(crate) fn choose_io(
    config: &IngestConfig,
    region: Arc<Region>,
) -> Result<(Io, EngineKind), IngestError> {
    let plain = |reason: String| {
        (
            Io::Plain(PlainIo::new(region.clone())),
            EngineKind::Plain { reason },
        )
    };
    match config.engine {
        EngineChoice::Plain => Ok(plain("EngineChoice::Plain".into())),
        EngineChoice::Auto if crate::no_uring_env() => {
            tracing::warn!("VYRE_INGEST_NO_URING is set: reading with the plain pread reader");
            Ok(plain("VYRE_INGEST_NO_URING is set".into()))
        }
        choice => match if config.faults.uring_setup_fails {
            Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
        } else {
            UringIo::new(config.queue_depth, region.clone(), config.max_open_files)
        } {
            Ok(u) => {
                let fixed_buffers = u.fixed_buffers();
                Ok((Io::Uring(Box::new(u)), EngineKind::Uring { fixed_buffers }))
            }
            Err(e) if choice == EngineChoice::Auto => {
                // One warning per process, however many ingests start.
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "io_uring is unavailable (io_uring_setup failed: disabled by kernel.io_uring_disabled, seccomp or an old kernel); reading with the plain pread reader");
                }
                Ok(plain(format!("io_uring_setup failed: {e}")))
            }
            Err(e) => Err(IngestError::Uring(e)),
        },
    }
}

/// One open file.
#[derive(Debug)]
struct OpenFile {
    id: u64,
    path: PathBuf,
    file: File,
    fixed: Option<u32>,
    direct: bool,
    size_at_open: u64,
    /// Bytes to deliver: the size at open, lowered if a read finds the end earlier.
    end: u64,
    /// Next offset of the sequential schedule.
    next: u64,
    /// Reads to redo or complete: (offset, len) — continuations of short reads and
    /// reads retried without O_DIRECT.
    redo: VecDeque<(u64, u32)>,
    /// Delivered `0..delivered`.
    delivered: u64,
    /// The file's size as seen by a read that asked past the end and came back short
    /// (a regular file's read stops only at its end): the size reported at the end,
    /// without another fstat. `None` when no read saw the end, or the file shrank.
    size_seen: Option<u64>,
    /// Completed out of order: offset → (buffer, len).
    ready: BTreeMap<u64, (u32, u32)>,
    inflight: u32,
    failed: Option<FileError>,
}

impl OpenFile {
    fn has_work(&self) -> bool {
        self.failed.is_none() && (!self.redo.is_empty() || self.next < self.end)
    }
    fn finished(&self) -> bool {
        self.inflight == 0 && !self.has_work()
    }
}

#[derive(Clone, Copy, Debug)]
struct Op {
    file: usize,
    buf: u32,
    offset: u64,
    len: u32,
}

/// The reader state.
pub(crate) struct Engine {
    cfg: IngestConfig,
    io: Io,
    region: Arc<Region>,
    pool: Arc<Pool>,
    tx: SyncSender<Vec<Event>>,
    /// Events not yet handed over: sent as one batch per wake-up of the consumer.
    batch: Vec<Event>,
    counters: Arc<Counters>,
    files: Vec<Option<OpenFile>>,
    /// Open files in scheduling order (indices into `files`).
    active: VecDeque<usize>,
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    inflight: u32,
    reads_completed: u64,
    cancelled: bool,
    exhausted: bool,
    /// Whether opens still ask for O_NOATIME (off after the first EPERM).
    noatime: bool,
}

type Files = Box<dyn Iterator<Item = (u64, PathBuf)> + Send>;

impl Engine {
    pub(crate) fn new(
        cfg: IngestConfig,
        io: Io,
        region: Arc<Region>,
        pool: Arc<Pool>,
        tx: SyncSender<Vec<Event>>,
        counters: Arc<Counters>,
    ) -> Engine {
        Engine {
            cfg,
            io,
            region,
            pool,
            tx,
            batch: Vec::new(),
            counters,
            files: Vec::new(),
            active: VecDeque::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            inflight: 0,
            reads_completed: 0,
            cancelled: false,
            exhausted: false,
            noatime: true,
        }
    }

    fn send(&mut self, e: Event) {
        if self.cancelled {
            return;
        }
        self.batch.push(e);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Hands the pending events to the consumer (blocks while its queue is full).
    fn flush(&mut self) {
        if self.batch.is_empty() || self.cancelled {
            self.batch.clear();
            return;
        }
        if self.tx.send(std::mem::take(&mut self.batch)).is_err() {
            // The consumer is gone: stop reading, but still wait for reads in flight.
            self.cancelled = true;
        }
    }

    /// The thread body.
    pub(crate) fn run(mut self, mut files: Files) {
        let mut done = Vec::new();
        loop {
            let mut need_buffer = false;
            if self.counters.cancel.load(Ordering::Acquire) {
                self.cancelled = true;
                self.batch.clear();
            }
            if !self.cancelled {
                need_buffer = self.fill(&mut files);
            }
            // Hand over what is ready before any wait.
            self.flush();
            if self.inflight == 0 {
                if self.cancelled || (self.exhausted && self.active.is_empty()) {
                    break;
                }
                if need_buffer {
                    // Every buffer is held by the consumer: back-pressure.
                    self.pool.wait_free(Duration::from_millis(50));
                }
                continue;
            }
            done.clear();
            // Wait until the queue has drained to three quarters of its depth (at least one
            // completion): the disk keeps most of the queue, and each wake-up of this
            // thread and of the consumer carries several reads instead of one (a
            // 64 KiB-per-file ingest otherwise pays a wake-up pair per file).
            let min = self
                .inflight
                .saturating_sub(self.cfg.queue_depth - self.cfg.queue_depth / 4)
                .max(1);
            if let Err(e) = self.io.wait(min as usize, &mut done) {
                self.fatal(e);
                return;
            }
            for &(ud, res) in &done {
                self.complete(ud as usize, res);
            }
        }
        self.flush();
        let rest: Vec<usize> = self.active.drain(..).collect();
        for f in rest {
            self.close(f);
        }
    }

    /// The ring failed: reads may still be in flight, so the region must never be unmapped;
    /// every open file is reported.
    fn fatal(&mut self, e: std::io::Error) {
        tracing::error!(error = %e, "io_uring wait failed; ingest stops");
        std::mem::forget(self.region.clone());
        let keys: Vec<usize> = self.active.drain(..).collect();
        for k in keys {
            if let Some(f) = self.files[k].take() {
                let err = FileError {
                    file_id: f.id,
                    path: f.path.clone(),
                    kind: FileErrorKind::Read,
                    message: format!("io_uring failed: {e}"),
                    offset: Some(f.delivered),
                };
                std::mem::forget(f.file);
                self.send(Event::Error(err));
            }
        }
        std::mem::forget(std::mem::replace(
            &mut self.io,
            Io::Plain(PlainIo::new(self.region.clone())),
        ));
    }

    /// Submits reads while there is room, work and a free buffer. Returns whether it stopped
    /// for want of a buffer.
    fn fill(&mut self, files: &mut Files) -> bool {
        while self.inflight < self.cfg.queue_depth {
            let Some(k) = self.pick(files) else {
                return false;
            };
            let Some(buf) = self.pool.try_take() else {
                return true;
            };
            let block = self.cfg.block_size as u64;
            let f = self.files[k].as_mut().expect("active file");
            let (offset, len) = match f.redo.pop_front() {
                Some(r) => r,
                None => {
                    let offset = f.next;
                    let want = (f.end - offset).min(block);
                    let mut len = if f.direct {
                        want.next_multiple_of(ALIGN)
                    } else {
                        want
                    };
                    if offset + want == f.end {
                        // The last read asks for one page more: coming back short, it
                        // tells the size at the end (no second fstat per file).
                        len += ALIGN;
                    }
                    let len = len.min(block);
                    f.next = offset + want;
                    (offset, len as u32)
                }
            };
            self.submit(k, buf, offset, len);
        }
        false
    }

    fn submit(&mut self, k: usize, buf: u32, offset: u64, len: u32) {
        let f = self.files[k].as_mut().expect("active file");
        f.inflight += 1;
        let fd = f.file.as_raw_fd();
        let fixed = f.fixed;
        let c = &self.counters;
        Counters::bump(if f.direct {
            &c.direct_reads
        } else {
            &c.buffered_reads
        });
        if fixed.is_some() {
            Counters::bump(&c.fixed_file_reads);
        }
        let op = Op {
            file: k,
            buf,
            offset,
            len,
        };
        let slot = match self.free_ops.pop() {
            Some(s) => {
                self.ops[s] = Some(op);
                s
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        };
        self.inflight += 1;
        let r = self.io.push(ReadOp {
            fd,
            fixed,
            buf,
            offset,
            len,
            user_data: slot as u64,
        });
        if let Err(e) = r {
            // Not queued: the buffer is still ours.
            self.ops[slot] = None;
            self.free_ops.push(slot);
            self.inflight -= 1;
            self.pool.put(buf);
            let f = self.files[k].as_mut().expect("active file");
            f.inflight -= 1;
            self.fail(k, FileErrorKind::Read, e.to_string(), Some(offset));
        }
    }

    /// The first open file with work, opening new files as needed.
    fn pick(&mut self, files: &mut Files) -> Option<usize> {
        if let Some(&k) = self
            .active
            .iter()
            .find(|&&k| self.files[k].as_ref().is_some_and(|f| f.has_work()))
        {
            return Some(k);
        }
        while !self.exhausted && (self.active.len() as u32) < self.cfg.max_open_files {
            let Some((id, path)) = files.next() else {
                self.exhausted = true;
                break;
            };
            if let Some(k) = self.open(id, path) {
                if self.files[k].as_ref().is_some_and(|f| f.has_work()) {
                    return Some(k);
                }
                self.maybe_finish(k);
            }
            if self.cancelled {
                break;
            }
        }
        None
    }

    fn open(&mut self, id: u64, path: PathBuf) -> Option<usize> {
        let err = |kind, e: &dyn std::fmt::Display| FileError {
            file_id: id,
            path: path.clone(),
            kind,
            message: e.to_string(),
            offset: None,
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        // O_NOATIME: reading must not dirty every inode (a journal write per file on the
        // first scan of the day under relatime); only the owner (or CAP_FOWNER) may ask,
        // so after the first EPERM it is no longer asked for.
        let want_direct = self.cfg.direct == Direct::Auto;
        let noatime = &mut self.noatime;
        let mut open = |direct: bool| {
            let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
            if direct {
                flags |= libc::O_DIRECT;
            }
            let with = |flags: i32| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(&path)
            };
            if *noatime {
                match with(flags | libc::O_NOATIME) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => *noatime = false,
                    r => return r,
                }
            }
            with(flags)
        };
        let mut direct = want_direct;
        let opened = if want_direct && self.cfg.faults.einval_direct_open {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            open(want_direct)
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem refuses O_DIRECT: read it buffered.
                direct = false;
                Counters::bump(&self.counters.direct_refused);
                match open(false) {
                    Ok(f) => f,
                    Err(e) => return self.open_failed(id, &path, e),
                }
            }
            Err(e) => return self.open_failed(id, &path, e),
        };
        // One fstat on the open file decides (the path may be replaced at any time).
        let meta = match io::fstat(file.as_raw_fd()) {
            Ok(m) if m.kind == libc::S_IFREG => m,
            Ok(m) => {
                let what = match m.kind {
                    libc::S_IFDIR => "a directory",
                    libc::S_IFIFO => "a FIFO",
                    libc::S_IFSOCK => "a socket",
                    _ => "a device or other special file",
                };
                self.send(Event::Error(err(
                    FileErrorKind::NotRegular,
                    &format!("not a regular file: {what}"),
                )));
                return None;
            }
            Err(e) => return self.open_failed(id, &path, e),
        };
        let size = meta.size;
        if direct && size < TINY && io::clear_direct(file.as_raw_fd()).is_ok() {
            // Tiny files are read buffered: O_DIRECT buys nothing for one short read.
            direct = false;
        }
        // Registering costs two syscalls (in and out); it pays off only over several reads.
        let fixed = if size > self.cfg.block_size as u64 {
            self.io.register_file(file.as_raw_fd())
        } else {
            None
        };
        let f = OpenFile {
            id,
            path,
            file,
            fixed,
            direct,
            size_at_open: size,
            end: size,
            next: 0,
            redo: VecDeque::new(),
            delivered: 0,
            size_seen: None,
            ready: BTreeMap::new(),
            inflight: 0,
            failed: None,
        };
        let k = match self.files.iter().position(Option::is_none) {
            Some(k) => {
                self.files[k] = Some(f);
                k
            }
            None => {
                self.files.push(Some(f));
                self.files.len() - 1
            }
        };
        self.active.push_back(k);
        Some(k)
    }

    fn open_failed(&mut self, id: u64, path: &std::path::Path, e: std::io::Error) -> Option<usize> {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => FileErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => FileErrorKind::PermissionDenied,
            _ => FileErrorKind::Open,
        };
        self.send(Event::Error(FileError {
            file_id: id,
            path: path.to_path_buf(),
            kind,
            message: e.to_string(),
            offset: None,
        }));
        None
    }

    /// Handles one completion.
    fn complete(&mut self, slot: usize, mut res: i32) {
        let op = self.ops[slot].take().expect("completion of a known read");
        self.free_ops.push(slot);
        self.inflight -= 1;
        self.reads_completed += 1;
        let n = self.reads_completed;
        let faults = &self.cfg.faults;
        let k = op.file;
        let direct = self.files[k].as_ref().is_some_and(|f| f.direct);
        if faults.eio_on_read == Some(n) {
            res = -libc::EIO;
        } else if faults.einval_direct_read == Some(n) && direct {
            res = -libc::EINVAL;
        } else if faults.short_on_read == Some(n) && res > 2 {
            res /= 3;
        }
        let f = self.files[k].as_mut().expect("file of a read in flight");
        f.inflight -= 1;
        if f.failed.is_some() {
            self.pool.put(op.buf);
        } else if res < 0 {
            let errno = -res;
            if errno == libc::EINVAL && f.direct {
                // The filesystem refuses this O_DIRECT read: go on buffered.
                self.pool.put(op.buf);
                match io::clear_direct(f.file.as_raw_fd()) {
                    Ok(()) => {
                        f.direct = false;
                        Counters::bump(&self.counters.direct_refused);
                        tracing::debug!(path = %f.path.display(), "O_DIRECT read refused; reading buffered");
                        let len = (f.end.saturating_sub(op.offset)).min(op.len as u64) as u32;
                        if len > 0 {
                            f.redo.push_front((op.offset, len));
                        }
                    }
                    Err(e) => self.fail(k, FileErrorKind::Read, e.to_string(), Some(op.offset)),
                }
            } else if errno == libc::EINTR || errno == libc::EAGAIN {
                self.pool.put(op.buf);
                f.redo.push_front((op.offset, op.len));
            } else {
                self.pool.put(op.buf);
                let msg = std::io::Error::from_raw_os_error(errno).to_string();
                self.fail(k, FileErrorKind::Read, msg, Some(op.offset));
            }
        } else if res == 0 || op.offset >= f.end {
            // End of file before the size seen at open: the file shrank.
            self.pool.put(op.buf);
            f.size_seen = None;
            if op.offset < f.end {
                f.end = op.offset;
            }
            let end = f.end;
            f.redo.retain(|&(o, _)| o < end);
            let beyond: Vec<u64> = f.ready.range(end..).map(|(&o, _)| o).collect();
            for o in beyond {
                let (b, _) = f.ready.remove(&o).expect("present");
                self.pool.put(b);
            }
        } else {
            let got = res as u64;
            let keep = got.min(f.end - op.offset);
            if got < op.len as u64 && op.offset + got >= f.end {
                // The read asked past the end and stopped there: that is the size now.
                f.size_seen = Some(op.offset + got);
            }
            if got < op.len as u64 && op.offset + got < f.end {
                // Short read: the rest of this range is read again from where it stopped
                // (buffered if O_DIRECT alignment no longer holds).
                Counters::bump(&self.counters.short_reads);
                f.size_seen = None;
                let rest_off = op.offset + got;
                let rest_len = (op.len as u64 - got).min(f.end - rest_off) as u32;
                if f.direct && (rest_off % ALIGN != 0) {
                    if let Err(e) = io::clear_direct(f.file.as_raw_fd()) {
                        self.pool.put(op.buf);
                        self.fail(k, FileErrorKind::Read, e.to_string(), Some(rest_off));
                        self.maybe_finish(k);
                        return;
                    }
                    f.direct = false;
                }
                f.redo.push_front((rest_off, rest_len));
            }
            f.ready.insert(op.offset, (op.buf, keep as u32));
            self.deliver(k);
        }
        self.maybe_finish(k);
    }

    fn fail(&mut self, k: usize, kind: FileErrorKind, message: String, offset: Option<u64>) {
        let f = self.files[k].as_mut().expect("open file");
        if f.failed.is_none() {
            f.failed = Some(FileError {
                file_id: f.id,
                path: f.path.clone(),
                kind,
                message,
                offset,
            });
        }
        f.redo.clear();
        for (_, (b, _)) in std::mem::take(&mut f.ready) {
            self.pool.put(b);
        }
    }

    /// Sends the chunks that continue the file's delivered prefix.
    fn deliver(&mut self, k: usize) {
        loop {
            let f = self.files[k].as_mut().expect("open file");
            let Some((&off, &(buf, len))) = f.ready.first_key_value() else {
                return;
            };
            if off != f.delivered {
                return;
            }
            f.ready.remove(&off);
            f.delivered += len as u64;
            let chunk = Chunk {
                file_id: f.id,
                file_offset: off,
                len: len as usize,
                buffer: buf,
                region: self.region.clone(),
                pool: self.pool.clone(),
            };
            // Dropped (buffer returned) if the consumer is gone.
            self.send(Event::Chunk(chunk));
        }
    }

    fn maybe_finish(&mut self, k: usize) {
        let Some(f) = self.files[k].as_ref() else {
            return;
        };
        if !f.finished() {
            return;
        }
        let f = self.files[k].as_mut().expect("open file");
        if f.failed.is_none() && !f.ready.is_empty() {
            // Never expected: a completed chunk that no read in flight can connect to the
            // delivered prefix. Report it rather than wait forever.
            let at = f.delivered;
            self.fail(
                k,
                FileErrorKind::Read,
                "internal: gap in the delivered bytes".into(),
                Some(at),
            );
        }
        let f = self.files[k].as_mut().expect("open file");
        let event = match f.failed.take() {
            Some(e) => Event::Error(e),
            None => {
                let size_at_end = match f.size_seen {
                    Some(s) => s,
                    None => io::fstat(f.file.as_raw_fd()).map_or(f.size_at_open, |m| m.size),
                };
                let end = FileEnd {
                    file_id: f.id,
                    path: f.path.clone(),
                    len: f.delivered,
                    size_at_open: f.size_at_open,
                    size_at_end,
                };
                if end.changed() {
                    tracing::warn!(path = %f.path.display(), size_at_open = end.size_at_open, size_at_end, delivered = end.len, "file changed size while it was read");
                }
                Event::End(end)
            }
        };
        self.active.retain(|&a| a != k);
        self.close(k);
        self.send(event);
    }

    fn close(&mut self, k: usize) {
        if let Some(f) = self.files[k].take() {
            debug_assert_eq!(f.inflight, 0);
            for (_, (b, _)) in f.ready {
                self.pool.put(b);
            }
            if let Some(slot) = f.fixed {
                self.io.unregister_file(slot);
            }
        }
    }
}
