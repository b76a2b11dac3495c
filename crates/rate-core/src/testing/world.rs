//! `ThreadWorld`: a `Collective` of threads in one process, so that sharded runs (the class covariance sums of 4.1.3-4.1.4, gradient sums) are tested against one process without an MPI launcher.

use crate::collective::{Collective, CommClock};
use crate::Result;
use std::sync::{Arc, Barrier, Mutex};

/// The shared state of a world of threads: one deposit slot per rank.
#[derive(Debug)]
struct Shared {
    size: usize,
    slots: Mutex<Vec<Vec<f64>>>,
    barrier: Barrier,
}

/// One rank of a world of `size` threads; every thread of the world holds
/// its own and makes the same calls in the same order. Sums are taken in
/// rank order, so every rank gets the same bits (as MPI promises for its
/// built-in reductions).
#[derive(Debug)]
pub struct ThreadWorld {
    rank: usize,
    shared: Arc<Shared>,
    clock: CommClock,
}

impl ThreadWorld {
    /// The `size` ranks of a new world, rank `r` at index `r`.
    pub fn new(size: usize) -> Vec<ThreadWorld> {
        let shared =
            Arc::new(Shared { size, slots: Mutex::new(vec![Vec::new(); size]), barrier: Barrier::new(size) });
        (0..size)
            .map(|rank| ThreadWorld { rank, shared: shared.clone(), clock: CommClock::default() })
            .collect()
    }

    /// Runs `f(rank's world)` on one thread per rank and returns the results in rank order.
    pub fn run<T: Send>(size: usize, f: impl Fn(&ThreadWorld) -> T + Sync) -> Vec<T> {
        let worlds = ThreadWorld::new(size);
        std::thread::scope(|s| {
            let handles: Vec<_> = worlds.iter().map(|w| s.spawn(|| f(w))).collect();
            handles.into_iter().map(|h| h.join().expect("a rank's thread panicked")).collect()
        })
    }

    /// Every rank's `mine`, in rank order (two barriers: deposit, then read).
    fn exchange(&self, mine: &[f64]) -> Vec<Vec<f64>> {
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())[self.rank] = mine.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.shared.barrier.wait();
        all
    }
}

impl Collective for ThreadWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        let all = self.clock.time(|| self.exchange(buf));
        for (i, v) in buf.iter_mut().enumerate() {
            *v = all.iter().fold(0.0, |acc, part| acc + part[i]);
        }
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> Result<()> {
        let all = self.clock.time(|| self.exchange(buf));
        buf.copy_from_slice(&all[root]);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.clock.time(|| self.shared.barrier.wait());
        Ok(())
    }
    fn comm_seconds(&self) -> f64 {
        self.clock.seconds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::MESSAGE_BYTES;

    #[test]
    fn sums_broadcasts_and_gathers_agree_on_every_rank() {
        let out = ThreadWorld::run(3, |w| {
            let mut v = vec![w.rank() as f64 + 1.0, 10.0 * w.rank() as f64];
            w.all_reduce_sum(&mut v).unwrap();
            let mut b = vec![w.rank() as f64; 2];
            w.broadcast(&mut b, 2).unwrap();
            let g = w.all_gather(&[w.rank() as f64 * 2.0]).unwrap();
            let e = w.agree((w.rank() == 2).then(|| "bad".to_string())).unwrap_err().to_string();
            // the lowest failing rank wins, and a message is cut at a character boundary
            let long = format!("{}é", "x".repeat(MESSAGE_BYTES - 1));
            let problem = match w.rank() {
                0 => None,
                1 => Some(long),
                _ => Some("later".to_string()),
            };
            let first = w.agree(problem).unwrap_err().to_string();
            let width =
                w.same_everywhere("width", &[if w.rank() == 2 { 3.0 } else { 4.0 }]).unwrap_err().to_string();
            assert!(w.same_everywhere("width", &[4.0]).is_ok());
            (v, b, g, e, first, width, w.share(10))
        });
        for (r, (v, b, g, e, first, width, share)) in out.into_iter().enumerate() {
            assert_eq!(v, [6.0, 30.0]);
            assert_eq!(b, [2.0, 2.0]);
            assert_eq!(g, [0.0, 2.0, 4.0]);
            assert_eq!(e, "rank 2 of 3: bad");
            assert_eq!(first, format!("rank 1 of 3: {}", "x".repeat(MESSAGE_BYTES - 1)));
            assert_eq!(width, "rank 2 of 3: width [3.0], rank 0 has [4.0]");
            assert_eq!(share, [0..3, 3..6, 6..10][r]);
        }
    }
}
