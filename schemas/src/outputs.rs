//! Output records of CONTRACT §3. Each has a stable identity (`id` or its key) so a consumer
//! can de-duplicate after a replay, and carries enough to be read alone.

use crate::Text;
use crate::decimal::Dec;
use crate::entities::Inventory;
use crate::time::{EventTime, rfc3339_format};
use serde::{Deserialize, Serialize};

/// CEB receipt status codes (`returnStatus`).
pub mod status {
    /// Accepted (declared / registered).
    pub const ACCEPTED: i32 = 120;
    /// Returned (inconsistent).
    pub const RETURNED: i32 = 100;
    /// Manual review (red channel, on-site review).
    pub const MANUAL_REVIEW: i32 = 300;
    /// Review concluded (verified).
    pub const REVIEW_CONCLUDED: i32 = 399;
    /// Inspection (unpack).
    pub const INSPECTION: i32 = 500;
    /// Released.
    pub const RELEASED: i32 = 800;
    /// Closed (exited).
    pub const CLOSED: i32 = 899;
    /// Goods registration rejected: gcode not 10 digits.
    pub const ERR_GCODE_MALFORMED: i32 = -301;
    /// Goods registration rejected: subheading not in the nomenclature.
    pub const ERR_GCODE_UNKNOWN: i32 = -302;
    /// A change to a declared (immutable) list, or a second activation.
    pub const ERR_IMMUTABLE: i32 = -401;
    /// A waybill with no stored list.
    pub const ERR_NO_LIST: i32 = -402;
    /// An exit of a parcel whose list was not released at the port.
    pub const ERR_EXIT_NOT_RELEASED: i32 = -501;
    /// A seal covering parcels not released at the site, or an unfiled vehicle.
    pub const ERR_SEAL_REFUSED: i32 = -502;
}

/// `cbec.declared`: the regular declaration list, immutable once emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredList {
    /// Customs list number: customsCode + year + `E` + 10-digit serial.
    pub invt_no: Text,
    /// Declaration (activation) time.
    #[serde(with = "rfc3339_format")]
    pub decl_time: EventTime,
    /// Hex hash of the list content as declared.
    pub content_hash: Text,
    /// Order-number comparison status at declaration: `consistent`, `returned`, `pending`.
    pub comparison: Text,
    /// Payment firm (`payCode`) of the order's payment, when known at declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_code: Option<Text>,
    /// The stored list as activated (shared with the operator state that keeps it).
    #[serde(flatten)]
    pub list: std::sync::Arc<Inventory>,
}

/// `cbec.receipts`: a status receipt in CEB terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// Stable identity.
    pub id: Text,
    /// `invtNo` when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invt_no: Option<Text>,
    /// `orderNo` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_no: Option<Text>,
    /// `logisticsNo` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logistics_no: Option<Text>,
    /// CEB status (negative: error).
    pub return_status: i32,
    /// Human text.
    pub return_info: Text,
    /// Event time of the status.
    #[serde(with = "rfc3339_format")]
    pub return_time: EventTime,
    /// Controls that caused this status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_ids: Vec<Text>,
    /// Payment firm of the order's payment, on the receipt that says a declared list's
    /// order-number comparison became consistent after its declaration (the firm the
    /// declared list could not name: its payment came later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_code: Option<Text>,
}

impl Receipt {
    /// The Kafka key: `invtNo`, else `orderNo`, else `logisticsNo`, else the id.
    pub fn key(&self) -> &str {
        self.invt_no.as_deref().or(self.order_no.as_deref()).or(self.logistics_no.as_deref()).unwrap_or(&self.id)
    }
}

/// The values compared by the order-number comparison (§4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Compared {
    /// `ebcCode` of the list.
    pub list_ebc_code: String,
    /// `ebcCode` of the order, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ebc_code: Option<String>,
    /// `ebcCode` of the payment, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_ebc_code: Option<String>,
    /// Σ list `items[].totalPrice`.
    pub list_total: Dec,
    /// Order `goodsValue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_goods_value: Option<Dec>,
    /// Order `freight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_freight: Option<Dec>,
    /// Payment `charge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_charge: Option<Dec>,
    /// Order currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_currency: Option<String>,
    /// Payment currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_currency: Option<String>,
    /// Every `payNo` seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pay_nos: Vec<String>,
    /// Payment firm code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_code: Option<String>,
}

/// `cbec.returns`: an inconsistent list returned by the comparison, or the clearing of a
/// return by a later correcting message (`cleared: true`, no reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Return {
    /// Stable identity (`orderNo/revision/time ms`).
    pub id: String,
    /// Key.
    pub order_no: String,
    /// Parcel of the list.
    pub logistics_no: String,
    /// Reason codes: `order_missing`, `payment_missing`, `ebc_mismatch`, `amount_mismatch`,
    /// `currency_mismatch`, `duplicate_payment`.
    pub reasons: Vec<String>,
    /// True when this record clears an earlier return.
    pub cleared: bool,
    /// What was compared.
    pub compared: Compared,
    /// Event time of the verdict.
    #[serde(with = "rfc3339_format")]
    pub time: EventTime,
}

/// One reason that sent a list to the red channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelReason {
    /// `certificate_required`, `sampled`, `manual_control`, `goods_unregistered`, `hs_mismatch`,
    /// `review`.
    pub code: Text,
    /// Detail (rule, item, draw).
    pub detail: Text,
    /// The control behind it, for `manual_control` / `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_id: Option<Text>,
}

