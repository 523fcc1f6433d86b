//! Event time: CEB timestamps (`YYYYMMDDhhmmss`, China Standard Time), CEB dates
//! (`YYYYMMDD`) and RFC 3339 timestamps, all as milliseconds since the Unix epoch (UTC).

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// China Standard Time offset in seconds (UTC+8).
const CST: i32 = 8 * 3600;

fn cst() -> FixedOffset {
    FixedOffset::east_opt(CST).expect("valid offset")
}

/// An instant in event time: milliseconds since 1970-01-01T00:00:00Z (serialized as that
/// number in state snapshots; records use the CEB or RFC 3339 forms).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventTime(pub i64);

impl EventTime {
    /// The smallest instant (before any input).
    pub const MIN: EventTime = EventTime(i64::MIN);
    /// The end of time: a watermark that fires every timer.
    pub const MAX: EventTime = EventTime(i64::MAX);

    /// Parses a CEB `YYYYMMDDhhmmss` timestamp in China Standard Time.
    pub fn parse_ceb(s: &str) -> Option<EventTime> {
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let b = s.as_bytes();
        let fast =
            civil_ms(num(&b[0..4]), num(&b[4..6]), num(&b[6..8]), num(&b[8..10]), num(&b[10..12]), num(&b[12..14]));
        if let Some(local) = fast {
            return Some(EventTime(local - i64::from(CST) * 1000));
        }
        // Out of the plain ranges (a leap second, an invalid date): chrono decides.
        let n = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
        let t = cst().from_local_datetime(&n).single()?;
        Some(EventTime(t.timestamp_millis()))
    }

    /// Parses an RFC 3339 timestamp (`2026-11-11T00:00:01+08:00`, `...Z`).
    pub fn parse_rfc3339(s: &str) -> Option<EventTime> {
        if let Some(t) = rfc3339_plain(s.as_bytes()) {
            return Some(t);
        }
        // Fractions of a second, lower-case or spaced forms, out-of-range fields: chrono.
        DateTime::parse_from_rfc3339(s).ok().map(|t| EventTime(t.timestamp_millis()))
    }

    /// CEB form in China Standard Time.
    pub fn to_ceb(self) -> String {
        if let Some((y, mo, d, ms)) = civil_cst(self.0) {
            let mut s = String::with_capacity(14);
            push2(&mut s, (y / 100) as u32);
            push2(&mut s, (y % 100) as u32);
            for v in [mo, d, (ms / 3_600_000) as u32, (ms / 60_000 % 60) as u32, (ms / 1000 % 60) as u32] {
                push2(&mut s, v);
            }
            return s;
        }
        match cst().timestamp_millis_opt(self.0).single() {
            Some(t) => t.format("%Y%m%d%H%M%S").to_string(),
            None => String::new(),
        }
    }

    /// RFC 3339 form with the China Standard Time offset and milliseconds.
    pub fn to_rfc3339(self) -> String {
        // The common case without chrono's format machinery (it was the sink thread's top
        // cost); chrono below for what is outside years 1..=9999.
        if let Some((y, mo, d, ms)) = civil_cst(self.0) {
            let mut s = String::with_capacity(29);
            push2(&mut s, (y / 100) as u32);
            push2(&mut s, (y % 100) as u32);
            s.push('-');
            push2(&mut s, mo);
            s.push('-');
            push2(&mut s, d);
            s.push('T');
            push2(&mut s, (ms / 3_600_000) as u32);
            s.push(':');
            push2(&mut s, (ms / 60_000 % 60) as u32);
            s.push(':');
            push2(&mut s, (ms / 1000 % 60) as u32);
            s.push('.');
            let milli = (ms % 1000) as u32;
            s.push(char::from(b'0' + (milli / 100) as u8));
            push2(&mut s, milli % 100);
            s.push_str("+08:00");
            return s;
        }
        match cst().timestamp_millis_opt(self.0).single() {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
            None if self == EventTime::MAX => "end-of-time".to_string(),
            None => String::new(),
        }
    }

    /// Adds milliseconds, saturating.
    #[must_use]
    pub const fn plus_ms(self, ms: i64) -> EventTime {
        EventTime(self.0.saturating_add(ms))
    }
}

impl fmt::Debug for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_rfc3339())
    }
}

/// A CEB date `YYYYMMDD` (e.g. `ieDate`), stored as that number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CebDate(pub u32);

impl CebDate {
    /// Parses and checks a real calendar date.
    pub fn parse(s: &str) -> Option<CebDate> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        NaiveDate::parse_from_str(s, "%Y%m%d").ok()?;
        s.parse().ok().map(CebDate)
    }

    /// Calendar month as `YYYYMM`.
    pub const fn period(self) -> u32 {
        self.0 / 100
    }

    /// The first instant after the end of this date's month, in China Standard Time.
    pub fn month_end(self) -> EventTime {
        period_end(self.period())
    }
}

