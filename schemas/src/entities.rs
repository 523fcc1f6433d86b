//! Input entities of CONTRACT §2 as serde types. Field names are exactly the CEB element
//! names; JSON and CEB XML decode into these same types, then [`crate::validate`] checks
//! every field rule.

use crate::Text;
use crate::de::{code, opt_text, u32_lenient};
use crate::decimal::Dec;
use crate::time::{CebDate, EventTime, ceb_format, rfc3339_format};
use serde::{Deserialize, Serialize};

/// `appType`: 1 new, 2 change, 3 delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum AppType {
    /// 1: new.
    #[default]
    #[serde(rename = "1")]
    New,
    /// 2: change.
    #[serde(rename = "2")]
    Change,
    /// 3: delete.
    #[serde(rename = "3")]
    Delete,
}

/// `appStatus`: 1 temporarily stored, 2 declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum AppStatus {
    /// 1: temporarily stored (暂存).
    #[default]
    #[serde(rename = "1")]
    Stored,
    /// 2: declared (申报).
    #[serde(rename = "2")]
    Declared,
}

/// `statisticsFlag`: A simplified declaration, B summary declaration (汇总申报).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum StatisticsFlag {
    /// A: simplified declaration; not summarized.
    #[default]
    A,
    /// B: summarized monthly into a declaration form.
    B,
}

/// X-ray on-screen comparison result of a sorting-line scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Xray {
    /// Image matches the declared goods.
    Clear,
    /// Image does not match: unpack.
    Suspect,
}

/// Goods registration (商品备案) on `cbec.goods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GoodsRegistration {
    /// E-commerce company code.
    #[serde(default)]
    pub ebc_code: Text,
    /// Enterprise item number.
    #[serde(default)]
    pub item_no: Text,
    /// Item name.
    #[serde(default)]
    pub item_name: Text,
    /// 10-digit HS code.
    #[serde(default, deserialize_with = "code")]
    pub gcode: Text,
    /// Customs goods name.
    #[serde(default)]
    pub gname: Text,
    /// Specification / model.
    #[serde(default)]
    pub gmodel: Text,
    /// Declared unit code.
    #[serde(default, deserialize_with = "code")]
    pub unit: Text,
    /// 1 new, 2 change, 3 delete.
    pub app_type: AppType,
    /// Application time.
    #[serde(with = "ceb_format")]
    pub app_time: EventTime,
}

/// One row of an order (CEB303 `OrderList`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// Row number from 1.
    #[serde(deserialize_with = "u32_lenient")]
    pub gnum: u32,
    /// Enterprise item number.
    #[serde(default)]
    pub item_no: Text,
    /// Item name.
    #[serde(default)]
    pub item_name: Text,
    /// Unit code.
    #[serde(default, deserialize_with = "code")]
    pub unit: Text,
    /// Currency code.
    #[serde(default, deserialize_with = "code")]
    pub currency: Text,
    /// Quantity.
    pub qty: Dec,
    /// Unit price.
    pub price: Dec,
    /// Row total.
    pub total_price: Dec,
}

/// CEB303 `Order` on `cbec.orders`: the completed online transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// 1 new, 2 change, 3 delete.
    #[serde(default)]
    pub app_type: AppType,
    /// Application time.
    #[serde(with = "ceb_format")]
    pub app_time: EventTime,
    /// Always `E` (export) here.
    #[serde(default)]
    pub order_type: Text,
    /// Order number (key).
    #[serde(default)]
    pub order_no: Text,
    /// E-commerce platform code.
    #[serde(default)]
    pub ebp_code: Text,
    /// E-commerce company code.
    #[serde(default)]
    pub ebc_code: Text,
    /// Goods value.
    pub goods_value: Dec,
    /// Freight.
    pub freight: Dec,
    /// Currency code.
    #[serde(default, deserialize_with = "code")]
    pub currency: Text,
    /// Rows.
    #[serde(default)]
    pub items: Vec<OrderItem>,
}

/// One row of a list (CEB603 `InventoryList`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InventoryItem {
    /// Row number from 1.
    #[serde(deserialize_with = "u32_lenient")]
    pub gnum: u32,
    /// Enterprise item number (must be registered).
    #[serde(default)]
    pub item_no: Text,
    /// 10-digit HS code.
    #[serde(default, deserialize_with = "code")]
    pub gcode: Text,
    /// Customs goods name.
    #[serde(default)]
    pub gname: Text,
    /// Specification / model.
    #[serde(default)]
    pub gmodel: Text,
    /// Destination country code.
    #[serde(default, deserialize_with = "code")]
    pub country: Text,
    /// Currency code.
    #[serde(default, deserialize_with = "code")]
    pub currency: Text,
    /// Declared quantity.
    pub qty: Dec,
    /// First legal quantity.
    pub qty1: Dec,
    /// Declared unit.
    #[serde(default, deserialize_with = "code")]
    pub unit: Text,
    /// First legal unit.
    #[serde(default, deserialize_with = "code")]
    pub unit1: Text,
    /// Unit price.
    pub price: Dec,
    /// Row total.
    pub total_price: Dec,
}

