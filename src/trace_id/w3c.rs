//! W3C Trace Context: parsing and formatting `traceparent`, checking `tracestate`.
//!
//! `traceparent` is `version-traceid-parentid-flags`, e.g.
//! `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. The rules followed here:
//! version is two lowercase hex digits and `ff` is invalid; version `00` is exactly 55
//! characters; a later version may be longer, with a `-` after the flags, and only its first
//! four fields are read; the trace-id is 32 lowercase hex digits, not all zero; the parent-id is
//! 16 lowercase hex digits, not all zero; the flags are two lowercase hex digits.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on, in bytes (the W3C limit for list members).
pub(crate) const MAX_TRACESTATE_LEN: usize = 512;
/// Most list members in a `tracestate`.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Length of a version-00 `traceparent`.
pub(crate) const TRACEPARENT_LEN: usize = 55;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A W3C trace-id: 16 bytes, never all zero. `Display` writes the 32 lowercase hex digits of
/// `traceparent`.
///
/// ```
/// use tower_deepseek::trace_id::W3cTraceId;
///
/// let id = W3cTraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
/// assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(W3cTraceId::from_bytes([0; 16]), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct W3cTraceId(pub(crate) [u8; 16]);

impl W3cTraceId {
    /// The trace-id with these bytes; `None` for all zeros, which W3C reserves as invalid.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<W3cTraceId> {
        (bytes != [0; 16]).then_some(W3cTraceId(bytes))
    }

    /// Parses 32 lowercase hex digits (the `traceparent` form); `None` otherwise or for zeros.
    pub fn parse(hex: &str) -> Option<W3cTraceId> {
        let bytes = hex.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        W3cTraceId::from_bytes(decode_hex::<16>(bytes, Case::Lower)?)
    }

    /// The 16 bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The 32 lowercase hex digits, on the stack.
    pub(crate) fn encode(self) -> [u8; 32] {
        encode_hex(&self.0)
    }
}

impl fmt::Display for W3cTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.encode();
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for W3cTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "W3cTraceId({self})")
    }
}

/// What an incoming `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Traceparent {
    pub(crate) trace_id: W3cTraceId,
    pub(crate) parent_id: [u8; 8],
    pub(crate) flags: u8,
}

/// Why an incoming `traceparent` was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TraceparentError {
    Length,
    Version,
    Format,
    ZeroTraceId,
    ZeroParentId,
    Repeated,
}

impl TraceparentError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TraceparentError::Length => "wrong length",
            TraceparentError::Version => "unsupported version",
            TraceparentError::Format => "not version-traceid-parentid-flags in lowercase hex",
            TraceparentError::ZeroTraceId => "all-zero trace-id",
            TraceparentError::ZeroParentId => "all-zero parent-id",
            TraceparentError::Repeated => "more than one traceparent header",
        }
    }
}

/// Parses one `traceparent` value.
pub(crate) fn parse_traceparent(value: &[u8]) -> Result<Traceparent, TraceparentError> {
    if value.len() < TRACEPARENT_LEN {
        return Err(TraceparentError::Length);
    }
    let [version] = decode_hex::<1>(&value[..2], Case::Lower).ok_or(TraceparentError::Version)?;
    match version {
        0xff => return Err(TraceparentError::Version),
        0x00 if value.len() != TRACEPARENT_LEN => return Err(TraceparentError::Length),
        // A later version may append fields, after a dash.
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => {
            return Err(TraceparentError::Length);
        }
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return Err(TraceparentError::Format);
    }
    let trace_id = decode_hex::<16>(&value[3..35], Case::Lower).ok_or(TraceparentError::Format)?;
    let parent_id = decode_hex::<8>(&value[36..52], Case::Lower).ok_or(TraceparentError::Format)?;
    let [flags] = decode_hex::<1>(&value[53..55], Case::Lower).ok_or(TraceparentError::Format)?;
    let trace_id = W3cTraceId::from_bytes(trace_id).ok_or(TraceparentError::ZeroTraceId)?;
    if parent_id == [0; 8] {
        return Err(TraceparentError::ZeroParentId);
    }
    Ok(Traceparent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The single `traceparent` of a request: `None` when absent, an error when invalid or
/// repeated (W3C: a duplicated header restarts the trace).
pub(crate) fn read_traceparent(
    headers: &HeaderMap,
) -> Option<Result<Traceparent, TraceparentError>> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(TraceparentError::Repeated));
    }
    Some(parse_traceparent(first.as_bytes()))
}

