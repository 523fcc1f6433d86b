//! The broadcast table of officer controls (CONTRACT §4.7): every clear partition and the
//! seal operator see the same table. Controls apply from the moment they are processed
//! (the runtime processes in event-time order) until lifted.

use crate::Map;
use cbec_schemas::{Control, ControlKind, ControlTarget, Dec, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a list is matched on.
#[derive(Debug, Clone, Copy)]
pub struct ListIds<'a> {
    /// Declared list number, when declared.
    pub invt_no: Option<&'a str>,
    /// Order number.
    pub order_no: &'a str,
    /// Parcel.
    pub logistics_no: &'a str,
    /// Company.
    pub ebc_code: &'a str,
}

/// Which index a target goes to, and its value.
fn target_slot(t: &ControlTarget) -> Option<(usize, &str)> {
    Some(match t {
        ControlTarget::InvtNo(v) => (INVT, v.as_str()),
        ControlTarget::OrderNo(v) => (ORDER, v.as_str()),
        ControlTarget::LogisticsNo(v) => (LOGISTICS, v.as_str()),
        ControlTarget::EbcCode(v) => (EBC, v.as_str()),
        ControlTarget::VehicleNo(v) => (VEHICLE, v.as_str()),
        _ => return None,
    })
}

const INVT: usize = 0;
const ORDER: usize = 1;
const LOGISTICS: usize = 2;
const EBC: usize = 3;
const VEHICLE: usize = 4;

/// Active controls with indexes by target (one map per kind of target, so a lookup borrows
/// the list's own strings and allocates nothing).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ControlTable {
    active: BTreeMap<Text, Control>,
    index: [Map<Text, Vec<Text>>; 5],
    prefixes: Vec<(Text, Text)>,
    rates: Vec<(Text, Dec)>,
}

impl ControlTable {
    /// Applies a control: adds it, or for `lift` removes its target. Returns the id of the
    /// lifted control for `lift`.
    pub fn apply(&mut self, c: Control) -> Option<Text> {
        match (&c.kind, &c.target) {
            (ControlKind::Lift, ControlTarget::ControlId(id)) => {
                let id = id.clone();
                self.remove(&id);
                Some(id)
            }
            _ => {
                if self.active.contains_key(&c.id) {
                    self.remove(&c.id.clone());
                }
                match &c.target {
                    ControlTarget::GcodePrefix(p) => self.prefixes.push((p.clone(), c.id.clone())),
                    ControlTarget::Rate(r) => self.rates.push((c.id.clone(), *r)),
                    t => {
                        if let Some((slot, v)) = target_slot(t) {
                            self.index[slot].entry(Text::from(v)).or_default().push(c.id.clone());
                        }
                    }
                }
                self.active.insert(c.id.clone(), c);
                None
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(c) = self.active.remove(id) {
            if let Some((slot, k)) = target_slot(&c.target)
                && let Some(v) = self.index[slot].get_mut(k)
            {
                v.retain(|x| x != id);
                if v.is_empty() {
                    self.index[slot].remove(k);
                }
            }
            self.prefixes.retain(|(_, x)| x != id);
            self.rates.retain(|(x, _)| x != id);
        }
    }

    /// The sampling rate in force: the latest active `inspection_rate` control, else `default`.
    pub fn rate(&self, default: Dec) -> (Dec, Option<&str>) {
        match self.rates.last() {
            Some((id, r)) => (*r, Some(id.as_str())),
            None => (default, None),
        }
    }

    /// Active controls of `kind` matching a list (by ids, company, or a gcode prefix of
    /// any of `gcodes`), sorted by id.
    pub fn matching<'a>(&'a self, kind: ControlKind, ids: ListIds<'_>, gcodes: &[&str]) -> Vec<&'a Control> {
        if self.active.is_empty() {
            return Vec::new();
        }
        let keys = [
            (ORDER, Some(ids.order_no)),
            (LOGISTICS, Some(ids.logistics_no)),
            (EBC, Some(ids.ebc_code)),
            (INVT, ids.invt_no),
        ];
        let mut out: Vec<&Control> = keys
            .iter()
            .filter_map(|(slot, k)| self.index[*slot].get((*k)?))
            .flatten()
            .filter_map(|id| self.active.get(id))
            .filter(|c| c.kind == kind)
            .collect();
        if kind == ControlKind::Control {
            for (p, id) in &self.prefixes {
                if gcodes.iter().any(|g| g.starts_with(p.as_str()))
                    && let Some(c) = self.active.get(id)
                {
                    out.push(c);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        out
    }

    /// True when some control targets a gcode prefix (only then does [`Self::matching`]
    /// read the list's gcodes).
    pub fn by_gcode(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// The `vehicle` control filing `vehicle_no`, if any.
    pub fn vehicle(&self, vehicle_no: &str) -> Option<&Control> {
        self.index[VEHICLE]
            .get(vehicle_no)?
            .iter()
            .filter_map(|id| self.active.get(id))
            .find(|c| c.kind == ControlKind::Vehicle)
    }

    /// Number of active controls.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// True when no control is active.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}
