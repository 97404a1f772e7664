// ---------------------------------------------------------------------------------------------
// Hopper (sm_90a) prefill, warp-specialised (v5). NC + 1 warpgroups per CTA (three, or four at
// head dim 64 with three consumers):
// - warpgroup 0, the producer: warp 0 walks the visible key tiles and has one lane issue TMA
//   bulk tensor copies of K and V (and Q once) into a ring of shared-memory stages, each stage
//   guarded by a "full" mbarrier (the copies' bytes landed) and an "empty" one (every reader is
//   done); warps 1-3 scrub non-finite V values of tiles with masked pairs (see BadKeys) and
//   release them through a "scrubbed" mbarrier, which also marks each item's end (its record
//   complete). The warpgroup gives registers away (setmaxnreg).
// - warpgroups 1..NC, the consumers (NC = 2, or 3 at head dim 64: a 192-row query block, as
//   FlashAttention-3 takes there, where one warpgroup's short products leave the tensor cores
//   idle unless more warps are ready to issue): 64 query rows each, the same wgmma products,
//   softmax and intra-warpgroup overlap as the v4 kernel (the QK^T of tile j + 1 and the P V of
//   tile j issued together, the softmax of j + 1 under the P V). With PINGPONG, named barriers
//   make the warpgroups take turns issuing their products in a round, so one's softmax runs
//   while another's matrix products occupy the tensor cores (FlashAttention-3's schedule).
// The copy warp also classifies each tile (its mask kind travels with the stage) and passes
// each work item, decoded, to the others. The grid is persistent (v5.1–5.2: one block per
// multiprocessor walking (query block, head, split) items heaviest first; see `item` below);
// no block-wide barrier after the set-up: the warpgroups meet only at the mbarriers.
// The tensor maps describe q [tq, nh, D], k and v [tk, nkv, D] as 3-D tensors (D, heads, rows)
// with a box of 64 x 1 x 128 (Q: 64 x 1 x BM) and the 128-byte swizzle, so a box lands as one
// [128][64] (Q: [BM][64]) column block in the layout `sw128` describes; rows past the end arrive
// as zeros.
// ---------------------------------------------------------------------------------------------

// The driver's tensor map (CUtensorMap: 128 opaque bytes), passed by value as a
// __grid_constant__ kernel parameter so that the copy engine can read it where it lies.
struct __align__(64) TmaMap { u64 opaque[16]; };

#if CP_WGMMA
DEVI void mbar_init(u32 bar, u32 count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory"); }
// Makes initialised mbarriers visible to the copy engine (and, with the barrier after it, to the
// other threads).
DEVI void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
DEVI void mbar_arrive(u32 bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }
// Arrives and announces `bytes` of copies that complete on this phase.
DEVI void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
DEVI bool mbar_try(u32 bar, u32 parity) {
    u32 done;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    return done != 0;
}
DEVI u64 globaltimer() { u64 t; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t)); return t; }
// Waits until the phase of parity `parity` has completed. A wait that never ends (a protocol
// fault) would hang the device: after 10 s the thread stores to address 0, an illegal-address
// fault that ends the kernel with an error the host sees. (Not `trap`: a trap on the consumers'
// path makes ptxas ignore their raised register count and spill.)
DEVI void mbar_wait(u32 bar, u32 parity) {
    if (mbar_try(bar, parity)) return;
    const u64 t0 = globaltimer();
    #pragma unroll 1
    for (u32 polls = 1; !mbar_try(bar, parity); polls++)
        if ((polls & 4095) == 0 && globaltimer() - t0 > 10000000000ull)
            asm volatile("st.global.u32 [%0], 0;" ::"l"(0ull) : "memory");
}
// One box of a 3-D tensor map at coordinates (x, y, z), completing on mbarrier `bar`.
DEVI void tma_load3(u32 dst, const TmaMap* map, u32 bar, int x, int y, int z) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];"
        ::"r"(dst), "l"((u64)map), "r"(bar), "r"(x), "r"(y), "r"(z) : "memory");
}
DEVI void named_sync(int id, int threads) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory"); }
DEVI void named_arrive(int id, int threads) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory"); }
template <int R> DEVI void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R)); }
template <int R> DEVI void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R)); }
#endif  // CP_WGMMA

// One work item of the persistent grid: a query block (64 x NC rows) of one head over one split
// of the key range.
struct TmaItem { int h, m0, z, j_lo, j_hi; int4 qt; };
// A stage's mask kind (0-3, see `classify`) with this bit: the item's last tile.
constexpr int LAST_TILE = 4;