/// A version-00 `traceparent` value.
pub(crate) fn format_traceparent(
    trace_id: W3cTraceId,
    parent_id: [u8; 8],
    flags: u8,
) -> HeaderValue {
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(&trace_id.encode());
    out[35] = b'-';
    out[36..52].copy_from_slice(&encode_hex::<16>(&parent_id));
    out[52] = b'-';
    out[53..55].copy_from_slice(&encode_hex::<2>(&[flags]));
    ascii_header_value(out)
}

/// The request's `tracestate`, when it looks valid: every header line joined with commas (as
/// W3C asks), at most [`MAX_TRACESTATE_LEN`] bytes and 32 list members, each `key=value` with
/// W3C's key and value characters. `Err(())` when present but not passed on.
pub(crate) fn read_tracestate(headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let value = match values.next() {
        None => first.clone(),
        Some(second) => {
            // Rare: several lines, joined once into one value.
            let mut joined = Vec::with_capacity(MAX_TRACESTATE_LEN);
            joined.extend_from_slice(first.as_bytes());
            for line in std::iter::once(second).chain(values) {
                joined.push(b',');
                joined.extend_from_slice(line.as_bytes());
                if joined.len() > MAX_TRACESTATE_LEN {
                    return Err(());
                }
            }
            HeaderValue::from_bytes(&joined).map_err(|_| ())?
        }
    };
    if tracestate_looks_valid(value.as_bytes()) {
        Ok(Some(value))
    } else {
        Err(())
    }
}

/// Whether a `tracestate` is one W3C list of at most 32 `key=value` members within 512 bytes.
pub(crate) fn tracestate_looks_valid(value: &[u8]) -> bool {
    if value.len() > MAX_TRACESTATE_LEN {
        return false;
    }
    let mut members = 0;
    for member in value.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue; // W3C allows empty list members
        }
        members += 1;
        if members > MAX_TRACESTATE_MEMBERS {
            return false;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        let key_ok = key.len() <= 256
            && key
                .first()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b));
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value.last() != Some(&b' ')
            && value
                .iter()
                .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
        if !key_ok || !value_ok {
            return false;
        }
    }
    members > 0
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    Lower,
    Any,
}

/// Hex digit values, `INVALID` for anything else; uppercase has its own table so the W3C
/// lowercase rule costs nothing.
const INVALID: u8 = 0xff;
const LOWER_DIGITS: [u8; 256] = digit_table(false);
const ANY_DIGITS: [u8; 256] = digit_table(true);

const fn digit_table(upper: bool) -> [u8; 256] {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        if upper {
            table[b'A' as usize + i] = 10 + i as u8;
        }
        i += 1;
    }
    table
}

/// Decodes a hyphenated UUID, any case, in four 8-digit steps (a trace ID passed through is
/// usually one).
pub(crate) fn decode_uuid(text: &[u8]) -> Option<[u8; 16]> {
    let text: &[u8; 36] = text.try_into().ok()?;
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    let word = |at: usize| {
        u64::from(u32::from_le_bytes([
            text[at],
            text[at + 1],
            text[at + 2],
            text[at + 3],
        ]))
    };
    let chunks = [
        word(0) | word(4) << 32,
        word(9) | word(14) << 32,
        word(19) | word(24) << 32,
        word(28) | word(32) << 32,
    ];
    let mut out = [0u8; 16];
    for (bytes, chunk) in out.chunks_exact_mut(4).zip(chunks) {
        bytes.copy_from_slice(&decode8(chunk, Case::Any)?.to_le_bytes());
    }
    Some(out)
}

/// Decodes exactly `2 * N` hex digits.
#[inline]
pub(crate) fn decode_hex<const N: usize>(hex: &[u8], case: Case) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    if N.is_multiple_of(4) {
        // Trace-ids and parent-ids: eight digits at a time.
        for (bytes, digits) in out.chunks_exact_mut(4).zip(hex.chunks_exact(8)) {
            let chunk = u64::from_le_bytes(digits.try_into().ok()?);
            bytes.copy_from_slice(&decode8(chunk, case)?.to_le_bytes());
        }
        return Some(out);
    }
    let table = match case {
        Case::Lower => &LOWER_DIGITS,
        Case::Any => &ANY_DIGITS,
    };
    // OR-ing every digit lets one test at the end catch any invalid one.
    let mut seen = 0u8;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (table[usize::from(pair[0])], table[usize::from(pair[1])]);
        seen |= high | low;
        *byte = (high << 4) | (low & 0xf);
    }
    (seen & 0xf0 == 0).then_some(out)
}

