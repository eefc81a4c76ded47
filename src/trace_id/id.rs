//! The trace ID value: the text callers see and the W3C trace-id it carries.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;

use super::w3c::{self, Case, W3cTraceId};
use super::{CURRENT, generate};

/// Longest incoming trace ID accepted by default, in bytes; longer ones are replaced.
pub const DEFAULT_MAX_LEN: usize = 128;

/// The `sampled` trace flag, set on IDs that did not come with a `traceparent`.
pub(crate) const SAMPLED: u8 = 0x01;

/// One request's trace ID: the text sent as `x-trace-id` (and echoed to the caller), and the
/// W3C trace-id sent in `traceparent`.
///
/// Cloning is cheap: a generated ID is 16 bytes formatted on demand into a stack buffer, never
/// a `String`; a received one shares the request's header bytes (a reference count).
///
/// # The W3C trace-id
///
/// Every `TraceId` carries a [`W3cTraceId`], chosen in this order:
///
/// 1. a valid incoming `traceparent`'s trace-id (the caller's trace is joined);
/// 2. the ID itself when it is a UUID (any case, hyphenated) or 32 hex digits, not all zero:
///    `x-trace-id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736` is trace-id
///    `4bf92f3577b34da6a3ce929d0e0e4736`, so a generated UUID *is* its trace-id;
/// 3. otherwise derived from the text by a fixed hash (FNV-1a 128 then a 64-bit finalizer
///    on each half), stable across processes and releases of this major version: the same
///    `x-trace-id: abc-123` always joins the same W3C trace, in every service using this crate.
///
/// ```
/// use tower_deepseek::trace_id::TraceId;
///
/// let id = TraceId::parse("abc-123").unwrap();
/// assert_eq!(id.as_str(), "abc-123");
/// assert_eq!(id.w3c_trace_id(), TraceId::parse("abc-123").unwrap().w3c_trace_id());
///
/// let uuid = TraceId::parse("4BF92F35-77B3-4DA6-A3CE-929D0E0E4736").unwrap();
/// assert_eq!(uuid.w3c_trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
///
/// assert!(TraceId::parse("has space").is_err());
/// ```
#[derive(Clone)]
pub struct TraceId {
    text: Text,
    trace: W3cTraceId,
    flags: u8,
    /// Boxed: rare, and a smaller `TraceId` is cheaper to move through the task-local.
    tracestate: Option<Box<HeaderValue>>,
}

/// What the ID looks like as text.
#[derive(Clone)]
enum Text {
    /// A hyphenated lowercase UUID of these bytes.
    Uuid([u8; 16]),
    /// 32 lowercase hex digits of these bytes (an ID that came only as a `traceparent`).
    Hex([u8; 16]),
    /// Received or supplied text, checked to be visible ASCII.
    Header(HeaderValue),
}

/// Why a value is not accepted as a trace ID.
///
/// ```
/// use tower_deepseek::trace_id::{InvalidTraceId, TraceId};
///
/// assert_eq!(TraceId::parse("").unwrap_err(), InvalidTraceId::Empty);
/// assert_eq!(TraceId::parse("tab\there").unwrap_err(), InvalidTraceId::NotVisibleAscii);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidTraceId {
    /// The value is empty.
    Empty,
    /// The value is longer than the length cap.
    TooLong,
    /// The value has a byte outside visible ASCII (`!` to `~`): a space, a control
    /// character or a non-ASCII byte.
    NotVisibleAscii,
}

impl InvalidTraceId {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InvalidTraceId::Empty => "empty",
            InvalidTraceId::TooLong => "longer than the length cap",
            InvalidTraceId::NotVisibleAscii => "not visible ASCII",
        }
    }
}

impl fmt::Display for InvalidTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid trace ID: {}", self.as_str())
    }
}

impl std::error::Error for InvalidTraceId {}

impl TraceId {
    /// A random UUID v4 ID (see [`UuidV4`](super::UuidV4)).
    pub fn new_v4() -> TraceId {
        TraceId::from_uuid(generate::uuid_v4())
    }

    /// A time-sortable UUID v7 ID (see [`UuidV7`](super::UuidV7)).
    pub fn new_v7() -> TraceId {
        TraceId::from_uuid(generate::uuid_v7())
    }

