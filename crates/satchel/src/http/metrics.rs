//! Prometheus metrics, hand-rolled: request counts by route and status, a latency
//! histogram by route, and the job queue depth (read at scrape time).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// One route's figures: requests by (method, status), and its latency histogram.
#[derive(Default)]
struct RouteStats {
    requests: Vec<(axum::http::Method, u16, u64)>,
    latency: Histogram,
}

/// Every route's figures behind one lock; a request allocates nothing once its route,
/// method and status have been seen.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
    /// Body bytes the kernel sent straight from files (`sendfile`, [`super::front`]).
    sendfile_bytes: std::sync::atomic::AtomicU64,
    /// Of those, bytes whose pages were not in the page cache, sent from the blocking pool.
    sendfile_cold_bytes: std::sync::atomic::AtomicU64,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn observe(&self, method: &axum::http::Method, route: &str, status: u16, seconds: f64) {
        let Ok(mut m) = self.routes.lock() else { return };
        let stats = match m.get_mut(route) {
            Some(s) => s,
            None => m.entry(route.to_string()).or_default(),
        };
        match stats
            .requests
            .iter_mut()
            .find(|(me, st, _)| me == method && *st == status)
        {
            Some((_, _, n)) => *n += 1,
            None => stats.requests.push((method.clone(), status, 1)),
        }
        let h = &mut stats.latency;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Counts body bytes sent with `sendfile(2)`; `cold`: read from disk, off the runtime.
    pub fn sent_by_kernel(&self, bytes: u64, cold: bool) {
        self.sendfile_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        if cold {
            self.sendfile_cold_bytes
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn render(&self, job_depth: i64) -> String {
        let mut out = String::new();
        out.push_str("# HELP satchel_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE satchel_http_requests_total counter\n");
        if let Ok(m) = self.routes.lock() {
            for (route, stats) in m.iter() {
                let mut requests: Vec<_> = stats.requests.iter().collect();
                requests.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
                for (method, status, n) in requests {
                    let _ = writeln!(
                        out,
                        "satchel_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                        escape(method.as_str()),
                        escape(route)
                    );
                }
            }
        }
        out.push_str("# HELP satchel_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE satchel_http_request_duration_seconds histogram\n");
        if let Ok(m) = self.routes.lock() {
            for (route, stats) in m.iter() {
                let h = &stats.latency;
                let r = escape(route);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "satchel_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "satchel_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "satchel_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "satchel_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                    h.count
                );
            }
        }
        out.push_str("# HELP satchel_sendfile_bytes_total File bytes the kernel sent to clients directly (sendfile), never copied through Satchel.\n# TYPE satchel_sendfile_bytes_total counter\n");
        let _ = writeln!(
            out,
            "satchel_sendfile_bytes_total {}",
            self.sendfile_bytes.load(std::sync::atomic::Ordering::Relaxed)
        );
        out.push_str("# HELP satchel_sendfile_cold_bytes_total Of those, bytes not in the page cache when sent: read from disk on the blocking pool, not on the HTTP threads.\n# TYPE satchel_sendfile_cold_bytes_total counter\n");
        let _ = writeln!(
            out,
            "satchel_sendfile_cold_bytes_total {}",
            self.sendfile_cold_bytes.load(std::sync::atomic::Ordering::Relaxed)
        );
        out.push_str("# HELP satchel_job_queue_depth Jobs queued or running.\n# TYPE satchel_job_queue_depth gauge\n");
        let _ = writeln!(out, "satchel_job_queue_depth {job_depth}");
        out
    }
}
