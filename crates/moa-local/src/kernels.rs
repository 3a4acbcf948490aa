//! Quantized matrix products for the formats small GGUF models use (Q4_1, Q8_0), reading the
//! weights where they lie in the memory-mapped file.
//!
//! Three ways to compute, chosen at run time ([`Kernel::detect`]) so one binary runs everywhere:
//! - [`Kernel::Avx2Q8`] (opt-in for now, see [`Kernel::detect`]): activations are quantized per block of 32
//!   to 8 bits with an f32 scale, as llama.cpp does, and each block's dot product is integer
//!   (`vpmaddubsw`): a quarter of the activation bytes to read and fewer instructions per block.
//!   The quantization costs a little accuracy, measured by the local bench (logit drift).
//! - [`Kernel::Avx2F32`] (the default where AVX2 is): f32 activations, each weight block
//!   unpacked to f32 and multiplied with FMA; the exact product.
//! - [`Kernel::Scalar`]: f32 everywhere, no vector instructions: the fallback, and the plain
//!   reading the tests hold the others to.
//!
//! `MOA_KERNEL=scalar|avx2-f32|avx2-q8` forces one (for tests on every path, and for
//! measuring); a kernel the CPU cannot run is refused, not ignored.
#![allow(unsafe_code)] // SIMD intrinsics; each unsafe block says why it is sound.

use half::f16;
use rayon::prelude::*;

/// GGUF's block of 32 weights.
pub const BLOCK: usize = 32;

/// A quantized weight format this module computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 32 weights as `d`, `m` (f16) and 16 bytes of nibbles: `w = q * d + m`.
    Q4_1,
    /// 32 weights as `d` (f16) and 32 signed bytes: `w = q * d`.
    Q8_0,
}

impl Format {
    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
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
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns is not a multiple of {BLOCK}"));
        }
        let expected = rows * cols / BLOCK * format.block_bytes();
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

    fn row(&self, r: usize) -> &'a [u8] {
        let len = self.cols / BLOCK * self.format.block_bytes();
        &self.data[r * len..(r + 1) * len]
    }

    /// One row of weights as f32 (for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bb = self.format.block_bytes();
        for (b, block) in self.row(r).chunks_exact(bb).enumerate() {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let dst = &mut out[b * BLOCK..(b + 1) * BLOCK];
            match self.format {
                Format::Q4_1 => {
                    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
                    for (j, q) in block[4..20].iter().enumerate() {
                        dst[j] = f32::from(q & 0x0F) * d + m;
                        dst[j + 16] = f32::from(q >> 4) * d + m;
                    }
                }
                Format::Q8_0 => {
                    for (j, q) in block[2..34].iter().enumerate() {
                        dst[j] = f32::from(*q as i8) * d;
                    }
                }
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
}

impl Kernel {
    /// Every kernel, in the order `MOA_KERNEL` names them.
    pub const ALL: [Kernel; 3] = [Kernel::Scalar, Kernel::Avx2F32, Kernel::Avx2Q8];

    /// The name `MOA_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2F32 => "avx2-f32",
            Kernel::Avx2Q8 => "avx2-q8",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2F32 | Kernel::Avx2Q8 => avx2_available(),
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
                        format!("MOA_KERNEL={name}: not a kernel; use scalar, avx2-f32 or avx2-q8")
                    })?;
                match kernel.available() {
                    true => Ok(kernel),
                    false => Err(format!(
                        "MOA_KERNEL={name}: this CPU lacks AVX2, FMA or F16C"
                    )),
                }
            }
            _ => Ok(Self::detect()),
        }
    }

    /// The kernel used unless `MOA_KERNEL` says otherwise: the exact AVX2 one where the CPU
    /// has it. The 8-bit one is faster (see docs/BENCHMARKS.md) but moves logits by up to ~2
    /// and makes a prefill and the same tokens fed one by one differ slightly; it becomes the
    /// default once its accuracy is measured on every format it will serve.
    pub fn detect() -> Self {
        match avx2_available() {
            true => Kernel::Avx2F32,
            false => Kernel::Scalar,
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
    let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
    let quantized = (kernel == Kernel::Avx2Q8).then(|| quantize(x));
    let act = Activations {
        x,
        sums: &sums,
        quantized: quantized.as_ref(),
        blocks,
        n,
    };
    let mut y = vec![0.0f32; n * w.rows];
    // Small products are done here: handing them to other threads costs more than it saves.
    if w.rows * blocks * n < 16_384 {
        let mut out = vec![0.0f32; n];
        for r in 0..w.rows {
            out.fill(0.0);
            row_dot(w, r, &act, &mut out, kernel);
            for (i, v) in out.iter().enumerate() {
                y[i * w.rows + r] = *v;
            }
        }
        return y;
    }
    let threads = rayon::current_num_threads().max(1);
    let chunk = w.rows.div_ceil(threads * 2).max(16);
    // Each task computes a range of weight rows for all activation rows, stored [row][i].
    let parts: Vec<(usize, Vec<f32>)> = (0..w.rows)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let end = (start + chunk).min(w.rows);
            let mut part = vec![0.0f32; (end - start) * n];
            for r in start..end {
                let out = &mut part[(r - start) * n..(r - start + 1) * n];
                row_dot(w, r, &act, out, kernel);
            }
            (start, part)
        })
        .collect();
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

