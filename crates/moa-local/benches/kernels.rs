//! The quantized matrix products alone, per format, kernel and number of activation rows, on
//! SmolLM2-135M's shapes (576 → 1536 and back): what each kernel costs without the rest of the
//! forward pass. Random weights; the time is what matters.
//!
//! `cargo bench -p moa-local --bench kernels`

use std::time::Instant;

use moa_local::kernels::{self, Format, Kernel, QMatrix, BLOCK};

fn main() -> Result<(), String> {
    let full = std::env::args().any(|a| a == "--bench");
    let mut state = 7u64;
    let mut byte = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    println!(
        "| format | rows × cols | activation rows | kernel | µs per product | GB/s of weights |"
    );
    println!("|---|---|---|---|---|---|");
    for format in Format::ALL {
        for (rows, cols) in [(1536, 576), (576, 1536), (576, 576), (192, 576)] {
            let blocks = rows * cols / BLOCK;
            let mut data = Vec::with_capacity(blocks * format.block_bytes());
            for _ in 0..blocks {
                // A small f16 scale (0x2000 ≈ 0.0078), Q4_1's offset (0xA000 ≈ -0.0078), then
                // random quants.
                let header: &[u8] = match format {
                    Format::Q4_1 | Format::Q5_1 => &[0x00, 0x20, 0x00, 0xA0],
                    Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => &[0x00, 0x20],
                };
                data.extend_from_slice(header);
                data.extend((header.len()..format.block_bytes()).map(|_| byte()));
            }
            let w = QMatrix::new(format, rows, cols, &data)?;
            for n in [1, 3, 64] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                    .collect();
                for kernel in Kernel::ALL
                    .into_iter()
                    .filter(|k| k.available() && *k != Kernel::Scalar)
                {
                    let repeats = if full { 20_000 / n } else { 1 };
                    let run = || {
                        let started = Instant::now();
                        for _ in 0..repeats {
                            std::hint::black_box(kernels::matmul_with(&w, &x, n, kernel));
                        }
                        started.elapsed().as_secs_f64() / repeats as f64
                    };
                    let seconds =
                        rayon::scope(|_| (0..3).map(|_| run()).fold(f64::INFINITY, f64::min));
                    println!(
                        "| {format:?} | {rows} × {cols} | {n} | {} | {:.1} | {:.1} |",
                        kernel.name(),
                        seconds * 1e6,
                        data.len() as f64 / seconds / 1e9
                    );
                }
            }
        }
    }
    Ok(())
}
