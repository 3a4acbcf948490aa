//! The `application/vnd.amazon.eventstream` framing of ConverseStream: length-prefixed binary
//! messages with typed headers, whose prelude and whole message each carry a CRC32 that is
//! checked before anything in them is believed.
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC32 u32 | headers | payload | message CRC32 u32
//! header: name length u8 | name | value type u8 | value
//! ```

/// One decoded message: its headers (string values; others are skipped) and payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The string value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why the stream cannot be decoded any further.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "event-stream prelude CRC mismatch (expected {expected:08x}, computed {computed:08x})"
    )]
    PreludeCrc { expected: u32, computed: u32 },
    #[error(
        "event-stream message CRC mismatch (expected {expected:08x}, computed {computed:08x})"
    )]
    MessageCrc { expected: u32, computed: u32 },
    #[error("event-stream message of {0} bytes is impossible")]
    Length(u32),
    #[error("event-stream headers are malformed: {0}")]
    Headers(String),
    #[error("the event stream ended inside a message ({0} bytes left over)")]
    Truncated(usize),
}

const PRELUDE: usize = 12;
/// Larger messages are refused rather than buffered (AWS caps them at 16 MiB).
const MAX_MESSAGE: u32 = 16 * 1024 * 1024;

/// Buffers bytes cut anywhere and yields whole, checked messages.
#[derive(Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    start: usize,
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; returns every message they complete. After an error the stream
    /// is unusable (the framing is lost).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
        self.buffer.extend_from_slice(bytes);
        let mut messages = Vec::new();
        loop {
            let available = &self.buffer[self.start..];
            if available.len() < PRELUDE {
                break;
            }
            let total = be32(available);
            let headers_len = be32(&available[4..]);
            let expected = be32(&available[8..]);
            let computed = crc32fast::hash(&available[..8]);
            if expected != computed {
                return Err(FrameError::PreludeCrc { expected, computed });
            }
            if total > MAX_MESSAGE || (total as usize) < PRELUDE + 4 + headers_len as usize {
                return Err(FrameError::Length(total));
            }
            let total = total as usize;
            if available.len() < total {
                break;
            }
            let message = &available[..total];
            let expected = be32(&message[total - 4..]);
            let computed = crc32fast::hash(&message[..total - 4]);
            if expected != computed {
                return Err(FrameError::MessageCrc { expected, computed });
            }
            let headers_end = PRELUDE + headers_len as usize;
            messages.push(Message {
                headers: parse_headers(&message[PRELUDE..headers_end])?,
                payload: message[headers_end..total - 4].to_vec(),
            });
            self.start += total;
        }
        // Compact once the consumed part dominates, so the buffer does not grow without bound.
        if self.start > 0 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        Ok(messages)
    }

    /// The body ended: leftover bytes mean a message was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffer.len() - self.start {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let bad = |what: &str| FrameError::Headers(what.to_string());
    let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, FrameError> {
        if bytes.len() < n {
            return Err(bad("a header runs past the header block"));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head.to_vec())
    };
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = take(&mut bytes, 1)?[0] as usize;
        let name = String::from_utf8(take(&mut bytes, name_len)?)
            .map_err(|_| bad("a header name is not UTF-8"))?;
        let kind = take(&mut bytes, 1)?[0];
        let fixed = match kind {
            0 | 1 => Some(0), // bool true / false
            2 => Some(1),     // byte
            3 => Some(2),     // short
            4 => Some(4),     // int
            5 | 8 => Some(8), // long, timestamp
            9 => Some(16),    // uuid
            6 | 7 => None,    // bytes, string: u16 length first
            other => return Err(FrameError::Headers(format!("unknown header type {other}"))),
        };
        match fixed {
            Some(n) => {
                take(&mut bytes, n)?;
            }
            None => {
                let len = take(&mut bytes, 2)?;
                let value = take(&mut bytes, u16::from_be_bytes([len[0], len[1]]) as usize)?;
                if kind == 7 {
                    let value =
                        String::from_utf8(value).map_err(|_| bad("a header value is not UTF-8"))?;
                    headers.push((name, value));
                }
            }
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a frame the long way, independently of the decoder.
    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in headers {
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(7);
            block.extend_from_slice(&(value.len() as u16).to_be_bytes());
            block.extend_from_slice(value.as_bytes());
        }
        let total = (PRELUDE + block.len() + payload.len() + 4) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn the_published_empty_message_vector_decodes() {
        // AWS's event-stream test vector `empty_message`.
        let bytes = [
            0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98,
            0xc8, 0xff,
        ];
        let messages = Decoder::new().feed(&bytes).unwrap();
        assert_eq!(
            messages,
            vec![Message {
                headers: vec![],
                payload: vec![]
            }]
        );
        assert_eq!(frame(&[], b""), bytes);
    }

    #[test]
    fn messages_cut_at_every_byte_decode_the_same() {
        let mut bytes = frame(
            &[
                (":event-type", "contentBlockDelta"),
                (":message-type", "event"),
            ],
            br#"{"delta":{"text":"h\u00e9llo"}}"#,
        );
        bytes.extend(frame(
            &[(":event-type", "messageStop")],
            br#"{"stopReason":"end_turn"}"#,
        ));
        let whole = Decoder::new().feed(&bytes).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(whole[1].payload, br#"{"stopReason":"end_turn"}"#);
        for cut in 1..bytes.len() {
            let mut decoder = Decoder::new();
            let mut got = decoder.feed(&bytes[..cut]).unwrap();
            got.extend(decoder.feed(&bytes[cut..]).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
            decoder.finish().unwrap();
        }
    }

    #[test]
    fn other_header_types_are_skipped() {
        let mut bytes = frame(&[(":event-type", "metadata")], b"{}");
        // Splice a bool and an int header before the string one, fixing lengths and CRCs.
        let extra = [&[4u8][..], b"flag", &[0], &[5], b"count", &[4, 0, 0, 0, 7]].concat();
        let headers_len = be32(&bytes[4..]) as usize + extra.len();
        let body = [&extra[..], &bytes[PRELUDE..bytes.len() - 4]].concat();
        let total = (PRELUDE + body.len() + 4) as u32;
        bytes = [
            &total.to_be_bytes()[..],
            &(headers_len as u32).to_be_bytes(),
        ]
        .concat();
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(&body);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let messages = Decoder::new().feed(&bytes).unwrap();
        assert_eq!(
            messages[0].headers,
            vec![(":event-type".to_string(), "metadata".to_string())]
        );
        assert_eq!(messages[0].payload, b"{}");
    }

    #[test]
    fn damaged_frames_are_refused() {
        let good = frame(&[(":event-type", "x")], b"payload");
        let mut bad_prelude = good.clone();
        bad_prelude[9] ^= 1;
        assert!(matches!(
            Decoder::new().feed(&bad_prelude),
            Err(FrameError::PreludeCrc { .. })
        ));
        let mut bad_payload = good.clone();
        let at = good.len() - 6;
        bad_payload[at] ^= 0x20;
        assert!(matches!(
            Decoder::new().feed(&bad_payload),
            Err(FrameError::MessageCrc { .. })
        ));
        let mut decoder = Decoder::new();
        assert_eq!(decoder.feed(&good[..good.len() - 1]).unwrap(), vec![]);
        assert_eq!(decoder.finish(), Err(FrameError::Truncated(good.len() - 1)));
    }
}

/// Properties over arbitrary bytes and arbitrary messages cut at arbitrary places.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// An independent encoder of string-headed messages.
    fn encode(headers: &[(String, String)], payload: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in headers {
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(7);
            block.extend_from_slice(&(value.len() as u16).to_be_bytes());
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = ((PRELUDE + block.len() + payload.len() + 4) as u32)
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out
    }

    /// Feeds `bytes` in pieces cut at `cuts`: the messages and the first error.
    fn decode(bytes: &[u8], cuts: &[usize]) -> (Vec<Message>, Option<FrameError>) {
        let mut decoder = Decoder::new();
        let mut messages = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([bytes.len()]) {
            let end = end.clamp(start, bytes.len());
            match decoder.feed(&bytes[start..end]) {
                Ok(more) => messages.extend(more),
                Err(e) => return (messages, Some(e)),
            }
            // What is kept is part of one message, which is capped.
            assert!(decoder.buffer.len() - decoder.start < MAX_MESSAGE as usize);
            start = end;
        }
        let error = decoder.finish().err();
        (messages, error)
    }

    /// A message as the strategy makes it: string headers and a payload.
    type Sent = (Vec<(String, String)>, Vec<u8>);

    fn messages() -> impl Strategy<Value = Vec<Sent>> {
        let header = ("[:a-z-]{1,20}", "[^\u{0}]{0,30}");
        let message = (
            prop::collection::vec(header, 0..4),
            prop::collection::vec(any::<u8>(), 0..64),
        );
        prop::collection::vec(message, 0..5)
    }

    fn cuts(len: usize, picks: Vec<prop::sample::Index>) -> Vec<usize> {
        let mut cuts: Vec<usize> = picks.iter().map(|i| i.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        #[test]
        fn encoded_messages_decode_to_themselves_however_cut(
            sent in messages(),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let bytes: Vec<u8> = sent.iter().flat_map(|(h, p)| encode(h, p)).collect();
            let (got, error) = decode(&bytes, &cuts(bytes.len(), picks));
            prop_assert_eq!(error, None);
            let expected: Vec<Message> = sent
                .into_iter()
                .map(|(headers, payload)| Message { headers, payload })
                .collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn one_flipped_bit_is_never_believed(
            sent in messages().prop_filter("something to corrupt", |m| !m.is_empty()),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let bytes: Vec<u8> = sent.iter().flat_map(|(h, p)| encode(h, p)).collect();
            let mut corrupt = bytes.clone();
            let at = at.index(corrupt.len());
            corrupt[at] ^= 1 << bit;
            let (got, error) = decode(&corrupt, &[]);
            // Whatever decodes lies wholly before the flipped bit (a feed that fails returns
            // nothing, so it may be less); the damaged message never decodes.
            let (intact, _) = decode(&bytes[..at], &[]);
            prop_assert!(error.is_some());
            prop_assert!(intact.starts_with(&got));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..1024),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let cuts = cuts(bytes.len(), picks);
            let (whole, whole_error) = decode(&bytes, &[]);
            let (pieces, pieces_error) = decode(&bytes, &cuts);
            prop_assert_eq!(whole, pieces);
            prop_assert_eq!(whole_error.is_some(), pieces_error.is_some());
        }
    }
}
