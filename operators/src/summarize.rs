//! **summarize**: exited lists → Arrow record batches → monthly summary declarations
//! (CONTRACT §4.6). A period (calendar month of `ieDate`) closes when event time passes the
//! month end plus the grace; its exited, consistent, non-tax-related `statisticsFlag` B
//! lists are grouped in an Arrow batch (sorted through Arrow's row format, whose rows also
//! find the runs of equal keys; sums per run): one declaration per (`ebcCode`, `ownerCode` when
//! `summaryFlag` is 2, `country`, `portCode`, `trafMode`), one item row per (`gcode`, `unit`,
//! item `currency`, item `country`). Each list is in exactly one declaration. A list exiting
//! after its period closed goes into a supplementary declaration (`…/2`, `…/3`); a list
//! returned after the declaration that covers it was made is withdrawn from it (`…/w1`,
//! `…/w2`: a record with the list's rows, quantities, amounts and count negative).

use crate::engine::Exited;
use crate::rules::Rules;
use crate::tracked::{Cut, Incremental};
use crate::{Collector, Operator};
use arrow::array::{Array, ArrayRef, Decimal128Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use cbec_schemas::time::period_end;
use cbec_schemas::{Dec, EventTime, Summary, SummaryItem};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const KEYS: [&str; 9] =
    ["ebcCode", "ownerCode", "country", "portCode", "trafMode", "gcode", "unit", "currency", "itemCountry"];
const HEAD_KEYS: usize = 5;

/// The summarize operator: exited lists per open period.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summarize {
    open: BTreeMap<u32, BTreeMap<String, Exited>>,
    /// Checkpoints of format 2 (and earlier): how often each period was declared, all
    /// forms together. A form declared before per-form numbering continues from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    revisions: BTreeMap<u32, u32>,
    /// How often each declaration form (the `summaryId` without period and revision) was
    /// declared per period: its next declaration is the supplementary `…/n+1`. Numbered
    /// per form, so that how forms are spread over summarize instances (by `ebcCode`)
    /// changes nothing.
    #[serde(default)]
    forms: BTreeMap<u32, BTreeMap<String, u32>>,
    /// How many lists were withdrawn from each declaration form per period (a list returned
    /// after its declaration was made): the next withdrawal is `…/w<n+1>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    withdrawals: BTreeMap<u32, BTreeMap<String, u32>>,
    /// The earliest open period and the event time it closes at (watermarks arrive with
    /// every item; this spares a calendar computation per item).
    #[serde(skip)]
    first_close: Option<(u32, i64)>,
    /// What changed since the previous [`Incremental::cut`], while recording.
    #[serde(skip)]
    log: crate::tracked::Unshared<Vec<Step>>,
}

/// One change of the summarize state, replayed in order by [`Incremental::apply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Step {
    /// An exited list into its period (or out of it, when it is not summarizable).
    Exited(Exited),
    /// A period closed.
    Closed(u32),
    /// Declaration forms of a period were declared (once more each).
    Declared(u32, Vec<String>),
    /// A list was withdrawn from the declaration of a form in a period.
    Withdrawn(u32, String),
}

/// What changed in the summarize state since the previous [`Incremental::cut`]: the exited
/// lists it took (shared, not copied) and the periods it closed, in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SummarizeChanges(Vec<Step>);

/// The summarize state for a checkpoint ([`Incremental::cut`]).
pub type SummarizeCut = Cut<Summarize, SummarizeChanges>;

