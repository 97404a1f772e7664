//! The key/value row order of a batched partial prefill, as a model holding its own cache
//! would build it: per sequence (cached spans, then new spans) is the layout's order; "every
//! cached row first, then every new row" is not, and `Layout::check_rows` says so instead of
//! letting the attention compute a wrong answer.

use cp_shard::{CacheMap, Layout, NewTokens, ShardError, Token, TurnPlan};

/// A second turn of two sequences on `n` ranks (first turn 40 and 27 tokens, second 9 and 14).
fn second_turn(n: usize) -> (CacheMap, TurnPlan) {
    let mut cache = CacheMap::new(n, 2).unwrap();
    let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 40 }, NewTokens { seq: 1, count: 27 }]).unwrap();
    cache.commit_turn(&first).unwrap();
    let second = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 9 }, NewTokens { seq: 1, count: 14 }]).unwrap();
    (cache, second)
}

/// The rows a rank holds, built from the cache and the turn: per sequence, cached spans then new.
fn per_sequence_rows(cache: &CacheMap, plan: &TurnPlan, rank: usize) -> Vec<Option<Token>> {
    let mut rows = Vec::new();
    for (seq, shards) in plan.shards() {
        for span in cache.spans(seq, rank).unwrap() {
            rows.extend((span.start..span.end()).map(|pos| Some(Token { seq, pos })));
        }
        for span in shards.spans(rank).unwrap() {
            rows.extend((span.start..span.end()).map(|pos| Some(Token { seq, pos })));
        }
    }
    rows
}

/// The order the old documentation described: every cached row of the rank, then every new row.
fn cached_first_rows(cache: &CacheMap, plan: &TurnPlan, rank: usize) -> Vec<Option<Token>> {
    let mut rows = Vec::new();
    for (seq, _) in plan.shards() {
        for span in cache.spans(seq, rank).unwrap() {
            rows.extend((span.start..span.end()).map(|pos| Some(Token { seq, pos })));
        }
    }
    for (seq, shards) in plan.shards() {
        for span in shards.spans(rank).unwrap() {
            rows.extend((span.start..span.end()).map(|pos| Some(Token { seq, pos })));
        }
    }
    rows
}

fn padded(mut rows: Vec<Option<Token>>, layout: &Layout) -> Vec<Option<Token>> {
    rows.resize(layout.len(), None);
    rows
}

#[test]
fn the_layout_order_is_per_sequence_and_other_orders_are_errors() {
    for n in 2..=8 {
        let (cache, plan) = second_turn(n);
        let layouts = plan.layouts();
        for rank in 0..n {
            let kv = &layouts.kv[rank];
            // Walking the layout, and building per sequence, both give the layout's order.
            kv.check_rows(kv.rows()).unwrap();
            kv.check_rows(padded(per_sequence_rows(&cache, &plan, rank), kv))
                .unwrap_or_else(|e| panic!("N={n} rank {rank}: {e}"));
        }
        // The cached-first order differs from it on some rank of every N (sequence 1's cached
        // rows come before sequence 0's new rows), and that is an error naming the row.
        let caught = (0..n)
            .filter(|&rank| {
                let kv = &layouts.kv[rank];
                match kv.check_rows(padded(cached_first_rows(&cache, &plan, rank), kv)) {
                    Err(ShardError::RowOrder { expected, actual, .. }) => {
                        assert_ne!(expected, actual);
                        true
                    }
                    Err(e) => panic!("N={n} rank {rank}: unexpected error {e}"),
                    Ok(()) => false,
                }
            })
            .count();
        assert!(caught > 0, "N={n}: the cached-first order was never caught");
    }
}

#[test]
fn query_padding_sits_after_each_short_chunk() {
    // 9 new tokens on 4 ranks: chunks of ceil(9 / 8) = 2 rows, the last real chunk holds 1 token.
    let (_, plan) = second_turn(4);
    let q = &plan.layouts().q;
    let pads_inside = q.iter().any(|l| {
        let rows: Vec<_> = l.rows().collect();
        rows.iter().position(Option::is_none).is_some_and(|first_pad| rows[first_pad..].iter().any(Option::is_some))
    });
    assert!(pads_inside, "expected a padding row before a real row in some query block");
}

#[test]
fn wrong_row_counts_are_errors() {
    let (_, plan) = second_turn(3);
    let kv = &plan.layouts().kv[0];
    let rows: Vec<_> = kv.rows().collect();
    assert!(matches!(
        kv.check_rows(rows[..rows.len() - 1].iter().copied()),
        Err(ShardError::RowCount { layout_rows, .. }) if layout_rows == kv.len()
    ));
    let mut longer = rows.clone();
    longer.push(None);
    assert!(matches!(kv.check_rows(longer), Err(ShardError::RowCount { rows, .. }) if rows == kv.len() + 1));
}
