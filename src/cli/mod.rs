//! The `ofa` command line: argument parsing, progress display and file
//! choices. Every command calls the library; nothing here computes.

mod bench_cmd;
mod data_cmd;
mod progress;
mod run_cmd;
mod ship_cmd;
mod space_cmd;
mod specialize_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};

/// The CPU backend: burn's flex, with autodiff for training.
pub type Cpu = burn::backend::Flex;
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

#[derive(Parser)]
#[command(
    name = "ofa",
    version,
    about = "Once-for-All: train one elastic supernet, specialize subnets for many devices"
)]
pub struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Search spaces: list the presets or print one as TOML.
    #[command(subcommand)]
    Space(space_cmd::SpaceCommand),
    /// Size of a search space: subnets per resolution, blocks, cost range.
    Info(space_cmd::InfoArgs),
    /// Multiply-adds and parameters of an architecture.
    Flops(space_cmd::FlopsArgs),
    /// Sample random architectures (seeded).
    Sample(space_cmd::SampleArgs),
    /// Datasets: load one and print counts and class balance.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Train a supernet (ps, deps, sandwich) or one architecture (independent).
    Train(train_cmd::TrainArgs),
    /// Evaluate one subnet of a supernet (BN recalibrated) on a dataset.
    Eval(train_cmd::EvalArgs),
    /// Accuracy table: sampled subnets × resolutions (build, merge, export).
    Table(specialize_cmd::TableCommand),
    /// Accuracy predictor: fit on a table, or evaluate on another.
    #[command(subcommand)]
    Predictor(specialize_cmd::PredictorCommand),
    /// Time every layer configuration on this machine (latency table).
    Profile(specialize_cmd::ProfileArgs),
    /// Predict (lookup table) or measure the latency of a subnet.
    Latency(specialize_cmd::LatencyArgs),
    /// Evolutionary search for one or many deployment scenarios.
    Search(specialize_cmd::SearchArgs),
    /// Extract a standalone subnet (BN recalibrated) from a supernet.
    Extract(ship_cmd::ExtractArgs),
    /// Export an extracted subnet to ONNX (and check it in tract).
    Export(ship_cmd::ExportArgs),
    /// Fine-tune an extracted subnet, optionally distilling from a supernet.
    Finetune(ship_cmd::FinetuneArgs),
    /// Import a public OFA PyTorch checkpoint as a supernet file.
    Import(ship_cmd::ImportArgs),
    /// Run a supernet subnet or an extracted subnet on a .npy batch.
    Predict(ship_cmd::PredictArgs),
    /// Benchmarks: training steps and inference throughput.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// The whole chain on one dataset: train, table, predictor, latency,
    /// search, extract, export, report.
    Run(run_cmd::RunArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let result = match cli.command {
        Command::Space(c) => space_cmd::space(c),
        Command::Info(a) => space_cmd::info(a),
        Command::Flops(a) => space_cmd::flops(a),
        Command::Sample(a) => space_cmd::sample(a),
        Command::Data(c) => data_cmd::data(c),
        Command::Train(a) => train_cmd::train(a),
        Command::Eval(a) => train_cmd::eval(a),
        Command::Table(c) => specialize_cmd::table(c),
        Command::Predictor(c) => specialize_cmd::predictor(c),
        Command::Profile(a) => specialize_cmd::profile(a),
        Command::Latency(a) => specialize_cmd::latency(a),
        Command::Search(a) => specialize_cmd::search(a),
        Command::Extract(a) => ship_cmd::extract_cmd(a),
        Command::Export(a) => ship_cmd::export_cmd(a),
        Command::Finetune(a) => ship_cmd::finetune_cmd(a),
        Command::Import(a) => ship_cmd::import_cmd(a),
        Command::Predict(a) => ship_cmd::predict_cmd(a),
        Command::Run(a) => run_cmd::run(a),
        Command::Bench(c) => bench_cmd::bench(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints a value as pretty JSON.
fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