/// `cbec.channels`: red/green channel assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelDecision {
    /// Stable identity (`invtNo` + revision).
    pub id: Text,
    /// Key.
    pub invt_no: Text,
    /// Parcel.
    pub logistics_no: Text,
    /// Order.
    pub order_no: Text,
    /// Company.
    pub ebc_code: Text,
    /// `red` or `green`.
    pub channel: Text,
    /// Every reason that fired (empty when green).
    pub reasons: Vec<ChannelReason>,
    /// Tax-related: transferred to a declaration form, not summarized.
    pub tax_related: bool,
    /// Certificate-related.
    pub certificate_related: bool,
    /// Event time.
    #[serde(with = "rfc3339_format")]
    pub time: EventTime,
}

/// `cbec.sorting`: one decision per scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SortingDecision {
    /// Stable identity: `lineId/scanId/logisticsNo/scanTime` (ms), then `/clear` or
    /// `/suspect` when the scan carries an X-ray result.
    pub id: Text,
    /// Key (barcode).
    pub logistics_no: Text,
    /// Declared list, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invt_no: Option<Text>,
    /// Scan identity.
    pub scan_id: Text,
    /// Sorting line.
    pub line_id: Text,
    /// `release`, `inspect`, `certificate` or `hold`.
    pub port: Text,
    /// Why.
    pub reasons: Vec<Text>,
    /// Controls that affected the decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_ids: Vec<Text>,
    /// Scan time.
    #[serde(with = "rfc3339_format")]
    pub scan_time: EventTime,
    /// Decision time in event time (decisions are immediate: the scan time of the scan
    /// that triggered them). Wall-clock latency is a metric, not a field, so replays are
    /// byte-identical.
    #[serde(with = "rfc3339_format")]
    pub decision_time: EventTime,
}

/// `cbec.releases`: the verdict of a seal (at the site when sealed, at the port when verified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealVerdict {
    /// Stable identity: `sealNo/stage/time` (ms).
    pub id: String,
    /// Key.
    pub seal_no: Text,
    /// Vehicle.
    pub vehicle_no: Text,
    /// `sealed` (accepted at the site) or `port` (verdict at the port).
    pub stage: String,
    /// `released` or `held`.
    pub verdict: String,
    /// Why.
    pub reasons: Vec<String>,
    /// Parcels covered.
    pub logistics_nos: Vec<Text>,
    /// Port, at the port stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_code: Option<Text>,
    /// Vehicle-filing control applied, when there is one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_ids: Vec<Text>,
    /// Event time.
    #[serde(with = "rfc3339_format")]
    pub time: EventTime,
}

/// One item row of a summary declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryItem {
    /// Row number from 1.
    pub gnum: u32,
    /// HS code.
    pub gcode: String,
    /// Declared unit.
    pub unit: String,
    /// Item currency.
    pub currency: String,
    /// Item (destination) country.
    pub country: String,
    /// Σ qty.
    pub qty: Dec,
    /// Σ qty1.
    pub qty1: Dec,
    /// Σ totalPrice.
    pub total_price: Dec,
    /// Lists contributing (negative in a withdrawal: lists taken out).
    pub list_count: i64,
}

/// `cbec.summaries`: one summary declaration (CEB701/792 sense), or the withdrawal of a
/// list from a declaration already made (`withdrawal`: the list was returned after its
/// period closed; its quantities, amounts and count negative, so that sums over a period's
/// records are what stands declared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Stable identity: period + head group.
    pub summary_id: String,
    /// Calendar month `YYYYMM` of `ieDate`.
    pub period: u32,
    /// Company.
    pub ebc_code: String,
    /// Owner (only when `summaryFlag` is 2; else empty).
    pub owner_code: String,
    /// Destination country.
    pub country: String,
    /// Exit port.
    pub port_code: String,
    /// Transport mode.
    pub traf_mode: String,
    /// Lists covered (negative in a withdrawal).
    pub list_count: i64,
    /// Σ totalPrice over rows.
    pub total_price: Dec,
    /// Item rows.
    pub items: Vec<SummaryItem>,
    /// The lists covered (withdrawn, in a withdrawal).
    pub invt_nos: Vec<String>,
    /// A withdrawal: `invtNos` are taken out of the period's declaration of this form.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawal: bool,
}

/// `cbec.dlq`: rejected input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Topic it came from.
    pub source_topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (or line number for files).
    pub offset: i64,
    /// Source key, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Entity index inside an XML document, when the defect is entity-level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_index: Option<u32>,
    /// Machine code.
    pub code: String,
    /// Human reason.
    pub reason: String,
    /// The payload (first 64 KiB), as text when UTF-8.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
    /// True when the payload was cut at 64 KiB.
    pub truncated: bool,
}

/// The payload limit of a dead letter.
pub const DLQ_PAYLOAD_LIMIT: usize = 64 * 1024;

impl DeadLetter {
    /// Builds a dead letter, truncating the payload at 64 KiB.
    pub fn new(
        source_topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        err: &crate::error::DecodeError,
        payload: &[u8],
    ) -> DeadLetter {
        let truncated = payload.len() > DLQ_PAYLOAD_LIMIT;
        let cut = &payload[..payload.len().min(DLQ_PAYLOAD_LIMIT)];
        let (payload, payload_encoding) = match std::str::from_utf8(cut) {
            Ok(s) => (s.to_string(), "utf8"),
            Err(e) if truncated && e.error_len().is_none() => {
                (String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned(), "utf8")
            }
            Err(_) => (base64(cut), "base64"),
        };
        DeadLetter {
            source_topic: source_topic.to_string(),
            partition,
            offset,
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            entity_index: None,
            code: err.code.as_str().to_string(),
            reason: err.reason.clone(),
            payload,
            payload_encoding: payload_encoding.to_string(),
            truncated,
        }
    }
}

/// Standard base64 (RFC 4648) for non-UTF-8 payloads.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
