//! Context windows, and fitting references into one: the guard that keeps an aggregator's prompt
//! within its model's context by trimming the longest references, and says which it trimmed.

use crate::prompt::Reference;

/// Context windows in tokens of the models in moa's presets, from the vendors' model pages
/// (2025-01). A provider that knows better (a local model's file) says so itself.
const WINDOWS: &[(&str, u64)] = &[
    ("together:meta-llama/Llama-3.3-70B-Instruct-Turbo", 131_072),
    ("together:Qwen/Qwen2.5-72B-Instruct-Turbo", 32_768),
    ("together:Qwen/Qwen2.5-Coder-32B-Instruct", 32_768),
    ("together:microsoft/WizardLM-2-8x22B", 65_536),
    ("together:deepseek-ai/DeepSeek-V3", 131_072),
    ("together:Qwen/Qwen1.5-110B-Chat", 32_768),
    ("together:Qwen/Qwen1.5-72B-Chat", 32_768),
    ("together:meta-llama/Llama-3-70b-chat-hf", 8_192),
    ("together:mistralai/Mixtral-8x22B-Instruct-v0.1", 65_536),
    ("together:databricks/dbrx-instruct", 32_768),
    ("bedrock:anthropic.claude-3-haiku-20240307-v1:0", 200_000),
    ("bedrock:us.anthropic.claude-3-haiku-20240307-v1:0", 200_000),
    ("bedrock:mistral.mixtral-8x7b-instruct-v0:1", 32_000),
    ("bedrock:meta.llama3-2-3b-instruct-v1:0", 131_072),
    ("bedrock:us.meta.llama3-2-3b-instruct-v1:0", 131_072),
    ("anthropic:claude-3-haiku-20240307", 200_000),
    ("anthropic:claude-3-5-haiku-20241022", 200_000),
    ("anthropic:claude-3-5-sonnet-20241022", 200_000),
    ("openai:gpt-4o", 128_000),
    ("openai:gpt-4o-mini", 128_000),
];

/// The built-in context window of `model` (`provider:model`), if known.
pub fn builtin_window(model: &str) -> Option<u64> {
    WINDOWS.iter().find(|(m, _)| *m == model).map(|(_, w)| *w)
}

/// What the trimmed part of a reference is replaced by.
pub const TRIMMED: &str = "\n[… the rest was cut by moa to fit the aggregator's context]";

/// A reference cut to fit, for the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trim {
    /// Its position among the references.
    pub index: usize,
    pub from_tokens: u64,
    pub to_tokens: u64,
}

/// Cuts `references` so that together they take at most `room` tokens (four characters a
/// token): the shortest keep their whole text, the longest share what is left equally (so one
/// long answer cannot crowd out the rest). Returns the trims made; none when they fit.
pub fn fit(references: &mut [Reference], room: u64) -> Vec<Trim> {
    let tokens = |r: &Reference| (r.text.chars().count() as u64).div_ceil(4);
    let total: u64 = references.iter().map(tokens).sum();
    if total <= room {
        return Vec::new();
    }
    // Water-filling: raise a common cap until the room is used.
    let mut sizes: Vec<u64> = references.iter().map(tokens).collect();
    sizes.sort_unstable();
    let mut left = room;
    let mut cap = 0;
    for (i, size) in sizes.iter().enumerate() {
        let share = left / (sizes.len() - i) as u64;
        if *size > share {
            cap = share;
            break;
        }
        left -= size;
        cap = *size;
    }
    let marker = (TRIMMED.chars().count() as u64).div_ceil(4);
    let mut trims = Vec::new();
    for (index, reference) in references.iter_mut().enumerate() {
        let from = tokens(reference);
        if from <= cap {
            continue;
        }
        let keep = cap.saturating_sub(marker);
        let cut: String = reference.text.chars().take((keep * 4) as usize).collect();
        reference.text = format!("{cut}{TRIMMED}");
        trims.push(Trim {
            index,
            from_tokens: from,
            to_tokens: tokens(reference),
        });
    }
    trims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(lengths: &[usize]) -> Vec<Reference> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, n)| Reference {
                model: format!("p:{i}"),
                text: "x".repeat(*n),
            })
            .collect()
    }

    #[test]
    fn the_longest_references_share_the_room_left_by_the_short_ones() {
        // Tokens: 10, 100, 1000 (40, 400, 4000 characters) into 410 tokens: 10 and 100 are
        // under an equal share and stay whole; the longest gets the 300 left.
        let mut r = refs(&[40, 400, 4000]);
        let trims = fit(&mut r, 410);
        assert_eq!((r[0].text.len(), r[1].text.len()), (40, 400));
        assert_eq!(trims.len(), 1);
        assert_eq!((trims[0].index, trims[0].from_tokens), (2, 1000));
        assert!(trims[0].to_tokens <= 300, "{:?}", trims[0]);
        assert!(r[2].text.ends_with(TRIMMED));
        // Three long ones share alike.
        let mut r = refs(&[4000, 4000, 4000]);
        let trims = fit(&mut r, 300);
        assert_eq!(trims.len(), 3);
        assert!(trims.iter().all(|t| t.to_tokens <= 100), "{trims:?}");
        let total: u64 = r
            .iter()
            .map(|r| (r.text.chars().count() as u64).div_ceil(4))
            .sum();
        assert!(total <= 410, "{total}");
    }

    #[test]
    fn references_that_fit_are_untouched() {
        let mut r = refs(&[40, 400]);
        assert!(fit(&mut r, 110).is_empty());
        assert_eq!(r[1].text.len(), 400);
    }
}
