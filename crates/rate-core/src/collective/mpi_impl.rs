//! `Collective` over MPI's world communicator (rsmpi on the system's MPI library): all-reduce sums, broadcasts and barriers for the sharded sums of 4.1.3-4.1.4.

use super::{Collective, CommClock};
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::sync::Mutex;

/// Largest number of elements one MPI call carries (counts are C `int`s); longer buffers go in pieces.
const PIECE: usize = 1 << 27;

/// The MPI world of this job. Created once per process ([`Mpi::init`]);
/// dropping it finalises MPI, so keep it alive until the job ends. Calls are
/// serialised by a lock (MPI initialised with `MPI_THREAD_SERIALIZED`), so
/// any thread may make them.
pub struct Mpi {
    _universe: Universe,
    rank: usize,
    size: usize,
    lock: Mutex<()>,
    clock: CommClock,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

fn mpi_error(message: String) -> Error {
    Error::Backend { backend: "mpi".into(), message }
}

impl Mpi {
    /// Initialises MPI (`MPI_Init_thread`, serialised calls) and returns the
    /// world; an error when MPI was initialised already or the library does
    /// not offer serialised calls.
    pub fn init() -> Result<Mpi> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| mpi_error("MPI is initialised already in this process".into()))?;
        if matches!(threading, mpi::Threading::Single | mpi::Threading::Funneled) {
            return Err(mpi_error(format!(
                "the MPI library offers {threading:?} threading; serialised calls (MPI_THREAD_SERIALIZED) are needed"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi { _universe: universe, rank, size, lock: Mutex::new(()), clock: CommClock::default() })
    }

    fn world(&self) -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    fn serial<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.clock.time(|| f(&self.world()))
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        self.serial(|w| {
            for piece in buf.chunks_mut(PIECE) {
                let send = piece.to_vec();
                w.all_reduce_into(&send[..], piece, SystemOperation::sum());
            }
        });
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> Result<()> {
        if root >= self.size {
            return Err(mpi_error(format!("broadcast from rank {root}, but there are {} ranks", self.size)));
        }
        self.serial(|w| {
            for piece in buf.chunks_mut(PIECE) {
                w.process_at_rank(root as i32).broadcast_into(piece);
            }
        });
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.serial(|w| w.barrier());
        Ok(())
    }
    fn comm_seconds(&self) -> f64 {
        self.clock.seconds()
    }
}
