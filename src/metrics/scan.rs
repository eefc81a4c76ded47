//! A lean scan of a JSON response for the two fields the metrics need, `model` and `usage`,
//! as frames pass: no document is built and nothing is buffered except the few bytes of a
//! field split across frames.
//!
//! Why a byte search is sound here: inside a JSON string every `"` is escaped, so the bytes
//! `"model"` or `"usage"` (quote, name, quote) can only be an object key; DeepSeek's responses
//! have these keys only at the top level.

use std::ops::Range;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::body::ByteSearch;

/// The searchers for the two keys, built once (building one costs more than a short search).
static MODEL_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(MODEL_KEY));
static USAGE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(USAGE_KEY));

/// The `model` key, with its quotes.
pub(crate) const MODEL_KEY: &[u8] = b"\"model\"";
/// The `usage` key, with its quotes.
pub(crate) const USAGE_KEY: &[u8] = b"\"usage\"";

fn find_key(haystack: &[u8], key: &[u8]) -> Option<usize> {
    if key == MODEL_KEY {
        MODEL_FINDER.find(haystack)
    } else if key == USAGE_KEY {
        USAGE_FINDER.find(haystack)
    } else {
        memchr::memmem::find(haystack, key)
    }
}

/// The longest field value kept across frames (a usage object is ~300 bytes).
const MAX_CAPTURE: usize = 1024;

/// The JSON value type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueKind {
    /// A string: the captured range is its raw contents, without the quotes.
    String,
    /// An object: the captured range runs from `{` to the matching `}`.
    Object,
}

/// Where a field's value ends, in the bytes after its key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ValueEnd {
    Complete(Range<usize>),
    Incomplete,
    Invalid,
}

/// Finds the value after a key: `<ws> : <ws> value`.
pub(crate) fn value_end(bytes: &[u8], kind: ValueKind) -> ValueEnd {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    match bytes.get(i) {
        None => return ValueEnd::Incomplete,
        Some(b':') => i += 1,
        Some(_) => return ValueEnd::Invalid,
    }
    skip_ws(&mut i);
    match (kind, bytes.get(i)) {
        (_, None) => ValueEnd::Incomplete,
        (ValueKind::String, Some(b'"')) => match memchr::memchr(b'"', &bytes[i + 1..]) {
            Some(len) => ValueEnd::Complete(i + 1..i + 1 + len),
            None => ValueEnd::Incomplete,
        },
        (ValueKind::Object, Some(b'{')) => match value_end_object(&bytes[i..]) {
            ValueEnd::Complete(range) => ValueEnd::Complete(range.start + i..range.end + i),
            other => other,
        },
        _ => ValueEnd::Invalid,
    }
}

/// Where the object starting at `bytes[0]` (a `{`) ends.
fn value_end_object(bytes: &[u8]) -> ValueEnd {
    // Jump between the bytes that matter (braces and quotes) rather than visiting each byte.
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(offset) = memchr::memchr3(b'{', b'}', b'"', &bytes[at..]) {
        at += offset;
        match bytes[at] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return ValueEnd::Complete(0..at + 1);
                }
            }
            _ => match string_end(&bytes[at + 1..]) {
                Some(len) => at += len + 1,
                None => return ValueEnd::Incomplete,
            },
        }
        at += 1;
    }
    ValueEnd::Incomplete
}

/// The length of a JSON string's contents up to its closing quote (escapes skipped).
fn string_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        at += memchr::memchr2(b'"', b'\\', &bytes[at..])?;
        if bytes[at] == b'"' {
            return Some(at);
        }
        at += 2;
        if at > bytes.len() {
            return None;
        }
    }
}

/// The value of the first `"model"` key of a complete JSON text (near its start in a DeepSeek
/// answer), if it is a string without escapes.
#[cfg(test)]
pub(crate) fn find_model(json: &[u8]) -> Option<&[u8]> {
    find_model_value(json).and_then(string_contents)
}

/// The bytes just after the opening quote of the first `"model"` key's value in a complete
/// JSON text (near its start in a DeepSeek answer), if that value is a string: its `m` found
/// a word at a time, cheaper than a search call at that distance. The caller can compare the
/// name it expects there before looking for the closing quote ([`string_contents`]).
#[inline]
pub(crate) fn find_model_value(json: &[u8]) -> Option<&[u8]> {
    let mut from = 1;
    loop {
        let m = from + find_byte(json.get(from..)?, b'm')?;
        if key_at(json, m - 1) {
            let rest = &json[m - 1 + MODEL_KEY.len()..];
            // Compact JSON: the colon and the value's quote right after the key.
            if let Some(value) = rest.strip_prefix(b":\"") {
                return Some(value);
            }
            let mut i = skip_ws(rest, 0);
            if rest.get(i) != Some(&b':') {
                // `"model"` as a value: the key may come later.
                from = m + 1;
                continue;
            }
            i = skip_ws(rest, i + 1);
            if rest.get(i) != Some(&b'"') {
                return None;
            }
            return Some(&rest[i + 1..]);
        }
        from = m + 1;
    }
}

