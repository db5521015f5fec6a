//! Reading files into packs: each walk thread reads the files it finds back to back into a
//! large buffer (a pack) and sends the pack once it is full, so the driver takes one
//! message, one copy into the backend and no allocation per pack instead of per file. On
//! an H100 host the driver thread spent 6 µs per file when every file came as its own
//! buffer (bench/results/scan-h100.md, session 5). Files smaller than a segment are read
//! whole through io_uring where it is available, a batch at a time, straight into their
//! places in the pack (`vyre_ingest::WholeFiles`); larger ones, and every file where
//! io_uring is unavailable, with system calls.

use super::{FileMeta, Item};
use crate::compile::Group;
use crate::scan::{scan_slice, Start};
use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use vyre_ingest::{WholeFiles, WholeRead};
use vyre_isa::dfa::START_TEXT;
use vyre_runtime::{Backend, Staging};

/// Small files read through io_uring together (one system call per batch).
const URING_BATCH: u32 = 32;

/// Pack buffers at least this large (more when a segment and its overlap need more).
pub(crate) const PACK_BYTES: usize = 1 << 20;

/// File bytes read by one walk thread: pieces of one or more files, back to back.
#[derive(Debug)]
pub(crate) struct Pack {
    /// The buffer (the backend's staging memory, page-locked on cuda, so that the copy
    /// into the device is one DMA); its length is its capacity, and bytes past `used` mean
    /// nothing.
    pub(crate) buf: Box<dyn Staging>,
    pub(crate) used: usize,
    pub(crate) pieces: Vec<Piece>,
}

/// One segment of a file in a pack: `prefix` bytes of the file before `at`, then the
/// segment's own bytes, `len` bytes in all from pack offset `start`.
#[derive(Debug)]
pub(crate) struct Piece {
    pub(crate) file: Arc<FileMeta>,
    /// `file.seq`, copied by the walk thread that made `file`: the driver plans with it and
    /// never reads the `FileMeta` (a cache miss per file on the driver's core, most of its
    /// planning time in a profile); the sink's thread reads it for the path.
    pub(crate) seq: u64,
    /// File offset of the segment's own bytes.
    pub(crate) at: u64,
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) prefix: usize,
    /// The byte before the prefix, if the prefix does not start the file.
    pub(crate) before: Option<u8>,
    /// The file ends with this segment.
    pub(crate) last: bool,
    /// Matches of the groups scanned on the host (`ScanOptions::unbounded_on_host`) that end
    /// in this segment's own bytes: (file offset of the end, rule).
    pub(crate) hits: Vec<(u64, u32)>,
}

impl Piece {
    /// The piece's bytes (prefix, then its own).
    pub(crate) fn data<'p>(&self, pack: &'p Pack) -> &'p [u8] {
        &pack.buf.bytes()[self.start..self.start + self.len]
    }
}

/// Pack buffers: made by the backend (`Backend::create_staging`) or plain, and given back by
/// the driver once copied in, for the walk threads to fill again (no allocation, page
/// faults or zeroing per pack).
#[derive(Debug)]
pub(crate) struct PackPool {
    free: Mutex<Vec<Box<dyn Staging>>>,
    /// Where staging memory comes from; `None`: plain memory.
    backend: Option<Arc<dyn Backend>>,
}

impl PackPool {
    pub(crate) fn new(backend: Option<Arc<dyn Backend>>) -> PackPool {
        PackPool {
            free: Mutex::new(Vec::new()),
            backend,
        }
    }

    pub(crate) fn give(&self, buf: Box<dyn Staging>) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }

    fn take(&self, bytes: usize) -> Box<dyn Staging> {
        let buf = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(b) = buf.filter(|b| b.bytes().len() == bytes) {
            return b;
        }
        match self.backend.as_ref().map(|b| b.create_staging(bytes)) {
            Some(Ok(Some(b))) => b,
            Some(Err(e)) => {
                tracing::debug!("staging memory: {e}; reading into plain memory");
                Box::new(vec![0u8; bytes])
            }
            _ => Box::new(vec![0u8; bytes]),
        }
    }
}

