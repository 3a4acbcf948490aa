//! A llama-family transformer (llama, qwen2) read from GGUF. The file is memory-mapped; Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K weights are used in place by
//! [`crate::kernels`], other types (f16, f32, the rarer quantizations) through candle's. The forward pass runs on plain f32 buffers ([`crate::ops`]) with an
//! in-place KV cache ([`crate::attention`]).

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

pub use crate::attention::Cache;
use crate::attention::{self, Row};
use crate::kernels::{self, Format, Packed, QMatrix};
use crate::ops::{self, RopeStyle};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// The longest context moa runs a model at; models that claim more (a million tokens, say)
/// run at this, which bounds the rotary tables and the KV cache a header can ask for.
pub const MAX_CONTEXT: usize = 131_072;

/// Refuses shapes that would divide by zero or index out of bounds in the forward pass.
fn check_shape(c: &ModelConfig) -> Result<(), String> {
    if c.layers == 0 || c.layers > 1024 {
        return Err(format!("block_count {} is not 1 to 1024", c.layers));
    }
    if c.heads == 0 || c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) {
        return Err(format!(
            "head_count {} and head_count_kv {} do not divide",
            c.heads, c.kv_heads
        ));
    }
    if c.hidden == 0
        || c.hidden > 1 << 16
        || !c.hidden.is_multiple_of(c.heads)
        || !c.head_dim.is_multiple_of(2)
    {
        return Err(format!(
            "embedding_length {} does not split into {} even heads",
            c.hidden, c.heads
        ));
    }
    if c.context == 0 {
        return Err("context_length is 0".into());
    }
    if !(c.eps.is_finite() && c.eps > 0.0 && c.rope_base.is_finite() && c.rope_base > 0.0) {
        return Err("rms epsilon and rope base must be positive numbers".into());
    }
    Ok(())
}

/// Checks every tensor the forward pass reads against the shape the header's numbers give it,
/// as llama.cpp does: a file whose metadata and weights disagree is refused at load, not
/// discovered mid-answer as a shape error (or worse) in a matrix product.
fn check_tensors(content: &Content, c: &ModelConfig, vocab: usize) -> Result<(), String> {
    let dims = |name: &str| -> Result<Vec<usize>, String> {
        content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or_else(|| format!("tensor `{name}` is missing"))
    };
    let expect = |name: &str, want: &[usize]| -> Result<(), String> {
        let got = dims(name)?;
        if got != want {
            return Err(format!(
                "tensor `{name}` has shape {got:?} where the header's sizes give {want:?}"
            ));
        }
        Ok(())
    };
    let (hidden, kv) = (c.hidden, c.kv_heads * c.head_dim);
    expect("token_embd.weight", &[vocab, hidden])?;
    if content.tensor_infos.contains_key("output.weight") {
        expect("output.weight", &[vocab, hidden])?;
    }
    expect("output_norm.weight", &[hidden])?;
    for i in 0..c.layers {
        let p = format!("blk.{i}");
        let ff = match dims(&format!("{p}.ffn_gate.weight"))?.as_slice() {
            &[ff, _] if ff > 0 => ff,
            other => {
                return Err(format!(
                    "tensor `{p}.ffn_gate.weight` has shape {other:?}, not a matrix"
                ))
            }
        };
        for (name, want) in [
            ("attn_norm.weight", vec![hidden]),
            ("ffn_norm.weight", vec![hidden]),
            ("attn_q.weight", vec![hidden, hidden]),
            ("attn_k.weight", vec![kv, hidden]),
            ("attn_v.weight", vec![kv, hidden]),
            ("attn_output.weight", vec![hidden, hidden]),
            ("ffn_gate.weight", vec![ff, hidden]),
            ("ffn_up.weight", vec![ff, hidden]),
            ("ffn_down.weight", vec![hidden, ff]),
        ] {
            expect(&format!("{p}.{name}"), &want)?;
        }
        for (name, want) in [("attn_q", hidden), ("attn_k", kv), ("attn_v", kv)] {
            let bias = format!("{p}.{name}.bias");
            if content.tensor_infos.contains_key(&bias) {
                expect(&bias, &[want])?;
            }
        }
    }
    Ok(())
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file: {message}")]
    Format { path: String, message: String },
    #[error("{path}: unsupported architecture `{arch}` (supported: llama, qwen2)")]
    Architecture { path: String, arch: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The architectures this module runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama and its GGUF conversions (SmolLM): interleaved rotary embedding.
    Llama,
    /// Qwen2: biases on q/k/v, half-split (NeoX) rotary embedding.
    Qwen2,
}

/// Shape and constants of a model, from its GGUF metadata.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub eps: f64,
    pub rope_base: f32,
}

