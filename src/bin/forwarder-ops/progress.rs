//! Progress on stderr for long work: count and rate, and the ETA when the
//! total is known. Hidden when stderr is not a terminal (indicatif's rule).
//! And the one summary line every command ends with on stdout.

use std::{fmt::Display, time::Duration};

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

/// The line a command prints on stdout when it ends, one shape for all
/// (`command: key=value ...`): scripts and the tests read it.
pub fn summary(command: &str, fields: &[(&str, &dyn Display)]) -> String {
    let mut line = format!("{command}:");
    for (key, value) in fields {
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_summary_is_the_command_and_its_fields_as_key_value() {
        assert_eq!(
            super::summary("redrive", &[("messages", &2), ("dry_run", &true)]),
            "redrive: messages=2 dry_run=true"
        );
        assert_eq!(super::summary("stream", &[]), "stream:");
    }
}
