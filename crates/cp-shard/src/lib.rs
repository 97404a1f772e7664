//! Load-balanced sharding of sequences over a ring of context-parallel ranks.
//!
//! Context parallelism splits the *sequence* of a prompt over `N` ranks. Causal attention makes
//! late tokens more expensive than early ones, so a naive contiguous split leaves the last rank
//! with most of the work. The paper's fix (arXiv:2411.01783, Section 3.5.1) cuts the new tokens of
//! a sequence into `2N` equal chunks and gives rank `i` chunks `i` and `2N-1-i`: every rank then
//! owns one cheap and one expensive chunk and does the same causal work.
//!
//! This crate is pure bookkeeping; it never touches tensor data. It answers three questions:
//!
//! - **Where does a token live?** [`PrefillShards`] shards the new tokens of one sequence;
//!   [`TurnPlan`] does it for a batch of sequences of different lengths ("fused varseq") on top of
//!   a persistent KV cache ([`CacheMap`]); [`DecodePlan`] places the new token of each sequence
//!   round-robin, shifting the start rank every iteration so caches grow evenly.
//! - **What is in each row of a rank's block?** A [`Layout`] lists, row by row, the global token
//!   (sequence id and position) or padding behind a rank's local tensor. Attention masks are
//!   derived from layouts by one rule, [`visible`], never from local indices.
//! - **How do per-rank results go back into global order?** [`gather_rows`] and
//!   [`scatter_rows`] move rows between per-rank buffers and per-sequence global buffers.
//!
//! Sequence lengths that are not a multiple of `2N` are padded: each chunk holds
//! `ceil(T / 2N)` rows, and rows past the end of the sequence are padding rows that see nothing
//! and are seen by nothing. No token is ever dropped.
//!
//! ```
//! use cp_shard::{PrefillShards, Span};
//!
//! // The seed's example: 64 tokens on 4 ranks.
//! let shards = PrefillShards::new(4, 0, 64)?;
//! assert_eq!(shards.spans(0)?, [Span::new(0, 8), Span::new(56, 8)]);
//! assert_eq!(shards.locate(57)?, (0, 9)); // rank 0, local row 9
//! # Ok::<(), cp_shard::ShardError>(())
//! ```

mod cache;
mod decode;
mod error;
mod layout;
mod prefill;
mod step;
mod turn;

pub use cache::CacheMap;
pub use decode::DecodePlan;
pub use error::ShardError;
pub use layout::{Layout, RingLayouts, Run, Span, Token, gather_rows, scatter_rows, visible};
pub use prefill::PrefillShards;
pub use step::StepPlan;
pub use turn::{NewTokens, TurnPlan};

/// Result type of this crate.
pub type Result<T, E = ShardError> = std::result::Result<T, E>;
