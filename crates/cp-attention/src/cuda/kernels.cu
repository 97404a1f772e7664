// cp-rs attention kernels, compiled at run time by NVRTC to an sm_90 CUBIN.
//
// Tensors are token-major: q [Tq, NH, D], k/v [Tk, NKV, D], out [Tq, NH, D], lse [Tq, NH].
// 16-bit inputs are passed as raw bits (unsigned short) so that no CUDA header is needed;
// conversions go through PTX. Masks come from per-row (seq, pos) arrays (seq < 0: padding) and
// per-tile summaries that let a block skip fully masked tiles and skip mask work on fully
// visible ones.

typedef unsigned short u16;
typedef unsigned int u32;
#define DEVI __device__ __forceinline__

#define NEG_INF (__int_as_float(0xff800000))
#define LN2 0.69314718055994530942f

DEVI float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
DEVI float f16_to_f32(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
// 2^x with the special-function unit (FlashAttention's choice); exact enough for softmax
// weights, and 2^-inf = +0.
DEVI float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
template <bool BF16> DEVI float to_f32(u16 h) { return BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

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
    if (b.overflow) return true;
    bool seen = false;
    for (int i = 0; i < BAD_SLOTS; i++) seen |= b.seq[i] == seq && b.pos[i] <= pos;
    return seen;
}
// Zeroes the non-finite 16-bit values (exponent all ones) of the 16-byte chunk at shared address
// `a`, part of key row `key`, and records the key.
template <bool BF16> DEVI void scrub16(u32 a, int key, const int* __restrict__ k_seq, const int* __restrict__ k_pos,
                                       BadKeys& bad) {
    const u32 e = BF16 ? 0x7f80u : 0x7c00u;
    u32 w[4];
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "r"(a));
    bool bad_chunk = false;
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        const bool lo = (w[i] & e) == e, hi = ((w[i] >> 16) & e) == e;
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

// Fused causal attention forward with log-sum-exp, FA2 style: NW warps, each owning MT m-tiles
// of 16 query rows (MT = 2 is FlashAttention-2's layout: every K/V fragment feeds 2*MT MMAs, and
// Q fragments are re-read from shared memory instead of held in registers); 64 keys per tile;
// K/V tiles double-buffered through cp.async. Query tile summaries come at 64-row granularity.
template <int D, bool BF16, bool OUT_F32, int NW, int MT>
__device__ void flash_fwd(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                          void* __restrict__ out, float* __restrict__ lse, const int* __restrict__ q_seq,
                          const int* __restrict__ q_pos, const int* __restrict__ k_seq, const int* __restrict__ k_pos,
                          const int4* __restrict__ q_tiles, const int4* __restrict__ k_tiles, int tq, int tk, int nh,
                          int nkv, float scale_log2, int split_tiles) {
    constexpr int BM = 16 * NW * MT, BN = 64, CH = D / 8;  // CH: 16-byte chunks per row
    extern __shared__ __align__(128) unsigned char smem[];
    u16* sq = (u16*)smem;
    u16* sk = sq + BM * D;  // two buffers of BN * D
    u16* sv = sk + 2 * BN * D;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, kvh = h / (nh / nkv), m0 = blockIdx.x * BM;
    const int n_ktiles = (tk + BN - 1) / BN;
    const int4 qt = tiles_summary(q_tiles, (tq + 63) / 64, blockIdx.x * (BM / 64), BM / 64);
    // Split-KV (grid z): this block takes key tiles [j_lo, j_hi) and writes partial z.
    const int j_lo = blockIdx.z * split_tiles, j_hi = min(n_ktiles, j_lo + split_tiles);
    out = (char*)out + (size_t)blockIdx.z * tq * nh * D * (OUT_F32 ? 4 : 2);
    lse += (size_t)blockIdx.z * tq * nh;
    __shared__ BadKeys bad;
    bad_keys_init(bad);

    auto next_visible = [&](int j) { return next_visible_tile<1>(qt, k_tiles, n_ktiles, j, j_hi); };
    auto load_kv = [&](int j, int buf) {
        const int n0 = j * BN;
        for (int c = tid; c < BN * CH; c += NW * 32) {
            int r = c / CH, ch = c % CH, row = n0 + r;
            bool ok = row < tk;
            size_t off = ((size_t)(ok ? row : 0) * nkv + kvh) * D + ch * 8;
            cp_async16(smem_addr(sk + buf * BN * D) + swz<D>(r, ch), k + off, ok);
            cp_async16(smem_addr(sv + buf * BN * D) + swz<D>(r, ch), v + off, ok);
        }
    };

    // Q tile.
    for (int c = tid; c < BM * CH; c += NW * 32) {
        int r = c / CH, ch = c % CH, row = m0 + r;
        bool ok = row < tq;
        cp_async16(smem_addr(sq) + swz<D>(r, ch), q + ((size_t)(ok ? row : 0) * nh + h) * D + ch * 8, ok);
    }
    int j = next_visible(j_lo);
    if (j < j_hi) load_kv(j, 0);
    cp_async_commit();

    // This thread's rows: in m-tile mt, r0 + 16*mt and r0 + 16*mt + 8, r0 = warp*16*MT + lane/4.
    const int g = lane >> 2, t4 = lane & 3;
    const int r0 = warp * 16 * MT + g;
    int my_seq[MT][2], my_pos[MT][2];
    for (int mt = 0; mt < MT; mt++)
        for (int i = 0; i < 2; i++) {
            int row = m0 + r0 + 16 * mt + 8 * i;
            my_seq[mt][i] = row < tq ? q_seq[row] : -1;
            my_pos[mt][i] = row < tq ? q_pos[row] : 0;
        }

    float o[MT][D / 8][4];
    for (int mt = 0; mt < MT; mt++)
        for (int a = 0; a < D / 8; a++) for (int e = 0; e < 4; e++) o[mt][a][e] = 0.f;
    float m_run[MT][2], l_run[MT][2];
    for (int mt = 0; mt < MT; mt++)
        for (int i = 0; i < 2; i++) { m_run[mt][i] = NEG_INF; l_run[mt][i] = 0.f; }
    u32 qf[MT == 1 ? D / 16 : 1][4];  // Q held in registers only with one m-tile

    int buf = 0;
    bool first = true;
    while (j < j_hi) {
        int kind = classify(qt, k_tiles[j]);
        if (kind == 1 && (j + 1) * BN > tk) kind = 2;  // a short last tile: mask its missing rows
        const int jn = next_visible(j + 1);
        if (jn < j_hi) load_kv(jn, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (kind == 2) {  // block-uniform: masked pairs here, so no non-finite V may stay
            for (int c = tid; c < BN * CH; c += NW * 32)
                scrub16<BF16>(smem_addr(sv + buf * BN * D) + swz<D>(c / CH, c % CH), j * BN + c / CH, k_seq, k_pos, bad);
            __syncthreads();
        }
        if (MT == 1 && first) {
            for (int kk = 0; kk < D / 16; kk++) {
                int row = warp * 16 + (lane & 15), ch = kk * 2 + (lane >> 4);
                ldsm_x4(qf[MT == 1 ? kk : 0], smem_addr(sq) + swz<D>(row, ch));
            }
        }
        first = false;
        const u32 kbase = smem_addr(sk + buf * BN * D), vbase = smem_addr(sv + buf * BN * D);

        // S = Q K^T for this warp's rows and the tile's 64 keys.
        float s[MT][BN / 8][4];
        for (int mt = 0; mt < MT; mt++)
            for (int a = 0; a < BN / 8; a++) for (int e = 0; e < 4; e++) s[mt][a][e] = 0.f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            u32 qa[MT][4];
            #pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if (MT == 1) {
                    for (int e = 0; e < 4; e++) qa[mt][e] = qf[MT == 1 ? kk : 0][e];
                } else {
                    int row = warp * 16 * MT + mt * 16 + (lane & 15), ch = kk * 2 + (lane >> 4);
                    ldsm_x4(qa[mt], smem_addr(sq) + swz<D>(row, ch));
                }
            }
            #pragma unroll
            for (int nn = 0; nn < BN / 16; nn++) {
                u32 b[4];
                int key = nn * 16 + (lane & 7) + ((lane >> 4) << 3), ch = kk * 2 + ((lane >> 3) & 1);
                ldsm_x4(b, kbase + swz<D>(key, ch));
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816<BF16>(s[mt][2 * nn], qa[mt], b);
                    mma16816<BF16>(s[mt][2 * nn + 1], qa[mt], b + 2);
                }
            }
        }

        // Scale (into log2 units) and mask.
        const int n0 = j * BN;
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int a = 0; a < BN / 8; a++) {
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    float x = s[mt][a][e] * scale_log2;
                    if (kind == 2) {
                        int col = n0 + a * 8 + 2 * t4 + (e & 1), i = e >> 1;
                        bool vis = col < tk && my_seq[mt][i] >= 0 && k_seq[col] == my_seq[mt][i] && k_pos[col] <= my_pos[mt][i];
                        x = vis ? x : NEG_INF;
                    }
                    s[mt][a][e] = x;
                }
            }

        // Online softmax: running max and sum per row (the 4 lanes of a quad share a row).
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int i = 0; i < 2; i++) {
                float mx = NEG_INF;
                #pragma unroll
                for (int a = 0; a < BN / 8; a++) mx = fmaxf(mx, fmaxf(s[mt][a][2 * i], s[mt][a][2 * i + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
                float m_new = fmaxf(m_run[mt][i], mx);
                // Rows that have seen nothing yet keep m = -inf; subtract 0 so exp2 gives 0, not NaN.
                float m_use = m_new == NEG_INF ? 0.f : m_new;
                float corr = ex2(m_run[mt][i] - m_use);
                m_run[mt][i] = m_new;
                float sum = 0.f;
                #pragma unroll
                for (int a = 0; a < BN / 8; a++) {
                    s[mt][a][2 * i] = ex2(s[mt][a][2 * i] - m_use);
                    s[mt][a][2 * i + 1] = ex2(s[mt][a][2 * i + 1] - m_use);
                    sum += s[mt][a][2 * i] + s[mt][a][2 * i + 1];
                }
                l_run[mt][i] = l_run[mt][i] * corr + sum;
                #pragma unroll
                for (int a = 0; a < D / 8; a++) {
                    o[mt][a][2 * i] *= corr;
                    o[mt][a][2 * i + 1] *= corr;
                }
            }

        // O += P V, with P taken from the S accumulators as A fragments.
        #pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            u32 pa[MT][4];
            #pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = pack2<BF16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack2<BF16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack2<BF16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack2<BF16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
            #pragma unroll
            for (int dd = 0; dd < D / 16; dd++) {
                u32 b[4];
                int key = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), ch = dd * 2 + (lane >> 4);
                ldsm_x4_t(b, vbase + swz<D>(key, ch));
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816<BF16>(o[mt][2 * dd], pa[mt], b);
                    mma16816<BF16>(o[mt][2 * dd + 1], pa[mt], b + 2);
                }
            }
        }
        __syncthreads();
        buf ^= 1;
        j = jn;
    }
    cp_async_wait<0>();
    __syncthreads();  // `bad` complete (and initialised where no tile was visible)

    // Epilogue: normalise, write O and LSE (natural log). Rows that saw nothing: 0 and -inf.
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            float l = l_run[mt][i];
            l += __shfl_xor_sync(0xffffffff, l, 1);
            l += __shfl_xor_sync(0xffffffff, l, 2);
            int row = m0 + r0 + 16 * mt + 8 * i;
            // A padding query row saw nothing, whatever its (possibly garbage) scores gave.
            const bool pad = my_seq[mt][i] < 0;
            float inv = l > 0.f ? 1.f / l : 0.f;
            if (bad_keys_seen(bad, my_seq[mt][i], my_pos[mt][i])) inv = __int_as_float(0x7fc00000);
            if (row < tq) {
                size_t base = ((size_t)row * nh + h) * D;
                #pragma unroll
                for (int a = 0; a < D / 8; a++) {
                    int col = a * 8 + 2 * t4;
                    float x0 = pad ? 0.f : o[mt][a][2 * i] * inv, x1 = pad ? 0.f : o[mt][a][2 * i + 1] * inv;
                    if (OUT_F32) *(float2*)((float*)out + base + col) = make_float2(x0, x1);
                    else *(u32*)((u16*)out + base + col) = pack2<BF16>(x0, x1);
                }
                if (t4 == 0) lse[(size_t)row * nh + h] = l > 0.f && !pad ? (m_run[mt][i] + log2f(l)) * LN2 : NEG_INF;
            }
        }
}