/// Builds the item-row batch of a period's lists (one row per list item).
pub fn rows_batch(lists: &[&Exited], summary_flag: u8) -> RecordBatch {
    // Sized up front: a month's close builds millions of rows, and columns grown by
    // doubling copied themselves over and over into fresh pages.
    let n: usize = lists.iter().map(|e| e.list.items.len()).sum();
    let mut cols: Vec<Vec<&str>> = (0..KEYS.len() + 1).map(|_| Vec::with_capacity(n)).collect();
    let mut qty = Vec::with_capacity(n);
    let mut qty1 = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    for e in lists {
        let head = head_of_list(e, summary_flag);
        for it in &e.list.items {
            let vals = [
                head[0],
                head[1],
                head[2],
                head[3],
                head[4],
                &it.gcode,
                &it.unit,
                &it.currency,
                &it.country,
                &e.invt_no,
            ];
            for (c, v) in cols.iter_mut().zip(vals) {
                c.push(v);
            }
            qty.push(it.qty.scaled());
            qty1.push(it.qty1.scaled());
            total.push(it.total_price.scaled());
        }
    }
    let mut fields: Vec<Field> =
        KEYS.iter().chain(["invtNo"].iter()).map(|k| Field::new(*k, DataType::Utf8, false)).collect();
    let mut arrays: Vec<ArrayRef> = cols.into_iter().map(|c| Arc::new(StringArray::from(c)) as ArrayRef).collect();
    for (name, v) in [("qty", qty), ("qty1", qty1), ("totalPrice", total)] {
        fields.push(Field::new(name, DataType::Decimal128(38, 5), false));
        arrays.push(Arc::new(Decimal128Array::from(v).with_precision_and_scale(38, 5).expect("precision")));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("consistent columns")
}

fn strings(batch: &RecordBatch, i: usize) -> &StringArray {
    batch.column(i).as_any().downcast_ref::<StringArray>().expect("utf8 column")
}

fn decimals(batch: &RecordBatch, i: usize) -> &[i128] {
    batch.column(i).as_any().downcast_ref::<Decimal128Array>().expect("decimal column").values()
}

/// Groups a rows batch into summary declarations; `revision` numbers
/// the declaration of a form (given `ebcCode-ownerCode-country-portCode-trafMode`).
pub fn summarize_batch(batch: &RecordBatch, period: u32, revision: impl Fn(&str) -> u32) -> Vec<Summary> {
    let n = batch.num_rows();
    if n == 0 {
        return Vec::new();
    }
    // Sort by the key columns through the row format (one byte-comparable row per list
    // item): the same order as a lexicographic sort of the columns, without per-comparison
    // dispatch over string columns. The same rows then find the runs of equal keys (one
    // comparison per row, not one per row and column), and a declaration starts where a
    // run's head keys differ from the run before (only runs can start one).
    let keys: Vec<ArrayRef> = (0..KEYS.len()).map(|i| batch.column(i).clone()).collect();
    let converter =
        RowConverter::new(keys.iter().map(|c| SortField::new(c.data_type().clone())).collect()).expect("row format");
    let rows = converter.convert_columns(&keys).expect("row format");
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
    let at = |pos: usize| order[pos] as usize;
    let key_cols: Vec<&StringArray> = (0..KEYS.len()).map(|k| strings(batch, k)).collect();
    let invt_col = strings(batch, KEYS.len());
    let [qty, qty1, total] = [1, 2, 3].map(|k| decimals(batch, KEYS.len() + k));
    let sum = |col: &[i128], s: usize, e: usize| {
        Dec::from_scaled((s..e).fold(0i128, |acc, pos| acc.wrapping_add(col[at(pos)])))
    };
    let head = |pos: usize| -> [&str; HEAD_KEYS] { std::array::from_fn(|k| key_cols[k].value(at(pos))) };
    // Runs of equal keys, as (start, end) positions in the sorted order.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for pos in 1..=n {
        if pos == n || rows.row(at(pos)) != rows.row(at(pos - 1)) {
            runs.push((start, pos));
            start = pos;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < runs.len() {
        let key = head(runs[i].0);
        let mut j = i + 1;
        while j < runs.len() && head(runs[j].0) == key {
            j += 1;
        }
        let mut items = Vec::with_capacity(j - i);
        let mut invt_all: Vec<&str> = Vec::new();
        for (g, &(s, e)) in runs[i..j].iter().enumerate() {
            let mut invts: Vec<&str> = (s..e).map(|pos| invt_col.value(at(pos))).collect();
            invts.sort_unstable();
            invts.dedup();
            invt_all.extend_from_slice(&invts);
            items.push(SummaryItem {
                gnum: g as u32 + 1,
                gcode: key_cols[5].value(at(s)).to_string(),
                unit: key_cols[6].value(at(s)).to_string(),
                currency: key_cols[7].value(at(s)).to_string(),
                country: key_cols[8].value(at(s)).to_string(),
                qty: sum(qty, s, e),
                qty1: sum(qty1, s, e),
                total_price: sum(total, s, e),
                list_count: invts.len() as i64,
            });
        }
        invt_all.sort_unstable();
        invt_all.dedup();
        let form = key.join("-");
        let revision = revision(&form);
        let suffix = if revision > 1 { format!("/{revision}") } else { String::new() };
        out.push(Summary {
            summary_id: format!("{period}-{form}{suffix}"),
            period,
            ebc_code: key[0].to_string(),
            owner_code: key[1].to_string(),
            country: key[2].to_string(),
            port_code: key[3].to_string(),
            traf_mode: key[4].to_string(),
            list_count: invt_all.len() as i64,
            total_price: items.iter().map(|i| i.total_price).sum(),
            items,
            invt_nos: invt_all.into_iter().map(String::from).collect(),
            withdrawal: false,
        });
        i = j;
    }
    out
}

/// The declaration form of a summary: what its `summaryId` names between period and
/// revision.
pub fn form_of(s: &Summary) -> String {
    head_of(s).join("-")
}

/// The number of the next declaration of `form` in period `p`, given how often each form
/// (and, in format-2 checkpoints, each period) was declared.
fn next_revision(
    forms: &BTreeMap<u32, BTreeMap<String, u32>>,
    revisions: &BTreeMap<u32, u32>,
    p: u32,
    form: &str,
) -> u32 {
    let before = forms.get(&p).and_then(|f| f.get(form)).copied();
    before.unwrap_or_else(|| revisions.get(&p).copied().unwrap_or(0)) + 1
}

/// Closes of at least this many lists at the end of time are split over two threads.
const CLOSE_IN_TWO_FROM: usize = 10_000;

/// The summary declarations of period `p`'s lists, in the order of their head keys. With
/// `in_two` (the end of a finite input: nothing else runs then) and enough lists, the
/// lists are split by their head key (each declaration's lists on one side) and the two
/// halves summarized on two threads, then merged back into that order: the same
/// declarations in the same order as on one thread.
pub fn close_period(
    lists: &[&Exited],
    p: u32,
    flag: u8,
    revision: &(dyn Fn(&str) -> u32 + Sync),
    in_two: bool,
) -> Vec<Summary> {
    if !in_two || lists.len() < CLOSE_IN_TWO_FROM {
        return summarize_batch(&rows_batch(lists, flag), p, revision);
    }
    let (a, b): (Vec<&Exited>, Vec<&Exited>) =
        lists.iter().copied().partition(|e| head_hash(e, flag).is_multiple_of(2));
    let (sa, sb) = std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("cbec-close".into())
            .spawn_scoped(scope, || summarize_batch(&rows_batch(&b, flag), p, revision));
        let sa = summarize_batch(&rows_batch(&a, flag), p, revision);
        // No thread to be had: the other half here too.
        let sb = match other {
            Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            Err(_) => summarize_batch(&rows_batch(&b, flag), p, revision),
        };
        (sa, sb)
    });
    merge_by_head(sa, sb)
}

