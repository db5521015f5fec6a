//! GpuStream: ingest completions become ring slots. The staging region is registered with
//! the megakernel's backend as one buffer (zero copy where the backend supports it); each
//! chunk is turned into slots by the caller (for example HASH64 over the chunk's range of
//! that buffer), published, and its buffer goes back to the pool only when every slot that
//! reads it is finished. Results come back in chunk order, so in order per file, with each
//! file's end or error after its last chunk.
//!
//! Slots must only read the region: a slot that stores into it races with readers of
//! [`crate::Chunk::bytes`] and with reads landing in other buffers.

use crate::{Chunk, Event, FileEnd, FileError, Ingest, IngestError};
use std::collections::VecDeque;
use std::ops::Range;
use vyre_isa::Slot;
use vyre_runtime::{Completion, Megakernel, Outcome, Ticket};

/// What a [`GpuStream`] reports, in order per file.
#[derive(Debug)]
pub enum StreamEvent {
    /// Every slot made for a chunk has finished; the chunk's buffer is back in the pool.
    ChunkDone {
        /// The caller's file id.
        file_id: u64,
        /// Where the chunk is in the file.
        file_offset: u64,
        /// Its length.
        len: usize,
        /// The slots' completions, in the order the closure returned the slots.
        completions: Vec<Completion>,
    },
    /// A file is complete (after its last `ChunkDone`).
    End(FileEnd),
    /// A file failed (after the chunks delivered before the failure).
    Error(FileError),
}

/// Totals of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Chunks processed.
    pub chunks: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Slots published.
    pub slots: u64,
    /// Slots that faulted.
    pub faults: u64,
    /// Files ended.
    pub files: u64,
    /// Files failed.
    pub errors: u64,
}

enum Pending {
    Chunk {
        chunk: Chunk,
        tickets: Range<Ticket>,
        completions: Vec<Completion>,
    },
    End(FileEnd),
    Error(FileError),
}

/// An [`Ingest`] feeding a [`Megakernel`].
#[derive(Debug)]
pub struct GpuStream<'m> {
    mk: &'m Megakernel,
    ingest: Ingest,
    handle: u32,
}

impl<'m> GpuStream<'m> {
    /// Registers the ingest's staging region with the megakernel's backend
    /// ([`Megakernel::register_host_region`]); fails where the backend cannot use host
    /// memory in place.
    pub fn new(mk: &'m Megakernel, ingest: Ingest) -> Result<GpuStream<'m>, IngestError> {
        let handle = mk.register_host_region(ingest.host_region())?;
        Ok(GpuStream { mk, ingest, handle })
    }

    /// The buffer handle of the staging region: a chunk's bytes are at
    /// [`Chunk::region_offset`]`..+len` of it.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Runs the stream to its end. `make_slots` turns a chunk into slots (given the region's
    /// handle); `on_event` receives results in order. Bounded: at most as many chunks are
    /// pending as there are staging buffers, and publishing waits while the ring is full.
    pub fn run<F, G>(
        mut self,
        mut make_slots: F,
        mut on_event: G,
    ) -> Result<StreamReport, IngestError>
    where
        F: FnMut(&Chunk, u32) -> Vec<Slot>,
        G: FnMut(StreamEvent),
    {
        let mut report = StreamReport::default();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut over = false;
        loop {
            self.retire(&mut pending, &mut report, &mut on_event, false)?;
            if over {
                if pending.is_empty() {
                    return Ok(report);
                }
                self.retire(&mut pending, &mut report, &mut on_event, true)?;
                continue;
            }
            let event = match self.ingest.try_next_event() {
                Ok(Some(e)) => e,
                Ok(None) if !pending.is_empty() => {
                    // Nothing read yet: wait for the oldest slots (this also frees buffers
                    // the reader may be waiting for).
                    self.retire(&mut pending, &mut report, &mut on_event, true)?;
                    continue;
                }
                Ok(None) => match self.ingest.next_event() {
                    Some(e) => e,
                    None => {
                        over = true;
                        continue;
                    }
                },
                Err(()) => {
                    over = true;
                    continue;
                }
            };
            match event {
                Event::Chunk(chunk) => {
                    let slots = make_slots(&chunk, self.handle);
                    let tickets = self.mk.publish_batch(&slots)?;
                    report.slots += slots.len() as u64;
                    pending.push_back(Pending::Chunk {
                        chunk,
                        completions: Vec::with_capacity(slots.len()),
                        tickets,
                    });
                }
                Event::End(e) => pending.push_back(Pending::End(e)),
                Event::Error(e) => pending.push_back(Pending::Error(e)),
            }
        }
    }

    /// Emits finished items from the front of `pending`; with `block`, waits for at least
    /// the front one.
    fn retire<G: FnMut(StreamEvent)>(
        &self,
        pending: &mut VecDeque<Pending>,
        report: &mut StreamReport,
        on_event: &mut G,
        mut block: bool,
    ) -> Result<(), IngestError> {
        while let Some(front) = pending.front_mut() {
            if let Pending::Chunk {
                tickets,
                completions,
                ..
            } = front
            {
                while tickets.start < tickets.end {
                    let c = if block {
                        Some(self.mk.wait(tickets.start)?)
                    } else {
                        self.mk.poll(tickets.start)
                    };
                    let Some(c) = c else { break };
                    if matches!(c.outcome, Outcome::Fault(_)) {
                        report.faults += 1;
                    }
                    completions.push(c);
                    tickets.start += 1;
                }
                if tickets.start < tickets.end {
                    return Ok(());
                }
            }
            block = false;
            match pending.pop_front().expect("front exists") {
                Pending::Chunk {
                    chunk, completions, ..
                } => {
                    report.chunks += 1;
                    report.bytes += chunk.len as u64;
                    let (file_id, file_offset, len) = (chunk.file_id, chunk.file_offset, chunk.len);
                    // Every slot reading the buffer is finished: it goes back to the pool.
                    drop(chunk);
                    on_event(StreamEvent::ChunkDone {
                        file_id,
                        file_offset,
                        len,
                        completions,
                    });
                }
                Pending::End(e) => {
                    report.files += 1;
                    on_event(StreamEvent::End(e));
                }
                Pending::Error(e) => {
                    report.errors += 1;
                    on_event(StreamEvent::Error(e));
                }
            }
        }
        Ok(())
    }
}
