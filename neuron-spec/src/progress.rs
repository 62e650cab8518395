//! Progress reporting for long operations. The library only counts bytes; a front end (the CLI's
//! indicatif bar, a log line, nothing) decides how to show them.

use std::sync::Arc;

/// Receives the bytes an operation has written so far.
pub trait Progress: Send + Sync {
    /// A new phase named `what` starts, with `total` bytes to write.
    fn start(&self, what: &str, total: u64);
    /// `bytes` more were written.
    fn inc(&self, bytes: u64);
    /// The phase is done.
    fn finish(&self);
}

/// An optional, shareable progress sink (what the option structs hold; `None` reports nothing).
#[derive(Clone, Default)]
pub struct ProgressSink(pub Option<Arc<dyn Progress>>);

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ProgressSink(Some)" } else { "ProgressSink(None)" })
    }
}

impl ProgressSink {
    /// A sink that forwards to `p`.
    pub fn new(p: Arc<dyn Progress>) -> Self {
        Self(Some(p))
    }

    /// Starts a phase.
    pub fn start(&self, what: &str, total: u64) {
        if let Some(p) = &self.0 {
            p.start(what, total)
        }
    }

    /// Counts written bytes.
    pub fn inc(&self, bytes: u64) {
        if let Some(p) = &self.0 {
            p.inc(bytes)
        }
    }

    /// Ends a phase.
    pub fn finish(&self) {
        if let Some(p) = &self.0 {
            p.finish()
        }
    }
}
