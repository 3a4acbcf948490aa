//! Two judged runs of one benchmark, compared item by item: is A better than B, or is the
//! difference within what the items' noise allows?
//!
//! Each run's per-item numbers come from the files the judge wrote, the official formats:
//! AlpacaEval's `annotations.json` (preference − 1 per instruction: 1 when the model beat the
//! baseline), MT-Bench's judgment file (score per question and turn; unreadable ratings left
//! out) and FLASK's `review.jsonl` (the mean of an instance's rated skills). Items judged in
//! both runs are paired; the difference of the means gets a 95% confidence interval from a
//! paired bootstrap (items resampled with replacement by the crate's seeded Mersenne Twister) and an exact two-sided sign
//! test. A run against each single proposer judged on the same items answers whether MoA helps.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::mt_bench;
use crate::pipeline::{Metrics, Results};
use crate::pyrandom::PyRandom;
use crate::Bench;

/// One run's per-item values, keyed by item.
#[derive(Clone, Debug, PartialEq)]
pub struct Items {
    pub bench: Bench,
    pub name: String,
    pub values: BTreeMap<String, f64>,
}

impl Items {
    /// Reads a judged run folder (its `results.json` and the judge's per-item file).
    pub fn load(dir: &Path) -> Result<Items> {
        let results = Results::load(dir)?;
        let bench = match results.metrics {
            Metrics::AlpacaEval(_) => Bench::AlpacaEval,
            Metrics::MtBench(_) => Bench::MtBench,
            Metrics::Flask { .. } => Bench::Flask,
        };
        let values = match bench {
            Bench::AlpacaEval => alpaca_values(&dir.join("annotations.json"))?,
            Bench::MtBench => mt_bench_values(&dir.join(mt_bench::judgment_file(&results.judge)))?,
            Bench::Flask => flask_values(&dir.join("review.jsonl"))?,
        };
        Ok(Items {
            bench,
            name: results.name,
            values,
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| EvalError::io("read", path, e))
}

fn json_lines(path: &Path) -> Result<Vec<serde_json::Value>> {
    read(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| EvalError::data(path, e.to_string())))
        .collect()
}

fn alpaca_values(path: &Path) -> Result<BTreeMap<String, f64>> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&read(path)?).map_err(|e| EvalError::data(path, e.to_string()))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let instruction = r.get("instruction")?.as_str()?;
            let preference = r.get("preference")?.as_f64()?;
            Some((instruction.to_string(), preference - 1.0))
        })
        .collect())
}

fn mt_bench_values(path: &Path) -> Result<BTreeMap<String, f64>> {
    Ok(json_lines(path)?
        .iter()
        .filter_map(|r| {
            let score = r.get("score")?.as_f64().filter(|s| *s >= 0.0)?;
            let key = format!("{}/{}", r.get("question_id")?, r.get("turn")?);
            Some((key, score))
        })
        .collect())
}

fn flask_values(path: &Path) -> Result<BTreeMap<String, f64>> {
    Ok(json_lines(path)?
        .iter()
        .filter_map(|r| {
            let rated: Vec<f64> = r
                .get("score")?
                .as_object()?
                .values()
                .filter_map(|v| v.as_f64())
                .collect();
            if rated.is_empty() {
                return None;
            }
            let mean = rated.iter().sum::<f64>() / rated.len() as f64;
            Some((r.get("question_id")?.to_string(), mean))
        })
        .collect())
}

/// A paired comparison of A against B.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub bench: Bench,
    pub a: String,
    pub b: String,
    /// Items judged in both runs, and in one only.
    pub paired: usize,
    pub only_a: usize,
    pub only_b: usize,
    /// Means over the paired items (AlpacaEval: win rates in percent).
    pub mean_a: f64,
    pub mean_b: f64,
    /// `mean_a - mean_b`, and its 95% paired-bootstrap interval.
    pub difference: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub resamples: usize,
    /// Items where A scored higher, lower, the same.
    pub a_better: usize,
    pub b_better: usize,
    pub ties: usize,
    /// Exact two-sided sign test over the items that differ.
    pub sign_test_p: f64,
    /// Whether the interval leaves out zero.
    pub significant: bool,
}

