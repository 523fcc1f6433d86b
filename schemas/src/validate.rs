//! Field rules (CEB 2022 XSD lengths and patterns, CONTRACT §1) applied after decoding, the
//! same for JSON and XML. The first violated rule is returned.

use crate::decimal::Dec;
use crate::entities::*;
use crate::error::{DecodeError, ErrorCode};

/// Upper bound on body rows of one entity.
pub const MAX_ITEMS: usize = 1000;

type R = Result<(), DecodeError>;

fn required(field: &str, v: &str, max: usize) -> R {
    if v.trim().is_empty() {
        return Err(DecodeError::new(ErrorCode::MissingField, format!("{field} is required")));
    }
    optional(field, v, max)
}

fn optional(field: &str, v: &str, max: usize) -> R {
    if v.len() <= max {
        return Ok(()); // bytes ≥ characters: no need to count
    }
    let n = v.chars().count();
    if n > max {
        return Err(DecodeError::new(ErrorCode::TooLong, format!("{field} has {n} characters, at most {max} allowed")));
    }
    Ok(())
}

fn exact(field: &str, v: &str, len: usize) -> R {
    if v.is_empty() {
        return Err(DecodeError::new(ErrorCode::MissingField, format!("{field} is required")));
    }
    let n = if v.is_ascii() { v.len() } else { v.chars().count() };
    if n != len {
        return Err(DecodeError::new(
            ErrorCode::WrongLength,
            format!("{field} '{v}' has {n} characters, exactly {len} required"),
        ));
    }
    Ok(())
}

fn digits(field: &str, v: &str, len: usize) -> R {
    exact(field, v, len)?;
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::new(ErrorCode::NotDigits, format!("{field} '{v}' must be {len} digits")));
    }
    Ok(())
}

fn amount(field: &str, v: Dec) -> R {
    if v.is_negative() {
        return Err(DecodeError::new(ErrorCode::NegativeAmount, format!("{field} {v} is negative")));
    }
    Ok(())
}

fn rows<T>(field: &str, v: &[T]) -> R {
    if v.is_empty() {
        return Err(DecodeError::new(ErrorCode::NoItems, format!("{field} must have at least one row")));
    }
    if v.len() > MAX_ITEMS {
        return Err(DecodeError::new(ErrorCode::TooMany, format!("{field} has {} rows, at most {MAX_ITEMS}", v.len())));
    }
    Ok(())
}

fn at<T>(i: usize, r: Result<T, DecodeError>) -> Result<T, DecodeError> {
    r.map_err(|e| DecodeError::new(e.code, format!("items[{i}].{}", e.reason)))
}

/// Entities that carry field rules.
pub trait Validate {
    /// Checks every field rule; the first violation wins.
    fn validate(&self) -> R;
}

/// A 10-digit HS code (`gcode`).
pub fn hs_code(field: &str, v: &str) -> R {
    digits(field, v, 10)
}

impl Validate for GoodsRegistration {
    fn validate(&self) -> R {
        required("ebcCode", &self.ebc_code, 18)?;
        required("itemNo", &self.item_no, 20)?;
        optional("itemName", &self.item_name, 250)?;
        // gcode structure and nomenclature are review rules with a receipt (§4.1), not
        // dead-letter rules: only presence is checked here.
        required("gcode", &self.gcode, 32)?;
        required("gname", &self.gname, 250)?;
        optional("gmodel", &self.gmodel, 255)?;
        exact("unit", &self.unit, 3)
    }
}

impl Validate for Order {
    fn validate(&self) -> R {
        if self.order_type != "E" {
            return Err(DecodeError::new(
                ErrorCode::BadEnum,
                format!("orderType '{}' must be E (export)", self.order_type),
            ));
        }
        required("orderNo", &self.order_no, 60)?;
        required("ebpCode", &self.ebp_code, 18)?;
        required("ebcCode", &self.ebc_code, 18)?;
        amount("goodsValue", self.goods_value)?;
        amount("freight", self.freight)?;
        exact("currency", &self.currency, 3)?;
        rows("items", &self.items)?;
        for (i, it) in self.items.iter().enumerate() {
            at(i, required("itemNo", &it.item_no, 20))?;
            at(i, required("itemName", &it.item_name, 250))?;
            at(i, exact("unit", &it.unit, 3))?;
            at(i, exact("currency", &it.currency, 3))?;
            at(i, amount("qty", it.qty))?;
            at(i, amount("price", it.price))?;
            at(i, amount("totalPrice", it.total_price))?;
        }
        Ok(())
    }
}

