//! Throughput of the SSE decoder on a realistic DeepSeek stream, alone and with the typed parse.
//!
//! Run with `cargo bench --bench sse_decode`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use tower_deepseek::deepseek::{ChatChunk, SseDecoder, SseEvent};

const CHUNKS: usize = 2_000;
const WORDS: &[&str] = &[
    "The", " capital", " of", " France", " is", " Paris", ".", " It", " lies", " on the", " Seine",
    ",", " café", " 中文", " 🦀", "\\n",
];

/// A 2,000-chunk DeepSeek stream: a role chunk, content chunks of a word or two, a finish
/// chunk, a usage chunk and `[DONE]`.
fn stream() -> Vec<u8> {
    let mut body = String::new();
    let head = |created: usize| {
        format!(
            "data: {{\"id\":\"8f4c2e1a-6b3d-4f7e-9a2c-1d5e7b9f3a60\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"deepseek-v4-flash\",\"system_fingerprint\":\"fp_3a5770e1b4_prod0820_fp8_kvcache\",\"choices\":"
        )
    };
    body.push_str(&head(1_764_000_000));
    body.push_str("[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    for index in 0..CHUNKS {
        let word = WORDS[index % WORDS.len()];
        let second = if index % 3 == 0 {
            WORDS[(index / 3) % WORDS.len()]
        } else {
            ""
        };
        body.push_str(&head(1_764_000_000 + index / 40));
        body.push_str(&format!(
            "[{{\"index\":0,\"delta\":{{\"content\":\"{word}{second}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ));
    }
    body.push_str(&head(1_764_000_050));
    body.push_str("[{\"index\":0,\"delta\":{\"content\":\"\"},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n");
    body.push_str(&head(1_764_000_050));
    body.push_str("[],\"usage\":{\"prompt_tokens\":23,\"completion_tokens\":2002,\"total_tokens\":2025,\"prompt_tokens_details\":{\"cached_tokens\":0},\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":23}}\n\n");
    body.push_str("data: [DONE]\n\n");
    body.into_bytes()
}

/// Frames of varying size between `min` and `max` bytes, cut without regard for lines (as TLS
/// records and HTTP/2 DATA frames are).
fn frames_of(bytes: &[u8], min: usize, max: usize) -> Vec<Bytes> {
    let whole = Bytes::copy_from_slice(bytes);
    let mut frames = Vec::new();
    let mut start = 0;
    let mut size = min;
    while start < whole.len() {
        let end = (start + size).min(whole.len());
        frames.push(whole.slice(start..end));
        start = end;
        // A cheap deterministic walk over the size range.
        size = min + (size * 7 + 331) % (max - min + 1);
    }
    frames
}

/// One frame per event, as a server flushing after each chunk sends them.
fn frame_per_event(bytes: &[u8]) -> Vec<Bytes> {
    let whole = Bytes::copy_from_slice(bytes);
    let mut frames = Vec::new();
    let mut start = 0;
    while let Some(offset) = memchr::memmem::find(&whole[start..], b"\n\n") {
        let end = start + offset + 2;
        frames.push(whole.slice(start..end));
        start = end;
    }
    frames
}

fn decode_events(frames: &[Bytes]) -> usize {
    let mut decoder = SseDecoder::new();
    let mut events = 0;
    for frame in frames {
        decoder.push(frame.clone());
        while let Ok(Some(event)) = decoder.next_event() {
            black_box(&event);
            events += 1;
        }
    }
    assert!(decoder.is_done());
    events
}

fn decode_and_parse(frames: &[Bytes]) -> usize {
    let mut decoder = SseDecoder::new();
    let mut chunks = 0;
    for frame in frames {
        decoder.push(frame.clone());
        while let Ok(Some(event)) = decoder.next_event() {
            if let SseEvent::Data(payload) = event {
                let chunk: ChatChunk = serde_json::from_slice(&payload).expect("valid chunk");
                black_box(&chunk);
                chunks += 1;
            }
        }
    }
    assert!(decoder.is_done());
    chunks
}

fn configure<M: criterion::measurement::Measurement>(
    group: &mut BenchmarkGroup<'_, M>,
    len: usize,
) {
    group
        .throughput(Throughput::Bytes(len as u64))
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
}

fn benches(c: &mut Criterion) {
    let body = stream();
    let variants = [
        ("frames_1_4KiB", frames_of(&body, 1024, 4096)),
        ("frame_per_event", frame_per_event(&body)),
        ("single_frame", vec![Bytes::copy_from_slice(&body)]),
    ];
    // Every variant decodes the whole stream.
    for (_, frames) in &variants {
        assert_eq!(decode_and_parse(frames), CHUNKS + 3);
    }

    let mut group = c.benchmark_group("sse_events");
    configure(&mut group, body.len());
    for (name, frames) in &variants {
        group.bench_function(*name, |b| b.iter(|| decode_events(black_box(frames))));
    }
    group.finish();

    let mut group = c.benchmark_group("sse_typed_chunks");
    configure(&mut group, body.len());
    for (name, frames) in &variants[..2] {
        group.bench_function(*name, |b| b.iter(|| decode_and_parse(black_box(frames))));
    }
    group.finish();
}

criterion_group!(sse_decode, benches);
criterion_main!(sse_decode);
