//! Value types with units: durations, thresholds and calendar dates.
//!
//! Each keeps the text the author wrote (for messages and rendering) next to its parsed
//! value, and declares a JSON Schema pattern that accepts exactly what its parser accepts.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Pattern of a duration: one or more `<integer><unit>` parts, units `ms s m h d w`.
pub const DURATION_PATTERN: &str = r"^[0-9]+(ms|s|m|h|d|w)( [0-9]+(ms|s|m|h|d|w))*$";

/// The JSON Schema `format` of a duration whose bound the pattern cannot express: the
/// checker registers [`Duration::within_bounds`] under this name.
pub const DURATION_FORMAT: &str = "handoff-duration";

/// The longest duration a plan may use, in days (100 years): every sum of plan dates and
/// durations stays inside the calendar and every clock's arithmetic.
pub const MAX_DURATION_DAYS: u64 = 36_525;

/// [`MAX_DURATION_DAYS`] in milliseconds.
const MAX_DURATION_MS: u64 = MAX_DURATION_DAYS * 86_400_000;

/// A length of time written with units: `300ms`, `5m`, `14d`, `1h 30m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

/// Why a text is not a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationError {
    /// It does not match [`DURATION_PATTERN`].
    Malformed,
    /// It is longer than [`MAX_DURATION_DAYS`].
    TooLong,
}

impl Duration {
    /// Parses `5m`, `14d`, `1h 30m`; `None` when the text is not a duration or is longer
    /// than [`MAX_DURATION_DAYS`].
    pub fn parse(text: &str) -> Option<Duration> {
        Self::read(text).ok()
    }

    fn read(text: &str) -> Result<Duration, DurationError> {
        let millis = Self::millis(text)?;
        Ok(Duration { text: text.to_owned(), value: std::time::Duration::from_millis(millis) })
    }

    /// False only for a well-formed duration longer than [`MAX_DURATION_DAYS`] (a malformed
    /// one is the pattern's to report).
    pub fn within_bounds(text: &str) -> bool {
        Self::millis(text) != Err(DurationError::TooLong)
    }

    /// The text's length in milliseconds, every sum checked before it is made.
    fn millis(text: &str) -> Result<u64, DurationError> {
        let mut total: u64 = 0;
        for part in text.split(' ') {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            let unit: u64 = match &part[digits..] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                _ => return Err(DurationError::Malformed),
            };
            if digits == 0 {
                return Err(DurationError::Malformed);
            }
            // Leading zeros aside, more than 20 digits overflow u64 whatever the unit.
            let number = part[..digits].trim_start_matches('0');
            let count: u64 = if number.is_empty() { 0 } else { number.parse().map_err(|_| DurationError::TooLong)? };
            total = count.checked_mul(unit).and_then(|ms| total.checked_add(ms)).ok_or(DurationError::TooLong)?;
        }
        if total > MAX_DURATION_MS { Err(DurationError::TooLong) } else { Ok(total) }
    }

    /// The duration as a standard library value.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }

    /// The duration in seconds.
    pub fn as_secs_f64(&self) -> f64 {
        self.value.as_secs_f64()
    }

    /// The text as written in the plan.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match Duration::read(&text) {
            Ok(duration) => Ok(duration),
            Err(DurationError::TooLong) => Err(de::Error::custom(too_long(&text))),
            Err(DurationError::Malformed) => Err(de::Error::custom(format!(
                "`{text}` is not a duration; write e.g. `300ms`, `5m`, `14d` or `1h 30m`"
            ))),
        }
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "format": DURATION_FORMAT,
            "description": "A duration: integer and unit (ms, s, m, h, d, w), e.g. `300ms`, `5m`, `14d`, `1h 30m`; at most 100 years (`36525d`).",
            "examples": ["5m", "1h", "14d"]
        })
    }
}

/// The message for a duration longer than [`MAX_DURATION_DAYS`].
pub fn too_long(text: &str) -> String {
    format!("`{text}` is longer than {MAX_DURATION_DAYS} days (100 years), the longest duration a plan may use")
}