/// CEB603 `Inventory` on `cbec.lists`: the temporarily stored list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// 1 new, 2 change, 3 delete.
    #[serde(default)]
    pub app_type: AppType,
    /// Application time.
    #[serde(with = "ceb_format")]
    pub app_time: EventTime,
    /// 1 stored, 2 declared.
    #[serde(default)]
    pub app_status: AppStatus,
    /// Declaring customs (4 digits).
    #[serde(default, deserialize_with = "code")]
    pub customs_code: Text,
    /// Platform code.
    #[serde(default)]
    pub ebp_code: Text,
    /// Order number.
    #[serde(default)]
    pub order_no: Text,
    /// Logistics firm code.
    #[serde(default)]
    pub logistics_code: Text,
    /// Waybill number (key of the clear stage).
    #[serde(default)]
    pub logistics_no: Text,
    /// Enterprise internal number.
    #[serde(default)]
    pub cop_no: Text,
    /// Exit port customs (4 digits).
    #[serde(default, deserialize_with = "code")]
    pub port_code: Text,
    /// Export date.
    pub ie_date: CebDate,
    /// A simplified, B summary declaration.
    #[serde(default)]
    pub statistics_flag: StatisticsFlag,
    /// Declaring agent code.
    #[serde(default)]
    pub agent_code: Text,
    /// E-commerce company code.
    #[serde(default)]
    pub ebc_code: Text,
    /// Producer/seller code.
    #[serde(default)]
    pub owner_code: Text,
    /// Trade mode (9610).
    #[serde(default, deserialize_with = "code")]
    pub trade_mode: Text,
    /// Transport mode.
    #[serde(default, deserialize_with = "code")]
    pub traf_mode: Text,
    /// Destination country.
    #[serde(default, deserialize_with = "code")]
    pub country: Text,
    /// Port of destination.
    #[serde(rename = "POD", default, deserialize_with = "code")]
    pub pod: Text,
    /// Freight.
    pub freight: Dec,
    /// Insurance.
    pub insured_fee: Dec,
    /// Packages.
    #[serde(deserialize_with = "u32_lenient")]
    pub pack_no: u32,
    /// Gross weight (kg).
    pub gross_weight: Dec,
    /// Net weight (kg).
    pub net_weight: Dec,
    /// Master bill / total package number, when known.
    #[serde(default, deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub total_package_no: Option<Text>,
    /// Rows.
    #[serde(default)]
    pub items: Vec<InventoryItem>,
}

/// CEB505 `Logistics` on `cbec.waybills`: parcel collection; activates the stored list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Waybill {
    /// Waybill number (key).
    #[serde(default)]
    pub logistics_no: Text,
    /// Logistics firm code.
    #[serde(default)]
    pub logistics_code: Text,
    /// Freight.
    pub freight: Dec,
    /// Insurance.
    pub insured_fee: Dec,
    /// Currency code.
    #[serde(default, deserialize_with = "code")]
    pub currency: Text,
    /// Gross weight.
    pub gross_weight: Dec,
    /// Packages.
    #[serde(deserialize_with = "u32_lenient")]
    pub pack_no: u32,
    /// Goods description.
    #[serde(default)]
    pub goods_info: Text,
    /// Collection time.
    #[serde(with = "ceb_format")]
    pub app_time: EventTime,
}

/// CEB403 `Receipts` on `cbec.payments`: the payment firm's receipt of payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    /// Order number (key).
    #[serde(default)]
    pub order_no: Text,
    /// Platform code.
    #[serde(default)]
    pub ebp_code: Text,
    /// E-commerce company code.
    #[serde(default)]
    pub ebc_code: Text,
    /// Payment firm code.
    #[serde(default)]
    pub pay_code: Text,
    /// Payment firm name.
    #[serde(default)]
    pub pay_name: Text,
    /// Payment transaction number.
    #[serde(default)]
    pub pay_no: Text,
    /// Amount received.
    pub charge: Dec,
    /// Currency code.
    #[serde(default, deserialize_with = "code")]
    pub currency: Text,
    /// Accounting time.
    #[serde(with = "ceb_format")]
    pub accounting_date: EventTime,
}

