//! The thread's last decoded SSE frame and the events it held, so that the next decoder given
//! the same bytes hands the events out without decoding them again.
//!
//! A gateway's stream is decoded several times per frame, one decoder after the other on the
//! thread polling the body: the breaker's and the client metrics' observed bodies, the typed
//! client's [`ChatStream`](super::ChatStream), and the server metrics' observed body, which
//! sees the same frame again when the chunk is forwarded unchanged. Each decoding of a
//! DeepSeek frame (one `data:` line and its blank line) costs a few hundred instructions of
//! line search, slicing and dispatch; a recalled frame costs a compare.
//!
//! Only a frame pushed into a decoder with nothing buffered, and decoded to its last byte with
//! nothing left over (its events complete, no line cut at its end), is remembered, with the
//! decoder's two settings that can change the result: whether it is at the stream's start (a
//! byte order mark is skipped there) and its line cap. Its events are kept as ranges of the
//! frame, so a recall slices the new frame (equal bytes) and copies nothing.

use std::cell::RefCell;

/// Frames longer than this are decoded each time rather than remembered.
pub(super) const MAX_FRAME: usize = 4096;

/// Frames with more events than this are decoded each time (DeepSeek sends one per frame).
const MAX_EVENTS: usize = 4;

/// What an event of a remembered frame was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShapeKind {
    /// `data:` whose bytes are `start..end` of the frame.
    Data,
    KeepAlive,
    Done,
}

/// One event of a remembered frame, and how much of the frame the decoder had read when it
/// handed the event out (where decoding resumes if another frame arrives in between).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) kind: ShapeKind,
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) consumed: u32,
}

/// A frame's events, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shapes {
    items: [Shape; MAX_EVENTS],
    len: u8,
}

impl Shapes {
    pub(super) const fn new() -> Shapes {
        let empty = Shape {
            kind: ShapeKind::KeepAlive,
            start: 0,
            end: 0,
            consumed: 0,
        };
        Shapes {
            items: [empty; MAX_EVENTS],
            len: 0,
        }
    }

    /// Adds `shape`; `false` when there is no room (the frame is then not remembered).
    pub(super) fn push(&mut self, shape: Shape) -> bool {
        let Some(slot) = self.items.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = shape;
        self.len += 1;
        true
    }

    pub(super) fn get(&self, index: u8) -> Option<Shape> {
        if index >= self.len {
            return None;
        }
        self.items.get(usize::from(index)).copied()
    }
}

struct Remembered {
    frame: Vec<u8>,
    at_start: bool,
    max_line_len: usize,
    shapes: Shapes,
}

thread_local! {
    static LAST: RefCell<Remembered> = const {
        RefCell::new(Remembered {
            frame: Vec::new(),
            at_start: false,
            max_line_len: 0,
            shapes: Shapes::new(),
        })
    };
}

#[cfg(test)]
thread_local! {
    /// Frames answered from memory on this thread (tests count them).
    pub(super) static RECALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The events of `frame` if it is this thread's last remembered frame, decoded with the same
/// settings.
pub(super) fn recall(frame: &[u8], at_start: bool, max_line_len: usize) -> Option<Shapes> {
    LAST.try_with(|last| {
        let last = last.try_borrow().ok()?;
        // An empty memory never matches: a pushed frame is never empty.
        let hit = last.at_start == at_start
            && last.max_line_len == max_line_len
            && last.frame.as_slice() == frame;
        #[cfg(test)]
        if hit {
            RECALLS.with(|recalls| recalls.set(recalls.get() + 1));
        }
        hit.then_some(last.shapes)
    })
    .ok()
    .flatten()
}

/// Remembers `frame` and its events as this thread's last.
pub(super) fn remember(frame: &[u8], at_start: bool, max_line_len: usize, shapes: Shapes) {
    if frame.len() > MAX_FRAME {
        return;
    }
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            last.frame.clear();
            last.frame.extend_from_slice(frame);
            last.at_start = at_start;
            last.max_line_len = max_line_len;
            last.shapes = shapes;
        }
    });
}

/// Forgets the remembered frame (tests compare decoders with and without the memory).
#[cfg(test)]
pub(super) fn forget() {
    LAST.with(|last| last.borrow_mut().frame.clear());
}

/// Where `data` lies in `frame` when it is a slice of it: the decoder hands out slices of the
/// frame it read, and anything else (data joined from several lines) is not rememberable.
pub(super) fn range_in(frame: &[u8], data: &[u8]) -> Option<(u32, u32)> {
    if data.is_empty() {
        return Some((0, 0));
    }
    let start = (data.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
    let end = start.checked_add(data.len())?;
    if end > frame.len() {
        return None;
    }
    Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
}
