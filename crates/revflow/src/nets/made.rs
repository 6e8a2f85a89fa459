//! MADE (Germain et al. 2015): a fully connected network made autoregressive by masks. Each
//! input feature gets a degree `m(d) ∈ 1‥D` (its place in the ordering), each hidden unit a
//! degree `m(k) ∈ 1‥D−1`; a weight from `j` into hidden unit `k` is kept when `m(k) ≥ m(j)`,
//! and into an output of feature `d` when `m(d) > m(k)`. So the outputs of feature `d`
//! depend only on features earlier in the ordering — a strictly triangular Jacobian — and
//! one pass gives every feature's parameters at once (MAF's density, IAF's sampling).
//! Conditioning features (a one-hot class or a context vector) reach every hidden unit.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::with_cond;
use crate::error::Result;
use crate::flow::Cond;
use crate::rng::Rng;
use crate::transforms::Conditioner;

/// The order in which a MADE makes its features depend on each other.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Feature `d` depends on features `0‥d−1`.
    #[default]
    Natural,
    /// A seeded random order of the features (MADE's order-agnostic training draws these).
    Random,
}

/// Configuration of a [`Made`] network.
#[derive(Debug, Clone)]
pub struct MadeConfig {
    /// Features `D` of the autoregressive input.
    pub features: usize,
    /// Outputs per feature (a transform's raw parameters).
    pub params: usize,
    /// Units per hidden layer.
    pub hidden: usize,
    /// Hidden layers (at least 1).
    pub layers: usize,
    /// Conditioning features appended to the input, seen by every hidden unit.
    pub context: usize,
    /// Hidden layers after the first add their input back (a residual MADE; the masks of
    /// equal-degree layers keep the property).
    pub residual: bool,
    pub ordering: Ordering,
    /// Seed of a random ordering.
    pub seed: u64,
}

impl MadeConfig {
    pub fn new(features: usize, params: usize, hidden: usize, layers: usize) -> Self {
        Self {
            features,
            params,
            hidden,
            layers,
            context: 0,
            residual: false,
            ordering: Ordering::Natural,
            seed: 0,
        }
    }

    pub fn with_context(mut self, context: usize) -> Self {
        self.context = context;
        self
    }

    pub fn with_residual(mut self, residual: bool) -> Self {
        self.residual = residual;
        self
    }

    pub fn with_ordering(mut self, ordering: Ordering, seed: u64) -> Self {
        self.ordering = ordering;
        self.seed = seed;
        self
    }

    /// Degrees of the input features, `1‥D` in the chosen order.
    pub fn degrees(&self) -> Vec<usize> {
        let d = self.features;
        match self.ordering {
            Ordering::Natural => (1..=d).collect(),
            Ordering::Random => {
                let order = Rng::new(self.seed).permutation(d);
                let mut degree = vec![0; d];
                order
                    .iter()
                    .enumerate()
                    .for_each(|(i, &f)| degree[f] = i + 1);
                degree
            }
        }
    }

    pub fn init(&self, device: &Device) -> Made {
        let (d, k, hidden) = (self.features, self.context, self.hidden);
        let inputs = self.degrees();
        // Hidden degrees cycle so that every one is used: 1‥D−1, and 0 too when there is a
        // context. Degree-0 units see the context alone and feed every output, so the first
        // feature in the ordering is conditioned as well (it has no earlier features).
        let lowest = if k > 0 || d == 1 { 0 } else { 1 };
        let units: Vec<usize> = (0..hidden)
            .map(|u| lowest + u % (d - lowest).max(1))
            .collect();
        // Context columns (after the features) connect to every hidden unit.
        let first = mask(d + k, hidden, |j, u| j >= d || units[u] >= inputs[j]);
        let between = mask(hidden, hidden, |j, u| units[u] >= units[j]);
        // Output `p·D + f` is parameter `p` of feature `f`.
        let out = mask(hidden, self.params * d, |u, o| inputs[o % d] > units[u]);
        let layers = self.layers.max(1);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let mut hidden_layers = vec![Masked::new(linear(d + k, hidden), &first, device)];
        for _ in 1..layers {
            hidden_layers.push(Masked::new(linear(hidden, hidden), &between, device));
        }
        // Zero-initialised output: every step starts as the identity.
        let output = LinearConfig::new(hidden, self.params * d)
            .with_initializer(burn::nn::Initializer::Zeros)
            .init(device);
        Made {
            hidden: hidden_layers,
            out: Masked::new(output, &out, device),
            degrees: inputs,
            context: k,
            residual: self.residual,
        }
    }
}

/// A `rows × cols` 0/1 matrix, entry `(j, u)` = `keep(j, u)`.
fn mask(rows: usize, cols: usize, keep: impl Fn(usize, usize) -> bool) -> (Vec<i64>, [usize; 2]) {
    let v = (0..rows * cols)
        .map(|i| keep(i / cols, i % cols) as i64)
        .collect();
    (v, [rows, cols])
}

/// A linear layer whose weight is multiplied by a fixed 0/1 mask.
#[derive(Module, Debug)]
pub struct Masked {
    pub linear: Linear,
    /// `[in, out]` like the weight; an integer tensor, so no optimiser touches it. Saved with
    /// the weights, so a random ordering survives a reload.
    pub mask: Param<Tensor<2, Int>>,
}

