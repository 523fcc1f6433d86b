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
use std::collections::{BinaryHeap, HashMap, VecDeque};

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

/// One source: its progress and its items waiting, in key order.
#[derive(Debug)]
struct SourceState<T> {
    id: SourceId,
    max_time: i64,
    /// Key offset of the latest item.
    last: i64,
    seen: bool,
    idle: bool,
    waiting: VecDeque<(Key, T)>,
}

impl<T> SourceState<T> {
    fn new(id: SourceId) -> SourceState<T> {
        SourceState { id, max_time: 0, last: 0, seen: false, idle: false, waiting: VecDeque::new() }
    }
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

/// The merge of all sources: a merge of sorted runs. A source's items come in key order
/// (its effective time never goes back, its offsets grow), so each source keeps its items
/// in a queue in arrival order, and a small heap holds each source's first key: a release
/// compares keys among the sources (tens), not among every item waiting (up to
/// `max_buffered`), and an item is moved into its queue and out of it, never sifted. An
/// item that comes out of order in its source (a partition read again) is put in its
/// place in the queue, so the order is the order of the keys whatever the arrival.
pub struct Sequencer<T> {
    sources: Vec<SourceState<T>>,
    index: HashMap<SourceId, usize>,
    /// The first key of every source with items waiting, and the source; an entry whose
    /// key is no longer its source's first (an item put before it) is stale and skipped.
    heads: BinaryHeap<Reverse<(Key, usize)>>,
    len: usize,
    cached: std::cell::Cell<Option<Sources>>,
    lateness: i64,
    max_time: i64,
}

impl<T> Sequencer<T> {
    /// A sequencer expecting `sources` (each must show an event or go idle before the
    /// watermark moves).
    pub fn new(sources: impl IntoIterator<Item = SourceId>, lateness_ms: i64) -> Sequencer<T> {
        let mut s = Sequencer {
            sources: Vec::new(),
            index: HashMap::new(),
            heads: BinaryHeap::new(),
            len: 0,
            cached: std::cell::Cell::new(None),
            lateness: lateness_ms,
            max_time: i64::MIN,
        };
        for id in sources {
            s.source(id);
        }
        s
    }

    /// The index of `id`, added when new.
    fn source(&mut self, id: SourceId) -> usize {
        if let Some(&i) = self.index.get(&id) {
            return i;
        }
        self.sources.push(SourceState::new(id));
        self.index.insert(id, self.sources.len() - 1);
        self.sources.len() - 1
    }

    /// Adds an item from `source` at `offset` with event time `time`. Idleness is the
    /// reader's to say ([`Sequencer::set_idle`]): an item read from a source that is still
    /// caught up after it (the last message of a fetch) leaves it idle.
    pub fn push(&mut self, source: SourceId, offset: i64, time: EventTime, item: T) {
        let i = self.source(source);
        let st = &mut self.sources[i];
        let eff = if st.seen { time.0.max(st.max_time) } else { time.0 };
        let first = !st.seen;
        st.seen = true;
        st.max_time = eff;
        st.last = offset;
        let key = (eff, rank(source.0), source.1, offset);
        match st.waiting.back() {
            Some((back, _)) if *back <= key => st.waiting.push_back((key, item)),
            None => {
                st.waiting.push_back((key, item));
                self.heads.push(Reverse((key, i)));
            }
            Some(_) => {
                let at = st.waiting.partition_point(|(k, _)| *k <= key);
                st.waiting.insert(at, (key, item));
                if at == 0 {
                    self.heads.push(Reverse((key, i)));
                }
            }
        }
        self.len += 1;
        // A source's bound only grows with its items: the least bound changes only when
        // it was this source's (or this source had none yet).
        match self.cached.get() {
            Some(Sources::Min(_, s)) if s != source && !first => {}
            _ => self.cached.set(None),
        }
        self.max_time = self.max_time.max(eff);
    }

    /// Marks a source idle (end of file or partition) or active again.
    pub fn set_idle(&mut self, source: SourceId, idle: bool) {
        let i = self.source(source);
        let st = &mut self.sources[i];
        if st.idle != idle {
            st.idle = idle;
            self.cached.set(None);
        }
    }

