//! Quantized matrix products for the formats GGUF files of llama-family models hold (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K), reading the weights where they lie
//! in the memory-mapped file.
//!
//! Four ways to compute, chosen at run time ([`Kernel::detect`]) so one binary runs everywhere:
//! - [`Kernel::Avx512Vnni`] (the default where the CPU has AVX-512 VNNI) and
//!   [`Kernel::Avx2Q8`] (the default where it has AVX2): activations are quantized per block
//!   of 32 to 8 bits with an f32 scale, as llama.cpp does, and each block's dot product is
//!   integer (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd`), in tiles of several weight and
//!   activation rows. The quantization costs a little accuracy, measured by the local bench
//!   (logit drift and the likelihood of a fixed text).
//! - [`Kernel::Avx2F32`]: f32 activations, each weight block unpacked to f32 and multiplied
//!   with FMA; the exact product, slower.
//! - [`Kernel::Scalar`]: f32 everywhere, no vector instructions: the fallback, and the plain
//!   reading the tests hold the others to.
//!
//! `MOA_KERNEL=scalar|avx2-f32|avx2-q8|avx512-vnni` forces one (for tests on every path, and
//! for measuring); an unknown name or a kernel the CPU cannot run is reported on stderr, not
//! silently ignored, and the best kernel the CPU runs is used.
#![allow(unsafe_code)] // SIMD intrinsics; each unsafe block says why it is sound.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// GGUF's block of 32 weights.
pub const BLOCK: usize = 32;

/// A quantized weight format this module computes with. In every one, weights `0..16` of a
/// block are the low nibbles of its 16 nibble bytes and `16..32` the high ones, and Q5's
/// fifth bits are bit `j` of a little-endian u32 for weight `j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `d` (f16), 16 nibble bytes: `w = (q - 8) d`.
    Q4_0,
    /// `d`, `m` (f16), 16 nibble bytes: `w = q d + m`.
    Q4_1,
    /// `d` (f16), 4 bytes of fifth bits, 16 nibble bytes: `w = (q - 16) d`.
    Q5_0,
    /// `d`, `m` (f16), 4 bytes of fifth bits, 16 nibble bytes: `w = q d + m`.
    Q5_1,
    /// `d` (f16) and 32 signed bytes: `w = q d`.
    Q8_0,
    /// 256 weights: `d`, `dmin` (f16), 12 bytes of 6-bit scales and mins for its eight
    /// sub-blocks of 32, 128 nibble bytes (each 32 bytes: sub-block `2c` in the low nibbles,
    /// `2c + 1` in the high ones): `w = d sc q - dmin m`.
    Q4K,
    /// Q4K with 32 bytes of fifth bits after the scales (bit `j` of byte `l`: weight `l` of
    /// sub-block `j`).
    Q5K,
    /// 256 weights: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 signed 8-bit scales
    /// (one per 16 weights), `d` (f16): `w = d sc (q - 32)`.
    Q6K,
}

