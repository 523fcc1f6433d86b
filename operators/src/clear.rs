//! **clear** (keyed by `logisticsNo`): activation of the stored list by its waybill into the
//! immutable declared list with its `invtNo` (§3), goods review (§4.1), channel (§4.3),
//! sorting-line decisions (§4.4), port release and exit (§4.5, §4.6), and the receipts
//! timeline in CEB status codes.

use crate::controls::{ControlTable, ListIds};
use crate::declare::{Comparison, ListStatus};
use crate::engine::{Exited, Out};
use crate::ids;
use crate::rules::{Rules, sampled};
use crate::{Collector, Map, Operator, Set};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{
    ChannelDecision, ChannelReason, ControlKind, DeclaredList, EventTime, Inventory, Receipt, Scan, SortingDecision,
    StatisticsFlag, Waybill, Xray, status,
};
use serde::{Deserialize, Serialize};

/// Broadcast state every clear partition reads, plus the `invtNo` serials in use (unique
/// across partitions).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Shared {
    /// Rules file.
    pub rules: Rules,
    /// Registered goods: `ebcCode` → `itemNo` → `gcode`.
    pub goods: Map<String, Map<String, String>>,
    /// Officer controls.
    pub controls: ControlTable,
    /// `invtNo` serials assigned.
    pub serials: Set<u64>,
    /// HS nomenclature (loaded by the runtime; not checkpointed).
    #[serde(skip)]
    pub hs: Nomenclature,
}