/// One walk thread's reader: fills its pack and sends it when full, or when dropped. It also
/// scans the `host` groups over each file as it reads it, carrying their states from segment
/// to segment in the thread (rules whose matches can be unboundedly long chain every segment
/// of a file after the one before: on a GPU each segment would run on one lane, one after
/// another).
pub(crate) struct Reader {
    tx: SyncSender<Item>,
    host: Arc<Vec<Group>>,
    pool: Arc<PackPool>,
    pack: Option<Pack>,
    pack_bytes: usize,
    segment: usize,
    overlap: usize,
    /// The driver has stopped taking packs.
    stopped: bool,
    /// Small files read whole through io_uring (`None`: with system calls).
    uring: Option<WholeFiles>,
    /// Small files waiting for the next io_uring batch, each with its place in the current
    /// pack (one after another from the first's `start`).
    queued: Vec<Queued>,
}

/// A small file whose bytes will go to `start..start + len` of the current pack.
struct Queued {
    file: Arc<FileMeta>,
    start: usize,
    len: usize,
}

impl Reader {
    pub(crate) fn new(
        tx: SyncSender<Item>,
        pool: Arc<PackPool>,
        host: Arc<Vec<Group>>,
        segment: usize,
        overlap: usize,
        io_uring: bool,
    ) -> Reader {
        let uring = io_uring
            .then(|| WholeFiles::new(URING_BATCH))
            .and_then(|r| {
                r.map_err(|e| tracing::debug!("reading files with system calls: {e}"))
                    .ok()
            });
        Reader {
            tx,
            host,
            pool,
            pack: None,
            pack_bytes: PACK_BYTES.max(segment + overlap),
            segment,
            overlap,
            stopped: false,
            uring,
            queued: Vec::new(),
        }
    }

    /// Reads one file into packs (or queues it for the next io_uring batch), or sends its
    /// error after the pieces read before it; false once the driver has stopped taking
    /// packs.
    pub(crate) fn file(&mut self, file: FileMeta) -> bool {
        let file = Arc::new(file);
        if self.uring.is_some() {
            // One segment, so one piece: its size tells its place in the pack. (A file
            // whose size cannot be had is read below, which reports why.)
            let size = std::fs::metadata(&file.path)
                .ok()
                .filter(|m| m.is_file() && m.len() < self.segment as u64);
            if let Some(m) = size {
                self.queue(file, m.len() as usize);
                return !self.stopped;
            }
            // The pack's free space goes to this file's segments now.
            self.drain();
        }
        self.read_or_report(file);
        !self.stopped
    }

    /// Reads `file` with system calls, or sends its error after its pieces read before it.
    fn read_or_report(&mut self, file: Arc<FileMeta>) {
        if let Err(e) = self.read(&file) {
            // The file's earlier pieces go first, so its matches precede its error.
            self.send();
            self.error(file, e.to_string());
        }
    }

    /// Places a small file's bytes in the current pack (the next batch reads them there).
    fn queue(&mut self, file: Arc<FileMeta>, len: usize) {
        if self
            .pack
            .as_ref()
            .is_some_and(|p| p.buf.bytes().len() - p.used < len)
        {
            // The queued files' pack goes once they are in it.
            self.drain();
        }
        let pack = self.room(len);
        let start = pack.used;
        pack.used += len;
        self.queued.push(Queued { file, start, len });
        if self.queued.len() == URING_BATCH as usize {
            self.drain();
        }
    }