#define FLASH_ENTRY(NAME, D, BF16, OUT_F32, NW, MT)                                                               \
    extern "C" __global__ void __launch_bounds__(NW * 32) NAME(                                                   \
        const u16* q, const u16* k, const u16* v, void* out, float* lse, const int* q_seq, const int* q_pos,     \
        const int* k_seq, const int* k_pos, const int4* q_tiles, const int4* k_tiles, int tq, int tk, int nh,    \
        int nkv, float scale_log2, int split_tiles) {                                                             \
        flash_fwd<D, BF16, OUT_F32, NW, MT>(q, k, v, out, lse, q_seq, q_pos, k_seq, k_pos, q_tiles, k_tiles, tq, \
                                            tk, nh, nkv, scale_log2, split_tiles);                                \
    }
#define FLASH_WARPS(D, T, BF16)                                          \
    FLASH_ENTRY(flash_fwd_d##D##_##T##_f32_w8, D, BF16, true, 8, 1)      \
    FLASH_ENTRY(flash_fwd_d##D##_##T##_b16_w8, D, BF16, false, 8, 1)     \
    FLASH_ENTRY(flash_fwd_d##D##_##T##_f32_w4, D, BF16, true, 4, 1)      \
    FLASH_ENTRY(flash_fwd_d##D##_##T##_b16_w4, D, BF16, false, 4, 1)     \
    FLASH_ENTRY(flash_fwd_d##D##_##T##_f32_w4m2, D, BF16, true, 4, 2)    \
    FLASH_ENTRY(flash_fwd_d##D##_##T##_b16_w4m2, D, BF16, false, 4, 2)
FLASH_WARPS(64, bf16, true)
FLASH_WARPS(64, f16, false)
FLASH_WARPS(128, bf16, true)
FLASH_WARPS(128, f16, false)

// ---------------------------------------------------------------------------------------------
// Hopper (sm_90a) prefill: warpgroup MMA (wgmma). Two consumer warpgroups of 64 query rows
// each share 128-key K/V tiles that a 3-stage cp.async ring brings into 128-byte-swizzled
// shared memory; S = Q K^T reads both operands from shared memory, O += P V takes P from
// registers (the S accumulators, rounded) and V from shared memory (MN-major). FlashAttention-3's
// intra-warpgroup overlap: the QK^T of tile j and the PV of tile j-1 are issued together, and
// the softmax of tile j runs while the PV is still on the tensor cores.
// The entry points exist for every architecture; their bodies only for sm_90a (the host
// launches them only there).
// ---------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CP_WGMMA 1
#else
#define CP_WGMMA 0
#endif

typedef unsigned long long u64;

// Dynamic shared memory of the wgmma kernels (rounded up to 1024 bytes inside).
extern __shared__ __align__(1024) unsigned char wg_smem[];

// Byte offset of 16-byte chunk `ch` of row `r` in a tile of `rows` rows of 16-bit values, stored
// as D/64 column blocks of [rows][64] whose 128-byte rows are swizzled (chunk ^ row % 8): the
// canonical layout of wgmma's 128-byte swizzle (K-major for Q and K, MN-major for V). Tiles
// start 1024-byte aligned, since the swizzle is applied to absolute address bits.
DEVI u32 sw128(int rows, int r, int ch) { return (u32)((ch >> 3) * rows * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4)); }

// Shared-memory matrix descriptor with 128-byte swizzle: start address, leading-dimension and
// stride-dimension byte offsets (PTX ISA, "Matrix Descriptor Format").
DEVI u64 wg_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}

#if CP_WGMMA
#define WG_REGS64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define WG_REGS32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_OPS64(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_OPS32(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

DEVI void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
DEVI void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> DEVI void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Shared memory written through the generic proxy (cp.async) and read next by wgmma (the
// async proxy) needs this fence in the writing threads before the barrier.
DEVI void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins registers at this point of the program: reads and writes of accumulators or A fragments
// of an in-flight wgmma may not move across it (placed after each wait).
template <int N> DEVI void pin(float* r) {
    #pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> DEVI void pin(u32* r) {
    #pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}

// D[64 x 128] (+)= A[64 x 16] B[16 x 128], A and B from shared memory, both K-major.
template <bool BF16> DEVI void wg_ss_n128(float* d, u64 a, u64 b, int accumulate) {
    if (BF16)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : WG_OPS64(d) : "l"(a), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : WG_OPS64(d) : "l"(a), "l"(b), "r"(accumulate));
}
// D[64 x N] (+)= A[64 x 16] B[16 x N], A from registers (four 16-bit pairs per thread, the
// mma.m16n8k16 A layout per warp), B from shared memory, N-major (transposed).
template <int N, bool BF16> DEVI void wg_rs(float* d, const u32* a, u64 b, int accumulate) {
    if constexpr (N == 128) {
        if (BF16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                         : WG_OPS64(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " WG_REGS64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                         : WG_OPS64(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
    } else {
        static_assert(N == 64, "wgmma N is 64 or 128 here");
        if (BF16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_REGS32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                         : WG_OPS32(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " WG_REGS32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                         : WG_OPS32(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
    }
}

// The two products of one key tile for one warpgroup. `q_base`: the warpgroup's 64 rows in the
// Q tile of `q_rows` rows; `k_base`, `v_base`: a stage's K and V tiles of BN rows.
template <int D, int BN, bool BF16> DEVI void wg_qk(float* s, u32 q_base, int q_rows, u32 k_base) {
    // K-major, 128-byte swizzle: 8-row groups 1024 bytes apart (SBO); a k-step of 16 elements
    // is 32 bytes along the swizzled row, and each 64-element column block is a separate tile.
    #pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const u32 cb = kk >> 2, kin = (kk & 3) * 32;
        const u64 da = wg_desc(q_base + cb * q_rows * 128 + kin, 16, 1024);
        const u64 db = wg_desc(k_base + cb * BN * 128 + kin, 16, 1024);
        wg_ss_n128<BF16>(s, da, db, kk > 0);
    }
}
template <int D, int BN, bool BF16> DEVI void wg_pv(float* o, const u32* p, u32 v_base) {
    // MN-major, 128-byte swizzle: 8-key groups 1024 bytes apart (SBO), 64-column blocks BN * 128
    // bytes apart (LBO); a k-step of 16 keys is 2048 bytes.
    #pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wg_rs<D, BF16>(o, p + 4 * kk, wg_desc(v_base + kk * 2048, BN * 128, 1024), 1);
}
// P (16-bit pairs, A fragments) from the S accumulators of a 64 x BN tile.
template <int BN, bool BF16> DEVI void wg_pack(u32* p, const float* s) {
    #pragma unroll
    for (int i = 0; i < BN / 4; i++) p[i] = pack2<BF16>(s[2 * i], s[2 * i + 1]);
}
#endif  // CP_WGMMA

template <int D, bool BF16, bool OUT_F32>
__device__ void flash_fwd_wg(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                             void* __restrict__ out, float* __restrict__ lse, const int* __restrict__ q_seq,
                             const int* __restrict__ q_pos, const int* __restrict__ k_seq, const int* __restrict__ k_pos,
                             const int4* __restrict__ q_tiles, const int4* __restrict__ k_tiles, int tq, int tk, int nh,
                             int nkv, float scale_log2, int split_tiles) {
#if CP_WGMMA
    constexpr int BM = 128, BN = 128, CH = D / 8, NT = 256;
    constexpr u32 Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
    const u32 base = (smem_addr(wg_smem) + 1023) & ~1023u;
    auto sk = [&](int s) { return base + Q_BYTES + (u32)s * 2 * KV_BYTES; };
    auto sv = [&](int s) { return base + Q_BYTES + (u32)s * 2 * KV_BYTES + KV_BYTES; };
    const u32 scratch = base + Q_BYTES + 3 * 2 * KV_BYTES;  // one word past the stages

    const int tid = threadIdx.x, wg = tid >> 7, wq = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    // Grid (heads, query blocks), query blocks in reverse: for causal attention the last blocks
    // of a sequence carry the most key tiles, so they start first and the last wave is light;
    // the query heads of a KV head run side by side and share its K/V tiles in L2.
    const int h = blockIdx.x, kvh = h / (nh / nkv), qb = gridDim.y - 1 - blockIdx.y, m0 = qb * BM;
    const int n_ktiles = (tk + BN - 1) / BN, n_t64 = (tk + 63) / 64;
    const int4 qt = tiles_summary(q_tiles, (tq + 63) / 64, 2 * qb, 2);
    // Split-KV (grid z): this block takes key tiles [j_lo, j_hi) and writes partial z.
    const int j_lo = blockIdx.z * split_tiles, j_hi = min(n_ktiles, j_lo + split_tiles);
    out = (char*)out + (size_t)blockIdx.z * tq * nh * D * (OUT_F32 ? 4 : 2);
    lse += (size_t)blockIdx.z * tq * nh;
    __shared__ BadKeys bad;
    bad_keys_init(bad);
    auto ktile = [&](int j) { return tiles_summary(k_tiles, n_t64, 2 * j, 2); };
    auto next_visible = [&](int j) { return next_visible_tile<2>(qt, k_tiles, n_t64, j, j_hi); };
    // A tile with masked pairs must hold no non-finite V (see BadKeys); block-uniform.
    auto scrub = [&](int j, int st) {
        if (classify(qt, ktile(j)) != 2) return;
        #pragma unroll 1
        for (int i = 0; i < BN * CH / NT; i++) {
            const int c = tid + i * NT, r = c / CH, ch = c % CH;
            scrub16<BF16>(sv(st) + sw128(BN, r, ch), j * BN + r, k_seq, k_pos, bad);
        }
    };
    auto load_kv = [&](int j, int s) {
        const int n0 = j * BN;
        #pragma unroll
        for (int i = 0; i < BN * CH / NT; i++) {
            const int c = tid + i * NT, r = c / CH, ch = c % CH, row = n0 + r;
            const bool ok = row < tk;
            const size_t off = ((size_t)(ok ? row : 0) * nkv + kvh) * D + ch * 8;
            const u32 o = sw128(BN, r, ch);
            cp_async16(sk(s) + o, k + off, ok);
            cp_async16(sv(s) + o, v + off, ok);
        }
    };
    #pragma unroll
    for (int i = 0; i < BM * CH / NT; i++) {
        const int c = tid + i * NT, r = c / CH, ch = c % CH, row = m0 + r;
        const bool ok = row < tq;
        cp_async16(base + sw128(BM, r, ch), q + ((size_t)(ok ? row : 0) * nh + h) * D + ch * 8, ok);
    }

    // This thread's rows (block-local): wg*64 + wq*16 + g and 8 below.
    const int r0 = wg * 64 + wq * 16 + g;
    int my_seq[2], my_pos[2];
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = m0 + r0 + 8 * i;
        my_seq[i] = row < tq ? q_seq[row] : -1;
        my_pos[i] = row < tq ? q_pos[row] : 0;
    }
    float o[D / 2], s[BN / 2];
    u32 p[BN / 4];
    #pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    #pragma unroll
    for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
    float m_run[2] = {NEG_INF, NEG_INF}, l_run[2] = {0.f, 0.f};
    const u32 q_base = base + wg * 64 * 128;

    // Masks S of tile j in place (raw scores; -inf where not visible) and runs the online
    // softmax on it: S becomes 2^(S * scale - m), corr the factor for what came before.
    auto softmax = [&](int j, float* corr, float* rsum) {
        int kind = classify(qt, ktile(j));
        if (kind == 1 && (j + 1) * BN > tk) kind = 2;  // a short last tile: mask its missing rows
        if (kind == 2) {
            const int n0 = j * BN;
            #pragma unroll
            for (int a = 0; a < BN / 8; a++)
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = n0 + a * 8 + 2 * t4 + (e & 1), i = e >> 1;
                    const bool vis = col < tk && my_seq[i] >= 0 && k_seq[col] == my_seq[i] && k_pos[col] <= my_pos[i];
                    if (!vis) s[4 * a + e] = NEG_INF;
                }
        }
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            float mx = NEG_INF;
            #pragma unroll
            for (int a = 0; a < BN / 8; a++) mx = fmaxf(mx, fmaxf(s[4 * a + 2 * i], s[4 * a + 2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            const float m_new = fmaxf(m_run[i], mx * scale_log2);
            // Rows that have seen nothing yet keep m = -inf; subtract 0 so exp2 gives 0, not NaN.
            const float m_use = m_new == NEG_INF ? 0.f : m_new;
            corr[i] = ex2(m_run[i] - m_use);
            m_run[i] = m_new;
            float sum = 0.f;
            #pragma unroll
            for (int a = 0; a < BN / 8; a++)
                #pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float x = ex2(fmaf(s[4 * a + 2 * i + e], scale_log2, -m_use));
                    s[4 * a + 2 * i + e] = x;
                    sum += x;
                }
            rsum[i] = sum;
        }
    };

    int j = next_visible(j_lo);
    if (j < j_hi) {  // the same for every thread of the block
        load_kv(j, 0);
        cp_async_commit();
        int jn = next_visible(j + 1);
        if (jn < j_hi) load_kv(jn, 1);
        cp_async_commit();
        cp_async_wait<1>();
        fence_proxy_async();
        __syncthreads();

        float corr[2], rsum[2];
        wg_fence();
        wg_qk<D, BN, BF16>(s, q_base, BM, sk(0));
        wg_commit();
        scrub(j, 0);  // V of stage 0 is read by the first P V, after the next barrier
        wg_wait<0>();
        pin<BN / 2>(s);
        softmax(j, corr, rsum);
        l_run[0] = rsum[0];
        l_run[1] = rsum[1];
        wg_pack<BN, BF16>(p, s);

        int cs = 0;  // stage of tile j; tile jn is in the next stage, the third is free
        while (jn < j_hi) {
            const int ns = cs == 2 ? 0 : cs + 1, fs = ns == 2 ? 0 : ns + 1;
            const int after = next_visible(jn + 1);
            cp_async_wait<0>();  // tile jn has landed (this thread's copies)
            fence_proxy_async();
            __syncthreads();  // everyone's copies landed; everyone is done with the free stage
            if (after < j_hi) load_kv(after, fs);
            cp_async_commit();
            wg_fence();
            wg_qk<D, BN, BF16>(s, q_base, BM, sk(ns));
            wg_commit();
            wg_pv<D, BN, BF16>(o, p, sv(cs));
            wg_commit();
            scrub(jn, ns);  // no product in flight reads V of stage ns; its P V comes after a barrier
            wg_wait<1>();  // S of tile jn is ready; P V of tile j may still run
            pin<BN / 2>(s);
            softmax(jn, corr, rsum);
            // ptxas places a wgmma wait as early as its register hazards allow, which would put
            // this one ahead of the softmax meant to overlap the P V product. A shared-memory
            // store of the softmax's last result (to a scratch word) keeps the wait behind it.
            asm volatile("st.shared.f32 [%0], %1;" ::"r"(scratch), "f"(rsum[0] + rsum[1]) : "memory");
            wg_wait<0>();
            pin<D / 2>(o);
            pin<BN / 4>(p);
            #pragma unroll
            for (int a = 0; a < D / 8; a++) {
                o[4 * a] *= corr[0];
                o[4 * a + 1] *= corr[0];
                o[4 * a + 2] *= corr[1];
                o[4 * a + 3] *= corr[1];
            }
            l_run[0] = l_run[0] * corr[0] + rsum[0];
            l_run[1] = l_run[1] * corr[1] + rsum[1];
            wg_pack<BN, BF16>(p, s);
            cs = ns;
            j = jn;
            jn = after;
        }
        fence_proxy_async();  // the last scrub's writes, before the last P V reads them
        __syncthreads();
        wg_fence();
        wg_pv<D, BN, BF16>(o, p, sv(cs));
        wg_commit();
        wg_wait<0>();
        pin<D / 2>(o);
    }
    cp_async_wait<0>();
    __syncthreads();  // `bad` complete (and initialised where no tile was visible)

    // Epilogue: normalise, write O and LSE (natural log). Rows that saw nothing: 0 and -inf.
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        float l = l_run[i];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const int row = m0 + r0 + 8 * i;
        // A padding query row saw nothing, whatever its (possibly garbage) scores gave.
        const bool pad = my_seq[i] < 0;
        float inv = l > 0.f ? 1.f / l : 0.f;
        if (bad_keys_seen(bad, my_seq[i], my_pos[i])) inv = __int_as_float(0x7fc00000);
        if (row < tq) {
            const size_t obase = ((size_t)row * nh + h) * D;
            #pragma unroll
            for (int a = 0; a < D / 8; a++) {
                const int col = a * 8 + 2 * t4;
                const float x0 = pad ? 0.f : o[4 * a + 2 * i] * inv, x1 = pad ? 0.f : o[4 * a + 2 * i + 1] * inv;
                if (OUT_F32) *(float2*)((float*)out + obase + col) = make_float2(x0, x1);
                else *(u32*)((u16*)out + obase + col) = pack2<BF16>(x0, x1);
            }
            if (t4 == 0) lse[(size_t)row * nh + h] = l > 0.f && !pad ? (m_run[i] + log2f(l)) * LN2 : NEG_INF;
        }
    }
#else
    asm volatile("trap;");
#endif
}

#define FLASH_WG_ENTRY(NAME, D, BF16, OUT_F32)                                                                    \
    extern "C" __global__ void __launch_bounds__(256, 1) NAME(                                                    \
        const u16* q, const u16* k, const u16* v, void* out, float* lse, const int* q_seq, const int* q_pos,     \
        const int* k_seq, const int* k_pos, const int4* q_tiles, const int4* k_tiles, int tq, int tk, int nh,    \
        int nkv, float scale_log2, int split_tiles) {                                                             \
        flash_fwd_wg<D, BF16, OUT_F32>(q, k, v, out, lse, q_seq, q_pos, k_seq, k_pos, q_tiles, k_tiles, tq, tk,   \
                                       nh, nkv, scale_log2, split_tiles);                                         \
    }
FLASH_WG_ENTRY(flash_fwd_d64_bf16_f32_wg, 64, true, true)
FLASH_WG_ENTRY(flash_fwd_d64_bf16_b16_wg, 64, true, false)
FLASH_WG_ENTRY(flash_fwd_d64_f16_f32_wg, 64, false, true)
FLASH_WG_ENTRY(flash_fwd_d64_f16_b16_wg, 64, false, false)
FLASH_WG_ENTRY(flash_fwd_d128_bf16_f32_wg, 128, true, true)
FLASH_WG_ENTRY(flash_fwd_d128_bf16_b16_wg, 128, true, false)
FLASH_WG_ENTRY(flash_fwd_d128_f16_f32_wg, 128, false, true)
FLASH_WG_ENTRY(flash_fwd_d128_f16_b16_wg, 128, false, false)

// Self-test of the wgmma building blocks (`cp-gpu-bench selftest`), bf16, D = 128, one
// warpgroup: S = Q K^T for q [64][128], k [128][128], then O = bf16(S) V for v [128][128], all
// row-major; writes S [64][128] and O [64][128] in f32. It runs the same loaders' layout,
// descriptors and fragment packing as the prefill kernel, so a layout mistake shows here in
// isolation.
extern "C" __global__ void __launch_bounds__(128) wg_selftest(const u16* q, const u16* k, const u16* v, float* s_out,
                                                              float* o_out) {
#if CP_WGMMA
    constexpr int D = 128, BN = 128;
    const u32 base = (smem_addr(wg_smem) + 1023) & ~1023u;
    const u32 sq = base, sk = sq + 64 * D * 2, sv = sk + BN * D * 2;
    const int tid = threadIdx.x, wq = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    for (int c = tid; c < 64 * D / 8; c += 128) cp_async16(sq + sw128(64, c / 16, c % 16), q + c * 8, true);
    for (int c = tid; c < BN * D / 8; c += 128) {
        cp_async16(sk + sw128(BN, c / 16, c % 16), k + c * 8, true);
        cp_async16(sv + sw128(BN, c / 16, c % 16), v + c * 8, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    float s[BN / 2], o[D / 2];
    u32 p[BN / 4];
    for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    wg_fence();
    wg_qk<D, BN, true>(s, sq, 64, sk);
    wg_commit();
    wg_wait<0>();
    pin<BN / 2>(s);
    wg_pack<BN, true>(p, s);
    wg_fence();
    wg_pv<D, BN, true>(o, p, sv);
    wg_commit();
    wg_wait<0>();
    pin<D / 2>(o);
    for (int i = 0; i < 2; i++) {
        const int row = wq * 16 + g + 8 * i;
        for (int a = 0; a < BN / 8; a++)
            for (int e = 0; e < 2; e++) {
                s_out[row * BN + a * 8 + 2 * t4 + e] = s[4 * a + 2 * i + e];
                o_out[row * D + a * 8 + 2 * t4 + e] = o[4 * a + 2 * i + e];
            }
    }
#else
    asm volatile("trap;");
#endif
}

// Online merge (Eq. 4): acc_out <- merge in place; the merged LSE goes to new_lse (a separate
// buffer, since other threads of the row still read acc_lse). rows = Tq * NH; each thread
// handles 4 consecutive elements of one row.
template <int PART_KIND>  // 0: f32 partial, 1: bf16, 2: f16
DEVI void merge_fold(float* __restrict__ acc_out, const float* __restrict__ acc_lse, const void* __restrict__ part_out,
                     const float* __restrict__ part_lse, float* __restrict__ new_lse, long rows, int d) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int per_row = d / 4;
    long row = idx / per_row;
    if (row >= rows) return;
    int c = (int)(idx % per_row) * 4;
    float la = acc_lse[row], lb = part_lse[row];
    float mx = fmaxf(la, lb);
    float ms = mx == NEG_INF ? 0.f : mx;
    float wa = __expf(la - ms), wb = __expf(lb - ms), den = wa + wb;
    float inv = den > 0.f ? 1.f / den : 0.f;
    float4 a = *(float4*)(acc_out + row * d + c);
    float b[4];
    if (PART_KIND == 0) {
        float4 t = *(const float4*)((const float*)part_out + row * d + c);
        b[0] = t.x; b[1] = t.y; b[2] = t.z; b[3] = t.w;
    } else {
        uint2 t = *(const uint2*)((const u16*)part_out + row * d + c);
        u16 hs[4] = {(u16)(t.x & 0xffff), (u16)(t.x >> 16), (u16)(t.y & 0xffff), (u16)(t.y >> 16)};
        for (int e = 0; e < 4; e++) b[e] = PART_KIND == 1 ? bf16_to_f32(hs[e]) : f16_to_f32(hs[e]);
    }
    // A side of weight 0 (LSE -inf: it saw no key) contributes nothing, whatever its output
    // holds (0 x NaN would be NaN); a NaN weight still propagates.
    a.x = ((wa != 0.f ? a.x * wa : 0.f) + (wb != 0.f ? b[0] * wb : 0.f)) * inv;
    a.y = ((wa != 0.f ? a.y * wa : 0.f) + (wb != 0.f ? b[1] * wb : 0.f)) * inv;
    a.z = ((wa != 0.f ? a.z * wa : 0.f) + (wb != 0.f ? b[2] * wb : 0.f)) * inv;
    a.w = ((wa != 0.f ? a.w * wa : 0.f) + (wb != 0.f ? b[3] * wb : 0.f)) * inv;
    *(float4*)(acc_out + row * d + c) = a;
    if (c == 0) new_lse[row] = den > 0.f ? ms + __logf(den) : NEG_INF;
}
extern "C" __global__ void merge_fold_f32(float* ao, const float* al, const void* po, const float* pl, float* nl, long rows, int d) { merge_fold<0>(ao, al, po, pl, nl, rows, d); }
extern "C" __global__ void merge_fold_bf16(float* ao, const float* al, const void* po, const float* pl, float* nl, long rows, int d) { merge_fold<1>(ao, al, po, pl, nl, rows, d); }
extern "C" __global__ void merge_fold_f16(float* ao, const float* al, const void* po, const float* pl, float* nl, long rows, int d) { merge_fold<2>(ao, al, po, pl, nl, rows, d); }

// N-way merge of n f32 partials, either given by value as pointer arrays (up to 16 parts, no
// host-to-device copy per call) or as one contiguous [n][rows][d] buffer (`strided`).
// Output [rows][d] in f32 or 16-bit, LSE [rows].
#define MAX_PARTS 16
struct Parts { const float* out[MAX_PARTS]; const float* lse[MAX_PARTS]; };
template <int OUT_KIND>  // 0: f32, 1: bf16, 2: f16
DEVI void merge_n(const Parts& p, const float* strided_out, const float* strided_lse, int n, void* __restrict__ out,
                  float* __restrict__ out_lse, long rows, int d) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int per_row = d / 4;
    long row = idx / per_row;
    if (row >= rows) return;
    int c = (int)(idx % per_row) * 4;
    auto lse_of = [&](int s) { return strided_lse ? strided_lse[s * rows + row] : p.lse[s][row]; };
    auto out_of = [&](int s) { return strided_out ? strided_out + ((long)s * rows + row) * d + c : p.out[s] + row * d + c; };
    float mx = NEG_INF, den = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
    // Parts in groups of 8, all loads of a group issued before any use.
    for (int s0 = 0; s0 < n; s0 += 8) {
        float l[8];
        float4 t[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            bool ok = s0 + i < n;
            l[i] = ok ? lse_of(s0 + i) : NEG_INF;
            t[i] = ok ? *(const float4*)out_of(s0 + i) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        float gm = mx;
        #pragma unroll
        for (int i = 0; i < 8; i++) gm = fmaxf(gm, l[i]);
        float ms = gm == NEG_INF ? 0.f : gm;
        float corr = __expf(mx - ms);  // rescale what was accumulated so far (0 if nothing yet)
        den *= corr;
        for (int e = 0; e < 4; e++) acc[e] *= corr;
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            float w = __expf(l[i] - ms);
            den += w;
            // A part of weight 0 (LSE -inf) contributes nothing, whatever its output holds.
            if (w != 0.f) { acc[0] += w * t[i].x; acc[1] += w * t[i].y; acc[2] += w * t[i].z; acc[3] += w * t[i].w; }
        }
        mx = gm;
    }
    float ms = mx == NEG_INF ? 0.f : mx;
    float inv = den > 0.f ? 1.f / den : 0.f;
    for (int e = 0; e < 4; e++) acc[e] *= inv;
    if (OUT_KIND == 0) *(float4*)((float*)out + row * d + c) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    else if (OUT_KIND == 1) *(uint2*)((u16*)out + row * d + c) = make_uint2(pack2<true>(acc[0], acc[1]), pack2<true>(acc[2], acc[3]));
    else *(uint2*)((u16*)out + row * d + c) = make_uint2(pack2<false>(acc[0], acc[1]), pack2<false>(acc[2], acc[3]));
    if (c == 0) out_lse[row] = den > 0.f ? ms + __logf(den) : NEG_INF;
}
extern "C" __global__ void merge_all_f32(Parts p, int n, void* o, float* ol, long rows, int d) { merge_n<0>(p, nullptr, nullptr, n, o, ol, rows, d); }
extern "C" __global__ void merge_all_bf16(Parts p, int n, void* o, float* ol, long rows, int d) { merge_n<1>(p, nullptr, nullptr, n, o, ol, rows, d); }
extern "C" __global__ void merge_all_f16(Parts p, int n, void* o, float* ol, long rows, int d) { merge_n<2>(p, nullptr, nullptr, n, o, ol, rows, d); }
extern "C" __global__ void merge_strided_f32(const float* po, const float* pl, int n, void* o, float* ol, long rows, int d) {
    Parts none;
    merge_n<0>(none, po, pl, n, o, ol, rows, d);
}
extern "C" __global__ void merge_strided_bf16(const float* po, const float* pl, int n, void* o, float* ol, long rows, int d) {
    Parts none;
    merge_n<1>(none, po, pl, n, o, ol, rows, d);
}
extern "C" __global__ void merge_strided_f16(const float* po, const float* pl, int n, void* o, float* ol, long rows, int d) {
    Parts none;
    merge_n<2>(none, po, pl, n, o, ol, rows, d);
}

// Split-KV decode (flash-decoding): one query row per block column, keys of its sequence in
// the contiguous row range [kv_start[b], kv_start[b] + kv_len[b]) of the KV block, visible when
// k_pos <= q_pos. Grid (splits, NKV, Bq); 128 threads; a group of D/8 lanes per key, each lane
// holding 8 elements; the G = NH/NKV query heads of a KV head share every K/V load.
// Writes normalised partials: part_out [splits][Bq*NH][D] (normalised), part_lse [splits][Bq*NH].
template <int D, bool BF16, int G>
DEVI void decode_split(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                       const int* __restrict__ kv_start, const int* __restrict__ kv_len, const int* __restrict__ q_pos,
                       const int* __restrict__ k_pos, float* __restrict__ part_out, float* __restrict__ part_lse,
                       int bq, int nh, int nkv, int split_len, float scale_log2) {
    constexpr int LPK = D / 8;           // lanes per key
    constexpr int KPW = 32 / LPK;        // keys per warp step
    constexpr int NW = 4, GROUPS = NW * KPW;
    constexpr int UNROLL = 4;
    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int grp = warp * KPW + lane / LPK, sub = lane % LPK;
    const int qp = q_pos[b];
    const int start = kv_start[b] + split * split_len;
    const int end = min(kv_start[b] + kv_len[b], start + split_len);

    float qv[G][8];
    for (int hh = 0; hh < G; hh++) {
        const uint4 raw = *(const uint4*)(q + ((size_t)b * nh + kvh * G + hh) * D + sub * 8);
        const u16* p = (const u16*)&raw;
        for (int e = 0; e < 8; e++) qv[hh][e] = to_f32<BF16>(p[e]) * scale_log2;
    }
    float m[G], l[G], acc[G][8];
    for (int hh = 0; hh < G; hh++) {
        m[hh] = NEG_INF; l[hh] = 0.f;
        for (int e = 0; e < 8; e++) acc[hh][e] = 0.f;
    }
    // Every lane runs the same number of iterations (the shuffles below need the whole warp).
    for (int base = start; base < end; base += GROUPS * UNROLL) {
        uint4 kr[UNROLL], vr[UNROLL];
        bool ok[UNROLL];
        #pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int row = base + grp + u * GROUPS;
            ok[u] = row < end && k_pos[row < end ? row : start] <= qp;
            size_t off = ((size_t)(row < end ? row : start) * nkv + kvh) * D + sub * 8;
            kr[u] = *(const uint4*)(k + off);
            vr[u] = *(const uint4*)(v + off);
        }
        #pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const u16* kp = (const u16*)&kr[u];
            const u16* vp = (const u16*)&vr[u];
            float kf[8], vf[8];
            for (int e = 0; e < 8; e++) { kf[e] = to_f32<BF16>(kp[e]); vf[e] = to_f32<BF16>(vp[e]); }
            #pragma unroll
            for (int hh = 0; hh < G; hh++) {
                float s = 0.f;
                for (int e = 0; e < 8; e++) s += qv[hh][e] * kf[e];
                #pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffff, s, off);
                if (!ok[u]) continue;
                float m_new = fmaxf(m[hh], s);
                float corr = ex2(m[hh] - m_new), p = ex2(s - m_new);
                m[hh] = m_new;
                l[hh] = l[hh] * corr + p;
                for (int e = 0; e < 8; e++) acc[hh][e] = acc[hh][e] * corr + p * vf[e];
            }
        }
    }
    // Combine the groups of the block through shared memory.
    __shared__ float sm_m[GROUPS][G], sm_l[GROUPS][G];
    __shared__ float sm_acc[GROUPS][G][D];
    for (int hh = 0; hh < G; hh++) {
        if (sub == 0) { sm_m[grp][hh] = m[hh]; sm_l[grp][hh] = l[hh]; }
        for (int e = 0; e < 8; e++) sm_acc[grp][hh][sub * 8 + e] = acc[hh][e];
    }
    __syncthreads();
    for (int idx = tid; idx < G * D; idx += NW * 32) {
        int hh = idx / D, d = idx % D;
        float mx = NEG_INF;
        for (int gi = 0; gi < GROUPS; gi++) mx = fmaxf(mx, sm_m[gi][hh]);
        float ms = mx == NEG_INF ? 0.f : mx;
        float den = 0.f, num = 0.f;
        for (int gi = 0; gi < GROUPS; gi++) {
            float w = ex2(sm_m[gi][hh] - ms);
            den += sm_l[gi][hh] * w;
            num += sm_acc[gi][hh][d] * w;
        }
        long row = (long)b * nh + kvh * G + hh;
        long rows = (long)bq * nh;
        part_out[((long)split * rows + row) * D + d] = den > 0.f ? num / den : 0.f;
        if (d == 0) part_lse[split * rows + row] = den > 0.f ? (ms + log2f(den)) * LN2 : NEG_INF;
    }
}
#define DECODE_ENTRY(NAME, D, BF16, G)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) NAME(const u16* q, const u16* k, const u16* v,               \
        const int* kv_start, const int* kv_len, const int* q_pos, const int* k_pos, float* po, float* pl, int bq,    \
        int nh, int nkv, int split_len, float scale_log2) {                                                          \
        decode_split<D, BF16, G>(q, k, v, kv_start, kv_len, q_pos, k_pos, po, pl, bq, nh, nkv, split_len, scale_log2); \
    }
DECODE_ENTRY(decode_d128_bf16_g1, 128, true, 1)
DECODE_ENTRY(decode_d128_bf16_g4, 128, true, 4)
DECODE_ENTRY(decode_d128_bf16_g8, 128, true, 8)
DECODE_ENTRY(decode_d128_f16_g1, 128, false, 1)
DECODE_ENTRY(decode_d128_f16_g4, 128, false, 4)
DECODE_ENTRY(decode_d128_f16_g8, 128, false, 8)
DECODE_ENTRY(decode_d64_bf16_g1, 64, true, 1)
DECODE_ENTRY(decode_d64_bf16_g4, 64, true, 4)
DECODE_ENTRY(decode_d64_bf16_g8, 64, true, 8)
DECODE_ENTRY(decode_d64_f16_g1, 64, false, 1)
DECODE_ENTRY(decode_d64_f16_g4, 64, false, 4)
DECODE_ENTRY(decode_d64_f16_g8, 64, false, 8)

// Split-KV decode on the tensor cores (flash-decoding), grid (splits, NKV, Bq), 4 warps. The
// G = NH/NKV query heads of a KV head are the rows of one 16-row m-tile (rows >= G are zero;
// G <= 16), so each key is read once for all of them and the scores cost two mma.sync per key.
// Each warp streams its own chunks of 16 keys (chunks w, w+4, ... of the split) through a
// private 3-stage ring of shared memory filled by cp.async: two chunks stay in flight while it
// computes on the third, which is what keeps HBM busy. Online softmax per chunk; the warps'
// partials are merged through shared memory at the end. Same outputs as decode_split.
template <int D, bool BF16>
DEVI void decode_mma(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                     const int* __restrict__ kv_start, const int* __restrict__ kv_len, const int* __restrict__ q_pos,
                     const int* __restrict__ k_pos, float* __restrict__ part_out, float* __restrict__ part_lse, int bq,
                     int nh, int nkv, int split_len, float scale_log2) {
    constexpr int NW = 4, KC = 16, STAGES = 3, CH = D / 8, STAGE = 2 * KC * D;  // STAGE: K then V
    extern __shared__ __align__(128) unsigned char dec_smem[];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, G = nh / nkv;
    u16* ring = (u16*)dec_smem + warp * STAGES * STAGE;
    const int qp = q_pos[b];
    const int start = kv_start[b] + split * split_len;
    const int end = min(kv_start[b] + kv_len[b], start + split_len);
    const int n_chunks = end > start ? (end - start + KC - 1) / KC : 0;
    const int my_chunks = n_chunks > warp ? (n_chunks - warp + NW - 1) / NW : 0;

    // Q as A fragments (mma.m16n8k16 layout): row r = query head kvh*G + r, zero for r >= G.
    u32 qa[D / 16][4];
    {
        const u16* qb = q + ((size_t)b * nh + kvh * G) * D;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = g + 8 * (e & 1), c = kk * 16 + 2 * t4 + 8 * (e >> 1);
                qa[kk][e] = r < G ? *(const u32*)(qb + (size_t)r * D + c) : 0u;
            }
    }
    auto load_chunk = [&](int i, int st) {
        const int key0 = start + (warp + i * NW) * KC;
        const u32 ks = smem_addr(ring + st * STAGE), vs = ks + KC * D * 2;
        #pragma unroll
        for (int idx = lane; idx < KC * CH; idx += 32) {
            const int r = idx / CH, ch = idx % CH, row = key0 + r;
            // A key the query must not see is not loaded (zeros): whatever its V holds cannot
            // reach the query through P V (0 x NaN).
            const bool ok = row < end && k_pos[row] <= qp;
            const size_t off = ((size_t)(ok ? row : start) * nkv + kvh) * D + ch * 8;
            cp_async16(ks + swz<D>(r, ch), k + off, ok);
            cp_async16(vs + swz<D>(r, ch), v + off, ok);
        }
    };

    float o[D / 8][4];
    #pragma unroll
    for (int a = 0; a < D / 8; a++)
        #pragma unroll
        for (int e = 0; e < 4; e++) o[a][e] = 0.f;
    float m_run[2] = {NEG_INF, NEG_INF}, l_run[2] = {0.f, 0.f};
    #pragma unroll
    for (int i = 0; i < STAGES - 1; i++) {
        if (i < my_chunks) load_chunk(i, i);
        cp_async_commit();
    }
    for (int i = 0; i < my_chunks; i++) {  // warp-uniform trip count
        if (i + STAGES - 1 < my_chunks) load_chunk(i + STAGES - 1, (i + STAGES - 1) % STAGES);
        cp_async_commit();
        cp_async_wait<STAGES - 1>();
        __syncwarp();
        const u32 kb = smem_addr(ring + (i % STAGES) * STAGE), vb = kb + KC * D * 2;
        const int key0 = start + (warp + i * NW) * KC;

        float s[2][4];
        #pragma unroll
        for (int a = 0; a < 2; a++)
            #pragma unroll
            for (int e = 0; e < 4; e++) s[a][e] = 0.f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            u32 bf[4];
            const int key = (lane & 7) + ((lane >> 4) << 3), ch = kk * 2 + ((lane >> 3) & 1);
            ldsm_x4(bf, kb + swz<D>(key, ch));
            mma16816<BF16>(s[0], qa[kk], bf);
            mma16816<BF16>(s[1], qa[kk], bf + 2);
        }
        // Scale (log2 units) and mask: keys past the split's end or after the query position.
        #pragma unroll
        for (int a = 0; a < 2; a++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = key0 + a * 8 + 2 * t4 + (e & 1);
                const bool vis = col < end && k_pos[col] <= qp;
                s[a][e] = vis ? s[a][e] * scale_log2 : NEG_INF;
            }
        float corr[2];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            const float m_new = fmaxf(m_run[r], mx);
            const float m_use = m_new == NEG_INF ? 0.f : m_new;
            corr[r] = ex2(m_run[r] - m_use);
            m_run[r] = m_new;
            float sum = 0.f;
            #pragma unroll
            for (int a = 0; a < 2; a++)
                #pragma unroll
                for (int e = 0; e < 2; e++) {
                    s[a][2 * r + e] = ex2(s[a][2 * r + e] - m_use);
                    sum += s[a][2 * r + e];
                }
            l_run[r] = l_run[r] * corr[r] + sum;
        }
        #pragma unroll
        for (int a = 0; a < D / 8; a++) {
            o[a][0] *= corr[0];
            o[a][1] *= corr[0];
            o[a][2] *= corr[1];
            o[a][3] *= corr[1];
        }
        u32 pa[4] = {pack2<BF16>(s[0][0], s[0][1]), pack2<BF16>(s[0][2], s[0][3]), pack2<BF16>(s[1][0], s[1][1]),
                     pack2<BF16>(s[1][2], s[1][3])};
        #pragma unroll
        for (int dd = 0; dd < D / 16; dd++) {
            u32 bf[4];
            const int key = (lane & 7) + (((lane >> 3) & 1) << 3), ch = dd * 2 + (lane >> 4);
            ldsm_x4_t(bf, vb + swz<D>(key, ch));
            mma16816<BF16>(o[2 * dd], pa, bf);
            mma16816<BF16>(o[2 * dd + 1], pa, bf + 2);
        }
        __syncwarp();  // the stage is refilled next iteration
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with its ring: reuse it for the merge

    // Merge the warps' partials: red_o [NW][16][D], red_m and red_l [NW][16].
    float* red_o = (float*)dec_smem;
    float* red_m = red_o + NW * 16 * D;
    float* red_l = red_m + NW * 16;
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const int row = g + 8 * r;
        #pragma unroll
        for (int a = 0; a < D / 8; a++) {
            red_o[(warp * 16 + row) * D + a * 8 + 2 * t4] = o[a][2 * r];
            red_o[(warp * 16 + row) * D + a * 8 + 2 * t4 + 1] = o[a][2 * r + 1];
        }
        if (t4 == 0) {
            red_m[warp * 16 + row] = m_run[r];
            red_l[warp * 16 + row] = l;
        }
    }
    __syncthreads();
    const long rows = (long)bq * nh;
    for (int idx = tid; idx < G * D; idx += NW * 32) {
        const int r = idx / D, d = idx % D;
        float mx = NEG_INF;
        #pragma unroll
        for (int w = 0; w < NW; w++) mx = fmaxf(mx, red_m[w * 16 + r]);
        const float ms = mx == NEG_INF ? 0.f : mx;
        float den = 0.f, num = 0.f;
        #pragma unroll
        for (int w = 0; w < NW; w++) {
            const float wt = ex2(red_m[w * 16 + r] - ms);
            den += red_l[w * 16 + r] * wt;
            num += red_o[(w * 16 + r) * D + d] * wt;
        }
        const long row = (long)b * nh + kvh * G + r;
        part_out[((long)split * rows + row) * D + d] = den > 0.f ? num / den : 0.f;
        if (d == 0) part_lse[split * rows + row] = den > 0.f ? (ms + log2f(den)) * LN2 : NEG_INF;
    }
}
#define DECODE_MMA_ENTRY(NAME, D, BF16)                                                                             \
    extern "C" __global__ void __launch_bounds__(128) NAME(const u16* q, const u16* k, const u16* v,               \
        const int* kv_start, const int* kv_len, const int* q_pos, const int* k_pos, float* po, float* pl, int bq,    \
        int nh, int nkv, int split_len, float scale_log2) {                                                          \
        decode_mma<D, BF16>(q, k, v, kv_start, kv_len, q_pos, k_pos, po, pl, bq, nh, nkv, split_len, scale_log2);    \
    }
DECODE_MMA_ENTRY(decode_mma_d128_bf16, 128, true)
DECODE_MMA_ENTRY(decode_mma_d128_f16, 128, false)
DECODE_MMA_ENTRY(decode_mma_d64_bf16, 64, true)
DECODE_MMA_ENTRY(decode_mma_d64_f16, 64, false)

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
