//! Overview: KPIs over a chosen range (7 days, 30 days, 90 days, 12 months) with the change
//! from the period before, and a server-rendered SVG chart of sales per day (or week).
//!
//! Definitions (all per seller, UTC days, in the store's main currency of the period):
//! gross sales = totals of orders paid in the period; refunds = refunds made in the period
//! (whenever the order was paid); net revenue = gross − refunds; downloads = counted
//! download starts; activations = license activations created in the period.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::chart::{BarChart, Point};
use super::{day_month, money, render, Dash, Layout};
use crate::app::App;
use crate::db::Exec;
use crate::error::ApiResult;
use crate::ids::now;
use crate::sql;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct OverviewQuery {
    range: String,
    notice: Option<String>,
}

struct RangeDef {
    key: &'static str,
    label: &'static str,
    /// "previous 30 days"
    previous: &'static str,
    days: i64,
    bucket_days: i64,
}

const RANGES: [RangeDef; 4] = [
    RangeDef {
        key: "7d",
        label: "Last 7 days",
        previous: "the 7 days before",
        days: 7,
        bucket_days: 1,
    },
    RangeDef {
        key: "30d",
        label: "Last 30 days",
        previous: "the 30 days before",
        days: 30,
        bucket_days: 1,
    },
    RangeDef {
        key: "90d",
        label: "Last 90 days",
        previous: "the 90 days before",
        days: 91,
        bucket_days: 7,
    },
    RangeDef {
        key: "12m",
        label: "Last 12 months",
        previous: "the 12 months before",
        days: 364,
        bucket_days: 7,
    },
];

pub struct RangeLink {
    pub key: &'static str,
    pub label: &'static str,
    pub short: &'static str,
    pub selected: bool,
}

pub struct Kpi {
    pub id: &'static str,
    pub label: &'static str,
    pub value: String,
    pub sub: String,
    /// `+25%`, `New`, `—`
    pub delta: String,
    /// `good`, `bad` or `flat` (colour), from the seller's point of view.
    pub tone: &'static str,
    /// `up`, `down` or `flat` (arrow).
    pub dir: &'static str,
    /// The whole comparison in words, for screen readers and the tooltip.
    pub delta_words: String,
}

pub struct TopProduct {
    pub title: String,
    pub product_id: String,
    pub units: i64,
    pub revenue: String,
}

pub struct RecentOrder {
    pub id: String,
    pub email: String,
    pub status: String,
    pub total: String,
    pub when: String,
}

pub struct DataRow {
    pub label: String,
    pub value: String,
    pub previous: String,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct OverviewPage {
    l: Layout,
    ranges: Vec<RangeLink>,
    range_label: &'static str,
    previous_label: &'static str,
    kpis: Vec<Kpi>,
    chart_svg: String,
    chart_title: String,
    chart_rows: Vec<DataRow>,
    currency: String,
    other_currencies: Vec<String>,
    top: Vec<TopProduct>,
    recent: Vec<RecentOrder>,
    has_products: bool,
}

struct Period {
    start: i64,
    end: i64,
}

#[derive(Default, Clone)]
struct Totals {
    /// (currency, gross, paid orders)
    sales: Vec<(String, i64, i64)>,
    /// (currency, amount, count)
    refunds: Vec<(String, i64, i64)>,
    downloads: i64,
    activations: i64,
}

impl Totals {
    fn gross(&self, c: &str) -> i64 {
        self.sales.iter().filter(|s| s.0 == c).map(|s| s.1).sum()
    }
    fn orders(&self) -> i64 {
        self.sales.iter().map(|s| s.2).sum()
    }
    fn refunded(&self, c: &str) -> i64 {
        self.refunds.iter().filter(|s| s.0 == c).map(|s| s.1).sum()
    }
    fn refund_count(&self) -> i64 {
        self.refunds.iter().map(|s| s.2).sum()
    }
}

async fn totals(app: &App, seller: &str, p: &Period) -> ApiResult<Totals> {
    let sales: Vec<(String, i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT currency, CAST(SUM(total) AS BIGINT), COUNT(*) FROM orders
             WHERE seller_id = $1 AND paid_at IS NOT NULL AND paid_at >= $2 AND paid_at < $3 GROUP BY currency",
            seller,
            p.start,
            p.end
        ))
        .await?;
    let refunds: Vec<(String, i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT o.currency, CAST(SUM(r.amount) AS BIGINT), COUNT(*) FROM refunds r JOIN orders o ON o.id = r.order_id
             WHERE o.seller_id = $1 AND r.created_at >= $2 AND r.created_at < $3 GROUP BY o.currency",
            seller,
            p.start,
            p.end
        ))
        .await?;
    let downloads = app
        .db
        .fetch_i64(sql!(
            "SELECT COUNT(*) FROM download_events e JOIN download_grants g ON g.id = e.grant_id JOIN orders o ON o.id = g.order_id
             WHERE o.seller_id = $1 AND e.outcome = 'started' AND e.at >= $2 AND e.at < $3",
            seller,
            p.start,
            p.end
        ))
        .await?;
    let activations = app
        .db
        .fetch_i64(sql!(
            "SELECT COUNT(*) FROM license_activations a JOIN license_keys l ON l.id = a.license_id JOIN orders o ON o.id = l.order_id
             WHERE o.seller_id = $1 AND a.created_at >= $2 AND a.created_at < $3",
            seller,
            p.start,
            p.end
        ))
        .await?;
    Ok(Totals {
        sales,
        refunds,
        downloads,
        activations,
    })
}

