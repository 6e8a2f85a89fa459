//! Data parallelism: the processes (MPI ranks) that share one training or scoring job.
//!
//! Every rank holds the same model. A global batch is split into contiguous shards, one per
//! rank; each rank's loss is its shard's share of the global mean, so that summing the
//! gradients over ranks gives the gradient of the whole batch (Horovod's scheme, the one
//! openai/glow trained with). Noise is keyed by global sample index (see [`crate::noise`]),
//! so N ranks follow one process up to the order of float summation.
//!
//! [`Group`] is what training needs from the engine; [`Single`] is one process, and
//! [`mpi::Mpi`] (cargo feature `mpi`) is MPI's world communicator.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{FlowError, Result};
use crate::flow::to_f32;

/// Collective operations over the ranks of one job. Every rank must make the same calls in
/// the same order (MPI's rule for collectives).
pub trait Group {
    /// This process's number, `0..size`; rank 0 leads (prints, writes files).
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Element-wise sum over every rank, in place.
    fn sum_f32(&self, values: &mut [f32]);

    /// Element-wise sum over every rank, in place.
    fn sum_f64(&self, values: &mut [f64]);

    /// Element-wise maximum over every rank, in place.
    fn max_f64(&self, values: &mut [f64]);

    /// Rank 0's values on every rank, in place.
    fn broadcast_f32(&self, values: &mut [f32]);
}

/// One process: every collective is the identity.
pub struct Single;

impl Group for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn max_f64(&self, _: &mut [f64]) {}
    fn broadcast_f32(&self, _: &mut [f32]) {}
}

/// This rank's contiguous share of `0..total`: shards differ in size by at most one.
pub fn shard(total: usize, group: &dyn Group) -> Range<usize> {
    let (r, n) = (group.rank(), group.size().max(1));
    total * r / n..total * (r + 1) / n
}

/// A gradient taken out for the all-reduce: its parameter, shape and device.
type Taken = (ParamId, Vec<usize>, Device);

/// Gradients are summed in buckets of at most this many values (64 MiB of f32), so that
/// a large model needs few all-reduce calls and no second copy of every gradient at once.
const BUCKET: usize = 1 << 24;

/// Sums every parameter's gradient over the ranks (in place, in [`BUCKET`]-sized calls).
/// Parameters are visited in the module's order, the same on every rank.
pub fn sum_gradients<M: Module>(
    model: &M,
    grads: GradientsParams,
    group: &dyn Group,
) -> Result<GradientsParams> {
    if group.size() <= 1 {
        return Ok(grads);
    }
    // Take each gradient out, in order, with what is needed to put it back.
    struct Take {
        grads: GradientsParams,
        taken: Vec<(Taken, Vec<f32>)>,
        error: Option<FlowError>,
    }
    impl ModuleVisitor for Take {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                match to_f32(&g) {
                    Ok(v) => self
                        .taken
                        .push(((param.id, g.dims().to_vec(), g.device()), v)),
                    Err(e) => self.error = Some(e),
                }
            }
        }
    }
    let mut take = Take {
        grads,
        taken: Vec::new(),
        error: None,
    };
    model.visit(&mut take);
    if let Some(e) = take.error {
        return Err(e);
    }
    let mut grads = take.grads;
    let mut bucket: Vec<f32> = Vec::new();
    let mut pending: Vec<Taken> = Vec::new();
    let mut flush = |bucket: &mut Vec<f32>, pending: &mut Vec<Taken>| {
        group.sum_f32(bucket);
        let mut start = 0;
        for (id, dims, device) in pending.drain(..) {
            let len: usize = dims.iter().product();
            let data = TensorData::new(bucket[start..start + len].to_vec(), dims.clone());
            start += len;
            // Put back with the parameter's rank (1 to 4 here, checked when taken).
            match dims.len() {
                1 => grads.register::<1>(id, Tensor::from_data(data, &device)),
                2 => grads.register::<2>(id, Tensor::from_data(data, &device)),
                3 => grads.register::<3>(id, Tensor::from_data(data, &device)),
                _ => grads.register::<4>(id, Tensor::from_data(data, &device)),
            }
        }
        bucket.clear();
    };
    for (taken, values) in take.taken {
        if !(1..=4).contains(&taken.1.len()) {
            return Err(FlowError::Training(format!(
                "a parameter of rank {} has no all-reduce path",
                taken.1.len()
            )));
        }
        if !bucket.is_empty() && bucket.len() + values.len() > BUCKET {
            flush(&mut bucket, &mut pending);
        }
        bucket.extend_from_slice(&values);
        pending.push(taken);
    }
    if !pending.is_empty() {
        flush(&mut bucket, &mut pending);
    }
    Ok(grads)
}

