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

impl<T> PartialEq for Pending<T> {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Pending<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}

/// The merge of all sources.
pub struct Sequencer<T> {
    heap: BinaryHeap<Reverse<Pending<T>>>,
    sources: HashMap<SourceId, SourceState>,
    lateness: i64,
    max_time: i64,
}

impl<T> Sequencer<T> {
    /// A sequencer expecting `sources` (each must show an event or go idle before the
    /// watermark moves).
    pub fn new(sources: impl IntoIterator<Item = SourceId>, lateness_ms: i64) -> Sequencer<T> {
        Sequencer {
            heap: BinaryHeap::new(),
            sources: sources.into_iter().map(|s| (s, SourceState::default())).collect(),
            lateness: lateness_ms,
            max_time: i64::MIN,
        }
    }

    /// Adds an item from `source` at `offset` with event time `time`.
    pub fn push(&mut self, source: SourceId, offset: i64, time: EventTime, item: T) {
        let st = self.sources.entry(source).or_default();
        st.idle = false;
        let eff = if st.seen { time.0.max(st.max_time) } else { time.0 };
        st.seen = true;
        st.max_time = eff;
        self.max_time = self.max_time.max(eff);
        self.heap.push(Reverse(Pending { key: (eff, rank(source.0), source.1, offset), source, item }));
    }

    /// Marks a source idle (end of file or partition) or active again.
    pub fn set_idle(&mut self, source: SourceId, idle: bool) {
        self.sources.entry(source).or_default().idle = idle;
    }

    /// The watermark: below it no new item can arrive from an active source.
    pub fn watermark(&self) -> Option<EventTime> {
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for s in self.sources.values() {
            if s.idle {
                continue;
            }
            any_active = true;
            if !s.seen {
                return None;
            }
            min = Some(min.map_or(s.max_time, |m: i64| m.min(s.max_time)));
        }
        if !any_active {
            // Everything idle: all that is buffered may go.
            return (!self.heap.is_empty()).then_some(EventTime(self.max_time));
        }
        min.map(|m| EventTime(m.saturating_sub(self.lateness)))
    }

    /// Pops the next item whose time is at or below the watermark.
    pub fn pop(&mut self) -> Option<Pending<T>> {
        let wm = self.watermark()?;
        if self.heap.peek()?.0.key.0 <= wm.0 { self.heap.pop().map(|r| r.0) } else { None }
    }

    /// Pops everything regardless of watermarks (end of input).
    pub fn drain(&mut self) -> Option<Pending<T>> {
        self.heap.pop().map(|r| r.0)
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
        assert_eq!(s.pop().unwrap().item, "p20");
        assert!(s.pop().is_none(), "o30 waits for payments to pass 30");
        s.push(b, 1, EventTime(5), "late");
        assert_eq!(s.pop().unwrap().item, "late", "a late event takes its source's time (20)");
        s.set_idle(b, true);
        assert_eq!(s.pop().unwrap().item, "o30");
        assert_eq!(s.min_pending_offsets().len(), 0);
    }
}
