//! Compares judged runs: a terminal table per benchmark and a self-contained HTML page with
//! bar charts (win rates; MT-Bench by category; FLASK by skill). Published AlpacaEval numbers
//! can join the comparison from the leaderboard CSV.

use std::fmt::Write as _;
use std::path::Path;

use crate::alpaca::WinRate;
use crate::error::{EvalError, Result};
use crate::flask::SKILL_ORDER;
use crate::pipeline::{Metrics, Results};

/// One column of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub label: String,
    pub results: Results,
}

/// Rows of AlpacaEval's leaderboard CSV for `models`, as entries (judge: the leaderboard's).
pub fn leaderboard(path: &Path, models: &[String]) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io("read", path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need =
        |name: &str| col(name).ok_or_else(|| EvalError::data(path, format!("no `{name}` column")));
    let (wr, se, wins, base, draws, total, discrete, len) = (
        need("win_rate")?,
        need("standard_error")?,
        need("n_wins")?,
        need("n_wins_base")?,
        need("n_draws")?,
        need("n_total")?,
        need("discrete_win_rate")?,
        need("avg_length")?,
    );
    let lc = col("length_controlled_winrate");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    models
        .iter()
        .map(|model| {
            let row = rows
                .iter()
                .find(|r| r.first() == Some(&model.as_str()))
                .ok_or_else(|| EvalError::data(path, format!("no row for model {model:?}")))?;
            let f = |i: usize| {
                row.get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let metrics = WinRate {
                win_rate: f(wr),
                standard_error: f(se),
                n_wins: f(wins) as usize,
                n_wins_base: f(base) as usize,
                n_draws: f(draws) as usize,
                n_total: f(total) as usize,
                discrete_win_rate: f(discrete),
                avg_length: f(len),
                length_controlled_winrate: lc.and_then(|i| row.get(i)?.parse().ok()),
                position_bias: None,
            };
            Ok(Entry {
                label: format!("{model} (leaderboard)"),
                results: Results {
                    name: model.clone(),
                    judge: "weighted_alpaca_eval_gpt4_turbo".into(),
                    judged: metrics.n_total,
                    failed: 0,
                    judge_cost: 0.0,
                    metrics: Metrics::AlpacaEval(metrics),
                    stopped: None,
                },
            })
        })
        .collect()
}

fn alpaca(entries: &[Entry]) -> Vec<(&Entry, &WinRate)> {
    entries
        .iter()
        .filter_map(|e| match &e.results.metrics {
            Metrics::AlpacaEval(w) => Some((e, w)),
            _ => None,
        })
        .collect()
}

fn mt_bench(entries: &[Entry]) -> Vec<(&Entry, &crate::mt_bench::Scores)> {
    entries
        .iter()
        .filter_map(|e| match &e.results.metrics {
            Metrics::MtBench(s) => Some((e, s)),
            _ => None,
        })
        .collect()
}

fn flask(entries: &[Entry]) -> Vec<(&Entry, &Vec<crate::flask::SkillScore>)> {
    entries
        .iter()
        .filter_map(|e| match &e.results.metrics {
            Metrics::Flask { skills } => Some((e, skills)),
            _ => None,
        })
        .collect()
}

fn categories(rows: &[(&Entry, &crate::mt_bench::Scores)]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .flat_map(|(_, s)| s.by_category.keys().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn pad(text: &str, width: usize) -> String {
    format!("{text:<width$}")
}

/// The comparison as text tables, one per benchmark present.
pub fn table(entries: &[Entry]) -> String {
    let width = entries
        .iter()
        .map(|e| e.label.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let rows = alpaca(entries);
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "AlpacaEval 2.0\n{}  {:>6}  {:>6}  {:>5}  {:>9}  {:>7}  {:>5}  judge",
            pad("run", width),
            "LC WR",
            "WR",
            "SE",
            "W/L/D",
            "avg len",
            "n"
        );
        for (e, w) in rows {
            let lc = w
                .length_controlled_winrate
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{}  {lc:>6}  {:>6.2}  {:>5.2}  {:>9}  {:>7.0}  {:>5}  {}",
                pad(&e.label, width),
                w.win_rate,
                w.standard_error,
                format!("{}/{}/{}", w.n_wins, w.n_wins_base, w.n_draws),
                w.avg_length,
                w.n_total,
                e.results.judge
            );
        }
        for (e, w) in alpaca(entries) {
            if let Some(b) = &w.position_bias {
                let _ = writeln!(
                    out,
                    "position bias, {}: the winner held in {:.1}% of {} comparisons judged in both \
                     orders; win rate {:.2} with the outputs traded (mean shift {:.1} points)",
                    e.label, b.agreement, b.pairs, b.win_rate_traded, b.mean_abs_difference
                );
            }
        }
        out.push('\n');
    }
    let rows = mt_bench(entries);
    if !rows.is_empty() {
        let cats = categories(&rows);
        let _ = write!(
            out,
            "MT-Bench\n{}  {:>5}  {:>5}  {:>5}",
            pad("run", width),
            "score",
            "turn1",
            "turn2"
        );
        for c in &cats {
            let _ = write!(out, "  {:>10}", c);
        }
        out.push('\n');
        for (e, s) in rows {
            let _ = write!(
                out,
                "{}  {:>5.2}  {:>5.2}  {:>5.2}",
                pad(&e.label, width),
                s.overall,
                s.turn_1,
                s.turn_2
            );
            for c in &cats {
                match s.by_category.get(c) {
                    Some(v) => {
                        let _ = write!(out, "  {v:>10.2}");
                    }
                    None => {
                        let _ = write!(out, "  {:>10}", "-");
                    }
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let rows = flask(entries);
    if !rows.is_empty() {
        let _ = write!(out, "FLASK (1-5)\n{}", pad("run", width));
        for s in SKILL_ORDER {
            let _ = write!(out, "  {:>5}", &s[..5.min(s.len())]);
        }
        out.push('\n');
        for (e, skills) in rows {
            out.push_str(&pad(&e.label, width));
            for name in SKILL_ORDER {
                match skills.iter().find(|s| s.skill == name) {
                    Some(s) => {
                        let _ = write!(out, "  {:>5.2}", s.avg);
                    }
                    None => {
                        let _ = write!(out, "  {:>5}", "-");
                    }
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// A grouped horizontal bar chart: for each group, one bar per series, scaled to `max`.
pub fn bar_chart(
    title: &str,
    series: &[String],
    groups: &[(String, Vec<Option<f64>>)],
    max: f64,
) -> String {
    let bar = 14.0;
    let gap = 10.0;
    let left = 150.0;
    let plot = 420.0;
    let group_height = bar * series.len() as f64 + gap;
    let legend = 18.0 * series.len() as f64;
    let height = 40.0 + group_height * groups.len() as f64 + legend + 10.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12"><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        left + plot + 70.0,
        escape(title)
    );
    for (g, (name, values)) in groups.iter().enumerate() {
        let top = 35.0 + g as f64 * group_height;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 6.0,
            top + bar * series.len() as f64 / 2.0 + 4.0,
            escape(name)
        );
        for (s, value) in values.iter().enumerate() {
            let Some(v) = value else { continue };
            let w = (v / max).clamp(0.0, 1.0) * plot;
            let y = top + s as f64 * bar;
            let _ = write!(
                svg,
                r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{}"><title>{}: {v:.2}</title></rect><text x="{:.1}" y="{:.1}">{v:.2}</text>"#,
                bar - 2.0,
                COLOURS[s % COLOURS.len()],
                escape(&series[s]),
                left + w + 4.0,
                y + bar - 4.0
            );
        }
    }
    let legend_top = 35.0 + group_height * groups.len() as f64;
    for (s, name) in series.iter().enumerate() {
        let y = legend_top + 18.0 * s as f64;
        let _ = write!(
            svg,
            r#"<rect x="{left}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            COLOURS[s % COLOURS.len()],
            left + 18.0,
            y + 10.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The comparison as one self-contained HTML page.
/// The page: charts, the table, and `notes` (the intervals and paired comparisons) when any.
pub fn html(entries: &[Entry], notes: &str) -> String {
    let mut body = String::new();
    let rows = alpaca(entries);
    if !rows.is_empty() {
        let series: Vec<String> = rows.iter().map(|(e, _)| e.label.clone()).collect();
        let groups = vec![
            (
                "LC win rate".to_string(),
                rows.iter()
                    .map(|(_, w)| w.length_controlled_winrate)
                    .collect(),
            ),
            (
                "win rate".to_string(),
                rows.iter().map(|(_, w)| Some(w.win_rate)).collect(),
            ),
        ];
        body.push_str("<h2>AlpacaEval 2.0 (% against GPT-4 Turbo)</h2>");
        body.push_str(&bar_chart("Win rates", &series, &groups, 100.0));
    }
    let rows = mt_bench(entries);
    if !rows.is_empty() {
        let series: Vec<String> = rows.iter().map(|(e, _)| e.label.clone()).collect();
        let mut groups = vec![
            (
                "overall".to_string(),
                rows.iter().map(|(_, s)| Some(s.overall)).collect(),
            ),
            (
                "turn 1".to_string(),
                rows.iter().map(|(_, s)| Some(s.turn_1)).collect(),
            ),
            (
                "turn 2".to_string(),
                rows.iter().map(|(_, s)| Some(s.turn_2)).collect(),
            ),
        ];
        for c in categories(&rows) {
            let values = rows
                .iter()
                .map(|(_, s)| s.by_category.get(&c).copied())
                .collect();
            groups.push((c, values));
        }
        body.push_str("<h2>MT-Bench (1-10)</h2>");
        body.push_str(&bar_chart("Scores by category", &series, &groups, 10.0));
    }
    let rows = flask(entries);
    if !rows.is_empty() {
        let series: Vec<String> = rows.iter().map(|(e, _)| e.label.clone()).collect();
        let groups = SKILL_ORDER
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    rows.iter()
                        .map(|(_, skills)| skills.iter().find(|s| s.skill == *name).map(|s| s.avg))
                        .collect(),
                )
            })
            .collect::<Vec<_>>();
        body.push_str("<h2>FLASK (1-5)</h2>");
        body.push_str(&bar_chart("Scores by skill", &series, &groups, 5.0));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>moa eval report</title>\
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}</style></head>\
<body><h1>moa eval report</h1>{body}<h2>Table</h2><pre>{}</pre>{}</body></html>\n",
        escape(&table(entries)),
        match notes.is_empty() {
            true => String::new(),
            false => format!(
                "<h2>Uncertainty and paired comparisons</h2><pre>{}</pre>",
                escape(notes)
            ),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(label: &str, metrics: Metrics) -> Entry {
        Entry {
            label: label.into(),
            results: Results {
                name: label.into(),
                judge: "j".into(),
                judged: 1,
                failed: 0,
                judge_cost: 0.0,
                metrics,
                stopped: None,
            },
        }
    }

    #[test]
    fn tables_and_charts_show_every_run() {
        let win = WinRate {
            win_rate: 59.87,
            length_controlled_winrate: Some(65.38),
            n_wins: 490,
            n_wins_base: 314,
            n_draws: 1,
            n_total: 805,
            ..WinRate::default()
        };
        let mut scores = crate::mt_bench::Scores {
            overall: 9.25,
            ..Default::default()
        };
        scores.by_category.insert("math".into(), 8.5);
        let entries = [
            entry("moa <x>", Metrics::AlpacaEval(win)),
            entry("mt", Metrics::MtBench(scores)),
        ];
        let text = table(&entries);
        assert!(
            text.contains("65.38") && text.contains("59.87") && text.contains("490/314/1"),
            "{text}"
        );
        assert!(text.contains("9.25") && text.contains("8.50"), "{text}");
        let page = html(&entries, "A − B = +1.00 <ok>");
        assert!(page.contains("moa &lt;x&gt;"), "labels are escaped");
        assert!(page.contains("paired comparisons</h2><pre>A − B = +1.00 &lt;ok&gt;"));
        assert!(!html(&entries, "").contains("paired comparisons"));
        assert_eq!(page.matches("<svg").count(), 2);
        // 65.38% of the 420-pixel plot.
        assert!(page.contains(r#"width="274.6""#), "{page}");
    }

    #[test]
    fn leaderboard_rows_are_read_by_model_name() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/alpaca_eval/leaderboards/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv");
        if !path.is_file() {
            return;
        }
        let entries = leaderboard(&path, &["Together-MoA".into()]).unwrap();
        let Metrics::AlpacaEval(w) = &entries[0].results.metrics else {
            panic!()
        };
        assert!((w.length_controlled_winrate.unwrap() - 65.37996976852163).abs() < 1e-9);
        assert_eq!((w.n_wins, w.n_wins_base, w.n_draws), (490, 314, 1));
        assert!(leaderboard(&path, &["nope".into()]).is_err());
    }
}
