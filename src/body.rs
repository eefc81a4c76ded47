//! The response-body observer: one wrapper, one scan, every listener.
//!
//! Streams are where LLM calls fail: a `200 OK` head says little about an answer that arrives
//! over minutes. Several layers care about what happens *inside* a response body:
//!
//! | layer | moments it listens for |
//! |---|---|
//! | circuit breaker | first token (slow-to-first-token), the end and how it ended (truncated, malformed, `insufficient_system_resource`), a body error |
//! | metrics | first token (TTFT), each chunk, usage on the final chunk, the end |
//! | retry | the first delivered frame (the commit point: after it nothing is retried) |
//! | timeouts | first token (keep-alives do not count), the gap between chunks |
//! | token limiter | usage on the final chunk (reconcile the reservation against the real count) |
//!
//! [`ObservedBody`] wraps any [`http_body::Body`] and reports these moments as
//! [`BodyEvent`]s to a [`BodyObserver`]. It never buffers and never changes what the reader
//! gets: every frame is passed on as it arrives and only *looked at* on the way. One wrapper
//! serves several listeners with one scan: tuples of observers are observers, so
//! `ObservedBody::new(body, format, (breaker, metrics))` parses the stream once for both.
//!
//! # What is reported, and when
//!
//! The body's format ([`BodyFormat`]) decides how frames are scanned:
//!
//! - **SSE** (`text/event-stream`): the frames run through the crate's [`SseDecoder`]. A
//!   `data:` event is a [`BodyEvent::Chunk`] (the first one is also
//!   [`BodyEvent::FirstToken`]); a `: keep-alive` comment is a [`BodyEvent::KeepAlive`] and is
//!   **not** a token. Each chunk is checked with a lean parse that keeps only `finish_reason`
//!   and `usage` (every other field is skipped, not built); `usage` is reported as
//!   [`BodyEvent::Usage`]. A chunk that is not JSON marks the stream
//!   [`StreamFailure::Malformed`]; a body that ends without `data: [DONE]` is
//!   [`StreamFailure::Truncated`]. DeepSeek's chunks take a one-pass scan that gives serde's
//!   answer or leaves the chunk to serde. A chunk is read when the body's reader asks for the
//!   next frame (or at the end, an error or a drop, always before the terminal event), so
//!   when that reader is a [`ChatStream`], which leaves what its own parse found, no layer
//!   scans it at all; and the same chunk or frame read again on the same thread (by the next
//!   observing layer of the same response) is neither decoded nor scanned again.
//! - **JSON** (anything else, e.g. a non-streaming completion): each data frame is a
//!   [`BodyEvent::Chunk`]; the first non-whitespace byte is the first token (DeepSeek sends
//!   blank lines while a request waits, like keep-alives); the end is the body's end. The body
//!   is not parsed: `finish_reason: insufficient_system_resource` is found by a byte search
//!   of each frame (a mention split across two frames is missed), and usage is not reported
//!   (the reader parses the body anyway).
//!
//! Every body ends in exactly one terminal event: [`BodyEvent::End`] when the inner body
//! reports its end, [`BodyEvent::Error`] when it fails, or [`BodyEvent::Dropped`] when the
//! reader drops it first (a client that went away, or [`ChatStream`] stopping after
//! `[DONE]`). [`BodyEnd`] says what was seen so far, and [`BodyEnd::outcome`] turns it into
//! an [`Outcome`] through the caller's [`Classify`], so "how did this body end" has one answer
//! across the crate.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
//! use tower_deepseek::classify::{DeepSeekClassifier, Outcome};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let sse = Full::new(Bytes::from_static(
//!     b": keep-alive\n\n\
//!       data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
//!       data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
//!       data: [DONE]\n\n",
//! ));
//! let mut seen = Vec::new();
//! let body = ObservedBody::new(sse, BodyFormat::Sse, |event: BodyEvent<'_>| {
//!     seen.push(match event {
//!         BodyEvent::FirstFrame => "first frame".to_owned(),
//!         BodyEvent::KeepAlive => "keep-alive".to_owned(),
//!         BodyEvent::FirstToken => "first token".to_owned(),
//!         BodyEvent::Chunk(_) => "chunk".to_owned(),
//!         BodyEvent::Usage(usage) => format!("usage {}", usage.total_tokens),
//!         BodyEvent::End(end) => format!("end {}", end.outcome(&DeepSeekClassifier)),
//!         other => format!("{other:?}"),
//!     });
//! });
//! let bytes = body.collect().await.unwrap().to_bytes();
//! assert!(bytes.ends_with(b"data: [DONE]\n\n")); // passed through untouched
//! assert_eq!(
//!     seen,
//!     ["first frame", "keep-alive", "first token", "chunk", "chunk", "usage 4", "end success"]
//! );
//! # });
//! ```
//!
//! [`SseDecoder`]: crate::deepseek::sse::SseDecoder
//! [`ChatStream`]: crate::deepseek::sse::ChatStream

use std::borrow::Cow;
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde::de::{IgnoredAny, SeqAccess, Visitor};

use crate::classify::{Classify, Observation, Outcome, StreamFailure};
use crate::deepseek::sse::{SseDecoder, SseEvent};
use crate::deepseek::types::Usage;

/// The `finish_reason` DeepSeek uses when it runs out of capacity mid-generation.
const INSUFFICIENT: &str = "insufficient_system_resource";

/// How a body's bytes are scanned.
///
/// ```
/// use tower_deepseek::body::BodyFormat;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("content-type", "text/event-stream; charset=utf-8".parse().unwrap());
/// assert_eq!(BodyFormat::from_headers(&headers), BodyFormat::Sse);
/// assert_eq!(BodyFormat::from_headers(&http::HeaderMap::new()), BodyFormat::Json);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyFormat {
    /// Server-sent events (`text/event-stream`): chunks are `data:` events.
    Sse,
    /// A whole JSON document (or any other non-SSE body): chunks are data frames.
    Json,
}

impl BodyFormat {
    /// [`BodyFormat::Sse`] when `content-type` is `text/event-stream`, otherwise
    /// [`BodyFormat::Json`].
    pub fn from_headers(headers: &HeaderMap) -> BodyFormat {
        // On the bytes: every response of every layer asks, and `to_str` would first check all
        // of them. A valid header value holds no whitespace but spaces and tabs, so trimming
        // those is `trim_start` on the text; the text check stays for a value that matches.
        let is_sse = content_type(headers).is_some_and(|value| {
            let bytes = value.as_bytes();
            let start = bytes
                .iter()
                .position(|b| *b != b' ' && *b != b'\t')
                .unwrap_or(bytes.len());
            bytes[start..]
                .get(..17)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"text/event-stream"))
                && value.to_str().is_ok()
        });
        if is_sse {
            BodyFormat::Sse
        } else {
            BodyFormat::Json
        }
    }
}

