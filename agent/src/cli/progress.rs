//! Progress of a long dump or restore on a terminal: a line on stderr with
//! the bytes and pages done out of those expected, the rate and the time
//! left, redrawn as the pages stream and cleared at the end, so that only
//! the summary line stays. Nothing at all when stderr is not a terminal (a
//! log, a pipe) or with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::engine::Progress;

/// A progress line on stderr.
pub struct Bar {
    bar: ProgressBar,
}

impl std::fmt::Debug for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bar")
            .field("position", &self.bar.position())
            .field("length", &self.bar.length())
            .finish()
    }
}

/// The line: `torpor: dumping 12.50 MiB/64.00 MiB (3200 pages), 4.20 MiB/s, 12s left`.
const TEMPLATE: &str =
    "torpor: {msg} {bytes}/{total_bytes} ({pages} pages), {binary_bytes_per_sec}, {eta} left";

impl Bar {
    /// A line saying `what` (`dumping`, `restoring`) when stderr is a
    /// terminal and `quiet` is not set.
    pub fn on_terminal(what: &str, quiet: bool) -> Option<Arc<Bar>> {
        if quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        Some(Arc::new(Bar::new(what, ProgressDrawTarget::stderr())))
    }

    fn new(what: &str, target: ProgressDrawTarget) -> Bar {
        let page = crate::engine::page_size().max(1);
        // The template is a constant: a mistake in it is caught by the tests.
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "pages",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", s.pos() / page);
                },
            );
        let bar = ProgressBar::with_draw_target(Some(0), target)
            .with_style(style)
            .with_message(what.to_string());
        Bar { bar }
    }

    /// Clears the line, leaving the terminal to the summary.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn expect(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        // A dump's total is an estimate: never show more done than expected.
        if self.bar.length().is_some_and(|l| self.bar.position() > l) {
            self.bar.set_length(self.bar.position());
        }
    }
}

/// The engine's hook for an optional bar.
pub fn hook(bar: Option<&Arc<Bar>>) -> Option<Arc<dyn Progress>> {
    bar.map(|b| Arc::clone(b) as Arc<dyn Progress>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_bytes_and_pages_and_never_passes_its_total() {
        let b = Bar::new("dumping", ProgressDrawTarget::hidden());
        b.expect(8 * crate::engine::page_size());
        b.advance(3 * crate::engine::page_size());
        assert_eq!(b.bar.position(), 3 * crate::engine::page_size());
        assert_eq!(b.bar.length(), Some(8 * crate::engine::page_size()));
        b.advance(9 * crate::engine::page_size());
        assert_eq!(b.bar.length(), Some(12 * crate::engine::page_size()));
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
        b.finish();
        assert!(b.bar.is_finished());
    }
}
