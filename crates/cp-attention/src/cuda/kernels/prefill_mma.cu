// Prefill on mma.sync (sm_80 and newer): FlashAttention-2's layout.
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
                if (t4 == 0) lse[(size_t)row * nh + h] = row_lse<false>(m_run[mt][i], l, pad);
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
