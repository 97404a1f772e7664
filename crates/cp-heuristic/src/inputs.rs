//! Typed inputs: model shape, hardware (attention rate and link), world size, workload.

use crate::{HeuristicError, Result};

/// Attention head layout and element size of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Query heads `NH`.
    pub n_heads: usize,
    /// Key/value heads `NKV` (`NH` is a multiple of it).
    pub n_kv_heads: usize,
    /// Head dimension `DH`.
    pub head_dim: usize,
    /// Bytes per element `e` (2 for bf16).
    pub elem_bytes: usize,
}

impl ModelShape {
    /// Llama3-405B, the paper's model: 128 query heads, 8 KV heads, head dim 128, bf16.
    pub const LLAMA3_405B: ModelShape = ModelShape { n_heads: 128, n_kv_heads: 8, head_dim: 128, elem_bytes: 2 };
    /// Llama3-8B attention: 32 query heads, 8 KV heads, head dim 128, bf16 (our benchmark shape).
    pub const LLAMA3_8B: ModelShape = ModelShape { n_heads: 32, n_kv_heads: 8, head_dim: 128, elem_bytes: 2 };

    /// The model dimension `D = DH * NH`.
    pub fn model_dim(&self) -> usize {
        self.head_dim * self.n_heads
    }

    /// `NKV / NH` as a fraction.
    pub fn kv_ratio(&self) -> f64 {
        self.n_kv_heads as f64 / self.n_heads as f64
    }

    /// Checks that every count is non-zero and the head ratio is whole.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("elem_bytes", self.elem_bytes),
        ] {
            if v == 0 {
                return Err(HeuristicError::Zero { what });
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(HeuristicError::HeadRatio { n_heads: self.n_heads, n_kv_heads: self.n_kv_heads });
        }
        Ok(())
    }
}

/// An achieved attention compute rate per rank, with where the figure comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compute {
    /// Short name.
    pub name: &'static str,
    /// Achieved attention FLOP/s per rank (`C`).
    pub flops: f64,
    /// Where the figure comes from.
    pub source: &'static str,
}

impl Compute {
    /// H100 SXM, PyTorch 2.11 SDPA flash backend, causal bf16 prefill NH=32 NKV=8 DH=128 T=16384.
    pub const H100_SDPA_FLASH: Compute = Compute {
        name: "h100-sdpa-flash",
        flops: 341e12,
        source: "measured on the lent H100 SXM, 2026-11-25: PyTorch 2.11 SDPA flash, causal bf16 T=16384",
    };
    /// H100 SXM, PyTorch 2.11 SDPA cuDNN backend, same shape.
    pub const H100_SDPA_CUDNN: Compute = Compute {
        name: "h100-sdpa-cudnn",
        flops: 619e12,
        source: "measured on the lent H100 SXM, 2026-11-25: PyTorch 2.11 SDPA cuDNN, causal bf16 T=16384",
    };
    /// The paper's planning figure, used to reproduce the seed's demonstration.
    pub const PAPER_EXAMPLE: Compute = Compute {
        name: "paper-example",
        flops: 800e12,
        source: "plausible H100 figure used with the paper's Algorithm 5 demonstration",
    };
    /// A user-measured rate.
    pub const fn custom(flops: f64) -> Compute {
        Compute { name: "custom", flops, source: "given by the user" }
    }
}

/// A point-to-point link between ring neighbours, with where the figure comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Short name.
    pub name: &'static str,
    /// Bandwidth per direction in bytes/s (`BW`).
    pub bandwidth: f64,
    /// Where the figure comes from.
    pub source: &'static str,
    /// Fixed cost of one message (a ring shift or an all-to-all), seconds: the time of a tiny
    /// transfer, what a short ring step cannot hide. 0 in the presets (the paper's model has
    /// none); [`Link::with_latency`] sets a measured one.
    pub latency_s: f64,
    /// Whether a ring step's transfer runs while the attention kernel runs (the paper's model,
    /// and the presets). Not so, measured, for NCCL's transfers on rings of 3+ H100s under the
    /// persistent prefill kernel: they wait until it ends (`docs/benchmarks.md`, sessions 6 and
    /// 8); [`Link::without_overlap`] says so, and the cost model then adds every transfer.
    pub overlaps_compute: bool,
}

impl Link {
    /// NVLink 4 inside an H100 SXM node: 450 GB/s per direction (vendor datasheet, 900 GB/s total).
    pub const NVLINK4: Link = Link {
        name: "nvlink4",
        bandwidth: 450e9,
        source: "NVIDIA H100 SXM datasheet: 900 GB/s bidirectional",
        latency_s: 0.0,
        overlaps_compute: true,
    };
    /// 400 Gb/s RDMA (InfiniBand NDR or RoCE) between nodes: 50 GB/s.
    pub const RDMA_400G: Link = Link {
        name: "rdma-400g",
        bandwidth: 50e9,
        source: "400 Gb/s line rate",
        latency_s: 0.0,
        overlaps_compute: true,
    };
    /// 100 Gb/s TCP between nodes: 12.5 GB/s.
    pub const TCP_100G: Link = Link {
        name: "tcp-100g",
        bandwidth: 12.5e9,
        source: "100 Gb/s line rate",
        latency_s: 0.0,
        overlaps_compute: true,
    };
    /// A user-measured bandwidth.
    pub const fn custom(bandwidth: f64) -> Link {
        Link { name: "custom", bandwidth, source: "given by the user", latency_s: 0.0, overlaps_compute: true }
    }

