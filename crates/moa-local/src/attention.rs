//! The KV cache and grouped-query attention over it.
//!
//! Each sequence owns a [`Cache`]: per layer and kv head, its keys and its values. Keys are
//! stored in blocks of [`LANES`] positions, transposed (`[block][dim][lane]`), so that one
//! vector multiply-add gives a query's scores against eight keys at once; values are stored row
//! by row (`[position][dim]`). New tokens are written in place; the buffers grow by doubling
//! (copied once per doubling, never per token).
//!
//! Attention runs per kv head over groups of up to [`GROUP`] queries that read it (the query
//! heads sharing a kv head under grouped-query attention, and consecutive tokens of a prefill),
//! so each key and value is loaded once per group rather than once per query head.
#![allow(unsafe_code)] // SIMD intrinsics; each unsafe block says why it is sound.

use rayon::prelude::*;

use crate::kernels::{self, Kernel};

/// Positions per transposed key block: one AVX2 vector of f32.
const LANES: usize = 8;
/// The most queries computed together against one kv head (their accumulators must fit in
/// the sixteen AVX2 registers beside the loaded keys or values).
const GROUP: usize = 6;

/// The attention keys and values of one sequence so far. A clone is a separate sequence that
/// starts from the same tokens (proposers sharing one prefill).
#[derive(Clone)]
pub struct Cache {
    layers: Vec<Layer>,
    kv_heads: usize,
    head_dim: usize,
    /// Positions each head's buffers have room for (a multiple of [`LANES`]).
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
        let wanted = tokens
            .max((self.capacity * 2).min(self.limit))
            .max(64.min(self.limit));
        let capacity = wanted.div_ceil(LANES) * LANES;
        let head_len = |cap: usize| cap * self.head_dim;
        // Both layouts keep a head's first `len` positions at the start of its region.
        let used = self.len.div_ceil(LANES) * LANES * self.head_dim;
        for layer in &mut self.layers {
            for buffer in [&mut layer.keys, &mut layer.values] {
                let mut grown = vec![0.0f32; self.kv_heads * head_len(capacity)];
                for g in 0..self.kv_heads {
                    let from = g * head_len(self.capacity);
                    grown[g * head_len(capacity)..][..used]
                        .copy_from_slice(&buffer[from..from + used]);
                }
                *buffer = grown;
            }
        }
        self.capacity = capacity;
    }

    /// Stores one token's keys and values (`kv_heads × head_dim` each) at `position`, which
    /// [`Cache::reserve`] made room for.
    pub(crate) fn write(&mut self, layer: usize, position: usize, keys: &[f32], values: &[f32]) {
        let (d, region) = (self.head_dim, self.capacity * self.head_dim);
        let layer = &mut self.layers[layer];
        let (block, lane) = (position / LANES, position % LANES);
        for g in 0..self.kv_heads {
            let key_block = g * region + block * LANES * d;
            for (dim, k) in keys[g * d..(g + 1) * d].iter().enumerate() {
                layer.keys[key_block + dim * LANES + lane] = *k;
            }
            let at = g * region + position * d;
            layer.values[at..at + d].copy_from_slice(&values[g * d..(g + 1) * d]);
        }
    }

    /// Kv head `g`'s key blocks and value rows covering positions `0..tokens`.
    fn head(&self, layer: usize, g: usize, tokens: usize) -> (&[f32], &[f32]) {
        let region = self.capacity * self.head_dim;
        let layer = &self.layers[layer];
        let keys = &layer.keys[g * region..][..tokens.div_ceil(LANES) * LANES * self.head_dim];
        let values = &layer.values[g * region..][..tokens * self.head_dim];
        (keys, values)
    }
}

/// One query row of a step: which cache it belongs to and its position there.
#[derive(Clone, Copy)]
pub(crate) struct Row {
    pub cache: usize,
    pub position: usize,
}

/// Queries computed together: rows of one cache, all reading kv head `kv_head`.
pub(crate) struct Group {
    cache: usize,
    kv_head: usize,
    /// (row index, query head) of each query.
    queries: Vec<(usize, usize)>,
    /// How many positions each query sees (its own position + 1).
    ends: Vec<usize>,
}

