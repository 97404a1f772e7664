// Split-KV decode: the CUDA-core kernel (the baseline) and the tensor-core one.
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
                // A row whose maximum is still -inf (a visible key scoring -inf came first)
                // subtracts 0, so that exp2 gives 0, not NaN (as the other kernels do).
                const float m_use = m_new == NEG_INF ? 0.f : m_new;
                float corr = ex2(m[hh] - m_use), p = ex2(s - m_use);
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
        // den is 0 where the row saw no key (0, -inf), NaN where it saw a non-finite score (NaN, NaN).
        part_out[((long)split * rows + row) * D + d] = den == 0.f ? 0.f : num / den;
        if (d == 0) part_lse[split * rows + row] = row_lse<false>(ms, den);
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
        // den is 0 where the row saw no key (0, -inf), NaN where it saw a non-finite score (NaN, NaN).
        part_out[((long)split * rows + row) * D + d] = den == 0.f ? 0.f : num / den;
        if (d == 0) part_lse[split * rows + row] = row_lse<false>(ms, den);
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
