//! Phi-accrual failure detection over heartbeat arrivals (Hayashibara et al.; see PROTOCOL.md).
//!
//! For each peer we keep a window of the intervals between heartbeat *increases* observed in
//! gossip, and compute `phi = -log10(P(next increase later than now))` under a normal model
//! whose mean is padded by an acceptable pause and whose deviation has a floor. A peer whose phi
//! passes the threshold is down. Pure: time is an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tuning of the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// `phi` above which a peer counts as down.
    pub phi_threshold: f64,
    /// Intervals remembered per peer.
    pub window: usize,
    /// Interval assumed before any has been measured (the gossip interval).
    pub initial_interval: Duration,
    /// Floor on the standard deviation, so a very regular peer is not judged on microseconds.
    pub min_std_dev: Duration,
    /// Pause tolerated on top of the mean (GC, a busy core, a lost message).
    pub acceptable_pause: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            phi_threshold: 8.0,
            window: 64,
            initial_interval: Duration::from_millis(500),
            min_std_dev: Duration::from_millis(250),
            acceptable_pause: Duration::from_millis(1500),
        }
    }
}

/// Heartbeat-arrival history of one peer.
#[derive(Debug, Clone)]
pub struct ArrivalWindow {
    intervals_ms: VecDeque<f64>,
    last_arrival: Instant,
}

impl ArrivalWindow {
    pub fn new(now: Instant) -> Self {
        Self {
            intervals_ms: VecDeque::new(),
            last_arrival: now,
        }
    }

    /// Records a heartbeat increase seen at `now`.
    pub fn heartbeat(&mut self, now: Instant, config: &DetectorConfig) {
        let interval = now.saturating_duration_since(self.last_arrival);
        self.last_arrival = now;
        // A gap far beyond the threshold is a revival, not a sample of the normal rhythm.
        if interval > config.initial_interval * 20 {
            self.intervals_ms.clear();
            return;
        }
        if self.intervals_ms.len() == config.window.max(1) {
            self.intervals_ms.pop_front();
        }
        self.intervals_ms.push_back(interval.as_secs_f64() * 1000.0);
    }

    /// Forgets the history: used when a peer comes back after being down.
    pub fn reset(&mut self, now: Instant) {
        self.intervals_ms.clear();
        self.last_arrival = now;
    }

    pub fn last_arrival(&self) -> Instant {
        self.last_arrival
    }

    /// The suspicion level at `now`.
    pub fn phi(&self, now: Instant, config: &DetectorConfig) -> f64 {
        let elapsed_ms = now
            .saturating_duration_since(self.last_arrival)
            .as_secs_f64()
            * 1000.0;
        let (mean, std_dev) = if self.intervals_ms.is_empty() {
            let initial = config.initial_interval.as_secs_f64() * 1000.0;
            (initial, initial / 4.0)
        } else {
            let n = self.intervals_ms.len() as f64;
            let mean = self.intervals_ms.iter().sum::<f64>() / n;
            let variance = self
                .intervals_ms
                .iter()
                .map(|x| (x - mean) * (x - mean))
                .sum::<f64>()
                / n;
            (mean, variance.sqrt())
        };
        let mean = mean + config.acceptable_pause.as_secs_f64() * 1000.0;
        let std_dev = std_dev.max(config.min_std_dev.as_secs_f64() * 1000.0);
        phi(elapsed_ms, mean, std_dev)
    }
}

/// `-log10(1 - F(elapsed))` for a normal distribution, with the logistic approximation of the
/// CDF that Akka and Cassandra use (accurate to ~1e-4 and cheap).
fn phi(elapsed_ms: f64, mean_ms: f64, std_dev_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_dev_ms;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed_ms > mean_ms {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    // p_later underflows to 0 for very long silences: phi is then "infinitely" suspicious.
    if p_later <= f64::MIN_POSITIVE {
        f64::INFINITY
    } else {
        -p_later.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_heartbeats_keep_phi_low_and_silence_raises_it() {
        let config = DetectorConfig::default();
        let start = Instant::now();
        let mut window = ArrivalWindow::new(start);
        let mut now = start;
        for _ in 0..50 {
            now += Duration::from_millis(500);
            window.heartbeat(now, &config);
        }
        assert!(window.phi(now + Duration::from_millis(600), &config) < 1.0);
        assert!(window.phi(now + Duration::from_millis(1500), &config) < config.phi_threshold);
        assert!(window.phi(now + Duration::from_secs(5), &config) > config.phi_threshold);
        // phi is monotone in silence.
        let mut last = 0.0;
        for ms in (0..10_000).step_by(250) {
            let value = window.phi(now + Duration::from_millis(ms), &config);
            assert!(value >= last, "phi fell from {last} to {value} at {ms} ms");
            last = value;
        }
    }

    #[test]
    fn threshold_crossing_time_is_a_few_seconds() {
        let config = DetectorConfig::default();
        let start = Instant::now();
        let mut window = ArrivalWindow::new(start);
        let mut now = start;
        for _ in 0..20 {
            now += Duration::from_millis(500);
            window.heartbeat(now, &config);
        }
        let crossing = (0..20_000)
            .step_by(10)
            .find(|ms| window.phi(now + Duration::from_millis(*ms), &config) > config.phi_threshold)
            .expect("phi crosses the threshold");
        assert!(
            (2_000..5_000).contains(&crossing),
            "crossed at {crossing} ms"
        );
    }
}
