//! Picking the next token: temperature, top-p, a seeded generator.

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 (or below 1e-4) means greedy.
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches this (1.0: all).
    pub top_p: f64,
    pub seed: u64,
    /// Never pick an end-of-turn token: generate to the length limit.
    pub ignore_eos: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
            ignore_eos: false,
        }
    }
}

/// The index of the largest logit: greedy decoding.
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
            if l > best.1 {
                (i, l)
            } else {
                best
            }
        })
        .0 as u32
}

/// Picks a token from `logits`.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || argmax(logits);
    if sampling.temperature <= 1e-4 {
        return argmax();
    }
    let t = sampling.temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    let top_p = sampling.top_p.clamp(0.0, 1.0) as f32;
    let kept = if top_p < 1.0 {
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p.1 / total;
            if cumulative >= top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
        probs.iter().map(|p| p.1).sum()
    } else {
        total
    };
    let mut target = rng.next_f32() * kept;
    for (id, p) in &probs {
        target -= p;
        if target <= 0.0 {
            return *id;
        }
    }
    probs.last().map_or_else(argmax, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_greedy() {
        let s = Sampling {
            temperature: 0.0,
            ..Sampling::default()
        };
        assert_eq!(sample(&[0.1, 3.0, 2.0], &s, &mut Rng::new(1)), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_others_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
            ignore_eos: false,
        };
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..40)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds ~88% of the mass; with top_p 0.5 it is the only candidate.
        let logits = [5.0, 3.0, 1.0, 0.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            seed: 0,
            ignore_eos: false,
        };
        let mut rng = Rng::new(3);
        assert!((0..200).all(|_| sample(&logits, &s, &mut rng) == 0));
        // With top_p 1.0 the others appear too.
        let s = Sampling { top_p: 1.0, ..s };
        assert!((0..500).any(|_| sample(&logits, &s, &mut rng) != 0));
    }
}
