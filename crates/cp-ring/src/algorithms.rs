//! Ring pass-KV (Algorithm 2) and ring pass-Q (Algorithms 3 and 4), as SPMD code for one rank.

use cp_shard::RingLayouts;

use crate::{AttentionOps, Partial, Phase, Probe, Result, RingError, RingTransport};

/// A rank's own tensors: its queries (rows in the order of `layouts.q[rank]`) and its keys and
/// values (rows in the order of `layouts.kv[rank]`: per sequence, its cached spans then its new
/// spans, padded to the message length — see [`cp_shard::RingLayouts`]). Rows in another order
/// are not detected here (only row counts are); check them with [`cp_shard::Layout::check_rows`].
#[derive(Debug)]
pub struct Local<'a, T> {
    /// Queries `[q_rows, NH, DH]`.
    pub q: &'a T,
    /// Keys `[kv_rows, NKV, DH]`.
    pub k: &'a T,
    /// Values `[kv_rows, NKV, DH]`.
    pub v: &'a T,
}

impl<T> Clone for Local<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Local<'_, T> {}

/// The ring algorithms, for callers that choose at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// [`pass_kv`].
    PassKv,
    /// [`pass_q`] (also the decode algorithm).
    PassQ,
    /// [`gather_q`]: pass-Q with the `N - 1` ring shifts replaced by one all-to-all of the
    /// queries (for decode, where the latency of each step counts and the messages are tiny).
    GatherQ,
    /// [`gather_kv`]: pass-KV with the `N - 1` ring shifts replaced by one all-to-all of the
    /// keys and values (for short prompts, where a shift's latency outweighs its compute).
    GatherKv,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [Algorithm::PassKv, Algorithm::PassQ, Algorithm::GatherQ, Algorithm::GatherKv];
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::PassKv => "pass-KV",
            Algorithm::PassQ => "pass-Q",
            Algorithm::GatherQ => "gather-Q",
            Algorithm::GatherKv => "gather-KV",
        })
    }
}

/// Runs `algorithm` on this rank; see [`pass_kv`] and [`pass_q`].
pub fn run<A, C>(
    algorithm: Algorithm,
    ops: &A,
    comm: &mut C,
    layouts: &RingLayouts,
    local: Local<'_, A::Tensor>,
    probe: &mut impl Probe,
) -> Result<Partial<A::Tensor>>
where
    A: AttentionOps,
    C: RingTransport<A::Tensor>,
{
    match algorithm {
        Algorithm::PassKv => pass_kv(ops, comm, layouts, local, probe),
        Algorithm::PassQ => pass_q(ops, comm, layouts, local, probe),
        Algorithm::GatherQ => gather_q(ops, comm, layouts, local, probe),
        Algorithm::GatherKv => gather_kv(ops, comm, layouts, local, probe),
    }
}

/// Ring pass-KV (Algorithm 2) on this rank.
///
/// `q` holds this rank's queries (`layouts.q[rank]`), `k` and `v` its keys and values
/// (`layouts.kv[rank]`). In step `j` the rank holds the key/value block that started on rank
/// `(rank - j) mod N`; it starts shifting that block on to `rank + 1`, computes the partial
/// attention of its queries against it while the transfer runs, folds it into the running
/// output, then waits for the next block. Returns the output and log-sum-exp of this rank's
/// queries against every key of the ring.
pub fn pass_kv<A, C>(
    ops: &A,
    comm: &mut C,
    layouts: &RingLayouts,
    local: Local<'_, A::Tensor>,
    probe: &mut impl Probe,
) -> Result<Partial<A::Tensor>>
where
    A: AttentionOps,
    C: RingTransport<A::Tensor>,
{
    let Local { q, k, v } = local;
    let ctx = Ctx::new(ops, comm, layouts, local)?;
    let rank = ctx.rank;
    let mut acc: Option<Partial<A::Tensor>> = None;
    ctx.rotate(comm, vec![k.clone(), v.clone()], KV_SHIFT, probe, |step, src, block| {
        let (ql, kl) = (&layouts.q[rank], &layouts.kv[src]);
        acc = Some(match acc.take() {
            None => {
                ops.partial(q, ql, &block[0], &block[1], kl).map_err(|e| ctx.compute(step, "partial attention", e))?
            }
            // The step's partial folded into the running output (in one pass where the device can).
            Some(acc) => ops
                .partial_into(acc, q, ql, &block[0], &block[1], kl)
                .map_err(|e| ctx.compute(step, "partial attention and merge", e))?,
        });
        Ok(())
    })?;
    // n >= 1 (checked by Ctx), so `rotate` visited at least one block.
    acc.ok_or(RingError::WorldSize { rank, transport: ctx.n, layouts: 0 })
}

