//! The ring protocol, version 3: every constant a backend needs, and nothing else.
//!
//! `PROTOCOL.md` documents the same layout byte for byte; GPU kernels get these numbers
//! generated from here ([`generated_constants`]), never typed twice.

pub use vyre_isa::slot::{word as slot_word, SLOT_BYTES};

/// Protocol version written into the control block.
pub const PROTOCOL_VERSION: u32 = 3;
/// "VYR0" as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VYR0");
/// Words per slot.
pub const SLOT_WORDS: usize = slot_word::COUNT;

/// Slot statuses (bits 0..8 of the status word).
pub mod status {
    /// Free: the host may publish into it.
    pub const EMPTY: u32 = 0;
    /// Published by the host, not yet claimed.
    pub const PUBLISHED: u32 = 1;
    /// Claimed by a worker, executing.
    pub const CLAIMED: u32 = 2;
    /// Finished; results valid.
    pub const DONE: u32 = 3;
    /// Finished with a fault; bits 8..16 hold the fault code, result 0 the detail, result 1
    /// the location.
    pub const FAULT: u32 = 4;
    /// An IO_READ passed its checks and queued a request; it waits for the host's read and
    /// is completed by the worker that takes its resume entry (PROTOCOL.md, "I/O queue").
    pub const WAIT_IO: u32 = 5;
    /// The stamp the host writes into RES3 (the slot's last word) when it publishes
    /// `position`. With STATUS = PUBLISHED and SEQ = `position` in the first 32 bytes of the
    /// slot, it shows a worker that reads the slot line before the tail (cuda's hot polling)
    /// that the second 32 bytes are this publication's too: before it, RES3 holds 0 (zeroed
    /// memory; a worker writing results, whose fourth word is always 0) or the stamp of an
    /// earlier lap, which differs in a bit at or above the capacity's. Never 0. The cuda
    /// kernel computes it as `position | 1`.
    pub const fn publish_stamp(position: u32) -> u32 {
        position | 1
    }
}

