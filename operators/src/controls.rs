//! The broadcast table of officer controls (CONTRACT §4.7): every clear partition and the
//! seal operator see the same table. Controls apply from the moment they are processed
//! (the runtime processes in event-time order) until lifted.
//!
//! **Aimed controls age with the parcels they apply to.** A control aimed at one list,
//! order or parcel (`invtNo`, `orderNo`, `logisticsNo`: a `verified` per inspected parcel,
//! mostly) is only ever read by the parcel whose list carries that number, so it is kept
//! exactly as long as such a parcel's state can be: it is *kept from* a day, which is at
//! least the day of the latest event time when it was applied and is moved on to the
//! parcel's day whenever a parcel it applies to is touched on a later day or gets the
//! number (its list, its `invtNo`). State retention drops a parcel last touched before the
//! cutoff day; by then every aimed control on it is before the cutoff too, and dropped
//! with it. So while a parcel's state lives, its controls stay (as "until lifted" says);
//! a number that comes back after the retention (a reused `logisticsNo`) starts without
//! them, as its state does. As with keyed state, an aimed control before the cutoff counts
//! as gone the moment the cutoff passes it, whether or not the bounded sweep has freed it
//! yet, so outputs do not depend on when memory is freed. Standing controls (company,
//! commodity prefix, vehicle, rate) are reference data and never age.

use crate::Map;
use crate::retention::SWEEP_BUDGET;
use crate::tracked::Unshared;
use cbec_schemas::{Control, ControlKind, ControlTarget, Dec, Text};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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

/// True for a target naming one list, order or parcel (the control ages with it).
fn aimed(t: &ControlTarget) -> bool {
    matches!(t, ControlTarget::InvtNo(_) | ControlTarget::OrderNo(_) | ControlTarget::LogisticsNo(_))
}

const INVT: usize = 0;
const ORDER: usize = 1;
const LOGISTICS: usize = 2;
const EBC: usize = 3;
const VEHICLE: usize = 4;

/// Active controls with indexes by target (one map per kind of target, so a lookup borrows
/// the list's own strings and allocates nothing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlTable {
    active: BTreeMap<Text, Control>,
    index: [Map<Text, Vec<Text>>; 5],
    prefixes: Vec<(Text, Text)>,
    rates: Vec<(Text, Dec)>,
    /// Aimed controls by id, with the day they are kept from (tables written before the
    /// thirteenth session have none: their aimed controls never age).
    #[serde(default)]
    aimed: BTreeMap<Text, i32>,
    /// The same, by day (the sweep takes them from the front).
    #[serde(default)]
    aimed_by_day: BTreeSet<(i32, Text)>,
    /// Aimed controls kept from before this day are gone (`i32::MIN`: none is).
    #[serde(default = "no_cutoff")]
    cutoff: i32,
    /// What the table did since the last [`ControlTable::changes`], while recording.
    #[serde(skip)]
    log: Unshared<Vec<ControlOp>>,
}

fn no_cutoff() -> i32 {
    i32::MIN
}

impl Default for ControlTable {
    fn default() -> ControlTable {
        ControlTable {
            active: BTreeMap::new(),
            index: Default::default(),
            prefixes: Vec::new(),
            rates: Vec::new(),
            aimed: BTreeMap::new(),
            aimed_by_day: BTreeSet::new(),
            cutoff: no_cutoff(),
            log: Unshared(None),
        }
    }
}

/// One thing a [`ControlTable`] did, recorded for a copy of it (incremental checkpoints):
/// doing the same, in the same order, to the table it was before gives the table now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlOp {
    /// [`ControlTable::apply`] on that day.
    Apply(Control, i32),
    /// The aimed control with that id kept from that day on ([`ControlTable::keep`]).
    Keep(Text, i32),
    /// [`ControlTable::expire`] at that cutoff.
    Expire(i32),
}

impl ControlTable {
    /// Applies a control: adds it, or for `lift` removes its target. Returns the id of the
    /// lifted control for `lift`. `day` is the day of the latest event time processed (at
    /// least the control's own): an aimed control is kept from it.
    pub fn apply(&mut self, c: Control, day: i32) -> Option<Text> {
        if let Some(log) = &mut self.log.0 {
            log.push(ControlOp::Apply(c.clone(), day));
        }
        self.apply_on(c, day)
    }

