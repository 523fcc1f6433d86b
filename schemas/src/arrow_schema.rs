//! Arrow schemas and batch builders for every output table. Column names are the CEB field
//! names; money and quantities stay DECIMAL (`Decimal128(19,5)`, sums `Decimal128(38,5)`);
//! times are `Timestamp(ms, "+08:00")`. The schema of a table is the schema of its empty
//! batch, so schema and builder can never disagree.
//!
//! Tables: `declared`, `declared_items`, `channels`, `sorting`, `returns`, `receipts`,
//! `summaries`, `summary_items`.

use crate::decimal::Dec;
use crate::outputs::*;
use crate::time::EventTime;
use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, ListBuilder, StringArray, StringBuilder,
    TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Time zone of every timestamp column (China Standard Time).
pub const TZ: &str = "+08:00";
/// Every table name.
pub const TABLES: [&str; 8] =
    ["declared", "declared_items", "channels", "sorting", "returns", "receipts", "summaries", "summary_items"];

fn s<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}
fn os<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(it.collect::<StringArray>())
}
fn dec(it: impl Iterator<Item = Dec>, precision: u8) -> ArrayRef {
    Arc::new(
        Decimal128Array::from_iter_values(it.map(Dec::scaled))
            .with_precision_and_scale(precision, 5)
            .expect("valid decimal precision"),
    )
}
fn odec(it: impl Iterator<Item = Option<Dec>>) -> ArrayRef {
    Arc::new(
        it.map(|d| d.map(Dec::scaled))
            .collect::<Decimal128Array>()
            .with_precision_and_scale(19, 5)
            .expect("valid decimal precision"),
    )
}
fn ts(it: impl Iterator<Item = EventTime>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(it.map(|t| t.0)).with_timezone(TZ))
}
fn b(it: impl Iterator<Item = bool>) -> ArrayRef {
    Arc::new(it.map(Some).collect::<BooleanArray>())
}
fn i32s(it: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(it))
}
fn u32s(it: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(it))
}
fn i64s(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(it))
}
fn list<'a>(it: impl Iterator<Item = &'a [String]>) -> ArrayRef {
    let mut lb = ListBuilder::new(StringBuilder::new());
    for v in it {
        for x in v {
            lb.values().append_value(x);
        }
        lb.append(true);
    }
    Arc::new(lb.finish())
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> =
        cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), a.null_count() > 0 || nullable(n))).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, a)| a).collect())
}

/// Columns that may be null in some batch (so every batch of a table has one schema).
fn nullable(name: &str) -> bool {
    matches!(
        name,
        "invtNo"
            | "orderGoodsValue"
            | "orderFreight"
            | "paymentCharge"
            | "orderCurrency"
            | "paymentCurrency"
            | "orderEbcCode"
            | "paymentEbcCode"
            | "payCode"
            | "orderNo"
            | "logisticsNo"
            | "totalPackageNo"
    )
}

fn reason_codes(r: &[ChannelReason]) -> String {
    r.iter().map(|x| x.code.as_str()).collect::<Vec<_>>().join(",")
}
fn has(r: &[ChannelReason], code: &str) -> bool {
    r.iter().any(|x| x.code == code)
}
fn control_ids(r: &[ChannelReason]) -> String {
    r.iter().filter_map(|x| x.control_id.as_deref()).collect::<Vec<_>>().join(",")
}

