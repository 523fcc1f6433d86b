//! **declare** (keyed by `orderNo`): the order-number comparison of order, stored list and
//! payment (CONTRACT §4.2). Emits the list for the clear stage, its comparison status
//! whenever it changes, and returns (or the clearing of a return).

use crate::compact::{Codes, Damaged, Reader, Writer, heap_bytes};
use crate::retention::{Aging, Retention};
use crate::rules::Rules;
use crate::tracked::{Keyed, KeyedChanges, Tracked};
use crate::{Collector, Operator};
use cbec_schemas::{AppType, Compared, Dec, EventTime, Inventory, Order, Payment, Return, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The reasons of a return (CONTRACT §4.2) as a set, listed in name order. Serialized as
/// the list of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reasons(u8);

impl Reasons {
    /// Every reason, in name order (bit `i` is `NAMES[i]`).
    pub const NAMES: [&'static str; 6] = [
        "amount_mismatch",
        "currency_mismatch",
        "duplicate_payment",
        "ebc_mismatch",
        "order_missing",
        "payment_missing",
    ];
    /// List total or payment charge does not agree with the order.
    pub const AMOUNT_MISMATCH: Reasons = Reasons(1);
    /// Payment currency differs from the order's.
    pub const CURRENCY_MISMATCH: Reasons = Reasons(1 << 1);
    /// More than one payment for the order.
    pub const DUPLICATE_PAYMENT: Reasons = Reasons(1 << 2);
    /// `ebcCode` differs between list and order or payment.
    pub const EBC_MISMATCH: Reasons = Reasons(1 << 3);
    /// No order by the end of the wait.
    pub const ORDER_MISSING: Reasons = Reasons(1 << 4);
    /// No payment by the end of the wait.
    pub const PAYMENT_MISSING: Reasons = Reasons(1 << 5);

    /// Adds `r`.
    pub fn insert(&mut self, r: Reasons) {
        self.0 |= r.0;
    }

    /// True when there is none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names, in name order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Reasons::NAMES.into_iter().enumerate().filter(move |(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| n)
    }

    /// The names as owned strings (for records).
    pub fn to_vec(self) -> Vec<String> {
        self.names().map(String::from).collect()
    }
}

impl std::fmt::Display for Reasons {
    /// Comma-separated names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, n) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

impl Serialize for Reasons {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for Reasons {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reasons, D::Error> {
        let mut r = Reasons::default();
        for name in Vec::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            let i = Reasons::NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown return reason '{name}'")))?;
            r.0 |= 1 << i;
        }
        Ok(r)
    }
}

/// Comparison status of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Comparison {
    /// Not yet decidable (order or payment not yet seen, wait not over).
    Pending,
    /// Order, list and payment agree.
    Consistent,
    /// Returned with these reasons.
    Returned {
        /// Reason codes.
        reasons: Reasons,
    },
}

impl Comparison {
    /// `pending`, `consistent` or `returned`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Comparison::Pending => "pending",
            Comparison::Consistent => "consistent",
            Comparison::Returned { .. } => "returned",
        }
    }
}

/// The status of a list, for the clear stage (keyed by `logisticsNo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListStatus {
    /// Order.
    pub order_no: String,
    /// Parcel.
    pub logistics_no: String,
    /// Status.
    pub comparison: Comparison,
    /// Payment firm of the order's latest payment, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_code: Option<String>,
    /// The order's returns and clearings so far (the last one's id is
    /// `{orderNo}/{revision}/{time ms}`): two statuses at one event time differ in it.
    #[serde(default)]
    pub revision: u32,
    /// Event time of the change.
    #[serde(with = "cbec_schemas::time::rfc3339_format")]
    pub time: EventTime,
}

/// Inputs of declare.
#[derive(Debug, Clone)]
pub enum DeclareIn {
    /// CEB303.
    Order(Order),
    /// CEB603.
    List(Box<Inventory>),
    /// CEB403.
    Payment(Payment),
}

