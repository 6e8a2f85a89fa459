//! TEMPORARY stand-in for `crate::noise` until main's `noise:` commit is merged (then this
//! file is deleted and `use crate::noise` takes its place). Same signatures.

use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    Score,
}

pub fn content_key(row: &[f32]) -> u64 {
    row.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, v| {
        let mut r = Rng::new(h ^ v.to_bits() as u64);
        r.next_u64()
    })
}

pub fn uniform(
    seed: u64,
    purpose: Purpose,
    keys: &[u64],
    draw: u64,
    dims: usize,
    device: &Device,
) -> Tensor<2> {
    let _ = purpose;
    let values: Vec<f32> = keys
        .iter()
        .flat_map(|&k| {
            let mut r = Rng::new(seed ^ k.rotate_left(17) ^ draw.wrapping_mul(0x9E37_79B9));
            (0..dims)
                .map(move |_| r.uniform() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [keys.len(), dims]), device)
}
