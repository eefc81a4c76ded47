//! Property tests of the SSE decoder and the typed chunk stream: how a valid stream is cut into
//! frames must never change what comes out, and a stream cut short must never look complete.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use proptest::prelude::*;
use proptest::sample::Index;
use tower_deepseek::ErrorKind;
use tower_deepseek::classify::StreamFailure;
use tower_deepseek::deepseek::{ChatChunk, ChatStream, SseDecoder, SseEvent};

/// Pieces of chunk text, with one-, two-, three- and four-byte UTF-8 characters and a JSON
/// escape.
const PIECES: &[&str] = &["a", "word", " ", "é", "中", "🦀", "\n", "\"", "x\r\ny"];

#[derive(Clone, Debug)]
enum Item {
    KeepAlive,
    /// `multiline`: the JSON is pretty-printed and sent as one `data:` line per line, which
    /// the decoder must join with `\n`. `id_field`: an `id:` line the decoder must ignore.
    Chunk {
        content: String,
        space: bool,
        multiline: bool,
        id_field: bool,
    },
}

#[derive(Clone, Debug)]
struct GeneratedStream {
    items: Vec<Item>,
    /// Per line: 0 = LF, 1 = CRLF, 2 = CR.
    line_ends: Vec<u8>,
    usage: bool,
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        1 => Just(Item::KeepAlive),
        3 => (
            prop::collection::vec(prop::sample::select(PIECES), 0..6),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(pieces, space, multiline, id_field)| Item::Chunk {
                content: pieces.concat(),
                space,
                multiline,
                id_field,
            }),
    ]
}

fn generated_stream() -> impl Strategy<Value = GeneratedStream> {
    (
        prop::collection::vec(item(), 0..10),
        prop::collection::vec(0u8..3, 32),
        any::<bool>(),
    )
        .prop_map(|(items, line_ends, usage)| GeneratedStream {
            items,
            line_ends,
            usage,
        })
}

fn chunk_json(index: usize, content: &str, multiline: bool) -> String {
    let chunk = serde_json::json!({
        "id": "0b8e6f6e-2f5c-4c1e-9d7b-5a4c3b2a1f00",
        "object": "chat.completion.chunk",
        "created": 1_764_000_000 + index,
        "model": "deepseek-v4-flash",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    });
    if multiline {
        serde_json::to_string_pretty(&chunk).expect("JSON")
    } else {
        chunk.to_string()
    }
}

const USAGE_JSON: &str = r#"{"id":"0b8e","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":40,"total_tokens":52,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":4}}"#;

impl GeneratedStream {
    /// The stream's bytes and the events it must decode to.
    fn render(&self) -> (Vec<u8>, Vec<SseEvent>) {
        let mut lines: Vec<String> = Vec::new();
        let mut events = Vec::new();
        for (index, item) in self.items.iter().enumerate() {
            match item {
                Item::KeepAlive => {
                    lines.push(": keep-alive".to_owned());
                    events.push(SseEvent::KeepAlive);
                }
                Item::Chunk {
                    content,
                    space,
                    multiline,
                    id_field,
                } => {
                    let json = chunk_json(index, content, *multiline);
                    // Pretty-printed lines start with spaces, so they need the separator space
                    // that the decoder strips.
                    let separator = if *space || *multiline { " " } else { "" };
                    if *id_field {
                        lines.push(format!("id: {index}"));
                    }
                    for line in json.lines() {
                        lines.push(format!("data:{separator}{line}"));
                    }
                    events.push(SseEvent::Data(Bytes::from(json)));
                }
            }
            lines.push(String::new());
        }
        if self.usage {
            lines.push(format!("data: {USAGE_JSON}"));
            lines.push(String::new());
            events.push(SseEvent::Data(Bytes::from_static(USAGE_JSON.as_bytes())));
        }
        lines.push("data: [DONE]".to_owned());
        lines.push(String::new());
        events.push(SseEvent::Done);

        let mut bytes = Vec::new();
        let mut previous_was_cr = false;
        for (number, line) in lines.iter().enumerate() {
            bytes.extend_from_slice(line.as_bytes());
            let mut choice = self.line_ends[number % self.line_ends.len()];
            // An empty line ended by LF right after a CR would read as one CRLF: avoid it.
            if previous_was_cr && line.is_empty() && choice == 0 {
                choice = 1;
            }
            bytes.extend_from_slice(match choice {
                0 => b"\n".as_slice(),
                1 => b"\r\n",
                _ => b"\r",
            });
            previous_was_cr = choice == 2;
        }
        (bytes, events)
    }
}

/// Cut positions worth trying: right after each CR (inside a CRLF) and inside each multi-byte
/// character.
fn tricky_positions(bytes: &[u8]) -> Vec<usize> {
    let mut positions = Vec::new();
    for (position, byte) in bytes.iter().enumerate() {
        let inside_character = (byte & 0b1100_0000) == 0b1000_0000;
        if inside_character || (position > 0 && bytes[position - 1] == b'\r') {
            positions.push(position);
        }
    }
    positions
}

