//! NCCL transport: grouped send/recv on a communication stream, with a bounded wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cp_attention::cuda::{BufferPool, GpuDType, GpuTensor};
use cp_ring::RingTransport;
use cudarc::driver::{CudaEvent, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::{result as nccl, sys};

use crate::error::cuda;
use crate::{GpuRingError, Result};

/// The communication stream of a rank: the device's highest priority. The attention kernel
/// keeps every multiprocessor busy for a whole ring step (one block each); as its blocks retire,
/// the block scheduler must prefer the transfer's blocks, or the transfer starts only with the
/// kernel's last wave and shows as exposed communication.
pub(crate) fn comm_stream(
    compute: &Arc<CudaStream>,
) -> std::result::Result<Arc<CudaStream>, cudarc::driver::DriverError> {
    let ctx = compute.context();
    ctx.bind_to_thread()?;
    let (_least, greatest) = cudarc::driver::result::stream::get_priority_range()?;
    ctx.new_stream_with_priority(greatest)
}

/// Whether the NCCL library can be loaded (checked first: cudarc's loader panics otherwise).
pub fn nccl_available() -> bool {
    #[cfg(feature = "cuda-linked")]
    return true; // linked into the binary (feature `cuda-linked`)
    // SAFETY: only tries to open the library by its candidate names.
    #[cfg(not(feature = "cuda-linked"))]
    unsafe {
        sys::is_culib_present()
    }
}

/// An NCCL communicator that is aborted, never panicking, when dropped.
struct RawComm(sys::ncclComm_t);

// SAFETY: the communicator is used by one thread at a time (the transport owning it); NCCL
// allows a communicator to move between threads.
unsafe impl Send for RawComm {}

impl RawComm {
    /// Aborts the communicator once; later calls (and the drop) do nothing.
    fn abort(&mut self) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: the handle came from ncclCommInitRank and has not been aborted yet (it is
        // nulled right after), so it is live. An error cannot be acted on: the communicator is
        // gone either way.
        let _ = unsafe { nccl::comm_abort(self.0) };
        self.0 = std::ptr::null_mut();
    }
}

/// A communicator configuration with `blocking = 0`, at most `max_ctas` thread blocks per NCCL
/// kernel where given, and everything else left to NCCL (what `NCCL_CONFIG_INITIALIZER` sets),
/// for the NCCL version `version`.
fn nonblocking_config(version: i32, max_ctas: Option<u32>) -> sys::ncclConfig_t {
    const UNDEF: i32 = i32::MIN; // NCCL_CONFIG_UNDEF_INT
    let null = std::ptr::null();
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        version: version as u32,
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: max_ctas.map_or(UNDEF, |n| n.min(i32::MAX as u32) as i32),
        netName: null,
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: null,
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

/// The configuration of the blocking communicator split off the non-blocking one: blocking, and
/// sharing the parent's resources, its connections to the peers included — the child's first
/// transfers then set nothing up, which a blocking communicator would wait for with no deadline.
fn blocking_split_config(version: i32, max_ctas: Option<u32>) -> sys::ncclConfig_t {
    sys::ncclConfig_t { blocking: 1, splitShare: 1, ..nonblocking_config(version, max_ctas) }
}

impl RawComm {
    /// NCCL's view of the communicator: `Ok(true)` while work is still being set up in the
    /// background (non-blocking mode), `Ok(false)` when that is done, `Err` with what failed.
    fn pending(&self) -> std::result::Result<bool, String> {
        if self.0.is_null() {
            return Err("the communicator was aborted".into());
        }
        let mut state = sys::ncclResult_t::ncclInProgress;
        // SAFETY: the communicator is live (not aborted); NCCL writes one result code.
        let queried = unsafe { sys::ncclCommGetAsyncError(self.0, &mut state) };
        match (queried, state) {
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess) => Ok(false),
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => Ok(true),
            (sys::ncclResult_t::ncclSuccess, failed) => Err(format!("NCCL reports {failed:?}")),
            (query_failed, _) => Err(format!("ncclCommGetAsyncError: {query_failed:?}")),
        }
    }

    /// Waits (at most until `deadline`) for the communicator's pending work on the host side
    /// (its initialisation, a group's connection set-up and launch) to finish. On an error or
    /// past the deadline the communicator is aborted, so no thread stays blocked on a peer.
    /// `peers` are the ranks this work involves (empty: unknown, e.g. initialisation).
    fn settle(&mut self, rank: usize, op: &'static str, deadline: Instant, peers: &[usize]) -> Result<()> {
        if self.0.is_null() {
            return Err(GpuRingError::Aborted { rank, op });
        }
        let started = Instant::now();
        loop {
            let failure = match self.pending() {
                Ok(false) => return Ok(()),
                Ok(true) if Instant::now() < deadline => {
                    pause(started);
                    continue;
                }
                Ok(true) => GpuRingError::Timeout { rank, op, peers: peers.to_vec(), waited: started.elapsed() },
                Err(code) => GpuRingError::PeerFailed { rank, op, code, peers: peers.to_vec() },
            };
            self.abort();
            return Err(failure);
        }
    }
}

impl RawComm {
    /// A blocking communicator of the same ranks, split off this (non-blocking, initialised)
    /// one; every rank must call it. The split runs in NCCL's background thread (the parent is
    /// non-blocking) and is waited for at most until `deadline`.
    fn split_blocking(
        &mut self,
        rank: usize,
        (version, max_ctas): (i32, Option<u32>),
        deadline: Instant,
        peers: &[usize],
    ) -> Result<RawComm> {
        const OP: &str = "ncclCommSplit";
        if self.0.is_null() {
            return Err(GpuRingError::Aborted { rank, op: OP });
        }
        let mut config = blocking_split_config(version, max_ctas);
        // NCCL's thread writes the new handle when the split completes, which may be after this
        // function gave up waiting: the slot is leaked then rather than freed under it.
        let mut slot: Box<sys::ncclComm_t> = Box::new(std::ptr::null_mut());
        // SAFETY: the parent is live; NCCL copies the config before returning and writes one
        // handle into `slot`, which outlives the split (freed only once the split is done).
        let started = unsafe { sys::ncclCommSplit(self.0, 0, rank as i32, &mut *slot, &mut config) };
        if started != sys::ncclResult_t::ncclSuccess && started != sys::ncclResult_t::ncclInProgress {
            std::mem::forget(slot);
            return Err(GpuRingError::Nccl { rank, op: OP, code: format!("{started:?}") });
        }
        if let Err(e) = self.settle(rank, OP, deadline, peers) {
            std::mem::forget(slot);
            return Err(e);
        }
        let child = RawComm(*slot);
        if child.0.is_null() {
            return Err(GpuRingError::Nccl { rank, op: OP, code: "no communicator was created".into() });
        }
        Ok(child)
    }
}

/// Between two polls of something expected within microseconds: spin (yielding) for the first
/// 200 us, then sleep. A plain sleep costs 50-100 us of timer slack per poll, which was most of a
/// small message's time.
fn pause(started: Instant) {
    if started.elapsed() < Duration::from_micros(200) {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

impl Drop for RawComm {
    fn drop(&mut self) {
        self.abort();
    }
}

/// How a rank waits for its transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// The host waits for each transfer (at most the timeout) before `finish_shift` or
    /// `all_to_all` returns: every call returns with its transfer done.
    Host,
    /// The compute stream waits for each transfer on the GPU, and the host runs ahead,
    /// enqueueing the next steps at once: no host wake-up between a transfer and the kernel
    /// after it. Each call checks NCCL's error state and the age of what is in flight;
    /// [`NcclTransport::drain`] waits (at most the timeout) for everything in flight and must
    /// be called before the results are read.
    Device,
}

/// How NCCL launches a group of sends and receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupLaunch {
    /// On the calling thread (a blocking communicator): `ncclGroupEnd` enqueues the group's
    /// kernel and returns, in microseconds. The communicator is split off a non-blocking one
    /// after every rank has joined and connected, so that joining stays bounded by the timeout.
    /// The default.
    #[default]
    Inline,
    /// By a thread NCCL starts for every group (a non-blocking communicator), polled until it
    /// has launched: tens of microseconds a group, which a decode step or a short ring step
    /// pays several times. Kept to measure the difference.
    Background,
}

/// How a rank's NCCL communicator is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NcclSetup {
    /// How groups launch.
    pub launch: GroupLaunch,
    /// At most this many thread blocks (one per channel, each on its own multiprocessor) in
    /// each NCCL kernel; `None` leaves it to NCCL (tens on NVLink). A transfer that is to run
    /// beside a kernel holding every multiprocessor (the persistent prefill kernel) needs as
    /// many multiprocessors left free for it (`CudaAttention::reserve_sms`), or it waits for
    /// that kernel's end.
    pub max_ctas: Option<u32>,
}

