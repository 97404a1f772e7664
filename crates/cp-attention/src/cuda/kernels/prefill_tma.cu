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

// Item number `wi` of a launch's numbering -> the index of its query block in `q_order`, its head
// and its split. The items of the first `busy` query blocks of `q_order` (those that see any key)
// come first, then the others'; within each group, KV head first (`kv_major`: one KV head's
// query blocks in order, the query heads sharing it adjacent, splits last) or by query block
// (its heads adjacent, splits last). Shared by the TMA kernel and `merge_tail`.
DEVI void tma_item_coords(int wi, bool kv_major, int nh, int nkv, int n_qblocks, int busy, int splits, int& qbi,
                          int& h, int& z) {
    int nb = busy, q0 = 0;
    if (wi >= busy * nh * splits) {
        wi -= busy * nh * splits;
        nb = n_qblocks - busy;
        q0 = busy;
    }
    if (kv_major) {
        const int group = nh / nkv, per_kv = nb * group * splits;
        const int g = wi / per_kv, r = wi - g * per_kv;
        qbi = r / (group * splits);
        const int r2 = r - qbi * group * splits;
        h = g * group + r2 % group;
        z = r2 / group;
    } else {
        qbi = wi / (nh * splits);
        const int rem = wi - qbi * nh * splits;
        h = rem % nh;
        z = rem / nh;
    }
    qbi += q0;
}

