//! Layouts on the device: per-row (sequence, position) and per-tile summaries.

#[cfg(test)]
use cp_shard::Token;
use cp_shard::{Layout, Run};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{CudaAttention, cuda_err};
use crate::Result;

/// Rows per tile summary (query blocks of 128 rows combine two on the device), and keys per
/// tile of the prefill kernel.
pub(crate) const TILE: usize = 64;

/// A [`Layout`] uploaded for the kernels: `seq[row]` (-1 for padding), `pos[row]`, tile
/// summaries `(seq or -1 none or -2 several, min pos, max pos, has padding)` of 64 rows, and,
/// for the decode kernel, each sequence's contiguous row range (if every sequence's rows are
/// contiguous).
///
/// Built from the layout's runs, not its rows: the host uploads one entry per run and per tile,
/// and a kernel expands the runs into the per-row arrays on the device. A layout of a long cache
/// (a decode step's keys) costs the host O(runs + rows / 64), not O(rows).
#[derive(Debug)]
pub struct DeviceLayout {
    pub(crate) rows: usize,
    pub(crate) layout: Layout,
    pub(crate) seq: CudaSlice<i32>,
    pub(crate) pos: CudaSlice<i32>,
    pub(crate) tiles: CudaSlice<i32>,
    /// The same summaries on the host.
    pub(crate) summaries: Vec<i32>,
    pub(crate) seq_ranges: Option<std::collections::HashMap<usize, (usize, usize)>>,
    /// The query blocks heaviest first ([`heavy_first_blocks`]) — of 128 rows, then of 192 —
    /// each uploaded by the first prefill launch that takes this layout as its queries in blocks
    /// of that size.
    pub(crate) block_order: [std::sync::OnceLock<(Vec<i32>, CudaSlice<i32>)>; 2],
    /// Whether 192-row query blocks straddle more sequence boundaries than 128-row ones,
    /// counted by the first launch that asks ([`DeviceLayout::wide_blocks_straddle_more`]).
    wide_straddles_more: std::sync::OnceLock<bool>,
}

/// The blocks of `tiles_per_block` 64-row tiles (2: 128 rows, 3: 192) of a layout with 64-row
/// tile summaries `summaries`, heaviest first: by
/// descending last position among their real rows (a causal query block sees about that many
/// keys), later blocks first among equals, blocks of padding only last. The TMA prefill kernel's
/// persistent blocks take their work in this order, so that the longest items start first and
/// the last ones are short: longest-first for one causal sequence and for packed batches alike.
pub(crate) fn heavy_first_blocks(summaries: &[i32], tiles_per_block: usize) -> Vec<i32> {
    let (n64, per) = (summaries.len() / 4, tiles_per_block);
    let weight = |b: usize| {
        (per * b..(per * b + per).min(n64))
            .filter(|&t| summaries[4 * t] != -1)
            .map(|t| summaries[4 * t + 2] as i64)
            .max()
    };
    let mut order: Vec<usize> = (0..n64.div_ceil(per)).collect();
    order.sort_by_key(|&b| std::cmp::Reverse((weight(b).unwrap_or(-1), b)));
    order.into_iter().map(|b| b as i32).collect()
}

/// The summary of `count` consecutive 64-row summaries from `first` (those past the end count as
/// padding), as the kernels' `tiles_summary`.
fn combined(summaries: &[i32], first: usize, count: usize) -> [i32; 4] {
    let n = summaries.len() / 4;
    let at = |t: usize| {
        if t < n {
            [summaries[4 * t], summaries[4 * t + 1], summaries[4 * t + 2], summaries[4 * t + 3]]
        } else {
            [-1, 0, 0, 1]
        }
    };
    (first + 1..first + count).fold(at(first), |a, t| {
        let b = at(t);
        if a[0] == -1 {
            [b[0], b[1], b[2], 1]
        } else if b[0] == -1 {
            [a[0], a[1], a[2], 1]
        } else {
            [if a[0] == b[0] { a[0] } else { -2 }, a[1].min(b[1]), a[2].max(b[2]), a[3] | b[3]]
        }
    })
}

