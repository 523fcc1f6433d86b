//! Keyed maps that can record which keys changed since they were last asked: what makes a
//! checkpoint incremental. The engine thread then copies only the changed entries at a
//! checkpoint (a pause proportional to what changed since the last one, not to the whole
//! state); the checkpoint writer applies them to its own copy of the state
//! ([`Incremental`]).
//!
//! A `Tracked` map serializes as the plain map, so checkpoints are unchanged.

use crate::Map;
use crate::compact::Codes;
use crate::retention::{Retention, RetentionChanges};
use cbec_schemas::Text;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

/// State for a checkpoint: a copy of all of it, or what changed since the previous cut.
#[derive(Debug)]
pub enum Cut<S, C> {
    /// A copy of the whole state.
    Whole(Box<S>),
    /// What changed since the previous cut.
    Changes(C),
}

/// State checkpointed incrementally: the first [`Incremental::cut`] copies all of it and
/// starts recording what changes; later cuts give what changed since the previous one,
/// which [`Incremental::apply`] brings into a copy of the state.
pub trait Incremental: Sized {
    /// What changed between two cuts (serialized into checkpoint files).
    type Changes: Serialize + for<'de> Deserialize<'de>;

    /// The state for a checkpoint.
    fn cut(&mut self) -> Cut<Self, Self::Changes>;

    /// Starts recording what changes: the state has a copy already (it was restored, and
    /// the copy made from it), so the next cut can be changes.
    fn track(&mut self);

    /// Applies changes cut from the state this one is a copy of; an error when they cannot
    /// be changes of it (the state may then be half changed).
    fn apply(&mut self, changes: Self::Changes) -> Result<(), String>;
}

impl<S: Incremental> Cut<S, S::Changes> {
    /// True for a copy of the whole state.
    pub fn is_whole(&self) -> bool {
        matches!(self, Cut::Whole(_))
    }

    /// Brings `copy` up to date with this cut: replaced by a whole one, changed by changes
    /// (an error when there is no copy to change, or the changes are not of it).
    pub fn apply_to(self, copy: &mut Option<S>) -> Result<(), String> {
        match (self, copy.as_mut()) {
            (Cut::Whole(s), _) => {
                *copy = Some(*s);
                Ok(())
            }
            (Cut::Changes(c), Some(s)) => s.apply(c),
            (Cut::Changes(_), None) => Err("checkpoint changes without the state they change".into()),
        }
    }
}

/// A change log kept beside state: `None` while not recording; a copy of the state does
/// not record (it is someone else's state).
#[derive(Debug)]
pub struct Unshared<T>(pub Option<T>);

impl<T> Default for Unshared<T> {
    fn default() -> Self {
        Unshared(None)
    }
}

impl<T> Clone for Unshared<T> {
    fn clone(&self) -> Self {
        Unshared(None)
    }
}

/// One changed key: its value now, or `None` when it was removed.
pub type Change<K, V> = (K, Option<V>);

/// A keyed map that records the keys written through it while tracking is on.
#[derive(Debug)]
pub struct Tracked<K, V> {
    map: Map<K, V>,
    /// Keys inserted, changed or removed since the last [`Tracked::changes`]; `None` while
    /// not tracking (embedded runs without checkpoints pay nothing).
    changed: Option<crate::Set<K>>,
    /// A copy of changed entries owed to a cut ([`Tracked::defer_changes`]).
    owed: Option<Owed<K, V>>,
}

/// The entries a cut still owes: their keys in the order they are copied, those not
/// copied yet, and the copies made (each entry as it was at the cut).
#[derive(Debug)]
struct Owed<K, V> {
    keys: Vec<K>,
    next: usize,
    pending: crate::Set<K>,
    taken: Vec<Change<K, V>>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked { map: Map::default(), changed: None, owed: None }
    }
}

/// A copy does not track (it is someone else's state).
impl<K: Clone, V: Clone> Clone for Tracked<K, V> {
    fn clone(&self) -> Self {
        Tracked { map: self.map.clone(), changed: None, owed: None }
    }
}

impl<K: Serialize + Eq + Hash, V: Serialize> Serialize for Tracked<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, K: Deserialize<'de> + Eq + Hash, V: Deserialize<'de>> Deserialize<'de> for Tracked<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tracked { map: Map::deserialize(d)?, changed: None, owed: None })
    }
}

/// Records `key` in `changed` while tracking.
#[inline]
fn mark<K: Eq + Hash + Borrow<str> + for<'a> From<&'a str>>(changed: &mut Option<crate::Set<K>>, key: &str) {
    if let Some(c) = changed
        && !c.contains(key)
    {
        c.insert(K::from(key));
    }
}

