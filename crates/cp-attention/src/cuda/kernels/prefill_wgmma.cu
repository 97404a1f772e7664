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
// Q tile of `q_rows` rows; `k_base`, `v_base`: a stage's K and V tiles of BN rows. Each operand's
// descriptor is made once per tile and stepped by adding the k-step's byte offset / 16 to its
// start-address field (v6.3; building each from its address cost four dependent uniform
// instructions ahead of every wgmma). Shared-memory addresses stay below 2^18, so the 14-bit
// field never carries.
DEVI u64 wg_desc_step(u64 desc, u32 bytes) { return desc + (bytes >> 4); }
template <int D, int BN, bool BF16> DEVI void wg_qk(float* s, u32 q_base, int q_rows, u32 k_base) {
    // K-major, 128-byte swizzle: 8-row groups 1024 bytes apart (SBO); a k-step of 16 elements
    // is 32 bytes along the swizzled row, and each 64-element column block is a separate tile.
    const u64 da = wg_desc(q_base, 16, 1024), db = wg_desc(k_base, 16, 1024);
    #pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const u32 cb = kk >> 2, kin = (kk & 3) * 32;
        wg_ss_n128<BF16>(s, wg_desc_step(da, cb * q_rows * 128 + kin), wg_desc_step(db, cb * BN * 128 + kin), kk > 0);
    }
}
template <int D, int BN, bool BF16> DEVI void wg_pv(float* o, const u32* p, u32 v_base) {
    // MN-major, 128-byte swizzle: 8-key groups 1024 bytes apart (SBO), 64-column blocks BN * 128
    // bytes apart (LBO); a k-step of 16 keys is 2048 bytes.
    const u64 dv = wg_desc(v_base, BN * 128, 1024);
    #pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wg_rs<D, BF16>(o, p + 4 * kk, wg_desc_step(dv, kk * 2048), 1);
}
// P (16-bit pairs, A fragments) from the S accumulators of a 64 x BN tile.
template <int BN, bool BF16> DEVI void wg_pack(u32* p, const float* s) {
    #pragma unroll
    for (int i = 0; i < BN / 4; i++) p[i] = pack2<BF16>(s[2 * i], s[2 * i + 1]);
}
#endif  // CP_WGMMA

// The two query rows a thread of a 64-row warpgroup tile holds (rows g and g + 8 of its warp's
// 16; seq < 0: padding or past the end), shared by the wgmma kernels' softmax and epilogue.
struct WgRows { int seq[2]; int pos[2]; };
DEVI WgRows wg_rows(int row0, int tq, const int* __restrict__ q_seq, const int* __restrict__ q_pos) {
    WgRows r;
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = row0 + 8 * i;
        r.seq[i] = row < tq ? q_seq[row] : -1;
        r.pos[i] = row < tq ? q_pos[row] : 0;
    }
    return r;
}

// Masks a warpgroup's S tile of key tile j in place (raw scores; -inf where not visible; `kind`
// from `classify`, or 3: one sequence, every key row present, positions pos0, pos0 + 1, ... —
// the mask is arithmetic) and runs the online softmax on it: S becomes 2^(S * scale - m), corr
// the factor for what came before, rsum this thread's row sums of the tile.
template <int BN>
DEVI void wg_mask(float* s, int kind, int pos0, int j, int tk, const WgRows& rows, const int* __restrict__ k_seq,
                  const int* __restrict__ k_pos) {
    const int t4 = threadIdx.x & 3;
    if (kind == 1 && (j + 1) * BN > tk) kind = 2;  // a short last tile: mask its missing rows
    if (kind == 3) {
        #pragma unroll
        for (int a = 0; a < BN / 8; a++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1;
                if (rows.seq[i] < 0 || pos0 + a * 8 + 2 * t4 + (e & 1) > rows.pos[i]) s[4 * a + e] = NEG_INF;
            }
    } else if (kind == 2) {
        const int n0 = j * BN;
        #pragma unroll
        for (int a = 0; a < BN / 8; a++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = n0 + a * 8 + 2 * t4 + (e & 1), i = e >> 1;
                const bool vis = col < tk && rows.seq[i] >= 0 && k_seq[col] == rows.seq[i] && k_pos[col] <= rows.pos[i];
                if (!vis) s[4 * a + e] = NEG_INF;
            }
    }
}

