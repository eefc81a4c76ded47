//! Server-sent events: an incremental decoder and a typed stream of chat chunks.
//!
//! [`SseDecoder`] turns body frames, cut at any byte, into [`SseEvent`]s following the WHATWG
//! event-stream rules as DeepSeek and OpenAI use them. [`ChatStream`] runs it over an
//! [`http_body::Body`] and parses each event into a [`ChatChunk`], turning every way a stream
//! can go wrong (cut short, malformed, stopped for lack of capacity) into an [`Error`].
//!
//! ```
//! use bytes::Bytes;
//! use tower_deepseek::deepseek::sse::{SseDecoder, SseEvent};
//!
//! let mut decoder = SseDecoder::new();
//! decoder.push(Bytes::from_static(b": keep-alive\n\ndata: {\"a\":1}\n"));
//! decoder.push(Bytes::from_static(b"\ndata: [DONE]\n\n"));
//! assert_eq!(decoder.next_event().unwrap(), Some(SseEvent::KeepAlive));
//! assert_eq!(decoder.next_event().unwrap(), Some(SseEvent::Data(Bytes::from_static(b"{\"a\":1}"))));
//! assert_eq!(decoder.next_event().unwrap(), Some(SseEvent::Done));
//! assert!(decoder.is_done());
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pin_project_lite::pin_project;

use super::frame_memory::{self, Shape, ShapeKind, Shapes};
use crate::classify::{StreamFailure, classify_end};
use crate::deepseek::types::{ChatChunk, FinishReason, Usage};
use crate::error::{ApiError, Error, ErrorKind};

/// The default cap on one line (and on one event's data), in bytes: 1 MiB.
///
/// A DeepSeek chunk line is a few hundred bytes; even a large tool-call or a server that sends
/// a whole answer in one event stays far below 1 MiB. The cap bounds the memory a misbehaving
/// upstream can make one stream hold (a body without line ends would otherwise be buffered
/// whole).
pub const DEFAULT_MAX_LINE_LEN: usize = 1 << 20;

/// What the decoder found in the stream.
///
/// ```
/// use bytes::Bytes;
/// use tower_deepseek::deepseek::sse::SseEvent;
///
/// let event = SseEvent::Data(Bytes::from_static(b"{}"));
/// assert_ne!(event, SseEvent::KeepAlive);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// An event's data: its `data:` lines joined with `\n`. Not checked for UTF-8.
    Data(Bytes),
    /// A comment line (`: keep-alive`): the server is alive but has nothing to say. Not a token.
    KeepAlive,
    /// `data: [DONE]`: the stream is complete.
    Done,
}

/// The UTF-8 byte order mark, which the event-stream format allows at the very start.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, PartialEq, Eq)]
enum DecoderState {
    Open,
    Done,
    Failed(StreamFailure, Cow<'static, str>),
}

/// The decoder's use of the thread's last decoded frame (see `frame_memory`).
#[derive(Debug, Default)]
enum Memory {
    #[default]
    Idle,
    /// Handing out a remembered frame's events: `next` is the next one.
    Replaying {
        frame: Bytes,
        shapes: Shapes,
        next: u8,
    },
    /// Decoding a frame pushed with nothing buffered, noting its events to remember them.
    Recording {
        frame: Bytes,
        at_start: bool,
        shapes: Shapes,
    },
}

/// The data of the event being assembled. One line is kept as a slice of its frame; only a
/// second line forces a copy (to join them).
#[derive(Debug, Default)]
enum PendingData {
    #[default]
    Empty,
    One(Bytes),
    Joined(BytesMut),
}

/// An incremental server-sent-events decoder.
///
/// Feed it body frames with [`push`](Self::push), cut anywhere, and take events with
/// [`next_event`](Self::next_event) until it answers `Ok(None)` (it needs more bytes). When the
/// body ends, call [`finish`](Self::finish) until it answers `Ok(None)` or an error.
///
/// The rules, per the WHATWG event-stream format:
///
/// - lines end in LF, CRLF or CR; a CR at the end of one frame and an LF at the start of the
///   next are one line end;
/// - a line starting with `:` is a comment, reported as [`SseEvent::KeepAlive`];
/// - `data:` lines (one leading space stripped) of an event are joined with `\n`, and the event
///   is dispatched at the blank line that ends it; blank lines with no data are ignored;
/// - `event:`, `id:`, `retry:` and unknown fields are accepted and ignored;
/// - data exactly `[DONE]` is [`SseEvent::Done`]; the decoder is then done and ignores the rest;
/// - a UTF-8 byte order mark at the very start is skipped.
///
/// Event data is a slice of the frame it arrived in (no copy) unless its line spans frames or
/// the event has several data lines. A line, or one event's joined data, longer than the cap
/// ([`DEFAULT_MAX_LINE_LEN`] unless set) is an error of kind
/// [`StreamFailure::LineTooLong`], reported as soon as the cap is passed rather than after
/// buffering more. After an error the decoder keeps answering with an error of the same kind.
///
/// ```
/// use bytes::Bytes;
/// use tower_deepseek::deepseek::sse::{SseDecoder, SseEvent};
/// use tower_deepseek::classify::StreamFailure;
/// use tower_deepseek::ErrorKind;
///
/// let mut decoder = SseDecoder::new();
/// // A CRLF line end split across two frames.
/// decoder.push(Bytes::from_static(b"data: hello\r"));
/// assert_eq!(decoder.next_event().unwrap(), None);
/// decoder.push(Bytes::from_static(b"\n\r\n"));
/// assert_eq!(decoder.next_event().unwrap(), Some(SseEvent::Data(Bytes::from_static(b"hello"))));
/// // The body ends without `[DONE]`.
/// let error = decoder.finish().unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::Stream(StreamFailure::Truncated));
/// ```
pub struct SseDecoder {
    /// The unscanned rest of the frame being read.
    current: Bytes,
    /// Frames pushed but not yet reached.
    queued: VecDeque<Bytes>,
    /// The start of a line whose end has not arrived yet (copied out of its frames).
    partial: BytesMut,
    /// The data lines of the event being assembled.
    data: PendingData,
    /// The last line ended in CR at the end of a frame: an LF opening the next one belongs
    /// to that line end.
    skip_leading_lf: bool,
    /// No line has been read yet (a byte order mark may come first).
    at_start: bool,
    max_line_len: usize,
    state: DecoderState,
    memory: Memory,
    /// Whether this decoder leaves the frames it decodes in the thread's memory (the observed
    /// bodies' decoders, which see a frame first); every decoder recalls.
    records: bool,
}

impl SseDecoder {
    /// A decoder with the [default line cap](DEFAULT_MAX_LINE_LEN).
    pub fn new() -> SseDecoder {
        SseDecoder::with_max_line_len(DEFAULT_MAX_LINE_LEN)
    }

