//! Canonical processing order. Inputs from many sources (files, Kafka partitions) are
//! merged by event time with per-source watermarks, so the same input gives the same order
//! — and so the same output — whatever the arrival interleaving.
//!
//! Each source is assumed in order; a late event (time below what its source already
//! showed) takes its source's current time (it is processed where it arrived, as in Flink).
//! The global watermark is the minimum over active sources of their latest time, less the
//! allowed lateness; idle sources (at end of partition or file) do not hold it back.
//! Ties break by topic rank (goods, controls, orders, lists, payments, waybills, arrivals,
//! scans, seals, departures), then source, then offset.

use cbec_schemas::{EventTime, Topic};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Rank of a topic in ties.
pub fn rank(t: Topic) -> u8 {
    match t {
        Topic::Goods => 0,
        Topic::Controls => 1,
        Topic::Orders => 2,
        Topic::Lists => 3,
        Topic::Payments => 4,
        Topic::Waybills => 5,
        Topic::Arrivals => 6,
        Topic::Scans => 7,
        Topic::Seals => 8,
        Topic::Departures => 9,
    }
}

/// A source's identity: topic and partition (files use partition 0).
pub type SourceId = (Topic, i32);

#[derive(Debug, Default, Clone)]
struct SourceState {
    max_time: i64,
    seen: bool,
    idle: bool,
}

/// An item waiting in the sequencer.
#[derive(Debug)]
pub struct Pending<T> {
    /// Ordering key: (effective time, topic rank, source partition, offset).
    pub key: (i64, u8, i32, i64),
    /// Source.
    pub source: SourceId,
    /// The item.
    pub item: T,
}

/// What the heap orders: the key and where the item waits. Items stay put in a slab, so
/// sifting moves 40 bytes, not a decoded entity.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    key: (i64, u8, i32, i64),
    source: SourceId,
    slot: usize,
}

/// The watermark's inputs, cached between changes of the sources.
#[derive(Debug, Clone, Copy)]
enum Sources {
    /// An active source has shown nothing yet.
    NotReady,
    /// Every source is idle.
    AllIdle,
    /// The minimum over active sources of their latest time.
    Min(i64),
}

/// The merge of all sources.
pub struct Sequencer<T> {
    heap: BinaryHeap<Reverse<Queued>>,
    slab: Vec<Option<T>>,
    free: Vec<usize>,
    sources: HashMap<SourceId, SourceState>,
    cached: std::cell::Cell<Option<Sources>>,
    lateness: i64,
    max_time: i64,
}

impl<T> Sequencer<T> {
    /// A sequencer expecting `sources` (each must show an event or go idle before the
    /// watermark moves).
    pub fn new(sources: impl IntoIterator<Item = SourceId>, lateness_ms: i64) -> Sequencer<T> {
        Sequencer {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            sources: sources.into_iter().map(|s| (s, SourceState::default())).collect(),
            cached: std::cell::Cell::new(None),
            lateness: lateness_ms,
            max_time: i64::MIN,
        }
    }

