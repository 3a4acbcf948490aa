//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the distributed trace a run
//! belongs to, so that its upstream calls join the client's trace. The ids are random, not
//! secret: they only need to be unique.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A trace and one span in it, as a `traceparent` header names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// The caller recorded its span (the `sampled` flag).
    pub sampled: bool,
}

impl TraceContext {
    /// Reads a `traceparent` header: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not zero.
    /// A later version is read by the same first four fields, as the specification asks;
    /// anything else is `None` (and the run starts a trace of its own).
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut fields = header.splitn(5, '-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let rest = fields.next();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if !hex(flags, 2) || (version == "00" && rest.is_some()) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, with a new span as its root.
    pub fn root(sampled: bool) -> Self {
        let trace_id = (u128::from(random_id()) << 64) | u128::from(random_id());
        Self {
            trace_id,
            span_id: random_id(),
            sampled,
        }
    }

    /// A new span in the same trace (a child of this one).
    pub fn child(&self) -> Self {
        Self {
            span_id: random_id(),
            ..*self
        }
    }

    /// The `traceparent` header naming this span.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// A random (version 4) UUID in its usual form, `8-4-4-4-12` lowercase hex digits: a request
/// id every upstream takes.
pub fn new_uuid() -> String {
    let high = random_id();
    let low = random_id();
    // Version 4 in the 13th digit, the RFC 4122 variant in the 17th.
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc << 60)) | (0x8 << 60);
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Whether `id` is a UUID as written usually (`8-4-4-4-12` hex digits) or as 32 hex digits.
/// Only such ids are sent upstream: llama-cpp-python's server refuses any other
/// `X-Request-Id` with a 400.
pub fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    match b.len() {
        32 => hex(0..32),
        36 => {
            [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
                && hex(0..8)
                && hex(9..13)
                && hex(14..18)
                && hex(19..23)
                && hex(24..36)
        }
        _ => false,
    }
}

/// A random non-zero 64-bit id: the standard library's per-process random hash keys over a
/// counter, so ids differ across processes and calls without a random-number crate.
pub fn random_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    loop {
        let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let id = hasher.finish();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_headers_are_refused() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert_eq!(context.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(context.span_id, 0x00f067aa0ba902b7);
        assert!(context.sampled);
        assert_eq!(context.header(), header);
        // A later version's extra fields are ignored; its first four are read.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert!(!TraceContext::parse(later).unwrap().sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn new_uuids_are_version_4_and_only_uuids_pass_the_check() {
        let (a, b) = (new_uuid(), new_uuid());
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(is_uuid(id), "{id}");
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4", "{id}");
            assert!("89ab".contains(&id[19..20]), "{id}");
        }
        assert!(is_uuid("6F9619FF8B864011B42D00C04FD430C8"));
        for bad in [
            "",
            "req-1",
            "trace-42.a",
            "6f9619ff-8b86-4011-b42d-00c04fd430cg",
            "6f9619ff-8b86-4011-b42d00c04fd430c8-",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn children_keep_the_trace_and_get_new_span_ids() {
        let root = TraceContext::root(true);
        let (a, b) = (root.child(), root.child());
        assert_eq!((a.trace_id, b.trace_id), (root.trace_id, root.trace_id));
        assert!(a.span_id != b.span_id && a.span_id != root.span_id);
        assert_ne!(TraceContext::root(true).trace_id, root.trace_id);
        assert_eq!(TraceContext::parse(&a.header()), Some(a));
    }
}
