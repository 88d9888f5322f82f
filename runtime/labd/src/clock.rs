//! Clock times for people: milliseconds since the epoch as RFC 3339 (UTC), the start of a day
//! and of a month (quotas).
//! Pure arithmetic on the proleptic Gregorian calendar (Howard Hinnant's civil-date
//! algorithms), so labd needs no date library and every place prints times the same way.

/// Milliseconds since the epoch at the start of a UTC day `YYYY-MM-DD`.
pub fn day_ms(d: &str) -> Option<i64> {
    let mut it = d.trim().splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (it.next()??, it.next()??, it.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// The civil date (year, month 1–12, day 1–31) of a day counted from 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `ms` since the epoch as RFC 3339 in UTC, to the second: `2026-12-04T19:02:11Z`.
pub fn rfc3339(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000) / 1000);
    let (year, month, day) = civil(days);
    let (h, m, s) = (in_day / 3600, in_day / 60 % 60, in_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The UTC date `ms` falls on: `2026-12-04`.
pub fn date(ms: i64) -> String {
    let (year, month, day) = civil(ms.div_euclid(86_400_000));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Whether `d` is a real calendar date written `YYYY-MM-DD` (not `2026-02-30`, not `2026-2-3`).
pub fn is_date(d: &str) -> bool {
    day_ms(d).is_some_and(|ms| date(ms) == d)
}

/// The first millisecond of the month `now` is in (UTC), for monthly quotas.
pub fn month_start_ms(now: i64) -> i64 {
    let days = now.div_euclid(86_400_000);
    let (_, _, day) = civil(days);
    (days - (day - 1)) * 86_400_000
}

/// [`rfc3339`] for a time that may not have happened yet (`0` or less: none).
pub fn rfc3339_opt(ms: i64) -> Option<String> {
    (ms > 0).then(|| rfc3339(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_real_days_written_in_full() {
        assert_eq!(date(day_ms("2028-02-29").unwrap()), "2028-02-29");
        for bad in ["2026-02-30", "2026-2-3", "2026-13-01", "tomorrow", "2026-12-04T00:00:00Z"] {
            assert!(!is_date(bad), "{bad}");
        }
        assert!(is_date("2027-01-31"));
    }

    #[test]
    fn clock_times_round_trip_through_days() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_411_531_000), "2026-12-04T19:12:11Z");
        for d in ["1999-12-31", "2000-02-29", "2026-03-01", "2100-02-28"] {
            assert_eq!(rfc3339(day_ms(d).unwrap()), format!("{d}T00:00:00Z"));
        }
        assert_eq!(day_ms("2026-13-01"), None);
        assert_eq!(month_start_ms(1_796_411_531_000), day_ms("2026-12-01").unwrap());
        assert_eq!(month_start_ms(day_ms("2024-03-01").unwrap() - 1), day_ms("2024-02-01").unwrap());
        assert_eq!(rfc3339_opt(0), None);
    }
}
