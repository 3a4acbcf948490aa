//! AlpacaEval 2.0: the 805 instructions, outputs in `model_outputs.json` form, and the weighted
//! GPT-4 Turbo judge (`weighted_alpaca_eval_gpt4_turbo`): its prompt, the per-instruction order
//! swap, the preference read from the first token's logprobs, and the win rate with its standard
//! error.

use std::path::Path;

use moa_core::{Message, TopLogprob};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::pyrandom::PyRandom;
use crate::Task;

/// The baseline's outputs, which also carry the instructions in the official order (the same
/// rows as the HF `alpaca_eval_gpt4_baseline` set the reference loads).
pub const BASELINE: &str = "alpaca_eval/results/gpt4_1106_preview/model_outputs.json";
/// The judge prompt (ChatML).
pub const JUDGE_PROMPT: &str =
    "alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt";
/// AlpacaEval's instruction difficulty and gamed-baseline annotations, for the LC win rate.
pub const LC_DATA: &str = "alpaca_eval/df_gamed.csv";
/// The judge the leaderboard uses.
pub const DEFAULT_JUDGE: &str = "openai:gpt-4-1106-preview";

/// One row of `model_outputs.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub instruction: String,
    #[serde(default)]
    pub dataset: Option<String>,
    /// `null` where generation failed (the reference writes that too).
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub generator: Option<String>,
}

/// Reads a `model_outputs.json` (a JSON array of outputs).
pub fn load_outputs(path: &Path) -> Result<Vec<Output>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        EvalError::data(
            path,
            format!("not an AlpacaEval outputs file (a JSON array of {{instruction, output, generator}}): {e}"),
        )
    })
}

/// Writes outputs as AlpacaEval reads them: a JSON array, indented by two spaces.
pub fn write_outputs(path: &Path, outputs: &[Output]) -> Result<()> {
    let text = serde_json::to_string_pretty(outputs)
        .map_err(|e| EvalError::Invalid(format!("cannot encode outputs: {e}")))?;
    crate::write_file(path, text.as_bytes())
}

/// One generation task per instruction, keyed by its position.
pub fn tasks(instructions: &[Output]) -> Vec<Task> {
    instructions
        .iter()
        .enumerate()
        .map(|(i, row)| Task::single(i.to_string(), &row.instruction))
        .collect()
}

/// The judge prompt split into its system and user templates.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgePrompt {
    pub system: String,
    pub user: String,
}

impl JudgePrompt {
    /// Reads the official ChatML template: `<|im_start|>role\ncontent<|im_end|>` blocks, each
    /// content trimmed, as AlpacaEval converts it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io("read", path, e))?;
        Self::parse(&text).ok_or_else(|| {
            EvalError::data(
                path,
                "expected a ChatML prompt with a system and a user block",
            )
        })
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (mut system, mut user) = (None, None);
        for block in text.trim().split("<|im_start|>").skip(1) {
            let (role, rest) = block.split_once('\n')?;
            let content = rest.split("<|im_end|>").next()?.trim().to_string();
            match role.trim() {
                "system" => system = Some(content),
                "user" => user = Some(content),
                _ => return None,
            }
        }
        Some(Self {
            system: system?,
            user: user?,
        })
    }

    /// The messages for one comparison. Placeholders are filled as AlpacaEval does: each
    /// replaced once, at its first occurrence, in the order they first appear in the template.
    pub fn messages(&self, instruction: &str, output_1: &str, output_2: &str) -> Vec<Message> {
        let mut user = self.user.clone();
        for (name, value) in [
            ("{instruction}", instruction),
            ("{output_1}", output_1),
            ("{output_2}", output_2),
        ] {
            user = user.replacen(name, value, 1);
        }
        vec![Message::system(self.system.clone()), Message::user(user)]
    }
}

/// Whether AlpacaEval shows this instruction's outputs to the judge in swapped order
/// (the evaluated model as `m`, the baseline as `M`).
pub fn is_swapped(instruction: &str) -> bool {
    PyRandom::from_str_seed(&format!("is_switched_outputs{instruction}0")).choose_bool()
}

/// The extra request fields of the weighted judge: one token, its top five alternatives.
pub fn judge_request_fields() -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    extra.insert("logprobs".into(), true.into());
    extra.insert("top_logprobs".into(), 5.into());
    extra
}

/// The judge's preference in [1, 2] for the order shown, from the first token's top logprobs:
/// `2 − P(m)` with `P(m) = exp(lp_m) / (exp(lp_m) + exp(lp_M))`, a label missing from the top
/// list counting as probability 0. `None` when neither label is among them.
pub fn preference_from_logprobs(top: &[TopLogprob]) -> Option<f64> {
    let find = |label: &str| top.iter().find(|t| t.token == label).map(|t| t.logprob);
    let (m, big_m) = (find("m"), find("M"));
    let p_m = match (m, big_m) {
        (None, None) => return None,
        (Some(_), None) => 1.0,
        (None, Some(_)) => 0.0,
        (Some(a), Some(b)) => {
            let top = a.max(b);
            let (ea, eb) = ((a - top).exp(), (b - top).exp());
            ea / (ea + eb)
        }
    };
    Some(2.0 - p_m)
}