/// A weight matrix: in the mapped file (the formats of [`Format`]) or loaded by candle
/// (anything else).
enum Weight {
    Mapped {
        format: Format,
        rows: usize,
        cols: usize,
        offset: usize,
        /// The 8-bit kernels' layout, made once (when the model loads, if one of them is
        /// chosen then; else on first use).
        packed: OnceLock<Packed>,
    },
    Candle(QMatMul),
}

impl Weight {
    fn matrix<'a>(&self, map: &'a [u8]) -> Option<QMatrix<'a>> {
        match *self {
            Weight::Mapped {
                format,
                rows,
                cols,
                offset,
                ..
            } => {
                let len = rows * cols / format.block_len() * format.block_bytes();
                // Offsets and lengths were checked against the file when the model loaded.
                QMatrix::new(format, rows, cols, &map[offset..offset + len]).ok()
            }
            Weight::Candle(_) => None,
        }
    }

    /// `x` (`n × cols`) times the transposed weights: `n × rows`.
    fn forward(&self, map: &[u8], x: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
        match (self, self.matrix(map)) {
            (Weight::Candle(m), _) => {
                let cols = x.len() / n.max(1);
                let x = Tensor::from_slice(x, (n, cols), &Device::Cpu)?;
                m.forward(&x)?
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1()
            }
            (Weight::Mapped { packed, .. }, Some(w)) => {
                let kernel = kernels::kernel();
                Ok(match kernel.packs() {
                    true => packed.get_or_init(|| Packed::new(&w)).matmul(x, n, kernel),
                    false => kernels::matmul_with(&w, x, n, kernel),
                })
            }
            (_, None) => candle_core::bail!("weight outside the mapped file"),
        }
    }

    /// Rows `ids` as f32 (`ids.len() × cols`): the embedding lookup.
    fn rows(&self, map: &[u8], ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        match (self, self.matrix(map)) {
            (Weight::Candle(QMatMul::QTensor(t)), _) => qtensor_rows(t, ids),
            // The rows first, then f32: never the whole table.
            (Weight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)), _) => t
                .index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1(),
            (_, Some(w)) => {
                let mut out = vec![0.0f32; ids.len() * w.cols];
                for (i, id) in ids.iter().enumerate() {
                    if *id as usize >= w.rows {
                        candle_core::bail!("token {id} is outside the vocabulary");
                    }
                    w.dequantize_row(*id as usize, &mut out[i * w.cols..(i + 1) * w.cols]);
                }
                Ok(out)
            }
            (_, None) => candle_core::bail!("weight outside the mapped file"),
        }
    }
}