impl Format {
    /// Every format, for tests and benches.
    pub const ALL: [Format; 8] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
        Format::Q4K,
        Format::Q5K,
        Format::Q6K,
    ];

    /// The format of a GGUF tensor type, if this module computes with it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.ggml() == dtype)
    }

    /// The GGUF tensor type (candle's name for it).
    pub fn ggml(self) -> GgmlDType {
        match self {
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q5_1 => GgmlDType::Q5_1,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q5K => GgmlDType::Q5K,
            Format::Q6K => GgmlDType::Q6K,
        }
    }

    /// Weights per block: 32, or 256 for the K-quants.
    pub fn block_len(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// Bytes per block of [`Format::block_len`] weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Sub-block `b` (weights `32 b .. 32 b + 32`) of a row of this format as a scale `d`, an
    /// offset `m` and quants `q`, with `w = q d + m` (the offset of Q4_0 and Q5_0 is `-8 d`
    /// and `-16 d`; Q8_0's quants are signed and its offset 0; Q6K's quants carry their
    /// per-16 scales, `sc (q - 32)`, and `d` is the block's).
    pub fn parts(self, row: &[u8], b: usize) -> (f32, f32, [i16; BLOCK]) {
        if self.block_len() != BLOCK {
            return self.k_parts(&row[b / 8 * self.block_bytes()..], b % 8);
        }
        let block = &row[b * self.block_bytes()..];
        let half = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let d = half(0);
        let mut q = [0i16; BLOCK];
        let nibbles = |q: &mut [i16; BLOCK], at: usize| {
            for (j, byte) in block[at..at + 16].iter().enumerate() {
                q[j] = i16::from(byte & 0x0F);
                q[j + 16] = i16::from(byte >> 4);
            }
        };
        let fifth = |q: &mut [i16; BLOCK], at: usize| {
            let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            for (j, q) in q.iter_mut().enumerate() {
                *q |= (((bits >> j) & 1) as i16) << 4;
            }
        };
        let m = match self {
            Format::Q4_0 => {
                nibbles(&mut q, 2);
                -8.0 * d
            }
            Format::Q4_1 => {
                nibbles(&mut q, 4);
                half(2)
            }
            Format::Q5_0 => {
                nibbles(&mut q, 6);
                fifth(&mut q, 2);
                -16.0 * d
            }
            Format::Q5_1 => {
                nibbles(&mut q, 8);
                fifth(&mut q, 4);
                half(2)
            }
            Format::Q8_0 => {
                for (q, byte) in q.iter_mut().zip(&block[2..34]) {
                    *q = i16::from(*byte as i8);
                }
                0.0
            }
            Format::Q4K | Format::Q5K | Format::Q6K => unreachable!("256-weight blocks"),
        };
        (d, m, q)
    }

    /// [`Format::parts`] of sub-block `j` (0..8) of a K-quant block.
    fn k_parts(self, block: &[u8], j: usize) -> (f32, f32, [i16; BLOCK]) {
        let half = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let mut q = [0i16; BLOCK];
        if self == Format::Q6K {
            let (h, k) = (j / 4, j % 4);
            let ql = &block[64 * h + 32 * (k % 2)..];
            let qh = &block[128 + 32 * h..];
            let scales = &block[192 + 8 * h + 2 * k..];
            for (l, q) in q.iter_mut().enumerate() {
                let low = if k < 2 { ql[l] & 0x0F } else { ql[l] >> 4 };
                let high = (qh[l] >> (2 * k)) & 3;
                let value = i16::from(low | (high << 4)) - 32;
                *q = value * i16::from(scales[l / 16] as i8);
            }
            return (half(208), 0.0, q);
        }
        let (sc, m) = k_scale_min(&block[4..16], j);
        let qs = &block[if self == Format::Q5K { 48 } else { 16 } + 32 * (j / 2)..];
        for (l, q) in q.iter_mut().enumerate() {
            *q = i16::from(if j.is_multiple_of(2) {
                qs[l] & 0x0F
            } else {
                qs[l] >> 4
            });
            if self == Format::Q5K {
                *q |= i16::from((block[16 + l] >> j) & 1) << 4;
            }
        }
        (half(0) * f32::from(sc), -half(2) * f32::from(m), q)
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4K/Q5K block, from its 12 packed bytes.
#[inline(always)]
fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// A `rows × cols` matrix of quantized weights, row-major, as GGUF stores it.
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows × cols` weights of `format`.
    pub fn new(format: Format, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, String> {
        let len = format.block_len();
        if !cols.is_multiple_of(len) {
            return Err(format!("{cols} columns is not a multiple of {len}"));
        }
        let expected = rows * cols / len * format.block_bytes();
        if data.len() != expected {
            return Err(format!(
                "{} bytes of weights, {expected} expected",
                data.len()
            ));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.format.block_len() * self.format.block_bytes()
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let len = self.row_bytes();
        &self.data[r * len..(r + 1) * len]
    }

    /// One row of weights as f32 (for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (d, m, q) = self.format.parts(row, b);
            for (w, q) in dst.iter_mut().zip(q) {
                *w = f32::from(q) * d + m;
            }
        }
    }
}

/// How a product is computed (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2F32,
    Avx2Q8,
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, in the order `MOA_KERNEL` names them.
    pub const ALL: [Kernel; 4] = [
        Kernel::Scalar,
        Kernel::Avx2F32,
        Kernel::Avx2Q8,
        Kernel::Avx512Vnni,
    ];

    /// The name `MOA_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2F32 => "avx2-f32",
            Kernel::Avx2Q8 => "avx2-q8",
            Kernel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2F32 | Kernel::Avx2Q8 => avx2_available(),
            Kernel::Avx512Vnni => vnni_available(),
        }
    }

    /// `MOA_KERNEL` if set (an error if it names no kernel or one this CPU cannot run), else
    /// the fastest this CPU runs.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MOA_KERNEL") {
            Ok(name) if !name.is_empty() => {
                let kernel = Self::ALL
                    .into_iter()
                    .find(|k| k.name() == name)
                    .ok_or_else(|| {
                        format!("MOA_KERNEL={name}: not a kernel; use scalar, avx2-f32, avx2-q8 or avx512-vnni")
                    })?;
                match kernel.available() {
                    true => Ok(kernel),
                    false => Err(format!(
                        "MOA_KERNEL={name}: this CPU lacks the instructions it needs (AVX2, FMA and F16C; AVX-512 VNNI for avx512-vnni)"
                    )),
                }
            }
            _ => Ok(Self::detect()),
        }
    }

    /// The kernel used unless `MOA_KERNEL` says otherwise: the fastest this CPU runs, with
    /// 8-bit activations as llama.cpp computes (their cost in accuracy is in
    /// docs/BENCHMARKS.md; `avx2-f32` is the exact product).
    pub fn detect() -> Self {
        if vnni_available() {
            Kernel::Avx512Vnni
        } else if avx2_available() {
            Kernel::Avx2Q8
        } else {
            Kernel::Scalar
        }
    }
}

