//! The quantized matrix products alone, per format, kernel and number of activation rows, on
//! SmolLM2-135M's shapes (576 → 1536 and back; the K-quants only where rows are a multiple of
//! 256): what each kernel costs without the rest of the forward pass.
//!
//! `cargo bench -p moa-local --bench kernels`

use std::time::Instant;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use moa_local::kernels::{self, Format, Kernel, Packed, QMatrix};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let full = std::env::args().any(|a| a == "--bench");
    println!("| format | rows × cols | activation rows | kernel | µs per product |");
    println!("|---|---|---|---|---|");
    for format in Format::ALL {
        for (rows, cols) in [(1536, 576), (576, 1536), (576, 576), (192, 576)] {
            if cols % format.block_len() != 0 {
                continue;
            }
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 10_000.0 - 0.05)
                .collect();
            let dense = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
            let quantized = QTensor::quantize(&dense, format.ggml())?;
            let data = quantized.data()?;
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
                    // The 8-bit kernels' weights are packed once, as a model's are.
                    let packed = kernel.packs().then(|| Packed::new(&w));
                    let run = || {
                        let started = Instant::now();
                        for _ in 0..repeats {
                            std::hint::black_box(match &packed {
                                Some(p) => p.matmul(&x, n, kernel),
                                None => kernels::matmul_with(&w, &x, n, kernel),
                            });
                        }
                        started.elapsed().as_secs_f64() / repeats as f64
                    };
                    let seconds =
                        rayon::scope(|_| (0..3).map(|_| run()).fold(f64::INFINITY, f64::min));
                    println!(
                        "| {format:?} | {rows} × {cols} | {n} | {} | {:.1} |",
                        kernel.name(),
                        seconds * 1e6
                    );
                }
            }
        }
    }
    Ok(())
}
