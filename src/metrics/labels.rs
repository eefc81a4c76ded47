//! Bounded label sets: a value is a label only if it was configured or is among the first few
//! seen; everything else is `other`. Lookups scan a short fixed table without a lock; only the
//! first sighting of a new value takes one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The label every value outside a table's bound reports as.
pub(crate) const OTHER: &str = "other";

/// The model label of a call whose model is not known (no `RequestModel` extension).
pub(crate) const UNKNOWN: &str = "unknown";

/// The longest value accepted as a label (longer ones report as `other`).
pub(crate) const MAX_LABEL_LEN: usize = 64;

/// A bounded, append-only table of label values: index `i < capacity` is a value, index
/// `capacity` is `other`.
pub(crate) struct LabelTable {
    slots: Box<[OnceLock<Box<str>>]>,
    /// How many leading slots are set (published with `Release` after the slot is set).
    len: AtomicUsize,
    /// How many values may still be added after the configured ones.
    open: bool,
    /// Serializes insertions only; lookups never take it.
    insert: Mutex<()>,
}

impl LabelTable {
    /// A table holding `fixed` (deduplicated, invalid values dropped) with room for
    /// `capacity` values in all. `open: false` closes the table to values seen at run time.
    pub(crate) fn new<'a>(
        fixed: impl IntoIterator<Item = &'a str>,
        capacity: usize,
        open: bool,
    ) -> LabelTable {
        let slots: Box<[OnceLock<Box<str>>]> = (0..capacity).map(|_| OnceLock::new()).collect();
        let mut len = 0;
        for value in fixed {
            if len == capacity {
                break;
            }
            let seen = slots[..len]
                .iter()
                .any(|slot| slot.get().is_some_and(|known| **known == *value));
            if !seen && is_label(value) {
                let _ = slots[len].set(value.into());
                len += 1;
            }
        }
        LabelTable {
            slots,
            len: AtomicUsize::new(len),
            open,
            insert: Mutex::new(()),
        }
    }

    /// How many distinct indices the table can return (its values plus `other`).
    pub(crate) fn dimension(&self) -> usize {
        self.slots.len() + 1
    }

    /// The index of `other`.
    pub(crate) fn other(&self) -> usize {
        self.slots.len()
    }

    /// The index of `value`, adding it if the table is open and not full.
    pub(crate) fn index(&self, value: &str) -> usize {
        let len = self.len.load(Ordering::Acquire);
        if let Some(index) = self.find(value, len) {
            return index;
        }
        if !self.open || len == self.slots.len() || !is_label(value) {
            return self.other();
        }
        self.insert_slow(value)
    }

    #[cold]
    fn insert_slow(&self, value: &str) -> usize {
        // A poisoned lock only means another insertion panicked; the table itself is sound
        // (slots are set before `len` is published), so go on with it.
        let _guard = self
            .insert
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let len = self.len.load(Ordering::Acquire);
        if let Some(index) = self.find(value, len) {
            return index;
        }
        if len == self.slots.len() {
            return self.other();
        }
        let _ = self.slots[len].set(value.into());
        self.len.store(len + 1, Ordering::Release);
        len
    }

    fn find(&self, value: &str, len: usize) -> Option<usize> {
        self.slots[..len]
            .iter()
            .position(|slot| slot.get().is_some_and(|known| **known == *value))
    }

    /// The label of an index (`other` for the overflow index or anything out of range).
    pub(crate) fn name(&self, index: usize) -> &str {
        self.slots
            .get(index)
            .and_then(OnceLock::get)
            .map_or(OTHER, |value| value)
    }
}

/// Whether `value` may be a label: short, made of the characters model and operation names
/// use, not `other`, and not shaped like an API key (`sk-...`), so a key sent as a model name
/// never reaches a scrape.
pub(crate) fn is_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LABEL_LEN
        && value != OTHER
        && !value.starts_with("sk-")
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
}

/// A fixed-size table of lazily resolved values, one per combination of label indices.
#[cfg_attr(
    not(any(feature = "prometheus", feature = "opentelemetry")),
    allow(dead_code)
)]
pub(crate) struct Grid<T> {
    slots: Box<[OnceLock<T>]>,
}

#[cfg_attr(
    not(any(feature = "prometheus", feature = "opentelemetry")),
    allow(dead_code)
)]
impl<T> Grid<T> {
    /// A grid of `size` empty slots.
    pub(crate) fn new(size: usize) -> Grid<T> {
        Grid {
            slots: (0..size).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The value at `index`, resolved by `init` on first use. `None` if `index` is out of
    /// range (callers compute indices from bounded tables, so this does not happen).
    #[inline]
    pub(crate) fn get(&self, index: usize, init: impl FnOnce() -> T) -> Option<&T> {
        self.slots.get(index).map(|slot| slot.get_or_init(init))
    }

    /// The value at `index` if it was resolved.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn peek(&self, index: usize) -> Option<&T> {
        self.slots.get(index).and_then(OnceLock::get)
    }

    /// The resolved values with their indices.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.get().map(|value| (index, value)))
    }
}