/// The first `content-type` value. A response with a few headers is scanned by name, which
/// costs a comparison of two bytes a header; a larger one is looked up, which hashes the
/// name and probes the map.
#[inline]
fn content_type(headers: &HeaderMap) -> Option<&http::HeaderValue> {
    const SCAN: usize = 4;
    if headers.len() <= SCAN {
        headers
            .iter()
            .find_map(|(name, value)| (name == http::header::CONTENT_TYPE).then_some(value))
    } else {
        headers.get(http::header::CONTENT_TYPE)
    }
}

/// What was seen of a body when it ended or was dropped.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
/// use tower_deepseek::classify::{DeepSeekClassifier, Outcome, StreamFailure};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut outcome = None;
/// // A stream that ends without `data: [DONE]`.
/// let cut = Full::new(Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
/// let body = ObservedBody::new(cut, BodyFormat::Sse, |event: BodyEvent<'_>| {
///     if let BodyEvent::End(end) = event {
///         outcome = Some(end.outcome(&DeepSeekClassifier));
///     }
/// });
/// body.collect().await.unwrap();
/// assert_eq!(outcome, Some(Outcome::Stream(StreamFailure::Truncated)));
/// # });
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyEnd<'a> {
    /// How the body was scanned.
    pub format: BodyFormat,
    /// `data: [DONE]` was seen (SSE only; always `false` for JSON).
    pub done: bool,
    /// The last `finish_reason` seen, if any.
    pub finish_reason: Option<&'a str>,
    /// A failure found by the scan: a malformed chunk, an over-long line, or (at the end) a
    /// stream without `[DONE]`.
    pub failure: Option<StreamFailure>,
    /// How many chunks (SSE data events, or JSON data frames) passed, counted up to
    /// `u32::MAX`.
    pub chunks: u64,
}

impl BodyEnd<'_> {
    /// How the body ended, in the crate's one vocabulary: the scan's failure if it found one,
    /// otherwise what `classifier` says of [`Observation::End`] with the last `finish_reason`
    /// (so `insufficient_system_resource` is a [`StreamFailure`] under the default table).
    pub fn outcome(&self, classifier: &(impl Classify + ?Sized)) -> Outcome {
        match self.failure {
            Some(failure) => Outcome::Stream(failure),
            None => classifier.classify(Observation::End {
                finish_reason: self.finish_reason,
            }),
        }
    }

    /// Whether the body was read to a verdict: `[DONE]` seen, a `finish_reason` seen, or a
    /// failure found. A body dropped before any of these tells nothing about the upstream.
    pub fn is_conclusive(&self) -> bool {
        self.done || self.finish_reason.is_some() || self.failure.is_some()
    }
}

/// One moment in a response body's life. See the [module docs](self) for when each fires.
#[non_exhaustive]
#[derive(Clone, Copy)]
pub enum BodyEvent<'a> {
    /// The first data frame with at least one byte arrived (the commit point for a retry).
    FirstFrame,
    /// The first token arrived: the first SSE `data:` event, or the first non-whitespace byte
    /// of a JSON body. Keep-alive comments and blank lines are not tokens.
    FirstToken,
    /// An SSE comment (`: keep-alive`): the upstream is alive but has produced nothing.
    KeepAlive,
    /// One chunk passed: an SSE event's data, or a JSON body's data frame.
    Chunk(&'a [u8]),
    /// A chunk carried token usage (the final chunk, with `stream_options.include_usage`).
    Usage(&'a Usage),
    /// The inner body reported its end (terminal).
    End(&'a BodyEnd<'a>),
    /// The inner body failed (terminal). Classify it with [`Observation::Error`].
    Error(&'a (dyn StdError + 'static)),
    /// The body was dropped before its end (terminal).
    Dropped(&'a BodyEnd<'a>),
}

impl fmt::Debug for BodyEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyEvent::FirstFrame => f.write_str("FirstFrame"),
            BodyEvent::FirstToken => f.write_str("FirstToken"),
            BodyEvent::KeepAlive => f.write_str("KeepAlive"),
            BodyEvent::Chunk(data) => write!(f, "Chunk({} bytes)", data.len()),
            BodyEvent::Usage(usage) => f.debug_tuple("Usage").field(usage).finish(),
            BodyEvent::End(end) => f.debug_tuple("End").field(end).finish(),
            BodyEvent::Error(error) => write!(f, "Error({error})"),
            BodyEvent::Dropped(end) => f.debug_tuple("Dropped").field(end).finish(),
        }
    }
}

