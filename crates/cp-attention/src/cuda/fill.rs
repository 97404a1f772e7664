//! Inputs drawn on the device: rows of hashed values, the same on every rank and layout.

use cp_shard::Layout;
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::ops::CudaAttention;
use super::{GpuDType, GpuTensor, cuda_err};
use crate::{AttentionError, Result};

impl CudaAttention {
    /// A tensor `[rows, heads, head_dim]` for the rows of `layout`, drawn on the device: element
    /// `c` of the row of token `(seq, pos)` is [`crate::hashed_value`]`(seed, seq, pos, c)`
    /// rounded to `dtype`, the same on every rank and in every layout; padding rows hold `pad`
    /// (NaN, say, to check that padding never reaches a result).
    pub fn random_rows(
        &self,
        layout: &Layout,
        heads: usize,
        head_dim: usize,
        dtype: GpuDType,
        seed: u64,
        pad: f32,
    ) -> Result<GpuTensor> {
        let name = match dtype {
            GpuDType::Bf16 => "fill_rows_bf16",
            GpuDType::F16 => "fill_rows_f16",
            GpuDType::F32 => {
                return Err(AttentionError::GpuDtype {
                    what: "random_rows",
                    got: "F32".into(),
                    supported: "bf16 or f16",
                });
            }
        };
        let dl = self.device_layout(layout)?;
        let width = heads.checked_mul(head_dim).filter(|&w| w > 0 && w <= i32::MAX as usize).ok_or(
            AttentionError::TooLarge {
                what: "row width (heads x head dim, at least 1)",
                value: heads.saturating_mul(head_dim),
                max: i32::MAX as usize,
            },
        )?;
        let mut t = self.alloc(dtype, &[layout.len(), heads, head_dim])?;
        let pad_bits = u32::from(match dtype {
            GpuDType::Bf16 => half::bf16::from_f32(pad).to_bits(),
            _ => half::f16::from_f32(pad).to_bits(),
        });
        let (rows_l, width_i) = (layout.len() as i64, width as i32);
        let f = self.kernels.get(name)?;
        let cfg = LaunchConfig {
            grid_dim: ((layout.len() * width).div_ceil(256).clamp(1, 8 * 1024) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut *t).arg(&dl.seq).arg(&dl.pos).arg(&rows_l).arg(&width_i).arg(&seed).arg(&pad_bits);
        // SAFETY: `t` holds rows x width 16-bit values; `dl` has one (seq, pos) per row (a
        // padding entry for an empty layout, which the kernel does not read).
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch fill_rows"))?;
        Ok(t.into_tensor(dtype, vec![layout.len(), heads, head_dim]))
    }
}
