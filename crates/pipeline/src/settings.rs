//! The settings the configuration holds as text, read into values: an instant (RFC 3339 or epoch
//! milliseconds) and the reporting cron schedule. A leaf, so `bridge` checks them at build time.

use std::str::FromStr;

use chrono::DateTime;
use croner::Cron;

/// An instant given as RFC 3339 or as epoch milliseconds.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!(
                "{text:?} is neither an RFC 3339 time (2026-11-21T10:00:00Z) nor epoch milliseconds"
            )
        })
}

/// Parses a schedule: 5 cron fields, or 6 with seconds first. Empty: no schedule.
pub fn parse_schedule(schedule: &str) -> Result<Option<Cron>, String> {
    let schedule = schedule.trim();
    if schedule.is_empty() {
        return Ok(None);
    }
    Cron::from_str(schedule)
        .map(Some)
        .map_err(|e| format!("reporting.schedule {schedule:?} is not a cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_take_five_or_six_fields_and_empty_means_none() {
        assert!(parse_schedule("").unwrap().is_none());
        assert!(parse_schedule("7 * * * *").unwrap().is_some());
        assert!(parse_schedule("*/2 * * * * *").unwrap().is_some());
        let err = parse_schedule("every hour").unwrap_err();
        assert!(err.contains("reporting.schedule"), "{err}");
    }

    #[test]
    fn instants_are_rfc3339_or_epoch_milliseconds() {
        assert_eq!(parse_instant(" 1763722800000 "), Ok(1_763_722_800_000));
        assert_eq!(parse_instant("2025-11-21T11:00:00Z"), Ok(1_763_722_800_000));
        assert!(parse_instant("yesterday").is_err());
    }
}