    /// The same link with a fixed cost of `latency_s` seconds per message.
    pub const fn with_latency(self, latency_s: f64) -> Link {
        Link { latency_s, ..self }
    }

    /// The same link with transfers that do not run under the attention kernel: each ring
    /// step pays its compute and then its transfer.
    pub const fn without_overlap(self) -> Link {
        Link { overlaps_compute: false, ..self }
    }
}

/// The hardware a ring runs on: attention rate per rank and neighbour link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hardware {
    /// Attention compute per rank.
    pub compute: Compute,
    /// Link between ring neighbours.
    pub link: Link,
}

impl Hardware {
    /// The paper's planning numbers (C = 800 TFLOP/s, BW = 50 GB/s) that reproduce the seed.
    pub const PAPER_EXAMPLE: Hardware = Hardware { compute: Compute::PAPER_EXAMPLE, link: Link::RDMA_400G };

    /// All named presets, for listing in tools.
    pub fn presets() -> (Vec<Compute>, Vec<Link>) {
        (
            vec![Compute::H100_SDPA_FLASH, Compute::H100_SDPA_CUDNN, Compute::PAPER_EXAMPLE],
            vec![Link::NVLINK4, Link::RDMA_400G, Link::TCP_100G],
        )
    }

    fn validate(&self) -> Result<()> {
        for (what, value) in [("compute FLOP/s", self.compute.flops), ("link bandwidth", self.link.bandwidth)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(HeuristicError::NotPositive { what, value });
            }
        }
        let latency = self.link.latency_s;
        if !(latency.is_finite() && latency >= 0.0) {
            return Err(HeuristicError::NotPositive { what: "link latency (>= 0)", value: latency });
        }
        Ok(())
    }
}

/// New and cached tokens of the prefill (of one sequence, or a batch's totals: [`Workload::combine`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// New tokens `T` (not yet in the KV cache).
    pub new_tokens: usize,
    /// Tokens already cached `P`.
    pub cached_tokens: usize,
}

impl Workload {
    /// The workload with `total` tokens of context of which a fraction `miss_rate` is new (at
    /// least one token). `total` must be at least 1 and `miss_rate` in `(0, 1]`.
    pub fn from_miss_rate(total: usize, miss_rate: f64) -> Result<Workload> {
        if total == 0 {
            return Err(HeuristicError::Zero { what: "total tokens" });
        }
        if !(miss_rate > 0.0 && miss_rate <= 1.0) {
            return Err(HeuristicError::OutOfRange { what: "miss rate", range: "in (0, 1]", value: miss_rate });
        }
        let new_tokens = ((total as f64 * miss_rate).round() as usize).clamp(1, total);
        Ok(Workload { new_tokens, cached_tokens: total - new_tokens })
    }

    /// The workload of a batch: this one and `other` together (new and cached tokens summed).
    ///
    /// The cost model treats a batch by its totals: every sequence's new tokens are sharded over
    /// every rank, so per-step compute and message sizes add up. (Causal compute of a batch of
    /// short sequences is below that of one long one; the totals are what the messages carry.)
    ///
    /// ```
    /// use cp_heuristic::Workload;
    /// let batch = [(1000, 9000), (200, 800)]
    ///     .into_iter()
    ///     .try_fold(Workload::default(), |w, (new_tokens, cached_tokens)| {
    ///         w.combine(Workload { new_tokens, cached_tokens })
    ///     })?;
    /// assert_eq!(batch, Workload { new_tokens: 1200, cached_tokens: 9800 });
    /// assert!((batch.miss_rate() - 0.109).abs() < 1e-3);
    /// # Ok::<(), cp_heuristic::HeuristicError>(())
    /// ```
    pub fn combine(self, other: Workload) -> Result<Workload> {
        let sum = |a: usize, b: usize, what| a.checked_add(b).ok_or(HeuristicError::Overflow { what });
        Ok(Workload {
            new_tokens: sum(self.new_tokens, other.new_tokens, "new tokens of a batch")?,
            cached_tokens: sum(self.cached_tokens, other.cached_tokens, "cached tokens of a batch")?,
        })
    }

    /// `T / (T + P)` (in floating point: no overflow at any size).
    pub fn miss_rate(&self) -> f64 {
        self.new_tokens as f64 / (self.new_tokens as f64 + self.cached_tokens as f64)
    }
}

/// Everything a decision depends on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inputs {
    /// Model attention shape.
    pub model: ModelShape,
    /// Compute rate and link.
    pub hardware: Hardware,
    /// Ranks in the ring `N`.
    pub world_size: usize,
    /// New and cached tokens.
    pub workload: Workload,
}

impl Inputs {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.hardware.validate()?;
        if self.world_size == 0 {
            return Err(HeuristicError::Zero { what: "world_size" });
        }
        if self.workload.new_tokens == 0 {
            return Err(HeuristicError::Zero { what: "new_tokens" });
        }
        Ok(())
    }
}
