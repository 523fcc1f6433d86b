//! **clear** (keyed by `logisticsNo`): activation of the stored list by its waybill into the
//! immutable declared list with its `invtNo` (§3), goods review (§4.1), channel (§4.3),
//! sorting-line decisions (§4.4), port release and exit (§4.5, §4.6), and the receipts
//! timeline in CEB status codes.

use crate::compact::{Codes, StoredList, heap_bytes};
use crate::controls::{ControlTable, ListIds};
use crate::declare::{Comparison, ListStatus};
use crate::engine::{Exited, Out};
use crate::ids;
use crate::retention::{Aging, Retention};
use crate::rules::{Rules, sampled};
use crate::tracked::{Keyed, KeyedChanges, Tracked};

/// What changed in a clear partition since the last [`Clear::changes_deferred`].
pub(crate) type ClearChanges = KeyedChanges<Parcel>;
use crate::{Collector, Map, Operator, Set};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{
    ChannelDecision, ChannelReason, ControlKind, DeclaredList, EventTime, Inventory, Receipt, Scan, SortingDecision,
    StatisticsFlag, Text, Waybill, Xray, status,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Broadcast state every clear partition reads, plus the `invtNo` serials in use (unique
/// across partitions).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Shared {
    /// Rules file.
    pub rules: Rules,
    /// Registered goods: `ebcCode` → `itemNo` → `gcode` (inline texts: a lookup per item
    /// of every list compares keys without following pointers).
    pub goods: Tracked<String, Map<Text, Text>>,
    /// Officer controls.
    pub controls: ControlTable,
    /// `invtNo` serials assigned, with their declaration year ([`ids::serial_key`]).
    pub serials: Set<u64>,
    /// Serials of years before this one have been dropped (retention).
    #[serde(default)]
    pub serials_from_year: u32,
    /// Serials assigned since the engine's last cut ([`crate::tracked::Incremental::cut`]),
    /// while the engine records its changes.
    #[serde(skip)]
    pub new_serials: Option<Vec<u64>>,
    /// HS nomenclature (loaded by the runtime; not checkpointed).
    #[serde(skip)]
    pub hs: Nomenclature,
}

/// Inputs of clear.
#[derive(Debug, Clone)]
pub enum ClearIn {
    /// The stored list, from declare.
    List(Box<Inventory>),
    /// Its comparison status, from declare.
    Status(ListStatus),
    /// CEB505 collection: activates the list.
    Waybill(Waybill),
    /// One parcel of a CEB507 arrival.
    Arrived {
        /// Parcel.
        logistics_no: Text,
        /// Arrival time.
        time: EventTime,
    },
    /// A sorting-line scan.
    Scan(Scan),
    /// Port release of the parcel under an intact seal.
    PortRelease {
        /// Parcel.
        logistics_no: Text,
        /// Seal.
        seal_no: Text,
        /// When.
        time: EventTime,
    },
    /// One parcel of a CEB509 departure.
    Departed {
        /// Parcel.
        logistics_no: Text,
        /// Leave time.
        time: EventTime,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decl {
    invt_no: Text,
    /// Content digest of the declared list (its hex is the record's `contentHash`).
    #[serde(with = "digest_hex")]
    hash: u128,
    red: bool,
    certificate: bool,
    tax: bool,
}

/// What clear holds per parcel. Kept small: most parcels wait (for their waybill, a scan,
/// the port, the exit) with their list at rest in compact form.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Parcel {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "stored_hex")]
    list: Option<StoredList>,
    comparison: Option<Comparison>,
    /// Payment firm, as an id in the partition's code table.
    pay_code: Option<u32>,
    waybill: Option<EventTime>,
    decl: Option<Box<Decl>>,
    arrived: bool,
    inspected: bool,
    verified_receipt: bool,
    site_released: bool,
    port_released: Option<Box<str>>,
    exited: bool,
    /// Day of the last message about the parcel ([`Retention`]).
    #[serde(default)]
    touched: i32,
}

mod digest_hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::ids::hex128(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        u128::from_str_radix(&s, 16).map_err(|_| D::Error::custom(format!("'{s}' is not a 128-bit hex digest")))
    }
}

mod stored_hex {
    use crate::compact::{StoredList, deserialize_hex, serialize_hex};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(l: &Option<StoredList>, s: S) -> Result<S::Ok, S::Error> {
        match l {
            Some(l) => serialize_hex(l.bytes(), s),
            None => s.serialize_none(),
        }
    }

    /// Unchecked here; [`super::Clear`]'s deserializer checks every list against its codes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StoredList>, D::Error> {
        deserialize_hex(d).map(|b| Some(StoredList::unchecked(b)))
    }
}