/// Gross sales per bucket of `bucket` seconds from `p.start`.
async fn series(app: &App, seller: &str, currency: &str, p: &Period, bucket: i64, n: usize) -> ApiResult<Vec<i64>> {
    let rows: Vec<(i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT CAST((paid_at - $2) / $4 AS BIGINT) AS b, CAST(SUM(total) AS BIGINT) FROM orders
             WHERE seller_id = $1 AND currency = $5 AND paid_at IS NOT NULL AND paid_at >= $2 AND paid_at < $3
             GROUP BY 1",
            seller,
            p.start,
            p.end,
            bucket,
            currency
        ))
        .await?;
    let mut out = vec![0_i64; n];
    for (b, v) in rows {
        if let Some(slot) = usize::try_from(b).ok().and_then(|i| out.get_mut(i)) {
            *slot += v;
        }
    }
    Ok(out)
}

/// Change from `prev` to `cur`; `up_is_good` says which way is good news.
fn delta(
    cur: i64,
    prev: i64,
    up_is_good: bool,
    fmt: &dyn Fn(i64) -> String,
    previous: &str,
) -> (String, &'static str, &'static str, String) {
    if cur == prev {
        let words = if cur == 0 {
            format!("none in {previous} either")
        } else {
            format!("the same as {previous}")
        };
        return ("—".into(), "flat", "flat", words);
    }
    let dir = if cur > prev { "up" } else { "down" };
    let tone = if (cur > prev) == up_is_good { "good" } else { "bad" };
    let words = format!(
        "{} from {} in {previous}",
        if cur > prev { "up" } else { "down" },
        fmt(prev)
    );
    if prev == 0 {
        return ("New".into(), tone, dir, words);
    }
    #[allow(clippy::cast_precision_loss)]
    let pct = ((cur - prev) as f64 / prev as f64 * 100.0).round();
    (
        format!("{}{pct:.0}%", if pct > 0.0 { "+" } else { "" }),
        tone,
        dir,
        words,
    )
}

fn kpi(
    id: &'static str,
    label: &'static str,
    (cur, prev): (i64, i64),
    up_is_good: bool,
    fmt: &dyn Fn(i64) -> String,
    sub: String,
    previous: &str,
) -> Kpi {
    let (delta, tone, dir, delta_words) = delta(cur, prev, up_is_good, fmt, previous);
    Kpi {
        id,
        label,
        value: fmt(cur),
        sub,
        delta,
        tone,
        dir,
        delta_words,
    }
}

/// `$1.2k`, `$300`, `¥12k`: short axis labels.
pub fn compact_money(minor: i64, currency: &str) -> String {
    let exp = crate::catalog::currency_exponent(currency).unwrap_or(2);
    let full = money(minor, currency);
    let major = minor / 10_i64.pow(exp);
    let symbol: String = full.chars().take_while(|c| !c.is_ascii_digit() && *c != '-').collect();
    let suffix = if symbol.is_empty() {
        format!(" {currency}")
    } else {
        String::new()
    };
    #[allow(clippy::cast_precision_loss)]
    let body = if major >= 1_000_000 {
        format!("{:.1}M", major as f64 / 1e6)
    } else if major >= 10_000 {
        format!("{}k", major / 1000)
    } else if major >= 1000 {
        format!("{:.1}k", major as f64 / 1e3)
    } else if minor % 10_i64.pow(exp) == 0 || exp == 0 {
        major.to_string()
    } else {
        return full;
    };
    format!("{symbol}{}{suffix}", body.replace(".0k", "k").replace(".0M", "M"))
}

