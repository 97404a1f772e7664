// The merges of partials (Eq. 4): online fold and N-way, -inf safe and garbage safe.
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
    const float la = acc_lse[row], lb = part_lse[row];
    const Merge2 m = merge2(la, lb);
    const float wa = m.wa, wb = m.wb, inv = m.den == 0.f ? 0.f : 1.f / m.den;
    // A side adds its output times its weight unless its LSE is -inf (it saw no key: its output
    // may hold anything, and 0 x NaN would be NaN). A weight that underflows to 0 still
    // multiplies, so a NaN a row saw propagates however small its side's weight.
    const bool ua = la != NEG_INF, ub = lb != NEG_INF;
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
    a.x = ((ua ? a.x * wa : 0.f) + (ub ? b[0] * wb : 0.f)) * inv;
    a.y = ((ua ? a.y * wa : 0.f) + (ub ? b[1] * wb : 0.f)) * inv;
    a.z = ((ua ? a.z * wa : 0.f) + (ub ? b[2] * wb : 0.f)) * inv;
    a.w = ((ua ? a.w * wa : 0.f) + (ub ? b[3] * wb : 0.f)) * inv;
    *(float4*)(acc_out + row * d + c) = a;
    if (c == 0) new_lse[row] = merged_lse(m);
}
extern "C" __global__ void merge_fold_f32(float* ao, const float* al, const void* po, const float* pl, float* nl, long rows, int d) { merge_fold<0>(ao, al, po, pl, nl, rows, d); }
extern "C" __global__ void merge_fold_bf16(float* ao, const float* al, const void* po, const float* pl, float* nl, long rows, int d) { merge_fold<1>(ao, al, po, pl, nl, rows, d); }
extern "C" __global__ void merge_fold_f16(float* ao, const float* al, const void* po, const float* pl, float* nl, long rows, int d) { merge_fold<2>(ao, al, po, pl, nl, rows, d); }

// N-way merge of n f32 partials, either given by value as pointer arrays (up to 16 parts, no
// host-to-device copy per call) or as one contiguous [n][rows][d] buffer (`strided`).
// Output [rows][d] in f32 or 16-bit, LSE [rows].
#define MAX_PARTS 16
struct Parts { const float* out[MAX_PARTS]; const float* lse[MAX_PARTS]; };
// Eq. 4 over n parts for four consecutive columns of a row: part s's LSE is lse_of(s) and its
// columns cols_of(s) (a float4); the parts in groups of 8, all loads of a group issued before
// any use. Leaves the merged columns in `acc` and returns the merged LSE.
template <class LseOf, class ColsOf> DEVI float merge_cols(int n, LseOf lse_of, ColsOf cols_of, float* acc) {
    float mx = NEG_INF, den = 0.f;
    for (int e = 0; e < 4; e++) acc[e] = 0.f;
    for (int s0 = 0; s0 < n; s0 += 8) {
        float l[8];
        float4 t[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            bool ok = s0 + i < n;
            l[i] = ok ? lse_of(s0 + i) : NEG_INF;
            t[i] = ok ? cols_of(s0 + i) : make_float4(0.f, 0.f, 0.f, 0.f);
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
            // A part of LSE -inf (it saw no key) adds nothing, whatever its output holds; one
            // whose weight underflows to 0 still multiplies (a NaN it saw propagates).
            if (l[i] != NEG_INF) { acc[0] += w * t[i].x; acc[1] += w * t[i].y; acc[2] += w * t[i].z; acc[3] += w * t[i].w; }
        }
        mx = gm;
    }
    float ms = mx == NEG_INF ? 0.f : mx;
    // A sum of 0: no part saw a key (0 and -inf); NaN: some part's LSE was NaN (NaN and NaN).
    float inv = den == 0.f ? 0.f : 1.f / den;
    for (int e = 0; e < 4; e++) acc[e] *= inv;
    return den == 0.f ? NEG_INF : ms + __logf(den);
}

// Four merged columns written at element `at` of `out` in its kind (0: f32, 1: bf16, 2: f16).
template <int OUT_KIND> DEVI void store_cols(void* __restrict__ out, long at, const float* acc) {
    if (OUT_KIND == 0) *(float4*)((float*)out + at) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    else *(uint2*)((u16*)out + at) = make_uint2(pack2<OUT_KIND == 1>(acc[0], acc[1]), pack2<OUT_KIND == 1>(acc[2], acc[3]));
}