    /// Adds an item from `source` at `offset` with event time `time`. Idleness is the
    /// reader's to say ([`Sequencer::set_idle`]): an item read from a source that is still
    /// caught up after it (the last message of a fetch) leaves it idle.
    pub fn push(&mut self, source: SourceId, offset: i64, time: EventTime, item: T) {
        let st = self.sources.entry(source).or_default();
        let was = (st.seen, st.max_time);
        let eff = if st.seen { time.0.max(st.max_time) } else { time.0 };
        st.seen = true;
        st.max_time = eff;
        if was != (st.seen, st.max_time) {
            self.cached.set(None);
        }
        self.max_time = self.max_time.max(eff);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(item);
                i
            }
            None => {
                self.slab.push(Some(item));
                self.slab.len() - 1
            }
        };
        self.heap.push(Reverse(Queued { key: (eff, rank(source.0), source.1, offset), source, slot }));
    }

    /// Marks a source idle (end of file or partition) or active again.
    pub fn set_idle(&mut self, source: SourceId, idle: bool) {
        let st = self.sources.entry(source).or_default();
        if st.idle != idle {
            st.idle = idle;
            self.cached.set(None);
        }
    }

    fn sources_state(&self) -> Sources {
        if let Some(c) = self.cached.get() {
            return c;
        }
        let mut active = self.sources.values().filter(|s| !s.idle).peekable();
        let state = if active.peek().is_none() {
            Sources::AllIdle
        } else {
            active
                .try_fold(i64::MAX, |m, s| s.seen.then_some(m.min(s.max_time)))
                .map_or(Sources::NotReady, Sources::Min)
        };
        self.cached.set(Some(state));
        state
    }

    /// The watermark: below it no new item can arrive from an active source.
    pub fn watermark(&self) -> Option<EventTime> {
        match self.sources_state() {
            Sources::NotReady => None,
            // Everything idle: all that is buffered may go.
            Sources::AllIdle => (!self.heap.is_empty()).then_some(EventTime(self.max_time)),
            Sources::Min(m) => Some(EventTime(m.saturating_sub(self.lateness))),
        }
    }

    fn take(&mut self, q: Queued) -> Pending<T> {
        let item = self.slab[q.slot].take().expect("queued item in its slot");
        self.free.push(q.slot);
        Pending { key: q.key, source: q.source, item }
    }

    /// Pops the next item whose time is strictly below the watermark (an active source that
    /// reached time `t` may still send more items at `t`, of a topic that sorts first), or
    /// any item once every source is idle.
    pub fn pop(&mut self) -> Option<Pending<T>> {
        let ready = match self.sources_state() {
            Sources::NotReady => return None,
            Sources::AllIdle => self.heap.peek().is_some(),
            Sources::Min(m) => self.heap.peek()?.0.key.0 < m.saturating_sub(self.lateness),
        };
        if ready {
            let q = self.heap.pop()?.0;
            Some(self.take(q))
        } else {
            None
        }
    }

    /// Pops everything regardless of watermarks (end of input).
    pub fn drain(&mut self) -> Option<Pending<T>> {
        let q = self.heap.pop()?.0;
        Some(self.take(q))
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Smallest offset still waiting per source (for checkpoints: consumption resumes there).
    pub fn min_pending_offsets(&self) -> HashMap<SourceId, i64> {
        let mut m: HashMap<SourceId, i64> = HashMap::new();
        for r in &self.heap {
            let e = m.entry(r.0.source).or_insert(i64::MAX);
            *e = (*e).min(r.0.key.3);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_by_event_time_with_per_source_watermarks() {
        let a = (Topic::Orders, 0);
        let b = (Topic::Payments, 0);
        let mut s: Sequencer<&str> = Sequencer::new([a, b], 0);
        s.push(a, 0, EventTime(10), "o10");
        s.push(a, 1, EventTime(30), "o30");
        assert!(s.pop().is_none(), "payments has shown nothing yet");
        s.push(b, 0, EventTime(20), "p20");
        assert_eq!(s.pop().unwrap().item, "o10");
        assert!(s.pop().is_none(), "p20 waits: payments may still send more at 20");
        s.push(b, 1, EventTime(5), "late");
        assert!(s.pop().is_none(), "a late event takes its source's time (20)");
        s.push(b, 2, EventTime(25), "p25");
        assert_eq!(s.pop().unwrap().item, "p20");
        assert_eq!(s.pop().unwrap().item, "late");
        assert!(s.pop().is_none(), "o30 and p25 wait for payments to pass 25");
        s.set_idle(b, true);
        assert_eq!(s.pop().unwrap().item, "p25");
        assert!(s.pop().is_none(), "o30 waits: orders may still send more at 30");
        s.set_idle(a, true);
        assert_eq!(s.pop().unwrap().item, "o30");
        assert_eq!(s.min_pending_offsets().len(), 0);
    }

    #[test]
    fn an_item_from_a_caught_up_source_does_not_hold_the_watermark() {
        let a = (Topic::Orders, 0);
        let b = (Topic::Payments, 0);
        let mut s: Sequencer<&str> = Sequencer::new([a, b], 0);
        s.push(a, 0, EventTime(10), "o10");
        s.push(b, 0, EventTime(20), "p20");
        s.set_idle(b, true);
        s.push(b, 1, EventTime(40), "p40");
        s.push(a, 1, EventTime(30), "o30");
        let order: Vec<&str> = std::iter::from_fn(|| s.pop().map(|p| p.item)).collect();
        assert_eq!(order, ["o10", "p20"], "payments is caught up; orders (at 30) holds the rest");
        s.set_idle(b, false);
        s.push(a, 2, EventTime(50), "o50");
        let order: Vec<&str> = std::iter::from_fn(|| s.pop().map(|p| p.item)).collect();
        assert_eq!(order, ["o30"], "payments reads again and holds the watermark at its 40");
    }

    #[test]
    fn equal_times_wait_for_a_topic_that_sorts_first() {
        let goods = (Topic::Goods, 0);
        let controls = (Topic::Controls, 0);
        let mut s: Sequencer<&str> = Sequencer::new([goods, controls], 0);
        s.push(controls, 0, EventTime(100), "c100");
        s.push(goods, 0, EventTime(100), "g100a");
        assert!(s.pop().is_none(), "more goods may come at 100, and goods sort before controls");
        s.push(goods, 1, EventTime(100), "g100b");
        s.push(goods, 2, EventTime(200), "g200");
        s.push(controls, 1, EventTime(300), "c300");
        let order: Vec<&str> = std::iter::from_fn(|| s.pop().map(|p| p.item)).collect();
        assert_eq!(order, ["g100a", "g100b", "c100"]);
        s.set_idle(goods, true);
        s.set_idle(controls, true);
        let rest: Vec<&str> = std::iter::from_fn(|| s.pop().map(|p| p.item)).collect();
        assert_eq!(rest, ["g200", "c300"]);
    }
}
