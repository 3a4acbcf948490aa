//! Model files that lie about themselves, written by the test: each is refused at load with a
//! message naming what is wrong, or, where only running can tell, fails its request with an
//! error. None may panic the process, abort it, or answer an empty success.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use futures::StreamExt;
use moa_core::{ChatRequest, Chunk, Message, Provider};
use moa_local::model::{Model, MAX_CONTEXT};
use moa_local::LocalProvider;

use crate::tiny::{self, set, HIDDEN};

type Edit = Box<dyn FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, QTensor)>)>;

fn meta(key: &'static str, value: Value) -> Edit {
    Box::new(move |m, _| set(m, key, value))
}

fn load_error(edit: Edit) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write_edited(dir.path(), "llama", edit);
    match Model::load(&path) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

fn zeros(shape: &[usize], dtype: GgmlDType) -> QTensor {
    let t = candle_core::Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu);
    QTensor::quantize(&t.unwrap(), dtype).unwrap()
}

#[test]
fn shapes_the_tensors_contradict_are_refused_at_load() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            meta("llama.attention.head_count", Value::U32(0)),
            "head_count 0 and head_count_kv 2 do not divide",
        ),
        (
            meta("llama.attention.head_count_kv", Value::U32(3)),
            "do not divide",
        ),
        (
            meta("llama.block_count", Value::U32(u32::MAX)),
            "block_count 4294967295 is not 1 to 1024",
        ),
        (
            meta("llama.block_count", Value::U32(3)),
            "tensor `blk.2.ffn_gate.weight` is missing",
        ),
        (
            meta("llama.embedding_length", Value::U32(128)),
            "tensor `token_embd.weight` has shape [262, 64] where the header's sizes give [262, 128]",
        ),
        (
            meta("llama.context_length", Value::U32(0)),
            "context_length is 0",
        ),
        (
            meta("llama.rope.freq_base", Value::F32(f32::NAN)),
            "rope base must be positive",
        ),
        (
            Box::new(|_, t| t.retain(|(n, _)| n != "token_embd.weight")),
            "tensor `token_embd.weight` is missing",
        ),
        (
            Box::new(|m, _| set(m, "tokenizer.ggml.tokens", Value::Array(vec![Value::U32(7)]))),
            "`tokenizer.ggml.tokens` holds a non-string",
        ),
        (
            // A tokenizer with one token fewer than the embedding has rows.
            Box::new(|m, _| {
                let Some((_, Value::Array(tokens))) =
                    m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens")
                else {
                    unreachable!()
                };
                tokens.pop();
                let Some((_, Value::Array(types))) =
                    m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.token_type")
                else {
                    unreachable!()
                };
                types.pop();
            }),
            "tensor `token_embd.weight` has shape [262, 64] where the header's sizes give [261, 64]",
        ),
        (
            Box::new(|_, t| {
                let k = t.iter_mut().find(|(n, _)| n == "blk.1.attn_k.weight").unwrap();
                k.1 = zeros(&[HIDDEN, HIDDEN], GgmlDType::Q8_0);
            }),
            "tensor `blk.1.attn_k.weight` has shape [64, 64] where the header's sizes give [32, 64]",
        ),
    ];
    for (edit, expected) in cases {
        let err = load_error(edit);
        assert!(err.contains(expected), "expected `{expected}`, got: {err}");
    }
}

/// Answers `hi` with at most 8 tokens; the chunks, or the error the stream ended with.
async fn run(path: &std::path::Path) -> Result<Vec<Chunk>, String> {
    let dir = path.parent().unwrap();
    let provider = LocalProvider::new(dir);
    let mut request = ChatRequest::new(path.display().to_string(), vec![Message::user("hi")]);
    request.max_tokens = Some(8);
    let mut stream = provider.stream(request);
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.map_err(|e| e.to_string())?);
    }
    Ok(chunks)
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_that_can_be_lived_with_are_bounded_and_run() {
    let dir = tempfile::tempdir().unwrap();
    // A context of four billion tokens runs at moa's maximum, its tables sized to that.
    let path = tiny::write_edited(
        dir.path(),
        "llama",
        meta("llama.context_length", Value::U32(u32::MAX)),
    );
    assert_eq!(Model::load(&path).unwrap().config.context, MAX_CONTEXT);
    let chunks = run(&path).await.unwrap();
    assert!(matches!(chunks.last(), Some(Chunk::Finished { .. })));

    // An end-of-text token outside the vocabulary is never sampled: answers end at max_tokens.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write_edited(
        dir.path(),
        "llama",
        meta("tokenizer.ggml.eos_token_id", Value::U32(1 << 30)),
    );
    let chunks = run(&path).await.unwrap();
    match chunks.last() {
        Some(Chunk::Finished {
            usage: Some(u),
            finish_reason,
        }) => {
            assert!(u.completion_tokens <= 8);
            assert!(finish_reason.is_some());
        }
        other => panic!("{other:?}"),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// A whole model file damaged anywhere in its header loads or is refused; it never takes
    /// the process down.
    #[test]
    fn a_damaged_model_file_never_panics_the_loader(
        edits in proptest::collection::vec(
            (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
            1..6,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny::write(dir.path(), "llama");
        let mut bytes = std::fs::read(&path).unwrap();
        let header = moa_local::gguf::validate(&bytes).unwrap().data_offset as usize;
        for (at, value) in edits {
            bytes[at.index(header)] = value;
        }
        std::fs::write(&path, &bytes).unwrap();
        let loaded = std::panic::catch_unwind(|| Model::load(&path).map(|_| ()));
        proptest::prop_assert!(loaded.is_ok(), "Model::load panicked");
    }
}
