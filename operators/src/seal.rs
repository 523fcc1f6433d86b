//! Seals, supervision vehicles and port release (CONTRACT §4.5). A seal may only cover
//! parcels released at the site and be carried by a vehicle filed with customs; otherwise it
//! is held. At the port an intact `verified` seal releases every parcel under it; a broken or
//! unknown seal holds them all. A seal spans parcels of every clear partition, so the
//! engine hands this operator a view of all of them.

use crate::Collector;
use crate::clear::Clear;
use crate::controls::ControlTable;
use crate::engine::Out;
use crate::partition_of;
use crate::retention::day_of;
use crate::tracked::{Change, Tracked};
use cbec_schemas::{EventTime, SealEvent, SealVerdict, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SealState {
    vehicle_no: Text,
    parcels: Vec<Text>,
    accepted: bool,
    verdict_at_port: bool,
    /// Day of the last event about the seal ([`crate::retention`]).
    #[serde(default)]
    touched: i32,
    /// How many times this seal number was sealed (while its state was kept): part of its
    /// verdicts' identities, so a seal sealed again gets verdicts of its own.
    #[serde(default)]
    sealings: u32,
}

/// The parcels of a master bill (`totalPackageNo`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Bill {
    parcels: BTreeSet<Text>,
    /// Day of the last list or arrival naming the bill.
    touched: i32,
}

/// Seal state: seals by number and the parcels of each master bill (`totalPackageNo`).
/// Few keys next to the parcels', so retention sweeps them whole once per cutoff day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealOp {
    seals: Tracked<Text, SealState>,
    bills: Tracked<Text, Bill>,
    /// Seals and bills last touched before this day are stale (as if unknown).
    #[serde(default = "no_cutoff")]
    cutoff: i32,
}

fn no_cutoff() -> i32 {
    i32::MIN
}

impl Default for SealOp {
    fn default() -> SealOp {
        SealOp { seals: Tracked::default(), bills: Tracked::default(), cutoff: no_cutoff() }
    }
}

/// A port release the engine must route to the parcel's clear partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRelease {
    /// Parcel.
    pub logistics_no: Text,
    /// Seal.
    pub seal_no: Text,
    /// When.
    pub time: EventTime,
}

/// What changed in the seal operator since the last [`SealOp::changes_deferred`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SealChanges {
    seals: Vec<Change<Text, SealState>>,
    bills: Vec<Change<Text, Bill>>,
    cutoff: i32,
}

impl SealOp {
    /// Starts recording what changes (incremental checkpoints).
    pub fn track(&mut self) {
        self.seals.track();
        self.bills.track();
    }

    /// The seals and bills written since [`SealOp::track`] or the last call, owed: copied
    /// a few at a time ([`SealOp::copy_owed`]) and taken by [`SealOp::take_owed`].
    pub fn changes_deferred(&mut self) -> SealChanges {
        self.seals.defer_changes();
        self.bills.defer_changes();
        SealChanges { seals: Vec::new(), bills: Vec::new(), cutoff: self.cutoff }
    }

    /// Copies up to `budget` owed seals and bills; true once none is owed.
    pub fn copy_owed(&mut self, budget: usize) -> bool {
        self.seals.copy_owed(budget) && self.bills.copy_owed(budget)
    }

    /// Completes `c` (from [`SealOp::changes_deferred`]) with its seals and bills.
    pub fn take_owed(&mut self, c: &mut SealChanges) {
        c.seals = self.seals.take_owed();
        c.bills = self.bills.take_owed();
    }

    /// Applies [`SealOp::changes_deferred`] (completed) of the operator this one is a copy of.
    pub fn apply(&mut self, c: SealChanges) {
        self.seals.apply(c.seals);
        self.bills.apply(c.bills);
        self.cutoff = c.cutoff;
    }

    /// Records that a parcel belongs to a master bill (from lists and arrivals at `t`).
    pub fn bill(&mut self, total_package_no: &str, logistics_no: &str, t: EventTime) {
        let b = self.bills.or_default(total_package_no);
        if b.touched < self.cutoff {
            *b = Bill::default();
        }
        b.touched = b.touched.max(day_of(t));
        b.parcels.insert(Text::from(logistics_no));
    }

    /// Moves the retention cutoff to day `cutoff` and drops the seals and bills last
    /// touched before it (once per new cutoff day).
    pub fn expire(&mut self, cutoff: i32) {
        if cutoff <= self.cutoff {
            return;
        }
        self.cutoff = cutoff;
        self.seals.retain(|_, s| s.touched >= cutoff);
        self.bills.retain(|_, b| b.touched >= cutoff);
    }

