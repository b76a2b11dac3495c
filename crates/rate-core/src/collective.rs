//! Sums across processes for data-parallel work: the `Collective` trait (rank, size, all-reduce sum, broadcast, barrier), `Local` for one process and, with the `mpi` feature, `Mpi` over rsmpi; what shards the class covariances of 4.1.3-4.1.4 and the gradient sums of a training step.
//!
//! Every quantity a ReduNet layer or a training step needs from the whole
//! data set is a sum over samples (class Gram matrices and counts, per
//! frequency for the invariant network; gradients over a batch), so a run
//! whose samples are sharded across processes needs only to sum buffers.
//! Buffers live on the host: a backend buffer is downloaded, reduced and
//! uploaded ([`all_reduce_tensor`]). A GPU-aware path (NCCL or a
//! CUDA-aware MPI reducing device memory in place) would plug in as another
//! implementation of [`Collective`] taking the backend's buffer instead.
//!
//! Errors: a problem seen by one process must stop every process, or the
//! others wait forever in their next collective call. [`Collective::agree`]
//! gathers every process's verdict so that all of them return the same
//! error, naming the rank it came from.

use crate::{Backend, Error, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Longest error message (in bytes) [`Collective::agree`] carries from one process to the others.
pub const MESSAGE_BYTES: usize = 480;

/// Sums, broadcasts and barriers over the processes of one job. Every process
/// must make the same calls in the same order with buffers of the same
/// length (as MPI's collectives); the sum gives bit-identical results on
/// every process.
pub trait Collective: Send + Sync {
    /// This process's index, `0..size`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Replaces `buf` by its element-wise sum over all processes.
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every process by its value on `root`.
    fn broadcast(&self, buf: &mut [f64], root: usize) -> Result<()>;
    /// Waits until every process has called it.
    fn barrier(&self) -> Result<()>;
    /// Seconds spent inside this object's collective calls so far (waiting included).
    fn comm_seconds(&self) -> f64;

    /// Whether this is the process that writes shared outputs (rank 0).
    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// This process's share of `n` items: a contiguous block, the blocks in
    /// rank order and their sizes differing by at most one.
    fn share(&self, n: usize) -> std::ops::Range<usize> {
        self.rank() * n / self.size()..(self.rank() + 1) * n / self.size()
    }

    /// That every process passed the same `mine` (shapes, widths, hashes;
    /// values exact in f64; every process passes as many values): else, on every process, [`Error::Collective`]
    /// naming the lowest rank that differs from rank 0, with `what` and both
    /// values.
    fn same_everywhere(&self, what: &str, mine: &[f64]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let n = mine.len();
        let all = self.all_gather(mine)?;
        let of = |r: usize| &all[r * n..(r + 1) * n];
        match (1..self.size()).find(|&r| of(r) != of(0)) {
            None => Ok(()),
            Some(r) => Err(Error::Collective {
                rank: r,
                size: self.size(),
                message: format!("{what} {:?}, rank 0 has {:?}", of(r), of(0)),
            }),
        }
    }

    /// `mine` from every process, concatenated in rank order (`size * mine.len()`
    /// values; every process must pass the same length). Integers up to 2^53
    /// travel exactly.
    fn all_gather(&self, mine: &[f64]) -> Result<Vec<f64>> {
        let n = mine.len();
        let mut all = vec![0.0; n * self.size()];
        all[self.rank() * n..(self.rank() + 1) * n].copy_from_slice(mine);
        self.all_reduce_sum(&mut all)?;
        Ok(all)
    }

    /// Every process's verdict, shared: `Ok` when no process has a problem,
    /// else on every process [`Error::Collective`] with the message of the
    /// lowest rank that has one (cut at [`MESSAGE_BYTES`] bytes), displayed
    /// `rank r of n: message` (with one process, `rank 0 of 1: message`).
    fn agree(&self, problem: Option<String>) -> Result<()> {
        if self.size() == 1 {
            return match problem {
                None => Ok(()),
                Some(message) => Err(Error::Collective { rank: 0, size: 1, message }),
            };
        }
        let mut mine = vec![0.0; MESSAGE_BYTES + 1];
        if let Some(msg) = &problem {
            let mut cut = msg.len().min(MESSAGE_BYTES);
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            mine[0] = 1.0;
            for (slot, b) in mine[1..].iter_mut().zip(msg[..cut].bytes()) {
                *slot = b as f64;
            }
        }
        let all = self.all_gather(&mine)?;
        for (r, part) in all.chunks(MESSAGE_BYTES + 1).enumerate() {
            if part[0] != 0.0 {
                let bytes: Vec<u8> = part[1..].iter().take_while(|&&b| b != 0.0).map(|&b| b as u8).collect();
                let msg = String::from_utf8_lossy(&bytes);
                return Err(Error::Collective { rank: r, size: self.size(), message: msg.into_owned() });
            }
        }
        Ok(())
    }
}

/// One process: every sum is the value itself, nothing waits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f64], _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn comm_seconds(&self) -> f64 {
        0.0
    }
}