/// A row of an arrival / departure / bill message: one parcel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParcelRef {
    /// Waybill number.
    #[serde(default)]
    pub logistics_no: Text,
    /// Master bill / total package number.
    #[serde(default, deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub total_package_no: Option<Text>,
}

/// CEB507 `Arrival` on `cbec.arrivals`: parcels arrived at the supervised site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    /// Site customs code.
    #[serde(default, deserialize_with = "code")]
    pub customs_code: Text,
    /// Site operator code.
    #[serde(default)]
    pub operator_code: Text,
    /// Supervised location number.
    #[serde(default, deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub loct_no: Option<Text>,
    /// Domestic transport number.
    #[serde(default)]
    pub domestic_traf_no: Text,
    /// Arrival time.
    #[serde(with = "ceb_format")]
    pub app_time: EventTime,
    /// Parcels.
    #[serde(default)]
    pub items: Vec<ParcelRef>,
}

/// CEB509 `Departure` on `cbec.departures`: exit information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Departure {
    /// Exit customs code.
    #[serde(default, deserialize_with = "code")]
    pub customs_code: Text,
    /// Logistics firm code.
    #[serde(default)]
    pub logistics_code: Text,
    /// Transport mode.
    #[serde(default, deserialize_with = "code")]
    pub traf_mode: Text,
    /// Conveyance name.
    #[serde(default, deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub traf_name: Option<Text>,
    /// Voyage number.
    #[serde(default, deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub voyage_no: Option<Text>,
    /// Bill of lading.
    #[serde(default, deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub bill_no: Option<Text>,
    /// Departure time.
    #[serde(with = "ceb_format")]
    pub leave_time: EventTime,
    /// Parcels.
    #[serde(default)]
    pub items: Vec<ParcelRef>,
}

/// CEB607 `WayBill` (list total/sub bill). Decoded and validated by `cbec check`; not an
/// input of any topic in the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WayBill {
    /// Customs code.
    #[serde(default, deserialize_with = "code")]
    pub customs_code: Text,
    /// Enterprise internal number.
    #[serde(default)]
    pub cop_no: Text,
    /// Bill of lading.
    #[serde(default)]
    pub bill_no: Text,
    /// Application time.
    #[serde(with = "ceb_format")]
    pub app_time: EventTime,
    /// Parcels.
    #[serde(default)]
    pub items: Vec<ParcelRef>,
}

/// A sorting-line barcode scan on `cbec.scans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Scan {
    /// Barcode = waybill number.
    #[serde(default)]
    pub logistics_no: Text,
    /// Sorting line.
    #[serde(default)]
    pub line_id: Text,
    /// Scan identity (unique per line).
    #[serde(default)]
    pub scan_id: Text,
    /// Scan time.
    #[serde(with = "rfc3339_format")]
    pub scan_time: EventTime,
    /// X-ray comparison, when the scan carries one.
    #[serde(default)]
    pub xray: Option<Xray>,
}

/// A seal event on `cbec.seals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SealEvent {
    /// Customs sealed a vehicle after release at the site.
    #[serde(rename_all = "camelCase")]
    Sealed {
        /// Seal number (key).
        seal_no: Text,
        /// Supervision vehicle.
        vehicle_no: Text,
        /// Master bills under the seal.
        #[serde(default)]
        total_package_nos: Vec<Text>,
        /// Parcels under the seal.
        #[serde(default)]
        logistics_nos: Vec<Text>,
        /// When.
        #[serde(with = "rfc3339_format")]
        time: EventTime,
    },
    /// Port customs checked the seal.
    #[serde(rename_all = "camelCase")]
    Verified {
        /// Seal number (key).
        seal_no: Text,
        /// Vehicle.
        vehicle_no: Text,
        /// Exit port customs.
        #[serde(deserialize_with = "code")]
        port_code: Text,
        /// Seal intact.
        intact: bool,
        /// When.
        #[serde(with = "rfc3339_format")]
        time: EventTime,
    },
}

impl SealEvent {
    /// The seal number.
    pub fn seal_no(&self) -> &str {
        match self {
            SealEvent::Sealed { seal_no, .. } | SealEvent::Verified { seal_no, .. } => seal_no,
        }
    }
    /// The event time.
    pub fn time(&self) -> EventTime {
        match self {
            SealEvent::Sealed { time, .. } | SealEvent::Verified { time, .. } => *time,
        }
    }
}

