//! Small files read whole, many at a time: for each file one io_uring chain opens it into a
//! direct descriptor (a slot of the ring's own file table, not the process's), reads it
//! into the caller's buffer, reads one byte past that to see whether the file is longer,
//! and closes it. A batch of chains is one `io_uring_enter`.
//!
//! Why: on a 16-core H100 host (bench/results/scan-h100.md, session 11) 78,575 files of a
//! source tree took 0.10-0.12 s to open, read and close with syscalls on 8 or 16 threads,
//! whatever the thread count past 8: every open and close of a multi-threaded process
//! allocates and frees a descriptor in the one table its threads share. With these chains
//! on 16 threads (a ring each) they took 0.053-0.055 s.

use io_uring::{opcode, squeue, types, IoUring};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// SQEs per file: open, read, read one byte past, close.
const OPS: u32 = 4;

/// One file to read whole: `buf.len()` bytes from its start (its size as the caller last
/// saw it).
#[derive(Debug)]
pub struct WholeRead<'a> {
    /// The file.
    pub path: &'a Path,
    /// Where its bytes go.
    pub buf: &'a mut [u8],
}

/// What a [`WholeRead`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeReadDone {
    /// Bytes read into the front of `buf` (fewer than `buf.len()` if the file shrank).
    pub len: usize,
    /// The file has a byte at offset `buf.len()`: it is longer than `buf` (it grew); the
    /// caller reads the rest, or the whole file, some other way.
    pub more: bool,
}

/// A ring that reads batches of small files whole (see the module docs).
pub struct WholeFiles {
    ring: IoUring,
    batch: u32,
    /// The byte past each file's `buf`, per chain.
    past: Vec<u8>,
}

impl std::fmt::Debug for WholeFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeFiles")
            .field("batch", &self.batch)
            .finish()
    }
}

impl WholeFiles {
    /// A ring for batches of up to `batch` files. Fails where io_uring, a sparse table of
    /// direct descriptors and opening into it within a chain (Linux 5.19) are unavailable, and where `VYRE_INGEST_NO_URING=1`;
    /// the caller then reads with syscalls.
    pub fn new(batch: u32) -> io::Result<WholeFiles> {
        if std::env::var_os("VYRE_INGEST_NO_URING").is_some_and(|v| v == "1") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "VYRE_INGEST_NO_URING=1",
            ));
        }
        let batch = batch.max(1);
        let ring = IoUring::builder()
            .setup_cqsize(batch * OPS * 2)
            .build(batch * OPS)?;
        ring.submitter().register_files_sparse(batch)?;
        let mut w = WholeFiles {
            ring,
            batch,
            past: vec![0; batch as usize],
        };
        // A kernel without direct descriptors fails the open (EINVAL): find out now.
        let [open, ..] = w.submit(&mut [WholeRead {
            path: Path::new("/"),
            buf: &mut [],
        }])?[0];
        if open < 0 {
            let e = io::Error::from_raw_os_error(-open);
            return Err(io::Error::new(
                e.kind(),
                format!("io_uring cannot open files into direct descriptors here: {e}"),
            ));
        }
        Ok(w)
    }

    /// Most files per [`WholeFiles::read`].
    pub fn batch(&self) -> usize {
        self.batch as usize
    }

    /// Reads each file of `files` (at most [`WholeFiles::batch`]) into its buffer; one
    /// result per file, in order. A failed file does not stop the others. More files than
    /// the batch, or an error of the ring itself, fails every file of the call.
    pub fn read(&mut self, files: &mut [WholeRead<'_>]) -> Vec<io::Result<WholeReadDone>> {
        assert!(
            files.len() <= self.batch as usize,
            "more files than the batch"
        );
        match self.submit(files) {
            Ok(results) => files.iter().zip(results).map(|(f, r)| done(f, r)).collect(),
            Err(e) => files
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), format!("io_uring: {e}"))))
                .collect(),
        }
    }

    /// Submits one chain per file and reaps them all: each file's results (open, read,
    /// read past, close), as the kernel gave them.
    fn submit(&mut self, files: &mut [WholeRead<'_>]) -> io::Result<Vec<[i32; OPS as usize]>> {
        // Everything is checked and built before anything is queued: an error here leaves
        // nothing in the ring.
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if files.len() > self.batch as usize {
            return Err(invalid("more files than the batch"));
        }
        let mut paths = Vec::with_capacity(files.len());
        for f in files.iter() {
            paths.push(
                CString::new(f.path.as_os_str().as_bytes())
                    .map_err(|_| invalid("a path with a NUL byte"))?,
            );
        }
        let mut entries = Vec::with_capacity(files.len() * OPS as usize);
        for (k, f) in files.iter_mut().enumerate() {
            let slot = k as u32;
            let len = u32::try_from(f.buf.len()).map_err(|_| invalid("a buffer over 4 GiB"))?;
            let data = (k as u64) * u64::from(OPS);
            let target = types::DestinationSlot::try_from_slot_target(slot)
                .map_err(|_| invalid("file table slot out of range"))?;
            entries.push(
                opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), paths[k].as_ptr())
                    .flags(libc::O_RDONLY)
                    .file_index(Some(target))
                    .build()
                    // A failed open cancels the rest of the chain.
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(data),
            );
            entries.push(
                opcode::Read::new(types::Fixed(slot), f.buf.as_mut_ptr(), len)
                    .offset(0)
                    .build()
                    // A short or failed read does not cancel the close.
                    .flags(squeue::Flags::IO_HARDLINK)
                    .user_data(data + 1),
            );
            entries.push(
                opcode::Read::new(types::Fixed(slot), &mut self.past[k] as *mut u8, 1)
                    .offset(u64::from(len))
                    .build()
                    .flags(squeue::Flags::IO_HARDLINK)
                    .user_data(data + 2),
            );
            entries.push(
                opcode::Close::new(types::Fixed(slot))
                    .build()
                    .user_data(data + 3),
            );
        }
        // SAFETY: the buffers (`files[k].buf`, `self.past[k]`) and the path strings outlive
        // every request of this batch: all of them are reaped below before this function
        // returns, and where that cannot be done the process aborts rather than return with
        // the kernel still writing into the caller's memory. `push_multiple` queues all of
        // them or none (the queue is empty here: every call reaps all it queued).
        unsafe {
            self.ring
                .submission()
                .push_multiple(&entries)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let queued = entries.len() as u32;
        let mut results: Vec<[i32; OPS as usize]> = vec![[i32::MIN; OPS as usize]; files.len()];
        let mut reaped = 0u32;
        while reaped < queued {
            match self.ring.submit_and_wait((queued - reaped) as usize) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) =>
                {
                    std::thread::yield_now();
                }
                Err(e) => {
                    eprintln!(
                        "vyre: io_uring_enter failed ({e}) with {} reads in flight into the \
                         caller's buffers; stopping the process, which cannot go on safely",
                        queued - reaped
                    );
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                let (k, op) = (
                    (cqe.user_data() / u64::from(OPS)) as usize,
                    (cqe.user_data() % u64::from(OPS)) as usize,
                );
                results[k][op] = cqe.result();
                reaped += 1;
            }
        }
        Ok(results)
    }
}

