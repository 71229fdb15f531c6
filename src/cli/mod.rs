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
/// The NVIDIA backend: burn's CUDA (cubecl), with autodiff.
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub type GpuTrain = burn::backend::Autodiff<Gpu>;

/// `--device`: where networks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    /// GPU number N (`cuda` = `cuda:0`).
    Cuda(usize),
    /// The first GPU when this binary supports GPUs and one is present,
    /// else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            "auto" => Ok(DeviceArg::Auto),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!("unknown device '{s}' (cpu, cuda, cuda:N, auto)")),
            },
        }
    }
}

/// The device a run resolves to.
enum Resolved {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

fn resolve(d: DeviceArg) -> anyhow::Result<Resolved> {
    #[cfg(feature = "cuda")]
    {
        match d {
            DeviceArg::Cpu => Ok(Resolved::Cpu),
            DeviceArg::Cuda(n) => match crate::gpu::device_count() {
                Ok(count) if n < count => Ok(Resolved::Cuda(n)),
                Ok(count) => anyhow::bail!(
                    "--device cuda:{n}: this machine has {count} CUDA device(s) (numbered from 0)"
                ),
                Err(e) => anyhow::bail!("--device cuda:{n}: no usable CUDA GPU: {e}"),
            },
            DeviceArg::Auto => match crate::gpu::device_count() {
                Ok(count) if count > 0 => {
                    eprintln!("--device auto: using cuda:0 ({count} CUDA device(s) found)");
                    Ok(Resolved::Cuda(0))
                }
                Ok(_) | Err(_) => {
                    eprintln!("--device auto: no usable CUDA GPU, using the CPU");
                    Ok(Resolved::Cpu)
                }
            },
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        match d {
            DeviceArg::Cpu => Ok(Resolved::Cpu),
            DeviceArg::Auto => {
                eprintln!("--device auto: this binary has no GPU support, using the CPU");
                Ok(Resolved::Cpu)
            }
            DeviceArg::Cuda(n) => anyhow::bail!(
                "--device cuda:{n}: this ofa binary was built without GPU support; rebuild it with \
                 `cargo build --release --features cuda` (needs the NVIDIA driver at run time)"
            ),
        }
    }
}

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
    /// Where networks run: cpu, cuda, cuda:N, or auto (the first GPU when
    /// this binary supports GPUs and one is present, else the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceArg,
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
    /// A supernet and a predictor to deployable subnets for many budgets of
    /// this machine: latency table (cached), search, extract, time, ONNX.
    Specialize(specialize_cmd::SpecializeArgs),
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
    // One rank of an mpirun/srun job, or a single process.
    let comm = match crate::dist::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let run = || {
        resolve(cli.device).and_then(|d| match d {
            Resolved::Cpu => run_command::<CpuTrain>(cli.command, &Default::default(), &comm),
            #[cfg(feature = "cuda")]
            Resolved::Cuda(n) => run_command::<GpuTrain>(
                cli.command,
                &burn::backend::cuda::CudaDevice::new(n),
                &comm,
            ),
        })
    };
    let result = match worker_pool(cli.threads) {
        Some(pool) => pool.install(run),
        None => run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if comm.size() > 1 => {
            // The other ranks would wait for this one forever.
            eprintln!("error (rank {} of {}): {e:#}", comm.rank(), comm.size());
            comm.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command runs on a worker of its own thread pool, not on the main
/// thread: a kernel's parallel loop started from a worker runs its first
/// share on that worker while the others steal the rest, whereas one
/// started from outside the pool is queued for the workers while the
/// caller sleeps on a latch until they finish — a sleep and a wake-up per
/// operator, hundreds per training step (a tenth of a 28-px step went to
/// the scheduler). The stack is as large as the main thread's would be.
/// It is a pool of its own, not the global one: batches are built on the
/// prefetch thread with the global pool, and a command waiting for its
/// next batch must not hold the only worker that batch needs (`--threads
/// 1` would deadlock).
fn worker_pool(threads: Option<usize>) -> Option<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new().stack_size(64 << 20);
    if let Some(n) = threads {
        b = b.num_threads(n.max(1));
    }
    b.build().ok()
}

/// Runs one command with networks on backend `B` (the one place that
/// picks it is `main`).
fn run_command<B: crate::nn::TrainBackend>(
    c: Command,
    device: &B::Device,
    comm: &crate::nn::Comm,
) -> anyhow::Result<()> {
    if comm.size() > 1 && !matches!(c, Command::Train(_) | Command::Table(_)) {
        anyhow::bail!(
            "under mpirun/srun, only `ofa train` and `ofa table` run across processes; run this command as one process"
        );
    }
    match c {
        Command::Space(c) => space_cmd::space(c),
        Command::Info(a) => space_cmd::info(a),
        Command::Flops(a) => space_cmd::flops(a),
        Command::Sample(a) => space_cmd::sample(a),
        Command::Data(c) => data_cmd::data(c),
        Command::Train(a) => train_cmd::train::<B>(device, a, comm),
        Command::Eval(a) => train_cmd::eval::<B>(device, a),
        Command::Table(c) => specialize_cmd::table::<B>(device, c, comm),
        Command::Predictor(c) => specialize_cmd::predictor::<B>(device, c),
        Command::Profile(a) => specialize_cmd::profile::<B>(device, a),
        Command::Latency(a) => specialize_cmd::latency::<B>(device, a),
        Command::Search(a) => specialize_cmd::search::<B>(device, a),
        Command::Specialize(a) => specialize_cmd::specialize_cmd::<B>(device, a),
        Command::Extract(a) => ship_cmd::extract_cmd::<B>(device, a),
        Command::Export(a) => ship_cmd::export_cmd::<B>(device, a),
        Command::Finetune(a) => ship_cmd::finetune_cmd::<B>(device, a),
        Command::Import(a) => ship_cmd::import_cmd::<B>(device, a),
        Command::Predict(a) => ship_cmd::predict_cmd::<B>(device, a),
        Command::Run(a) => run_cmd::run::<B>(device, a),
        Command::Bench(c) => bench_cmd::bench::<B>(device, c),
    }
}

/// Prints a value as pretty JSON.
fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