/// Eight hex digits, their ASCII bytes read as a little-endian `u64`, to four bytes (in the
/// digits' order, little-endian in the `u32`); `None` when any is not a digit of `case`.
/// Whole-word arithmetic instead of sixteen table lookups.
fn decode8(chunk: u64, case: Case) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW_BYTES: u64 = 0x00ff_00ff_00ff_00ff;
    // No digit has the high bit set; without it, the sums below never carry into the next byte.
    if chunk & HIGH != 0 {
        return None;
    }
    // The high bit of each byte b of the result: lo <= b <= hi.
    let within = |x: u64, lo: u8, hi: u8| {
        (x + ONES * u64::from(0x80 - lo)) & !(x + ONES * u64::from(0x7f - hi)) & HIGH
    };
    let digits = within(chunk, b'0', b'9');
    let letters = match case {
        Case::Lower => within(chunk, b'a', b'f'),
        // Setting 0x20 folds `A`-`F` onto `a`-`f`, and nothing else onto them.
        Case::Any => within(chunk | (ONES * 0x20), b'a', b'f'),
    };
    if digits | letters != HIGH {
        return None;
    }
    // A digit's value is its low nibble, plus 9 for a letter (bit 6 set).
    let nibbles = (chunk & (ONES * 0x0f)) + ((chunk >> 6) & ONES) * 9;
    // Pairs of nibbles into bytes, then the four bytes side by side.
    let pairs = ((nibbles & LOW_BYTES) << 4) | ((nibbles >> 8) & LOW_BYTES);
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    Some(((quads | (quads >> 16)) & 0xffff_ffff) as u32)
}