/// A file's chain results as what its read did.
fn done(
    f: &WholeRead<'_>,
    [open, read, past, close]: [i32; OPS as usize],
) -> io::Result<WholeReadDone> {
    if open < 0 {
        return Err(io::Error::from_raw_os_error(-open));
    }
    if read < 0 {
        return Err(io::Error::from_raw_os_error(-read));
    }
    if close < 0 {
        let e = io::Error::from_raw_os_error(-close);
        tracing::debug!(path = %f.path.display(), error = %e, "io_uring close");
    }
    Ok(WholeReadDone {
        len: read as usize,
        // A failed probe is taken as "more": the caller reads the file again another way,
        // which reports the error if there is one.
        more: past != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn files_are_read_whole_and_longer_and_missing_ones_are_told_apart() {
        let Ok(mut w) = WholeFiles::new(8) else {
            eprintln!("skipped: io_uring with direct descriptors unavailable here");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::File::create(&p).unwrap().write_all(data).unwrap();
            p
        };
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31) as u8).collect();
        let (a, empty, long) = (
            write("a", &data),
            write("empty", b""),
            write("long", b"0123456789"),
        );
        let missing = dir.path().join("missing");
        let (mut ba, mut be, mut bl, mut bm) =
            (vec![0u8; data.len()], vec![], vec![0u8; 4], vec![0u8; 3]);
        let mut short = vec![0u8; 20];
        let mut files = vec![
            WholeRead {
                path: &a,
                buf: &mut ba,
            },
            WholeRead {
                path: &empty,
                buf: &mut be,
            },
            WholeRead {
                path: &long,
                buf: &mut bl,
            },
            WholeRead {
                path: &missing,
                buf: &mut bm,
            },
            WholeRead {
                path: &long,
                buf: &mut short,
            },
            WholeRead {
                path: dir.path(),
                buf: &mut [],
            },
        ];
        let got = w.read(&mut files);
        let done = |len, more| WholeReadDone { len, more };
        assert_eq!(got[0].as_ref().unwrap(), &done(data.len(), false));
        assert_eq!(got[1].as_ref().unwrap(), &done(0, false));
        assert_eq!(got[2].as_ref().unwrap(), &done(4, true));
        assert_eq!(got[3].as_ref().unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            got[4].as_ref().unwrap(),
            &done(10, false),
            "a file shorter than its buffer"
        );
        // A directory: its read of nothing succeeds, the byte past fails (EISDIR), and a
        // failed probe says "more" (whoever reads it again sees the error).
        assert!(got[5].as_ref().map_or(true, |d| d.more), "{:?}", got[5]);
        drop(files);
        assert_eq!(ba, data);
        assert_eq!(&bl, b"0123");
        assert_eq!(&short[..10], b"0123456789");
        // The ring goes on: its direct descriptors were closed.
        for _ in 0..3 {
            let mut b = vec![0u8; data.len()];
            let got = w.read(&mut [WholeRead {
                path: &a,
                buf: &mut b,
            }]);
            assert_eq!(got[0].as_ref().unwrap(), &done(data.len(), false));
            assert_eq!(b, data);
        }
    }
}
