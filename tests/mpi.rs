//! Data-parallel training and tables under `mpirun -np 2` on loopback
//! (feature `mpi`; Open MPI's `mpirun` on PATH — `scripts/test-features.sh`
//! installs it). Each job is compared with one process doing the same
//! work: the supernet after DϵpS and PS runs, a run killed and resumed,
//! and an accuracy table.
#![cfg(feature = "mpi")]

use ofa::nn::{TensorMap, read_safetensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const OFA: &str = env!("CARGO_BIN_EXE_ofa");
/// The jobs share two cores: one at a time.
static ONE_JOB: Mutex<()> = Mutex::new(());

/// A random but learnable 28-px, 10-class dataset in IDX files (`mnist:DIR`):
/// a fixed pattern per class plus noise, so no two pixels tie (constant
/// backgrounds would put activations exactly on ReLU kinks, where rounding
/// decides the gradient and runs of different reduction orders part).
fn dataset(dir: &Path) -> String {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let patterns: Vec<Vec<u8>> = (0..10)
        .map(|_| (0..784).map(|_| (next() % 128) as u8).collect())
        .collect();
    let mut write = |prefix: &str, n: u32| {
        let labels: Vec<u8> = (0..n).map(|_| (next() % 10) as u8).collect();
        let mut images = Vec::new();
        for [b0, b1, b2, b3] in [0x803u32, n, 28, 28].map(u32::to_be_bytes) {
            images.extend([b0, b1, b2, b3]);
        }
        for &y in &labels {
            for p in &patterns[y as usize] {
                images.push(p + (next() % 128) as u8);
            }
        }
        let mut l = Vec::new();
        l.extend(0x801u32.to_be_bytes());
        l.extend(n.to_be_bytes());
        l.extend(&labels);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), l).unwrap();
    };
    write("train", 800);
    write("t10k", 100);
    format!("mnist:{}", dir.display())
}

/// 10 steps per epoch of a global batch of 64, small evaluations.
fn config(dir: &Path, lr: f64, epochs: f64, checkpoint_every: u64) -> PathBuf {
    let path = dir.join(format!("train-{epochs}-{checkpoint_every}.toml"));
    std::fs::write(
        &path,
        format!(
            "batch_size = 64\nlr = {lr}\nwarmup_epochs = 0.1\nmax_train_images = 640\nval_size = 64\n\
             epochs = {epochs}\ncheckpoint_every = {checkpoint_every}\naugment = true\n\
             [eval]\ncalib_images = 64\ncalib_batch = 32\nmax_images = 64\nbatch = 64\n\
             [deps]\nfull_model_fraction = 0.4\nsmallnet_warmup_fraction = 0.1\n{}",
            ps_phases(lr)
        ),
    )
    .unwrap();
    path
}

/// The reference PS phases (full, kernel, depth ×2, expand ×2 with channel
/// sorting, distillation from the teacher after the first) with learning
/// rates scaled so that the full phase uses `lr`: their own defaults
/// (0.05 …) would amplify rounding like any large learning rate.
fn ps_phases(lr: f64) -> String {
    let phases: [(&str, u32, f64, u32, &str, &str, &str, &str, bool); 6] = [
        ("full", 180, 1.0, 1, "[7]", "[6]", "[3]", "", false),
        ("kernel", 120, 0.6, 1, "[3, 5, 7]", "[6]", "[3]", "", true),
        (
            "depth-1",
            25,
            0.05,
            2,
            "[3, 5, 7]",
            "[6]",
            "[2, 3]",
            "",
            true,
        ),
        (
            "depth-2",
            120,
            0.15,
            2,
            "[3, 5, 7]",
            "[6]",
            "[1, 2, 3]",
            "",
            true,
        ),
        (
            "expand-1",
            25,
            0.05,
            4,
            "[3, 5, 7]",
            "[4, 6]",
            "[1, 2, 3]",
            "sort_stage = 0\n",
            true,
        ),
        (
            "expand-2",
            120,
            0.15,
            4,
            "[3, 5, 7]",
            "[3, 4, 6]",
            "[1, 2, 3]",
            "sort_stage = 1\n",
            true,
        ),
    ];
    let mut s = String::from("[ps]\nteacher_bn = \"batch\"\n");
    for (name, weight, f, n, k, e, d, sort, distill) in phases {
        s += &format!(
            "[[ps.phases]]\nname = \"{name}\"\nweight = {weight}.0\nlr = {}\nsubnets_per_step = {n}\n\
             kernels = {k}\nexpands = {e}\ndepths = {d}\n{sort}distill = {distill}\n",
            lr * f
        );
    }
    s
}

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"]);
    // Containers without ptrace rights refuse shared memory's single-copy
    // transfers (CMA); plain copies work everywhere.
    c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    if std::env::var("USER").is_ok_and(|u| u == "root") || is_root() {
        c.arg("--allow-run-as-root");
    }
    c.arg(OFA);
    c
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn ok(out: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn train_args(data: &str, schedule: &str, cfg: &Path, out: &Path) -> Vec<String> {
    [
        "--threads",
        "1",
        "train",
        "--space",
        "tiny",
        "--data",
        data,
        "--schedule",
        schedule,
        "--config",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        cfg.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
    ])
    .collect()
}

