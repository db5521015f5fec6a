//! Device memory of one backend: the buffer heap, the `meta` table (buffers, programs, code)
//! and the persistent state words.
//!
//! Every vyre buffer is a word-aligned range of one heap of u32 words. The heap is split into
//! [`MAX_PAGES`] pages, each bound as its own storage binding of `page_bytes` at most (the
//! largest power of two within the adapter's `max_storage_buffer_binding_size` and
//! `max_buffer_size`), so a vyre buffer may be larger than one binding: the shader picks the
//! page of each word with a shift. A page buffer starts small and grows by doubling (a GPU
//! copy, ordered on the queue after every dispatch submitted before it); a request beyond
//! `MAX_PAGES × page_bytes` is refused with a `Limit` error that names the limit.

use crate::shader::MAX_PAGES;
use vyre_isa::Program;
use vyre_runtime::BackendError;

/// The smallest page buffer allocated.
const MIN_PAGE_BYTES: u64 = 64 << 10;

/// Device memory and the tables that describe it. Held behind the backend's lock: every
/// queue operation that must be ordered against dispatches happens under it.
#[derive(Debug)]
pub struct Heap {
    page_bytes: u64,
    pages: Vec<wgpu::Buffer>,
    dummy: wgpu::Buffer,
    top_words: u64,
    /// (base word, size in bytes) per handle - 1.
    bufs: Vec<(u64, u64)>,
    /// (offset into `code`, instructions) per program id - 1.
    progs: Vec<(u32, u32)>,
    code: Vec<u32>,
    meta: wgpu::Buffer,
    meta_dirty: bool,
    /// Word of the program table in `meta`.
    pub prog_base: u32,
    /// The persistent state words and the debug log mirror.
    pub state: wgpu::Buffer,
    /// Bumped whenever a binding is replaced: bind groups are rebuilt.
    pub generation: u64,
}

