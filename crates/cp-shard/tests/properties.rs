//! Laws of the sharding plans, checked on random shapes.

use cp_shard::{
    CacheMap, DecodePlan, Layout, NewTokens, PrefillShards, Span, Token, TurnPlan, gather_rows, scatter_rows,
};
use cp_testkit::check_property;
use proptest::prelude::*;

fn shard_inputs() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..=9, 0usize..300, 1usize..400)
}

#[test]
fn every_token_on_exactly_one_rank_and_maps_round_trip() {
    check_property("prefill partition and round trip", shard_inputs(), |(n, p, t)| {
        let shards = PrefillShards::new(n, p, t).unwrap();
        let mut owner = vec![None; t];
        for rank in 0..n {
            for row in 0..shards.rows_per_rank() {
                if let Some(pos) = shards.position(rank, row).unwrap() {
                    prop_assert!(shards.span().contains(pos));
                    prop_assert!(owner[pos - p].is_none(), "position {pos} on two ranks");
                    owner[pos - p] = Some((rank, row));
                    prop_assert_eq!(shards.locate(pos).unwrap(), (rank, row));
                }
            }
            let layout = shards.q_layout(3, rank).unwrap();
            prop_assert_eq!(layout.len(), shards.rows_per_rank());
            for (row, token) in layout.rows().enumerate() {
                prop_assert_eq!(token.map(|t| t.pos), shards.position(rank, row).unwrap());
                prop_assert_eq!(token, layout.token(row));
            }
        }
        prop_assert!(owner.iter().all(Option::is_some), "a token was dropped");
        Ok(())
    });
}

/// Causal work of a rank: pairs (query, key) with key <= query, keys being the whole prefix.
fn causal_work(shards: &PrefillShards, rank: usize) -> usize {
    shards.spans(rank).unwrap().iter().flat_map(|s| s.start..s.end()).map(|pos| pos + 1).sum()
}

#[test]
fn causal_work_is_balanced() {
    check_property("causal work balance", (1usize..=9, 1usize..600), |(n, t)| {
        let shards = PrefillShards::new(n, 0, t).unwrap();
        let work: Vec<usize> = (0..n).map(|r| causal_work(&shards, r)).collect();
        let spread = work.iter().max().unwrap() - work.iter().min().unwrap();
        // Padding removes at most one chunk of rows from a rank, each row worth at most the
        // padded length of the sequence in work.
        let chunk_worth = shards.chunk_len() * 2 * n * shards.chunk_len();
        prop_assert!(spread <= chunk_worth, "work {work:?} spread {spread} > one chunk's worth {chunk_worth}");
        if t % (2 * n) == 0 {
            prop_assert_eq!(spread, 0, "multiples of 2N must balance exactly: {:?}", work);
        }
        Ok(())
    });
}

fn varseq() -> impl Strategy<Value = (usize, Vec<usize>, Vec<usize>)> {
    (1usize..=6, 1usize..=4)
        .prop_flat_map(|(n, b)| (Just(n), prop::collection::vec(1usize..120, b), prop::collection::vec(1usize..60, b)))
}