fn weights(run: &Path) -> TensorMap {
    read_safetensors(&run.join("supernet.safetensors"))
        .unwrap()
        .0
}

/// ‖a − b‖ / ‖a‖ over every tensor together (weights and BN running
/// statistics), and the worst single tensor's.
fn difference(a: &TensorMap, b: &TensorMap) -> (f64, f64, String) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (mut d2, mut n2, mut worst) = (0f64, 0f64, (0f64, String::new()));
    for (k, ta) in a {
        let tb = &b[k];
        let (mut dk, mut nk) = (0f64, 0f64);
        for (x, y) in ta.data.iter().zip(&tb.data) {
            dk += (*x as f64 - *y as f64).powi(2);
            nk += (*x as f64).powi(2);
        }
        d2 += dk;
        n2 += nk;
        let rel = (dk / nk.max(1e-30)).sqrt();
        // Tensors near zero (running means after a linear layer on
        // normalised input) say nothing relative to themselves.
        if nk.sqrt() > 1e-3 * (ta.data.len() as f64).sqrt() && rel > worst.0 {
            worst = (rel, k.clone());
        }
    }
    ((d2 / n2).sqrt(), worst.0, worst.1)
}

/// Two ranks × 32 images equal one process × 64, and a wrong global batch
/// (one process × 32) does not: the tolerance can fail.
fn two_ranks_match_one_process(schedule: &str, expect_in_log: &str) {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    // A small learning rate: larger ones amplify rounding (single-process
    // runs with 1 and 2 threads part by as much), which would hide what
    // this compares.
    let cfg = config(dir.path(), 5e-4, 3.0, 1000);
    let (one, two, half) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("half"),
    );
    let log = ok(
        Command::new(OFA)
            .args(train_args(&data, schedule, &cfg, &one))
            .output()
            .unwrap(),
        "one process",
    );
    assert!(
        log.contains(expect_in_log),
        "{schedule}: '{expect_in_log}' not in\n{log}"
    );
    let log2 = ok(
        mpirun(2)
            .args(train_args(&data, schedule, &cfg, &two))
            .output()
            .unwrap(),
        "mpirun -np 2",
    );
    assert!(log2.contains("on 2 processes (batch 32 each)"), "{log2}");
    let (global, worst, name) = difference(&weights(&one), &weights(&two));
    assert!(
        global <= 1e-5 && worst <= 1e-4,
        "{schedule}: 2 ranks differ from 1 process by {global:.2e} (worst {name}: {worst:.2e})"
    );
    let mut half_args = train_args(&data, schedule, &cfg, &half);
    half_args.extend(["--batch-size".into(), "32".into()]);
    ok(
        Command::new(OFA).args(half_args).output().unwrap(),
        "batch 32",
    );
    let (control, _, _) = difference(&weights(&one), &weights(&half));
    assert!(
        control > 100.0 * global.max(1e-7),
        "control {control:.2e} vs {global:.2e}"
    );
}

#[test]
fn two_ranks_train_the_deps_supernet_of_one_process() {
    // 30 steps crossing the warm-up switch (step 9), then in-place KD.
    two_ranks_match_one_process("deps", "phase 'ε-shrinking'");
}

#[test]
fn two_ranks_train_the_ps_supernet_of_one_process() {
    two_ranks_match_one_process("ps", "is the teacher");
}

