//! chart.svg: latency percentiles (p50/p95/p99) and success rate per second, one line style
//! per run (ft=true solid, ft=false dashed).
//!
//! Hand-written rather than drawn with `plotters`: the chart is two panels of polylines with
//! fixed axes, about 200 lines here, while plotters brings its own dependency tree and, for
//! text, a font backend (ttf/ab_glyph) whose metrics would have to be loaded to lay out the axis
//! labels. Plain `<text>` with a generic font family renders the same in a browser and in a
//! GitHub markdown view, and the output is deterministic for a given result, which keeps it
//! testable.

use std::fmt::Write as _;

use super::report::{LoadResult, RunReport, SecondPoint};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const LATENCY_TOP: f64 = 60.0;
const LATENCY_BOTTOM: f64 = 340.0;
const SUCCESS_TOP: f64 = 400.0;
const SUCCESS_BOTTOM: f64 = 590.0;

/// Reads one series' value from a point of the time series.
type Series = fn(&SecondPoint) -> Option<f64>;

const PERCENTILES: [(&str, &str, Series); 3] = [
    ("p50", "#2563eb", |p| p.p50_ms),
    ("p95", "#f59e0b", |p| p.p95_ms),
    ("p99", "#dc2626", |p| p.p99_ms),
];
const SUCCESS_COLOURS: [&str; 2] = ["#16a34a", "#7c3aed"];

/// Renders the chart for every run in `result`.
pub fn chart(result: &LoadResult) -> String {
    let seconds = result
        .runs
        .iter()
        .map(|r| r.timeseries.len())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |second: f64| LEFT + (second + 0.5) / seconds * (WIDTH - LEFT - RIGHT);

    // Latency spans orders of magnitude between ft on and off (milliseconds against the
    // timeout), so its axis is logarithmic, from the decade below the fastest point to the
    // decade above the slowest.
    let latencies = result
        .runs
        .iter()
        .flat_map(|r| r.timeseries.iter())
        .flat_map(|p| PERCENTILES.iter().filter_map(move |(_, _, get)| get(p)))
        .filter(|v| *v > 0.0);
    let (low, high) = latencies.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (low_decade, high_decade) = if low <= high {
        let lo = low.log10().floor() as i32;
        (lo, (high.log10().ceil() as i32).max(lo + 1))
    } else {
        (0, 3)
    };
    let latency_y = |ms: f64| {
        let t = (ms.max(10f64.powi(low_decade)).log10() - f64::from(low_decade))
            / f64::from(high_decade - low_decade);
        LATENCY_BOTTOM - t * (LATENCY_BOTTOM - LATENCY_TOP)
    };
    let success_y =
        |pct: f64| SUCCESS_BOTTOM - pct.clamp(0.0, 100.0) / 100.0 * (SUCCESS_BOTTOM - SUCCESS_TOP);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="28" font-size="16" font-weight="bold">{}</text>"#,
        escape(&title(result))
    );

    // Latency panel: decade grid lines and labels.
    panel_title(&mut svg, LATENCY_TOP, "latency per second (log scale)");
    for decade in low_decade..=high_decade {
        let y = latency_y(10f64.powi(decade));
        grid_line(&mut svg, y);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            decade_label(decade)
        );
    }
    // Success panel: 0..100 %.
    panel_title(
        &mut svg,
        SUCCESS_TOP,
        "success rate per second (acknowledged / (all − 409))",
    );
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let y = success_y(pct);
        grid_line(&mut svg, y);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{pct} %</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    // Shared time axis under both panels.
    let step = x_step(seconds);
    let mut tick = 0.0;
    while tick <= seconds {
        let tx = x(tick - 0.5);
        for bottom in [LATENCY_BOTTOM, SUCCESS_BOTTOM] {
            let _ = writeln!(
                svg,
                r##"<line x1="{tx:.1}" y1="{bottom}" x2="{tx:.1}" y2="{}" stroke="#9ca3af"/>"##,
                bottom + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{tx:.1}" y="{}" text-anchor="middle">{tick}s</text>"#,
            SUCCESS_BOTTOM + 18.0
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">seconds since the run started</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        SUCCESS_BOTTOM + 36.0
    );

    // The lines, then the legend.
    let mut legend_y = LATENCY_TOP + 10.0;
    for (index, run) in result.runs.iter().enumerate() {
        let dash = dash_for(index);
        // p99 first, so the lower percentiles stay visible where a sparse second makes them
        // equal.
        for (name, colour, get) in PERCENTILES.into_iter().rev() {
            let points = run.timeseries.iter().map(|p| {
                get(p)
                    .filter(|v| *v > 0.0)
                    .map(|v| (x(p.second as f64), latency_y(v)))
            });
            polyline(&mut svg, points, colour, dash);
            legend(
                &mut svg,
                legend_y,
                colour,
                dash,
                &format!("{name} ft={}", run.ft),
            );
            legend_y += 18.0;
        }
    }
    let mut legend_y = SUCCESS_TOP + 10.0;
    for (index, run) in result.runs.iter().enumerate() {
        let dash = dash_for(index);
        let colour = SUCCESS_COLOURS[index % SUCCESS_COLOURS.len()];
        let points = run.timeseries.iter().map(|p| {
            p.success_rate_pct
                .map(|v| (x(p.second as f64), success_y(v)))
        });
        polyline(&mut svg, points, colour, dash);
        legend(&mut svg, legend_y, colour, dash, &success_legend(run));
        legend_y += 18.0;
    }
    svg.push_str("</svg>\n");
    svg
}

fn title(result: &LoadResult) -> String {
    let s = &result.settings;
    let load = match (s.mode.as_str(), s.vus, s.rate_per_s) {
        ("open", _, Some(rate)) => format!("{rate}/s open loop"),
        (_, Some(vus), _) => format!("{vus} VUs, think {}", s.think.as_deref().unwrap_or("-")),
        _ => String::new(),
    };
    format!("ftshop load: {load}, {} s, {}", s.duration_s, s.url)
}

fn success_legend(run: &RunReport) -> String {
    match run.success_rate_pct {
        Some(rate) => format!("ft={}: {rate:.1} % overall", run.ft),
        None => format!("ft={}", run.ft),
    }
}

fn dash_for(run_index: usize) -> &'static str {
    if run_index == 0 { "" } else { "6 4" }
}

