//! The inner loops: little-endian tensor bytes in any aggregated float type to f64 and
//! back, the weighted sum, finiteness and distances.
//!
//! Each loop is written so the compiler vectorizes it for the baseline x86-64 and
//! aarch64 targets: plain iterators over fixed-size byte arrays, no bounds checks, no
//! early exit in the hot paths. Multiply and add stay separate operations: on x86-64
//! without the `fma` target feature `f64::mul_add` is a library call, and because a
//! count times an f32 value is exact in f64 (24 + 29 bits < 53 for counts below 2^29),
//! the separate multiply rounds nothing and the sum is rounded once per client, as a
//! fused multiply-add would be.

use half::{bf16, f16};

use crate::error::NonFinite;
use crate::layout::FloatType;

/// Runs `$body` with `$values` bound to an iterator of the f64 values in `$bytes`.
macro_rules! with_values {
    ($ty:expr, $bytes:expr, |$values:ident| $body:expr) => {
        match $ty {
            FloatType::F32 => {
                let $values = $bytes
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|b| f64::from(f32::from_le_bytes(*b)));
                $body
            }
            FloatType::F64 => {
                let $values = $bytes
                    .as_chunks::<8>()
                    .0
                    .iter()
                    .map(|b| f64::from_le_bytes(*b));
                $body
            }
            FloatType::F16 => {
                let $values = $bytes
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .map(|b| f16::from_le_bytes(*b).to_f64());
                $body
            }
            FloatType::BF16 => {
                let $values = $bytes
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .map(|b| bf16::from_le_bytes(*b).to_f64());
                $body
            }
        }
    };
}

/// `sums[i] += weight * value[i]` for the values in `bytes`.
pub(crate) fn add_weighted(sums: &mut [f64], bytes: &[u8], ty: FloatType, weight: f64) {
    with_values!(ty, bytes, |values| {
        for (sum, value) in sums.iter_mut().zip(values) {
            *sum += weight * value;
        }
    })
}

/// Writes the values in `bytes` into `out`.
pub(crate) fn decode(out: &mut [f64], bytes: &[u8], ty: FloatType) {
    with_values!(ty, bytes, |values| {
        for (slot, value) in out.iter_mut().zip(values) {
            *slot = value;
        }
    })
}