#[test]
fn a_killed_job_resumes_to_the_uninterrupted_result() {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config(dir.path(), 5e-4, 6.0, 5);
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    ok(
        mpirun(2)
            .args(train_args(&data, "deps", &cfg, &whole))
            .output()
            .unwrap(),
        "uninterrupted",
    );
    // Kill both ranks (and mpirun) as soon as a mid-run checkpoint exists.
    let mut job = mpirun(2)
        .args(train_args(&data, "deps", &cfg, &cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpts = cut.join("checkpoints");
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(&ckpts)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
        .unwrap_or(false)
    {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The ranks (mpirun's children), then mpirun itself. (Never `kill
    // -KILL -PID` for a process group: some `kill`s read "-PID" as a
    // signal option and signal every process.)
    let pid = job.id().to_string();
    let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
    let _ = job.kill();
    let _ = job.wait();
    assert!(
        !cut.join("supernet.safetensors").exists(),
        "the job finished before it was killed"
    );
    let mut resume = train_args(&data, "deps", &cfg, &cut);
    resume.push("--resume".into());
    let log = ok(mpirun(2).args(resume).output().unwrap(), "resumed");
    assert!(log.contains("resuming from"), "{log}");
    let (global, worst, name) = difference(&weights(&whole), &weights(&cut));
    assert!(
        global <= 1e-6,
        "resumed differs by {global:.2e} (worst {name}: {worst:.2e})"
    );
}

#[test]
fn a_two_rank_table_equals_a_one_process_table() {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config(dir.path(), 0.05, 1.0, 1000);
    let run = dir.path().join("run");
    ok(
        Command::new(OFA)
            .args(train_args(&data, "deps", &cfg, &run))
            .output()
            .unwrap(),
        "training",
    );
    let table = |out: &Path| -> Vec<String> {
        let supernet = run.join("supernet.safetensors");
        [
            "--threads",
            "1",
            "table",
            "--supernet",
            &supernet.display().to_string(),
            "--data",
            &data,
            "--subnets",
            "5",
            "--calib-images",
            "64",
            "--calib-batch",
            "32",
            "--batch",
            "50",
            "--max-images",
            "50",
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (one, two) = (dir.path().join("one.sqlite"), dir.path().join("two.sqlite"));
    ok(
        Command::new(OFA).args(table(&one)).output().unwrap(),
        "one-process table",
    );
    ok(
        mpirun(2).args(table(&two)).output().unwrap(),
        "2-rank table",
    );
    let rows = |p: &Path| {
        let mut r = ofa::search::Table::open(p).unwrap().rows().unwrap();
        r.sort_by_key(|r| (r.index, r.arch.r));
        r
    };
    let (a, b) = (rows(&one), rows(&two));
    assert_eq!(a.len(), 5 * 3, "5 subnets × the space's resolutions");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.index, &x.arch), (y.index, &y.arch));
        assert_eq!(
            x.result.top1, y.result.top1,
            "row {} r{}",
            x.index, x.arch.r
        );
        assert_eq!(x.hits, y.hits, "row {} r{}", x.index, x.arch.r);
    }
    // Resumable like a one-process table: a second job adds nothing.
    let log = ok(mpirun(2).args(table(&two)).output().unwrap(), "rerun");
    assert!(log.contains("0 new rows"), "{log}");
}

#[test]
fn a_sigterm_on_one_rank_stops_every_rank_with_one_checkpoint() {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config(dir.path(), 5e-4, 6.0, 1000);
    let run = dir.path().join("run");
    let job = mpirun(2)
        .args(train_args(&data, "deps", &cfg, &run))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once training is under way (the first epoch's metrics), SIGTERM to
    // one rank only, as Slurm's scancel or a node's shutdown would send.
    let t0 = std::time::Instant::now();
    while !run.join("metrics.jsonl").exists() {
        assert!(t0.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ranks = Command::new("pgrep")
        .args(["-P", &job.id().to_string()])
        .output()
        .unwrap();
    let ranks = String::from_utf8_lossy(&ranks.stdout).to_string();
    let last: u32 = ranks
        .split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .expect("the ranks' pids");
    assert!(last > 1);
    Command::new("kill")
        .args(["-TERM", &last.to_string()])
        .status()
        .unwrap();
    let log = ok(job.wait_with_output().unwrap(), "stopped job");
    assert!(log.contains("stopped at step"), "{log}");
    assert!(!run.join("supernet.safetensors").exists(), "{log}");
    let ckpts: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!ckpts.is_empty(), "no checkpoint written");
    let mut resume = train_args(&data, "deps", &cfg, &run);
    resume.push("--resume".into());
    ok(mpirun(2).args(resume).output().unwrap(), "resumed");
    assert!(run.join("supernet.safetensors").exists());
}
