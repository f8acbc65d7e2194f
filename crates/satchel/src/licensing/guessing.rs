//! Key guessing: many license calls with unknown or malformed keys from one client network
//! (/24 IPv4, /64 IPv6) within a window.
//!
//! Cheap by construction: misses are counted in memory per network (bounded: at most
//! [`MAX_NETWORKS`] tracked at once), nothing is written until a network crosses the
//! threshold, and then exactly one `abuse_flags` row is raised for that window
//! (`subject_kind` 'network', `subject_id` the prefix, `seller_id` '' = store-wide, reason
//! `license_key_guessing`, `detail` the counts). While flagged — the rest of that window —
//! the network gets one license call per `guess_throttle_secs` (429 `rate_limited` with
//! `Retry-After` otherwise), on top of the ordinary per-network rate limit. A guesser who
//! keeps going crosses the threshold again in the next window and is flagged again.
//!
//! Counters are per instance; scaled out, each instance counts what it sees, and the insert
//! skips a flag already open for the same network within the window, so instances (or a
//! restart) do not pile up rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::db::{DbError, Exec};
use crate::ids::{new_id, now};
use crate::sql;

/// Most networks tracked at once; beyond it, stale and harmless entries are dropped first.
pub const MAX_NETWORKS: usize = 10_000;

/// The abuse flag's reason.
pub const REASON: &str = "license_key_guessing";

/// Why a call named no license.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Well-formed key, no such license.
    Unknown,
    /// Not shaped like a key.
    Malformed,
    /// Shaped like a key, wrong check character.
    BadCheck,
}

impl Miss {
    /// The miss an answer's error or validation code stands for, if any.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "NOT_FOUND" => Some(Miss::Unknown),
            "invalid_key" => Some(Miss::Malformed),
            "bad_check_character" => Some(Miss::BadCheck),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Misses within `window` that flag a network (0 turns detection off).
    pub threshold: u32,
    pub window: Duration,
    /// While flagged: one license call per this long.
    pub throttle: Duration,
}

#[derive(Debug)]
struct Network {
    window_start: Instant,
    window_started_unix: i64,
    unknown: u32,
    malformed: u32,
    bad_check: u32,
    /// Flag raised in this window.
    raised: bool,
    /// Throttled until then.
    throttled_until: Option<Instant>,
    /// The throttle's allowance (0–1 call) and when it was last topped up.
    tokens: f64,
    tokens_at: Instant,
}

impl Network {
    fn misses(&self) -> u32 {
        self.unknown + self.malformed + self.bad_check
    }
    fn throttled(&self, now: Instant) -> bool {
        self.throttled_until.is_some_and(|u| u > now)
    }
}

/// In-memory miss counters per network.
#[derive(Debug)]
pub struct GuessWatch {
    limits: Limits,
    nets: Mutex<HashMap<String, Network>>,
    /// Milliseconds since `epoch` until which some network may be throttled: lets calls
    /// skip the lock entirely when nobody is.
    throttle_horizon_ms: AtomicU64,
    epoch: Instant,
    max_networks: usize,
}

