//! RealNVP's batch-normalisation flow layer (RealNVP §3.7):
//! `y = (x − μ) / sqrt(σ² + ε) · exp(log_γ) + β`, per channel,
//! `log|det J| = positions · Σ_c (log_γ_c − ½ log(σ²_c + ε))`.
//!
//! In training (autodiff device, `training` flag on) μ, σ² are the batch's statistics and the
//! running averages are updated; otherwise — in evaluation and always in the inverse — the
//! running averages are used, which makes the layer a fixed bijection.

use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::flow::{channel_shape, check_channels, positions, Cond, Flow};

/// Configuration of a [`BatchNormFlow`] layer.
#[derive(Debug, Clone)]
pub struct BatchNormFlowConfig {
    pub channels: usize,
    /// Weight of the current batch in the running averages (RealNVP: 0.05 → here 0.05).
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNormFlowConfig {
    pub fn new(channels: usize) -> Self {
        Self {
            channels,
            momentum: 0.05,
            epsilon: 1e-4,
        }
    }

    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    pub fn init(&self, device: &Device) -> BatchNormFlow {
        let c = self.channels;
        BatchNormFlow {
            log_gamma: Param::from_tensor(Tensor::zeros([c], device)),
            beta: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            training: Param::from_bool(true),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

#[derive(Module, Debug)]
pub struct BatchNormFlow {
    pub log_gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    pub training: Param<Flag>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNormFlow {
    fn channels(&self) -> usize {
        self.beta.dims()[0]
    }

    fn is_training<const D: usize>(&self, x: &Tensor<D>) -> bool {
        x.device().is_autodiff() && self.training.is_enabled()
    }

    /// Batch statistics (`training`) or running averages, per channel.
    fn statistics<const D: usize>(&self, x: &Tensor<D>, training: bool) -> (Tensor<1>, Tensor<1>) {
        let device = x.device();
        if !training {
            return (
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
            );
        }
        let c = self.channels();
        let flat = x.clone().swap_dims(0, 1).reshape([c as i64, -1]);
        let mean = flat.clone().mean_dim(1).reshape([c]);
        let var = (flat - mean.clone().reshape([c, 1]))
            .square()
            .mean_dim(1)
            .reshape([c]);
        let m = self.momentum;
        let update = |state: &RunningState<Tensor<1>>, batch: &Tensor<1>| {
            let old = state.value_sync().to_device(&device);
            state.update((old * (1.0 - m) + batch.clone().detach() * m).detach());
        };
        update(&self.running_mean, &mean);
        update(&self.running_var, &var);
        (mean, var)
    }

    /// The forward map with batch statistics (`training`) or running averages.
    fn apply<const D: usize>(
        &self,
        x: Tensor<D>,
        training: bool,
    ) -> Result<(Tensor<D>, Tensor<1>)> {
        let c = self.channels();
        check_channels("BatchNormFlow", &x, c)?;
        let (mean, var) = self.statistics(&x, training);
        let log_std = (var + self.epsilon).log() * 0.5;
        let log_scale = self.log_gamma.val() - log_std;
        let logdet = log_scale.clone().sum() * positions(&x) as f64;
        let n = x.dims()[0];
        let y = (x - mean.reshape(channel_shape::<D>(c)))
            * log_scale.exp().reshape(channel_shape::<D>(c))
            + self.beta.val().reshape(channel_shape::<D>(c));
        Ok((y, logdet.expand([n])))
    }
}

impl<const D: usize> Flow<D> for BatchNormFlow {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        let training = self.is_training(&x);
        self.apply(x, training)
    }

    /// As a training step's forward pass (batch statistics, running averages updated) on any
    /// device: initialisation runs without autodiff.
    fn data_init(self, x: Tensor<D>, _: Cond) -> Result<(Self, Tensor<D>)> {
        let (y, _) = self.apply(x, true)?;
        Ok((self, y))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        let c = self.channels();
        check_channels("BatchNormFlow", &y, c)?;
        let device = y.device();
        let mean = self.running_mean.value().to_device(&device);
        let var = self.running_var.value().to_device(&device);
        let log_scale = self.log_gamma.val() - (var + self.epsilon).log() * 0.5;
        Ok((y - self.beta.val().reshape(channel_shape::<D>(c)))
            * log_scale.neg().exp().reshape(channel_shape::<D>(c))
            + mean.reshape(channel_shape::<D>(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    /// A layer with non-trivial running statistics and affine parameters.
    fn trained(device: &Device) -> BatchNormFlow {
        let layer = BatchNormFlowConfig::new(4)
            .with_momentum(1.0)
            .init(&device.clone().autodiff());
        let x = randn([8, 4, 3, 3], &device.clone().autodiff()) * 2.0 + 1.0;
        let _ = Flow::<4>::forward(&layer, x, None).unwrap();
        perturb(layer.valid(), 0.4, 3)
    }

    #[test]
    fn evaluation_mode_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        let layer = trained(&dev);
        check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
        check_flow(&layer, randn([3, 4], &dev), None);
    }

    #[test]
    fn training_mode_uses_batch_statistics_and_updates_running_ones() {
        let ad = ad();
        let layer = BatchNormFlowConfig::new(3).with_momentum(1.0).init(&ad);
        let x = randn([16, 3, 2, 2], &ad) * 3.0 - 2.0;
        let (y, logdet_train) = layer.forward(x.clone(), None).unwrap();
        // Normalised by the batch: zero mean, unit variance per channel.
        let flat = y.clone().swap_dims(0, 1).reshape([3, -1]);
        to_vec(flat.clone().mean_dim(1))
            .iter()
            .for_each(|m| assert!(m.abs() < 1e-4));
        to_vec(flat.var_bias(1))
            .iter()
            .for_each(|v| assert!((v - 1.0).abs() < 1e-3));
        // With momentum 1 the running statistics are now the batch's, so evaluation mode must
        // reproduce the training output and log-det, and invert it.
        let eval = layer.valid();
        let x = x.inner();
        let (y_eval, logdet_eval) = eval.forward(x.clone(), None).unwrap();
        assert!(max_abs_diff(&y.inner(), &y_eval) < 1e-4);
        assert!(max_abs_diff(&logdet_train.inner(), &logdet_eval) < 1e-3);
        assert!(max_abs_diff(&eval.inverse(y_eval, None).unwrap(), &x) < 1e-4);
        check_gradients(
            BatchNormFlowConfig::new(3).init(&ad),
            randn([4, 3, 2, 2], &ad),
            None,
        );
    }
}
