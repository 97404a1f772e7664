//! A Llama decoder with context-parallel attention over N in-process ranks: a batch of prompts,
//! a second turn, then greedy decode, each step checked against candle-transformers' own Llama
//! on the same weights.
//!
//! ```text
//! cargo run --release -p cp-model --example llama -- --ranks 4
//! cargo run --release -p cp-model --example llama -- --ranks 4 --weights model.safetensors --config config.json
//! ```
//!
//! Without `--weights`, a small random model. With them, any Llama checkpoint candle-transformers
//! loads (its `config.json` and one safetensors file); prompts are token ids drawn from the
//! vocabulary (no tokenizer here).

mod model;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig};
use cp_model::Choice;
use cp_ring::Algorithm;
use model::{CpLlama, CpSession, Error, argmax, random_weights, small_config};

struct Args {
    ranks: usize,
    weights: Option<String>,
    config: Option<String>,
    decode: usize,
    save: Option<String>,
    gpu_shape: bool,
}

fn parse() -> Result<Args, Error> {
    let mut args = Args { ranks: 4, weights: None, config: None, decode: 8, save: None, gpu_shape: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ranks" => args.ranks = value()?.parse().map_err(|e| format!("--ranks: {e}"))?,
            "--decode" => args.decode = value()?.parse().map_err(|e| format!("--decode: {e}"))?,
            "--weights" => args.weights = Some(value()?),
            "--config" => args.config = Some(value()?),
            "--save-random" => args.save = Some(value()?),
            "--gpu-shape" => args.gpu_shape = true,
            "--help" | "-h" => {
                println!(
                    "usage: llama [--ranks N] [--decode STEPS] [--weights FILE.safetensors --config config.json] \\
                     [--save-random DIR (writes the random model as DIR/model.safetensors and DIR/config.json)] \\
                     [--gpu-shape (a random model of head dim 128, as the GPU kernels take)]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)").into()),
        }
    }
    if args.ranks == 0 {
        return Err("--ranks must be at least 1".into());
    }
    if args.weights.is_some() != args.config.is_some() {
        return Err("--weights and --config go together".into());
    }
    Ok(args)
}

fn main() -> Result<(), Error> {
    let args = parse()?;
    let dev = Device::Cpu;
    let (cfg, map, vb): (Config, _, VarBuilder<'_>) = match (&args.weights, &args.config) {
        (Some(weights), Some(config)) => {
            let json = std::fs::read_to_string(config).map_err(|e| format!("{config}: {e}"))?;
            let cfg: LlamaConfig = serde_json::from_str(&json).map_err(|e| format!("{config}: {e}"))?;
            // SAFETY: the file is not modified while mapped (candle's mmap contract).
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &dev)? };
            (cfg.into_config(false), None, vb)
        }
        _ => {
            let cfg = if args.gpu_shape { model::gpu_config() } else { small_config() };
            let map = random_weights(&cfg, 1)?;
            if let Some(dir) = &args.save {
                model::save_checkpoint(&cfg, &map, std::path::Path::new(dir))?;
                println!("wrote {dir}/model.safetensors and {dir}/config.json");
            }
            let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
            (cfg, Some(map), vb)
        }
    };
    let _keep = map;
    let ours = Arc::new(CpLlama::load(vb.clone(), &cfg)?);
    let reference = Llama::load(vb, &cfg)?;
    let (prompts, second) = model::conversation(cfg.vocab_size);

    let choice = Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ };
    let mut session = CpSession::new(ours, cfg.num_hidden_layers, prompts.len(), args.ranks, choice)?;
    let mut caches: Vec<Cache> =
        (0..prompts.len()).map(|_| Cache::new(true, DType::F32, &cfg, &dev)).collect::<Result<_, _>>()?;
    let mut lens = vec![0usize; prompts.len()];
    let mut worst = 0f64;
    let mut check = |got: &[(usize, Vec<f32>)], fed: &[(usize, Vec<u32>)]| -> Result<Vec<u32>, Error> {
        let mut next = Vec::new();
        for ((seq, logits), (fseq, tokens)) in got.iter().zip(fed) {
            assert_eq!(seq, fseq);
            let input = Tensor::new(tokens.as_slice(), &dev)?.unsqueeze(0)?;
            let want: Vec<f32> = reference.forward(&input, lens[*seq], &mut caches[*seq])?.squeeze(0)?.to_vec1()?;
            lens[*seq] += tokens.len();
            worst = worst.max(model::rel_err(logits, &want));
            if argmax(logits) != argmax(&want) {
                return Err(format!("sequence {seq}: greedy token differs from candle-transformers'").into());
            }
            next.push(argmax(logits));
        }
        Ok(next)
    };
    let mut next = Vec::new();
    for turn in [&prompts, &second] {
        next = check(&session.prefill(turn)?, turn)?;
    }
    let seqs: Vec<usize> = prompts.iter().map(|(s, _)| *s).collect();
    for _ in 0..args.decode {
        let fed: Vec<(usize, Vec<u32>)> = seqs.iter().zip(&next).map(|(s, t)| (*s, vec![*t])).collect();
        next = check(&session.decode(&seqs, &next)?, &fed)?;
    }
    for (seq, tokens) in session.history().iter().enumerate() {
        println!("sequence {seq}: {} tokens, generated {:?}", tokens.len(), &tokens[tokens.len() - args.decode..]);
    }
    println!(
        "{} ranks: every step's logits within {worst:.1e} (relative) of candle-transformers' Llama, same greedy tokens",
        args.ranks
    );
    Ok(())
}