/// Listens to a body's [`BodyEvent`]s.
///
/// Implemented by closures `FnMut(BodyEvent<'_>)`, by `()` (listens to nothing), by
/// `Option<O>` and by tuples of observers (each hears every event, in order), so one
/// [`ObservedBody`] serves several layers with one scan.
///
/// ```
/// use tower_deepseek::body::{BodyEvent, BodyObserver};
///
/// /// Counts keep-alives.
/// #[derive(Default)]
/// struct KeepAlives(u32);
///
/// impl BodyObserver for KeepAlives {
///     fn observe(&mut self, event: BodyEvent<'_>) {
///         if let BodyEvent::KeepAlive = event {
///             self.0 += 1;
///         }
///     }
/// }
///
/// let mut both = (KeepAlives::default(), KeepAlives::default());
/// both.observe(BodyEvent::KeepAlive);
/// assert_eq!((both.0.0, both.1.0), (1, 1));
/// ```
pub trait BodyObserver {
    /// Hears one event.
    fn observe(&mut self, event: BodyEvent<'_>);

    /// `true` once the observer needs no more events: when every observer of a body is done,
    /// the body stops scanning and only passes frames on. Terminal events are still delivered.
    fn is_done(&self) -> bool {
        false
    }
}

impl BodyObserver for () {
    fn observe(&mut self, _event: BodyEvent<'_>) {}

    fn is_done(&self) -> bool {
        true
    }
}

impl<F> BodyObserver for F
where
    F: FnMut(BodyEvent<'_>),
{
    fn observe(&mut self, event: BodyEvent<'_>) {
        self(event)
    }
}

impl<O: BodyObserver> BodyObserver for Option<O> {
    fn observe(&mut self, event: BodyEvent<'_>) {
        if let Some(observer) = self {
            observer.observe(event);
        }
    }

    fn is_done(&self) -> bool {
        self.as_ref().is_none_or(BodyObserver::is_done)
    }
}

macro_rules! tuple_observer {
    ($($name:ident . $index:tt),+) => {
        impl<$($name: BodyObserver),+> BodyObserver for ($($name,)+) {
            fn observe(&mut self, event: BodyEvent<'_>) {
                $(self.$index.observe(event);)+
            }

            fn is_done(&self) -> bool {
                $(self.$index.is_done())&&+
            }
        }
    };
}

tuple_observer!(A.0, B.1);
tuple_observer!(A.0, B.1, C.2);
tuple_observer!(A.0, B.1, C.2, D.3);

/// The `finish_reason`s DeepSeek sends: a scan keeps one of these as its index, no allocation.
pub(crate) const KNOWN_FINISH_REASONS: [&str; 5] = [
    "stop",
    "length",
    "content_filter",
    "tool_calls",
    INSUFFICIENT,
];

/// What the scan knows so far. Kept to 16 bytes: it is in every observed body, and every layer
/// above moves the response that holds it (five observed bodies deep through the gateway).
#[derive(Debug)]
struct ScanState {
    /// A `finish_reason` not in [`KNOWN_FINISH_REASONS`] (rare), behind a thin pointer.
    other_reason: Option<Box<Box<str>>>,
    /// Chunks seen, saturating (a stream would need years to reach the end of a `u32`).
    chunks: u32,
    /// 1 + the index in [`KNOWN_FINISH_REASONS`] of the last known `finish_reason`; 0 if none
    /// (or if the last one is `other_reason`).
    known_reason: u8,
    failure: Option<StreamFailure>,
    flags: u8,
    format: BodyFormat,
}

/// The first data frame was seen.
const FIRST_FRAME: u8 = 1;
/// The first token was seen.
const FIRST_TOKEN: u8 = 1 << 1;
/// `data: [DONE]` was seen.
const DONE: u8 = 1 << 2;
/// A terminal event has been delivered.
const TERMINATED: u8 = 1 << 3;

impl ScanState {
    fn new(format: BodyFormat) -> ScanState {
        ScanState {
            other_reason: None,
            chunks: 0,
            known_reason: 0,
            failure: None,
            flags: 0,
            format,
        }
    }

    #[inline(always)]
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline(always)]
    fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }

    fn count_chunk(&mut self) {
        self.chunks = self.chunks.saturating_add(1);
    }

    fn set_finish_reason(&mut self, reason: &str) {
        match KNOWN_FINISH_REASONS
            .iter()
            .position(|known| *known == reason)
        {
            Some(index) => {
                // Under 256 entries, so the index fits.
                self.known_reason = index as u8 + 1;
                self.other_reason = None;
            }
            None => {
                self.known_reason = 0;
                self.other_reason = Some(Box::new(reason.into()));
            }
        }
    }

    fn finish_reason(&self) -> Option<&str> {
        match self.known_reason {
            0 => self.other_reason.as_deref().map(|reason| &**reason),
            known => KNOWN_FINISH_REASONS.get(usize::from(known) - 1).copied(),
        }
    }

    #[inline]
    fn end(&self) -> BodyEnd<'_> {
        BodyEnd {
            format: self.format,
            done: self.has(DONE),
            finish_reason: self.finish_reason(),
            failure: self.failure,
            chunks: u64::from(self.chunks),
        }
    }
}

pin_project! {
    /// A response body that reports what passes through it to a [`BodyObserver`], without
    /// buffering or changing it. See the [module docs](self).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_deepseek::body::{BodyEvent, BodyFormat, ObservedBody};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut first_token = false;
    /// let json = Full::new(Bytes::from_static(b"\n\n{\"choices\":[]}"));
    /// let body = ObservedBody::new(json, BodyFormat::Json, |event: BodyEvent<'_>| {
    ///     first_token |= matches!(event, BodyEvent::FirstToken);
    /// });
    /// body.collect().await.unwrap();
    /// assert!(first_token);
    /// # });
    /// ```
    pub struct ObservedBody<B, O: BodyObserver> {
        #[pin]
        inner: B,
        observer: O,
        // Boxed: only SSE bodies need one, and it keeps the wrapper small to move.
        decoder: Option<Box<SseReading>>,
        scan: ScanState,
    }

    impl<B, O: BodyObserver> PinnedDrop for ObservedBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !this.scan.has(TERMINATED) {
                read_pending(this.decoder, this.scan, this.observer);
                this.scan.set(TERMINATED);
                let end = this.scan.end();
                this.observer.observe(BodyEvent::Dropped(&end));
            }
        }
    }
}

impl<B, O: BodyObserver> ObservedBody<B, O> {
    /// Wraps `inner`, scanning it as `format` and reporting to `observer`.
    pub fn new(inner: B, format: BodyFormat, observer: O) -> ObservedBody<B, O> {
        ObservedBody {
            inner,
            observer,
            decoder: None,
            scan: ScanState::new(format),
        }
    }