/// `declared`: one row per declared list (head).
pub fn declared_batch(v: &[DeclaredList]) -> Result<RecordBatch, ArrowError> {
    batch(vec![
        ("invtNo", s(v.iter().map(|d| d.invt_no.as_str()))),
        ("logisticsNo", s(v.iter().map(|d| d.list.logistics_no.as_str()))),
        ("orderNo", s(v.iter().map(|d| d.list.order_no.as_str()))),
        ("declTime", ts(v.iter().map(|d| d.decl_time))),
        ("appTime", ts(v.iter().map(|d| d.list.app_time))),
        ("customsCode", s(v.iter().map(|d| d.list.customs_code.as_str()))),
        ("portCode", s(v.iter().map(|d| d.list.port_code.as_str()))),
        ("ieDate", s(v.iter().map(|d| d.list.ie_date.to_string()).collect::<Vec<_>>().iter().map(String::as_str))),
        ("ebpCode", s(v.iter().map(|d| d.list.ebp_code.as_str()))),
        ("ebcCode", s(v.iter().map(|d| d.list.ebc_code.as_str()))),
        ("ownerCode", s(v.iter().map(|d| d.list.owner_code.as_str()))),
        ("agentCode", s(v.iter().map(|d| d.list.agent_code.as_str()))),
        ("logisticsCode", s(v.iter().map(|d| d.list.logistics_code.as_str()))),
        (
            "statisticsFlag",
            s(v.iter().map(|d| if d.list.statistics_flag == crate::StatisticsFlag::B { "B" } else { "A" })),
        ),
        ("tradeMode", s(v.iter().map(|d| d.list.trade_mode.as_str()))),
        ("trafMode", s(v.iter().map(|d| d.list.traf_mode.as_str()))),
        ("country", s(v.iter().map(|d| d.list.country.as_str()))),
        ("POD", s(v.iter().map(|d| d.list.pod.as_str()))),
        ("freight", dec(v.iter().map(|d| d.list.freight), 19)),
        ("insuredFee", dec(v.iter().map(|d| d.list.insured_fee), 19)),
        ("grossWeight", dec(v.iter().map(|d| d.list.gross_weight), 19)),
        ("netWeight", dec(v.iter().map(|d| d.list.net_weight), 19)),
        ("packNo", u32s(v.iter().map(|d| d.list.pack_no))),
        ("totalPrice", dec(v.iter().map(|d| d.list.items.iter().map(|i| i.total_price).sum()), 38)),
        ("itemCount", u32s(v.iter().map(|d| d.list.items.len() as u32))),
        ("comparison", s(v.iter().map(|d| d.comparison.as_str()))),
        ("payCode", os(v.iter().map(|d| d.pay_code.as_deref()))),
        ("contentHash", s(v.iter().map(|d| d.content_hash.as_str()))),
    ])
}

/// `declared_items`: one row per item of a declared list.
pub fn declared_items_batch(v: &[DeclaredList]) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<(&DeclaredList, &crate::InventoryItem)> =
        v.iter().flat_map(|d| d.list.items.iter().map(move |i| (d, i))).collect();
    batch(vec![
        ("invtNo", s(rows.iter().map(|(d, _)| d.invt_no.as_str()))),
        ("logisticsNo", s(rows.iter().map(|(d, _)| d.list.logistics_no.as_str()))),
        ("ebcCode", s(rows.iter().map(|(d, _)| d.list.ebc_code.as_str()))),
        ("declTime", ts(rows.iter().map(|(d, _)| d.decl_time))),
        ("gnum", u32s(rows.iter().map(|(_, i)| i.gnum))),
        ("itemNo", s(rows.iter().map(|(_, i)| i.item_no.as_str()))),
        ("gcode", s(rows.iter().map(|(_, i)| i.gcode.as_str()))),
        ("gname", s(rows.iter().map(|(_, i)| i.gname.as_str()))),
        ("gmodel", s(rows.iter().map(|(_, i)| i.gmodel.as_str()))),
        ("country", s(rows.iter().map(|(_, i)| i.country.as_str()))),
        ("currency", s(rows.iter().map(|(_, i)| i.currency.as_str()))),
        ("qty", dec(rows.iter().map(|(_, i)| i.qty), 19)),
        ("qty1", dec(rows.iter().map(|(_, i)| i.qty1), 19)),
        ("unit", s(rows.iter().map(|(_, i)| i.unit.as_str()))),
        ("unit1", s(rows.iter().map(|(_, i)| i.unit1.as_str()))),
        ("price", dec(rows.iter().map(|(_, i)| i.price), 19)),
        ("totalPrice", dec(rows.iter().map(|(_, i)| i.total_price), 19)),
    ])
}

