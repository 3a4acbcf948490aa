//! Weights repacked for the 8-bit kernels (`avx2-q8`, `avx512-vnni`): eight rows interleaved,
//! so one 256-bit integer dot product multiplies four weights of each of eight rows with the
//! same four activations, and its eight i32 lanes are eight outputs.
//!
//! Read in GGUF's layout, a dot product's lanes are four weights each of *one* row, and every
//! block of 32 then costs a conversion, a scale and a horizontal sum per row and activation
//! row: more instructions than the integer products themselves. Interleaved, the scales of
//! eight rows are one vector, applied once per block for all eight (the layout llama.cpp's
//! repacked CPU buffers use for some formats; written here for every format moa reads).
//!
//! Every format becomes unsigned quants `u` with `w = s (u - z) + m` per block of 32: a scale
//! `s` (two for Q6_K, one per 16 weights), an integer zero point `z` (8 for Q4_0, 16 for Q5_0,
//! 32 for Q6_K, 128 for Q8_0) that the integer sum subtracts as `z Σ q_a`, and a float offset
//! `m` (Q4_1, Q5_1 and the K-quants' mins) added as `m Σ a`. Rows are padded to a multiple of
//! eight with zero weights.

use rayon::prelude::*;

use super::{block_sums, quantize, split_rows, Format, Kernel, QMatrix, BLOCK};

/// Rows interleaved in one group.
pub const GROUP: usize = 8;

/// Where each part of a packed block lies, per format: per group of eight rows and block of
/// 32 columns, a record of eight f32 scales (and eight more for Q6_K's second half), eight
/// f32 offsets where the format has them, then the quants.
#[derive(Clone, Copy)]
struct Layout {
    /// Quants as nibbles (128 bytes: byte `i` of chunk `p` holds register `p`'s byte `i` in
    /// its low nibble and register `p + 4`'s in its high one), else as bytes (256).
    nibbles: bool,
    /// 32 more bytes of fifth bits: bit `k` of byte `i` is bit 4 of register `k`'s byte `i`.
    fifth: bool,
    /// A float offset per row.
    offset: bool,
    /// A scale per 16 weights (Q6_K).
    split: bool,
    /// The integer zero point `z` (0: none).
    zero: i32,
}

impl Layout {
    const fn of(format: Format) -> Layout {
        let nibbles = !matches!(format, Format::Q8_0 | Format::Q6K);
        Layout {
            nibbles,
            fifth: matches!(format, Format::Q5_0 | Format::Q5_1 | Format::Q5K),
            offset: matches!(
                format,
                Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K
            ),
            split: matches!(format, Format::Q6K),
            zero: match format {
                Format::Q4_0 => 8,
                Format::Q5_0 => 16,
                Format::Q6K => 32,
                Format::Q8_0 => 128,
                _ => 0,
            },
        }
    }

    const fn offset_at(self) -> usize {
        32 * (1 + self.split as usize)
    }

    const fn quants_at(self) -> usize {
        self.offset_at() + 32 * self.offset as usize
    }

    /// Bytes per record, at most [`MAX_RECORD`].
    const fn record(self) -> usize {
        self.quants_at()
            + match (self.nibbles, self.fifth) {
                (false, _) => 256,
                (true, false) => 128,
                (true, true) => 160,
            }
    }
}

/// The largest record: Q6_K's (two scales, bytes).
const MAX_RECORD: usize = Layout::of(Format::Q6K).record();

