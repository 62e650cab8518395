//! The CLI's progress bars (indicatif): shown on a terminal, hidden when stderr is not one or with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};
use neuron_spec::progress::{Progress, ProgressSink};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

/// One bar at a time, restarted for each phase the library reports.
struct Bar(Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        if let Ok(mut b) = self.0.lock() {
            *b = Some(bar);
        }
    }
    fn inc(&self, bytes: u64) {
        if let Ok(b) = self.0.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(bytes)
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.0.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear()
            }
        }
    }
}

/// A bar on a terminal when `show`, else nothing.
pub fn sink(show: bool) -> ProgressSink {
    if show && std::io::stderr().is_terminal() {
        ProgressSink::new(Arc::new(Bar(Mutex::new(None))))
    } else {
        ProgressSink::default()
    }
}