/// Whether `"model"` starts at `json[at]`: one word compare of its seven bytes when eight are
/// there (the eighth, the colon in compact JSON, masked off), no compare call.
#[inline(always)]
fn key_at(json: &[u8], at: usize) -> bool {
    const KEY: u64 = word(b"\"model\"\0") & 0x00ff_ffff_ffff_ffff;
    match word_at(json, at) {
        Some(word) => word & 0x00ff_ffff_ffff_ffff == KEY,
        None => json
            .get(at..)
            .is_some_and(|rest| rest.starts_with(MODEL_KEY)),
    }
}

/// Whether `bytes` start with `prefix`, compared a word at a time (the last word overlapping
/// the one before it) rather than through a compare call: for names of a few dozen bytes.
#[inline(always)]
pub(crate) fn starts_with_words(bytes: &[u8], prefix: &[u8]) -> bool {
    let Some(bytes) = bytes.get(..prefix.len()) else {
        return false;
    };
    if prefix.len() < 8 {
        return bytes == prefix;
    }
    let mut at = 0;
    loop {
        let at_word = at.min(prefix.len() - 8);
        if word_at(bytes, at_word) != word_at(prefix, at_word) {
            return false;
        }
        at += 8;
        if at >= prefix.len() {
            return true;
        }
    }
}

/// The contents of the string whose opening quote came just before `value`, up to its closing
/// quote; `None` if it has an escape (an escaped model name is not a label anyway) or does
/// not end in `value`.
pub(crate) fn string_contents(value: &[u8]) -> Option<&[u8]> {
    match quote_or_backslash(value) {
        Some(len) if value[len] == b'"' => Some(&value[..len]),
        _ => None,
    }
}

/// The first `byte` in `bytes`, eight bytes at a time.
#[inline]
fn find_byte(bytes: &[u8], byte: u8) -> Option<usize> {
    // Inlined with `a == b`, the two compares fold into one.
    find_either(bytes, byte, byte)
}

/// The value of `key` (written with its quotes, e.g. `"model"`) in one complete JSON text.
pub(crate) fn find_field<'a>(json: &'a [u8], key: &[u8], kind: ValueKind) -> Option<&'a [u8]> {
    let at = find_key(json, key)? + key.len();
    match value_end(&json[at..], kind) {
        ValueEnd::Complete(range) => Some(&json[at..][range]),
        _ => None,
    }
}

