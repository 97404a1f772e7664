//! A Llama decoder whose attention runs context-parallel over ranks, loading candle-transformers'
//! weight layout (`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`, ...), and a
//! driver that runs a multi-turn, batched conversation over N in-process ranks.
//!
//! What a model changes to run with context parallelism, all in [`CpLlama::forward`]:
//! - each rank computes the rows of the step's plan ([`Step::rows`]) instead of the whole
//!   sequence: token ids and positions come from the plan (padding rows take token 0);
//! - rotary embeddings take each row's global position ([`Step::positions`]);
//! - attention is one call, [`RankAttention::attend`], with the rows' Q, K and V;
//! - logits are taken on the rank that holds a sequence's last token.
//!
//! Everything else — norms, projections, the MLP — is per row and unchanged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder, embedding, linear_no_bias, rms_norm};
use candle_transformers::models::llama::Config;
use cp_attention::CpuAttention;
use cp_model::{CacheConfig, Choice, RankAttention, Step};
use cp_ring::{ChannelTransport, PoolError, RankPool, channel_ring};
use cp_shard::NewTokens;

/// Errors of the example.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// What the model needs from attention: one call per layer with the step's rows' Q, K and V
/// (candle tensors on the model's device), returning the attention output of those rows.
pub trait LayerAttention {
    /// See [`RankAttention::attend`].
    fn attend_layer(
        &mut self,
        step: &mut Step,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, Error>;
}

/// On the CPU, candle tensors go to `RankAttention` as they are.
impl<C: cp_ring::RingTransport<Tensor>> LayerAttention for RankAttention<CpuAttention, C> {
    fn attend_layer(
        &mut self,
        step: &mut Step,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, Error> {
        Ok(self.attend(step, layer, q, k, v)?)
    }
}

/// Llama's weights, for one rank's rows.
pub struct CpLlama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// `[max_positions, head_dim / 2]`, as candle-transformers computes them.
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl CpLlama {
    /// Loads the weights of `cfg` from `vb` (candle-transformers' names; default RoPE only).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<CpLlama, Error> {
        if cfg.rope_scaling.is_some() {
            return Err("this example implements the default RoPE only (rope_scaling: None)".into());
        }
        let (h, heads, kv_heads) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads);
        let head_dim = h / heads;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("model.layers.{i}"));
                let (a, m) = (vb.pp("self_attn"), vb.pp("mlp"));
                Ok(Layer {
                    input_norm: rms_norm(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
                    q: linear_no_bias(h, heads * head_dim, a.pp("q_proj"))?,
                    k: linear_no_bias(h, kv_heads * head_dim, a.pp("k_proj"))?,
                    v: linear_no_bias(h, kv_heads * head_dim, a.pp("v_proj"))?,
                    o: linear_no_bias(heads * head_dim, h, a.pp("o_proj"))?,
                    post_norm: rms_norm(h, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
                    gate: linear_no_bias(h, cfg.intermediate_size, m.pp("gate_proj"))?,
                    up: linear_no_bias(h, cfg.intermediate_size, m.pp("up_proj"))?,
                    down: linear_no_bias(cfg.intermediate_size, h, m.pp("down_proj"))?,
                })
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        let embed = embedding(cfg.vocab_size, h, vb.pp("model.embed_tokens"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            linear_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let norm = rms_norm(h, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        // The rotary tables exactly as candle-transformers builds them (same f32 operations).
        let dev = vb.device();
        let inv_freq: Vec<f32> =
            (0..head_dim).step_by(2).map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / head_dim as f32)).collect();
        let inv_freq = Tensor::new(inv_freq, dev)?;
        let angles = Tensor::arange(0, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?
            .matmul(&inv_freq.reshape((1, head_dim / 2))?)?;
        Ok(CpLlama { embed, layers, norm, lm_head, cos: angles.cos()?, sin: angles.sin()?, heads, kv_heads, head_dim })
    }

    /// Runs this rank's rows of `step` (token ids `ids`, one per row of [`Step::rows`]) through
    /// the model; returns the final hidden states `[rows, hidden]`.
    pub fn forward(&self, attn: &mut impl LayerAttention, step: &mut Step, ids: &[u32]) -> Result<Tensor, Error> {
        let dev = self.cos.device();
        let rows = ids.len();
        let positions = Tensor::new(step.positions(), dev)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let rope = |x: Tensor| -> candle_core::Result<Tensor> {
            candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, &cos, &sin)?.squeeze(0)
        };
        let mut x = self.embed.forward(&Tensor::new(ids, dev)?)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let q = rope(layer.q.forward(&h)?.reshape((rows, self.heads, self.head_dim))?)?;
            let k = rope(layer.k.forward(&h)?.reshape((rows, self.kv_heads, self.head_dim))?)?;
            let v = layer.v.forward(&h)?.reshape((rows, self.kv_heads, self.head_dim))?;
            let att = attn.attend_layer(step, i, &q, &k, &v)?;
            let att = att.to_dtype(x.dtype())?.reshape((rows, self.heads * self.head_dim))?;
            x = (layer.o.forward(&att)? + x)?;
            let h = layer.post_norm.forward(&x)?;
            let mlp =
                layer.down.forward(&(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?)?;
            x = (mlp + x)?;
        }
        Ok(x)
    }

    /// Logits `[vocab]` of hidden row `row`.
    pub fn logits(&self, hidden: &Tensor, row: usize) -> Result<Vec<f32>, Error> {
        let h = self.norm.forward(&hidden.narrow(0, row, 1)?)?;
        Ok(self.lm_head.forward(&h)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

/// One rank: its attention (KV caches, ring end) and the shared weights.
pub struct Rank {
    attn: RankAttention<CpuAttention, ChannelTransport<Tensor>>,
    model: Arc<CpLlama>,
}

/// What a step returned: each sequence's logits at its last new token.
pub type StepLogits = Vec<(usize, Vec<f32>)>;

/// A batch of sequences served by `N` ranks in this process, one thread each.
pub struct CpSession {
    pool: RankPool<Rank>,
    /// Every sequence's tokens so far.
    history: Vec<Vec<u32>>,
}

impl CpSession {
    /// `world_size` ranks sharing `model`, caches for `seqs` sequences, algorithms by `choice`.
    pub fn new(
        model: Arc<CpLlama>,
        layers: usize,
        seqs: usize,
        world_size: usize,
        choice: Choice,
    ) -> Result<Self, Error> {
        let config = CacheConfig { layers, seqs, reserve: 0, choice };
        let ends = Mutex::new(
            channel_ring::<Tensor>(world_size, Duration::from_secs(60)).into_iter().map(Some).collect::<Vec<_>>(),
        );
        let pool = RankPool::new(world_size, move |rank| {
            let comm = ends.lock().map_err(|_| "ring ends poisoned")?[rank].take().ok_or("ring end taken twice")?;
            let attn = RankAttention::new(CpuAttention::default(), comm, config)?;
            Ok::<_, Error>(Rank { attn, model: model.clone() })
        })
        .map_err(pool_error)?;
        Ok(CpSession { pool, history: vec![Vec::new(); seqs] })
    }

    /// Every sequence's tokens so far.
    pub fn history(&self) -> &[Vec<u32>] {
        &self.history
    }

    /// A prefill turn: appends `turn[i].1` to sequence `turn[i].0` and returns each sequence's
    /// logits at its last token.
    pub fn prefill(&mut self, turn: &[(usize, Vec<u32>)]) -> Result<StepLogits, Error> {
        let new: Vec<NewTokens> = turn.iter().map(|(seq, t)| NewTokens { seq: *seq, count: t.len() }).collect();
        for (seq, tokens) in turn {
            self.history.get_mut(*seq).ok_or("sequence out of range")?.extend(tokens);
        }
        self.run(move |attn| attn.prefill(&new).map_err(Error::from))
    }

    /// A decode iteration: appends `tokens[i]` to sequence `seqs[i]`.
    pub fn decode(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<StepLogits, Error> {
        for (seq, t) in seqs.iter().zip(tokens) {
            self.history.get_mut(*seq).ok_or("sequence out of range")?.push(*t);
        }
        let seqs = seqs.to_vec();
        self.run(move |attn| attn.decode(&seqs).map_err(Error::from))
    }

    /// Plans a step on every rank, runs the model over each rank's rows and gathers the logits
    /// of each sequence's last token from the rank that holds it.
    fn run(
        &mut self,
        plan: impl Fn(&mut RankAttention<CpuAttention, ChannelTransport<Tensor>>) -> Result<Step, Error>
        + Send
        + Sync
        + 'static,
    ) -> Result<StepLogits, Error> {
        let history = Arc::new(self.history.clone());
        let results = self.pool.run(move |_rank, r: &mut Rank| {
            let mut step = plan(&mut r.attn)?;
            let tokens = step.tokens();
            let ids: Vec<u32> = tokens.iter().map(|t| t.map_or(0, |t| history[t.seq][t.pos])).collect();
            let hidden = r.model.forward(&mut r.attn, &mut step, &ids)?;
            let mut logits = Vec::new();
            for (row, t) in tokens.iter().enumerate() {
                if let Some(t) = t.filter(|t| t.pos + 1 == history[t.seq].len()) {
                    logits.push((t.seq, r.model.logits(&hidden, row)?));
                }
            }
            r.attn.finish(step)?;
            Ok::<_, Error>(logits)
        });
        let mut all: StepLogits =
            PoolError::all_ok(results, |_| false).map_err(pool_error)?.into_iter().flatten().collect();
        all.sort_by_key(|(seq, _)| *seq);
        Ok(all)
    }
}

fn pool_error(e: PoolError<Error>) -> Error {
    e.to_string().into()
}

/// Relative error of `got` against `want`: the largest absolute difference over the largest
/// absolute value of `want` (in f64).
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs())).max(1e-30);
    got.iter().zip(want).fold(0f64, |m, (&x, &y)| m.max((f64::from(x) - f64::from(y)).abs())) / scale
}

/// Index of the largest value (greedy sampling).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A small Llama configuration (grouped-query attention, 2 layers) for checks on the CPU.
pub fn small_config() -> Config {
    Config {
        hidden_size: 64,
        intermediate_size: 128,
        vocab_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        use_flash_attn: false,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: false,
    }
}

/// A configuration our GPU kernels take (head dim 128; they serve 64 and 128): 2 layers, hidden
/// 512, 4 query heads over 1 key/value head (about 5M parameters).
pub fn gpu_config() -> Config {
    Config {
        hidden_size: 512,
        intermediate_size: 1024,
        vocab_size: 1024,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        max_position_embeddings: 4096,
        ..small_config()
    }
}

/// Random weights for `cfg` drawn from `seed` (norm weights too, so that every weight
/// matters), in a var map both models load from.
pub fn random_weights(cfg: &Config, seed: u64) -> Result<candle_nn::VarMap, Error> {
    use rand::{Rng, SeedableRng};
    let dev = Device::Cpu;
    let map = candle_nn::VarMap::new();
    // Loading the model creates every variable; then each is redrawn from the seed.
    CpLlama::load(VarBuilder::from_varmap(&map, DType::F32, &dev), cfg)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = map.data().lock().map_err(|_| "var map poisoned")?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let (mean, std) = match dims.as_slice() {
            [_] => (1.0, 0.2),                                     // norm weights
            [_, _] if name.contains("embed_tokens") => (0.0, 1.0), // embeddings
            [_, fan_in] => (0.0, 1.0 / (*fan_in as f32).sqrt()),   // projections
            _ => return Err(format!("unexpected weight {name} {dims:?}").into()),
        };
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                // Box-Muller from two uniforms.
                let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                mean + std * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect();
        var.set(&Tensor::from_vec(values, dims, &dev)?)?;
    }
    drop(data);
    Ok(map)
}

/// Writes `cfg` and the weights of `map` as a checkpoint candle-transformers (and `--weights`,
/// `--config`) load: `dir/model.safetensors` and `dir/config.json`.
pub fn save_checkpoint(cfg: &Config, map: &candle_nn::VarMap, dir: &std::path::Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    map.save(dir.join("model.safetensors"))?;
    let json = serde_json::json!({
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    });
    std::fs::write(dir.join("config.json"), json.to_string()).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(())
}

/// Tokens fed to each sequence in a step: `(sequence, new token ids)`.
pub type Feed = Vec<(usize, Vec<u32>)>;

/// The examples' conversation: a varlen batch of three prompts (13, 7 and 20 tokens) and a
/// second turn (5, 9 and 1), token ids drawn from the vocabulary.
pub fn conversation(vocab: usize) -> (Feed, Feed) {
    let vocab = vocab as u32;
    let p = |len: u32, seed: u32| -> Vec<u32> { (0..len).map(|i| (i * 7919 + seed * 104_729) % vocab).collect() };
    (vec![(0, p(13, 1)), (1, p(7, 2)), (2, p(20, 3))], vec![(0, p(5, 4)), (1, p(9, 5)), (2, p(1, 6))])
}
