//! Wall-clock timing of the phases of a ring algorithm on a CPU rank.

use std::time::{Duration, Instant};

use cp_ring::{Phase, Probe};

/// Time per phase on one rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuPhaseTimes {
    /// Partial attention and merges of the ring steps.
    pub compute: Duration,
    /// Waiting for a ring shift: communication not hidden under compute.
    pub wait: Duration,
    /// Pass-Q's all-to-all.
    pub all_to_all: Duration,
    /// Pass-Q's final merge.
    pub merge: Duration,
}

/// A [`Probe`] that adds up wall-clock time per phase.
#[derive(Debug, Default)]
pub struct CpuProbe {
    started: Option<Instant>,
    /// The totals so far.
    pub times: CpuPhaseTimes,
}

impl Probe for CpuProbe {
    fn enter(&mut self, _phase: Phase, _step: usize) {
        self.started = Some(Instant::now());
    }

    fn exit(&mut self, phase: Phase, _step: usize) {
        let Some(start) = self.started.take() else { return };
        let d = start.elapsed();
        match phase {
            Phase::Compute => self.times.compute += d,
            Phase::Wait => self.times.wait += d,
            Phase::AllToAll => self.times.all_to_all += d,
            Phase::Merge => self.times.merge += d,
        }
    }
}