fn split(bytes: &[u8], arbitrary: &[Index], tricky: &[Index]) -> Vec<Bytes> {
    let candidates = tricky_positions(bytes);
    let mut cuts: Vec<usize> = arbitrary.iter().map(|i| i.index(bytes.len() + 1)).collect();
    if !candidates.is_empty() {
        cuts.extend(tricky.iter().map(|i| candidates[i.index(candidates.len())]));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut frames = Vec::new();
    let mut start = 0;
    for cut in cuts {
        frames.push(Bytes::copy_from_slice(&bytes[start..cut]));
        start = cut;
    }
    frames.push(Bytes::copy_from_slice(&bytes[start..]));
    frames
}

/// Decodes the frames, then finishes. The error kind, if any, ends the list.
fn decode(frames: &[Bytes]) -> (Vec<SseEvent>, Option<ErrorKind>) {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    for frame in frames {
        decoder.push(frame.clone());
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => return (events, Some(error.kind())),
            }
        }
    }
    loop {
        match decoder.finish() {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(error) => return (events, Some(error.kind())),
        }
    }
}

type FrameBody = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
>;

fn body(frames: &[Bytes]) -> FrameBody {
    let frames: Vec<_> = frames.iter().cloned().map(Frame::data).map(Ok).collect();
    http_body_util::StreamBody::new(futures_util::stream::iter(frames))
}

/// Runs a `ChatStream` over the frames: its chunks, its error kind if any, its keep-alive count.
fn typed(frames: &[Bytes]) -> (Vec<ChatChunk>, Option<ErrorKind>, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let mut stream = ChatStream::new(body(frames));
        let mut chunks = Vec::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => chunks.push(chunk),
                Err(e) => error = Some(e.kind()),
            }
        }
        (chunks, error, stream.keep_alives())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_framing_decodes_to_the_same_events(
        stream in generated_stream(),
        arbitrary in prop::collection::vec(any::<Index>(), 0..24),
        tricky in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let (bytes, expected) = stream.render();
        let (whole, end) = decode(&[Bytes::from(bytes.clone())]);
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(end, None);

        let frames = split(&bytes, &arbitrary, &tricky);
        let (pieces, end) = decode(&frames);
        prop_assert_eq!(&pieces, &expected);
        prop_assert_eq!(end, None);
    }

    #[test]
    fn byte_by_byte_decodes_to_the_same_events(stream in generated_stream()) {
        let (bytes, expected) = stream.render();
        let frames: Vec<Bytes> = bytes.iter().map(|&byte| Bytes::copy_from_slice(&[byte])).collect();
        let (events, end) = decode(&frames);
        prop_assert_eq!(events, expected);
        prop_assert_eq!(end, None);
    }

    #[test]
    fn a_stream_cut_before_done_is_truncated(
        stream in generated_stream(),
        cut in any::<Index>(),
        arbitrary in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let (bytes, expected) = stream.render();
        let done = bytes
            .windows(6)
            .rposition(|window| window == b"[DONE]")
            .expect("the stream ends with [DONE]");
        // Anywhere before the end of `[DONE]`'s text: that line is not yet complete.
        let cut = cut.index(done + 6);
        let prefix = &bytes[..cut];
        let (events, end) = decode(&split(prefix, &arbitrary, &[]));
        prop_assert_eq!(end, Some(ErrorKind::Stream(StreamFailure::Truncated)));
        prop_assert!(!events.contains(&SseEvent::Done));
        // What was decoded is a prefix of the full stream's events, never anything else.
        prop_assert!(expected.starts_with(&events), "{:?} vs {:?}", events, expected);

        let (_, error, _) = typed(&split(prefix, &arbitrary, &[]));
        prop_assert_eq!(error, Some(ErrorKind::Stream(StreamFailure::Truncated)));
    }

    #[test]
    fn typed_stream_is_independent_of_framing(
        stream in generated_stream(),
        arbitrary in prop::collection::vec(any::<Index>(), 0..24),
        tricky in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let (bytes, expected) = stream.render();
        let parsed: Vec<ChatChunk> = expected
            .iter()
            .filter_map(|event| match event {
                SseEvent::Data(payload) => Some(serde_json::from_slice(payload).expect("valid JSON")),
                _ => None,
            })
            .collect();
        let keep_alives = expected.iter().filter(|e| **e == SseEvent::KeepAlive).count() as u64;

        let (chunks, error, counted) = typed(&split(&bytes, &arbitrary, &tricky));
        prop_assert_eq!(error, None);
        prop_assert_eq!(&chunks, &parsed);
        prop_assert_eq!(counted, keep_alives);

        let text: String = chunks.iter().filter_map(ChatChunk::content).collect();
        let sent: String = stream
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Chunk { content, .. } => Some(content.as_str()),
                Item::KeepAlive => None,
            })
            .collect();
        prop_assert_eq!(text, sent);
    }
}
