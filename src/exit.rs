//! The exit codes, and usage errors found after parsing.

use crate::error::Result;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: bad input or a failed operation (the message says which file, tensor and why).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: bad command-line usage (clap).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `forward --golden` found a difference above the tolerance.
pub const EXIT_MISMATCH: i32 = 3;

/// A usage error found after parsing (an option that does not apply to this input): one line, exit 2.
pub fn usage(msg: String) -> Result<i32> {
    errln!("error: {msg}");
    Ok(EXIT_USAGE)
}