    /// Reads the queued files into their places in the pack (one io_uring batch) and adds
    /// their pieces; a file that turned out longer than its size is read again with system
    /// calls, one that failed is reported.
    fn drain(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        let (Some(first), Some(uring), Some(pack)) =
            (queued.first(), self.uring.as_mut(), self.pack.as_mut())
        else {
            return;
        };
        if self.stopped {
            return;
        }
        let results = {
            let mut rest = &mut pack.buf.bytes_mut()[first.start..];
            let mut reads = Vec::with_capacity(queued.len());
            for q in &queued {
                let (buf, after) = std::mem::take(&mut rest).split_at_mut(q.len);
                reads.push(WholeRead {
                    path: &q.file.path,
                    buf,
                });
                rest = after;
            }
            uring.read(&mut reads)
        };
        let (mut again, mut failed) = (Vec::new(), Vec::new());
        let mut found = Vec::new();
        for (q, r) in queued.into_iter().zip(results) {
            match r {
                Ok(done) if !done.more => {
                    let data = &pack.buf.bytes()[q.start..q.start + done.len];
                    let mut states = vec![Start::LookBehind(START_TEXT as u16); self.host.len()];
                    let hits = host_hits(&self.host, &mut states, data, 0, true, &mut found);
                    pack.pieces.push(Piece {
                        seq: q.file.seq,
                        file: q.file,
                        at: 0,
                        start: q.start,
                        len: done.len,
                        prefix: 0,
                        before: None,
                        last: true,
                        hits,
                    });
                }
                // It grew since its size was taken (its place in the pack stays unused).
                Ok(_) => again.push(q.file),
                Err(e) => failed.push((q.file, e.to_string())),
            }
        }
        for (file, message) in failed {
            self.error(file, message);
        }
        for file in again {
            self.read_or_report(file);
        }
    }

    /// Sends a per-file error (a walk entry that failed, or a read).
    pub(crate) fn error(&mut self, file: Arc<FileMeta>, message: String) -> bool {
        if !self.stopped && self.tx.send(Item::Error(file, message)).is_err() {
            self.stopped = true;
        }
        !self.stopped
    }

    /// Sends the current pack, if it holds anything (after the files queued for it).
    fn send(&mut self) {
        self.drain();
        let Some(mut pack) = self.pack.take() else {
            return;
        };
        if pack.pieces.is_empty() {
            // Nothing in it (space kept for files that failed or grew is unused): start it
            // over. No queued file points into it (`drain` ran).
            pack.used = 0;
            self.pack = Some(pack);
        } else if !self.stopped && self.tx.send(Item::Pack(pack)).is_err() {
            self.stopped = true;
        }
    }

    /// The current pack, with at least `need` bytes free (sending a fuller one first).
    fn room(&mut self, need: usize) -> &mut Pack {
        if self
            .pack
            .as_ref()
            .is_some_and(|p| p.buf.bytes().len() - p.used < need)
        {
            self.send();
        }
        let (pool, bytes) = (&self.pool, self.pack_bytes);
        self.pack.get_or_insert_with(|| Pack {
            buf: pool.take(bytes),
            used: 0,
            pieces: Vec::new(),
        })
    }

    /// Reads `file` as segments of at most `segment` bytes, each after the last `overlap`
    /// bytes before it. Each read asks for one byte more than the file's length, to see the
    /// end in the same read; a file that grows past that length still reads to its end.
    fn read(&mut self, file: &Arc<FileMeta>) -> io::Result<()> {
        let mut f = File::open(&file.path)?;
        let size = f.metadata().map_or(0, |m| m.len());
        // The last `overlap + 1` bytes read so far.
        let mut tail: Vec<u8> = Vec::with_capacity(self.overlap + 1);
        let (mut at, overlap) = (0u64, self.overlap);
        let host = self.host.clone();
        let mut states: Vec<Start> = vec![Start::LookBehind(START_TEXT as u16); host.len()];
        let mut found = Vec::new();
        loop {
            if self.stopped {
                return Ok(());
            }
            let prefix = tail.len().min(overlap);
            let before = (tail.len() > prefix).then(|| tail[tail.len() - prefix - 1]);
            let want = usize::try_from(size.saturating_sub(at).saturating_add(1))
                .unwrap_or(self.segment)
                .min(self.segment);
            let pack = self.room(prefix + want);
            let (start, buf) = (pack.used, pack.buf.bytes_mut());
            let own = start + prefix;
            buf[start..own].copy_from_slice(&tail[tail.len() - prefix..]);
            let n = read_full(&mut f, &mut buf[own..own + want])?;
            let last = n < want;
            let len = prefix + n;
            let keep = (overlap + 1).min(len);
            tail.clear();
            tail.extend_from_slice(&buf[start + len - keep..start + len]);
            let hits = host_hits(&host, &mut states, &buf[own..own + n], at, last, &mut found);
            pack.used += len;
            pack.pieces.push(Piece {
                seq: file.seq,
                file: file.clone(),
                at,
                start,
                len,
                prefix,
                before,
                last,
                hits,
            });
            at += n as u64;
            if last {
                return Ok(());
            }
        }
    }
}