/// Lowercase hex of `bytes`; `M` must be `2 * bytes.len()`.
pub(crate) fn encode_hex<const M: usize>(bytes: &[u8]) -> [u8; M] {
    let mut out = [0u8; M];
    // Four bytes at a time in one 64-bit word (a generated ID is 16 bytes: four words, where
    // the byte loop took a table load per digit); what is left, byte by byte.
    let mut words = out.chunks_exact_mut(8).zip(bytes.chunks_exact(4));
    let mut done = 0;
    for (digits, word) in &mut words {
        digits.copy_from_slice(&hex_word(u32::from_be_bytes([
            word[0], word[1], word[2], word[3],
        ])));
        done += 4;
    }
    let rest = bytes.get(done..).unwrap_or_default();
    let tail = out.get_mut(2 * done..).unwrap_or_default();
    for (pair, byte) in tail.chunks_exact_mut(2).zip(rest) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

/// The eight lowercase hex digits of `word`, most significant first.
#[inline]
fn hex_word(word: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let word = u64::from(word);
    // Spread each nibble into a byte of its own, in order: 0xAABBCCDD → 0x0A0A0B0B0C0C0D0D
    // with the high nibble of each byte first.
    let halves = ((word & 0xffff_0000) << 16) | (word & 0xffff);
    let bytes = ((halves & 0x0000_ff00_0000_ff00) << 8) | (halves & 0x0000_00ff_0000_00ff);
    let nibbles = ((bytes & 0x00f0_00f0_00f0_00f0) << 4) | (bytes & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more (nibble + 6 carries into bit 4; no byte
    // overflows into the next).
    let letters = ((nibbles + ONES * 6) >> 4) & ONES;
    // '0' + n, and for a letter another 'a' - '0' - 10 = 39.
    (nibbles + ONES * u64::from(b'0') + letters * 39).to_be_bytes()
}

/// A header value from bytes this module formatted: hex digits and dashes only.
///
/// The bytes are owned by a reference-counted `Bytes`: the retry layer's request copy (and any
/// other clone) is then a counter bump, where a copied slice would be moved to a shared
/// allocation of its own at its first clone.
pub(crate) fn ascii_header_value<const N: usize>(bytes: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes))
        .expect("hex digits and dashes are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_version_00() {
        let parsed = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            parsed.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parsed.flags, 1);
        let formatted = format_traceparent(parsed.trace_id, parsed.parent_id, parsed.flags);
        assert_eq!(formatted, VALID);
    }

    #[test]
    fn rejects_what_w3c_rejects() {
        let cases = [
            ("", TraceparentError::Length),
            (&VALID[..54], TraceparentError::Length),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                TraceparentError::Length,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::Version,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::Version,
            ),
            (
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::Version,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceparentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                TraceparentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                TraceparentError::Format,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceparentError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceparentError::ZeroParentId,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                TraceparentError::Length,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_traceparent(value.as_bytes()),
                Err(expected),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_future_version_may_carry_more_fields() {
        let parsed = parse_traceparent(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds",
        )
        .unwrap();
        assert_eq!(parsed.flags, 9);
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok()
        );
    }

    #[test]
    fn a_repeated_traceparent_is_invalid() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(read_traceparent(&headers).unwrap().is_ok());
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(
            read_traceparent(&headers),
            Some(Err(TraceparentError::Repeated))
        );
    }

    #[test]
    fn tracestate_checks() {
        assert!(tracestate_looks_valid(b"congo=t61rcWkgMzE"));
        assert!(tracestate_looks_valid(
            b"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,"
        ));
        assert!(tracestate_looks_valid(b"tenant@vendor=x"));
        assert!(!tracestate_looks_valid(b""));
        assert!(!tracestate_looks_valid(b"novalue"));
        assert!(!tracestate_looks_valid(b"Upper=x"));
        assert!(!tracestate_looks_valid(b"k=v=w"));
        assert!(!tracestate_looks_valid(b"k=\x01"));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(!tracestate_looks_valid(many.join(",").as_bytes()));
        let long = format!("k={}", "v".repeat(600));
        assert!(!tracestate_looks_valid(long.as_bytes()));

        let mut headers = HeaderMap::new();
        headers.append(TRACESTATE, HeaderValue::from_static("a=1"));
        headers.append(TRACESTATE, HeaderValue::from_static("b=2"));
        assert_eq!(read_tracestate(&headers).unwrap().unwrap(), "a=1,b=2");
    }

    #[test]
    fn word_encoding_matches_the_table() {
        // Every byte value at every position of a word, and a full ID.
        for position in 0..4 {
            for byte in 0..=255u8 {
                let mut bytes = [0x5a, 0x0f, 0xa0, 0xff];
                bytes[position] = byte;
                let expected: Vec<u8> = bytes
                    .iter()
                    .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
                    .collect();
                assert_eq!(encode_hex::<8>(&bytes).as_slice(), expected, "{bytes:?}");
            }
        }
        let id: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xc3);
        let expected: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(encode_hex::<32>(&id).as_slice(), expected.as_bytes());
        // A length that is not a whole number of words: the tail goes byte by byte.
        assert_eq!(&encode_hex::<10>(&[1, 2, 3, 4, 0xab]), b"01020304ab");
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0x01, 0xab, 0xff];
        let hex: [u8; 6] = encode_hex(&bytes);
        assert_eq!(&hex, b"01abff");
        assert_eq!(decode_hex::<3>(&hex, Case::Lower), Some(bytes));
        assert_eq!(decode_hex::<3>(b"01ABFF", Case::Lower), None);
        assert_eq!(decode_hex::<3>(b"01ABFF", Case::Any), Some(bytes));
    }

    #[test]
    fn word_decoding_matches_the_tables() {
        // Every byte value at every position of an otherwise valid run of eight digits.
        for case in [Case::Lower, Case::Any] {
            let table = match case {
                Case::Lower => &LOWER_DIGITS,
                Case::Any => &ANY_DIGITS,
            };
            for position in 0..8 {
                for byte in 0..=255u8 {
                    let mut digits = *b"0f9a5C3e";
                    if case == Case::Lower {
                        digits[5] = b'c';
                    }
                    digits[position] = byte;
                    let expected = digits
                        .iter()
                        .all(|&d| table[usize::from(d)] != INVALID)
                        .then(|| {
                            let mut out = [0u8; 4];
                            for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
                                *o = table[usize::from(pair[0])] << 4 | table[usize::from(pair[1])];
                            }
                            out
                        });
                    let got = decode8(u64::from_le_bytes(digits), case).map(u32::to_le_bytes);
                    assert_eq!(got, expected, "{digits:?} {position} {byte}");
                }
            }
        }
    }

    #[test]
    fn uuids_decode_in_one_pass() {
        let uuid = b"4BF92F35-77b3-4da6-a3ce-929d0e0e4736";
        let bytes = decode_uuid(uuid).unwrap();
        assert_eq!(
            encode_hex::<32>(&bytes),
            *b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(decode_uuid(b"4bf92f3577b3-4da6-a3ce-929d0e0e4736"), None);
        assert_eq!(decode_uuid(b"4bf92f35-77b3-4da6-a3ce-929d0e0e473g"), None);
        assert_eq!(decode_uuid(b"4bf92f35-77b3-4da6-a3ce-929d0e0e473"), None);
    }
}
