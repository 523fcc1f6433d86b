//! Typed decode and validation errors. Each carries a stable machine code (what the
//! dead-letter topic and `cbec check` print) and a human reason.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable machine-readable error codes (CONTRACT §1). Never renamed; only added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not well-formed JSON.
    JsonInvalid,
    /// Not well-formed XML, or not a CEB message.
    XmlInvalid,
    /// Neither JSON nor XML (first byte), or empty.
    UnknownEncoding,
    /// Text is not UTF-8.
    NotUtf8,
    /// Payload above the size limit.
    TooLarge,
    /// A value of the wrong JSON type.
    WrongType,
    /// A required field is absent or empty.
    MissingField,
    /// Longer than the CEB maximum.
    TooLong,
    /// Not of the exact CEB length.
    WrongLength,
    /// Must be digits only.
    NotDigits,
    /// Not one of the allowed values.
    BadEnum,
    /// A negative amount or quantity.
    NegativeAmount,
    /// Not an exact decimal with ≤ 5 fraction digits.
    BadDecimal,
    /// A JSON number too precise for binary floating point (send a string).
    NumberPrecision,
    /// Not a valid timestamp.
    BadTimestamp,
    /// Not a valid `YYYYMMDD` date.
    BadDate,
    /// Body rows missing.
    NoItems,
    /// More body rows / entities than allowed.
    TooMany,
    /// The entity does not belong on this topic.
    WrongEntity,
    /// A control target that does not fit its kind.
    BadTarget,
    /// Defective XML whose meaning is not unambiguous.
    AmbiguousXml,
    /// Event time older than the state retention before the watermark: the key's state may
    /// be gone, so the message cannot be judged against it.
    Expired,
    /// Event time further after the message was sent (its Kafka timestamp, its file's
    /// modification) than `max_lead_ms` allows: taken as given it would move event time
    /// there for every key.
    FutureTime,
    /// Input offsets the topic deleted (its retention) before cbec read them (Kafka mode):
    /// the messages are gone; the dead letter names the range.
    DeletedUnread,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::JsonInvalid => "json_invalid",
            ErrorCode::XmlInvalid => "xml_invalid",
            ErrorCode::UnknownEncoding => "unknown_encoding",
            ErrorCode::NotUtf8 => "not_utf8",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::WrongType => "wrong_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::TooLong => "too_long",
            ErrorCode::WrongLength => "wrong_length",
            ErrorCode::NotDigits => "not_digits",
            ErrorCode::BadEnum => "bad_enum",
            ErrorCode::NegativeAmount => "negative_amount",
            ErrorCode::BadDecimal => "bad_decimal",
            ErrorCode::NumberPrecision => "number_precision",
            ErrorCode::BadTimestamp => "bad_timestamp",
            ErrorCode::BadDate => "bad_date",
            ErrorCode::NoItems => "no_items",
            ErrorCode::TooMany => "too_many",
            ErrorCode::WrongEntity => "wrong_entity",
            ErrorCode::BadTarget => "bad_target",
            ErrorCode::AmbiguousXml => "ambiguous_xml",
            ErrorCode::Expired => "expired",
            ErrorCode::FutureTime => "future_time",
            ErrorCode::DeletedUnread => "deleted_unread",
        }
    }

    /// Parses a wire code.
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == s)
    }
}

/// Every code, for documentation and metrics.
pub const ALL_CODES: [ErrorCode; 24] = [
    ErrorCode::JsonInvalid,
    ErrorCode::XmlInvalid,
    ErrorCode::UnknownEncoding,
    ErrorCode::NotUtf8,
    ErrorCode::TooLarge,
    ErrorCode::WrongType,
    ErrorCode::MissingField,
    ErrorCode::TooLong,
    ErrorCode::WrongLength,
    ErrorCode::NotDigits,
    ErrorCode::BadEnum,
    ErrorCode::NegativeAmount,
    ErrorCode::BadDecimal,
    ErrorCode::NumberPrecision,
    ErrorCode::BadTimestamp,
    ErrorCode::BadDate,
    ErrorCode::NoItems,
    ErrorCode::TooMany,
    ErrorCode::WrongEntity,
    ErrorCode::BadTarget,
    ErrorCode::AmbiguousXml,
    ErrorCode::Expired,
    ErrorCode::FutureTime,
    ErrorCode::DeletedUnread,
];

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one input entity was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}")]
pub struct DecodeError {
    /// Machine code.
    pub code: ErrorCode,
    /// Human reason, naming the field where there is one.
    pub reason: String,
}

impl DecodeError {
    /// New error.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> DecodeError {
        DecodeError { code, reason: reason.into() }
    }

    /// Classifies a serde message: our deserializers prefix `[code]`; serde's own say
    /// `missing field`, `unknown variant`, `invalid type`.
    pub fn from_serde_message(msg: &str, fallback: ErrorCode) -> DecodeError {
        if let Some(start) = msg.find('[')
            && let Some(len) = msg[start + 1..].find(']')
            && let Some(code) = ErrorCode::from_wire(&msg[start + 1..start + 1 + len])
        {
            let reason = msg[start + 2 + len..].trim().to_string();
            return DecodeError::new(code, reason);
        }
        let code = if msg.contains("missing field") {
            ErrorCode::MissingField
        } else if msg.contains("unknown variant") {
            ErrorCode::BadEnum
        } else if msg.contains("invalid type") || msg.contains("expected") {
            ErrorCode::WrongType
        } else {
            fallback
        };
        DecodeError::new(code, msg.to_string())
    }
}
