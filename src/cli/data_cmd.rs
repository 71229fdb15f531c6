//! `ofa data check`.

use super::print_json;
use crate::data::{DatasetSpec, check_decode, load, summary};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Load a dataset and print image counts and class balance.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// fashion-mnist, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Also decode every image of a folder dataset.
    #[arg(long)]
    decode: bool,
    #[arg(long)]
    json: bool,
}

pub fn data(c: DataCommand) -> anyhow::Result<()> {
    let DataCommand::Check(a) = c;
    let spec: DatasetSpec = a.data.parse()?;
    let t = std::time::Instant::now();
    let ds = load(&spec)?;
    let s = summary(&ds);
    if a.json {
        print_json(&s)?;
    } else {
        println!("{s}");
        println!("loaded in {:.2} s", t.elapsed().as_secs_f64());
    }
    if a.decode {
        let report = check_decode(&ds);
        println!("{report}");
        if !report.is_ok() {
            anyhow::bail!("{} image(s) failed to decode", report.failures.len());
        }
    }
    Ok(())
}