    /// Wraps `inner` for an observer that has already heard everything it needs, terminal
    /// events included (a layer that judged the call before its body): the body only passes
    /// frames on, and its end or drop reports nothing.
    pub(crate) fn finished(inner: B, observer: O) -> ObservedBody<B, O> {
        ObservedBody {
            inner,
            observer,
            decoder: None,
            scan: ScanState {
                flags: TERMINATED,
                ..ScanState::new(BodyFormat::Json)
            },
        }
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B, O: BodyObserver> fmt::Debug for ObservedBody<B, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedBody")
            .field("format", &self.scan.format)
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

impl<B, O> Body for ObservedBody<B, O>
where
    B: Body,
    B::Data: 'static,
    B::Error: StdError + 'static,
    O: BodyObserver,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // The reader asks for more, so it is done with the last chunk: read it now (see
        // `SseReading`; a terminated body has none waiting).
        read_pending(this.decoder, this.scan, this.observer);
        let polled = ready!(this.inner.poll_frame(cx));
        if this.scan.has(TERMINATED) {
            return Poll::Ready(polled);
        }
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && data.has_remaining()
                {
                    if !this.scan.has(FIRST_FRAME) {
                        this.scan.set(FIRST_FRAME);
                        this.observer.observe(BodyEvent::FirstFrame);
                    }
                    if !this.observer.is_done() {
                        scan_frame(this.decoder, this.scan, this.observer, data);
                    }
                }
            }
            Some(Err(error)) => {
                this.scan.set(TERMINATED);
                this.observer.observe(BodyEvent::Error(error));
            }
            None => {
                if this.scan.format == BodyFormat::Sse && !this.observer.is_done() {
                    finish_sse(this.decoder, this.scan, this.observer);
                }
                read_pending(this.decoder, this.scan, this.observer);
                this.scan.set(TERMINATED);
                let end = this.scan.end();
                this.observer.observe(BodyEvent::End(&end));
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A frame's bytes as `Bytes`: no copy when the frame is already `Bytes` (hyper's and
/// `http-body-util`'s bodies), one copy of its segments otherwise.
fn frame_bytes<D: Buf + 'static>(data: &D) -> Bytes {
    if let Some(bytes) = (data as &dyn std::any::Any).downcast_ref::<Bytes>() {
        return bytes.clone();
    }
    if data.chunk().len() == data.remaining() {
        return Bytes::copy_from_slice(data.chunk());
    }
    let mut slices = [std::io::IoSlice::new(&[]); 16];
    let count = data.chunks_vectored(&mut slices);
    let mut bytes = Vec::with_capacity(data.remaining());
    for slice in &slices[..count] {
        bytes.extend_from_slice(slice);
    }
    Bytes::from(bytes)
}

fn scan_frame<D: Buf + 'static, O: BodyObserver>(
    decoder: &mut Option<Box<SseReading>>,
    scan: &mut ScanState,
    observer: &mut O,
    data: &D,
) {
    match scan.format {
        BodyFormat::Json => {
            let bytes = data.chunk();
            if !scan.has(FIRST_TOKEN) && bytes.iter().any(|b| !b.is_ascii_whitespace()) {
                scan.set(FIRST_TOKEN);
                observer.observe(BodyEvent::FirstToken);
            }
            scan.count_chunk();
            observer.observe(BodyEvent::Chunk(bytes));
            // An observer done with the body at its first token (a timeout, a retry that
            // holds only to it) needs no search of the frame that holds it: as for the frames
            // after, its end then reports what it scanned.
            if !observer.is_done() && mentions_insufficient(bytes) {
                scan.set_finish_reason(INSUFFICIENT);
            }
        }
        BodyFormat::Sse => {
            let reading = decoder.get_or_insert_with(SseReading::new);
            reading.decoder.push(frame_bytes(data));
            loop {
                match reading.decoder.next_event() {
                    Ok(Some(event)) => sse_event(event, &mut reading.pending, scan, observer),
                    Ok(None) => break,
                    Err(error) => {
                        read_waiting(&mut reading.pending, scan, observer);
                        let failure = match error.kind() {
                            crate::ErrorKind::Stream(failure) => failure,
                            _ => StreamFailure::Malformed,
                        };
                        scan.failure.get_or_insert(failure);
                        break;
                    }
                }
            }
        }
    }
}

/// Whether `bytes` hold `insufficient_system_resource`. Every mention has the `y` of
/// `system` 14 bytes in, so the search runs for that one byte (the fastest search there is,
/// many bytes an instruction) and compares the whole name only where a `y` is: a JSON answer's
/// own keys and values have one (`system_fingerprint`), and prose about one in fifty bytes,
/// where a search for the whole name costs about as much per byte anyway.
fn mentions_insufficient(bytes: &[u8]) -> bool {
    const Y: usize = 14;
    const _: () = assert!(INSUFFICIENT.as_bytes()[Y] == b'y');
    static SEARCH: LazyLock<ByteSearch> = LazyLock::new(|| ByteSearch::new(b'y'));
    let search = &*SEARCH;
    let mut from = 0;
    while let Some(found) = bytes.get(from..).and_then(|rest| search.find(rest)) {
        let at = from + found;
        if at >= Y
            && bytes.get(at - Y..at - Y + INSUFFICIENT.len()) == Some(INSUFFICIENT.as_bytes())
        {
            return true;
        }
        from = at + 1;
    }
    false
}

/// A search for one byte, forwards or backwards. On x86-64 with AVX2 it calls `memchr`'s AVX2
/// searcher directly: `memchr`'s generic entry points pick it through a function pointer and
/// two more calls on every search, which costs about as much as searching a short body.
/// Elsewhere it is `memchr`'s generic entry points.
pub(crate) struct ByteSearch {
    byte: u8,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::One>,
}

impl ByteSearch {
    /// A search for `byte` (build it once: it checks the CPU).
    pub(crate) fn new(byte: u8) -> ByteSearch {
        ByteSearch {
            byte,
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::One::new(byte),
        }
    }

    /// The first `byte` in `haystack`.
    #[inline]
    pub(crate) fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(one) = &self.avx2 {
            return one.find(haystack);
        }
        memchr::memchr(self.byte, haystack)
    }

    /// The last `byte` in `haystack`.
    #[inline]
    pub(crate) fn rfind(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(one) = &self.avx2 {
            return one.rfind(haystack);
        }
        memchr::memrchr(self.byte, haystack)
    }
}

fn finish_sse<O: BodyObserver>(
    decoder: &mut Option<Box<SseReading>>,
    scan: &mut ScanState,
    observer: &mut O,
) {
    if scan.failure.is_some() || scan.has(DONE) {
        return;
    }
    let reading = decoder.get_or_insert_with(SseReading::new);
    loop {
        match reading.decoder.finish() {
            Ok(Some(event)) => sse_event(event, &mut reading.pending, scan, observer),
            Ok(None) => break,
            Err(error) => {
                read_waiting(&mut reading.pending, scan, observer);
                let failure = match error.kind() {
                    crate::ErrorKind::Stream(failure) => failure,
                    _ => StreamFailure::Truncated,
                };
                scan.failure.get_or_insert(failure);
                break;
            }
        }
    }
}

/// An SSE body's decoder, and the chunk whose reading waits for the body's reader to ask for
/// the next frame (or for the body's end): by then a typed client reading this body
/// ([`ChatStream`](crate::deepseek::ChatStream)) has parsed the chunk and left what it found
/// in `lean_chunk`'s memory, and every layer observing the body reads it from there. What a
/// chunk says (its `finish_reason`, its `usage`, whether it is JSON) matters at the body's
/// end, which always reads a waiting chunk first; the moments (first token, each chunk) are
/// reported as the frame passes.
struct SseReading {
    decoder: SseDecoder,
    pending: Option<Bytes>,
}

impl SseReading {
    fn new() -> Box<SseReading> {
        Box::new(SseReading {
            // The first layer to see a frame leaves it for the others.
            decoder: SseDecoder::new().recording(),
            pending: None,
        })
    }
}

/// Reads the chunk waiting in `decoder`, if any. Inlined: on every poll of every observed
/// body, and a JSON body (no decoder) pays one test for it.
#[inline(always)]
fn read_pending<O: BodyObserver>(
    decoder: &mut Option<Box<SseReading>>,
    scan: &mut ScanState,
    observer: &mut O,
) {
    if let Some(reading) = decoder
        && reading.pending.is_some()
    {
        read_waiting(&mut reading.pending, scan, observer);
    }
}