/// What a quantity measures, with its value in the dimension's base unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dimension {
    /// A percentage, 0–100.
    Percent,
    /// A time, in seconds.
    Time,
    /// A plain number.
    Number,
}

impl Dimension {
    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Percent => "a percentage",
            Dimension::Time => "a time",
            Dimension::Number => "a plain number",
        }
    }
}

/// Pattern of a quantity written as a string: a number with an optional unit.
pub const QUANTITY_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?(%|ms|s|m|h|d|w)?$";

/// A threshold with its unit: `99.9%`, `300ms`, `5m`, `0.5`, `10`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    dimension: Dimension,
    /// Value in the dimension's base unit (percent points, seconds, or the number).
    base: f64,
}

impl Quantity {
    /// Parses a quantity; `None` when the text is not one.
    pub fn parse(text: &str) -> Option<Quantity> {
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        if !number.is_finite() {
            return None;
        }
        let (dimension, factor) = match unit {
            "" => (Dimension::Number, 1.0),
            "%" => (Dimension::Percent, 1.0),
            "ms" => (Dimension::Time, 0.001),
            "s" => (Dimension::Time, 1.0),
            "m" => (Dimension::Time, 60.0),
            "h" => (Dimension::Time, 3600.0),
            "d" => (Dimension::Time, 86400.0),
            "w" => (Dimension::Time, 604_800.0),
            _ => return None,
        };
        Some(Quantity { text: text.to_owned(), dimension, base: number * factor })
    }

    /// What the quantity measures.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// The value in the dimension's base unit (percent points, seconds, or the number).
    pub fn base_value(&self) -> f64 {
        self.base
    }

    /// The value converted to a metric's unit, or `None` when the dimensions differ.
    /// A plain number is taken to be in the metric's own unit.
    pub fn in_unit(&self, unit: crate::model::Unit) -> Option<f64> {
        use crate::model::Unit;
        match (self.dimension, unit) {
            (Dimension::Number, _) => Some(self.base),
            (Dimension::Percent, Unit::Percent) => Some(self.base),
            (Dimension::Time, Unit::Seconds) => Some(self.base),
            (Dimension::Time, Unit::Ms) => Some(self.base * 1000.0),
            _ => None,
        }
    }

    /// The text as written in the plan.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A value handoff measured (a metric sample, an alert's reading), printed for people: six
/// significant digits at most, without trailing zeros — `96.66666666666667` prints as
/// `96.6667`, `3.0` as `3`, `0.0000123456789` as `1.23457e-5`. Every human-facing line
/// that shows a measured number prints it through this; machine formats (JSON, `/metrics`)
/// keep the full value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured(pub f64);

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: i32 = 6;
        let value = self.0;
        if value == 0.0 {
            return f.write_str("0");
        }
        if !value.is_finite() {
            return write!(f, "{value}");
        }
        // Exact: a finite non-zero f64's log10 lies within ±324.
        let magnitude = value.abs().log10().floor() as i32;
        if !(-4..15).contains(&magnitude) {
            let text = format!("{:.*e}", (DIGITS - 1) as usize, value);
            return match text.split_once('e') {
                Some((mantissa, exponent)) => write!(f, "{}e{exponent}", trim_zeros(mantissa)),
                None => f.write_str(&text),
            };
        }
        let decimals = usize::try_from(DIGITS - 1 - magnitude).unwrap_or(0);
        f.write_str(trim_zeros(&format!("{value:.decimals$}")))
    }
}

/// A decimal number's text without trailing zeros after its point (nor a bare point).
fn trim_zeros(text: &str) -> &str {
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or a number with a unit such as `99.9%`, `300ms`, `5m`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visit)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["number", "string"],
            "pattern": QUANTITY_PATTERN,
            "description": "A number with an optional unit: `%`, `ms`, `s`, `m`, `h`, `d`, `w` (e.g. `99.9%`, `300ms`, `5m`, `10`).",
            "examples": ["99.9%", "200ms", "5m", 0]
        })
    }
}

/// A calendar date, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub jiff::civil::Date);

