//! Checks a GGUF file's header against the file itself before anything in it is believed.
//!
//! A model file is input from outside: its header says how long strings and arrays are, how
//! many tensors there are, their shapes, types and offsets, and a reader that trusts those
//! numbers allocates terabytes, recurses without end, divides by zero or reads header bytes as
//! weights. [`validate`] walks the whole header with checked arithmetic and refuses any count,
//! length or offset the file cannot hold, so that the reader that follows (candle's) only ever
//! sees numbers bounded by the file's size.

/// Array elements accepted in one metadata value (vocabularies have about 150,000).
pub const MAX_ARRAY: u64 = 1 << 22;
/// Arrays nested in arrays (GGUF files in use nest none).
const MAX_DEPTH: usize = 2;
/// Dimensions of one tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// What the header holds, checked.
#[derive(Debug)]
pub struct Checked {
    pub tensors: u64,
    pub metadata: u64,
    /// Where tensor data begins.
    pub data_offset: u64,
}

/// Reads little-endian values from a byte slice, failing instead of running past it.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Version 1 writes counts and lengths as u32, later versions as u64.
    wide: bool,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "{what} needs {n} bytes at offset {} but the file has {} left",
                self.at,
                self.left()
            ));
        }
        let start = self.at;
        self.at += n as usize;
        Ok(&self.bytes[start..self.at])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn count(&mut self, what: &str) -> Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.count(what)?;
        self.take(len, what)
    }
}

/// Bytes of one element of a fixed-size metadata type, `None` for strings and arrays.
fn fixed_size(value_type: u32) -> Result<Option<u64>, String> {
    Ok(Some(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 | 9 => return Ok(None),
        other => return Err(format!("unknown metadata value type {other}")),
    }))
}

/// Checks one metadata value of `value_type`; returns its integer value if it is one (for
/// `general.alignment`).
fn value(r: &mut Reader, value_type: u32, depth: usize, key: &str) -> Result<Option<u64>, String> {
    if let Some(size) = fixed_size(value_type)? {
        let bytes = r.take(size, key)?;
        let mut a = [0u8; 8];
        a[..bytes.len()].copy_from_slice(bytes);
        let n = u64::from_le_bytes(a);
        return Ok(match value_type {
            0 | 2 | 4 | 10 => Some(n),
            // Signed values: only those that are not negative.
            1 => (bytes[0] as i8 >= 0).then_some(n),
            3 => (i16::from_le_bytes([bytes[0], bytes[1]]) >= 0).then_some(n),
            5 => (i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) >= 0).then_some(n),
            11 => (n as i64 >= 0).then_some(n),
            7 if bytes[0] > 1 => return Err(format!("`{key}` holds a bool of {}", bytes[0])),
            _ => None,
        });
    }
    if value_type == 8 {
        r.string(key)?;
        return Ok(None);
    }
    // An array: its element type, its length, its elements.
    if depth >= MAX_DEPTH {
        return Err(format!("`{key}` nests arrays deeper than {MAX_DEPTH}"));
    }
    let element = r.u32(key)?;
    let len = r.count(key)?;
    if len > MAX_ARRAY {
        return Err(format!(
            "`{key}` is an array of {len} elements; at most {MAX_ARRAY} are accepted"
        ));
    }
    match fixed_size(element)? {
        Some(size) => {
            let bytes = len
                .checked_mul(size)
                .ok_or_else(|| format!("`{key}`: array size overflows"))?;
            r.take(bytes, key)?;
        }
        None => {
            // Every element takes at least its length field: refuse a count the file cannot
            // hold before walking it.
            let least = if r.wide { 8 } else { 4 };
            if len.saturating_mul(least) > r.left() {
                return Err(format!(
                    "`{key}` claims {len} elements, more than the file can hold"
                ));
            }
            for _ in 0..len {
                value(r, element, depth + 1, key)?;
            }
        }
    }
    Ok(None)
}

