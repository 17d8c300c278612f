//! Progress bars for long operator commands (a projection rebuild, bulk saga actions), drawn
//! by `indicatif`: redrawn in place on a terminal, and as a line per update (at most one a
//! second) in a log, so a CI job or `kubectl logs` shows the progress too.

use std::io::Write;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// A bar of `total` steps: the bar, the share, the counts, the rate and the time left, then
/// the bar's message.
pub fn bar(total: u64) -> ProgressBar {
    let target = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like_with_hz(Box::new(LogLines::default()), 1)
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(style());
    bar
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "[{bar:30}] {percent:>3}% {pos}/{len} {prefix}, {rate}, ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        },
    )
    .progress_chars("#>-")
}

/// A "terminal" that writes each drawing of the bar as one line: on stderr, or kept (tests).
#[derive(Debug, Default)]
struct LogLines(Mutex<String>, Option<std::sync::Arc<Mutex<Vec<String>>>>);

impl LogLines {
    fn emit(&self, line: &str) -> std::io::Result<()> {
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(());
        }
        if let Some(kept) = &self.1 {
            kept.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.to_string());
            return Ok(());
        }
        let mut err = std::io::stderr().lock();
        writeln!(err, "{line}")?;
        err.flush()
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        160
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        self.emit(&format!("{pending}{s}"))
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(s.trim_start_matches('\r'));
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        self.emit(&pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_log_each_drawing_is_a_line_with_share_counts_rate_and_eta() {
        let kept = std::sync::Arc::new(Mutex::new(Vec::new()));
        let term = LogLines(Mutex::default(), Some(kept.clone()));
        let bar = ProgressBar::with_draw_target(
            Some(1_000),
            ProgressDrawTarget::term_like(Box::new(term)),
        );
        bar.set_style(style());
        bar.set_prefix("records");
        bar.set_message("(version 2)");
        bar.set_position(500);
        bar.finish();
        let lines = kept.lock().unwrap().clone();
        let last = lines.last().expect("a line drawn");
        assert!(
            last.starts_with("[##############################] 100% 1000/1000 records, "),
            "{last}"
        );
        assert!(
            last.contains("/s, ETA ") && last.ends_with("(version 2)"),
            "{last}"
        );
        assert!(lines.iter().all(|l| !l.contains('\r')), "{lines:?}");
        let half = lines
            .iter()
            .find(|l| l.contains(" 50% "))
            .expect("the half-way line");
        assert!(
            half.starts_with("[###############>--------------]"),
            "{half}"
        );
    }
}