    /// The ID shown as this UUID (hyphenated, lowercase), with the same 16 bytes as its W3C
    /// trace-id (the nil UUID, whose bytes W3C forbids, gets a derived one).
    ///
    /// ```
    /// use tower_deepseek::trace_id::TraceId;
    ///
    /// let id = TraceId::from_uuid(0x4bf92f35_77b3_4da6_a3ce_929d0e0e4736);
    /// assert_eq!(id.as_str(), "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
    /// assert_eq!(id.w3c_trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    /// ```
    pub fn from_uuid(uuid: u128) -> TraceId {
        let bytes = uuid.to_be_bytes();
        let trace = match W3cTraceId::from_bytes(bytes) {
            Some(trace) => trace,
            None => derive(&format_uuid(&bytes)),
        };
        TraceId {
            text: Text::Uuid(bytes),
            trace,
            flags: SAMPLED,
            tracestate: None,
        }
    }

    /// An ID shown as the 32 hex digits of a W3C trace-id (what a request that came with only
    /// a `traceparent` gets).
    pub fn from_w3c(trace: W3cTraceId) -> TraceId {
        TraceId {
            text: Text::Hex(trace.to_bytes()),
            trace,
            flags: SAMPLED,
            tracestate: None,
        }
    }

    /// Checks `text` as an incoming ID would be checked (non-empty, at most
    /// [`DEFAULT_MAX_LEN`] bytes, visible ASCII) and picks its W3C trace-id by the rule above.
    pub fn parse(text: &str) -> Result<TraceId, InvalidTraceId> {
        check(text.as_bytes(), DEFAULT_MAX_LEN)?;
        let value = HeaderValue::from_str(text).map_err(|_| InvalidTraceId::NotVisibleAscii)?;
        Ok(TraceId::from_checked(value))
    }

    /// Like [`parse`](Self::parse), from a header value, sharing its bytes.
    pub fn from_header_value(value: &HeaderValue) -> Result<TraceId, InvalidTraceId> {
        TraceId::from_header_capped(value, DEFAULT_MAX_LEN)
    }

    pub(crate) fn from_header_capped(
        value: &HeaderValue,
        max_len: usize,
    ) -> Result<TraceId, InvalidTraceId> {
        check(value.as_bytes(), max_len)?;
        Ok(TraceId::from_checked(value.clone()))
    }

    fn from_checked(value: HeaderValue) -> TraceId {
        TraceId::from_checked_in(value, None)
    }

    /// A checked received ID, in the trace given (from a `traceparent`) or in its own; built
    /// in one place so the server layer moves no `TraceId` around while deciding.
    pub(crate) fn from_checked_in(
        value: HeaderValue,
        context: Option<(W3cTraceId, u8)>,
    ) -> TraceId {
        let (trace, flags) = match context {
            Some(context) => context,
            None => (
                hex_trace_id(value.as_bytes()).unwrap_or_else(|| derive(value.as_bytes())),
                SAMPLED,
            ),
        };
        TraceId {
            text: Text::Header(value),
            trace,
            flags,
            tracestate: None,
        }
    }

    /// The ID current in this task: set by [`TraceIdLayer`](super::TraceIdLayer) for the
    /// handling of a request, or by [`scope`](Self::scope). `None` outside any scope, e.g. in
    /// a task started with `tokio::spawn` (see [`spawn`](super::spawn)).
    pub fn current() -> Option<TraceId> {
        CURRENT.try_with(TraceId::clone).ok()
    }

    /// Runs `future` with this ID current: [`TraceId::current`] returns it and the
    /// [`PropagateTraceIdLayer`](super::PropagateTraceIdLayer) sends it, at every poll.
    ///
    /// ```
    /// use tower_deepseek::trace_id::TraceId;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let id = TraceId::parse("job-42").unwrap();
    /// let seen = id.scope(async { TraceId::current() }).await;
    /// assert_eq!(seen.unwrap().as_str(), "job-42");
    /// assert!(TraceId::current().is_none());
    /// # });
    /// ```
    pub fn scope<F: Future>(self, future: F) -> TaskLocalFuture<TraceId, F> {
        CURRENT.scope(self, future)
    }