/// Values all-reduced per step: those of every parameter that is trained (f32 each).
pub fn gradient_values<M: Module>(model: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.0 += param.val().dims().iter().product::<usize>();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

/// Rank 0's parameter values on every rank (after initialisation or loading), keeping each
/// parameter's id and whether it requires gradients.
pub fn broadcast_parameters<M: Module>(model: M, group: &dyn Group) -> Result<M> {
    if group.size() <= 1 {
        return Ok(model);
    }
    struct Copy<'a>(&'a dyn Group, Option<FlowError>);
    impl ModuleMapper for Copy<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let mut values = match to_f32(&value) {
                Ok(v) => v,
                Err(e) => {
                    // Every rank reads the same kind of tensor: none takes part, all fail.
                    self.1 = Some(e);
                    return Param::from_mapped_value(id, value, mapper);
                }
            };
            self.0.broadcast_f32(&mut values);
            let data = TensorData::new(values, value.dims());
            let mut fresh = Tensor::<D>::from_data(data, &value.device());
            if value.is_require_grad() {
                fresh = fresh.require_grad();
            }
            Param::from_mapped_value(id, fresh, mapper)
        }
    }
    let mut copy = Copy(group, None);
    let model = model.map(&mut copy);
    match copy.1 {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

/// Checks that every rank holds the same parameters (a checksum of every value, compared
/// through a maximum of it and of its negation); a mismatch is an error naming the step.
pub fn check_same_parameters<M: Module>(model: &M, group: &dyn Group, step: usize) -> Result<()> {
    if group.size() <= 1 {
        return Ok(());
    }
    struct Sum(f64, f64);
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Ok(v) = to_f32(&param.val()) {
                for (i, x) in v.iter().enumerate() {
                    self.0 += *x as f64;
                    self.1 += *x as f64 * ((i % 7) as f64 + 1.0);
                }
            }
        }
    }
    let mut sum = Sum(0.0, 0.0);
    model.visit(&mut sum);
    let mut extremes = [sum.0, sum.1, -sum.0, -sum.1];
    group.max_f64(&mut extremes);
    if extremes[0] != -extremes[2] || extremes[1] != -extremes[3] {
        return Err(FlowError::Training(format!(
            "the ranks' parameters differ at step {step} (checksums {} to {}); stopping, the last checkpoint is intact",
            -extremes[2], extremes[0]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::nn::{Linear, LinearConfig};

    /// Rank `.0` of `.1`, for the arithmetic of shards (its collectives do nothing).
    struct Fake(usize, usize);
    impl Group for Fake {
        fn rank(&self) -> usize {
            self.0
        }
        fn size(&self) -> usize {
            self.1
        }
        fn sum_f32(&self, _: &mut [f32]) {}
        fn sum_f64(&self, _: &mut [f64]) {}
        fn max_f64(&self, _: &mut [f64]) {}
        fn broadcast_f32(&self, _: &mut [f32]) {}
    }

    /// Two ranks, the other one identical to this one but for an offset in its checksum.
    struct Twin {
        offset: f64,
    }
    impl Group for Twin {
        fn rank(&self) -> usize {
            1
        }
        fn size(&self) -> usize {
            2
        }
        fn sum_f32(&self, v: &mut [f32]) {
            v.iter_mut().for_each(|x| *x *= 2.0);
        }
        fn sum_f64(&self, v: &mut [f64]) {
            v.iter_mut().for_each(|x| *x *= 2.0);
        }
        fn max_f64(&self, v: &mut [f64]) {
            // The twin's checksums are ours plus the offset; their negations minus it.
            let (a, b) = (v[0] + self.offset, v[1] + self.offset);
            v[0] = v[0].max(a);
            v[1] = v[1].max(b);
            v[2] = v[2].max(-a);
            v[3] = v[3].max(-b);
        }
        fn broadcast_f32(&self, v: &mut [f32]) {
            v.iter_mut().for_each(|x| *x = 0.5);
        }
    }

    fn linear() -> Linear {
        perturb(LinearConfig::new(3, 2).init(&ad()), 0.5, 1)
    }

    #[test]
    fn gradients_are_summed_over_ranks_and_keep_their_parameters() {
        let model = linear();
        let x = randn([4, 3], &ad());
        let grads = GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
        let w = to_vec(grads.get::<2>(model.weight.id).unwrap());
        let summed = sum_gradients(&model, grads, &Twin { offset: 0.0 }).unwrap();
        let w2 = to_vec(summed.get::<2>(model.weight.id).unwrap());
        assert_eq!(w2, w.iter().map(|v| v * 2.0).collect::<Vec<_>>());
        assert!(summed.get::<1>(model.bias.as_ref().unwrap().id).is_some());
        assert_eq!(summed.len(), 2);
    }

    #[test]
    fn broadcast_takes_rank_0_s_values_and_keeps_ids_and_gradients() {
        let model = linear();
        let id = model.weight.id;
        let copy = broadcast_parameters(model, &Twin { offset: 0.0 }).unwrap();
        assert_eq!(copy.weight.id, id);
        assert!(copy.weight.val().is_require_grad());
        assert!(to_vec(copy.weight.val()).iter().all(|v| *v == 0.5));
    }

    #[test]
    fn differing_parameters_stop_the_run_naming_the_step() {
        let model = linear();
        check_same_parameters(&model, &Twin { offset: 0.0 }, 100).unwrap();
        let err = check_same_parameters(&model, &Twin { offset: 1e-9 }, 200).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the ranks' parameters differ at step 200"),
            "{err}"
        );
    }

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for (total, ranks) in [(64, 2), (10, 3), (5, 5), (7, 4), (0, 3)] {
            let mut next = 0;
            for r in 0..ranks {
                let s = shard(total, &Fake(r, ranks));
                assert_eq!(s.start, next);
                assert!(s.len() == total / ranks || s.len() == total / ranks + 1);
                next = s.end;
            }
            assert_eq!(next, total);
        }
    }
}