/// Outputs of declare.
#[derive(Debug, Clone, PartialEq)]
pub enum DeclareOut {
    /// The stored list, forwarded to clear.
    List(Box<Inventory>),
    /// A status change, for clear.
    Status(ListStatus),
    /// A return or its clearing, for `cbec.returns`.
    Return(Return),
}

/// An order's facts, codes as ids in the partition's [`Codes`].
#[derive(Debug, Clone, Copy)]
struct OrderFacts {
    ebc: u32,
    currency: u32,
    value: Dec,
    freight: Dec,
}

#[derive(Debug, Clone, Copy)]
struct PaymentFacts<'a> {
    pay_no: &'a str,
    ebc: u32,
    charge: Dec,
    currency: u32,
    pay_code: u32,
}

#[derive(Debug, Clone, Copy)]
struct ListFacts<'a> {
    logistics_no: &'a str,
    ebc: u32,
    total: Dec,
}

/// What the comparison reads: at rest one compact buffer per order
/// ([`crate::compact`]), read into this view when an input or a timer touches the order.
#[derive(Debug, Default)]
struct Facts<'a> {
    order: Option<OrderFacts>,
    payments: Vec<PaymentFacts<'a>>,
    list: Option<ListFacts<'a>>,
}

impl<'a> Facts<'a> {
    /// Reads a buffer written by [`Facts::pack`] (empty: no facts yet).
    fn read(b: &'a [u8], codes: &Codes) -> Result<Facts<'a>, Damaged> {
        let mut f = Facts::default();
        if b.is_empty() {
            return Ok(f);
        }
        let mut r = Reader::new(b);
        if r.u()? == 1 {
            f.order = Some(OrderFacts {
                ebc: r.code_id(codes)?,
                currency: r.code_id(codes)?,
                value: r.dec()?,
                freight: r.dec()?,
            });
        }
        let n = r.u()? as usize;
        if n > b.len() {
            return Err(Damaged(0));
        }
        for _ in 0..n {
            f.payments.push(PaymentFacts {
                pay_no: r.str()?,
                ebc: r.code_id(codes)?,
                charge: r.dec()?,
                currency: r.code_id(codes)?,
                pay_code: r.code_id(codes)?,
            });
        }
        if r.u()? == 1 {
            f.list = Some(ListFacts { logistics_no: r.str()?, ebc: r.code_id(codes)?, total: r.dec()? });
        }
        if !r.at_end() {
            return Err(Damaged(b.len()));
        }
        Ok(f)
    }

    fn pack(&self) -> Box<[u8]> {
        let mut w = Writer::with_capacity(48 + 32 * self.payments.len());
        match &self.order {
            None => w.u(0),
            Some(o) => {
                w.u(1);
                w.u(u64::from(o.ebc));
                w.u(u64::from(o.currency));
                w.dec(o.value);
                w.dec(o.freight);
            }
        }
        w.u(self.payments.len() as u64);
        for p in &self.payments {
            w.str(p.pay_no);
            w.u(u64::from(p.ebc));
            w.dec(p.charge);
            w.u(u64::from(p.currency));
            w.u(u64::from(p.pay_code));
        }
        match &self.list {
            None => w.u(0),
            Some(l) => {
                w.u(1);
                w.str(l.logistics_no);
                w.u(u64::from(l.ebc));
                w.dec(l.total);
            }
        }
        w.finish()
    }
}

/// What changed in a declare partition since the last [`Declare::changes_deferred`].
pub(crate) type DeclareChanges = KeyedChanges<Entry>;

const CHECKED: &str = "order facts checked when made";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// [`Facts`], packed.
    #[serde(serialize_with = "crate::compact::serialize_hex", deserialize_with = "crate::compact::deserialize_hex")]
    facts: Box<[u8]>,
    deadline: Option<i64>,
    expired: bool,
    last: Option<Comparison>,
    revision: u32,
    /// Day of the last message or timer about the order ([`Retention`]).
    #[serde(default)]
    touched: i32,
}

impl Aging for Entry {
    fn touched(&mut self) -> &mut i32 {
        &mut self.touched
    }

    fn touched_day(&self) -> i32 {
        self.touched
    }

