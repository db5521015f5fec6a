//! Fault codes a slot can complete with.

use std::fmt;

macro_rules! define_faults {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $text:literal; )*) => {
        /// Why a slot completed with status FAULT. Stored in bits 8..16 of the status word.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FaultCode {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl FaultCode {
            /// Every fault code.
            pub const ALL: &'static [FaultCode] = &[$(FaultCode::$name),*];

            /// The code for a number.
            pub fn from_u8(n: u8) -> Option<FaultCode> {
                match n { $( $num => Some(FaultCode::$name), )* _ => None }
            }

            /// A short lower-case name (`out_of_bounds`), used by `.vasm` cases and JSON.
            pub fn name(self) -> &'static str {
                match self { $( FaultCode::$name => $text, )* }
            }

            /// The code for a name.
            pub fn from_name(s: &str) -> Option<FaultCode> {
                $( if s == $text { return Some(FaultCode::$name); } )*
                None
            }
        }
    };
}

define_faults! {
    /// The opcode is not a core opcode and no extension defines it. Detail: the opcode.
    UnknownOpcode = 1, "unknown_opcode";
    /// A buffer handle names no registered buffer. Detail: the handle.
    BadHandle = 2, "bad_handle";
    /// A range falls outside its buffer. Detail: the range's start offset (low 32 bits).
    OutOfBounds = 3, "out_of_bounds";
    /// A word access at an offset that is not a multiple of 4. Detail: the offset.
    Misaligned = 4, "misaligned";
    /// EXEC ran past the per-slot step budget. Detail: the budget.
    StepBudget = 5, "step_budget";
    /// EXEC names no loaded program. Detail: the program id.
    BadProgram = 6, "bad_program";
    /// Flags, reserved bits, a priority or an unused argument word are not as the protocol
    /// says. Detail: the index of the offending argument word, or 0.
    MalformedSlot = 7, "malformed_slot";
    /// The slot's tenant may not use this opcode or buffer (enforced from protocol v2).
    /// Detail: the opcode.
    TenantDenied = 8, "tenant_denied";
    /// The backend does not implement this opcode. Detail: the opcode.
    Unsupported = 9, "unsupported";
    /// The slot was claimed by a worker that stopped or a device that was lost before it
    /// finished; the host reports it rather than dropping it. Detail: the slot's position.
    Lost = 10, "lost";
    /// IO_READ names a file id that is 0 or above the number of files the host registered.
    /// Detail: the file id.
    BadFile = 11, "bad_file";
    /// The host's read for IO_READ failed. Detail: the OS errno (0 if the OS gave none).
    Io = 12, "io";
}

impl fmt::Display for FaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault raised while executing a slot: the code, a detail word and where inside the slot
/// it happened (the program counter for EXEC, the sub-op index for PACKED, else 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The code.
    pub code: FaultCode,
    /// Code-specific detail (see each code).
    pub detail: u32,
    /// Program counter (EXEC) or sub-op index (PACKED).
    pub at: u32,
}

impl Fault {
    /// A fault with detail and no location.
    pub fn new(code: FaultCode, detail: u32) -> Fault {
        Fault {
            code,
            detail,
            at: 0,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (detail {:#x}, at {})",
            self.code, self.detail, self.at
        )
    }
}