fn storage(device: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Copies `len` bytes (a multiple of 4) at `offset` of `src` back to the host, waiting for
/// every submission before it.
pub fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    src: &wgpu::Buffer,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, BackendError> {
    read_back_many(device, queue, &[(src, offset, len)])
}

/// Copies several ranges back with one submission, concatenated.
pub fn read_back_many(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    ranges: &[(&wgpu::Buffer, u64, u64)],
) -> Result<Vec<u8>, BackendError> {
    let total: u64 = ranges.iter().map(|r| r.2).sum();
    if total == 0 {
        return Ok(Vec::new());
    }
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("vyre readback"),
        size: total,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    let mut at = 0;
    for &(src, offset, len) in ranges {
        enc.copy_buffer_to_buffer(src, offset, &staging, at, len);
        at += len;
    }
    let index = queue.submit([enc.finish()]);
    map_and_copy(device, &staging, index, total)
}

/// Maps `staging` once `index` has completed and copies `len` bytes out.
pub fn map_and_copy(
    device: &wgpu::Device,
    staging: &wgpu::Buffer,
    index: wgpu::SubmissionIndex,
    len: u64,
) -> Result<Vec<u8>, BackendError> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, 0..len, move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })
        .map_err(|e| BackendError::Launch(format!("wgpu device poll failed: {e}")))?;
    rx.recv()
        .map_err(|_| BackendError::Launch("wgpu readback was never mapped".into()))?
        .map_err(|e| BackendError::Launch(format!("wgpu readback failed: {e}")))?;
    let out = staging
        .get_mapped_range(0..len)
        .map_err(|e| BackendError::Launch(format!("wgpu readback mapping failed: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(out)
}

impl Heap {
    /// An empty heap with pages of `page_bytes` (a power of two, at least 4 KiB).
    pub fn new(device: &wgpu::Device, page_bytes: u64) -> Heap {
        Heap {
            page_bytes,
            pages: Vec::new(),
            dummy: storage(device, "vyre unused page", 16),
            top_words: 0,
            bufs: Vec::new(),
            progs: Vec::new(),
            code: Vec::new(),
            meta: storage(device, "vyre meta", 256),
            meta_dirty: true,
            prog_base: 0,
            state: storage(
                device,
                "vyre state",
                4 * crate::shader::st::DEBUG_RECORDS as u64,
            ),
            generation: 0,
        }
    }

    /// Sizes the state buffer for a debug log of `debug_capacity` records (at ring creation).
    pub fn set_debug_capacity(&mut self, device: &wgpu::Device, debug_capacity: u32) {
        let words = crate::shader::st::DEBUG_RECORDS as u64
            + u64::from(debug_capacity) * vyre_runtime::protocol::debug_record::RECORD_WORDS as u64;
        self.state = storage(device, "vyre state", 4 * words);
        self.generation += 1;
    }

    /// log2 of the words per page.
    pub fn page_shift(&self) -> u32 {
        (self.page_bytes / 4).trailing_zeros()
    }

    /// Most bytes the heap can hold.
    pub fn capacity_bytes(&self) -> u64 {
        MAX_PAGES as u64 * self.page_bytes
    }

    /// Registered buffers.
    pub fn buffers(&self) -> u32 {
        self.bufs.len() as u32
    }

    /// Loaded programs.
    pub fn programs(&self) -> u32 {
        self.progs.len() as u32
    }

    /// The page bindings (unused pages bound to a small dummy).
    pub fn page_bindings(&self) -> [&wgpu::Buffer; MAX_PAGES] {
        std::array::from_fn(|i| self.pages.get(i).unwrap_or(&self.dummy))
    }

    /// The `meta` binding.
    pub fn meta(&self) -> &wgpu::Buffer {
        &self.meta
    }

    /// Registers a zero-filled buffer; returns its handle.
    pub fn create(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        size: u64,
        max_buffers: u32,
    ) -> Result<u32, BackendError> {
        BackendError::check_limit(
            "registered buffers",
            self.bufs.len() as u64 + 1,
            u64::from(max_buffers),
        )?;
        BackendError::check_limit("buffer size in bytes (offsets are 32-bit)", size, 1 << 32)?;
        let words = size.div_ceil(4);
        let top = self.top_words + words;
        BackendError::check_limit("wgpu heap bytes (all buffers together; 4 storage bindings of the adapter's max_storage_buffer_binding_size, rounded down to a power of two)", top * 4, self.capacity_bytes())?;
        self.grow_pages(device, queue, top * 4);
        self.bufs.push((self.top_words, size));
        self.top_words = top;
        self.meta_dirty = true;
        Ok(self.bufs.len() as u32)
    }

    fn grow_pages(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, bytes: u64) {
        let mut enc: Option<wgpu::CommandEncoder> = None;
        for p in 0..MAX_PAGES {
            let start = p as u64 * self.page_bytes;
            if bytes <= start {
                break;
            }
            let need = (bytes - start).min(self.page_bytes);
            let have = self.pages.get(p).map_or(0, |b| b.size());
            if need <= have {
                continue;
            }
            let size = need
                .next_power_of_two()
                .max(MIN_PAGE_BYTES)
                .min(self.page_bytes);
            let fresh = storage(device, "vyre heap page", size);
            if have > 0 {
                let e =
                    enc.get_or_insert_with(|| device.create_command_encoder(&Default::default()));
                e.copy_buffer_to_buffer(&self.pages[p], 0, &fresh, 0, have);
                self.pages[p] = fresh;
            } else {
                self.pages.push(fresh);
            }
            self.generation += 1;
        }
        if let Some(e) = enc {
            queue.submit([e.finish()]);
        }
    }

    /// Loads a program; returns its id.
    pub fn load_program(
        &mut self,
        program: &Program,
        max_programs: u32,
    ) -> Result<u32, BackendError> {
        BackendError::check_limit(
            "loaded programs",
            self.progs.len() as u64 + 1,
            u64::from(max_programs),
        )?;
        let at = self.code.len() as u32;
        for insn in program.insns() {
            let b = insn.encode();
            self.code.push(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            self.code.push(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        }
        self.progs.push((at, program.insns().len() as u32));
        self.meta_dirty = true;
        Ok(self.progs.len() as u32)
    }

    /// Uploads the buffer and program tables if they changed (before a dispatch).
    pub fn flush_meta(&mut self, device: &wgpu::Device, queue: &wgpu::Queue) {
        if !self.meta_dirty {
            return;
        }
        let prog_base = 4 * self.bufs.len();
        let code_base = prog_base + 2 * self.progs.len();
        let mut words = Vec::with_capacity(code_base + self.code.len());
        for &(base, size) in &self.bufs {
            words.extend([base as u32, size as u32, (size >> 32) as u32, 0]);
        }
        for &(at, len) in &self.progs {
            words.extend([code_base as u32 + at, len]);
        }
        words.extend_from_slice(&self.code);
        let bytes = (4 * words.len() as u64).max(16);
        if bytes > self.meta.size() {
            self.meta = storage(device, "vyre meta", bytes.next_power_of_two());
            self.generation += 1;
        }
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        queue.write_buffer(&self.meta, 0, &data);
        self.prog_base = prog_base as u32;
        self.meta_dirty = false;
    }

    fn range(&self, handle: u32, offset: u64, len: u64) -> Result<u64, BackendError> {
        let &(base, size) = handle
            .checked_sub(1)
            .and_then(|i| self.bufs.get(i as usize))
            .ok_or(BackendError::BadHandle { handle })?;
        BackendError::check_range(handle, offset, len, size)?;
        Ok(base * 4 + offset)
    }

    /// Splits the heap byte range `[at, at + len)` (4-aligned) into per-page pieces.
    fn pieces(&self, at: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        let (mut at, end) = (at, at + len);
        while at < end {
            let page = (at / self.page_bytes) as usize;
            let off = at % self.page_bytes;
            let n = (self.page_bytes - off).min(end - at);
            out.push((page, off, n));
            at += n;
        }
        out
    }

    fn read_aligned(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        at: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let pieces = self.pieces(at, len);
        let ranges: Vec<_> = pieces
            .iter()
            .map(|&(p, off, n)| (&self.pages[p], off, n))
            .collect();
        read_back_many(device, queue, &ranges)
    }

    /// Host read of a buffer range.
    pub fn read(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        handle: u32,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let at = self.range(handle, offset, len)?;
        let (lo, hi) = (at & !3, (at + len).next_multiple_of(4));
        let bytes = self.read_aligned(device, queue, lo, hi - lo)?;
        let skip = (at - lo) as usize;
        Ok(bytes[skip..skip + len as usize].to_vec())
    }

    /// Host write of a buffer range (partial words at either end are read, patched and
    /// written back whole).
    pub fn write(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        handle: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BackendError> {
        let len = data.len() as u64;
        let at = self.range(handle, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (lo, hi) = (at & !3, (at + len).next_multiple_of(4));
        // Aligned writes go straight from the caller's bytes into wgpu's staging memory
        // (`queue.write_buffer` copies once); only unaligned edges are read back and merged.
        let bytes: std::borrow::Cow<'_, [u8]> = if lo == at && hi == at + len {
            std::borrow::Cow::Borrowed(data)
        } else {
            let mut whole = self.read_aligned(device, queue, lo, hi - lo)?;
            let skip = (at - lo) as usize;
            whole[skip..skip + data.len()].copy_from_slice(data);
            std::borrow::Cow::Owned(whole)
        };
        let mut done = 0usize;
        for (p, off, n) in self.pieces(lo, hi - lo) {
            queue.write_buffer(&self.pages[p], off, &bytes[done..done + n as usize]);
            done += n as usize;
        }
        Ok(())
    }
}
