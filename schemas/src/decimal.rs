//! Exact decimals for money and quantities (CEB `decimal(19,5)`).
//!
//! A [`Dec`] is an `i128` count of 10⁻⁵ units: parsing, sums and comparisons are exact
//! integer arithmetic, never binary floating point. JSON may carry amounts as strings (exact,
//! preferred) or numbers; a number is accepted only when its shortest round-trip form has at
//! most 15 significant digits, so an amount is never silently rounded.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Fraction digits kept (CEB `decimal(19,5)`).
pub const SCALE: u32 = 5;
const ONE: i128 = 100_000;
/// Integer digits allowed by `decimal(19,5)`.
const MAX_INT_DIGITS: usize = 14;

/// An exact decimal with 5 fraction digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dec(i128);

/// Why a text is not a CEB decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecError {
    /// Not of the form `[-]digits[.digits]`.
    #[error("'{0}' is not a decimal number")]
    Syntax(String),
    /// More than 5 fraction digits.
    #[error("'{0}' has more than 5 fraction digits")]
    Scale(String),
    /// More than 14 integer digits.
    #[error("'{0}' has more than 14 integer digits (decimal(19,5))")]
    Range(String),
    /// A JSON number that binary floating point cannot carry exactly.
    #[error("JSON number {0} has more than 15 significant digits: send it as a string")]
    Precision(String),
}

impl Dec {
    /// Zero.
    pub const ZERO: Dec = Dec(0);

    /// From a count of 10⁻⁵ units.
    pub const fn from_scaled(v: i128) -> Dec {
        Dec(v)
    }

    /// The count of 10⁻⁵ units (Arrow `Decimal128(_, 5)` value).
    pub const fn scaled(self) -> i128 {
        self.0
    }

    /// From a whole number.
    pub const fn from_int(v: i64) -> Dec {
        Dec(v as i128 * ONE)
    }

    /// Parses `[-+]digits[.digits]` with at most 5 fraction and 14 integer digits.
    pub fn parse(s: &str) -> Result<Dec, DecError> {
        let t = s.trim();
        let (neg, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
            return Err(DecError::Syntax(s.to_string()));
        }
        if body.ends_with('.') && frac.is_empty() && int.is_empty() {
            return Err(DecError::Syntax(s.to_string()));
        }
        let frac_trim = frac.trim_end_matches('0');
        if frac_trim.len() > SCALE as usize {
            return Err(DecError::Scale(s.to_string()));
        }
        let int_trim = int.trim_start_matches('0');
        if int_trim.len() > MAX_INT_DIGITS {
            return Err(DecError::Range(s.to_string()));
        }
        let mut v: i128 = 0;
        for b in int_trim.bytes() {
            v = v * 10 + (b - b'0') as i128;
        }
        let mut f: i128 = 0;
        for i in 0..SCALE as usize {
            f = f * 10 + frac_trim.as_bytes().get(i).map_or(0, |b| (b - b'0') as i128);
        }
        let v = v * ONE + f;
        Ok(Dec(if neg { -v } else { v }))
    }

    /// From a JSON number already parsed as `f64`: exact only when the shortest round-trip
    /// form has ≤ 15 significant digits (then it is the text that was sent).
    pub fn from_f64(x: f64) -> Result<Dec, DecError> {
        if !x.is_finite() {
            return Err(DecError::Syntax(x.to_string()));
        }
        let text = format!("{x}");
        let sig = text.bytes().filter(u8::is_ascii_digit).collect::<Vec<u8>>();
        let sig = std::str::from_utf8(&sig).unwrap_or("");
        if sig.trim_start_matches('0').trim_end_matches('0').len() > 15 {
            return Err(DecError::Precision(text));
        }
        Dec::parse(&text)
    }

    /// From a JSON integer.
    pub fn from_i128_checked(v: i128) -> Result<Dec, DecError> {
        if v.unsigned_abs() >= 10u128.pow(MAX_INT_DIGITS as u32) {
            return Err(DecError::Range(v.to_string()));
        }
        Ok(Dec(v * ONE))
    }

    /// True when below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Exact sum (saturating far beyond any real amount).
    #[must_use]
    pub const fn add(self, o: Dec) -> Dec {
        Dec(self.0.saturating_add(o.0))
    }

    /// Exact difference.
    #[must_use]
    pub const fn sub(self, o: Dec) -> Dec {
        Dec(self.0.saturating_sub(o.0))
    }

    /// Absolute value.
    #[must_use]
    pub const fn abs(self) -> Dec {
        Dec(self.0.abs())
    }
}

impl std::iter::Sum for Dec {
    fn sum<I: Iterator<Item = Dec>>(iter: I) -> Dec {
        iter.fold(Dec::ZERO, Dec::add)
    }
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let a = self.0.unsigned_abs();
        let int = a / ONE as u128;
        let frac = a % ONE as u128;
        if neg {
            f.write_str("-")?;
        }
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let s = format!("{frac:05}");
            write!(f, "{int}.{}", s.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Dec {
    type Err = DecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dec::parse(s)
    }
}

impl Serialize for Dec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

struct DecVisitor;

fn dec_err<E: de::Error>(e: DecError) -> E {
    let code = match e {
        DecError::Precision(_) => "number_precision",
        _ => "bad_decimal",
    };
    E::custom(format!("[{code}] {e}"))
}

impl Visitor<'_> for DecVisitor {
    type Value = Dec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal as a string or number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dec, E> {
        Dec::parse(v).map_err(dec_err)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dec, E> {
        Dec::from_i128_checked(v as i128).map_err(dec_err)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dec, E> {
        Dec::from_i128_checked(v as i128).map_err(dec_err)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dec, E> {
        Dec::from_f64(v).map_err(dec_err)
    }
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dec, D::Error> {
        d.deserialize_any(DecVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        for (t, s) in [
            ("0", "0"),
            ("12.50", "12.5"),
            ("-0.00001", "-0.00001"),
            ("12345678912345.12345", "12345678912345.12345"),
            ("007", "7"),
            (".5", "0.5"),
        ] {
            assert_eq!(Dec::parse(t).unwrap().to_string(), s, "{t}");
        }
        assert_eq!(Dec::parse("0.1").unwrap().add(Dec::parse("0.2").unwrap()), Dec::parse("0.3").unwrap());
    }

    #[test]
    fn rejects_bad_text() {
        for t in ["", "-", ".", "1e5", "1.2.3", "abc", "1.000001", "123456789012345", " 1 2"] {
            assert!(Dec::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn floats_only_when_exact() {
        assert_eq!(Dec::from_f64(0.1).unwrap(), Dec::parse("0.1").unwrap());
        assert_eq!(Dec::from_f64(199.99).unwrap(), Dec::parse("199.99").unwrap());
        assert!(Dec::from_f64(12_345_678_912_345.123).is_err());
        assert!(Dec::from_f64(f64::NAN).is_err());
    }
}