/// Rows `ids` of a quantized table, dequantized one by one: the whole table of a large
/// vocabulary would be hundreds of megabytes of f32 per token.
fn qtensor_rows(t: &QTensor, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
    let (rows, cols) = t.shape().dims2()?;
    let data = t.data()?;
    let row_bytes = data.len() / rows.max(1);
    let mut out = Vec::with_capacity(ids.len() * cols);
    for id in ids {
        if *id as usize >= rows {
            candle_core::bail!("token {id} is outside the vocabulary");
        }
        let bytes = &data[*id as usize * row_bytes..][..row_bytes];
        let storage = QStorage::from_data(bytes.into(), &Device::Cpu, t.dtype())?;
        let row = QTensor::new(storage, (1, cols))?.dequantize(&Device::Cpu)?;
        out.extend(row.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

struct Linear {
    weight: Weight,
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn forward(&self, map: &[u8], x: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
        let mut y = self.weight.forward(map, x, n)?;
        if let Some(b) = &self.bias {
            ops::add_rows(&mut y, b);
        }
        Ok(y)
    }
}

struct Block {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// A loaded model: weights, tokenizer and chat template. Immutable, so one copy serves every
/// concurrent generation.
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The whole file, mapped: weights are read where they lie.
    map: memmap2::Mmap,
    embed: Weight,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    output: Weight,
    /// The rotary embedding's frequency for each pair of a head's dimensions.
    inv_freq: Vec<f32>,
}

struct Gguf<'a> {
    content: &'a Content,
    path: &'a str,
    arch: &'a str,
}

impl Gguf<'_> {
    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn invalid(&self, message: String) -> LoadError {
        LoadError::Invalid {
            path: self.path.to_string(),
            message,
        }
    }

    fn int(&self, key: &str) -> Result<usize, LoadError> {
        let key = key.replace("{arch}", self.arch);
        self.value(&key)
            .and_then(as_int)
            .ok_or_else(|| self.invalid(format!("metadata `{key}` is missing or not an integer")))
    }

    fn float(&self, key: &str, default: f64) -> f64 {
        let key = key.replace("{arch}", self.arch);
        match self.value(&key) {
            Some(Value::F32(v)) => f64::from(*v),
            Some(Value::F64(v)) => *v,
            _ => default,
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        self.value(key).and_then(|v| v.to_string().ok()).cloned()
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, LoadError> {
        let values = self
            .value(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| self.invalid(format!("metadata `{key}` is missing")))?;
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| self.invalid(format!("`{key}` holds a non-string")))
            })
            .collect()
    }
}

fn as_int(value: &Value) -> Option<usize> {
    let n: i128 = match value {
        Value::U8(v) => (*v).into(),
        Value::I8(v) => (*v).into(),
        Value::U16(v) => (*v).into(),
        Value::I16(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::I32(v) => (*v).into(),
        Value::U64(v) => (*v).into(),
        Value::I64(v) => (*v).into(),
        _ => return None,
    };
    usize::try_from(n).ok()
}

fn tokenizer(g: &Gguf) -> Result<(Tokenizer, ChatTemplate), LoadError> {
    let model = g.string("tokenizer.ggml.model").unwrap_or_default();
    let pre = g.string("tokenizer.ggml.pre");
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let merges = g.strings("tokenizer.ggml.merges").unwrap_or_default();
    let types = g
        .value("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|t| as_int(t).map_or(1, |n| n as i32))
                .collect::<Vec<i32>>()
        });
    let id = |key: &str| g.value(key).and_then(as_int).map(|n| n as u32);
    let (bos, eos) = (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
    );
    let text_of = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .cloned()
            .unwrap_or_default()
    };
    let (bos_text, eos_text) = (text_of(bos), text_of(eos));
    let tokenizer = Tokenizer::new(&model, pre.as_deref(), tokens, types, merges, bos, eos)
        .map_err(|e| g.invalid(e.to_string()))?;
    let template = ChatTemplate::new(
        g.string("tokenizer.chat_template").as_deref(),
        &bos_text,
        &eos_text,
    )
    .map_err(|e| g.invalid(format!("chat template: {e}")))?;
    Ok((tokenizer, template))
}