    /// A decoder that rejects lines (and events' joined data) longer than `max` bytes.
    pub fn with_max_line_len(max: usize) -> SseDecoder {
        SseDecoder {
            current: Bytes::new(),
            queued: VecDeque::new(),
            partial: BytesMut::new(),
            data: PendingData::Empty,
            skip_leading_lf: false,
            at_start: true,
            max_line_len: max,
            state: DecoderState::Open,
            memory: Memory::Idle,
            records: false,
        }
    }

    /// This decoder, leaving each frame it decodes in the thread's memory for the decoders
    /// that read the same frame after it. Only worth its cost (a copy of each frame) where
    /// another decoder follows: the layers' observed bodies, under a typed client.
    pub(crate) fn recording(mut self) -> SseDecoder {
        self.records = true;
        self
    }

    /// Appends one body frame. Frames may be cut anywhere, even inside a CRLF or a UTF-8
    /// character. Frames pushed after the stream is done, or after an error, are dropped.
    ///
    /// A frame equal to the last one decoded on this thread, pushed with nothing buffered, is
    /// not decoded again: its events are handed out from memory, the same events (slices of
    /// this frame) a decoding would give.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() || self.state != DecoderState::Open {
            return;
        }
        match mem::take(&mut self.memory) {
            Memory::Replaying {
                frame,
                shapes,
                next,
            } => self.resume(frame, shapes, next),
            // Another frame before this one's end: not a frame to remember.
            Memory::Recording { .. } => {}
            Memory::Idle if self.is_clean() && chunk.len() <= frame_memory::MAX_FRAME => {
                if let Some(shapes) = frame_memory::recall(&chunk, self.at_start, self.max_line_len)
                {
                    self.memory = Memory::Replaying {
                        frame: chunk,
                        shapes,
                        next: 0,
                    };
                    return;
                }
                if self.records {
                    self.memory = Memory::Recording {
                        frame: chunk.clone(),
                        at_start: self.at_start,
                        shapes: Shapes::new(),
                    };
                }
            }
            Memory::Idle => {}
        }
        if self.current.is_empty() && self.queued.is_empty() {
            self.current = chunk;
        } else {
            self.queued.push_back(chunk);
        }
    }

    /// The next event from the bytes pushed so far: `Ok(None)` when more bytes are needed (or
    /// the stream is done).
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, Error> {
        match &self.state {
            DecoderState::Open => {}
            DecoderState::Done => return Ok(None),
            DecoderState::Failed(failure, message) => {
                return Err(Error::new(ErrorKind::Stream(*failure), message.clone()));
            }
        }
        if let Memory::Replaying {
            frame,
            shapes,
            next,
        } = &mut self.memory
        {
            let Some(shape) = shapes.get(*next) else {
                // Used up: the decoder is where decoding the frame would have left it.
                self.memory = Memory::Idle;
                self.at_start = false;
                return Ok(None);
            };
            *next += 1;
            self.at_start = false;
            let event = match shape.kind {
                // In range: `recall` matched these bytes exactly, and the ranges were taken
                // within an equal frame (`range_in`).
                ShapeKind::Data => {
                    SseEvent::Data(frame.slice(shape.start as usize..shape.end as usize))
                }
                ShapeKind::KeepAlive => SseEvent::KeepAlive,
                ShapeKind::Done => {
                    self.memory = Memory::Idle;
                    self.mark_done()
                }
            };
            return Ok(Some(event));
        }
        loop {
            let line = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(error) => {
                    self.memory = Memory::Idle;
                    return Err(error);
                }
            };
            match self.process_line(line) {
                Ok(Some(event)) => {
                    self.note(&event);
                    return Ok(Some(event));
                }
                Ok(None) => {}
                Err(error) => {
                    self.memory = Memory::Idle;
                    return Err(error);
                }
            }
        }
        self.commit();
        Ok(None)
    }

    /// Nothing buffered: the next frame starts a line and an event.
    fn is_clean(&self) -> bool {
        self.current.is_empty()
            && self.queued.is_empty()
            && self.partial.is_empty()
            && matches!(self.data, PendingData::Empty)
            && !self.skip_leading_lf
    }

    /// A frame arrived while a remembered one was being handed out: decode the rest of that
    /// one as usual, from where its last event was handed out (nothing else is buffered
    /// there, which is why only such frames are remembered).
    fn resume(&mut self, frame: Bytes, shapes: Shapes, next: u8) {
        let consumed = match next.checked_sub(1).and_then(|last| shapes.get(last)) {
            Some(shape) => {
                self.at_start = false;
                shape.consumed as usize
            }
            None => 0,
        };
        self.current = frame.slice(consumed.min(frame.len())..);
    }

    /// Notes the event just decoded for the frame being recorded; gives up on frames that
    /// cannot be replayed exactly (an event amid another's data lines, joined data, too many
    /// events).
    fn note(&mut self, event: &SseEvent) {
        let Memory::Recording { frame, shapes, .. } = &mut self.memory else {
            return;
        };
        // Nothing else is pushed while recording, so `current` is the rest of `frame`.
        let consumed = frame.len() - self.current.len().min(frame.len());
        let shape = match event {
            SseEvent::Data(data) => frame_memory::range_in(frame, data).map(|(start, end)| Shape {
                kind: ShapeKind::Data,
                start,
                end,
                consumed: 0,
            }),
            SseEvent::KeepAlive => matches!(self.data, PendingData::Empty).then_some(Shape {
                kind: ShapeKind::KeepAlive,
                start: 0,
                end: 0,
                consumed: 0,
            }),
            SseEvent::Done => Some(Shape {
                kind: ShapeKind::Done,
                start: 0,
                end: 0,
                consumed: 0,
            }),
        };
        let kept = shape.and_then(|shape| {
            let consumed = u32::try_from(consumed).ok()?;
            shapes.push(Shape { consumed, ..shape }).then_some(())
        });
        if kept.is_none() {
            self.memory = Memory::Idle;
        } else if *event == SseEvent::Done || self.is_clean() {
            // Complete already: nothing after `[DONE]` is read, or the event ended the frame
            // (a DeepSeek frame is one event), so the next decoder of this frame, which may
            // run before this one is asked again, finds it remembered.
            self.remember();
        }
    }

    /// The frame being recorded is decoded to its end: remembered if nothing is left over.
    fn commit(&mut self) {
        if matches!(self.memory, Memory::Recording { .. }) {
            if self.is_clean() {
                self.remember();
            } else {
                self.memory = Memory::Idle;
            }
        }
    }

    fn remember(&mut self) {
        if let Memory::Recording {
            frame,
            at_start,
            shapes,
        } = mem::take(&mut self.memory)
        {
            frame_memory::remember(&frame, at_start, self.max_line_len, shapes);
        }
    }

    /// Tells the decoder the body has ended. Call it until it answers `Ok(None)` or an error.
    ///
    /// It first returns the complete events still buffered. An event whose closing blank line
    /// never came is dropped, as the WHATWG rules say (its data may be cut mid-JSON), except a
    /// lone `data: [DONE]` line, with or without its line end, which completes the stream:
    /// some servers end the body right after it. Then: `Ok(None)` if `[DONE]` was seen,
    /// otherwise an error of kind [`StreamFailure::Truncated`].
    pub fn finish(&mut self) -> Result<Option<SseEvent>, Error> {
        if let Some(event) = self.next_event()? {
            return Ok(Some(event));
        }
        if self.state == DecoderState::Done {
            return Ok(None);
        }
        // Every pushed frame has been scanned; what is left is an event without its blank
        // line and maybe an unterminated last line.
        let last_line = mem::take(&mut self.partial);
        let ends_with_done = match mem::take(&mut self.data) {
            PendingData::Empty => is_done_line(&last_line),
            PendingData::One(data) => last_line.is_empty() && data[..] == *b"[DONE]",
            PendingData::Joined(_) => false,
        };
        if ends_with_done {
            return Ok(Some(self.mark_done()));
        }
        Err(self.fail(
            StreamFailure::Truncated,
            Cow::Borrowed("the body ended before `data: [DONE]`"),
        ))
    }

    /// Whether `data: [DONE]` has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == DecoderState::Done
    }

    /// The next complete line, without its line end. `Ok(None)`: no line end buffered yet.
    fn next_line(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if self.current.is_empty() {
                match self.queued.pop_front() {
                    Some(frame) => self.current = frame,
                    None => return Ok(None),
                }
                continue;
            }
            if self.skip_leading_lf {
                self.skip_leading_lf = false;
                if self.current.first() == Some(&b'\n') {
                    self.current.advance(1);
                    continue;
                }
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', &self.current) else {
                // No line end in this frame: keep its tail and read on.
                if self.partial.len() + self.current.len() > self.max_line_len {
                    return Err(self.line_too_long());
                }
                self.partial.extend_from_slice(&self.current);
                self.current = Bytes::new();
                continue;
            };
            if self.partial.len() + end > self.max_line_len {
                return Err(self.line_too_long());
            }
            let line = if self.partial.is_empty() {
                // The whole line is in this frame: hand out a slice of it.
                self.current.split_to(end)
            } else {
                self.partial.extend_from_slice(&self.current[..end]);
                self.current.advance(end);
                self.partial.split().freeze()
            };
            // `memchr2` found a line end at `end`, so `current` now starts with it.
            let terminator = self.current[0];
            self.current.advance(1);
            if terminator == b'\r' {
                match self.current.first() {
                    Some(b'\n') => self.current.advance(1),
                    Some(_) => {}
                    None => self.skip_leading_lf = true,
                }
            }
            return Ok(Some(line));
        }
    }

    fn process_line(&mut self, mut line: Bytes) -> Result<Option<SseEvent>, Error> {
        if self.at_start {
            self.at_start = false;
            if line.starts_with(BYTE_ORDER_MARK) {
                line.advance(BYTE_ORDER_MARK.len());
            }
        }
        match line.first() {
            None => Ok(self.dispatch()),
            Some(b':') => Ok(Some(SseEvent::KeepAlive)),
            Some(_) if line.starts_with(b"data:") => {
                let skip = if line.get(5) == Some(&b' ') { 6 } else { 5 };
                line.advance(skip);
                self.append_data(line)?;
                Ok(None)
            }
            // A field name without a colon has an empty value.
            Some(_) if line[..] == *b"data" => {
                self.append_data(Bytes::new())?;
                Ok(None)
            }
            // `event:`, `id:`, `retry:` and unknown fields do not matter to DeepSeek's streams.
            Some(_) => Ok(None),
        }
    }

    fn append_data(&mut self, value: Bytes) -> Result<(), Error> {
        self.data = match mem::take(&mut self.data) {
            PendingData::Empty => PendingData::One(value),
            PendingData::One(first) => {
                let joined_len = first.len() + 1 + value.len();
                if joined_len > self.max_line_len {
                    return Err(self.event_too_long());
                }
                let mut joined = BytesMut::with_capacity(joined_len);
                joined.extend_from_slice(&first);
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                PendingData::Joined(joined)
            }
            PendingData::Joined(mut joined) => {
                if joined.len() + 1 + value.len() > self.max_line_len {
                    return Err(self.event_too_long());
                }
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                PendingData::Joined(joined)
            }
        };
        Ok(())
    }

    /// Ends the event being assembled; `None` when it has no data.
    fn dispatch(&mut self) -> Option<SseEvent> {
        let data = match mem::take(&mut self.data) {
            PendingData::Empty => return None,
            PendingData::One(data) => data,
            PendingData::Joined(data) => data.freeze(),
        };
        if data[..] == *b"[DONE]" {
            Some(self.mark_done())
        } else {
            Some(SseEvent::Data(data))
        }
    }

    fn mark_done(&mut self) -> SseEvent {
        self.state = DecoderState::Done;
        self.release_buffers();
        SseEvent::Done
    }

    fn line_too_long(&mut self) -> Error {
        let message = format!("an SSE line exceeded {} bytes", self.max_line_len);
        self.fail(StreamFailure::LineTooLong, Cow::Owned(message))
    }

    fn event_too_long(&mut self) -> Error {
        let message = format!("an SSE event's data exceeded {} bytes", self.max_line_len);
        self.fail(StreamFailure::LineTooLong, Cow::Owned(message))
    }

    fn fail(&mut self, failure: StreamFailure, message: Cow<'static, str>) -> Error {
        self.release_buffers();
        self.state = DecoderState::Failed(failure, message.clone());
        Error::new(ErrorKind::Stream(failure), message)
    }

    fn release_buffers(&mut self) {
        self.current = Bytes::new();
        self.queued = VecDeque::new();
        self.partial = BytesMut::new();
        self.data = PendingData::Empty;
    }
}

