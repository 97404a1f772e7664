//! The kernel table: every entry point of the compiled module with its launch shared memory,
//! the one list that loading uses and that CI checks the compiled module against.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;

use super::{cubin, cuda_err};
use crate::{AttentionError, Result};

/// Dynamic shared memory of the `mma.sync` prefill kernel with `warps` warps of `m_tiles`
/// 16-row m-tiles: the Q tile and two K and two V tiles of 64 rows.
pub(super) fn flash_smem(head_dim: usize, warps: usize, m_tiles: usize) -> usize {
    (16 * warps * m_tiles + 4 * super::layout::TILE) * head_dim * 2
}

/// Dynamic shared memory of the wgmma prefill kernel: a 128-row Q tile and three stages of
/// 128-row K and V tiles, 1024 bytes of alignment slack and one scratch word.
pub(super) fn flash_wg_smem(head_dim: usize) -> usize {
    1024 + (128 + 3 * 2 * 128) * head_dim * 2 + 16
}

/// Dynamic shared memory of the TMA prefill kernel: a Q tile of `block_rows` rows (128, or 192
/// with three consumer warpgroups) and three stages of 128-row K and V tiles, 1024 bytes of
/// alignment slack, and 256 bytes for the mbarriers, each stage's tile index, mask kind and
/// first key position, the current work item and a scratch word.
pub(super) fn flash_tma_smem(head_dim: usize, block_rows: usize) -> usize {
    1024 + (block_rows + 3 * 2 * 128) * head_dim * 2 + 256
}

/// Dynamic shared memory of the tensor-core decode kernel: 4 warps x 3 stages of 16 keys' K and V.
pub(super) fn decode_mma_smem(head_dim: usize) -> usize {
    4 * 3 * 2 * 16 * head_dim * 2
}

/// The `mma.sync` prefill kernel variants: (warps, 16-row m-tiles per warp, name suffix).
pub(super) const FLASH_VARIANTS: [(usize, usize, &str); 3] = [(8, 1, "w8"), (4, 1, "w4"), (4, 2, "w4m2")];

/// One kernel of the module: its entry point and the dynamic shared memory it is launched with
/// (0: the 48 KB default suffices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// The `extern "C"` entry point.
    pub name: String,
    /// Bytes of dynamic shared memory.
    pub dynamic_smem: usize,
}

/// Every kernel the GPU path launches — the one list that loading uses and that CI checks the
/// compiled module against; the wgmma ones only where `wgmma` (sm_90a).
pub fn kernel_table(wgmma: bool) -> Vec<KernelEntry> {
    let entry = |name: String, dynamic_smem: usize| KernelEntry { name, dynamic_smem };
    let mut all = Vec::new();
    for d in [64, 128] {
        for t in ["bf16", "f16"] {
            for o in ["f32", "b16"] {
                all.extend(
                    FLASH_VARIANTS
                        .map(|(w, m, suffix)| entry(format!("flash_fwd_d{d}_{t}_{o}_{suffix}"), flash_smem(d, w, m))),
                );
                if wgmma {
                    all.push(entry(format!("flash_fwd_d{d}_{t}_{o}_wg"), flash_wg_smem(d)));
                    for pingpong in ["", "_np"] {
                        all.push(entry(format!("flash_fwd_d{d}_{t}_{o}_tma{pingpong}"), flash_tma_smem(d, 128)));
                        if d == 64 {
                            all.push(entry(format!("flash_fwd_d{d}_{t}_{o}_tma3{pingpong}"), flash_tma_smem(d, 192)));
                        }
                    }
                }
            }
            if wgmma {
                // The fold into a running f32 partial (`CudaAttention::flash_into`) and the tail
                // split's pieces (v6.7).
                for (kind, pingpong) in [("acc", ""), ("acc", "_np"), ("tail", ""), ("tail", "_np")] {
                    all.push(entry(format!("flash_fwd_d{d}_{t}_{kind}_tma{pingpong}"), flash_tma_smem(d, 128)));
                    if d == 64 {
                        all.push(entry(format!("flash_fwd_d{d}_{t}_{kind}_tma3{pingpong}"), flash_tma_smem(d, 192)));
                    }
                }
            }
            all.extend([1, 4, 8].map(|g| entry(format!("decode_d{d}_{t}_g{g}"), 0)));
            all.push(entry(format!("decode_mma_d{d}_{t}"), decode_mma_smem(d)));
        }
    }
    if wgmma {
        all.push(entry("wg_selftest".into(), flash_wg_smem(128)));
        all.extend(["f32", "bf16", "f16", "acc"].map(|t| entry(format!("merge_tail_{t}"), 0)));
    }
    for family in ["merge_fold", "merge_all", "merge_strided"] {
        all.extend(["f32", "bf16", "f16"].map(|t| entry(format!("{family}_{t}"), 0)));
    }
    all.extend(["fill_rows_bf16", "fill_rows_f16", "expand_runs"].map(|n| entry(n.into(), 0)));
    all
}

/// The compiled module's functions by name.
pub(super) struct Kernels {
    functions: HashMap<String, CudaFunction>,
    /// Whether the wgmma kernels were built (sm_90a).
    pub(super) wgmma: bool,
}

impl Kernels {
    /// Loads the kernels compiled for `arch`; the wgmma ones only where `wgmma` (sm_90a).
    pub(super) fn load(ctx: &Arc<CudaContext>, arch: &str, wgmma: bool) -> Result<Kernels> {
        let module = ctx.load_module(Ptx::from_binary(cubin(arch)?)).map_err(cuda_err("cuModuleLoadData"))?;
        let mut functions = HashMap::new();
        for k in kernel_table(wgmma) {
            let f = module.load_function(&k.name).map_err(cuda_err("cuModuleGetFunction"))?;
            if k.dynamic_smem > 0 {
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    k.dynamic_smem as i32,
                )
                .map_err(cuda_err("cuFuncSetAttribute(max dynamic shared memory)"))?;
            }
            functions.insert(k.name, f);
        }
        Ok(Kernels { functions, wgmma })
    }

    pub(super) fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| AttentionError::KernelMissing { name: name.to_string() })
    }
}
