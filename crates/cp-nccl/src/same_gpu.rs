//! Several ranks on one GPU: one compute and one communication stream per rank,
//! device-to-device copies, events between the streams.

use std::sync::Arc;
use std::time::Duration;

use cp_attention::cuda::GpuTensor;
use cp_ring::RingTransport;
use cp_ring::{ChannelTransport, channel_ring};
use cudarc::driver::{CudaEvent, CudaStream};

use crate::error::cuda;
use crate::{GpuRingError, Result};

/// A tensor in flight and the event after which it may be read.
#[derive(Clone)]
struct Packet {
    tensor: GpuTensor,
    ready: Arc<CudaEvent>,
}

/// One rank's end of a ring of ranks sharing a GPU.
///
/// A shift records an event on the rank's compute stream (the block is ready), makes the
/// communication stream wait on it, copies the block there and records a second event; the
/// receiving rank's compute stream waits on that event only when it needs the block, in
/// `finish_shift`. The copy therefore overlaps the attention of the current block.
pub struct SameGpuTransport {
    rank: usize,
    compute: Arc<CudaStream>,
    comm: Arc<CudaStream>,
    inner: ChannelTransport<Packet>,
}

impl std::fmt::Debug for SameGpuTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SameGpuTransport").field("rank", &self.rank).finish_non_exhaustive()
    }
}

impl SameGpuTransport {
    /// Builds the ring for ranks whose compute streams are `compute` (all on one context); a
    /// host-side receive waits at most `timeout`.
    pub fn ring(compute: Vec<Arc<CudaStream>>, timeout: Duration) -> Result<Vec<SameGpuTransport>> {
        let n = compute.len();
        let inner = channel_ring::<Packet>(n, timeout);
        compute
            .into_iter()
            .zip(inner)
            .enumerate()
            .map(|(rank, (compute, inner))| {
                let comm =
                    crate::nccl::comm_stream(&compute).map_err(cuda(rank, "cuStreamCreateWithPriority(comm)"))?;
                Ok(SameGpuTransport { rank, compute, comm, inner })
            })
            .collect()
    }

    /// Copies `msg` on the communication stream once the compute stream has produced it.
    fn copies(&self, msg: &[GpuTensor]) -> Result<Vec<Packet>> {
        let produced = self.compute.record_event(None).map_err(cuda(self.rank, "cuEventRecord"))?;
        self.comm.wait(&produced).map_err(cuda(self.rank, "cuStreamWaitEvent"))?;
        let tensors = msg
            .iter()
            .map(|t| {
                let buf = self.comm.clone_dtod(t.slice()).map_err(cuda(self.rank, "cuMemcpyDtoDAsync"))?;
                Ok(GpuTensor::from_buffer(buf, t.dtype(), t.shape().to_vec())?)
            })
            .collect::<Result<Vec<_>>>()?;
        let ready = Arc::new(self.comm.record_event(None).map_err(cuda(self.rank, "cuEventRecord"))?);
        Ok(tensors.into_iter().map(|tensor| Packet { tensor, ready: ready.clone() }).collect())
    }

    /// Makes the compute stream wait for every packet, and unwraps the tensors.
    fn arrive(&self, packets: Vec<Packet>) -> Result<Vec<GpuTensor>> {
        packets
            .into_iter()
            .map(|p| {
                self.compute.wait(&p.ready).map_err(cuda(self.rank, "cuStreamWaitEvent"))?;
                Ok(p.tensor)
            })
            .collect()
    }
}

impl RingTransport<GpuTensor> for SameGpuTransport {
    type Error = GpuRingError;

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        RingTransport::world_size(&self.inner)
    }

    fn start_shift(&mut self, msg: &[GpuTensor]) -> Result<()> {
        let packets = self.copies(msg)?;
        Ok(self.inner.start_shift(&packets)?)
    }

    fn finish_shift(&mut self) -> Result<Vec<GpuTensor>> {
        let packets = self.inner.finish_shift()?;
        self.arrive(packets)
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<GpuTensor>>) -> Result<Vec<Vec<GpuTensor>>> {
        let mut outgoing = Vec::with_capacity(msgs.len());
        for (dst, msg) in msgs.iter().enumerate() {
            if dst == self.rank {
                // Stays here: ready as soon as the compute stream has produced it.
                let ready = Arc::new(self.compute.record_event(None).map_err(cuda(self.rank, "cuEventRecord"))?);
                outgoing.push(msg.iter().map(|t| Packet { tensor: t.clone(), ready: ready.clone() }).collect());
            } else {
                outgoing.push(self.copies(msg)?);
            }
        }
        let incoming = self.inner.all_to_all(outgoing)?;
        incoming.into_iter().map(|packets| self.arrive(packets)).collect()
    }
}
