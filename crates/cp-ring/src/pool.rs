//! Persistent rank workers: one thread per rank, each owning its state (a device, a transport, a
//! KV cache), built once and used by many jobs.
//!
//! A ring is expensive to set up — an NCCL communicator joins every rank and connects peers
//! lazily on first use — and cheap to use. [`RankPool`] keeps each rank's state on its own
//! thread for the pool's life: [`RankPool::new`] builds the states (concurrently, since building
//! a communicator blocks until every rank joins), [`RankPool::run`] runs one job on every rank
//! and returns each rank's result. A job that panics poisons its rank (later jobs there fail at
//! once) without taking the others down.
//!
//! ```
//! use cp_ring::{RankPool, PoolError};
//!
//! // Each rank keeps a counter across jobs.
//! let pool = RankPool::new(3, |rank| Ok::<_, std::io::Error>(rank * 10))?;
//! let first = pool.run(|rank, state: &mut usize| { *state += 1; Ok::<_, std::io::Error>(*state + rank) });
//! let sums: Vec<usize> = PoolError::all_ok(first, |_| false)?;
//! assert_eq!(sums, [1, 12, 23]);
//! # Ok::<(), PoolError<std::io::Error>>(())
//! ```

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

/// The message of a panic payload (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// Why a rank of a [`RankPool`] gave no result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError<E> {
    /// The job (or the state's construction) returned an error on this rank.
    #[error("rank {rank}: {source}")]
    Rank {
        /// The rank.
        rank: usize,
        /// What the job returned.
        #[source]
        source: E,
    },
    /// The job panicked on this rank; the rank is poisoned.
    #[error("rank {rank} panicked: {message}")]
    Panicked {
        /// The rank.
        rank: usize,
        /// The panic's message.
        message: String,
    },
    /// The rank cannot run jobs: an earlier job panicked there, or its thread is gone.
    #[error("rank {rank} is unusable: {reason}")]
    Unusable {
        /// The rank.
        rank: usize,
        /// Why.
        reason: &'static str,
    },
    /// A pool of no ranks.
    #[error("a rank pool needs at least one rank")]
    Empty,
}

impl<E> PoolError<E> {
    /// Every rank's result if all succeeded, else the error that started the failure: the
    /// first whose `is_echo` is false (a rank's own failure rather than its report that a peer
    /// went away), else the first.
    pub fn all_ok<R>(
        results: Vec<Result<R, PoolError<E>>>,
        is_echo: impl Fn(&E) -> bool,
    ) -> Result<Vec<R>, PoolError<E>> {
        if results.iter().all(Result::is_ok) {
            return Ok(results.into_iter().filter_map(Result::ok).collect());
        }
        let mut errors: Vec<PoolError<E>> = results.into_iter().filter_map(Result::err).collect();
        let echo = |e: &PoolError<E>| matches!(e, PoolError::Rank { source, .. } if is_echo(source));
        let at = errors.iter().position(|e| !echo(e)).unwrap_or(0);
        Err(errors.swap_remove(at))
    }
}

type Job<S> = Box<dyn FnOnce(&mut Option<S>) + Send>;

/// One thread per rank, each owning a state `S` built on that thread.
pub struct RankPool<S> {
    jobs: Vec<Sender<Job<S>>>,
    threads: Vec<JoinHandle<()>>,
}

impl<S> std::fmt::Debug for RankPool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankPool").field("world_size", &self.jobs.len()).finish_non_exhaustive()
    }
}