/// The token counts of a complete JSON body's `usage` object (see [`parse_usage`]), found
/// from the end of the body and read in one pass; `None` if the body has no complete one.
pub(crate) fn find_usage(json: &[u8]) -> Option<[Option<u64>; 4]> {
    // `usage` ends a DeepSeek answer: searching back from the end skips the content, however
    // long. Its keys have no `u`, so the first `u` back is usually the key's.
    static U_SEARCH: LazyLock<ByteSearch> = LazyLock::new(|| ByteSearch::new(b'u'));
    let search = &*U_SEARCH;
    let mut end = json.len();
    let mut key = None;
    while let Some(u) = json.get(..end).and_then(|head| search.rfind(head)) {
        if u > 0 && json[u - 1..].starts_with(USAGE_KEY) {
            key = Some(u - 1);
            break;
        }
        end = u;
    }
    if let Some(key) = key {
        let rest = &json[key + USAGE_KEY.len()..];
        let mut i = skip_ws(rest, 0);
        if rest.get(i) == Some(&b':') {
            i = skip_ws(rest, i + 1);
            if rest.get(i) == Some(&b'{') {
                return read_usage(&rest[i..]);
            }
        }
    }
    // `"usage"` as something else than a key with an object (not DeepSeek's shape): the
    // forward scan decides, as for any other body.
    find_field(json, USAGE_KEY, ValueKind::Object).map(parse_usage)
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// [`parse_usage`] and [`value_end`] in one pass over an object starting at its `{`,
/// following the grammar: DeepSeek's usage keys are recognised by their first eight bytes and
/// skipped whole, other keys are searched to their closing quote, numbers are read in place.
/// Anything else (a string value, an escape, an array) goes to the general scan. `None` if the
/// object does not end in `object`.
fn read_usage(object: &[u8]) -> Option<[Option<u64>; 4]> {
    if let Some(tokens) = read_usage_deepseek(object) {
        return Some(tokens);
    }
    if let Some(tokens) = read_usage_compact(object) {
        return Some(tokens);
    }
    match read_usage_fast(object) {
        Fast::Read(tokens) => Some(tokens),
        Fast::Incomplete => None,
        Fast::General => match value_end_object(object) {
            ValueEnd::Complete(range) => Some(parse_usage(&object[range])),
            _ => None,
        },
    }
}

/// Whether `bytes[at..]` starts with `text`, compared a word at a time
/// ([`starts_with_words`]): once inlined with `text` a constant, a load and a compare per
/// word, no loop.
#[inline(always)]
fn text_at(bytes: &[u8], at: usize, text: &'static [u8]) -> bool {
    bytes
        .get(at..)
        .is_some_and(|here| starts_with_words(here, text))
}

/// After `text` at `*at`, the unsigned number of 1 to 7 digits that follows it: its value
/// if `read` (else 0, for a key only skipped), with `*at` moved past its digits.
#[inline(always)]
fn number_after(object: &[u8], at: &mut usize, text: &'static [u8], read: bool) -> Option<u64> {
    // Usually the text and eight bytes after it are there: one bounds check for both, and the
    // digits' word read from the same slice. Near the end, the word is padded with zeros.
    let number_word = match object.get(*at..at.wrapping_add(text.len() + 8)) {
        Some(here) => {
            if !text_at(here, 0, text) {
                return None;
            }
            word_at(here, text.len())?
        }
        None => {
            if !text_at(object, *at, text) {
                return None;
            }
            padded_word_at(object, *at + text.len())
        }
    };
    let start = *at + text.len();
    let (digits_word, digits) = swar_digits(number_word)?;
    *at = start + digits;
    Some(if read {
        swar_value(digits_word, digits)
    } else {
        0
    })
}

/// DeepSeek's usage object exactly as it sends it: compact, with its keys in its order
/// (`prompt_tokens`, `completion_tokens`, `total_tokens`, maybe `prompt_tokens_details` with
/// `cached_tokens`, `prompt_cache_hit_tokens`, `prompt_cache_miss_tokens`, maybe
/// `completion_tokens_details` with `reasoning_tokens`), each number of at most 7 digits.
/// Each expected key is compared as whole words, quotes, comma and colon included: no
/// search, no key dispatch. `None` as soon as the text differs (the compact reader, which
/// takes the same keys in any order, then decides).
fn read_usage_deepseek(object: &[u8]) -> Option<[Option<u64>; 4]> {
    let mut at = 0;
    let input = number_after(object, &mut at, b"{\"prompt_tokens\":", true)?;
    let output = number_after(object, &mut at, b",\"completion_tokens\":", true)?;
    number_after(object, &mut at, b",\"total_tokens\":", false)?;
    // `cached_tokens` is checked, not read: `prompt_cache_hit_tokens` (always there in this
    // form) comes first, as in the general scan.
    let details = b",\"prompt_tokens_details\":{\"cached_tokens\":";
    if text_at(object, at, details) {
        number_after(object, &mut at, details, false)?;
        if object.get(at) != Some(&b'}') {
            return None;
        }
        at += 1;
    }
    let cached = number_after(object, &mut at, b",\"prompt_cache_hit_tokens\":", true)?;
    number_after(object, &mut at, b",\"prompt_cache_miss_tokens\":", false)?;
    let mut reasoning = None;
    let details = b",\"completion_tokens_details\":{\"reasoning_tokens\":";
    if text_at(object, at, details) {
        reasoning = Some(number_after(object, &mut at, details, true)?);
        if object.get(at) != Some(&b'}') {
            return None;
        }
        at += 1;
    }
    if object.get(at) != Some(&b'}') {
        return None;
    }
    Some([Some(input), Some(output), Some(cached), reasoning])
}

enum Fast {
    Read([Option<u64>; 4]),
    Incomplete,
    General,
}

/// Where a key's number goes: input, output, cached input, reasoning, OpenAI's cached
/// tokens; `NOWHERE` for the keys not read.
const CACHED_DETAILS: usize = 4;
const NOWHERE: usize = 5;

const fn word(bytes: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*bytes)
}

/// The eight bytes at `at` as one little-endian word, if there are eight.
#[inline(always)]
fn word_at(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: &[u8; 8] = bytes.get(at..at.wrapping_add(8))?.try_into().ok()?;
    Some(u64::from_le_bytes(*chunk))
}

/// Whether `rest` starts with `key` (at least 8 bytes long), compared a word at a time: the
/// first word is already known to match, the others (the last one overlapping the one before
/// when the length is not a multiple of 8) are a load and a compare each once inlined with
/// the key as a constant.
#[inline(always)]
fn rest_of_key_is(rest: &[u8], key: &'static [u8]) -> bool {
    let Some(rest) = rest.get(..key.len()) else {
        return false;
    };
    let mut at = 8;
    while at < key.len() {
        let at_word = at.min(key.len() - 8);
        if word_at(rest, at_word) != word_at(key, at_word) {
            return false;
        }
        at += 8;
    }
    true
}