/// How a step's attention splits into [`Group`]s: the same for every layer, so planned once
/// per step. Query head `h` reads kv head `h / (heads / kv_heads)`.
pub(crate) fn plan(rows: &[Row], caches: usize, heads: usize, kv_heads: usize) -> Vec<Group> {
    let repeat = heads / kv_heads;
    let mut groups = Vec::new();
    for cache in 0..caches {
        for kv_head in 0..kv_heads {
            let queries: Vec<(usize, usize)> = (0..rows.len())
                .filter(|r| rows[*r].cache == cache)
                .flat_map(|r| (kv_head * repeat..(kv_head + 1) * repeat).map(move |h| (r, h)))
                .collect();
            groups.extend(queries.chunks(GROUP).map(|chunk| Group {
                cache,
                kv_head,
                queries: chunk.to_vec(),
                ends: chunk.iter().map(|(r, _)| rows[*r].position + 1).collect(),
            }));
        }
    }
    groups
}

/// Attention of every query row (`q` is `rows × heads × head_dim`) over its own cache's
/// positions up to and including its own (causal; the row's keys are already written), in the
/// groups [`plan`] made. Returns `rows × heads × head_dim`.
pub(crate) fn attend(
    q: &[f32],
    groups: &[Group],
    caches: &[&Cache],
    layer: usize,
    heads: usize,
) -> Vec<f32> {
    let Some(first) = caches.first() else {
        return Vec::new();
    };
    let d = first.head_dim;
    let scale = 1.0 / (d as f32).sqrt();
    let kernel = kernels::kernel();
    let results: Vec<Vec<f32>> = groups
        .par_iter()
        .map_init(Vec::new, |scores, group| {
            let tokens = group.ends.iter().copied().max().unwrap_or(0);
            let (keys, values) = caches[group.cache].head(layer, group.kv_head, tokens);
            let m = group.queries.len();
            let mut queries = Vec::with_capacity(m * d);
            for (r, h) in &group.queries {
                queries.extend_from_slice(&q[(r * heads + h) * d..][..d]);
            }
            let job = Job {
                queries: &queries,
                keys,
                values,
                ends: &group.ends,
                scale,
                stride: tokens.div_ceil(LANES) * LANES,
            };
            scores.clear();
            scores.resize(m * job.stride, 0.0);
            let mut out = vec![0.0f32; m * d];
            group_attention(&job, scores, &mut out, kernel);
            out
        })
        .collect();
    let mut out = vec![0.0f32; q.len()];
    for (group, result) in groups.iter().zip(results) {
        for ((r, h), o) in group.queries.iter().zip(result.chunks_exact(d)) {
            out[(r * heads + h) * d..][..d].copy_from_slice(o);
        }
    }
    out
}

/// One group's attention: `m` queries (`queries` is `m × d`) against one kv head's key blocks
/// and value rows; query `i` sees positions `0..ends[i]`; scores are rows of `stride`.
struct Job<'a> {
    queries: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    ends: &'a [usize],
    scale: f32,
    stride: usize,
}

