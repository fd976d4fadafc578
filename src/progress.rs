//! Progress bars (indicatif) on stderr: drawn only on a terminal and never with --quiet, so logs and CI output stay clean.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// A bar over `len` units (rows, parts) with rate and ETA.
pub fn bar(len: u64, prefix: impl Into<String>, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    let template = format!(
        "{{prefix:>24}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{rate}} ETA {{eta}}"
    );
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", s.per_sec());
            },
        )
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(prefix.into());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A spinner for work of unknown length.
pub fn spinner(prefix: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target());
    pb.set_style(
        ProgressStyle::with_template("{prefix:>24} {spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_prefix(prefix.into());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn target() -> ProgressDrawTarget {
    if QUIET.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        // indicatif hides itself when stderr is not a terminal.
        ProgressDrawTarget::stderr()
    }
}

/// A warning the user must see whatever the terminal: on stderr, with or without --quiet (quiet silences
/// progress, not news), and in the log.
pub fn warn(message: &str) {
    // Printed once for people; logged at info so a log file (RUST_LOG=info) has it too, without the default
    // filter (warn) printing it a second time.
    tracing::info!(target: "warning", "{message}");
    eprintln!("warning: {message}");
}