// Row i (0 or 1) of this thread's S tile as P = 2^(s * scale_log2 - m_use), in place; returns
// the thread's part of the row sum.
template <int BN> DEVI float wg_exp_row(float* s, int i, float scale_log2, float m_use) {
    float sum = 0.f;
    #pragma unroll
    for (int a = 0; a < BN / 8; a++)
        #pragma unroll
        for (int e = 0; e < 2; e++) {
            const float x = ex2(fmaf(s[4 * a + 2 * i + e], scale_log2, -m_use));
            s[4 * a + 2 * i + e] = x;
            sum += x;
        }
    return sum;
}

// The online softmax of a masked S tile with each row's exact maximum.
template <int BN> DEVI void wg_softmax_exact(float* s, float scale_log2, float* m_run, float* corr, float* rsum) {
    // The row maxima as trees (depth log2(BN / 4), both rows at once), not as chains of BN / 4
    // dependent FMNMX (v7.1: ncu put ~8% of the consumers' samples on that chain, half of them
    // waiting on the previous FMNMX).
    float mt[2][BN / 8];
    #pragma unroll
    for (int a = 0; a < BN / 8; a++)
        #pragma unroll
        for (int i = 0; i < 2; i++) mt[i][a] = fmaxf(s[4 * a + 2 * i], s[4 * a + 2 * i + 1]);
    #pragma unroll
    for (int w = BN / 16; w >= 1; w >>= 1)  // BN / 16, ..., 2, 1: a fixed count, unrolled
        #pragma unroll
        for (int a = 0; a < BN / 16; a++)
            #pragma unroll
            for (int i = 0; i < 2; i++)
                if (a < w) mt[i][a] = fmaxf(mt[i][a], mt[i][a + w]);
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        float mx = mt[i][0];
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
        const float m_new = fmaxf(m_run[i], mx * scale_log2);
        // Rows that have seen nothing yet keep m = -inf; subtract 0 so exp2 gives 0, not NaN.
        const float m_use = m_new == NEG_INF ? 0.f : m_new;
        // Exactly 1 where the maximum stays (wg_rescale then skips O's rescaling).
        corr[i] = m_new == m_run[i] ? 1.f : ex2(m_run[i] - m_use);
        m_run[i] = m_new;
        rsum[i] = wg_exp_row<BN>(s, i, scale_log2, m_use);
    }
}

template <int BN>
DEVI void wg_softmax(float* s, int kind, int pos0, int j, int tk, const WgRows& rows, const int* __restrict__ k_seq,
                     const int* __restrict__ k_pos, float scale_log2, float* m_run, float* corr, float* rsum) {
    wg_mask<BN>(s, kind, pos0, j, tk, rows, k_seq, k_pos);
    wg_softmax_exact<BN>(s, scale_log2, m_run, corr, rsum);
}

// This thread's raw scores of a tile, recomputed in f32 from the Q and K tiles in shared memory
// (both K-major with 128-byte swizzle, as the wgmma reads them): the lazy softmax's way back
// when an exponential overflowed and the scores it came from are gone. Slow (64 dot products of
// D a thread) and taken only for inputs whose scores jump by 2^128 within a row.
template <int D, int BN, bool BF16>
DEVI void wg_scores_slow(float* s, u32 q_base, int q_rows, u32 k_base) {
    const int t4 = threadIdx.x & 3, lr = ((threadIdx.x >> 5) & 3) * 16 + ((threadIdx.x & 31) >> 2);
    #pragma unroll
    for (int x = 0; x < BN / 2; x++) s[x] = 0.f;
    #pragma unroll 1
    for (int ch = 0; ch < D / 8; ch++) {
        float q[2][8];
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            u32 w[4];
            asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                         : "r"(q_base + sw128(q_rows, lr + 8 * i, ch)));
            #pragma unroll
            for (int u = 0; u < 8; u++) q[i][u] = to_f32<BF16>((u16)(w[u >> 1] >> (16 * (u & 1))));
        }
        #pragma unroll
        for (int a = 0; a < BN / 8; a++)
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                u32 w[4];
                asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                             : "r"(k_base + sw128(BN, a * 8 + 2 * t4 + e, ch)));
                #pragma unroll
                for (int u = 0; u < 8; u++) {
                    const float k = to_f32<BF16>((u16)(w[u >> 1] >> (16 * (u & 1))));
                    s[4 * a + e] = fmaf(q[0][u], k, s[4 * a + e]);
                    s[4 * a + 2 + e] = fmaf(q[1][u], k, s[4 * a + 2 + e]);
                }
            }
    }
}

