//! Cron schedules of batch materialization (`schedule:` on a feature view).

use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::Timestamp;

/// A cron schedule, evaluated in UTC: five POSIX fields (`minute hour day-of-month month
/// day-of-week`, e.g. `*/15 * * * *`), or six with seconds first (`*/10 * * * * *`).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    text: String,
}

impl CronSchedule {
    /// Parses a schedule; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let fields = trimmed.split_whitespace().count();
        if !(fields == 5 || fields == 6) {
            return Err(format!(
                "'{trimmed}' has {fields} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let cron = croner::Cron::from_str(trimmed)
            .map_err(|error| format!("'{trimmed}' is not a cron schedule: {error}"))?;
        Ok(Self {
            cron,
            text: trimmed.to_string(),
        })
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first scheduled time strictly after `time`.
    pub fn next_after(&self, time: Timestamp) -> Option<Timestamp> {
        let time = to_datetime(time)?;
        self.cron
            .find_next_occurrence(&time, false)
            .ok()
            .map(from_datetime)
    }

    /// The last scheduled time at or before `time`.
    pub fn latest_at_or_before(&self, time: Timestamp) -> Option<Timestamp> {
        let time = to_datetime(time)?;
        self.cron
            .find_previous_occurrence(&time, true)
            .ok()
            .map(from_datetime)
    }
}

fn to_datetime(time: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(time.as_micros())
}

fn from_datetime(time: DateTime<Utc>) -> Timestamp {
    Timestamp(time.timestamp_micros())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn five_and_six_field_schedules() {
        let quarter = CronSchedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            quarter.next_after(at("2026-01-10T10:07:00Z")),
            Some(at("2026-01-10T10:15:00Z"))
        );
        assert_eq!(
            quarter.next_after(at("2026-01-10T10:15:00Z")),
            Some(at("2026-01-10T10:30:00Z"))
        );
        assert_eq!(
            quarter.latest_at_or_before(at("2026-01-10T10:15:00Z")),
            Some(at("2026-01-10T10:15:00Z"))
        );
        // POSIX day of week: 0 is Sunday. 2026-01-11 is a Sunday.
        let sunday = CronSchedule::parse("30 2 * * 0").unwrap();
        assert_eq!(
            sunday.next_after(at("2026-01-10T00:00:00Z")),
            Some(at("2026-01-11T02:30:00Z"))
        );
        let seconds = CronSchedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            seconds.next_after(at("2026-01-10T10:00:01Z")),
            Some(at("2026-01-10T10:00:10Z"))
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        for (text, expected) in [
            ("* * *", "has 3 fields"),
            ("61 * * * *", "not a cron schedule"),
            ("every hour", "fields"),
        ] {
            let error = CronSchedule::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