/// Whether some query of tile summary `q` may see some key of `k` (the kernels' `classify`
/// is not 0): both hold real rows, the keys start at or before the last query, and the
/// sequences are not two different single ones. The brute force `visible_key_tiles` is tested
/// against.
#[cfg(test)]
fn may_see(q: [i32; 4], k: [i32; 4]) -> bool {
    q[0] != -1 && k[0] != -1 && k[1] <= q[2] && !(q[0] >= 0 && k[0] >= 0 && q[0] != k[0])
}

/// For each query block of `q_per_block` 64-row tiles (summaries `q_summaries`), how many key
/// tiles of `k_per_tile` 64-row tiles (`k_summaries`) the TMA kernel visits for it (those
/// [`may_see`] says some of its queries see): its work. By sequence and first position, a
/// binary search per block.
pub(crate) fn visible_key_tiles(
    q_summaries: &[i32],
    q_per_block: usize,
    k_summaries: &[i32],
    k_per_tile: usize,
) -> Vec<usize> {
    let (nq, nk) = ((q_summaries.len() / 4).div_ceil(q_per_block), (k_summaries.len() / 4).div_ceil(k_per_tile));
    // First positions of the key tiles: of each single sequence, of the mixed ones, of all.
    let mut by_seq: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    let (mut mixed, mut all) = (Vec::new(), Vec::new());
    for t in 0..nk {
        let k = combined(k_summaries, t * k_per_tile, k_per_tile);
        match k[0] {
            -1 => continue,
            -2 => mixed.push(k[1]),
            s => by_seq.entry(s).or_default().push(k[1]),
        }
        all.push(k[1]);
    }
    for v in by_seq.values_mut().chain([&mut mixed, &mut all]) {
        v.sort_unstable();
    }
    let at_or_before = |v: &[i32], last: i32| v.partition_point(|&first| first <= last);
    (0..nq)
        .map(|b| {
            let q = combined(q_summaries, b * q_per_block, q_per_block);
            match q[0] {
                -1 => 0,
                -2 => at_or_before(&all, q[2]),
                s => by_seq.get(&s).map_or(0, |v| at_or_before(v, q[2])) + at_or_before(&mixed, q[2]),
            }
        })
        .collect()
}

/// Summaries of consecutive tiles of `tile` rows, from per-row tokens (the reference the
/// run-based [`tile_summaries_of_runs`] is tested against).
#[cfg(test)]
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

/// The same summaries from the layout's runs: each run touches the tiles it overlaps, with the
/// positions of its rows inside each (runs hold increasing positions).
pub(crate) fn tile_summaries_of_runs(layout: &Layout, tile: usize) -> Vec<i32> {
    let rows = layout.len();
    let n_tiles = rows.div_ceil(tile);
    if n_tiles == 0 {
        return vec![-1, 0, 0, 1];
    }
    // (seq: -1 none, -2 several; lo; hi; pad) per tile.
    let mut acc: Vec<(i64, i64, i64, i32)> = vec![(-1, i64::MAX, i64::MIN, 0); n_tiles];
    if !rows.is_multiple_of(tile) {
        acc[n_tiles - 1].3 = 1; // a short last tile: rows past the end are padding
    }
    let mut row = 0usize;
    for run in layout.runs() {
        let len = run.len();
        let mut at = row;
        while at < row + len {
            let t = at / tile;
            let end = ((t + 1) * tile).min(row + len);
            let a = &mut acc[t];
            match *run {
                Run::Padding { .. } => a.3 = 1,
                Run::Tokens { seq, span } => {
                    let (first, last) = (span.start + (at - row), span.start + (end - 1 - row));
                    a.0 = match a.0 {
                        -1 => seq as i64,
                        s if s == seq as i64 => s,
                        _ => -2,
                    };
                    a.1 = a.1.min(first as i64);
                    a.2 = a.2.max(last as i64);
                }
            }
            at = end;
        }
        row += len;
    }
    acc.into_iter()
        .flat_map(|(seq, lo, hi, pad)| {
            let (lo, hi) = if seq == -1 { (0, 0) } else { (lo, hi) };
            [seq as i32, lo as i32, hi as i32, pad]
        })
        .collect()
}

