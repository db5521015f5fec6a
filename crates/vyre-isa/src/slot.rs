//! The 64-byte slot: its word layout and the slot opcodes.
//!
//! A slot is sixteen little-endian u32 words. Words 0 and 1 (sequence and status) belong
//! to the ring protocol (`vyre-runtime`); words 2..16 are the instruction this module
//! describes. `PROTOCOL.md` gives the same layout byte for byte.

use std::fmt;

/// Word offsets inside a slot.
pub mod word {
    /// Ring sequence number (the position this slot was published at).
    pub const SEQ: usize = 0;
    /// Status (bits 0..8) and fault code (bits 8..16).
    pub const STATUS: usize = 1;
    /// Opcode (bits 0..16), flags (bits 16..24), priority (bits 24..32).
    pub const OP: usize = 2;
    /// Tenant id (bits 0..16); bits 16..32 reserved, zero.
    pub const TENANT: usize = 3;
    /// First of the eight argument words.
    pub const ARG0: usize = 4;
    /// First of the four result words.
    pub const RES0: usize = 12;
    /// Words in a slot.
    pub const COUNT: usize = 16;
}

/// Bytes in a slot.
pub const SLOT_BYTES: usize = 64;
/// Argument words in a slot.
pub const ARG_WORDS: usize = 8;
/// Result words in a slot.
pub const RESULT_WORDS: usize = 4;
/// Highest priority value a slot may carry (priorities are 0..=MAX_PRIORITY).
pub const MAX_PRIORITY: u8 = 7;
/// First opcode of the extension space; core opcodes are below it. Extension opcodes are
/// reserved for tenant handlers and fault with `UNKNOWN_OPCODE` until a backend defines them.
pub const EXT_OPCODE_BASE: u16 = 0x0100;
/// Opcodes below this get a per-opcode counter in the control block.
pub const COUNTED_OPCODES: usize = 64;

/// What kind of value an argument word holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A registered buffer handle.
    Buffer,
    /// A loaded program id.
    Program,
    /// Any 32-bit value.
    Value,
}

/// One named argument of a slot opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// The operand's name in `.vasm` (`buf=`, `off=`, ...).
    pub name: &'static str,
    /// What it holds.
    pub kind: ArgKind,
}

macro_rules! define_slot_ops {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $mn:literal,
        [$($arg:ident : $kind:ident),* $(,)?], $res:literal; )*) => {
        /// A core slot opcode (see [`crate::for_each_slot_op!`] for the table).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum SlotOp {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl SlotOp {
            /// Every core slot opcode, in table order.
            pub const ALL: &'static [SlotOp] = &[$(SlotOp::$name),*];

            /// The opcode for a number, if it is a core opcode.
            pub fn from_u16(n: u16) -> Option<SlotOp> {
                match n { $( $num => Some(SlotOp::$name), )* _ => None }
            }

            /// The upper-case mnemonic used by `.vasm` and the disassembler.
            pub fn mnemonic(self) -> &'static str {
                match self { $( SlotOp::$name => $mn, )* }
            }

            /// The opcode for a mnemonic (case-insensitive).
            pub fn from_mnemonic(s: &str) -> Option<SlotOp> {
                $( if s.eq_ignore_ascii_case($mn) { return Some(SlotOp::$name); } )*
                None
            }

            /// The argument words this opcode reads, in word order.
            pub fn args(self) -> &'static [ArgSpec] {
                match self {
                    $( SlotOp::$name => &[$(ArgSpec { name: stringify!($arg), kind: ArgKind::$kind }),*], )*
                }
            }

            /// What the op writes to the result words.
            pub fn results_doc(self) -> &'static str {
                match self { $( SlotOp::$name => $res, )* }
            }

            /// The op's documentation, from the table.
            pub fn doc(self) -> &'static str {
                match self { $( SlotOp::$name => concat!($($doc, "\n"),*), )* }
            }
        }
    };
}
crate::for_each_slot_op!(define_slot_ops);

impl fmt::Display for SlotOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mnemonic())
    }
}

/// The instruction part of a slot (words 2..16): what the host writes when it publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Opcode number (core opcodes are [`SlotOp`]; others fault unless a backend defines them).
    pub op: u16,
    /// Flags; none are defined in protocol versions 1 and 2, so they must be zero.
    pub flags: u8,
    /// Priority, 0..=[`MAX_PRIORITY`].
    pub priority: u8,
    /// Tenant id; 0 is the default tenant.
    pub tenant: u16,
    /// Argument words.
    pub args: [u32; ARG_WORDS],
}

impl Slot {
    /// A slot for a core opcode with the given leading arguments (the rest zero).
    pub fn new(op: SlotOp, args: &[u32]) -> Slot {
        let mut a = [0u32; ARG_WORDS];
        a[..args.len()].copy_from_slice(args);
        Slot {
            op: op as u16,
            args: a,
            ..Slot::default()
        }
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: u16) -> Slot {
        self.tenant = tenant;
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Slot {
        self.priority = priority;
        self
    }

    /// The opcode word (word 2).
    #[inline]
    pub fn op_word(&self) -> u32 {
        u32::from(self.op) | u32::from(self.flags) << 16 | u32::from(self.priority) << 24
    }

    /// The tenant word (word 3).
    #[inline]
    pub fn tenant_word(&self) -> u32 {
        u32::from(self.tenant)
    }

    /// Words 2..12 (opcode, tenant, arguments) as published.
    #[inline]
    pub fn encode(&self) -> [u32; 10] {
        let mut w = [0u32; 10];
        w[0] = self.op_word();
        w[1] = self.tenant_word();
        w[2..].copy_from_slice(&self.args);
        w
    }

    /// Reads words 2..12 back. The reserved half of the tenant word is reported by
    /// [`Slot::check`], not here, so that a worker can fault such a slot with a code.
    pub fn decode(w: &[u32; 10]) -> (Slot, u32) {
        let mut args = [0u32; ARG_WORDS];
        args.copy_from_slice(&w[2..]);
        let slot = Slot {
            op: w[0] as u16,
            flags: (w[0] >> 16) as u8,
            priority: (w[0] >> 24) as u8,
            tenant: w[1] as u16,
            args,
        };
        (slot, w[1] >> 16)
    }

    /// Checks the fields every backend checks before executing: a core opcode, no flags,
    /// a priority in range, zero reserved bits, zero argument words the op does not use.
    pub fn check(&self, tenant_reserved: u32) -> Result<SlotOp, (crate::FaultCode, u32)> {
        use crate::FaultCode;
        let Some(op) = SlotOp::from_u16(self.op) else {
            return Err((FaultCode::UnknownOpcode, u32::from(self.op)));
        };
        if self.flags != 0 || tenant_reserved != 0 || self.priority > MAX_PRIORITY {
            return Err((FaultCode::MalformedSlot, 0));
        }
        let used = op.args().len();
        if let Some(i) = self.args[used..].iter().position(|&a| a != 0) {
            return Err((FaultCode::MalformedSlot, (used + i) as u32));
        }
        Ok(op)
    }
}