// v7.4, the lazy maximum: the online softmax of a masked S tile against the running maximum as
// it stands, without the tile's own (the 64 FMNMX, the quad's shuffles and the correction's
// arithmetic off the path; v7.2 measured the softmax's instructions as what a tile's time
// follows). Any maximum m works for exactness — p = 2^(x - m), l and O scale together and the
// LSE is m + log2 l — so m only has to keep p in range: while every row sum of the warp's rows
// stays at most 2^8 (so every p does; NaN sums pass and stay NaN), the tile is done. Otherwise
// (a row's scores rose by more than 8 in log2 units) each row of the warp is scaled down by a
// power of two that brings its largest p below 1 (below 4 where the factor is capped at 2^-126,
// so l >= 1/2 either way) — exact, as is the same factor applied to
// O and l through `corr` — and its maximum raised by that power; if an exponential overflowed
// (scores up 2^128 or more), the warp recomputes its raw scores from shared memory and takes the
// exact softmax. While a (non-padding) row of the warp has seen nothing yet (m = -inf), the warp
// takes the exact softmax: its first visible keys need their own maximum (measured against 0,
// scores far below it flush to zero; review of v7.4). Padding rows (discarded by the epilogue)
// measure against 0 and are left out of the votes, so that their garbage cannot send the warp
// down the slow paths.
template <int D, int BN, bool BF16>
DEVI void wg_softmax_lazy(float* s, int kind, int pos0, int j, int tk, const WgRows& rows, const int* __restrict__ k_seq,
                          const int* __restrict__ k_pos, float scale_log2, float* m_run, float* corr, float* rsum,
                          u32 q_base, int q_rows, u32 k_base) {
    wg_mask<BN>(s, kind, pos0, j, tk, rows, k_seq, k_pos);
    const bool real0 = rows.seq[0] >= 0, real1 = rows.seq[1] >= 0;
    if (__any_sync(0xffffffff, (real0 && m_run[0] == NEG_INF) || (real1 && m_run[1] == NEG_INF))) {
        wg_softmax_exact<BN>(s, scale_log2, m_run, corr, rsum);
        return;
    }
    const float m_was[2] = {m_run[0], m_run[1]};
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        const float m_use = m_run[i] == NEG_INF ? 0.f : m_run[i];
        rsum[i] = wg_exp_row<BN>(s, i, scale_log2, m_use);
        corr[i] = 1.f;
        m_run[i] = m_use;
    }
    constexpr float LAZY_MAX = 256.f;
    if (__any_sync(0xffffffff, (real0 && rsum[0] > LAZY_MAX) || (real1 && rsum[1] > LAZY_MAX))) {
        const float inf = __int_as_float(0x7f800000);
        if (__any_sync(0xffffffff, (real0 && rsum[0] == inf) || (real1 && rsum[1] == inf))) {
            wg_scores_slow<D, BN, BF16>(s, q_base, q_rows, k_base);
            wg_mask<BN>(s, kind, pos0, j, tk, rows, k_seq, k_pos);
            m_run[0] = m_was[0];
            m_run[1] = m_was[1];
            wg_softmax_exact<BN>(s, scale_log2, m_run, corr, rsum);
            return;
        }
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            float mx = 0.f;
            #pragma unroll
            for (int a = 0; a < BN / 8; a++) mx = fmaxf(mx, fmaxf(s[4 * a + 2 * i], s[4 * a + 2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            if (mx > 1.f) {
                // mx in [2^(k-1), 2^k): scale by 2^-k, at most 2^-126 so that the factor stays a
                // normal float (mx may reach 2^128 - 1 with a finite sum; then p stays below 4;
                // mx = +inf only in a row whose sum is NaN, which stays NaN, or in a padding row,
                // which the epilogue discards). Beyond |m| ~ 2^24 (scores of ~10^7) m's additions
                // round; the exact path's f32 scores lose the same precision there.
                const int k = min(((__float_as_int(mx) >> 23) & 0xff) - 126, 126);
                const float c = __int_as_float((127 - k) << 23);
                #pragma unroll
                for (int a = 0; a < BN / 8; a++) {
                    s[4 * a + 2 * i] *= c;
                    s[4 * a + 2 * i + 1] *= c;
                }
                rsum[i] *= c;
                corr[i] = c;
                m_run[i] += (float)k;
            }
        }
    }
}

// A warpgroup tile's accumulators before its first key tile: O and S zero, nothing seen yet.
template <int D, int BN> DEVI void wg_init(float* o, float* s, float* m_run, float* l_run) {
    #pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    #pragma unroll
    for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
    m_run[0] = m_run[1] = NEG_INF;
    l_run[0] = l_run[1] = 0.f;
}

// After the first key tile's softmax: l starts at its row sums, P packed from S (O is still 0).
template <int BN, bool BF16> DEVI void wg_first(u32* p, const float* s, float* l_run, const float* rsum) {
    l_run[0] = rsum[0];
    l_run[1] = rsum[1];
    wg_pack<BN, BF16>(p, s);
}

// O *= corr per row, l = l * corr + rsum, P packed from S: the end of a tile's online softmax
// once the previous P V product has finished. A tile that raised no running maximum of the warp's
// rows (corr exactly 1 for all, see wg_softmax) leaves O as it is — exact, and most tiles once the
// maxima settle: D / 2 multiplies per thread off the path between two P V products.
template <int D, int BN, bool BF16>
DEVI void wg_rescale(float* o, u32* p, const float* s, float* l_run, const float* corr, const float* rsum) {
    if (__any_sync(0xffffffff, corr[0] != 1.f || corr[1] != 1.f)) {
        #pragma unroll
        for (int a = 0; a < D / 8; a++) {
            o[4 * a] *= corr[0];
            o[4 * a + 1] *= corr[0];
            o[4 * a + 2] *= corr[1];
            o[4 * a + 3] *= corr[1];
        }
    }
    l_run[0] = l_run[0] * corr[0] + rsum[0];
    l_run[1] = l_run[1] * corr[1] + rsum[1];
    wg_pack<BN, BF16>(p, s);
}

// The running partial a folding epilogue merges into, loaded ahead of it (under the item's last
// P V, v6.8): this thread's O columns of its two rows and, in the quad's first thread, their LSE
// (the others hold -inf; the epilogue passes the leader's on).
template <int D> struct FoldIn { float2 o[2][D / 8]; float l[2]; };
template <int D>
DEVI void wg_fold_load(FoldIn<D>& f, const float* __restrict__ out, const float* __restrict__ lse, int row0, int tq,
                       int nh, int h) {
    const int t4 = threadIdx.x & 3;
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = row0 + 8 * i;
        f.l[i] = row < tq && t4 == 0 ? lse[(size_t)row * nh + h] : NEG_INF;
        #pragma unroll
        for (int a = 0; a < D / 8; a++)
            f.o[i][a] = row < tq ? *(const float2*)(out + ((size_t)row * nh + h) * D + a * 8 + 2 * t4) : make_float2(0.f, 0.f);
    }
}

