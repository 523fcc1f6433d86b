//! JSON decoding on the hot path: simd-json deserializes in place from a reusable buffer
//! straight into the entity types (no intermediate DOM); only the owned strings the entity
//! keeps are allocated.

use crate::entities::*;
use crate::error::{DecodeError, ErrorCode};
use crate::topic::Topic;
use crate::validate::Validate;
use serde::de::DeserializeOwned;

use simd_json::{Buffers, ErrorType};

/// Deepest JSON nesting accepted (entities are 3 levels deep).
pub const MAX_JSON_DEPTH: usize = 32;

/// A reusable JSON decoder: the scratch copy of the payload (simd-json parses in place) and
/// simd-json's tape buffers are kept between messages, so steady-state decoding allocates
/// only the strings the entity keeps.
pub struct JsonDecoder {
    scratch: Vec<u8>,
    buffers: Buffers,
}

impl Default for JsonDecoder {
    fn default() -> Self {
        JsonDecoder { scratch: Vec::with_capacity(4096), buffers: Buffers::with_max_depth(4096, MAX_JSON_DEPTH) }
    }
}

fn simd_err(e: &simd_json::Error) -> DecodeError {
    match e.error() {
        ErrorType::Serde(m) => DecodeError::from_serde_message(m, ErrorCode::JsonInvalid),
        ErrorType::InvalidUtf8 => DecodeError::new(ErrorCode::NotUtf8, "JSON is not UTF-8"),
        t if format!("{t:?}").starts_with("Expected") && !format!("{t:?}").contains("End") => {
            DecodeError::new(ErrorCode::WrongType, format!("a value of the wrong JSON type: {e}"))
        }
        _ => DecodeError::new(ErrorCode::JsonInvalid, format!("not well-formed JSON: {e}")),
    }
}

impl JsonDecoder {
    /// A decoder with empty buffers.
    pub fn new() -> JsonDecoder {
        JsonDecoder::default()
    }

    fn parse<T: DeserializeOwned>(&mut self) -> Result<T, DecodeError> {
        simd_json::serde::from_slice_with_buffers::<T>(&mut self.scratch, &mut self.buffers).map_err(|e| simd_err(&e))
    }

    /// Decodes one JSON message of `topic` and applies the field rules.
    pub fn decode(&mut self, topic: Topic, payload: &[u8]) -> Result<Entity, DecodeError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(payload);
        let e = match topic {
            Topic::Goods => Entity::Goods(self.parse()?),
            Topic::Orders => Entity::Order(self.parse()?),
            Topic::Lists => Entity::List(Box::new(self.parse()?)),
            Topic::Waybills => Entity::Waybill(self.parse()?),
            Topic::Payments => Entity::Payment(self.parse()?),
            Topic::Arrivals => Entity::Arrival(self.parse()?),
            Topic::Scans => Entity::Scan(self.parse()?),
            Topic::Seals => Entity::Seal(self.parse()?),
            Topic::Departures => Entity::Departure(self.parse()?),
            Topic::Controls => Entity::Control(self.parse()?),
        };
        e.validate()?;
        Ok(e)
    }
}

/// Guesses the topic of a JSON object from its field names (for `cbec check` on files
/// whose name does not say). `None` when nothing fits.
pub fn sniff_topic(payload: &[u8]) -> Option<Topic> {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
    let has = |k: &str| v.contains_key(k);
    Some(if has("sealNo") {
        Topic::Seals
    } else if has("scanId") {
        Topic::Scans
    } else if has("target") && has("kind") {
        Topic::Controls
    } else if has("charge") || has("payNo") {
        Topic::Payments
    } else if has("goodsValue") {
        Topic::Orders
    } else if has("leaveTime") {
        Topic::Departures
    } else if has("operatorCode") || has("domesticTrafNo") {
        Topic::Arrivals
    } else if has("ieDate") || has("statisticsFlag") || has("portCode") {
        Topic::Lists
    } else if has("goodsInfo") || (has("logisticsNo") && has("grossWeight")) {
        Topic::Waybills
    } else if has("gcode") && has("itemNo") {
        Topic::Goods
    } else {
        return None;
    })
}
