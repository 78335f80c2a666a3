//! The phi-accrual failure detector (Hayashibara, Défago, Yared, Katayama, 2004), as Akka and
//! Cassandra implement it.
//!
//! Instead of a yes/no timeout, the detector keeps a window of an agent's recent heartbeat
//! inter-arrival times and, at any moment, answers with phi: how unlikely it is that the next
//! heartbeat is still merely late. phi = -log10(P(a gap at least this long)), with the gaps
//! taken as normally distributed (mean and standard deviation of the window). phi 1 means a 10 %
//! chance the agent is only late, phi 8 one in 10⁸. Crossing [`PhiConfig::threshold`] makes the
//! agent suspected.
//!
//! Everything here is a pure function of the arrival times it is given: the clock is injected
//! (`now` arguments), so tests drive it with synthetic times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The detector's settings. The defaults are for agents heartbeating every 200 ms.
///
/// With them an agent is suspected about `mean + acceptable_pause + 5.2 × std` after its last
/// heartbeat arrived: for a steady 200 ms beat (std at its 50 ms floor), 200 + 250 + 260 ≈ 710 ms,
/// so a dead agent is suspected 510–710 ms after it died (it died somewhere in the 200 ms after
/// its last beat) — well under a second. Meanwhile a gap of 600 ms (two beats lost in a row, a
/// 400 ms stall of the agent or the broker) stays under the threshold: that is what the pause
/// and the standard-deviation floor buy. Longer, shard-wide stalls are the monitor's business,
/// not the detector's (see `tracker`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiConfig {
    /// phi at which an agent is suspected. 8 (Akka's cluster default) is a one in 10⁸ chance
    /// that a live agent is suspected for a gap drawn from its own history; every step of 1
    /// moves detection by well under one standard deviation, so this costs little time.
    pub threshold: f64,
    /// How many inter-arrival times the window keeps: 100 beats are 20 s of history at 200 ms,
    /// enough for a stable estimate that still follows a change of pace within seconds.
    pub window: usize,
    /// A floor under the window's standard deviation. A perfectly regular beat would otherwise
    /// make the slightest jitter look like death; 50 ms is a quarter of the interval, about
    /// the scheduling noise of a loaded machine.
    pub min_std_deviation: Duration,
    /// Added to the mean before phi is computed: a gap this much longer than usual is taken as
    /// normal. 250 ms covers one beat lost or skipped plus scheduling delay, so sporadic
    /// losses and short GC-like pauses never reach the threshold.
    pub acceptable_pause: Duration,
    /// The interval assumed before an agent has history: its first gap is judged against a
    /// mean of this and a standard deviation of a quarter of it (Akka's bootstrap).
    pub first_interval: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            window: 100,
            min_std_deviation: Duration::from_millis(50),
            acceptable_pause: Duration::from_millis(250),
            first_interval: Duration::from_millis(200),
        }
    }
}

/// One agent's detector: its last arrival and the window of gaps before it.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    config: PhiConfig,
    last: Option<Instant>,
    /// Inter-arrival times, in milliseconds.
    gaps: VecDeque<f64>,
    sum: f64,
    sum_squares: f64,
}

impl PhiDetector {
    pub fn new(config: PhiConfig) -> Self {
        let mut detector = Self {
            config,
            last: None,
            gaps: VecDeque::with_capacity(config.window.max(1)),
            sum: 0.0,
            sum_squares: 0.0,
        };
        // Akka's bootstrap: two samples around the expected interval give a mean of it and a
        // standard deviation of a quarter of it until real gaps push them out.
        let mean = millis(config.first_interval);
        let spread = mean / 4.0;
        detector.push(mean - spread);
        detector.push(mean + spread);
        detector
    }

    /// A heartbeat arrived at `now`. An arrival earlier than the last one (a clock that went
    /// backwards) only moves the last arrival.
    pub fn heartbeat(&mut self, now: Instant) {
        if let Some(last) = self.last
            && let Some(gap) = now.checked_duration_since(last)
        {
            self.push(millis(gap));
        }
        self.last = Some(now);
    }

    /// When the last heartbeat arrived.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last
    }

    /// The suspicion at `now`: 0 before the first heartbeat or right after one, growing
    /// without bound as silence lasts.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let elapsed = millis(now.saturating_duration_since(last));
        let n = self.gaps.len() as f64;
        let mean = self.sum / n;
        let variance = (self.sum_squares / n - mean * mean).max(0.0);
        let std = variance
            .sqrt()
            .max(millis(self.config.min_std_deviation))
            .max(f64::MIN_POSITIVE);
        phi(elapsed, mean + millis(self.config.acceptable_pause), std)
    }

    /// Whether phi at `now` has reached the threshold.
    pub fn is_suspected(&self, now: Instant) -> bool {
        self.phi(now) >= self.config.threshold
    }

    fn push(&mut self, gap: f64) {
        if self.gaps.len() >= self.config.window.max(1)
            && let Some(old) = self.gaps.pop_front()
        {
            self.sum -= old;
            self.sum_squares -= old * old;
        }
        self.gaps.push_back(gap);
        self.sum += gap;
        self.sum_squares += gap * gap;
    }
}

