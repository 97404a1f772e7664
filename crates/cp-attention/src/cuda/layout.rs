//! Layouts on the device: per-row (sequence, position) and per-tile summaries.

use std::sync::Arc;

use cp_shard::{Layout, Token};
use cudarc::driver::{CudaSlice, CudaStream};

use super::cuda_err;
use crate::Result;

/// Query rows per block of the prefill kernel, and keys per tile.
pub(crate) const Q_TILE: usize = 128;
pub(crate) const K_TILE: usize = 64;

/// A [`Layout`] uploaded for the kernels: `seq[row]` (-1 for padding), `pos[row]`, and tile
/// summaries `(seq or -1 none or -2 several, min pos, max pos, has padding)` for query tiles
/// of 128 rows and key tiles of 64 rows.
#[derive(Debug)]
pub struct DeviceLayout {
    pub(crate) rows: usize,
    pub(crate) tokens: Vec<Option<Token>>,
    pub(crate) seq: CudaSlice<i32>,
    pub(crate) pos: CudaSlice<i32>,
    pub(crate) q_tiles: CudaSlice<i32>,
    pub(crate) k_tiles: CudaSlice<i32>,
}

/// Summaries of consecutive tiles of `tile` rows.
pub(crate) fn tile_summaries(tokens: &[Option<Token>], tile: usize) -> Vec<i32> {
    let mut out = Vec::new();
    for chunk in tokens.chunks(tile) {
        let (mut seq, mut lo, mut hi, mut pad) = (-1i64, i64::MAX, i64::MIN, 0);
        for t in chunk {
            match t {
                None => pad = 1,
                Some(t) => {
                    seq = match seq {
                        -1 => t.seq as i64,
                        s if s == t.seq as i64 => s,
                        _ => -2,
                    };
                    lo = lo.min(t.pos as i64);
                    hi = hi.max(t.pos as i64);
                }
            }
        }
        if seq == -1 {
            (lo, hi) = (0, 0);
        }
        out.extend([seq as i32, lo as i32, hi as i32, pad]);
    }
    if out.is_empty() {
        out.extend([-1, 0, 0, 1]);
    }
    out
}

impl DeviceLayout {
    /// Uploads `layout`. Positions must fit in `i32`.
    pub fn new(stream: &Arc<CudaStream>, layout: &Layout) -> Result<DeviceLayout> {
        let tokens: Vec<Option<Token>> = layout.rows().collect();
        if let Some(t) = tokens.iter().flatten().find(|t| t.pos > i32::MAX as usize || t.seq > i32::MAX as usize) {
            return Err(crate::AttentionError::Unsupported(format!(
                "position {} of sequence {} exceeds i32",
                t.pos, t.seq
            )));
        }
        let mut seq: Vec<i32> = tokens.iter().map(|t| t.map_or(-1, |t| t.seq as i32)).collect();
        let mut pos: Vec<i32> = tokens.iter().map(|t| t.map_or(0, |t| t.pos as i32)).collect();
        if seq.is_empty() {
            seq.push(-1);
            pos.push(0);
        }
        let up = |v: &[i32]| stream.clone_htod(v).map_err(cuda_err("cuMemcpyHtoD(layout)"));
        Ok(DeviceLayout {
            rows: layout.len(),
            seq: up(&seq)?,
            pos: up(&pos)?,
            q_tiles: up(&tile_summaries(&tokens, Q_TILE))?,
            k_tiles: up(&tile_summaries(&tokens, K_TILE))?,
            tokens,
        })
    }

    /// Rows of the layout.
    pub fn rows(&self) -> usize {
        self.rows
    }
}
