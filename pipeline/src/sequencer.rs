//! Canonical processing order. Inputs from many sources (files, Kafka partitions) are
//! merged by event time with per-source watermarks, so the same input gives the same order
//! — and so the same output — whatever the arrival interleaving.
//!
//! Each source is assumed in order; a late event (time below what its source already
//! showed) takes its source's current time (it is processed where it arrived, as in Flink).
//! Items are ordered by (time, topic rank, partition, offset); ties in time break by topic
//! rank (goods, controls, orders, lists, payments, waybills, arrivals, scans, seals,
//! departures). An item is released once nothing that can still arrive sorts before it:
//! each active source can only send keys from (its latest time less the allowed lateness,
//! its rank, its partition, its next offset) on, and the item must sort below the least of
//! those bounds. Idle sources (at end of partition or file) do not bound anything. The
//! event-time watermark (for timers) is the time of that least bound.

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
    /// Key offset of the latest item.
    last: i64,
    seen: bool,
    idle: bool,
}

/// An ordering key: (time, topic rank, partition, offset).
type Key = (i64, u8, i32, i64);

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
    /// The least key any active source can still send, and that source.
    Min(Key, SourceId),
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
        let eff = if st.seen { time.0.max(st.max_time) } else { time.0 };
        let first = !st.seen;
        st.seen = true;
        st.max_time = eff;
        st.last = offset;
        // A source's bound only grows with its items: the least bound changes only when
        // it was this source's (or this source had none yet).
        match self.cached.get() {
            Some(Sources::Min(_, s)) if s != source && !first => {}
            _ => self.cached.set(None),
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
        let mut active = self.sources.iter().filter(|(_, s)| !s.idle).peekable();
        let state = if active.peek().is_none() {
            Sources::AllIdle
        } else {
            let mut least: Option<(Key, SourceId)> = None;
            let mut ready = true;
            for (id, s) in active {
                if !s.seen {
                    ready = false;
                    break;
                }
                let bound = (s.max_time.saturating_sub(self.lateness), rank(id.0), id.1, s.last.saturating_add(1));
                if least.is_none_or(|(k, _)| bound < k) {
                    least = Some((bound, *id));
                }
            }
            match least {
                Some((k, id)) if ready => Sources::Min(k, id),
                _ => Sources::NotReady,
            }
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
            Sources::Min(k, _) => Some(EventTime(k.0)),
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
            Sources::Min(k, _) => self.heap.peek()?.0.key < k,
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

    fn pops(s: &mut Sequencer<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| s.pop().map(|p| p.item)).collect()
    }

    #[test]
    fn merges_by_event_time_with_per_source_watermarks() {
        let a = (Topic::Orders, 0);
        let b = (Topic::Payments, 0);
        let mut s: Sequencer<&str> = Sequencer::new([a, b], 0);
        s.push(a, 0, EventTime(10), "o10");
        s.push(a, 1, EventTime(30), "o30");
        assert!(s.pop().is_none(), "payments has shown nothing yet");
        s.push(b, 0, EventTime(20), "p20");
        assert_eq!(pops(&mut s), ["o10", "p20"], "nothing payments can still send sorts before p20");
        s.push(b, 1, EventTime(5), "late");
        assert_eq!(pops(&mut s), ["late"], "a late event takes its source's time (20)");
        s.push(b, 2, EventTime(25), "p25");
        assert_eq!(pops(&mut s), ["p25"], "o30 waits for payments to pass 30");
        assert_eq!(s.watermark(), Some(EventTime(25)));
        s.set_idle(b, true);
        assert_eq!(pops(&mut s), ["o30"], "orders can only send after its own o30");
        assert_eq!(s.min_pending_offsets().len(), 0);
    }

    #[test]
    fn equal_times_wait_for_a_topic_that_sorts_first() {
        let goods = (Topic::Goods, 0);
        let controls = (Topic::Controls, 0);
        let mut s: Sequencer<&str> = Sequencer::new([goods, controls], 0);
        s.push(controls, 0, EventTime(100), "c100");
        s.push(goods, 0, EventTime(100), "g100a");
        assert_eq!(pops(&mut s), ["g100a"], "c100 waits: more goods may come at 100, and goods sort first");
        s.push(goods, 1, EventTime(100), "g100b");
        s.push(goods, 2, EventTime(200), "g200");
        s.push(controls, 1, EventTime(300), "c300");
        assert_eq!(pops(&mut s), ["g100b", "c100", "g200"]);
        s.set_idle(goods, true);
        s.set_idle(controls, true);
        assert_eq!(pops(&mut s), ["c300"]);
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
        assert_eq!(pops(&mut s), ["o10", "p20", "o30"], "payments is caught up; orders bounds the rest");
        s.set_idle(b, false);
        s.push(a, 2, EventTime(50), "o50");
        assert_eq!(pops(&mut s), ["p40"], "payments reads again and bounds the release at its 40");
    }

    #[test]
    fn many_items_at_one_time_from_one_source_do_not_wait() {
        // A burst at a single timestamp (registrations, a scan line's batch) is released as
        // it arrives: nothing its own source can still send sorts before it.
        let a = (Topic::Goods, 0);
        let b = (Topic::Orders, 0);
        let mut s: Sequencer<&str> = Sequencer::new([a, b], 0);
        s.push(b, 0, EventTime(500), "o500");
        for i in 0..1000 {
            s.push(a, i, EventTime(100), "g100");
            assert_eq!(s.len(), 2, "at most the newest goods item and o500 wait");
            assert_eq!(s.pop().map(|p| p.item), Some("g100"));
        }
    }
}
