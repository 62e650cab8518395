//! Writing to stdout and stderr without panicking: a closed pipe (`plan ... | head -1`) ends the command
//! quietly, a full disk (`> /dev/full`) is an error naming stdout; stderr failures are ignored.

use crate::error::{CliError, Result};
use neuron_spec::Error;
use std::io::Write;

/// Prints one line on stdout; `?` propagates a write failure.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::out::line(format_args!($($t)*))?
    };
}

/// Prints one line on stderr, ignoring failures (where would we report them?).
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::out::err_line(format_args!($($t)*))
    };
}

/// The path errors name for stdout.
pub const STDOUT: &str = "<stdout>";

/// Writes `args` and a newline to stdout, then flushes (so a failure surfaces here, not at exit).
pub fn line(args: std::fmt::Arguments) -> Result<()> {
    let mut o = std::io::stdout().lock();
    Ok(o.write_fmt(args).and_then(|_| o.write_all(b"\n")).and_then(|_| o.flush()).map_err(|e| Error::io(STDOUT, e))?)
}

/// Writes `args` and a newline to stderr in one write (stderr is unbuffered: piecewise writes would let
/// other processes' output, e.g. mpirun's abort notice, land inside the line); errors ignored.
pub fn err_line(args: std::fmt::Arguments) {
    let mut line = std::fmt::format(args);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Whether `e` is stdout's reader having gone away (a closed pipe): the command ends quietly with success.
pub fn is_closed_stdout(e: &CliError) -> bool {
    matches!(e, CliError::Library(Error::Io { path, source }) if path.as_os_str() == STDOUT && source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Bytes in binary units, as the progress bar shows them (B, KiB, MiB, GiB, TiB).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Pretty JSON on stdout.
pub fn json(v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Command(e.to_string()))?;
    line(format_args!("{text}"))
}