/// One rank's end of an NCCL ring.
///
/// Shifts post `ncclSend` to `rank + 1` and `ncclRecv` from `rank - 1` in one group on the
/// communication stream, after an event from the compute stream; `finish_shift` makes the
/// compute stream wait for the transfer — with the host waiting too ([`WaitMode::Host`], the
/// default) or not ([`WaitMode::Device`]). A wait longer than the timeout aborts the
/// communicator, so that no peer hangs. Ring messages are equal-sized, so receive buffers take
/// the shapes of what this rank sends.
///
/// NCCL connects a pair of ranks on their first transfer, which takes milliseconds per peer;
/// [`NcclTransport::init_rank`] connects every peer up front, so that a ring's first
/// all-to-all does not pay it.
pub struct NcclTransport {
    comm: RawComm,
    /// The non-blocking communicator `comm` was split off (sharing its resources), kept alive
    /// for as long as `comm` (and dropped after it: fields drop in order).
    parent: Option<RawComm>,
    rank: usize,
    world_size: usize,
    compute: Arc<CudaStream>,
    stream: Arc<CudaStream>,
    pending: Option<(Vec<GpuTensor>, CudaEvent, Vec<GpuTensor>)>,
    timeout: Duration,
    mode: WaitMode,
    /// Transfers the compute stream waits on but the host has not seen complete (device mode):
    /// completion event, operation, peer, when it was enqueued.
    inflight: Vec<(CudaEvent, &'static str, usize, Instant)>,
    /// Receive buffers kept for reuse on the compute stream (explicit-sync contexts only).
    pool: Option<Arc<BufferPool>>,
    /// The compute stream is being captured into a CUDA graph: transfers are ordered on the
    /// GPU only (their events belong to the graph; the host cannot query them).
    capturing: bool,
}

impl std::fmt::Debug for NcclTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclTransport")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

fn nccl_err(rank: usize, op: &'static str) -> impl FnOnce(nccl::NcclError) -> GpuRingError {
    // Keep NCCL's own result code (ncclInvalidUsage, ncclRemoteError, ...), not just "error".
    move |e| GpuRingError::Nccl { rank, op, code: format!("{:?}", e.0) }
}

impl NcclTransport {
    /// A fresh unique id (rank 0 makes it and hands it to the others).
    pub fn unique_id() -> Result<[u8; 128]> {
        if !nccl_available() {
            return Err(GpuRingError::MissingLibrary {
                library: "libnccl",
                hint: "install NCCL 2.18 or newer (libnccl.so.2)",
            });
        }
        let id = nccl::get_uniqueid().map_err(nccl_err(0, "ncclGetUniqueId"))?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// Joins the communicator `id` as `rank` of `world_size`, computing on `compute` (whose
    /// device is this rank's GPU), and connects to every peer. Blocks until every rank has
    /// joined (at most `timeout`). Groups launch on the calling thread ([`GroupLaunch::Inline`]).
    pub fn init_rank(
        compute: Arc<CudaStream>,
        rank: usize,
        world_size: usize,
        id: [u8; 128],
        timeout: Duration,
    ) -> Result<NcclTransport> {
        NcclTransport::init_rank_with(compute, rank, world_size, id, timeout, NcclSetup::default())
    }

    /// [`NcclTransport::init_rank`] with the communicator's set-up chosen.
    pub fn init_rank_with(
        compute: Arc<CudaStream>,
        rank: usize,
        world_size: usize,
        id: [u8; 128],
        timeout: Duration,
        setup: NcclSetup,
    ) -> Result<NcclTransport> {
        if setup.max_ctas == Some(0) {
            return Err(GpuRingError::Misuse {
                rank,
                op: "NcclTransport::init_rank_with",
                what: "NCCL's thread blocks per kernel (max_ctas) is 0: give at least 1, or None for NCCL's choice",
            });
        }
        if !nccl_available() {
            return Err(GpuRingError::MissingLibrary {
                library: "libnccl",
                hint: "install NCCL 2.18 or newer (libnccl.so.2)",
            });
        }
        compute.context().bind_to_thread().map_err(cuda(rank, "cuCtxSetCurrent"))?;
        let stream = comm_stream(&compute).map_err(cuda(rank, "cuStreamCreateWithPriority(comm)"))?;
        let id = sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
        let (n, r) = (world_size as i32, rank as i32);
        let mut version = 0;
        // SAFETY: writes one int.
        unsafe { sys::ncclGetVersion(&mut version) }.result().map_err(nccl_err(rank, "ncclGetVersion"))?;
        // Non-blocking: initialisation and every group return at once and are polled with a
        // deadline (`RawComm::settle`), so a peer that never joins or dies cannot block this
        // thread inside NCCL.
        let mut config = nonblocking_config(version, setup.max_ctas);
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `raw` is written by NCCL; the id and the config outlive the call.
        let started = unsafe { sys::ncclCommInitRankConfig(&mut raw, n, id, r, &mut config) };
        let mut comm = RawComm(raw);
        started.result().map_err(nccl_err(rank, "ncclCommInitRankConfig"))?;
        let everyone: Vec<usize> = (0..world_size).filter(|&r| r != rank).collect();
        comm.settle(rank, "ncclCommInitRankConfig (a rank never joined?)", Instant::now() + timeout, &everyone)?;
        let mut t = NcclTransport {
            comm,
            parent: None,
            rank,
            world_size,
            compute: compute.clone(),
            stream,
            pending: None,
            timeout,
            mode: WaitMode::Host,
            inflight: Vec::new(),
            pool: BufferPool::new(&compute),
            capturing: false,
        };
        // Connected while still non-blocking: a peer that died since joining is a bounded error.
        t.connect_all()?;
        if setup.launch == GroupLaunch::Inline {
            let config = (version, setup.max_ctas);
            let blocking = t.comm.split_blocking(rank, config, Instant::now() + timeout, &everyone)?;
            t.parent = Some(std::mem::replace(&mut t.comm, blocking));
            // Over the parent's connections (shared): a first transfer that sets nothing up.
            t.connect_all()?;
        }
        Ok(t)
    }

    /// Sets how this rank waits for its transfers (see [`WaitMode`]); waits for what is in
    /// flight first.
    pub fn set_wait_mode(&mut self, mode: WaitMode) -> Result<()> {
        self.drain()?;
        self.mode = mode;
        Ok(())
    }

    /// How this rank waits for its transfers.
    pub fn wait_mode(&self) -> WaitMode {
        self.mode
    }

    /// Tells the transport that its compute stream is (or no longer is) being captured into a
    /// CUDA graph: transfers are then ordered on the GPU only, whatever the wait mode (the
    /// host cannot wait for work that is only being recorded). Nothing may be in flight.
    pub fn set_capturing(&mut self, capturing: bool) -> Result<()> {
        if capturing {
            self.drain()?;
        }
        self.capturing = capturing;
        Ok(())
    }

    /// Receive buffers kept for reuse (explicit-sync handles only).
    pub fn pool(&self) -> Option<&Arc<BufferPool>> {
        self.pool.as_ref()
    }

    /// Waits on the host for `done` (recorded on this rank's streams) at most the timeout, or
    /// until NCCL reports a peer's failure: how a caller bounds its wait for work the transport
    /// did not enqueue itself (a graph replay holding NCCL transfers). It does not abort: the
    /// caller decides when, with respect to the graphs it holds (see [`NcclTransport::abort`]).
    pub fn wait_bounded(&self, done: &CudaEvent, op: &'static str) -> Result<()> {
        let next = (self.rank + 1) % self.world_size;
        self.poll(done, op, next)
    }

    /// Connects this rank to every peer in both directions now (NCCL connects a pair on its
    /// first transfer): one exchange of a few bytes with every rank, waited for. Every rank
    /// calls it together, inside `init_rank`.
    fn connect_all(&mut self) -> Result<()> {
        let s = self.stream.clone();
        let tiny = GpuTensor::from_buffer(
            s.alloc_zeros::<u8>(16).map_err(cuda(self.rank, "cuMemAlloc"))?,
            GpuDType::Bf16,
            vec![8],
        )?;
        let peers: Vec<(usize, &GpuTensor)> =
            (0..self.world_size).filter(|&p| p != self.rank).map(|p| (p, &tiny)).collect();
        if peers.is_empty() {
            return Ok(());
        }
        let (_, done) = self.exchange(&peers, &peers)?;
        self.host_wait(&done, "connect_all", (self.rank + 1) % self.world_size)
    }

    /// Waits (at most the timeout, then aborting the communicator) until every transfer in
    /// flight has completed, a shift started and not finished included.
    pub fn drain(&mut self) -> Result<()> {
        // A shift started and never finished (the step failed between the two): wait for it too,
        // so that the transport can start the next one.
        if let Some((_, done, _keep_alive)) = self.pending.take() {
            let prev = (self.rank + self.world_size - 1) % self.world_size;
            let waited = self.host_wait(&done, "drain (unfinished shift)", prev);
            // The shift's buffers are released after it on the compute stream, whatever happened.
            let _ = self.compute.wait(&done);
            waited?;
        }
        while !self.inflight.is_empty() {
            let (done, op, peer, _) = self.inflight.remove(0);
            self.host_wait(&done, op, peer)?;
        }
        Ok(())
    }

    /// Makes the compute stream wait for `done`; in host mode the host waits too, in device
    /// mode the transfer joins those in flight, which are checked (NCCL's error state, and
    /// nothing in flight for longer than the timeout) without blocking.
    fn arrive(&mut self, done: CudaEvent, op: &'static str, peer: usize) -> Result<()> {
        match self.mode {
            WaitMode::Host => {
                let waited = self.host_wait(&done, op, peer);
                // Even after a failure: the caller releases the transfer's buffers next.
                let ordered = self.compute.wait(&done).map_err(cuda(self.rank, "cuStreamWaitEvent"));
                waited.and(ordered)
            }
            WaitMode::Device if self.capturing => {
                self.compute.wait(&done).map_err(cuda(self.rank, "cuStreamWaitEvent"))
            }
            WaitMode::Device => {
                self.compute.wait(&done).map_err(cuda(self.rank, "cuStreamWaitEvent"))?;
                self.inflight.retain(|(e, ..)| !e.is_complete());
                self.inflight.push((done, op, peer, Instant::now()));
                if let Err(code) = self.comm.pending() {
                    self.abort();
                    return Err(GpuRingError::PeerFailed { rank: self.rank, op, code, peers: vec![peer] });
                }
                if let Some((_, op, peer, since)) = self.inflight.first()
                    && since.elapsed() > self.timeout
                {
                    let (op, peer, waited) = (*op, *peer, since.elapsed());
                    self.abort();
                    return Err(GpuRingError::Timeout { rank: self.rank, op, peers: vec![peer], waited });
                }
                Ok(())
            }
        }
    }

    /// A communicator of one rank (what a one-GPU machine can run).
    pub fn single(compute: Arc<CudaStream>, timeout: Duration) -> Result<NcclTransport> {
        NcclTransport::init_rank(compute, 0, 1, NcclTransport::unique_id()?, timeout)
    }

    /// Posts sends `(peer, tensor)` and receives `(peer, like)` (into fresh tensors of the
    /// dtype and shape of `like`) as one NCCL group on the communication stream, after the
    /// compute stream's current work; returns the received tensors and the completion event.
    fn exchange(
        &mut self,
        sends: &[(usize, &GpuTensor)],
        recvs: &[(usize, &GpuTensor)],
    ) -> Result<(Vec<GpuTensor>, CudaEvent)> {
        let rank = self.rank;
        if self.comm.0.is_null() {
            return Err(GpuRingError::Aborted { rank, op: "exchange" });
        }
        // The receive buffers are allocated on the compute stream (which reads and frees them),
        // before the event the communication stream waits for: NCCL writes them only after the
        // allocation, and their memory is reused only after the compute stream's last use. The
        // rank's handle may not track buffer uses with events (`CudaAttention::new_explicit_sync`),
        // so every ordering between the two streams is explicit here.
        let mut owned: Vec<cudarc::driver::CudaSlice<u8>> = Vec::new();
        for (_, t) in recvs {
            owned.push(GpuTensor::alloc_buffer_in(&self.compute, self.pool.as_ref(), t.dtype(), t.shape())?);
        }
        let produced = self.compute.record_event(None).map_err(cuda(rank, "cuEventRecord"))?;
        self.stream.wait(&produced).map_err(cuda(rank, "cuStreamWaitEvent"))?;
        let mut guards = Vec::new();
        let mut send_ptrs = Vec::new();
        for (peer, t) in sends {
            let (ptr, g) = t.slice().device_ptr(&self.stream);
            send_ptrs.push((*peer, ptr, t.elem_count() * t.dtype().size()));
            guards.push(g);
        }
        let mut recv_ptrs = Vec::new();
        for ((peer, t), buf) in recvs.iter().zip(owned.iter_mut()) {
            let bytes = t.elem_count() * t.dtype().size();
            let (ptr, _g) = buf.device_ptr_mut(&self.stream);
            recv_ptrs.push((*peer, ptr, bytes));
        }
        let s = self.stream.cu_stream() as sys::cudaStream_t;
        nccl::group_start().map_err(nccl_err(rank, "ncclGroupStart"))?;
        let mut posted = Ok(());
        for &(peer, ptr, bytes) in &send_ptrs {
            // SAFETY: `ptr` addresses `bytes` bytes kept alive by `sends` and ordered by the
            // read guards recorded on this stream.
            let r = unsafe { nccl::send(ptr as _, bytes, sys::ncclDataType_t::ncclUint8, peer as i32, self.comm.0, s) };
            posted = posted.and(r.map(|_| ()).map_err(nccl_err(rank, "ncclSend")));
        }
        for &(peer, ptr, bytes) in &recv_ptrs {
            // SAFETY: `ptr` addresses `bytes` bytes of a buffer allocated above on this stream.
            let r = unsafe { nccl::recv(ptr as _, bytes, sys::ncclDataType_t::ncclUint8, peer as i32, self.comm.0, s) };
            posted = posted.and(r.map(|_| ()).map_err(nccl_err(rank, "ncclRecv")));
        }
        let ended = nccl::group_end().map(|_| ()).map_err(nccl_err(rank, "ncclGroupEnd"));
        if posted.is_err() || ended.is_err() {
            self.fence();
        }
        posted?;
        ended?;
        // The group connects to its peers and enqueues its kernels in the background; what
        // follows on the stream must wait until it has.
        let mut peers: Vec<usize> = send_ptrs.iter().chain(&recv_ptrs).map(|p| p.0).filter(|&p| p != rank).collect();
        peers.sort_unstable();
        peers.dedup();
        if let Err(e) = self.comm.settle(rank, "ncclGroupEnd", Instant::now() + self.timeout, &peers) {
            // The receive buffers are freed on the compute stream: after the (aborted) group.
            self.fence();
            return Err(e);
        }
        drop(guards);
        let received = recvs
            .iter()
            .zip(owned)
            .map(|((_, t), buf)| Ok(GpuTensor::from_buffer_in(buf, self.pool.as_ref(), t.dtype(), t.shape().to_vec())?))
            .collect::<Result<Vec<_>>>()?;
        Ok((received, self.stream.record_event(None).map_err(cuda(rank, "cuEventRecord"))?))
    }

    /// The host waits for `done` at most the timeout, watching NCCL's background error state;
    /// on a timeout or an error aborts the communicator (so NCCL kernels of this rank stop) and
    /// reports the peer.
    fn host_wait(&mut self, done: &CudaEvent, op: &'static str, peer: usize) -> Result<()> {
        let waited = self.poll(done, op, peer);
        if waited.is_err() {
            // Stops this rank's NCCL kernels so no stream stays blocked on a dead peer.
            self.abort();
        }
        waited
    }

    /// [`NcclTransport::host_wait`] without the abort.
    fn poll(&self, done: &CudaEvent, op: &'static str, peer: usize) -> Result<()> {
        let started = Instant::now();
        let mut polls = 0u32;
        while !done.is_complete() {
            polls += 1;
            if polls.is_multiple_of(50)
                && let Err(code) = self.comm.pending()
            {
                return Err(GpuRingError::PeerFailed { rank: self.rank, op, code, peers: vec![peer] });
            }
            if started.elapsed() > self.timeout {
                return Err(GpuRingError::Timeout {
                    rank: self.rank,
                    op,
                    peers: vec![peer],
                    waited: started.elapsed(),
                });
            }
            pause(started);
        }
        Ok(())
    }

    /// Aborts the communicator (this rank's NCCL kernels stop; every later call is an error).
    /// NCCL's final clean-up, run by the last communicator of a process to be aborted, waits
    /// until no CUDA graph holds a transfer of any of them: graphs must be destroyed before that
    /// last abort (`GpuRank` drops its captured steps before its transport).
    pub fn abort(&mut self) {
        self.comm.abort();
        if let Some(parent) = &mut self.parent {
            parent.abort();
        }
    }

    /// Makes the compute stream wait for what this rank's communication stream has enqueued so
    /// far — after a failure, before buffers a transfer may still touch go back to the pools
    /// (an aborted transfer's kernels stop asynchronously).
    fn fence(&self) {
        if let Ok(e) = self.stream.record_event(None) {
            let _ = self.compute.wait(&e);
        }
    }
}

impl RingTransport<GpuTensor> for NcclTransport {
    type Error = GpuRingError;