impl Validate for Inventory {
    fn validate(&self) -> R {
        digits("customsCode", &self.customs_code, 4)?;
        required("ebpCode", &self.ebp_code, 18)?;
        required("orderNo", &self.order_no, 60)?;
        required("logisticsCode", &self.logistics_code, 18)?;
        required("logisticsNo", &self.logistics_no, 32)?;
        optional("copNo", &self.cop_no, 30)?;
        digits("portCode", &self.port_code, 4)?;
        required("agentCode", &self.agent_code, 18)?;
        required("ebcCode", &self.ebc_code, 18)?;
        required("ownerCode", &self.owner_code, 18)?;
        exact("tradeMode", &self.trade_mode, 4)?;
        required("trafMode", &self.traf_mode, 1)?;
        exact("country", &self.country, 3)?;
        required("POD", &self.pod, 6)?;
        amount("freight", self.freight)?;
        amount("insuredFee", self.insured_fee)?;
        amount("grossWeight", self.gross_weight)?;
        amount("netWeight", self.net_weight)?;
        if let Some(t) = &self.total_package_no {
            optional("totalPackageNo", t, 37)?;
        }
        rows("items", &self.items)?;
        for (i, it) in self.items.iter().enumerate() {
            at(i, required("itemNo", &it.item_no, 20))?;
            at(i, hs_code("gcode", &it.gcode))?;
            at(i, required("gname", &it.gname, 250))?;
            at(i, optional("gmodel", &it.gmodel, 255))?;
            at(i, exact("country", &it.country, 3))?;
            at(i, exact("currency", &it.currency, 3))?;
            at(i, exact("unit", &it.unit, 3))?;
            at(i, exact("unit1", &it.unit1, 3))?;
            at(i, amount("qty", it.qty))?;
            at(i, amount("qty1", it.qty1))?;
            at(i, amount("price", it.price))?;
            at(i, amount("totalPrice", it.total_price))?;
        }
        Ok(())
    }
}

impl Validate for Waybill {
    fn validate(&self) -> R {
        required("logisticsNo", &self.logistics_no, 32)?;
        required("logisticsCode", &self.logistics_code, 18)?;
        amount("freight", self.freight)?;
        amount("insuredFee", self.insured_fee)?;
        exact("currency", &self.currency, 3)?;
        amount("grossWeight", self.gross_weight)?;
        optional("goodsInfo", &self.goods_info, 500)
    }
}

impl Validate for Payment {
    fn validate(&self) -> R {
        required("orderNo", &self.order_no, 60)?;
        required("ebpCode", &self.ebp_code, 18)?;
        required("ebcCode", &self.ebc_code, 18)?;
        optional("payCode", &self.pay_code, 18)?;
        required("payName", &self.pay_name, 100)?;
        optional("payNo", &self.pay_no, 60)?;
        amount("charge", self.charge)?;
        exact("currency", &self.currency, 3)
    }
}

fn parcels(v: &[ParcelRef]) -> R {
    rows("items", v)?;
    for (i, p) in v.iter().enumerate() {
        at(i, required("logisticsNo", &p.logistics_no, 32))?;
        if let Some(t) = &p.total_package_no {
            at(i, optional("totalPackageNo", t, 37))?;
        }
    }
    Ok(())
}

impl Validate for Arrival {
    fn validate(&self) -> R {
        digits("customsCode", &self.customs_code, 4)?;
        required("operatorCode", &self.operator_code, 18)?;
        if let Some(l) = &self.loct_no {
            optional("loctNo", l, 10)?;
        }
        optional("domesticTrafNo", &self.domestic_traf_no, 100)?;
        parcels(&self.items)
    }
}

