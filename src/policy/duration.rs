//! The `rotateAfter` grammar: one positive integer and one unit (`h`, `d` or `w`), 1h..=8760h.

use std::fmt;
use std::str::FromStr;

/// Shortest accepted interval, in hours.
pub const MIN_HOURS: u64 = 1;
/// Longest accepted interval, in hours (365 days).
pub const MAX_HOURS: u64 = 8760;
/// Intervals shorter than this many hours are allowed with a warning.
pub const WARN_BELOW_HOURS: u64 = 24;
/// What every duration message offers as a fix.
pub const DURATION_HINT: &str = "use a whole number of hours, days or weeks between 1h and 8760h, \
                                 e.g. \"720h\", \"30d\" or \"12w\"";

/// Unit of a [`RotateAfter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// `h`
    Hours,
    /// `d` (24h)
    Days,
    /// `w` (168h)
    Weeks,
}

impl Unit {
    /// Hours in one of this unit.
    pub const fn hours(self) -> u64 {
        match self {
            Unit::Hours => 1,
            Unit::Days => 24,
            Unit::Weeks => 168,
        }
    }

    /// The unit letter.
    pub const fn suffix(self) -> char {
        match self {
            Unit::Hours => 'h',
            Unit::Days => 'd',
            Unit::Weeks => 'w',
        }
    }
}

/// A valid rotation interval, as written (`30d` stays `30d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RotateAfter {
    count: u64,
    unit: Unit,
}

impl RotateAfter {
    /// The default interval, 2160h (90 days).
    pub const DEFAULT: RotateAfter = RotateAfter {
        count: 2160,
        unit: Unit::Hours,
    };

    /// Parses and range-checks a `rotateAfter` value.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |kind| DurationError {
            input: super::shown::shown(input),
            kind,
        };
        if input.is_empty() {
            return Err(err(DurationErrorKind::Malformed));
        }
        let digits = input.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = input.split_at(digits);
        let unit = match unit {
            "h" => Unit::Hours,
            "d" => Unit::Days,
            "w" => Unit::Weeks,
            _ => return Err(err(DurationErrorKind::Malformed)),
        };
        if number.is_empty() {
            return Err(err(DurationErrorKind::Malformed));
        }
        let hours = number
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(unit.hours()).map(|hours| (count, hours)));
        match hours {
            None => Err(err(DurationErrorKind::TooLong)),
            Some((_, hours)) if hours < MIN_HOURS => Err(err(DurationErrorKind::TooShort)),
            Some((_, hours)) if hours > MAX_HOURS => Err(err(DurationErrorKind::TooLong)),
            Some((count, _)) => Ok(Self { count, unit }),
        }
    }

    /// The interval in whole hours.
    pub const fn hours(self) -> u64 {
        self.count * self.unit.hours()
    }

    /// The interval as a chrono duration.
    pub fn as_time_delta(self) -> chrono::TimeDelta {
        // At most 8760h, far inside the i64 range.
        chrono::TimeDelta::hours(self.hours() as i64)
    }

    /// The interval as a std duration.
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hours() * 3600)
    }

    /// Whether the interval is short enough to deserve a warning (under 24h).
    pub const fn is_short(self) -> bool {
        self.hours() < WARN_BELOW_HOURS
    }

    /// The number as written.
    pub const fn count(self) -> u64 {
        self.count
    }

    /// The unit as written.
    pub const fn unit(self) -> Unit {
        self.unit
    }
}

impl fmt::Display for RotateAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.suffix())
    }
}

impl FromStr for RotateAfter {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a `rotateAfter` value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationErrorKind {
    /// Not one integer followed by `h`, `d` or `w`.
    Malformed,
    /// Under 1h.
    TooShort,
    /// Over 8760h.
    TooLong,
}

/// A rejected `rotateAfter` value; the message quotes it (when short, see `shown`) and shows a
/// valid example.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct DurationError {
    input: String,
    /// What is wrong with the value.
    pub kind: DurationErrorKind,
}