template <int D, int NC, bool BF16, bool OUT_F32, bool PINGPONG, bool XO>
__device__ void flash_fwd_tma(const TmaMap* q_map, const TmaMap* k_map, const TmaMap* v_map, void* __restrict__ out,
                              float* __restrict__ lse, const int* __restrict__ q_seq, const int* __restrict__ q_pos,
                              const int* __restrict__ k_seq, const int* __restrict__ k_pos,
                              const int4* __restrict__ q_tiles, const int4* __restrict__ k_tiles,
                              const int* __restrict__ q_order, int* __restrict__ next_item, int dynamic, int tq,
                              int tk, int nh, int nkv, float scale_log2, int splits, int split_tiles) {
#if CP_WGMMA
    static_assert(NC == 2 || (NC == 3 && D == 64), "three consumer warpgroups only at head dim 64 (registers)");
    constexpr int BM = 64 * NC, BN = 128, CH = D / 8, ST = 3, SCRUB_THREADS = 96, CONSUMER_THREADS = 128 * NC;
    // Registers per thread after setmaxnreg: the block has 65536, 128 x (NC + 1) threads.
    constexpr int PRODUCER_REGS = NC == 2 ? 40 : 32, CONSUMER_REGS = NC == 2 ? 232 : 160;
    // The pool setmaxnreg redistributes: every thread's registers at entry (65536 / threads,
    // rounded down to a multiple of 8 — 168 for 384 threads, 128 for 512). A split over it would
    // hang in setmaxnreg.inc.
    constexpr int ENTRY_REGS = (65536 / (128 * (NC + 1))) & ~7;
    static_assert(128 * PRODUCER_REGS + CONSUMER_THREADS * CONSUMER_REGS <= 128 * (NC + 1) * ENTRY_REGS,
                  "register budget");
    constexpr int SCRUB_BAR = NC + 1;  // named barriers: 1..NC the consumers' turns, then the scrubbers'
    constexpr u32 Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
    const u32 base = (smem_addr(wg_smem) + 1023) & ~1023u;
    auto sk = [&](int st) { return base + Q_BYTES + (u32)st * 2 * KV_BYTES; };
    auto sv = [&](int st) { return base + Q_BYTES + (u32)st * 2 * KV_BYTES + KV_BYTES; };
    // mbarriers: full[ST], empty[ST], scrubbed[ST], Q full, Q empty, bad_free[2]; then each
    // stage's tile index (-1: the end of a work item, -2: the end of all), mask kind and first
    // key position, the current item (-1: none left) and a scratch word.
    const u32 bars = base + Q_BYTES + ST * 2 * KV_BYTES;
    auto full = [&](int st) { return bars + 8 * st; };
    auto empty = [&](int st) { return bars + 8 * (ST + st); };
    auto scrubbed = [&](int st) { return bars + 8 * (2 * ST + st); };
    const u32 q_full = bars + 8 * 3 * ST, q_empty = q_full + 8, bad_free = q_empty + 8;
    const u32 tile_ids = bad_free + 16, tile_kind = tile_ids + 4 * ST, tile_pos0 = tile_kind + 4 * ST;
    const u32 item_id = tile_pos0 + 4 * ST;  // the item: index, h, m0, z, qt (8 words)
    const u32 scratch = item_id + 32;

    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31;
    const int n_ktiles = (tk + BN - 1) / BN, n_t64 = (tk + 63) / 64, n_q64 = (tq + 63) / 64;
    const int n_qblocks = (tq + BM - 1) / BM, n_items = n_qblocks * nh * splits;
    // Work items are numbered heaviest first: query blocks in `q_order` (by descending last
    // position, so packed batches are longest-first too), the heads of a block adjacent (they
    // share K/V in L2), splits last. Each block starts with item blockIdx.x and then takes the
    // next unclaimed one from the global counter `next_item` (zeroed before the launch) when
    // `dynamic`: a block whose items ran long takes fewer, so the launch ends when its last,
    // lightest, items do. Otherwise the items are dealt in a zigzag (block b takes b + rG in
    // even rounds r, (G - 1 - b) + rG in odd ones), so that every block's share of a declining
    // sequence is about equal, without the atomics. The copy warp claims items and passes each
    // on, decoded, through shared memory.
    auto item = [&](int wi) {
        TmaItem it;
        const int qbi = wi / (nh * splits), rem = wi - qbi * nh * splits;
        const int qb = q_order[qbi];
        it.h = rem % nh;
        it.z = rem / nh;
        it.m0 = qb * BM;
        it.j_lo = it.z * split_tiles;
        it.j_hi = min(n_ktiles, it.j_lo + split_tiles);
        it.qt = tiles_summary(q_tiles, n_q64, NC * qb, NC);
        return it;
    };
    auto ktile = [&](int j) { return tiles_summary(k_tiles, n_t64, 2 * j, 2); };
    // Non-finite V recorded per item, in two sets used by alternate items: scrubbers reuse a set
    // only after the consumers have read it (bad_free).
    __shared__ BadKeys bad[2];
    bad_keys_init(bad[0]);
    bad_keys_init(bad[1]);
    if (tid == 0) {
        for (int st = 0; st < ST; st++) {
            mbar_init(full(st), 1);
            mbar_init(empty(st), CONSUMER_THREADS + SCRUB_THREADS);
            mbar_init(scrubbed(st), SCRUB_THREADS);
        }
        mbar_init(q_full, 1);
        mbar_init(q_empty, CONSUMER_THREADS);
        mbar_init(bad_free, CONSUMER_THREADS);
        mbar_init(bad_free + 8, CONSUMER_THREADS);
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        regs_dec<PRODUCER_REGS>();
        if (tid < 32) {
            // The copy warp: for each item, its first visible tile, Q once it is free, then the
            // other visible tiles (every lane walks them, a ballot per 32; lane 0 copies) and an
            // end mark.
            int it = 0, wi = blockIdx.x;
            #pragma unroll 1
            for (int n = 0;; n++) {
                const bool last = wi >= n_items;
                const TmaItem w = item(last ? 0 : wi);  // decoded while the consumers finish
                // The next item, claimed now and used after this item's tiles: the atomic's
                // latency hides.
                int claimed = 0;
                if (dynamic) {
                    if (lane == 0 && !last) claimed = atomicAdd(next_item, 1) + gridDim.x;
                } else {
                    const int r = n + 1, b = (r & 1) ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
                    claimed = (long long)r * gridDim.x + b < n_items ? r * gridDim.x + b : n_items;
                }
                // The item and its Q, once the consumers are done with the previous Q.
                auto item_start = [&]() {
                    mbar_wait(q_empty, (n & 1) ^ 1);  // the first passes at once
                    if (lane == 0) {
                        const int info[8] = {last ? -1 : wi, w.h, w.m0, w.z, w.qt.x, w.qt.y, w.qt.z, w.qt.w};
                        #pragma unroll
                        for (int i = 0; i < 8; i++)
                            asm volatile("st.shared.s32 [%0], %1;" ::"r"(item_id + 4 * i), "r"(info[i]) : "memory");
                        if (last) {
                            mbar_arrive(q_full);  // no item: the consumers see -1 and stop
                        } else {
                            mbar_expect_tx(q_full, Q_BYTES);
                            #pragma unroll
                            for (int c = 0; c < D / 64; c++) tma_load3(base + c * BM * 128, q_map, q_full, c * 64, w.h, w.m0);
                        }
                    }
                };
                if (last) {
                    item_start();
                    // The scrubbers' end: a stage marked -2.
                    const int st = it % ST;
                    mbar_wait(empty(st), ((it / ST) & 1) ^ 1);
                    if (lane == 0) {
                        asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_ids + 4 * st), "r"(-2) : "memory");
                        mbar_arrive(full(st));
                    }
                    break;
                }
                const int kvh = w.h / (nh / nkv);
                int j = next_visible_tile<2>(w.qt, k_tiles, n_t64, w.j_lo, w.j_hi);
                if (j >= w.j_hi) {
                    // No visible tile: the item is one stage marked -1 (its readers still close
                    // it: the scrubbers reset its record, the consumers write O = 0, LSE = -inf).
                    const int st = it % ST;
                    mbar_wait(empty(st), ((it / ST) & 1) ^ 1);
                    if (lane == 0) {
                        asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_ids + 4 * st), "r"(-1) : "memory");
                        mbar_arrive(full(st));
                    }
                    item_start();
                    __syncwarp();
                    it++;
                } else {
                    // v6: each tile's stage says whether it is the item's last (LAST_TILE in its
                    // kind), so the item needs no end stage and the consumers release Q after
                    // their last Q K^T. The walk to the next visible tile (which decides the flag)
                    // and the next tile's classification run before the wait for a free stage,
                    // where the copy warp has time to spare: after it, they would delay the tile.
                    auto kind_of = [&](int j, int4& kt) {
                        // The tile's mask kind (classify), worked out here, off the consumers'
                        // path. Kind 3: a masked tile of one sequence whose 128 keys hold
                        // consecutive positions (checked row by row: the summary alone does not
                        // prove it), whose mask is arithmetic — no per-element loads of key
                        // positions.
                        kt = ktile(j);
                        int kind = classify(w.qt, kt);
                        if (kind == 2 && w.qt.x >= 0 && kt.x == w.qt.x && kt.w == 0 && kt.z - kt.y == BN - 1) {
                            bool consecutive = true;
                            #pragma unroll
                            for (int r = lane; r < BN; r += 32) consecutive &= k_pos[j * BN + r] == kt.y + r;
                            if (__all_sync(0xffffffff, consecutive)) kind = 3;
                        }
                        return kind;
                    };
                    int4 kt;
                    int kind = kind_of(j, kt);
                    #pragma unroll 1
                    for (bool first = true;; it++, first = false) {
                        const int jn = next_visible_tile<2>(w.qt, k_tiles, n_t64, j + 1, w.j_hi);
                        const int st = it % ST;
                        mbar_wait(empty(st), ((it / ST) & 1) ^ 1);
                        if (lane == 0) {
                            const int flagged = kind | (jn >= w.j_hi ? LAST_TILE : 0);
                            asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_ids + 4 * st), "r"(j) : "memory");
                            asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_kind + 4 * st), "r"(flagged) : "memory");
                            asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_pos0 + 4 * st), "r"(kt.y) : "memory");
                            mbar_expect_tx(full(st), 2 * KV_BYTES);
                            #pragma unroll
                            for (int c = 0; c < D / 64; c++) {
                                tma_load3(sk(st) + c * BN * 128, k_map, full(st), c * 64, kvh, j * BN);
                                tma_load3(sv(st) + c * BN * 128, v_map, full(st), c * 64, kvh, j * BN);
                            }
                        }
                        // The item and its Q after its first tile (v5.9): Q waits for the
                        // consumers' last Q K^T of the previous item, the tile only for a free
                        // stage (T=4K B=4: +2%).
                        if (first) item_start();
                        __syncwarp();
                        if (jn >= w.j_hi) {
                            it++;
                            break;
                        }
                        j = jn;
                        kind = kind_of(j, kt);
                    }
                }
                wi = dynamic ? __shfl_sync(0xffffffff, claimed, 0) : claimed;
            }
        } else {
            // Scrub warps: a tile with masked pairs must hold no non-finite V (see BadKeys).
            // They follow the stages; an item's last tile (or its -1 stage) closes it, -2 ends the walk.
            const int me = tid - 32;
            bool first = true;
            #pragma unroll 1
            for (int it = 0, n = 0;; it++) {
                const int st = it % ST;
                mbar_wait(full(st), (it / ST) & 1);
                int j, kind;
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(j) : "r"(tile_ids + 4 * st) : "memory");
                if (j == -2) break;
                BadKeys& b = bad[n & 1];
                if (first && n >= 2) {
                    mbar_wait(bad_free + 8 * (n & 1), ((n >> 1) - 1) & 1);  // item n - 2's readers are done
                    if (me < BAD_SLOTS) { b.seq[me] = -1; b.pos[me] = 0x7fffffff; }
                    if (me == 0) b.overflow = 0;
                    named_sync(SCRUB_BAR, SCRUB_THREADS);
                }
                first = false;
                bool ends = j == -1;
                if (j >= 0) {
                    asm volatile("ld.shared.s32 %0, [%1];" : "=r"(kind) : "r"(tile_kind + 4 * st) : "memory");
                    ends = kind & LAST_TILE;
                    if ((kind & 3) >= 2) {
                        #pragma unroll 1
                        for (int c = me; c < BN * CH; c += SCRUB_THREADS)
                            scrub16<BF16>(sv(st) + sw128(BN, c / CH, c % CH), j * BN + c / CH, k_seq, k_pos, b);
                        fence_proxy_async();  // generic-proxy writes, read next by wgmma
                    }
                }
                // Released through "scrubbed": a tile with masked pairs once it is scrubbed, and
                // the item's last stage, after which its record is complete (it was reset at the
                // item's start). The consumers wait for that before their epilogue reads the
                // record and before they release it through bad_free — else, with a scrubber
                // lagging behind an item of unmasked tiles, they would read item n - 2's record
                // and move bad_free a phase past the one this loop waits for.
                if (ends || (j >= 0 && (kind & 3) >= 2)) mbar_arrive(scrubbed(st));
                mbar_arrive(empty(st));
                if (ends) {
                    n++;
                    first = true;
                }
            }
        }
        return;  // no code after the roles: ptxas would allocate it for both register counts
    } else {
        // The consumers: each role is one branch of this if/else, or ptxas ignores setmaxnreg.
        regs_inc<CONSUMER_REGS>();
        const int c = wg - 1, wq = (tid >> 5) & 3, g = lane >> 2;
        const int r0 = c * 64 + wq * 16 + g;  // this thread's rows (block-local): r0 and r0 + 8
        const u32 q_base = base + c * 64 * 128;
        // Ping-pong: warpgroup c issues its products after `named_sync(1 + c)` and then lets the
        // next go (`named_arrive` on the barrier of c + 1, mod NC; each barrier counts the two
        // warpgroups that meet there). The turns run on across items: the last warpgroup lets
        // warpgroup 0 start once, and warpgroup 0 takes the last warpgroup's final turn off
        // barrier 1 at the end.
        auto my_turn = [&]() { if (PINGPONG) named_sync(1 + c, 256); };
        auto your_turn = [&]() { if (PINGPONG) named_arrive(1 + (c + 1) % NC, 256); };
        u32 scrub_phase = 0;  // per stage: the parity of its next "scrubbed" phase
        int it = 0;
        auto wait_scrubbed = [&](int st) {
            mbar_wait(scrubbed(st), (scrub_phase >> st) & 1);
            scrub_phase ^= 1u << st;
        };
        // Waits for the tile of stage iteration `it`: returns its index (-1: an item with no
        // visible tile) and stage, its mask kind, first key position and whether it is the item's
        // last. A masked tile is waited for until it is scrubbed; an unmasked last tile's
        // "scrubbed" (the item's record complete) only before the epilogue (v5.5: waiting here
        // held the item's last P V back until the scrubbers caught up, 7% at D=64).
        auto wait_tile = [&](int& st, int& kind, int& pos0, bool& last) {
            st = it % ST;
            mbar_wait(full(st), (it / ST) & 1);
            int j;
            asm volatile("ld.shared.s32 %0, [%1];" : "=r"(j) : "r"(tile_ids + 4 * st) : "memory");
            last = true;
            if (j >= 0) {
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(kind) : "r"(tile_kind + 4 * st) : "memory");
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(pos0) : "r"(tile_pos0 + 4 * st) : "memory");
                last = kind & LAST_TILE;
                kind &= 3;
                if (kind >= 2) wait_scrubbed(st);
            }
            it++;
            return j;
        };
        float o[D / 2], s[BN / 2], m_run[2], l_run[2];
        u32 p[BN / 4];
        #pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
        // v6: an item's last P V and epilogue are left pending until the next item's first Q K^T
        // has been issued behind that P V, so the epilogue's stores run under a product instead of
        // between two items with the tensor cores idle. The pending item in three registers (the
        // wide kernel's consumers have none to spare): `pend` = its last tile's stage (bits 0-1),
        // whether the epilogue still waits for that stage's "scrubbed" (bit 2), the parity of
        // its number (bit 3) and whether there is one (bit 4); its head and split (16 bits each;
        // the host checks both fit) and its first row. Its rows are read again in the epilogue.
        u32 pend = 0, pend_hz = 0;
        int pend_m0 = 0;
        auto pend_st = [&]() { return (int)(pend & 3); };
        // The pending item's epilogue once its last P V has completed; frees its stage and record.
        auto close_pending = [&]() {
            // "scrubbed" before the stage's release: once released, the stage's next tile could
            // complete another phase of it, and a parity wait cannot tell two phases apart.
            if (pend & 4) wait_scrubbed(pend_st());
            mbar_arrive(empty(pend_st()));
            const int h = pend_hz & 0xffff, z = pend_hz >> 16, odd = (pend >> 3) & 1;
            const WgRows rows = wg_rows(pend_m0 + r0, tq, q_seq, q_pos);
            // `bad` is complete: every masked tile and the item's last were waited for through "scrubbed".
            char* out_z = (char*)out + (size_t)z * tq * nh * D * (OUT_F32 ? 4 : 2);
            wg_epilogue<D, BF16, OUT_F32>(o, l_run, m_run, rows, bad[odd], pend_m0 + r0, tq, nh, h, out_z,
                                          lse + (size_t)z * tq * nh);
            mbar_arrive(bad_free + 8 * odd);
            pend = 0;
        };
        auto set_pending = [&](int st, bool scrub, int n, const int* info) {
            pend = 16u | (n & 1) << 3 | (scrub ? 4u : 0u) | (u32)st;
            pend_hz = (u32)info[1] | (u32)info[3] << 16;
            pend_m0 = info[2];
        };
        // The pending item's epilogue once its last P V (issued at the item's end) has completed.
        // (The wait is unconditional: ptxas serialises every wgmma of the kernel if any path might
        // write O while a product into it could still run.)
        auto drain = [&]() {
            wg_wait<0>();
            pin<D / 2>(o);
            if (pend) close_pending();
        };
        auto reset = [&]() {  // O, m and l of a new item (not S: its product may be in flight)
            #pragma unroll
            for (int i = 0; i < D / 2; i++) o[i] = 0.f;
            m_run[0] = m_run[1] = NEG_INF;
            l_run[0] = l_run[1] = 0.f;
        };
        if (PINGPONG && c == NC - 1) your_turn();
        #pragma unroll 1
        for (int n = 0;; n++) {
            mbar_wait(q_full, n & 1);  // also for an item with no visible tile: no copy may outlive the block
            int info[4];  // index, head, first row, split
            #pragma unroll
            for (int i = 0; i < 4; i++)
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(info[i]) : "r"(item_id + 4 * i) : "memory");
            const bool stop = info[0] < 0;
            const WgRows rows = wg_rows(info[2] + r0, tq, q_seq, q_pos);
            int cs = 0, kind = 0, pos0 = 0;
            bool last = true;
            const int j = stop ? 0 : wait_tile(cs, kind, pos0, last);  // the end: see below
            if (j < 0) {
                // No visible tile: O = 0 and LSE = -inf once the scrubbers have closed the item.
                mbar_arrive(q_empty);
                drain();
                wait_scrubbed(cs);
                reset();
                set_pending(cs, false, n, info);
                close_pending();
                continue;
            }
            // This item's first Q K^T, behind the previous item's last P V (still running with
            // XO): that item's epilogue then runs under this product.
            my_turn();
            wg_fence();
            wg_qk<D, BN, BF16>(s, q_base, BM, sk(cs));
            wg_commit();
            your_turn();
            if (XO && pend) {
                wg_wait<1>();  // the previous item's last P V is done (groups complete in order)
                pin<D / 2>(o);
                pin<BN / 4>(p);
                close_pending();
            }
            if (stop) {
                // The end: the product above was a stand-in (the last Q against stage 0, no copy
                // in flight), so that the last item's epilogue too runs at the one place above.
                wg_wait<0>();
                if (!XO) drain();
                break;
            }
            float corr[2], rsum[2];
            wg_wait<0>();
            pin<BN / 2>(s);
            if (last) mbar_arrive(q_empty);  // this item's last product that reads Q is done
            reset();
            wg_softmax<BN>(s, kind, pos0, j, tk, rows, k_seq, k_pos, scale_log2, m_run, corr, rsum);
            wg_first<BN, BF16>(p, s, l_run, rsum);
            #pragma unroll 1
            while (!last) {
                int ns;
                const int jn = wait_tile(ns, kind, pos0, last);
                my_turn();
                wg_fence();
                wg_qk<D, BN, BF16>(s, q_base, BM, sk(ns));
                wg_commit();
                wg_pv<D, BN, BF16>(o, p, sv(cs));
                wg_commit();
                your_turn();
                wg_wait<1>();  // S of tile jn is ready; P V of tile j may still run
                pin<BN / 2>(s);
                if (last) mbar_arrive(q_empty);  // the item's last Q K^T is done: the next Q may come in
                wg_softmax<BN>(s, kind, pos0, jn, tk, rows, k_seq, k_pos, scale_log2, m_run, corr, rsum);
                // Keeps ptxas from hoisting the next wait above the softmax (see the v4 kernel).
                asm volatile("st.shared.f32 [%0], %1;" ::"r"(scratch), "f"(rsum[0] + rsum[1]) : "memory");
                wg_wait<0>();
                pin<D / 2>(o);
                pin<BN / 4>(p);
                mbar_arrive(empty(cs));  // tile j's K and V are read
                wg_rescale<D, BN, BF16>(o, p, s, l_run, corr, rsum);
                cs = ns;
            }
            // The item's last P V. With XO its epilogue waits until the next item's first Q K^T
            // has been issued; without, it follows at once (v5.9's order).
            my_turn();
            wg_fence();
            wg_pv<D, BN, BF16>(o, p, sv(cs));
            wg_commit();
            your_turn();
            set_pending(cs, kind < 2, n, info);  // a masked last tile was waited for in wait_tile
            if (!XO) drain();
        }
        // Balances the ping-pong: the last warpgroup's final `your_turn` has no turn of
        // warpgroup 0 after it.
        if (PINGPONG && c == 0) my_turn();
    }
