//! `ofa space`, `ofa info`, `ofa flops`, `ofa sample`.

use super::print_json;
use crate::space::{Arch, PRESET_NAMES, Space, layers};
use clap::{Args, Subcommand};
use rand::SeedableRng;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SpaceCommand {
    /// List the built-in spaces.
    List,
    /// Print a space (preset name or TOML file) as TOML.
    Show { space: String },
}

pub fn space(c: SpaceCommand) -> anyhow::Result<()> {
    match c {
        SpaceCommand::List => {
            for name in PRESET_NAMES {
                let s = Space::resolve(name)?;
                let (mx, mn) = (Arch::max(&s).cost(&s), Arch::min(&s).cost(&s));
                println!(
                    "{name:<20} {} blocks, r {}..{}, {:.2}–{:.2} MFLOPs",
                    s.num_blocks(),
                    s.resolutions[0],
                    s.resolutions.last().unwrap_or(&0),
                    mn.mflops(),
                    mx.mflops()
                );
            }
            Ok(())
        }
        SpaceCommand::Show { space } => {
            print!("{}", Space::resolve(&space)?.to_toml());
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct InfoArgs {
    /// Preset name or TOML file.
    #[arg(long)]
    space: String,
    #[arg(long)]
    json: bool,
}

pub fn info(a: InfoArgs) -> anyhow::Result<()> {
    let s = Space::resolve(&a.space)?;
    let per_res = s.count_per_resolution();
    let total = per_res * s.resolutions.len() as u128;
    let (mx, mn) = (Arch::max(&s).cost(&s), Arch::min(&s).cost(&s));
    if a.json {
        return print_json(&json!({
            "space": s.name,
            "blocks": s.num_blocks(),
            "stages": s.stages.len(),
            "resolutions": s.resolutions,
            "subnets_per_resolution": per_res.to_string(),
            "subnets_per_resolution_f64": per_res as f64,
            "subnets_total": total.to_string(),
            "max": {"mflops": mx.mflops(), "mparams": mx.mparams()},
            "min": {"mflops": mn.mflops(), "mparams": mn.mparams()},
        }));
    }
    println!(
        "space {}: {} elastic blocks in {} stages",
        s.name,
        s.num_blocks(),
        s.stages.len()
    );
    println!(
        "choices: k {:?}, e {:?}, d {:?}, r {:?}",
        s.kernel_choices, s.expand_choices, s.depth_choices, s.resolutions
    );
    println!("subnets per resolution: {per_res} ({:.3e})", per_res as f64);
    println!("subnets in all:         {total} ({:.3e})", total as f64);
    println!(
        "largest:  {:.2} MFLOPs, {:.4} M params (r {})",
        mx.mflops(),
        mx.mparams(),
        Arch::max(&s).r
    );
    println!(
        "smallest: {:.2} MFLOPs, {:.4} M params (r {})",
        mn.mflops(),
        mn.mparams(),
        Arch::min(&s).r
    );
    Ok(())
}

#[derive(Args)]
pub struct FlopsArgs {
    #[arg(long)]
    space: String,
    /// `max`, `min`, or an architecture JSON file (either form).
    #[arg(long)]
    arch: String,
    /// Override the architecture's resolution.
    #[arg(long)]
    resolution: Option<usize>,
    /// Also list every layer.
    #[arg(long)]
    layers: bool,
    #[arg(long)]
    json: bool,
}

pub fn flops(a: FlopsArgs) -> anyhow::Result<()> {
    let s = Space::resolve(&a.space)?;
    let mut arch = Arch::parse_arg(&a.arch, &s)?;
    if let Some(r) = a.resolution {
        arch.r = r;
        arch.validate(&s)?;
    }
    let ls = layers(&s, &arch);
    let c = arch.cost(&s);
    if a.json {
        let mut v = json!({
            "space": s.name, "resolution": arch.r, "macs": c.macs, "mflops": c.mflops(),
            "params": c.params, "mparams": c.mparams(), "arch": arch.to_reference_json(),
        });
        if a.layers {
            v["layers"] = ls
                .iter()
                .map(|l| json!({"key": l.key(), "macs": l.cost().macs, "params": l.cost().params}))
                .collect();
        }
        return print_json(&v);
    }
    if a.layers {
        for l in &ls {
            let lc = l.cost();
            println!(
                "{:<70} {:>10.3} MFLOPs {:>9} params",
                l.key(),
                lc.mflops(),
                lc.params
            );
        }
    }
    println!("{arch}");
    println!(
        "{:.2} MFLOPs, {:.4} M params at resolution {}",
        c.mflops(),
        c.mparams(),
        arch.r
    );
    Ok(())
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    space: String,
    /// How many architectures.
    #[arg(short, long, default_value_t = 1)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the reference form `{"ks","e","d","r"}` instead of ours.
    #[arg(long)]
    reference: bool,
    /// Write one JSON file per architecture into this folder (default: print
    /// one JSON object per line).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instead of random ones, the four subnets validated during training:
    /// max, min, mid (every middle choice) and random (a fixed draw).
    #[arg(long)]
    named: bool,
}

pub fn sample(a: SampleArgs) -> anyhow::Result<()> {
    let s = Space::resolve(&a.space)?;
    if a.named {
        for (name, arch) in crate::train::reference_archs(&s) {
            let v = if a.reference {
                arch.to_reference_json()
            } else {
                arch.to_json(&s)
            };
            match &a.out {
                Some(dir) => {
                    let path = dir.join(format!("{name}.json"));
                    crate::util::write_text_atomic(&path, &serde_json::to_string_pretty(&v)?)?;
                    println!("{}", path.display());
                }
                None => println!("{name}: {v}"),
            }
        }
        return Ok(());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    for i in 0..a.n {
        let arch = Arch::sample(&s, &mut rng);
        let v = if a.reference {
            arch.to_reference_json()
        } else {
            arch.to_json(&s)
        };
        match &a.out {
            Some(dir) => {
                let path = dir.join(format!("arch-{i:04}.json"));
                crate::util::write_text_atomic(&path, &serde_json::to_string_pretty(&v)?)?;
                println!("{}", path.display());
            }
            None => println!("{v}"),
        }
    }
    Ok(())
}
