//! **declare** (keyed by `orderNo`): the order-number comparison of order, stored list and
//! payment (CONTRACT §4.2). Emits the list for the clear stage, its comparison status
//! whenever it changes, and returns (or the clearing of a return).

use crate::Map;
use crate::rules::Rules;
use crate::{Collector, Operator};
use cbec_schemas::{AppType, Compared, Dec, EventTime, Inventory, Order, Payment, Return};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Comparison status of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Comparison {
    /// Not yet decidable (order or payment not yet seen, wait not over).
    Pending,
    /// Order, list and payment agree.
    Consistent,
    /// Returned with these reasons.
    Returned {
        /// Reason codes, sorted.
        reasons: Vec<String>,
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
    List(Inventory),
    /// CEB403.
    Payment(Payment),
}

/// Outputs of declare.
#[derive(Debug, Clone, PartialEq)]
pub enum DeclareOut {
    /// The stored list, forwarded to clear.
    List(Inventory),
    /// A status change, for clear.
    Status(ListStatus),
    /// A return or its clearing, for `cbec.returns`.
    Return(Return),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderFacts {
    ebc: String,
    value: Dec,
    freight: Dec,
    currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaymentFacts {
    pay_no: String,
    ebc: String,
    charge: Dec,
    currency: String,
    pay_code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ListFacts {
    logistics_no: String,
    ebc: String,
    total: Dec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    order: Option<OrderFacts>,
    payments: Vec<PaymentFacts>,
    list: Option<ListFacts>,
    deadline: Option<i64>,
    expired: bool,
    last: Option<Comparison>,
    revision: u32,
}

/// The declare operator: state per `orderNo` plus event-time timers for the wait.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Declare {
    /// Boxed, like clear's parcels: a resize moves 32-byte buckets.
    entries: Map<String, Box<Entry>>,
    timers: BTreeSet<(i64, String)>,
}

fn compared(e: &Entry) -> Compared {
    let l = e.list.as_ref();
    let p = e.payments.last();
    Compared {
        list_ebc_code: l.map(|l| l.ebc.clone()).unwrap_or_default(),
        order_ebc_code: e.order.as_ref().map(|o| o.ebc.clone()),
        payment_ebc_code: p.map(|p| p.ebc.clone()),
        list_total: l.map_or(Dec::ZERO, |l| l.total),
        order_goods_value: e.order.as_ref().map(|o| o.value),
        order_freight: e.order.as_ref().map(|o| o.freight),
        payment_charge: p.map(|p| p.charge),
        order_currency: e.order.as_ref().map(|o| o.currency.clone()),
        payment_currency: p.map(|p| p.currency.clone()),
        pay_nos: e.payments.iter().map(|p| p.pay_no.clone()).collect(),
        pay_code: p.map(|p| p.pay_code.clone()),
    }
}

fn evaluate(e: &Entry, rules: &Rules) -> Comparison {
    let Some(list) = &e.list else { return Comparison::Pending };
    let mut r: Vec<&str> = Vec::new();
    match &e.order {
        None if e.expired => r.push("order_missing"),
        None => {}
        Some(o) => {
            if o.ebc != list.ebc {
                r.push("ebc_mismatch");
            }
            if !rules.amounts_agree(list.total, o.value) {
                r.push("amount_mismatch");
            }
        }
    }
    // A payment with a known `payNo` replaces it in place, so two entries are two payments.
    if e.payments.len() > 1 {
        r.push("duplicate_payment");
    }
    match e.payments.last() {
        None if e.expired => r.push("payment_missing"),
        None => {}
        Some(p) => {
            if p.ebc != list.ebc {
                r.push("ebc_mismatch");
            }
            if let Some(o) = &e.order {
                if p.currency != o.currency {
                    r.push("currency_mismatch");
                }
                if !rules.amounts_agree(p.charge, o.value.add(o.freight)) {
                    r.push("amount_mismatch");
                }
            }
        }
    }
    if r.is_empty() {
        if e.order.is_some() && !e.payments.is_empty() { Comparison::Consistent } else { Comparison::Pending }
    } else {
        r.sort_unstable();
        r.dedup();
        Comparison::Returned { reasons: r.into_iter().map(String::from).collect() }
    }
}

impl Declare {
    fn emit(&mut self, rules: &Rules, order_no: &str, time: EventTime, out: &mut dyn Collector<DeclareOut>) {
        let Some(e) = self.entries.get_mut(order_no) else { return };
        let Some(list) = &e.list else { return };
        let new = evaluate(e, rules);
        if e.last.as_ref() == Some(&new) {
            return;
        }
        let logistics_no = list.logistics_no.clone();
        let pay_code = e.payments.last().map(|p| p.pay_code.clone()).filter(|c| !c.is_empty());
        let was_returned = matches!(e.last, Some(Comparison::Returned { .. }));
        match &new {
            Comparison::Returned { reasons } => {
                e.revision += 1;
                out.collect(DeclareOut::Return(Return {
                    id: format!("{order_no}/{}", e.revision),
                    order_no: order_no.to_string(),
                    logistics_no: logistics_no.clone(),
                    reasons: reasons.clone(),
                    cleared: false,
                    compared: compared(e),
                    time,
                }));
            }
            Comparison::Consistent if was_returned => {
                e.revision += 1;
                out.collect(DeclareOut::Return(Return {
                    id: format!("{order_no}/{}", e.revision),
                    order_no: order_no.to_string(),
                    logistics_no: logistics_no.clone(),
                    reasons: Vec::new(),
                    cleared: true,
                    compared: compared(e),
                    time,
                }));
            }
            _ => {}
        }
        e.last = Some(new.clone());
        out.collect(DeclareOut::Status(ListStatus {
            order_no: order_no.to_string(),
            logistics_no,
            comparison: new,
            pay_code,
            time,
        }));
    }

    /// The earliest pending timer: (due time, `orderNo`).
    pub fn next_timer(&self) -> Option<&(i64, String)> {
        self.timers.first()
    }

    /// Fires the earliest timer if it is due at `wm`; false when none is.
    pub fn fire_next(&mut self, rules: &Rules, wm: EventTime, out: &mut dyn Collector<DeclareOut>) -> bool {
        match self.timers.first() {
            Some((t, _)) if *t <= wm.0 => {}
            _ => return false,
        }
        let Some((t, key)) = self.timers.pop_first() else { return false };
        if let Some(e) = self.entries.get_mut(&key) {
            e.expired = true;
        }
        self.emit(rules, &key, EventTime(t), out);
        true
    }

    /// Room for `n` more orders without a resize.
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
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
                let e = crate::state_of(&mut self.entries, &o.order_no);
                e.order = if o.app_type == AppType::Delete {
                    None
                } else {
                    Some(OrderFacts { ebc: o.ebc_code, value: o.goods_value, freight: o.freight, currency: o.currency })
                };
                (o.order_no, o.app_time)
            }
            DeclareIn::Payment(p) => {
                let e = crate::state_of(&mut self.entries, &p.order_no);
                let f = PaymentFacts {
                    pay_no: p.pay_no,
                    ebc: p.ebc_code,
                    charge: p.charge,
                    currency: p.currency,
                    pay_code: p.pay_code,
                };
                match e.payments.iter_mut().find(|x| x.pay_no == f.pay_no) {
                    Some(x) => *x = f,
                    None => e.payments.push(f),
                }
                (p.order_no, p.accounting_date)
            }
            DeclareIn::List(l) => {
                let e = crate::state_of(&mut self.entries, &l.order_no);
                let total = l.items.iter().map(|i| i.total_price).sum();
                if e.deadline.is_none() {
                    let d = l.app_time.plus_ms(rules.payment_wait_ms()).0;
                    e.deadline = Some(d);
                    self.timers.insert((d, l.order_no.clone()));
                }
                e.list = Some(ListFacts { logistics_no: l.logistics_no.clone(), ebc: l.ebc_code.clone(), total });
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
        self.entries
            .iter()
            .map(|(k, e)| {
                k.len()
                    + std::mem::size_of::<(String, Box<Entry>)>()
                    + std::mem::size_of::<Entry>()
                    + e.payments.len() * (std::mem::size_of::<PaymentFacts>() + 48)
                    + e.order.as_ref().map_or(0, |o| o.ebc.len() + o.currency.len())
                    + e.list
                        .as_ref()
                        .map_or(0, |l| std::mem::size_of::<ListFacts>() + l.logistics_no.len() + l.ebc.len())
            })
            .sum::<usize>()
            + self.timers.len() * 48
    }
}