/// The preference from the answer text alone, for judges that return no logprobs: `m` → 1,
/// `M` → 2 (what AlpacaEval's unweighted judges do).
pub fn preference_from_text(text: &str) -> Option<f64> {
    match text.trim() {
        "m" => Some(1.0),
        "M" => Some(2.0),
        _ => None,
    }
}

/// The preference for the baseline (1) against the model (2), undoing the swap.
pub fn unswap(preference: f64, swapped: bool) -> f64 {
    if swapped {
        3.0 - preference
    } else {
        preference
    }
}

/// AlpacaEval's headline numbers for one model against the baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    /// Mean of (preference − 1), in percent.
    pub win_rate: f64,
    /// Standard error of that mean (sample standard deviation / √n), in percent.
    pub standard_error: f64,
    pub n_wins: usize,
    pub n_wins_base: usize,
    pub n_draws: usize,
    pub n_total: usize,
    /// Wins plus half the draws, in percent.
    pub discrete_win_rate: f64,
    /// Mean length of the model's outputs, in characters.
    pub avg_length: f64,
    /// The length-controlled win rate, when instruction difficulty data was supplied.
    #[serde(default)]
    pub length_controlled_winrate: Option<f64>,
    /// With `--both-orders`: how the judge's verdicts moved when the two outputs traded places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_bias: Option<PositionBias>,
}

/// Each comparison judged twice, in AlpacaEval's order and with the outputs' places traded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionBias {
    /// Comparisons judged in both orders.
    pub pairs: usize,
    /// Of those, the percentage whose winner (model, baseline or a tie) is the same both times.
    pub agreement: f64,
    /// The win rate from the traded order alone, in percent (the headline is AlpacaEval's order).
    pub win_rate_traded: f64,
    /// Mean absolute difference of the two preferences, in percentage points.
    pub mean_abs_difference: f64,
}

/// Position bias from pairs of preferences in [1, 2] (AlpacaEval's order, traded order).
pub fn position_bias(pairs: &[(f64, f64)]) -> Option<PositionBias> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let side = |p: f64| (p - 1.5).signum() as i8 * i8::from(p != 1.5);
    let agree = pairs.iter().filter(|(a, b)| side(*a) == side(*b)).count();
    Some(PositionBias {
        pairs: pairs.len(),
        agreement: agree as f64 / n * 100.0,
        win_rate_traded: pairs.iter().map(|(_, b)| b - 1.0).sum::<f64>() / n * 100.0,
        mean_abs_difference: pairs.iter().map(|(a, b)| (a - b).abs()).sum::<f64>() / n * 100.0,
    })
}

/// Win rate, standard error and counts from preferences in [1, 2] (1: baseline better).
pub fn win_rate(preferences: &[f64], model_lengths: &[usize]) -> WinRate {
    let n = preferences.len();
    let wins: Vec<f64> = preferences.iter().map(|p| p - 1.0).collect();
    let mean = if n == 0 {
        0.0
    } else {
        wins.iter().sum::<f64>() / n as f64
    };
    let sem = if n < 2 {
        0.0
    } else {
        let var = wins.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    };
    let n_wins = preferences.iter().filter(|&&p| p > 1.5).count();
    let n_wins_base = preferences.iter().filter(|&&p| p < 1.5).count();
    let n_draws = n - n_wins - n_wins_base;
    let avg_length = if model_lengths.is_empty() {
        0.0
    } else {
        model_lengths.iter().sum::<usize>() as f64 / model_lengths.len() as f64
    };
    WinRate {
        win_rate: mean * 100.0,
        standard_error: sem * 100.0,
        n_wins,
        n_wins_base,
        n_draws,
        n_total: n,
        discrete_win_rate: if n == 0 {
            0.0
        } else {
            (n_wins as f64 + n_draws as f64 / 2.0) / n as f64 * 100.0
        },
        avg_length,
        length_controlled_winrate: None,
        position_bias: None,
    }
}

/// AlpacaEval's generator name as the reference writes it, `<model>-together` (its provider is
/// always Together): `<model>-<provider>` of the aggregator `provider:model`.
pub fn generator_name(aggregator: &str) -> String {
    match moa_core::ModelRef::parse(aggregator) {
        Ok(r) => format!("{}-{}", r.model, r.provider),
        Err(_) => aggregator.to_string(),
    }
}

/// AlpacaEval's name for its official annotator (the default judge, preference from logprobs).
pub const ANNOTATOR: &str = "weighted_alpaca_eval_gpt4_turbo";

/// The annotator an annotation names: the official one only when the official judge ran with
/// logprobs; otherwise the judge that ran, and how its preference was read.
pub fn annotator(judge: &str, weighted: bool) -> String {
    match (judge == DEFAULT_JUDGE, weighted) {
        (true, true) => ANNOTATOR.to_string(),
        (_, true) => format!("{judge} with the {ANNOTATOR} prompt, preference from logprobs"),
        (_, false) => format!("{judge} with the {ANNOTATOR} prompt, preference from the text"),
    }
}