/// Copies the entry at `key` into `owed` when a cut still owes it (before a write changes
/// it).
#[inline]
fn settle<K: Eq + Hash + Borrow<str> + for<'a> From<&'a str>, V: Clone>(
    owed: &mut Option<Owed<K, V>>,
    map: &Map<K, V>,
    key: &str,
) {
    if let Some(o) = owed
        && o.pending.remove(key)
    {
        o.taken.push((K::from(key), map.get(key).cloned()));
    }
}

impl<K: Eq + Hash + Clone + Borrow<str> + for<'a> From<&'a str>, V: Clone> Tracked<K, V> {
    #[inline]
    fn mark(&mut self, key: &str) {
        settle(&mut self.owed, &self.map, key);
        mark(&mut self.changed, key);
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// The value of `key`, to change (recorded as changed when present).
    #[inline]
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        // A probe of the owed keys only while a cut owes copies.
        settle(&mut self.owed, &self.map, key);
        let v = self.map.get_mut(key)?;
        mark(&mut self.changed, key);
        Some(v)
    }

    /// The value of `key`, created (default) when missing; one lookup, and the key is
    /// copied only when it is inserted. Recorded as changed.
    #[inline]
    pub fn or_default(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        self.mark(key);
        self.map.entry_ref(key).or_default()
    }

    /// Inserts `value` at `key` (recorded); returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.mark(key.borrow());
        self.map.insert(key, value)
    }

    /// Removes `key` (recorded when it was present).
    pub fn remove(&mut self, key: &str) -> Option<V> {
        settle(&mut self.owed, &self.map, key);
        let v = self.map.remove(key);
        if v.is_some() {
            mark(&mut self.changed, key);
        }
        v
    }

    /// Keeps the entries `keep` accepts (the others are recorded as removed).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let (changed, owed) = (&mut self.changed, &mut self.owed);
        self.map.retain(|k, v| {
            // `keep` may change the value: a cut that owes it takes it as it is.
            if let Some(o) = owed
                && o.pending.remove(k.borrow())
            {
                o.taken.push((k.clone(), Some(v.clone())));
            }
            let kept = keep(k, v);
            if !kept && let Some(c) = changed {
                c.insert(k.clone());
            }
            kept
        });
    }

    /// Starts (or restarts) recording changes from now on.
    pub fn track(&mut self) {
        self.changed = Some(crate::Set::default());
    }

    /// True while recording changes.
    pub fn tracking(&self) -> bool {
        self.changed.is_some()
    }

    /// Keys changed since the last [`Tracked::changes`].
    pub fn changed(&self) -> usize {
        self.changed.as_ref().map_or(0, |c| c.len())
    }

    /// The keys changed since tracking started or since the last call, with their values
    /// now (copied); recording goes on.
    ///
    /// # Panics
    /// When not tracking (the caller would lose changes silently otherwise).
    pub fn changes(&mut self) -> Vec<Change<K, V>> {
        self.defer_changes();
        self.take_owed()
    }

    /// [`Tracked::changes`] in two steps: the cut is now, but the copies are made later, a
    /// few at a time ([`Tracked::copy_owed`]) or when a write is about to change an entry
    /// still owed, and taken with [`Tracked::take_owed`]. Only the keys are copied now: a
    /// checkpoint's pause on the engine thread no longer grows with what changed.
    ///
    /// # Panics
    /// When not tracking, or when the previous cut's copies were not taken.
    pub fn defer_changes(&mut self) {
        assert!(self.owed.is_none(), "a cut began before the previous one's copies were taken");
        let pending = self.changed.replace(crate::Set::default()).expect("changes asked of a map that does not track");
        let keys: Vec<K> = pending.iter().cloned().collect();
        let taken = Vec::with_capacity(keys.len());
        self.owed = Some(Owed { keys, next: 0, pending, taken });
    }

    /// Copies up to `budget` of the entries the cut still owes; true once it owes none.
    pub fn copy_owed(&mut self, budget: usize) -> bool {
        let Some(o) = &mut self.owed else { return true };
        let mut copied = 0;
        while copied < budget && o.next < o.keys.len() {
            let k = &o.keys[o.next];
            o.next += 1;
            if o.pending.remove(k.borrow()) {
                o.taken.push((k.clone(), self.map.get(k.borrow()).cloned()));
                copied += 1;
            }
        }
        o.next == o.keys.len()
    }

    /// The entries of the last [`Tracked::defer_changes`], as they were then (copying
    /// what is still owed now); none when no cut was begun.
    pub fn take_owed(&mut self) -> Vec<Change<K, V>> {
        self.copy_owed(usize::MAX);
        self.owed.take().map(|o| o.taken).unwrap_or_default()
    }

    /// Applies changes taken from another map by [`Tracked::changes`] (recorded too, when
    /// this map tracks).
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change<K, V>>) {
        for (k, v) in changes {
            self.mark(k.borrow());
            match v {
                Some(v) => {
                    self.map.insert(k, v);
                }
                None => {
                    self.map.remove(k.borrow());
                }
            }
        }
    }

    /// Room for `n` more entries without a resize.
    pub fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
    }
}