/// Whether an unterminated last line is `data: [DONE]` (or `data:[DONE]`).
fn is_done_line(line: &[u8]) -> bool {
    matches!(
        line.strip_prefix(b"data:"),
        Some(b"[DONE]") | Some(b" [DONE]")
    )
}

impl Default for SseDecoder {
    fn default() -> SseDecoder {
        SseDecoder::new()
    }
}

impl fmt::Debug for SseDecoder {
    // Sizes, not contents: buffered bytes can be large and are the user's conversation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buffered = self.current.len()
            + self.queued.iter().map(Bytes::len).sum::<usize>()
            + self.partial.len();
        f.debug_struct("SseDecoder")
            .field("state", &self.state)
            .field("buffered_bytes", &buffered)
            .field("max_line_len", &self.max_line_len)
            .finish()
    }
}

pin_project! {
    /// A stream of typed [`ChatChunk`]s read from a streamed chat completion's body.
    ///
    /// It reads the body frame by frame (never buffering it whole), decodes the events with
    /// an [`SseDecoder`] and parses each one. It yields:
    ///
    /// - `Ok(chunk)` for each `data:` event;
    /// - `Err` of kind [`StreamFailure::Malformed`] for an event that is not a chunk's JSON
    ///   (never skipped), [`StreamFailure::Truncated`] when the body ends before
    ///   `data: [DONE]`, [`StreamFailure::InsufficientSystemResource`] after `[DONE]` when the
    ///   last `finish_reason` was `insufficient_system_resource`, [`ErrorKind::Server`] for an
    ///   error object sent as an event, and the body's own errors (classified with
    ///   [`Error::from_boxed`]);
    /// - then `None`: after an error or `[DONE]` the stream is over.
    ///
    /// Keep-alive comments (and events with empty data) are not chunks; they are counted in
    /// [`keep_alives`](Self::keep_alives).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use futures_util::StreamExt;
    /// use http_body_util::Full;
    /// use tower_deepseek::deepseek::sse::ChatStream;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = Full::new(Bytes::from_static(
    ///     b": keep-alive\n\n\
    ///       data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
    ///       data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
    ///       data: [DONE]\n\n",
    /// ));
    /// let mut stream = ChatStream::new(body);
    /// let mut text = String::new();
    /// while let Some(chunk) = stream.next().await {
    ///     text.push_str(chunk.unwrap().content().unwrap_or_default());
    /// }
    /// assert_eq!(text, "Hi");
    /// assert_eq!(stream.keep_alives(), 1);
    /// assert_eq!(stream.usage().unwrap().total_tokens, 4);
    /// # });
    /// ```
    pub struct ChatStream<B> {
        #[pin]
        body: B,
        decoder: SseDecoder,
        keep_alives: u64,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
        last_data: Bytes,
        body_ended: bool,
        finished: bool,
    }
}