impl GuessWatch {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_NETWORKS)
    }

    pub fn with_capacity(limits: Limits, max_networks: usize) -> Self {
        Self {
            limits,
            nets: Mutex::new(HashMap::new()),
            throttle_horizon_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            max_networks: max_networks.max(1),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether any network may be throttled now (no lock: lets callers skip the work).
    pub fn throttling(&self, now: Instant) -> bool {
        self.limits.threshold > 0 && self.ms(now) < self.throttle_horizon_ms.load(Ordering::Relaxed)
    }

    /// Before a license call from `network`: `Err(seconds)` to wait when it is flagged and
    /// has used its allowance.
    pub fn admit(&self, network: &str, now: Instant) -> Result<(), u64> {
        if !self.throttling(now) {
            return Ok(());
        }
        let Ok(mut nets) = self.nets.lock() else {
            return Ok(());
        };
        let Some(n) = nets.get_mut(network).filter(|n| n.throttled(now)) else {
            return Ok(());
        };
        let interval = self.limits.throttle.as_secs_f64().max(0.001);
        n.tokens = (n.tokens + now.saturating_duration_since(n.tokens_at).as_secs_f64() / interval).min(1.0);
        n.tokens_at = now;
        if n.tokens >= 1.0 {
            n.tokens -= 1.0;
            Ok(())
        } else {
            // Whole milliseconds first, so float dust never adds a second.
            let wait_ms = ((1.0 - n.tokens) * interval * 1000.0).round();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err((wait_ms / 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Counts a call from `network` that named no license. Returns the flag's detail when
    /// this miss crosses the threshold for the first time in the network's window.
    pub fn miss(&self, network: &str, kind: Miss, now: Instant) -> Option<Value> {
        if self.limits.threshold == 0 {
            return None;
        }
        let mut nets = self.nets.lock().ok()?;
        if !nets.contains_key(network) && nets.len() >= self.max_networks {
            self.make_room(&mut nets, now);
        }
        let window = self.limits.window;
        let n = nets.entry(network.to_string()).or_insert_with(|| Network {
            window_start: now,
            window_started_unix: crate::ids::now(),
            unknown: 0,
            malformed: 0,
            bad_check: 0,
            raised: false,
            throttled_until: None,
            tokens: 0.0,
            tokens_at: now,
        });
        if now.saturating_duration_since(n.window_start) >= window {
            n.window_start = now;
            n.window_started_unix = crate::ids::now();
            (n.unknown, n.malformed, n.bad_check, n.raised) = (0, 0, 0, false);
        }
        match kind {
            Miss::Unknown => n.unknown += 1,
            Miss::Malformed => n.malformed += 1,
            Miss::BadCheck => n.bad_check += 1,
        }
        if n.raised || n.misses() < self.limits.threshold {
            return None;
        }
        n.raised = true;
        let until = now + window;
        n.throttled_until = Some(until);
        (n.tokens, n.tokens_at) = (0.0, now);
        self.throttle_horizon_ms.fetch_max(self.ms(until), Ordering::Relaxed);
        let window_secs = window.as_secs();
        Some(json!({
            "network": network,
            "misses": n.misses(),
            "unknown_keys": n.unknown,
            "malformed_keys": n.malformed,
            "bad_check_characters": n.bad_check,
            "threshold": self.limits.threshold,
            "window_secs": window_secs,
            "window_started_at": n.window_started_unix,
            "throttled_until": crate::ids::now() + i64::try_from(window_secs).unwrap_or(i64::MAX / 2),
            "throttle_secs_per_call": self.limits.throttle.as_secs(),
        }))
    }

    /// Drops networks whose window is over and that are not throttled; if that is not
    /// enough, every network not throttled (their counts start again).
    fn make_room(&self, nets: &mut HashMap<String, Network>, now: Instant) {
        let window = self.limits.window;
        nets.retain(|_, n| n.throttled(now) || now.saturating_duration_since(n.window_start) < window);
        if nets.len() >= self.max_networks {
            nets.retain(|_, n| n.throttled(now));
        }
        if nets.len() >= self.max_networks {
            // Only throttled networks left: keep the newest half of the throttles.
            let mut ends: Vec<Instant> = nets.values().filter_map(|n| n.throttled_until).collect();
            ends.sort_unstable();
            if let Some(&cut) = ends.get(ends.len() / 2) {
                nets.retain(|_, n| n.throttled_until.is_some_and(|u| u >= cut));
            }
        }
    }

    /// Networks tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.nets.lock().map_or(0, |n| n.len())
    }
}

/// Raises the store-wide abuse flag for `network` (unless one for it is already open from
/// the last `window_secs`). Returns whether a row was inserted.
pub async fn raise_flag(e: &impl Exec, network: &str, detail: &Value, window_secs: i64) -> Result<bool, DbError> {
    let t = now();
    let n = e
        .execute(sql!(
            "INSERT INTO abuse_flags (id, seller_id, subject_kind, subject_id, reason, detail, status, created_at)
             SELECT $1, '', 'network', $2, $3, $4, 'open', $5
             WHERE NOT EXISTS (SELECT 1 FROM abuse_flags WHERE subject_kind = 'network' AND subject_id = $2
                 AND reason = $3 AND status = 'open' AND created_at > $6)",
            new_id("flag"),
            network,
            REASON,
            detail.to_string(),
            t,
            t - window_secs
        ))
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> Limits {
        Limits {
            threshold: 5,
            window: Duration::from_secs(600),
            throttle: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_network_is_flagged_once_per_window_and_throttled_while_flagged() {
        let w = GuessWatch::new(limits());
        let t0 = Instant::now();
        let net = "203.0.113.0/24";
        for i in 0..4 {
            assert!(w.admit(net, t0).is_ok());
            let kind = [Miss::Unknown, Miss::Malformed, Miss::BadCheck, Miss::Unknown][i];
            assert_eq!(w.miss(net, kind, t0), None);
        }
        let detail = w.miss(net, Miss::Unknown, t0).expect("flag at the threshold");
        assert_eq!(
            (
                detail["misses"].as_u64(),
                detail["unknown_keys"].as_u64(),
                detail["malformed_keys"].as_u64()
            ),
            (Some(5), Some(3), Some(1))
        );
        assert_eq!(detail["bad_check_characters"], 1);
        assert_eq!(w.admit(net, t0), Err(10), "throttled at once");
        assert!(w.admit("198.51.100.0/24", t0).is_ok(), "other networks are not");
        // One call per 10 s while flagged.
        assert!(w.admit(net, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(w.admit(net, t0 + Duration::from_secs(14)), Err(6));
        // More misses in the same window raise nothing new.
        for _ in 0..20 {
            assert_eq!(w.miss(net, Miss::Unknown, t0 + Duration::from_secs(30)), None);
        }
        // The throttle ends with the window; the next window counts afresh and flags again.
        let later = t0 + Duration::from_secs(601);
        assert!(w.admit(net, later).is_ok());
        assert!(w.admit(net, later).is_ok(), "no longer throttled");
        for _ in 0..4 {
            assert_eq!(w.miss(net, Miss::Unknown, later), None);
        }
        assert!(w.miss(net, Miss::Unknown, later).is_some());
    }

    #[test]
    fn memory_stays_bounded_and_throttles_survive_pressure() {
        let w = GuessWatch::with_capacity(limits(), 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            w.miss("guesser", Miss::Unknown, t0);
        }
        assert!(w.admit("guesser", t0).is_err());
        for i in 0..10_000 {
            w.miss(&format!("10.{}.{}.0/24", i / 256, i % 256), Miss::Unknown, t0);
            assert!(w.tracked() <= 100);
        }
        assert!(w.admit("guesser", t0).is_err(), "the flagged network is kept");
    }

    #[test]
    fn threshold_zero_turns_detection_off() {
        let w = GuessWatch::new(Limits {
            threshold: 0,
            ..limits()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(w.miss("n", Miss::Unknown, t0), None);
            assert!(w.admit("n", t0).is_ok());
        }
        assert_eq!(w.tracked(), 0);
    }
}
