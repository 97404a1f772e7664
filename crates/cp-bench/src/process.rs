//! One process per GPU (torchrun's environment): rendezvous for the NCCL id, then this rank's
//! share of a pass-KV and a pass-Q turn, its rows checked against the oracle; with fault
//! injection, the test that a rank dying mid-run ends its peers within their timeout.

use std::sync::Arc;
use std::time::Duration;

use cp_attention::cuda::{CudaAttention, GpuTensor};
use cp_attention::reference::{Heads, discrepancy};
use cp_nccl::{NcclTransport, Rendezvous};
use cp_ring::{Algorithm, RingTransport};
use cp_shard::{CacheMap, NewTokens, Span, TurnPlan};

use crate::workload;

/// Fault injection: this process exits abruptly (`abort`: no unwinding, no communicator
/// teardown, as in a crash) when it is about to start ring shift `die_at` (0: never).
struct DieAtShift<T> {
    inner: T,
    die_at: usize,
    shifts: usize,
}

impl<T: RingTransport<GpuTensor>> RingTransport<GpuTensor> for DieAtShift<T> {
    type Error = T::Error;

    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn start_shift(&mut self, msg: &[GpuTensor]) -> Result<(), T::Error> {
        self.shifts += 1;
        if self.shifts == self.die_at {
            eprintln!("  rank {}: dying at ring shift {} (fault injection)", self.rank(), self.shifts);
            std::process::abort();
        }
        self.inner.start_shift(msg)
    }

    fn finish_shift(&mut self) -> Result<Vec<GpuTensor>, T::Error> {
        self.inner.finish_shift()
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<GpuTensor>>) -> Result<Vec<Vec<GpuTensor>>, T::Error> {
        self.inner.all_to_all(msgs)
    }
}

/// Runs this process's rank; `timeout` bounds the rendezvous and every wait on a peer.
pub fn run(die_at: usize, timeout: Duration) -> anyhow::Result<bool> {
    if !cp_nccl::nccl_available() {
        anyhow::bail!("libnccl could not be loaded: install NCCL 2.18 or newer (libnccl.so.2)");
    }
    let rdv = Rendezvous::from_env(timeout)?;
    let id: [u8; 128] = rdv
        .share(|| NcclTransport::unique_id().map(|id| id.to_vec()).unwrap_or_default())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("rank 0 could not create an NCCL unique id (see its own error)"))?;
    let ops = CudaAttention::new_explicit_sync(rdv.local_rank)?;
    let (n, rank) = (rdv.world_size, rdv.rank);
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let mut cache = CacheMap::new(n, 2)?;
    let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 300 }, NewTokens { seq: 1, count: 77 }])?;
    cache.commit_turn(&first)?;
    let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 203 }, NewTokens { seq: 1, count: 61 }])?;
    let layouts = Arc::new(turn.layouts().clone());
    let nccl = NcclTransport::init_rank(ops.stream().clone(), rank, n, id, timeout)?;
    let inputs = workload::draw(&ops, rank, &layouts, heads, 77)?;
    let mut transport = DieAtShift { inner: nccl, die_at, shifts: 0 };
    let mut ok = true;
    for algorithm in [Algorithm::PassKv, Algorithm::PassQ] {
        let local = cp_ring::Local { q: &inputs.q, k: &inputs.k, v: &inputs.v };
        let partial = cp_ring::run(algorithm, &ops, &mut transport, &layouts, local, &mut ())?;
        transport.inner.drain()?;
        let s = ops.stream();
        let out: Vec<f64> = partial.out.download(s)?.into_iter().map(f64::from).collect();
        let qw = heads.n_heads * heads.head_dim;
        let (mut got, mut wanted) = (Vec::new(), Vec::new());
        for (row, t) in layouts.q[rank].rows().enumerate() {
            if let Some(t) = t {
                got.extend_from_slice(&out[row * qw..(row + 1) * qw]);
                wanted.push((t.seq, Span::new(t.pos, 1)));
            }
        }
        let (want, _) = workload::oracle(heads, 77, &wanted)?;
        let d = discrepancy(&got, &want);
        let pass = d.within(crate::check::TOL_OUT);
        ok &= pass;
        println!(
            "  {} rank {rank}/{n} (GPU {}) NCCL process, {algorithm}: out relL2 {:.2e} (tol {:.0e})",
            if pass { "[ok]    " } else { "[FAILED]" },
            rdv.local_rank,
            d.rel_l2,
            crate::check::TOL_OUT
        );
    }
    Ok(ok)
}