    fn sources_state(&self) -> Sources {
        if let Some(c) = self.cached.get() {
            return c;
        }
        let mut active = self.sources.iter().filter(|s| !s.idle).peekable();
        let state = if active.peek().is_none() {
            Sources::AllIdle
        } else {
            let mut least: Option<(Key, SourceId)> = None;
            let mut ready = true;
            for s in active {
                if !s.seen {
                    ready = false;
                    break;
                }
                let bound = (s.max_time.saturating_sub(self.lateness), rank(s.id.0), s.id.1, s.last.saturating_add(1));
                if least.is_none_or(|(k, _)| bound < k) {
                    least = Some((bound, s.id));
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
            Sources::AllIdle => (self.len > 0).then_some(EventTime(self.max_time)),
            Sources::Min(k, _) => Some(EventTime(k.0)),
        }
    }

    /// The least key waiting and its source (stale heads dropped on the way).
    fn first(&mut self) -> Option<(Key, usize)> {
        while let Some(&Reverse((key, i))) = self.heads.peek() {
            if self.sources[i].waiting.front().is_some_and(|(k, _)| *k == key) {
                return Some((key, i));
            }
            self.heads.pop();
        }
        None
    }

    /// Takes the first item of source `i`, whose head is the heap's top.
    fn take(&mut self, i: usize) -> Pending<T> {
        self.heads.pop();
        let st = &mut self.sources[i];
        let (key, item) = st.waiting.pop_front().expect("a head has its item");
        if let Some((next, _)) = st.waiting.front() {
            self.heads.push(Reverse((*next, i)));
        }
        self.len -= 1;
        Pending { key, source: st.id, item }
    }

    /// Pops the next item whose time is strictly below the watermark (an active source that
    /// reached time `t` may still send more items at `t`, of a topic that sorts first), or
    /// any item once every source is idle.
    pub fn pop(&mut self) -> Option<Pending<T>> {
        let bound = match self.sources_state() {
            Sources::NotReady => return None,
            Sources::AllIdle => None,
            Sources::Min(k, _) => Some(k),
        };
        let (key, i) = self.first()?;
        if bound.is_some_and(|b| key >= b) {
            return None;
        }
        Some(self.take(i))
    }

    /// Pops everything regardless of watermarks (end of input).
    pub fn drain(&mut self) -> Option<Pending<T>> {
        let (_, i) = self.first()?;
        Some(self.take(i))
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Smallest offset still waiting per source (for checkpoints: consumption resumes there).
    pub fn min_pending_offsets(&self) -> HashMap<SourceId, i64> {
        let mut m: HashMap<SourceId, i64> = HashMap::new();
        for s in &self.sources {
            if let Some(least) = s.waiting.iter().map(|(k, _)| k.3).min() {
                m.insert(s.id, least);
            }
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

    /// A partition added while running (Kafka mode) is announced active before it shows
    /// anything: the release stops until its first item (placed in order with what waits)
    /// or its end.
    #[test]
    fn a_source_added_while_running_holds_the_release_until_it_shows_or_ends() {
        let a = (Topic::Scans, 0);
        let (added, empty) = ((Topic::Scans, 4), (Topic::Scans, 5));
        let mut s: Sequencer<&str> = Sequencer::new([a], 0);
        s.push(a, 0, EventTime(10), "a10");
        s.push(a, 1, EventTime(20), "a20");
        assert_eq!(pops(&mut s), ["a10", "a20"], "nothing the only source can still send sorts before");
        s.set_idle(added, false);
        s.set_idle(empty, false);
        s.push(a, 2, EventTime(30), "a30");
        assert!(s.pop().is_none(), "the added partitions have shown nothing yet");
        assert_eq!(s.watermark(), None);
        s.push(added, 0, EventTime(15), "new15");
        s.push(added, 1, EventTime(40), "new40");
        assert!(s.pop().is_none(), "the empty one has not said it is at its end");
        s.set_idle(empty, true);
        // new15 is dated before what was released (late: processed where it arrives).
        assert_eq!(pops(&mut s), ["new15", "a30"], "in order once all three bound the release");
        assert_eq!(s.watermark(), Some(EventTime(30)));
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

    /// The merge of per-source queues releases exactly what a single ordered set of every
    /// waiting item would (the sequencer before: one heap of all items), in the same
    /// order, through late events, re-read offsets (out of order in their source), idle
    /// sources and a drain at the end.
    #[test]
    fn releases_what_one_ordered_set_of_all_items_would() {
        use rand::{RngExt, SeedableRng};
        use std::collections::BTreeSet;
        let ids: Vec<SourceId> = vec![(Topic::Orders, 0), (Topic::Orders, 1), (Topic::Payments, 0), (Topic::Scans, 3)];
        for seed in 0..40u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let lateness = [0, 5, 50][seed as usize % 3];
            let mut s: Sequencer<u32> = Sequencer::new(ids.iter().copied(), lateness);
            // The model: every waiting item in one ordered set; per source (max_time, last
            // offset, seen, idle), as the contract of the sequencer says.
            let mut all: BTreeSet<(Key, u32)> = BTreeSet::new();
            let mut st: Vec<(i64, i64, bool, bool)> = vec![(0, 0, false, false); ids.len()];
            let mut next_off = vec![0i64; ids.len()];
            let mut time = vec![0i64; ids.len()];
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for n in 0..3000u32 {
                let j = rng.random_range(0..ids.len());
                match rng.random_range(0..20) {
                    0 => {
                        let idle = !st[j].3;
                        st[j].3 = idle;
                        s.set_idle(ids[j], idle);
                    }
                    r => {
                        // Mostly forward in time; sometimes late; sometimes an offset read again.
                        time[j] += if r == 1 { -rng.random_range(0..30) } else { rng.random_range(0..10) };
                        let off = if r == 2 && next_off[j] > 3 {
                            next_off[j] - rng.random_range(1..4)
                        } else {
                            next_off[j] += 1;
                            next_off[j] - 1
                        };
                        let e = &mut st[j];
                        let eff = if e.2 { time[j].max(e.0) } else { time[j] };
                        *e = (eff, off, true, e.3);
                        all.insert(((eff, rank(ids[j].0), ids[j].1, off), n));
                        s.push(ids[j], off, EventTime(time[j]), n);
                    }
                }
                // Release what the model releases: below the least bound of the active sources.
                let active: Vec<usize> = (0..ids.len()).filter(|&k| !st[k].3).collect();
                let bound: Option<Option<Key>> = if active.is_empty() {
                    Some(None)
                } else if active.iter().all(|&k| st[k].2) {
                    active.iter().map(|&k| Some((st[k].0 - lateness, rank(ids[k].0), ids[k].1, st[k].1 + 1))).min()
                } else {
                    None
                };
                if let Some(bound) = bound {
                    while let Some(&(k, v)) = all.first() {
                        if bound.is_some_and(|b| k >= b) {
                            break;
                        }
                        all.pop_first();
                        want.push(v);
                    }
                }
                while let Some(p) = s.pop() {
                    got.push(p.item);
                }
                assert_eq!(got, want, "seed {seed}, step {n}");
                assert_eq!(s.len(), all.len());
                if n % 16 != 0 {
                    continue;
                }
                let mut least: HashMap<SourceId, i64> = HashMap::new();
                for ((_, r, p, off), _) in &all {
                    let id = *ids.iter().find(|id| rank(id.0) == *r && id.1 == *p).unwrap();
                    let e = least.entry(id).or_insert(i64::MAX);
                    *e = (*e).min(*off);
                }
                assert_eq!(s.min_pending_offsets(), least, "seed {seed}, step {n}");
            }
            got.extend(std::iter::from_fn(|| s.drain().map(|p| p.item)));
            want.extend(std::mem::take(&mut all).into_iter().map(|(_, v)| v));
            assert_eq!(got, want, "seed {seed}, drained");
            assert!(s.is_empty());
        }
    }
}