/// The kernel every product of this process uses: from `MOA_KERNEL` or the CPU when first
/// asked (an unusable `MOA_KERNEL` falls back to the CPU's best with a warning on stderr), or
/// as [`use_kernel`] set it.
pub fn kernel() -> Kernel {
    match CHOSEN.load(std::sync::atomic::Ordering::Relaxed) {
        i if usize::from(i) < Kernel::ALL.len() => Kernel::ALL[usize::from(i)],
        _ => {
            let chosen = Kernel::from_env().unwrap_or_else(|e| {
                eprintln!("moa: {e}; using {}", Kernel::detect().name());
                Kernel::detect()
            });
            set(chosen);
            chosen
        }
    }
}

/// Makes every later product use `kernel` (benchmarks compare kernels in one process).
pub fn use_kernel(kernel: Kernel) -> Result<(), String> {
    match kernel.available() {
        true => {
            set(kernel);
            Ok(())
        }
        false => Err(format!("{} cannot run on this CPU", kernel.name())),
    }
}

/// The chosen kernel's index in [`Kernel::ALL`]; anything else: not chosen yet.
static CHOSEN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

fn set(kernel: Kernel) {
    let index = Kernel::ALL.iter().position(|k| *k == kernel).unwrap_or(0) as u8;
    CHOSEN.store(index, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the AVX-512 VNNI kernel can run here (its 256-bit forms: AVX512VL).
fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 kernels can run here.
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activations quantized per block of 32: `a ≈ q * d`.
struct Quantized {
    q: Vec<i8>,
    d: Vec<f32>,
}

fn quantize(x: &[f32]) -> Quantized {
    let mut q = vec![0i8; x.len()];
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        let mut d = vec![0.0f32; x.len() / BLOCK];
        // SAFETY: AVX2 was checked just above; `q` and `d` are sized for `x`'s blocks.
        unsafe { avx2::quantize(x, &mut q, &mut d) };
        return Quantized { q, d };
    }
    quantize_scalar(x, q)
}

fn quantize_scalar(x: &[f32], mut q: Vec<i8>) -> Quantized {
    let d: Vec<f32> = x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .map(|(block, out)| {
            let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (o, v) in out.iter_mut().zip(block) {
                *o = (v * inv).round() as i8;
            }
            d
        })
        .collect();
    Quantized { q, d }
}

/// The sum of each block of 32 activations.
fn block_sums(x: &[f32]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: AVX2 was checked just above.
        return unsafe { avx2::block_sums(x) };
    }
    x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect()
}

/// `x` is `n × cols` (row-major); returns `n × rows`: every activation row times every weight row.
pub fn matmul(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    matmul_with(w, x, n, kernel())
}

/// [`matmul`] with `kernel` (tests compare them); `kernel` must be available.
pub fn matmul_with(w: &QMatrix, x: &[f32], n: usize, kernel: Kernel) -> Vec<f32> {
    assert_eq!(x.len(), n * w.cols, "activation shape");
    assert!(kernel.available(), "{} cannot run here", kernel.name());
    let blocks = w.cols / BLOCK;
    // Per-block sums of the activations carry Q4_1's `m` term.
    let sums = block_sums(x);
    let quantized = matches!(kernel, Kernel::Avx2Q8 | Kernel::Avx512Vnni).then(|| quantize(x));
    let act = Activations {
        x,
        sums: &sums,
        quantized: quantized.as_ref(),
        blocks,
        n,
    };
    // Tiny products are done here: handing them to the other thread costs more than it saves.
    // (A token's 576 × 576 products are not tiny: splitting them too made generation about a
    // third faster than at a threshold four times this, measured with `--profile decode`.)
    // Otherwise each task computes a range of weight rows for all activation rows, [row][i].
    let parts: Vec<(usize, Vec<f32>)> = if w.rows * blocks * n < 4_096 {
        vec![(0, rows_dot(w, 0..w.rows, &act, kernel))]
    } else {
        let threads = rayon::current_num_threads().max(1);
        let chunk = w.rows.div_ceil(threads * 2).max(16).next_multiple_of(4);
        (0..w.rows)
            .step_by(chunk)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| {
                let end = (start + chunk).min(w.rows);
                (start, rows_dot(w, start..end, &act, kernel))
            })
            .collect()
    };
    let mut y = vec![0.0f32; n * w.rows];
    for (start, part) in parts {
        for (k, values) in part.chunks_exact(n).enumerate() {
            for (i, v) in values.iter().enumerate() {
                y[i * w.rows + start + k] = *v;
            }
        }
    }
    y
}

