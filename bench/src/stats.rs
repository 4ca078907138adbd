//! Latency samples and the figures printed from them.

use std::time::Duration;

/// Latencies of one scenario plus the wall time they took.
#[derive(Debug, Default)]
pub struct Samples {
    /// Per-operation latencies.
    pub lat: Vec<Duration>,
    /// Wall-clock time of the whole run.
    pub wall: Duration,
}

impl Samples {
    /// Merges per-thread samples measured over the same wall time.
    pub fn merge(parts: Vec<Vec<Duration>>, wall: Duration) -> Samples {
        let mut lat: Vec<Duration> = parts.into_iter().flatten().collect();
        lat.sort_unstable();
        Samples { lat, wall }
    }

    /// Waits for client threads that each return their latencies, and
    /// merges them over the wall time since `start`.
    pub fn join(
        handles: Vec<std::thread::JoinHandle<Vec<Duration>>>,
        start: std::time::Instant,
    ) -> Samples {
        let parts = handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect();
        Samples::merge(parts, start.elapsed())
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.wall.as_secs_f64()
    }

    /// The q-quantile latency (0.5 = median).
    pub fn q(&self, q: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.lat.len() as f64 - 1.0) * q).round() as usize;
        self.lat[i]
    }
}

/// Runs `op` back to back for `dur`; the latency of each run.
pub fn timed(dur: Duration, mut op: impl FnMut()) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(100_000);
    let begin = std::time::Instant::now();
    while begin.elapsed() < dur {
        let t = std::time::Instant::now();
        op();
        lat.push(t.elapsed());
    }
    lat
}

/// "12.3 µs" style.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// "12.3k/s" style.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{:.1}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}
