//! Times in records and on the command line, without a date library: the
//! JSON log's RFC 3339 `timestamp` (tracing-subscriber writes UTC,
//! `2026-12-07T04:11:31.123456Z`), the journal's `__REALTIME_TIMESTAMP`
//! (microseconds since the epoch), and `--since` (`1h`, `30m`, `2d`, an
//! RFC 3339 time or `@SECONDS`). Everything is microseconds since the
//! Unix epoch, UTC.

use thiserror::Error;

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

const MICROS: i64 = 1_000_000;

/// A `--since` that is neither a duration nor a time.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "--since {0:?} is not a duration back from now (1h, 30m, 2d, 1h30m, 90s, 1w) nor a time \
     (2026-12-07T03:00:00Z, with Z or an offset, or @SECONDS)"
)]
pub struct SinceError(pub String);

/// Parses `--since`: a duration back from `now`, or a point in time.
pub fn parse_since(text: &str, now: Micros) -> Result<Micros, SinceError> {
    let error = || SinceError(text.to_owned());
    let text = text.trim();
    if let Some(seconds) = text.strip_prefix('@') {
        return seconds
            .parse::<i64>()
            .ok()
            .and_then(|s| s.checked_mul(MICROS))
            .ok_or_else(error);
    }
    if let Some(at) = parse_rfc3339(text) {
        return Ok(at);
    }
    let back = parse_duration(text.strip_suffix(" ago").unwrap_or(text)).ok_or_else(error)?;
    Ok(now.saturating_sub(back))
}

/// `1h30m`, `2d`, `90s`, `1w`: a sum of numbers with a unit each.
fn parse_duration(text: &str) -> Option<Micros> {
    let mut total: i64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(seconds)?.checked_mul(MICROS)?)?;
        rest = tail;
    }
    Some(total)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; a space for the `T` too.
pub fn parse_rfc3339(text: &str) -> Option<Micros> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| bytes[i] != c)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let digits = &frac[..len];
        if digits.is_empty() {
            return None;
        }
        let padded: String = digits
            .chars()
            .chain(std::iter::repeat('0'))
            .take(6)
            .collect();
        micros = padded.parse::<i64>().ok()?;
        rest = &frac[len..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest[1..].split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some((seconds - offset) * MICROS + micros)
}

/// `2026-12-07T04:11:31Z`: a time in records and messages, to the second.
pub fn format_rfc3339(at: Micros) -> String {
    let seconds = at.div_euclid(MICROS);
    let (days, in_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = crate::text::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, from the system clock.
pub fn now() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_the_epoch_and_leap_days() {
        let at = parse_rfc3339("2026-12-07T04:11:31.123456Z").unwrap_or_else(|| panic!("parses"));
        assert_eq!(at, 1_796_616_691 * MICROS + 123_456);
        assert_eq!(format_rfc3339(at), "2026-12-07T04:11:31Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        let leap = parse_rfc3339("2024-02-29T12:00:00+02:00").unwrap_or_else(|| panic!("leap"));
        assert_eq!(format_rfc3339(leap), "2024-02-29T10:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-02-29 12:00:00.5Z"),
            Some(leap + 2 * 3600 * MICROS + 500_000)
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-12-07T04:11:31",
            "yesterday",
            "2026-12-07T04:11:31.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn since_takes_durations_back_from_now_and_times() {
        let now = 10_000_000 * MICROS;
        assert_eq!(parse_since("1h", now), Ok(now - 3600 * MICROS));
        assert_eq!(parse_since("1h30m", now), Ok(now - 5400 * MICROS));
        assert_eq!(
            parse_since("2 days ago".replace(' ', "").as_str(), now),
            Err(SinceError("2daysago".into()))
        );
        assert_eq!(parse_since("2days ago", now), Ok(now - 2 * 86_400 * MICROS));
        assert_eq!(parse_since("@42", now), Ok(42 * MICROS));
        assert_eq!(parse_since("1970-01-01T00:01:00Z", now), Ok(60 * MICROS));
        for bad in ["", "h", "1y", "-1h", "1.5h"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
