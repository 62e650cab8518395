//! Progress bars for long commands: shown on a terminal, hidden when stderr is not one or with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// A byte-counting bar titled `what`, or a hidden one.
pub fn bytes_bar(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