/// A known key at the start of `rest` (just after its opening quote): its length with the
/// closing quote, and where its number goes.
#[inline(always)]
fn known_key(rest: &[u8]) -> Option<(usize, usize)> {
    const PROMPT_T: u64 = word(b"prompt_t");
    const PROMPT_C: u64 = word(b"prompt_c");
    const COMPLETI: u64 = word(b"completi");
    const TOTAL_TO: u64 = word(b"total_to");
    const CACHED_T: u64 = word(b"cached_t");
    const REASONIN: u64 = word(b"reasonin");
    let key =
        |key: &'static [u8], slot: usize| rest_of_key_is(rest, key).then_some((key.len(), slot));
    match word_at(rest, 0)? {
        PROMPT_T => key(b"prompt_tokens\"", 0).or_else(|| key(b"prompt_tokens_details\"", NOWHERE)),
        COMPLETI => {
            key(b"completion_tokens\"", 1).or_else(|| key(b"completion_tokens_details\"", NOWHERE))
        }
        PROMPT_C => key(b"prompt_cache_hit_tokens\"", 2)
            .or_else(|| key(b"prompt_cache_miss_tokens\"", NOWHERE)),
        TOTAL_TO => key(b"total_tokens\"", NOWHERE),
        CACHED_T => key(b"cached_tokens\"", CACHED_DETAILS),
        REASONIN => key(b"reasoning_tokens\"", 3),
        _ => None,
    }
}

/// The unsigned integer whose digits start at `object[i]` (at least one digit), and the index
/// after its last digit. Up to 19 digits cannot overflow a `u64`; a longer number is read
/// again saturating.
#[inline(always)]
fn read_number(object: &[u8], start: usize) -> (u64, usize) {
    let mut value = 0u64;
    let mut i = start;
    while let Some(&byte) = object.get(i) {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        i += 1;
    }
    if i - start > 19 {
        value = object[start..i].iter().fold(0u64, |value, digit| {
            value
                .saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
        });
    }
    (value, i)
}