/// Word offsets in the control block. Words are grouped into 64-byte lines by writer so that
/// the hot host-written and worker-written words never share a line (PROTOCOL.md names the two
/// rarely written exceptions).
pub mod control {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::PROTOCOL_VERSION`].
    pub const VERSION: usize = 1;
    /// Ring capacity in slots (a power of two).
    pub const CAPACITY: usize = 2;
    /// Debug log capacity in records (a power of two).
    pub const DEBUG_CAPACITY: usize = 3;
    /// Non-zero: workers stop once nothing they claimed is left.
    pub const SHUTDOWN: usize = 4;
    /// Non-zero (host-written, for tests): workers stop beating and stop finishing what they
    /// claim, as a hung device would; they leave only on ABORT.
    pub const FAULT_INJECT: usize = 5;
    /// Non-zero (host-written): workers claim nothing more and exit once the batch in hand is
    /// done; a hung worker leaves its claim unfinished (restart requeues it).
    pub const ABORT: usize = 6;
    /// Next position the host will publish (host-written; line 1).
    pub const TAIL: usize = 16;
    /// Next position a worker will claim (workers CAS it; line 2).
    pub const HEAD: usize = 32;
    /// Slots completed (DONE or FAULT), wrapping (line 3, worker-written).
    pub const DONE_COUNT: usize = 48;
    /// Slots completed with FAULT, wrapping.
    pub const FAULT_COUNT: usize = 49;
    /// Bumped by workers while they run (watchdog input).
    pub const HEARTBEAT: usize = 50;
    /// Bumped by FENCE.
    pub const EPOCH: usize = 51;
    /// Workers currently inside the claim loop.
    pub const WORKERS_RUNNING: usize = 52;
    /// Next debug record index to write (line 4).
    pub const DEBUG_WRITE: usize = 64;
    /// Next debug record index the host will read.
    pub const DEBUG_READ: usize = 65;
    /// Debug records dropped because the log was full.
    pub const DEBUG_DROPPED: usize = 66;
    /// First of the per-opcode counters (lines 5..9): counter i counts core opcode i.
    pub const OP_COUNTERS: usize = 80;
    /// Counts slots whose opcode is not below [`vyre_isa::slot::COUNTED_OPCODES`].
    pub const OTHER_OP_COUNTER: usize = OP_COUNTERS + vyre_isa::slot::COUNTED_OPCODES;
    /// Files registered for IO_READ: valid file ids are `1..=IO_FILES` (line 10,
    /// host-written, release store before `register_file` returns the id).
    pub const IO_FILES: usize = 160;
    /// Next I/O request record index the host will read (host-written; informational: the
    /// host reads records by their sequence word, workers never read it).
    pub const IO_REQ_READ: usize = 161;
    /// Next resume entry index the host will write (host-written, release store after the
    /// entry's words).
    pub const RESUME_TAIL: usize = 162;
    /// Next I/O request record index (workers fetch-add it; line 11, worker-written).
    pub const IO_REQ_WRITE: usize = 176;
    /// Next resume entry index a worker will take (workers CAS it).
    pub const RESUME_HEAD: usize = 177;
    /// Words in the control block.
    pub const WORDS: usize = 192;
}

/// Debug log record layout: eight words each.
pub mod debug_record {
    /// Record index + 1 once the record is complete (0 = not written yet).
    pub const SEQ: usize = 0;
    /// The ring position of the slot that wrote it.
    pub const POSITION: usize = 1;
    /// The slot's tenant word.
    pub const TENANT: usize = 2;
    /// The slot's opcode word.
    pub const OP: usize = 3;
    /// The four logged words.
    pub const WORDS: usize = 4;
    /// Words per record.
    pub const RECORD_WORDS: usize = 8;
}

/// The I/O queue region: `capacity` request records of [`io_request::RECORD_WORDS`] words,
/// then `capacity` resume entries of [`io_resume::ENTRY_WORDS`] words
/// ([`IO_QUEUE_WORDS_PER_SLOT`] words per ring slot in all).
pub const IO_QUEUE_WORDS_PER_SLOT: usize = io_request::RECORD_WORDS + io_resume::ENTRY_WORDS;

/// I/O request record layout (worker-written, host-read): eight words each, at word
/// `(index & (capacity - 1)) * 8` of the I/O queue region.
pub mod io_request {
    /// Record index + 1, stored last with release ordering (0 or stale = not written yet).
    pub const SEQ: usize = 0;
    /// The ring position of the waiting IO_READ slot.
    pub const POSITION: usize = 1;
    /// The file id.
    pub const FILE: usize = 2;
    /// File offset, low 32 bits.
    pub const OFF_LO: usize = 3;
    /// File offset, high 32 bits.
    pub const OFF_HI: usize = 4;
    /// Bytes to read.
    pub const LEN: usize = 5;
    /// Destination buffer handle.
    pub const BUF: usize = 6;
    /// Destination offset in the buffer.
    pub const BUF_OFF: usize = 7;
    /// Words per record.
    pub const RECORD_WORDS: usize = 8;
}

/// Resume entry layout (host-written, worker-read): two words each, at word
/// `capacity * 8 + (index & (capacity - 1)) * 2` of the I/O queue region.
pub mod io_resume {
    /// The ring position of the IO_READ slot to complete.
    pub const POSITION: usize = 0;
    /// Bytes read, or [`ERROR`] | errno.
    pub const RESULT: usize = 1;
    /// Words per entry.
    pub const ENTRY_WORDS: usize = 2;
    /// Bit 31 of RESULT: the read failed; bits 0..31 are the errno.
    pub const ERROR: u32 = vyre_isa::io::RESULT_ERROR;
}

/// The protocol's constants as `#define` lines, for CUDA C++ sources; WGSL gets the same
/// values as `const` declarations from [`generated_wgsl_constants`].
pub fn generated_constants() -> String {
    constants()
        .iter()
        .map(|(k, v)| format!("#define VYRE_{k} {v}u\n"))
        .collect()
}

/// The protocol's constants as WGSL `const` declarations.
pub fn generated_wgsl_constants() -> String {
    constants()
        .iter()
        .map(|(k, v)| format!("const VYRE_{k}: u32 = {v}u;\n"))
        .collect()
}

fn constants() -> Vec<(String, u64)> {
    use vyre_isa::{FaultCode, Opcode, SlotOp};
    let mut c: Vec<(String, u64)> = vec![
        ("PROTOCOL_VERSION".into(), PROTOCOL_VERSION.into()),
        ("MAGIC".into(), MAGIC.into()),
        ("SLOT_WORDS".into(), SLOT_WORDS as u64),
        ("SLOT_SEQ".into(), slot_word::SEQ as u64),
        ("SLOT_STATUS".into(), slot_word::STATUS as u64),
        ("SLOT_OP".into(), slot_word::OP as u64),
        ("SLOT_TENANT".into(), slot_word::TENANT as u64),
        ("SLOT_ARG0".into(), slot_word::ARG0 as u64),
        ("SLOT_RES0".into(), slot_word::RES0 as u64),
        ("ST_EMPTY".into(), status::EMPTY.into()),
        ("ST_PUBLISHED".into(), status::PUBLISHED.into()),
        ("ST_CLAIMED".into(), status::CLAIMED.into()),
        ("ST_DONE".into(), status::DONE.into()),
        ("ST_FAULT".into(), status::FAULT.into()),
        ("ST_WAIT_IO".into(), status::WAIT_IO.into()),
        ("CB_CAPACITY".into(), control::CAPACITY as u64),
        ("CB_DEBUG_CAPACITY".into(), control::DEBUG_CAPACITY as u64),
        ("CB_SHUTDOWN".into(), control::SHUTDOWN as u64),
        ("CB_FAULT_INJECT".into(), control::FAULT_INJECT as u64),
        ("CB_ABORT".into(), control::ABORT as u64),
        ("CB_TAIL".into(), control::TAIL as u64),
        ("CB_HEAD".into(), control::HEAD as u64),
        ("CB_DONE_COUNT".into(), control::DONE_COUNT as u64),
        ("CB_FAULT_COUNT".into(), control::FAULT_COUNT as u64),
        ("CB_HEARTBEAT".into(), control::HEARTBEAT as u64),
        ("CB_EPOCH".into(), control::EPOCH as u64),
        ("CB_WORKERS_RUNNING".into(), control::WORKERS_RUNNING as u64),
        ("CB_DEBUG_WRITE".into(), control::DEBUG_WRITE as u64),
        ("CB_DEBUG_READ".into(), control::DEBUG_READ as u64),
        ("CB_DEBUG_DROPPED".into(), control::DEBUG_DROPPED as u64),
        ("CB_OP_COUNTERS".into(), control::OP_COUNTERS as u64),
        (
            "CB_OTHER_OP_COUNTER".into(),
            control::OTHER_OP_COUNTER as u64,
        ),
        ("CB_IO_FILES".into(), control::IO_FILES as u64),
        ("CB_IO_REQ_READ".into(), control::IO_REQ_READ as u64),
        ("CB_RESUME_TAIL".into(), control::RESUME_TAIL as u64),
        ("CB_IO_REQ_WRITE".into(), control::IO_REQ_WRITE as u64),
        ("CB_RESUME_HEAD".into(), control::RESUME_HEAD as u64),
        ("CB_WORDS".into(), control::WORDS as u64),
        ("IOREQ_SEQ".into(), io_request::SEQ as u64),
        ("IOREQ_POSITION".into(), io_request::POSITION as u64),
        ("IOREQ_FILE".into(), io_request::FILE as u64),
        ("IOREQ_OFF_LO".into(), io_request::OFF_LO as u64),
        ("IOREQ_OFF_HI".into(), io_request::OFF_HI as u64),
        ("IOREQ_LEN".into(), io_request::LEN as u64),
        ("IOREQ_BUF".into(), io_request::BUF as u64),
        ("IOREQ_BUF_OFF".into(), io_request::BUF_OFF as u64),
        ("IOREQ_WORDS".into(), io_request::RECORD_WORDS as u64),
        ("IORES_POSITION".into(), io_resume::POSITION as u64),
        ("IORES_RESULT".into(), io_resume::RESULT as u64),
        ("IORES_WORDS".into(), io_resume::ENTRY_WORDS as u64),
        ("IO_RESULT_ERROR".into(), io_resume::ERROR.into()),
        ("IO_MAX_READ".into(), vyre_isa::io::MAX_READ_BYTES.into()),
        (
            "IO_QUEUE_WORDS_PER_SLOT".into(),
            IO_QUEUE_WORDS_PER_SLOT as u64,
        ),
        ("DBG_RECORD_WORDS".into(), debug_record::RECORD_WORDS as u64),
        (
            "COUNTED_OPCODES".into(),
            vyre_isa::slot::COUNTED_OPCODES as u64,
        ),
    ];
    {
        use vyre_isa::dfa;
        c.extend([
            ("DFA_MAGIC".into(), dfa::MAGIC.into()),
            ("DFA_VERSION".into(), dfa::VERSION.into()),
            ("DFA_CLASS_MAP_WORD".into(), dfa::CLASS_MAP_WORD as u64),
            ("DFA_START_WORD".into(), dfa::START_WORD as u64),
            ("DFA_START_TEXT".into(), dfa::START_TEXT as u64),
            ("DFA_TRANS_WORD".into(), dfa::TRANS_WORD as u64),
            ("DFA_MATCH_BIT".into(), dfa::MATCH_BIT.into()),
            ("DFA_START_LOOKBEHIND".into(), dfa::START_LOOKBEHIND.into()),
            ("DFA_REPORT_EOI".into(), dfa::REPORT_EOI.into()),
            ("DFA_HIT_HEADER_BYTES".into(), dfa::HIT_HEADER_BYTES),
            ("DFA_SET_MAGIC".into(), dfa::SET_MAGIC.into()),
            ("DFA_SET_VERSION".into(), dfa::SET_VERSION.into()),
            ("DFA_SET_HEADER_WORDS".into(), dfa::SET_HEADER_WORDS as u64),
            ("DFA_SET_MAX_MEMBERS".into(), dfa::SET_MAX_MEMBERS.into()),
        ]);
    }
    for op in SlotOp::ALL {
        c.push((format!("OP_{}", op.mnemonic()), *op as u64));
    }
    for op in Opcode::ALL {
        c.push((format!("I_{}", op.mnemonic().to_uppercase()), *op as u64));
    }
    for f in FaultCode::ALL {
        c.push((format!("F_{}", f.name().to_uppercase()), *f as u64));
    }
    c
}
