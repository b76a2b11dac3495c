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
    /// [`Self::all_reduce_sum`] in single precision (gradients of an f32 model).
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
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
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
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

/// The sum over processes of a tensor (same shape everywhere), through the
/// host in f64 whatever the element type; with one process the tensor itself.
pub fn all_reduce_tensor<B: Backend>(t: &Tensor<B>, comm: &dyn Collective) -> Result<Tensor<B>> {
    if comm.size() == 1 {
        return Ok(t.clone());
    }
    let mut host = t.to_f64_vec();
    comm.all_reduce_sum(&mut host)?;
    Ok(Tensor::from_f64(t.backend(), &host, t.shape()))
}

/// The sum over processes of several tensors in one collective call (the
/// shapes must agree across processes, list by list).
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

    /// A fake world of `size` processes seen from `rank`, where every other
    /// process contributes `others` times this one's buffer.
    struct Fake {
        rank: usize,
        size: usize,
        others: Vec<Vec<f64>>,
    }

    impl Collective for Fake {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
            // the other ranks' gather slots are filled from `others`
            let n = buf.len() / self.size;
            for (r, o) in self.others.iter().enumerate() {
                if r != self.rank && o.len() == n {
                    buf[r * n..(r + 1) * n].copy_from_slice(o);
                }
            }
            Ok(())
        }
        fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
            Ok(())
        }
        fn broadcast(&self, _: &mut [f64], _: usize) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn comm_seconds(&self) -> f64 {
            0.0
        }
    }

    #[test]
    fn agree_reports_the_lowest_failing_rank_on_every_rank() {
        let err = |msg: &str| {
            let mut v = vec![1.0; 1];
            v.extend(msg.bytes().map(|b| b as f64));
            v.resize(MESSAGE_BYTES + 1, 0.0);
            v
        };
        let ok = vec![0.0; MESSAGE_BYTES + 1];
        let others = vec![ok.clone(), err("features have 783 columns"), err("other")];
        let me = Fake { rank: 0, size: 3, others };
        let e = me.agree(None).unwrap_err().to_string();
        assert_eq!(e, "rank 1 of 3: features have 783 columns");
        let all_ok = Fake { rank: 0, size: 2, others: vec![ok.clone(), ok] };
        assert!(all_ok.agree(None).is_ok());
        // this rank's own problem comes first when it is the lowest
        let me_bad = Fake { rank: 0, size: 2, others: vec![vec![], err("later")] };
        assert_eq!(me_bad.agree(Some("mine".into())).unwrap_err().to_string(), "rank 0 of 2: mine");
    }

    #[test]
    fn local_is_a_pass_through() {
        let mut v = vec![1.0, 2.0];
        Local.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(Local.all_gather(&v).unwrap(), v);
        assert!(Local.agree(None).is_ok());
        assert_eq!(Local.agree(Some("bad shard".into())).unwrap_err().to_string(), "rank 0 of 1: bad shard");
    }
}