/// One line of AlpacaEval's `annotations.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub instruction: String,
    pub output_1: String,
    pub generator_1: String,
    pub output_2: String,
    pub generator_2: String,
    pub annotator: String,
    pub preference: Option<f64>,
    pub raw_completion: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_bias_counts_held_winners_and_ties() {
        // Held (model both times), flipped (model, then baseline), tie both times.
        let b = position_bias(&[(1.9, 1.7), (1.8, 1.2), (1.5, 1.5)]).unwrap();
        assert_eq!(b.pairs, 3);
        assert!((b.agreement - 200.0 / 3.0).abs() < 1e-9);
        assert!((b.win_rate_traded - (0.7 + 0.2 + 0.5) / 3.0 * 100.0).abs() < 1e-9);
        assert!((b.mean_abs_difference - (20.0 + 60.0) / 3.0).abs() < 1e-9);
        assert!(position_bias(&[]).is_none());
    }

    fn top(pairs: &[(&str, f64)]) -> Vec<TopLogprob> {
        pairs
            .iter()
            .map(|(t, l)| TopLogprob {
                token: t.to_string(),
                logprob: *l,
            })
            .collect()
    }

    #[test]
    fn preference_is_two_minus_the_probability_of_m() {
        // P(m) = e^-0.1 / (e^-0.1 + e^-2.4) = 1 / (1 + e^-2.3) = 0.908877…
        let p = preference_from_logprobs(&top(&[("m", -0.1), ("M", -2.4), ("x", -5.0)])).unwrap();
        assert!((p - (2.0 - 1.0 / (1.0 + (-2.3f64).exp()))).abs() < 1e-12);
        assert!((p - 1.091123).abs() < 1e-6);
        assert_eq!(
            preference_from_logprobs(&top(&[("M", -0.01), ("x", -5.0)])),
            Some(2.0)
        );
        assert_eq!(preference_from_logprobs(&top(&[("m", -3.0)])), Some(1.0));
        assert_eq!(preference_from_logprobs(&top(&[("Model", -0.1)])), None);
        // Equal logprobs: a draw.
        assert_eq!(
            preference_from_logprobs(&top(&[("m", -0.7), ("M", -0.7)])),
            Some(1.5)
        );
        assert_eq!(unswap(1.2, true), 1.8);
        assert_eq!(unswap(1.2, false), 1.2);
        assert_eq!(preference_from_text(" M\n"), Some(2.0));
    }

    #[test]
    fn win_rate_and_standard_error_match_hand_computation() {
        // Wins 1, 0.75, 0.5, 0, 0.25: mean 0.5; deviations .5 .25 0 -.5 -.25;
        // variance (0.25+0.0625+0+0.25+0.0625)/4 = 0.15625; sem = sqrt(0.15625/5) = 0.176777.
        let r = win_rate(&[2.0, 1.75, 1.5, 1.0, 1.25], &[10, 20, 30, 40, 50]);
        assert!((r.win_rate - 50.0).abs() < 1e-9);
        assert!((r.standard_error - 17.677_669_529_663_69).abs() < 1e-9);
        assert_eq!(
            (r.n_wins, r.n_wins_base, r.n_draws, r.n_total),
            (2, 2, 1, 5)
        );
        assert!((r.discrete_win_rate - 50.0).abs() < 1e-9);
        assert_eq!(r.avg_length, 30.0);
    }

    #[test]
    fn the_leaderboards_discrete_win_rate_is_reproduced_from_its_counts() {
        // Together-MoA on the leaderboard: 490 wins, 314 losses, 1 draw → 60.93167701863354.
        let mut prefs = vec![2.0; 490];
        prefs.extend(vec![1.0; 314]);
        prefs.push(1.5);
        let r = win_rate(&prefs, &[]);
        assert!((r.discrete_win_rate - 60.931_677_018_633_54).abs() < 1e-9);
    }

    #[test]
    fn judge_prompt_is_split_and_filled_like_alpaca_eval() {
        let template = "<|im_start|>system\nBe fair.\n<|im_end|>\n<|im_start|>user\nI: {instruction}\nA: {output_1}\nB: {output_2}\n<|im_end|>";
        let prompt = JudgePrompt::parse(template).unwrap();
        let messages = prompt.messages("q {output_2}", "one", "two");
        assert_eq!(messages[0], Message::system("Be fair."));
        // First occurrence only, in template order: the instruction's literal placeholder is
        // what the official replace hits for output_2.
        assert_eq!(
            messages[1],
            Message::user("I: q two\nA: one\nB: {output_2}")
        );
    }

    #[test]
    fn swaps_the_same_instructions_as_alpaca_eval() {
        // CPython: random.Random("is_switched_outputs" + instruction + "0").choice([False, True])
        assert!(!is_swapped(
            "What are the names of some famous actors that started their careers on Broadway?"
        ));
        assert!(!is_swapped("How do I make a cake?"));
    }
}
