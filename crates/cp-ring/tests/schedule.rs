//! The ring schedules on a toy device: a "tensor" is the list of tokens its rows hold, a partial
//! attention is the set of keys each query row sees, and a merge is the union of disjoint sets.
//! Every algorithm must give every query exactly the keys it sees in the whole ring — each key
//! once (a key counted twice, or a block paired with the wrong layout, is an error) — for full,
//! partial and batched prefill and for decode, at world sizes 1 to 8, over the channel ring.

use std::collections::BTreeSet;
use std::time::Duration;

use cp_ring::{Algorithm, AttentionOps, Layout, Local, Partial, RingLayouts, channel_ring, run};
use cp_shard::{CacheMap, DecodePlan, NewTokens, Token, TurnPlan, visible};

/// Rows of tokens (queries, keys or values), or per-row sets of seen keys (a partial's output).
#[derive(Clone, Debug, PartialEq)]
enum Toy {
    Rows(Vec<Option<Token>>),
    Seen(Vec<BTreeSet<Token>>),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ToyError(String);

struct ToyOps;

impl ToyOps {
    fn union(a: &Toy, b: &Toy) -> Result<Toy, ToyError> {
        let (Toy::Seen(a), Toy::Seen(b)) = (a, b) else { return Err(ToyError("merge of non-partials".into())) };
        if a.len() != b.len() {
            return Err(ToyError(format!("merge of {} and {} rows", a.len(), b.len())));
        }
        let mut out = Vec::with_capacity(a.len());
        for (x, y) in a.iter().zip(b) {
            if let Some(t) = x.intersection(y).next() {
                return Err(ToyError(format!("key {t:?} seen twice by one query")));
            }
            out.push(x.union(y).copied().collect());
        }
        Ok(Toy::Seen(out))
    }
}

impl AttentionOps for ToyOps {
    type Tensor = Toy;
    type Error = ToyError;

    fn rows(&self, t: &Toy) -> Result<usize, ToyError> {
        Ok(match t {
            Toy::Rows(r) => r.len(),
            Toy::Seen(s) => s.len(),
        })
    }

    fn partial(&self, q: &Toy, ql: &Layout, k: &Toy, v: &Toy, kl: &Layout) -> Result<Partial<Toy>, ToyError> {
        let (Toy::Rows(q), Toy::Rows(k), Toy::Rows(v)) = (q, k, v) else {
            return Err(ToyError("partial of non-row tensors".into()));
        };
        // The block must be what its layout says: a block paired with another rank's layout
        // is the schedule bug this test is for.
        if *q != ql.rows().collect::<Vec<_>>() || *k != kl.rows().collect::<Vec<_>>() || k != v {
            return Err(ToyError("a block paired with a layout that does not describe it".into()));
        }
        let seen = q.iter().map(|&qt| k.iter().filter(|&&kt| visible(qt, kt)).flatten().copied().collect()).collect();
        Ok(Partial { out: Toy::Seen(seen), lse: Toy::Seen(vec![BTreeSet::new(); q.len()]) })
    }

    fn merge(&self, acc: Partial<Toy>, next: Partial<Toy>) -> Result<Partial<Toy>, ToyError> {
        Ok(Partial { out: ToyOps::union(&acc.out, &next.out)?, lse: acc.lse })
    }

    fn concat(&self, parts: &[Toy]) -> Result<Toy, ToyError> {
        let mut rows = Vec::new();
        for p in parts {
            let Toy::Rows(r) = p else { return Err(ToyError("concat of non-row tensors".into())) };
            rows.extend(r.iter().copied());
        }
        Ok(Toy::Rows(rows))
    }

    fn merge_all(&self, parts: Vec<Partial<Toy>>) -> Result<Partial<Toy>, ToyError> {
        let mut it = parts.into_iter();
        let first = it.next().ok_or_else(|| ToyError("nothing to merge".into()))?;
        it.try_fold(first, |acc, p| self.merge(acc, p))
    }
}

/// Runs `algorithm` on every rank of a channel ring and checks each query's keys.
fn check(algorithm: Algorithm, layouts: &RingLayouts, label: &str) {
    let n = layouts.world_size();
    let all_keys: Vec<Token> = layouts.kv.iter().flat_map(|l| l.rows().flatten()).collect();
    let results: Vec<Result<Partial<Toy>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = channel_ring::<Toy>(n, Duration::from_secs(10))
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                scope.spawn(move || {
                    let q = Toy::Rows(layouts.q[rank].rows().collect());
                    let kv = Toy::Rows(layouts.kv[rank].rows().collect());
                    let local = Local { q: &q, k: &kv, v: &kv };
                    run(algorithm, &ToyOps, &mut comm, layouts, local, &mut ())
                        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e).map(|s| s.to_string())))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    });
    for (rank, result) in results.into_iter().enumerate() {
        let got = result.unwrap_or_else(|e| panic!("{label} {algorithm} rank {rank}: {e}"));
        let Toy::Seen(seen) = got.out else { panic!("{label}: output is not a partial") };
        for (row, qt) in layouts.q[rank].rows().enumerate() {
            let want: BTreeSet<Token> = all_keys.iter().filter(|&&k| visible(qt, Some(k))).copied().collect();
            assert_eq!(seen[row], want, "{label} {algorithm} N={n} rank {rank} row {row} ({qt:?})");
        }
    }
}

#[test]
fn every_algorithm_gives_every_query_exactly_its_keys() {
    for n in 1..=8 {
        // Full prefill of two sequences; then a partial prefill over the cache; then decodes
        // with the round-robin placement moving.
        let mut cache = CacheMap::new(n, 2).unwrap();
        let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 37 }, NewTokens { seq: 1, count: 5 }]).unwrap();
        for a in Algorithm::ALL {
            check(a, first.layouts(), &format!("N={n} full prefill"));
        }
        cache.commit_turn(&first).unwrap();
        let second = TurnPlan::new(&cache, &[NewTokens { seq: 1, count: 23 }, NewTokens { seq: 0, count: 3 }]).unwrap();
        for a in Algorithm::ALL {
            check(a, second.layouts(), &format!("N={n} partial prefill"));
        }
        cache.commit_turn(&second).unwrap();
        for it in 0..n + 1 {
            let plan = DecodePlan::new(&cache, &[0, 1], it).unwrap();
            for a in Algorithm::ALL {
                check(a, plan.layouts(), &format!("N={n} decode {it}"));
            }
            cache.commit_decode(&plan).unwrap();
        }
    }
}