/// phi of a gap of `elapsed` given the gaps' mean and standard deviation (milliseconds), with
/// Akka's logistic approximation of the normal distribution's tail (error under 0.01 %):
/// P(gap ≥ elapsed) ≈ 1 / (1 + e^z), z = y (1.5976 + 0.070566 y²), y the gap in standard
/// deviations past the mean. So phi = log10(1 + e^z), computed as max(z, 0) + ln(1 + e^-|z|)
/// so that it stays finite and monotonic however far into the tail the silence goes.
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let z = y * (1.5976 + 0.070566 * y * y);
    (z.max(0.0) + (-z.abs()).exp().ln_1p()) / std::f64::consts::LN_10
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_millis(200);

    /// A detector fed `count` beats `interval` apart from `start`; returns the last arrival.
    fn beating(
        detector: &mut PhiDetector,
        start: Instant,
        count: u32,
        interval: Duration,
    ) -> Instant {
        let mut at = start;
        for i in 0..count {
            at = start + interval * i;
            detector.heartbeat(at);
        }
        at
    }

    /// The first time after `from` (in 1 ms steps, up to 10 s) the detector suspects.
    fn suspected_after(detector: &PhiDetector, from: Instant) -> Duration {
        (1..10_000)
            .map(Duration::from_millis)
            .find(|d| detector.is_suspected(from + *d))
            .expect("suspected within 10 s")
    }

    #[test]
    fn phi_grows_with_silence_and_resets_on_a_beat() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now();
        assert_eq!(d.phi(t0), 0.0, "no heartbeat yet");
        let last = beating(&mut d, t0, 50, BEAT);
        let mut previous = d.phi(last);
        for ms in (50..2000).step_by(50) {
            let now = last + Duration::from_millis(ms);
            assert!(d.phi(now) >= previous, "phi fell at {ms} ms");
            previous = d.phi(now);
        }
        assert!(previous > 30.0, "phi after 2 s of silence: {previous}");
        d.heartbeat(last + Duration::from_millis(2000));
        assert!(d.phi(last + Duration::from_millis(2000)) < 0.1);
    }

    #[test]
    fn a_dead_agent_beating_every_200ms_is_suspected_well_under_a_second() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now();
        let last = beating(&mut d, t0, 100, BEAT);
        let after = suspected_after(&d, last);
        // mean 200 + pause 250 + 5.2 × 50 ms.
        assert!(
            (Duration::from_millis(650)..Duration::from_millis(780)).contains(&after),
            "suspected {after:?} after the last beat"
        );
    }

    #[test]
    fn jittery_beats_and_two_lost_in_a_row_do_not_alarm() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now();
        // ±60 ms of deterministic jitter around 200 ms.
        let mut at = t0;
        for i in 0..200u64 {
            at += Duration::from_millis(140 + (i * 37) % 121);
            assert!(!d.is_suspected(at), "suspected at beat {i}");
            d.heartbeat(at);
        }
        // Two beats lost: the next arrives 600 ms later; phi stays under the threshold.
        for ms in (0..=600).step_by(10) {
            let now = at + Duration::from_millis(ms);
            assert!(
                !d.is_suspected(now),
                "suspected {ms} ms into a 600 ms gap: phi {}",
                d.phi(now)
            );
        }
    }

    #[test]
    fn a_slower_agent_is_judged_by_its_own_pace() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now();
        let last = beating(&mut d, t0, 100, Duration::from_secs(1));
        // 1 s beats: a 1.2 s gap is normal for it; it is suspected only past 1 s + pause + 5σ.
        assert!(!d.is_suspected(last + Duration::from_millis(1200)));
        let after = suspected_after(&d, last);
        assert!(after > Duration::from_millis(1400), "{after:?}");
    }

    #[test]
    fn the_window_forgets_old_gaps() {
        let config = PhiConfig {
            window: 10,
            ..PhiConfig::default()
        };
        let mut d = PhiDetector::new(config);
        let t0 = Instant::now();
        let last = beating(&mut d, t0, 50, Duration::from_secs(2));
        let slow = suspected_after(&d, last);
        // Back to 200 ms: after a window's worth of fast gaps the slow ones are gone.
        let last = beating(&mut d, last + BEAT, 11, BEAT);
        let fast = suspected_after(&d, last);
        assert!(
            fast < Duration::from_millis(800),
            "{fast:?} (slow pace: {slow:?})"
        );
        assert!(slow > Duration::from_secs(2), "{slow:?}");
    }

    #[test]
    fn the_threshold_and_pause_move_detection() {
        let t0 = Instant::now();
        let at = |config: PhiConfig| {
            let mut d = PhiDetector::new(config);
            let last = beating(&mut d, t0, 100, BEAT);
            suspected_after(&d, last)
        };
        let default = at(PhiConfig::default());
        let eager = at(PhiConfig {
            threshold: 3.0,
            ..PhiConfig::default()
        });
        let patient = at(PhiConfig {
            acceptable_pause: Duration::from_secs(1),
            ..PhiConfig::default()
        });
        assert!(eager < default, "{eager:?} vs {default:?}");
        let shift = patient - default;
        assert!(
            shift.abs_diff(Duration::from_millis(750)) <= Duration::from_millis(1),
            "{shift:?}"
        );
    }

    #[test]
    fn an_arrival_from_the_past_does_not_corrupt_the_window() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now() + Duration::from_secs(10);
        let last = beating(&mut d, t0, 20, BEAT);
        d.heartbeat(last - Duration::from_secs(5));
        assert!(d.phi(last).is_finite());
        d.heartbeat(last);
        assert!(!d.is_suspected(last + BEAT));
    }
}