template <int D, int NC, bool BF16, bool OUT_F32, bool PINGPONG, bool ACC = false, bool TAIL = false>
__device__ void flash_fwd_tma(const TmaMap* q_map, const TmaMap* k_map, const TmaMap* v_map, void* __restrict__ out,
                              float* __restrict__ lse, const int* __restrict__ q_seq, const int* __restrict__ q_pos,
                              const int* __restrict__ k_seq, const int* __restrict__ k_pos,
                              const int4* __restrict__ q_tiles, const int4* __restrict__ k_tiles,
                              const int* __restrict__ q_order, int* __restrict__ next_item, int mode, int tq,
                              int tk, int nh, int nkv, float scale_log2, int splits, int split_tiles, int item_lo,
                              int item_hi, int busy_blocks) {
#if CP_WGMMA
    static_assert(NC == 2 || (NC == 3 && D == 64), "three consumer warpgroups only at head dim 64 (registers)");
    // mode: bit 0, claim items from `next_item` (else dealt in a zigzag); bit 1, number them
    // KV head first (see `item`).
    const bool dynamic = (mode & 1) != 0, kv_major = (mode & 2) != 0;
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

    // The warpgroup index broadcast from lane 0, so that ptxas knows it is warp-uniform and keeps
    // what derives from it (the consumers' Q descriptors) in uniform registers (v7.3: it kept
    // them in ordinary ones and moved each to the uniform file with R2UR before every Q K^T wgmma).
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffff, tid >> 7, 0), lane = tid & 31;
    const int n_ktiles = (tk + BN - 1) / BN, n_t64 = (tk + 63) / 64, n_q64 = (tq + 63) / 64;
    // This launch runs items item_lo .. item_hi - 1 of the numbering (`tma_item_coords`). With
    // TAIL (the tail split, v6.7), each of them in `splits` pieces of `split_tiles` visible key
    // tiles (the items themselves one split): piece p of item item_lo + t writes its f32 partial
    // at index t * splits + p of `out` ([index][BM][D]) and `lse` ([index][BM]) for `merge_tail`.
    static_assert(!TAIL || (OUT_F32 && !ACC), "tail pieces write f32 partials");
    const int n_qblocks = (tq + BM - 1) / BM, n_items = (item_hi - item_lo) * (TAIL ? splits : 1);
    // Work items are numbered heaviest first: query blocks in `q_order` (by descending last
    // position, so packed batches are longest-first too), the heads of a block adjacent (they
    // share K/V in L2), splits last. Each block starts with item blockIdx.x and then takes the
    // next unclaimed one from the global counter `next_item` (zeroed before the launch) when
    // `dynamic`: a block whose items ran long takes fewer, so the launch ends when its last,
    // lightest, items do. Otherwise the items are dealt in a zigzag (block b takes b + rG in
    // even rounds r, (G - 1 - b) + rG in odd ones), so that every block's share of a declining
    // sequence is about equal, without the atomics. The copy warp claims items and passes each
    // on, decoded, through shared memory. With `kv_major` (v6.4), one KV head's items come
    // first (its query blocks heaviest first, the heads sharing it adjacent, splits last), then
    // the next KV head's: the blocks running at once read one KV head's keys, which stay in L2
    // across rounds of items, where the order by query block streams every KV head's keys
    // from memory once per round.
    auto item = [&](int wi) {
        TmaItem it;
        int qbi;
        tma_item_coords(item_lo + (TAIL ? wi / splits : wi), kv_major, nh, nkv, n_qblocks, busy_blocks,
                        TAIL ? 1 : splits, qbi, it.h, it.z);
        const int qb = q_order[qbi];
        it.m0 = qb * BM;
        it.qt = tiles_summary(q_tiles, n_q64, NC * qb, NC);
        if (TAIL) {
            // Piece p of an item: its visible key tiles p * split_tiles on, the last piece all
            // that remain (whatever the host counted); its partial at index wi.
            const int p = wi % splits;
            it.j_lo = nth_visible_tile<2>(it.qt, k_tiles, n_t64, p * split_tiles, n_ktiles);
            it.j_hi = p == splits - 1 ? n_ktiles : nth_visible_tile<2>(it.qt, k_tiles, n_t64, (p + 1) * split_tiles, n_ktiles);
            it.z = wi;
        } else {
            it.j_lo = it.z * split_tiles;
            it.j_hi = min(n_ktiles, it.j_lo + split_tiles);
        }
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
                // An item's first tile is copied before its Q (v5.9): Q waits for the consumers'
                // last Q K^T of the previous item, the tile only for a free stage, so the tile's
                // walk and copy no longer follow Q's wait (T=4K B=4: +2%).
                bool q_pending = true;
                #pragma unroll 1
                for (;; it++) {
                    const int st = it % ST;
                    // The tile's mask kind (classify), worked out here, off the consumers' path.
                    // Kind 3: a masked tile of one sequence whose 128 keys hold consecutive
                    // positions (checked row by row: the summary alone does not prove it), whose
                    // mask is arithmetic — no per-element loads of key positions.
                    int kind = 0, pos0 = 0;
                    if (j < w.j_hi) {
                        const int4 kt = ktile(j);
                        kind = classify(w.qt, kt);
                        pos0 = kt.y;
                        if (kind == 2 && w.qt.x >= 0 && kt.x == w.qt.x && kt.w == 0 && kt.z - kt.y == BN - 1) {
                            bool consecutive = true;
                            #pragma unroll
                            for (int r = lane; r < BN; r += 32) consecutive &= k_pos[j * BN + r] == kt.y + r;
                            if (__all_sync(0xffffffff, consecutive)) kind = 3;
                        }
                    }
                    mbar_wait(empty(st), ((it / ST) & 1) ^ 1);
                    if (lane == 0) {
                        asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_ids + 4 * st), "r"(j < w.j_hi ? j : -1) : "memory");
                        asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_kind + 4 * st), "r"(kind) : "memory");
                        asm volatile("st.shared.s32 [%0], %1;" ::"r"(tile_pos0 + 4 * st), "r"(pos0) : "memory");
                        if (j < w.j_hi) {
                            mbar_expect_tx(full(st), 2 * KV_BYTES);
                            #pragma unroll
                            for (int c = 0; c < D / 64; c++) {
                                tma_load3(sk(st) + c * BN * 128, k_map, full(st), c * 64, kvh, j * BN);
                                tma_load3(sv(st) + c * BN * 128, v_map, full(st), c * 64, kvh, j * BN);
                            }
                        } else {
                            mbar_arrive(full(st));  // the item's end: no copies, readers see -1
                        }
                    }
                    if (q_pending) {
                        item_start();
                        q_pending = false;
                    }
                    __syncwarp();
                    if (j >= w.j_hi) {
                        it++;
                        break;
                    }
                    j = next_visible_tile<2>(w.qt, k_tiles, n_t64, j + 1, w.j_hi);
                }
                wi = dynamic ? __shfl_sync(0xffffffff, claimed, 0) : claimed;
            }
        } else {
            // Scrub warps: a tile with masked pairs must hold no non-finite V (see BadKeys).
            // They follow the stages; a -1 tile closes an item, -2 ends the walk.
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
                if (j >= 0) {
                    asm volatile("ld.shared.s32 %0, [%1];" : "=r"(kind) : "r"(tile_kind + 4 * st) : "memory");
                    if (kind >= 2) {
                        // First a read of the thread's chunks, four loads in flight at a time
                        // (v6.2: one chunk per dependent load kept the consumers waiting at
                        // every item's diagonal tile); the scrub only where a chunk is
                        // non-finite.
                        auto chunk = [&](int c) { return sv(st) + sw128(BN, c / CH, c % CH); };  // of V
                        bool any = false;
                        #pragma unroll 1
                        for (int c0 = me; c0 < BN * CH; c0 += 4 * SCRUB_THREADS) {
                            u32 w[4][4];
                            #pragma unroll
                            for (int u = 0; u < 4; u++) {
                                const int c = c0 + u * SCRUB_THREADS;
                                if (c < BN * CH) {
                                    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                                                 : "=r"(w[u][0]), "=r"(w[u][1]), "=r"(w[u][2]), "=r"(w[u][3])
                                                 : "r"(chunk(c)));
                                } else {
                                    w[u][0] = w[u][1] = w[u][2] = w[u][3] = 0;
                                }
                            }
                            #pragma unroll
                            for (int u = 0; u < 4; u++)
                                #pragma unroll
                                for (int i = 0; i < 4; i++) any |= nonfinite2<BF16>(w[u][i]);
                        }
                        if (any) {
                            #pragma unroll 1
                            for (int c = me; c < BN * CH; c += SCRUB_THREADS)
                                scrub16<BF16>(chunk(c), j * BN + c / CH, k_seq, k_pos, b);
                        }
                        fence_proxy_async();  // generic-proxy writes, read next by wgmma
                        mbar_arrive(scrubbed(st));
                    }
                } else {
                    // The item's end: its record is complete (and was reset at its start). The
                    // consumers wait for this before their epilogue reads the record and before
                    // they release it through bad_free — else, with a scrubber lagging behind
                    // an item of unmasked tiles, they would read item n - 2's record and move
                    // bad_free a phase past the one this loop waits for.
                    mbar_arrive(scrubbed(st));
                }
                mbar_arrive(empty(st));
                if (j == -1) {
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
        // warpgroups that meet there); the last warpgroup lets warpgroup 0 start each item.
        auto my_turn = [&]() { if (PINGPONG) named_sync(1 + c, 256); };
        auto your_turn = [&]() { if (PINGPONG) named_arrive(1 + (c + 1) % NC, 256); };
        u32 scrub_phase = 0;  // per stage: the parity of its next "scrubbed" phase
        int it = 0;
        int end_st = 0;  // the stage of the item's end, released by `finish_item`
        auto wait_scrubbed = [&](int st) {
            mbar_wait(scrubbed(st), (scrub_phase >> st) & 1);
            scrub_phase ^= 1u << st;
        };
        // Not in the wide ping-pong kernel: there the later wait makes its consumers (160
        // registers) spill in the loop, 10% slower at D=64 (session 10, call 6).
        constexpr bool LATE_SCRUB_WAIT = !(NC == 3 && PINGPONG);
        // Waits for the tile of stage iteration `it`: returns its index (-1: the item's end, whose
        // stage `finish_item` releases), its mask kind and first key position. A masked tile's
        // "scrubbed" is waited for only right before its P V (`cs_masked` below), behind the next
        // tile's Q K^T: the scrub changes V alone, and waiting here held the tile's own Q K^T back
        // behind the scrubbers (v6.2; at T=4K B=4 ncu found 5.3% of the consumers' samples in
        // this wait, at every item's diagonal tile).
        auto wait_tile = [&](int& kind, int& pos0) {
            const int st = it % ST;
            mbar_wait(full(st), (it / ST) & 1);
            int j;
            asm volatile("ld.shared.s32 %0, [%1];" : "=r"(j) : "r"(tile_ids + 4 * st) : "memory");
            if (j >= 0) {
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(kind) : "r"(tile_kind + 4 * st) : "memory");
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(pos0) : "r"(tile_pos0 + 4 * st) : "memory");
                if (!LATE_SCRUB_WAIT && kind >= 2) wait_scrubbed(st);
            } else {
                end_st = st;
            }
            it++;
            return j;
        };
        // The item's end, before the epilogue reads the BadKeys record: wait until the scrubbers
        // have finished the item too (the record is complete, and theirs to reuse only after the
        // epilogue), then release the end's stage. Not in `wait_tile`: there it held the item's
        // last P V back until the scrubbers caught up (v5.5: 7% at D=64).
        auto finish_item = [&]() {
            wait_scrubbed(end_st);
            mbar_arrive(empty(end_st));
        };
        #pragma unroll 1
        for (int n = 0;; n++) {
            mbar_wait(q_full, n & 1);  // also for an item with no visible tile: no copy may outlive the block
            int info[8];
            #pragma unroll
            for (int i = 0; i < 8; i++)
                asm volatile("ld.shared.s32 %0, [%1];" : "=r"(info[i]) : "r"(item_id + 4 * i) : "memory");
            if (info[0] < 0) break;
            TmaItem w;
            w.h = info[1];
            w.m0 = info[2];
            w.z = info[3];
            w.qt = make_int4(info[4], info[5], info[6], info[7]);
            const WgRows rows = wg_rows(w.m0 + r0, tq, q_seq, q_pos);
            float o[D / 2], s[BN / 2], m_run[2], l_run[2];
            u32 p[BN / 4];
            wg_init<D, BN>(o, s, m_run, l_run);
            int kind = 0, pos0 = 0, j = wait_tile(kind, pos0);
            FoldIn<D> fin;  // a fold's running partial of these rows (ACC)
            if (j < 0) {
                mbar_arrive(q_empty);
                if constexpr (ACC) wg_fold_load<D>(fin, (const float*)out, lse, w.m0 + r0, tq, nh, w.h);
                finish_item();
            } else {  // the same in both warpgroups
                float corr[2], rsum[2];
                int cs = (it - 1) % ST;  // the stage of tile j
                bool cs_masked = LATE_SCRUB_WAIT && kind >= 2;  // its V is scrubbed before its P V
                if (PINGPONG && c == NC - 1) your_turn();
                my_turn();
                wg_fence();
                wg_qk<D, BN, BF16>(s, q_base, BM, sk(cs));
                wg_commit();
                your_turn();
                wg_wait<0>();
                pin<BN / 2>(s);
                wg_softmax<BN>(s, kind, pos0, j, tk, rows, k_seq, k_pos, scale_log2, m_run, corr, rsum);
                wg_first<BN, BF16>(p, s, l_run, rsum);
                #pragma unroll 1
                for (;;) {
                    const int jn = wait_tile(kind, pos0), ns = (it - 1) % ST;
                    if (jn < 0) break;
                    my_turn();
                    wg_fence();
                    wg_qk<D, BN, BF16>(s, q_base, BM, sk(ns));
                    wg_commit();
                    if (cs_masked) wait_scrubbed(cs);  // tile j's V, before its P V
                    wg_pv<D, BN, BF16>(o, p, sv(cs));
                    wg_commit();
                    your_turn();
                    wg_wait<1>();  // S of tile jn is ready; P V of tile j may still run
                    pin<BN / 2>(s);
                    if constexpr (NC == 2)  // v7.4; three consumer warpgroups (160 registers) would spill
                        wg_softmax_lazy<D, BN, BF16>(s, kind, pos0, jn, tk, rows, k_seq, k_pos, scale_log2, m_run, corr,
                                                     rsum, q_base, BM, sk(ns));
                    else
                        wg_softmax<BN>(s, kind, pos0, jn, tk, rows, k_seq, k_pos, scale_log2, m_run, corr, rsum);
                    // Keeps ptxas from hoisting the next wait above the softmax (see the v4 kernel).
                    asm volatile("st.shared.f32 [%0], %1;" ::"r"(scratch), "f"(rsum[0] + rsum[1]) : "memory");
                    wg_wait<0>();
                    pin<D / 2>(o);
                    pin<BN / 4>(p);
                    mbar_arrive(empty(cs));  // tile j's K and V are read
                    wg_rescale<D, BN, BF16>(o, p, s, l_run, corr, rsum);
                    cs = ns;
                    j = jn;
                    cs_masked = LATE_SCRUB_WAIT && kind >= 2;
                }
                // Balances the ping-pong: the last warpgroup's last `your_turn` has no turn of
                // warpgroup 0 after it. Before Q's release, so that the last warpgroup cannot start
                // the next item's turns (on the same named barrier) before this one.
                if (PINGPONG && c == 0) my_turn();
                // Every product that reads Q has completed: the next item's Q may come in.
                mbar_arrive(q_empty);
                if (cs_masked) wait_scrubbed(cs);
                wg_fence();
                wg_pv<D, BN, BF16>(o, p, sv(cs));
                wg_commit();
                // A fold reads its running partial while the last P V runs (v6.8; a fold has one
                // split, so its partial is `out` and `lse` themselves). With three consumer
                // warpgroups (160 registers) ptxas keeps some of them on the stack (10 local
                // loads and stores more than v6.7; not timed).
                if constexpr (ACC) wg_fold_load<D>(fin, (const float*)out, lse, w.m0 + r0, tq, nh, w.h);
                wg_wait<0>();
                pin<D / 2>(o);
                mbar_arrive(empty(cs));
                finish_item();
            }
            // `bad` is complete: every masked tile and the item's end were waited for through "scrubbed".
            if constexpr (TAIL) {
                // A piece's partial: its block's rows (those below tq), one head, at index w.z.
                wg_epilogue<D, BF16, true, false>(o, l_run, m_run, rows, bad[n & 1], r0, tq - w.m0, 1, 0,
                                                  (float*)out + (size_t)w.z * BM * D, lse + (size_t)w.z * BM);
            } else {
                char* out_z = (char*)out + (size_t)w.z * tq * nh * D * (OUT_F32 ? 4 : 2);
                wg_epilogue<D, BF16, OUT_F32, ACC>(o, l_run, m_run, rows, bad[n & 1], w.m0 + r0, tq, nh, w.h, out_z,
                                                   lse + (size_t)w.z * tq * nh, &fin);
            }
            mbar_arrive(bad_free + 8 * (n & 1));
        }
    }
