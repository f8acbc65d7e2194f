//! Server-rendered SVG charts for the dashboard: no JavaScript, no charting library.
//!
//! A bar chart of one series (this period) with an optional dashed line of another (the
//! period before), a y axis with "nice" ticks, x labels thinned to fit, and everything a
//! screen reader needs: `role="img"`, a `<title>` and a `<desc>` that states the totals,
//! and a `<title>` per bar (also the hover tooltip). Colours come from classes in
//! `dashboard.css`, so dark mode applies and the page's CSP (no inline style) holds.

use std::fmt::Write as _;

/// One bucket of the chart.
pub struct Point {
    /// Axis label ("3 Mar").
    pub label: String,
    /// Long label for the tooltip and the data table ("Mon 3 Mar 2025").
    pub long_label: String,
    /// Value in minor units.
    pub value: i64,
    /// The same bucket of the previous period.
    pub previous: i64,
}

pub struct BarChart<'a> {
    pub id: &'a str,
    /// Extra classes on the `<svg>` (`chart-wide`, `chart-compact`).
    pub class: &'a str,
    /// The viewBox size: a wide chart for desktops, a narrower one (larger text) for phones.
    pub width: f64,
    pub height: f64,
    /// At most this many x labels.
    pub max_labels: usize,
    /// The smallest gridline step (one major currency unit), so an empty or tiny chart
    /// is labelled $1, $2… rather than cents.
    pub min_step: i64,
    pub title: &'a str,
    pub desc: &'a str,
    pub points: &'a [Point],
    /// Formats an axis value (minor units) compactly: `$1.2k`.
    pub axis_fmt: &'a dyn Fn(i64) -> String,
    /// Formats a value exactly: `$1,234.00`.
    pub value_fmt: &'a dyn Fn(i64) -> String,
    pub show_previous: bool,
}

const RIGHT: f64 = 12.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 34.0;

/// The smallest "nice" number (1, 2, 2.5, 5 × 10^k) at or above `v`.
pub fn nice_ceiling(v: i64) -> i64 {
    if v <= 0 {
        return 0;
    }
    let mut mag: i64 = 1;
    while mag.saturating_mul(10) <= v {
        mag = mag.saturating_mul(10);
    }
    for step in [10, 20, 25, 50, 100] {
        let candidate = mag.saturating_mul(step) / 10;
        if candidate >= v {
            return candidate;
        }
    }
    mag.saturating_mul(10)
}

/// The axis maximum and the number of gridlines above zero: 3, 4 or 5 steps of a nice
/// size, whichever ends closest above the top value (4 on a tie).
pub fn scale(top: i64, min_step: i64) -> (i64, i64) {
    let mut best: Option<(i64, i64)> = None;
    for n in [4_i64, 5, 3] {
        let step = nice_ceiling((top + n - 1) / n).max(min_step.max(1));
        let max = step * n;
        if best.is_none_or(|(m, _)| max < m) {
            best = Some((max, n));
        }
    }
    best.unwrap_or((4, 4))
}

