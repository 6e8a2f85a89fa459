//! Deterministic noise: dequantisation noise and sampling latents are drawn on the host, each
//! row from its own generator keyed by `(seed, purpose, key, draw)`, then sent to the device.
//!
//! So a number never depends on the batch an input was in, on its position, on chunking, on
//! the process or on the device: an input scored alone, in a batch of 1000, on another
//! machine or on a GPU gets the same noise. Keys are chosen by the caller: the position in a
//! training batch (with the step as `draw`), an input's content (scoring), a sample's index.

use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::Rng;

/// What the noise is for; part of the key, so that two uses never share a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Dequantisation of a training batch.
    Train,
    /// Dequantisation of the data-dependent initialisation's batch.
    Init,
    /// Dequantisation for likelihoods: evaluation and scoring.
    Score,
    /// Latents of samples.
    Sample,
}

impl Purpose {
    fn tag(self) -> u64 {
        match self {
            Purpose::Train => 0x7261_696E,
            Purpose::Init => 0x696E_6974,
            Purpose::Score => 0x7363_6F72,
            Purpose::Sample => 0x7361_6D70,
        }
    }
}

/// The distribution of standardised latents (see `Model::standardize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standard {
    /// N(0, 1) per entry: Glow, RealNVP, vector flows.
    Normal,
    /// The standard logistic per entry: NICE.
    Logistic,
}

/// A key for one input from its content (the bit patterns of its values): the same input gets
/// the same noise wherever it comes from.
pub fn content_key(row: &[f32]) -> u64 {
    // FNV-1a over the bits, finished by SplitMix64 to spread them.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for v in row {
        h = (h ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01B3);
    }
    Rng::new(h ^ row.len() as u64).next_u64()
}

/// The generator of one row.
fn row_rng(seed: u64, purpose: Purpose, key: u64, draw: u64) -> Rng {
    let mut r = Rng::new(seed ^ purpose.tag().rotate_left(32));
    let a = r.next_u64() ^ key;
    let b = Rng::new(a).next_u64() ^ draw.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Rng::new(Rng::new(b).next_u64())
}

/// `(keys.len(), dims)` values, row `i` from the generator of `keys[i]`.
fn rows(
    seed: u64,
    purpose: Purpose,
    keys: &[u64],
    draw: u64,
    dims: usize,
    device: &Device,
    value: impl Fn(&mut Rng) -> f32,
) -> Tensor<2> {
    let mut v = Vec::with_capacity(keys.len() * dims);
    for &key in keys {
        let mut r = row_rng(seed, purpose, key, draw);
        v.extend((0..dims).map(|_| value(&mut r)));
    }
    Tensor::from_data(TensorData::new(v, [keys.len(), dims]), device)
}

/// Uniform values in `[0, 1)` (24-bit, exact in f32): where each 8-bit value sits in its bin.
pub fn uniform(
    seed: u64,
    purpose: Purpose,
    keys: &[u64],
    draw: u64,
    dims: usize,
    device: &Device,
) -> Tensor<2> {
    rows(seed, purpose, keys, draw, dims, device, |r| {
        (r.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    })
}

/// Draws from `standard` (standardised latents for sampling).
pub fn standard(
    standard: Standard,
    seed: u64,
    purpose: Purpose,
    keys: &[u64],
    draw: u64,
    dims: usize,
    device: &Device,
) -> Tensor<2> {
    rows(
        seed,
        purpose,
        keys,
        draw,
        dims,
        device,
        |r| match standard {
            Standard::Normal => r.normal() as f32,
            Standard::Logistic => {
                // u in the open interval (0, 1).
                let u = ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (u.ln() - (-u).ln_1p()) as f32
            }
        },
    )
}

/// Keys `first..first + n`: samples numbered from `first`.
pub fn indices(first: u64, n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| first.wrapping_add(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn a_row_depends_on_its_key_alone_not_on_its_batch() {
        let dev = device();
        let keys = [5u64, 9, 1 << 40, 3];
        let all = to_vec(uniform(1, Purpose::Score, &keys, 0, 7, &dev));
        for (i, k) in keys.iter().enumerate() {
            let one = to_vec(uniform(1, Purpose::Score, &[*k], 0, 7, &dev));
            assert_eq!(one, all[i * 7..(i + 1) * 7]);
        }
        // Seed, purpose, key and draw each change the stream.
        let base = to_vec(uniform(1, Purpose::Score, &[5], 0, 7, &dev));
        for other in [
            uniform(2, Purpose::Score, &[5], 0, 7, &dev),
            uniform(1, Purpose::Train, &[5], 0, 7, &dev),
            uniform(1, Purpose::Score, &[6], 0, 7, &dev),
            uniform(1, Purpose::Score, &[5], 1, 7, &dev),
        ] {
            assert_ne!(to_vec(other), base);
        }
    }

    #[test]
    fn draws_have_the_right_distributions() {
        let dev = device();
        let keys = indices(0, 200);
        let u = to_vec(uniform(3, Purpose::Train, &keys, 0, 100, &dev));
        assert!(u.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = u.iter().sum::<f32>() / u.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let moments = |s: Standard| {
            let z = to_vec(standard(s, 3, Purpose::Sample, &keys, 0, 100, &dev));
            let n = z.len() as f64;
            let m = z.iter().map(|v| *v as f64).sum::<f64>() / n;
            let var = z.iter().map(|v| (*v as f64 - m).powi(2)).sum::<f64>() / n;
            (m, var)
        };
        let (m, var) = moments(Standard::Normal);
        assert!(m.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{m} {var}");
        let (m, var) = moments(Standard::Logistic);
        let want = std::f64::consts::PI.powi(2) / 3.0;
        assert!(m.abs() < 0.06 && (var - want).abs() < 0.15, "{m} {var}");
    }

    #[test]
    fn content_keys_tell_inputs_apart() {
        let a = content_key(&[0.0, 1.0, 2.0]);
        assert_eq!(a, content_key(&[0.0, 1.0, 2.0]));
        assert_ne!(a, content_key(&[0.0, 2.0, 1.0]));
        assert_ne!(a, content_key(&[0.0, 1.0]));
        assert_ne!(content_key(&[0.0]), content_key(&[-0.0]));
    }
}
