//! The fast path of the observed body's per-chunk parse: a streamed chunk checked and read for
//! its last `finish_reason` and its `usage` in one walk over it, without serde.
//!
//! Every observing layer of a stream reads every chunk: is it JSON (else the stream is
//! malformed), which `finish_reason` ends it, does it carry `usage`. serde's lean parse
//! (`body::LeanChunk`) skips what it does not keep, yet still spends about 5,200 instructions
//! on a 240-byte DeepSeek chunk, mostly checking UTF-8 string by string and matching keys
//! (this scan: about 2,350, counted by `tests::scan_probe`), and about 8,000 on the final chunk
//! with `usage` (built through `#[serde(flatten)]`, which buffers the object first); with
//! three observing layers on a gateway's stream that was most of the stack's cost per stream.
//!
//! [`read`] answers for the chunks DeepSeek sends and declines the rest: it returns `Some`
//! only for input it has checked to be a JSON object that serde's lean parse accepts, and then
//! its answer is serde's. For anything else (a `usage` with a field DeepSeek does not document,
//! which serde keeps in [`Usage::extra`], or a count that is not a plain whole number, a `\u`
//! escape, a repeated key, deep nesting, invalid JSON, any control byte) it returns `None` and
//! the caller runs serde, which decides. A chunk it declines is never judged here, so it can
//! only be slower than serde on such a chunk, never different.
//!
//! One parse, not three: the layers observing one response read each chunk one after the
//! other on the thread that polls the body, so the scan remembers this thread's last chunk and
//! its answer, and a second reading of the same bytes is a compare.

use std::cell::RefCell;
use std::ops::Range;

use crate::deepseek::types::{CompletionTokensDetails, Usage};
use crate::metrics::scan::{is_printable_ascii, zero_byte};

/// Deepest nesting taken here (serde_json stops at 128).
const MAX_DEPTH: u32 = 64;

/// Chunks longer than this are scanned each time rather than remembered.
const MAX_REMEMBERED: usize = 4096;

/// This thread's last chunk scanned and what the scan found: the observing layers of one
/// response each read the same chunk, one after the other on the thread polling the body, so
/// the second and third reading are a compare, not a scan. Equal bytes give equal answers,
/// so a hit is right whoever scanned first.
struct Remembered {
    chunk: Vec<u8>,
    /// `None`: declined.
    answer: Option<Found>,
}

/// What a scan found in a chunk it answers for.
#[derive(Clone)]
struct Found {
    /// The last non-null `finish_reason`, if any.
    reason: Reason,
    /// The chunk's `usage`, unless absent or `null`. Boxed: every chunk's answer is copied
    /// out of the memory, and only the last of a stream has one.
    usage: Option<Box<Usage>>,
}

/// Where a chunk's last non-null `finish_reason` is.
#[derive(Clone)]
enum Reason {
    None,
    /// The reason's bytes in the chunk (a scan found it).
    At(Range<usize>),
    /// One of DeepSeek's reasons (the typed client parsed the chunk and said which).
    Known(&'static str),
}

/// A chunk as serde's lean parse reads it: its last non-null `finish_reason` among its
/// `choices` and its `usage`.
pub(crate) struct ChunkRead<'a> {
    pub(crate) finish_reason: Option<&'a str>,
    pub(crate) usage: Option<Box<Usage>>,
}

thread_local! {
    static LAST: RefCell<Remembered> = const {
        RefCell::new(Remembered { chunk: Vec::new(), answer: None })
    };
}