/// SVG-escape text.
fn x(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[allow(clippy::cast_precision_loss)]
fn f(v: i64) -> f64 {
    v as f64
}

impl BarChart<'_> {
    /// The `<svg>` element (trusted markup: every text is escaped here).
    pub fn render(&self) -> String {
        let n = self.points.len().max(1);
        let top_value = self
            .points
            .iter()
            .map(|p| {
                if self.show_previous {
                    p.value.max(p.previous)
                } else {
                    p.value
                }
            })
            .max()
            .unwrap_or(0);
        let (w, h) = (self.width, self.height);
        let left = if w < 500.0 { 50.0 } else { 64.0 };
        let (max, steps) = scale(top_value, self.min_step);
        let plot_w = w - left - RIGHT;
        let plot_h = h - TOP - BOTTOM;
        let slot = plot_w / f(i64::try_from(n).unwrap_or(1));
        let bar_w = (slot * 0.68).clamp(2.0, 48.0);
        let y_of = |v: i64| TOP + plot_h - plot_h * f(v) / f(max);
        let id = x(self.id);

        let mut s = String::with_capacity(4096 + n * 200);
        let _ = write!(
            s,
            r#"<svg class="chart {}" id="{id}" viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMid meet" role="img" aria-labelledby="{id}-title {id}-desc" data-max="{max}">"#,
            x(self.class)
        );
        let _ = write!(
            s,
            r#"<title id="{id}-title">{}</title><desc id="{id}-desc">{}</desc>"#,
            x(self.title),
            x(self.desc)
        );
        // Gridlines and y labels.
        s.push_str(r#"<g class="grid" aria-hidden="true">"#);
        for i in 0..=steps {
            let v = max * i / steps;
            let y = y_of(v);
            let _ = write!(
                s,
                r#"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"{}/><text class="ylabel" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                w - RIGHT,
                if i == 0 { r#" class="axis""# } else { "" },
                left - 8.0,
                y + 4.0,
                x(&(self.axis_fmt)(v))
            );
        }
        s.push_str("</g>");
        // Bars.
        s.push_str(r#"<g class="bars">"#);
        for (i, p) in self.points.iter().enumerate() {
            let cx = left + slot * (f(i64::try_from(i).unwrap_or(0)) + 0.5);
            let y = y_of(p.value);
            let bar_h = (TOP + plot_h - y).max(0.0);
            // A zero still gets a hairline so the period's shape reads; it carries data-value 0.
            let (y, bar_h) = if p.value > 0 {
                (y, bar_h.max(1.5))
            } else {
                (TOP + plot_h - 1.0, 1.0)
            };
            let _ = write!(
                s,
                r#"<rect class="bar{}" x="{:.1}" y="{y:.1}" width="{bar_w:.1}" height="{bar_h:.1}" rx="2" data-value="{}"><title>{}: {}</title></rect>"#,
                if p.value > 0 { "" } else { " zero" },
                cx - bar_w / 2.0,
                p.value,
                x(&p.long_label),
                x(&(self.value_fmt)(p.value))
            );
        }
        s.push_str("</g>");
        if self.show_previous && self.points.iter().any(|p| p.previous > 0) {
            let pts: Vec<String> = self
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "{:.1},{:.1}",
                        left + slot * (f(i64::try_from(i).unwrap_or(0)) + 0.5),
                        y_of(p.previous)
                    )
                })
                .collect();
            let _ = write!(
                s,
                r#"<polyline class="prev" points="{}" aria-hidden="true"/>"#,
                pts.join(" ")
            );
        }
        // X labels: at most `max_labels`, always the last one.
        let every = n.div_ceil(self.max_labels.max(2)).max(1);
        s.push_str(r#"<g class="xlabels" aria-hidden="true">"#);
        for (i, p) in self.points.iter().enumerate() {
            if i % every != 0 && i != n - 1 {
                continue;
            }
            if i != n - 1 && n - 1 - i < every {
                continue; // keep the last label clear of its neighbour
            }
            let cx = left + slot * (f(i64::try_from(i).unwrap_or(0)) + 0.5);
            let _ = write!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                h - 10.0,
                x(&p.label)
            );
        }
        s.push_str("</g></svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0), 0);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(4900), 5000);
        assert_eq!(nice_ceiling(5001), 10_000);
        assert_eq!(nice_ceiling(2100), 2500);
        assert_eq!(nice_ceiling(17), 20);
    }

    #[test]
    fn scales_end_just_above_the_top() {
        assert_eq!(scale(4900, 100), (5000, 5));
        assert_eq!(scale(2900, 100), (3000, 3));
        assert_eq!(scale(0, 100), (300, 3));
        assert_eq!(scale(19_600, 100), (20_000, 4));
    }

    #[test]
    fn bars_carry_values_and_text_is_escaped() {
        let pts = vec![
            Point {
                label: "1 Mar".into(),
                long_label: "Sat 1 Mar".into(),
                value: 0,
                previous: 100,
            },
            Point {
                label: "2 Mar".into(),
                long_label: "Sun <2> Mar".into(),
                value: 4900,
                previous: 0,
            },
        ];
        let fmt = |v: i64| format!("${}", v / 100);
        let svg = BarChart {
            id: "c",
            class: "chart-wide",
            width: 760.0,
            height: 280.0,
            max_labels: 8,
            min_step: 100,
            title: "Sales & more",
            desc: "d",
            points: &pts,
            axis_fmt: &fmt,
            value_fmt: &fmt,
            show_previous: true,
        }
        .render();
        assert!(svg.contains(r#"data-value="4900""#));
        assert!(svg.contains("Sales &amp; more"));
        assert!(svg.contains("Sun &lt;2&gt; Mar: $49"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains(r#"role="img""#));
        assert!(!svg.contains("style="), "no inline style (CSP)");
    }
}
