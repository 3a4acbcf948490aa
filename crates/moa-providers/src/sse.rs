//! A Server-Sent Events decoder that accepts bytes split anywhere: across lines, events and
//! UTF-8 characters, with `\n`, `\r\n` or `\r` line endings.

/// One dispatched event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE decoder. Feed it bytes as they arrive; it returns the events completed so far.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    skip_lf: bool,
    data: Option<String>,
    event: Option<String>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and returns every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.skip_lf = true;
                    self.end_line(&mut events);
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// Ends the input: a last event without its blank line is still delivered.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.dispatch(&mut events);
        events
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
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
            events.extend(decoder.feed(&bytes[start..cut]));
            start = cut;
        }
        events.extend(decoder.feed(&bytes[start..]));
        events.extend(decoder.finish());
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
        assert!(decoder.feed(b"data: tail").is_empty());
        assert_eq!(
            decoder.finish(),
            vec![SseEvent {
                event: None,
                data: "tail".into()
            }]
        );
    }

    #[test]
    fn cr_then_lf_in_separate_reads_is_one_line_end() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"data: a\r").is_empty());
        assert!(decoder.feed(b"\n").is_empty());
        assert_eq!(decoder.feed(b"\r\n").len(), 1);
    }
}
