//! Test helpers: the independent checks every layer must pass.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::flow::{Cond, Flow};
use crate::linalg::Lu;

pub fn device() -> Device {
    Device::flex()
}

pub fn ad() -> Device {
    Device::flex().autodiff()
}

pub fn randn<const D: usize>(dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
}

/// Dequantisation noise for `x` (pixels `(N, D)`), row `i` keyed by `i`.
pub fn noise_like(x: &Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let keys = crate::noise::indices(0, n);
    crate::noise::uniform(0, crate::noise::Purpose::Score, &keys, 0, d, &x.device())
}

/// `n` sample keys for [`Model::sample`](crate::models::Model::sample).
pub fn keys(n: usize) -> Vec<u64> {
    crate::noise::indices(0, n)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec_as::<f32>().unwrap()
}

pub fn max_abs_diff<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    to_vec((a.clone() - b.clone()).abs().max())[0]
}

pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * classes];
    labels
        .iter()
        .enumerate()
        .for_each(|(i, &l)| v[i * classes + l] = 1.0);
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}

/// Adds seeded N(0, std²) noise to every trainable float parameter, so that tests run away
/// from initial values that are often the identity. Fixed parameters (LU's permutation,
/// ActNorm's flag) stay as they are.
pub fn perturb<M: Module>(module: M, std: f64, seed: u64) -> M {
    let was_autodiff = module.devices().first().is_some_and(|d| d.is_autodiff());
    // On the autodiff device trainable parameters are the ones that require gradients.
    let mapped = crate::bench::jitter(module.train(), std, seed);
    if was_autodiff {
        mapped
    } else {
        mapped.valid()
    }
}

/// `log|det J|` per sample, from the full Jacobian of `flow.forward` computed by autodiff
/// (one backward pass per output entry) and an f64 LU on the host.
pub fn jacobian_logdet<const D: usize, F: Flow<D>>(
    flow: &F,
    x: &Tensor<D>,
    cond: Cond,
) -> Vec<f64> {
    let dims = x.dims();
    let (n, m) = (dims[0], dims[1..].iter().product::<usize>());
    let x = x.clone().inner().autodiff().require_grad();
    let mut jac = vec![vec![0.0f64; m * m]; n];
    for j in 0..m {
        let (y, _) = flow.forward(x.clone(), cond).unwrap();
        let yj = y.reshape([n, m]).narrow(1, j, 1).sum();
        let grads = yj.backward();
        let g = to_vec(x.grad(&grads).expect("input gradient").reshape([n, m]));
        for (s, row) in jac.iter_mut().enumerate() {
            for k in 0..m {
                row[j * m + k] = g[s * m + k] as f64;
            }
        }
    }
    jac.iter().map(|a| Lu::new(a, m).log_abs_det()).collect()
}

/// The layer contract: `f⁻¹(f(x)) = x`, `f(f⁻¹(y)) = y`, and the reported log-determinant
/// equals log|det J| of the Jacobian computed independently.
pub fn check_flow<const D: usize, F: Flow<D>>(flow: &F, x: Tensor<D>, cond: Cond) {
    let (y, logdet) = flow.forward(x.clone(), cond).unwrap();
    assert_eq!(logdet.dims(), [x.dims()[0]]);
    let back = flow.inverse(y.clone(), cond).unwrap();
    let err = max_abs_diff(&back, &x);
    assert!(err <= 1e-4, "inverse(forward(x)) differs from x by {err}");
    let (again, _) = flow.forward(back, cond).unwrap();
    let scale = to_vec(y.clone().abs().max())[0].max(1.0);
    let err = max_abs_diff(&again, &y);
    assert!(
        err <= 1e-4 * scale,
        "forward(inverse(y)) differs from y by {err}"
    );

    let want = jacobian_logdet(flow, &x, cond);
    for (got, want) in to_vec(logdet).iter().zip(&want) {
        let tol = 1e-3 * want.abs().max(1.0);
        assert!(
            (*got as f64 - want).abs() <= tol,
            "log-det {got} but log|det J| = {want}"
        );
    }
}

/// Every trainable parameter of `module` received a finite, non-zero gradient.
pub fn assert_params_get_gradients<M: Module>(module: &M, grads: burn::tensor::Gradients) {
    struct Check(burn::tensor::Gradients, usize);
    impl ModuleVisitor for Check {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            let g = t
                .grad(&self.0)
                .expect("a trainable parameter got no gradient");
            let g = to_vec(g);
            assert!(g.iter().all(|v| v.is_finite()), "non-finite gradient");
            assert!(
                g.iter().any(|v| *v != 0.0),
                "all-zero gradient for {:?}",
                t.dims()
            );
            self.1 += 1;
        }
    }
    let mut check = Check(grads, 0);
    module.visit(&mut check);
    assert!(check.1 > 0, "no trainable parameters were checked");
}

/// Gradients of a likelihood-like loss `½‖f(x)‖² − log|det J|` reach every parameter.
pub fn check_gradients<const D: usize, F: Flow<D> + Module>(flow: F, x: Tensor<D>, cond: Cond) {
    let (y, logdet) = flow.forward(x, cond).unwrap();
    let loss = y.square().sum() * 0.5 - logdet.sum();
    assert_params_get_gradients(&flow, loss.backward());
}