/// Kind of an officer control (CONTRACT §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    /// Manual control: force red.
    Control,
    /// Monitoring post moves a green list to on-site review.
    Review,
    /// On-site customs verified documents / inspection: may be released.
    Verified,
    /// Sampling rate from `time` on.
    InspectionRate,
    /// A supervision vehicle filed with customs.
    Vehicle,
    /// Cancel an earlier control.
    Lift,
}

/// What a control applies to: exactly one of these fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ControlTarget {
    /// One declared list.
    InvtNo(Text),
    /// One order.
    OrderNo(Text),
    /// One parcel.
    LogisticsNo(Text),
    /// A company.
    EbcCode(Text),
    /// A commodity group.
    GcodePrefix(Text),
    /// A vehicle.
    VehicleNo(Text),
    /// A sampling rate in [0, 1].
    Rate(Dec),
    /// Another control.
    ControlId(Text),
}

/// An officer action on `cbec.controls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    /// Control identity.
    pub id: Text,
    /// What it does.
    pub kind: ControlKind,
    /// What it applies to.
    pub target: ControlTarget,
    /// Officer identity.
    #[serde(default)]
    pub officer: Text,
    /// Free-text reason.
    #[serde(default)]
    pub reason: Text,
    /// Effective time.
    #[serde(with = "rfc3339_format")]
    pub time: EventTime,
}

/// Any decoded input entity. An entity is moved several times per message (batch,
/// sequencer, engine, operator inputs), so the one large variant, the stored list, is
/// boxed: its one allocation costs less than copying 480 bytes at every move of every
/// entity (the enum is 192 bytes instead of 480).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "camelCase")]
pub enum Entity {
    /// Goods registration.
    Goods(GoodsRegistration),
    /// CEB303 order.
    Order(Order),
    /// CEB603 stored list.
    List(Box<Inventory>),
    /// CEB505 waybill.
    Waybill(Waybill),
    /// CEB403 payment.
    Payment(Payment),
    /// CEB507 arrival.
    Arrival(Arrival),
    /// Sorting-line scan.
    Scan(Scan),
    /// Seal event.
    Seal(SealEvent),
    /// CEB509 departure.
    Departure(Departure),
    /// Officer control.
    Control(Control),
    /// CEB607 bill (check only).
    WayBill(WayBill),
}

impl Entity {
    /// CEB message number or entity name, for reports (`CEB303`, `scan`).
    pub fn kind(&self) -> &'static str {
        match self {
            Entity::Goods(_) => "goods",
            Entity::Order(_) => "CEB303",
            Entity::List(_) => "CEB603",
            Entity::Waybill(_) => "CEB505",
            Entity::Payment(_) => "CEB403",
            Entity::Arrival(_) => "CEB507",
            Entity::Scan(_) => "scan",
            Entity::Seal(_) => "seal",
            Entity::Departure(_) => "CEB509",
            Entity::Control(_) => "control",
            Entity::WayBill(_) => "CEB607",
        }
    }

    /// Event time: the field CONTRACT §1 names for the entity's type.
    pub fn event_time(&self) -> crate::EventTime {
        match self {
            Entity::Goods(x) => x.app_time,
            Entity::Order(x) => x.app_time,
            Entity::List(x) => x.app_time,
            Entity::Waybill(x) => x.app_time,
            Entity::Payment(x) => x.accounting_date,
            Entity::Arrival(x) => x.app_time,
            Entity::Scan(x) => x.scan_time,
            Entity::Seal(x) => x.time(),
            Entity::Departure(x) => x.leave_time,
            Entity::Control(x) => x.time,
            Entity::WayBill(x) => x.app_time,
        }
    }

    /// `name=value` of the entity's business key, for reports.
    pub fn key_field(&self) -> (&'static str, String) {
        match self {
            Entity::Goods(g) => ("itemNo", format!("{}/{}", g.ebc_code, g.item_no)),
            Entity::Order(o) => ("orderNo", o.order_no.to_string()),
            Entity::List(l) => ("orderNo", l.order_no.to_string()),
            Entity::Waybill(w) => ("logisticsNo", w.logistics_no.to_string()),
            Entity::Payment(p) => ("orderNo", p.order_no.to_string()),
            Entity::Arrival(a) => ("items", a.items.len().to_string()),
            Entity::Scan(s) => ("logisticsNo", s.logistics_no.to_string()),
            Entity::Seal(s) => ("sealNo", s.seal_no().to_string()),
            Entity::Departure(d) => ("items", d.items.len().to_string()),
            Entity::Control(c) => ("id", c.id.to_string()),
            Entity::WayBill(w) => ("billNo", w.bill_no.to_string()),
        }
    }
}
