// cp-rs attention kernels, compiled at run time by NVRTC to an sm_90 CUBIN.
//
// Tensors are token-major: q [Tq, NH, D], k/v [Tk, NKV, D], out [Tq, NH, D], lse [Tq, NH].
// 16-bit inputs are passed as raw bits (unsigned short) so that no CUDA header is needed;
// conversions go through PTX. Masks come from per-row (seq, pos) arrays (seq < 0: padding) and
// per-tile summaries that let a block skip fully masked tiles and skip mask work on fully
// visible ones.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#define DEVI __device__ __forceinline__

#define NEG_INF (__int_as_float(0xff800000))
#define LN2 0.69314718055994530942f

DEVI float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
DEVI float f16_to_f32(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
// 2^x with the special-function unit (FlashAttention's choice); exact enough for softmax
// weights, and 2^-inf = +0.
DEVI float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
template <bool BF16> DEVI float to_f32(u16 h) { return BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

// Eq. 4 for two partials of LSE `la` and `lb`: their weights against the larger LSE `ms` (0 for a
// side of LSE -inf; both -inf give 0 and 0, not NaN) and the weights' sum; `merged_lse` is the
// merged LSE (taken only by the thread that writes it): -inf where the sum is 0, NaN where it is
// NaN (a side of LSE NaN: a row that saw a non-finite score). The online fold (merge.cu) and the
// prefill epilogue's fold share them.
struct Merge2 { float wa, wb, den, ms; };
DEVI Merge2 merge2(float la, float lb) {
    const float mx = fmaxf(la, lb);
    Merge2 m;
    m.ms = mx == NEG_INF ? 0.f : mx;
    m.wa = __expf(la - m.ms);
    m.wb = __expf(lb - m.ms);
    m.den = m.wa + m.wb;
    return m;
}
DEVI float merged_lse(const Merge2& m) { return m.den == 0.f ? NEG_INF : m.ms + __logf(m.den); }

// A row's LSE (natural log) from its running maximum `m` (log2 units of the scaled scores) and
// its sum `l` of 2^(s - m): -inf for a padding row and where the row saw no key (l = 0), NaN
// where it saw a non-finite score (l NaN), so that a merge keeps that NaN. FAST: the
// special-function unit's logarithm (exact to a few ulp for l >= 1, which holds where l > 0:
// the maximum's own term is 1).
template <bool FAST> DEVI float row_lse(float m, float l, bool pad = false) {
    return l != 0.f && !pad ? (m + (FAST ? __log2f(l) : log2f(l))) * LN2 : NEG_INF;
}

// Packs two floats into a 16-bit pair, `lo` in the low half.
template <bool BF16> DEVI u32 pack2(float lo, float hi) {
    u32 r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <bool BF16> DEVI u16 to16(float x) { return (u16)(pack2<BF16>(x, 0.0f) & 0xffff); }

template <bool BF16> DEVI void mma16816(float* c, const u32* a, const u32* b) {
    if (BF16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

DEVI void ldsm_x4(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
DEVI void ldsm_x4_t(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
// 16-byte global->shared copy; `valid == false` writes zeros and reads nothing.
DEVI void cp_async16(u32 smem, const void* gmem, bool valid) {
    int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes));
}
DEVI void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> DEVI void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
DEVI u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Keys whose V holds a non-finite value in a tile where some (query, key) pairs are masked. A
// masked pair has P = 0, but 0 x NaN = NaN, so such a value would reach through P V queries that
// must not see its key (padding rows, future positions, other sequences, unused cache slots).
// The prefill kernels zero those values in shared memory and keep, per sequence, the smallest
// position of such a key: a query of that sequence at or after it sees one, and gets NaN at the
// end, as exact attention would give it. Past 8 sequences every real query of the block gets NaN
// (loud, never silently finite).
#define BAD_SLOTS 8
struct BadKeys { int seq[BAD_SLOTS]; int pos[BAD_SLOTS]; int overflow; };
DEVI void bad_keys_init(BadKeys& b) {
    if (threadIdx.x < BAD_SLOTS) { b.seq[threadIdx.x] = -1; b.pos[threadIdx.x] = 0x7fffffff; }
    if (threadIdx.x == 0) b.overflow = 0;
}
DEVI void bad_keys_add(BadKeys& b, int seq, int pos) {
    if (seq < 0) return;  // padding: no query sees it
    for (int i = 0; i < BAD_SLOTS; i++) {
        const int old = atomicCAS(&b.seq[i], -1, seq);
        if (old == -1 || old == seq) { atomicMin(&b.pos[i], pos); return; }
    }
    atomicOr(&b.overflow, 1);
}
// Whether the query (seq, pos) sees one of the recorded keys.
DEVI bool bad_keys_seen(const BadKeys& b, int seq, int pos) {
    if (seq < 0) return false;
    if (b.seq[0] < 0) return false;  // nothing recorded (slots fill in order): one load, not 16
    if (b.overflow) return true;
    bool seen = false;
    for (int i = 0; i < BAD_SLOTS; i++) seen |= b.seq[i] == seq && b.pos[i] <= pos;
    return seen;
}
// Whether the 16-bit value in the low half of `h` is non-finite (exponent all ones).
template <bool BF16> DEVI bool nonfinite16(u32 h) {
    const u32 e = BF16 ? 0x7f80u : 0x7c00u;
    return (h & e) == e;
}
// Whether either 16-bit value of `w` is non-finite.
template <bool BF16> DEVI bool nonfinite2(u32 w) { return nonfinite16<BF16>(w) || nonfinite16<BF16>(w >> 16); }
// Zeroes the non-finite 16-bit values of the 16-byte chunk at shared address `a`, part of key row
// `key`, and records the key.
template <bool BF16> DEVI void scrub16(u32 a, int key, const int* __restrict__ k_seq, const int* __restrict__ k_pos,
                                       BadKeys& bad) {
    u32 w[4];
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "r"(a));
    bool bad_chunk = false;
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        const bool lo = nonfinite16<BF16>(w[i]), hi = nonfinite16<BF16>(w[i] >> 16);
        bad_chunk |= lo || hi;
        w[i] &= (lo ? 0xffff0000u : 0xffffffffu) & (hi ? 0x0000ffffu : 0xffffffffu);
    }
    if (!bad_chunk) return;
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(a), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]) : "memory");
    bad_keys_add(bad, k_seq[key], k_pos[key]);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][D] tile of 16-bit
