//! Timing the phases of a ring algorithm with CUDA events on the rank's compute stream.

use std::sync::Arc;
use std::time::Instant;

use cp_ring::{Phase, Probe};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

/// Records an event on the compute stream at every phase boundary. Because the compute stream
/// waits on the communication stream inside `finish_shift`, the time between a `Wait` phase's
/// events is the communication the compute stream could not hide. It also notes the host's
/// clock at each boundary: the host time of a step is how long the rank's thread took to
/// enqueue it, which bounds the GPU time from below when launches cost more than kernels.
#[derive(Debug)]
pub struct CudaProbe {
    stream: Arc<CudaStream>,
    marks: Vec<(Phase, bool, CudaEvent, Instant)>,
    /// Events of an earlier probe, recorded again (creating one is a driver call of its own).
    spare: Vec<CudaEvent>,
    failed: bool,
}

/// GPU time per phase on one rank, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Partial attention and merges of the ring steps.
    pub compute_ms: f64,
    /// Compute stream stalled on a ring transfer: exposed communication.
    pub wait_ms: f64,
    /// Pass-Q's all-to-all (including the stall on it).
    pub all_to_all_ms: f64,
    /// Pass-Q's final merge.
    pub merge_ms: f64,
    /// From the first phase's start to the last phase's end.
    pub total_ms: f64,
    /// Host time from the first phase's start to the last phase's end: how long the rank's
    /// thread took to enqueue the step (its GPU work may still be running).
    pub host_ms: f64,
    /// Host time spent enqueueing each phase, in the order of the GPU fields: compute, wait,
    /// all-to-all, merge.
    pub host_phase_ms: [f64; 4],
}

impl CudaProbe {
    /// A probe recording on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> CudaProbe {
        CudaProbe::with_events(stream, Vec::new())
    }

    /// A probe recording on `stream` that reuses `events` (from [`CudaProbe::into_events`] of
    /// an earlier probe whose times were read) before creating new ones.
    pub fn with_events(stream: Arc<CudaStream>, events: Vec<CudaEvent>) -> CudaProbe {
        CudaProbe { stream, marks: Vec::new(), spare: events, failed: false }
    }

    /// The probe's events, for the next probe on the same context.
    pub fn into_events(self) -> Vec<CudaEvent> {
        let mut events = self.spare;
        events.extend(self.marks.into_iter().map(|m| m.2));
        events
    }

    fn mark(&mut self, phase: Phase, start: bool) {
        let event = match self.spare.pop() {
            Some(e) => e.record(&self.stream).map(|_| e),
            None => self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)),
        };
        match event {
            Ok(e) => self.marks.push((phase, start, e, Instant::now())),
            Err(_) => self.failed = true,
        }
    }

    /// Waits for the recorded events and sums the time of each phase; `None` if an event
    /// could not be recorded or read.
    pub fn times(&self) -> Option<PhaseTimes> {
        if self.failed || self.marks.is_empty() {
            return None;
        }
        let mut t = PhaseTimes::default();
        let mut open: Option<&(Phase, bool, CudaEvent, Instant)> = None;
        for m in &self.marks {
            if m.1 {
                open = Some(m);
                continue;
            }
            let start = open.take()?;
            let ms = start.2.elapsed_ms(&m.2).ok()? as f64;
            let host = m.3.duration_since(start.3).as_secs_f64() * 1e3;
            let slot = match m.0 {
                Phase::Compute => {
                    t.compute_ms += ms;
                    0
                }
                Phase::Wait => {
                    t.wait_ms += ms;
                    1
                }
                Phase::AllToAll => {
                    t.all_to_all_ms += ms;
                    2
                }
                Phase::Merge => {
                    t.merge_ms += ms;
                    3
                }
            };
            t.host_phase_ms[slot] += host;
        }
        let (first, last) = (self.marks.first()?, self.marks.last()?);
        t.total_ms = first.2.elapsed_ms(&last.2).ok()? as f64;
        t.host_ms = last.3.duration_since(first.3).as_secs_f64() * 1e3;
        Some(t)
    }
}

impl Probe for CudaProbe {
    fn enter(&mut self, phase: Phase, _step: usize) {
        self.mark(phase, true);
    }

    fn exit(&mut self, phase: Phase, _step: usize) {
        self.mark(phase, false);
    }
}