    /// Runs the synchronous `f` with this ID current.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// The ID as text, formatted on the stack when it was generated.
    pub fn as_str(&self) -> TraceIdStr<'_> {
        match &self.text {
            Text::Uuid(bytes) => {
                let uuid = format_uuid(bytes);
                let mut buf = [0u8; 36];
                buf.copy_from_slice(&uuid);
                TraceIdStr(StrRepr::Inline { buf, len: 36 })
            }
            Text::Hex(bytes) => {
                let mut buf = [0u8; 36];
                buf[..32].copy_from_slice(&w3c::encode_hex::<32>(bytes));
                TraceIdStr(StrRepr::Inline { buf, len: 32 })
            }
            // Checked to be visible ASCII when the ID was made.
            Text::Header(value) => {
                TraceIdStr(StrRepr::Borrowed(value.to_str().unwrap_or_default()))
            }
        }
    }

    /// The ID as a header value: a reference-count bump for a received ID, one small copy for
    /// a generated one.
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.text {
            Text::Uuid(bytes) => w3c::ascii_header_value(format_uuid(bytes)),
            Text::Hex(bytes) => w3c::ascii_header_value(w3c::encode_hex::<32>(bytes)),
            Text::Header(value) => value.clone(),
        }
    }

    /// The same ID holding its text as a header value, made now: each later header value (the
    /// echo, every outbound call's) is then that one shared, not a new copy formatted each time.
    pub(crate) fn with_header_text(self) -> TraceId {
        match self.text {
            Text::Header(_) => self,
            _ => TraceId {
                text: Text::Header(self.to_header_value()),
                ..self
            },
        }
    }

    /// The ID as a header value, giving up the ID: a received one hands its value over as is.
    pub(crate) fn into_header_value(self) -> HeaderValue {
        match self.text {
            Text::Header(value) => value,
            _ => self.to_header_value(),
        }
    }

    /// The W3C trace-id sent in `traceparent` (see the rule above).
    pub fn w3c_trace_id(&self) -> W3cTraceId {
        self.trace
    }

    /// The W3C trace flags: as received in `traceparent`, otherwise `01` (sampled), so a
    /// downstream that follows its parent's decision records the call.
    pub fn trace_flags(&self) -> u8 {
        self.flags
    }

    /// The `tracestate` received beside a valid `traceparent`, passed on with it.
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_deref()
    }

    /// The same ID text with another W3C trace context, e.g. the trace of an OpenTelemetry
    /// span that became the request's root.
    pub fn with_trace_context(mut self, trace: W3cTraceId, flags: u8) -> TraceId {
        self.trace = trace;
        self.flags = flags;
        self
    }

    /// The same ID with this `tracestate` to pass on (`None` drops it).
    pub fn with_tracestate(mut self, tracestate: Option<HeaderValue>) -> TraceId {
        self.set_tracestate(tracestate);
        self
    }

    pub(crate) fn set_tracestate(&mut self, tracestate: Option<HeaderValue>) {
        self.tracestate = tracestate.map(Box::new);
    }

    /// A `traceparent` value with this trace-id and flags and the given parent-id.
    pub(crate) fn traceparent(&self, parent_id: [u8; 8]) -> HeaderValue {
        w3c::format_traceparent(self.trace, parent_id, self.flags)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceId")
            .field("id", &&*self.as_str())
            .field("w3c_trace_id", &self.trace)
            .field("flags", &self.flags)
            .finish()
    }
}

impl PartialEq for TraceId {
    fn eq(&self, other: &TraceId) -> bool {
        self.trace == other.trace && *self.as_str() == *other.as_str()
    }
}

impl Eq for TraceId {}

impl Hash for TraceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// A [`TraceId`] as `&str`: a stack buffer for a generated ID, a borrow for a received one.
///
/// ```
/// let id = tower_deepseek::trace_id::TraceId::parse("abc-123").unwrap();
/// let text: &str = &id.as_str();
/// assert_eq!(text, "abc-123");
/// ```
#[derive(Clone, Copy)]
pub struct TraceIdStr<'a>(StrRepr<'a>);

#[derive(Clone, Copy)]
enum StrRepr<'a> {
    Inline { buf: [u8; 36], len: u8 },
    Borrowed(&'a str),
}

impl Deref for TraceIdStr<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match &self.0 {
            // Only hex digits and dashes are written into the buffer.
            StrRepr::Inline { buf, len } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            StrRepr::Borrowed(text) => text,
        }
    }
}

impl AsRef<str> for TraceIdStr<'_> {
    fn as_ref(&self) -> &str {
        self
    }
}