/// Ring pass-Q (Algorithm 3) on this rank; with decode layouts, Algorithm 4.
///
/// `k` and `v` stay here; the query blocks travel. In step `j` the rank holds the queries of
/// rank `(rank - j) mod N`, starts shifting them on, and computes their partial attention
/// against its own keys and values. One all-to-all then returns every partial to the rank that
/// owns its queries, which merges the `N` partials of its own queries.
pub fn pass_q<A, C>(
    ops: &A,
    comm: &mut C,
    layouts: &RingLayouts,
    local: Local<'_, A::Tensor>,
    probe: &mut impl Probe,
) -> Result<Partial<A::Tensor>>
where
    A: AttentionOps,
    C: RingTransport<A::Tensor>,
{
    let Local { q, k, v } = local;
    let ctx = Ctx::new(ops, comm, layouts, local)?;
    let (rank, n) = (ctx.rank, ctx.n);
    let mut partials: Vec<Option<Partial<A::Tensor>>> = (0..n).map(|_| None).collect();
    ctx.rotate(comm, vec![q.clone()], Q_SHIFT, probe, |step, src, block| {
        let part = ops
            .partial(&block[0], &layouts.q[src], k, v, &layouts.kv[rank])
            .map_err(|e| ctx.compute(step, "partial attention", e))?;
        partials[src] = Some(part);
        Ok(())
    })?;
    // Every source rank was visited exactly once above.
    ctx.return_partials(ops, comm, partials, probe)
}

/// Pass-Q with the queries gathered by one all-to-all instead of `N - 1` ring shifts, on this
/// rank (batched decode above all: the messages are a few kilobytes, and each ring shift would
/// add a transfer's latency to the step).
///
/// Every rank sends its query block to every rank; each computes the partial attention of all
/// `N` blocks against its own keys and values; the same all-to-all as [`pass_q`] returns each
/// partial to the owner of its queries, which merges them. Same results as [`pass_q`]: only how
/// the queries travel differs.
pub fn gather_q<A, C>(
    ops: &A,
    comm: &mut C,
    layouts: &RingLayouts,
    local: Local<'_, A::Tensor>,
    probe: &mut impl Probe,
) -> Result<Partial<A::Tensor>>
where
    A: AttentionOps,
    C: RingTransport<A::Tensor>,
{
    let Local { q, k, v } = local;
    let ctx = Ctx::new(ops, comm, layouts, local)?;
    let (rank, n) = (ctx.rank, ctx.n);
    let blocks = ctx.gather(comm, vec![q.clone()], "all_to_all(queries)", probe)?;
    let mut partials: Vec<Option<Partial<A::Tensor>>> = (0..n).map(|_| None).collect();
    probe.enter(Phase::Compute, 0);
    for (src, block) in blocks.iter().enumerate() {
        let part = ops
            .partial(&block[0], &layouts.q[src], k, v, &layouts.kv[rank])
            .map_err(|e| ctx.compute(0, "partial attention", e))?;
        partials[src] = Some(part);
    }
    probe.exit(Phase::Compute, 0);
    ctx.return_partials(ops, comm, partials, probe)
}