/// A weight matrix in the 8-bit kernels' layout (see the module's documentation).
pub struct Packed {
    format: Format,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Packed {
    /// Repacks `w` (in parallel: a model's matrices are packed once, when it loads).
    pub fn new(w: &QMatrix) -> Packed {
        let layout = Layout::of(w.format);
        let blocks = w.cols / BLOCK;
        let record = layout.record();
        let mut data = vec![0u8; w.rows.div_ceil(GROUP) * blocks * record];
        data.par_chunks_mut((blocks * record).max(1))
            .enumerate()
            .for_each(|(g, group)| {
                let rows = GROUP.min(w.rows - g * GROUP);
                for (b, dst) in group.chunks_exact_mut(record).enumerate() {
                    // Built aside and copied: the first touch of each page must be a write, or
                    // the kernel maps its zero page and copies it on the write, flushing the
                    // other core's TLB each time (that was most of the packing's time).
                    let mut whole = [0u8; MAX_RECORD];
                    let out = &mut whole[..record];
                    let mut u = [[0u8; BLOCK]; GROUP];
                    for (j, u) in u.iter_mut().enumerate().take(rows) {
                        let (quants, scale, offset) = unsigned(w.format, w.row(g * GROUP + j), b);
                        *u = quants;
                        let mut put = |at: usize, v: f32| {
                            out[at + 4 * j..][..4].copy_from_slice(&v.to_le_bytes())
                        };
                        put(0, scale[0]);
                        if layout.split {
                            put(32, scale[1]);
                        }
                        if layout.offset {
                            put(layout.offset_at(), offset);
                        }
                    }
                    let quants = &mut out[layout.quants_at()..];
                    for k in 0..8 {
                        // Register k: weights 4k..4k + 4 of each row, row j in lane j.
                        let reg: [u8; 32] = std::array::from_fn(|i| u[i / 4][4 * k + i % 4]);
                        if !layout.nibbles {
                            quants[32 * k..][..32].copy_from_slice(&reg);
                            continue;
                        }
                        for (q, r) in quants[32 * (k % 4)..][..32].iter_mut().zip(reg) {
                            *q |= (r & 0x0F) << (4 * (k / 4));
                        }
                        if layout.fifth {
                            for (q, r) in quants[128..160].iter_mut().zip(reg) {
                                *q |= ((r >> 4) & 1) << k;
                            }
                        }
                    }
                    dst.copy_from_slice(out);
                }
            });
        Packed {
            format: w.format,
            rows: w.rows,
            cols: w.cols,
            data,
        }
    }

    /// Bytes held (for reports).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `x` (`n × cols`) times the transposed weights: `n × rows`, with `kernel` (one of the
    /// 8-bit kernels, available on this CPU).
    pub fn matmul(&self, x: &[f32], n: usize, kernel: Kernel) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "activation shape");
        assert!(
            kernel.packs() && kernel.available(),
            "{} does not run packed weights here",
            kernel.name()
        );
        let blocks = self.cols / BLOCK;
        if blocks == 0 || self.rows == 0 {
            return vec![0.0; n * self.rows];
        }
        let quantized = quantize(x);
        let sums = block_sums(x);
        // Σ q over each half block, for the zero points.
        let halves: Vec<i32> = quantized
            .q
            .chunks_exact(BLOCK / 2)
            .map(|h| h.iter().map(|q| i32::from(*q)).sum())
            .collect();
        let record = Layout::of(self.format).record();
        split_rows(self.rows, n, self.rows * blocks * n, GROUP, |range| {
            let (first, groups) = (range.start / GROUP, range.len().div_ceil(GROUP));
            let data = &self.data[first * blocks * record..][..groups * blocks * record];
            let mut out = vec![0.0f32; n * range.len()];
            #[cfg(target_arch = "x86_64")]
            {
                let a = x86::Act {
                    q: &quantized.q,
                    d: &quantized.d,
                    sums: &sums,
                    halves: &halves,
                    blocks,
                    n,
                };
                // SAFETY: `kernel` is available (asserted above), and the 8-bit kernels need
                // exactly the features each entry point enables. `data` holds whole groups of
                // `blocks` records of this format (sized in Packed::new), and the activations
                // `n` rows of `blocks` blocks (asserted above).
                unsafe {
                    match kernel {
                        Kernel::Avx512Vnni => x86::groups_vnni(self.format, data, &a, &mut out),
                        _ => x86::groups_q8(self.format, data, &a, &mut out),
                    }
                }
            }
            out
        })
    }
}

