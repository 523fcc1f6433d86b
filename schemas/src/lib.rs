//! CEB export entities for cbec: serde types for every input (CONTRACT §2) and output
//! (§3), JSON decoding with simd-json and CEB XML decoding with quick-xml into the same
//! types, field validation with typed errors, exact decimals and CEB time, Arrow schemas, and
//! the HS nomenclature.
//!
//! The entry point is [`Decoder::decode`]: it detects the encoding of one Kafka message and
//! returns one entity (JSON) or a document of entities (CEB XML).
#![forbid(missing_docs)]

pub mod arrow_schema;
pub mod de;
pub mod decimal;
pub mod entities;
pub mod error;
pub mod hs;
pub mod json;
pub mod outputs;
pub mod time;
pub mod topic;
pub mod validate;
pub mod xml;

pub use decimal::Dec;
pub use entities::*;
pub use error::{DecodeError, ErrorCode};
pub use outputs::*;
pub use time::{CebDate, EventTime};
pub use topic::Topic;

/// Text of a stored list's fields: inline up to 24 bytes (codes, numbers, most names), so
/// decoding, copying and dropping a list does not allocate per field. Derefs to `str`.
pub type Text = compact_str::CompactString;

/// Largest payload decoded (Kafka's default message limit is 1 MiB; a 100-entity XML
/// document is far below this).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Message encoding, detected per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object.
    Json,
    /// A CEB XML document.
    Xml,
}

/// Detects the encoding from the first non-blank byte (after a UTF-8 byte-order mark).
pub fn detect(payload: &[u8]) -> Option<Format> {
    let p = payload.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(payload);
    match p.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Some(Format::Json),
        Some(b'<') => Some(Format::Xml),
        _ => None,
    }
}

/// What one message decoded to.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded {
    /// A JSON message: one entity or its error.
    One(Result<Entity, DecodeError>),
    /// A CEB XML document.
    Document(xml::XmlDocument),
    /// The whole message was rejected.
    Rejected(DecodeError),
}

/// A per-worker decoder holding reusable buffers.
#[derive(Default)]
pub struct Decoder {
    json: json::JsonDecoder,
}

impl Decoder {
    /// New decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decodes one message of `topic`, detecting JSON or CEB XML.
    pub fn decode(&mut self, topic: Topic, payload: &[u8]) -> Decoded {
        if payload.len() > MAX_MESSAGE_BYTES {
            return Decoded::Rejected(DecodeError::new(
                ErrorCode::TooLarge,
                format!("message of {} bytes exceeds {MAX_MESSAGE_BYTES}", payload.len()),
            ));
        }
        match detect(payload) {
            Some(Format::Json) => Decoded::One(self.json.decode(topic, payload)),
            Some(Format::Xml) => match xml::decode_xml(payload, Some(topic)) {
                Ok(d) => Decoded::Document(d),
                Err(e) => Decoded::Rejected(e),
            },
            None => Decoded::Rejected(DecodeError::new(
                ErrorCode::UnknownEncoding,
                if payload.iter().all(u8::is_ascii_whitespace) {
                    "empty message".to_string()
                } else {
                    "neither a JSON object nor a CEB XML document".to_string()
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests;

/// A path under the project's `../shared` folder (CEB samples, HS nomenclature), for tests
/// and benches: relative to the package being tested, from `CARGO_MANIFEST_DIR` at run time
/// (cargo sets it for tests and benches; a build cache shared between checkouts would carry
/// a stale compile-time path), else where this crate was built.
pub fn shared_path(rel: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.join("../../shared").join(rel)
}