impl<B> ChatStream<B> {
    /// Reads `body` with a default [`SseDecoder`].
    pub fn new(body: B) -> ChatStream<B> {
        ChatStream::with_decoder(body, SseDecoder::new())
    }

    /// Reads `body` with the given decoder (e.g. one with another line cap).
    pub fn with_decoder(body: B, decoder: SseDecoder) -> ChatStream<B> {
        ChatStream {
            body,
            decoder,
            keep_alives: 0,
            finish_reason: None,
            usage: None,
            last_data: Bytes::new(),
            body_ended: false,
            finished: false,
        }
    }

    /// How many keep-alive comments (and empty events) arrived so far.
    pub fn keep_alives(&self) -> u64 {
        self.keep_alives
    }

    /// The token counts, once the chunk carrying them (the last one, with
    /// `stream_options.include_usage`) has been yielded.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// The last `finish_reason` seen so far, of any choice.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish_reason.as_ref()
    }

    /// The `data` of the chunk last yielded, exactly as the server sent it (empty before the
    /// first chunk). A proxy forwards these bytes instead of serializing the typed chunk
    /// again: the caller gets the upstream's chunk unchanged (its field order, any field this
    /// crate does not know), and no second encoding is paid per chunk.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use futures_util::StreamExt;
    /// use http_body_util::Full;
    /// use tower_deepseek::deepseek::sse::ChatStream;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = Full::new(Bytes::from_static(
    ///     b"data: {\"id\":\"1\",\"choices\":[],\"new_field\":true}\n\ndata: [DONE]\n\n",
    /// ));
    /// let mut stream = ChatStream::new(body);
    /// assert!(stream.last_data().is_empty());
    /// stream.next().await.unwrap().unwrap();
    /// assert_eq!(&stream.last_data()[..], br#"{"id":"1","choices":[],"new_field":true}"#);
    /// # });
    /// ```
    pub fn last_data(&self) -> &Bytes {
        &self.last_data
    }
}

impl<B> fmt::Debug for ChatStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("decoder", &self.decoder)
            .field("keep_alives", &self.keep_alives)
            .field("finish_reason", &self.finish_reason)
            .field("usage", &self.usage)
            .field("last_data_len", &self.last_data.len())
            .field("body_ended", &self.body_ended)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Parses one event's data as a chunk. An `{"error": ..}` object in place of a chunk is the
/// upstream failing mid-stream, not an empty chunk.
fn parse_chunk(payload: &[u8]) -> Result<ChatChunk, Error> {
    let chunk = serde_json::from_slice::<ChatChunk>(payload).map_err(|error| {
        Error::new(
            ErrorKind::Stream(StreamFailure::Malformed),
            format!(
                "a {}-byte stream event is not a chat.completion.chunk: {error}",
                payload.len()
            ),
        )
        .with_source(error)
    })?;
    if chunk.choices.is_empty()
        && let Some(error) = chunk.extra.get("error")
    {
        let message = match serde_json::from_value::<ApiError>(error.clone()) {
            Ok(api) if !api.message.is_empty() => api.message,
            _ => error.to_string(),
        };
        return Err(Error::new(
            ErrorKind::Server,
            format!("the stream carried an error event: {message}"),
        ));
    }
    Ok(chunk)
}

