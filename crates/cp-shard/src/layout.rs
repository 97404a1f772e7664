//! Row layouts: which global token each local row of a rank's block holds, and the one
//! visibility rule that every attention mask is derived from.

use crate::{Result, ShardError};

/// A half-open range of global positions `[start, start + len)` within one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    /// First global position.
    pub start: usize,
    /// Number of positions.
    pub len: usize,
}

impl Span {
    /// The span `[start, start + len)`.
    pub const fn new(start: usize, len: usize) -> Span {
        Span { start, len }
    }

    /// One past the last position (saturating at `usize::MAX`: a span is only ever built from
    /// checked sizes by the plans, but its fields are public).
    pub const fn end(&self) -> usize {
        self.start.saturating_add(self.len)
    }

    /// Whether `pos` lies in the span.
    pub const fn contains(&self, pos: usize) -> bool {
        pos >= self.start && pos < self.end()
    }

    /// Whether the span holds no position.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A real token: a position within one sequence of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token {
    /// Sequence (batch) id.
    pub seq: usize,
    /// Global position within the sequence.
    pub pos: usize,
}

/// The causal rule by global position: a query sees a key of the same sequence at the same or
/// an earlier position. Padding rows (`None`) see nothing and are seen by nothing.
pub fn visible(query: Option<Token>, key: Option<Token>) -> bool {
    match (query, key) {
        (Some(q), Some(k)) => q.seq == k.seq && k.pos <= q.pos,
        _ => false,
    }
}

/// A run of consecutive local rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Run {
    /// Rows holding positions `span` of sequence `seq`, in increasing order.
    Tokens {
        /// The sequence.
        seq: usize,
        /// Its positions, one per row.
        span: Span,
    },
    /// Rows holding no token (message padding).
    Padding {
        /// Rows.
        len: usize,
    },
}

impl Run {
    /// Number of rows in the run.
    pub const fn len(&self) -> usize {
        match self {
            Run::Tokens { span, .. } => span.len,
            Run::Padding { len } => *len,
        }
    }

    /// Whether the run has no rows.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tokens behind the rows of one rank's block, in row order.
///
/// Runs are kept compact: adjacent runs of consecutive positions of one sequence, and adjacent
/// padding, are fused, and empty runs are dropped. GPU kernels receive runs rather than one
/// position per row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Layout {
    runs: Vec<Run>,
    rows: usize,
}

impl Layout {
    /// An empty layout.
    pub fn new() -> Layout {
        Layout::default()
    }

    /// A layout from `(sequence, first position, rows)` runs, `None` for padding rows (their
    /// first position is ignored): a shorthand for tests and examples.
    pub fn from_runs(runs: &[(Option<usize>, usize, usize)]) -> Layout {
        let mut layout = Layout::new();
        for &(seq, start, len) in runs {
            match seq {
                Some(seq) => layout.push_tokens(seq, Span::new(start, len)),
                None => layout.push_padding(len),
            }
        }
        layout
    }

