//! The forward pass held to an independent reading of the same file: every weight dequantized
//! by candle, the transformer written with candle's tensor operations (its RMS norm, rotary
//! embedding, softmax and matrix products), the whole prompt at once with a causal mask. It
//! shares nothing with moa's forward pass but the file, so a mistake in moa's kernels, rotary
//! pairing, cache layout or attention shows up as different logits.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor, D};
use moa_local::kernels::{self, Kernel};
use moa_local::model::Model;

use crate::tiny;

fn int(content: &Content, key: &str) -> usize {
    match &content.metadata[key] {
        Value::U32(v) => *v as usize,
        other => panic!("{key}: {other:?}"),
    }
}

/// The next-token logits after `ids`, by candle alone.
fn reference_logits(path: &Path, ids: &[u32]) -> Vec<f32> {
    let dev = Device::Cpu;
    let mut file = std::fs::File::open(path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let arch = content.metadata["general.architecture"]
        .to_string()
        .unwrap()
        .clone();
    let get = |key: &str| int(&content, &format!("{arch}.{key}"));
    let (layers, hidden, heads) = (
        get("block_count"),
        get("embedding_length"),
        get("attention.head_count"),
    );
    let kv_heads = get("attention.head_count_kv");
    let (head_dim, seq) = (hidden / heads, ids.len());
    let mut weight = |name: &str| -> Tensor {
        content
            .tensor(&mut file, name, &dev)
            .unwrap()
            .dequantize(&dev)
            .unwrap()
    };
    let has = |name: &str| content.tensor_infos.contains_key(name);
    let embed = weight("token_embd.weight");
    let output = if has("output.weight") {
        weight("output.weight")
    } else {
        embed.clone()
    };
    let linear = |x: &Tensor, w: &Tensor| x.matmul(&w.t().unwrap()).unwrap();
    let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, 1e-5).unwrap();

    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let angles = Tensor::arange(0u32, seq as u32, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .reshape((seq, 1))
        .unwrap()
        .broadcast_mul(&Tensor::from_vec(inv, (1, half), &dev).unwrap())
        .unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let rotate = |x: &Tensor| match arch.as_str() {
        "llama" => candle_nn::rotary_emb::rope_i(x, &cos, &sin).unwrap(),
        _ => candle_nn::rotary_emb::rope(x, &cos, &sin).unwrap(),
    };
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (seq, seq), &dev).unwrap();

    let ids_t = Tensor::new(ids, &dev).unwrap();
    let mut x = embed.index_select(&ids_t, 0).unwrap();
    for l in 0..layers {
        let p = format!("blk.{l}");
        let h = norm(&x, &weight(&format!("{p}.attn_norm.weight")));
        let project = |name: &str, weight: &mut dyn FnMut(&str) -> Tensor| {
            let y = linear(&h, &weight(&format!("{p}.{name}.weight")));
            match has(&format!("{p}.{name}.bias")) {
                true => y
                    .broadcast_add(&weight(&format!("{p}.{name}.bias")))
                    .unwrap(),
                false => y,
            }
        };
        let split = |t: Tensor, n: usize| {
            t.reshape((seq, n, head_dim))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .unsqueeze(0)
                .unwrap()
        };
        let q = rotate(&split(project("attn_q", &mut weight), heads));
        let k = rotate(&split(project("attn_k", &mut weight), kv_heads));
        let v = split(project("attn_v", &mut weight), kv_heads);
        // Every query head reads its key/value head: expand them (plainly, by copying).
        let expand = |t: &Tensor| {
            let parts: Vec<Tensor> = (0..heads)
                .map(|h| t.narrow(1, h / (heads / kv_heads), 1).unwrap())
                .collect();
            Tensor::cat(&parts, 1).unwrap()
        };
        let (k, v) = (expand(&k), expand(&v));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (head_dim as f64).sqrt())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((seq, hidden))
            .unwrap();
        x = (x + linear(&attn, &weight(&format!("{p}.attn_output.weight")))).unwrap();
        let h = norm(&x, &weight(&format!("{p}.ffn_norm.weight")));
        let gate =
            candle_nn::ops::silu(&linear(&h, &weight(&format!("{p}.ffn_gate.weight")))).unwrap();
        let up = linear(&h, &weight(&format!("{p}.ffn_up.weight")));
        let down = linear(
            &(gate * up).unwrap(),
            &weight(&format!("{p}.ffn_down.weight")),
        );
        x = (x + down).unwrap();
    }
    let last = norm(
        &x.narrow(0, seq - 1, 1).unwrap(),
        &weight("output_norm.weight"),
    );
    linear(&last, &output)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Held to 1e-3 with exact (f32) activations (`MOA_KERNEL=avx2-f32` or `scalar`, as CI runs
/// them); the 8-bit activation kernels (the default) to 0.05 on this small model, whose logits
/// are of order one.
fn tolerance() -> f32 {
    match kernels::kernel() {
        Kernel::Avx2Q8 | Kernel::Avx512Vnni => 5e-2,
        Kernel::Avx2F32 | Kernel::Scalar => 1e-3,
    }
}

#[test]
fn logits_match_candles_reading_of_the_file_for_prefill_and_steps() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let path = tiny::write(dir.path(), arch);
        let model = Model::load(&path).unwrap();
        let ids = model
            .tokenizer
            .encode("<|im_start|>user\nthe cat sat on the mat<|im_end|>");
        // Long enough to grow the cache past its first allocation when fed a token at a time.
        let ids: Vec<u32> = ids.iter().cycle().take(150).copied().collect();
        let expected = reference_logits(&path, &ids);
        let whole = model.forward(&ids, &mut model.new_cache()).unwrap();
        let diff = largest_difference(&whole, &expected);
        assert!(
            diff < tolerance(),
            "{arch} prefill: logits differ by {diff}"
        );

        let mut cache = model.new_cache();
        let (head, tail) = ids.split_at(40);
        let mut stepwise = model.forward(head, &mut cache).unwrap();
        for id in tail {
            stepwise = model.forward(&[*id], &mut cache).unwrap();
        }
        let diff = largest_difference(&stepwise, &expected);
        assert!(
            diff < tolerance(),
            "{arch} token by token: logits differ by {diff}"
        );
        // A copy of the cache goes on on its own.
        let mut fork = cache.clone();
        let a = model.forward(&[7], &mut fork).unwrap();
        let b = model.forward(&[7], &mut cache).unwrap();
        assert_eq!(a, b);
        assert_eq!((fork.len, cache.len), (151, 151));
    }
}

#[test]
fn an_f16_token_table_gives_the_same_logits() {
    // f16 has no kernel of moa's: the embedding rows and the tied output head go through candle.
    use candle_core::quantized::{GgmlDType, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write_edited(dir.path(), "llama", |_, tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name == "token_embd.weight" {
                let dense = tensor.dequantize(&Device::Cpu).unwrap();
                *tensor = QTensor::quantize(&dense, GgmlDType::F16).unwrap();
            }
        }
    });
    let model = Model::load(&path).unwrap();
    let ids = model
        .tokenizer
        .encode("<|im_start|>user\nthe cat sat<|im_end|>");
    let expected = reference_logits(&path, &ids);
    let mut cache = model.new_cache();
    let (head, tail) = ids.split_at(ids.len() / 2);
    let mut got = model.forward(head, &mut cache).unwrap();
    for id in tail {
        got = model.forward(&[*id], &mut cache).unwrap();
    }
    let diff = largest_difference(&got, &expected);
    assert!(diff < tolerance(), "logits differ by {diff}");
}
