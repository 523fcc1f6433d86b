//! State retention (`rules.state_retention_days`): keyed state is dropped once event time
//! has moved more than the retention past the last message about its key.
//!
//! Deterministic by construction. The cutoff is a function of the engine's watermark only
//! (a day: state last touched on an earlier day is *stale*). A keyed operator treats stale
//! state as absent the moment an input reaches it, whether or not the background sweep has
//! removed it yet; the sweep ([`Retention::expire`]) only frees memory, a bounded number of
//! keys per watermark step, so no step pauses the engine for a day's worth of keys. So the
//! outputs do not depend on when memory is freed, and a replay from a checkpoint gives the
//! same outputs. The runtime sends a message whose event time is already older than the
//! retention before the watermark to the dead-letter topic (`expired`) instead of letting
//! it start a key afresh.

use crate::tracked::{Tracked, Unshared};
use cbec_schemas::{EventTime, Text};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Milliseconds of a day.
pub const DAY_MS: i64 = 86_400_000;

/// Keys freed per operator per watermark step, at most.
pub const SWEEP_BUDGET: usize = 256;

/// Days since 1970-01-01 (UTC) of an event time.
pub fn day_of(t: EventTime) -> i32 {
    t.0.div_euclid(DAY_MS).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// Keyed state that ages: the day it was last touched, and whether it must be kept
/// whatever its age.
pub trait Aging: Default {
    /// Day of the last message about the key (0 for new state).
    fn touched(&mut self) -> &mut i32;
    /// The day of the last message about the key.
    fn touched_day(&self) -> i32;
    /// Kept whatever its age (a running timer); never by default.
    fn pinned(&self) -> bool {
        false
    }
}

/// One keyed operator's retention: the cutoff day and its keys in the order they were
/// touched, by day (a key touched on several days is queued once per day; the older
/// entries are skipped when they come up). The days are run-length coded beside the keys
/// (keys arrive in event-time order, so a day is one run): 24 bytes per queued key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retention {
    /// State last touched before this day is stale (`i32::MIN`: none is).
    cutoff: i32,
    /// False until the engine first sets a cutoff (no retention: nothing is queued).
    on: bool,
    keys: VecDeque<Text>,
    /// (day, how many of the next keys were touched that day), in queue order.
    days: VecDeque<(i32, u32)>,
    /// The day of the last touch and its first millisecond (event times mostly arrive in
    /// order: a range check instead of a division per event).
    #[serde(skip)]
    last_day: (i64, i32),
    /// What the queue did since the last [`Retention::changes`], while recording.
    #[serde(skip)]
    log: Unshared<RetentionChanges>,
}

/// What a retention queue did since the last [`Retention::changes`]: its cutoff now, the
/// keys queued (with their day), and how many were taken from its front. A queue is
/// first in, first out, so these give the queue now from the queue before, whatever the
/// order they happened in.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RetentionChanges {
    cutoff: i32,
    on: bool,
    queued: Vec<(i32, Text)>,
    taken: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            cutoff: i32::MIN,
            on: false,
            keys: VecDeque::new(),
            days: VecDeque::new(),
            last_day: (0, 0),
            log: Unshared(None),
        }
    }
}

impl Retention {
    /// True when state last touched on day `touched` is past the retention.
    #[inline]
    pub fn stale(&self, touched: i32) -> bool {
        touched < self.cutoff
    }

    /// Notes that `key`'s state, last touched on day `*touched`, is touched at `t`.
    #[inline]
    pub fn touch(&mut self, touched: &mut i32, key: &str, t: EventTime) {
        let (start, day) = self.last_day;
        let d = if t.0.checked_sub(start).is_some_and(|x| (0..DAY_MS).contains(&x)) {
            day
        } else {
            let d = day_of(t);
            self.last_day = (i64::from(d) * DAY_MS, d);
            d
        };
        if d > *touched {
            *touched = d;
            if self.on {
                self.queue(d, Text::from(key));
            }
        }
    }

    #[inline]
    fn queue(&mut self, d: i32, key: Text) {
        if let Some(log) = &mut self.log.0 {
            log.queued.push((d, key.clone()));
        }
        self.keys.push_back(key);
        match self.days.back_mut() {
            Some((day, n)) if *day == d => *n += 1,
            _ => self.days.push_back((d, 1)),
        }
    }

    /// Takes the key at the front of the queue, with its day.
    fn take(&mut self) -> Option<(Text, i32)> {
        let (d, n) = self.days.front_mut()?;
        let d = *d;
        *n -= 1;
        if *n == 0 {
            self.days.pop_front();
        }
        let key = self.keys.pop_front()?;
        if let Some(log) = &mut self.log.0 {
            log.taken += 1;
        }
        Some((key, d))
    }

