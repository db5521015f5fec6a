//! The baseline for `vyre bench ring --backend wgpu`: one dispatch and one readback per op.
//!
//! It runs the same megakernel pipeline on the same device as the epoch backend, but the way
//! a GPU API is usually driven: write the op into a buffer, submit one dispatch, copy the
//! result back, map it and wait, for every op. The epoch driver amortises exactly that
//! round trip over every slot of an epoch.

use crate::epoch::bind_group;
use crate::heap::{map_and_copy, Heap};
use crate::shader::{io, IO_HEADER_WORDS};
use crate::Gpu;
use std::sync::Arc;
use vyre_isa::{Fault, FaultCode, Slot};
use vyre_runtime::protocol::{slot_word, status, SLOT_WORDS};
use vyre_runtime::BackendError;

/// One dispatch + readback per op.
#[derive(Debug)]
pub struct OneShot {
    gpu: Arc<Gpu>,
    heap: Heap,
    io: wgpu::Buffer,
    readback: wgpu::Buffer,
    bind: wgpu::BindGroup,
}

const BYTES: u64 = 4 * (IO_HEADER_WORDS + SLOT_WORDS) as u64;

impl OneShot {
    /// A baseline runner on the process's wgpu device (no buffers, no programs).
    pub fn new() -> Result<OneShot, BackendError> {
        let gpu = crate::gpu::shared()?;
        gpu.megakernel()?;
        let mut heap = Heap::new(&gpu.device, gpu.page_bytes);
        heap.set_debug_capacity(&gpu.device, 16);
        heap.flush_meta(&gpu.device, &gpu.queue);
        let io = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("vyre one-shot io"),
            size: BYTES,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("vyre one-shot readback"),
            size: BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind = bind_group(&gpu.device, &gpu.layout, &io, &heap);
        Ok(OneShot {
            gpu,
            heap,
            io,
            readback,
            bind,
        })
    }

    /// Runs one slot: write, dispatch, copy back, map, wait.
    pub fn run(&self, slot: &Slot, position: u32) -> Result<Result<[u32; 4], Fault>, BackendError> {
        let mut w = [0u32; IO_HEADER_WORDS + SLOT_WORDS];
        w[io::COUNT] = 1;
        w[io::ACTIVE] = 1;
        w[io::DEBUG_CAP] = 16;
        w[io::BUDGET_LO] = 1 << 20;
        w[io::PAGE_SHIFT] = (self.gpu.page_bytes / 4).trailing_zeros();
        w[io::PROG_BASE] = self.heap.prog_base;
        let s = &mut w[IO_HEADER_WORDS..];
        s[slot_word::SEQ] = position;
        s[slot_word::OP] = slot.op_word();
        s[slot_word::TENANT] = slot.tenant_word();
        s[slot_word::ARG0..slot_word::RES0].copy_from_slice(&slot.args);
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let g = &self.gpu;
        g.queue.write_buffer(&self.io, 0, &bytes);
        let mut enc = g.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&g.megakernel()?.pipeline);
            pass.set_bind_group(0, &self.bind, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        enc.copy_buffer_to_buffer(&self.io, 0, &self.readback, 0, BYTES);
        let index = g.queue.submit([enc.finish()]);
        let out = map_and_copy(&g.device, &self.readback, index, BYTES)?;
        let word = |i: usize| {
            let at = 4 * (IO_HEADER_WORDS + i);
            u32::from_le_bytes(out[at..at + 4].try_into().expect("4 bytes"))
        };
        let st = word(slot_word::STATUS);
        let r = [0, 1, 2, 3].map(|i| word(slot_word::RES0 + i));
        Ok(match st & 0xff {
            status::DONE => Ok(r),
            _ => Err(Fault {
                code: FaultCode::from_u8((st >> 8) as u8).unwrap_or(FaultCode::Lost),
                detail: r[0],
                at: r[1],
            }),
        })
    }
}
