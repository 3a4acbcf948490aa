//! Quantized matrix products for the formats GGUF files of llama-family models hold (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K).
//!
//! Four ways to compute, chosen at run time ([`Kernel::detect`]) so one binary runs everywhere:
//! - [`Kernel::Avx512Vnni`] (the default where the CPU has AVX-512 VNNI) and
//!   [`Kernel::Avx2Q8`] (the default where it has AVX2): activations are quantized per block
//!   of 32 to 8 bits with an f32 scale, as llama.cpp does, and each block's dot product is
//!   integer (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd`), on weights repacked once with eight
//!   rows interleaved ([`Packed`]), for up to eight activation rows at a time. The quantization
//!   costs a little accuracy, measured by the local bench (logit drift and the likelihood of a
//!   fixed text).
//! - The two f32 kernels below read the weights where they lie in the memory-mapped file.
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

mod packed;
pub use packed::Packed;

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
            let (u, scales, d) = q6k_sub(block, j);
            for (l, q) in q.iter_mut().enumerate() {
                *q = (i16::from(u[l]) - 32) * i16::from(scales[l / 16]);
            }
            return (d, 0.0, q);
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

/// Sub-block `j` (0..8) of a Q6_K block: its 6-bit quants (0..64, before subtracting 32),
/// the scales of its two halves and the block's `d`.
fn q6k_sub(block: &[u8], j: usize) -> ([u8; BLOCK], [i8; 2], f32) {
    let (h, k) = (j / 4, j % 4);
    let ql = &block[64 * h + 32 * (k % 2)..];
    let qh = &block[128 + 32 * h..];
    let mut u = [0u8; BLOCK];
    for (l, u) in u.iter_mut().enumerate() {
        let low = if k < 2 { ql[l] & 0x0F } else { ql[l] >> 4 };
        *u = low | (((qh[l] >> (2 * k)) & 3) << 4);
    }
    let scales = [
        block[192 + 8 * h + 2 * k] as i8,
        block[193 + 8 * h + 2 * k] as i8,
    ];
    (
        u,
        scales,
        f16::from_le_bytes([block[208], block[209]]).to_f32(),
    )
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

    /// Whether it computes with [`Packed`] weights (the 8-bit kernels do).
    pub fn packs(self) -> bool {
        matches!(self, Kernel::Avx2Q8 | Kernel::Avx512Vnni)
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

/// `x` is `n × cols` (row-major); returns `n × rows`, every activation row times every weight
/// row, computed by `kernel` (which must be available). The 8-bit kernels repack `w` first (a
/// model packs its weights once: [`Packed`]).
pub fn matmul_with(w: &QMatrix, x: &[f32], n: usize, kernel: Kernel) -> Vec<f32> {
    if kernel.packs() {
        return Packed::new(w).matmul(x, n, kernel);
    }
    assert_eq!(x.len(), n * w.cols, "activation shape");
    assert!(kernel.available(), "{} cannot run here", kernel.name());
    let blocks = w.cols / BLOCK;
    // Per-block sums of the activations carry the offset term (`m` of Q4_1).
    let sums = block_sums(x);
    split_rows(w.rows, n, w.rows * blocks * n, 4, |range| {
        // Row by row ([row][i]), then turned to [i][row] in tiles that stay in cache.
        let len = range.len();
        let mut by_row = vec![0.0f32; len * n];
        for (r, values) in range.zip(by_row.chunks_exact_mut(n.max(1))) {
            row_dot(w, r, x, &sums, kernel, values);
        }
        let mut out = vec![0.0f32; len * n];
        const TILE: usize = 32;
        for k0 in (0..len).step_by(TILE) {
            for i0 in (0..n).step_by(TILE) {
                for k in k0..(k0 + TILE).min(len) {
                    for i in i0..(i0 + TILE).min(n) {
                        out[i * len + k] = by_row[k * n + i];
                    }
                }
            }
        }
        out
    })
}

/// A product over `rows` weight rows, split across the threads in ranges of a multiple of
/// `unit` rows; `part(range)` returns every activation row times its rows (`n × range.len()`).
/// The result is `n × rows`. `work` (block products) decides whether splitting pays.
fn split_rows(
    rows: usize,
    n: usize,
    work: usize,
    unit: usize,
    part: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync,
) -> Vec<f32> {
    // Tiny products are done here: handing them to the other thread costs more than it saves.
    // (A token's 576 × 576 products are not tiny: splitting them too made generation about a
    // third faster than at a threshold four times this, measured with `--profile decode`.)
    if work < 4_096 {
        return part(0..rows);
    }
    let parts: Vec<(usize, Vec<f32>)> = {
        let threads = rayon::current_num_threads().max(1);
        let chunk = rows.div_ceil(threads * 2).max(16).next_multiple_of(unit);
        (0..rows)
            .step_by(chunk)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| (start, part(start..(start + chunk).min(rows))))
            .collect()
    };
    let mut y = vec![0.0f32; n * rows];
    for (start, part) in parts {
        let len = part.len() / n.max(1);
        for (i, values) in part.chunks_exact(len.max(1)).enumerate() {
            y[i * rows + start..][..len].copy_from_slice(values);
        }
    }
    y
}

/// Weight row `r` times every activation row, into `out` (`n` values), with `kernel`.
fn row_dot(w: &QMatrix, r: usize, x: &[f32], sums: &[f32], kernel: Kernel, out: &mut [f32]) {
    let (row, blocks, n) = (w.row(r), w.cols / BLOCK, out.len());
    out.fill(0.0);
    // The exact AVX2 kernel has Q4_1 and Q8_0 (the formats of the files moa fetches); the
    // other formats take the plain path there.
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2F32 && matches!(w.format, Format::Q4_1 | Format::Q8_0) {
        // SAFETY: Kernel::available saw AVX2, FMA and F16C (asserted by the caller); `row`
        // holds `blocks` blocks and `x` `n` rows of them (checked in QMatrix::new and by the
        // caller).
        unsafe {
            match w.format {
                Format::Q4_1 => avx2::q4_1_row(row, x, sums, blocks, n, out),
                _ => avx2::q8_0_row(row, x, blocks, n, out),
            }
        }
        return;
    }
    let _ = kernel;
    scalar_row(w.format, row, x, sums, blocks, n, out);
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

    use super::BLOCK;

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
                // Q4_0's and Q5_0's offsets (-8 d, -16 d) are zero points of the integer sum,
                // so they meet the quantized activations too.
                let offset_x = match format {
                    Format::Q4_0 | Format::Q5_0 => &xq,
                    _ => &x,
                };
                for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                    let got = matmul_with(&w, &x, n, kernel);
                    let expected = match kernel {
                        Kernel::Avx2Q8 | Kernel::Avx512Vnni => reference(&w, &xq, offset_x, n),
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
