//! The operator graph of one pipeline: declare partitions (keyed by `orderNo`), clear
//! partitions (keyed by `logisticsNo`), the seal operator, and the broadcast tables (goods
//! registrations, controls). Single-threaded and deterministic: fed in canonical event-time
//! order, it produces the same records in the same order at any partition count.
//! Summarize runs downstream of [`Out::Exited`] (the runtime may put it on its own thread).

use crate::clear::{Clear, ClearChanges, ClearIn, Shared};
use crate::declare::{Declare, DeclareChanges, DeclareIn, DeclareOut};
use crate::retention::day_of;
use crate::rules::Rules;
use crate::seal::{SealChanges, SealOp};
use crate::tracked::{Change, Cut, Incremental, Unshared};
use crate::{Operator, ids, partition_of};
use cbec_schemas::hs::{HsCheck, Nomenclature};
use cbec_schemas::{
    AppType, ChannelDecision, DeclaredList, Entity, EventTime, Inventory, Receipt, Return, SealVerdict,
    SortingDecision, Text, status,
};
use serde::{Deserialize, Serialize};

/// An exited list on its way to summarize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// Declared list number.
    pub invt_no: cbec_schemas::Text,
    /// Consistent, non-tax-related, `statisticsFlag` B: goes into a summary declaration.
    pub summarizable: bool,
    /// It was summarizable as it last left (false the first time): a list that stops being
    /// summarizable after its period's declaration was made is withdrawn from it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub was_summarizable: bool,
    /// The list.
    pub list: std::sync::Arc<Inventory>,
    /// Its place among the engine's exits (1, 2, …): deterministic, so the same on a
    /// replay; a summarize instance across a topic skips what it already applied.
    #[serde(default)]
    pub seq: u64,
}

/// Every record the engine emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// `cbec.declared`.
    Declared(DeclaredList),
    /// `cbec.receipts`.
    Receipt(Receipt),
    /// `cbec.returns`.
    Return(Box<Return>),
    /// `cbec.channels`.
    Channel(ChannelDecision),
    /// `cbec.sorting`.
    Sorting(SortingDecision),
    /// `cbec.releases`.
    Release(SealVerdict),
    /// To summarize.
    Exited(Exited),
}

/// The engine state (checkpointed whole).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    shared: Shared,
    declare: Vec<Declare>,
    clear: Vec<Clear>,
    seals: SealOp,
    watermark: EventTime,
    /// State dropped by retention so far: (orders, parcels).
    #[serde(default)]
    expired: (u64, u64),
    /// Exits so far (the `seq` of the last [`Exited`]).
    #[serde(default)]
    exits: u64,
    /// The latest event time processed (an aimed control is kept from its day at least:
    /// no parcel it applies to was touched later).
    #[serde(default = "no_time")]
    latest: EventTime,
    /// The partitions of `<group_id>.exited` an engine stage routes its exits over, pinned
    /// by its first run ([`Engine::pin_handover`]); none before.
    #[serde(default)]
    handover: Option<u32>,
    /// Recording changes for [`Incremental::cut`] (`Some`); a copy does not.
    #[serde(skip)]
    tracking: Unshared<()>,
}

fn no_time() -> EventTime {
    EventTime::MIN
}

/// The engine's state for a checkpoint ([`Incremental::cut`]).
pub type EngineCut = Cut<Engine, EngineChanges>;

/// What changed in the engine since the previous [`Incremental::cut`]: the keyed entries
/// written (orders, parcels, seals, bills, goods registrations by company), the codes and
/// `invtNo` serials added, what the control table did (in order), and copies of the flat or
/// small parts (retention queues, rules).
#[derive(Debug, Serialize, Deserialize)]
pub struct EngineChanges {
    declare: Vec<DeclareChanges>,
    clear: Vec<ClearChanges>,
    seals: SealChanges,
    goods: Vec<Change<String, crate::Map<Text, Text>>>,
    /// The whole control table (what changes written before the twelfth session hold: read,
    /// never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    controls: Option<crate::controls::ControlTable>,
    /// The controls applied since the previous changes, in order (what changes written in
    /// the twelfth session hold: read, never written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    controls_applied: Vec<cbec_schemas::Control>,
    /// What the control table did since the previous changes, in order (controls applied,
    /// aimed controls kept longer or dropped by the retention): the table is a function of
    /// them, and copying it whole at every checkpoint after a control cost O(all held).
    #[serde(default)]
    control_ops: Vec<crate::controls::ControlOp>,
    /// `invtNo` serials assigned since the previous changes.
    serials: Vec<u64>,
    serials_from_year: u32,
    rules: Rules,
    watermark: EventTime,
    expired: (u64, u64),
    #[serde(default)]
    exits: u64,
    #[serde(default = "no_time")]
    latest: EventTime,
    #[serde(default)]
    handover: Option<u32>,
}