    /// The payment wait is running (its timer has not fired).
    fn pinned(&self) -> bool {
        self.deadline.is_some() && !self.expired
    }
}

/// The declare operator: state per `orderNo` plus event-time timers for the wait.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(try_from = "DeclareSnapshot")]
pub struct Declare {
    /// Boxed, like clear's parcels: a resize moves 32-byte buckets.
    entries: Tracked<Text, Box<Entry>>,
    timers: BTreeSet<(i64, Box<str>)>,
    /// The codes of the facts at rest.
    codes: Codes,
    /// Orders by the day they were last touched.
    retention: Retention,
    /// Codes already in the last [`Declare::changes_deferred`] (the table only grows).
    #[serde(skip)]
    codes_sent: usize,
}

#[derive(Deserialize)]
struct DeclareSnapshot {
    entries: Tracked<Text, Box<Entry>>,
    timers: BTreeSet<(i64, Box<str>)>,
    codes: Codes,
    #[serde(default)]
    retention: Retention,
}

impl TryFrom<DeclareSnapshot> for Declare {
    type Error = String;

    fn try_from(s: DeclareSnapshot) -> Result<Declare, String> {
        for (k, e) in s.entries.iter() {
            Facts::read(&e.facts, &s.codes).map_err(|err| format!("order {k}: {err}"))?;
        }
        Ok(Declare { entries: s.entries, timers: s.timers, codes: s.codes, retention: s.retention, codes_sent: 0 })
    }
}

fn compared(f: &Facts<'_>, codes: &Codes) -> Compared {
    let l = f.list.as_ref();
    let p = f.payments.last();
    let o = f.order.as_ref();
    let text = |id: u32| codes.get(id).to_string();
    Compared {
        list_ebc_code: l.map(|l| text(l.ebc)).unwrap_or_default(),
        order_ebc_code: o.map(|o| text(o.ebc)),
        payment_ebc_code: p.map(|p| text(p.ebc)),
        list_total: l.map_or(Dec::ZERO, |l| l.total),
        order_goods_value: o.map(|o| o.value),
        order_freight: o.map(|o| o.freight),
        payment_charge: p.map(|p| p.charge),
        order_currency: o.map(|o| text(o.currency)),
        payment_currency: p.map(|p| text(p.currency)),
        pay_nos: f.payments.iter().map(|p| p.pay_no.to_string()).collect(),
        pay_code: p.map(|p| text(p.pay_code)),
    }
}

fn evaluate(f: &Facts<'_>, expired: bool, rules: &Rules) -> Comparison {
    let Some(list) = &f.list else { return Comparison::Pending };
    let mut r = Reasons::default();
    match &f.order {
        None if expired => r.insert(Reasons::ORDER_MISSING),
        None => {}
        Some(o) => {
            if o.ebc != list.ebc {
                r.insert(Reasons::EBC_MISMATCH);
            }
            if !rules.amounts_agree(list.total, o.value) {
                r.insert(Reasons::AMOUNT_MISMATCH);
            }
        }
    }
    // A payment with a known `payNo` replaces it in place, so two entries are two payments.
    if f.payments.len() > 1 {
        r.insert(Reasons::DUPLICATE_PAYMENT);
    }
    match f.payments.last() {
        None if expired => r.insert(Reasons::PAYMENT_MISSING),
        None => {}
        Some(p) => {
            if p.ebc != list.ebc {
                r.insert(Reasons::EBC_MISMATCH);
            }
            if let Some(o) = &f.order {
                if p.currency != o.currency {
                    r.insert(Reasons::CURRENCY_MISMATCH);
                }
                if !rules.amounts_agree(p.charge, o.value.add(o.freight)) {
                    r.insert(Reasons::AMOUNT_MISMATCH);
                }
            }
        }
    }
    if !r.is_empty() {
        Comparison::Returned { reasons: r }
    } else if f.order.is_some() && !f.payments.is_empty() {
        Comparison::Consistent
    } else {
        Comparison::Pending
    }
}