fn panel_title(svg: &mut String, top: f64, text: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        top - 10.0,
        escape(text)
    );
}

fn grid_line(svg: &mut String, y: f64) {
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e5e7eb"/>"##,
        WIDTH - RIGHT
    );
}

/// A polyline broken where a second has no value (no answer in that second).
fn polyline(
    svg: &mut String,
    points: impl Iterator<Item = Option<(f64, f64)>>,
    colour: &str,
    dash: &str,
) {
    let mut path = String::new();
    let mut pen_down = false;
    for point in points {
        match point {
            Some((x, y)) => {
                let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if path.is_empty() {
        return;
    }
    let dash = dash_attribute(dash);
    let _ = writeln!(
        svg,
        r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
        path.trim_end()
    );
}

/// ` stroke-dasharray="…"`, or nothing for a solid line.
fn dash_attribute(dash: &str) -> String {
    if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    }
}

fn legend(svg: &mut String, y: f64, colour: &str, dash: &str, text: &str) {
    let x = WIDTH - RIGHT + 12.0;
    let dash = dash_attribute(dash);
    let _ = writeln!(
        svg,
        r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
        x + 24.0,
        x + 30.0,
        y + 4.0,
        escape(text)
    );
}

fn decade_label(decade: i32) -> String {
    match decade {
        d if d < 0 => format!("{} ms", 10f64.powi(d)),
        d if d < 3 => format!("{} ms", 10i64.pow(d.unsigned_abs())),
        d => format!("{} s", 10i64.pow((d - 3).unsigned_abs())),
    }
}

/// About ten ticks on the time axis, at round numbers of seconds.
fn x_step(seconds: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|step| seconds / step <= 12.0)
        .unwrap_or(600.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests state their expectations by unwrapping
mod tests {
    use super::*;
    use crate::load::outcome::Outcome;
    use crate::load::report::{Recorder, Settings};
    use std::time::Duration;

    #[test]
    fn chart_has_both_panels_and_a_line_per_series() {
        let mut on = Recorder::new().unwrap();
        let mut off = Recorder::new().unwrap();
        for second in 0..5u64 {
            let at = Duration::from_millis(second * 1000 + 10);
            on.record(at, Duration::from_millis(20), Outcome::Completed, None)
                .unwrap();
            off.record(at, Duration::from_secs(2), Outcome::ServerError, None)
                .unwrap();
        }
        let result = LoadResult {
            tool: "ftshop load".into(),
            version: "0".into(),
            started_at: "now".into(),
            interrupted: false,
            settings: Settings {
                url: "http://127.0.0.1:8080".into(),
                mode: "closed".into(),
                vus: Some(2),
                think: Some("0s".into()),
                rate_per_s: None,
                max_in_flight: None,
                duration_s: 5.0,
                max_requests: None,
                products: vec!["1".into()],
                timeout_s: 5.0,
                ft: vec![true, false],
            },
            runs: vec![
                on.finish(true, Duration::from_secs(5)),
                off.finish(false, Duration::from_secs(5)),
            ],
        };
        let svg = chart(&result);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // 3 percentiles x 2 runs + 2 success lines.
        assert_eq!(svg.matches("<path ").count(), 8, "{svg}");
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            8,
            "4 dashed paths + 4 legends"
        );
        assert!(svg.contains("10 ms") && svg.contains("10 s"), "{svg}");
        assert!(svg.contains("ft=true: 100.0 % overall"));
        assert!(svg.contains("ft=false: 0.0 % overall"));
        assert_eq!(decade_label(-1), "0.1 ms");
        assert_eq!(decade_label(3), "1 s");
        assert_eq!(escape("a<b&c"), "a&lt;b&amp;c");
    }
}