impl Validate for Departure {
    fn validate(&self) -> R {
        digits("customsCode", &self.customs_code, 4)?;
        required("logisticsCode", &self.logistics_code, 18)?;
        required("trafMode", &self.traf_mode, 1)?;
        parcels(&self.items)
    }
}

impl Validate for WayBill {
    fn validate(&self) -> R {
        digits("customsCode", &self.customs_code, 4)?;
        required("copNo", &self.cop_no, 30)?;
        parcels(&self.items)
    }
}

impl Validate for Scan {
    fn validate(&self) -> R {
        required("logisticsNo", &self.logistics_no, 32)?;
        required("lineId", &self.line_id, 32)?;
        required("scanId", &self.scan_id, 64)
    }
}

impl Validate for SealEvent {
    fn validate(&self) -> R {
        match self {
            SealEvent::Sealed { seal_no, vehicle_no, total_package_nos, logistics_nos, .. } => {
                required("sealNo", seal_no, 64)?;
                required("vehicleNo", vehicle_no, 32)?;
                if total_package_nos.is_empty() && logistics_nos.is_empty() {
                    return Err(DecodeError::new(
                        ErrorCode::NoItems,
                        "a sealed event must name logisticsNos or totalPackageNos",
                    ));
                }
                for l in logistics_nos {
                    required("logisticsNos[]", l, 32)?;
                }
                Ok(())
            }
            SealEvent::Verified { seal_no, vehicle_no, port_code, .. } => {
                required("sealNo", seal_no, 64)?;
                required("vehicleNo", vehicle_no, 32)?;
                digits("portCode", port_code, 4)
            }
        }
    }
}

impl Validate for Control {
    fn validate(&self) -> R {
        required("id", &self.id, 64)?;
        optional("officer", &self.officer, 64)?;
        optional("reason", &self.reason, 1000)?;
        use ControlKind as K;
        use ControlTarget as T;
        let ok = match (&self.kind, &self.target) {
            (K::Control, T::InvtNo(_) | T::OrderNo(_) | T::LogisticsNo(_) | T::EbcCode(_) | T::GcodePrefix(_)) => true,
            (K::Review | K::Verified, T::InvtNo(_) | T::OrderNo(_) | T::LogisticsNo(_)) => true,
            (K::InspectionRate, T::Rate(r)) => !r.is_negative() && *r <= Dec::from_int(1),
            (K::Vehicle, T::VehicleNo(_)) => true,
            (K::Lift, T::ControlId(_)) => true,
            _ => false,
        };
        if !ok {
            return Err(DecodeError::new(
                ErrorCode::BadTarget,
                format!("target {:?} does not fit a control of kind {:?}", self.target, self.kind),
            ));
        }
        match &self.target {
            T::InvtNo(s) | T::OrderNo(s) | T::LogisticsNo(s) | T::EbcCode(s) | T::VehicleNo(s) | T::ControlId(s) => {
                required("target", s, 64)
            }
            T::GcodePrefix(p) => {
                required("target.gcodePrefix", p, 10)?;
                if !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DecodeError::new(ErrorCode::NotDigits, "target.gcodePrefix must be digits"));
                }
                Ok(())
            }
            T::Rate(_) => Ok(()),
        }
    }
}

impl Validate for Entity {
    fn validate(&self) -> R {
        match self {
            Entity::Goods(x) => x.validate(),
            Entity::Order(x) => x.validate(),
            Entity::List(x) => x.validate(),
            Entity::Waybill(x) => x.validate(),
            Entity::Payment(x) => x.validate(),
            Entity::Arrival(x) => x.validate(),
            Entity::Scan(x) => x.validate(),
            Entity::Seal(x) => x.validate(),
            Entity::Departure(x) => x.validate(),
            Entity::Control(x) => x.validate(),
            Entity::WayBill(x) => x.validate(),
        }
    }
}