fn count(n: i64) -> String {
    // Thousands separators for people.
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub async fn page(State(app): State<App>, dash: Dash, Query(q): Query<OverviewQuery>) -> ApiResult<Response> {
    let range = RANGES.iter().find(|r| r.key == q.range).unwrap_or(&RANGES[1]);
    let day = 86_400;
    let tomorrow = (now().div_euclid(day) + 1) * day;
    let cur = Period {
        start: tomorrow - range.days * day,
        end: tomorrow,
    };
    let prev = Period {
        start: cur.start - range.days * day,
        end: cur.start,
    };
    let seller = &dash.seller_id;
    let t_cur = totals(&app, seller, &cur).await?;
    let t_prev = totals(&app, seller, &prev).await?;

    // The period's main currency: most sales, else the newest product's, else USD.
    let mut currencies: Vec<(String, i64)> = t_cur.sales.iter().map(|s| (s.0.clone(), s.1)).collect();
    currencies.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let currency = match currencies.first() {
        Some((c, _)) => c.clone(),
        None => app
            .db
            .fetch_optional::<(String,)>(sql!(
                "SELECT currency FROM products WHERE seller_id = $1 ORDER BY id DESC LIMIT 1",
                seller
            ))
            .await?
            .map_or_else(|| "USD".to_string(), |r| r.0),
    };
    let other_currencies: Vec<String> = currencies
        .iter()
        .skip(1)
        .map(|(c, v)| format!("{} gross in {c}", money(*v, c)))
        .collect();
    let m = |v: i64| money(v, &currency);
    let n = |v: i64| count(v);
    let gross = t_cur.gross(&currency);
    let refunded = t_cur.refunded(&currency);
    let net = gross - refunded;
    let prev_net = t_prev.gross(&currency) - t_prev.refunded(&currency);
    let orders = t_cur.orders();
    let avg = if orders > 0 { gross / orders } else { 0 };
    let kpis = vec![
        kpi(
            "net-revenue",
            "Net revenue",
            (net, prev_net),
            true,
            &m,
            format!("{} gross · {} refunded", m(gross), m(refunded)),
            range.previous,
        ),
        kpi(
            "orders",
            "Orders",
            (orders, t_prev.orders()),
            true,
            &n,
            if orders > 0 {
                format!("{} average order", m(avg))
            } else {
                "No paid orders yet".into()
            },
            range.previous,
        ),
        kpi(
            "refunds",
            "Refunds",
            (refunded, t_prev.refunded(&currency)),
            false,
            &m,
            match t_cur.refund_count() {
                0 => "No refunds".into(),
                1 => "1 refund".into(),
                c => format!("{c} refunds"),
            },
            range.previous,
        ),
        kpi(
            "downloads",
            "Downloads",
            (t_cur.downloads, t_prev.downloads),
            true,
            &n,
            "Counted download starts".into(),
            range.previous,
        ),
        kpi(
            "activations",
            "Activations",
            (t_cur.activations, t_prev.activations),
            true,
            &n,
            "New devices activated".into(),
            range.previous,
        ),
    ];

    let bucket = range.bucket_days * day;
    let buckets = usize::try_from(range.days / range.bucket_days).unwrap_or(1);
    let values = series(&app, seller, &currency, &cur, bucket, buckets).await?;
    let previous = series(&app, seller, &currency, &prev, bucket, buckets).await?;
    let unit = if range.bucket_days == 1 { "day" } else { "week" };
    let points: Vec<Point> = (0..buckets)
        .map(|i| {
            let at = cur.start + i64::try_from(i).unwrap_or(0) * bucket;
            let long_label = if range.bucket_days == 1 {
                super::date(at)
            } else {
                format!("Week of {}", super::date(at))
            };
            Point {
                label: day_month(at),
                long_label,
                value: values[i],
                previous: previous[i],
            }
        })
        .collect();
    let best = points.iter().max_by_key(|p| p.value).filter(|p| p.value > 0);
    let chart_title = format!("Gross sales per {unit}, {} ({currency})", range.label.to_lowercase());
    let desc = match best {
        Some(b) => format!(
            "{} in gross sales over {} {unit}s; the best {unit} was {} with {}. The dashed line is {}: {}.",
            m(gross),
            buckets,
            b.long_label,
            m(b.value),
            range.previous,
            m(t_prev.gross(&currency))
        ),
        None => format!(
            "No sales in this period. {}: {}.",
            super::capitalize(range.previous),
            m(t_prev.gross(&currency))
        ),
    };
    let axis = |v: i64| compact_money(v, &currency);
    let min_step = 10_i64.pow(crate::catalog::currency_exponent(&currency).unwrap_or(2));
    // Two drawings of one chart: wide for desktops, narrow (larger text) for phones; CSS
    // shows one (the hidden one is out of the accessibility tree too).
    let chart_svg = BarChart {
        id: "sales-chart",
        class: "chart-wide",
        width: 760.0,
        height: 280.0,
        max_labels: 8,
        min_step,
        title: &chart_title,
        desc: &desc,
        points: &points,
        axis_fmt: &axis,
        value_fmt: &m,
        show_previous: true,
    }
    .render()
        + &BarChart {
            id: "sales-chart-compact",
            class: "chart-compact",
            width: 360.0,
            height: 240.0,
            max_labels: 4,
            min_step,
            title: &chart_title,
            desc: &desc,
            points: &points,
            axis_fmt: &axis,
            value_fmt: &m,
            show_previous: true,
        }
        .render();
    let chart_rows = points
        .iter()
        .map(|p| DataRow {
            label: p.long_label.clone(),
            value: m(p.value),
            previous: m(p.previous),
        })
        .collect();

    let top: Vec<(String, String, i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT i.product_id, i.title, CAST(SUM(i.quantity) AS BIGINT), CAST(SUM(i.total) AS BIGINT)
             FROM order_items i JOIN orders o ON o.id = i.order_id
             WHERE o.seller_id = $1 AND o.currency = $4 AND o.paid_at IS NOT NULL AND o.paid_at >= $2 AND o.paid_at < $3
               AND i.parent_item_id IS NULL
             GROUP BY i.product_id, i.title ORDER BY 4 DESC, 3 DESC LIMIT 5",
            seller,
            cur.start,
            cur.end,
            &currency
        ))
        .await?;
    let recent: Vec<(String, String, String, String, i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, email, status, currency, total, created_at FROM orders WHERE seller_id = $1 ORDER BY created_at DESC, id DESC LIMIT 6",
            seller
        ))
        .await?;
    let has_products = app
        .db
        .fetch_i64(sql!("SELECT COUNT(*) FROM products WHERE seller_id = $1", seller))
        .await?
        > 0;
    render(&OverviewPage {
        l: dash.layout("overview", "Overview").with_notice(q.notice.as_deref()),
        ranges: RANGES
            .iter()
            .map(|r| RangeLink {
                key: r.key,
                label: r.label,
                short: match r.key {
                    "7d" => "7 days",
                    "30d" => "30 days",
                    "90d" => "90 days",
                    _ => "12 months",
                },
                selected: r.key == range.key,
            })
            .collect(),
        range_label: range.label,
        previous_label: range.previous,
        kpis,
        chart_svg,
        chart_title,
        chart_rows,
        currency: currency.clone(),
        other_currencies,
        top: top
            .into_iter()
            .map(|(product_id, title, units, revenue)| TopProduct {
                title,
                product_id,
                units,
                revenue: money(revenue, &currency),
            })
            .collect(),
        recent: recent
            .into_iter()
            .map(|(id, email, status, cur, total, at)| RecentOrder {
                id,
                email,
                status,
                total: money(total, &cur),
                when: super::ago(at),
            })
            .collect(),
        has_products,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_axis_labels() {
        assert_eq!(compact_money(0, "USD"), "$0");
        assert_eq!(compact_money(5000, "USD"), "$50");
        assert_eq!(compact_money(125_000, "USD"), "$1.2k");
        assert_eq!(compact_money(100_000, "USD"), "$1k");
        assert_eq!(compact_money(2_500_000, "USD"), "$25k");
        assert_eq!(compact_money(250, "USD"), "$2.50");
        assert_eq!(compact_money(120_000, "SEK"), "1.2k SEK");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn deltas_say_which_way_is_good() {
        let f = |v: i64| v.to_string();
        assert_eq!(delta(150, 100, true, &f, "p").0, "+50%");
        assert_eq!(delta(150, 100, false, &f, "p").1, "bad");
        assert_eq!(delta(5, 0, true, &f, "p").0, "New");
        assert_eq!(delta(0, 0, true, &f, "p").1, "flat");
        assert_eq!(delta(50, 100, true, &f, "p").0, "-50%");
    }
}
