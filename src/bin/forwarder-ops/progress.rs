//! Progress on stderr for long work: count and rate, and the ETA when the
//! total is known. Hidden when stderr is not a terminal (indicatif's rule).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` items of `unit`, or a spinner when the total is not
/// known.
pub fn bar(total: Option<u64>, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = match total {
        Some(_) => format!("{{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"),
        None => format!("{{spinner}} {{pos}} {unit} ({{per_sec}}) {{msg}}"),
    };
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A line on stderr above the bar; printed whether or not stderr is a
/// terminal (indicatif's own `println` is not, when the bar is hidden).
pub fn say(bar: &ProgressBar, line: impl std::fmt::Display) {
    bar.suspend(|| eprintln!("{line}"));
}