impl fmt::Display for TraceIdStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for TraceIdStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq<str> for TraceIdStr<'_> {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for TraceIdStr<'_> {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

/// Non-empty, at most `max_len` bytes, visible ASCII only.
pub(crate) fn check(bytes: &[u8], max_len: usize) -> Result<(), InvalidTraceId> {
    if bytes.is_empty() {
        return Err(InvalidTraceId::Empty);
    }
    if bytes.len() > max_len {
        return Err(InvalidTraceId::TooLong);
    }
    // A fold rather than `all`: no early exit, so it compiles to wide compares.
    if bytes.iter().fold(true, |ok, b| ok & b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(InvalidTraceId::NotVisibleAscii)
    }
}

/// The bytes of a hyphenated UUID or of 32 hex digits (any case), when not all zero.
fn hex_trace_id(text: &[u8]) -> Option<W3cTraceId> {
    let bytes = match text.len() {
        32 => w3c::decode_hex::<16>(text, Case::Any)?,
        36 => w3c::decode_uuid(text)?,
        _ => return None,
    };
    W3cTraceId::from_bytes(bytes)
}

/// The derived trace-id of any other text: FNV-1a 128, then each half finalized with the
/// other mixed in, so short texts spread over all 16 bytes.
fn derive(text: &[u8]) -> W3cTraceId {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut hash = OFFSET;
    for &byte in text {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    let (high, low) = ((hash >> 64) as u64, hash as u64);
    let low = mix64(low ^ high.rotate_left(32));
    let high = mix64(high ^ low);
    let bytes = ((u128::from(high) << 64) | u128::from(low)).to_be_bytes();
    // All zeros would be invalid; the offset basis stands in for that 2^-128 case.
    W3cTraceId::from_bytes(bytes).unwrap_or(W3cTraceId(OFFSET.to_be_bytes()))
}

/// MurmurHash3's 64-bit finalizer.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase.
fn format_uuid(bytes: &[u8; 16]) -> [u8; 36] {
    let hex: [u8; 32] = w3c::encode_hex(bytes);
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_length_and_characters() {
        assert_eq!(check(b"", 8), Err(InvalidTraceId::Empty));
        assert_eq!(check(b"123456789", 8), Err(InvalidTraceId::TooLong));
        assert_eq!(check(b"12345678", 8), Ok(()));
        assert_eq!(check(b"a b", 8), Err(InvalidTraceId::NotVisibleAscii));
        assert_eq!(check(b"a\x7f", 8), Err(InvalidTraceId::NotVisibleAscii));
        assert_eq!(
            check("é".as_bytes(), 8),
            Err(InvalidTraceId::NotVisibleAscii)
        );
    }

    #[test]
    fn hex_shaped_ids_are_their_own_trace_id() {
        let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
        let id = TraceId::parse(hex).unwrap();
        assert_eq!(id.w3c_trace_id().to_string(), hex);
        assert_eq!(id.as_str(), hex);
        let upper = TraceId::parse("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap();
        assert_eq!(upper.w3c_trace_id().to_string(), hex);
        assert_eq!(
            upper.as_str(),
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "echoed as received"
        );
        // Misplaced dashes and all-zero ids fall back to derivation.
        let odd = TraceId::parse("4bf92f3577b3-4da6-a3ce-929d0e0e4736").unwrap();
        assert_ne!(odd.w3c_trace_id().to_string(), hex);
        let zero = TraceId::parse("00000000000000000000000000000000").unwrap();
        assert_ne!(zero.w3c_trace_id().to_bytes(), [0; 16]);
    }

    #[test]
    fn derivation_is_stable_and_spreads() {
        // Pinned: other services (and other releases) must derive the same trace-id.
        assert_eq!(
            derive(b"abc-123").to_string(),
            derive(b"abc-123").to_string()
        );
        let pinned = derive(b"abc-123").to_string();
        assert_eq!(pinned.len(), 32);
        assert_ne!(derive(b"abc-123"), derive(b"abc-124"));
        // Neighbouring inputs differ in the low bytes too (W3C samplers read the right end).
        let a = derive(b"req-1").to_bytes();
        let b = derive(b"req-2").to_bytes();
        assert_ne!(a[8..], b[8..]);
        assert_ne!(a[..8], b[..8]);
    }

    #[test]
    fn generated_ids_format_without_a_string() {
        let id = TraceId::from_uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.as_str(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(id.to_header_value(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        let hex = TraceId::from_w3c(id.w3c_trace_id());
        assert_eq!(hex.as_str(), "0123456789abcdef0123456789abcdef");
        let nil = TraceId::from_uuid(0);
        assert_eq!(nil.as_str(), "00000000-0000-0000-0000-000000000000");
        assert_ne!(nil.w3c_trace_id().to_bytes(), [0; 16]);
    }

    #[test]
    fn stays_small_to_move_through_the_task_local() {
        assert!(
            std::mem::size_of::<TraceId>() <= 72,
            "{}",
            std::mem::size_of::<TraceId>()
        );
    }

    #[test]
    fn equality_follows_text_and_trace() {
        let a = TraceId::parse("abc").unwrap();
        assert_eq!(a, TraceId::parse("abc").unwrap());
        assert_ne!(a, TraceId::parse("abd").unwrap());
        let moved = a.clone().with_trace_context(derive(b"other"), 0);
        assert_ne!(a, moved);
    }
}
