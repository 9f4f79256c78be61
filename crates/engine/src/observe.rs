//! Judging criteria and alerts from samples.

use std::time::Duration;

use handoff_plan::model::{Alert, Metric, NoDataPolicy};
use handoff_plan::units::Measured;
use jiff::Timestamp;

use crate::events::Verdict;
use crate::graph::MetricCheck;

/// One sample of a metric: a value, no data, or the provider's error.
pub type Sample = Result<Option<f64>, String>;

/// Samples of one criterion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Values measured.
    pub values: u32,
    /// Values that violated the threshold.
    pub failed: u32,
    /// Samples with no data.
    pub empty: u32,
    /// Samples the provider failed to answer.
    pub errors: u32,
    /// Last value measured.
    pub last: Option<f64>,
    /// Last provider error.
    pub last_error: Option<String>,
}

/// The threshold of a criterion or alert in its metric's unit.
pub fn threshold(quantity: &handoff_plan::units::Quantity, metric: Option<&Metric>) -> f64 {
    metric.and_then(|m| quantity.in_unit(m.unit)).unwrap_or_else(|| quantity.base_value())
}

impl Tally {
    /// Counts one sample.
    pub fn add(&mut self, sample: Sample, holds: impl Fn(f64) -> bool) {
        match sample {
            Ok(Some(value)) => {
                self.values += 1;
                self.last = Some(value);
                if !holds(value) {
                    self.failed += 1;
                }
            }
            Ok(None) => self.empty += 1,
            Err(error) => {
                self.errors += 1;
                self.last_error = Some(error);
            }
        }
    }

    /// Whether the criterion already failed, whatever samples follow.
    pub fn failed_for_good(&self, criterion: &MetricCheck) -> bool {
        self.failed > criterion.failure_limit
    }

    /// The verdict and a one-line account of it.
    pub fn verdict(&self, criterion: &MetricCheck) -> (Verdict, String) {
        let counts = format!(
            "{} samples, {} violating (limit {}), {} without data, {} provider errors",
            self.values, self.failed, criterion.failure_limit, self.empty, self.errors
        );
        let last = self.last.map(|v| format!("; last value {}", Measured(v))).unwrap_or_default();
        let verdict = if self.failed_for_good(criterion) {
            Verdict::Fail
        } else if self.values == 0 && self.errors > 0 {
            return (
                Verdict::ProviderError,
                format!("{counts}; last error: {}", self.last_error.as_deref().unwrap_or("unknown")),
            );
        } else if self.values == 0 {
            match criterion.no_data {
                NoDataPolicy::Fail => Verdict::Fail,
                NoDataPolicy::Inconclusive => Verdict::Inconclusive,
                NoDataPolicy::Pass => Verdict::Pass,
            }
        } else if self.values < criterion.min_samples.unwrap_or(1) {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        };
        (verdict, format!("{counts}{last}"))
    }
}

/// Watches one alert: it fires once its condition has held for its `for` duration.
#[derive(Debug)]
pub struct AlertWatch {
    /// The alert.
    pub alert: Alert,
    /// Threshold in the metric's unit.
    pub threshold: f64,
    /// Time between samples.
    pub interval: Duration,
    /// When the condition started holding.
    holding_since: Option<Timestamp>,
    /// It fired (alerts fire once per phase).
    pub fired: bool,
}

impl AlertWatch {
    /// A watch of `alert`.
    pub fn new(alert: Alert, metric: Option<&Metric>) -> AlertWatch {
        let threshold = threshold(&alert.threshold, metric);
        let hold = alert.for_.as_ref().map_or(Duration::ZERO, |d| d.get());
        let interval = (hold / 4).clamp(Duration::from_secs(10), Duration::from_secs(60));
        AlertWatch { alert, threshold, interval, holding_since: None, fired: false }
    }