/// The activations of one product, in every form a kernel reads.
struct Activations<'a> {
    x: &'a [f32],
    sums: &'a [f32],
    quantized: Option<&'a Quantized>,
    blocks: usize,
    n: usize,
}

/// Weight rows `rows` times every activation row: `rows.len() × n`, stored [row][i].
fn rows_dot(
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    act: &Activations,
    kernel: Kernel,
) -> Vec<f32> {
    let Activations {
        x, sums, blocks, n, ..
    } = *act;
    let mut out = vec![0.0f32; rows.len() * n];
    #[cfg(target_arch = "x86_64")]
    if let (Kernel::Avx2Q8 | Kernel::Avx512Vnni, Some(q)) = (kernel, act.quantized) {
        let data = &w.data[rows.start * w.row_bytes()..rows.end * w.row_bytes()];
        let a = avx2::Act8 {
            q: &q.q,
            d: &q.d,
            sums,
            blocks,
            n,
        };
        // SAFETY: these kernels are chosen only where Kernel::available saw their instructions
        // (asserted in matmul_with); `data` holds whole rows of `blocks` blocks and the
        // activations `n` rows of `blocks` blocks (checked in QMatrix::new and matmul_with).
        unsafe {
            match kernel {
                Kernel::Avx512Vnni => avx2::rows_vnni(w.format, data, &a, &mut out),
                _ => avx2::rows_q8(w.format, data, &a, &mut out),
            }
        }
        return out;
    }
    for (r, out) in rows.zip(out.chunks_exact_mut(n)) {
        let row = w.row(r);
        // The exact AVX2 kernel has Q4_1 and Q8_0 (the formats of the files moa fetches); the
        // other formats take the plain path there.
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx2F32 && matches!(w.format, Format::Q4_1 | Format::Q8_0) {
            // SAFETY: as above, for AVX2, FMA and F16C.
            unsafe {
                match w.format {
                    Format::Q4_1 => avx2::q4_1_row(row, x, sums, blocks, n, out),
                    _ => avx2::q8_0_row(row, x, blocks, n, out),
                }
            }
            continue;
        }
        scalar_row(w.format, row, x, sums, blocks, n, out);
    }
    out
}