/// Sub-block `b` of a row as unsigned quants, two scales (per 16 weights) and an offset:
/// `w = s (u - z) + m` with the format's zero point `z`.
fn unsigned(format: Format, row: &[u8], b: usize) -> ([u8; BLOCK], [f32; 2], f32) {
    if format == Format::Q6K {
        let (q, scales, d) = super::q6k_sub(&row[b / 8 * format.block_bytes()..], b % 8);
        return (q, scales.map(|s| d * f32::from(s)), 0.0);
    }
    let (d, m, q) = format.parts(row, b);
    // Q8_0's quants are signed: shifted by its zero point of 128. The other formats' are
    // already unsigned, and Q4_0's and Q5_0's offsets are their zero points.
    let u = q.map(|q| (q + if format == Format::Q8_0 { 128 } else { 0 }) as u8);
    let offset = if Layout::of(format).offset { m } else { 0.0 };
    (u, [d, d], offset)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Format, Layout, BLOCK, GROUP};

    /// Activations quantized to 8 bits, `n` rows of `blocks` blocks: bytes `q`, each block's
    /// scale `d`, its exact sum `sums` (for the offsets) and the sums of its quants per half
    /// block `halves` (for the zero points).
    pub struct Act<'a> {
        pub q: &'a [i8],
        pub d: &'a [f32],
        pub sums: &'a [f32],
        pub halves: &'a [i32],
        pub blocks: usize,
        pub n: usize,
    }

    /// Groups of packed rows (`data`) times every activation row, into `out[i * rows + row]`
    /// for the first `rows = out.len() / n` rows (the rest are padding), with AVX2's
    /// `vpmaddubsw`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn groups_q8(format: Format, data: &[u8], a: &Act, out: &mut [f32]) {
        by_format::<false>(format, data, a, out)
    }

    /// [`groups_q8`] with AVX-512 VNNI's `vpdpbusd` (on 256-bit registers).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn groups_vnni(format: Format, data: &[u8], a: &Act, out: &mut [f32]) {
        by_format::<true>(format, data, a, out)
    }

    /// [`groups`] for `format`, inlined into each instruction set's entry point.
    #[inline(always)]
    unsafe fn by_format<const VNNI: bool>(format: Format, data: &[u8], a: &Act, out: &mut [f32]) {
        match format {
            Format::Q4_0 => groups::<0, VNNI>(data, a, out),
            Format::Q4_1 => groups::<1, VNNI>(data, a, out),
            Format::Q5_0 => groups::<2, VNNI>(data, a, out),
            Format::Q5_1 => groups::<3, VNNI>(data, a, out),
            Format::Q8_0 => groups::<4, VNNI>(data, a, out),
            Format::Q4K => groups::<5, VNNI>(data, a, out),
            Format::Q5K => groups::<6, VNNI>(data, a, out),
            Format::Q6K => groups::<7, VNNI>(data, a, out),
        }
    }

    /// The layout of [`Format::ALL`]`[F]`.
    const fn layout(f: u8) -> Layout {
        Layout::of(Format::ALL[f as usize])
    }

    /// Q8_0's quants go up to 255 with its zero point, and two such products overflow the
    /// i16 of `vpmaddubsw`; without VNNI they are multiplied signed instead.
    const fn signed(f: u8, vnni: bool) -> bool {
        f == 4 && !vnni
    }

    #[inline(always)]
    unsafe fn groups<const F: u8, const VNNI: bool>(data: &[u8], a: &Act, out: &mut [f32]) {
        const WIDE: usize = 8;
        let per_group = a.blocks * layout(F).record();
        for (g, group) in data.chunks_exact(per_group).enumerate() {
            // Up to WIDE activation rows share each unpacked block.
            let mut i = 0;
            while i < a.n {
                let wide = (a.n - i).min(WIDE);
                let (p, at) = (group.as_ptr(), g * GROUP);
                match wide {
                    8 => tile::<F, VNNI, 8>(p, a, i, at, out),
                    7 => tile::<F, VNNI, 7>(p, a, i, at, out),
                    6 => tile::<F, VNNI, 6>(p, a, i, at, out),
                    5 => tile::<F, VNNI, 5>(p, a, i, at, out),
                    4 => tile::<F, VNNI, 4>(p, a, i, at, out),
                    3 => tile::<F, VNNI, 3>(p, a, i, at, out),
                    2 => tile::<F, VNNI, 2>(p, a, i, at, out),
                    _ => tile::<F, VNNI, 1>(p, a, i, at, out),
                }
                i += wide;
            }
        }
    }

    /// The eight registers of one record's quants: register `k` holds weights `4k..4k + 4` of
    /// each of the eight rows (lane `j`: row `j`). Signed for [`signed`].
    #[inline(always)]
    unsafe fn unpack<const F: u8, const VNNI: bool>(p: *const u8) -> [__m256i; 8] {
        let l = layout(F);
        let mut w = [_mm256_setzero_si256(); 8];
        if !l.nibbles {
            for (k, w) in w.iter_mut().enumerate() {
                *w = _mm256_loadu_si256(p.add(32 * k) as *const __m256i);
                if signed(F, VNNI) {
                    *w = _mm256_xor_si256(*w, _mm256_set1_epi8(-128));
                }
            }
            return w;
        }
        let low = _mm256_set1_epi8(0x0F);
        for k in 0..4 {
            let v = _mm256_loadu_si256(p.add(32 * k) as *const __m256i);
            w[k] = _mm256_and_si256(v, low);
            w[k + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        if l.fifth {
            let h = _mm256_loadu_si256(p.add(128) as *const __m256i);
            let bit = _mm256_set1_epi8(0x10);
            // Bit k of each byte moved to bit 4 (16-bit shifts: the mask drops what crosses
            // into the neighbouring byte).
            let at4 = [
                _mm256_slli_epi16(h, 4),
                _mm256_slli_epi16(h, 3),
                _mm256_slli_epi16(h, 2),
                _mm256_slli_epi16(h, 1),
                h,
                _mm256_srli_epi16(h, 1),
                _mm256_srli_epi16(h, 2),
                _mm256_srli_epi16(h, 3),
            ];
            for (w, at4) in w.iter_mut().zip(at4) {
                *w = _mm256_or_si256(*w, _mm256_and_si256(at4, bit));
            }
        }
        w
    }

    /// `acc` plus the four-product sums of `w` with `a` in each i32 lane.
    #[inline(always)]
    unsafe fn dot<const F: u8, const VNNI: bool>(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        if VNNI {
            return _mm256_dpbusd_epi32(acc, w, a);
        }
        let pairs = if signed(F, VNNI) {
            // |w| times a with w's sign moved onto it (no pair then overflows i16).
            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
        } else {
            _mm256_maddubs_epi16(w, a)
        };
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// Activations `4k..4k + 4` of the block at `q` in every i32 lane.
    #[inline(always)]
    unsafe fn four(q: *const i32, k: usize) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(q.add(k)))
    }

    /// One group's eight rows (rows `first..first + 8` of `out`) times activation rows
    /// `i..i + C`.
    #[inline(always)]
    unsafe fn tile<const F: u8, const VNNI: bool, const C: usize>(
        group: *const u8,
        a: &Act,
        i: usize,
        first: usize,
        out: &mut [f32],
    ) {
        let l = layout(F);
        let zero = if signed(F, VNNI) { 0 } else { l.zero };
        let mut acc = [_mm256_setzero_ps(); C];
        for b in 0..a.blocks {
            let record = group.add(b * l.record());
            let scale = _mm256_loadu_ps(record as *const f32);
            let w = unpack::<F, VNNI>(record.add(l.quants_at()));
            for (c, acc) in acc.iter_mut().enumerate() {
                let at = (i + c) * a.blocks + b;
                let q = a.q.as_ptr().add(at * BLOCK) as *const i32;
                let da = _mm256_set1_ps(*a.d.get_unchecked(at));
                // The zero point's term, -z Σ q per half, starts each integer sum.
                let lo = -zero * *a.halves.get_unchecked(2 * at);
                let hi = -zero * *a.halves.get_unchecked(2 * at + 1);
                if l.split {
                    let mut first = _mm256_set1_epi32(lo);
                    let mut second = _mm256_set1_epi32(hi);
                    for k in 0..4 {
                        first = dot::<F, VNNI>(first, w[k], four(q, k));
                        second = dot::<F, VNNI>(second, w[k + 4], four(q, k + 4));
                    }
                    let scale_hi = _mm256_loadu_ps(record.add(32) as *const f32);
                    *acc =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(first), _mm256_mul_ps(scale, da), *acc);
                    *acc = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(second),
                        _mm256_mul_ps(scale_hi, da),
                        *acc,
                    );
                } else {
                    let mut sum = _mm256_set1_epi32(lo + hi);
                    for (k, w) in w.iter().enumerate() {
                        sum = dot::<F, VNNI>(sum, *w, four(q, k));
                    }
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(scale, da), *acc);
                }
                if l.offset {
                    let offset = _mm256_loadu_ps(record.add(l.offset_at()) as *const f32);
                    let sum = _mm256_set1_ps(*a.sums.get_unchecked(at));
                    *acc = _mm256_fmadd_ps(offset, sum, *acc);
                }
            }
        }
        let rows = out.len() / a.n;
        let valid = (rows - first).min(GROUP);
        for (c, acc) in acc.iter().enumerate() {
            let mut values = [0.0f32; GROUP];
            _mm256_storeu_ps(values.as_mut_ptr(), *acc);
            out[(i + c) * rows + first..][..valid].copy_from_slice(&values[..valid]);
        }
    }
}