impl Declare {
    fn emit(&mut self, rules: &Rules, order_no: &str, time: EventTime, out: &mut dyn Collector<DeclareOut>) {
        let Some(e) = self.entries.get_mut(order_no) else { return };
        let f = Facts::read(&e.facts, &self.codes).expect(CHECKED);
        let Some(list) = &f.list else { return };
        let new = evaluate(&f, e.expired, rules);
        if e.last == Some(new) {
            return;
        }
        let logistics_no = list.logistics_no.to_string();
        let pay_code =
            f.payments.last().map(|p| self.codes.get(p.pay_code)).filter(|c| !c.is_empty()).map(String::from);
        let was_returned = matches!(e.last, Some(Comparison::Returned { .. }));
        let (reasons, cleared) = match new {
            Comparison::Returned { reasons } => (reasons.to_vec(), false),
            Comparison::Consistent if was_returned => (Vec::new(), true),
            _ => (Vec::new(), false),
        };
        if !reasons.is_empty() || cleared {
            e.revision += 1;
            out.collect(DeclareOut::Return(Return {
                // With the time: after the state retention dropped the order, its revisions
                // count from 1 again.
                id: format!("{order_no}/{}/{}", e.revision, time.0),
                order_no: order_no.to_string(),
                logistics_no: logistics_no.clone(),
                reasons,
                cleared,
                compared: compared(&f, &self.codes),
                time,
            }));
        }
        e.last = Some(new);
        out.collect(DeclareOut::Status(ListStatus {
            order_no: order_no.to_string(),
            logistics_no,
            comparison: new,
            pay_code,
            revision: e.revision,
            time,
        }));
    }

    /// The earliest pending timer: (due time, `orderNo`).
    pub fn next_timer(&self) -> Option<&(i64, Box<str>)> {
        self.timers.first()
    }

    /// Fires the earliest timer if it is due at `wm`; false when none is.
    pub fn fire_next(&mut self, rules: &Rules, wm: EventTime, out: &mut dyn Collector<DeclareOut>) -> bool {
        match self.timers.first() {
            Some((t, _)) if *t <= wm.0 => {}
            _ => return false,
        }
        let Some((t, key)) = self.timers.pop_first() else { return false };
        // Not a touch: the retention (at least the wait) counts from the last message, and
        // the wait of a list ends before the list's state can go stale.
        if let Some(e) = self.entries.get_mut(&key) {
            e.expired = true;
        }
        self.emit(rules, &key, EventTime(t), out);
        true
    }

    /// Drops the state of orders not touched since before day `cutoff` (up to
    /// [`crate::retention::SWEEP_BUDGET`] per call; see [`crate::retention`]). Returns how
    /// many were dropped.
    pub fn expire(&mut self, cutoff: i32) -> usize {
        self.retention.sweep(&mut self.entries, cutoff)
    }

    /// Keys changed since the last changes were taken, and keys held.
    pub fn changed(&self) -> (usize, usize) {
        (self.entries.changed(), self.entries.len())
    }

