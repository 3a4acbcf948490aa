//! The KV cache and grouped-query attention over it.
//!
//! Each sequence owns a [`Cache`]: per layer, one buffer of keys and one of values, laid out
//! `[kv head][position][head_dim]` so that a head's keys are contiguous. New tokens are
//! written in place; the buffers grow by doubling (copied once per doubling, never per token),
//! so a token costs the same whether the context holds ten tokens or two thousand.
#![allow(unsafe_code)] // SIMD intrinsics; each unsafe block says why it is sound.

use rayon::prelude::*;

use crate::kernels::{self, Kernel};

/// The attention keys and values of one sequence so far. A clone is a separate sequence that
/// starts from the same tokens (proposers sharing one prefill).
#[derive(Clone)]
pub struct Cache {
    layers: Vec<Layer>,
    kv_heads: usize,
    head_dim: usize,
    /// Positions each head's buffer has room for.
    capacity: usize,
    /// The model's context: the cache never grows past it.
    limit: usize,
    /// Tokens already in the cache.
    pub len: usize,
}

#[derive(Clone, Default)]
struct Layer {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl Cache {
    pub(crate) fn new(layers: usize, kv_heads: usize, head_dim: usize, limit: usize) -> Self {
        Self {
            layers: vec![Layer::default(); layers],
            kv_heads,
            head_dim,
            capacity: 0,
            limit,
            len: 0,
        }
    }

    /// Makes room for `tokens` positions in all (at least double the room there was, up to the
    /// model's context, so appending a token at a time copies the cache a logarithmic number of
    /// times).
    pub(crate) fn reserve(&mut self, tokens: usize) {
        if tokens <= self.capacity {
            return;
        }
        let capacity = tokens
            .max((self.capacity * 2).min(self.limit))
            .max(64.min(self.limit));
        let (head, old) = (self.head_dim, self.capacity);
        for layer in &mut self.layers {
            for buffer in [&mut layer.keys, &mut layer.values] {
                let mut grown = vec![0.0f32; self.kv_heads * capacity * head];
                for g in 0..self.kv_heads {
                    let from = &buffer[g * old * head..(g * old + self.len) * head];
                    grown[g * capacity * head..(g * capacity + self.len) * head]
                        .copy_from_slice(from);
                }
                *buffer = grown;
            }
        }
        self.capacity = capacity;
    }

    /// Stores one token's keys and values (`kv_heads × head_dim` each) at `position`, which
    /// [`Cache::reserve`] made room for.
    pub(crate) fn write(&mut self, layer: usize, position: usize, keys: &[f32], values: &[f32]) {
        let (head, capacity) = (self.head_dim, self.capacity);
        let layer = &mut self.layers[layer];
        for g in 0..self.kv_heads {
            let at = (g * capacity + position) * head;
            layer.keys[at..at + head].copy_from_slice(&keys[g * head..(g + 1) * head]);
            layer.values[at..at + head].copy_from_slice(&values[g * head..(g + 1) * head]);
        }
    }

    /// Keys and values of kv head `g` at positions `0..tokens`.
    fn head(&self, layer: usize, g: usize, tokens: usize) -> (&[f32], &[f32]) {
        let at = g * self.capacity * self.head_dim;
        let layer = &self.layers[layer];
        let end = at + tokens * self.head_dim;
        (&layer.keys[at..end], &layer.values[at..end])
    }
}

/// One query row of a step: which cache it belongs to and its position there.
#[derive(Clone, Copy)]
pub(crate) struct Row {
    pub cache: usize,
    pub position: usize,
}

/// Attention of every query row (`q` is `rows × heads × head_dim`) over its own cache's
/// positions up to and including its own (causal; the row's keys are already written). Query
/// head `h` reads kv head `h / (heads / kv_heads)`. Returns `rows × heads × head_dim`.
pub(crate) fn attend(
    q: &[f32],
    rows: &[Row],
    caches: &[&Cache],
    layer: usize,
    heads: usize,
) -> Vec<f32> {
    let Some(first) = caches.first() else {
        return Vec::new();
    };
    let (head_dim, kv_heads) = (first.head_dim, first.kv_heads);
    let repeat = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let kernel = kernels::kernel();
    let mut out = vec![0.0f32; q.len()];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .with_min_len(2)
        .for_each_init(Vec::new, |scores, (i, out)| {
            let (row, h) = (rows[i / heads], i % heads);
            let query = &q[i * head_dim..(i + 1) * head_dim];
            let (keys, values) = caches[row.cache].head(layer, h / repeat, row.position + 1);
            scores.resize(row.position + 1, 0.0);
            head_attention(query, keys, values, scale, scores, out, kernel);
        });
    out
}

/// Softmax of `query`'s scaled dot products with each key, then the weighted sum of values.
fn head_attention(
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    kernel: Kernel,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar {
        // SAFETY: every kernel but the scalar one is only chosen where AVX2 and FMA are
        // (kernels::Kernel::available); the slices are whole heads (lengths multiples of
        // `query.len()`, checked by the callers' shapes).
        unsafe { avx2::head_attention(query, keys, values, scale, scores, out) };
        return;
    }
    let _ = kernel;
    let d = query.len();
    let mut max = f32::NEG_INFINITY;
    for (s, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
        *s = query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale;
        max = max.max(*s);
    }
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    for (s, value) in scores.iter().zip(values.chunks_exact(d)) {
        let w = s / total;
        for (o, v) in out.iter_mut().zip(value) {
            *o += w * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 2];
        let (mut i, n) = (0, a.len());
        while i + 16 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc[0],
            );
            acc[1] = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                acc[1],
            );
            i += 16;
        }
        let v = _mm256_add_ps(acc[0], acc[1]);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut sum = _mm_cvtss_f32(s);
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    /// `out += w * v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
        let wv = _mm256_set1_ps(w);
        let (mut i, n) = (0, out.len());
        while i + 8 <= n {
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                o,
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.as_ptr().add(i)), _mm256_loadu_ps(o)),
            );
            i += 8;
        }
        while i < n {
            out[i] += w * v[i];
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head_attention(
        query: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = query.len();
        let mut max = f32::NEG_INFINITY;
        for (s, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
            *s = dot(query, key) * scale;
            max = max.max(*s);
        }
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        out.fill(0.0);
        let inv = 1.0 / total;
        for (s, value) in scores.iter().zip(values.chunks_exact(d)) {
            axpy(out, s * inv, value);
        }
    }
}
