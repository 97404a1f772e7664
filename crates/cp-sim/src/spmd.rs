//! Running one closure per rank on threads joined by a channel ring.

use std::time::Duration;

use cp_ring::panic_message;

use crate::{ChannelTransport, Result, SimError, channel_ring};

/// Runs `body(transport)` on `world_size` threads, one per rank, each with its end of a fresh
/// channel ring, and returns every rank's result in rank order. A panicking rank becomes
/// [`SimError::RankPanicked`]; its peers see it gone and fail instead of hanging.
pub fn run_ranks<T, R, F>(world_size: usize, timeout: Duration, body: F) -> Vec<Result<R>>
where
    T: Clone + Send,
    R: Send,
    F: Fn(ChannelTransport<T>) -> Result<R> + Sync,
{
    if world_size == 0 {
        return vec![Err(SimError::Config("run_ranks: world size must be at least 1, got 0".into()))];
    }
    let endpoints = channel_ring::<T>(world_size, timeout);
    std::thread::scope(|scope| {
        let handles: Vec<_> = endpoints.into_iter().map(|endpoint| scope.spawn(|| body(endpoint))).collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, handle)| {
                handle
                    .join()
                    .unwrap_or_else(|panic| Err(SimError::RankPanicked { rank, message: panic_message(&*panic) }))
            })
            .collect()
    })
}
