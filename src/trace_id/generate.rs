//! Where fresh IDs come from: UUID v4 and v7 built from a per-thread generator, or the user's.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::TraceId;

/// Makes fresh trace IDs for requests that arrive without one (inbound) or calls made outside
/// any request (outbound, e.g. a background job).
///
/// Closures `Fn() -> TraceId` implement it, so a custom scheme is one line:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_deepseek::trace_id::{TraceId, TraceIdLayer};
///
/// static NEXT: AtomicU64 = AtomicU64::new(1);
/// let layer = TraceIdLayer::builder()
///     .generator(|| TraceId::from_uuid(u128::from(NEXT.fetch_add(1, Ordering::Relaxed))))
///     .build();
/// # let _ = layer;
/// ```
pub trait MakeTraceId: Send + Sync + 'static {
    /// A fresh ID.
    fn make_trace_id(&self) -> TraceId;
}

impl<F> MakeTraceId for F
where
    F: Fn() -> TraceId + Send + Sync + 'static,
{
    fn make_trace_id(&self) -> TraceId {
        self()
    }
}

/// Random UUID v4 IDs (the default), e.g. `6f1c1d0e-6b0a-4f7e-9a43-0c1b4cbe3a11`.
///
/// The 128 bits come from a per-thread wyrand generator seeded from the operating system
/// (through std's `RandomState`): unique with overwhelming probability and cheap (no lock, no
/// syscall, no heap), but not cryptographically unpredictable. Trace IDs are echoed to callers
/// and logged; never use one as a secret.
///
/// ```
/// use tower_deepseek::trace_id::{MakeTraceId, UuidV4};
///
/// let id = UuidV4.make_trace_id();
/// assert_eq!(id.as_str().len(), 36);
/// assert_eq!(id.as_str().as_bytes()[14], b'4'); // the version nibble
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UuidV4;

impl MakeTraceId for UuidV4 {
    fn make_trace_id(&self) -> TraceId {
        TraceId::from_uuid(uuid_v4())
    }
}

/// Time-sortable UUID v7 IDs: 48 bits of Unix milliseconds, then random bits (the same
/// generator as [`UuidV4`]). IDs made in different milliseconds sort by time; within one
/// millisecond their order is random.
///
/// ```
/// use tower_deepseek::trace_id::{MakeTraceId, UuidV7};
///
/// let id = UuidV7.make_trace_id();
/// assert_eq!(id.as_str().as_bytes()[14], b'7');
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UuidV7;

impl MakeTraceId for UuidV7 {
    fn make_trace_id(&self) -> TraceId {
        TraceId::from_uuid(uuid_v7())
    }
}

/// The generator a layer holds: the built-in ones are called directly, a custom one through
/// its vtable.
#[derive(Clone, Default)]
pub(crate) enum Generator {
    #[default]
    V4,
    V7,
    Custom(Arc<dyn MakeTraceId>),
}

impl Generator {
    pub(crate) fn make(&self) -> TraceId {
        match self {
            Generator::V4 => TraceId::from_uuid(uuid_v4()),
            Generator::V7 => TraceId::from_uuid(uuid_v7()),
            Generator::Custom(make) => make.make_trace_id(),
        }
    }
}

impl fmt::Debug for Generator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generator::V4 => "UuidV4",
            Generator::V7 => "UuidV7",
            Generator::Custom(_) => "Custom",
        })
    }
}

/// A random UUID v4 as a number (version 4, RFC 9562 variant).
pub(crate) fn uuid_v4() -> u128 {
    let bits = (u128::from(random_u64()) << 64) | u128::from(random_u64());
    with_version(bits, 4)
}

/// A UUID v7 for the current wall-clock time.
pub(crate) fn uuid_v7() -> u128 {
    // A clock before 1970 is a broken clock: the ID stays unique through its random bits.
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    uuid_v7_at(
        millis,
        (u128::from(random_u64()) << 64) | u128::from(random_u64()),
    )
}

/// A UUID v7 for `millis` (truncated to 48 bits) with the given random bits.
pub(crate) fn uuid_v7_at(millis: u128, random: u128) -> u128 {
    let time = (millis & 0xffff_ffff_ffff) << 80;
    with_version(time | (random & ((1u128 << 80) - 1)), 7)
}

/// Sets the version nibble and the `10` variant bits.
fn with_version(bits: u128, version: u128) -> u128 {
    let bits = (bits & !(0xf << 76)) | (version << 76);
    (bits & !(0b11 << 62)) | (0b10 << 62)
}

/// A fresh non-zero W3C parent-id (span id).
pub(crate) fn parent_id() -> [u8; 8] {
    // Zero is the one invalid value; the chance is 2^-64, and a fixed fallback is still valid.
    let id = random_u64();
    if id == 0 { 1u64 } else { id }.to_be_bytes()
}

thread_local! {
    static RANDOM_STATE: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed: std seeds `RandomState` keys from the OS once per thread.
fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

/// wyrand: one add and one 64x64→128 multiply per number.
pub(crate) fn random_u64() -> u64 {
    // During thread teardown the thread-local is gone; a fresh seed is still random.
    let state = RANDOM_STATE
        .try_with(|state| {
            let next = state.get().wrapping_add(0xa076_1d64_78bd_642f);
            state.set(next);
            next
        })
        .unwrap_or_else(|_| seed());
    let product = u128::from(state) * u128::from(state ^ 0xe703_7ed1_a0b4_28db);
    ((product >> 64) as u64) ^ (product as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_sets_version_and_variant() {
        for _ in 0..1000 {
            let id = uuid_v4();
            assert_eq!((id >> 76) & 0xf, 4);
            assert_eq!((id >> 62) & 0b11, 0b10);
        }
    }

    #[test]
    fn v7_puts_the_time_first() {
        let id = uuid_v7_at(0x0123_4567_89ab, u128::MAX);
        assert_eq!(id >> 80, 0x0123_4567_89ab);
        assert_eq!((id >> 76) & 0xf, 7);
        assert_eq!((id >> 62) & 0b11, 0b10);
        assert!(
            uuid_v7_at(2, 0) > uuid_v7_at(1, u128::MAX),
            "time sorts before randomness"
        );
    }

    #[test]
    fn parent_ids_are_never_zero_and_differ() {
        let a = parent_id();
        let b = parent_id();
        assert_ne!(a, [0; 8]);
        assert_ne!(a, b);
    }
}
