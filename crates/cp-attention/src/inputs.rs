//! Inputs that every rank, layout and device draws alike: a counter-based hash of
//! `(seed, sequence, position, column)`.
//!
//! The GPU path draws them on the device (`cuda::CudaAttention::random_rows`), so a benchmark of
//! a million tokens sets up in milliseconds instead of minutes, and any checker recomputes the
//! value of any element on the host with [`hashed_value`] — no global tensor is kept anywhere.

/// SplitMix64's finaliser.
fn mix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `col` of the row of token `(seq, pos)` in the tensor drawn with `seed`: uniform in
/// `[-2, 2)` on a grid of `2^-22` (24 random bits, exact in `f32`). The device kernel
/// `fill_rows` computes the same function and rounds it to bf16 or f16 to nearest-even.
pub fn hashed_value(seed: u64, seq: u32, pos: u32, col: u32) -> f32 {
    let row = mix64(seed ^ mix64((u64::from(seq) << 32) | u64::from(pos)));
    let h = mix64(row.wrapping_add(u64::from(col)));
    (h >> 40) as f32 * (4.0 / 16_777_216.0) - 2.0
}

/// A row of `width` values of [`hashed_value`], rounded to bf16 (as the device stores them).
pub fn hashed_row_bf16(seed: u64, seq: u32, pos: u32, width: usize) -> Vec<f32> {
    (0..width as u32).map(|c| half::bf16::from_f32(hashed_value(seed, seq, pos, c)).to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned_bounded_and_spread() {
        // Pinned (computed independently, in Python): the device kernel `fill_rows` computes the
        // same function, so a change here must change it too.
        assert_eq!(f64::from(hashed_value(0, 0, 0, 0)), -1.445_162_534_713_745_1);
        assert_eq!(f64::from(hashed_value(7, 1, 123, 5)), -0.804_901_838_302_612_3);
        assert_eq!(f64::from(hashed_value(42, 3, 1_000_000, 4095)), 1.265_523_195_266_723_6);
        let v: Vec<f32> = (0..4096).map(|c| hashed_value(7, 1, 123, c)).collect();
        assert!(v.iter().all(|x| (-2.0..2.0).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((var - 4.0 / 3.0).abs() < 0.1, "variance {var} (uniform on [-2,2): 4/3)");
        // Each coordinate matters.
        let base = hashed_value(7, 1, 123, 5);
        for other in [hashed_value(8, 1, 123, 5), hashed_value(7, 2, 123, 5), hashed_value(7, 1, 124, 5)] {
            assert_ne!(base, other);
        }
        assert_ne!(base, hashed_value(7, 1, 123, 6));
        // 24-bit grid: exact in f32.
        assert_eq!((base + 2.0) * 4_194_304.0, ((base + 2.0) * 4_194_304.0).round());
    }
}