impl Model {
    /// Reads a GGUF model file.
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        let shown = path.display().to_string();
        let mut file = File::open(path).map_err(|source| LoadError::Open {
            path: shown.clone(),
            source,
        })?;
        let format = |message: String| LoadError::Format {
            path: shown.clone(),
            message,
        };
        // SAFETY: the map is read-only and lives as long as the model. moa never writes model
        // files in place (downloads are renamed into place), so the bytes do not change under it.
        #[allow(unsafe_code)]
        // Populated: every weight is read by the first forward pass (or by packing), and one
        // read-ahead costs less than a page fault per 4 KiB.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| format(format!("cannot map the file: {e}")))?;
        // Every count and offset of the header is checked against the file before candle's
        // reader, which trusts them, sees it.
        crate::gguf::validate(&map).map_err(format)?;
        let content = Content::read(&mut file).map_err(|e| format(e.to_string()))?;
        let arch_name = match content.metadata.get("general.architecture") {
            Some(v) => v.to_string().cloned().unwrap_or_default(),
            None => String::new(),
        };
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(LoadError::Architecture {
                    path: shown,
                    arch: other.to_string(),
                })
            }
        };
        let g = Gguf {
            content: &content,
            path: &shown,
            arch: &arch_name,
        };
        let heads = g.int("{arch}.attention.head_count")?;
        let hidden = g.int("{arch}.embedding_length")?;
        let config = ModelConfig {
            arch,
            name: g.string("general.name").unwrap_or_else(|| shown.clone()),
            layers: g.int("{arch}.block_count")?,
            hidden,
            heads,
            kv_heads: g.int("{arch}.attention.head_count_kv").unwrap_or(heads),
            head_dim: hidden / heads.max(1),
            context: g
                .int("{arch}.context_length")
                .unwrap_or(4096)
                .min(MAX_CONTEXT),
            eps: g.float("{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: g.float("{arch}.rope.freq_base", 10_000.0) as f32,
        };
        let (tokenizer, template) = tokenizer(&g)?;

        check_shape(&config).map_err(|m| g.invalid(m))?;
        check_tensors(&content, &config, tokenizer.vocab_size()).map_err(|m| g.invalid(m))?;
        let device = Device::Cpu;
        let fail = |e: candle_core::Error| g.invalid(e.to_string());
        let mut tensor = |name: &str| -> Result<QTensor, LoadError> {
            content.tensor(&mut file, name, &device).map_err(fail)
        };
        let weight = |name: &str,
                      tensor: &mut dyn FnMut(&str) -> Result<QTensor, LoadError>|
         -> Result<Weight, LoadError> {
            let info = content
                .tensor_infos
                .get(name)
                .ok_or_else(|| g.invalid(format!("tensor `{name}` is missing")))?;
            let format = Format::from_ggml(info.ggml_dtype);
            match (format, info.shape.dims()) {
                (Some(format), &[rows, cols]) if cols % format.block_len() == 0 => {
                    // Checked by gguf::validate already; checked again where it is used.
                    let offset = usize::try_from(content.tensor_data_offset)
                        .ok()
                        .and_then(|d| d.checked_add(usize::try_from(info.offset).ok()?));
                    let len = rows
                        .checked_mul(cols)
                        .map(|n| n / format.block_len() * format.block_bytes());
                    let (Some(offset), Some(len)) = (offset, len) else {
                        return Err(g.invalid(format!("tensor `{name}` is out of range")));
                    };
                    if offset.checked_add(len).is_none_or(|end| end > map.len()) {
                        return Err(
                            g.invalid(format!("tensor `{name}` runs past the end of the file"))
                        );
                    }
                    Ok(Weight::Mapped {
                        format,
                        rows,
                        cols,
                        offset,
                        packed: OnceLock::new(),
                    })
                }
                _ => Ok(Weight::Candle(
                    QMatMul::from_qtensor(tensor(name)?).map_err(fail)?,
                )),
            }
        };
        let embed = weight("token_embd.weight", &mut tensor)?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => weight("output.weight", &mut tensor)?,
            // Tied embeddings (SmolLM2): the output head is the embedding matrix.
            false => weight("token_embd.weight", &mut tensor)?,
        };
        let dense = |t: QTensor| {
            t.dequantize(&device)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(fail)
        };
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("blk.{i}");
            let mut linear = |name: &str| -> Result<Linear, LoadError> {
                let bias_name = format!("{p}.{name}.bias");
                let bias = if has(&bias_name) {
                    Some(dense(tensor(&bias_name)?)?)
                } else {
                    None
                };
                let weight = weight(&format!("{p}.{name}.weight"), &mut tensor)?;
                Ok(Linear { weight, bias })
            };
            let (q, k, v, o) = (
                linear("attn_q")?,
                linear("attn_k")?,
                linear("attn_v")?,
                linear("attn_output")?,
            );
            let mut matmul = |name: &str| weight(&format!("{p}.{name}.weight"), &mut tensor);
            let (gate, up, down) = (matmul("ffn_gate")?, matmul("ffn_up")?, matmul("ffn_down")?);
            blocks.push(Block {
                attn_norm: dense(tensor(&format!("{p}.attn_norm.weight"))?)?,
                ffn_norm: dense(tensor(&format!("{p}.ffn_norm.weight"))?)?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let norm = dense(tensor("output_norm.weight")?)?;
        let inv_freq = (0..config.head_dim / 2)
            .map(|i| {
                1.0 / config
                    .rope_base
                    .powf(2.0 * i as f32 / config.head_dim as f32)
            })
            .collect();
        let model = Model {
            map,
            embed,
            config,
            tokenizer,
            template,
            blocks,
            norm,
            output,
            inv_freq,
        };
        if kernels::kernel().packs() {
            model.pack();
        }
        Ok(model)
    }

    /// Packs every matrix for the 8-bit kernels now, so the first prompt does not wait for it.
    fn pack(&self) {
        let matrices = self.blocks.iter().flat_map(|b| {
            [
                &b.q.weight,
                &b.k.weight,
                &b.v.weight,
                &b.o.weight,
                &b.gate,
                &b.up,
                &b.down,
            ]
        });
        for weight in matrices.chain([&self.output]) {
            if let (Weight::Mapped { packed, .. }, Some(w)) = (weight, weight.matrix(&self.map)) {
                packed.get_or_init(|| Packed::new(&w));
            }
        }
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> Cache {
        let c = &self.config;
        Cache::new(c.layers, c.kv_heads, c.head_dim, c.context)
    }

    /// Runs `tokens` after what `cache` holds and returns the logits of the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> candle_core::Result<Vec<f32>> {
        let mut logits = self.step(tokens, &vec![0; tokens.len()], &mut [cache])?;
        Ok(logits.pop().unwrap_or_default())
    }

    /// Runs one new token for each of several sequences, each after its own cache, and returns
    /// each one's logits. The products with the weights are done once for all of them, so a batch
    /// costs little more than one sequence; attention stays per sequence.
    pub fn forward_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut Cache],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        if tokens.len() != caches.len() {
            candle_core::bail!("{} tokens for {} sequences", tokens.len(), caches.len());
        }
        let owners: Vec<usize> = (0..tokens.len()).collect();
        self.step(tokens, &owners, caches)
    }

    /// One pass over the weights for `tokens`, token `i` following what `caches[owners[i]]`
    /// holds (and the earlier tokens of the same owner). Returns the logits of each cache's
    /// last token, in cache order.
    fn step(
        &self,
        tokens: &[u32],
        owners: &[usize],
        caches: &mut [&mut Cache],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        // On a pool thread, the many parallel products of one pass split with cheap work
        // stealing instead of each waking the pool from outside (measured: a quarter of the time).
        rayon::scope(|_| self.step_here(tokens, owners, caches))
    }

    fn step_here(
        &self,
        tokens: &[u32],
        owners: &[usize],
        caches: &mut [&mut Cache],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            candle_core::bail!("no tokens to run");
        }
        // Each token's place: its cache and its position there.
        let mut ends: Vec<usize> = caches.iter().map(|cache| cache.len).collect();
        let mut rows = Vec::with_capacity(n);
        for &owner in owners {
            let end = ends
                .get_mut(owner)
                .ok_or_else(|| candle_core::Error::Msg(format!("no sequence {owner}")))?;
            rows.push(Row {
                cache: owner,
                position: *end,
            });
            *end += 1;
        }
        if let Some(end) = ends.iter().find(|end| **end > c.context) {
            candle_core::bail!(
                "the conversation is longer than the model's context of {} tokens ({end})",
                c.context
            );
        }
        for (cache, end) in caches.iter_mut().zip(&ends) {
            cache.reserve(*end);
        }
        let positions: Vec<usize> = rows.iter().map(|r| r.position).collect();
        let (cos, sin) = ops::rope_angles(&positions, &self.inv_freq);
        let style = match c.arch {
            Arch::Llama => RopeStyle::Interleaved,
            Arch::Qwen2 => RopeStyle::Halves,
        };
        let (eps, kv_width) = (c.eps as f32, c.kv_heads * c.head_dim);
        let groups = attention::plan(&rows, caches.len(), c.heads, c.kv_heads);
        let map = &self.map[..];
        let mut x = self.embed.rows(map, tokens)?;
        let mut h = vec![0.0f32; x.len()];
        for (layer, block) in self.blocks.iter().enumerate() {
            ops::rms_norm(&x, &block.attn_norm, eps, &mut h);
            let mut q = block.q.forward(map, &h, n)?;
            let mut k = block.k.forward(map, &h, n)?;
            let v = block.v.forward(map, &h, n)?;
            ops::rope(&mut q, c.head_dim, &cos, &sin, style);
            ops::rope(&mut k, c.head_dim, &cos, &sin, style);
            for (i, row) in rows.iter().enumerate() {
                let at = i * kv_width..(i + 1) * kv_width;
                caches[row.cache].write(layer, row.position, &k[at.clone()], &v[at]);
            }
            let shared: Vec<&Cache> = caches.iter().map(|cache| &**cache).collect();
            let y = attention::attend(&q, &groups, &shared, layer, c.heads);
            ops::add(&mut x, &block.o.forward(map, &y, n)?);
            ops::rms_norm(&x, &block.ffn_norm, eps, &mut h);
            let mut gate = block.gate.forward(map, &h, n)?;
            ops::silu_mul(&mut gate, &block.up.forward(map, &h, n)?);
            ops::add(&mut x, &block.down.forward(map, &gate, n)?);
        }
        for (cache, end) in caches.iter_mut().zip(ends) {
            cache.len = end;
        }
        // The last token of each sequence gives its logits.
        let hidden = c.hidden;
        let mut last = Vec::with_capacity(caches.len() * hidden);
        for owner in 0..caches.len() {
            let i = owners
                .iter()
                .rposition(|o| *o == owner)
                .ok_or_else(|| candle_core::Error::Msg(format!("sequence {owner} has no token")))?;
            last.extend_from_slice(&x[i * hidden..(i + 1) * hidden]);
        }
        let mut normed = vec![0.0f32; last.len()];
        ops::rms_norm(&last, &self.norm, eps, &mut normed);
        let logits = self.output.forward(map, &normed, caches.len())?;
        Ok(logits
            .chunks_exact(logits.len() / caches.len())
            .map(<[f32]>::to_vec)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn rows_of_a_k_quant_table_are_the_rows_of_the_whole_table() {
        let values: Vec<f32> = (0..5 * 512).map(|i| (i as f32 * 0.31).cos()).collect();
        let dense = Tensor::from_vec(values, (5, 512), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let t = QTensor::quantize(&dense, dtype).unwrap();
            let whole = t
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let rows = qtensor_rows(&t, &[3, 0, 3]).unwrap();
            assert_eq!(rows[..512], whole[3][..]);
            assert_eq!(rows[512..1024], whole[0][..]);
            assert_eq!(rows[1024..], whole[3][..]);
            assert!(qtensor_rows(&t, &[5]).is_err());
        }
    }
}
