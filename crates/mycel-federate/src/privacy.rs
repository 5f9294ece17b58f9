//! Central differential privacy as in DP-FedAvg (McMahan et al. 2018, "Learning
//! Differentially Private Recurrent Language Models").
//!
//! Each client's delta (its update minus the global model, over all aggregated
//! tensors as one vector) is clipped to L2 norm `clip`: scaled by
//! `min(1, clip / ‖delta‖)`. The aggregate is the global model plus the *unweighted*
//! mean of the `n` clipped deltas plus Gaussian noise of standard deviation
//! `noise_multiplier · clip / n` on every value. Unweighted, because one client can
//! move the mean of clipped deltas by at most `clip / n` only if every client weighs
//! the same; with example-count weights a client claiming many examples would exceed
//! the sensitivity the noise is calibrated to. The privacy budget (ε, δ) over rounds
//! follows from `noise_multiplier` and the fraction of clients sampled per round with
//! the moments accountant of that paper; this crate adds the noise, it does not
//! account.
//!
//! Only the mean strategies (fedavg, fedprox) take privacy: the noise is calibrated
//! to a mean's sensitivity, and a median's or Krum's is not `clip / n`.
//!
//! The noise comes from a ChaCha-based generator ([`rand::rngs::StdRng`]) seeded per
//! chunk from one 64-bit seed, so the noise does not depend on how threads split the
//! work. A seed is for tests: anyone who knows it can subtract the noise, so leave it
//! `None` in production to draw it from the operating system. Sampling is the
//! ordinary floating-point Gaussian, not hardened against the precision attacks on
//! floating-point DP mechanisms (Mironov 2012).

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::error::FederateError;

/// Differential-privacy settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Privacy {
    /// The L2 norm each client's delta is clipped to; > 0.
    pub clip: f64,
    /// Noise standard deviation as a multiple of the mean's sensitivity
    /// `clip / n`; ≥ 0 (0 clips without adding noise).
    pub noise_multiplier: f64,
    /// Seed for the noise; `None` draws one from the operating system.
    pub seed: Option<u64>,
}

impl Privacy {
    /// Checks the ranges.
    pub fn check(&self) -> Result<(), FederateError> {
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(FederateError::Privacy(format!(
                "clip must be a finite number > 0, got {}",
                self.clip
            )));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(FederateError::Privacy(format!(
                "noise multiplier must be a finite number ≥ 0, got {}",
                self.noise_multiplier
            )));
        }
        Ok(())
    }

    /// The factor a delta of L2 norm `norm` is scaled by.
    pub fn clip_scale(&self, norm: f64) -> f64 {
        if norm > self.clip {
            self.clip / norm
        } else {
            1.0
        }
    }

    /// The noise's standard deviation for `clients` updates.
    pub fn noise_std(&self, clients: usize) -> f64 {
        self.noise_multiplier * self.clip / clients as f64
    }
}

/// Gaussian noise for one chunk, reproducible from the seed and the chunk's index.
pub(crate) struct Noise {
    seed: u64,
    normal: Option<Normal<f64>>,
}

impl Noise {
    pub fn new(seed: u64, std: f64) -> Result<Self, FederateError> {
        let normal = if std > 0.0 {
            Some(Normal::new(0.0, std).map_err(|e| {
                FederateError::Privacy(format!("noise std {std} is not usable: {e}"))
            })?)
        } else {
            None
        };
        Ok(Noise { seed, normal })
    }

    /// Adds noise to `values`, the values of chunk number `chunk`.
    pub fn add(&self, chunk: usize, values: &mut [f64]) {
        let Some(normal) = self.normal else {
            return;
        };
        let mut rng = StdRng::seed_from_u64(mix(self.seed, chunk as u64));
        for v in values {
            *v += normal.sample(&mut rng);
        }
    }
}

/// SplitMix64's finalizer over seed and chunk, so neighbouring chunks get unrelated
/// streams.
fn mix(seed: u64, chunk: u64) -> u64 {
    let mut z = seed ^ chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_scale_only_shrinks() {
        let p = Privacy {
            clip: 2.0,
            noise_multiplier: 1.0,
            seed: Some(1),
        };
        assert_eq!(p.clip_scale(1.0), 1.0);
        assert_eq!(p.clip_scale(8.0), 0.25);
        assert_eq!(p.noise_std(4), 0.5);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = Privacy {
            clip: 0.0,
            noise_multiplier: 1.0,
            seed: None,
        };
        assert_eq!(
            bad.check().unwrap_err().to_string(),
            "differential privacy: clip must be a finite number > 0, got 0"
        );
        let bad = Privacy {
            clip: 1.0,
            noise_multiplier: f64::NAN,
            seed: None,
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn noise_is_reproducible_per_chunk_and_has_its_std() {
        let noise = Noise::new(7, 0.5).unwrap();
        let mut a = vec![0.0; 100_000];
        let mut b = vec![0.0; 100_000];
        noise.add(3, &mut a);
        noise.add(3, &mut b);
        assert_eq!(a, b);
        let mut c = vec![0.0; 100_000];
        noise.add(4, &mut c);
        assert_ne!(a, c);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((std - 0.5).abs() < 0.01, "std {std}");
    }
}
