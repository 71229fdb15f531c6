//! Collective communication between the processes of one data-parallel job.
//!
//! Training and table building talk to the other processes only through
//! [`Collective`]: a single process is [`Local`] (every operation is the
//! identity), `mpirun`/`srun` jobs get MPI (feature `mpi`), and a later
//! GPU transport (NCCL) is one more implementation. A leaf module: it knows
//! nothing of tensors or networks.

#[cfg(feature = "mpi")]
mod mpi;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The operations a data-parallel job needs. Every rank must call the same
/// operations in the same order (as MPI requires); each call returns the
/// same result on every rank.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This process's index, `0..size()`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Element-wise sum over all ranks, in place (statistics that need the
    /// precision: batch-norm sums).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// `root`'s bytes on every rank (any length: the others' `buf` is
    /// replaced).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize);
    /// `root`'s values on every rank; `buf` has the same length everywhere.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize);
    /// Waits until every rank has arrived.
    fn barrier(&self);
    /// Ends the whole job at once (a failure on one rank would otherwise
    /// leave the others waiting in their next collective call).
    fn abort(&self, code: i32) -> !;

    /// Whether `flag` is set on any rank (a stop request on one rank
    /// reaches all of them).
    fn any(&self, flag: bool) -> bool {
        let mut v = [if flag { 1.0f32 } else { 0.0 }];
        self.all_reduce_sum(&mut v);
        v[0] > 0.0
    }

    /// Whether this is the rank that writes files and prints progress.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// What this rank's calls cost so far, for collectives that count
    /// ([`Counted`]).
    fn stats(&self) -> Option<CommStats> {
        None
    }
}

/// A single process: rank 0 of 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast_bytes(&self, _: &mut Vec<u8>, _: usize) {}
    fn broadcast_f32(&self, _: &mut [f32], _: usize) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A single process as a shared handle.
pub fn local() -> Arc<dyn Collective> {
    Arc::new(Local)
}

/// Whether a launcher started this process as one rank of a job of more
/// than one: Open MPI's `mpirun`, a PMI/PMIx launcher (MPICH, Intel MPI) or
/// Slurm's `srun` (a job of one is a single process).
pub fn launched_by_mpi() -> bool {
    let many = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > 1)
    };
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_NTASKS",
    ]
    .iter()
    .any(|v| many(v))
}

/// Why this process cannot join the job its launcher started.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error(
        "this process was started by mpirun/srun as one rank of {0}, but this ofa was built without MPI: rebuild with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev; README, Training on a cluster)"
    )]
    NoMpi(String),
    #[error(
        "MPI could not be initialised (is this binary linked against the MPI that launched it?)"
    )]
    Init,
}

/// The job this process belongs to: MPI when launched by `mpirun`/`srun`
/// (feature `mpi`), otherwise a single process. Call once, at start; MPI
/// is finalised when the last handle is dropped.
pub fn from_env() -> Result<Arc<dyn Collective>, DistError> {
    if !launched_by_mpi() {
        return Ok(local());
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Arc::new(Counted::new(Arc::new(mpi::Mpi::init()?))))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let n = [
            "OMPI_COMM_WORLD_SIZE",
            "PMI_SIZE",
            "PMIX_SIZE",
            "SLURM_NTASKS",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_else(|| "several".into());
        Err(DistError::NoMpi(format!("{n} processes")))
    }
}

/// The slice `[start, end)` of `n` items that `rank` of `size` takes:
/// contiguous, sizes differing by at most one, in rank order.
pub fn slice_of(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// What a job's collective calls cost this rank: calls, bytes and
/// seconds (waiting for the other ranks included). `f32` calls are the
/// step's gradient all-reduce (and the one-value stop vote), `f64` ones
/// the batch-norm statistics inside the passes (and the loss reads).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CommStats {
    pub seconds: f64,
    pub gradient_calls: u64,
    pub gradient_bytes: u64,
    pub gradient_seconds: f64,
    pub bn_calls: u64,
    pub bn_bytes: u64,
    pub bn_seconds: f64,
}

#[derive(Debug, Default)]
struct Counter {
    calls: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

impl Counter {
    fn time<T>(&self, bytes: usize, f: impl FnOnce() -> T) -> T {
        let t = std::time::Instant::now();
        let out = f();
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
    fn read(&self) -> (u64, u64, f64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        )
    }
}

/// A [`Collective`] that counts what its calls cost ([`Collective::stats`]).
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn Collective>,
    f32: Counter,
    f64: Counter,
    other: Counter,
}

impl Counted {
    pub fn new(inner: Arc<dyn Collective>) -> Self {
        Counted {
            inner,
            f32: Counter::default(),
            f64: Counter::default(),
            other: Counter::default(),
        }
    }
}

impl Collective for Counted {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        self.f32
            .time(4 * buf.len(), || self.inner.all_reduce_sum(buf))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        self.f64
            .time(8 * buf.len(), || self.inner.all_reduce_sum_f64(buf))
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) {
        self.other
            .time(buf.len(), || self.inner.broadcast_bytes(buf, root))
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
        self.other
            .time(4 * buf.len(), || self.inner.broadcast_f32(buf, root))
    }
    fn barrier(&self) {
        self.other.time(0, || self.inner.barrier())
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
    fn stats(&self) -> Option<CommStats> {
        let (gc, gb, gs) = self.f32.read();
        let (bc, bb, bs) = self.f64.read();
        let (_, _, os) = self.other.read();
        Some(CommStats {
            seconds: gs + bs + os,
            gradient_calls: gc,
            gradient_bytes: gb,
            gradient_seconds: gs,
            bn_calls: bc,
            bn_bytes: bb,
            bn_seconds: bs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_items_once_in_order() {
        for n in [0, 1, 5, 64, 67] {
            for size in 1..=5 {
                let mut next = 0;
                for r in 0..size {
                    let s = slice_of(n, r, size);
                    assert_eq!(s.start, next);
                    assert!(s.len() == n / size || s.len() == n / size + 1);
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn local_is_the_identity() {
        let c = local();
        let mut v = [1.5f32, -2.0];
        c.all_reduce_sum(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert!(c.any(true) && !c.any(false));
        assert!(c.is_root() && c.size() == 1);
    }
}
