//! The two traits the algorithms are written against, and the instrumentation hook.

use cp_shard::Layout;

/// The output of attention over a block of keys, with the log-sum-exp of each row and head.
///
/// `out` has shape `[rows, NH, DH]` and `lse` `[rows, NH]`; a row that sees no key has
/// `lse = -inf` and an output of zeros, a row that sees a non-finite score (a NaN query, a NaN
/// in a key it sees) `lse = NaN` and a NaN output, which every merge keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Partial<T> {
    /// Attention output.
    pub out: T,
    /// Log-sum-exp of the scaled scores.
    pub lse: T,
}

/// Computing partial attentions and merging them: what a ring step needs from a device.
pub trait AttentionOps {
    /// The tensor type of the device.
    type Tensor: Clone;
    /// The device's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Number of rows (tokens, the first dimension) of a tensor.
    fn rows(&self, t: &Self::Tensor) -> Result<usize, Self::Error>;

    /// Attention of `q` (rows laid out by `q_layout`) against `k`, `v` (rows laid out by
    /// `kv_layout`), masked causally by global position (see [`cp_shard::visible`]).
    fn partial(
        &self,
        q: &Self::Tensor,
        q_layout: &Layout,
        k: &Self::Tensor,
        v: &Self::Tensor,
        kv_layout: &Layout,
    ) -> Result<Partial<Self::Tensor>, Self::Error>;

    /// Folds `next` into the running pair `acc` (online form of Eq. 4).
    fn merge(
        &self,
        acc: Partial<Self::Tensor>,
        next: Partial<Self::Tensor>,
    ) -> Result<Partial<Self::Tensor>, Self::Error>;

    /// The partial attention of `q` against `k`, `v` folded into the running pair `acc` of the
    /// same queries: [`AttentionOps::partial`] then [`AttentionOps::merge`], which a device may
    /// do in one pass (the CUDA kernel folds in its epilogue, without writing the partial, but
    /// for the pieces of a launch's short last round).
    fn partial_into(
        &self,
        acc: Partial<Self::Tensor>,
        q: &Self::Tensor,
        q_layout: &Layout,
        k: &Self::Tensor,
        v: &Self::Tensor,
        kv_layout: &Layout,
    ) -> Result<Partial<Self::Tensor>, Self::Error> {
        let part = self.partial(q, q_layout, k, v, kv_layout)?;
        self.merge(acc, part)
    }

    /// Merges partials of the same queries over disjoint key blocks (N-way form of Eq. 4).
    fn merge_all(&self, parts: Vec<Partial<Self::Tensor>>) -> Result<Partial<Self::Tensor>, Self::Error>;

    /// The rows of `parts` one after the other (tensors of equal trailing shape and dtype).
    fn concat(&self, parts: &[Self::Tensor]) -> Result<Self::Tensor, Self::Error>;
}

/// Buffers a rank's KV cache keeps on a device, beyond what a ring step needs: allocated once
/// per growth, written in place, read through views. `cp-attention` implements it for the CPU
/// (candle tensors) and the GPU (device buffers); `cp-model`'s cache is written against it.
pub trait KvOps: AttentionOps {
    /// A buffer of `rows` rows shaped and typed like `like` past its first dimension. Its rows
    /// hold no token yet: their contents are unspecified (zeros on the CPU).
    fn alloc_rows(&self, like: &Self::Tensor, rows: usize) -> Result<Self::Tensor, Self::Error>;

    /// Copies rows `from..from + count` of `src` into rows `at..at + count` of `dst`, in place
    /// (every view of `dst` sees them). Shapes past the first dimension and dtypes must agree.
    fn copy_rows(
        &self,
        dst: &mut Self::Tensor,
        at: usize,
        src: &Self::Tensor,
        from: usize,
        count: usize,
    ) -> Result<(), Self::Error>;

    /// The first `rows` rows of `t`, sharing its memory (no copy).
    fn first_rows(&self, t: &Self::Tensor, rows: usize) -> Result<Self::Tensor, Self::Error>;
}

/// Exchanging messages (lists of tensors) with the other ranks of the ring.
pub trait RingTransport<T> {
    /// The transport's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// This rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Starts sending `msg` to `rank + 1` and receiving the matching message from `rank - 1`.
    /// The transport keeps what it needs of `msg` alive until [`RingTransport::finish_shift`].
    fn start_shift(&mut self, msg: &[T]) -> Result<(), Self::Error>;

    /// Completes the shift started last and returns the message from `rank - 1`.
    fn finish_shift(&mut self) -> Result<Vec<T>, Self::Error>;

    /// Sends `msgs[r]` to rank `r` (`msgs[rank]` stays here) and returns the message each rank
    /// sent to this one, indexed by source rank.
    fn all_to_all(&mut self, msgs: Vec<Vec<T>>) -> Result<Vec<Vec<T>>, Self::Error>;

    /// Waits (within the transport's timeout) until this rank's own transfers are complete —
    /// its sends and receives, and a shift started and not finished (a step that failed between
    /// the two) — so that the transport can start the next step. Transports whose peers pull
    /// (direct peer copies) may still read what this rank sent afterwards, on their own schedule:
    /// a caller writing a sent buffer in place writes only rows those messages held no token in
    /// (a KV cache appending past its rows). The default does nothing.
    fn drain(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A phase of a ring algorithm, for instrumentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// A partial attention and its merge into the running pair.
    Compute,
    /// Waiting for a ring shift to complete (the transfer not hidden under compute).
    Wait,
    /// Pass-Q's all-to-all.
    AllToAll,
    /// The final N-way merge of pass-Q.
    Merge,
}

/// Observes the phases of an algorithm on one rank: a CPU timer, or CUDA events recorded on
/// the streams. `()` observes nothing.
pub trait Probe {
    /// Called when `phase` of ring step `step` starts.
    fn enter(&mut self, phase: Phase, step: usize);
    /// Called when it ends.
    fn exit(&mut self, phase: Phase, step: usize);
}

impl Probe for () {
    fn enter(&mut self, _: Phase, _: usize) {}
    fn exit(&mut self, _: Phase, _: usize) {}
}

/// Forwards every method of `RingTransport` to the transport a pointer type points at.
macro_rules! forward_transport {
    ($(#[$doc:meta])* $ptr:ty) => {
        $(#[$doc])*
        impl<T, R: RingTransport<T> + ?Sized> RingTransport<T> for $ptr {
            type Error = R::Error;

            fn rank(&self) -> usize {
                (**self).rank()
            }

            fn world_size(&self) -> usize {
                (**self).world_size()
            }

            fn start_shift(&mut self, msg: &[T]) -> Result<(), Self::Error> {
                (**self).start_shift(msg)
            }

            fn finish_shift(&mut self) -> Result<Vec<T>, Self::Error> {
                (**self).finish_shift()
            }

            fn all_to_all(&mut self, msgs: Vec<Vec<T>>) -> Result<Vec<Vec<T>>, Self::Error> {
                (**self).all_to_all(msgs)
            }

            fn drain(&mut self) -> Result<(), Self::Error> {
                (**self).drain()
            }
        }
    };
}

forward_transport!(
    /// A boxed transport, for callers that choose the transport at run time.
    Box<R>
);
forward_transport!(
    /// A borrowed transport: a caller that owns its end of the ring (and uses it for more than
    /// attention) lends it for a while.
    &mut R
);
