//! Byte-level BPE (the GPT-2 family: SmolLM, Qwen2, Llama 3) built from a GGUF's vocabulary and
//! merges, with the pre-tokenizer the GGUF names and its special tokens matched whole.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};
use fancy_regex::Regex;

/// Token types as GGUF stores them.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// The GPT-2 pattern (with the trailing `\s+` of the reference tokenizers).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("unsupported tokenizer model `{0}` (supported: gpt2-style byte-level BPE)")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Invalid(String),
}

/// Why an encoding stopped before the end of its text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeStop {
    #[error("the prompt is more than {0} tokens")]
    TooLong(usize),
    #[error("the request was cancelled")]
    Cancelled,
}

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Merges by the ids of their two halves: the merge's rank and the merged token.
    ranks: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens, found in one pass (leftmost, then longest).
    specials: Vec<(String, u32)>,
    special_finder: Option<AhoCorasick>,
    /// Whether a token id is special (its text is literal, not byte-mapped).
    is_special: Vec<bool>,
    /// The id of each byte-mapped character's one-character token.
    char_ids: HashMap<char, u32>,
    /// Pre-tokenizer stages, applied in turn (each splits the pieces of the one before).
    stages: Vec<Regex>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end an assistant turn (EOS and end-of-turn control tokens).
    pub stop: Vec<u32>,
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    map
}