/// Compares A with B on the items both judged.
pub fn compare(a: &Items, b: &Items, resamples: usize, seed: u64) -> Result<Comparison> {
    if a.bench != b.bench {
        return Err(EvalError::Invalid(format!(
            "{} is a {} run and {} a {} run: compare runs of one benchmark",
            a.name, a.bench, b.name, b.bench
        )));
    }
    let pairs: Vec<(f64, f64)> = a
        .values
        .iter()
        .filter_map(|(k, va)| Some((*va, *b.values.get(k)?)))
        .collect();
    if pairs.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{} and {} have no judged item in common",
            a.name, b.name
        )));
    }
    let unit = unit(a.bench);
    let n = pairs.len();
    let diffs: Vec<f64> = pairs.iter().map(|(x, y)| (x - y) * unit).collect();
    let mean = |v: &mut dyn Iterator<Item = f64>| v.sum::<f64>() / n as f64;
    let (low, high) = bootstrap_interval(&diffs, resamples, seed);
    let a_better = pairs.iter().filter(|(x, y)| x > y).count();
    let b_better = pairs.iter().filter(|(x, y)| x < y).count();
    Ok(Comparison {
        bench: a.bench,
        a: a.name.clone(),
        b: b.name.clone(),
        paired: n,
        only_a: a.values.len() - n,
        only_b: b.values.len() - n,
        mean_a: mean(&mut pairs.iter().map(|p| p.0 * unit)),
        mean_b: mean(&mut pairs.iter().map(|p| p.1 * unit)),
        difference: mean(&mut diffs.iter().copied()),
        ci_low: low,
        ci_high: high,
        resamples,
        a_better,
        b_better,
        ties: n - a_better - b_better,
        sign_test_p: sign_test(a_better, b_better),
        significant: low > 0.0 || high < 0.0,
    })
}

/// The 2.5th and 97.5th percentiles of the mean of `values` resampled with replacement.
pub fn bootstrap_interval(values: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    let n = values.len();
    if n == 0 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = PyRandom::from_str_seed(&seed.to_string());
    // An index below n from 32 random bits (multiply-shift: no division, no bias worth naming).
    let mut below = || ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize;
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = (0..n).map(|_| values[below()]).sum();
            sum / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64) as usize).min(resamples - 1)];
    (at(0.025), at(0.975))
}

