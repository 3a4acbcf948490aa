//! A Server-Sent Events decoder that accepts bytes split anywhere: across lines, events and
//! UTF-8 characters, with `\n`, `\r\n` or `\r` line endings. A line or an event larger than
//! its limit is an error, never buffered without end.

/// One dispatched event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The largest line, and the largest event (its data lines together), accepted by default:
/// far above any chat chunk, far below what would hurt the process.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// A line or event over the decoder's limit; the stream cannot be decoded any further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an SSE event is larger than {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
}

/// Incremental SSE decoder. Feed it bytes as they arrive; it returns the events completed so far.
#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    skip_lf: bool,
    data: Option<String>,
    event: Option<String>,
    limit: usize,
    failed: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that refuses lines and events over `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            skip_lf: false,
            data: None,
            event: None,
            limit,
            failed: false,
        }
    }

    /// Consumes `bytes` and returns every event they complete, or an error once a line or an
    /// event outgrows the limit (and from then on).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() && !self.failed {
            if self.skip_lf {
                self.skip_lf = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(at) => {
                    self.push_line(&rest[..at]);
                    self.skip_lf = rest[at] == b'\r';
                    self.end_line(&mut events);
                    rest = &rest[at + 1..];
                }
                None => {
                    self.push_line(rest);
                    rest = &[];
                }
            }
        }
        if self.failed {
            return Err(EventTooLarge { limit: self.limit });
        }
        Ok(events)
    }

    fn push_line(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > self.limit {
            self.fail();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.line = Vec::new();
        self.data = None;
    }

    /// Ends the input: a last event without its blank line is still delivered.
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.dispatch(&mut events);
        if self.failed {
            return Err(EventTooLarge { limit: self.limit });
        }
        Ok(events)
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        if self.failed {
            return;
        }
        if self.line.is_empty() {
            self.dispatch(events);
            return;
        }
        // Lines end at ASCII bytes, so a complete line holds complete UTF-8 characters.
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" if self.data.as_ref().map_or(0, String::len) + value.len() >= self.limit => {
                self.fail()
            }
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if let Some(data) = self.data.take() {
            events.push(SseEvent { event, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"a\":\"héllo 😀\"}\n\n: keep-alive\n\nevent: ping\ndata: x\ndata: y\n\nid: 3\r\ndata:no-space\r\n\r\ndata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: None,
                data: "{\"a\":\"héllo 😀\"}".into(),
            },
            SseEvent {
                event: Some("ping".into()),
                data: "x\ny".into(),
            },
            SseEvent {
                event: None,
                data: "no-space".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    fn decode_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            events.extend(decoder.feed(&bytes[start..cut]).unwrap());
            start = cut;
        }
        events.extend(decoder.feed(&bytes[start..]).unwrap());
        events.extend(decoder.finish().unwrap());
        events
    }

    #[test]
    fn whole_input_decodes() {
        assert_eq!(decode_in_pieces(STREAM.as_bytes(), &[]), expected());
    }

    #[test]
    fn every_single_split_point_decodes_the_same() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(decode_in_pieces(bytes, &[cut]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn random_chunk_boundaries_decode_the_same() {
        let bytes = STREAM.as_bytes();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let mut cuts: Vec<usize> = (0..rng.usize(1..12))
                .map(|_| rng.usize(0..=bytes.len()))
                .collect();
            cuts.sort_unstable();
            assert_eq!(decode_in_pieces(bytes, &cuts), expected(), "cuts {cuts:?}");
        }
    }

    #[test]
    fn a_last_event_without_blank_line_is_kept_at_eof() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"data: tail").unwrap().is_empty());
        assert_eq!(
            decoder.finish().unwrap(),
            vec![SseEvent {
                event: None,
                data: "tail".into()
            }]
        );
    }

    #[test]
    fn cr_then_lf_in_separate_reads_is_one_line_end() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"data: a\r").unwrap().is_empty());
        assert!(decoder.feed(b"\n").unwrap().is_empty());
        assert_eq!(decoder.feed(b"\r\n").unwrap().len(), 1);
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_buffering_it() {
        let mut decoder = SseDecoder::with_limit(64);
        assert!(decoder.feed(&[b'x'; 40]).unwrap().is_empty());
        // The line grows past 64 bytes in the next read: refused, and refused from then on.
        assert_eq!(decoder.feed(&[b'x'; 40]), Err(EventTooLarge { limit: 64 }));
        assert!(
            decoder.line.capacity() <= 64,
            "nothing kept after the failure"
        );
        assert!(decoder.feed(b"\n\ndata: ok\n\n").is_err());
        assert!(decoder.finish().is_err());
    }

    #[test]
    fn an_event_of_many_small_lines_over_the_limit_is_refused() {
        let mut decoder = SseDecoder::with_limit(64);
        let many = "data: 0123456789\n".repeat(10);
        assert!(decoder.feed(many.as_bytes()).is_err());
        // Under the limit, the same shape decodes.
        let mut decoder = SseDecoder::with_limit(1024);
        let events = decoder.feed(format!("{many}\n").as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.len(), 10 * 10 + 9);
    }
}

/// Properties over arbitrary bytes cut at arbitrary places.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `bytes` cut at `cuts` (sorted positions), then finishes: the events delivered, and
    /// whether the decoder failed. Checks after every call that nothing outgrew the limit.
    fn decode(bytes: &[u8], cuts: &[usize], limit: usize) -> (Vec<SseEvent>, bool) {
        let mut decoder = SseDecoder::with_limit(limit);
        let mut events = Vec::new();
        let mut start = 0;
        let ends = cuts.iter().copied().chain([bytes.len()]);
        for end in ends {
            let end = end.clamp(start, bytes.len());
            match decoder.feed(&bytes[start..end]) {
                Ok(more) => events.extend(more),
                Err(_) => return (events, true),
            }
            assert!(decoder.line.len() <= limit);
            assert!(decoder.data.as_ref().map_or(0, String::len) <= limit);
            start = end;
        }
        match decoder.finish() {
            Ok(more) => events.extend(more),
            Err(_) => return (events, true),
        }
        (events, false)
    }

    /// Bytes SSE-ish enough to exercise every branch: field names, separators, all three line
    /// endings, multi-byte characters, and noise.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data:".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"event: ".to_vec()),
            Just(b": comment".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just("é😀".as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn cutting_the_input_anywhere_changes_nothing(
            bytes in stream(),
            mut cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            limit in 4usize..64,
        ) {
            let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let (whole, whole_failed) = decode(&bytes, &[], limit);
            let (pieces, pieces_failed) = decode(&bytes, &cuts, limit);
            prop_assert_eq!(whole_failed, pieces_failed);
            if whole_failed {
                // Delivered before the failure: a prefix of what an unlimited decoder reads.
                let (unlimited, _) = decode(&bytes, &[], usize::MAX / 2);
                prop_assert!(unlimited.starts_with(&pieces));
            } else {
                prop_assert_eq!(whole, pieces);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            limit in 1usize..256,
        ) {
            decode(&bytes, &[bytes.len() / 3, bytes.len() / 2], limit);
        }

        #[test]
        fn encoded_events_decode_to_themselves(
            events in prop::collection::vec(
                (prop::option::of("[a-z]{1,8}"), "[^\r\n]{0,20}(\n[^\r\n]{0,20}){0,3}"),
                0..6,
            ),
            ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            cut in any::<prop::sample::Index>(),
        ) {
            let mut text = String::new();
            for (event, data) in &events {
                if let Some(name) = event {
                    text.push_str(&format!("event: {name}{ending}"));
                }
                for line in data.split('\n') {
                    text.push_str(&format!("data: {line}{ending}"));
                }
                text.push_str(ending);
            }
            let bytes = text.as_bytes();
            let (decoded, failed) = decode(bytes, &[cut.index(bytes.len() + 1)], MAX_EVENT_BYTES);
            prop_assert!(!failed);
            let expected: Vec<SseEvent> = events
                .into_iter()
                .map(|(event, data)| SseEvent { event, data })
                .collect();
            prop_assert_eq!(decoded, expected);
        }
    }
}