/// Pass-KV with the keys and values gathered by one all-to-all instead of `N - 1` ring shifts,
/// on this rank (short prompts: every shift costs a transfer's latency, which a short step's
/// compute cannot hide; one collective pays it once).
///
/// Every rank sends its key/value block to every rank; each lays the `N` blocks end to end and
/// computes the attention of its queries against them in one call. Same results as
/// [`pass_kv`]; it holds all `N` blocks at once (twice, while concatenating), so it is for
/// prompts whose keys fit `N` times over.
pub fn gather_kv<A, C>(
    ops: &A,
    comm: &mut C,
    layouts: &RingLayouts,
    local: Local<'_, A::Tensor>,
    probe: &mut impl Probe,
) -> Result<Partial<A::Tensor>>
where
    A: AttentionOps,
    C: RingTransport<A::Tensor>,
{
    let Local { q, k, v } = local;
    let ctx = Ctx::new(ops, comm, layouts, local)?;
    let blocks = ctx.gather(comm, vec![k.clone(), v.clone()], "all_to_all(keys, values)", probe)?;
    // One attention over every block, laid end to end: one launch, no merge.
    probe.enter(Phase::Compute, 0);
    let ks: Vec<A::Tensor> = blocks.iter().map(|b| b[0].clone()).collect();
    let vs: Vec<A::Tensor> = blocks.iter().map(|b| b[1].clone()).collect();
    let k_all = ops.concat(&ks).map_err(|e| ctx.compute(0, "concat(keys)", e))?;
    let v_all = ops.concat(&vs).map_err(|e| ctx.compute(0, "concat(values)", e))?;
    let kv_all = cp_shard::Layout::concat(&layouts.kv);
    let out = ops
        .partial(q, &layouts.q[ctx.rank], &k_all, &v_all, &kv_all)
        .map_err(|e| ctx.compute(0, "partial attention", e))?;
    probe.exit(Phase::Compute, 0);
    Ok(out)
}

impl Ctx {
    /// Sends `parts` to every rank with one all-to-all (the wait phase) and returns what each
    /// rank sent, checked: one message per rank, each of `parts.len()` tensors.
    fn gather<T: Clone, C: RingTransport<T>>(
        &self,
        comm: &mut C,
        parts: Vec<T>,
        op: &'static str,
        probe: &mut impl Probe,
    ) -> Result<Vec<Vec<T>>> {
        let count = parts.len();
        probe.enter(Phase::Wait, 0);
        let blocks =
            comm.all_to_all((0..self.n).map(|_| parts.clone()).collect()).map_err(|e| self.transport(0, op, e))?;
        probe.exit(Phase::Wait, 0);
        self.check_parts(0, op, self.n, blocks.len())?;
        for block in &blocks {
            self.check_parts(0, op, count, block.len())?;
        }
        Ok(blocks)
    }

    /// Pass-Q's end: one all-to-all returns every partial (`partials[src]`: this rank's keys
    /// against the queries of rank `src`) to the rank that owns its queries, which merges the
    /// `N` partials of its own queries.
    fn return_partials<A, C>(
        &self,
        ops: &A,
        comm: &mut C,
        partials: Vec<Option<Partial<A::Tensor>>>,
        probe: &mut impl Probe,
    ) -> Result<Partial<A::Tensor>>
    where
        A: AttentionOps,
        C: RingTransport<A::Tensor>,
    {
        let (ctx, rank, n) = (self, self.rank, self.n);
        let outgoing: Vec<Vec<A::Tensor>> =
            partials.into_iter().map(|p| p.map(|p| vec![p.out, p.lse]).unwrap_or_default()).collect();
        probe.enter(Phase::AllToAll, n);
        let incoming = comm.all_to_all(outgoing).map_err(|e| ctx.transport(n, "all_to_all(partials)", e))?;
        probe.exit(Phase::AllToAll, n);
        if incoming.len() != n {
            return Err(RingError::Message { rank, step: n, op: "all_to_all", expected: n, actual: incoming.len() });
        }
        let mut mine = Vec::with_capacity(n);
        for msg in incoming {
            ctx.check_parts(n, "all_to_all(partials)", 2, msg.len())?;
            let mut parts = msg.into_iter();
            if let (Some(out), Some(lse)) = (parts.next(), parts.next()) {
                mine.push(Partial { out, lse });
            }
        }
        probe.enter(Phase::Merge, n);
        let merged = ops.merge_all(mine).map_err(|e| ctx.compute(n, "merge_all", e))?;
        probe.exit(Phase::Merge, n);
        Ok(merged)
    }
}