/// True when copying the whole state is cheaper than copying `changed` of `held` keys:
/// a changed entry costs about twice a warm whole-state copy per entry (a lookup by key,
/// not a sequential walk), and a whole copy goes into fresh memory while the checkpoint
/// writer holds the previous one, which costs it about 1.6 times (`--bench e2e`, phase
/// checkpoint): the whole copy wins above about 80 % of the keys changed.
pub fn whole_copy_is_cheaper(changed: usize, held: usize) -> bool {
    changed * 5 > held * 4
}

impl Engine {
    /// A new engine with `partitions` declare and clear partitions.
    pub fn new(rules: Rules, hs: Nomenclature, partitions: usize) -> Engine {
        let n = partitions.max(1);
        Engine {
            shared: Shared { rules, hs, ..Shared::default() },
            declare: (0..n).map(|_| Declare::default()).collect(),
            clear: (0..n).map(|_| Clear::default()).collect(),
            seals: SealOp::default(),
            watermark: EventTime::MIN,
            expired: (0, 0),
            exits: 0,
            latest: EventTime::MIN,
            handover: None,
            tracking: Unshared(None),
        }
    }

    /// The partitions of `<group_id>.exited` this engine's exits are routed over, once
    /// pinned.
    pub fn handover(&self) -> Option<u32> {
        self.handover
    }

    /// Pins the partitions exits are routed over (an engine stage's first run: each
    /// company's exits must go on to the partition they went to); kept through checkpoints,
    /// never changed once set. Returns the pinned count.
    pub fn pin_handover(&mut self, partitions: u32) -> u32 {
        *self.handover.get_or_insert(partitions)
    }

    /// Orders and parcels changed since the last [`Incremental::cut`], and held.
    pub fn changed_keys(&self) -> (usize, usize) {
        let d = self.declare.iter().map(Declare::changed);
        let c = self.clear.iter().map(Clear::changed);
        d.chain(c).fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }

    /// Sizes the keyed state for `keys` orders and parcels in all (spread over the
    /// partitions), so that it does not resize while they arrive.
    pub fn reserve(&mut self, keys: usize) {
        let per = keys.div_ceil(self.declare.len().max(1));
        for d in &mut self.declare {
            d.reserve(per);
        }
        for c in &mut self.clear {
            c.reserve(per);
        }
        self.shared.serials.reserve(keys);
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.shared.rules
    }

    /// The event-time watermark reached.
    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    fn declare(&mut self, key: &str, input: DeclareIn, out: &mut Vec<Out>) {
        let p = partition_of(key, self.declare.len());
        let mut d = Vec::new();
        self.declare[p].process(&mut self.shared.rules, input, &mut d);
        self.route_declare(d, out);
    }

    fn route_declare(&mut self, d: Vec<DeclareOut>, out: &mut Vec<Out>) {
        for o in d {
            match o {
                DeclareOut::Return(r) => out.push(Out::Return(Box::new(r))),
                DeclareOut::List(l) => {
                    if let Some(t) = &l.total_package_no {
                        self.seals.bill(t, &l.logistics_no, l.app_time);
                    }
                    let key = l.logistics_no.clone();
                    self.clear(&key, ClearIn::List(l), out);
                }
                DeclareOut::Status(s) => {
                    let key = s.logistics_no.clone();
                    self.clear(&key, ClearIn::Status(s), out);
                }
            }
        }
    }

    fn clear(&mut self, key: &str, input: ClearIn, out: &mut Vec<Out>) {
        let p = partition_of(key, self.clear.len());
        self.clear[p].process(&mut self.shared, input, out);
    }