impl<S: 'static> RankPool<S> {
    /// Starts `world_size` rank threads; thread `r` builds its state with `init(r)`. The states
    /// are built concurrently (a communicator's construction waits for every rank). Returns the
    /// error that started a failure if any rank's construction failed.
    pub fn new<E, F>(world_size: usize, init: F) -> Result<RankPool<S>, PoolError<E>>
    where
        E: Send + 'static,
        F: Fn(usize) -> Result<S, E> + Send + Sync + 'static,
    {
        RankPool::new_filtered(world_size, init, |_| false)
    }

    /// As [`RankPool::new`], with `is_echo` telling a peer's report of another rank's failure
    /// from a failure of its own (see [`PoolError::all_ok`]).
    pub fn new_filtered<E, F>(
        world_size: usize,
        init: F,
        is_echo: impl Fn(&E) -> bool,
    ) -> Result<RankPool<S>, PoolError<E>>
    where
        E: Send + 'static,
        F: Fn(usize) -> Result<S, E> + Send + Sync + 'static,
    {
        if world_size == 0 {
            return Err(PoolError::Empty);
        }
        let init = Arc::new(init);
        let (built_tx, built_rx) = channel::<(usize, Result<(), PoolError<E>>)>();
        let mut jobs = Vec::with_capacity(world_size);
        let mut threads = Vec::with_capacity(world_size);
        for rank in 0..world_size {
            let (tx, rx) = channel::<Job<S>>();
            let (init, built_tx) = (init.clone(), built_tx.clone());
            let spawned = std::thread::Builder::new().name(format!("cp-rank-{rank}")).spawn(move || {
                let built = catch_unwind(AssertUnwindSafe(|| init(rank)));
                let mut state = None;
                let report = match built {
                    Ok(Ok(s)) => {
                        state = Some(s);
                        Ok(())
                    }
                    Ok(Err(source)) => Err(PoolError::Rank { rank, source }),
                    Err(p) => Err(PoolError::Panicked { rank, message: panic_message(&*p) }),
                };
                let _ = built_tx.send((rank, report));
                drop(built_tx);
                worker(rx, state);
            });
            match spawned {
                Ok(handle) => threads.push(handle),
                // Threads already started end when their job senders drop with this function.
                Err(_) => return Err(PoolError::Unusable { rank, reason: "its thread could not be spawned" }),
            }
            jobs.push(tx);
        }
        drop(built_tx);
        let mut results: Vec<Result<(), PoolError<E>>> =
            (0..world_size).map(|rank| Err(PoolError::Unusable { rank, reason: "its thread ended" })).collect();
        for (rank, report) in built_rx.iter().take(world_size) {
            results[rank] = report;
        }
        let pool = RankPool { jobs, threads };
        PoolError::all_ok(results, is_echo)?;
        Ok(pool)
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.jobs.len()
    }

    /// Runs `job(rank, state)` on every rank concurrently and returns each rank's result, in
    /// rank order. Blocks until every rank has answered.
    pub fn run<R, E, F>(&self, job: F) -> Vec<Result<R, PoolError<E>>>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: Fn(usize, &mut S) -> Result<R, E> + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        let (reply_tx, reply_rx) = channel::<(usize, Result<R, PoolError<E>>)>();
        for (rank, tx) in self.jobs.iter().enumerate() {
            let (job, reply) = (job.clone(), reply_tx.clone());
            let boxed: Job<S> = Box::new(move |state: &mut Option<S>| {
                let result = match state.as_mut() {
                    None => Err(PoolError::Unusable { rank, reason: "an earlier job panicked there" }),
                    Some(s) => match catch_unwind(AssertUnwindSafe(|| job(rank, s))) {
                        Ok(r) => r.map_err(|source| PoolError::Rank { rank, source }),
                        Err(p) => {
                            // The state may be half-updated: no later job may use it.
                            *state = None;
                            Err(PoolError::Panicked { rank, message: panic_message(&*p) })
                        }
                    },
                };
                let _ = reply.send((rank, result));
            });
            // A worker that is gone drops the job (and its reply sender) unanswered.
            let _ = tx.send(boxed);
        }
        drop(reply_tx);
        let mut results: Vec<Result<R, PoolError<E>>> =
            (0..self.jobs.len()).map(|rank| Err(PoolError::Unusable { rank, reason: "its thread ended" })).collect();
        for (rank, result) in reply_rx.iter() {
            results[rank] = result;
        }
        results
    }
}

fn worker<S>(jobs: Receiver<Job<S>>, mut state: Option<S>) {
    for job in jobs.iter() {
        job(&mut state);
    }
}

impl<S> Drop for RankPool<S> {
    fn drop(&mut self) {
        // Closing the job channels ends the workers after their current job.
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Failed(usize);
    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failed {}", self.0)
        }
    }
    impl std::error::Error for Failed {}

    #[test]
    fn state_persists_and_results_come_in_rank_order() {
        let pool = RankPool::new(4, |rank| Ok::<_, Failed>(vec![rank])).unwrap();
        for round in 1..=3 {
            let out = PoolError::all_ok(
                pool.run(move |rank, s: &mut Vec<usize>| {
                    s.push(round);
                    Ok::<_, Failed>((rank, s.len()))
                }),
                |_| false,
            )
            .unwrap();
            assert_eq!(out, (0..4).map(|r| (r, round + 1)).collect::<Vec<_>>());
        }
        // Each state lives on one thread: the same thread serves a rank every time.
        let names = PoolError::all_ok(
            pool.run(|_, _: &mut Vec<usize>| Ok::<_, Failed>(std::thread::current().name().map(String::from))),
            |_| false,
        )
        .unwrap();
        assert_eq!(names[2].as_deref(), Some("cp-rank-2"));
    }

    #[test]
    fn a_failed_init_is_the_error() {
        let err = RankPool::<()>::new(3, |rank| if rank == 1 { Err(Failed(1)) } else { Ok(()) }).unwrap_err();
        assert!(matches!(err, PoolError::Rank { rank: 1, source: Failed(1) }), "{err:?}");
        assert!(matches!(RankPool::<()>::new(0, |_| Ok::<_, Failed>(())), Err(PoolError::Empty)));
    }

    #[test]
    fn a_panicking_job_poisons_only_its_rank() {
        let pool = RankPool::new(3, |_| Ok::<_, Failed>(0u32)).unwrap();
        let results =
            pool.run(|rank, _: &mut u32| if rank == 2 { panic!("boom on {rank}") } else { Ok::<_, Failed>(rank) });
        assert!(results[0].is_ok() && results[1].is_ok());
        match &results[2] {
            Err(PoolError::Panicked { rank: 2, message }) => assert!(message.contains("boom on 2")),
            other => panic!("{other:?}"),
        }
        let again = pool.run(|rank, _: &mut u32| Ok::<_, Failed>(rank));
        assert!(again[0].is_ok() && again[1].is_ok());
        assert!(matches!(again[2], Err(PoolError::Unusable { rank: 2, .. })));
    }

    #[test]
    fn the_root_cause_beats_its_echoes() {
        // Rank 0 reports a peer gone (an echo); rank 2's own failure is the cause.
        let results: Vec<Result<(), PoolError<Failed>>> = vec![
            Err(PoolError::Rank { rank: 0, source: Failed(99) }),
            Ok(()),
            Err(PoolError::Rank { rank: 2, source: Failed(2) }),
        ];
        let err = PoolError::all_ok(results, |e| e.0 == 99).unwrap_err();
        assert!(matches!(err, PoolError::Rank { rank: 2, .. }));
    }
}