/// Each sequence's row range `(first, len)`, or `None` if some sequence's rows are not
/// contiguous (or interleaved with padding), from the runs.
pub(super) fn seq_ranges(layout: &Layout) -> Option<std::collections::HashMap<usize, (usize, usize)>> {
    let mut ranges: std::collections::HashMap<usize, (usize, usize)> = std::collections::HashMap::new();
    let mut last: Option<usize> = None;
    let mut row = 0;
    for run in layout.runs() {
        match *run {
            Run::Padding { .. } => last = None,
            Run::Tokens { seq, span } => {
                match ranges.get_mut(&seq) {
                    Some(r) if last == Some(seq) && r.0 + r.1 == row => r.1 += span.len,
                    Some(_) => return None,
                    None => {
                        ranges.insert(seq, (row, span.len));
                    }
                }
                last = Some(seq);
            }
        }
        row += run.len();
    }
    Some(ranges)
}

impl DeviceLayout {
    /// Uploads `layout` for the kernels of `ops` (on its stream). Positions, sequence ids and
    /// rows must fit in `i32`.
    pub fn new(ops: &CudaAttention, layout: &Layout) -> Result<DeviceLayout> {
        let stream = ops.stream();
        let too_large = |what, value: usize| crate::AttentionError::TooLarge { what, value, max: i32::MAX as usize };
        if layout.len() > i32::MAX as usize {
            return Err(too_large("a layout's rows", layout.len()));
        }
        // (first row, seq or -1, first position, rows) per run.
        let mut runs: Vec<i32> = Vec::with_capacity(4 * layout.runs().len());
        let mut row = 0usize;
        for run in layout.runs() {
            let (seq, pos) = match *run {
                Run::Padding { .. } => (-1, 0),
                Run::Tokens { seq, span } => {
                    if span.end() - 1 > i32::MAX as usize {
                        return Err(too_large("a position", span.end() - 1));
                    }
                    if seq > i32::MAX as usize {
                        return Err(too_large("a sequence id", seq));
                    }
                    (seq as i32, span.start as i32)
                }
            };
            runs.extend([row as i32, seq, pos, run.len() as i32]);
            row += run.len();
        }
        let up = |v: &[i32]| stream.clone_htod(v).map_err(cuda_err("cuMemcpyHtoD(layout)"));
        let rows = layout.len();
        let (seq, pos) = if rows == 0 {
            (up(&[-1])?, up(&[0])?)
        } else {
            // SAFETY: the expansion below writes every row (the runs cover 0..rows).
            let mut seq = unsafe { stream.alloc::<i32>(rows) }.map_err(cuda_err("cuMemAlloc(layout)"))?;
            let mut pos = unsafe { stream.alloc::<i32>(rows) }.map_err(cuda_err("cuMemAlloc(layout)"))?;
            let d_runs = up(&runs)?;
            let n_runs = (runs.len() / 4) as i32;
            let f = ops.kernels.get("expand_runs")?;
            let cfg =
                LaunchConfig { grid_dim: (n_runs.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let mut b = stream.launch_builder(f);
            b.arg(&d_runs).arg(&n_runs).arg(&mut seq).arg(&mut pos);
            // SAFETY: `runs` holds `n_runs` entries of 4 i32 whose row ranges tile 0..rows, the
            // length of `seq` and `pos`.
            unsafe { b.launch(cfg) }.map_err(cuda_err("launch expand_runs"))?;
            (seq, pos)
        };
        let summaries = tile_summaries_of_runs(layout, TILE);
        Ok(DeviceLayout {
            rows,
            seq,
            pos,
            tiles: up(&summaries)?,
            summaries,
            seq_ranges: seq_ranges(layout),
            layout: layout.clone(),
            block_order: Default::default(),
            wide_straddles_more: Default::default(),
        })
    }

    /// Rows of the layout.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether, as queries, these rows in 192-row blocks straddle more sequence boundaries than
    /// in 128-row blocks ([`straddling_blocks`]); counted once per layout, as the block orders
    /// are, not on every launch.
    pub(crate) fn wide_blocks_straddle_more(&self) -> bool {
        *self
            .wide_straddles_more
            .get_or_init(|| straddling_blocks(&self.summaries, 3) > straddling_blocks(&self.summaries, 2))
    }
}

/// How many query blocks of `tiles_per_block` 64-row tiles (64-row summaries `summaries`) hold
/// rows of several sequences.
pub(crate) fn straddling_blocks(summaries: &[i32], tiles_per_block: usize) -> usize {
    let n = (summaries.len() / 4).div_ceil(tiles_per_block);
    (0..n).filter(|&b| combined(summaries, b * tiles_per_block, tiles_per_block)[0] == -2).count()
}

#[cfg(test)]
mod tests {
    use cp_shard::Span;

    use super::*;

    fn tokens(layout: &Layout) -> Vec<Option<Token>> {
        layout.rows().collect()
    }

    #[test]
    fn visible_key_tiles_count_what_the_kernel_classifies_visible() {
        // Brute force with the kernel's rule on every (query block, key tile) pair, over layouts
        // of packed sequences, padding, and a rank's two chunks of one sequence.
        let layouts = [
            Layout::from_runs(&[(Some(0), 0, 300)]),
            Layout::from_runs(&[(Some(0), 300, 200), (None, 0, 5), (Some(1), 50, 20), (Some(3), 10, 10)]),
            Layout::from_runs(&[(Some(0), 0, 300), (Some(1), 0, 40)]),
            Layout::from_runs(&[(Some(0), 0, 150), (None, 0, 10), (Some(0), 600, 160)]),
            Layout::from_runs(&[(Some(0), 300, 150)]),
            Layout::from_runs(&[(Some(2), 0, 64), (Some(0), 900, 70), (None, 0, 100)]),
            Layout::new(),
        ];
        for ql in &layouts {
            for kl in &layouts {
                let (qs, ks) = (tile_summaries_of_runs(ql, TILE), tile_summaries_of_runs(kl, TILE));
                for (per_block, per_tile) in [(2, 2), (3, 2), (1, 1)] {
                    let got = visible_key_tiles(&qs, per_block, &ks, per_tile);
                    let nq = (qs.len() / 4).div_ceil(per_block);
                    let nk = (ks.len() / 4).div_ceil(per_tile);
                    let want: Vec<usize> = (0..nq)
                        .map(|b| {
                            let q = combined(&qs, b * per_block, per_block);
                            (0..nk).filter(|&t| may_see(q, combined(&ks, t * per_tile, per_tile))).count()
                        })
                        .collect();
                    assert_eq!(got, want, "{ql:?} against {kl:?}, {per_block}/{per_tile}");
                }
            }
        }
        // A rank's first chunk (positions 0..150) sees none of keys 300..450; its second all.
        let q = tile_summaries_of_runs(&layouts[3], TILE);
        let k = tile_summaries_of_runs(&layouts[4], TILE);
        assert_eq!(visible_key_tiles(&q, 2, &k, 2), vec![0, 2, 2]);
    }

    #[test]
    fn straddling_blocks_are_counted_per_block_size() {
        // Four packed sequences of 4096 rows: 192-row blocks 21 and 42 hold the end of one
        // sequence and the start of the next (12288 = 64 x 192 falls between blocks); 128-row
        // blocks never straddle. The prefill at head dim 64 then takes 128-row blocks.
        let mut packed = Layout::new();
        for seq in 0..4 {
            packed.push_tokens(seq, Span::new(0, 4096));
        }
        let s = tile_summaries_of_runs(&packed, TILE);
        assert_eq!((straddling_blocks(&s, 3), straddling_blocks(&s, 2)), (2, 0));
        // Sequences of 4000 rows: every boundary falls inside a block of either size.
        let mut odd = Layout::new();
        for seq in 0..4 {
            odd.push_tokens(seq, Span::new(0, 4000));
        }
        let s = tile_summaries_of_runs(&odd, TILE);
        assert_eq!((straddling_blocks(&s, 3), straddling_blocks(&s, 2)), (3, 3));
        // One sequence, or padding after it: none.
        let mut one = Layout::new();
        one.push_tokens(7, Span::new(100, 5000));
        one.push_padding(77);
        let s = tile_summaries_of_runs(&one, TILE);
        assert_eq!((straddling_blocks(&s, 3), straddling_blocks(&s, 2)), (0, 0));
    }

    #[test]
    fn query_blocks_come_heaviest_first() {
        // One causal sequence of 300 rows: the last block sees the most keys.
        let mut one = Layout::new();
        one.push_tokens(0, Span::new(0, 300));
        assert_eq!(heavy_first_blocks(&tile_summaries_of_runs(&one, TILE), 2), vec![2, 1, 0]);
        // In 192-row blocks: two, the second (rows 192..300) heavier.
        assert_eq!(heavy_first_blocks(&tile_summaries_of_runs(&one, TILE), 3), vec![1, 0]);
        // A packed batch (256 rows of sequence 0, then 128 of sequence 1 after a cached prefix
        // of 1000) and a block of padding only: sequence 1's block first, padding last.
        let mut packed = Layout::new();
        packed.push_tokens(0, Span::new(0, 256));
        packed.push_tokens(1, Span::new(1000, 128));
        packed.push_padding(130);
        assert_eq!(heavy_first_blocks(&tile_summaries_of_runs(&packed, TILE), 2), vec![2, 1, 0, 4, 3]);
        // 192-row blocks: [0, 192) of sequence 0; [192, 384) ends sequence 0 and holds sequence
        // 1 (last position 1127); [384, 514) is padding only: last.
        assert_eq!(heavy_first_blocks(&tile_summaries_of_runs(&packed, TILE), 3), vec![1, 0, 2]);
        // Equal weights (every block ends at the same position in its sequence): later first.
        let mut equal = Layout::new();
        equal.push_tokens(0, Span::new(0, 128));
        equal.push_tokens(1, Span::new(0, 128));
        assert_eq!(heavy_first_blocks(&tile_summaries_of_runs(&equal, TILE), 2), vec![1, 0]);
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
        assert_eq!(s, tile_summaries_of_runs(&layout, 64));
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
        let ranges = seq_ranges(&layout).expect("contiguous");
        assert_eq!(ranges[&0], (0, 5));
        assert_eq!(ranges[&1], (5, 3));
        // Sequence 0 split by sequence 1: not contiguous.
        let mut split = Layout::new();
        split.push_tokens(0, Span::new(0, 2));
        split.push_tokens(1, Span::new(0, 2));
        split.push_tokens(0, Span::new(2, 2));
        assert!(seq_ranges(&split).is_none());
        // Split by padding: not contiguous either.
        let mut padded = Layout::new();
        padded.push_tokens(0, Span::new(0, 2));
        padded.push_padding(1);
        padded.push_tokens(0, Span::new(2, 2));
        assert!(seq_ranges(&padded).is_none());
    }

    #[test]
    fn run_summaries_equal_row_summaries() {
        // Handmade layouts and a deterministic spread of random ones: runs of tokens of a few
        // sequences at scattered positions, padding between, lengths around the tile size.
        let mut layouts = Vec::new();
        let mut l = Layout::new();
        l.push_tokens(0, Span::new(10, 70));
        l.push_padding(3);
        l.push_tokens(1, Span::new(0, 60));
        l.push_tokens(1, Span::new(60, 10));
        layouts.push(l);
        layouts.push(Layout::new());
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m) as usize
        };
        for _ in 0..200 {
            let mut l = Layout::new();
            for _ in 0..next(12) {
                match next(4) {
                    0 => l.push_padding(next(150)),
                    _ => l.push_tokens(next(3), Span::new(next(1000), next(150))),
                }
            }
            layouts.push(l);
        }
        for l in &layouts {
            assert_eq!(tile_summaries_of_runs(l, 64), tile_summaries(&tokens(l), 64), "{l:?}");
            assert_eq!(tile_summaries_of_runs(l, 16), tile_summaries(&tokens(l), 16), "{l:?}");
        }
    }
}
