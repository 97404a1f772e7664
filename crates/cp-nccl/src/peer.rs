//! Ranks of one process joined by direct device copies: several ranks on one GPU, or one GPU
//! per rank with peer access over NVLink — no NCCL, no collective launch: a transfer is one
//! copy on the receiver's stream.
//!
//! A sender *offers* its tensor (the tensor and an event after which it may be read) through an
//! in-process channel; the receiver's copy stream waits on that event, copies the tensor into a
//! buffer of its own device (a peer copy across GPUs), and its compute stream waits on the
//! copy. Measured on four H200s, NCCL's send/recv costs about 100 us even for a few kilobytes;
//! a peer copy costs a few microseconds plus its bytes, which is what short ring steps and
//! decode need.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cp_attention::cuda::GpuTensor;
use cp_ring::{ChannelTransport, RingTransport, channel_ring};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DevicePtr, DevicePtrMut};

use crate::error::cuda;
use crate::{GpuRingError, Result};

/// A tensor offered to a peer, and the event after which it may be read.
#[derive(Clone)]
struct Offer {
    tensor: GpuTensor,
    ready: Arc<CudaEvent>,
}

/// One rank's end of a ring of ranks in this process (on one GPU, or one GPU each).
///
/// Copies run on a high-priority copy stream of the receiver, ordered after the sender's
/// `ready` event and before the receiver's compute that reads them, so a shift overlaps the
/// attention of the current block. The offered tensors stay referenced here until the copies
/// reading them have finished (their owner frees them on its own stream, which knows nothing of
/// this rank's copy).
pub struct PeerTransport {
    rank: usize,
    compute: Arc<CudaStream>,
    copies: Arc<CudaStream>,
    inner: ChannelTransport<Offer>,
    /// Offers copied, and the event after which the copy is done.
    retired: Vec<(Vec<Offer>, CudaEvent)>,
    timeout: Duration,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport").field("rank", &self.rank).finish_non_exhaustive()
    }
}

/// Lets every device of `contexts` read every other's memory directly (NVLink peer access).
/// Devices that cannot reach each other directly still copy, through the driver's staging.
pub fn enable_peer_access(contexts: &[Arc<CudaContext>]) -> Result<()> {
    use cudarc::driver::sys;
    for (r, me) in contexts.iter().enumerate() {
        me.bind_to_thread().map_err(cuda(r, "cuCtxSetCurrent"))?;
        for peer in contexts {
            if peer.cu_device() == me.cu_device() {
                continue;
            }
            let mut can = 0;
            // SAFETY: writes one int for two valid devices.
            unsafe { sys::cuDeviceCanAccessPeer(&mut can, me.cu_device(), peer.cu_device()) }
                .result()
                .map_err(cuda(r, "cuDeviceCanAccessPeer"))?;
            if can == 0 {
                continue;
            }
            // SAFETY: `peer` is a live context; this thread's current context is `me`.
            let enabled = unsafe { sys::cuCtxEnablePeerAccess(peer.cu_ctx(), 0) };
            if enabled != sys::CUresult::CUDA_SUCCESS
                && enabled != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
            {
                return Err(GpuRingError::Cuda { rank: r, op: "cuCtxEnablePeerAccess", code: format!("{enabled:?}") });
            }
            // Tensors come from `me`'s default memory pool (stream-ordered allocation), which
            // peer access does not cover: the pool itself must let `peer` read and write it, or
            // a peer copy is staged through the host (33 GB/s measured instead of NVLink's rate).
            let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
            // SAFETY: writes one pool handle for a valid device.
            unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, me.cu_device()) }
                .result()
                .map_err(cuda(r, "cuDeviceGetDefaultMemPool"))?;
            let access = sys::CUmemAccessDesc {
                location: sys::CUmemLocation {
                    type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                    id: peer.cu_device(),
                },
                flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            // SAFETY: one valid access descriptor, read during the call.
            unsafe { sys::cuMemPoolSetAccess(pool, &access, 1) }.result().map_err(cuda(r, "cuMemPoolSetAccess"))?;
        }
    }
    Ok(())
}

impl PeerTransport {
    /// Builds the ring for ranks whose compute streams are `compute` (on one device or one
    /// each; enable peer access between devices first, [`enable_peer_access`]); a host-side
    /// receive waits at most `timeout`.
    pub fn ring(compute: Vec<Arc<CudaStream>>, timeout: Duration) -> Result<Vec<PeerTransport>> {
        let n = compute.len();
        let inner = channel_ring::<Offer>(n, timeout);
        compute
            .into_iter()
            .zip(inner)
            .enumerate()
            .map(|(rank, (compute, inner))| {
                let copies =
                    crate::nccl::comm_stream(&compute).map_err(cuda(rank, "cuStreamCreateWithPriority(copies)"))?;
                Ok(PeerTransport { rank, compute, copies, inner, retired: Vec::new(), timeout })
            })
            .collect()
    }