impl Date {
    /// This date plus a duration, rounded down to whole days; `None` past the calendar's
    /// last day (9999-12-31).
    pub fn plus(self, duration: &Duration) -> Option<Date> {
        let days = i64::try_from(duration.get().as_secs() / 86_400).ok()?;
        let span = jiff::Span::new().try_days(days).ok()?;
        self.0.checked_add(span).ok().map(Date)
    }

    /// Whole days from `self` to `later` (negative when `later` is earlier).
    pub fn days_until(self, later: Date) -> i64 {
        (later.0 - self.0).get_days().into()
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<jiff::civil::Date>()
            .map(Date)
            .map_err(|e| de::Error::custom(format!("`{text}` is not a date (YYYY-MM-DD): {e}")))
    }
}

impl JsonSchema for Date {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Date".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date",
            "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
            "description": "A calendar date, `YYYY-MM-DD`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: f64, expect: &str) {
        assert_eq!(Measured(value).to_string(), expect, "{value:?}");
    }

    #[test]
    fn measured_values_print_with_six_significant_digits_at_most() {
        check(96.66666666666667, "96.6667");
        check(3.0, "3");
        check(-0.0, "0");
        check(0.5, "0.5");
        check(99.985, "99.985");
        check(99.9999999, "100");
        check(-12.345678, "-12.3457");
        check(1_234_567.891, "1234568");
        check(0.000_123_456_789, "0.000123457");
        check(0.000_012_345_678_9, "1.23457e-5");
        check(2.5e20, "2.5e20");
        check(f64::NAN, "NaN");
        check(f64::INFINITY, "inf");
    }

    #[test]
    fn durations_parse_exactly_what_the_pattern_accepts() {
        for (text, secs) in [("5m", 300), ("14d", 14 * 86_400), ("1h 30m", 5_400), ("1w", 604_800)] {
            assert_eq!(Duration::parse(text).map(|d| d.get().as_secs()), Some(secs), "{text}");
        }
        for text in ["", "5", "m", "5 m", "1.5h", "5min", "-5m", "5m ", "1h30m"] {
            assert_eq!(Duration::parse(text), None, "{text}");
            assert!(Duration::within_bounds(text), "{text} is the pattern's to refuse");
        }
    }

    #[test]
    fn durations_are_bounded_before_any_sum() {
        assert_eq!(Duration::parse("36525d").map(|d| d.get().as_secs()), Some(36_525 * 86_400));
        assert_eq!(Duration::parse("0036525d 0ms").map(|d| d.get().as_secs()), Some(36_525 * 86_400));
        for text in ["36526d", "7304485d", "36525d 1ms", "99999999999999999999999w", "18446744073709551615ms 1ms"] {
            assert_eq!(Duration::parse(text), None, "{text}");
            assert!(!Duration::within_bounds(text), "{text}");
        }
    }

    #[test]
    fn dates_past_the_calendar_are_none() {
        let date = |text: &str| Date(text.parse().unwrap());
        let days = |text: &str| Duration::parse(text).unwrap();
        assert_eq!(date("2024-01-01").plus(&days("14d")), Some(date("2024-01-15")));
        assert_eq!(date("9999-12-01").plus(&days("31d")), None);
        assert_eq!(date("0000-01-01").plus(&days("36525d")), Some(date("0100-01-01")));
    }

    #[test]
    fn quantities_convert_to_metric_units() {
        use crate::model::Unit;
        let q = Quantity::parse("300ms").unwrap();
        assert_eq!(q.in_unit(Unit::Ms), Some(300.0));
        assert_eq!(q.in_unit(Unit::Seconds), Some(0.3));
        assert_eq!(q.in_unit(Unit::Percent), None);
        assert_eq!(Quantity::parse("99.9%").unwrap().in_unit(Unit::Percent), Some(99.9));
        assert_eq!(Quantity::parse("5m").unwrap().in_unit(Unit::Seconds), Some(300.0));
        assert_eq!(Quantity::parse("10").unwrap().in_unit(Unit::Count), Some(10.0));
        assert_eq!(Quantity::parse("5 parsecs"), None);
    }
}
