//! The forward pass's row-wise operations on plain f32 buffers (`rows × width`, row-major):
//! RMS normalisation, rotary position embedding, the SwiGLU gate.

/// `out = x / rms(x) * weight`, row by row (`weight.len()` is the row width).
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// How a model pairs the dimensions of a head for the rotary embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Dimensions `2i` and `2i + 1` (llama GGUFs).
    Interleaved,
    /// Dimensions `i` and `i + head_dim / 2` (qwen2, "NeoX").
    Halves,
}

/// The angles' cosines and sines for each position (`positions.len() × head_dim / 2`).
pub(crate) fn rope_angles(positions: &[usize], inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let angles: Vec<f32> = positions
        .iter()
        .flat_map(|p| inv_freq.iter().map(move |f| *p as f32 * f))
        .collect();
    (
        angles.iter().map(|a| a.cos()).collect(),
        angles.iter().map(|a| a.sin()).collect(),
    )
}

/// Rotates every head of every row (`x` is `rows × heads × head_dim`) by its row's angles.
pub(crate) fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = head_dim / 2;
    let rows = cos.len() / half.max(1);
    let width = x.len() / rows.max(1);
    for (r, row) in x.chunks_exact_mut(width).enumerate() {
        let (cos, sin) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// `gate = silu(gate) * up`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`.
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to every row of `x`.
pub(crate) fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_the_pairs_each_style_names() {
        // One head of 4 at angles (pi/2, 0): the first pair turns a quarter, the second stays.
        let (cos, sin) = ([0.0f32, 1.0], [1.0f32, 0.0]);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &cos, &sin, RopeStyle::Interleaved);
        assert_eq!(x, [-2.0, 1.0, 3.0, 4.0]);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &cos, &sin, RopeStyle::Halves);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn rms_norm_scales_each_row_to_unit_root_mean_square() {
        let x = [3.0f32, 4.0, 1.0, 1.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
        assert!((out[2] - 1.0).abs() < 1e-6 && (out[3] - 2.0).abs() < 1e-6);
    }
}