impl<B> futures_core::Stream for ChatStream<B>
where
    B: http_body::Body,
    B::Error: Into<crate::BoxError>,
{
    type Item = Result<ChatChunk, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.finished {
                return Poll::Ready(None);
            }
            let event = if *this.body_ended {
                this.decoder.finish()
            } else {
                this.decoder.next_event()
            };
            match event {
                Ok(Some(SseEvent::Data(payload))) if payload.is_empty() => {
                    *this.keep_alives += 1;
                }
                Ok(Some(SseEvent::Data(payload))) => match parse_chunk(&payload) {
                    Ok(chunk) => {
                        let reason = chunk
                            .choices
                            .iter()
                            .rev()
                            .find_map(|choice| choice.finish_reason.as_ref());
                        // The layers under this stream read the chunk when it asks for the
                        // next one: what this parse found spares them a scan of their own.
                        crate::lean_chunk::remember(
                            &payload,
                            reason.map(FinishReason::as_str),
                            chunk.usage.as_ref(),
                        );
                        if let Some(reason) = reason {
                            *this.finish_reason = Some(reason.clone());
                        }
                        if let Some(usage) = &chunk.usage {
                            *this.usage = Some(usage.clone());
                        }
                        *this.last_data = payload;
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    Err(error) => {
                        *this.finished = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                Ok(Some(SseEvent::KeepAlive)) => *this.keep_alives += 1,
                Ok(Some(SseEvent::Done)) => {
                    *this.finished = true;
                    // Read the body's end if it is already here (it usually is), so the layers
                    // observing the body (a concurrency slot, metrics, the breaker) see the stream
                    // end now rather than when the caller drops the stream. Never wait for it: a
                    // server that keeps the body open after `[DONE]` must not hang the caller.
                    if !*this.body_ended {
                        for _ in 0..4 {
                            match this.body.as_mut().poll_frame(cx) {
                                Poll::Ready(Some(Ok(_))) => continue,
                                Poll::Ready(None) => *this.body_ended = true,
                                Poll::Ready(Some(Err(_))) | Poll::Pending => {}
                            }
                            break;
                        }
                    }
                    let reason = this.finish_reason.as_ref().map(FinishReason::as_str);
                    return match classify_end(reason).error_kind() {
                        None => Poll::Ready(None),
                        Some(kind) => Poll::Ready(Some(Err(Error::new(
                            kind,
                            format!(
                                "the stream ended with finish_reason `{}`",
                                reason.unwrap_or_default()
                            ),
                        )))),
                    };
                }
                Ok(None) if *this.body_ended => {
                    // `finish` answers `Ok(None)` only once `[DONE]` has been seen.
                    *this.finished = true;
                    return Poll::Ready(None);
                }
                Ok(None) => match ready!(this.body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        // Trailers carry nothing for the decoder.
                        if let Ok(mut data) = frame.into_data() {
                            let bytes = data.copy_to_bytes(data.remaining());
                            this.decoder.push(bytes);
                        }
                    }
                    Some(Err(error)) => {
                        *this.finished = true;
                        return Poll::Ready(Some(Err(Error::from_boxed(error.into()))));
                    }
                    None => *this.body_ended = true,
                },
                Err(error) => {
                    *this.finished = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

impl<B> futures_core::FusedStream for ChatStream<B>
where
    B: http_body::Body,
    B::Error: Into<crate::BoxError>,
{
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::NetworkFailure;
    use futures_util::StreamExt;
    use http_body::Frame;
    use std::error::Error as _;

    /// How a test feeds frames to a decoder.
    #[derive(Clone, Copy, Debug)]
    enum Feeding {
        /// Every event after each push.
        Drained,
        /// All frames first, then every event.
        Together,
        /// So many events after each push (the next frame arrives amid a frame's events).
        Some(usize),
    }

    /// The events and errors `decoders` decoders give for `frames`, the first fed each frame
    /// drained, the others as `feeding` says, then `finish`'s. The decoders take each frame in
    /// turn, as the layers over one body do, so every decoder after the first can recall it; with `forget`, the thread's frame memory
    /// is forgotten before every push, so nothing is recalled.
    fn decode_frames(
        frames: &[Bytes],
        feeding: Feeding,
        decoders: usize,
        forget: bool,
    ) -> Vec<Vec<String>> {
        let mut all: Vec<(SseDecoder, Vec<String>)> = (0..decoders)
            .map(|_| (SseDecoder::new().recording(), Vec::new()))
            .collect();
        let step = |(decoder, seen): &mut (SseDecoder, Vec<String>), finishing: bool| {
            let next = if finishing {
                decoder.finish()
            } else {
                decoder.next_event()
            };
            let more = matches!(next, Ok(Some(_)));
            // Where a decoder asks for more bytes depends on the feeding; what it gives does not.
            if !matches!(next, Ok(None)) {
                seen.push(format!("{:?}", next.map_err(|e| e.to_string())));
            }
            more
        };
        for frame in frames {
            for (index, one) in all.iter_mut().enumerate() {
                if forget {
                    frame_memory::forget();
                }
                one.0.push(frame.clone());
                // The first decoder reads each frame to its end (and so remembers it), the
                // others as `feeding` says.
                let feeding = if index == 0 {
                    Feeding::Drained
                } else {
                    feeding
                };
                match feeding {
                    Feeding::Drained => while step(one, false) {},
                    Feeding::Together => {}
                    Feeding::Some(events) => {
                        for _ in 0..events {
                            if !step(one, false) {
                                break;
                            }
                        }
                    }
                }
            }
        }
        for one in &mut all {
            while step(one, false) {}
            while step(one, true) {}
        }
        all.into_iter().map(|(_, seen)| seen).collect()
    }

    /// A frame handed out from the thread's memory gives exactly what decoding it gives: for
    /// streams cut into frames every way (one or two cuts), fed every way (drained after each
    /// frame, all frames at once, the next frame amid a frame's events), decoded a second and
    /// third time from memory, against a decoding with the memory
    /// forgotten before every frame. And it is used: DeepSeek-shaped frames decoded again are
    /// all recalled.
    #[test]
    fn frames_recalled_from_memory_decode_as_before() {
        let streams: &[&[u8]] = &[
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n",
            b": keep-alive\n\ndata: x\r\n\r\ndata: y\rdata: z\r\rdata: [DONE]\r\r",
            b"\xEF\xBB\xBFdata: bom\n\nid: 7\nevent: e\ndata\n\ndata:\n\n",
            b"data: one\ndata: two\n\n: amid\ndata: three\n: inside\n\ndata: [DONE]\n\ntrailing",
            b"data: no end",
            b"data: a\n\ndata: b\n\ndata: c\n\ndata: d\n\ndata: e\n\n",
        ];
        let (mut cases, mut recalled) = (0, 0);
        for stream in streams {
            let mut cuts: Vec<Vec<usize>> = vec![vec![]];
            for a in 1..stream.len() {
                cuts.push(vec![a]);
                for b in a + 1..stream.len() {
                    cuts.push(vec![a, b]);
                }
            }
            for cut in cuts {
                let mut frames = Vec::new();
                let mut from = 0;
                for &at in cut.iter().chain([stream.len()].iter()) {
                    frames.push(Bytes::copy_from_slice(&stream[from..at]));
                    from = at;
                }
                for feeding in [
                    Feeding::Drained,
                    Feeding::Together,
                    Feeding::Some(1),
                    Feeding::Some(2),
                ] {
                    let expected = decode_frames(&frames, feeding, 1, true).remove(0);
                    let before = frame_memory::RECALLS.with(std::cell::Cell::get);
                    for seen in decode_frames(&frames, feeding, 3, false) {
                        assert_eq!(
                            seen,
                            expected,
                            "{:?} cut at {cut:?}, {feeding:?}",
                            String::from_utf8_lossy(stream)
                        );
                    }
                    recalled += frame_memory::RECALLS.with(std::cell::Cell::get) - before;
                    cases += 1;
                }
            }
        }
        // Not vacuous: many frames were handed out from memory and compared.
        assert!(cases > 1_000, "{cases}");
        assert!(recalled > 2_000, "only {recalled} frames recalled");

        // A DeepSeek stream, a frame an event: decoded again, every frame is recalled.
        let frames: Vec<Bytes> = [
            &b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"[..],
            b": keep-alive\n\n",
            b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            b"data: [DONE]\n\n",
        ]
        .into_iter()
        .map(Bytes::from_static)
        .collect();
        let recalls = || frame_memory::RECALLS.with(std::cell::Cell::get);
        let mut first = SseDecoder::new().recording();
        let mut second = SseDecoder::new();
        let before = recalls();
        // As the layers of a gateway read it: each decoder takes the frame's events in turn.
        let take = |decoder: &mut SseDecoder, frame: &Bytes| {
            decoder.push(frame.clone());
            std::iter::from_fn(|| decoder.next_event().unwrap()).collect::<Vec<_>>()
        };
        for frame in &frames {
            let decoded = take(&mut first, frame);
            assert_eq!(decoded.len(), 1);
            assert_eq!(take(&mut second, frame), decoded);
        }
        assert_eq!(recalls() - before, frames.len());
        assert!(first.is_done() && second.is_done());
        // A decoder not made `recording` leaves nothing behind (it only recalls).
        let unique = Bytes::from_static(b"data: {\"plain\":true}\n\n");
        let before = recalls();
        for _ in 0..2 {
            let mut plain = SseDecoder::new();
            assert_eq!(take(&mut plain, &unique).len(), 1);
        }
        assert_eq!(recalls(), before);
        // A recalled event is a slice of the frame pushed, not of the remembered one.
        let frame = Bytes::copy_from_slice(&frames[0]);
        let mut third = SseDecoder::new().recording();
        third.push(frames[0].clone());
        let mut fourth = SseDecoder::new();
        fourth.push(frame.clone());
        let (Some(SseEvent::Data(_)), Some(SseEvent::Data(data))) =
            (third.next_event().unwrap(), fourth.next_event().unwrap())
        else {
            panic!("data events");
        };
        assert!(frame.as_ptr_range().contains(&data.as_ptr()));

        // The settings that change a frame's events are part of what is remembered: a byte
        // order mark is skipped only at the stream's start, and a line over the cap is an error.
        let bom = Bytes::from_static(b"\xEF\xBB\xBFdata: x\n\n");
        let mut later = SseDecoder::new().recording();
        later.push(Bytes::from_static(b": first\n\n"));
        assert_eq!(later.next_event().unwrap(), Some(SseEvent::KeepAlive));
        assert_eq!(later.next_event().unwrap(), None);
        later.push(bom.clone());
        assert_eq!(
            later.next_event().unwrap(),
            None,
            "a field named with the mark"
        );
        let mut starting = SseDecoder::new();
        starting.push(bom);
        assert_eq!(
            starting.next_event().unwrap(),
            Some(SseEvent::Data(Bytes::from_static(b"x")))
        );
        let long = Bytes::from_static(b"data: 0123456789\n\n");
        let mut roomy = SseDecoder::new().recording();
        roomy.push(long.clone());
        assert!(matches!(roomy.next_event(), Ok(Some(SseEvent::Data(_)))));
        let mut capped = SseDecoder::with_max_line_len(8);
        capped.push(long);
        assert!(capped.next_event().is_err());
    }

    /// `last_data` is each yielded chunk's own bytes, split across frames or not, with its
    /// whitespace and unknown fields; a keep-alive or a malformed event does not replace it.
    #[tokio::test]
    async fn last_data_is_the_yielded_chunk_as_sent() {
        let first = br#"{ "id":"1", "choices":[], "x":[1,2] }"#;
        let second =
            br#"{"id":"2","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#;
        let mut wire = b"data: ".to_vec();
        wire.extend_from_slice(first);
        wire.extend_from_slice(b"\n\n: keep-alive\n\ndata: ");
        wire.extend_from_slice(second);
        wire.extend_from_slice(b"\r\n\r\ndata: {not json}\n\n");
        // Cut into three-byte frames: a chunk's bytes come from several.
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = wire
            .chunks(3)
            .map(|piece| Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .collect();
        let mut stream = ChatStream::new(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        ));
        stream.next().await.expect("first").expect("a chunk");
        assert_eq!(&stream.last_data()[..], first);
        stream.next().await.expect("second").expect("a chunk");
        assert_eq!(&stream.last_data()[..], second);
        assert_eq!(stream.keep_alives(), 1);
        assert!(stream.next().await.expect("an error").is_err());
        assert_eq!(&stream.last_data()[..], second);
    }

    /// A body whose end is already there when `[DONE]` is read: the stream reads it, so the
    /// layers observing the body see its end before the caller drops the stream.
    #[tokio::test]
    async fn the_body_end_after_done_is_read_when_it_is_already_there() {
        use crate::body::{BodyEvent, BodyFormat, ObservedBody};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let body = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n",
            ))),
            Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
        ]));
        let ended = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&ended);
        let observed = ObservedBody::new(body, BodyFormat::Sse, move |event: BodyEvent<'_>| {
            if let BodyEvent::End(_) = event {
                seen.store(true, Ordering::SeqCst);
            }
        });
        let mut stream = ChatStream::new(observed);
        assert!(stream.next().await.expect("a chunk").is_ok());
        assert!(!ended.load(Ordering::SeqCst));
        assert!(stream.next().await.is_none(), "[DONE] ends the stream");
        assert!(
            ended.load(Ordering::SeqCst),
            "the body's end was read at [DONE], not left for the drop"
        );
        drop(stream);
    }

    /// A server that keeps the body open after `[DONE]` does not hang the caller.
    #[tokio::test]
    async fn a_body_left_open_after_done_does_not_hang_the_stream() {
        let body = http_body_util::StreamBody::new(
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
                Bytes::from_static(b"data: [DONE]\n\n"),
            ))])
            .chain(futures_util::stream::pending()),
        );
        let mut stream = ChatStream::new(body);
        assert!(stream.next().await.is_none());
    }

    fn decode_all(frames: &[&[u8]]) -> (Vec<SseEvent>, Result<(), Error>) {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for frame in frames {
            decoder.push(Bytes::copy_from_slice(frame));
            loop {
                match decoder.next_event() {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break,
                    Err(error) => return (events, Err(error)),
                }
            }
        }
        loop {
            match decoder.finish() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return (events, Ok(())),
                Err(error) => return (events, Err(error)),
            }
        }
    }

    fn data(text: &str) -> SseEvent {
        SseEvent::Data(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn kind(result: Result<(), Error>) -> ErrorKind {
        result.unwrap_err().kind()
    }

    const TRUNCATED: ErrorKind = ErrorKind::Stream(StreamFailure::Truncated);
    const TOO_LONG: ErrorKind = ErrorKind::Stream(StreamFailure::LineTooLong);

    #[test]
    fn lf_crlf_and_cr_line_ends_are_equal() {
        for text in [
            "data: a\n\ndata: b\n\ndata: [DONE]\n\n",
            "data: a\r\n\r\ndata: b\r\n\r\ndata: [DONE]\r\n\r\n",
            "data: a\r\rdata: b\r\rdata: [DONE]\r\r",
            "data: a\r\n\ndata: b\n\r\ndata: [DONE]\r\r\n",
        ] {
            let (events, end) = decode_all(&[text.as_bytes()]);
            assert_eq!(events, [data("a"), data("b"), SseEvent::Done], "{text:?}");
            end.unwrap();
        }
    }

    #[test]
    fn crlf_split_across_frames_is_one_line_end() {
        // Read as two line ends, the LF would be a blank line and split the event in two.
        let (events, end) =
            decode_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\ndata: [DONE]\n\n"]);
        assert_eq!(events, [data("a\nb"), SseEvent::Done]);
        end.unwrap();
    }

    #[test]
    fn cr_at_frame_end_followed_by_other_byte_is_a_line_end() {
        let (events, end) = decode_all(&[b"data: a\r", b"\r", b"data: [DONE]\r", b"\r"]);
        assert_eq!(events, [data("a"), SseEvent::Done]);
        end.unwrap();
    }

    #[test]
    fn comments_are_keep_alives_once_each_and_never_data() {
        let (events, end) = decode_all(&[
            b": keep-alive\n\n:\n: keep-alive\ndata: x\n: inside\ndata: y\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            events,
            [
                SseEvent::KeepAlive,
                SseEvent::KeepAlive,
                SseEvent::KeepAlive,
                SseEvent::KeepAlive,
                data("x\ny"),
                SseEvent::Done
            ]
        );
        end.unwrap();
    }

    #[test]
    fn one_leading_space_is_stripped() {
        let (events, _) = decode_all(&[b"data:x\n\ndata:  two\n\ndata: \n\ndata\n\n"]);
        assert_eq!(events, [data("x"), data(" two"), data(""), data("")]);
    }

    #[test]
    fn data_lines_are_joined_with_lf() {
        let (events, end) = decode_all(&[b"data: {\"a\":\ndata: 1}\ndata:\n\ndata: [DONE]\n\n"]);
        assert_eq!(events, [data("{\"a\":\n1}\n"), SseEvent::Done]);
        end.unwrap();
    }

    #[test]
    fn other_fields_are_ignored() {
        let (events, end) = decode_all(&[
            b"event: message\nid: 7\nretry: 1000\nfoo: bar\nnocolon\ndatum: no\ndata: x\n\nevent: ping\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(events, [data("x"), SseEvent::Done]);
        end.unwrap();
    }

    #[test]
    fn leading_blank_lines_and_bom_are_fine() {
        let (events, end) = decode_all(&[b"\xEF\xBB\xBF\n\n\r\n\rdata: x\n\ndata: [DONE]\n\n"]);
        assert_eq!(events, [data("x"), SseEvent::Done]);
        end.unwrap();
        let (events, _) = decode_all(&[b"\xEF\xBB\xBFdata: x\n\n"]);
        assert_eq!(events, [data("x")]);
    }

    #[test]
    fn done_ends_the_stream_and_later_bytes_are_ignored() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(b"data: [DONE]\n\ndata: late\n\n"));
        assert_eq!(decoder.next_event().unwrap(), Some(SseEvent::Done));
        assert!(decoder.is_done());
        decoder.push(Bytes::from_static(b"data: later\n\n"));
        assert_eq!(decoder.next_event().unwrap(), None);
        assert_eq!(decoder.finish().unwrap(), None);
        assert_eq!(decoder.finish().unwrap(), None);
    }

    #[test]
    fn done_must_be_exact() {
        let (events, end) = decode_all(&[b"data: [DONE] \n\ndata: [done]\n\n"]);
        assert_eq!(events, [data("[DONE] "), data("[done]")]);
        assert_eq!(kind(end), TRUNCATED);
    }

    #[test]
    fn data_is_sliced_from_its_frame_without_copying() {
        let frame = Bytes::from_static(b"data: {\"a\":1}\n\n");
        let range = frame.as_ptr_range();
        let mut decoder = SseDecoder::new();
        decoder.push(frame.clone());
        let Some(SseEvent::Data(payload)) = decoder.next_event().unwrap() else {
            panic!("expected data");
        };
        assert_eq!(&payload[..], b"{\"a\":1}");
        assert!(range.contains(&payload.as_ptr()));
    }

    #[test]
    fn multibyte_character_split_across_frames_is_kept_whole() {
        let text = "data: caf\u{e9} \u{4e2d} \u{1f980}\n\n".as_bytes();
        let crab = text.len() - 4; // inside the 4-byte crab
        let han = text.len() - 8; // inside the 3-byte character
        let (events, _) = decode_all(&[&text[..han], &text[han..crab], &text[crab..]]);
        assert_eq!(events, [data("caf\u{e9} \u{4e2d} \u{1f980}")]);
    }

    #[test]
    fn byte_by_byte_matches_one_piece() {
        let text = b": ka\r\ndata: a\r\n\r\nevent: x\rdata: b\rdata: c\r\rdata: [DONE]\n\n";
        let frames: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(decode_all(&frames).0, decode_all(&[text]).0);
    }

    #[test]
    fn empty_frames_are_harmless() {
        let (events, end) = decode_all(&[b"", b"data: x\n", b"", b"\n", b"data: [DONE]\n\n", b""]);
        assert_eq!(events, [data("x"), SseEvent::Done]);
        end.unwrap();
    }

    #[test]
    fn long_line_in_one_frame_is_rejected() {
        let mut decoder = SseDecoder::with_max_line_len(10);
        decoder.push(Bytes::from_static(b"data: 0123\n\ndata: 012345\n\n"));
        assert_eq!(decoder.next_event().unwrap(), Some(data("0123")));
        let error = decoder.next_event().unwrap_err();
        assert_eq!(error.kind(), TOO_LONG);
        assert!(error.to_string().contains("10 bytes"), "{error}");
        // The error sticks.
        assert_eq!(decoder.next_event().unwrap_err().kind(), TOO_LONG);
        decoder.push(Bytes::from_static(b"data: [DONE]\n\n"));
        assert_eq!(decoder.finish().unwrap_err().kind(), TOO_LONG);
    }

    #[test]
    fn long_partial_line_is_rejected_before_its_end_arrives() {
        let mut decoder = SseDecoder::with_max_line_len(10);
        decoder.push(Bytes::from_static(b"data: 01"));
        assert_eq!(decoder.next_event().unwrap(), None);
        decoder.push(Bytes::from_static(b"2345"));
        assert_eq!(decoder.next_event().unwrap_err().kind(), TOO_LONG);
    }

    #[test]
    fn line_exactly_at_the_cap_is_accepted() {
        let mut decoder = SseDecoder::with_max_line_len(10);
        decoder.push(Bytes::from_static(b"data: 0123"));
        decoder.push(Bytes::from_static(b"\n\n"));
        assert_eq!(decoder.next_event().unwrap(), Some(data("0123")));
    }

    #[test]
    fn joined_data_is_capped_too() {
        let (_, end) = {
            let mut decoder = SseDecoder::with_max_line_len(12);
            decoder.push(Bytes::from_static(b"data: 012345\ndata: 012345\n\n"));
            ((), decoder.next_event().map(|_| ()))
        };
        assert_eq!(kind(end), TOO_LONG);
    }

    #[test]
    fn body_end_without_done_is_truncated() {
        let (events, end) = decode_all(&[b"data: a\n\n"]);
        assert_eq!(events, [data("a")]);
        assert_eq!(kind(end), TRUNCATED);
        let (events, end) = decode_all(&[b""]);
        assert!(events.is_empty());
        assert_eq!(kind(end), TRUNCATED);
    }

    #[test]
    fn body_end_drops_an_event_without_its_blank_line() {
        let (events, end) = decode_all(&[b"data: a\n"]);
        assert!(events.is_empty());
        assert_eq!(kind(end), TRUNCATED);
        let (events, end) = decode_all(&[b"data: [DONE]\ndata: x\n"]);
        assert!(events.is_empty());
        assert_eq!(kind(end), TRUNCATED);
    }

    #[test]
    fn finish_returns_buffered_events_first() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(b"data: a\n\n: ka\n"));
        assert_eq!(decoder.finish().unwrap(), Some(data("a")));
        assert_eq!(decoder.finish().unwrap(), Some(SseEvent::KeepAlive));
        assert_eq!(decoder.finish().unwrap_err().kind(), TRUNCATED);
    }

    #[test]
    fn unterminated_last_line_is_dropped_unless_done() {
        let (events, end) = decode_all(&[b"data: a\n\ndata: {\"cut"]);
        assert_eq!(events, [data("a")]);
        assert_eq!(kind(end), TRUNCATED);
        for tail in [
            &b"data: [DONE]"[..],
            b"data:[DONE]",
            b"data: [DONE]\n",
            b"data: [DONE]\r",
        ] {
            let (events, end) = decode_all(&[b"data: a\n\n", tail]);
            assert_eq!(events, [data("a"), SseEvent::Done]);
            end.unwrap();
        }
        let (_, end) = decode_all(&[b"data: [DO"]);
        assert_eq!(kind(end), TRUNCATED);
    }

    #[test]
    fn truncation_sticks() {
        let mut decoder = SseDecoder::new();
        assert_eq!(decoder.finish().unwrap_err().kind(), TRUNCATED);
        assert_eq!(decoder.finish().unwrap_err().kind(), TRUNCATED);
        assert_eq!(decoder.next_event().unwrap_err().kind(), TRUNCATED);
    }

    #[test]
    fn debug_shows_no_content() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(b"data: secret"));
        let _ = decoder.next_event();
        let text = format!("{decoder:?}");
        assert!(
            !text.contains("secret") && text.contains("buffered_bytes: 12"),
            "{text}"
        );
    }

    // ChatStream

    type TestBody = http_body_util::StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn body(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> TestBody {
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    fn text_body(parts: &[&str]) -> TestBody {
        body(
            parts
                .iter()
                .map(|part| Ok(Frame::data(Bytes::copy_from_slice(part.as_bytes()))))
                .collect(),
        )
    }

    fn chunk(content: &str, finish_reason: Option<&str>) -> String {
        let reason = finish_reason.map_or("null".to_owned(), |r| format!("\"{r}\""));
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":{reason}}}]}}\n\n"
        )
    }

    const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3,\"prompt_cache_hit_tokens\":1}}\n\n";

    async fn collect(stream: &mut ChatStream<TestBody>) -> Vec<Result<ChatChunk, Error>> {
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        items
    }

    #[tokio::test]
    async fn typed_stream_yields_chunks_usage_and_counts_keep_alives() {
        let first = chunk("Hel", None);
        let second = chunk("lo", Some("stop"));
        let mut stream = ChatStream::new(body(vec![
            Ok(Frame::data(Bytes::from_static(
                b": keep-alive\n\n: keep-alive\n\n",
            ))),
            Ok(Frame::data(Bytes::copy_from_slice(&first.as_bytes()[..20]))),
            Ok(Frame::data(Bytes::copy_from_slice(&first.as_bytes()[20..]))),
            Ok(Frame::data(Bytes::copy_from_slice(second.as_bytes()))),
            Ok(Frame::data(Bytes::from_static(USAGE.as_bytes()))),
            Ok(Frame::trailers(http::HeaderMap::new())),
            Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
        ]));
        let items = collect(&mut stream).await;
        let chunks: Vec<ChatChunk> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].content(), Some("Hel"));
        assert_eq!(chunks[1].content(), Some("lo"));
        assert_eq!(stream.keep_alives(), 2);
        assert_eq!(stream.finish_reason(), Some(&FinishReason::Stop));
        let usage = stream.usage().unwrap();
        assert_eq!(
            (usage.total_tokens, usage.prompt_cache_hit_tokens),
            (3, Some(1))
        );
        assert!(futures_core::FusedStream::is_terminated(&stream));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn malformed_chunk_is_an_error_then_the_end() {
        let good = chunk("a", None);
        let mut stream = ChatStream::new(text_body(&[
            &good,
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"del\n\n",
            &good,
            "data: [DONE]\n\n",
        ]));
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let error = items[1].as_ref().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Stream(StreamFailure::Malformed));
        assert!(
            error.to_string().contains("not a chat.completion.chunk"),
            "{error}"
        );
        assert!(error.source().unwrap().is::<serde_json::Error>());
    }

    #[tokio::test]
    async fn missing_done_is_truncated() {
        let mut stream = ChatStream::new(text_body(&[&chunk("a", Some("stop"))]));
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].as_ref().unwrap_err().kind(), TRUNCATED);
    }

    #[tokio::test]
    async fn insufficient_system_resource_is_an_error_after_the_chunks() {
        let mut stream = ChatStream::new(text_body(&[
            &chunk("partial", None),
            &chunk("", Some("insufficient_system_resource")),
            "data: [DONE]\n\n",
        ]));
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[2].as_ref().unwrap_err().kind(),
            ErrorKind::Stream(StreamFailure::InsufficientSystemResource)
        );
    }

    #[tokio::test]
    async fn body_error_is_classified_and_ends_the_stream() {
        let mut stream = ChatStream::new(body(vec![
            Ok(Frame::data(Bytes::copy_from_slice(
                chunk("a", None).as_bytes(),
            ))),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
        ]));
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1].as_ref().unwrap_err().kind(),
            ErrorKind::Network(NetworkFailure::Reset)
        );
    }

    #[tokio::test]
    async fn error_object_in_the_stream_is_an_error() {
        let mut stream = ChatStream::new(text_body(&[
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
            "data: [DONE]\n\n",
        ]));
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 1);
        let error = items[0].as_ref().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Server);
        assert!(error.to_string().contains("overloaded"), "{error}");
    }

    #[tokio::test]
    async fn line_cap_applies_to_the_typed_stream() {
        let mut stream = ChatStream::with_decoder(
            text_body(&[&chunk("a long enough chunk", None)]),
            SseDecoder::with_max_line_len(16),
        );
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap_err().kind(), TOO_LONG);
    }

    #[tokio::test]
    async fn empty_data_events_count_as_keep_alives() {
        let mut stream = ChatStream::new(text_body(&[
            "data:\n\n",
            &chunk("a", None),
            "data: [DONE]\n\n",
        ]));
        let items = collect(&mut stream).await;
        assert_eq!(items.len(), 1);
        assert_eq!(stream.keep_alives(), 1);
    }
}