/// The clear operator: state per `logisticsNo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "ClearSnapshot")]
pub struct Clear {
    /// Boxed: a growing map moves 32-byte buckets when it resizes, not whole parcels (a
    /// resize of a large map was a multi-millisecond pause on the decision path).
    parcels: Tracked<Text, Box<Parcel>>,
    /// The codes of the lists at rest.
    codes: Codes,
    /// Parcels by the day they were last touched.
    retention: Retention,
    /// Codes already in the last [`Clear::changes_deferred`] (the table only grows).
    #[serde(skip)]
    codes_sent: usize,
}

#[derive(Deserialize)]
struct ClearSnapshot {
    parcels: Tracked<Text, Box<Parcel>>,
    codes: Codes,
    #[serde(default)]
    retention: Retention,
}

impl TryFrom<ClearSnapshot> for Clear {
    type Error = String;

    fn try_from(s: ClearSnapshot) -> Result<Clear, String> {
        for (k, p) in s.parcels.iter() {
            if let Some(l) = &p.list {
                l.check(&s.codes).map_err(|e| format!("parcel {k}: {e}"))?;
            }
            if let Some(c) = p.pay_code
                && c as usize >= s.codes.len()
            {
                return Err(format!("parcel {k}: payment firm code {c} is not in the code table"));
            }
        }
        Ok(Clear { parcels: s.parcels, codes: s.codes, retention: s.retention, codes_sent: 0 })
    }
}

impl Aging for Parcel {
    fn touched(&mut self) -> &mut i32 {
        &mut self.touched
    }

    fn touched_day(&self) -> i32 {
        self.touched
    }
}

/// Keeps the aimed controls applying to the parcel from its day on (after it was touched on
/// a later day or got its list or `invtNo`: see [`crate::controls`]).
#[inline]
fn keep_controls(controls: &mut ControlTable, logistics_no: &str, p: &Parcel) {
    if controls.has_aimed() {
        let ids = ListIds {
            invt_no: p.decl.as_ref().map(|d| d.invt_no.as_str()),
            order_no: p.list.as_ref().map_or("", StoredList::order_no),
            logistics_no,
            ebc_code: "",
        };
        controls.keep(ids, p.touched);
    }
}

/// A receipt for a parcel (identity: list or parcel key + status + `tag`).
fn receipt(
    p: &Parcel,
    logistics_no: &str,
    st: i32,
    info: Text,
    time: EventTime,
    tag: &str,
    controls: Vec<Text>,
) -> Receipt {
    let invt = p.decl.as_ref().map(|d| d.invt_no.clone());
    let order_no = p.list.as_ref().map(|l| Text::from(l.order_no()));
    let key = invt.as_deref().unwrap_or(logistics_no);
    // `{key}/{status}{tag}`
    let mut id = Text::with_capacity(key.len() + 8 + tag.len());
    id.push_str(key);
    id.push('/');
    if st < 0 {
        id.push('-');
    }
    ids::push_padded(&mut id, st.unsigned_abs() as u64, 1);
    id.push_str(tag);
    Receipt {
        id,
        invt_no: invt,
        order_no,
        logistics_no: Some(logistics_no.into()),
        return_status: st,
        return_info: info,
        return_time: time,
        control_ids: controls,
        pay_code: None,
    }
}

