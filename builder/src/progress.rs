//! What a build shows on stderr: with a terminal, `indicatif` spinners per
//! step (CACHED or done) and byte bars per blob upload to containerd;
//! without one, one plain line per step (so logs still say what was cached)
//! and nothing for uploads.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::containerd::UploadProgress;

pub struct Progress {
    /// Bars only when asked for and stderr is a terminal.
    bars: Option<MultiProgress>,
    /// Plain lines (asked for, no terminal).
    plain: bool,
}

/// A step in progress; [`StepBar::finish`] says how it ended.
pub struct StepBar {
    bar: Option<ProgressBar>,
    line: String,
    plain: bool,
}

impl StepBar {
    pub fn finish(self, cached: bool) {
        let suffix = if cached { " CACHED" } else { "" };
        match self.bar {
            Some(bar) => {
                bar.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
                bar.finish_with_message(format!("{}{}", self.line, if cached { " CACHED" } else { " done" }));
            }
            None if self.plain => eprintln!("{}{suffix}", self.line),
            None => {}
        }
    }

    /// The step failed: leave its line, without a verdict.
    pub fn abandon(self) {
        if let Some(bar) = self.bar {
            bar.abandon_with_message(format!("{} failed", self.line));
        }
    }
}

/// Where the output of a RUN step goes: above the bars (terminal), as
/// plain lines prefixed with the step, or (progress off) to the debug log.
#[derive(Clone, Default)]
pub struct OutputSink {
    bars: Option<MultiProgress>,
    plain: bool,
    prefix: String,
}

impl OutputSink {
    pub fn line(&self, line: &str) {
        match &self.bars {
            Some(multi) => {
                if multi.println(format!("{} | {line}", self.prefix)).is_err() {
                    eprintln!("{} | {line}", self.prefix);
                }
            }
            None if self.plain => eprintln!("{} | {line}", self.prefix),
            None => tracing::debug!("{} | {line}", self.prefix),
        }
    }
}

impl Progress {
    /// The sink for the output of step `n` of `total`.
    pub fn output(&self, n: usize, total: usize) -> OutputSink {
        OutputSink { bars: self.bars.clone(), plain: self.plain, prefix: format!("#{n}/{total}") }
    }

    pub fn new(enabled: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            bars: (enabled && terminal).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            plain: enabled && !terminal,
        }
    }

    /// Show step `n` of `total` (`text` shortened) as running.
    pub fn step(&self, n: usize, total: usize, text: &str) -> StepBar {
        let line = format!("#{n}/{total} {text}");
        let bar = self.bars.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_message(line.clone());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        StepBar { bar, line, plain: self.plain }
    }

    /// A callback drawing one byte bar per uploaded blob (terminal only).
    pub fn uploads(&self) -> Option<UploadProgress> {
        let multi = self.bars.clone()?;
        let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
        let style = ProgressStyle::with_template("  upload {prefix} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Some(Arc::new(move |digest: &str, sent: u64, size: u64| {
            let Ok(mut bars) = bars.lock() else { return };
            let bar = bars.entry(digest.to_string()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(style.clone());
                bar.set_prefix(digest.chars().take(19).collect::<String>());
                bar
            });
            bar.set_position(sent);
            if sent >= size {
                bar.finish();
            }
        }))
    }
}