/// Reads the waiting chunk, if any: before the next chunk, a decoder error or the end, so
/// what the chunks say comes in the order they were sent.
#[inline(never)]
fn read_waiting<O: BodyObserver>(
    pending: &mut Option<Bytes>,
    scan: &mut ScanState,
    observer: &mut O,
) {
    if let Some(data) = pending.take() {
        read_chunk(&data, scan, observer);
    }
}

fn sse_event<O: BodyObserver>(
    event: SseEvent,
    pending: &mut Option<Bytes>,
    scan: &mut ScanState,
    observer: &mut O,
) {
    match event {
        SseEvent::KeepAlive => observer.observe(BodyEvent::KeepAlive),
        // An empty `data:` event carries nothing: treat it like a keep-alive.
        SseEvent::Data(data) if data.is_empty() => observer.observe(BodyEvent::KeepAlive),
        SseEvent::Data(data) => {
            if !scan.has(FIRST_TOKEN) {
                scan.set(FIRST_TOKEN);
                observer.observe(BodyEvent::FirstToken);
            }
            read_waiting(pending, scan, observer);
            scan.count_chunk();
            observer.observe(BodyEvent::Chunk(&data));
            *pending = Some(data);
        }
        SseEvent::Done => scan.set(DONE),
    }
}

/// What a chunk says: its `finish_reason`, its `usage`, and whether it is JSON at all.
fn read_chunk<O: BodyObserver>(data: &[u8], scan: &mut ScanState, observer: &mut O) {
    // DeepSeek's chunks take the one-pass scan (or its memory); serde decides the rest (a
    // `usage` with undocumented fields, an odd shape, invalid JSON), with the same answers.
    if let Some(read) = crate::lean_chunk::read(data) {
        if let Some(reason) = read.finish_reason {
            scan.set_finish_reason(reason);
        }
        if let Some(usage) = &read.usage {
            observer.observe(BodyEvent::Usage(usage));
        }
        return;
    }
    match serde_json::from_slice::<LeanChunk<'_>>(data) {
        Ok(chunk) => {
            if let Some(reason) = chunk.choices.0 {
                scan.set_finish_reason(&reason);
            }
            if let Some(usage) = &chunk.usage {
                observer.observe(BodyEvent::Usage(usage));
            }
        }
        Err(_) => {
            scan.failure.get_or_insert(StreamFailure::Malformed);
        }
    }
}

/// The two fields of a chunk the observer needs; everything else is skipped unbuilt.
#[derive(Deserialize)]
struct LeanChunk<'a> {
    #[serde(default, borrow)]
    choices: LastFinishReason<'a>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// The last non-null `finish_reason` of a `choices` array.
#[derive(Default)]
struct LastFinishReason<'a>(Option<Cow<'a, str>>);

#[derive(Deserialize)]
struct LeanChoice<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for LastFinishReason<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Choices<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Choices<'a> {
            type Value = LastFinishReason<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices or null")
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LastFinishReason(None))
            }

            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(LastFinishReason(None))
            }

            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_seq(self)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut last = None;
                while let Some(choice) = seq.next_element::<Option<LeanChoice<'de>>>()? {
                    if let Some(reason) = choice.and_then(|c| c.finish_reason) {
                        last = Some(reason);
                    }
                }
                Ok(LastFinishReason(last))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                // Not the expected shape, but valid JSON: nothing to learn from it.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LastFinishReason(None))
            }
        }
        deserializer.deserialize_option(Choices(std::marker::PhantomData))
    }
}

/// Frames a layer read ahead of the caller while it held a response back (the retry layer
/// until a first token, the hedge layer while its attempts raced), and how that read ended:
/// handed out before the rest of the body, unchanged.
pub(crate) struct ReadAhead<D, E> {
    // The first frame inline: a JSON answer is usually one or two frames, and a held one
    // then needs no allocation for its queue.
    first: Option<Frame<D>>,
    rest: VecDeque<Frame<D>>,
    pub(crate) error: Option<E>,
    pub(crate) ended: bool,
}

impl<D, E> ReadAhead<D, E> {
    /// These frames, in order, ahead of the rest of the body.
    pub(crate) fn new(mut frames: VecDeque<Frame<D>>) -> ReadAhead<D, E> {
        ReadAhead {
            first: frames.pop_front(),
            rest: frames,
            error: None,
            ended: false,
        }
    }

    /// The same frames, then `error` (if any), then the end if `ended`.
    pub(crate) fn ending(mut self, error: Option<E>, ended: bool) -> ReadAhead<D, E> {
        self.error = error;
        self.ended = ended;
        self
    }