    fn goods(&mut self, g: cbec_schemas::GoodsRegistration, out: &mut Vec<Out>) {
        let key = format!("{}/{}", g.ebc_code, g.item_no);
        let (st, info) = if g.app_type == AppType::Delete {
            if let Some(m) = self.shared.goods.get_mut(&g.ebc_code) {
                m.remove(g.item_no.as_str());
            }
            (status::ACCEPTED, "registration deleted".to_string())
        } else {
            match self.shared.hs.check(&g.gcode) {
                HsCheck::Malformed => {
                    (status::ERR_GCODE_MALFORMED, format!("gcode '{}' is not a 10-digit HS code", g.gcode))
                }
                HsCheck::UnknownSubheading => (
                    status::ERR_GCODE_UNKNOWN,
                    format!("gcode '{}': {} is not a subheading of the HS nomenclature", g.gcode, &g.gcode[..6]),
                ),
                HsCheck::Known | HsCheck::Unverified => {
                    self.shared.goods.or_default(&g.ebc_code).insert(g.item_no.clone(), g.gcode.clone());
                    (status::ACCEPTED, "goods registered".to_string())
                }
            }
        };
        out.push(Out::Receipt(Receipt {
            // A deletion and a registration at one time differ in their kind.
            id: format!(
                "goods/{key}/{}/{}{}",
                g.app_time.0,
                st,
                if g.app_type == AppType::Delete { "/deleted" } else { "" }
            )
            .into(),
            invt_no: None,
            order_no: None,
            logistics_no: None,
            return_status: st,
            return_info: format!("{key}: {info}").into(),
            return_time: g.app_time,
            control_ids: Vec::new(),
            pay_code: None,
        }));
    }

    /// Numbers the exits among `out[from..]`.
    fn number_exits(&mut self, out: &mut [Out], from: usize) {
        for o in &mut out[from..] {
            if let Out::Exited(x) = o {
                self.exits += 1;
                x.seq = self.exits;
            }
        }
    }

    /// Processes one input entity.
    pub fn process(&mut self, e: Entity, out: &mut Vec<Out>) {
        self.latest = self.latest.max(e.event_time());
        let from = out.len();
        self.process_entity(e, out);
        self.number_exits(out, from);
    }

    fn process_entity(&mut self, e: Entity, out: &mut Vec<Out>) {
        match e {
            Entity::Goods(g) => self.goods(g, out),
            Entity::Order(o) => {
                let k = o.order_no.clone();
                self.declare(&k, DeclareIn::Order(o), out)
            }
            Entity::Payment(p) => {
                let k = p.order_no.clone();
                self.declare(&k, DeclareIn::Payment(p), out)
            }
            Entity::List(l) => {
                let k = l.order_no.clone();
                self.declare(&k, DeclareIn::List(l), out)
            }
            Entity::Waybill(w) => {
                let k = w.logistics_no.clone();
                self.clear(&k, ClearIn::Waybill(w), out)
            }
            Entity::Scan(s) => {
                let k = s.logistics_no.clone();
                self.clear(&k, ClearIn::Scan(s), out)
            }
            Entity::Arrival(a) => {
                for it in a.items {
                    if let Some(t) = &it.total_package_no {
                        self.seals.bill(t, &it.logistics_no, a.app_time);
                    }
                    let k = it.logistics_no.clone();
                    self.clear(&k, ClearIn::Arrived { logistics_no: it.logistics_no, time: a.app_time }, out);
                }
            }
            Entity::Departure(d) => {
                for it in d.items {
                    let k = it.logistics_no.clone();
                    self.clear(&k, ClearIn::Departed { logistics_no: it.logistics_no, time: d.leave_time }, out);
                }
            }
            Entity::Seal(s) => {
                let releases = self.seals.process(s, &self.clear, &self.shared.controls, out);
                for r in releases {
                    let k = r.logistics_no.clone();
                    self.clear(
                        &k,
                        ClearIn::PortRelease { logistics_no: r.logistics_no, seal_no: r.seal_no, time: r.time },
                        out,
                    );
                }
            }
            Entity::Control(c) => {
                let day = day_of(self.latest.max(self.watermark));
                self.shared.controls.apply(c, day);
            }
            Entity::WayBill(_) => {}
        }
    }