#else
    asm volatile("trap;");
#endif
}

#define FLASH_TMA_ENTRY_T(NAME, D, NC, BF16, OUT_F32, PINGPONG, ACC, TAIL)                                            \
    extern "C" __global__ void __launch_bounds__(128 * (NC + 1), 1) NAME(                                                    \
        const __grid_constant__ TmaMap q_map, const __grid_constant__ TmaMap k_map,                               \
        const __grid_constant__ TmaMap v_map, const u16* q, const u16* k, const u16* v, void* out, float* lse,   \
        const int* q_seq, const int* q_pos, const int* k_seq, const int* k_pos, const int4* q_tiles,             \
        const int4* k_tiles, const int* q_order, int* next_item, int mode, int tq, int tk, int nh, int nkv,   \
        float scale_log2, int splits, int split_tiles, int item_lo, int item_hi, int busy_blocks) {                \
        flash_fwd_tma<D, NC, BF16, OUT_F32, PINGPONG, ACC, TAIL>(&q_map, &k_map, &v_map, out, lse, q_seq, q_pos, k_seq, \
                                                  k_pos, q_tiles, k_tiles, q_order, next_item, mode, tq, tk, nh, nkv, \
                                                  scale_log2, splits, split_tiles, item_lo, item_hi, busy_blocks);   \
    }