#else
    asm volatile("trap;");
#endif
}

#define FLASH_TMA_ENTRY(NAME, D, NC, BF16, OUT_F32, PINGPONG, XO)                                                     \
    extern "C" __global__ void __launch_bounds__(128 * (NC + 1), 1) NAME(                                                    \
        const __grid_constant__ TmaMap q_map, const __grid_constant__ TmaMap k_map,                               \
        const __grid_constant__ TmaMap v_map, const u16* q, const u16* k, const u16* v, void* out, float* lse,   \
        const int* q_seq, const int* q_pos, const int* k_seq, const int* k_pos, const int4* q_tiles,             \
        const int4* k_tiles, const int* q_order, int* next_item, int dynamic, int tq, int tk, int nh, int nkv,   \
        float scale_log2, int splits, int split_tiles) {                                                          \
        flash_fwd_tma<D, NC, BF16, OUT_F32, PINGPONG, XO>(&q_map, &k_map, &v_map, out, lse, q_seq, q_pos, k_seq, k_pos,  \
                                                  q_tiles, k_tiles, q_order, next_item, dynamic, tq, tk, nh, nkv, \
                                                  scale_log2, splits, split_tiles);                               \
    }
// q, k and v are passed beside their tensor maps only so that the host's buffer tracking sees
// them read; the kernel reads them through the maps.
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma, 64, 2, true, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma_x0, 64, 2, true, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma, 64, 2, true, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma_x0, 64, 2, true, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma, 64, 2, false, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma_x0, 64, 2, false, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma, 64, 2, false, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma_x0, 64, 2, false, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_f32_tma, 128, 2, true, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_f32_tma_x0, 128, 2, true, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_b16_tma, 128, 2, true, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_b16_tma_x0, 128, 2, true, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_f32_tma, 128, 2, false, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_f32_tma_x0, 128, 2, false, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_b16_tma, 128, 2, false, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_b16_tma_x0, 128, 2, false, false, true, false)
// Without the ping-pong, for measuring what it brings.
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma_np, 64, 2, true, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma_np_x0, 64, 2, true, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma_np, 64, 2, true, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma_np_x0, 64, 2, true, false, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma_np, 64, 2, false, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma_np_x0, 64, 2, false, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma_np, 64, 2, false, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma_np_x0, 64, 2, false, false, false, false)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_f32_tma_np, 128, 2, true, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_f32_tma_np_x0, 128, 2, true, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_b16_tma_np, 128, 2, true, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_b16_tma_np_x0, 128, 2, true, false, false, false)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_f32_tma_np, 128, 2, false, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_f32_tma_np_x0, 128, 2, false, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_b16_tma_np, 128, 2, false, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_b16_tma_np_x0, 128, 2, false, false, false, false)
// Head dim 64 with three consumer warpgroups (192-row query blocks).
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma3, 64, 3, true, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma3_x0, 64, 3, true, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma3, 64, 3, true, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma3_x0, 64, 3, true, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma3, 64, 3, false, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma3_x0, 64, 3, false, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma3, 64, 3, false, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma3_x0, 64, 3, false, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma3_np, 64, 3, true, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma3_np_x0, 64, 3, true, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma3_np, 64, 3, true, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma3_np_x0, 64, 3, true, false, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma3_np, 64, 3, false, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma3_np_x0, 64, 3, false, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma3_np, 64, 3, false, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma3_np_x0, 64, 3, false, false, false, false)
