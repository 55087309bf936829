//! Timestamps and durations.
//!
//! All timestamps are instants in UTC with microsecond precision. Inputs in other time zones
//! are converted on the way in; nothing inside Larder is zone-local.

use std::fmt;
use std::str::FromStr;

use crate::error::CoreError;

/// An instant, as microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The Unix epoch, which Feast uses as the timestamp of entity key columns.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(chrono::Utc::now().timestamp_micros())
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Builds a timestamp from seconds since the Unix epoch.
    pub fn from_seconds(seconds: i64) -> Self {
        Self(seconds.saturating_mul(1_000_000))
    }

    /// The instant `seconds` after the Unix epoch, or `None` when it is not a calendar date
    /// (beyond about ±262,000 years): input to refuse, not to clamp.
    pub fn checked_from_seconds(seconds: i64) -> Option<Self> {
        let micros = seconds.checked_mul(1_000_000)?;
        chrono::DateTime::from_timestamp_micros(micros).map(|_| Self(micros))
    }

    /// This instant minus a duration, saturating at the smallest representable instant.
    pub fn saturating_sub(self, duration: TtlDuration) -> Self {
        Self(self.0.saturating_sub(duration.as_micros()))
    }

    /// RFC 3339 text in UTC (`2025-01-31T12:00:00Z`, with a fraction only when non-zero).
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(datetime) => datetime.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            None => format!("{}us", self.0),
        }
    }

    /// Parses RFC 3339 text with any offset (`2025-01-31T12:00:00+02:00`), or a plain
    /// `YYYY-MM-DD[THH:MM:SS]` which is read as UTC.
    pub fn parse(text: &str) -> Option<Self> {
        let trimmed = text.trim();
        if let Ok(datetime) = chrono::DateTime::parse_from_rfc3339(trimmed) {
            return Some(Self(datetime.timestamp_micros()));
        }
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(trimmed, format) {
                return Some(Self(naive.and_utc().timestamp_micros()));
            }
        }
        chrono::NaiveDate::parse_from_str(trimmed, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|naive| Self(naive.and_utc().timestamp_micros()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_rfc3339())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A non-negative duration with second precision, written as `30d`, `12h`, `1h30m`, `90s`
/// or `2w` in feature definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TtlDuration {
    seconds: u64,
}

impl TtlDuration {
    /// A duration of whole seconds.
    pub fn from_seconds(seconds: u64) -> Self {
        Self { seconds }
    }

    /// The duration in whole seconds.
    pub fn as_seconds(self) -> u64 {
        self.seconds
    }

    /// The duration in microseconds, saturating at `i64::MAX`.
    pub fn as_micros(self) -> i64 {
        i64::try_from(self.seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
    }
}

impl FromStr for TtlDuration {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || CoreError::InvalidDuration(text.to_string());
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for character in trimmed.chars() {
            if character.is_ascii_digit() {
                digits.push(character);
                continue;
            }
            let unit_seconds: u64 = match character {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(invalid()),
            };
            let amount: u64 = digits.parse().map_err(|_| invalid())?;
            digits.clear();
            total = amount
                .checked_mul(unit_seconds)
                .and_then(|seconds| total.checked_add(seconds))
                .ok_or_else(invalid)?;
        }
        if !digits.is_empty() {
            // A bare number is seconds only when it is the whole string ("0", "3600").
            if total != 0 || digits.len() != trimmed.len() {
                return Err(invalid());
            }
            total = digits.parse().map_err(|_| invalid())?;
        }
        Ok(Self { seconds: total })
    }
}

impl fmt::Display for TtlDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            ("w", 604_800),
            ("d", 86_400),
            ("h", 3_600),
            ("m", 60),
            ("s", 1),
        ];
        if self.seconds == 0 {
            return formatter.write_str("0s");
        }
        let mut remaining = self.seconds;
        for (suffix, size) in units {
            if remaining >= size {
                write!(formatter, "{}{}", remaining / size, suffix)?;
                remaining %= size;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for TtlDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TtlDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        let cases = [
            ("30d", 2_592_000),
            ("1h30m", 5_400),
            ("90s", 90),
            ("2w", 1_209_600),
            ("0", 0),
        ];
        for (text, seconds) in cases {
            let parsed: TtlDuration = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(parsed.as_seconds(), seconds, "{text}");
            let reparsed: TtlDuration = parsed
                .to_string()
                .parse()
                .unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(reparsed, parsed);
        }
        for bad in ["", "d", "10x", "1.5h", "-3d", "5d3"] {
            assert!(
                bad.parse::<TtlDuration>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn timestamps_parse_with_offsets_as_utc() {
        let utc = Timestamp::parse("2025-01-31T12:00:00Z");
        let offset = Timestamp::parse("2025-01-31T14:00:00+02:00");
        assert_eq!(utc, offset);
        assert_eq!(
            Timestamp::parse("2025-01-31"),
            Timestamp::parse("2025-01-31T00:00:00Z")
        );
        assert_eq!(
            utc.map(|t| t.to_rfc3339()),
            Some("2025-01-31T12:00:00Z".to_string())
        );
        assert_eq!(Timestamp::parse("not a time"), None);
    }
}