    /// Feeds a sample taken at `now`; returns the value when the alert fires.
    pub fn observe(&mut self, value: Option<f64>, now: Timestamp) -> Option<f64> {
        if self.fired {
            return None;
        }
        match value {
            Some(value) if self.alert.op.holds(value, self.threshold) => {
                let since = *self.holding_since.get_or_insert(now);
                let hold = self.alert.for_.as_ref().map_or(Duration::ZERO, |d| d.get());
                if now.duration_since(since).unsigned_abs() >= hold {
                    self.fired = true;
                    return Some(value);
                }
                None
            }
            _ => {
                self.holding_since = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{CriterionCheck, CriterionNode};

    /// Samples (`n` a value, `-` no data, `!` an error) fed to a criterion given in YAML.
    fn check(criterion: &str, samples: &str, expect: &str) {
        let criterion: handoff_plan::model::Criterion = serde_saphyr::from_str(criterion).unwrap();
        let CriterionCheck::Metric(check) = CriterionNode::compile(&criterion, &Default::default()).check else {
            panic!("not a metric criterion")
        };
        let mut tally = Tally::default();
        for sample in samples.split_whitespace() {
            let sample = match sample {
                "-" => Ok(None),
                "!" => Err("connection refused".to_owned()),
                value => Ok(Some(value.parse().unwrap())),
            };
            tally.add(sample, |v| check.holds(v));
        }
        let (verdict, detail) = tally.verdict(&check);
        assert_eq!(format!("{verdict:?}: {detail}"), expect);
    }

    const LAG: &str = "{id: lag, description: d, metric: lag, op: '<', threshold: 5, min_samples: 3, failure_limit: 1}";

    #[test]
    fn verdicts() {
        check(LAG, "1 2 3", "Pass: 3 samples, 0 violating (limit 1), 0 without data, 0 provider errors; last value 3");
        check(LAG, "1 9 3", "Pass: 3 samples, 1 violating (limit 1), 0 without data, 0 provider errors; last value 3");
        check(LAG, "9 9 3", "Fail: 3 samples, 2 violating (limit 1), 0 without data, 0 provider errors; last value 3");
        check(
            LAG,
            "1 -",
            "Inconclusive: 1 samples, 0 violating (limit 1), 1 without data, 0 provider errors; last value 1",
        );
        check(LAG, "- -", "Fail: 0 samples, 0 violating (limit 1), 2 without data, 0 provider errors");
        check(
            LAG,
            "! -",
            "ProviderError: 0 samples, 0 violating (limit 1), 1 without data, 1 provider errors; last error: connection refused",
        );
        let lenient = "{id: c, description: d, metric: m, op: '>=', threshold: 70%, no_data: pass}";
        check(lenient, "-", "Pass: 0 samples, 0 violating (limit 0), 1 without data, 0 provider errors");
        let waiting = "{id: c, description: d, metric: m, op: '>=', threshold: 70%, no_data: inconclusive}";
        check(waiting, "", "Inconclusive: 0 samples, 0 violating (limit 0), 0 without data, 0 provider errors");
        check(
            waiting,
            "69.9 -",
            "Fail: 1 samples, 1 violating (limit 0), 1 without data, 0 provider errors; last value 69.9",
        );
        check(
            waiting,
            "96.66666666666667",
            "Pass: 1 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 96.6667",
        );
    }

    #[test]
    fn an_alert_fires_once_after_holding_for_its_duration() {
        let alert: Alert =
            serde_saphyr::from_str("{name: a, metric: m, op: '>', threshold: 1%, for: 2m, severity: critical}")
                .unwrap();
        let mut watch = AlertWatch::new(alert, None);
        let t = |minutes: i64| Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_mins(minutes);
        assert_eq!(watch.observe(Some(5.0), t(0)), None);
        assert_eq!(watch.observe(Some(0.5), t(1)), None, "dropping below resets the hold");
        assert_eq!(watch.observe(Some(5.0), t(2)), None);
        assert_eq!(watch.observe(None, t(3)), None, "no data resets the hold");
        assert_eq!(watch.observe(Some(5.0), t(4)), None);
        assert_eq!(watch.observe(Some(6.0), t(6)), Some(6.0));
        assert_eq!(watch.observe(Some(7.0), t(7)), None, "fires once");
    }
}
