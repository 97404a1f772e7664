//! Choosing ring pass-KV or ring pass-Q for a context-parallel prefill.
//!
//! Both ring algorithms do the same attention work; they differ in what travels. Pass-KV sends
//! each rank's keys and values around the ring (`2 (T+P) D e NKV/NH` bytes in all), pass-Q sends
//! the queries (`T D e`) and then returns partial outputs to their owners with an all-to-all.
//! Which is faster depends on whether the transfers hide under the attention compute of a ring
//! step, and that depends on the new tokens `T`, the cached tokens `P`, the head counts, the
//! world size, the achieved attention rate `C` and the link bandwidth `BW`.
//!
//! [`choose`] applies one [`Rule`] — the paper's Algorithm 1, its refinement Algorithm 5, or the
//! empirical rule of Appendix D — and returns a [`Decision`] that shows its working: the miss
//! rate, both thresholds, and the [`CostModel`] prediction of per-step compute and
//! communication for each option. The empirical rule's published coefficients do not reproduce
//! the paper's own Table 4 (see [`EmpiricalRule::published`]); fit your own with
//! [`EmpiricalRule::fit`] from measured winners.
//!
//! ```
//! use cp_heuristic::{choose, Hardware, Inputs, ModelShape, Mode, Rule, Workload};
//!
//! let inputs = Inputs {
//!     model: ModelShape::LLAMA3_405B,
//!     hardware: Hardware::PAPER_EXAMPLE,
//!     world_size: 4,
//!     workload: Workload { new_tokens: 1280, cached_tokens: 126_720 },
//! };
//! let decision = choose(Rule::Alg5, &inputs)?;
//! assert_eq!(decision.mode, Mode::PassQ); // 1% miss rate: the queries are the small message
//! println!("{decision}");
//! # Ok::<(), cp_heuristic::HeuristicError>(())
//! ```

mod cost;
mod decide;
mod empirical;
mod error;
mod inputs;

pub use cost::{CostModel, ModeCost, cost_model};
pub use decide::{Decision, Mode, Rule, Thresholds, choose, thresholds};
pub use empirical::{EmpiricalRule, Observation};
pub use error::HeuristicError;
pub use inputs::{Compute, Hardware, Inputs, Link, ModelShape, Workload};

/// Result type of this crate.
pub type Result<T, E = HeuristicError> = std::result::Result<T, E>;