/// The object in the compact form DeepSeek (and OpenAI) send: no whitespace, only the known
/// keys (see [`known_key`]), each with an unsigned integer of at most 7 digits or a nested
/// object of the same form. A word per key and per number, no byte loop. `None` for anything
/// else (the byte-at-a-time reader then decides, as it always did).
fn read_usage_compact(object: &[u8]) -> Option<[Option<u64>; 4]> {
    // Eight slots for the six places, so that a slot needs no bounds check.
    let mut slots = [None; 8];
    let mut depth = 0u32;
    // At an object's `{`.
    let mut i = 0;
    loop {
        // At a `{` or `,`: a key follows.
        if object.get(i + 1) != Some(&b'"') {
            return None;
        }
        let (len, slot) = known_key(object.get(i + 2..)?)?;
        let colon = i + 2 + len;
        if object.get(colon) != Some(&b':') {
            return None;
        }
        let start = colon + 1;
        let Some((digits_word, digits)) = swar_digits(padded_word_at(object, start)) else {
            if object.get(start) == Some(&b'{') {
                // A nested object: its keys next.
                depth += 1;
                i = start;
                continue;
            }
            return None;
        };
        // The keys not read (totals, cache misses) are only skipped: no need for their value.
        if slot != NOWHERE {
            slots[slot & 7] = Some(swar_value(digits_word, digits));
        }
        i = start + digits;
        // After a value: `,` and the next key, or the `}` of one or more objects.
        loop {
            match object.get(i) {
                Some(b',') => break,
                Some(b'}') if depth == 0 => {
                    let [input, output, cached, reasoning, details, ..] = slots;
                    return Some([input, output, cached.or(details), reasoning]);
                }
                Some(b'}') => {
                    depth -= 1;
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// The eight bytes at `at` as one little-endian word, zeros past the end.
#[inline(always)]
fn padded_word_at(bytes: &[u8], at: usize) -> u64 {
    if let Some(word) = word_at(bytes, at) {
        return word;
    }
    // The last eight bytes, shifted down so that `at` is the low byte (zeros come in above).
    if let Some(last) = bytes.len().checked_sub(8)
        && let Some(word) = word_at(bytes, last)
        && at < bytes.len()
    {
        return word >> (8 * (at - last));
    }
    let mut padded = [0u8; 8];
    let rest = bytes.get(at..).unwrap_or_default();
    let len = rest.len().min(8);
    padded[..len].copy_from_slice(&rest[..len]);
    u64::from_le_bytes(padded)
}

/// The unsigned integer that starts `word` (eight bytes, the first in the low byte) and how
/// many digits it has: 1 to 7, with a non-digit after them. `None` for no digit or 8 digits
/// in a row (a longer number is read byte by byte).
#[cfg(test)]
fn swar_number(word: u64) -> Option<(u64, usize)> {
    swar_digits(word).map(|(digits_word, digits)| (swar_value(digits_word, digits), digits))
}

/// How many digits start `word` (1 to 7, with a non-digit after them; `None` for none or
/// 8), with the word their value is read from ([`swar_value`]): a number only skipped is
/// not combined.
#[inline(always)]
fn swar_digits(word: u64) -> Option<(u64, usize)> {
    // Digits become 0 to 9; a byte is not a digit when it is 10 or more (the sum's high bit,
    // as no byte under 0x80 carries) or already has its high bit. A byte at 0x8a or more
    // carries into the next one, but only the lowest flagged byte is used.
    let x = word ^ (ONES * u64::from(b'0'));
    let not_digit = (x | x.wrapping_add(ONES * 0x76)) & HIGH;
    let digits = (not_digit.trailing_zeros() / 8) as usize;
    if digits == 0 || digits == 8 {
        return None;
    }
    Some((x, digits))
}

/// The value of the `digits` (1 to 7) digits that start `x`, the word [`swar_digits`] gave.
#[inline(always)]
fn swar_value(x: u64, digits: usize) -> u64 {
    // The digits moved to the top bytes, under zeros: a number of 8 digits, first in the low
    // byte, combined in pairs, then fours, then eights.
    let mut v = x << (64 - 8 * digits as u32);
    v = ((v & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(10 << 8 | 1)) >> 8;
    v = ((v & 0x00ff_00ff_00ff_00ff).wrapping_mul(100 << 16 | 1)) >> 16;
    v = ((v & 0x0000_ffff_0000_ffff).wrapping_mul(10000 << 32 | 1)) >> 32;
    v
}

/// The first byte at or after `i` that is not whitespace, with its index (compact JSON has
/// none: one comparison).
#[inline(always)]
fn token(object: &[u8], i: usize) -> Option<(usize, u8)> {
    match object.get(i) {
        Some(&byte) if !byte.is_ascii_whitespace() => Some((i, byte)),
        Some(_) => {
            let i = skip_ws(object, i);
            object.get(i).map(|&byte| (i, byte))
        }
        None => None,
    }
}

fn read_usage_fast(object: &[u8]) -> Fast {
    let mut slots = [None; 6];
    let mut depth = 0usize;
    let mut i = 0;
    // At an object's `{`, or at the `,` after a value: a key or the end of an object follows.
    loop {
        let Some((at, byte)) = token(object, i) else {
            return Fast::Incomplete;
        };
        match byte {
            b'{' => depth += 1,
            b',' => {}
            b'}' => {
                let Some(less) = depth.checked_sub(1) else {
                    return Fast::General;
                };
                depth = less;
                if depth == 0 {
                    let [input, output, cached, reasoning, details, _] = slots;
                    return Fast::Read([input, output, cached.or(details), reasoning]);
                }
                i = at + 1;
                continue;
            }
            _ => return Fast::General,
        }
        match token(object, at + 1) {
            None => return Fast::Incomplete,
            Some((at, b'"')) => i = at + 1,
            Some((at, b'}')) => {
                i = at;
                continue;
            }
            Some(_) => return Fast::General,
        }
        // A key.
        let start = i;
        let (len, slot) = match known_key(&object[start..]) {
            Some(known) => known,
            None => match quote_or_backslash(&object[start..]) {
                Some(len) if object[start + len] == b'"' => (len + 1, NOWHERE),
                Some(_) => return Fast::General,
                None => return Fast::Incomplete,
            },
        };
        match token(object, start + len) {
            None => return Fast::Incomplete,
            Some((at, b':')) => i = at + 1,
            Some(_) => return Fast::General,
        }
        match token(object, i) {
            None => return Fast::Incomplete,
            // A nested object: its keys next.
            Some((at, b'{')) => {
                i = at;
                continue;
            }
            Some((at, b)) if b.is_ascii_digit() => i = at,
            Some(_) => return Fast::General,
        }
        let (value, end) = read_number(object, i);
        i = end;
        if let Some(slot) = slots.get_mut(slot) {
            *slot = Some(value);
        }
    }
}

/// The first `"` or `\\` in `bytes`, eight bytes at a time: keys are too short for a search
/// call to pay off, and a byte loop costs several instructions a byte.
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    find_either(bytes, b'"', b'\\')
}

/// The first `a` or `b` in `bytes`, eight bytes at a time (one word compare per eight bytes).
#[inline(always)]
fn find_either(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found =
            zero_byte(word ^ (ONES * u64::from(a))) | zero_byte(word ^ (ONES * u64::from(b)));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&byte| byte == a || byte == b)
        .map(|offset| at + offset)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether every byte of `bytes` is printable ASCII (`0x20..=0x7f`): no control byte and
/// nothing but ASCII, so valid UTF-8 with no byte JSON forbids in a string. Eight bytes at a
/// time, with no early exit, so the loop runs many bytes an instruction.
pub(crate) fn is_printable_ascii(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    let mut flags = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        // A byte under 0x20 borrows into its high bit (exact while no byte is 0x80 or
        // more, and any such byte is flagged by its own high bit anyway).
        flags |= (word.wrapping_sub(ONES * 0x20) & !word) | word;
    }
    flags & HIGH == 0
        && chunks
            .remainder()
            .iter()
            .all(|byte| (0x20..0x80).contains(byte))
}

/// The high bit of each zero byte of `word` (and maybe of bytes above one: the lowest flagged
/// byte is always a true zero, as a borrow only runs upwards).
#[inline]
pub(crate) fn zero_byte(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGH
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Searching,
    Capturing,
    Finished,
}

/// Captures one field of a JSON body fed frame by frame.
#[derive(Debug)]
pub(crate) struct FieldCapture {
    key: &'static [u8],
    kind: ValueKind,
    state: State,
    /// The value's bytes so far, when it is split across frames.
    captured: Vec<u8>,
    /// The last bytes of the previous frame, to find a key split across two frames.
    tail: [u8; 16],
    tail_len: usize,
}

impl FieldCapture {
    /// A capture of `key` (with its quotes; at most 16 bytes).
    pub(crate) fn new(key: &'static [u8], kind: ValueKind) -> FieldCapture {
        debug_assert!(key.len() <= 16);
        FieldCapture {
            key,
            kind,
            state: State::Searching,
            captured: Vec::new(),
            tail: [0; 16],
            tail_len: 0,
        }
    }

    /// Whether the capture is over (found, or given up).
    pub(crate) fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Feeds the next frame; returns the value (see [`ValueKind`]) once it is complete.
    pub(crate) fn feed<'a>(&'a mut self, frame: &'a [u8]) -> Option<&'a [u8]> {
        match self.state {
            State::Finished => None,
            State::Searching => {
                let Some(after) = self.find_key(frame) else {
                    self.keep_tail(frame);
                    return None;
                };
                let rest = &frame[after..];
                match value_end(rest, self.kind) {
                    ValueEnd::Complete(range) => {
                        self.state = State::Finished;
                        Some(&rest[range])
                    }
                    ValueEnd::Invalid => {
                        self.state = State::Finished;
                        None
                    }
                    ValueEnd::Incomplete if rest.len() > MAX_CAPTURE => {
                        self.state = State::Finished;
                        None
                    }
                    ValueEnd::Incomplete => {
                        self.captured.extend_from_slice(rest);
                        self.state = State::Capturing;
                        None
                    }
                }
            }
            State::Capturing => {
                let room = MAX_CAPTURE.saturating_sub(self.captured.len());
                self.captured
                    .extend_from_slice(&frame[..frame.len().min(room)]);
                match value_end(&self.captured, self.kind) {
                    ValueEnd::Complete(range) => {
                        self.state = State::Finished;
                        Some(&self.captured[range])
                    }
                    ValueEnd::Incomplete if self.captured.len() < MAX_CAPTURE => None,
                    _ => {
                        self.state = State::Finished;
                        None
                    }
                }
            }
        }
    }

    /// The offset in `frame` just after the key, if the key ends in this frame.
    fn find_key(&self, frame: &[u8]) -> Option<usize> {
        let key = self.key;
        if self.tail_len > 0 {
            let head = frame.len().min(key.len() - 1);
            let mut joined = [0u8; 32];
            joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joined[self.tail_len..self.tail_len + head].copy_from_slice(&frame[..head]);
            let joined = &joined[..self.tail_len + head];
            if let Some(at) = find_key(joined, key)
                && at + key.len() > self.tail_len
            {
                return Some(at + key.len() - self.tail_len);
            }
        }
        find_key(frame, key).map(|at| at + key.len())
    }

    /// Keeps the last `key.len() - 1` bytes seen, across short frames too.
    fn keep_tail(&mut self, frame: &[u8]) {
        let keep = self.key.len() - 1;
        if frame.len() >= keep {
            self.tail[..keep].copy_from_slice(&frame[frame.len() - keep..]);
            self.tail_len = keep;
        } else {
            let total = self.tail_len + frame.len();
            let drop = total.saturating_sub(keep);
            self.tail.copy_within(drop..self.tail_len, 0);
            let start = self.tail_len - drop;
            self.tail[start..start + frame.len()].copy_from_slice(frame);
            self.tail_len = start + frame.len();
        }
    }
}

/// Token counts from a `usage` object: input, output, cached input, reasoning.
///
/// Reads `prompt_tokens`, `completion_tokens`, `prompt_cache_hit_tokens` (or OpenAI's
/// `prompt_tokens_details.cached_tokens` when DeepSeek's is absent) and
/// `completion_tokens_details.reasoning_tokens`, by key name at any depth.
pub(crate) fn parse_usage(object: &[u8]) -> [Option<u64>; 4] {
    let mut tokens = [None; 4];
    let mut cached_details = None;
    let mut at = 0;
    // Each key, then (if its value is a number) the number; everything else is skipped.
    while let Some(offset) = memchr::memchr(b'"', &object[at..]) {
        let key_start = at + offset + 1;
        let Some(len) = memchr::memchr(b'"', &object[key_start..]) else {
            break;
        };
        let key = &object[key_start..key_start + len];
        at = key_start + len + 1;
        while at < object.len() && (object[at].is_ascii_whitespace() || object[at] == b':') {
            at += 1;
        }
        let digits = object[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            continue;
        }
        let value = object[at..at + digits].iter().fold(0u64, |value, digit| {
            value
                .saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
        });
        at += digits;
        match key {
            b"prompt_tokens" => tokens[0] = Some(value),
            b"completion_tokens" => tokens[1] = Some(value),
            b"prompt_cache_hit_tokens" => tokens[2] = Some(value),
            b"cached_tokens" => cached_details = Some(value),
            b"reasoning_tokens" => tokens[3] = Some(value),
            _ => {}
        }
    }
    if tokens[2].is_none() {
        tokens[2] = cached_details;
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_words_have_zeros_past_the_end() {
        let bytes = b"0123456789ab";
        for at in 0..=bytes.len() + 1 {
            let mut expected = [0u8; 8];
            let rest = bytes.get(at..).unwrap_or_default();
            let len = rest.len().min(8);
            expected[..len].copy_from_slice(&rest[..len]);
            assert_eq!(
                padded_word_at(bytes, at),
                u64::from_le_bytes(expected),
                "at {at}"
            );
            assert_eq!(
                padded_word_at(&bytes[..5], at),
                u64::from_le_bytes({
                    let mut short = [0u8; 8];
                    let rest = bytes[..5].get(at..).unwrap_or_default();
                    short[..rest.len()].copy_from_slice(rest);
                    short
                }),
                "short, at {at}"
            );
        }
    }

    #[test]
    fn swar_number_reads_one_to_seven_digits() {
        let read = |text: &[u8; 8]| swar_number(u64::from_le_bytes(*text));
        assert_eq!(read(b"0,\"abcde"), Some((0, 1)));
        assert_eq!(read(b"7}}}}}}}"), Some((7, 1)));
        assert_eq!(read(b"12,xxxxx"), Some((12, 2)));
        assert_eq!(read(b"1234567}"), Some((1_234_567, 7)));
        assert_eq!(read(b"0009 xxx"), Some((9, 4)));
        assert_eq!(read(b"9876543\xff"), Some((9_876_543, 7)));
        assert_eq!(read(b"5\xff\xff\xff\xff\xff\xff\xff"), Some((5, 1)));
        assert_eq!(read(b"12345678"), None);
        assert_eq!(read(b",1234567"), None);
        assert_eq!(read(b"-1234567"), None);
        // Every byte next to a digit is judged right, `/` and `:` (either side of the digits)
        // and high bytes included.
        for byte in 0..=255u8 {
            let mut text = *b"42xxxxxx";
            text[2] = byte;
            let expected = if byte.is_ascii_digit() {
                Some((420 + u64::from(byte - b'0'), 3))
            } else {
                Some((42, 2))
            };
            assert_eq!(read(&text), expected, "byte {byte:#x}");
        }
        for value in [
            0u64, 1, 9, 10, 99, 100, 4096, 65_535, 999_999, 1_000_000, 9_999_999,
        ] {
            let mut text = format!("{value}").into_bytes();
            text.resize(8, b'}');
            let digits = format!("{value}").len();
            assert_eq!(read(&text.try_into().unwrap()), Some((value, digits)));
        }
    }

    /// DeepSeek's own form is read by the word-compare reader, in agreement with the general
    /// scan; any other form or order is declined (for the compact reader), however close.
    #[test]
    fn deepseek_usage_agrees_with_the_general_scan_or_declines() {
        let accepted: [&[u8]; 5] = [
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#,
            br#"{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":4},"prompt_cache_hit_tokens":5,"prompt_cache_miss_tokens":6,"completion_tokens_details":{"reasoning_tokens":7}}"#,
            br#"{"prompt_tokens":1234567,"completion_tokens":0,"total_tokens":1234567,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":1234567}"#,
            br#"{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12,"prompt_cache_hit_tokens":2,"prompt_cache_miss_tokens":1,"completion_tokens_details":{"reasoning_tokens":8}},"x":1}"#,
            br#"{"prompt_tokens":0009,"completion_tokens":1,"total_tokens":1,"prompt_cache_hit_tokens":1,"prompt_cache_miss_tokens":0}"#,
        ];
        for object in accepted {
            let general = match value_end_object(object) {
                ValueEnd::Complete(range) => parse_usage(&object[range]),
                other => panic!("{other:?}"),
            };
            let text = String::from_utf8_lossy(object);
            assert_eq!(read_usage_deepseek(object), Some(general), "{text}");
            assert_eq!(read_usage(object), Some(general), "{text}");
        }
        let declined: [&[u8]; 10] = [
            // Another order (the compact reader reads it).
            br#"{"completion_tokens":5,"prompt_tokens":12,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}"#,
            // OpenAI's form: no cache-hit key.
            br#"{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}"#,
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}"#,
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12"#,
            br#"{"prompt_tokens":12345678,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}"#,
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17.5,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}"#,
            br#"{"prompt_tokens": 12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}"#,
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12,"extra":1}"#,
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4,"x":1},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}"#,
            br#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":1,"completion_tokens_details":{"reasoning_tokens":1,"y":2}}"#,
        ];
        for object in declined {
            let text = String::from_utf8_lossy(object);
            assert_eq!(read_usage_deepseek(object), None, "{text}");
            // Still read right by the next reader, where the object is complete.
            if let ValueEnd::Complete(range) = value_end_object(object) {
                assert_eq!(
                    read_usage(object),
                    Some(parse_usage(&object[range])),
                    "{text}"
                );
            }
        }
        // Whatever follows the object (nothing, a few bytes, more than a word), each number is
        // read the same: from the bytes in place, or near the end from a padded word.
        for object in accepted {
            let expected = read_usage_deepseek(object);
            for extra in 0..12 {
                let mut followed = object.to_vec();
                followed.extend(std::iter::repeat_n(b'}', extra));
                assert_eq!(read_usage_deepseek(&followed), expected, "{extra}");
            }
        }
        // Cut anywhere, the form is never misread: declined, or read by the next reader as
        // the general scan reads the same bytes.
        let whole = accepted[1];
        for end in 0..whole.len() {
            let cut = &whole[..end];
            assert_eq!(read_usage_deepseek(cut), None, "cut at {end}");
        }
    }

    /// The compact reader agrees with the general scan on whatever it accepts, and declines
    /// (for the byte-at-a-time reader) whatever is not in its form.
    #[test]
    fn compact_usage_agrees_with_the_general_scan_or_declines() {
        let accepted: [&[u8]; 6] = [
            br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#,
            br#"{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":4},"prompt_cache_hit_tokens":5,"prompt_cache_miss_tokens":6,"completion_tokens_details":{"reasoning_tokens":7}}}"#,
            br#"{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}"#,
            br#"{"completion_tokens_details":{"reasoning_tokens":1234567},"prompt_tokens":1}          "#,
            br#"{"prompt_tokens_details":{"prompt_tokens":9},"prompt_tokens":1}xxxxxxxx"#,
            br#"{"total_tokens":0,"prompt_tokens":7,"prompt_tokens":8}xxxxxxxxx"#,
        ];
        for object in accepted {
            let general = match value_end_object(object) {
                ValueEnd::Complete(range) => parse_usage(&object[range]),
                other => panic!("{other:?}"),
            };
            assert_eq!(
                read_usage_compact(object),
                Some(general),
                "{}",
                String::from_utf8_lossy(object)
            );
            assert_eq!(read_usage(object), Some(general));
        }
        let declined: [&[u8]; 12] = [
            br#"{ "prompt_tokens":1}xxxxxxxxxxxx"#,
            br#"{"prompt_tokens" :1}xxxxxxxxxxxx"#,
            br#"{"prompt_tokens": 1}xxxxxxxxxxxx"#,
            br#"{"prompt_tokens":1 }xxxxxxxxxxxx"#,
            br#"{"prompt_tokens":12345678}xxxxxx"#,
            br#"{"prompt_tokens":1.5}xxxxxxxxxxx"#,
            br#"{"prompt_tokens":-1}xxxxxxxxxxxx"#,
            br#"{"prompt_tokens":null}xxxxxxxxxx"#,
            br#"{"prompt_tokensX":1}xxxxxxxxxxxx"#,
            br#"{"odd":1,"prompt_tokens":1}xxxxxx"#,
            br#"{"prompt_tokens":1"#,
            br#"{}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"#,
        ];
        for object in declined {
            assert_eq!(
                read_usage_compact(object),
                None,
                "{}",
                String::from_utf8_lossy(object)
            );
        }
        // Declined objects still read right, by the byte-at-a-time reader.
        assert_eq!(
            read_usage(br#"{"prompt_tokens":12345678}"#),
            Some([Some(12_345_678), None, None, None])
        );
        assert_eq!(
            read_usage(br#"{ "prompt_tokens" : 1 , "completion_tokens":2}"#),
            Some([Some(1), Some(2), None, None])
        );
        assert_eq!(read_usage(br#"{"prompt_tokens":1"#), None);
    }
}