    /// Offers `msg`: it may be read once the compute stream's current work is done.
    fn offer(&self, msg: &[GpuTensor]) -> Result<Vec<Offer>> {
        let ready = Arc::new(self.compute.record_event(None).map_err(cuda(self.rank, "cuEventRecord"))?);
        Ok(msg.iter().map(|t| Offer { tensor: t.clone(), ready: ready.clone() }).collect())
    }

    /// Copies a peer's offers into buffers of this device, after their `ready` events, and
    /// makes the compute stream wait for the copies.
    fn pull(&mut self, offers: Vec<Offer>) -> Result<Vec<GpuTensor>> {
        let rank = self.rank;
        let s = self.copies.clone();
        let mut out = Vec::with_capacity(offers.len());
        for o in &offers {
            s.wait(&o.ready).map_err(cuda(rank, "cuStreamWaitEvent"))?;
            let t = &o.tensor;
            let mut dst = GpuTensor::alloc_buffer(&s, t.dtype(), t.shape())?;
            let bytes = t.elem_count() * t.dtype().size();
            let src_stream = t.slice().stream().clone();
            let (src_ctx, dst_ctx) = (src_stream.context().clone(), s.context().clone());
            if bytes > 0 {
                // The source is read through its own stream's handle (recording a read there is
                // all cudarc allows across contexts); its lifetime is ensured by `retired`.
                let (src_ptr, _r) = t.slice().device_ptr(&src_stream);
                let (dst_ptr, _w) = dst.device_ptr_mut(&s);
                s.context().bind_to_thread().map_err(cuda(rank, "cuCtxSetCurrent"))?;
                // SAFETY: both pointers address `bytes` bytes of live allocations (the source is
                // kept alive by `retired` until the copy's event completes; the destination was
                // just allocated on this stream); the copy is ordered after the source's `ready`.
                unsafe {
                    cudarc::driver::result::memcpy_peer_async(
                        dst_ctx.cu_ctx(),
                        dst_ptr,
                        src_ctx.cu_ctx(),
                        src_ptr,
                        bytes,
                        s.cu_stream(),
                    )
                }
                .map_err(cuda(rank, "cuMemcpyPeerAsync"))?;
            }
            out.push(GpuTensor::from_buffer(dst, t.dtype(), t.shape().to_vec())?);
        }
        let done = s.record_event(None).map_err(cuda(rank, "cuEventRecord"))?;
        self.compute.wait(&done).map_err(cuda(rank, "cuStreamWaitEvent"))?;
        self.retired.retain(|(_, e)| !e.is_complete());
        self.retired.push((offers, done));
        Ok(out)
    }

    /// Waits (at most the timeout) until every copy of this rank has finished, so that the
    /// offers it read may be freed; a shift started and not finished is completed first (its
    /// offers discarded). Peers pull what this rank offered on their own schedule: the buffers it
    /// sent may still be read after this returns (see `cp_ring::RingTransport::drain`).
    pub fn drain(&mut self) -> Result<()> {
        RingTransport::drain(&mut self.inner)?;
        let started = Instant::now();
        for (_, done) in &self.retired {
            while !done.is_complete() {
                if started.elapsed() > self.timeout {
                    return Err(GpuRingError::Timeout {
                        rank: self.rank,
                        op: "drain (peer copies)",
                        peers: Vec::new(),
                        waited: started.elapsed(),
                    });
                }
                std::thread::yield_now();
            }
        }
        self.retired.clear();
        Ok(())
    }
}

impl RingTransport<GpuTensor> for PeerTransport {
    type Error = GpuRingError;

    fn drain(&mut self) -> Result<()> {
        PeerTransport::drain(self)
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        RingTransport::world_size(&self.inner)
    }

    fn start_shift(&mut self, msg: &[GpuTensor]) -> Result<()> {
        let offers = self.offer(msg)?;
        Ok(self.inner.start_shift(&offers)?)
    }

    fn finish_shift(&mut self) -> Result<Vec<GpuTensor>> {
        let offers = self.inner.finish_shift()?;
        self.pull(offers)
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<GpuTensor>>) -> Result<Vec<Vec<GpuTensor>>> {
        let outgoing = msgs.iter().map(|m| self.offer(m)).collect::<Result<Vec<_>>>()?;
        let incoming = self.inner.all_to_all(outgoing)?;
        incoming
            .into_iter()
            .enumerate()
            .map(|(src, offers)| {
                if src == self.rank {
                    // Stays here: the compute stream produced it and reads it in order.
                    Ok(offers.into_iter().map(|o| o.tensor).collect())
                } else {
                    self.pull(offers)
                }
            })
            .collect()
    }
}
