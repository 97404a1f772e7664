//! The Llama example against candle-transformers' own Llama on the same weights: a varlen batch
//! of three sequences, a first prompt, a second turn (partial prefill on the cache), then greedy
//! decode of the whole batch and, after one sequence finishes, of the other two — on N = 2..8
//! in-process ranks, with pass-KV and pass-Q for prefill (pass-Q and gather-Q for decode) and
//! with the heuristic choosing. Logits within 1e-4 relative of the reference at every step, and
//! the same greedy tokens.

#[path = "../examples/llama/model.rs"]
#[allow(dead_code)]
mod model;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Llama};
use cp_model::Choice;
use cp_ring::Algorithm;
use model::{CpLlama, CpSession, argmax, random_weights, rel_err, small_config};

/// A step of the conversation: the tokens fed to each sequence, and the reference's logits at
/// each sequence's last token.
struct RefStep {
    feed: Vec<(usize, Vec<u32>)>,
    logits: Vec<(usize, Vec<f32>)>,
    decode: bool,
}

fn tokens(len: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 7) % vocab as u32)
        .collect()
}

/// candle-transformers' Llama, one sequence at a time (its batches are not varlen), with its own
/// KV cache: prompt, second turn, then greedy decode.
fn reference(llama: &Llama, cfg: &candle_transformers::models::llama::Config) -> Vec<RefStep> {
    let dev = Device::Cpu;
    let prompts =
        [(0, tokens(13, 1, cfg.vocab_size)), (1, tokens(7, 2, cfg.vocab_size)), (2, tokens(20, 3, cfg.vocab_size))];
    let second =
        [(0, tokens(5, 4, cfg.vocab_size)), (1, tokens(9, 5, cfg.vocab_size)), (2, tokens(1, 6, cfg.vocab_size))];
    let mut caches: Vec<Cache> = (0..3).map(|_| Cache::new(true, DType::F32, cfg, &dev).unwrap()).collect();
    let mut lens = [0usize; 3];
    let mut feed_one = |seq: usize, toks: &[u32], caches: &mut Vec<Cache>| -> Vec<f32> {
        let input = Tensor::new(toks, &dev).unwrap().unsqueeze(0).unwrap();
        let logits = llama.forward(&input, lens[seq], &mut caches[seq]).unwrap();
        lens[seq] += toks.len();
        logits.squeeze(0).unwrap().to_vec1().unwrap()
    };
    let mut steps = Vec::new();
    for turn in [&prompts[..], &second[..]] {
        let logits = turn.iter().map(|(seq, t)| (*seq, feed_one(*seq, t, &mut caches))).collect();
        steps.push(RefStep { feed: turn.to_vec(), logits, decode: false });
    }
    // Greedy decode: 5 iterations of the batch, then sequence 1 stops and 3 more of the others.
    for batch in [&[0, 1, 2][..]; 5].into_iter().chain([&[0, 2][..]; 3]) {
        let last = steps.last().map(|s: &RefStep| s.logits.clone()).unwrap();
        let feed: Vec<(usize, Vec<u32>)> =
            batch.iter().map(|&seq| (seq, vec![argmax(&last.iter().find(|(s, _)| *s == seq).unwrap().1)])).collect();
        let logits = feed.iter().map(|(seq, t)| (*seq, feed_one(*seq, t, &mut caches))).collect();
        steps.push(RefStep { feed, logits, decode: true });
    }
    steps
}

#[test]
fn cp_llama_matches_candle_transformers_llama() {
    let cfg = small_config();
    let map = random_weights(&cfg, 11).unwrap();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let llama = Llama::load(vb.clone(), &cfg).unwrap();
    let ours = Arc::new(CpLlama::load(vb, &cfg).unwrap());
    let steps = reference(&llama, &cfg);
    let heuristic = Choice::Heuristic {
        model: cp_heuristic::ModelShape { n_heads: 4, n_kv_heads: 2, head_dim: 16, elem_bytes: 4 },
        hardware: cp_heuristic::Hardware::PAPER_EXAMPLE,
        decode: Algorithm::GatherQ,
    };
    let choices = [
        Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::PassQ },
        Choice::Fixed { prefill: Algorithm::PassQ, decode: Algorithm::GatherQ },
        heuristic,
    ];
    let mut worst = 0f64;
    for n in 2..=8 {
        for choice in choices {
            let mut session = CpSession::new(ours.clone(), cfg.num_hidden_layers, 3, n, choice).unwrap();
            for (i, step) in steps.iter().enumerate() {
                let got = if step.decode {
                    let seqs: Vec<usize> = step.feed.iter().map(|(s, _)| *s).collect();
                    let toks: Vec<u32> = step.feed.iter().map(|(_, t)| t[0]).collect();
                    session.decode(&seqs, &toks).unwrap()
                } else {
                    session.prefill(&step.feed).unwrap()
                };
                assert_eq!(got.len(), step.logits.len(), "N={n} {choice:?} step {i}: one logits row per sequence");
                for ((seq, a), (rseq, b)) in got.iter().zip(&step.logits) {
                    assert_eq!(seq, rseq);
                    let err = rel_err(a, b);
                    worst = worst.max(err);
                    assert!(err <= 1e-4, "N={n} {choice:?} step {i} sequence {seq}: relative error {err:e}");
                    assert_eq!(argmax(a), argmax(b), "N={n} {choice:?} step {i} sequence {seq}: greedy token differs");
                }
            }
            assert_eq!(session.history()[1].len(), 7 + 9 + 5, "sequence 1 stopped after 5 decode steps");
        }
    }
    eprintln!("worst relative error of the logits over N = 2..8 and 3 choices: {worst:.2e}");
}
