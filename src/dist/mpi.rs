//! [`Comm`] over MPI (the `mpi` crate, rsmpi): `MPI_COMM_WORLD` of the job
//! that `mpirun` or `srun --mpi=pmix` started.
//!
//! MPI is initialised with `MPI_THREAD_MULTIPLE` (Open MPI and MPICH grant
//! it): a training step, and so every call here, runs on a rayon worker,
//! not on the thread that initialised MPI, and one step's calls are made by
//! one thread at a time.

use super::{Comm, GradPack, GroupReady};
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::time::Instant;

/// The world communicator of an MPI job. Holds the `Universe`: dropping
/// it finalises MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    // dropped last: MPI_Finalize
    _universe: Universe,
}

// SAFETY: MPI was initialised with MPI_THREAD_MULTIPLE (`Mpi::init` refuses
// anything less), under which the MPI library itself allows calls on one
// communicator from any thread; the communicator handle is a pointer that
// MPI owns and never moves.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Mpi> {
        let (universe, granted) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::Config("MPI was initialised already".into()))?;
        if granted != Threading::Multiple {
            return Err(Error::Config(format!(
                "the MPI library grants only {granted:?} threading; resgrad needs Multiple \
                 (its training step runs on a worker thread)"
            )));
        }
        let world = universe.world();
        Ok(Mpi {
            world,
            _universe: universe,
        })
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn sum_f64(&self, v: &mut [f64]) {
        let send = v.to_vec();
        self.world
            .all_reduce_into(&send[..], v, SystemOperation::sum());
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut len = buf.len() as u64;
        root.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        root.broadcast_into(&mut buf[..]);
    }
    fn broadcast_f32(&self, v: &mut [f32]) {
        self.world.process_at_rank(0).broadcast_into(v);
    }
    fn all_gather_u64(&self, v: u64) -> Vec<u64> {
        let mut all = vec![0u64; self.size()];
        self.world.all_gather_into(&v, &mut all[..]);
        all
    }
    fn sum_groups(
        &self,
        pack: &mut GradPack,
        work: &mut dyn FnMut(&mut GroupReady<'_>) -> Result<()>,
    ) -> Result<()> {
        let GradPack {
            send,
            sum,
            exposed_s,
        } = pack;
        let world = &self.world;
        mpi::request::scope(|scope| {
            let mut slots: Vec<Option<(&mut Vec<f32>, &mut Vec<f32>)>> =
                send.iter_mut().zip(sum.iter_mut()).map(Some).collect();
            let mut pending = Vec::with_capacity(slots.len());
            let r = work(&mut |g, write| {
                let (s, r) = slots[g]
                    .take()
                    .expect("each gradient group is handed over once");
                write(s);
                let s: &Vec<f32> = s;
                pending.push(world.immediate_all_reduce_into(
                    scope,
                    &s[..],
                    &mut r[..],
                    SystemOperation::sum(),
                ));
                // Open MPI moves a non-blocking collective on only inside MPI
                // calls: test the earlier ones so they progress meanwhile
                let mut still = Vec::with_capacity(pending.len());
                for q in pending.drain(..) {
                    if let Err(q) = q.test() {
                        still.push(q);
                    }
                }
                pending = still;
            });
            let t = Instant::now();
            for q in pending {
                q.wait();
            }
            *exposed_s = t.elapsed().as_secs_f64();
            r
        })
    }
}
