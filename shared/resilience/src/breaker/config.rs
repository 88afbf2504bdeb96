use std::time::Duration;

use crate::error::ConfigError;

/// How many recent calls the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `size` calls.
    Count {
        /// Number of calls kept.
        size: u32,
    },
    /// The calls of the last `length`, kept in `buckets` slices of `length / buckets` each
    /// (the oldest slice expires as a whole, so the window covers between
    /// `length - length/buckets` and `length` of history).
    Time {
        /// Span of history.
        length: Duration,
        /// Number of slices; more slices expire history more smoothly.
        buckets: u32,
    },
}

impl SlidingWindow {
    /// A window over the last `size` calls.
    pub fn count(size: u32) -> Self {
        SlidingWindow::Count { size }
    }

    /// A window over the calls of the last `length`, in 10 slices.
    pub fn time(length: Duration) -> Self {
        SlidingWindow::Time {
            length,
            buckets: 10,
        }
    }
}

/// Validated circuit breaker settings; build with [`BreakerConfig::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) wait_in_open: Duration,
    pub(crate) permitted_calls_in_half_open: u32,
}

impl Default for BreakerConfig {
    /// 50 % failures over the last 100 calls (at least 20), 5 s open, 3 trial calls.
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: 0.5,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            window: SlidingWindow::Count { size: 100 },
            minimum_calls: 20,
            wait_in_open: Duration::from_secs(5),
            permitted_calls_in_half_open: 3,
        }
    }
}

impl BreakerConfig {
    /// Starts from the [`Default`] settings.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: BreakerConfig::default(),
        }
    }

    /// Failure rate (0, 1] at or above which the breaker opens.
    pub fn failure_rate_threshold(&self) -> f64 {
        self.failure_rate_threshold
    }

    /// Calls at least this long count as slow (`None`: slow calls are not tracked).
    pub fn slow_call_duration(&self) -> Option<Duration> {
        self.slow_call_duration
    }

    /// Slow-call rate (0, 1] at or above which the breaker opens.
    pub fn slow_call_rate_threshold(&self) -> f64 {
        self.slow_call_rate_threshold
    }

    /// The sliding window.
    pub fn window(&self) -> SlidingWindow {
        self.window
    }

    /// Calls needed in the window before the rates are evaluated.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// How long the breaker stays open before letting trial calls through.
    pub fn wait_in_open(&self) -> Duration {
        self.wait_in_open
    }

    /// Trial calls let through in half-open; their outcome decides open or closed.
    pub fn permitted_calls_in_half_open(&self) -> u32 {
        self.permitted_calls_in_half_open
    }
}

/// Builder for [`BreakerConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

impl BreakerConfigBuilder {
    /// Opens when the failure rate in the window reaches `rate` (0 < rate <= 1).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.config.failure_rate_threshold = rate;
        self
    }

    /// Calls lasting `duration` or more are slow; opens when the slow rate reaches `rate`.
    pub fn slow_call_threshold(mut self, duration: Duration, rate: f64) -> Self {
        self.config.slow_call_duration = Some(duration);
        self.config.slow_call_rate_threshold = rate;
        self
    }

    /// The window the rates are computed over.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// Shorthand for `sliding_window(SlidingWindow::count(size))`.
    pub fn count_window(self, size: u32) -> Self {
        self.sliding_window(SlidingWindow::count(size))
    }

    /// Shorthand for `sliding_window(SlidingWindow::time(length))`.
    pub fn time_window(self, length: Duration) -> Self {
        self.sliding_window(SlidingWindow::time(length))
    }

    /// Rates are not evaluated before the window holds `calls` calls.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How long to reject calls once open.
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// How many trial calls half-open lets through.
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.config.permitted_calls_in_half_open = calls;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<BreakerConfig, ConfigError> {
        let c = self.config;
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        if !rate_ok(c.failure_rate_threshold) {
            return Err(ConfigError::new(
                "failure_rate_threshold",
                format!("{} is not in (0, 1]", c.failure_rate_threshold),
            ));
        }
        if !rate_ok(c.slow_call_rate_threshold) {
            return Err(ConfigError::new(
                "slow_call_rate_threshold",
                format!("{} is not in (0, 1]", c.slow_call_rate_threshold),
            ));
        }
        if c.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("slow_call_duration", "must be positive"));
        }
        if c.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        match c.window {
            SlidingWindow::Count { size } => {
                if size == 0 {
                    return Err(ConfigError::new("window", "size must be at least 1"));
                }
                if c.minimum_calls > size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!(
                            "{} exceeds the window size {size}: the breaker could never open",
                            c.minimum_calls
                        ),
                    ));
                }
            }
            SlidingWindow::Time { length, buckets } => {
                if !(1..=1000).contains(&buckets) {
                    return Err(ConfigError::new("window", "buckets must be in 1..=1000"));
                }
                if length < Duration::from_millis(u64::from(buckets)) {
                    return Err(ConfigError::new(
                        "window",
                        "length must be at least 1 ms per bucket",
                    ));
                }
            }
        }
        if c.wait_in_open.is_zero() {
            return Err(ConfigError::new("wait_in_open", "must be positive"));
        }
        if c.permitted_calls_in_half_open == 0 {
            return Err(ConfigError::new(
                "permitted_calls_in_half_open",
                "must be at least 1",
            ));
        }
        Ok(c)
    }
}