#[cfg(test)]
thread_local! {
    /// Scans run on this thread (tests count them).
    pub(crate) static SCANS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `chunk`'s last non-null `finish_reason` and its `usage`, when `chunk` is a JSON object this
/// scan is sure of; `None` when serde must decide (see the module docs). The same chunk read
/// again on this thread is answered from memory.
pub(crate) fn read(chunk: &[u8]) -> Option<ChunkRead<'_>> {
    let found = if chunk.len() <= MAX_REMEMBERED {
        LAST.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return scan(chunk);
            };
            if last.chunk.as_slice() != chunk {
                last.chunk.clear();
                last.chunk.extend_from_slice(chunk);
                last.answer = scan(chunk);
            }
            last.answer.clone()
        })
        .unwrap_or_else(|_| scan(chunk))
    } else {
        scan(chunk)
    }?;
    let finish_reason = match found.reason {
        // Between two quotes of valid UTF-8, with no escape: valid UTF-8 alone.
        Reason::At(range) => Some(std::str::from_utf8(chunk.get(range)?).ok()?),
        Reason::Known(reason) => Some(reason),
        Reason::None => None,
    };
    Some(ChunkRead {
        finish_reason,
        usage: found.usage,
    })
}

/// Remembers what the typed client's full parse of `chunk` (a [`ChatChunk`] parsed without
/// error) found: its last non-null `finish_reason` and its `usage`. serde's lean parse accepts
/// every chunk the full parse accepts and finds the same two (checked by the body tests), so
/// the layers that read this chunk after the client (an observed body reads a chunk when its
/// reader asks for the next one) get it from memory. A reason DeepSeek does not document is
/// not remembered: the scan finds it.
///
/// [`ChatChunk`]: crate::deepseek::ChatChunk
pub(crate) fn remember(chunk: &[u8], finish_reason: Option<&str>, usage: Option<&Usage>) {
    if chunk.len() > MAX_REMEMBERED {
        return;
    }
    let reason = match finish_reason {
        None => Reason::None,
        Some(reason) => match crate::body::KNOWN_FINISH_REASONS
            .iter()
            .find(|known| **known == reason)
        {
            Some(known) => Reason::Known(known),
            None => return,
        },
    };
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            last.chunk.clear();
            last.chunk.extend_from_slice(chunk);
            last.answer = Some(Found {
                reason,
                usage: usage.cloned().map(Box::new),
            });
        }
    });
}

