//! Text that came from elsewhere made safe to log: a process name set with
//! `prctl(PR_SET_NAME)`, an interface or cgroup name, a user name from a
//! directory can hold a newline (starting a forged log line), a carriage
//! return or a terminal escape. Control characters are escaped as Rust
//! writes them (`\n`, `\u{1b}`), everything else is kept. And times
//! written for people ([`utc`]). A leaf: it imports nothing of ours.

/// `s` with every control character escaped.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (no time zone database needed
/// for UTC).
pub fn utc(unix: u64) -> String {
    let (year, month, day) = civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date (year, month, day) of a day since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{printable, utc};

    #[test]
    fn formats_unix_seconds_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_434_009), "2026-11-23T11:40:09Z");
    }

    #[test]
    fn control_characters_cannot_start_a_line_or_a_terminal_sequence() {
        assert_eq!(printable("curl"), "curl");
        assert_eq!(printable("a\nb\rc"), "a\\nb\\rc");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("é ü"), "é ü");
    }
}