impl Clear {
    /// True when the parcel's list was released at the site (for seals).
    pub fn site_released(&self, logistics_no: &str) -> bool {
        self.parcels.get(logistics_no).is_some_and(|p| p.site_released && !self.retention.stale(p.touched))
    }

    /// Drops the state of parcels not touched since before day `cutoff` (up to
    /// [`crate::retention::SWEEP_BUDGET`] per call; see [`crate::retention`]). Returns how
    /// many were dropped.
    pub fn expire(&mut self, cutoff: i32) -> usize {
        self.retention.sweep(&mut self.parcels, cutoff)
    }

    /// Keys changed since the last changes were taken, and keys held.
    pub fn changed(&self) -> (usize, usize) {
        (self.parcels.changed(), self.parcels.len())
    }

    fn keyed(&mut self) -> Keyed<'_, Parcel> {
        let Clear { parcels: map, codes, retention, codes_sent } = self;
        Keyed { map, codes, codes_sent, retention }
    }

    /// Starts recording what changes (incremental checkpoints).
    pub(crate) fn track(&mut self) {
        self.keyed().track();
    }

    /// What changed since [`Clear::track`] or the last changes, the entries owed: taken by
    /// [`Clear::take_owed`], copied a few at a time meanwhile ([`Clear::copy_owed`]).
    pub(crate) fn changes_deferred(&mut self) -> ClearChanges {
        self.keyed().changes_deferred()
    }

    /// Copies up to `budget` owed entries; true once none is owed.
    pub(crate) fn copy_owed(&mut self, budget: usize) -> bool {
        self.parcels.copy_owed(budget)
    }

    /// Completes `c` (from [`Clear::changes_deferred`]) with its entries.
    pub(crate) fn take_owed(&mut self, c: &mut ClearChanges) {
        c.entries = self.parcels.take_owed();
    }

    /// Applies [`Clear::changes_deferred`] of the partition this one is a copy of.
    pub(crate) fn apply(&mut self, c: ClearChanges) -> Result<(), String> {
        self.keyed().apply(c)
    }

    /// Room for `n` more parcels without a resize.
    pub fn reserve(&mut self, n: usize) {
        self.parcels.reserve(n);
        self.retention.reserve(n);
    }

    /// Parcels with state.
    pub fn len(&self) -> usize {
        self.parcels.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.parcels.is_empty()
    }

    fn activate(ctx: &mut Shared, codes: &Codes, logistics_no: &str, p: &mut Parcel, out: &mut dyn Collector<Out>) {
        let (Some(packed), Some(t), None) = (&p.list, p.waybill, &p.decl) else { return };
        let l = Arc::new(packed.unpack(logistics_no, codes));
        let year = (cbec_schemas::time::period_of(t) / 100) as i32;
        let mut attempt = 0;
        let serial = loop {
            let s = ids::invt_serial(ctx.rules.instance, &l.customs_code, year, logistics_no, attempt);
            let key = ids::serial_key(year, s);
            if ctx.serials.insert(key) {
                if let Some(v) = &mut ctx.new_serials {
                    v.push(key);
                }
                break s;
            }
            attempt += 1;
        };
        let invt_no = ids::invt_no(&l.customs_code, year, serial);
        let hash = ids::content_digest(&l);
        let comparison = p.comparison.unwrap_or(Comparison::Pending);

        // Channel (§4.3) with every reason that fired.
        let mut reasons = Vec::new();
        let mut certificate = false;
        let mut tax = false;
        for it in &l.items {
            if let Some(rule) = ctx.rules.certificate_rule(&it.gcode) {
                certificate = true;
                reasons.push(ChannelReason {
                    code: Text::const_new("certificate_required"),
                    detail: format!("item {} gcode {} matches certificate rule {rule}", it.gnum, it.gcode).into(),
                    control_id: None,
                });
            }
            if ctx.rules.tax_rule(&it.gcode).is_some() {
                tax = true;
            }
            match ctx.goods.get(l.ebc_code.as_str()).and_then(|m| m.get(it.item_no.as_str())) {
                None => reasons.push(ChannelReason {
                    code: Text::const_new("goods_unregistered"),
                    detail: format!("item {} itemNo {} is not registered for {}", it.gnum, it.item_no, l.ebc_code)
                        .into(),
                    control_id: None,
                }),
                Some(g) if *g != it.gcode => reasons.push(ChannelReason {
                    code: Text::const_new("hs_mismatch"),
                    detail: format!("item {} declares gcode {} but {} is registered", it.gnum, it.gcode, g).into(),
                    control_id: None,
                }),
                Some(_) => {}
            }
        }
        let (rate, rate_control) = ctx.controls.rate(ctx.rules.inspection_rate);
        if sampled(&ctx.rules.sampling_key, &invt_no, rate) {
            reasons.push(ChannelReason {
                code: Text::const_new("sampled"),
                detail: format!("random control at rate {rate}").into(),
                control_id: rate_control.map(Text::from),
            });
        }
        let gcodes: Vec<&str> =
            if ctx.controls.by_gcode() { l.items.iter().map(|i| i.gcode.as_str()).collect() } else { Vec::new() };
        let ids = ListIds {
            invt_no: Some(&invt_no),
            order_no: &l.order_no,
            logistics_no: &l.logistics_no,
            ebc_code: &l.ebc_code,
        };
        for c in ctx.controls.matching(ControlKind::Control, ids, &gcodes) {
            reasons.push(ChannelReason {
                code: Text::const_new("manual_control"),
                detail: format!("control by {}: {}", c.officer, c.reason).into(),
                control_id: Some(c.id.as_str().into()),
            });
        }
        let red = !reasons.is_empty();
        out.collect(Out::Declared(DeclaredList {
            invt_no: invt_no.clone(),
            decl_time: t,
            content_hash: ids::hex128(hash).into(),
            comparison: Text::const_new(comparison.as_str()),
            pay_code: p.pay_code.map(|c| Text::from(codes.get(c))),
            list: l.clone(),
        }));
        p.decl = Some(Box::new(Decl { invt_no: invt_no.clone(), hash, red, certificate, tax }));
        out.collect(Out::Receipt(receipt(
            p,
            logistics_no,
            status::ACCEPTED,
            Text::const_new("declared: list activated by logistics collection"),
            t,
            "",
            vec![],
        )));
        let control_ids: Vec<Text> = reasons.iter().filter_map(|r| r.control_id.clone()).collect();
        out.collect(Out::Channel(ChannelDecision {
            id: compact_str::format_compact!("{invt_no}/channel"),
            invt_no: invt_no.clone(),
            logistics_no: logistics_no.into(),
            order_no: l.order_no.clone(),
            ebc_code: l.ebc_code.clone(),
            channel: Text::const_new(if red { "red" } else { "green" }),
            reasons,
            tax_related: tax,
            certificate_related: certificate,
            time: t,
        }));
        if red {
            out.collect(Out::Receipt(receipt(
                p,
                logistics_no,
                status::MANUAL_REVIEW,
                Text::const_new("red channel: on-site review"),
                t,
                "",
                control_ids,
            )));
        }
    }

    fn scan(ctx: &mut Shared, codes: &Codes, s: Scan, p: &mut Parcel, out: &mut dyn Collector<Out>) {
        let mut reasons: Vec<Text> = Vec::new();
        let mut control_ids: Vec<Text> = Vec::new();
        let port = match (&p.decl, &p.list) {
            (Some(d), Some(l)) if !matches!(p.comparison, Some(Comparison::Returned { .. })) => {
                let mut gcodes = Vec::new();
                let head = l.scan_view(codes, ctx.controls.by_gcode().then_some(&mut gcodes));
                let ids = ListIds {
                    invt_no: Some(&d.invt_no),
                    order_no: head.order_no,
                    logistics_no: &s.logistics_no,
                    ebc_code: head.ebc_code,
                };
                let verified = ctx.controls.matching(ControlKind::Verified, ids, &[]);
                for c in &verified {
                    control_ids.push(c.id.as_str().into());
                }
                let mut hit = Vec::new();
                if !p.site_released {
                    for c in ctx.controls.matching(ControlKind::Review, ids, &[]) {
                        hit.push(("review", c.id.as_str()));
                    }
                }
                for c in ctx.controls.matching(ControlKind::Control, ids, &gcodes) {
                    hit.push(("manual_control", c.id.as_str()));
                }
                if !verified.is_empty() {
                    reasons.push(Text::const_new("verified"));
                    if !p.verified_receipt {
                        p.verified_receipt = true;
                        out.collect(Out::Receipt(receipt(
                            p,
                            &s.logistics_no,
                            status::REVIEW_CONCLUDED,
                            Text::const_new("review concluded: verified by on-site customs"),
                            s.scan_time,
                            "",
                            control_ids.clone(),
                        )));
                    }
                }
                if d.certificate && verified.is_empty() {
                    reasons.push(Text::const_new("certificate_required"));
                    "certificate"
                } else {
                    let suspect = s.xray == Some(Xray::Suspect);
                    if d.red {
                        reasons.push(Text::const_new("red_channel"));
                    }
                    if suspect {
                        reasons.push(Text::const_new("xray_suspect"));
                    }
                    for (r, id) in &hit {
                        reasons.push((*r).into());
                        control_ids.push(Text::from(*id));
                    }
                    if (d.red || suspect || !hit.is_empty()) && verified.is_empty() {
                        "inspect"
                    } else {
                        if reasons.is_empty() {
                            reasons.push(Text::const_new("green"));
                        }
                        "release"
                    }
                }
            }
            (Some(_), _) => {
                reasons.push(Text::const_new("returned"));
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
        // `{lineId}/{scanId}/{logisticsNo}/{scanTime ms}`: a line that uses a scan id again
        // (a counter started afresh) for another parcel or another time makes another
        // decision, which must not share the first one's identity (a consumer
        // de-duplicating by identity would drop it); the same scan sent twice keeps one.
        let mut id = Text::with_capacity(s.line_id.len() + s.scan_id.len() + s.logistics_no.len() + 17);
        id.push_str(&s.line_id);
        id.push('/');
        id.push_str(&s.scan_id);
        id.push('/');
        id.push_str(&s.logistics_no);
        id.push('/');
        if s.scan_time.0 < 0 {
            id.push('-');
        }
        ids::push_padded(&mut id, s.scan_time.0.unsigned_abs(), 1);
        // The X-ray result too: the same scan sent again with another result is another
        // decision (the same scan sent twice keeps one identity: its second decision is a
        // duplicate to drop, whatever the state made of it).
        match s.xray {
            Some(Xray::Clear) => id.push_str("/clear"),
            Some(Xray::Suspect) => id.push_str("/suspect"),
            None => {}
        }
        out.collect(Out::Sorting(SortingDecision {
            id,
            logistics_no: s.logistics_no,
            invt_no: p.decl.as_ref().map(|d| d.invt_no.clone()),
            scan_id: s.scan_id,
            line_id: s.line_id,
            port: Text::const_new(port),
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
            out.collect(Out::Receipt(receipt(p, &lno, st, info.into(), s.scan_time, "", controls)));
        }
    }

    /// The exit of parcel `p`'s list; `was` its comparison as it last left (`None` when it
    /// leaves the first time).
    fn exited(p: &Parcel, logistics_no: &str, codes: &Codes, was: Option<&Option<Comparison>>) -> Option<Exited> {
        let (Some(d), Some(l)) = (&p.decl, &p.list) else { return None };
        let list = l.unpack(logistics_no, codes);
        let summarizable = |c: &Option<Comparison>| {
            !d.tax && list.statistics_flag == StatisticsFlag::B && *c == Some(Comparison::Consistent)
        };
        Some(Exited {
            invt_no: d.invt_no.clone(),
            summarizable: summarizable(&p.comparison),
            was_summarizable: was.is_some_and(summarizable),
            list: Arc::new(list),
            seq: 0,
        })
    }
}

impl Operator for Clear {
    type In = ClearIn;
    type Out = Out;
    type Ctx = Shared;

    fn process(&mut self, ctx: &mut Shared, input: ClearIn, out: &mut dyn Collector<Out>) {
        let Clear { parcels, codes, retention, .. } = self;
        match input {
            ClearIn::List(l) => {
                let key = l.logistics_no.as_str();
                let (p, moved) = retention.state_of_moved(parcels, key, l.app_time);
                if moved && (p.decl.is_some() || l.app_type == cbec_schemas::AppType::Delete) {
                    // Kept here when no list is stored below (which keeps them after).
                    keep_controls(&mut ctx.controls, key, p);
                }
                if let Some(d) = &p.decl {
                    let hash = ids::content_digest(&l);
                    if hash != d.hash {
                        let hash = ids::hex128(hash);
                        out.collect(Out::Receipt(receipt(
                            p,
                            key,
                            status::ERR_IMMUTABLE,
                            format!("declared list {} is immutable: changed stored list refused", d.invt_no).into(),
                            l.app_time,
                            &format!("/{hash}"),
                            vec![],
                        )));
                    }
                    return;
                }
                if l.app_type == cbec_schemas::AppType::Delete {
                    p.list = None;
                    return;
                }
                p.list = Some(StoredList::pack(&l, codes));
                Clear::activate(ctx, codes, key, p, out);
                keep_controls(&mut ctx.controls, key, p);
            }
            ClearIn::Status(s) => {
                let (p, moved) = retention.state_of_moved(parcels, &s.logistics_no, s.time);
                if moved {
                    keep_controls(&mut ctx.controls, &s.logistics_no, p);
                }
                let was = p.comparison.replace(s.comparison);
                if let Some(c) = &s.pay_code {
                    p.pay_code = Some(codes.id(c));
                }
                if s.comparison == Comparison::Consistent && was != Some(Comparison::Consistent) && p.decl.is_some() {
                    // Declared before the comparison could conclude (its payment came later,
                    // or a correction cleared a return): the receipt names the payment firm
                    // the declared list could not.
                    let mut r = receipt(
                        p,
                        &s.logistics_no,
                        status::ACCEPTED,
                        Text::const_new("order-number comparison consistent after declaration"),
                        s.time,
                        // The order and its revision: two statuses of one event time, or
                        // of two orders whose lists name this parcel, differ in them.
                        &format!("/{}/{}/{}", s.time.0, s.order_no, s.revision),
                        vec![],
                    );
                    r.pay_code = s.pay_code.as_deref().map(Text::from);
                    out.collect(Out::Receipt(r));
                }
                if let Comparison::Returned { reasons } = &s.comparison
                    && (p.decl.is_some() || p.list.is_some())
                {
                    out.collect(Out::Receipt(receipt(
                        p,
                        &s.logistics_no,
                        status::RETURNED,
                        format!("returned by the order-number comparison: {}", reasons).into(),
                        s.time,
                        // The order and its revision: two statuses of one event time, or
                        // of two orders whose lists name this parcel, differ in them.
                        &format!("/{}/{}/{}", s.time.0, s.order_no, s.revision),
                        vec![],
                    )));
                }
                if p.exited
                    && was != p.comparison
                    && let Some(e) = Clear::exited(p, &s.logistics_no, codes, Some(&was))
                {
                    out.collect(Out::Exited(e));
                }
            }
            ClearIn::Waybill(w) => {
                let key = w.logistics_no.as_str();
                let (p, moved) = retention.state_of_moved(parcels, key, w.app_time);
                if moved {
                    keep_controls(&mut ctx.controls, key, p);
                }
                match (p.waybill, &p.decl) {
                    (Some(t), Some(d)) if t != w.app_time => {
                        let info: Text =
                            format!("declared list {} already activated: second activation refused", d.invt_no).into();
                        out.collect(Out::Receipt(receipt(
                            p,
                            key,
                            status::ERR_IMMUTABLE,
                            info,
                            w.app_time,
                            &format!("/w{}", w.app_time.0),
                            vec![],
                        )));
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        p.waybill = Some(w.app_time);
                        Clear::activate(ctx, codes, key, p, out);
                        if let Some(d) = &p.decl {
                            ctx.controls.keep_invt(&d.invt_no, p.touched);
                        }
                    }
                }
            }
            ClearIn::Arrived { logistics_no, time } => {
                let (p, moved) = retention.state_of_moved(parcels, &logistics_no, time);
                if moved {
                    keep_controls(&mut ctx.controls, &logistics_no, p);
                }
                if !p.arrived {
                    p.arrived = true;
                    if p.decl.is_none() {
                        out.collect(Out::Receipt(receipt(
                            p,
                            &logistics_no,
                            -403,
                            Text::const_new("arrived at the supervised site without a declared list"),
                            time,
                            // With the time: after the state retention dropped the parcel,
                            // another arrival is another receipt.
                            &format!("/arrival/{}", time.0),
                            vec![],
                        )));
                    }
                }
            }
            ClearIn::Scan(s) => {
                let (p, moved) = retention.state_of_moved(parcels, &s.logistics_no, s.scan_time);
                if moved {
                    keep_controls(&mut ctx.controls, &s.logistics_no, p);
                }
                Clear::scan(ctx, codes, s, p, out);
            }
            ClearIn::PortRelease { logistics_no, seal_no, time } => {
                let (p, moved) = retention.state_of_moved(parcels, &logistics_no, time);
                if moved {
                    keep_controls(&mut ctx.controls, &logistics_no, p);
                }
                p.port_released = Some(seal_no.as_str().into());
            }
            ClearIn::Departed { logistics_no, time } => {
                let (p, moved) = retention.state_of_moved(parcels, &logistics_no, time);
                if moved {
                    keep_controls(&mut ctx.controls, &logistics_no, p);
                }
                if p.exited {
                    return;
                }
                if p.port_released.is_some() && p.decl.is_some() {
                    p.exited = true;
                    out.collect(Out::Receipt(receipt(
                        p,
                        &logistics_no,
                        status::CLOSED,
                        Text::const_new("exit confirmed"),
                        time,
                        "",
                        vec![],
                    )));
                    if let Some(e) = Clear::exited(p, &logistics_no, codes, None) {
                        out.collect(Out::Exited(e));
                    }
                } else {
                    out.collect(Out::Receipt(receipt(
                        p,
                        &logistics_no,
                        status::ERR_EXIT_NOT_RELEASED,
                        Text::const_new("exit of a parcel whose list was not released at the port"),
                        time,
                        // With the order when there is a list: a list arriving between two
                        // departures of one millisecond makes the second receipt name it.
                        &match &p.list {
                            Some(l) => format!("/{}/{}", time.0, l.order_no()),
                            None => format!("/{}", time.0),
                        },
                        vec![],
                    )));
                }
            }
        }
    }

    fn state_size(&self) -> usize {
        self.codes.state_size()
            + self.retention.state_size()
            + self
                .parcels
                .iter()
                .map(|(k, p)| {
                    heap_bytes(k)
                        + std::mem::size_of::<(Text, Box<Parcel>)>()
                        + std::mem::size_of::<Parcel>()
                        + p.list.as_ref().map_or(0, |l| l.state_size() - std::mem::size_of::<StoredList>())
                        + p.decl.as_ref().map_or(0, |d| std::mem::size_of::<Decl>() + heap_bytes(&d.invt_no))
                        + p.port_released.as_ref().map_or(0, |s| s.len())
                })
                .sum::<usize>()
    }
}

/// Bytes of a list in its owned form (the struct, its rows and texts too long to be inline).
pub fn inventory_bytes(l: &Inventory) -> usize {
    let s = heap_bytes;
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