    /// One more frame read ahead, after the others.
    pub(crate) fn push(&mut self, frame: Frame<D>) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// How many frames are waiting.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn pop(&mut self) -> Option<Frame<D>> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    /// The next frame: the ones read ahead, then the read's error or end, then `body`'s.
    pub(crate) fn poll_frame<B>(
        &mut self,
        body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<D>, E>>>
    where
        B: Body<Data = D, Error = E> + ?Sized,
    {
        if let Some(frame) = self.pop() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        body.poll_frame(cx)
    }

    pub(crate) fn is_end_stream<B: Body + ?Sized>(&self, body: &B) -> bool {
        self.len() == 0 && self.error.is_none() && (self.ended || body.is_end_stream())
    }

    pub(crate) fn size_hint<B: Body + ?Sized>(&self, body: &B) -> SizeHint {
        if self.len() == 0 && !self.ended {
            body.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::DeepSeekClassifier;
    use http_body_util::{BodyExt, Full, StreamBody};

    /// Frames read ahead come out in the order read (the first one is kept apart from the
    /// rest), then the read's error, then the end; the body is polled only after them.
    #[test]
    fn read_ahead_frames_come_out_in_order_then_the_error_then_the_end() {
        let frame = |text: &'static str| Frame::data(Bytes::from_static(text.as_bytes()));
        let mut ahead: ReadAhead<Bytes, std::io::Error> =
            ReadAhead::new(VecDeque::from([frame("a")]));
        ahead.push(frame("b"));
        ahead.push(frame("c"));
        assert_eq!(ahead.len(), 3);
        let mut ahead = ahead.ending(Some(std::io::Error::other("cut")), true);
        let mut body = std::pin::pin!(
            Full::new(Bytes::from_static(b"never read")).map_err(|never| match never {})
        );
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut seen = Vec::new();
        loop {
            match ahead.poll_frame(body.as_mut(), &mut cx) {
                Poll::Ready(Some(Ok(frame))) => seen.push(frame.into_data().unwrap()),
                Poll::Ready(Some(Err(error))) => seen.push(Bytes::from(error.to_string())),
                Poll::Ready(None) => break,
                Poll::Pending => unreachable!("everything is here"),
            }
        }
        assert_eq!(seen, ["a", "b", "c", "cut"]);
        assert!(ahead.is_end_stream(&*body));
        // Empty, it is the body.
        let mut empty: ReadAhead<Bytes, std::convert::Infallible> = ReadAhead::new(VecDeque::new());
        empty.push(frame("x"));
        let mut body = std::pin::pin!(Full::new(Bytes::from_static(b"y")));
        let mut next = || match empty.poll_frame(body.as_mut(), &mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap(),
            _ => unreachable!("two data frames"),
        };
        assert_eq!(next(), "x");
        assert_eq!(next(), "y");
    }

    fn events_of(format: BodyFormat, frames: &[&'static [u8]]) -> Vec<String> {
        let mut seen = Vec::new();
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = frames
            .iter()
            .map(|f| Ok(Frame::data(Bytes::from_static(f))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let observed = ObservedBody::new(body, format, |event: BodyEvent<'_>| {
            seen.push(match event {
                BodyEvent::End(end) => format!("end {}", end.outcome(&DeepSeekClassifier)),
                BodyEvent::Dropped(end) => format!("dropped {}", end.is_conclusive()),
                BodyEvent::Usage(usage) => format!("usage {}", usage.total_tokens),
                other => format!("{other:?}"),
            });
        });
        futures_executor(observed);
        seen
    }

    fn futures_executor<B: Body>(body: B)
    where
        B::Error: fmt::Debug,
    {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { body.collect().await.unwrap() });
    }

    #[test]
    fn json_first_token_skips_keep_alive_blank_lines_and_finds_insufficient_resource() {
        let seen = events_of(
            BodyFormat::Json,
            &[
                b"\n\n",
                b"{\"choices\":[{\"finish_reason\":\"insufficient_system_resource\"}]}",
            ],
        );
        assert_eq!(
            seen,
            [
                "FirstFrame",
                "Chunk(2 bytes)",
                "FirstToken",
                "Chunk(62 bytes)",
                "end stream_error"
            ]
        );
    }

    /// An observer done at the first token is not searched for (nor told of) a mention in
    /// the frame holding that token, as for the frames after it: when every observer is done
    /// the body only passes frames on. One still watching gets it.
    #[test]
    fn a_frame_is_not_searched_for_an_observer_done_at_its_first_token() {
        let body = || {
            Full::new(Bytes::from_static(
                b"{\"choices\":[{\"finish_reason\":\"insufficient_system_resource\"}]}",
            ))
        };
        struct UntilFirstToken<'a> {
            seen: bool,
            end: &'a std::cell::RefCell<Option<Outcome>>,
        }
        impl BodyObserver for UntilFirstToken<'_> {
            fn observe(&mut self, event: BodyEvent<'_>) {
                match event {
                    BodyEvent::FirstToken => self.seen = true,
                    BodyEvent::End(end) => {
                        *self.end.borrow_mut() = Some(end.outcome(&DeepSeekClassifier));
                    }
                    _ => {}
                }
            }
            fn is_done(&self) -> bool {
                self.seen
            }
        }
        let end = std::cell::RefCell::new(None);
        let done_early = UntilFirstToken {
            seen: false,
            end: &end,
        };
        futures_executor(ObservedBody::new(body(), BodyFormat::Json, done_early));
        assert_eq!(
            end.borrow().as_ref().map(ToString::to_string),
            Some("success".to_owned())
        );
        let mut watching = None;
        futures_executor(ObservedBody::new(
            body(),
            BodyFormat::Json,
            |event: BodyEvent<'_>| {
                if let BodyEvent::End(end) = event {
                    watching = Some(end.outcome(&DeepSeekClassifier));
                }
            },
        ));
        assert_eq!(
            watching.map(|outcome| outcome.to_string()),
            Some("stream_error".to_owned())
        );
    }

    #[test]
    fn insufficient_resource_is_found_anywhere_in_a_frame_among_other_ys() {
        let name = INSUFFICIENT.as_bytes();
        assert!(mentions_insufficient(name));
        assert!(!mentions_insufficient(&name[1..]));
        assert!(!mentions_insufficient(&name[..name.len() - 1]));
        assert!(!mentions_insufficient(b""));
        assert!(!mentions_insufficient(b"y"));
        // Lookalikes that share the `y` (and the bytes around it), many `y`s, and the name at
        // the very start, in the middle and at the very end.
        let yy =
            b"yyyy system_resource insufficient_system_resourc yesterday, by any key".repeat(9);
        assert!(!mentions_insufficient(&yy));
        for at in [0, 1, 13, 14, 15, 300, yy.len()] {
            let mut body = yy.clone();
            body.splice(at..at, name.iter().copied());
            assert!(mentions_insufficient(&body), "at {at}");
        }
    }

    /// The direct search finds what a plain scan finds, forwards and backwards, at every
    /// length around the vector widths and every position, with none, one or two matches.
    #[test]
    fn byte_search_agrees_with_a_plain_scan() {
        let search = ByteSearch::new(b'y');
        for len in 0..140 {
            for (first, second) in [
                (None, None),
                (Some(0), None),
                (Some(len / 3), Some(len / 2)),
            ]
            .into_iter()
            .chain((0..len).map(|at| (Some(at), None)))
            {
                let mut bytes = vec![b'x'; len];
                for at in [first, second].into_iter().flatten() {
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte = b'y';
                    }
                }
                let forward = bytes.iter().position(|b| *b == b'y');
                let backward = bytes.iter().rposition(|b| *b == b'y');
                assert_eq!(search.find(&bytes), forward, "{len} {first:?} {second:?}");
                assert_eq!(search.rfind(&bytes), backward, "{len} {first:?} {second:?}");
            }
        }
    }

    #[test]
    fn sse_frames_cut_anywhere_are_scanned_once() {
        let seen = events_of(
            BodyFormat::Sse,
            &[
                b": keep-al",
                b"ive\n\ndata: {\"choices\":[],\"usa",
                b"ge\":{\"total_tokens\":9}}\n\ndata: [DO",
                b"NE]\n\n",
            ],
        );
        assert_eq!(
            seen,
            [
                "FirstFrame",
                "KeepAlive",
                "FirstToken",
                "Chunk(41 bytes)",
                "usage 9",
                "end success"
            ]
        );
    }