    /// Advances event time: the payment waits due fire.
    pub fn advance(&mut self, wm: EventTime, out: &mut Vec<Out>) {
        if wm <= self.watermark {
            return;
        }
        self.watermark = wm;
        let from = out.len();
        // Timers fire in global (time, orderNo) order, whatever the partitioning.
        // The earliest timers are compared where they lie: the watermark moves with almost
        // every message, and a copy of each partition's first key cost an allocation each.
        loop {
            let next = (0..self.declare.len()).filter_map(|p| self.declare[p].next_timer().map(|t| (t, p))).min();
            let Some(((t, _), p)) = next else { break };
            if *t > wm.0 {
                break;
            }
            let mut d = Vec::new();
            self.declare[p].fire_next(&self.shared.rules, wm, &mut d);
            self.route_declare(d, out);
        }
        self.number_exits(out, from);
        // Retention (after the timers: a wait that ends now still fires). The end of time
        // of a finite input drops nothing: the run's final state is reported.
        if let Some(r) = self.shared.rules.retention_ms()
            && wm < EventTime::MAX
        {
            let horizon = EventTime(wm.0.saturating_sub(r));
            let cutoff = day_of(horizon);
            for d in &mut self.declare {
                self.expired.0 += d.expire(cutoff) as u64;
            }
            for c in &mut self.clear {
                self.expired.1 += c.expire(cutoff) as u64;
            }
            self.seals.expire(cutoff);
            self.shared.controls.expire(cutoff);
            // `invtNo` serials of a declaration year no activation can still be in (its
            // waybill would be older than the retention: dead-lettered as expired).
            let year = cbec_schemas::time::period_of(horizon) / 100;
            if self.shared.serials_from_year < year {
                self.shared.serials_from_year = year;
                self.shared.serials.retain(|s| ids::serial_year(*s) >= year);
            }
        }
    }

    /// True when `e` is about keyed state and its event time is older than the retention
    /// before the watermark: it would find its key's state dropped and start it afresh (a
    /// spurious wait, a second return), so the runtime dead-letters it (`expired`). Goods
    /// registrations and controls are never dead-lettered so (an aimed control is kept
    /// from the latest event time's day, and ages with the parcels it applies to).
    pub fn expired(&self, e: &Entity) -> bool {
        !matches!(e, Entity::Goods(_) | Entity::Control(_)) && self.expired_at(e.event_time())
    }

    /// True when event time `t` is older than the retention before the watermark.
    pub(crate) fn expired_at(&self, t: EventTime) -> bool {
        match self.shared.rules.retention_ms() {
            Some(r) if self.watermark > EventTime::MIN && self.watermark < EventTime::MAX => {
                t.0 < self.watermark.0.saturating_sub(r)
            }
            _ => false,
        }
    }

    /// State dropped by retention so far: (orders, parcels).
    pub fn expired_keys(&self) -> (u64, u64) {
        self.expired
    }

    /// Officer controls held: (all, those aimed at one list, order or parcel, which age
    /// with its state).
    pub fn controls_held(&self) -> (usize, usize) {
        (self.shared.controls.len(), self.shared.controls.aimed_len())
    }

    /// Serializes the whole state (checkpoint).
    pub fn snapshot(&self) -> Vec<u8> {
        crate::snapshot(self)
    }

    /// Restores a [`Engine::snapshot`]; the nomenclature is not part of it.
    pub fn restore(bytes: &[u8], hs: Nomenclature) -> Result<Engine, serde_json::Error> {
        let mut e: Engine = crate::restore(bytes)?;
        e.shared.hs = hs;
        Ok(e)
    }

    /// Bytes of keyed state per operator: (declare, clear).
    pub fn state_size(&self) -> (usize, usize) {
        (self.declare.iter().map(Operator::state_size).sum(), self.clear.iter().map(Operator::state_size).sum())
    }

    /// Parcels and orders with state: (orders, parcels).
    pub fn keys(&self) -> (usize, usize) {
        (self.declare.iter().map(Declare::len).sum(), self.clear.iter().map(Clear::len).sum())
    }
}