/// The first instant after the calendar month `YYYYMM` ends (China Standard Time).
pub fn period_end(period: u32) -> EventTime {
    let (y, m) = ((period / 100) as i32, period % 100);
    let (ny, nm) = if m >= 12 { (y + 1, 1) } else { (y, m + 1) };
    let d = NaiveDate::from_ymd_opt(ny, nm, 1).unwrap_or(NaiveDate::MAX);
    let n = d.and_hms_opt(0, 0, 0).unwrap_or_default();
    cst().from_local_datetime(&n).single().map_or(EventTime::MAX, |t| EventTime(t.timestamp_millis()))
}

/// The calendar month (`YYYYMM`, China Standard Time) of an instant.
pub fn period_of(t: EventTime) -> u32 {
    match cst().timestamp_millis_opt(t.0).single() {
        Some(d) => d.year() as u32 * 100 + d.month(),
        None => 0,
    }
}

/// Current wall-clock time (runtime use only; operators never call it).
pub fn wall_clock() -> EventTime {
    EventTime(Utc::now().timestamp_millis())
}

impl fmt::Display for CebDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08}", self.0)
    }
}

impl fmt::Debug for CebDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for CebDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CebDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CebDate, D::Error> {
        let s = crate::de::StrOrNum::deserialize(d)?;
        CebDate::parse(s.as_str())
            .ok_or_else(|| serde::de::Error::custom(format!("[bad_date] '{}' is not a YYYYMMDD date", s.as_str())))
    }
}

/// Two decimal digits.
fn push2(s: &mut String, v: u32) {
    s.push(char::from(b'0' + (v / 10 % 10) as u8));
    s.push(char::from(b'0' + (v % 10) as u8));
}

/// (year, month, day, milliseconds of the day) in China Standard Time, for years 1..=9999
/// (the proleptic Gregorian calendar, days from civil after H. Hinnant).
fn civil_cst(ms: i64) -> Option<(i64, u32, u32, i64)> {
    let local = ms.checked_add(i64::from(CST) * 1000)?;
    let days = local.div_euclid(86_400_000);
    let ms_of_day = local.rem_euclid(86_400_000);
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (1..=9999).contains(&y).then_some((y, m, d, ms_of_day))
}

/// The value of ASCII digits (checked by the caller).
fn num(d: &[u8]) -> i64 {
    d.iter().fold(0, |n, b| n * 10 + i64::from(b - b'0'))
}

/// Milliseconds since the epoch of a local civil time taken as UTC, when every field is in
/// its plain range (years 1..=9999, a day that exists in its month, seconds up to 59);
/// `None` otherwise, for the caller to hand to chrono. Days from civil after H. Hinnant.
fn civil_ms(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> Option<i64> {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=9999).contains(&y) || !(1..=days_in_month).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400_000 + (hh * 3600 + mm * 60 + ss) * 1000)
}

/// `YYYY-MM-DDThh:mm:ssZ` or `…±hh:mm` with every field in its plain range; `None` for
/// anything else (the caller hands it to chrono).
fn rfc3339_plain(b: &[u8]) -> Option<EventTime> {
    if b.len() != 20 && b.len() != 25 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r.clone()].iter().all(u8::is_ascii_digit).then(|| num(&b[r]));
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let offset_s = match (b.len(), b[19]) {
        (20, b'Z') => 0,
        (25, sign @ (b'+' | b'-')) if b[22] == b':' => {
            let (oh, om) = (digits(20..22)?, digits(23..25)?);
            if oh > 23 || om > 59 {
                return None;
            }
            if sign == b'+' { oh * 3600 + om * 60 } else { -(oh * 3600 + om * 60) }
        }
        _ => return None,
    };
    let local =
        civil_ms(digits(0..4)?, digits(5..7)?, digits(8..10)?, digits(11..13)?, digits(14..16)?, digits(17..19)?)?;
    Some(EventTime(local - offset_s * 1000))
}

/// Serde for CEB `YYYYMMDDhhmmss` timestamps.
pub mod ceb_format {
    use super::EventTime;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the CEB form.
    pub fn serialize<S: Serializer>(t: &EventTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_ceb())
    }

    /// Reads the CEB form (string or number).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventTime, D::Error> {
        let s = crate::de::StrOrNum::deserialize(d)?;
        EventTime::parse_ceb(s.as_str()).ok_or_else(|| {
            serde::de::Error::custom(format!("[bad_timestamp] '{}' is not a CEB YYYYMMDDhhmmss time", s.as_str()))
        })
    }
}

/// Serde for RFC 3339 timestamps.
pub mod rfc3339_format {
    use super::EventTime;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes RFC 3339.
    pub fn serialize<S: Serializer>(t: &EventTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }

    /// Reads RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventTime, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        EventTime::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("[bad_timestamp] '{s}' is not an RFC 3339 time")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceb_time_is_china_standard_time() {
        let t = EventTime::parse_ceb("20180507153001").unwrap();
        assert_eq!(t, EventTime::parse_rfc3339("2018-05-07T07:30:01Z").unwrap());
        assert_eq!(t.to_ceb(), "20180507153001");
        assert!(EventTime::parse_ceb("20181307153001").is_none());
        assert!(EventTime::parse_ceb("2018050715300").is_none());
    }

    #[test]
    fn fast_formatting_agrees_with_chrono() {
        let chrono_rfc =
            |t: i64| cst().timestamp_millis_opt(t).single().map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string());
        let chrono_ceb = |t: i64| cst().timestamp_millis_opt(t).single().map(|d| d.format("%Y%m%d%H%M%S").to_string());
        let mut cases: Vec<i64> = vec![
            0,
            -1,
            -28_800_000,
            951_782_400_000,    // 2000-02-29 (UTC)
            -2_203_891_200_000, // 1900-03-01
            1_794_312_000_000,
            253_402_271_999_999, // 9999-12-31T15:59:59.999Z
            -62_135_596_800_000, // 0001-01-01T00:00:00Z
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x % 320_000_000_000_000) as i64 - 64_000_000_000_000);
        }
        for t in cases {
            if civil_cst(t).is_some() {
                assert_eq!(Some(EventTime(t).to_rfc3339()), chrono_rfc(t), "{t}");
                assert_eq!(Some(EventTime(t).to_ceb()), chrono_ceb(t), "{t}");
            }
        }
        assert!(civil_cst(-62_135_596_800_000 - 28_800_001).is_none(), "year 0 goes to chrono");
        assert_eq!(EventTime::MAX.to_rfc3339(), "end-of-time");
    }

    /// The plain-range parsers give what chrono gives, for valid times across the calendar
    /// and for every field just out of range (those go to chrono).
    #[test]
    fn fast_parsing_agrees_with_chrono() {
        let chrono_ceb = |s: &str| {
            NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S")
                .ok()
                .and_then(|n| cst().from_local_datetime(&n).single())
                .map(|t| EventTime(t.timestamp_millis()))
        };
        let chrono_rfc = |s: &str| DateTime::parse_from_rfc3339(s).ok().map(|t| EventTime(t.timestamp_millis()));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut fast_ceb, mut fast_rfc) = (0, 0);
        for i in 0..60_000 {
            // Mostly plain fields, one in ten pushed just out of its range.
            let wide = i % 10 == 0;
            let y = if i % 7 == 0 { next(10_000) } else { 1900 + next(300) };
            let mo = next(if wide { 14 } else { 12 }) + u64::from(!wide);
            let d = next(if wide { 33 } else { 31 }) + u64::from(!wide);
            let (h, mi, se) =
                (next(if wide { 25 } else { 24 }), next(if wide { 61 } else { 60 }), next(if wide { 62 } else { 60 }));
            let ceb = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{se:02}");
            let got = EventTime::parse_ceb(&ceb);
            assert_eq!(got, chrono_ceb(&ceb), "{ceb}");
            fast_ceb += usize::from(civil_ms(y as i64, mo as i64, d as i64, h as i64, mi as i64, se as i64).is_some());
            let (oh, om) = (next(if wide { 25 } else { 24 }), next(if wide { 61 } else { 60 }));
            let zone = match next(3) {
                0 => "Z".to_string(),
                1 => format!("+{oh:02}:{om:02}"),
                _ => format!("-{oh:02}:{om:02}"),
            };
            let rfc = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}{zone}");
            assert_eq!(EventTime::parse_rfc3339(&rfc), chrono_rfc(&rfc), "{rfc}");
            fast_rfc += usize::from(rfc3339_plain(rfc.as_bytes()).is_some());
        }
        assert!(fast_ceb > 40_000 && fast_rfc > 40_000, "the fast paths were taken: {fast_ceb} {fast_rfc}");
        for odd in [
            "2026-11-11T00:00:01.5+08:00",
            "2026-11-11t00:00:01z",
            "2026-11-11 00:00:01Z",
            "2026-11-11T00:00:01+0800",
            "20261111000060",
            "20260229000000",
            "20240229235959",
        ] {
            assert_eq!(EventTime::parse_rfc3339(odd), chrono_rfc(odd), "{odd}");
            assert_eq!(EventTime::parse_ceb(odd), chrono_ceb(odd).filter(|_| odd.len() == 14), "{odd}");
        }
    }

    #[test]
    fn periods() {
        let d = CebDate::parse("20181231").unwrap();
        assert_eq!(d.period(), 201812);
        assert_eq!(d.month_end(), EventTime::parse_rfc3339("2019-01-01T00:00:00+08:00").unwrap());
        assert_eq!(period_of(EventTime::parse_rfc3339("2018-12-31T16:30:00Z").unwrap()), 201901);
        assert!(CebDate::parse("20180230").is_none());
    }
}