    #[test]
    fn sse_without_done_is_truncated_and_bad_json_is_malformed() {
        let seen = events_of(BodyFormat::Sse, &[b"data: {\"choices\":[]}\n\n"]);
        assert_eq!(seen.last().unwrap(), "end stream_error");
        let mut ends = Vec::new();
        let bodies: [&'static [u8]; 2] = [b"data: {oops\n\ndata: [DONE]\n\n", b"data: {}\n\n"];
        for frame in bodies {
            let body = Full::new(Bytes::from_static(frame));
            let observed = ObservedBody::new(body, BodyFormat::Sse, |event: BodyEvent<'_>| {
                if let BodyEvent::End(end) = event {
                    ends.push((end.failure, end.done));
                }
            });
            futures_executor(observed);
        }
        assert_eq!(
            ends,
            [
                (Some(StreamFailure::Malformed), true),
                (Some(StreamFailure::Truncated), false)
            ]
        );
    }

    /// A chunk is read when the body's reader asks for the next frame, yet what it says keeps
    /// its place: its usage comes before the next chunk and before any end, a malformed chunk
    /// is the stream's failure even when the body then ends without `[DONE]` or breaks an SSE
    /// rule, and a body dropped after the usage chunk has reported it.
    #[test]
    fn a_chunk_read_late_keeps_its_place_among_the_events() {
        const USAGE: &[u8] =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n";
        let seen = events_of(
            BodyFormat::Sse,
            &[
                b"data: {\"choices\":[{\"finish_reason\":\"stop\"}]}\n\n",
                USAGE,
                b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
            ],
        );
        let at = |name: &str| seen.iter().position(|event| event.starts_with(name));
        assert_eq!(
            at("usage 3").map(|i| i + 1),
            seen.iter().rposition(|e| e.starts_with("Chunk"))
        );
        assert_eq!(seen.last().unwrap(), "end success", "{seen:?}");

        let mut ends = Vec::new();
        let mut too_long = b"data: {oops\n\ndata: ".to_vec();
        too_long.resize(
            too_long.len() + crate::deepseek::DEFAULT_MAX_LINE_LEN + 1,
            b'x',
        );
        let bodies = [
            Bytes::from_static(b"data: {oops\n\n"),
            Bytes::from_static(b"data: {oops\n\ndata: {\"choices\":[]}\n\n\xEF"),
            Bytes::from(too_long),
        ];
        for frame in bodies {
            let body = Full::new(frame);
            let observed = ObservedBody::new(body, BodyFormat::Sse, |event: BodyEvent<'_>| {
                if let BodyEvent::End(end) = event {
                    ends.push(end.failure);
                }
            });
            futures_executor(observed);
        }
        assert_eq!(ends, [Some(StreamFailure::Malformed); 3]);