/// Bytes per block and elements per block of a GGML tensor type.
fn tensor_type(t: u32) -> Result<(u64, u64), String> {
    Ok(match t {
        0 => (4, 1),
        1 | 30 => (2, 1),
        2 => (18, 32),
        3 => (20, 32),
        6 => (22, 32),
        7 => (24, 32),
        8 => (34, 32),
        9 => (36, 32),
        10 => (84, 256),
        11 => (110, 256),
        12 => (144, 256),
        13 => (176, 256),
        14 => (210, 256),
        15 => (292, 256),
        other => return Err(format!("unknown tensor type {other}")),
    })
}

/// Walks the header of the GGUF file `bytes` and checks every count, length, shape and
/// offset against the file. `Err` says what is wrong.
pub fn validate(bytes: &[u8]) -> Result<Checked, String> {
    let mut r = Reader {
        bytes,
        at: 0,
        wide: true,
    };
    if r.take(4, "the magic number")? != b"GGUF" {
        return Err("it does not start with the GGUF magic number".into());
    }
    let version = r.u32("the version")?;
    r.wide = match version {
        1 => false,
        2 | 3 => true,
        other => {
            return Err(format!(
                "GGUF version {other} is not supported (1 to 3 are)"
            ))
        }
    };
    let tensors = r.count("the tensor count")?;
    let metadata = r.count("the metadata count")?;
    // A metadata entry takes at least a key length, a type and a byte; a tensor entry a name
    // length, a dimension count, a type and an offset.
    if metadata.saturating_mul(13) > r.left() {
        return Err(format!(
            "it claims {metadata} metadata entries, more than it can hold"
        ));
    }
    if tensors.saturating_mul(24) > r.left() {
        return Err(format!(
            "it claims {tensors} tensors, more than it can hold"
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..metadata {
        let key = String::from_utf8_lossy(r.string("a metadata key")?).into_owned();
        let value_type = r.u32(&key)?;
        let number = value(&mut r, value_type, 0, &key)?;
        if key == "general.alignment" {
            // Read as candle reads it: an integer of up to 32 bits.
            match number.filter(|_| value_type <= 5) {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => alignment = a,
                _ => {
                    return Err(
                        "`general.alignment` must be a power of two up to 1 MiB, as a u32"
                            .to_string(),
                    )
                }
            }
        }
    }
    let mut extents = Vec::new();
    for _ in 0..tensors {
        let name = String::from_utf8_lossy(r.string("a tensor name")?).into_owned();
        let dims = r.u32(&name)?;
        if dims == 0 || dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {dims} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let mut elements = 1u64;
        for _ in 0..dims {
            let d = r.count(&name)?;
            if d == 0 {
                return Err(format!("tensor `{name}` has a dimension of 0"));
            }
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| format!("tensor `{name}`: its size overflows"))?;
        }
        let (block_bytes, block) = tensor_type(r.u32(&name)?)?;
        let offset = r.u64(&name)?;
        if !elements.is_multiple_of(block) {
            return Err(format!(
                "tensor `{name}` has {elements} elements, not whole blocks of {block}"
            ));
        }
        let size = (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| format!("tensor `{name}`: its size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` is not aligned to {alignment} bytes"
            ));
        }
        extents.push((name, offset, size));
    }
    let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
    let file = bytes.len() as u64;
    for (name, offset, size) in extents {
        let end = data_offset
            .checked_add(offset)
            .and_then(|start| start.checked_add(size))
            .ok_or_else(|| format!("tensor `{name}`: its offset overflows"))?;
        if end > file {
            return Err(format!(
                "tensor `{name}` runs past the end of the file ({end} > {file} bytes)"
            ));
        }
    }
    Ok(Checked {
        tensors,
        metadata,
        data_offset,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GGUF v3 header writer for tests: metadata and tensor infos, then zeroed data.
    #[derive(Default)]
    pub struct Writer {
        kv: Vec<u8>,
        kv_count: u64,
        tensors: Vec<u8>,
        tensor_count: u64,
        data: u64,
    }

    impl Writer {
        pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
            self.key(key, 8);
            put_str(&mut self.kv, value);
            self
        }

        pub fn u32(&mut self, key: &str, value: u32) -> &mut Self {
            self.key(key, 4);
            self.kv.extend_from_slice(&value.to_le_bytes());
            self
        }

        /// An array header of `len` strings followed by the given ones (which may be fewer).
        pub fn strings(&mut self, key: &str, len: u64, values: &[&str]) -> &mut Self {
            self.key(key, 9);
            self.kv.extend_from_slice(&8u32.to_le_bytes());
            self.kv.extend_from_slice(&len.to_le_bytes());
            for v in values {
                put_str(&mut self.kv, v);
            }
            self
        }

        /// Raw bytes after a key and a type.
        pub fn raw(&mut self, key: &str, value_type: u32, bytes: &[u8]) -> &mut Self {
            self.key(key, value_type);
            self.kv.extend_from_slice(bytes);
            self
        }

        fn key(&mut self, key: &str, value_type: u32) {
            self.kv_count += 1;
            put_str(&mut self.kv, key);
            self.kv.extend_from_slice(&value_type.to_le_bytes());
        }

        /// A tensor of `dims` (GGUF order) and `kind`; its data is placed after the last one's.
        pub fn tensor(
            &mut self,
            name: &str,
            dims: &[u64],
            kind: u32,
            offset: Option<u64>,
        ) -> &mut Self {
            self.tensor_count += 1;
            put_str(&mut self.tensors, name);
            self.tensors
                .extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend_from_slice(&d.to_le_bytes());
            }
            self.tensors.extend_from_slice(&kind.to_le_bytes());
            let (bytes, block) = tensor_type(kind).unwrap_or((4, 1));
            let at = offset.unwrap_or(self.data);
            self.tensors.extend_from_slice(&at.to_le_bytes());
            // Tensors of impossible shape or place get no data: the file is what is tested.
            let size = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d));
            if let (None, Some(size)) = (offset, size.filter(|s| *s < 1 << 30)) {
                self.data = (at + size / block * bytes).div_ceil(32) * 32;
            }
            self
        }

        /// The file: header, padding to 32 bytes, and the tensors' data as zeros.
        pub fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&self.tensor_count.to_le_bytes());
            out.extend_from_slice(&self.kv_count.to_le_bytes());
            out.extend_from_slice(&self.kv);
            out.extend_from_slice(&self.tensors);
            out.resize(out.len().div_ceil(32) * 32, 0);
            out.resize(out.len() + self.data as usize, 0);
            out
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn sound() -> Writer {
        let mut w = Writer::default();
        w.string("general.architecture", "llama")
            .u32("general.alignment", 32)
            .strings("tokenizer.ggml.tokens", 2, &["a", "b"])
            .tensor("token_embd.weight", &[32, 2], 8, None)
            .tensor("output_norm.weight", &[32], 0, None);
        w
    }

    fn refused(w: &Writer) -> String {
        validate(&w.bytes()).unwrap_err()
    }

    #[test]
    fn a_sound_header_passes() {
        let checked = validate(&sound().bytes()).unwrap();
        assert_eq!((checked.tensors, checked.metadata), (2, 3));
        assert_eq!(checked.data_offset % 32, 0);
    }

    #[test]
    fn lengths_and_counts_the_file_cannot_hold_are_refused() {
        let mut w = sound();
        w.strings("huge", 1 << 40, &[]);
        assert!(
            refused(&w).contains("1099511627776 elements"),
            "{}",
            refused(&w)
        );
        let mut w = sound();
        w.strings("many", 1 << 20, &["x"]);
        assert!(
            refused(&w).contains("more than the file can hold"),
            "{}",
            refused(&w)
        );
        let mut w = sound();
        w.raw("long", 8, &(u64::MAX - 3).to_le_bytes());
        assert!(refused(&w).contains("bytes at offset"), "{}", refused(&w));
        let mut bytes = sound().bytes();
        bytes[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(validate(&bytes).unwrap_err().contains("tensors"));
        let mut bytes = sound().bytes();
        bytes[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(validate(&bytes).unwrap_err().contains("metadata entries"));
    }

    #[test]
    fn alignment_zero_and_nested_arrays_are_refused() {
        let mut w = Writer::default();
        w.u32("general.alignment", 0);
        assert!(refused(&w).contains("power of two"));
        let mut w = Writer::default();
        let mut nested = Vec::new();
        for _ in 0..10 {
            nested.extend_from_slice(&9u32.to_le_bytes());
            nested.extend_from_slice(&1u64.to_le_bytes());
        }
        w.raw("deep", 9, &nested);
        assert!(refused(&w).contains("nests arrays"));
    }

    #[test]
    fn tensors_outside_the_file_or_of_absurd_shape_are_refused() {
        let mut w = sound();
        w.tensor("far", &[32], 0, Some(u64::MAX - 31));
        let err = refused(&w);
        assert!(
            err.contains("overflows") || err.contains("runs past"),
            "{err}"
        );
        let mut w = sound();
        w.tensor("big", &[1 << 32, 1 << 32, 1 << 32], 0, None);
        assert!(refused(&w).contains("overflows"));
        let mut w = sound();
        w.tensor("odd", &[33], 8, None);
        assert!(refused(&w).contains("whole blocks"));
        let mut w = sound();
        w.tensor("flat", &[0], 0, None);
        assert!(refused(&w).contains("dimension of 0"));
        let mut bytes = sound().bytes();
        bytes.truncate(bytes.len() - 1);
        assert!(validate(&bytes).unwrap_err().contains("runs past the end"));
    }

    #[test]
    fn other_files_are_refused() {
        assert!(validate(b"").is_err());
        assert!(validate(b"GGML\x03\0\0\0").unwrap_err().contains("magic"));
        assert!(validate(b"GGUF\x09\0\0\0")
            .unwrap_err()
            .contains("version 9"));
    }
}

/// Properties over arbitrary and damaged files.
#[cfg(test)]
mod properties {
    use candle_core::quantized::gguf_file::Content;
    use proptest::prelude::*;

    use super::tests::Writer;
    use super::*;

    fn sound() -> Vec<u8> {
        let mut w = Writer::default();
        w.string("general.architecture", "llama")
            .u32("general.alignment", 32)
            .strings("tokenizer.ggml.tokens", 3, &["a", "b", "c"])
            .tensor("token_embd.weight", &[32, 3], 8, None)
            .tensor("blk.0.attn_q.weight", &[32, 32], 2, None)
            .tensor("output_norm.weight", &[32], 0, None);
        w.bytes()
    }

    /// What the validator promises candle's reader, which trusts the header: reading it does
    /// not panic, and every tensor's data lies inside the file.
    fn holds_its_promise(bytes: &[u8]) -> Result<(), TestCaseError> {
        if validate(bytes).is_err() {
            return Ok(());
        }
        let read = std::panic::catch_unwind(|| {
            Content::read(&mut std::io::Cursor::new(bytes)).map(|content| {
                content.tensor_infos.values().all(|info| {
                    let elements = info.shape.elem_count();
                    let size =
                        elements / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
                    let start = content.tensor_data_offset + info.offset;
                    start + size as u64 <= bytes.len() as u64
                })
            })
        });
        match read {
            Ok(Ok(inside)) => prop_assert!(inside, "a tensor runs past the file"),
            Ok(Err(_)) => {}
            Err(_) => prop_assert!(false, "candle's reader panicked on a validated file"),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_refused_without_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut file = b"GGUF\x03\0\0\0".to_vec();
            file.extend_from_slice(&bytes);
            holds_its_promise(&bytes)?;
            holds_its_promise(&file)?;
        }

        #[test]
        fn a_damaged_header_is_refused_or_still_sound(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = sound();
            let header = validate(&bytes).unwrap().data_offset as usize;
            for (at, value) in edits {
                bytes[at.index(header)] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            holds_its_promise(&bytes)?;
        }
    }
}