    /// Processes a seal event; returns the port releases to apply.
    pub fn process(
        &mut self,
        ev: SealEvent,
        clear: &[Clear],
        controls: &ControlTable,
        out: &mut dyn Collector<Out>,
    ) -> Vec<PortRelease> {
        match ev {
            SealEvent::Sealed { seal_no, vehicle_no, total_package_nos, logistics_nos, time } => {
                let sealings =
                    1 + self.seals.get(&seal_no).filter(|s| s.touched >= self.cutoff).map_or(0, |s| s.sealings);
                let mut parcels: BTreeSet<Text> = logistics_nos.into_iter().collect();
                for b in &total_package_nos {
                    if let Some(bill) = self.bills.get(b).filter(|b| b.touched >= self.cutoff) {
                        parcels.extend(bill.parcels.iter().cloned());
                    }
                }
                let parcels: Vec<Text> = parcels.into_iter().collect();
                let mut reasons = Vec::new();
                let vehicle = controls.vehicle(&vehicle_no);
                if vehicle.is_none() {
                    reasons.push(format!("vehicle {vehicle_no} is not filed with customs"));
                }
                let unreleased: Vec<&Text> =
                    parcels.iter().filter(|l| !clear[partition_of(l, clear.len())].site_released(l)).collect();
                if !unreleased.is_empty() {
                    reasons.push(format!(
                        "{} parcel(s) not released at the site: {}",
                        unreleased.len(),
                        unreleased.iter().take(10).map(|s| s.as_str()).collect::<Vec<_>>().join(",")
                    ));
                }
                if parcels.is_empty() {
                    reasons.push("no known parcel under the seal".to_string());
                }
                let accepted = reasons.is_empty();
                if accepted {
                    reasons.push("all parcels released at the site; vehicle filed".to_string());
                }
                out.collect(Out::Release(SealVerdict {
                    // With the time and the count: a seal held and sealed again (its parcels
                    // put right, or another vehicle) gets a second verdict, not the first
                    // one's identity.
                    id: format!("{seal_no}/sealed/{}/{sealings}", time.0),
                    seal_no: seal_no.clone(),
                    vehicle_no: vehicle_no.clone(),
                    stage: "sealed".into(),
                    verdict: if accepted { "released" } else { "held" }.into(),
                    reasons,
                    logistics_nos: parcels.clone(),
                    port_code: None,
                    control_ids: vehicle.map(|c| vec![c.id.clone()]).unwrap_or_default(),
                    time,
                }));
                let touched = day_of(time);
                self.seals.insert(
                    seal_no,
                    SealState { vehicle_no, parcels, accepted, verdict_at_port: false, touched, sealings },
                );
                Vec::new()
            }
            SealEvent::Verified { seal_no, vehicle_no, port_code, intact, time } => {
                let cutoff = self.cutoff;
                let (verdict, reasons, parcels, which) =
                    match self.seals.get_mut(&seal_no).filter(|s| s.touched >= cutoff) {
                        // An unknown seal verified twice at one time: told apart by where and on what.
                        None => {
                            ("held", vec!["unknown seal".to_string()], Vec::new(), format!("{vehicle_no}/{port_code}"))
                        }
                        Some(s) if s.verdict_at_port => return Vec::new(),
                        Some(s) => {
                            s.verdict_at_port = true;
                            s.touched = s.touched.max(day_of(time));
                            let mut r = Vec::new();
                            if !intact {
                                r.push("seal broken".to_string());
                            }
                            if !s.accepted {
                                r.push("seal was held at the site".to_string());
                            }
                            if s.vehicle_no != vehicle_no {
                                r.push(format!("vehicle {vehicle_no} differs from sealed vehicle {}", s.vehicle_no));
                            }
                            let which = s.sealings.to_string();
                            if r.is_empty() {
                                r.push("seal intact".to_string());
                                ("released", r, s.parcels.clone(), which)
                            } else {
                                ("held", r, s.parcels.clone(), which)
                            }
                        }
                    };
                out.collect(Out::Release(SealVerdict {
                    id: format!("{seal_no}/port/{}/{which}", time.0),
                    seal_no: seal_no.clone(),
                    vehicle_no,
                    stage: "port".into(),
                    verdict: verdict.into(),
                    reasons,
                    logistics_nos: parcels.clone(),
                    port_code: Some(port_code),
                    control_ids: Vec::new(),
                    time,
                }));
                if verdict == "released" {
                    parcels
                        .into_iter()
                        .map(|l| PortRelease { logistics_no: l, seal_no: seal_no.clone(), time })
                        .collect()
                } else {
                    Vec::new()
                }
            }
        }
    }
}