template <int OUT_KIND>  // 0: f32, 1: bf16, 2: f16
DEVI void merge_n(const Parts& p, const float* strided_out, const float* strided_lse, int n, void* __restrict__ out,
                  float* __restrict__ out_lse, long rows, int d) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int per_row = d / 4;
    long row = idx / per_row;
    if (row >= rows) return;
    int c = (int)(idx % per_row) * 4;
    auto lse_of = [&](int s) { return strided_lse ? strided_lse[s * rows + row] : p.lse[s][row]; };
    auto cols_of = [&](int s) {
        return *(const float4*)(strided_out ? strided_out + ((long)s * rows + row) * d + c : p.out[s] + row * d + c);
    };
    float acc[4];
    const float lse = merge_cols(n, lse_of, cols_of, acc);
    store_cols<OUT_KIND>(out, row * d + c, acc);
    if (c == 0) out_lse[row] = lse;
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

// The tail split's merge (v6.7): tail item t (item t of the launch's numbering, one split, as
// `tma_item_coords` decodes it) left `pieces` f32 partials of its `bm` block rows, [t][piece][bm][d]
// with LSE [t][piece][bm]; they are merged (Eq. 4) into the item's rows (below tq) and head of
// `out` [tq][nh][d] in its kind and `lse` [tq][nh]. With ACC (f32), `out` and `lse` hold the
// running partial, one more part, and receive the result in place: every thread of a row reads
// the row's LSE before its first thread writes it (a row's threads share a warp, d / 4 <= 32).
template <int OUT_KIND, bool ACC>
DEVI void merge_tail(const float* __restrict__ parts, const float* __restrict__ part_lse, int pieces, int bm, int n_tail,
                     void* __restrict__ out, float* __restrict__ lse, int tq, int nh, int d, const int* __restrict__ q_order,
                     int busy, int kv_major, int nkv) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const int per_row = d / 4;
    const long row_all = idx / per_row;
    const int t = (int)(row_all / bm), r = (int)(row_all % bm), c = (int)(idx % per_row) * 4;
    int qbi = 0, h = 0, z = 0, row = tq;
    if (row_all < (long)n_tail * bm) {
        tma_item_coords(t, kv_major != 0, nh, nkv, (tq + bm - 1) / bm, busy, 1, qbi, h, z);
        row = q_order[qbi] * bm + r;
    }
    const bool mine = row < tq;
    const long at = ((long)row * nh + h) * d + c;
    const long first = (long)t * pieces * bm + r;  // piece 0's row in `part_lse`
    auto lse_of = [&](int s) { return s < pieces ? part_lse[first + (long)s * bm] : lse[(long)row * nh + h]; };
    auto cols_of = [&](int s) {
        return *(const float4*)(s < pieces ? parts + (first + (long)s * bm) * d + c : (const float*)out + at);
    };
    float acc[4];
    const float merged = mine ? merge_cols(pieces + (ACC ? 1 : 0), lse_of, cols_of, acc) : 0.f;
    if (ACC) __syncwarp();
    if (!mine) return;
    store_cols<OUT_KIND>(out, at, acc);
    if (c == 0) lse[(long)row * nh + h] = merged;
}
#define MERGE_TAIL_ENTRY(NAME, KIND, ACC)                                                                           \
    extern "C" __global__ void NAME(const float* parts, const float* part_lse, int pieces, int bm, int n_tail,      \
                                    void* out, float* lse, int tq, int nh, int d, const int* q_order, int busy,     \
                                    int kv_major, int nkv) {                                                        \
        merge_tail<KIND, ACC>(parts, part_lse, pieces, bm, n_tail, out, lse, tq, nh, d, q_order, busy, kv_major, nkv); \
    }
MERGE_TAIL_ENTRY(merge_tail_f32, 0, false)
MERGE_TAIL_ENTRY(merge_tail_bf16, 1, false)
MERGE_TAIL_ENTRY(merge_tail_f16, 2, false)
MERGE_TAIL_ENTRY(merge_tail_acc, 0, true)
