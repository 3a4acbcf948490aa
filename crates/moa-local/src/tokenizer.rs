//! Byte-level BPE (the GPT-2 family: SmolLM, Qwen2, Llama 3) built from a GGUF's vocabulary and
//! merges, with the pre-tokenizer the GGUF names and its special tokens matched whole.

use std::collections::HashMap;

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

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    /// Special tokens, longest first, so the longest match wins.
    specials: Vec<(String, u32)>,
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
            ranks.insert((a.to_string(), b.to_string()), rank);
        }
        let mut specials: Vec<(String, u32)> = match &types {
            Some(types) => types
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == TYPE_CONTROL || **t == TYPE_USER_DEFINED)
                .filter_map(|(i, _)| tokens.get(i).map(|t| (t.clone(), i as u32)))
                .filter(|(t, _)| !t.is_empty())
                .collect(),
            None => Vec::new(),
        };
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
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
        Ok(Self {
            tokens,
            ids,
            ranks,
            specials,
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
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token, the longest one at that position.
            let found = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match found {
                Some((at, len, id)) => {
                    self.encode_ordinary(&rest[..at], &mut out);
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_ordinary(rest, &mut out);
                    break;
                }
            }
        }
        out
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

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        for piece in self.split(text) {
            let mapped: String = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize])
                .collect();
            if let Some(id) = self.ids.get(&mapped) {
                out.push(*id);
                continue;
            }
            let mut symbols: Vec<String> = mapped.chars().map(String::from).collect();
            loop {
                let best = symbols
                    .windows(2)
                    .enumerate()
                    .filter_map(|(i, w)| {
                        self.ranks
                            .get(&(w[0].clone(), w[1].clone()))
                            .map(|r| (*r, i))
                    })
                    .min();
                let Some((_, i)) = best else { break };
                let merged = format!("{}{}", symbols[i], symbols[i + 1]);
                symbols[i] = merged;
                symbols.remove(i + 1);
            }
            for symbol in symbols {
                match self.ids.get(&symbol) {
                    Some(id) => out.push(*id),
                    // Every byte has a token in a byte-level vocabulary; skip if this one lacks it.
                    None => out.extend(symbol.chars().filter_map(|c| self.ids.get(&c.to_string()))),
                }
            }
        }
    }

    /// The bytes a token stands for (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.specials.iter().any(|(_, s)| *s == id) {
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