impl Masked {
    fn new(linear: Linear, (values, shape): &(Vec<i64>, [usize; 2]), device: &Device) -> Self {
        let mask = Tensor::from_data(TensorData::new(values.clone(), *shape), device);
        Masked {
            linear,
            mask: Param::initialized(ParamId::new(), mask),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let w = self.linear.weight.val() * self.mask.val().float();
        let y = x.matmul(w);
        match &self.linear.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        }
    }
}

#[derive(Module, Debug)]
pub struct Made {
    pub hidden: Vec<Masked>,
    pub out: Masked,
    /// Each input feature's degree (its place in the ordering, from 1).
    #[module(skip)]
    pub degrees: Vec<usize>,
    #[module(skip)]
    pub context: usize,
    #[module(skip)]
    pub residual: bool,
}

impl Made {
    /// Features of the autoregressive input.
    pub fn features(&self) -> usize {
        self.degrees.len()
    }
}

impl Conditioner<2> for Made {
    /// `(N, D)` → `(N, P·D)`: parameter `p` of feature `d` in column `p·D + d`, a function of
    /// the features before `d` in the ordering (and of the conditioning input).
    fn forward(&self, x: Tensor<2>, cond: Cond) -> Result<Tensor<2>> {
        let mut h = with_cond(x, cond, self.context)?;
        for (i, layer) in self.hidden.iter().enumerate() {
            let next = relu(layer.forward(h.clone()));
            h = match self.residual && i > 0 {
                true => h + next,
                false => next,
            };
        }
        Ok(self.out.forward(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    /// `∂out/∂x` by autodiff, entry `[o][n·D + j]` for sample `n`.
    fn jacobian(made: &Made, x: &Tensor<2>, cond: Cond) -> Vec<Vec<f32>> {
        let outputs = made.forward(x.clone(), cond).unwrap().dims()[1];
        (0..outputs)
            .map(|o| {
                let var = x.clone().require_grad();
                let grads = made
                    .forward(var.clone(), cond)
                    .unwrap()
                    .narrow(1, o, 1)
                    .sum()
                    .backward();
                to_vec(var.grad(&grads).unwrap())
            })
            .collect()
    }

    #[test]
    fn outputs_depend_only_on_earlier_features_in_the_ordering() {
        let ad = ad();
        ad.seed(3);
        let d = 5;
        for (ordering, residual, layers, context) in [
            (Ordering::Natural, false, 1, 0),
            (Ordering::Random, false, 2, 0),
            (Ordering::Random, true, 3, 2),
            (Ordering::Natural, true, 2, 3),
        ] {
            let config = MadeConfig::new(d, 2, 16, layers)
                .with_context(context)
                .with_residual(residual)
                .with_ordering(ordering, 7);
            let degrees = config.degrees();
            let made = perturb(config.init(&ad), 0.5, 11);
            // Several samples, so that some ReLU is open on every allowed path.
            let x = randn([8, d], &ad);
            let cond = (context > 0).then(|| randn([8, context], &ad));
            let jac = jacobian(&made, &x, cond.as_ref());
            let mut allowed_nonzero = 0;
            for (o, row) in jac.iter().enumerate() {
                let feature = o % d;
                for j in 0..d {
                    let v = row
                        .iter()
                        .skip(j)
                        .step_by(d)
                        .fold(0f32, |m, v| m.max(v.abs()));
                    if degrees[j] >= degrees[feature] {
                        assert_eq!(
                            v, 0.0,
                            "{ordering:?}: output {o} (feature {feature}) depends on feature {j}"
                        );
                    } else if v > 1e-6 {
                        allowed_nonzero += 1;
                    }
                }
            }
            // Not trivially zero: every allowed dependence is present (random weights).
            let allowed = 2 * (0..d).map(|f| degrees[f] - 1).sum::<usize>();
            assert_eq!(allowed_nonzero, allowed, "{ordering:?} residual {residual}");
            // The context reaches the outputs of every feature.
            if let Some(c) = cond {
                let a = made.forward(x.clone(), Some(&c)).unwrap();
                let b = made.forward(x.clone(), Some(&(c + 1.0))).unwrap();
                let change = to_vec(a - b);
                for o in 0..2 * d {
                    let moved = change.iter().skip(o).step_by(2 * d).any(|v| v.abs() > 1e-6);
                    assert!(moved, "the context does not reach output {o}");
                }
            }
        }
    }

    #[test]
    fn random_orderings_are_permutations_and_follow_the_seed() {
        let config = MadeConfig::new(6, 1, 8, 1).with_ordering(Ordering::Random, 1);
        let mut a = config.degrees();
        assert_ne!(a, (1..=6).collect::<Vec<_>>(), "seed 1 shuffles");
        assert_eq!(a, config.degrees());
        a.sort();
        assert_eq!(a, (1..=6).collect::<Vec<_>>());
        let other = config.clone().with_ordering(Ordering::Random, 2).degrees();
        assert_ne!(other, config.degrees());
    }
}