/// Writes `values` into `out` as `ty`, rounding to nearest.
pub(crate) fn encode(values: &[f64], out: &mut [u8], ty: FloatType) {
    match ty {
        FloatType::F32 => {
            for (slot, v) in out.as_chunks_mut::<4>().0.iter_mut().zip(values) {
                *slot = (*v as f32).to_le_bytes();
            }
        }
        FloatType::F64 => {
            for (slot, v) in out.as_chunks_mut::<8>().0.iter_mut().zip(values) {
                *slot = v.to_le_bytes();
            }
        }
        FloatType::F16 => {
            for (slot, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(values) {
                *slot = f16::from_f64(*v).to_le_bytes();
            }
        }
        FloatType::BF16 => {
            for (slot, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(values) {
                *slot = bf16::from_f64(*v).to_le_bytes();
            }
        }
    }
}

/// Whether every value is finite. No early exit, so the loop vectorizes; a chunk is
/// small enough that finishing it costs less than a branch per value.
pub(crate) fn all_finite(values: &[f64]) -> bool {
    values.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// Whether every value in `bytes` is finite: its exponent bits are not all ones.
/// Works on the bits, without converting, so the loop vectorizes.
pub(crate) fn all_finite_bytes(bytes: &[u8], ty: FloatType) -> bool {
    fn check<const N: usize, U>(bytes: &[u8], bits: impl Fn([u8; N]) -> U, exponent: U) -> bool
    where
        U: Copy + PartialEq + std::ops::BitAnd<Output = U>,
    {
        bytes
            .as_chunks::<N>()
            .0
            .iter()
            .fold(true, |ok, b| ok & (bits(*b) & exponent != exponent))
    }
    match ty {
        FloatType::F32 => check(bytes, u32::from_le_bytes, 0x7f80_0000),
        FloatType::F64 => check(bytes, u64::from_le_bytes, 0x7ff0_0000_0000_0000),
        FloatType::F16 => check(bytes, u16::from_le_bytes, 0x7c00),
        FloatType::BF16 => check(bytes, u16::from_le_bytes, 0x7f80),
    }
}

/// The first value in `bytes` that is not finite, with its position.
pub(crate) fn first_non_finite(bytes: &[u8], ty: FloatType) -> Option<(usize, NonFinite)> {
    with_values!(ty, bytes, |values| {
        values
            .enumerate()
            .find_map(|(i, v)| NonFinite::of(v).map(|kind| (i, kind)))
    })
}

/// Σ (a[i] − b[i])², summed in eight lanes so the loop vectorizes; the lanes are added
/// in a fixed order, so the result does not depend on threads.
pub(crate) fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    let mut lanes = [0.0f64; 8];
    for (x, y) in a8.iter().zip(b8) {
        for lane in 0..8 {
            let d = x[lane] - y[lane];
            lanes[lane] += d * d;
        }
    }
    let mut tail = 0.0;
    for (x, y) in a_rest.iter().zip(b_rest) {
        let d = x - y;
        tail += d * d;
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn add_weighted_sums_every_float_type() {
        let mut sums = vec![1.0, 2.0];
        add_weighted(&mut sums, &bytes_f32(&[0.5, -1.0]), FloatType::F32, 2.0);
        assert_eq!(sums, vec![2.0, 0.0]);

        let f64_bytes: Vec<u8> = [0.25f64, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        add_weighted(&mut sums, &f64_bytes, FloatType::F64, 4.0);
        assert_eq!(sums, vec![3.0, 16.0]);

        let f16_bytes: Vec<u8> = [f16::from_f32(1.5), f16::from_f32(-2.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        add_weighted(&mut sums, &f16_bytes, FloatType::F16, 2.0);
        assert_eq!(sums, vec![6.0, 12.0]);

        let bf16_bytes: Vec<u8> = [bf16::from_f32(0.5), bf16::from_f32(8.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        add_weighted(&mut sums, &bf16_bytes, FloatType::BF16, 2.0);
        assert_eq!(sums, vec![7.0, 28.0]);
    }

    #[test]
    fn encode_rounds_and_decode_reads_back() {
        for ty in [
            FloatType::F16,
            FloatType::BF16,
            FloatType::F32,
            FloatType::F64,
        ] {
            let values = [1.0, -0.5, 3.0, 0.0];
            let mut bytes = vec![0u8; values.len() * ty.size()];
            encode(&values, &mut bytes, ty);
            let mut back = vec![f64::NAN; values.len()];
            decode(&mut back, &bytes, ty);
            assert_eq!(back, values, "{ty:?}");
        }
    }

    #[test]
    fn first_non_finite_finds_the_first() {
        let bytes = bytes_f32(&[1.0, f32::NEG_INFINITY, f32::NAN]);
        assert_eq!(
            first_non_finite(&bytes, FloatType::F32),
            Some((1, NonFinite::NegInf))
        );
        assert_eq!(first_non_finite(&bytes_f32(&[1.0]), FloatType::F32), None);
        assert!(!all_finite_bytes(&bytes, FloatType::F32));
        assert!(all_finite_bytes(
            &bytes_f32(&[1.0, f32::MAX, -0.0]),
            FloatType::F32
        ));
        for ty in [FloatType::F16, FloatType::BF16, FloatType::F64] {
            for (value, finite) in [
                (1.0, true),
                (-65504.0, true),
                (f64::NAN, false),
                (f64::NEG_INFINITY, false),
            ] {
                let mut bytes = vec![0u8; ty.size()];
                encode(&[value], &mut bytes, ty);
                assert_eq!(all_finite_bytes(&bytes, ty), finite, "{ty:?} {value}");
            }
        }
        assert!(!all_finite(&[1.0, f64::NAN]));
        assert!(all_finite(&[1.0, -2.0]));
    }

    #[test]
    fn squared_distance_covers_lanes_and_tail() {
        let a: Vec<f64> = (0..19).map(f64::from).collect();
        let b = vec![0.0; 19];
        let expected: f64 = (0..19).map(|i| f64::from(i * i)).sum();
        assert_eq!(squared_distance(&a, &b), expected);
    }
}
