//! `ofa run`: the whole chain with defaults (see [`crate::pipeline`]).

use super::progress::{TrainProgress, interrupt_flag};
use crate::nn::TrainBackend;
use crate::pipeline::{self, RunConfig, RunObserver};
use crate::train::TrainObserver;
use clap::Args;
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    #[arg(long, default_value = "mbv3-28-lite")]
    space: String,
    #[arg(long, default_value = "runs/main")]
    out: PathBuf,
    /// Training epochs (default: the quick preset's).
    #[arg(long)]
    epochs: Option<f64>,
    /// Subnets in the accuracy table (each at every resolution).
    #[arg(long, default_value_t = RunConfig::new(PathBuf::new()).table_subnets)]
    table_subnets: usize,
    /// Validation images per table row (0: the whole hold-out).
    #[arg(long, default_value_t = RunConfig::new(PathBuf::new()).table_images)]
    table_images: usize,
    /// How the table's architectures are drawn: `mixed` (alternately
    /// uniform and spread over the cost range), `spread` or `uniform`.
    #[arg(long, default_value = "mixed")]
    table_sampling: crate::search::table::Sampling,
    /// Calibration images of every measurement (table rows, re-ranking,
    /// baselines, returned subnets).
    #[arg(long, default_value_t = RunConfig::new(PathBuf::new()).measure.calib_images)]
    calib_images: usize,
    /// Search generations per scenario.
    #[arg(long, default_value_t = RunConfig::new(PathBuf::new()).generations)]
    generations: usize,
    /// Best predicted candidates per scenario re-ranked by measured
    /// validation top-1 (0: return the best predicted).
    #[arg(long, default_value_t = RunConfig::new(PathBuf::new()).rerank)]
    rerank: usize,
    #[arg(long)]
    quiet: bool,
}

struct Display {
    train: TrainProgress,
    bar: Option<(String, ProgressBar)>,
    stop: Arc<AtomicBool>,
}

impl RunObserver for Display {
    fn stage(&mut self, name: &str, skipped: bool) {
        if skipped {
            eprintln!("[{name}] already done, skipped");
        } else {
            eprintln!("[{name}]");
        }
    }
    fn stage_done(&mut self, name: &str, seconds: f64) {
        if let Some((_, pb)) = self.bar.take() {
            pb.finish_and_clear();
        }
        eprintln!("[{name}] {seconds:.1} s");
    }
    fn progress(&mut self, what: &str, done: usize, total: usize) {
        if self.bar.as_ref().is_none_or(|(w, _)| w != what) {
            let pb = super::progress::bar(
                total as u64,
                &format!("{what} [{{bar:30}}] {{pos}}/{{len}} ({{elapsed}} < {{eta}})"),
            );
            self.bar = Some((what.to_string(), pb));
        }
        if let Some((_, pb)) = &self.bar {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        }
    }
    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }
    fn trainer(&mut self) -> &mut dyn TrainObserver {
        &mut self.train
    }
    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub fn run<B: TrainBackend>(device: &B::Device, a: RunArgs) -> anyhow::Result<()> {
    let cfg = RunConfig {
        data: a.data,
        space: a.space,
        out: a.out,
        epochs: a.epochs,
        table_subnets: a.table_subnets,
        table_images: a.table_images,
        table_sampling: a.table_sampling,
        generations: a.generations,
        rerank: a.rerank,
        ..RunConfig::new(PathBuf::new())
    };
    let cfg = RunConfig {
        measure: crate::train::EvalConfig {
            calib_images: a.calib_images,
            ..cfg.measure.clone()
        },
        ..cfg
    };
    let stop = interrupt_flag();
    let mut display = Display {
        train: TrainProgress::new(stop.clone(), a.quiet),
        bar: None,
        stop,
    };
    let s = pipeline::run::<B>(&cfg, device, &mut display)?;
    eprintln!(
        "done in {:.0} s; report: {}",
        s.total_seconds,
        s.report.display()
    );
    Ok(())
}