    fn drain(&mut self) -> Result<()> {
        NcclTransport::drain(self)
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn start_shift(&mut self, msg: &[GpuTensor]) -> Result<()> {
        if self.pending.is_some() {
            return Err(GpuRingError::Misuse {
                rank: self.rank,
                op: "start_shift",
                what: "the previous shift was not finished",
            });
        }
        let (next, prev) = ((self.rank + 1) % self.world_size, (self.rank + self.world_size - 1) % self.world_size);
        let sends: Vec<(usize, &GpuTensor)> = msg.iter().map(|t| (next, t)).collect();
        // Ring messages are equal-sized: what arrives has the shapes of what leaves.
        let recvs: Vec<(usize, &GpuTensor)> = msg.iter().map(|t| (prev, t)).collect();
        let (received, done) = self.exchange(&sends, &recvs)?;
        self.pending = Some((received, done, msg.to_vec()));
        Ok(())
    }

    fn finish_shift(&mut self) -> Result<Vec<GpuTensor>> {
        let (bufs, done, _keep_alive) = self.pending.take().ok_or(GpuRingError::Misuse {
            rank: self.rank,
            op: "finish_shift",
            what: "no shift was started",
        })?;
        let prev = (self.rank + self.world_size - 1) % self.world_size;
        self.arrive(done, "finish_shift", prev)?;
        Ok(bufs)
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<GpuTensor>>) -> Result<Vec<Vec<GpuTensor>>> {
        if msgs.len() != self.world_size {
            return Err(GpuRingError::Count {
                rank: self.rank,
                op: "all_to_all",
                what: "messages (one per rank)",
                expected: self.world_size,
                actual: msgs.len(),
            });
        }
        // What each peer sends here has the shapes of what this rank keeps for itself, which
        // stays here: the compute stream produced it and reads it in order.
        let template = msgs[self.rank].clone();
        let mut sends = Vec::new();
        let mut recvs = Vec::new();
        for (peer, msg) in msgs.iter().enumerate().filter(|(peer, _)| *peer != self.rank) {
            for t in msg {
                sends.push((peer, t));
            }
            for t in &template {
                recvs.push((peer, t));
            }
        }
        let per = template.len();
        let mut out: Vec<Vec<GpuTensor>> = (0..self.world_size).map(|_| Vec::with_capacity(per)).collect();
        if !sends.is_empty() || !recvs.is_empty() {
            let (received, done) = self.exchange(&sends, &recvs)?;
            self.arrive(done, "all_to_all", (self.rank + 1) % self.world_size)?;
            for ((peer, _), t) in recvs.iter().zip(received) {
                out[*peer].push(t);
            }
        }
        out[self.rank] = template;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_communicator_blocks_and_shares_the_parents_connections() {
        let parent = nonblocking_config(22_803, None);
        assert_eq!((parent.blocking, parent.magic, parent.version), (0, 0xcafe_beef, 22_803));
        assert_eq!(parent.size, std::mem::size_of::<sys::ncclConfig_t>());
        assert_eq!(parent.splitShare, i32::MIN, "left to NCCL (undefined) in the parent");
        assert_eq!(parent.maxCTAs, i32::MIN, "left to NCCL (undefined) unless asked");
        let child = blocking_split_config(22_803, None);
        assert_eq!((child.blocking, child.splitShare), (1, 1));
        assert_eq!((child.magic, child.version, child.size), (parent.magic, parent.version, parent.size));
    }

    #[test]
    fn a_thread_block_limit_reaches_both_communicators() {
        let parent = nonblocking_config(22_803, Some(8));
        let child = blocking_split_config(22_803, Some(8));
        assert_eq!((parent.maxCTAs, child.maxCTAs), (8, 8));
        assert_eq!(parent.minCTAs, i32::MIN, "the floor stays NCCL's");
    }
}
