//! Quantized matrix products for the formats small GGUF models use (Q4_1, Q8_0), reading the
//! weights where they lie in the memory-mapped file and keeping activations in f32.
//!
//! The AVX2+FMA versions are chosen at run time (`is_x86_feature_detected!`), so one binary runs
//! everywhere and uses the vector units where they exist; the scalar versions are the fallback
//! and the reference the tests hold the vector ones to.
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

/// Whether the vector kernels can run here.
pub fn simd_available() -> bool {
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

/// `x` is `n × cols` (row-major); returns `n × rows`: every activation row times every weight row.
pub fn matmul(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    matmul_with(w, x, n, simd_available())
}

/// [`matmul`], choosing the kernel explicitly (tests compare the two).
pub fn matmul_with(w: &QMatrix, x: &[f32], n: usize, simd: bool) -> Vec<f32> {
    assert_eq!(x.len(), n * w.cols, "activation shape");
    let blocks = w.cols / BLOCK;
    // Per-block sums of the activations carry Q4_1's `m` term.
    let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
    let mut y = vec![0.0f32; n * w.rows];
    // Small products are done here: handing them to other threads costs more than it saves.
    if w.rows * blocks * n < 16_384 {
        let mut out = vec![0.0f32; n];
        for r in 0..w.rows {
            out.fill(0.0);
            row_dot(w, r, x, &sums, blocks, n, &mut out, simd);
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
                row_dot(w, r, x, &sums, blocks, n, out, simd);
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

#[allow(clippy::too_many_arguments)]
fn row_dot(
    w: &QMatrix,
    r: usize,
    x: &[f32],
    sums: &[f32],
    blocks: usize,
    n: usize,
    out: &mut [f32],
    simd: bool,
) {
    let row = w.row(r);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when simd_available() saw AVX2, FMA and F16C here; the
        // slices have the lengths the kernels index (checked in QMatrix::new and matmul_with).
        unsafe {
            match w.format {
                Format::Q4_1 => avx2::q4_1_row(row, x, sums, blocks, n, out),
                Format::Q8_0 => avx2::q8_0_row(row, x, blocks, n, out),
            }
        }
        return;
    }
    let _ = simd;
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

    #[test]
    fn both_kernels_match_the_dequantized_product() {
        for format in [Format::Q4_1, Format::Q8_0] {
            for (rows, cols, n) in [(37, 64, 1), (70, 96, 5), (16, 32, 9)] {
                let data = random_matrix(format, rows, cols, rows as u64);
                let w = QMatrix::new(format, rows, cols, &data).unwrap();
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
                    .collect();
                let expected = reference(&w, &x, n);
                let mut runs = vec![matmul_with(&w, &x, n, false)];
                if simd_available() {
                    runs.push(matmul_with(&w, &x, n, true));
                }
                for got in runs {
                    for (a, b) in got.iter().zip(&expected) {
                        assert!(
                            (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                            "{format:?} {rows}x{cols} n={n}: {a} vs {b}"
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