/// A declaration's head key: `ebcCode`, `ownerCode` (with `summaryFlag` 2), `country`,
/// `portCode`, `trafMode`.
fn head_of(s: &Summary) -> [&str; HEAD_KEYS] {
    [&s.ebc_code, &s.owner_code, &s.country, &s.port_code, &s.traf_mode].map(String::as_str)
}

/// A list's head key: `ebcCode`, `ownerCode` (empty unless `summaryFlag` is 2), `country`,
/// `portCode`, `trafMode`.
fn head_of_list(e: &Exited, flag: u8) -> [&str; HEAD_KEYS] {
    let l = &e.list;
    let owner = if flag == 2 { l.owner_code.as_str() } else { "" };
    [l.ebc_code.as_str(), owner, &l.country, &l.port_code, &l.traf_mode]
}

/// FNV-1a of a list's head key (a fixed function: the split is the same on every run).
fn head_hash(e: &Exited, flag: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in head_of_list(e, flag) {
        for b in part.bytes().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Merges two lists of declarations, each in head-key order and with no head key in both.
fn merge_by_head(a: Vec<Summary>, b: Vec<Summary>) -> Vec<Summary> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => head_of(x) < head_of(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

/// Closed periods of at least this many lists are freed on a thread of their own.
const FREE_ELSEWHERE_FROM: usize = 10_000;

/// Frees a closed period's lists on a thread of its own: a month's lists are hundreds of
/// thousands of allocations, and the summaries should not wait for their release (inline
/// when there are fewer than [`FREE_ELSEWHERE_FROM`] or no thread can be started).
fn drop_elsewhere(lists: BTreeMap<String, Exited>) {
    if lists.len() >= FREE_ELSEWHERE_FROM {
        // A failed spawn drops the closure, and the lists with it, here.
        let _ = std::thread::Builder::new().name("cbec-free".into()).spawn(move || drop(lists));
    }
}

impl Summarize {
    /// Lists waiting in open periods.
    pub fn pending(&self) -> usize {
        self.open.values().map(BTreeMap::len).sum()
    }

    /// Takes an exited list into its period, or out of it when it is no longer
    /// summarizable. The list back when it must be withdrawn from a declaration already
    /// made: it was summarizable as it last left and is in no open period.
    fn exited(&mut self, e: Exited) -> Option<Exited> {
        if let Some(log) = &mut self.log.0 {
            log.push(Step::Exited(e.clone()));
        }
        let period = e.list.ie_date.period();
        if e.summarizable {
            self.open.entry(period).or_default().insert(e.invt_no.to_string(), e);
            return None;
        }
        let removed = self.open.get_mut(&period).and_then(|o| o.remove(e.invt_no.as_str())).is_some();
        (e.was_summarizable && !removed).then_some(e)
    }

    /// The withdrawal of list `e` from the declaration of its form in its period (the first
    /// or a supplementary one: whichever covers it), numbered `…/w1`, `…/w2` per form: its
    /// rows with quantities, amounts and count negative. None when no declaration of the
    /// form was made in the period (nothing to withdraw from).
    fn withdraw(&mut self, e: &Exited, flag: u8) -> Option<Summary> {
        let period = e.list.ie_date.period();
        let mut w = summarize_batch(&rows_batch(&[e], flag), period, |_| 1).pop()?;
        let form = form_of(&w);
        if self.next_revision(period, &form) == 1 {
            return None;
        }
        let n = self.withdrawn(period, form.clone());
        let neg = |d: Dec| Dec::ZERO.sub(d);
        w.summary_id = format!("{period}-{form}/w{n}");
        (w.list_count, w.total_price, w.withdrawal) = (-w.list_count, neg(w.total_price), true);
        for i in &mut w.items {
            (i.qty, i.qty1, i.total_price, i.list_count) = (neg(i.qty), neg(i.qty1), neg(i.total_price), -i.list_count);
        }
        Some(w)
    }

    /// Records one more withdrawal from `form` in period `p`; its number.
    fn withdrawn(&mut self, p: u32, form: String) -> u32 {
        if let Some(log) = &mut self.log.0 {
            log.push(Step::Withdrawn(p, form.clone()));
        }
        let n = self.withdrawals.entry(p).or_default().entry(form).or_insert(0);
        *n += 1;
        *n
    }

    /// Closes period `p`: its lists.
    fn close(&mut self, p: u32) -> BTreeMap<String, Exited> {
        if let Some(log) = &mut self.log.0 {
            log.push(Step::Closed(p));
        }
        self.open.remove(&p).unwrap_or_default()
    }

    /// The number of the next declaration of `form` in period `p`.
    fn next_revision(&self, p: u32, form: &str) -> u32 {
        next_revision(&self.forms, &self.revisions, p, form)
    }

    /// Records that `forms` of period `p` were declared.
    fn declared(&mut self, p: u32, forms: Vec<String>) {
        for form in &forms {
            let next = self.next_revision(p, form);
            self.forms.entry(p).or_default().insert(form.clone(), next);
        }
        if let Some(log) = &mut self.log.0 {
            log.push(Step::Declared(p, forms));
        }
    }
}

impl Incremental for Summarize {
    type Changes = SummarizeChanges;

    /// A copy of all of the state the first time (recording starts), afterwards what
    /// changed since the previous cut.
    fn cut(&mut self) -> SummarizeCut {
        match self.log.0.replace(Vec::new()) {
            Some(steps) => Cut::Changes(SummarizeChanges(steps)),
            None => Cut::Whole(Box::new(self.clone())),
        }
    }

    fn track(&mut self) {
        self.log.0 = Some(Vec::new());
    }

    /// Replays the changes in order.
    fn apply(&mut self, SummarizeChanges(steps): SummarizeChanges) -> Result<(), String> {
        for step in steps {
            match step {
                Step::Exited(e) => {
                    self.exited(e);
                }
                Step::Withdrawn(p, form) => {
                    self.withdrawn(p, form);
                }
                Step::Closed(p) => {
                    self.close(p);
                }
                Step::Declared(p, forms) => self.declared(p, forms),
            }
        }
        Ok(())
    }
}

impl Operator for Summarize {
    type In = Exited;
    type Out = Summary;
    type Ctx = Rules;

    fn process(&mut self, rules: &mut Rules, e: Exited, out: &mut dyn Collector<Summary>) {
        if let Some(e) = self.exited(e)
            && let Some(w) = self.withdraw(&e, rules.summary_flag)
        {
            out.collect(w);
        }
    }

    fn on_watermark(&mut self, rules: &mut Rules, wm: EventTime, out: &mut dyn Collector<Summary>) {
        let Some(first) = self.open.keys().next().copied() else { return };
        let close = match self.first_close {
            Some((p, t)) if p == first => t,
            _ => {
                let t = period_end(first).plus_ms(rules.summary_grace_ms()).0;
                self.first_close = Some((first, t));
                t
            }
        };
        if close > wm.0 {
            return;
        }
        let due: Vec<u32> =
            self.open.keys().copied().filter(|p| period_end(*p).plus_ms(rules.summary_grace_ms()) <= wm).collect();
        for p in due {
            let lists = self.close(p);
            let refs: Vec<&Exited> = lists.values().collect();
            let (forms, revisions) = (&self.forms, &self.revisions);
            let revision = |form: &str| next_revision(forms, revisions, p, form);
            let sums = close_period(&refs, p, rules.summary_flag, &revision, wm == EventTime::MAX);
            self.declared(p, sums.iter().map(form_of).collect());
            for s in sums {
                out.collect(s);
            }
            drop(refs);
            drop_elsewhere(lists);
        }
    }

    fn state_size(&self) -> usize {
        self.open
            .values()
            .flat_map(|m| m.values())
            .map(|e| crate::clear::inventory_bytes(&e.list) + e.invt_no.len())
            .sum()
    }
}
