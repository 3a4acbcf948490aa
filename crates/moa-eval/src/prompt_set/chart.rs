//! An SVG scatter of cost per prompt against median latency, one labelled point per target:
//! the picture the AWS sample draws to compare MoA with one expensive model.

use super::report::Report;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&m| m >= value)
        .unwrap_or(10.0 * power)
}

pub fn svg(report: &Report) -> String {
    let (width, height) = (720.0, 440.0);
    let (left, right, top, bottom) = (90.0, 30.0, 40.0, 60.0);
    let points: Vec<(&str, f64, f64)> = report
        .targets
        .iter()
        .filter_map(|t| {
            let latency = t.latency_ms.as_ref()?.p50 as f64 / 1000.0;
            Some((t.target.as_str(), latency, t.cost_per_prompt?))
        })
        .collect();
    let x_max = nice_max(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let y_max = nice_max(points.iter().map(|p| p.2).fold(0.0, f64::max));
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x = |v: f64| left + v / x_max * plot_w;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Cost per prompt against median latency</text>\n",
        width / 2.0
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let (gx, gy) = (x(f * x_max), y(f * y_max));
        out.push_str(&format!(
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\n\
             <line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#eee\"/>\n\
             <text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.2}s</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">${:.5}</text>\n",
            top + plot_h,
            left + plot_w,
            top + plot_h + 18.0,
            f * x_max,
            left - 6.0,
            gy + 4.0,
            f * y_max
        ));
    }
    out.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\" stroke=\"black\"/>\n\
         <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">median latency per prompt</text>\n\
         <text x=\"16\" y=\"{cy:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {cy:.1})\">cost per prompt (USD)</text>\n",
        height - 14.0,
        b = top + plot_h,
        r = left + plot_w,
        cx = left + plot_w / 2.0,
        cy = top + plot_h / 2.0,
    ));
    let colours = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    for (i, (name, latency, cost)) in points.iter().enumerate() {
        let (px, py) = (x(*latency), y(*cost));
        out.push_str(&format!(
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"6\" fill=\"{}\"><title>{}: {latency:.2}s, ${cost:.5}</title></circle>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            colours[i % colours.len()],
            escape(name),
            px + 9.0,
            py - 8.0,
            escape(name)
        ));
    }
    let unpriced: Vec<&str> = report
        .targets
        .iter()
        .filter(|t| t.cost_per_prompt.is_none() || t.latency_ms.is_none())
        .map(|t| t.target.as_str())
        .collect();
    if !unpriced.is_empty() {
        out.push_str(&format!(
            "<text x=\"{left}\" y=\"{:.1}\" fill=\"#888\">not shown (no price or no result): {}</text>\n",
            height - 30.0,
            escape(&unpriced.join(", "))
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt_set::report::{Percentiles, TargetReport};

    fn target(name: &str, p50: u64, cost: Option<f64>) -> TargetReport {
        TargetReport {
            target: name.into(),
            prompts: 1,
            succeeded: 1,
            failed: 0,
            missing: 0,
            latency_ms: Some(Percentiles {
                p50,
                p90: p50,
                p99: p50,
            }),
            ttft_ms: None,
            tokens_in: 1,
            tokens_out: 1,
            cost_total: cost,
            cost_per_prompt: cost,
        }
    }

    #[test]
    fn points_sit_where_their_numbers_say() {
        assert_eq!(nice_max(0.0031), 0.005);
        assert_eq!(nice_max(4.2), 5.0);
        assert_eq!(nice_max(10.0), 10.0);
        let report = Report {
            prices_as_of: "test",
            targets: vec![
                target("bedrock-haiku", 2500, Some(0.001)),
                target("sonnet <alone>", 5000, Some(0.004)),
                target("mystery", 1000, None),
            ],
        };
        let svg = svg(&report);
        // x: 90 + 2.5/5 * 600 = 390; y: 40 + 340 - 0.001/0.005 * 340 = 312.
        assert!(svg.contains("<circle cx=\"390.0\" cy=\"312.0\""), "{svg}");
        // The most expensive, slowest point is at the top right corner.
        assert!(svg.contains("<circle cx=\"690.0\" cy=\"108.0\""), "{svg}");
        assert!(svg.contains("sonnet &lt;alone&gt;"));
        assert!(svg.contains("not shown (no price or no result): mystery"));
    }
}