impl<K, V> Tracked<K, V> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }
}

/// What changed in a keyed operator partition (declare's orders, clear's parcels) since
/// its last changes: the entries written (copied), the codes of their compact form added
/// (the code table only grows), and what the retention queue did.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyedChanges<V> {
    /// Entries written.
    pub entries: Vec<Change<Text, Box<V>>>,
    codes: Vec<Arc<str>>,
    retention: RetentionChanges,
}

/// The parts of a keyed operator partition that [`KeyedChanges`] follow.
pub struct Keyed<'a, V> {
    /// Entries by key.
    pub map: &'a mut Tracked<Text, Box<V>>,
    /// Their code table.
    pub codes: &'a mut Codes,
    /// Codes already in the last changes.
    pub codes_sent: &'a mut usize,
    /// Their retention queue.
    pub retention: &'a mut Retention,
}

impl<V: Clone> Keyed<'_, V> {
    /// Starts recording what changes.
    pub fn track(self) {
        self.map.track();
        self.retention.track();
        *self.codes_sent = self.codes.len();
    }

    /// What changed since [`Keyed::track`] or the last call, the entries still owed
    /// ([`Tracked::defer_changes`]): the codes and the retention queue's changes now, the
    /// entries by [`Tracked::take_owed`].
    pub fn changes_deferred(self) -> KeyedChanges<V> {
        let codes = self.codes.since(*self.codes_sent);
        *self.codes_sent = self.codes.len();
        self.map.defer_changes();
        KeyedChanges { entries: Vec::new(), codes, retention: self.retention.changes() }
    }

    /// Applies the changes of the partition this one is a copy of; an error when they do
    /// not continue its code table (changes of another partition).
    pub fn apply(self, c: KeyedChanges<V>) -> Result<(), String> {
        self.codes.extend(c.codes)?;
        self.map.apply(c.entries);
        self.retention.apply(c.retention);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted<V: Clone + Ord>(mut v: Vec<Change<Text, V>>) -> Vec<Change<Text, V>> {
        v.sort();
        v
    }

    #[test]
    fn every_kind_of_write_is_recorded_once_and_applies_to_a_copy() {
        let mut a: Tracked<Text, u32> = Tracked::default();
        *a.or_default("kept") = 1;
        *a.or_default("gone") = 2;
        *a.or_default("dropped") = 3;
        a.track();
        let mut copy = a.clone();
        assert!(!copy.tracking(), "a copy does not track");
        *a.or_default("new") = 4;
        *a.get_mut("kept").unwrap() += 10;
        *a.get_mut("kept").unwrap() += 10;
        assert!(a.get_mut("absent").is_none());
        a.remove("gone");
        a.remove("never there");
        a.retain(|k, _| k != "dropped");
        let ch = sorted(a.changes());
        assert_eq!(
            ch,
            [("dropped".into(), None), ("gone".into(), None), ("kept".into(), Some(21)), ("new".into(), Some(4)),]
        );
        copy.apply(ch);
        let all = |m: &Tracked<Text, u32>| {
            let mut v: Vec<(Text, u32)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
            v.sort();
            v
        };
        assert_eq!(all(&copy), all(&a));
        assert!(a.changes().is_empty(), "recorded since the last call only");
        *a.get_mut("new").unwrap() = 5;
        assert_eq!(a.changes(), [("new".into(), Some(5))]);
    }

    #[test]
    fn a_map_that_does_not_track_records_nothing_and_serializes_as_the_map() {
        let mut a: Tracked<Text, u32> = Tracked::default();
        *a.or_default("k") = 1;
        assert!(!a.tracking());
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"k":1}"#);
        let b: Tracked<Text, u32> = serde_json::from_str(r#"{"k":1}"#).unwrap();
        assert_eq!(b.get("k"), Some(&1));
    }
}