// values: the chunk index is xor-ed with the row (mod 8) so that ldmatrix's eight row reads of
// one column land in eight different bank groups.
template <int D> DEVI u32 swz(int row, int chunk) { return (u32)(row * D * 2 + ((chunk ^ (row & 7)) << 4)); }

// Tile summary: x = sequence id of every real row (-1: no real row, -2: several sequences),
// y = min position, z = max position over real rows, w = 1 if the tile holds padding rows.
// Returns 0 (nothing visible), 1 (every real query sees every key: no mask needed) or 2 (mask
// per element). Padding *query* rows do not force a mask: whatever they compute stays in their
// own rows (softmax and P V are row-wise) and the epilogue writes them as rows that saw nothing.
// Padding *key* rows do: real queries must not see them.
DEVI int classify(int4 q, int4 k) {
    if (q.x == -1 || k.x == -1) return 0;
    if (k.y > q.z) return 0;
    if (q.x >= 0 && k.x >= 0) {
        if (q.x != k.x) return 0;
        if (k.z <= q.y && k.w == 0) return 1;
    }
    return 2;
}

// Summary of two adjacent tiles (the second may be absent: pass (-1, 0, 0, 1)).
DEVI int4 combine(int4 a, int4 b) {
    if (a.x == -1) return make_int4(b.x, b.y, b.z, 1);
    if (b.x == -1) return make_int4(a.x, a.y, a.z, 1);
    return make_int4(a.x == b.x ? a.x : -2, min(a.y, b.y), max(a.z, b.z), a.w | b.w);
}

// Summary of `count` consecutive 64-row tile summaries from `first` (which exists); those at or
// past `n_t64`, beyond the last row, count as absent (padding).
DEVI int4 tiles_summary(const int4* __restrict__ tiles, int n_t64, int first, int count) {
    int4 s = tiles[first];
    for (int i = 1; i < count; i++) s = combine(s, first + i < n_t64 ? tiles[first + i] : make_int4(-1, 0, 0, 1));
    return s;
}

// First key tile at or after `j` that some query of summary `qt` can see (`n_tiles` if none).
// A key tile is K64 consecutive 64-row summaries. The warp checks 32 tiles per step (a ballot),
// so skipping another sequence's tiles in a packed batch costs a few steps, not one dependent
// load per tile. Every lane of the warp must call it (it returns the same value to all).
template <int K64>
DEVI int next_visible_tile(int4 qt, const int4* __restrict__ k_tiles, int n_t64, int j, int n_tiles) {
    const int lane = threadIdx.x & 31;
    for (int base = j; base < n_tiles; base += 32) {
        const int t = base + lane;
        bool visible = false;
        if (t < n_tiles) visible = classify(qt, tiles_summary(k_tiles, n_t64, K64 * t, K64)) != 0;
        const unsigned found = __ballot_sync(0xffffffff, visible);
        if (found) return base + __ffs(found) - 1;
    }
    return n_tiles;
}

// Index of visible key tile number `n` (from 0, in order) for summary `qt`, as `next_visible_tile`
// walks them (`n_tiles` if there are no more than n): the start of a piece of the tail split.
// Every lane of the warp must call it.
template <int K64>
DEVI int nth_visible_tile(int4 qt, const int4* __restrict__ k_tiles, int n_t64, int n, int n_tiles) {
    const int lane = threadIdx.x & 31;
    for (int base = 0; base < n_tiles; base += 32) {
        const int t = base + lane;
        bool visible = false;
        if (t < n_tiles) visible = classify(qt, tiles_summary(k_tiles, n_t64, K64 * t, K64)) != 0;
        unsigned found = __ballot_sync(0xffffffff, visible);
        const int count = __popc(found);
        if (n < count) {
            for (int i = 0; i < n; i++) found &= found - 1;  // drop the n lowest
            return base + __ffs(found) - 1;
        }
        n -= count;
    }
    return n_tiles;
}
