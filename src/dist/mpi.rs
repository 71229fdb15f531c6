//! [`Collective`] over MPI (rsmpi on Open MPI or any MPI the binary links).

use super::{Collective, DistError};
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::Mutex;

/// The world communicator of an MPI job.
pub struct Mpi {
    // Field order matters: the communicator goes before the universe,
    // whose drop finalises MPI.
    world: Mutex<World>,
    rank: usize,
    size: usize,
    _universe: Universe,
}

struct World(SimpleCommunicator);

// SAFETY: MPI is initialised with `MPI_THREAD_SERIALIZED` (checked in
// `init`): any thread may call MPI as long as no two do at once, which the
// mutex around the communicator guarantees.
unsafe impl Send for World {}
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi(rank {} of {})", self.rank, self.size)
    }
}

impl Mpi {
    pub fn init() -> Result<Self, DistError> {
        let (universe, provided) =
            mpi::initialize_with_threading(Threading::Serialized).ok_or(DistError::Init)?;
        if provided < Threading::Serialized {
            return Err(DistError::Init);
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            world: Mutex::new(World(world)),
            rank,
            size,
            _universe: universe,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let w = self.world.lock().unwrap_or_else(|p| p.into_inner());
        f(&w.0)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let send = buf.to_vec();
        self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) {
        self.with(|w| {
            let p = w.process_at_rank(root as i32);
            let mut len = [buf.len() as u64];
            p.broadcast_into(&mut len[..]);
            buf.resize(len[0] as usize, 0);
            p.broadcast_into(&mut buf[..]);
        });
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
        self.with(|w| w.process_at_rank(root as i32).broadcast_into(buf));
    }
    fn barrier(&self) {
        self.with(|w| w.barrier());
    }
    fn abort(&self, code: i32) -> ! {
        self.with(|w| w.abort(code))
    }
}
