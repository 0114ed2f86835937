//! Amplify's timestamps: `2023-11-16T18:50:56.238+0000`, an offset without a colon, which strict
//! RFC 3339 parsers refuse (reference §2.4).

use chrono::{DateTime, FixedOffset, Utc};

const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%z";

/// Parses Amplify's form, and RFC 3339 as well in case a field uses it.
pub fn parse_amplify_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::<FixedOffset>::parse_from_str(text, FORMAT)
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn format_amplify_timestamp(t: DateTime<Utc>) -> String {
    t.format(FORMAT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_amplify_timestamps() {
        let t = parse_amplify_timestamp("2023-11-16T18:50:56.238+0000").unwrap();
        assert_eq!(
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "2023-11-16T18:50:56.238Z"
        );
        assert_eq!(format_amplify_timestamp(t), "2023-11-16T18:50:56.238+0000");
        assert_eq!(
            parse_amplify_timestamp("2023-11-16T19:50:56.238+01:00"),
            Some(t)
        );
        assert!(parse_amplify_timestamp("yesterday").is_none());
    }
}
