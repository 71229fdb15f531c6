//! The `ofa` command line: argument parsing, progress display and file
//! choices. Every command calls the library; nothing here computes.

mod data_cmd;
mod progress;
mod space_cmd;
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