    /// The rows of `parts` one after the other (the layout of their tensors concatenated).
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Layout>) -> Layout {
        parts.into_iter().flat_map(|part| part.runs().iter().copied()).collect()
    }

    /// Appends the rows of `run` (fused with the last run where they continue it).
    pub fn push_run(&mut self, run: Run) {
        match run {
            Run::Tokens { seq, span } => self.push_tokens(seq, span),
            Run::Padding { len } => self.push_padding(len),
        }
    }

    /// Appends the rows of `span` of sequence `seq`.
    pub fn push_tokens(&mut self, seq: usize, span: Span) {
        if span.is_empty() {
            return;
        }
        // Row counts saturate instead of overflowing: a layout that long describes no tensor
        // that can exist, and whatever consumes it checks its rows against real buffers.
        self.rows = self.rows.saturating_add(span.len);
        if let Some(Run::Tokens { seq: last_seq, span: last }) = self.runs.last_mut()
            && *last_seq == seq
            && last.end() == span.start
        {
            last.len = last.len.saturating_add(span.len);
            return;
        }
        self.runs.push(Run::Tokens { seq, span });
    }

    /// Appends `len` padding rows.
    pub fn push_padding(&mut self, len: usize) {
        if len == 0 {
            return;
        }
        self.rows = self.rows.saturating_add(len);
        if let Some(Run::Padding { len: last }) = self.runs.last_mut() {
            *last = last.saturating_add(len);
            return;
        }
        self.runs.push(Run::Padding { len });
    }

    /// Pads with padding rows up to `rows` rows; does nothing if the layout is already as long.
    pub fn pad_to(&mut self, rows: usize) {
        self.push_padding(rows.saturating_sub(self.rows));
    }

    /// Number of rows, padding included.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the layout has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Number of rows that hold a real token.
    pub fn token_count(&self) -> usize {
        self.runs
            .iter()
            .map(|run| match run {
                Run::Tokens { span, .. } => span.len,
                Run::Padding { .. } => 0,
            })
            .fold(0usize, usize::saturating_add)
    }

    /// The runs, in row order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The token of every row, in row order (`None` for padding).
    pub fn rows(&self) -> impl Iterator<Item = Option<Token>> + '_ {
        self.runs.iter().flat_map(|run| {
            let (seq, span, pad) = match *run {
                Run::Tokens { seq, span } => (seq, span, 0),
                Run::Padding { len } => (0, Span::new(0, 0), len),
            };
            (span.start..span.end()).map(move |pos| Some(Token { seq, pos })).chain(std::iter::repeat_n(None, pad))
        })
    }

    /// Checks that a caller's rows — the (sequence, position) each row of its tensor holds, as
    /// used for RoPE, say, and `None` for a padding row — are the layout's rows in the layout's
    /// order. The attention computes from the layout alone, so rows in another order would give
    /// a wrong answer without any error; this makes the mismatch an error naming the first row
    /// that differs.
    ///
    /// ```
    /// use cp_shard::{Layout, ShardError, Span, Token};
    /// let mut layout = Layout::new();
    /// layout.push_tokens(0, Span::new(0, 2));
    /// layout.push_padding(1);
    /// let mine = [Some(Token { seq: 0, pos: 0 }), Some(Token { seq: 0, pos: 1 }), None];
    /// assert!(layout.check_rows(mine).is_ok());
    /// let swapped = [Some(Token { seq: 0, pos: 1 }), Some(Token { seq: 0, pos: 0 }), None];
    /// assert!(matches!(layout.check_rows(swapped), Err(ShardError::RowOrder { row: 0, .. })));
    /// ```
    pub fn check_rows(&self, rows: impl IntoIterator<Item = Option<Token>>) -> Result<()> {
        let mut theirs = rows.into_iter();
        for (row, expected) in self.rows().enumerate() {
            let actual = theirs.next().ok_or(ShardError::RowCount { rows: row, layout_rows: self.rows })?;
            if actual != expected {
                return Err(ShardError::RowOrder { row, expected, actual });
            }
        }
        let extra = theirs.count();
        if extra > 0 {
            return Err(ShardError::RowCount { rows: self.rows.saturating_add(extra), layout_rows: self.rows });
        }
        Ok(())
    }

    /// The token in row `row`, `None` for padding or a row past the end.
    pub fn token(&self, row: usize) -> Option<Token> {
        let mut first: usize = 0;
        for run in &self.runs {
            if row < first.saturating_add(run.len()) {
                return match *run {
                    Run::Tokens { seq, span } => Some(Token { seq, pos: span.start + (row - first) }),
                    Run::Padding { .. } => None,
                };
            }
            first = first.saturating_add(run.len());
        }
        None
    }
}

/// A layout of these runs in order (fused and compacted as [`Layout::push_run`] does).
///
/// ```
/// use cp_shard::{Layout, Run, Span};
/// let l: Layout = [Run::Tokens { seq: 0, span: Span::new(0, 3) }, Run::Padding { len: 1 }].into_iter().collect();
/// assert_eq!((l.len(), l.token_count()), (4, 3));
/// ```
impl FromIterator<Run> for Layout {
    fn from_iter<I: IntoIterator<Item = Run>>(runs: I) -> Layout {
        let mut layout = Layout::new();
        runs.into_iter().for_each(|run| layout.push_run(run));
        layout
    }
}

