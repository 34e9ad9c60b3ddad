//! One module per subcommand: argument definitions and what the command prints.

pub mod compile;
pub mod demo;
pub mod inspect;
pub mod run;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count progress bar on stderr (hidden when stderr is not a terminal).
pub fn byte_progress(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Prints `value` as one JSON line on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