        // Dropped after the usage chunk, before `[DONE]`: the usage was reported first.
        let mut seen = Vec::new();
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Ok(Frame::data(Bytes::from_static(USAGE)))];
        let mut observed = Box::pin(ObservedBody::new(
            StreamBody::new(futures_util::StreamExt::chain(
                futures_util::stream::iter(frames),
                futures_util::stream::pending(),
            )),
            BodyFormat::Sse,
            |event: BodyEvent<'_>| {
                seen.push(match event {
                    BodyEvent::Usage(usage) => format!("usage {}", usage.total_tokens),
                    BodyEvent::Dropped(_) => "dropped".to_owned(),
                    _ => String::new(),
                })
            },
        ));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(
            observed.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        drop(observed);
        seen.retain(|event| !event.is_empty());
        assert_eq!(seen, ["usage 3", "dropped"]);
    }

    #[test]
    fn body_errors_and_early_drops_are_terminal_events() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        let mut outcomes = Vec::new();
        let body = ObservedBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            BodyFormat::Sse,
            |event: BodyEvent<'_>| match event {
                BodyEvent::Error(error) => {
                    outcomes.push(DeepSeekClassifier.classify(Observation::Error(error)))
                }
                BodyEvent::Dropped(_) | BodyEvent::End(_) => panic!("one terminal event only"),
                _ => {}
            },
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(runtime.block_on(body.collect()).is_err());
        assert_eq!(
            outcomes,
            [Outcome::Network(crate::classify::NetworkFailure::Reset)]
        );

        let mut dropped = 0;
        let body = ObservedBody::new(
            Full::new(Bytes::from_static(b"x")),
            BodyFormat::Json,
            |event: BodyEvent<'_>| {
                if let BodyEvent::Dropped(end) = event {
                    assert!(!end.is_conclusive());
                    dropped += 1;
                }
            },
        );
        drop(body);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn tuples_hear_every_event_and_stop_scanning_when_all_are_done() {
        let mut first = 0;
        let mut second = 0;
        {
            let mut both = (
                |_: BodyEvent<'_>| first += 1,
                Some(|_: BodyEvent<'_>| second += 1),
            );
            both.observe(BodyEvent::KeepAlive);
            assert!(!both.is_done());
        }
        assert_eq!((first, second), (1, 1));
        assert!(((), None::<()>).is_done());
    }

    /// The last `finish_reason` of a stream is the one its end reports, whether DeepSeek's own
    /// (kept as a table index) or any other (kept whole), and a later one replaces an earlier
    /// one of the other kind.
    #[tokio::test]
    async fn the_last_finish_reason_wins_known_or_not() {
        let stream = |reasons: &[&str]| {
            let mut text = String::new();
            for reason in reasons {
                text.push_str(&format!(
                    "data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
                ));
            }
            text.push_str("data: [DONE]\n\n");
            Full::new(Bytes::from(text))
        };
        for reasons in [
            &["stop"][..],
            &["length", "insufficient_system_resource"],
            &["stop", "a_new_reason"],
            &["a_new_reason", "tool_calls"],
            &["content_filter", "other_one", "yet_another"],
        ] {
            let mut last = None;
            let body =
                ObservedBody::new(stream(reasons), BodyFormat::Sse, |event: BodyEvent<'_>| {
                    if let BodyEvent::End(end) = event {
                        last = end.finish_reason.map(str::to_owned);
                    }
                });
            body.collect().await.unwrap();
            assert_eq!(last.as_deref(), reasons.last().copied(), "{reasons:?}");
        }
        // A JSON body's mention is the known reason, with no allocation to hold it.
        let mut scan = ScanState::new(BodyFormat::Json);
        scan.set_finish_reason(INSUFFICIENT);
        assert!(scan.other_reason.is_none());
        assert_eq!(scan.end().finish_reason, Some(INSUFFICIENT));
    }

    /// The scan state stays small: every observed body holds one, and every layer above moves
    /// it with the response.
    #[test]
    fn the_scan_state_is_sixteen_bytes_and_counts_chunks_saturating() {
        assert_eq!(std::mem::size_of::<ScanState>(), 16);
        let mut scan = ScanState::new(BodyFormat::Sse);
        scan.chunks = u32::MAX - 1;
        scan.count_chunk();
        scan.count_chunk();
        assert_eq!(scan.end().chunks, u64::from(u32::MAX));
        assert_eq!(scan.end().format, BodyFormat::Sse);
    }

    /// serde's lean parse of a chunk: `Ok((last finish_reason, usage))`, or `Err` for a
    /// malformed one.
    fn serde_read(chunk: &[u8]) -> Result<(Option<String>, Option<Usage>), ()> {
        serde_json::from_slice::<LeanChunk<'_>>(chunk)
            .map(|lean| (lean.choices.0.map(Cow::into_owned), lean.usage))
            .map_err(|_| ())
    }

    /// The one-pass scan's answer in the same shape.
    fn fast_read(chunk: &[u8]) -> Option<(Option<String>, Option<Usage>)> {
        crate::lean_chunk::read(chunk).map(|read| {
            (
                read.finish_reason.map(str::to_owned),
                read.usage.map(|u| *u),
            )
        })
    }

    /// The one-pass scan of a chunk (`crate::lean_chunk`) never disagrees with serde's parse:
    /// wherever it answers, serde accepts the chunk and finds the same `finish_reason` and the
    /// same `usage`. Checked on DeepSeek-shaped chunks (which it must answer) and on every
    /// truncation, deletion, replacement and insertion of a byte of them (where it may
    /// decline).
    #[test]
    fn the_one_pass_chunk_scan_agrees_with_serde_or_declines() {
        let chunks: &[&str] = &[
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Say \"hi\"\n\\ / ok"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"","reasoning_content":"think"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[null,{"finish_reason":"length"},{"finish_reason":null},{"x":[1,-2.5e+3,0,true,false,null,{}],"finish_reason":"insufficient_system_resource"}]}"#,
            r#" { "choices" : [ { "finish_reason" : "tool_calls" , "delta" : { "tool_calls" : [ { "id" : "t" } ] } } ] } "#,
            r#"{"choices":null}"#,
            r#"{"choices":[]}"#,
            r#"{}"#,
            r#"{"choices":[{"finish_reason":"a_new_reason"}],"extra":{"deep":[[[[["x"]]]]],"n":-0.5E-7}}"#,
            r#"{"content":"unicode é 漢字 🙂","choices":[{"finish_reason":"stop"}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash","choices":[],"usage":{"prompt_tokens":16,"completion_tokens":90,"total_tokens":106,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16,"completion_tokens_details":{"reasoning_tokens":25}}}"#,
            r#"{"choices":[{"finish_reason":"length"}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":0,"prompt_cache_hit_tokens":null,"completion_tokens_details":null}}"#,
            r#"{"usage":{ "completion_tokens_details" : { } , "total_tokens" : 1234567890 , "prompt_cache_miss_tokens" : 9 }}"#,
            r#"{"usage":{},"choices":[]}"#,
        ];
        let interesting: &[u8] = &[
            b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'1', b'-', b'+', b'.', b'e',
            b' ', b'n', b'u', b't', b'x', 0x00, b'\n', b'\t', 0x7f, 0xc3, 0xff,
        ];
        let mut answered = 0;
        let mut with_usage = 0;
        let mut parsed_by_client = 0;
        let mut check = |variant: &[u8]| {
            if let Some(fast) = fast_read(variant) {
                answered += 1;
                with_usage += usize::from(fast.1.is_some());
                assert_eq!(
                    serde_read(variant),
                    Ok(fast),
                    "{:?}",
                    String::from_utf8_lossy(variant)
                );
            }
            // What the typed client remembers of a chunk it parsed is what serde's lean parse
            // finds in it, and what the layers then read from memory.
            if let Ok(chunk) = serde_json::from_slice::<crate::deepseek::ChatChunk>(variant) {
                parsed_by_client += 1;
                let reason = chunk
                    .choices
                    .iter()
                    .rev()
                    .find_map(|choice| choice.finish_reason.as_ref())
                    .map(|reason| reason.as_str().to_owned());
                let client = (reason, chunk.usage.clone());
                assert_eq!(
                    serde_read(variant),
                    Ok(client.clone()),
                    "{:?}",
                    String::from_utf8_lossy(variant)
                );
                crate::lean_chunk::remember(variant, client.0.as_deref(), client.1.as_ref());
                if let Some(fast) = fast_read(variant) {
                    assert_eq!(fast, client, "{:?}", String::from_utf8_lossy(variant));
                }
            }
        };
        for chunk in chunks {
            let bytes = chunk.as_bytes();
            // The chunks DeepSeek sends are answered here, not by serde.
            let fast = fast_read(bytes);
            assert!(fast.is_some(), "declined {chunk}");
            assert_eq!(serde_read(bytes), Ok(fast.unwrap()));
            for end in 0..bytes.len() {
                check(&bytes[..end]);
            }
            for at in 0..bytes.len() {
                let mut deleted = bytes.to_vec();
                deleted.remove(at);
                check(&deleted);
                for &byte in interesting {
                    let mut replaced = bytes.to_vec();
                    replaced[at] = byte;
                    check(&replaced);
                    let mut inserted = bytes.to_vec();
                    inserted.insert(at, byte);
                    check(&inserted);
                }
            }
        }
        // Not a vacuous pass: many variants were answered (and so compared) here, usages too.
        assert!(answered > 1_000, "only {answered} variants answered");
        assert!(
            with_usage > 500,
            "only {with_usage} variants with a usage answered"
        );
        assert!(
            parsed_by_client > 1_000,
            "only {parsed_by_client} variants parsed as chunks"
        );
        // What it declines, serde decides: an undocumented usage field (serde keeps it in
        // `extra`), a count serde might refuse, a repeated field, a `\u` escape, depth.
        for declined in [
            r#"{"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            r#"{"usage":{"completion_tokens_details":{"reasoning_tokens":1,"audio_tokens":0}}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":1.0}}"#,
            r#"{"usage":{"prompt_tokens":1e3}}"#,
            r#"{"usage":{"prompt_tokens":null}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"usage":[]}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"finish_reason":"stop","finish_reason":"length"}]}"#,
            r#"{"choices":[{"finish_reason":"st\u006fp"}]}"#,
            r#"{"choices":{"finish_reason":"stop"}}"#,
            "{\"choices\":[]}\n",
        ] {
            assert!(fast_read(declined.as_bytes()).is_none(), "{declined}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(fast_read(deep.as_bytes()).is_none());
        assert!(serde_read(deep.as_bytes()).is_ok());
    }
}
