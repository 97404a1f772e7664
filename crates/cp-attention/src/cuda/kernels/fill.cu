// ---------------------------------------------------------------------------------------------
// Inputs drawn on the device: element `col` of the row of token (seq, pos) is a uniform value in
// [-2, 2) (24 random bits, exact in f32) from a counter-based hash of (seed, seq, pos, col), so
// every rank, layout and run draws the same value for the same token, and the host can recompute
// any of them (`cp_attention::hashed_value`). Padding rows get `pad_bits`.
// ---------------------------------------------------------------------------------------------
DEVI u64 mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
template <bool BF16>
DEVI void fill_rows(u16* __restrict__ out, const int* __restrict__ seq, const int* __restrict__ pos, long rows, int width,
                    u64 seed, u32 pad_bits) {
    const long n = rows * width;
    for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (long)gridDim.x * blockDim.x) {
        const long row = idx / width;
        const int col = (int)(idx % width);
        const int sq = seq[row];
        if (sq < 0) { out[idx] = (u16)pad_bits; continue; }
        const u64 h = mix64(mix64(seed ^ mix64(((u64)(u32)sq << 32) | (u32)pos[row])) + (u64)col);
        const float x = (float)(h >> 40) * (4.0f / 16777216.0f) - 2.0f;
        out[idx] = to16<BF16>(x);
    }
}
extern "C" __global__ void fill_rows_bf16(u16* o, const int* s, const int* p, long rows, int width, u64 seed, u32 pad) { fill_rows<true>(o, s, p, rows, width, seed, pad); }
extern "C" __global__ void fill_rows_f16(u16* o, const int* s, const int* p, long rows, int width, u64 seed, u32 pad) { fill_rows<false>(o, s, p, rows, width, seed, pad); }
// A layout's runs expanded into per-row arrays: runs[4 r .. 4 r + 4] = (first row, seq or -1,
// first position, rows); one block per run, its threads striding over the run's rows.
extern "C" __global__ void expand_runs(const int* __restrict__ runs, int n_runs, int* __restrict__ seq,
                                       int* __restrict__ pos) {
    for (int r = blockIdx.x; r < n_runs; r += gridDim.x) {
        const int row0 = runs[4 * r], s = runs[4 * r + 1], p0 = runs[4 * r + 2], len = runs[4 * r + 3];
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            seq[row0 + i] = s;
            pos[row0 + i] = s < 0 ? 0 : p0 + i;
        }
    }
}
