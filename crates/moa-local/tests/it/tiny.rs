//! Writes a small llama-architecture GGUF with random weights and a byte-level vocabulary.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

pub const LAYERS: usize = 2;
pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FF: usize = 128;

/// GPT-2's byte-to-character map (the same table the tokenizer builds).
fn byte_chars() -> Vec<String> {
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let printable = (b'!'..=b'~').contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b);
            if printable {
                char::from(b).to_string()
            } else {
                let c = char::from_u32(next).unwrap();
                next += 1;
                c.to_string()
            }
        })
        .collect()
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn q(t: Tensor, dtype: GgmlDType) -> QTensor {
    QTensor::quantize(&t, dtype).unwrap()
}

/// Writes the model to `dir/tiny.gguf` with architecture `arch` and returns its path.
pub fn write(dir: &Path, arch: &str) -> PathBuf {
    write_with_context(dir, arch, 256)
}

/// [`write`] with a context of `context` tokens.
pub fn write_with_context(dir: &Path, arch: &str, context: u32) -> PathBuf {
    write_edited(dir, arch, |metadata, _| {
        set(
            metadata,
            &format!("{arch}.context_length"),
            Value::U32(context),
        )
    })
}

/// Replaces (or adds) metadata entry `key`.
pub fn set(metadata: &mut Vec<(String, Value)>, key: &str, value: Value) {
    metadata.retain(|(k, _)| k != key);
    metadata.push((key.to_string(), value));
}

/// [`write`], with `edit` changing the metadata and the tensors before the file is written:
/// how the tests craft files that lie about themselves.
pub fn write_edited(
    dir: &Path,
    arch: &str,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, QTensor)>),
) -> PathBuf {
    let mut tokens = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(byte_chars());
    let merges = ["Ġ t", "h e", "Ġt he"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![3i32; 3];
    types.resize(tokens.len(), 1);
    let vocab = tokens.len();

    let s = |v: &str| Value::String(v.to_string());
    let u = Value::U32;
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.name".into(), s("tiny test model")),
        (format!("{arch}.block_count"), u(LAYERS as u32)),
        (format!("{arch}.context_length"), u(256)),
        (format!("{arch}.embedding_length"), u(HIDDEN as u32)),
        (format!("{arch}.feed_forward_length"), u(FF as u32)),
        (format!("{arch}.attention.head_count"), u(HEADS as u32)),
        (
            format!("{arch}.attention.head_count_kv"),
            u(KV_HEADS as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(1)),
        ("tokenizer.ggml.eos_token_id".into(), u(2)),
        (
            "tokenizer.chat_template".into(),
            s(moa_local::template::CHATML),
        ),
    ];
    let kv = HIDDEN / HEADS * KV_HEADS;
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(random(&[vocab, HIDDEN], 1), GgmlDType::Q8_0),
        ),
        (
            "output_norm.weight".into(),
            q(
                random(&[HIDDEN], 2).affine(1.0, 1.0).unwrap(),
                GgmlDType::F32,
            ),
        ),
    ];
    for l in 0..LAYERS {
        let seed = 100 * (l as u64 + 1);
        let p = format!("blk.{l}");
        let mut add = |name: &str, shape: &[usize], dtype: GgmlDType, offset: f64| {
            let t = random(shape, seed + tensors.len() as u64)
                .affine(1.0, offset)
                .unwrap();
            tensors.push((format!("{p}.{name}"), q(t, dtype)));
        };
        add("attn_norm.weight", &[HIDDEN], GgmlDType::F32, 1.0);
        add("ffn_norm.weight", &[HIDDEN], GgmlDType::F32, 1.0);
        add("attn_q.weight", &[HIDDEN, HIDDEN], GgmlDType::Q4_1, 0.0);
        add("attn_k.weight", &[kv, HIDDEN], GgmlDType::Q4_1, 0.0);
        add("attn_v.weight", &[kv, HIDDEN], GgmlDType::Q4_1, 0.0);
        add(
            "attn_output.weight",
            &[HIDDEN, HIDDEN],
            GgmlDType::Q4_1,
            0.0,
        );
        add("ffn_gate.weight", &[FF, HIDDEN], GgmlDType::Q4_1, 0.0);
        add("ffn_up.weight", &[FF, HIDDEN], GgmlDType::Q4_1, 0.0);
        add("ffn_down.weight", &[HIDDEN, FF], GgmlDType::Q4_1, 0.0);
        if arch == "qwen2" {
            add("attn_q.bias", &[HIDDEN], GgmlDType::F32, 0.0);
            add("attn_k.bias", &[kv], GgmlDType::F32, 0.0);
            add("attn_v.bias", &[kv], GgmlDType::F32, 0.0);
        }
    }
    let mut metadata = metadata;
    edit(&mut metadata, &mut tensors);
    let path = dir.join(format!("tiny-{arch}.gguf"));
    let mut file = std::fs::File::create(&path).unwrap();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    path
}
