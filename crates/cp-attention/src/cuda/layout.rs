//! Layouts on the device: per-row (sequence, position) and per-tile summaries.

use std::sync::Arc;

use cp_shard::{Layout, Token};
use cudarc::driver::{CudaSlice, CudaStream};

use super::cuda_err;
use crate::Result;

/// Rows per tile summary (query blocks of 128 rows combine two on the device), and keys per
/// tile of the prefill kernel.
pub(crate) const TILE: usize = 64;

/// A [`Layout`] uploaded for the kernels: `seq[row]` (-1 for padding), `pos[row]`, tile
/// summaries `(seq or -1 none or -2 several, min pos, max pos, has padding)` of 64 rows, and,
/// for the decode kernel, each sequence's contiguous row range (if every sequence's rows are
/// contiguous).
#[derive(Debug)]
pub struct DeviceLayout {
    pub(crate) rows: usize,
    pub(crate) tokens: Vec<Option<Token>>,
    pub(crate) seq: CudaSlice<i32>,
    pub(crate) pos: CudaSlice<i32>,
    pub(crate) tiles: CudaSlice<i32>,
    pub(crate) seq_ranges: Option<std::collections::HashMap<usize, (usize, usize)>>,
}

/// Summaries of consecutive tiles of `tile` rows.
pub(crate) fn tile_summaries(tokens: &[Option<Token>], tile: usize) -> Vec<i32> {
    let mut out = Vec::new();
    for chunk in tokens.chunks(tile) {
        // A short last tile has rows past the end: they count as padding.
        let (mut seq, mut lo, mut hi, mut pad) = (-1i64, i64::MAX, i64::MIN, i32::from(chunk.len() < tile));
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

/// Each sequence's row range `(first, len)`, or `None` if some sequence's rows are not
/// contiguous (or interleaved with padding).
fn seq_ranges(tokens: &[Option<Token>]) -> Option<std::collections::HashMap<usize, (usize, usize)>> {
    let mut ranges: std::collections::HashMap<usize, (usize, usize)> = std::collections::HashMap::new();
    let mut last: Option<usize> = None;
    for (row, t) in tokens.iter().enumerate() {
        let Some(t) = t else {
            last = None;
            continue;
        };
        match ranges.get_mut(&t.seq) {
            Some(r) if last == Some(t.seq) && r.0 + r.1 == row => r.1 += 1,
            Some(_) => return None,
            None => {
                ranges.insert(t.seq, (row, 1));
            }
        }
        last = Some(t.seq);
    }
    Some(ranges)
}

impl DeviceLayout {
    /// Uploads `layout`. Positions must fit in `i32`.
    pub fn new(stream: &Arc<CudaStream>, layout: &Layout) -> Result<DeviceLayout> {
        let tokens: Vec<Option<Token>> = layout.rows().collect();
        if let Some(t) = tokens.iter().flatten().find(|t| t.pos > i32::MAX as usize || t.seq > i32::MAX as usize) {
            let (what, value) =
                if t.pos > i32::MAX as usize { ("a position", t.pos) } else { ("a sequence id", t.seq) };
            return Err(crate::AttentionError::TooLarge { what, value, max: i32::MAX as usize });
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
            tiles: up(&tile_summaries(&tokens, TILE))?,
            seq_ranges: seq_ranges(&tokens),
            tokens,
        })
    }

    /// Rows of the layout.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use cp_shard::Span;

    use super::*;

    fn tokens(layout: &Layout) -> Vec<Option<Token>> {
        layout.rows().collect()
    }

    #[test]
    fn tile_summaries_match_brute_force_and_flag_short_tiles() {
        let mut layout = Layout::new();
        layout.push_tokens(0, Span::new(10, 70)); // rows 0..70: tile 0 full, tile 1 starts
        layout.push_padding(3);
        layout.push_tokens(1, Span::new(0, 60)); // tile 1 mixes sequences and padding
        layout.push_tokens(1, Span::new(60, 10)); // 143 rows: tile 2 is short (15 rows)
        let t = tokens(&layout);
        let s = tile_summaries(&t, 64);
        assert_eq!(s.len(), 3 * 4);
        assert_eq!(&s[0..4], &[0, 10, 73, 0], "a full tile of one sequence");
        assert_eq!(&s[4..8], &[-2, 0, 79, 1], "several sequences and padding");
        // The regression: a short last tile must carry the padding flag, or the prefill kernel
        // treats it as fully visible and its missing rows enter the softmax.
        assert_eq!(&s[8..12], &[1, 55, 69, 1], "short last tile");
        // Exactly 64 rows: no padding flag.
        let mut exact = Layout::new();
        exact.push_tokens(2, Span::new(0, 64));
        assert_eq!(tile_summaries(&tokens(&exact), 64), vec![2, 0, 63, 0]);
        // No rows: one all-padding summary.
        assert_eq!(tile_summaries(&[], 64), vec![-1, 0, 0, 1]);
        let all_pad = vec![None; 10];
        assert_eq!(tile_summaries(&all_pad, 64), vec![-1, 0, 0, 1]);
    }

    #[test]
    fn decode_ranges_need_contiguous_sequences() {
        let mut layout = Layout::new();
        layout.push_tokens(0, Span::new(0, 5));
        layout.push_tokens(1, Span::new(0, 3));
        layout.push_padding(2);
        let ranges = seq_ranges(&tokens(&layout)).expect("contiguous");
        assert_eq!(ranges[&0], (0, 5));
        assert_eq!(ranges[&1], (5, 3));
        // Sequence 0 split by sequence 1: not contiguous.
        let mut split = Layout::new();
        split.push_tokens(0, Span::new(0, 2));
        split.push_tokens(1, Span::new(0, 2));
        split.push_tokens(0, Span::new(2, 2));
        assert!(seq_ranges(&tokens(&split)).is_none());
        // Split by padding: not contiguous either.
        let mut padded = Layout::new();
        padded.push_tokens(0, Span::new(0, 2));
        padded.push_padding(1);
        padded.push_tokens(0, Span::new(2, 2));
        assert!(seq_ranges(&tokens(&padded)).is_none());
    }
}