    /// Starts (or restarts) recording what the queue does (incremental checkpoints).
    pub fn track(&mut self) {
        self.log = Unshared(Some(RetentionChanges::default()));
    }

    /// What the queue did since [`Retention::track`] or the last call.
    ///
    /// # Panics
    /// When not recording.
    pub fn changes(&mut self) -> RetentionChanges {
        let log =
            self.log.0.replace(RetentionChanges::default()).expect("changes asked of a queue that does not record");
        RetentionChanges { cutoff: self.cutoff, on: self.on, ..log }
    }

    /// Applies [`Retention::changes`] of the queue this one is a copy of.
    pub fn apply(&mut self, c: RetentionChanges) {
        for (d, key) in c.queued {
            self.queue(d, key);
        }
        for _ in 0..c.taken {
            self.take();
        }
        self.cutoff = c.cutoff;
        self.on = c.on;
    }

    /// The state of `key` in `map`, touched at `t`: created when missing, started afresh
    /// when stale (and not pinned). Every keyed input reaches its state through this.
    #[inline]
    pub fn state_of<'a, V: Aging + Clone>(
        &mut self,
        map: &'a mut Tracked<Text, Box<V>>,
        key: &str,
        t: EventTime,
    ) -> &'a mut V {
        self.state_of_moved(map, key, t).0
    }

    /// [`Retention::state_of`], and whether the state's day moved on (or it is new or
    /// started afresh).
    #[inline]
    pub fn state_of_moved<'a, V: Aging + Clone>(
        &mut self,
        map: &'a mut Tracked<Text, Box<V>>,
        key: &str,
        t: EventTime,
    ) -> (&'a mut V, bool) {
        let v: &mut V = map.or_default(key);
        if self.stale(*v.touched()) && !v.pinned() {
            *v = V::default();
        }
        let before = *v.touched();
        self.touch(v.touched(), key, t);
        let moved = *v.touched() != before;
        (v, moved)
    }

    /// Moves the cutoff to `cutoff` and frees, within the sweep budget, the state in `map`
    /// last touched before it (not pinned). Returns how many keys were freed.
    pub fn sweep<V: Aging + Clone>(&mut self, map: &mut Tracked<Text, Box<V>>, cutoff: i32) -> usize {
        self.expire(cutoff, |key, day| {
            let idle = map.get(key).is_some_and(|v| v.touched_day() == day && !v.pinned());
            idle && map.remove(key).is_some()
        })
    }

    /// Moves the cutoff to `cutoff` (never back) and offers up to [`SWEEP_BUDGET`] queued
    /// keys older than it to `free(key, day)`, which removes the key's state if it was
    /// last touched on that day (and may keep it: a key with a running timer). Returns the
    /// number of keys freed.
    pub fn expire(&mut self, cutoff: i32, mut free: impl FnMut(&str, i32) -> bool) -> usize {
        self.on = true;
        self.cutoff = self.cutoff.max(cutoff);
        let mut freed = 0;
        for _ in 0..SWEEP_BUDGET {
            if self.days.front().is_none_or(|(d, _)| *d >= self.cutoff) {
                break;
            }
            let Some((key, d)) = self.take() else { break };
            freed += usize::from(free(&key, d));
        }
        freed
    }

    /// Room for `n` more queued keys without growing (a grown queue copies itself: a pause).
    pub fn reserve(&mut self, n: usize) {
        self.keys.reserve(n);
    }

    /// Keys queued (for tests and reports).
    pub fn queued(&self) -> usize {
        self.keys.len()
    }

    /// Approximate bytes held.
    pub fn state_size(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<Text>()
            + self.days.capacity() * std::mem::size_of::<(i32, u32)>()
            + self.keys.iter().map(crate::compact::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_days_and_stale_means_before_the_cutoff() {
        assert_eq!(day_of(EventTime(0)), 0);
        assert_eq!(day_of(EventTime(DAY_MS - 1)), 0);
        assert_eq!(day_of(EventTime(DAY_MS)), 1);
        assert_eq!(day_of(EventTime(-1)), -1);
        let mut r = Retention::default();
        assert!(!r.stale(i32::MIN + 1), "no cutoff yet: nothing is stale");
        r.expire(10, |_, _| true);
        assert!(r.stale(9) && !r.stale(10));
    }

    #[test]
    fn a_key_is_offered_once_per_day_it_was_touched_and_only_when_older_than_the_cutoff() {
        let mut r = Retention::default();
        r.expire(i32::MIN, |_, _| true);
        let (mut a, mut b) = (0, 0);
        r.touch(&mut a, "A", EventTime(DAY_MS + 5));
        r.touch(&mut a, "A", EventTime(DAY_MS + 9)); // same day: not queued again
        r.touch(&mut b, "B", EventTime(2 * DAY_MS));
        r.touch(&mut a, "A", EventTime(3 * DAY_MS)); // a later day: queued again
        r.touch(&mut a, "A", EventTime(DAY_MS)); // an earlier message never moves it back
        assert_eq!((a, b, r.queued()), (3, 2, 3));
        let mut seen = Vec::new();
        assert_eq!(
            r.expire(3, |k, d| {
                seen.push((k.to_string(), d));
                k == "B"
            }),
            1
        );
        assert_eq!(seen, [("A".to_string(), 1), ("B".to_string(), 2)]);
        assert_eq!(r.queued(), 1, "A's day-3 entry waits for a later cutoff");
    }

    #[test]
    fn the_sweep_is_bounded_per_step_and_resumes() {
        let mut r = Retention::default();
        r.expire(i32::MIN, |_, _| true);
        for i in 0..(SWEEP_BUDGET * 2 + 7) {
            let mut t = 0;
            r.touch(&mut t, &format!("k{i}"), EventTime(DAY_MS));
        }
        assert_eq!(r.expire(5, |_, _| true), SWEEP_BUDGET);
        assert_eq!(r.expire(5, |_, _| true), SWEEP_BUDGET);
        assert_eq!(r.expire(2, |_, _| true), 7, "the cutoff never moves back");
        assert_eq!(r.queued(), 0);
    }

    /// A late message queues its key behind later days: it is offered once the keys before
    /// it are (a delay, never an early drop).
    #[test]
    fn out_of_order_days_are_offered_in_queue_order_never_early() {
        let mut r = Retention::default();
        r.expire(i32::MIN, |_, _| true);
        for (k, d) in [("a", 1), ("b", 1), ("c", 3), ("d", 2), ("e", 1)] {
            let mut t = 0;
            r.touch(&mut t, k, EventTime(d * DAY_MS));
        }
        let mut seen = Vec::new();
        r.expire(3, |k, d| {
            seen.push(format!("{k}{d}"));
            true
        });
        assert_eq!(seen, ["a1", "b1"], "c (day 3) is not older than the cutoff and holds d and e back");
        r.expire(4, |k, d| {
            seen.push(format!("{k}{d}"));
            true
        });
        assert_eq!(seen, ["a1", "b1", "c3", "d2", "e1"]);
        assert_eq!(r.queued(), 0);
    }

    /// Keys queued and taken in any interleaving between two checkpoints: the copy kept by
    /// the changes equals the queue (keys, days and their runs, cutoff) — also when the
    /// queue ran empty in between and a day's run started again.
    #[test]
    fn a_copy_kept_by_the_changes_equals_the_queue() {
        let mut r = Retention::default();
        r.expire(i32::MIN, |_, _| true);
        r.track();
        let mut copy = r.clone();
        let mut touched = std::collections::HashMap::<String, i32>::new();
        let mut taken_in_a_delta = 0;
        for step in 0..60i64 {
            let day = step / 4;
            for i in 0..(step % 7) * 20 {
                let k = format!("k{}", (step * 37 + i * 11) % 300);
                r.touch(touched.entry(k.clone()).or_default(), &k, EventTime(day * DAY_MS + i));
            }
            if step % 3 != 0 {
                let before = r.queued();
                r.expire((day - 1) as i32, |_, _| true);
                r.touch(touched.entry("late".into()).or_default(), "late", EventTime(day * DAY_MS + 5));
                taken_in_a_delta += before.saturating_sub(r.queued());
            }
            copy.apply(r.changes());
            assert_eq!(serde_json::to_value(&copy).unwrap(), serde_json::to_value(&r).unwrap(), "step {step}");
        }
        assert!(taken_in_a_delta > 500, "{taken_in_a_delta}");
        // Keys queued and taken again before the next checkpoint.
        r.expire(i32::MAX - 1, |_, _| true);
        r.expire(i32::MAX - 1, |_, _| true);
        let mut t = 0;
        r.touch(&mut t, "brief", EventTime(100 * DAY_MS));
        r.expire(i32::MAX, |_, _| true);
        copy.apply(r.changes());
        assert_eq!(r.queued(), 0);
        assert_eq!(serde_json::to_value(&copy).unwrap(), serde_json::to_value(&r).unwrap());
    }

    #[test]
    fn without_a_cutoff_nothing_is_queued() {
        let mut r = Retention::default();
        let mut t = 0;
        r.touch(&mut t, "A", EventTime(DAY_MS * 3));
        assert_eq!((t, r.queued()), (3, 0), "the day is still kept on the state");
    }
}