/// The row layouts of every rank for one ring step (a prefill turn or a decode iteration).
///
/// All query layouts have the same length, and so do all key/value layouts, because ring
/// messages are equal-sized. `q[r]` lists the queries rank `r` owns; `kv[r]` the keys and values
/// rank `r` holds. The row order is **per sequence**, in the step's batch order:
///
/// - `q[r]`: for each sequence, rank `r`'s two chunks of its new tokens, each chunk padded to
///   the chunk length (so padding rows sit inside the block, after each short chunk, not only at
///   its end);
/// - `kv[r]`: for each sequence, the spans rank `r` already caches for it, then the spans of its
///   new tokens that rank `r` receives in this step; after the last sequence, padding up to the
///   longest rank's rows.
///
/// A batch of two sequences is therefore *not* "all cached rows, then all new rows". The
/// layouts are the authority: build each rank's tensors by walking [`Layout::rows`], and check
/// rows built another way with [`Layout::check_rows`] — the attention computes from the layout
/// alone, so rows in another order are a wrong answer, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingLayouts {
    /// Query layout of each rank.
    pub q: Vec<Layout>,
    /// Key/value layout of each rank.
    pub kv: Vec<Layout>,
}

impl RingLayouts {
    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.q.len()
    }

    /// Rows of every query block.
    pub fn q_rows(&self) -> usize {
        self.q.first().map_or(0, Layout::len)
    }

    /// Rows of every key/value block (the padded pass-KV message length).
    pub fn kv_rows(&self) -> usize {
        self.kv.first().map_or(0, Layout::len)
    }
}

/// Where each sequence's rows go in a gather: sequence id and the global span wanted.
fn span_index(wanted: &[(usize, Span)], token: Token) -> Option<(usize, usize)> {
    wanted
        .iter()
        .position(|&(seq, span)| seq == token.seq && span.contains(token.pos))
        .map(|i| (i, token.pos - wanted[i].1.start))
}

fn check_buffers<T>(layouts: &[Layout], per_rank: &[&[T]], width: usize) -> Result<()> {
    if per_rank.len() != layouts.len() {
        return Err(ShardError::RankCount { actual: per_rank.len(), expected: layouts.len() });
    }
    for (rank, (layout, buf)) in layouts.iter().zip(per_rank).enumerate() {
        let expected = layout.len() * width;
        if buf.len() != expected {
            return Err(ShardError::BufferSize { rank, actual: buf.len(), expected, rows: layout.len(), width });
        }
    }
    Ok(())
}

/// Gathers rows of `width` elements from per-rank buffers (laid out by `layouts`) into one
/// buffer per wanted `(sequence, span)`, in global position order.
///
/// Every wanted position must be found on exactly one rank; a position found on none is an
/// error (a dropped token), and so is one found twice.
pub fn gather_rows<T: Copy + Default>(
    layouts: &[Layout],
    per_rank: &[&[T]],
    width: usize,
    wanted: &[(usize, Span)],
) -> Result<Vec<Vec<T>>> {
    check_buffers(layouts, per_rank, width)?;
    // No more rows can be gathered than the layouts hold: a larger request is an error, not an
    // allocation that fails.
    let held = layouts.iter().map(Layout::len).fold(0usize, usize::saturating_add);
    let asked = wanted.iter().map(|(_, s)| s.len).fold(0usize, usize::saturating_add);
    if asked > held {
        return Err(ShardError::PlanMismatch {
            reason: format!("{asked} rows asked for, the layouts hold {held} (some wanted positions are not there)"),
        });
    }
    let mut out: Vec<Vec<T>> = wanted.iter().map(|(_, s)| vec![T::default(); s.len * width]).collect();
    let mut seen: Vec<Vec<bool>> = wanted.iter().map(|(_, s)| vec![false; s.len]).collect();
    for (layout, buf) in layouts.iter().zip(per_rank) {
        for (row, token) in layout.rows().enumerate() {
            let Some((slot, offset)) = token.and_then(|t| span_index(wanted, t)) else { continue };
            if std::mem::replace(&mut seen[slot][offset], true) {
                return Err(ShardError::PlanMismatch {
                    reason: format!(
                        "position {} of sequence {} is held twice",
                        wanted[slot].1.start + offset,
                        wanted[slot].0
                    ),
                });
            }
            out[slot][offset * width..(offset + 1) * width].copy_from_slice(&buf[row * width..(row + 1) * width]);
        }
    }
    for (slot, flags) in seen.iter().enumerate() {
        if let Some(missing) = flags.iter().position(|&f| !f) {
            let (seq, span) = wanted[slot];
            return Err(ShardError::PlanMismatch {
                reason: format!("position {} of sequence {seq} is held by no rank", span.start + missing),
            });
        }
    }
    Ok(out)
}