impl DurationError {
    fn describe(&self) -> String {
        let what = match self.kind {
            DurationErrorKind::Malformed => "is not a valid duration",
            DurationErrorKind::TooShort => "is shorter than the minimum of 1h",
            DurationErrorKind::TooLong => "is longer than the maximum of 8760h (365 days)",
        };
        format!("{} {what}; {DURATION_HINT}", self.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hours(s: &str) -> u64 {
        RotateAfter::parse(s).map(RotateAfter::hours).unwrap_or(0)
    }

    #[test]
    fn hours_days_and_weeks_convert_to_hours() {
        assert_eq!(hours("720h"), 720);
        assert_eq!(hours("30d"), 720);
        assert_eq!(hours("2160h"), hours("90d"));
        assert_eq!(hours("168h"), hours("1w"));
        assert_eq!(hours("4w"), 672);
        assert_eq!(hours("0720h"), 720);
    }

    #[test]
    fn the_range_edges_are_inclusive() {
        for ok in ["1h", "8760h", "365d", "52w"] {
            assert!(RotateAfter::parse(ok).is_ok(), "{ok}");
        }
        for (bad, kind) in [
            ("0h", DurationErrorKind::TooShort),
            ("0d", DurationErrorKind::TooShort),
            ("8761h", DurationErrorKind::TooLong),
            ("366d", DurationErrorKind::TooLong),
            ("53w", DurationErrorKind::TooLong),
            ("99999999999999999999h", DurationErrorKind::TooLong),
            ("9999999999999999999w", DurationErrorKind::TooLong),
        ] {
            assert_eq!(
                RotateAfter::parse(bad).map_err(|e| e.kind),
                Err(kind),
                "{bad}"
            );
        }
    }

    #[test]
    fn anything_but_one_integer_and_one_unit_is_malformed() {
        for bad in [
            "", "h", "30m", "1y", "1h30m", "24H", " 24h", "24h ", "-5h", "+5h", "1.5d", "720",
            "abc", "10x", "٣h",
        ] {
            assert_eq!(
                RotateAfter::parse(bad).map_err(|e| e.kind),
                Err(DurationErrorKind::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn messages_quote_the_value_and_show_a_valid_example() {
        let err = RotateAfter::parse("30m").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"30m\" is not a valid duration; use a whole number of hours, days or weeks between \
             1h and 8760h, e.g. \"720h\", \"30d\" or \"12w\""
        );
        let err = RotateAfter::parse("0h").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("\"0h\" is shorter than the minimum of 1h; use")
        );
        let err = RotateAfter::parse("400d").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("\"400d\" is longer than the maximum of 8760h")
        );
    }

    #[test]
    fn long_input_is_shortened_in_messages() {
        let input = "9".repeat(200);
        let message = RotateAfter::parse(&input).unwrap_err().to_string();
        assert!(message.len() < 220, "{message}");
    }

    #[test]
    fn intervals_under_a_day_are_short() {
        assert!(RotateAfter::parse("23h").is_ok_and(RotateAfter::is_short));
        assert!(RotateAfter::parse("24h").is_ok_and(|d| !d.is_short()));
        assert!(RotateAfter::parse("1d").is_ok_and(|d| !d.is_short()));
    }

    #[test]
    fn display_keeps_the_written_form() {
        assert_eq!(
            RotateAfter::parse("30d").map(|d| d.to_string()),
            Ok("30d".to_owned())
        );
        assert_eq!(
            RotateAfter::parse("012w").map(|d| d.to_string()),
            Ok("12w".to_owned())
        );
    }

    proptest! {
        #[test]
        fn every_in_range_value_parses_to_its_hours(count in 0u64..10_000, unit in 0usize..3) {
            let unit = [Unit::Hours, Unit::Days, Unit::Weeks][unit];
            let text = format!("{count}{}", unit.suffix());
            let hours = count * unit.hours();
            match RotateAfter::parse(&text) {
                Ok(d) => {
                    prop_assert!((MIN_HOURS..=MAX_HOURS).contains(&hours));
                    prop_assert_eq!(d.hours(), hours);
                    prop_assert_eq!(d.to_string().parse::<RotateAfter>(), Ok(d));
                    prop_assert_eq!(d.as_std().as_secs(), hours * 3600);
                }
                Err(e) => {
                    prop_assert!(!(MIN_HOURS..=MAX_HOURS).contains(&hours));
                    prop_assert_ne!(e.kind, DurationErrorKind::Malformed);
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics_and_only_the_grammar_parses(text in ".{0,24}") {
            let bytes = text.as_bytes();
            let grammar = bytes.len() > 1
                && bytes[..bytes.len() - 1].iter().all(u8::is_ascii_digit)
                && matches!(bytes[bytes.len() - 1], b'h' | b'd' | b'w');
            let parsed = RotateAfter::parse(&text);
            if !grammar {
                prop_assert_eq!(parsed.map_err(|e| e.kind), Err(DurationErrorKind::Malformed));
            }
        }
    }
}
