//! Turning in-memory data sets into tensors, and the seeded order batches are drawn in.

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Data;
use crate::rng::Rng;

/// Rows `idx` of `data` as `(N, D)` values (pixels 0‥255 or real vectors) and the conditioning
/// input: for labelled data used by a class-conditional model, one-hot labels `(N, classes)`;
/// for vectors with a context, their raw context rows `(N, K)`.
pub fn rows(
    data: &Data,
    idx: &[usize],
    classes: usize,
    device: &Device,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let (values, dims, labels): (Vec<f32>, usize, &[usize]) = match data {
        Data::Images(set) => {
            let d = set.sample_dims();
            let v = idx
                .iter()
                .flat_map(|&i| set.image(i).iter().map(|&p| p as f32))
                .collect();
            (v, d, &set.labels)
        }
        Data::Vectors(set) => {
            let v = idx
                .iter()
                .flat_map(|&i| set.row(i).iter().copied())
                .collect();
            (v, set.dim, &set.labels)
        }
    };
    let x = Tensor::from_data(TensorData::new(values, [idx.len(), dims]), device);
    let y = (classes > 0 && !labels.is_empty())
        .then(|| one_hot(idx.iter().map(|&i| labels[i]), classes, device));
    let context = match data {
        Data::Vectors(set) if !set.context_columns.is_empty() => {
            let c: Vec<f32> = idx
                .iter()
                .flat_map(|&i| set.context_row(i))
                .copied()
                .collect();
            let shape = [idx.len(), set.context_columns.len()];
            Some(Tensor::from_data(TensorData::new(c, shape), device))
        }
        _ => None,
    };
    (x, y.or(context))
}

/// One-hot rows for `labels`.
pub fn one_hot(
    labels: impl ExactSizeIterator<Item = usize>,
    classes: usize,
    device: &Device,
) -> Tensor<2> {
    let n = labels.len();
    let mut v = vec![0f32; n * classes];
    labels
        .enumerate()
        .for_each(|(i, l)| v[i * classes + l.min(classes - 1)] = 1.0);
    Tensor::from_data(TensorData::new(v, [n, classes]), device)
}

/// A reproducible stream of training indices: epoch `e` visits the data in the order of a
/// permutation seeded by `(seed, e)`, so batch `k` is the same whether or not the run was
/// interrupted before it.
pub fn batch_indices(n: usize, batch_size: usize, step: usize, seed: u64) -> Vec<usize> {
    let start = step * batch_size;
    let mut out = Vec::with_capacity(batch_size);
    let mut epoch = usize::MAX;
    let mut order = Vec::new();
    for k in start..start + batch_size {
        if k / n != epoch {
            epoch = k / n;
            order = Rng::new(mix(seed, epoch as u64)).permutation(n);
        }
        out.push(order[k % n]);
    }
    out
}

/// Combines a seed with a counter into a new, well-spread seed.
pub fn mix(seed: u64, counter: u64) -> u64 {
    let mut r = Rng::new(seed ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64()
}