// Epilogue of a warpgroup tile: normalises O and writes it and the LSE (natural log) of the
// thread's two rows (global rows row0 and row0 + 8). Rows that saw nothing: 0 and -inf; rows that
// saw a recorded non-finite V: NaN. With ACC (f32 only), `out` and `lse` hold a running partial
// of the same rows, read ahead into `fin` (wg_fold_load), and the tile's partial is folded into
// it in place (Eq. 4, as merge_fold: a side of LSE -inf adds nothing, a NaN propagates); each
// (row, head) is one item's.
template <int D, bool BF16, bool OUT_F32, bool ACC = false>
DEVI void wg_epilogue(const float* o, const float* l_run, const float* m_run, const WgRows& rows, const BadKeys& bad,
                      int row0, int tq, int nh, int h, void* __restrict__ out, float* __restrict__ lse,
                      const FoldIn<D>* fin = nullptr) {
    const int t4 = threadIdx.x & 3;
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        float l = l_run[i];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const int row = row0 + 8 * i;
        // A padding query row saw nothing, whatever its (possibly garbage) scores gave.
        const bool pad = rows.seq[i] < 0;
        // l >= 1 where l > 0 (the row maximum's own term is 1): the fast reciprocal and logarithm
        // (MUFU) are exact to a few ulp there, without the IEEE slow paths.
        float inv = l > 0.f ? __fdividef(1.f, l) : 0.f;
        if (bad_keys_seen(bad, rows.seq[i], rows.pos[i])) inv = __int_as_float(0x7fc00000);
        const size_t obase = ((size_t)row * nh + h) * D;
        static_assert(!ACC || OUT_F32, "the fold runs on f32 partials");
        if (ACC) {
            // The running LSE, read by the quad's first thread (which alone writes it back) and
            // passed to the other three: no thread reads what another writes. O and LSE were
            // read ahead into `fin` (wg_fold_load).
            const float la = __shfl_sync(0xffffffff, fin->l[i], (threadIdx.x & 31) & ~3);
            if (row < tq) {
                // l is 0 where the row saw no key, NaN where it saw a non-finite score.
                const bool saw = l != 0.f && !pad;
                const Merge2 m = merge2(la, row_lse<true>(m_run[i], l, pad));
                const float wa = m.wa, wb = m.wb;
                // As merge_fold: a side of LSE -inf adds nothing; an underflowed weight still
                // multiplies (a NaN the row saw propagates).
                const bool ua = la != NEG_INF;
                const float fa = m.den == 0.f ? 0.f : wa / m.den, fb = m.den == 0.f ? 0.f : wb / m.den;
                #pragma unroll
                for (int a = 0; a < D / 8; a++) {
                    float2* p = (float2*)((float*)out + obase + a * 8 + 2 * t4);
                    const float2 old = fin->o[i][a];
                    const float x0 = pad ? 0.f : o[4 * a + 2 * i] * inv, x1 = pad ? 0.f : o[4 * a + 2 * i + 1] * inv;
                    *p = make_float2((ua ? old.x * fa : 0.f) + (saw ? x0 * fb : 0.f),
                                     (ua ? old.y * fa : 0.f) + (saw ? x1 * fb : 0.f));
                }
                if (t4 == 0) lse[(size_t)row * nh + h] = merged_lse(m);
            }
        } else if (OUT_F32) {
            // Each thread's float2 per 8 columns: a quad writes 32 contiguous bytes of the row.
            if (row < tq) {
                #pragma unroll
                for (int a = 0; a < D / 8; a++) {
                    const float x0 = pad ? 0.f : o[4 * a + 2 * i] * inv, x1 = pad ? 0.f : o[4 * a + 2 * i + 1] * inv;
                    *(float2*)((float*)out + obase + a * 8 + 2 * t4) = make_float2(x0, x1);
                }
            }
        } else {
            // 16-bit pairs: the quad's four threads hold the four pairs of each 8-column chunk.
            // Shuffled within the quad so that thread t4 holds whole chunks 4c + t4 and writes
            // 16 bytes at a time (the whole warp shuffles; only the stores depend on the row).
            u32 pk[D / 8];
            #pragma unroll
            for (int a = 0; a < D / 8; a++)
                pk[a] = pack2<BF16>(pad ? 0.f : o[4 * a + 2 * i] * inv, pad ? 0.f : o[4 * a + 2 * i + 1] * inv);
            const int quad = (threadIdx.x & 31) & ~3;
            #pragma unroll
            for (int c = 0; c < D / 32; c++) {
                u32 w[4] = {0u, 0u, 0u, 0u};
                #pragma unroll
                for (int r = 0; r < 4; r++) {
                    // As a source, this thread gives the receiver (t4 - r) & 3 its pair of chunk
                    // 4c + that receiver; as a receiver it takes pair (t4 + r) & 3 of chunk 4c + t4.
                    const int give_to = (t4 - r) & 3, from = (t4 + r) & 3;
                    const u32 give = give_to == 0 ? pk[4 * c] : give_to == 1 ? pk[4 * c + 1] : give_to == 2 ? pk[4 * c + 2] : pk[4 * c + 3];
                    const u32 got = __shfl_sync(0xffffffff, give, quad | from);
                    #pragma unroll
                    for (int k = 0; k < 4; k++) w[k] = from == k ? got : w[k];
                }
                if (row < tq) *(uint4*)((u16*)out + obase + (4 * c + t4) * 8) = make_uint4(w[0], w[1], w[2], w[3]);
            }
        }
        if (!ACC && row < tq && t4 == 0) lse[(size_t)row * nh + h] = row_lse<true>(m_run[i], l, pad);
    }
}

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
    const int g = lane >> 2;
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
    const WgRows rows = wg_rows(m0 + r0, tq, q_seq, q_pos);
    float o[D / 2], s[BN / 2], m_run[2], l_run[2];
    u32 p[BN / 4];
    wg_init<D, BN>(o, s, m_run, l_run);
    const u32 q_base = base + wg * 64 * 128;

    auto softmax = [&](int j, float* corr, float* rsum) {
        wg_softmax<BN>(s, classify(qt, ktile(j)), 0, j, tk, rows, k_seq, k_pos, scale_log2, m_run, corr, rsum);
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
        wg_first<BN, BF16>(p, s, l_run, rsum);

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
            wg_rescale<D, BN, BF16>(o, p, s, l_run, corr, rsum);
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

    wg_epilogue<D, BF16, OUT_F32>(o, l_run, m_run, rows, bad, m0 + r0, tq, nh, h, out, lse);
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