/// Scatters global rows into per-rank buffers laid out by `layouts`: the inverse of
/// [`gather_rows`]. `global(token)` returns the `width` elements of a token; padding rows are
/// filled by `pad(rank, row)`, so callers can poison them.
pub fn scatter_rows<T: Copy>(
    layouts: &[Layout],
    width: usize,
    mut global: impl FnMut(Token) -> Result<Vec<T>>,
    mut pad: impl FnMut(usize, usize) -> Vec<T>,
) -> Result<Vec<Vec<T>>> {
    layouts
        .iter()
        .enumerate()
        .map(|(rank, layout)| {
            let mut buf = Vec::with_capacity(layout.len() * width);
            for (row, token) in layout.rows().enumerate() {
                let values = match token {
                    Some(t) => global(t)?,
                    None => pad(rank, row),
                };
                if values.len() != width {
                    return Err(ShardError::BufferSize { rank, actual: values.len(), expected: width, rows: 1, width });
                }
                buf.extend_from_slice(&values);
            }
            Ok(buf)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_fuse_and_rows_follow() {
        let mut layout = Layout::new();
        layout.push_tokens(0, Span::new(0, 2));
        layout.push_tokens(0, Span::new(2, 1));
        layout.push_padding(1);
        layout.push_padding(0);
        layout.push_tokens(1, Span::new(5, 1));
        layout.pad_to(7);
        assert_eq!(layout.runs().len(), 4);
        assert_eq!(layout.len(), 7);
        assert_eq!(layout.token_count(), 4);
        let rows: Vec<_> = layout.rows().collect();
        assert_eq!(rows.len(), 7);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(*row, layout.token(i), "row {i}");
        }
        assert_eq!(rows[2], Some(Token { seq: 0, pos: 2 }));
        assert_eq!(rows[3], None);
        assert_eq!(rows[4], Some(Token { seq: 1, pos: 5 }));
        // The same from runs (padding's first position ignored).
        let from = Layout::from_runs(&[(Some(0), 0, 2), (Some(0), 2, 1), (None, 99, 1), (Some(1), 5, 1), (None, 0, 2)]);
        assert_eq!(from, layout);
    }

    #[test]
    fn visibility_is_causal_per_sequence() {
        let t = |seq, pos| Some(Token { seq, pos });
        assert!(visible(t(0, 5), t(0, 5)));
        assert!(visible(t(0, 5), t(0, 0)));
        assert!(!visible(t(0, 5), t(0, 6)));
        assert!(!visible(t(0, 5), t(1, 0)));
        assert!(!visible(None, t(0, 0)));
        assert!(!visible(t(0, 0), None));
    }

    #[test]
    fn gather_reports_missing_and_bad_sizes() {
        let mut a = Layout::new();
        a.push_tokens(0, Span::new(0, 1));
        let layouts = [a];
        let err = gather_rows(&layouts, &[&[1.0f32][..]], 1, &[(0, Span::new(0, 2))]).unwrap_err();
        assert!(matches!(err, ShardError::PlanMismatch { .. }), "{err}");
        let err = gather_rows(&layouts, &[&[1.0f32, 2.0][..]], 1, &[(0, Span::new(0, 1))]).unwrap_err();
        assert!(matches!(err, ShardError::BufferSize { rank: 0, actual: 2, expected: 1, .. }), "{err}");
    }
}