/// Inputs of clear.
#[derive(Debug, Clone)]
pub enum ClearIn {
    /// The stored list, from declare.
    List(Inventory),
    /// Its comparison status, from declare.
    Status(ListStatus),
    /// CEB505 collection: activates the list.
    Waybill(Waybill),
    /// One parcel of a CEB507 arrival.
    Arrived {
        /// Parcel.
        logistics_no: String,
        /// Arrival time.
        time: EventTime,
    },
    /// A sorting-line scan.
    Scan(Scan),
    /// Port release of the parcel under an intact seal.
    PortRelease {
        /// Parcel.
        logistics_no: String,
        /// Seal.
        seal_no: String,
        /// When.
        time: EventTime,
    },
    /// One parcel of a CEB509 departure.
    Departed {
        /// Parcel.
        logistics_no: String,
        /// Leave time.
        time: EventTime,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decl {
    invt_no: String,
    hash: String,
    red: bool,
    certificate: bool,
    tax: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Parcel {
    list: Option<std::sync::Arc<Inventory>>,
    comparison: Option<Comparison>,
    pay_code: Option<String>,
    waybill: Option<EventTime>,
    decl: Option<Decl>,
    arrived: bool,
    inspected: bool,
    verified_receipt: bool,
    site_released: bool,
    port_released: Option<String>,
    exited: bool,
}

/// The clear operator: state per `logisticsNo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Clear {
    /// Boxed: a growing map moves 32-byte buckets when it resizes, not whole parcels (a
    /// resize of a large map was a multi-millisecond pause on the decision path).
    parcels: Map<String, Box<Parcel>>,
}

/// Emits a receipt for a parcel (identity: list or parcel key + status + `tag`).
#[allow(clippy::too_many_arguments)]
fn receipt(
    out: &mut dyn Collector<Out>,
    p: &Parcel,
    logistics_no: &str,
    st: i32,
    info: String,
    time: EventTime,
    tag: &str,
    controls: Vec<String>,
) {
    let invt = p.decl.as_ref().map(|d| d.invt_no.clone());
    let key = invt.as_deref().unwrap_or(logistics_no);
    // `{key}/{status}{tag}`
    let mut id = String::with_capacity(key.len() + 8 + tag.len());
    id.push_str(key);
    id.push('/');
    if st < 0 {
        id.push('-');
    }
    ids::push_padded(&mut id, st.unsigned_abs() as u64, 1);
    id.push_str(tag);
    out.collect(Out::Receipt(Receipt {
        id,
        invt_no: invt,
        order_no: p.list.as_ref().map(|l| l.order_no.clone()),
        logistics_no: Some(logistics_no.to_string()),
        return_status: st,
        return_info: info,
        return_time: time,
        control_ids: controls,
    }));
}

fn list_ids<'a>(p: &'a Parcel, l: &'a Inventory) -> ListIds<'a> {
    ListIds {
        invt_no: p.decl.as_ref().map(|d| d.invt_no.as_str()),
        order_no: &l.order_no,
        logistics_no: &l.logistics_no,
        ebc_code: &l.ebc_code,
    }
}

impl Clear {
    /// True when the parcel's list was released at the site (for seals).
    pub fn site_released(&self, logistics_no: &str) -> bool {
        self.parcels.get(logistics_no).is_some_and(|p| p.site_released)
    }

    /// Room for `n` more parcels without a resize.
    pub fn reserve(&mut self, n: usize) {
        self.parcels.reserve(n);
    }

    /// Parcels with state.
    pub fn len(&self) -> usize {
        self.parcels.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.parcels.is_empty()
    }

    fn activate(ctx: &mut Shared, logistics_no: &str, p: &mut Parcel, out: &mut dyn Collector<Out>) {
        let (Some(l), Some(t), None) = (&p.list, p.waybill, &p.decl) else { return };
        let year = (cbec_schemas::time::period_of(t) / 100) as i32;
        let mut attempt = 0;
        let serial = loop {
            let s = ids::invt_serial(ctx.rules.instance, &l.customs_code, year, logistics_no, attempt);
            if ctx.serials.insert(s) {
                break s;
            }
            attempt += 1;
        };
        let invt_no = ids::invt_no(&l.customs_code, year, serial);
        let hash = ids::content_hash(l);
        let comparison = p.comparison.clone().unwrap_or(Comparison::Pending);

        // Channel (§4.3) with every reason that fired.
        let mut reasons = Vec::new();
        let mut certificate = false;
        let mut tax = false;
        for it in &l.items {
            if let Some(rule) = ctx.rules.certificate_rule(&it.gcode) {
                certificate = true;
                reasons.push(ChannelReason {
                    code: "certificate_required".into(),
                    detail: format!("item {} gcode {} matches certificate rule {rule}", it.gnum, it.gcode),
                    control_id: None,
                });
            }
            if ctx.rules.tax_rule(&it.gcode).is_some() {
                tax = true;
            }
            match ctx.goods.get(&l.ebc_code).and_then(|m| m.get(&it.item_no)) {
                None => reasons.push(ChannelReason {
                    code: "goods_unregistered".into(),
                    detail: format!("item {} itemNo {} is not registered for {}", it.gnum, it.item_no, l.ebc_code),
                    control_id: None,
                }),
                Some(g) if *g != it.gcode => reasons.push(ChannelReason {
                    code: "hs_mismatch".into(),
                    detail: format!("item {} declares gcode {} but {} is registered", it.gnum, it.gcode, g),
                    control_id: None,
                }),
                Some(_) => {}
            }
        }
        let (rate, rate_control) = ctx.controls.rate(ctx.rules.inspection_rate);
        if sampled(&ctx.rules.sampling_key, &invt_no, rate) {
            reasons.push(ChannelReason {
                code: "sampled".into(),
                detail: format!("random control at rate {rate}"),
                control_id: rate_control.map(String::from),
            });
        }
        let gcodes: Vec<&str> = l.items.iter().map(|i| i.gcode.as_str()).collect();
        let ids = ListIds {
            invt_no: Some(&invt_no),
            order_no: &l.order_no,
            logistics_no: &l.logistics_no,
            ebc_code: &l.ebc_code,
        };
        for c in ctx.controls.matching(ControlKind::Control, ids, &gcodes) {
            reasons.push(ChannelReason {
                code: "manual_control".into(),
                detail: format!("control by {}: {}", c.officer, c.reason),
                control_id: Some(c.id.clone()),
            });
        }
        let red = !reasons.is_empty();
        out.collect(Out::Declared(DeclaredList {
            invt_no: invt_no.clone(),
            decl_time: t,
            content_hash: hash.clone(),
            comparison: comparison.as_str().to_string(),
            pay_code: p.pay_code.clone(),
            list: l.clone(),
        }));
        p.decl = Some(Decl { invt_no: invt_no.clone(), hash, red, certificate, tax });
        receipt(
            out,
            p,
            logistics_no,
            status::ACCEPTED,
            "declared: list activated by logistics collection".into(),
            t,
            "",
            vec![],
        );
        let control_ids: Vec<String> = reasons.iter().filter_map(|r| r.control_id.clone()).collect();
        out.collect(Out::Channel(ChannelDecision {
            id: format!("{invt_no}/channel"),
            invt_no: invt_no.clone(),
            logistics_no: logistics_no.to_string(),
            order_no: l.order_no.clone(),
            ebc_code: l.ebc_code.clone(),
            channel: if red { "red" } else { "green" }.into(),
            reasons,
            tax_related: tax,
            certificate_related: certificate,
            time: t,
        }));
        if red {
            receipt(
                out,
                p,
                logistics_no,
                status::MANUAL_REVIEW,
                "red channel: on-site review".into(),
                t,
                "",
                control_ids,
            );
        }
    }

    fn scan(ctx: &mut Shared, s: Scan, p: &mut Parcel, out: &mut dyn Collector<Out>) {
        let mut reasons: Vec<String> = Vec::new();
        let mut control_ids: Vec<String> = Vec::new();
        let port = match (&p.decl, &p.list) {
            (Some(d), Some(l)) if !matches!(p.comparison, Some(Comparison::Returned { .. })) => {
                let gcodes: Vec<&str> = l.items.iter().map(|i| i.gcode.as_str()).collect();
                let ids = list_ids(p, l);
                let verified = ctx.controls.matching(ControlKind::Verified, ids, &[]);
                for c in &verified {
                    control_ids.push(c.id.clone());
                }
                let mut hit = Vec::new();
                if !p.site_released {
                    for c in ctx.controls.matching(ControlKind::Review, ids, &[]) {
                        hit.push(("review", c.id.clone()));
                    }
                }
                for c in ctx.controls.matching(ControlKind::Control, ids, &gcodes) {
                    hit.push(("manual_control", c.id.clone()));
                }
                if !verified.is_empty() {
                    reasons.push("verified".into());
                    if !p.verified_receipt {
                        p.verified_receipt = true;
                        receipt(
                            out,
                            p,
                            &s.logistics_no,
                            status::REVIEW_CONCLUDED,
                            "review concluded: verified by on-site customs".into(),
                            s.scan_time,
                            "",
                            control_ids.clone(),
                        );
                    }
                }
                if d.certificate && verified.is_empty() {
                    reasons.push("certificate_required".into());
                    "certificate"
                } else {
                    let suspect = s.xray == Some(Xray::Suspect);
                    if d.red {
                        reasons.push("red_channel".into());
                    }
                    if suspect {
                        reasons.push("xray_suspect".into());
                    }
                    for (r, id) in &hit {
                        reasons.push((*r).into());
                        control_ids.push(id.clone());
                    }
                    if (d.red || suspect || !hit.is_empty()) && verified.is_empty() {
                        "inspect"
                    } else {
                        if reasons.is_empty() {
                            reasons.push("green".into());
                        }
                        "release"
                    }
                }
            }
            (Some(_), _) => {
                reasons.push("returned".into());
                "hold"
            }
            _ => {
                reasons.push(if p.list.is_some() { "not_activated" } else { "no_declared_list" }.into());
                "hold"
            }
        };
        control_ids.sort();
        control_ids.dedup();
        // The first inspect or release of a parcel also gets a receipt, after the decision.
        let first = match port {
            "inspect" => !p.inspected,
            "release" => !p.site_released,
            _ => false,
        };
        let for_receipt = first.then(|| (s.logistics_no.clone(), control_ids.clone()));
        let mut id = String::with_capacity(s.line_id.len() + 1 + s.scan_id.len());
        id.push_str(&s.line_id);
        id.push('/');
        id.push_str(&s.scan_id);
        out.collect(Out::Sorting(SortingDecision {
            id,
            logistics_no: s.logistics_no,
            invt_no: p.decl.as_ref().map(|d| d.invt_no.clone()),
            scan_id: s.scan_id,
            line_id: s.line_id,
            port: port.to_string(),
            reasons,
            control_ids,
            scan_time: s.scan_time,
            decision_time: s.scan_time,
        }));
        if let Some((lno, controls)) = for_receipt {
            let (st, info) = if port == "inspect" {
                p.inspected = true;
                (status::INSPECTION, "inspection: unpack at the sorting line")
            } else {
                p.site_released = true;
                (status::RELEASED, "released at the supervised site")
            };
            receipt(out, p, &lno, st, info.into(), s.scan_time, "", controls);
        }
    }

    fn exited(p: &Parcel) -> Option<Exited> {
        let (Some(d), Some(l)) = (&p.decl, &p.list) else { return None };
        Some(Exited {
            invt_no: d.invt_no.clone(),
            summarizable: !d.tax
                && l.statistics_flag == StatisticsFlag::B
                && p.comparison == Some(Comparison::Consistent),
            list: l.clone(),
        })
    }
}

impl Operator for Clear {
    type In = ClearIn;
    type Out = Out;
    type Ctx = Shared;

    fn process(&mut self, ctx: &mut Shared, input: ClearIn, out: &mut dyn Collector<Out>) {
        match input {
            ClearIn::List(l) => {
                let key = l.logistics_no.clone();
                let p = crate::state_of(&mut self.parcels, &key);
                if let Some(d) = &p.decl {
                    let hash = ids::content_hash(&l);
                    if hash != d.hash {
                        receipt(
                            out,
                            p,
                            &key,
                            status::ERR_IMMUTABLE,
                            format!("declared list {} is immutable: changed stored list refused", d.invt_no),
                            l.app_time,
                            &format!("/{hash}"),
                            vec![],
                        );
                    }
                    return;
                }
                if l.app_type == cbec_schemas::AppType::Delete {
                    p.list = None;
                    return;
                }
                p.list = Some(std::sync::Arc::new(l));
                Clear::activate(ctx, &key, p, out);
            }
            ClearIn::Status(s) => {
                let p = crate::state_of(&mut self.parcels, &s.logistics_no);
                let was = p.comparison.replace(s.comparison.clone());
                if s.pay_code.is_some() {
                    p.pay_code = s.pay_code.clone();
                }
                if let Comparison::Returned { reasons } = &s.comparison
                    && (p.decl.is_some() || p.list.is_some())
                {
                    receipt(
                        out,
                        p,
                        &s.logistics_no,
                        status::RETURNED,
                        format!("returned by the order-number comparison: {}", reasons.join(",")),
                        s.time,
                        &format!("/{}", s.time.0),
                        vec![],
                    );
                }
                if p.exited
                    && was != p.comparison
                    && let Some(e) = Clear::exited(p)
                {
                    out.collect(Out::Exited(e));
                }
            }
            ClearIn::Waybill(w) => {
                let key = w.logistics_no.clone();
                let p = crate::state_of(&mut self.parcels, &key);
                match (p.waybill, &p.decl) {
                    (Some(t), Some(d)) if t != w.app_time => {
                        let info = format!("declared list {} already activated: second activation refused", d.invt_no);
                        receipt(
                            out,
                            p,
                            &key,
                            status::ERR_IMMUTABLE,
                            info,
                            w.app_time,
                            &format!("/w{}", w.app_time.0),
                            vec![],
                        );
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        p.waybill = Some(w.app_time);
                        Clear::activate(ctx, &key, p, out);
                    }
                }
            }
            ClearIn::Arrived { logistics_no, time } => {
                let p = crate::state_of(&mut self.parcels, &logistics_no);
                if !p.arrived {
                    p.arrived = true;
                    if p.decl.is_none() {
                        receipt(
                            out,
                            p,
                            &logistics_no,
                            -403,
                            "arrived at the supervised site without a declared list".into(),
                            time,
                            "/arrival",
                            vec![],
                        );
                    }
                }
            }
            ClearIn::Scan(s) => {
                let p = crate::state_of(&mut self.parcels, &s.logistics_no);
                Clear::scan(ctx, s, p, out);
            }
            ClearIn::PortRelease { logistics_no, seal_no, .. } => {
                let p = crate::state_of(&mut self.parcels, &logistics_no);
                p.port_released = Some(seal_no);
            }
            ClearIn::Departed { logistics_no, time } => {
                let p = crate::state_of(&mut self.parcels, &logistics_no);
                if p.exited {
                    return;
                }
                if p.port_released.is_some() && p.decl.is_some() {
                    p.exited = true;
                    receipt(out, p, &logistics_no, status::CLOSED, "exit confirmed".into(), time, "", vec![]);
                    if let Some(e) = Clear::exited(p) {
                        out.collect(Out::Exited(e));
                    }
                } else {
                    receipt(
                        out,
                        p,
                        &logistics_no,
                        status::ERR_EXIT_NOT_RELEASED,
                        "exit of a parcel whose list was not released at the port".into(),
                        time,
                        &format!("/{}", time.0),
                        vec![],
                    );
                }
            }
        }
    }

    fn state_size(&self) -> usize {
        self.parcels
            .iter()
            .map(|(k, p)| {
                k.len()
                    + std::mem::size_of::<(String, Box<Parcel>)>()
                    + std::mem::size_of::<Parcel>()
                    + p.list.as_ref().map_or(0, |l| inventory_bytes(l))
                    + p.decl.as_ref().map_or(0, |d| std::mem::size_of::<Decl>() + d.invt_no.len() + d.hash.len())
            })
            .sum()
    }
}

/// Heap bytes of a stored list (strings and rows).
pub fn inventory_bytes(l: &Inventory) -> usize {
    let s = |x: &String| x.capacity();
    std::mem::size_of::<Inventory>()
        + s(&l.customs_code)
        + s(&l.ebp_code)
        + s(&l.order_no)
        + s(&l.logistics_code)
        + s(&l.logistics_no)
        + s(&l.cop_no)
        + s(&l.port_code)
        + s(&l.agent_code)
        + s(&l.ebc_code)
        + s(&l.owner_code)
        + s(&l.trade_mode)
        + s(&l.traf_mode)
        + s(&l.country)
        + s(&l.pod)
        + l.items
            .iter()
            .map(|i| {
                std::mem::size_of::<cbec_schemas::InventoryItem>()
                    + s(&i.item_no)
                    + s(&i.gcode)
                    + s(&i.gname)
                    + s(&i.gmodel)
                    + s(&i.country)
                    + s(&i.currency)
                    + s(&i.unit)
                    + s(&i.unit1)
            })
            .sum::<usize>()
}