fn scalar_row(
    format: Format,
    row: &[u8],
    x: &[f32],
    sums: &[f32],
    blocks: usize,
    n: usize,
    out: &mut [f32],
) {
    let cols = blocks * BLOCK;
    let mut unpacked = [0.0f32; BLOCK];
    for b in 0..blocks {
        let (d, m, q) = format.parts(row, b);
        for (u, q) in unpacked.iter_mut().zip(q) {
            *u = f32::from(q);
        }
        for (i, o) in out.iter_mut().enumerate().take(n) {
            let a = &x[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
            let dot: f32 = unpacked.iter().zip(a).map(|(w, a)| w * a).sum();
            *o += d * dot + m * sums[i * blocks + b];
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::hsum;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Format, BLOCK};

    /// An f16 stored little-endian at `p`, as f32, with the F16C instruction.
    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// The sum of eight f32 lanes (also used by the attention kernel).
    #[inline(always)]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The lane-wise products of 32 unpacked weights with the 32 activations at `a`, summed
    /// into eight lanes.
    #[inline(always)]
    unsafe fn dot32(w: &[__m256; 4], a: *const f32) -> __m256 {
        let mut dot = _mm256_mul_ps(w[0], _mm256_loadu_ps(a));
        dot = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(a.add(8)), dot);
        dot = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(a.add(16)), dot);
        _mm256_fmadd_ps(w[3], _mm256_loadu_ps(a.add(24)), dot)
    }

    /// Eight unsigned bytes at `p` as eight f32.
    #[inline(always)]
    unsafe fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    #[inline(always)]
    unsafe fn i8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
    }

    /// One Q4_1 weight row against `n` activation rows, four at a time so each unpacked block
    /// serves four rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_row(
        row: &[u8],
        x: &[f32],
        sums: &[f32],
        blocks: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let cols = blocks * BLOCK;
        let low = _mm_set1_epi8(0x0F);
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(4);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut msum = [0.0f32; 4];
            for b in 0..blocks {
                let block = row.as_ptr().add(b * 20);
                let d = f16_at(block);
                let m = f16_at(block.add(2));
                let qs = _mm_loadu_si128(block.add(4) as *const __m128i);
                let lo = _mm_and_si128(qs, low);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low);
                // Weights 0..16 are the low nibbles, 16..32 the high ones.
                let w = [
                    u8x8(lo),
                    u8x8(_mm_srli_si128(lo, 8)),
                    u8x8(hi),
                    u8x8(_mm_srli_si128(hi, 8)),
                ];
                let dv = _mm256_set1_ps(d);
                for (l, (acc, msum)) in acc.iter_mut().zip(msum.iter_mut()).enumerate().take(lanes)
                {
                    let dot = dot32(&w, x.as_ptr().add((i + l) * cols + b * BLOCK));
                    *acc = _mm256_fmadd_ps(dot, dv, *acc);
                    *msum += m * *sums.get_unchecked((i + l) * blocks + b);
                }
            }
            for (o, (acc, msum)) in out[i..i + lanes].iter_mut().zip(acc.iter().zip(&msum)) {
                *o = hsum(*acc) + msum;
            }
            i += lanes;
        }
    }

    /// One Q8_0 weight row against `n` activation rows, four at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_row(row: &[u8], x: &[f32], blocks: usize, n: usize, out: &mut [f32]) {
        let cols = blocks * BLOCK;
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(4);
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                let block = row.as_ptr().add(b * 34);
                let d = f16_at(block);
                let q0 = _mm_loadu_si128(block.add(2) as *const __m128i);
                let q1 = _mm_loadu_si128(block.add(18) as *const __m128i);
                let w = [
                    i8x8(q0),
                    i8x8(_mm_srli_si128(q0, 8)),
                    i8x8(q1),
                    i8x8(_mm_srli_si128(q1, 8)),
                ];
                let dv = _mm256_set1_ps(d);
                for (l, acc) in acc.iter_mut().enumerate().take(lanes) {
                    let dot = dot32(&w, x.as_ptr().add((i + l) * cols + b * BLOCK));
                    *acc = _mm256_fmadd_ps(dot, dv, *acc);
                }
            }
            for (o, acc) in out[i..i + lanes].iter_mut().zip(&acc) {
                *o = hsum(*acc);
            }
            i += lanes;
        }
    }

    /// The sum of each block of 32 activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block_sums(x: &[f32]) -> Vec<f32> {
        x.chunks_exact(BLOCK)
            .map(|block| {
                let p = block.as_ptr();
                let a = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                let b = _mm256_add_ps(_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24)));
                hsum(_mm256_add_ps(a, b))
            })
            .collect()
    }

    /// Each block of 32 activations as bytes `q` and a scale `d` (`max |a| / 127`), rounding
    /// to nearest.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        let sign = _mm256_set1_ps(-0.0);
        // packs interleave the 128-bit halves; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for ((block, out), d) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(d) {
            let p = block.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let mut max = _mm256_andnot_ps(sign, v[0]);
            for v in &v[1..] {
                max = _mm256_max_ps(max, _mm256_andnot_ps(sign, *v));
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            *d = m / 127.0;
            let inv = _mm256_set1_ps(if m > 0.0 { 127.0 / m } else { 0.0 });
            let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], inv));
            let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], inv));
            let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], inv));
            let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], inv));
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, bytes);
        }
    }

    /// Activations quantized to 8 bits: `n` rows of `blocks` blocks, each block's scale in
    /// `d` and its exact f32 sum in `sums` (for Q4_1's offset).
    pub struct Act8<'a> {
        pub q: &'a [i8],
        pub d: &'a [f32],
        pub sums: &'a [f32],
        pub blocks: usize,
        pub n: usize,
    }

    /// Weight rows (`data`, whole rows of `format`) times every 8-bit activation row, into
    /// `out[row * n + i]`, with AVX2's `vpmaddubsw`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_q8(format: Format, data: &[u8], a: &Act8, out: &mut [f32]) {
        by_format::<false>(format, data, a, out)
    }

    /// [`rows_q8`] with AVX-512 VNNI's `vpdpbusd` (on 256-bit registers, so the sixteen extra
    /// registers of AVX-512 hold the tile's accumulators).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn rows_vnni(format: Format, data: &[u8], a: &Act8, out: &mut [f32]) {
        by_format::<true>(format, data, a, out)
    }

    /// [`rows`] for `format`, inlined into each instruction set's entry point.
    #[inline(always)]
    unsafe fn by_format<const VNNI: bool>(format: Format, data: &[u8], a: &Act8, out: &mut [f32]) {
        match format {
            Format::Q4_0 => rows::<Q4_0, VNNI>(data, a, out),
            Format::Q4_1 => rows::<Q4_1, VNNI>(data, a, out),
            Format::Q5_0 => rows::<Q5_0, VNNI>(data, a, out),
            Format::Q5_1 => rows::<Q5_1, VNNI>(data, a, out),
            Format::Q8_0 => rows::<Q8_0, VNNI>(data, a, out),
            Format::Q4K => rows::<Q4K, VNNI>(data, a, out),
            Format::Q5K => rows::<Q5K, VNNI>(data, a, out),
            Format::Q6K => rows::<Q6K, VNNI>(data, a, out),
        }
    }

    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q5_0: u8 = 2;
    const Q5_1: u8 = 3;
    const Q8_0: u8 = 4;
    const Q4K: u8 = 5;
    const Q5K: u8 = 6;
    const Q6K: u8 = 7;

    /// Bytes per block (of 32 weights, or of 256 for the K-quants), and where the nibbles
    /// start, per format.
    const fn layout(f: u8) -> (usize, usize) {
        match f {
            Q4_0 => (18, 2),
            Q4_1 => (20, 4),
            Q5_0 => (22, 6),
            Q5_1 => (24, 8),
            Q4K => (144, 16),
            Q5K => (176, 48),
            Q6K => (210, 0),
            _ => (34, 2),
        }
    }

    /// Whether a format's quants are signed (multiplied with the sign trick) rather than
    /// unsigned with an offset term.
    const fn signed(f: u8) -> bool {
        f == Q8_0 || f == Q6K
    }

    /// Sub-block `b` (32 weights) of the row at `row`: its quants as 32 bytes (unsigned, or
    /// signed for [`signed`] formats), the scale of each of the eight i32 lanes of a dot
    /// product (four weights each), and the offset / 8 in every lane (the eight lanes' sum
    /// then adds `m Σ a` once).
    #[inline(always)]
    unsafe fn decode<const F: u8>(row: *const u8, b: usize) -> (__m256i, __m256, __m256) {
        let low = _mm256_set1_epi8(0x0F);
        let eighth = _mm256_set1_ps(0.125);
        let (size, nibbles) = layout(F);
        if F == Q8_0 {
            let p = row.add(b * size);
            return (
                _mm256_loadu_si256(p.add(2) as *const __m256i),
                _mm256_set1_ps(f16_at(p)),
                _mm256_setzero_ps(),
            );
        }
        if F == Q6K {
            let p = row.add(b / 8 * size);
            let (h, k) = ((b % 8) / 4, b % 4);
            let ql = _mm256_loadu_si256(p.add(64 * h + 32 * (k % 2)) as *const __m256i);
            let ql = if k < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            let shift = _mm_cvtsi32_si128(2 * k as i32);
            let high = _mm256_and_si256(_mm256_srl_epi16(qh, shift), _mm256_set1_epi8(3));
            let q = _mm256_or_si256(_mm256_and_si256(ql, low), _mm256_slli_epi16(high, 4));
            let q = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
            let scales = p.add(192 + 8 * h + 2 * k) as *const i8;
            let d = f16_at(p.add(208));
            let (s0, s1) = (f32::from(*scales) * d, f32::from(*scales.add(1)) * d);
            return (
                q,
                _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1),
                _mm256_setzero_ps(),
            );
        }
        if F == Q4K || F == Q5K {
            let p = row.add(b / 8 * size);
            let j = b % 8;
            let scales = std::slice::from_raw_parts(p.add(4), 12);
            let (sc, m) = super::k_scale_min(scales, j);
            let qs = _mm256_loadu_si256(p.add(nibbles + 32 * (j / 2)) as *const __m256i);
            let qs = if j.is_multiple_of(2) {
                qs
            } else {
                _mm256_srli_epi16(qs, 4)
            };
            let mut q = _mm256_and_si256(qs, low);
            if F == Q5K {
                let qh = _mm256_loadu_si256(p.add(16) as *const __m256i);
                let bit = _mm256_and_si256(
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)),
                    _mm256_set1_epi8(1),
                );
                q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
            }
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
            let scale = _mm256_set1_ps(_mm_cvtss_f32(dm) * f32::from(sc));
            let offset = -_mm_cvtss_f32(_mm_movehdup_ps(dm)) * f32::from(m) * 0.125;
            return (q, scale, _mm256_set1_ps(offset));
        }
        let p = row.add(b * size);
        // d and (for Q4_1, Q5_1) m, both f16, converted together.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
        let d = _mm256_broadcastss_ps(dm);
        let offset = match F {
            Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
            Q5_0 => _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
            _ => _mm256_broadcastss_ps(_mm_movehdup_ps(dm)),
        };
        let qs = _mm_loadu_si128(p.add(nibbles) as *const __m128i);
        // Weights 0..16 are the low nibbles, 16..32 the high ones.
        let mut q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), low);
        if F == Q5_0 || F == Q5_1 {
            q = _mm256_or_si256(q, fifth_bits(p.add(nibbles - 4)));
        }
        (q, d, _mm256_mul_ps(offset, eighth))
    }

    /// Bit `j` of the little-endian u32 at `p` as 0x10 in byte `j`: Q5's fifth bits.
    #[inline(always)]
    unsafe fn fifth_bits(p: *const u8) -> __m256i {
        let bits = _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
        // Byte j takes the byte holding bit j, then tests that bit.
        let spread = _mm256_shuffle_epi8(
            bits,
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Walks the rows × activations in tiles of up to 4 × 4, so each unpacked weight block
    /// serves up to four activation rows and each loaded activation block several weight rows.
    /// Tiles are one weight row tall for up to four activation rows (generation, alone or
    /// batched: the weights stream from memory, and four rows at once were a third slower in
    /// the model, though not in the kernels bench where they sit in cache) and with AVX2 (its
    /// sixteen registers spill a taller tile's accumulators); four tall for prefill with VNNI.
    #[inline(always)]
    unsafe fn rows<const F: u8, const VNNI: bool>(data: &[u8], a: &Act8, out: &mut [f32]) {
        let (block_bytes, _) = layout(F);
        let per_block = if F == Q4K || F == Q5K || F == Q6K {
            8
        } else {
            1
        };
        let row_bytes = a.blocks / per_block * block_bytes;
        let (rows, n) = (data.len() / row_bytes, a.n);
        let step = if VNNI && n > 4 { 4 } else { 1 };
        let mut r = 0;
        while r < rows {
            let height = if rows - r >= step { step } else { 1 };
            let mut i = 0;
            while i < n {
                let wide = (n - i).min(4);
                let at = |k: usize| data.as_ptr().add((r + k) * row_bytes);
                macro_rules! tile {
                    ($r:literal, $c:literal) => {{
                        let w: [*const u8; $r] = std::array::from_fn(at);
                        let y = tile::<F, VNNI, $r, $c>(w, a, i);
                        for (k, y) in y.iter().enumerate() {
                            out[(r + k) * n + i..][..$c].copy_from_slice(y);
                        }
                    }};
                }
                match (height, wide) {
                    (4, 4) => tile!(4, 4),
                    (4, 3) => tile!(4, 3),
                    (4, 2) => tile!(4, 2),
                    (4, _) => tile!(4, 1),
                    (_, 4) => tile!(1, 4),
                    (_, 3) => tile!(1, 3),
                    (_, 2) => tile!(1, 2),
                    (_, _) => tile!(1, 1),
                }
                i += wide;
            }
            r += height;
        }
    }

    /// Sum of the products of 32 unsigned bytes with 32 signed bytes, as eight i32 lanes of
    /// four products each (no pair overflows i16 in `vpmaddubsw`: weights here are at most
    /// 128 after the sign trick, or 31).
    #[inline(always)]
    unsafe fn dot_u8_i8<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
        }
    }

    /// `R` weight rows (at `w`) against activation rows `i..i + C`: per block,
    /// `d_w d_a Σ q_w q_a`, plus `m_w Σ a` for Q4_1 (the exact activation sum).
    #[inline(always)]
    unsafe fn tile<const F: u8, const VNNI: bool, const R: usize, const C: usize>(
        w: [*const u8; R],
        a: &Act8,
        i: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..a.blocks {
            // (Plain loops: closures would not inherit the target features, and their
            // intrinsics would become calls.)
            let mut at = [0usize; C];
            let mut act = [_mm256_setzero_si256(); C];
            let mut da = [_mm256_setzero_ps(); C];
            for c in 0..C {
                at[c] = (i + c) * a.blocks + b;
                act[c] = _mm256_loadu_si256(a.q.as_ptr().add(at[c] * BLOCK) as *const __m256i);
                da[c] = _mm256_set1_ps(*a.d.get_unchecked(at[c]));
            }
            for (row, acc) in w.iter().zip(acc.iter_mut()) {
                let (wq, scale, offset) = decode::<F>(*row, b);
                if signed(F) {
                    // One side must be unsigned: |w| times a with w's sign moved onto it.
                    let magnitude = _mm256_sign_epi8(wq, wq);
                    for c in 0..C {
                        let signed = _mm256_sign_epi8(act[c], wq);
                        let dot = _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(magnitude, signed));
                        acc[c] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, da[c]), acc[c]);
                    }
                } else {
                    for c in 0..C {
                        let dot = _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(wq, act[c]));
                        acc[c] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, da[c]), acc[c]);
                        let sum = _mm256_set1_ps(*a.sums.get_unchecked(at[c]));
                        acc[c] = _mm256_fmadd_ps(offset, sum, acc[c]);
                    }
                }
            }
        }
        let mut sums = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                sums[r][c] = hsum(acc[r][c]);
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random weights quantized to `format` by candle.
    fn random_matrix(format: Format, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.4) * 0.1
            })
            .collect();
        let t =
            candle_core::Tensor::from_vec(values, (rows, cols), &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, format.ggml()).unwrap();
        q.data().unwrap().to_vec()
    }

    /// Every activation row times every weight row, from [`Format::parts`]: the scaled term
    /// over `scaled_x`, the offset term over `offset_x` (the 8-bit kernels use quantized
    /// activations for the first and exact ones for the second).
    fn reference(w: &QMatrix, scaled_x: &[f32], offset_x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0; n * w.rows];
        for r in 0..w.rows {
            for b in 0..w.cols / BLOCK {
                let (d, m, q) = w.format.parts(w.row(r), b);
                for i in 0..n {
                    let at = i * w.cols + b * BLOCK;
                    let scaled: f32 = q
                        .iter()
                        .zip(&scaled_x[at..at + BLOCK])
                        .map(|(q, x)| f32::from(*q) * x)
                        .sum();
                    let sum: f32 = offset_x[at..at + BLOCK].iter().sum();
                    y[i * w.rows + r] += d * scaled + m * sum;
                }
            }
        }
        y
    }

    #[test]
    fn every_kernel_matches_the_dequantized_product() {
        for format in Format::ALL {
            // Every tile shape and remainder, and the split across threads (the last two).
            for (rows, cols, n) in [
                (37, 256, 1),
                (70, 512, 5),
                (16, 256, 9),
                (6, 256, 2),
                (600, 256, 7),
                (1001, 256, 6),
            ] {
                let data = random_matrix(format, rows, cols, rows as u64);
                let w = QMatrix::new(format, rows, cols, &data).unwrap();
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
                    .collect();
                // The 8-bit kernels are held to the product with their own (quantized)
                // activations: their integer arithmetic must be exact up to float rounding.
                // What the quantization itself costs is measured on the model (the local bench).
                let q = quantize(&x);
                let xq: Vec<f32> =
                    q.q.chunks_exact(BLOCK)
                        .zip(&q.d)
                        .flat_map(|(block, d)| block.iter().map(move |v| f32::from(*v) * d))
                        .collect();
                for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                    let got = matmul_with(&w, &x, n, kernel);
                    let expected = match kernel {
                        Kernel::Avx2Q8 | Kernel::Avx512Vnni => reference(&w, &xq, &x, n),
                        Kernel::Scalar | Kernel::Avx2F32 => reference(&w, &x, &x, n),
                    };
                    for (a, b) in got.iter().zip(&expected) {
                        assert!(
                            (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                            "{} {format:?} {rows}x{cols} n={n}: {a} vs {b}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    /// [`Format::parts`] read against candle's own dequantization of blocks candle quantized.
    #[test]
    fn blocks_read_as_candle_reads_them() {
        let values: Vec<f32> = (0..512 * 4)
            .map(|i| (i as f32 * 0.377).sin() * (1.0 + (i % 7) as f32))
            .collect();
        let t = candle_core::Tensor::from_vec(values, (4, 512), &candle_core::Device::Cpu).unwrap();
        for format in Format::ALL {
            let q = candle_core::quantized::QTensor::quantize(&t, format.ggml()).unwrap();
            let expected = q
                .dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let data = q.data().unwrap();
            let w = QMatrix::new(format, 4, 512, &data).unwrap();
            let mut row = vec![0.0; 512];
            for (r, expected) in expected.iter().enumerate() {
                w.dequantize_row(r, &mut row);
                for (a, b) in row.iter().zip(expected) {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{format:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn vector_quantization_matches_the_plain_one() {
        let x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i as f32 * 0.7317).sin() * 3.0) * if i < 64 { 0.0 } else { 1.0 })
            .collect();
        let fast = quantize(&x);
        let plain = quantize_scalar(&x, vec![0; x.len()]);
        assert_eq!(fast.d, plain.d);
        assert_eq!(fast.q, plain.q);
        assert!(fast.q[64..].iter().any(|v| *v == 127 || *v == -127));
    }

    #[test]
    fn shapes_are_checked() {
        assert!(QMatrix::new(Format::Q4_1, 2, 30, &[]).is_err());
        assert!(QMatrix::new(Format::Q8_0, 2, 32, &[0; 67]).is_err());
        assert!(QMatrix::new(Format::Q8_0, 2, 32, &[0; 68]).is_ok());
    }
}
