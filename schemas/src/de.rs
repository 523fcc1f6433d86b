//! Lenient serde helpers shared by the JSON and XML paths: CEB XML carries every value as
//! text, JSON may carry numbers as numbers or strings; both must decode to equal values.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A scalar read as text, whether it came as a string or a number.
pub enum StrOrNum<'a> {
    /// Text as sent.
    Str(Cow<'a, str>),
    /// A number, printed.
    Num(String),
}

impl StrOrNum<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            StrOrNum::Str(s) => s,
            StrOrNum::Num(s) => s,
        }
    }
}

struct SonVisitor;

impl<'de> Visitor<'de> for SonVisitor {
    type Value = StrOrNum<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or number")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(StrOrNum::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(StrOrNum::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(StrOrNum::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(StrOrNum::Num(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(StrOrNum::Num(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(StrOrNum::Num(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for StrOrNum<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SonVisitor)
    }
}

/// An unsigned integer sent as a number or as digits (`gnum`, `packNo`).
pub fn u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = StrOrNum::deserialize(d)?;
    let t = s.as_str().trim();
    t.parse::<u32>().map_err(|_| de::Error::custom(format!("[not_digits] '{t}' is not a non-negative whole number")))
}

/// A code sent as a string or number (`currency: 142`); kept as text.
pub fn code<'de, D: Deserializer<'de>, T: for<'a> From<&'a str>>(d: D) -> Result<T, D::Error> {
    Ok(T::from(StrOrNum::deserialize(d)?.as_str().trim()))
}

/// An optional text where an empty element (`<totalPackageNo></totalPackageNo>`) or JSON
/// `null` means absent.
pub fn opt_text<'de, D: Deserializer<'de>, T: for<'a> From<&'a str>>(d: D) -> Result<Option<T>, D::Error> {
    let v: Option<StrOrNum<'de>> = Option::deserialize(d)?;
    Ok(v.as_ref().map(|s| s.as_str().trim()).filter(|s| !s.is_empty()).map(T::from))
}
