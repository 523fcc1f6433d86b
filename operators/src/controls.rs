//! The broadcast table of officer controls (CONTRACT §4.7): every clear partition and the
//! seal operator see the same table. Controls apply from the moment they are processed
//! (the runtime processes in event-time order) until lifted.

use cbec_schemas::{Control, ControlKind, ControlTarget, Dec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

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

fn target_key(t: &ControlTarget) -> Option<String> {
    Some(match t {
        ControlTarget::InvtNo(v) => format!("i:{v}"),
        ControlTarget::OrderNo(v) => format!("o:{v}"),
        ControlTarget::LogisticsNo(v) => format!("l:{v}"),
        ControlTarget::EbcCode(v) => format!("e:{v}"),
        ControlTarget::VehicleNo(v) => format!("v:{v}"),
        _ => return None,
    })
}

/// Active controls with indexes by target.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ControlTable {
    active: BTreeMap<String, Control>,
    index: HashMap<String, Vec<String>>,
    prefixes: Vec<(String, String)>,
    rates: Vec<(String, Dec)>,
}

impl ControlTable {
    /// Applies a control: adds it, or for `lift` removes its target. Returns the id of the
    /// lifted control for `lift`.
    pub fn apply(&mut self, c: Control) -> Option<String> {
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
                        if let Some(k) = target_key(t) {
                            self.index.entry(k).or_default().push(c.id.clone());
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
            if let Some(k) = target_key(&c.target)
                && let Some(v) = self.index.get_mut(&k)
            {
                v.retain(|x| x != id);
                if v.is_empty() {
                    self.index.remove(&k);
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
        let mut keys =
            vec![format!("o:{}", ids.order_no), format!("l:{}", ids.logistics_no), format!("e:{}", ids.ebc_code)];
        if let Some(i) = ids.invt_no {
            keys.push(format!("i:{i}"));
        }
        let mut out: Vec<&Control> = keys
            .iter()
            .filter_map(|k| self.index.get(k))
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

    /// The `vehicle` control filing `vehicle_no`, if any.
    pub fn vehicle(&self, vehicle_no: &str) -> Option<&Control> {
        self.index
            .get(&format!("v:{vehicle_no}"))?
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