/// `channels`: one row per channel decision, with one boolean column per reason code.
pub fn channels_batch(v: &[ChannelDecision]) -> Result<RecordBatch, ArrowError> {
    let reasons: Vec<String> = v.iter().map(|c| reason_codes(&c.reasons)).collect();
    let ctl: Vec<String> = v.iter().map(|c| control_ids(&c.reasons)).collect();
    batch(vec![
        ("id", s(v.iter().map(|c| c.id.as_str()))),
        ("invtNo", s(v.iter().map(|c| c.invt_no.as_str()))),
        ("logisticsNo", s(v.iter().map(|c| c.logistics_no.as_str()))),
        ("orderNo", s(v.iter().map(|c| c.order_no.as_str()))),
        ("ebcCode", s(v.iter().map(|c| c.ebc_code.as_str()))),
        ("channel", s(v.iter().map(|c| c.channel.as_str()))),
        ("reasons", s(reasons.iter().map(String::as_str))),
        ("certificateRequired", b(v.iter().map(|c| has(&c.reasons, "certificate_required")))),
        ("sampled", b(v.iter().map(|c| has(&c.reasons, "sampled")))),
        ("manualControl", b(v.iter().map(|c| has(&c.reasons, "manual_control")))),
        ("goodsUnregistered", b(v.iter().map(|c| has(&c.reasons, "goods_unregistered")))),
        ("hsMismatch", b(v.iter().map(|c| has(&c.reasons, "hs_mismatch")))),
        ("review", b(v.iter().map(|c| has(&c.reasons, "review")))),
        ("controlIds", s(ctl.iter().map(String::as_str))),
        ("taxRelated", b(v.iter().map(|c| c.tax_related))),
        ("certificateRelated", b(v.iter().map(|c| c.certificate_related))),
        ("time", ts(v.iter().map(|c| c.time))),
    ])
}

/// `sorting`: one row per sorting decision.
pub fn sorting_batch(v: &[SortingDecision]) -> Result<RecordBatch, ArrowError> {
    let reasons: Vec<String> = v.iter().map(|d| d.reasons.join(",")).collect();
    let ctl: Vec<String> = v.iter().map(|d| d.control_ids.join(",")).collect();
    batch(vec![
        ("id", s(v.iter().map(|d| d.id.as_str()))),
        ("logisticsNo", s(v.iter().map(|d| d.logistics_no.as_str()))),
        ("invtNo", os(v.iter().map(|d| d.invt_no.as_deref()))),
        ("scanId", s(v.iter().map(|d| d.scan_id.as_str()))),
        ("lineId", s(v.iter().map(|d| d.line_id.as_str()))),
        ("port", s(v.iter().map(|d| d.port.as_str()))),
        ("reasons", s(reasons.iter().map(String::as_str))),
        ("controlIds", s(ctl.iter().map(String::as_str))),
        ("scanTime", ts(v.iter().map(|d| d.scan_time))),
        ("decisionTime", ts(v.iter().map(|d| d.decision_time))),
    ])
}

/// `returns`: one row per return (or clearing of a return).
pub fn returns_batch(v: &[Return]) -> Result<RecordBatch, ArrowError> {
    let reasons: Vec<String> = v.iter().map(|r| r.reasons.join(",")).collect();
    batch(vec![
        ("id", s(v.iter().map(|r| r.id.as_str()))),
        ("orderNo", s(v.iter().map(|r| r.order_no.as_str()))),
        ("logisticsNo", s(v.iter().map(|r| r.logistics_no.as_str()))),
        ("reasons", s(reasons.iter().map(String::as_str))),
        ("cleared", b(v.iter().map(|r| r.cleared))),
        ("listEbcCode", s(v.iter().map(|r| r.compared.list_ebc_code.as_str()))),
        ("orderEbcCode", os(v.iter().map(|r| r.compared.order_ebc_code.as_deref()))),
        ("paymentEbcCode", os(v.iter().map(|r| r.compared.payment_ebc_code.as_deref()))),
        ("listTotal", dec(v.iter().map(|r| r.compared.list_total), 38)),
        ("orderGoodsValue", odec(v.iter().map(|r| r.compared.order_goods_value))),
        ("orderFreight", odec(v.iter().map(|r| r.compared.order_freight))),
        ("paymentCharge", odec(v.iter().map(|r| r.compared.payment_charge))),
        ("orderCurrency", os(v.iter().map(|r| r.compared.order_currency.as_deref()))),
        ("paymentCurrency", os(v.iter().map(|r| r.compared.payment_currency.as_deref()))),
        ("payCode", os(v.iter().map(|r| r.compared.pay_code.as_deref()))),
        ("time", ts(v.iter().map(|r| r.time))),
    ])
}