/// Computes `job` into `out` (`m × d`), with `scores` (`m × stride`) as scratch.
fn group_attention(job: &Job, scores: &mut [f32], out: &mut [f32], kernel: Kernel) {
    let Job {
        queries,
        keys,
        values,
        ends,
        scale,
        stride,
    } = *job;
    let d = queries.len() / ends.len();
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar && d.is_multiple_of(16) {
        // SAFETY: every kernel but the scalar one is only chosen where AVX2 and FMA are
        // (kernels::Kernel::available). Shapes: `keys` holds `stride / LANES` whole blocks of
        // `d × LANES`, `values` at least `max(ends)` rows of `d`, `scores` `m × stride`,
        // `out` `m × d`, as `attend` built them; `d` is a multiple of 16 (checked here).
        unsafe { avx2::group_attention(job, scores, out) };
        return;
    }
    let _ = kernel;
    for (i, end) in ends.iter().enumerate() {
        let query = &queries[i * d..(i + 1) * d];
        let scores = &mut scores[i * stride..][..*end];
        for (t, s) in scores.iter_mut().enumerate() {
            let block = &keys[(t / LANES) * LANES * d..];
            let dot: f32 = (0..d)
                .map(|k| query[k] * block[k * LANES + t % LANES])
                .sum();
            *s = dot * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let out = &mut out[i * d..(i + 1) * d];
        out.fill(0.0);
        for (s, value) in scores.iter().zip(values.chunks_exact(d)) {
            for (o, v) in out.iter_mut().zip(value) {
                *o += s / total * v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Job, GROUP, LANES};
    use crate::kernels::hsum;

    /// `e^x` for eight lanes: `2^n · p(r)` with `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`, and `p` a
    /// degree-6 polynomial (relative error about 2e-7 over the range softmax uses; inputs below
    /// -87 give 0).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln 2 in two parts, so that n · ln 2 is exact enough to subtract.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let pow2 = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)))
    }

    /// See [`super::group_attention`]; `d` must be a multiple of 16 and `m ≤ GROUP`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn group_attention(job: &Job, scores: &mut [f32], out: &mut [f32]) {
        let Job {
            queries,
            keys,
            values,
            ends,
            scale,
            stride,
        } = *job;
        let m = ends.len();
        let d = queries.len() / m;
        let blocks = stride / LANES;
        let q = queries.as_ptr();
        // Scores: each block of eight transposed keys is loaded once per dimension and
        // multiplied with every query's broadcast component.
        for b in 0..blocks {
            let mut acc = [_mm256_setzero_ps(); GROUP];
            let block = keys.as_ptr().add(b * LANES * d);
            for k in 0..d {
                let kv = _mm256_loadu_ps(block.add(k * LANES));
                for (i, acc) in acc.iter_mut().enumerate().take(m) {
                    *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q.add(i * d + k)), kv, *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(m) {
                _mm256_storeu_ps(scores.as_mut_ptr().add(i * stride + b * LANES), *acc);
            }
        }
        // Softmax per query over its own positions; later positions get weight 0.
        let scale_v = _mm256_set1_ps(scale);
        for (i, end) in ends.iter().enumerate() {
            let row = &mut scores[i * stride..(i + 1) * stride];
            let full = end / LANES * LANES;
            let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
            for c in (0..full).step_by(LANES) {
                let s = _mm256_mul_ps(_mm256_loadu_ps(row.as_ptr().add(c)), scale_v);
                _mm256_storeu_ps(row.as_mut_ptr().add(c), s);
                maxv = _mm256_max_ps(maxv, s);
            }
            let mut max = hmax(maxv);
            for s in &mut row[full..*end] {
                *s *= scale;
                max = max.max(*s);
            }
            let (max_v, mut total_v) = (_mm256_set1_ps(max), _mm256_setzero_ps());
            for c in (0..full).step_by(LANES) {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(row.as_ptr().add(c)), max_v));
                _mm256_storeu_ps(row.as_mut_ptr().add(c), e);
                total_v = _mm256_add_ps(total_v, e);
            }
            let mut total = hsum(total_v);
            for s in &mut row[full..*end] {
                *s = (*s - max).exp();
                total += *s;
            }
            let inv = 1.0 / total;
            for s in &mut row[..*end] {
                *s *= inv;
            }
            row[*end..].fill(0.0);
        }
        // Weighted sum of values, sixteen dimensions at a time so every value row is read once
        // for all the queries.
        let tokens = ends.iter().copied().max().unwrap_or(0);
        for c in (0..d).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; GROUP];
            for t in 0..tokens {
                let v = values.as_ptr().add(t * d + c);
                let (v0, v1) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                for (i, acc) in acc.iter_mut().enumerate().take(m) {
                    let w = _mm256_broadcast_ss(scores.get_unchecked(i * stride + t));
                    acc[0] = _mm256_fmadd_ps(w, v0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(w, v1, acc[1]);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(m) {
                let o = out.as_mut_ptr().add(i * d + c);
                _mm256_storeu_ps(o, acc[0]);
                _mm256_storeu_ps(o.add(8), acc[1]);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn exp_is_within_a_few_ulp_of_the_library_exp() {
            if !crate::kernels::Kernel::Avx2F32.available() {
                return;
            }
            let mut worst = 0.0f32;
            for i in -8700..=100 {
                let x = i as f32 / 100.0;
                let mut lanes = [0.0f32; 8];
                // SAFETY: AVX2 and FMA were checked just above.
                unsafe {
                    let v = super::exp(std::arch::x86_64::_mm256_set1_ps(x));
                    std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v);
                }
                let expected = x.exp();
                worst = worst.max((lanes[0] - expected).abs() / expected);
            }
            assert!(worst < 1e-6, "relative error {worst}");
        }
    }
}