#[test]
fn turns_cover_every_token_once_and_gather_inverts_scatter() {
    check_property("multi-turn varseq plans", varseq(), |(n, first, second)| {
        let b = first.len();
        let mut cache = CacheMap::new(n, b).unwrap();
        for counts in [&first, &second] {
            let new: Vec<NewTokens> = counts.iter().enumerate().map(|(seq, &count)| NewTokens { seq, count }).collect();
            let plan = TurnPlan::new(&cache, &new).unwrap();
            let layouts = plan.layouts();
            prop_assert!(layouts.q.iter().all(|l| l.len() == layouts.q_rows()));
            prop_assert!(layouts.kv.iter().all(|l| l.len() == layouts.kv_rows()));
            prop_assert_eq!(layouts.kv_rows(), layouts.kv.iter().map(Layout::token_count).max().unwrap());
            // Queries: each new token exactly once. Keys: each token of the history exactly once.
            let width = 2;
            let value = |t: Token| vec![t.seq as f64, t.pos as f64];
            for (lays, wanted) in [(&layouts.q, plan.new_spans()), (&layouts.kv, plan.history_spans())] {
                let per_rank = scatter_rows(lays, width, |t| Ok(value(t)), |_, _| vec![f64::NAN; width]).unwrap();
                let refs: Vec<&[f64]> = per_rank.iter().map(Vec::as_slice).collect();
                let gathered = gather_rows(lays, &refs, width, &wanted).unwrap();
                for ((seq, span), rows) in wanted.iter().zip(&gathered) {
                    let expect: Vec<f64> =
                        (span.start..span.end()).flat_map(|pos| value(Token { seq: *seq, pos })).collect();
                    prop_assert_eq!(rows, &expect);
                }
            }
            cache.commit_turn(&plan).unwrap();
            // A plan cannot be committed twice.
            prop_assert!(cache.commit_turn(&plan).is_err());
        }
        for (seq, counts) in first.iter().zip(&second).enumerate() {
            prop_assert_eq!(cache.seq_len(seq).unwrap(), counts.0 + counts.1);
        }
        Ok(())
    });
}

#[test]
fn decode_keeps_caches_balanced() {
    let inputs = (1usize..=8, 1usize..=6, 0usize..40, 0usize..8);
    check_property("decode balance", inputs, |(n, b, steps, first_iter)| {
        let mut cache = CacheMap::new(n, b).unwrap();
        let batch: Vec<usize> = (0..b).collect();
        for step in 0..steps {
            let plan = DecodePlan::new(&cache, &batch, first_iter + step).unwrap();
            prop_assert_eq!(plan.layouts().q_rows(), b.div_ceil(n));
            for (i, (seq, span)) in plan.new_spans().into_iter().enumerate() {
                let rank = plan.rank_of(i).unwrap();
                prop_assert_eq!(rank, (first_iter + step + i) % n);
                let wanted = Some(Token { seq, pos: span.start });
                prop_assert!(
                    plan.layouts().q[rank].rows().any(|t| t == wanted),
                    "query of seq {} not on rank {}",
                    seq,
                    rank
                );
            }
            cache.commit_decode(&plan).unwrap();
        }
        for seq in 0..b {
            let lens: Vec<usize> = (0..n).map(|r| cache.seq_rank_len(seq, r).unwrap()).collect();
            prop_assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "seq {seq}: {lens:?}");
            prop_assert_eq!(lens.iter().sum::<usize>(), steps);
        }
        let totals: Vec<usize> = (0..n).map(|r| cache.rank_len(r).unwrap()).collect();
        prop_assert!(totals.iter().max().unwrap() - totals.iter().min().unwrap() <= b, "{totals:?}");
        Ok(())
    });
}

#[test]
fn bad_batches_are_errors() {
    let cache = CacheMap::new(2, 2).unwrap();
    let err = TurnPlan::new(&cache, &[NewTokens { seq: 2, count: 4 }]).unwrap_err();
    assert!(err.to_string().contains("sequence id 2 is out of range"), "{err}");
    let err = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 4 }, NewTokens { seq: 0, count: 1 }]).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let err = TurnPlan::new(&cache, &[NewTokens { seq: 1, count: 0 }]).unwrap_err();
    assert!(err.to_string().contains("sequence 1 has no new tokens"), "{err}");
    assert!(TurnPlan::new(&cache, &[]).is_err());
    assert!(DecodePlan::new(&cache, &[5], 0).is_err());
    assert!(CacheMap::new(0, 1).is_err());
    let mut other = CacheMap::new(3, 2).unwrap();
    let plan = DecodePlan::new(&cache, &[0], 0).unwrap();
    assert!(other.commit_decode(&plan).unwrap_err().to_string().contains("world size"));
    assert_eq!(Span::new(3, 2).end(), 5);
}