/// Exact two-sided sign test: the probability, with no difference between A and B, of a split
/// at least as uneven as `wins` against `losses`.
pub fn sign_test(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    if n == 0 {
        return 1.0;
    }
    let k = wins.min(losses);
    // log C(n, i) - n log 2, summed over i = 0..=k in log space (n may be in the thousands).
    let mut log_choose = 0.0f64;
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        if i > 0 {
            log_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(log_choose - n as f64 * std::f64::consts::LN_2);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// One run's mean over its own items with a 95% bootstrap interval (AlpacaEval in percent).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub bench: Bench,
    pub name: String,
    pub items: usize,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// What a report adds to the runs' own numbers: each run's interval, and the first run of each
/// benchmark (the candidate, e.g. the MoA run) paired with every other run of it (e.g. each
/// single proposer judged on the same items).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Analysis {
    pub intervals: Vec<Interval>,
    pub paired: Vec<Comparison>,
}

impl Analysis {
    pub fn build(runs: &[Items], resamples: usize, seed: u64) -> Result<Self> {
        let mut out = Analysis::default();
        for run in runs {
            let unit = unit(run.bench);
            let values: Vec<f64> = run.values.values().map(|v| v * unit).collect();
            let (low, high) = bootstrap_interval(&values, resamples, seed);
            out.intervals.push(Interval {
                bench: run.bench,
                name: run.name.clone(),
                items: values.len(),
                mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
                ci_low: low,
                ci_high: high,
            });
        }
        for bench in Bench::ALL {
            let mut of_bench = runs.iter().filter(|r| r.bench == bench);
            let Some(candidate) = of_bench.next() else {
                continue;
            };
            for other in of_bench {
                out.paired.push(compare(candidate, other, resamples, seed)?);
            }
        }
        Ok(out)
    }

    /// The intervals and the paired comparisons as text.
    pub fn text(&self) -> String {
        let mut text = String::new();
        if !self.intervals.is_empty() {
            text.push_str("95% intervals (bootstrap over items)\n");
            for i in &self.intervals {
                text.push_str(&format!(
                    "  {} {}: {:.2} [{:.2}, {:.2}] over {} items\n",
                    i.bench, i.name, i.mean, i.ci_low, i.ci_high, i.items
                ));
            }
        }
        for c in &self.paired {
            text.push('\n');
            text.push_str(&describe(c));
        }
        text
    }
}

/// AlpacaEval's values are wins in [0, 1]; its reports speak in percent.
fn unit(bench: Bench) -> f64 {
    match bench {
        Bench::AlpacaEval => 100.0,
        _ => 1.0,
    }
}

/// The comparison as a few lines of text.
pub fn describe(c: &Comparison) -> String {
    let what = match c.bench {
        Bench::AlpacaEval => "win rate",
        Bench::MtBench => "mean score (1-10)",
        Bench::Flask => "mean skill rating (1-5)",
    };
    let mut text = format!(
        "{}: A = {}, B = {}; {} items judged in both",
        c.bench, c.a, c.b, c.paired
    );
    if c.only_a + c.only_b > 0 {
        text.push_str(&format!(
            " ({} only in A, {} only in B, left out)",
            c.only_a, c.only_b
        ));
    }
    text.push_str(&format!(
        "\n{what}: A {:.2}, B {:.2}; A − B = {:+.2}, 95% CI [{:+.2}, {:+.2}] (paired bootstrap, {} resamples)\
         \nA better on {}, B better on {}, the same on {}; sign test p = {:.4}\n{}\n",
        c.mean_a,
        c.mean_b,
        c.difference,
        c.ci_low,
        c.ci_high,
        c.resamples,
        c.a_better,
        c.b_better,
        c.ties,
        c.sign_test_p,
        if c.significant {
            format!(
                "{} is better: the interval leaves out zero",
                if c.difference > 0.0 { "A" } else { "B" }
            )
        } else {
            "not significant: the interval includes zero".to_string()
        }
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(bench: Bench, name: &str, values: &[(usize, f64)]) -> Items {
        Items {
            bench,
            name: name.into(),
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_report_pairs_the_first_run_of_each_benchmark_with_the_others() {
        let moa = items(Bench::MtBench, "moa", &[(1, 9.0), (2, 8.0), (3, 7.0)]);
        let a = items(Bench::MtBench, "a", &[(1, 5.0), (2, 6.0), (3, 5.0)]);
        let b = items(Bench::MtBench, "b", &[(1, 9.0), (2, 8.0), (3, 7.5)]);
        let alpaca = items(Bench::AlpacaEval, "alone", &[(0, 1.0), (1, 0.0)]);
        let analysis = Analysis::build(&[moa, alpaca, a, b], 500, 1).unwrap();
        let pairs: Vec<(&str, &str)> = analysis
            .paired
            .iter()
            .map(|c| (c.a.as_str(), c.b.as_str()))
            .collect();
        assert_eq!(pairs, [("moa", "a"), ("moa", "b")]);
        assert!((analysis.paired[0].difference - 8.0 / 3.0).abs() < 1e-12);
        assert_eq!(analysis.intervals.len(), 4);
        let alone = &analysis.intervals[1];
        assert_eq!(
            (alone.mean, alone.items),
            (50.0, 2),
            "AlpacaEval in percent"
        );
        assert!(alone.ci_low <= 50.0 && alone.ci_high >= 50.0 && alone.ci_high <= 100.0);
        let text = analysis.text();
        assert!(
            text.contains("mt_bench moa: 8.00") && text.contains("A = moa, B = b"),
            "{text}"
        );
    }

    #[test]
    fn sign_test_matches_the_binomial() {
        // 1 against 9: 2 · (1 + 10) / 1024.
        assert!((sign_test(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
        // Large n stays finite: 400 against 600 is far from even.
        let p = sign_test(400, 600);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    /// MT-Bench-like runs `moa` (A) and `single` (B), compared with 2000 resamples.
    fn mt_bench_pair(a: &[(usize, f64)], b: &[(usize, f64)]) -> Comparison {
        let (a, b) = (
            items(Bench::MtBench, "moa", a),
            items(Bench::MtBench, "single", b),
        );
        compare(&a, &b, 2000, 0).unwrap()
    }

    #[test]
    fn a_clear_difference_is_significant_and_noise_is_not() {
        // MT-Bench-like scores: A one point above B on every item but a few.
        let a: Vec<(usize, f64)> = (0..80).map(|i| (i, 6.0 + (i % 3) as f64)).collect();
        let b: Vec<(usize, f64)> = (0..80)
            .map(|i| {
                (
                    i,
                    if i % 10 == 0 {
                        9.0
                    } else {
                        5.0 + (i % 3) as f64
                    },
                )
            })
            .collect();
        let c = mt_bench_pair(&a, &b);
        assert_eq!((c.paired, c.a_better, c.b_better), (80, 72, 8));
        assert!((c.difference - (c.mean_a - c.mean_b)).abs() < 1e-12);
        assert!(c.ci_low > 0.0 && c.ci_low < c.difference && c.difference < c.ci_high);
        assert!(c.significant && c.sign_test_p < 1e-10);
        assert!(describe(&c).contains("A is better"));

        // Alternating ±1: mean difference 0, the interval straddles it.
        let b: Vec<(usize, f64)> = a
            .iter()
            .map(|(i, v)| (*i, v + if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        let c = mt_bench_pair(&a, &b);
        assert!(!c.significant && c.ci_low < 0.0 && c.ci_high > 0.0);
        assert_eq!(c.sign_test_p, 1.0);
        assert!(describe(&c).contains("not significant"));
    }

    #[test]
    fn only_shared_items_are_paired_and_benchmarks_must_match() {
        let a = items(Bench::AlpacaEval, "a", &[(1, 1.0), (2, 0.0), (3, 1.0)]);
        let b = items(Bench::AlpacaEval, "b", &[(2, 1.0), (3, 1.0), (4, 0.0)]);
        let c = compare(&a, &b, 100, 1).unwrap();
        assert_eq!((c.paired, c.only_a, c.only_b), (2, 1, 1));
        // Percent for AlpacaEval: A won 1 of the 2 shared, B both.
        assert_eq!((c.mean_a, c.mean_b, c.difference), (50.0, 100.0, -50.0));
        let other = items(Bench::Flask, "f", &[(1, 3.0)]);
        assert!(compare(&a, &other, 100, 1).is_err());
        let disjoint = items(Bench::AlpacaEval, "d", &[(9, 1.0)]);
        assert!(compare(&a, &disjoint, 100, 1).is_err());
    }

    #[test]
    fn the_bootstrap_is_seeded() {
        let values: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        assert_eq!(
            bootstrap_interval(&values, 500, 7),
            bootstrap_interval(&values, 500, 7)
        );
        assert_ne!(
            bootstrap_interval(&values, 500, 7),
            bootstrap_interval(&values, 500, 8)
        );
    }
}