impl Drop for Reader {
    /// The walk thread is done: its last pack goes too.
    fn drop(&mut self) {
        self.send();
    }
}

/// Matches of the `host` groups ending in `data` (file offset `at` on), each group going on
/// from its state in `states`, which is left where `data` ends: (file offset of the end,
/// rule).
fn host_hits(
    host: &[Group],
    states: &mut [Start],
    data: &[u8],
    at: u64,
    last: bool,
    found: &mut Vec<(u32, u32)>,
) -> Vec<(u64, u32)> {
    let mut hits = Vec::new();
    for (g, state) in host.iter().zip(states) {
        found.clear();
        let row = scan_slice(&g.table, data, *state, 0, last, found);
        *state = Start::Row(row);
        let rule = |p: u32| g.rules[p as usize];
        hits.extend(found.iter().map(|&(end, p)| (at + u64::from(end), rule(p))));
    }
    hits
}

/// Fills `out` from `f`; fewer bytes only at the end of the file.
fn read_full(f: &mut File, out: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < out.len() {
        match f.read(&mut out[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::mpsc::sync_channel;

    fn temp_file(name: &str, data: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vyre-read-{name}-{}", std::process::id()));
        File::create(&path).unwrap().write_all(data).unwrap();
        path
    }

    /// Every piece of every pack, as (seq, at, prefix, before, last, bytes).
    type Seen = Vec<(u64, u64, usize, Option<u8>, bool, Vec<u8>)>;

    fn read_all(files: &[PathBuf], segment: usize, overlap: usize, uring: bool) -> (Seen, usize) {
        let (tx, rx) = sync_channel(1024);
        {
            let pool = Arc::new(PackPool::new(None));
            let mut r = Reader::new(tx, pool, Arc::default(), segment, overlap, uring);
            for (seq, path) in files.iter().enumerate() {
                let meta = FileMeta {
                    path: path.clone(),
                    seq: seq as u64,
                };
                assert!(r.file(meta));
            }
        }
        let mut seen = Vec::new();
        let mut packs = 0;
        for item in rx {
            let Item::Pack(pack) = item else {
                panic!("an error item for readable files");
            };
            packs += 1;
            for p in &pack.pieces {
                let data = p.data(&pack).to_vec();
                seen.push((p.file.seq, p.at, p.prefix, p.before, p.last, data));
            }
        }
        (seen, packs)
    }

    #[test]
    fn small_files_share_a_pack_and_large_ones_are_cut_into_overlapping_segments() {
        let small: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
        let large: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let files = [
            temp_file("a", &small),
            temp_file("empty", &[]),
            temp_file("b", &large),
        ];
        // Segments of 1,000 bytes after 10 bytes of overlap; the small files through
        // io_uring (where available) and with system calls.
        for uring in [true, false] {
            let (seen, packs) = read_all(&files, 1000, 10, uring);
            assert_eq!(packs, 1, "all of it fits one 1 MiB pack");
            assert_eq!(seen.len(), 2 + 3);
            assert_eq!(seen[0], (0, 0, 0, None, true, small.clone()));
            assert_eq!(seen[1], (1, 0, 0, None, true, Vec::new()));
            assert_eq!(seen[2], (2, 0, 0, None, false, large[..1000].to_vec()));
            assert_eq!(
                seen[3],
                (
                    2,
                    1000,
                    10,
                    Some(large[989]),
                    false,
                    large[990..2000].to_vec()
                )
            );
            assert_eq!(
                seen[4],
                (2, 2000, 10, Some(large[1989]), true, large[1990..].to_vec())
            );
        }
        for f in &files {
            std::fs::remove_file(f).unwrap();
        }
    }

    #[test]
    fn a_full_pack_is_sent_and_the_next_file_starts_a_new_one() {
        let data = vec![7u8; 700 << 10];
        let files = [temp_file("p1", &data), temp_file("p2", &data)];
        for uring in [true, false] {
            let (seen, packs) = read_all(&files, 1 << 20, 0, uring);
            assert_eq!(packs, 2);
            assert!(seen.iter().all(|s| s.4 && s.5 == data));
        }
        for f in &files {
            std::fs::remove_file(f).unwrap();
        }
    }

    #[test]
    fn space_kept_for_files_that_failed_is_not_lost_to_the_next_one() {
        // The small files fail (gone after the walk saw them); the next file needs a whole
        // pack of its own. With io_uring their places in the pack were kept for them.
        let segment = 1 << 20;
        let big: Vec<u8> = (0..segment + 5000).map(|i| (i % 251) as u8).collect();
        let big_path = temp_file("big", &big);
        for uring in [true, false] {
            let (tx, rx) = sync_channel(1024);
            {
                let pool = Arc::new(PackPool::new(None));
                let mut r = Reader::new(tx, pool, Arc::default(), segment, 16, uring);
                let meta = |path: PathBuf, seq| FileMeta { path, seq };
                for seq in 0..20 {
                    // Readable when the Reader takes its size, removed before the batch
                    // reads it.
                    let p = temp_file(&format!("gone{seq}"), &[b'x'; 40_000]);
                    assert!(r.file(meta(p.clone(), seq)));
                    std::fs::remove_file(p).unwrap();
                }
                assert!(r.file(meta(big_path.clone(), 99)));
            }
            let (mut data, mut small, mut errors) = (Vec::new(), 0, 0);
            for item in rx {
                match item {
                    Item::Pack(p) => {
                        for piece in &p.pieces {
                            if piece.file.seq == 99 {
                                data.extend_from_slice(&piece.data(&p)[piece.prefix..]);
                            } else {
                                small += 1;
                            }
                        }
                    }
                    Item::Error(f, _) => {
                        assert!(f.seq < 20);
                        errors += 1;
                    }
                }
            }
            assert_eq!(data, big, "uring {uring}");
            // With system calls each file is read as soon as it comes, before its removal.
            let queued = uring && WholeFiles::new(1).is_ok();
            assert_eq!((errors, small), if queued { (20, 0) } else { (0, 20) });
        }
        std::fs::remove_file(big_path).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_an_error_after_the_pieces_before_it() {
        let ok = temp_file("ok", b"needle");
        for uring in [true, false] {
            let (tx, rx) = sync_channel(16);
            {
                let pool = Arc::new(PackPool::new(None));
                let mut r = Reader::new(tx, pool, Arc::default(), 1 << 20, 0, uring);
                let meta = |path: PathBuf, seq| FileMeta { path, seq };
                assert!(r.file(meta(ok.clone(), 0)));
                assert!(r.file(meta(PathBuf::from("/nonexistent/vyre"), 1)));
            }
            let items: Vec<Item> = rx.into_iter().collect();
            assert!(matches!(&items[0], Item::Pack(p) if p.pieces.len() == 1));
            assert!(matches!(&items[1], Item::Error(f, _) if f.seq == 1));
            assert_eq!(items.len(), 2);
        }
        std::fs::remove_file(ok).unwrap();
    }
}