    fn keyed(&mut self) -> Keyed<'_, Entry> {
        let Declare { entries: map, codes, retention, codes_sent, .. } = self;
        Keyed { map, codes, codes_sent, retention }
    }

    /// Starts recording what changes (incremental checkpoints).
    pub(crate) fn track(&mut self) {
        self.keyed().track();
    }

    /// What changed since [`Declare::track`] or the last changes, the entries owed: taken
    /// by [`Declare::take_owed`], copied a few at a time meanwhile ([`Declare::copy_owed`]).
    /// The timers are not in it: a timer runs exactly while its order's entry is pinned
    /// (its wait has a deadline and has not ended), so they follow from the entries.
    pub(crate) fn changes_deferred(&mut self) -> DeclareChanges {
        self.keyed().changes_deferred()
    }

    /// Copies up to `budget` owed entries; true once none is owed.
    pub(crate) fn copy_owed(&mut self, budget: usize) -> bool {
        self.entries.copy_owed(budget)
    }

    /// Completes `c` (from [`Declare::changes_deferred`]) with its entries.
    pub(crate) fn take_owed(&mut self, c: &mut DeclareChanges) {
        c.entries = self.entries.take_owed();
    }

    /// Applies [`Declare::changes_deferred`] of the partition this one is a copy of; the timers
    /// follow the entries.
    pub(crate) fn apply(&mut self, c: DeclareChanges) -> Result<(), String> {
        for (k, e) in &c.entries {
            if let Some(old) = self.entries.get(k)
                && old.pinned()
                && let Some(d) = old.deadline
            {
                self.timers.remove(&(d, Box::from(k.as_str())));
            }
            if let Some(new) = e
                && new.pinned()
                && let Some(d) = new.deadline
            {
                self.timers.insert((d, Box::from(k.as_str())));
            }
        }
        self.keyed().apply(c)
    }

    /// Room for `n` more orders without a resize.
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
        self.retention.reserve(n);
    }

    /// Orders with state (for reports and tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no order has state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Operator for Declare {
    type In = DeclareIn;
    type Out = DeclareOut;
    type Ctx = Rules;

    fn process(&mut self, rules: &mut Rules, input: DeclareIn, out: &mut dyn Collector<DeclareOut>) {
        let (key, time) = match input {
            DeclareIn::Order(o) => {
                let order = (o.app_type != AppType::Delete).then(|| OrderFacts {
                    ebc: self.codes.id(&o.ebc_code),
                    currency: self.codes.id(&o.currency),
                    value: o.goods_value,
                    freight: o.freight,
                });
                let e = self.retention.state_of(&mut self.entries, &o.order_no, o.app_time);
                let old = std::mem::take(&mut e.facts);
                let mut f = Facts::read(&old, &self.codes).expect(CHECKED);
                f.order = order;
                e.facts = f.pack();
                (o.order_no, o.app_time)
            }
            DeclareIn::Payment(p) => {
                let (ebc, currency, pay_code) =
                    (self.codes.id(&p.ebc_code), self.codes.id(&p.currency), self.codes.id(&p.pay_code));
                let e = self.retention.state_of(&mut self.entries, &p.order_no, p.accounting_date);
                let old = std::mem::take(&mut e.facts);
                let mut f = Facts::read(&old, &self.codes).expect(CHECKED);
                let new = PaymentFacts { pay_no: &p.pay_no, ebc, charge: p.charge, currency, pay_code };
                match f.payments.iter_mut().find(|x| x.pay_no == new.pay_no) {
                    Some(x) => *x = new,
                    None => f.payments.push(new),
                }
                e.facts = f.pack();
                (p.order_no, p.accounting_date)
            }
            DeclareIn::List(l) => {
                let total = l.items.iter().map(|i| i.total_price).sum();
                let ebc = self.codes.id(&l.ebc_code);
                let deadline = l.app_time.plus_ms(rules.payment_wait_ms()).0;
                let e = self.retention.state_of(&mut self.entries, &l.order_no, l.app_time);
                if e.deadline.is_none() {
                    e.deadline = Some(deadline);
                    self.timers.insert((deadline, l.order_no.as_str().into()));
                }
                let old = std::mem::take(&mut e.facts);
                let mut f = Facts::read(&old, &self.codes).expect(CHECKED);
                f.list = Some(ListFacts { logistics_no: &l.logistics_no, ebc, total });
                e.facts = f.pack();
                let (key, time) = (l.order_no.clone(), l.app_time);
                out.collect(DeclareOut::List(l));
                (key, time)
            }
        };
        self.emit(rules, &key, time, out);
    }

    fn on_watermark(&mut self, rules: &mut Rules, wm: EventTime, out: &mut dyn Collector<DeclareOut>) {
        while self.fire_next(rules, wm, out) {}
    }

    fn state_size(&self) -> usize {
        self.codes.state_size()
            + self.retention.state_size()
            + self
                .entries
                .iter()
                .map(|(k, e)| {
                    heap_bytes(k)
                        + std::mem::size_of::<(Text, Box<Entry>)>()
                        + std::mem::size_of::<Entry>()
                        + e.facts.len()
                })
                .sum::<usize>()
            + self.timers.iter().map(|(_, k)| std::mem::size_of::<(i64, Box<str>)>() + k.len()).sum::<usize>()
    }
}