impl Engine {
    /// [`Incremental::cut`] in two steps: the cut is now, and the state written since is
    /// not in it, but the entries it copies (orders, parcels, seals, bills, goods written
    /// since the previous cut) are copied later — a few at a time by
    /// [`Engine::copy_owed`] between items, or before a write changes one — and put in by
    /// [`Engine::finish_cut`]. The pause on the engine thread is a copy of the changed
    /// keys, not of their entries. A whole cut is copied at once, as before.
    ///
    /// # Panics
    /// When the previous cut was not finished.
    pub fn begin_cut(&mut self) -> EngineCut {
        let (changed, held) = self.changed_keys();
        if self.tracking.0.is_none() || whole_copy_is_cheaper(changed, held) {
            self.track();
            return Cut::Whole(Box::new(self.clone()));
        }
        Cut::Changes(EngineChanges {
            declare: self.declare.iter_mut().map(Declare::changes_deferred).collect(),
            clear: self.clear.iter_mut().map(Clear::changes_deferred).collect(),
            seals: self.seals.changes_deferred(),
            goods: {
                self.shared.goods.defer_changes();
                Vec::new()
            },
            controls: None,
            controls_applied: Vec::new(),
            control_ops: self.shared.controls.changes(),
            serials: self.shared.new_serials.replace(Vec::new()).unwrap_or_default(),
            serials_from_year: self.shared.serials_from_year,
            rules: self.shared.rules.clone(),
            watermark: self.watermark,
            expired: self.expired,
            exits: self.exits,
            latest: self.latest,
            handover: self.handover,
        })
    }

    /// Copies up to `budget` entries the cut begun by [`Engine::begin_cut`] owes; true once
    /// none is owed (then [`Engine::finish_cut`] copies nothing more).
    pub fn copy_owed(&mut self, budget: usize) -> bool {
        self.declare.iter_mut().all(|d| d.copy_owed(budget))
            && self.clear.iter_mut().all(|c| c.copy_owed(budget))
            && self.seals.copy_owed(budget)
            && self.shared.goods.copy_owed(budget)
    }

    /// Completes the changes of [`Engine::begin_cut`] with the entries as they were at the
    /// cut (copying what is still owed).
    pub fn finish_cut(&mut self, c: &mut EngineChanges) {
        for (d, ch) in self.declare.iter_mut().zip(&mut c.declare) {
            d.take_owed(ch);
        }
        for (p, ch) in self.clear.iter_mut().zip(&mut c.clear) {
            p.take_owed(ch);
        }
        self.seals.take_owed(&mut c.seals);
        c.goods = self.shared.goods.take_owed();
    }
}

impl Incremental for Engine {
    type Changes = EngineChanges;

    /// A copy of all of the state the first time, afterwards only what changed since the
    /// previous cut (again all of it when [`whole_copy_is_cheaper`]). The cost on the engine
    /// thread is that of the copy: O(what changed) instead of O(state).
    fn cut(&mut self) -> EngineCut {
        let mut cut = self.begin_cut();
        if let Cut::Changes(c) = &mut cut {
            self.finish_cut(c);
        }
        cut
    }

    /// Applies the changes of the engine this one is a copy of (the checkpoint writer's
    /// copy): afterwards it equals that engine. An error when they cannot be changes of it
    /// (other partitions, code tables they do not continue); the engine may then be half
    /// changed.
    fn apply(&mut self, c: EngineChanges) -> Result<(), String> {
        if c.declare.len() != self.declare.len() || c.clear.len() != self.clear.len() {
            return Err(format!(
                "changes of an engine with {} and {} partitions, not {} and {}",
                c.declare.len(),
                c.clear.len(),
                self.declare.len(),
                self.clear.len()
            ));
        }
        for (d, ch) in self.declare.iter_mut().zip(c.declare) {
            d.apply(ch)?;
        }
        for (p, ch) in self.clear.iter_mut().zip(c.clear) {
            p.apply(ch)?;
        }
        self.seals.apply(c.seals);
        self.shared.goods.apply(c.goods);
        if let Some(controls) = c.controls {
            self.shared.controls = controls;
        }
        for control in c.controls_applied {
            let day = day_of(control.time);
            self.shared.controls.apply(control, day);
        }
        self.shared.controls.replay(c.control_ops);
        self.shared.serials.extend(c.serials);
        if self.shared.serials_from_year < c.serials_from_year {
            self.shared.serials_from_year = c.serials_from_year;
            self.shared.serials.retain(|s| ids::serial_year(*s) >= c.serials_from_year);
        }
        self.shared.rules = c.rules;
        self.watermark = c.watermark;
        self.expired = c.expired;
        self.exits = c.exits;
        self.latest = c.latest;
        self.handover = c.handover.or(self.handover);
        Ok(())
    }

    fn track(&mut self) {
        self.tracking = Unshared(Some(()));
        self.declare.iter_mut().for_each(Declare::track);
        self.clear.iter_mut().for_each(Clear::track);
        self.seals.track();
        self.shared.goods.track();
        self.shared.new_serials = Some(Vec::new());
        self.shared.controls.track();
    }
}
