//! The numbers per target, computed from the records: percentiles of latency and time to first
//! token, tokens and cost, failures; shown as a table or JSON.

use std::collections::HashMap;

use serde::Serialize;

use super::{key, Record};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
}

/// Nearest-rank percentiles of `values` (milliseconds).
pub fn percentiles(values: &mut [u64]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |p: f64| {
        let rank = (p * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    Some(Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    })
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub prompts: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Prompts with no record yet (an interrupted run).
    pub missing: usize,
    pub latency_ms: Option<Percentiles>,
    pub ttft_ms: Option<Percentiles>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// US dollars over the succeeded prompts; `None` if some model has no price.
    pub cost_total: Option<f64>,
    pub cost_per_prompt: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub prices_as_of: &'static str,
    pub targets: Vec<TargetReport>,
}

impl Report {
    /// The report over the current prompts' records (records of other prompt texts ignored).
    pub fn build(
        targets: &[String],
        prompt_count: usize,
        records: &HashMap<String, Record>,
        prompts: &[String],
    ) -> Self {
        let targets = targets
            .iter()
            .map(|target| {
                let current: Vec<&Record> = (0..prompt_count)
                    .filter_map(|i| records.get(&key(target, i)))
                    .filter(|r| r.prompt_hash == crate::fnv1a(&prompts[r.index]))
                    .collect();
                let ok: Vec<&&Record> = current.iter().filter(|r| r.ok).collect();
                let mut latency: Vec<u64> = ok.iter().map(|r| r.latency_ms).collect();
                let mut ttft: Vec<u64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
                let cost_total = ok
                    .iter()
                    .map(|r| r.cost)
                    .try_fold(0.0, |sum, c| c.map(|c| sum + c));
                TargetReport {
                    target: target.clone(),
                    prompts: prompt_count,
                    succeeded: ok.len(),
                    failed: current.len() - ok.len(),
                    missing: prompt_count - current.len(),
                    latency_ms: percentiles(&mut latency),
                    ttft_ms: percentiles(&mut ttft),
                    tokens_in: ok.iter().map(|r| r.prompt_tokens).sum(),
                    tokens_out: ok.iter().map(|r| r.completion_tokens).sum(),
                    cost_total,
                    cost_per_prompt: cost_total
                        .filter(|_| !ok.is_empty())
                        .map(|c| c / ok.len() as f64),
                }
            })
            .collect();
        Self {
            prices_as_of: moa_core::PRICES_AS_OF,
            targets,
        }
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let seconds = |ms: u64| format!("{:.2}s", ms as f64 / 1000.0);
        let trio = |p: &Option<Percentiles>| match p {
            Some(p) => format!(
                "{} / {} / {}",
                seconds(p.p50),
                seconds(p.p90),
                seconds(p.p99)
            ),
            None => "-".into(),
        };
        let money = |c: Option<f64>, digits: usize| match c {
            Some(c) => format!("${c:.digits$}"),
            None => "?".into(),
        };
        let header = [
            "target",
            "ok",
            "failed",
            "latency p50/p90/p99",
            "first token p50/p90/p99",
            "tokens in",
            "tokens out",
            "cost/prompt",
            "cost total",
        ];
        let rows: Vec<[String; 9]> = self
            .targets
            .iter()
            .map(|t| {
                [
                    t.target.clone(),
                    format!("{}/{}", t.succeeded, t.prompts),
                    t.failed.to_string(),
                    trio(&t.latency_ms),
                    trio(&t.ttft_ms),
                    t.tokens_in.to_string(),
                    t.tokens_out.to_string(),
                    money(t.cost_per_prompt, 5),
                    money(t.cost_total, 4),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                if i == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str("  ");
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(&header.map(String::from));
        for row in &rows {
            out.push_str(&line(row));
        }
        if self.targets.iter().any(|t| t.cost_total.is_none()) {
            out.push_str(
                "? = a model without a known price; add it under [prices] in the config\n",
            );
        }
        out.push_str(&format!(
            "prices: built-in list prices as of {} unless the config overrides them\n",
            self.prices_as_of
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(
            percentiles(&mut v),
            Some(Percentiles {
                p50: 50,
                p90: 90,
                p99: 99
            })
        );
        assert_eq!(
            percentiles(&mut [7]),
            Some(Percentiles {
                p50: 7,
                p90: 7,
                p99: 7
            })
        );
        let mut v = vec![10, 20, 30, 40];
        assert_eq!(
            percentiles(&mut v),
            Some(Percentiles {
                p50: 20,
                p90: 40,
                p99: 40
            })
        );
        assert_eq!(percentiles(&mut []), None);
    }

    fn record(
        target: &str,
        index: usize,
        prompt: &str,
        ok: bool,
        ms: u64,
        cost: Option<f64>,
    ) -> Record {
        Record {
            target: target.into(),
            index,
            prompt_hash: crate::fnv1a(prompt),
            ok,
            latency_ms: ms,
            ttft_ms: ok.then_some(ms / 2),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost,
            error: (!ok).then(|| "boom".into()),
            answer: String::new(),
        }
    }

    #[test]
    fn reports_count_costs_and_skip_stale_records() {
        let prompts: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let mut records = HashMap::new();
        for r in [
            record("t", 0, "a", true, 100, Some(0.01)),
            record("t", 1, "b", true, 300, Some(0.03)),
            record("t", 2, "c", false, 50, None),
            // A record for another prompt text at index 3: stale, not counted.
            record("t", 3, "old d", true, 999, Some(9.0)),
        ] {
            records.insert(key(&r.target, r.index), r);
        }
        let report = Report::build(&["t".into()], 4, &records, &prompts);
        let t = &report.targets[0];
        assert_eq!((t.succeeded, t.failed, t.missing), (2, 1, 1));
        assert_eq!(t.latency_ms.as_ref().unwrap().p50, 100);
        assert_eq!(t.ttft_ms.as_ref().unwrap().p90, 150);
        assert_eq!((t.tokens_in, t.tokens_out), (20, 10));
        assert!((t.cost_total.unwrap() - 0.04).abs() < 1e-12);
        assert!((t.cost_per_prompt.unwrap() - 0.02).abs() < 1e-12);
        let table = report.table();
        assert!(table.lines().nth(1).unwrap().starts_with("t "), "{table}");
        assert!(table.contains("$0.0400"), "{table}");
    }
}
