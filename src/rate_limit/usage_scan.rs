//! A lean scan for the usage of a JSON completion body, frame by frame, without parsing it.

/// Finds `"total_tokens": N` in a JSON body fed in frames, without parsing it: the last match
/// wins (usage is at the end of a completion). A match split across two frames is found
/// through a small window over the junction.
pub(super) struct UsageScan {
    tail: [u8; WINDOW],
    tail_len: usize,
}

impl Default for UsageScan {
    fn default() -> Self {
        UsageScan {
            tail: [0; WINDOW],
            tail_len: 0,
        }
    }
}

const NEEDLE: &[u8] = b"\"total_tokens\"";
/// Bytes kept from the previous frame: the needle plus room for `: 18446744073709551615`.
const WINDOW: usize = 48;

impl UsageScan {
    pub(super) fn feed(&mut self, frame: &[u8]) -> Option<u64> {
        // The junction: the previous frame's tail followed by this frame's head.
        let head = &frame[..frame.len().min(WINDOW)];
        let mut junction = [0u8; 2 * WINDOW];
        junction[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        junction[self.tail_len..self.tail_len + head.len()].copy_from_slice(head);
        let junction = &junction[..self.tail_len + head.len()];
        let mut found = total_after_last_needle(junction);
        if let Some(total) = total_after_last_needle(frame) {
            found = Some(total);
        }
        let keep = frame.len().min(WINDOW);
        if keep == WINDOW {
            self.tail.copy_from_slice(&frame[frame.len() - WINDOW..]);
            self.tail_len = WINDOW;
        } else {
            // Short frame: slide the window.
            let total = self.tail_len + keep;
            let drop = total.saturating_sub(WINDOW);
            self.tail.copy_within(drop..self.tail_len, 0);
            self.tail_len -= drop;
            self.tail[self.tail_len..self.tail_len + keep].copy_from_slice(frame);
            self.tail_len += keep;
        }
        found
    }
}

/// The number after the last complete `"total_tokens":` in `bytes`.
fn total_after_last_needle(bytes: &[u8]) -> Option<u64> {
    let at = memchr::memmem::rfind(bytes, NEEDLE)?;
    let rest = &bytes[at + NEEDLE.len()..];
    let rest = rest.trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == rest.len() {
        return None; // No number, or it may continue in the next frame.
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn usage_is_found_whole_or_split_across_frames() {
        let body = br#"{"choices":[{"message":{"content":"say \"total_tokens\": 5"}}],"usage":{"prompt_tokens":10,"completion_tokens":32,"total_tokens":42}}"#;
        let mut scan = UsageScan::default();
        assert_eq!(scan.feed(body), Some(42));
        for split in 1..body.len() {
            let mut scan = UsageScan::default();
            let first = scan.feed(&body[..split]);
            let second = scan.feed(&body[split..]);
            assert_eq!(second.or(first), Some(42), "split at {split}");
        }
        // Byte by byte.
        let mut scan = UsageScan::default();
        let found = body
            .iter()
            .filter_map(|b| scan.feed(std::slice::from_ref(b)))
            .last();
        assert_eq!(found, Some(42));
    }
}
