//! Progress on a terminal: a spinner on stderr with the current step, and
//! nothing at all with --json or when stderr is not a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use smolvm_core::sandbox::Progress;

/// The CLI's progress display.
pub struct Spinner {
    bar: Option<ProgressBar>,
    quiet: bool,
    started: Instant,
}

impl Spinner {
    /// A spinner when stderr is a terminal and `quiet` is false.
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Spinner { bar, quiet, started: Instant::now() }
    }

    /// Seconds since the spinner was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Progress for Spinner {
    fn step(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    fn notice(&self, message: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("notice: {message}")),
            None => eprintln!("notice: {message}"),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