/// `receipts`: one row per receipt.
pub fn receipts_batch(v: &[Receipt]) -> Result<RecordBatch, ArrowError> {
    let ctl: Vec<String> = v.iter().map(|r| r.control_ids.join(",")).collect();
    batch(vec![
        ("id", s(v.iter().map(|r| r.id.as_str()))),
        ("invtNo", os(v.iter().map(|r| r.invt_no.as_deref()))),
        ("orderNo", os(v.iter().map(|r| r.order_no.as_deref()))),
        ("logisticsNo", os(v.iter().map(|r| r.logistics_no.as_deref()))),
        ("returnStatus", i32s(v.iter().map(|r| r.return_status))),
        ("returnInfo", s(v.iter().map(|r| r.return_info.as_str()))),
        ("controlIds", s(ctl.iter().map(String::as_str))),
        ("returnTime", ts(v.iter().map(|r| r.return_time))),
        ("payCode", os(v.iter().map(|r| r.pay_code.as_deref()))),
    ])
}

/// `summaries`: one row per summary declaration.
pub fn summaries_batch(v: &[Summary]) -> Result<RecordBatch, ArrowError> {
    batch(vec![
        ("summaryId", s(v.iter().map(|x| x.summary_id.as_str()))),
        ("period", u32s(v.iter().map(|x| x.period))),
        ("ebcCode", s(v.iter().map(|x| x.ebc_code.as_str()))),
        ("ownerCode", s(v.iter().map(|x| x.owner_code.as_str()))),
        ("country", s(v.iter().map(|x| x.country.as_str()))),
        ("portCode", s(v.iter().map(|x| x.port_code.as_str()))),
        ("trafMode", s(v.iter().map(|x| x.traf_mode.as_str()))),
        ("listCount", i64s(v.iter().map(|x| x.list_count))),
        ("totalPrice", dec(v.iter().map(|x| x.total_price), 38)),
        ("itemCount", u32s(v.iter().map(|x| x.items.len() as u32))),
        ("invtNos", list(v.iter().map(|x| x.invt_nos.as_slice()))),
        ("withdrawal", b(v.iter().map(|x| x.withdrawal))),
    ])
}

/// `summary_items`: one row per item row of a summary declaration.
pub fn summary_items_batch(v: &[Summary]) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<(&Summary, &SummaryItem)> = v.iter().flat_map(|x| x.items.iter().map(move |i| (x, i))).collect();
    batch(vec![
        ("summaryId", s(rows.iter().map(|(x, _)| x.summary_id.as_str()))),
        ("period", u32s(rows.iter().map(|(x, _)| x.period))),
        ("ebcCode", s(rows.iter().map(|(x, _)| x.ebc_code.as_str()))),
        ("gnum", u32s(rows.iter().map(|(_, i)| i.gnum))),
        ("gcode", s(rows.iter().map(|(_, i)| i.gcode.as_str()))),
        ("unit", s(rows.iter().map(|(_, i)| i.unit.as_str()))),
        ("currency", s(rows.iter().map(|(_, i)| i.currency.as_str()))),
        ("country", s(rows.iter().map(|(_, i)| i.country.as_str()))),
        ("qty", dec(rows.iter().map(|(_, i)| i.qty), 38)),
        ("qty1", dec(rows.iter().map(|(_, i)| i.qty1), 38)),
        ("totalPrice", dec(rows.iter().map(|(_, i)| i.total_price), 38)),
        ("listCount", i64s(rows.iter().map(|(_, i)| i.list_count))),
    ])
}

/// The schema of a table by name.
pub fn schema(table: &str) -> Option<SchemaRef> {
    let b = match table {
        "declared" => declared_batch(&[]),
        "declared_items" => declared_items_batch(&[]),
        "channels" => channels_batch(&[]),
        "sorting" => sorting_batch(&[]),
        "returns" => returns_batch(&[]),
        "receipts" => receipts_batch(&[]),
        "summaries" => summaries_batch(&[]),
        "summary_items" => summary_items_batch(&[]),
        _ => return None,
    };
    b.ok().map(|b| b.schema())
}