    fn apply_on(&mut self, c: Control, day: i32) -> Option<Text> {
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
                        if aimed(t) {
                            self.aimed.insert(c.id.clone(), day);
                            self.aimed_by_day.insert((day, c.id.clone()));
                        }
                    }
                }
                self.active.insert(c.id.clone(), c);
                None
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(day) = self.aimed.remove(id) {
            self.aimed_by_day.remove(&(day, Text::from(id)));
        }
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

    /// True when an aimed control (kept from `day`) is past the retention: gone.
    #[inline]
    fn stale(&self, id: &str) -> bool {
        self.aimed.get(id).is_some_and(|d| *d < self.cutoff)
    }

    /// True when some aimed control is held (only then need a touched parcel keep them).
    #[inline]
    pub fn has_aimed(&self) -> bool {
        !self.aimed.is_empty()
    }

    /// Keeps the aimed controls applying to a list from `day` on (its parcel was touched on
    /// `day`, or got one of the numbers). Controls already gone stay gone.
    pub fn keep(&mut self, ids: ListIds<'_>, day: i32) {
        if self.aimed.is_empty() {
            return;
        }
        let keys = [(ORDER, Some(ids.order_no)), (LOGISTICS, Some(ids.logistics_no)), (INVT, ids.invt_no)];
        self.keep_slots(&keys, day);
    }

    /// [`ControlTable::keep`] for a list that just got its `invtNo` (its other numbers were
    /// kept when it was touched).
    pub fn keep_invt(&mut self, invt_no: &str, day: i32) {
        if !self.aimed.is_empty() {
            self.keep_slots(&[(INVT, Some(invt_no))], day);
        }
    }

    fn keep_slots(&mut self, keys: &[(usize, Option<&str>)], day: i32) {
        let mut moved = Vec::new();
        for &(slot, k) in keys {
            if self.index[slot].is_empty() {
                continue;
            }
            let Some(list) = k.and_then(|k| self.index[slot].get(k)) else { continue };
            for id in list {
                if let Some(d) = self.aimed.get(id)
                    && *d < day
                    && *d >= self.cutoff
                {
                    moved.push(id.clone());
                }
            }
        }
        for id in moved {
            self.keep_from(id, day);
        }
    }

    fn keep_from(&mut self, id: Text, day: i32) {
        if let Some(d) = self.aimed.get_mut(&id)
            && *d < day
        {
            let was = std::mem::replace(d, day);
            self.aimed_by_day.remove(&(was, id.clone()));
            self.aimed_by_day.insert((day, id.clone()));
            if let Some(log) = &mut self.log.0 {
                log.push(ControlOp::Keep(id, day));
            }
        }
    }

    /// Moves the cutoff to `cutoff` (never back) and frees up to [`SWEEP_BUDGET`] aimed
    /// controls kept from before it. Returns how many were freed.
    pub fn expire(&mut self, cutoff: i32) -> usize {
        let moved = cutoff > self.cutoff;
        self.cutoff = self.cutoff.max(cutoff);
        let mut freed = 0;
        while freed < SWEEP_BUDGET {
            let Some((d, id)) = self.aimed_by_day.first() else { break };
            if *d >= self.cutoff {
                break;
            }
            let id = id.clone();
            self.remove(&id);
            freed += 1;
        }
        if (moved || freed > 0)
            && let Some(log) = &mut self.log.0
        {
            log.push(ControlOp::Expire(cutoff));
        }
        freed
    }

    /// Starts (or restarts) recording what the table does (incremental checkpoints).
    pub fn track(&mut self) {
        self.log = Unshared(Some(Vec::new()));
    }

    /// What the table did since [`ControlTable::track`] or the last call (nothing when not
    /// recording).
    pub fn changes(&mut self) -> Vec<ControlOp> {
        self.log.0.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Does [`ControlTable::changes`] of the table this one is a copy of.
    pub fn replay(&mut self, ops: Vec<ControlOp>) {
        for op in ops {
            match op {
                ControlOp::Apply(c, day) => {
                    self.apply_on(c, day);
                }
                ControlOp::Keep(id, day) => self.keep_from(id, day),
                ControlOp::Expire(cutoff) => {
                    self.expire(cutoff);
                }
            }
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
            .filter(|id| !self.stale(id))
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

    /// Number of active controls (aimed ones past the retention but not yet swept
    /// included).
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Number of aimed controls held.
    pub fn aimed_len(&self) -> usize {
        self.aimed.len()
    }

    /// True when no control is active.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbec_schemas::EventTime;

    fn ctl(id: &str, kind: ControlKind, target: ControlTarget) -> Control {
        Control { id: id.into(), kind, target, officer: "o".into(), reason: "r".into(), time: EventTime(0) }
    }

    fn ids<'a>(order_no: &'a str, logistics_no: &'a str, invt_no: Option<&'a str>) -> ListIds<'a> {
        ListIds { invt_no, order_no, logistics_no, ebc_code: "EBC1" }
    }

    fn hits(t: &ControlTable, kind: ControlKind, l: ListIds<'_>) -> Vec<String> {
        t.matching(kind, l, &[]).iter().map(|c| c.id.to_string()).collect()
    }

    /// Aimed controls are gone once the cutoff passes the day they are kept from, which a
    /// touch of their parcel moves on; company controls stay.
    #[test]
    fn aimed_controls_age_and_a_touch_keeps_them_standing_ones_stay() {
        let mut t = ControlTable::default();
        t.apply(ctl("V1", ControlKind::Verified, ControlTarget::LogisticsNo("L1".into())), 10);
        t.apply(ctl("V2", ControlKind::Verified, ControlTarget::OrderNo("O2".into())), 10);
        t.apply(ctl("I3", ControlKind::Control, ControlTarget::InvtNo("I3".into())), 10);
        t.apply(ctl("E1", ControlKind::Control, ControlTarget::EbcCode("EBC1".into())), 10);
        assert_eq!((t.len(), t.aimed_len()), (4, 3));
        // Parcel L1 (order O1) touched on day 15; O2's parcel and I3's list are not.
        t.keep(ids("O1", "L1", None), 15);
        assert_eq!(t.expire(10), 0, "kept from day 10: not before the cutoff");
        assert_eq!(hits(&t, ControlKind::Verified, ids("O2", "L2", None)), ["V2"]);
        assert_eq!(t.expire(11), 2);
        assert_eq!(hits(&t, ControlKind::Verified, ids("O1", "L1", None)), ["V1"]);
        assert!(hits(&t, ControlKind::Verified, ids("O2", "L2", None)).is_empty());
        assert_eq!(hits(&t, ControlKind::Control, ids("O3", "L3", Some("I3"))), ["E1"], "I3 aged, E1 stays");
        assert_eq!(t.expire(16), 1);
        assert_eq!((t.len(), t.aimed_len()), (1, 0));
        // A lift of an aimed control leaves nothing behind.
        t.apply(ctl("V4", ControlKind::Verified, ControlTarget::LogisticsNo("L4".into())), 20);
        t.apply(ctl("X", ControlKind::Lift, ControlTarget::ControlId("V4".into())), 20);
        assert_eq!((t.len(), t.aimed_len(), t.aimed_by_day.len()), (1, 0, 0));
    }

    /// The sweep is bounded; an aimed control before the cutoff is gone whether or not it
    /// was swept, and a touch does not bring it back.
    #[test]
    fn stale_aimed_controls_are_gone_before_the_sweep_frees_them() {
        let mut t = ControlTable::default();
        let n = SWEEP_BUDGET + 10;
        for i in 0..n {
            t.apply(
                ctl(&format!("V{i:04}"), ControlKind::Verified, ControlTarget::LogisticsNo(format!("L{i}").into())),
                3,
            );
        }
        assert_eq!(t.expire(4), SWEEP_BUDGET);
        assert_eq!(t.aimed_len(), 10, "the rest waits for the next step");
        let last = format!("L{}", n - 1);
        assert!(hits(&t, ControlKind::Verified, ids("O", &last, None)).is_empty());
        t.keep(ids("O", &last, None), 9);
        assert!(hits(&t, ControlKind::Verified, ids("O", &last, None)).is_empty(), "not kept again");
        assert_eq!(t.expire(4), 10);
        assert_eq!(t.len(), 0);
    }

    /// A copy kept by the recorded changes equals the table, whatever was applied, kept
    /// longer, lifted and swept in between.
    #[test]
    fn a_copy_kept_by_the_changes_equals_the_table() {
        let mut t = ControlTable::default();
        t.track();
        let mut copy = t.clone();
        let value = |t: &ControlTable| serde_json::to_value(t).unwrap();
        for step in 0..400i32 {
            let day = step / 10;
            let id = format!("C{step:04}");
            let target = match step % 5 {
                0 => ControlTarget::LogisticsNo(format!("L{}", step % 37).into()),
                1 => ControlTarget::OrderNo(format!("O{}", step % 41).into()),
                2 => ControlTarget::InvtNo(format!("I{}", step % 43).into()),
                3 => ControlTarget::EbcCode("EBC1".into()),
                _ => ControlTarget::ControlId(format!("C{:04}", step - 7).into()),
            };
            let kind = if step % 5 == 4 { ControlKind::Lift } else { ControlKind::Verified };
            t.apply(ctl(&id, kind, target), day);
            let (o, l, i) = (format!("O{}", step % 41), format!("L{}", step % 37), format!("I{}", step % 43));
            t.keep(ids(&o, &l, Some(&i)), day + 1);
            if step % 3 == 0 {
                t.expire(day - 2);
            }
            if step % 7 == 0 {
                copy.replay(t.changes());
                assert_eq!(value(&copy), value(&t), "step {step}");
            }
        }
        copy.replay(t.changes());
        assert_eq!(value(&copy), value(&t));
        assert!(t.aimed_len() > 0 && t.aimed_len() < 240, "{}", t.aimed_len());
    }
}