/// Error labels of a rotation: start, finish, and the shift as a whole.
type ShiftNames = [&'static str; 3];
const KV_SHIFT: ShiftNames = ["start_shift(kv)", "finish_shift(kv)", "shift(kv)"];
const Q_SHIFT: ShiftNames = ["start_shift(q)", "finish_shift(q)", "shift(q)"];

/// Checks shared by both algorithms, the ring rotation they share, and error construction
/// with the rank filled in.
struct Ctx {
    rank: usize,
    n: usize,
}

impl Ctx {
    /// Checks the world size against the layouts and the rows of the rank's own tensors.
    fn new<A: AttentionOps, C: RingTransport<A::Tensor>>(
        ops: &A,
        comm: &C,
        layouts: &RingLayouts,
        local: Local<'_, A::Tensor>,
    ) -> Result<Ctx> {
        let (rank, n) = (comm.rank(), comm.world_size());
        if n == 0 || n != layouts.world_size() || layouts.kv.len() != n || rank >= n {
            return Err(RingError::WorldSize { rank, transport: n, layouts: layouts.world_size() });
        }
        let ctx = Ctx { rank, n };
        ctx.check_rows(ops, local.q, "q", layouts.q_rows())?;
        ctx.check_rows(ops, local.k, "k", layouts.kv_rows())?;
        ctx.check_rows(ops, local.v, "v", layouts.kv_rows())?;
        Ok(ctx)
    }

    /// Passes `block` around the ring for `N` steps. In step `j` this rank holds the block
    /// that started on rank `src = (rank - j) mod N`; it starts shifting it to `rank + 1`,
    /// calls `visit(j, src, block)` while the transfer runs (the compute phase), then waits for
    /// the next block (the wait phase). `names` label the operations in errors.
    fn rotate<T, C: RingTransport<T>>(
        &self,
        comm: &mut C,
        mut block: Vec<T>,
        names: ShiftNames,
        probe: &mut impl Probe,
        mut visit: impl FnMut(usize, usize, &[T]) -> Result<()>,
    ) -> Result<()> {
        let [start_op, finish_op, shift_op] = names;
        let parts = block.len();
        for step in 0..self.n {
            let src = (self.rank + self.n - step) % self.n;
            let more = step + 1 < self.n;
            if more {
                comm.start_shift(&block).map_err(|e| self.transport(step, start_op, e))?;
            }
            probe.enter(Phase::Compute, step);
            visit(step, src, &block)?;
            probe.exit(Phase::Compute, step);
            if more {
                probe.enter(Phase::Wait, step);
                block = comm.finish_shift().map_err(|e| self.transport(step, finish_op, e))?;
                probe.exit(Phase::Wait, step);
                self.check_parts(step, shift_op, parts, block.len())?;
            }
        }
        Ok(())
    }

    fn check_rows<A: AttentionOps>(&self, ops: &A, t: &A::Tensor, what: &'static str, expected: usize) -> Result<()> {
        let actual = ops.rows(t).map_err(|e| self.compute(0, "rows", e))?;
        if actual != expected {
            return Err(RingError::Rows { rank: self.rank, what, expected, actual });
        }
        Ok(())
    }

    fn check_parts(&self, step: usize, op: &'static str, expected: usize, actual: usize) -> Result<()> {
        if actual != expected {
            return Err(RingError::Message { rank: self.rank, step, op, expected, actual });
        }
        Ok(())
    }

    fn compute(&self, step: usize, op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> RingError {
        RingError::Compute { rank: self.rank, step, op, source: Box::new(e) }
    }

    fn transport(&self, step: usize, op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> RingError {
        RingError::Transport { rank: self.rank, step, op, source: Box::new(e) }
    }
}