#define FLASH_TMA_ENTRY_ACC(NAME, D, NC, BF16, OUT_F32, PINGPONG, ACC) FLASH_TMA_ENTRY_T(NAME, D, NC, BF16, OUT_F32, PINGPONG, ACC, false)
#define FLASH_TMA_ENTRY(NAME, D, NC, BF16, OUT_F32, PINGPONG) FLASH_TMA_ENTRY_ACC(NAME, D, NC, BF16, OUT_F32, PINGPONG, false)
// q, k and v are passed beside their tensor maps only so that the host's buffer tracking sees
// them read; the kernel reads them through the maps.
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma, 64, 2, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma, 64, 2, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma, 64, 2, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma, 64, 2, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_f32_tma, 128, 2, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_b16_tma, 128, 2, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_f32_tma, 128, 2, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_b16_tma, 128, 2, false, false, true)
// Without the ping-pong, for measuring what it brings.
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma_np, 64, 2, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma_np, 64, 2, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma_np, 64, 2, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma_np, 64, 2, false, false, false)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_f32_tma_np, 128, 2, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d128_bf16_b16_tma_np, 128, 2, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_f32_tma_np, 128, 2, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d128_f16_b16_tma_np, 128, 2, false, false, false)
// Head dim 64 with three consumer warpgroups (192-row query blocks).
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma3, 64, 3, true, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma3, 64, 3, true, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma3, 64, 3, false, true, true)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma3, 64, 3, false, false, true)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_f32_tma3_np, 64, 3, true, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_bf16_b16_tma3_np, 64, 3, true, false, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_f32_tma3_np, 64, 3, false, true, false)
FLASH_TMA_ENTRY(flash_fwd_d64_f16_b16_tma3_np, 64, 3, false, false, false)
// Folding into a running f32 partial (`out` and `lse` read and written in place): a ring step
// of pass-KV after the first, without a separate merge pass over the partials.
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_bf16_acc_tma, 64, 2, true, true, true, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_f16_acc_tma, 64, 2, false, true, true, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_bf16_acc_tma_np, 64, 2, true, true, false, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_f16_acc_tma_np, 64, 2, false, true, false, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_bf16_acc_tma3, 64, 3, true, true, true, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_f16_acc_tma3, 64, 3, false, true, true, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_bf16_acc_tma3_np, 64, 3, true, true, false, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d64_f16_acc_tma3_np, 64, 3, false, true, false, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d128_bf16_acc_tma, 128, 2, true, true, true, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d128_f16_acc_tma, 128, 2, false, true, true, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d128_bf16_acc_tma_np, 128, 2, true, true, false, true)
FLASH_TMA_ENTRY_ACC(flash_fwd_d128_f16_acc_tma_np, 128, 2, false, true, false, true)
// The tail split's pieces (f32 partials of one head's block rows, for `merge_tail`).
FLASH_TMA_ENTRY_T(flash_fwd_d64_bf16_tail_tma, 64, 2, true, true, true, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_f16_tail_tma, 64, 2, false, true, true, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_bf16_tail_tma_np, 64, 2, true, true, false, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_f16_tail_tma_np, 64, 2, false, true, false, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_bf16_tail_tma3, 64, 3, true, true, true, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_f16_tail_tma3, 64, 3, false, true, true, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_bf16_tail_tma3_np, 64, 3, true, true, false, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d64_f16_tail_tma3_np, 64, 3, false, true, false, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d128_bf16_tail_tma, 128, 2, true, true, true, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d128_f16_tail_tma, 128, 2, false, true, true, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d128_bf16_tail_tma_np, 128, 2, true, true, false, false, true)
FLASH_TMA_ENTRY_T(flash_fwd_d128_f16_tail_tma_np, 128, 2, false, true, false, false, true)
