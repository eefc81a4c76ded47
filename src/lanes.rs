//! Per-thread lanes: state that every call would otherwise write in one shared place, split
//! so that threads running at the same time mostly write places of their own.
//!
//! A write to memory another core wrote last waits for that core's cache line (tens to
//! hundreds of cycles on two busy cores); a thread that keeps to its own lane pays a plain
//! uncontended write. Threads take lane numbers in turn as they first ask, so a runtime's
//! workers, started together, take different lanes.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};

/// How many lanes a shared structure gets: the machine's parallelism, rounded up to a power
/// of two and at most 16. Read once.
pub(crate) fn lane_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 16)
            .next_power_of_two()
    })
}

/// This thread's lane number: handed out in turn to threads as they first ask, so threads
/// running at the same time take different lanes. Take it modulo a structure's lane count
/// (`& (count - 1)`).
#[inline]
pub(crate) fn thread_lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    LANE.try_with(|lane| {
        let number = lane.get();
        if number != usize::MAX {
            return number;
        }
        let number = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
        lane.set(number);
        number
    })
    .unwrap_or(0)
}

/// One spare per lane, each on cache lines of its own.
#[repr(align(128))]
struct Slot<S>(Mutex<Option<S>>);

/// Spare clones of a service, one per lane, for a caller that would otherwise clone the
/// service for every call (tower's `clone` + `oneshot`) and drop the clone after it.
///
/// A deep stack's clone bumps a shared reference count for every layer's settings (and its
/// drop takes them back): two dozen locked writes a call, on lines every thread writes. A
/// clone taken from here was already used by an earlier call on this lane and is given back
/// right after its `call`, when a tower service is free for its next `poll_ready` (the
/// contract a service called in a loop relies on): the same clone serves call after call.
///
/// Taking and giving back never wait: a slot another thread holds at that moment (two threads
/// on one lane) is passed over, and the caller clones or drops as it would have anyway.
pub(crate) struct Spares<S> {
    slots: Box<[Slot<S>]>,
}

impl<S> Spares<S> {
    /// Empty slots, one per lane.
    pub(crate) fn new() -> Spares<S> {
        Spares {
            slots: (0..lane_count()).map(|_| Slot(Mutex::new(None))).collect(),
        }
    }

    fn slot(&self) -> Option<&Mutex<Option<S>>> {
        // `slots` has `lane_count()` entries, a power of two: the mask keeps the lane in range.
        let mask = self.slots.len().wrapping_sub(1);
        self.slots.get(thread_lane() & mask).map(|slot| &slot.0)
    }

    /// This lane's spare, if it has one and no other thread holds its slot.
    #[inline]
    pub(crate) fn take(&self) -> Option<S> {
        match self.slot()?.try_lock() {
            Ok(mut spare) => spare.take(),
            // A panic while the slot was held left at worst an empty slot or a whole spare
            // (only `Option::take` and a move run under the lock).
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Keeps `service` as this lane's spare; dropped if the lane has one already or its slot
    /// is held.
    #[inline]
    pub(crate) fn give_back(&self, service: S) {
        let Some(slot) = self.slot() else {
            return;
        };
        let mut spare = match slot.try_lock() {
            Ok(spare) => spare,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if spare.is_none() {
            *spare = Some(service);
        }
    }
}

impl<S> Default for Spares<S> {
    fn default() -> Self {
        Spares::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread keeps its lane number.
    #[test]
    fn a_thread_keeps_its_lane() {
        let first = thread_lane();
        assert_eq!(thread_lane(), first);
        let other = std::thread::spawn(|| (thread_lane(), thread_lane()))
            .join()
            .unwrap();
        assert_eq!(other.0, other.1);
    }

    #[test]
    fn lanes_are_a_power_of_two() {
        assert!(lane_count().is_power_of_two());
        assert!((1..=16).contains(&lane_count()));
    }

    /// What is given back on a lane is what that lane takes next; a lane with a spare keeps
    /// the first and drops the second.
    #[test]
    fn a_spare_given_back_is_taken_on_the_same_lane() {
        let spares = Spares::new();
        assert_eq!(spares.take(), None::<u32>);
        spares.give_back(7);
        spares.give_back(8);
        assert_eq!(spares.take(), Some(7));
        assert_eq!(spares.take(), None);
    }

    /// A slot held by another thread is passed over, never waited for.
    #[test]
    fn a_held_slot_is_passed_over() {
        let spares = Spares::new();
        spares.give_back(1u32);
        let held = spares.slot().unwrap().lock().unwrap();
        assert_eq!(spares.take(), None);
        spares.give_back(2);
        drop(held);
        assert_eq!(spares.take(), Some(1));
    }
}
