//! Progress bars and one-line summaries for long commands.

use crate::train::{EpochMetrics, StepReport, TrainObserver, schedule::Phase};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C: the run checkpoints and stops after the current step.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C exits at once (the last checkpoint is intact).
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing the current step and checkpointing (Ctrl-C again to quit now)"
        );
    });
    flag
}

/// A progress bar with one of our templates.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// Shows training progress: a bar per epoch, a line per epoch.
pub struct TrainProgress {
    epoch_bar: Option<(u64, ProgressBar)>,
    eval_bar: Option<(String, ProgressBar)>,
    stop: Arc<AtomicBool>,
    quiet: bool,
}

impl TrainProgress {
    pub fn new(stop: Arc<AtomicBool>, quiet: bool) -> Self {
        TrainProgress {
            epoch_bar: None,
            eval_bar: None,
            stop,
            quiet,
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

impl TrainObserver for TrainProgress {
    fn phase(&mut self, p: &Phase) {
        eprintln!("== phase '{}': steps {}..{}", p.name, p.start, p.end());
    }

    fn step(&mut self, r: &StepReport) {
        if self.quiet {
            return;
        }
        if self.epoch_bar.as_ref().is_none_or(|(e, _)| *e != r.epoch) {
            if let Some((_, b)) = self.epoch_bar.take() {
                b.finish_and_clear();
            }
            let b = bar(
                r.steps_per_epoch,
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            );
            b.set_prefix(format!("{}", r.epoch + 1));
            self.epoch_bar = Some((r.epoch, b));
        }
        if let Some((_, b)) = &self.epoch_bar {
            b.set_position(r.step_in_epoch);
            let eps = r.eps.map(|e| format!(" ε {e:.2e}")).unwrap_or_default();
            b.set_message(format!(
                "loss {:.3} lr {:.2e}{eps} {:.0} img/s",
                r.loss, r.lr, r.images_per_s
            ));
        }
    }

    fn eval(&mut self, label: &str, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        if self.eval_bar.as_ref().is_none_or(|(l, _)| l != label) {
            if let Some((_, b)) = self.eval_bar.take() {
                b.finish_and_clear();
            }
            let b = bar(total as u64, "  eval {prefix:<7} [{bar:30}] {pos}/{len}");
            b.set_prefix(label.to_string());
            self.eval_bar = Some((label.to_string(), b));
        }
        if let Some((_, b)) = &self.eval_bar {
            b.set_position(done as u64);
        }
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some((_, b)) = self.eval_bar.take() {
            b.finish_and_clear();
        }
        if let Some((_, b)) = self.epoch_bar.take() {
            b.finish_and_clear();
        }
        let val: Vec<String> = m
            .val
            .iter()
            .map(|(k, v)| format!("{k} {}", pct(v.top1)))
            .collect();
        eprintln!(
            "epoch {:.2} [{}] loss {:.4} lr {:.2e} {:.0} img/s | top-1 {} | train {:.0}s eval {:.0}s",
            m.epoch,
            m.phase,
            m.train_loss,
            m.lr,
            m.images_per_s,
            val.join(", "),
            m.train_seconds,
            m.eval_seconds
        );
    }

    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }

    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