impl Tokenizer {
    /// Builds a tokenizer from GGUF tokenizer metadata.
    pub fn new(
        model: &str,
        pre: Option<&str>,
        tokens: Vec<String>,
        types: Option<Vec<i32>>,
        merges: Vec<String>,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(model.to_string()));
        }
        let patterns: Vec<&str> = match pre.unwrap_or("default") {
            "qwen2" => vec![QWEN2],
            "llama3" | "llama-bpe" | "smaug-bpe" => vec![LLAMA3],
            "smollm" | "starcoder" | "refact" | "codeshell" => vec![r"\p{N}", GPT2],
            _ => vec![GPT2],
        };
        let stages = patterns
            .into_iter()
            .map(|p| Regex::new(p).map_err(|e| TokenizerError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let (a, b) = merge
                .split_once(' ')
                .ok_or_else(|| TokenizerError::Invalid(format!("merge `{merge}` has no space")))?;
            // A merge whose halves or result are not in the vocabulary can never apply.
            let (Some(&left), Some(&right), Some(&merged)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                continue;
            };
            let rank = u32::try_from(rank)
                .map_err(|_| TokenizerError::Invalid("too many merges".into()))?;
            ranks.entry((left, right)).or_insert((rank, merged));
        }
        let specials: Vec<(String, u32)> = match &types {
            Some(types) => types
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == TYPE_CONTROL || **t == TYPE_USER_DEFINED)
                .filter_map(|(i, _)| tokens.get(i).map(|t| (t.clone(), i as u32)))
                .filter(|(t, _)| !t.is_empty())
                .collect(),
            None => Vec::new(),
        };
        let special_finder = match specials.is_empty() {
            true => None,
            false => Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(specials.iter().map(|(t, _)| t.as_str()))
                    .map_err(|e| TokenizerError::Invalid(format!("special tokens: {e}")))?,
            ),
        };
        let mut is_special = vec![false; tokens.len()];
        for (_, id) in &specials {
            is_special[*id as usize] = true;
        }
        let end_of_turn = [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<|endoftext|>",
            "<end_of_turn>",
        ];
        let mut stop: Vec<u32> = eos.into_iter().collect();
        stop.extend(end_of_turn.iter().filter_map(|t| ids.get(*t)).copied());
        stop.sort_unstable();
        stop.dedup();
        let byte_to_char = byte_chars();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let char_ids = byte_to_char
            .iter()
            .filter_map(|c| ids.get(&c.to_string()).map(|id| (*c, *id)))
            .collect();
        Ok(Self {
            tokens,
            ids,
            ranks,
            specials,
            special_finder,
            is_special,
            char_ids,
            stages,
            byte_to_char,
            char_to_byte,
            bos,
            eos,
            stop,
        })
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token's exact text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Encodes `text`, matching special tokens (`<|im_start|>`, ...) as single tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bounded(text, usize::MAX, &|| false)
            .unwrap_or_default()
    }

    /// Encodes `text` but stops as soon as it is more than `max_tokens` tokens, or when
    /// `cancelled` says so (asked every few pieces), so that a hostile prompt costs no more
    /// than a prompt the model could take. Time is O(n log n) in the text's length.
    pub fn encode_bounded(
        &self,
        text: &str,
        max_tokens: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<u32>, EncodeStop> {
        let mut out = Vec::new();
        let mut start = 0;
        if let Some(finder) = &self.special_finder {
            for found in finder.find_iter(text) {
                self.encode_ordinary(&text[start..found.start()], &mut out, max_tokens, cancelled)?;
                out.push(self.specials[found.pattern().as_usize()].1);
                start = found.end();
                if out.len() > max_tokens {
                    return Err(EncodeStop::TooLong(max_tokens));
                }
            }
        }
        self.encode_ordinary(&text[start..], &mut out, max_tokens, cancelled)?;
        Ok(out)
    }

    fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        for stage in &self.stages {
            let mut next = Vec::new();
            for piece in pieces {
                let mut last = 0;
                for m in stage.find_iter(piece).flatten() {
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    next.push(m.as_str());
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    fn encode_ordinary(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        max_tokens: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), EncodeStop> {
        if text.is_empty() {
            return Ok(());
        }
        let mut mapped = String::new();
        for (n, piece) in self.split(text).into_iter().enumerate() {
            if n % 256 == 255 && cancelled() {
                return Err(EncodeStop::Cancelled);
            }
            mapped.clear();
            mapped.extend(piece.bytes().map(|b| self.byte_to_char[b as usize]));
            match self.ids.get(&mapped) {
                Some(id) => out.push(*id),
                None => self.merge(&mapped, out),
            }
            if out.len() > max_tokens {
                return Err(EncodeStop::TooLong(max_tokens));
            }
        }
        Ok(())
    }

    /// Byte-pair merges over one piece: always the lowest-ranked adjacent pair first (the
    /// leftmost among equals), with a heap of candidate pairs over a linked list of symbols,
    /// so a piece of n characters costs O(n log n), not O(n²).
    fn merge(&self, mapped: &str, out: &mut Vec<u32>) {
        // Characters without a token of their own are dropped (a byte-level vocabulary has
        // every byte, so this only happens with a broken one).
        let mut symbols: Vec<u32> = mapped
            .chars()
            .filter_map(|c| self.char_ids.get(&c).copied())
            .collect();
        let n = symbols.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, symbols: &[u32], i: usize, j: usize| {
            if let Some(&(rank, _)) = self.ranks.get(&(symbols[i], symbols[j])) {
                heap.push(Reverse((rank, i, symbols[i], symbols[j])));
            }
        };
        for i in 1..n {
            push(&mut heap, &symbols, i - 1, i);
        }
        while let Some(Reverse((_, i, left, right))) = heap.pop() {
            let j = next[i];
            // A stale candidate: one of its symbols was merged into another since.
            if !alive[i] || j >= n || symbols[i] != left || symbols[j] != right {
                continue;
            }
            let Some(&(_, merged)) = self.ranks.get(&(left, right)) else {
                continue;
            };
            symbols[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
                push(&mut heap, &symbols, i, next[i]);
            }
            if prev[i] < n {
                push(&mut heap, &symbols, prev[i], i);
            }
        }
        let mut i = 0;
        while i < n {
            out.push(symbols[i]);
            i = next[i];
        }
    }

    /// The bytes a token stands for (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.is_special[id as usize] {
            return text.as_bytes().to_vec();
        }
        text.chars()
            .map(|c| self.char_to_byte.get(&c).copied().unwrap_or(b'?'))
            .collect()
    }

    /// Decodes `ids` to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| self.token_bytes(*id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token bytes into text, holding back an incomplete UTF-8 character.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(text) => {
                let text = text.to_string();
                self.pending.clear();
                text
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete character at the end: keep it for the next token.
                let valid = e.valid_up_to();
                let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                self.pending.drain(..valid);
                text
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                text
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small byte-level vocabulary: every byte, a few merges, ChatML specials.
    pub fn tiny() -> Tokenizer {
        let chars = byte_chars();
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        tokens.extend(chars.iter().map(|c| c.to_string()));
        let merges: Vec<String> = vec!["Ġ t", "h e", "Ġt he", "i s", "1 2"]
            .into_iter()
            .map(String::from)
            .collect();
        for m in &merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut types = vec![3, 3, 3];
        types.extend(std::iter::repeat_n(1, tokens.len() - 3));
        Tokenizer::new(
            "gpt2",
            Some("smollm"),
            tokens,
            Some(types),
            merges,
            Some(1),
            Some(2),
        )
        .unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_text_round_trips() {
        let t = tiny();
        let ids = t.encode("is the");
        let pieces: Vec<String> = ids.iter().map(|i| t.tokens[*i as usize].clone()).collect();
        assert_eq!(pieces, vec!["is", "Ġthe"]);
        for text in ["is the thé 😀 end", "a\n\n  b\t c  ", "Ünïcödé — ok?", ""] {
            assert_eq!(t.decode(&t.encode(text)), text);
        }
    }

    #[test]
    fn special_tokens_are_single_tokens_and_digits_split_alone() {
        let t = tiny();
        let ids = t.encode("<|im_start|>user\n12<|im_end|>");
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        // smollm splits digits one by one, so the "12" merge never applies.
        assert!(!ids.contains(&t.token_id("12").unwrap()));
        assert_eq!(t.stop, vec![0, 2]);
    }

    #[test]
    fn hostile_prompts_tokenize_in_one_pass_and_stop_at_their_limit() {
        // Quadratic before: a 16k-letter word took 9.8 s, 480 KB of specials 72 s.
        let t = tiny();
        let word = "is".repeat(128 << 10);
        let ids = t.encode(&word);
        assert_eq!(ids.len(), 128 << 10, "every `i s` pair merged");
        assert_eq!(t.decode(&ids), word);
        let specials = "<|im_start|>".repeat(40_000);
        assert_eq!(t.encode(&specials), vec![1; 40_000]);
        assert_eq!(
            t.encode_bounded(&word, 1000, &|| false),
            Err(EncodeStop::TooLong(1000))
        );
        assert_eq!(
            t.encode_bounded(&"a b ".repeat(10_000), usize::MAX, &|| true),
            Err(EncodeStop::Cancelled)
        );
    }

    #[test]
    fn pre_tokenizer_keeps_every_byte() {
        let t = tiny();
        let text = "Hello,  world!\n\nIt's 2024 —   done ";
        assert_eq!(t.split(text).concat(), text);
        assert_eq!(t.split("a  b"), vec!["a", " ", " b"]);
    }

    #[test]
    fn utf8_stream_holds_back_partial_characters() {
        let mut s = Utf8Stream::default();
        let bytes = "é😀".as_bytes();
        assert_eq!(s.push(&bytes[..1]), "");
        assert_eq!(s.push(&bytes[1..3]), "é");
        assert_eq!(s.push(&bytes[3..]), "😀");
    }

    #[test]
    fn other_tokenizer_models_are_refused_clearly() {
        let err = Tokenizer::new("llama", None, vec![], None, vec![], None, None)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "unsupported tokenizer model `llama` (supported: gpt2-style byte-level BPE)"
        );
    }
}