/// Accumulated wall time of collective calls, shareable between threads.
#[derive(Debug, Default)]
pub struct CommClock(AtomicU64);

impl CommClock {
    /// Runs `f`, adding its wall time.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// Seconds accumulated so far.
    pub fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// `local` on every process once all of them have reached this point: the
/// first error of any process, as [`Collective::agree`] names it, on all of
/// them; with one process `local` itself. Call it where the processes' paths
/// could part (reading files, checking a shard), so that none is left
/// waiting in a later collective call.
pub fn agreed<T, E>(comm: &dyn Collective, local: std::result::Result<T, E>) -> std::result::Result<T, E>
where
    E: std::fmt::Display + From<Error>,
{
    if comm.size() == 1 {
        return local;
    }
    comm.agree(local.as_ref().err().map(|e| e.to_string()))?;
    local
}

/// The sum over processes of a tensor (same shape everywhere), through the
/// host in f64 whatever the element type; with one process the tensor itself.
pub fn all_reduce_tensor<B: Backend>(t: &Tensor<B>, comm: &dyn Collective) -> Result<Tensor<B>> {
    let mut out = all_reduce_tensors(std::slice::from_ref(t), comm)?;
    Ok(out.remove(0))
}

/// The sum over processes of several tensors in one collective call, through
/// the host in f64 (the shapes must agree across processes, list by list).
pub fn all_reduce_tensors<B: Backend>(ts: &[Tensor<B>], comm: &dyn Collective) -> Result<Vec<Tensor<B>>> {
    if comm.size() == 1 || ts.is_empty() {
        return Ok(ts.to_vec());
    }
    let mut host = Vec::with_capacity(ts.iter().map(|t| t.numel()).sum());
    for t in ts {
        host.extend(t.to_f64_vec());
    }
    comm.all_reduce_sum(&mut host)?;
    let mut at = 0;
    Ok(ts
        .iter()
        .map(|t| {
            let n = t.numel();
            let out = Tensor::from_f64(t.backend(), &host[at..at + n], t.shape());
            at += n;
            out
        })
        .collect())
}

/// Counts summed over processes (exact below 2^53).
pub fn all_reduce_counts(counts: &[usize], comm: &dyn Collective) -> Result<Vec<usize>> {
    if comm.size() == 1 {
        return Ok(counts.to_vec());
    }
    let mut host: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    comm.all_reduce_sum(&mut host)?;
    Ok(host.into_iter().map(|c| c as usize).collect())
}

/// How an MPI launcher announces a job of several processes: the first of
/// these variables set to a number above 1 (Open MPI, MPICH/Hydra/PMI,
/// PMIx, Slurm).
pub const LAUNCHER_SIZE_VARS: [&str; 5] =
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"];

/// The process count an MPI launcher started this process among, when one
/// did and it is above 1 (read from [`LAUNCHER_SIZE_VARS`]; `SLURM_NTASKS`
/// only inside a step, `SLURM_STEP_ID` set).
pub fn launcher_world_size() -> Option<(String, usize)> {
    for var in LAUNCHER_SIZE_VARS {
        if var == "SLURM_NTASKS" && std::env::var_os("SLURM_STEP_ID").is_none() {
            continue;
        }
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            if n > 1 {
                return Some((var.to_string(), n));
            }
        }
    }
    None
}

#[cfg(feature = "mpi")]
mod mpi_impl;
#[cfg(feature = "mpi")]
pub use mpi_impl::Mpi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_a_pass_through() {
        let mut v = vec![1.0, 2.0];
        Local.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(Local.all_gather(&v).unwrap(), v);
        assert!(Local.agree(None).is_ok());
        assert_eq!(Local.agree(Some("bad shard".into())).unwrap_err().to_string(), "rank 0 of 1: bad shard");
        assert!(Local.same_everywhere("width", &[3.0]).is_ok());
        assert_eq!(Local.share(7), 0..7);
        let e: Result<()> = agreed(&Local, Err(Error::Collective { rank: 0, size: 1, message: "x".into() }));
        assert_eq!(e.unwrap_err().to_string(), "rank 0 of 1: x");
    }
}