/// The scan behind [`read`]: the reason as a range of `chunk`.
fn scan(chunk: &[u8]) -> Option<Found> {
    #[cfg(test)]
    SCANS.with(|scans| scans.set(scans.get() + 1));
    // Control bytes are invalid in strings and rare outside them: any at all goes to serde.
    // The rest must be valid UTF-8, as serde requires of the strings it reads; printable
    // ASCII, the usual chunk, is both at once.
    if !is_printable_ascii(chunk)
        && (chunk.iter().any(|&byte| byte < 0x20) || std::str::from_utf8(chunk).is_err())
    {
        return None;
    }
    let mut scan = Scan {
        bytes: chunk,
        at: 0,
    };
    scan.skip_spaces();
    let found = scan.top_object()?;
    scan.skip_spaces();
    if scan.at != scan.bytes.len() {
        return None;
    }
    Some(found)
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Where a `usage` field's value goes, by its type in [`Usage`].
enum Field<'u> {
    Count(&'u mut u64),
    Optional(&'u mut Option<u64>),
    Details(&'u mut Option<CompletionTokensDetails>),
}

impl Scan<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline(always)]
    fn skip_spaces(&mut self) {
        // No control bytes are left (checked first), so a space is the only whitespace.
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_spaces();
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// A string at `at` (its opening quote): the range of its contents, and whether it had a
    /// (simple) escape. `None` on a `\u` escape or an unknown one, or no closing quote.
    #[inline(always)]
    fn string(&mut self) -> Option<(Range<usize>, bool)> {
        self.skip_spaces();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.string_at_quote()
    }

    /// [`string`](Self::string) with `at` known to be at the opening quote.
    #[inline(always)]
    fn string_at_quote(&mut self) -> Option<(Range<usize>, bool)> {
        let start = self.at + 1;
        let mut at = start;
        let mut escaped = false;
        loop {
            let found = self.quote_or_backslash(at)?;
            if self.bytes[found] == b'"' {
                self.at = found + 1;
                return Some((start..found, escaped));
            }
            // A backslash: one of the simple escapes, or serde decides.
            match self.bytes.get(found + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                _ => return None,
            }
            escaped = true;
            at = found + 2;
        }
    }

    /// The first `"` or `\\` from `at`: a word of eight bytes at a time (most strings of a
    /// chunk, its keys, end within one or two), then byte by byte.
    #[inline(always)]
    fn quote_or_backslash(&self, mut at: usize) -> Option<usize> {
        const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
        const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
        while let Some(word) = self.bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
            let word = u64::from_le_bytes(*word);
            let found = zero_byte(word ^ QUOTES) | zero_byte(word ^ BACKSLASHES);
            if found != 0 {
                return Some(at + (found.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        let rest = self.bytes.get(at..)?;
        Some(
            at + rest
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\')?,
        )
    }

    /// A key (a string with no escape) and its colon.
    #[inline(always)]
    fn key(&mut self) -> Option<Range<usize>> {
        let (range, escaped) = self.string()?;
        if escaped {
            return None;
        }
        self.eat(b':')?;
        Some(range)
    }

    fn is(&self, range: &Range<usize>, name: &[u8]) -> bool {
        self.bytes.get(range.clone()) == Some(name)
    }

    /// Whether the next value is `null` (consumed if so).
    #[inline(always)]
    fn null(&mut self) -> bool {
        self.skip_spaces();
        self.literal(b"null").is_some()
    }

    /// After an element: `true` past a comma (another follows), `false` past `close` (the
    /// last one); `None` on anything else.
    #[inline(always)]
    fn more(&mut self, close: u8) -> Option<bool> {
        self.skip_spaces();
        let more = match self.peek()? {
            b',' => true,
            byte if byte == close => false,
            _ => return None,
        };
        self.at += 1;
        Some(more)
    }

    /// Steps over one array's elements: `element` must consume each. `None` on anything not a
    /// well-formed array.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            if !self.more(b']')? {
                return Some(());
            }
        }
    }

    /// Steps over one object's members: `member` is called with each key and must consume its
    /// value. `None` on anything not a well-formed object.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Range<usize>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.key()?;
            member(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// The top-level object: `choices` and `usage` read, each at most once (serde refuses a
    /// repeated field), every other value checked and skipped.
    fn top_object(&mut self) -> Option<Found> {
        let mut found = Found {
            reason: Reason::None,
            usage: None,
        };
        let (mut choices, mut usage) = (false, false);
        self.object(|scan, key| {
            if scan.is(&key, b"choices") {
                if std::mem::replace(&mut choices, true) {
                    return None;
                }
                found.reason = match scan.choices()? {
                    Some(range) => Reason::At(range),
                    None => Reason::None,
                };
            } else if scan.is(&key, b"usage") {
                if std::mem::replace(&mut usage, true) {
                    return None;
                }
                if !scan.null() {
                    found.usage = Some(Box::new(scan.usage()?));
                }
            } else {
                scan.value(1)?;
            }
            Some(())
        })?;
        Some(found)
    }

    /// A `usage` object with only the fields DeepSeek documents, each at most once, as serde
    /// builds [`Usage`] from it (absent counts are zero or `None`). Any other field (serde keeps
    /// it in `extra`) or a value serde might refuse is declined.
    fn usage(&mut self) -> Option<Usage> {
        let mut usage = Usage::default();
        let mut seen = 0u8;
        self.object(|scan, key| {
            let (bit, field) = match scan.bytes.get(key)? {
                b"prompt_tokens" => (1, Field::Count(&mut usage.prompt_tokens)),
                b"completion_tokens" => (2, Field::Count(&mut usage.completion_tokens)),
                b"total_tokens" => (4, Field::Count(&mut usage.total_tokens)),
                b"prompt_cache_hit_tokens" => {
                    (8, Field::Optional(&mut usage.prompt_cache_hit_tokens))
                }
                b"prompt_cache_miss_tokens" => {
                    (16, Field::Optional(&mut usage.prompt_cache_miss_tokens))
                }
                b"completion_tokens_details" => {
                    (32, Field::Details(&mut usage.completion_tokens_details))
                }
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match field {
                Field::Count(slot) => *slot = scan.count()?,
                Field::Optional(slot) => *slot = scan.optional_count()?,
                Field::Details(slot) => {
                    if !scan.null() {
                        *slot = Some(scan.details()?);
                    }
                }
            }
            Some(())
        })?;
        Some(usage)
    }

    /// `completion_tokens_details` with only `reasoning_tokens`, at most once.
    fn details(&mut self) -> Option<CompletionTokensDetails> {
        let mut details = CompletionTokensDetails::default();
        let mut seen = false;
        self.object(|scan, key| {
            if !scan.is(&key, b"reasoning_tokens") || std::mem::replace(&mut seen, true) {
                return None;
            }
            details.reasoning_tokens = scan.optional_count()?;
            Some(())
        })?;
        Some(details)
    }

    /// `null` (`None`) or a count.
    fn optional_count(&mut self) -> Option<Option<u64>> {
        if self.null() {
            return Some(None);
        }
        self.count().map(Some)
    }

    /// A whole number that fits a `u64`, written plainly (`0` or digits from a non-zero one):
    /// what serde reads as a `u64` without doubt. A sign, a fraction, an exponent or an
    /// overflow is declined.
    fn count(&mut self) -> Option<u64> {
        self.skip_spaces();
        let first = self.peek().filter(u8::is_ascii_digit)?;
        self.at += 1;
        let mut count = u64::from(first - b'0');
        if count == 0 {
            // A leading zero ends the number; the caller's separator check refuses `01`.
            return (!matches!(self.peek(), Some(b'.' | b'e' | b'E'))).then_some(0);
        }
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            count = count
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        (!matches!(self.peek(), Some(b'.' | b'e' | b'E'))).then_some(count)
    }

    /// `choices`: `null`, or an array of `null`s and objects; the last non-null
    /// `finish_reason` among them. An object in its place (which serde skips) is declined.
    fn choices(&mut self) -> Option<Option<Range<usize>>> {
        if self.null() {
            return Some(None);
        }
        let mut last = None;
        self.array(|scan| {
            if !scan.null()
                && let Some(reason) = scan.choice()?
            {
                last = Some(reason);
            }
            Some(())
        })?;
        Some(last)
    }

    /// One choice object: its `finish_reason` (a string with no escape, or `null`), at most
    /// once; every other value checked and skipped.
    fn choice(&mut self) -> Option<Option<Range<usize>>> {
        let mut reason = None;
        let mut seen = false;
        self.object(|scan, key| {
            if scan.is(&key, b"finish_reason") {
                if std::mem::replace(&mut seen, true) {
                    return None;
                }
                if !scan.null() {
                    let (range, escaped) = scan.string()?;
                    if escaped {
                        return None;
                    }
                    reason = Some(range);
                }
            } else {
                scan.value(3)?;
            }
            Some(())
        })?;
        Some(reason)
    }

    /// Checks and skips any JSON value, nested `depth` deep.
    fn value(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_spaces();
        match self.peek()? {
            b'"' => self.string_at_quote().map(|_| ()),
            b'{' => self.object(|scan, _| scan.value(depth + 1)),
            b'[' => self.array(|scan| scan.value(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    #[inline(always)]
    fn literal(&mut self, text: &[u8]) -> Option<()> {
        if self.bytes.get(self.at..self.at + text.len()) == Some(text) {
            self.at += text.len();
            Some(())
        } else {
            None
        }
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |scan: &mut Self| {
            let start = scan.at;
            while scan.peek().is_some_and(|b| b.is_ascii_digit()) {
                scan.at += 1;
            }
            scan.at > start
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !digits(self) {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check agrees with a byte-by-byte one for every byte value at every
    /// place of every length up to two words and a bit (the remainder included).
    #[test]
    fn the_printable_ascii_check_matches_a_byte_loop() {
        for len in 0..=19 {
            for at in 0..len {
                for byte in 0..=u8::MAX {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    let expected = bytes.iter().all(|b| (0x20..0x80).contains(b));
                    assert_eq!(is_printable_ascii(&bytes), expected, "{bytes:?}");
                }
            }
        }
        assert!(is_printable_ascii(b""));
    }

    fn last_finish_reason(chunk: &[u8]) -> Option<Option<&str>> {
        read(chunk).map(|read| read.finish_reason)
    }

    /// A chunk read again on the same thread is answered without a second scan, rightly; a
    /// chunk that differs in one byte is scanned again, as is one too long to remember.
    #[test]
    fn a_chunk_read_again_is_answered_from_memory() {
        let scans = || SCANS.with(std::cell::Cell::get);
        let stop = br#"{"choices":[{"finish_reason":"stop"}]}"#;
        let length = br#"{"choices":[{"finish_reason":"length"}]}"#;
        let before = scans();
        for _ in 0..3 {
            assert_eq!(last_finish_reason(stop), Some(Some("stop")));
        }
        assert_eq!(scans(), before + 1);
        assert_eq!(last_finish_reason(length), Some(Some("length")));
        assert_eq!(last_finish_reason(length), Some(Some("length")));
        assert_eq!(scans(), before + 2);
        // Same length, one byte different: scanned, not mistaken for the last one.
        let other = br#"{"choices":[{"finish_reason":"lenGth"}]}"#;
        assert_eq!(last_finish_reason(other), Some(Some("lenGth")));
        assert_eq!(scans(), before + 3);
        // Declined answers are remembered as declined.
        let declined = br#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":{}}}"#;
        assert_eq!(last_finish_reason(declined), None);
        assert_eq!(last_finish_reason(declined), None);
        assert_eq!(scans(), before + 4);
        // A usage is remembered with its chunk: the second reader gets the same counts.
        let final_chunk = br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        for _ in 0..2 {
            let usage = read(final_chunk).and_then(|read| read.usage);
            assert_eq!(
                usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
                Some((7, 3))
            );
        }
        assert_eq!(scans(), before + 5);
        let long = format!(r#"{{"pad":"{}","choices":[]}}"#, "x".repeat(MAX_REMEMBERED));
        assert_eq!(last_finish_reason(long.as_bytes()), Some(None));
        assert_eq!(last_finish_reason(long.as_bytes()), Some(None));
        assert_eq!(scans(), before + 7);
    }

    /// A probe, not a check: scans DeepSeek-shaped chunks many times, for counting the scan's
    /// instructions under callgrind (`cargo test --release --lib scan_probe -- --ignored`).
    #[test]
    #[ignore]
    fn scan_probe() {
        let chunks = [
            &br#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796321227,"id":"mock-chatcmpl-00000001","model":"deepseek-v4-flash","object":"chat.completion.chunk","system_fingerprint":"fp_mock_deepseek"}"#[..],
            br#"{"choices":[{"delta":{"content":"Hello "},"finish_reason":null,"index":0,"logprobs":null}],"created":1796321227,"id":"mock-chatcmpl-00000001","model":"deepseek-v4-flash","object":"chat.completion.chunk","system_fingerprint":"fp_mock_deepseek"}"#,
            br#"{"id":"930c60df-bf64-41c9-a88e-3ec75f81e00e","object":"chat.completion.chunk","created":1764064800,"model":"deepseek-v4-flash","system_fingerprint":"fp_8802369eaa_prod0623_fp8_kvcache","choices":[{"index":0,"delta":{"content":" there"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            br#"{"choices":[{"delta":{"content":""},"finish_reason":"stop","index":0,"logprobs":null}],"created":1796321227,"id":"mock-chatcmpl-00000001","model":"deepseek-v4-flash","object":"chat.completion.chunk","system_fingerprint":"fp_mock_deepseek"}"#,
        ];
        let rounds: usize = std::env::var("SCAN_PROBE_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        let mut found = 0;
        for _ in 0..rounds {
            for chunk in chunks {
                found +=
                    usize::from(std::hint::black_box(scan(std::hint::black_box(chunk))).is_some());
            }
        }
        assert_eq!(found, rounds * chunks.len());
    }
}
