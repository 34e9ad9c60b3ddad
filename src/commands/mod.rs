//! One module per subcommand: argument definitions and what the command prints.

pub mod compile;
pub mod demo;
pub mod explain;
pub mod inspect;
pub mod run;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count progress bar on stderr (hidden when stderr is not a terminal).
pub struct ByteProgress(ProgressBar);

impl ByteProgress {
    pub fn new(message: &'static str) -> ByteProgress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(message);
        ByteProgress(bar)
    }

    /// The callback the compile driver reports `(done, total)` bytes through.
    pub fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }

    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

/// Prints `value` as one JSON line on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