fn row_dot(w: &QMatrix, r: usize, act: &Activations, out: &mut [f32], kernel: Kernel) {
    let row = w.row(r);
    let Activations {
        x, sums, blocks, n, ..
    } = *act;
    #[cfg(target_arch = "x86_64")]
    match (kernel, act.quantized) {
        // SAFETY: the AVX2 kernels are chosen only when Kernel::available saw AVX2, FMA and
        // F16C here (asserted in matmul_with); the slices have the lengths the kernels index
        // (checked in QMatrix::new and matmul_with).
        (Kernel::Avx2F32, _) => unsafe {
            match w.format {
                Format::Q4_1 => avx2::q4_1_row(row, x, sums, blocks, n, out),
                Format::Q8_0 => avx2::q8_0_row(row, x, blocks, n, out),
            }
            return;
        },
        (Kernel::Avx2Q8, Some(q)) => unsafe {
            match w.format {
                Format::Q4_1 => avx2::q4_1_row_q8(row, &q.q, &q.d, sums, blocks, n, out),
                Format::Q8_0 => avx2::q8_0_row_q8(row, &q.q, &q.d, blocks, n, out),
            }
            return;
        },
        _ => {}
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
    let bb = format.block_bytes();
    let cols = blocks * BLOCK;
    let mut unpacked = [0.0f32; BLOCK];
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = match format {
            Format::Q4_1 => {
                for (j, q) in block[4..20].iter().enumerate() {
                    unpacked[j] = f32::from(q & 0x0F);
                    unpacked[j + 16] = f32::from(q >> 4);
                }
                f16::from_le_bytes([block[2], block[3]]).to_f32()
            }
            Format::Q8_0 => {
                for (j, q) in block[2..34].iter().enumerate() {
                    unpacked[j] = f32::from(*q as i8);
                }
                0.0
            }
        };
        for (i, o) in out.iter_mut().enumerate().take(n) {
            let a = &x[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
            let dot: f32 = unpacked.iter().zip(a).map(|(w, a)| w * a).sum();
            *o += d * dot + m * sums[i * blocks + b];
        }
    }
}

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

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
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

    /// Sum of the products of 32 unsigned weight bytes with 32 signed activation bytes, as
    /// eight i32 lanes (`vpmaddubsw` then `vpmaddwd`; no pair can overflow i16: 2 x 255 x 127).
    #[inline(always)]
    unsafe fn dot_u8_i8(w: __m256i, a: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(w, a);
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// One Q4_1 weight row against `n` activation rows quantized to 8 bits (`qa` with scales
    /// `da` per block), four rows at a time: `w·a = d_w d_a Σ q_w q_a + m_w Σ a`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_row_q8(
        row: &[u8],
        qa: &[i8],
        da: &[f32],
        sums: &[f32],
        blocks: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let low = _mm256_set1_epi8(0x0F);
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
                // Weights 0..16 are the low nibbles, 16..32 the high ones.
                let both = _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs);
                let w = _mm256_and_si256(both, low);
                for (l, (acc, msum)) in acc.iter_mut().zip(msum.iter_mut()).enumerate().take(lanes)
                {
                    let at = (i + l) * blocks + b;
                    let a = _mm256_loadu_si256(qa.as_ptr().add(at * BLOCK) as *const __m256i);
                    let dot = _mm256_cvtepi32_ps(dot_u8_i8(w, a));
                    let scale = _mm256_set1_ps(d * *da.get_unchecked(at));
                    *acc = _mm256_fmadd_ps(dot, scale, *acc);
                    *msum += m * *sums.get_unchecked(at);
                }
            }
            for (o, (acc, msum)) in out[i..i + lanes].iter_mut().zip(acc.iter().zip(&msum)) {
                *o = hsum(*acc) + msum;
            }
            i += lanes;
        }
    }

    /// One Q8_0 weight row against `n` activation rows quantized to 8 bits, four at a time.
    /// `vpmaddubsw` wants one unsigned side: |w| times a with w's sign moved onto it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_row_q8(
        row: &[u8],
        qa: &[i8],
        da: &[f32],
        blocks: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(4);
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                let block = row.as_ptr().add(b * 34);
                let d = f16_at(block);
                let w = _mm256_loadu_si256(block.add(2) as *const __m256i);
                let magnitude = _mm256_sign_epi8(w, w);
                for (l, acc) in acc.iter_mut().enumerate().take(lanes) {
                    let at = (i + l) * blocks + b;
                    let a = _mm256_loadu_si256(qa.as_ptr().add(at * BLOCK) as *const __m256i);
                    let dot = _mm256_cvtepi32_ps(dot_u8_i8(magnitude, _mm256_sign_epi8(a, w)));
                    let scale = _mm256_set1_ps(d * *da.get_unchecked(at));
                    *acc = _mm256_fmadd_ps(dot, scale, *acc);
                }
            }
            for (o, acc) in out[i..i + lanes].iter_mut().zip(&acc) {
                *o = hsum(*acc);
            }
            i += lanes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random blocks of `format` (scales kept small and finite).
    fn random_matrix(format: Format, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let blocks = rows * cols / BLOCK;
        let mut data = Vec::with_capacity(blocks * format.block_bytes());
        for _ in 0..blocks {
            let d = f16::from_f32((next() % 1000) as f32 / 20000.0 + 0.001);
            data.extend_from_slice(&d.to_le_bytes());
            if format == Format::Q4_1 {
                let m = f16::from_f32(-((next() % 1000) as f32) / 10000.0);
                data.extend_from_slice(&m.to_le_bytes());
            }
            let count = if format == Format::Q4_1 { 16 } else { 32 };
            data.extend((0..count).map(|_| next() as u8));
        }
        data
    }

    fn reference(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut row = vec![0.0; w.cols];
        let mut y = vec![0.0; n * w.rows];
        for r in 0..w.rows {
            w.dequantize_row(r, &mut row);
            for i in 0..n {
                y[i * w.rows + r] = row
                    .iter()
                    .zip(&x[i * w.cols..(i + 1) * w.cols])
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        y
    }

    /// [`reference`] without Q4_1's `m` (offset) term: the product with `q * d` alone.
    fn reference_without_m(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut data = w.data.to_vec();
        if w.format == Format::Q4_1 {
            for block in data.chunks_exact_mut(20) {
                block[2..4].copy_from_slice(&f16::from_f32(0.0).to_le_bytes());
            }
        }
        let plain = QMatrix::new(w.format, w.rows, w.cols, &data).unwrap();
        reference(&plain, x, n)
    }

    #[test]
    fn every_kernel_matches_the_dequantized_product() {
        for format in [Format::Q4_1, Format::Q8_0] {
            for (rows, cols, n) in [(37, 64, 1), (70, 96, 5), (16, 32, 9), (600, 64, 7)] {
                let data = random_matrix(format, rows, cols, rows as u64);
                let w = QMatrix::new(format, rows, cols, &data).unwrap();
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
                    .collect();
                // The 8-bit kernel is held to the product with its own (quantized)
                // activations: its integer arithmetic must be exact up to float rounding. What
                // the quantization itself costs is measured on the model (the local bench).
                let q = quantize(&x);
                let xq: Vec<f32> =
                    q.q.chunks_exact(BLOCK)
                        .zip(&q.d)
                        .flat_map(|(block, d)| block.iter().map(move |v| f32::from(*v) * d))
                        .collect();
                for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                    let got = matmul_with(&w, &x, n, kernel);
                    let expected = match kernel {
                        Kernel::Avx2Q8 if format == Format::Q8_0 => reference(&w, &xq, n),
                        // Q4_1's `m` term uses the exact activation sums.
                        Kernel::Avx2Q8 => {
                            let exact = reference(&w, &x, n);
                            let scaled = reference_without_m(&w, &x, n);
                            let scaled_q = reference_without_m(&w, &xq, n);
                            // The scaled term over quantized activations, the `m` term exact.
                            exact
                                .iter()
                                .zip(scaled.iter().zip(&scaled_q))
                                .map(|(e, (s, sq))| sq + (e - s))
                                .collect()
                        }
                        _ => reference(&w, &x, n),
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

    #[test]
    fn shapes_are_checked() {
        assert!(QMatrix::new(Format::Q4_1, 2, 30, &[]).is_err());
        assert!(QMatrix::new(Format::Q8_0, 2, 32, &[0; 67]).is_err());
        assert!(QMatrix::new(Format::Q8_0, 2, 32, &[0; 68]).is_ok());
    }
}
