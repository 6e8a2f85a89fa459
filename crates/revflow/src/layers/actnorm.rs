//! ActNorm (Glow §3.1): a per-channel affine map `y = (x + b) · exp(log_s)` whose parameters
//! are set from the first batch so that `y` has zero mean and unit variance per channel.
//! `log|det J| = positions · Σ_c log_s_c` (positions = H·W for images, 1 for vectors).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{FlowError, Result};
use crate::flow::{channel_shape, check_channels, positions, to_f32, Cond, Flow};

/// Configuration of an [`ActNorm`] layer.
#[derive(Debug, Clone)]
pub struct ActNormConfig {
    /// Number of channels (images) or features (vectors).
    pub channels: usize,
}

impl ActNormConfig {
    pub fn new(channels: usize) -> Self {
        Self { channels }
    }

    /// An uninitialised ActNorm (identity until [`Flow::data_init`] runs).
    pub fn init(&self, device: &Device) -> ActNorm {
        let c = self.channels;
        ActNorm {
            log_scale: Param::from_tensor(Tensor::zeros([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            initialized: Param::from_tensor(Tensor::zeros([1], device)).set_require_grad(false),
        }
    }
}

#[derive(Module, Debug)]
pub struct ActNorm {
    pub log_scale: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    /// 1 once data-dependent initialisation has run; saved with the weights so that a loaded
    /// model is not re-initialised.
    pub initialized: Param<Tensor<1>>,
}

impl ActNorm {
    pub fn channels(&self) -> usize {
        self.bias.dims()[0]
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.val().into_scalar::<f32>() > 0.5
    }
}

impl<const D: usize> Flow<D> for ActNorm {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        let c = self.channels();
        check_channels("ActNorm", &x, c)?;
        let logdet = self.log_scale.val().sum() * positions(&x) as f64;
        let y = (x.clone() + self.bias.val().reshape(channel_shape::<D>(c)))
            * self.log_scale.val().exp().reshape(channel_shape::<D>(c));
        Ok((y, logdet.expand([x.dims()[0]])))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        let c = self.channels();
        check_channels("ActNorm", &y, c)?;
        Ok(y * self
            .log_scale
            .val()
            .neg()
            .exp()
            .reshape(channel_shape::<D>(c))
            - self.bias.val().reshape(channel_shape::<D>(c)))
    }

    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
        let layer = match self.is_initialized() {
            true => self,
            false => {
                let mut stats = ChannelStats::new(self.channels());
                stats.add(&x)?;
                self.init_from(&stats)?
            }
        };
        let (y, _) = layer.forward(x, cond)?;
        Ok((layer, y))
    }
}

impl ActNorm {
    /// The layer initialised from statistics of its input (unchanged if already initialised):
    /// bias −mean and scale 1/std per channel, so that the output is standardised.
    pub(crate) fn init_from(self, stats: &ChannelStats) -> Result<Self> {
        if self.is_initialized() {
            return Ok(self);
        }
        if stats.sum.len() != self.channels() {
            return Err(FlowError::shape(
                "ActNorm initialisation",
                format!("{} channels", self.channels()),
                stats.sum.len(),
            ));
        }
        if stats.count < 2.0 {
            return Err(FlowError::shape(
                "ActNorm initialisation",
                "at least 2 values per channel",
                format!("{} values", stats.count),
            ));
        }
        let (mean, std) = stats.mean_std();
        let device = self.bias.device();
        let vector = |v: Vec<f64>| {
            let v: Vec<f32> = v.into_iter().map(|v| v as f32).collect();
            Tensor::<1>::from_data(TensorData::new(v, [self.channels()]), &device)
        };
        let log_scale = vector(std.iter().map(|s| -(s + 1e-6).ln()).collect());
        let bias = vector(mean.iter().map(|m| -m).collect());
        // The new values must stay trainable like the old ones.
        let replace = |old: Tensor<1>, new: Tensor<1>| match old.is_require_grad() {
            true => new.require_grad(),
            false => new,
        };
        Ok(ActNorm {
            log_scale: self.log_scale.map(|old| replace(old, log_scale)),
            bias: self.bias.map(|old| replace(old, bias)),
            initialized: self.initialized.map(|t| t.ones_like()),
        })
    }
}

/// Per-channel sum and sum of squares of everything seen, in f64, so that statistics gathered
/// chunk by chunk equal those of the whole batch.
#[derive(Debug, Clone)]
pub(crate) struct ChannelStats {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    /// Values per channel.
    count: f64,
}

impl ChannelStats {
    pub(crate) fn new(channels: usize) -> Self {
        ChannelStats {
            sum: vec![0.0; channels],
            sum_sq: vec![0.0; channels],
            count: 0.0,
        }
    }

    /// Adds a batch `(N, C)` or `(N, C, H, W)`.
    pub(crate) fn add<const D: usize>(&mut self, x: &Tensor<D>) -> Result<()> {
        let c = self.sum.len();
        check_channels("ActNorm", x, c)?;
        let positions = positions(x);
        let values = to_f32(x)?;
        for (i, run) in values.chunks(positions.max(1)).enumerate() {
            let ch = i % c;
            let (sum, sum_sq) = run.iter().fold((0f64, 0f64), |(s, q), &v| {
                let v = v as f64;
                (s + v, q + v * v)
            });
            self.sum[ch] += sum;
            self.sum_sq[ch] += sum_sq;
        }
        self.count += (values.len() / c.max(1)) as f64;
        self.check_finite()
    }

    /// Adds a matrix with one row per position and one column per channel.
    pub(crate) fn add_rows(&mut self, rows: &[f32]) -> Result<()> {
        let c = self.sum.len();
        for row in rows.chunks_exact(c.max(1)) {
            for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(row) {
                let v = v as f64;
                *s += v;
                *q += v * v;
            }
        }
        self.count += (rows.len() / c.max(1)) as f64;
        self.check_finite()
    }

    fn check_finite(&self) -> Result<()> {
        match self.sum_sq.iter().all(|q| q.is_finite()) {
            true => Ok(()),
            false => Err(FlowError::value(
                "ActNorm initialisation",
                "input contains NaN or infinite values",
            )),
        }
    }

    /// Mean and (unbiased) standard deviation per channel.
    fn mean_std(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.count;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| {
                let mean = s / n;
                (mean, ((q - s * mean) / (n - 1.0)).max(0.0).sqrt())
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn data_init_standardises_each_channel() {
        let dev = device();
        let x = randn([8, 3, 4, 4], &dev) * 3.0 + 5.0;
        let (layer, y) = ActNormConfig::new(3).init(&dev).data_init(x, None).unwrap();
        assert!(layer.is_initialized());
        let flat = y.swap_dims(0, 1).reshape([3, -1]);
        let mean = to_vec(flat.clone().mean_dim(1));
        let var = to_vec(flat.var(1));
        mean.iter()
            .for_each(|m| assert!(m.abs() < 1e-4, "mean {m}"));
        var.iter()
            .for_each(|v| assert!((v - 1.0).abs() < 1e-3, "var {v}"));
    }

    #[test]
    fn initialised_layer_is_not_reinitialised() {
        let dev = device();
        let (layer, _) = ActNormConfig::new(2)
            .init(&dev)
            .data_init(randn([16, 2], &dev), None)
            .unwrap();
        let before = to_vec(layer.bias.val());
        let (layer, _) = layer.data_init(randn([16, 2], &dev) + 10.0, None).unwrap();
        assert_eq!(before, to_vec(layer.bias.val()));
    }

    #[test]
    fn inverts_and_logdet_matches_jacobian_for_images_and_vectors() {
        let dev = device();
        let layer = perturb(ActNormConfig::new(4).init(&dev), 0.5, 1);
        check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
        check_flow(&layer, randn([3, 4], &dev), None);
        check_gradients(
            ActNormConfig::new(4).init(&ad()),
            randn([2, 4, 3, 3], &ad()),
            None,
        );
    }

    #[test]
    fn initialised_parameters_stay_trainable() {
        let ad = ad();
        let (layer, _) = ActNormConfig::new(3)
            .init(&ad)
            .data_init(randn([8, 3, 2, 2], &ad), None)
            .unwrap();
        assert!(layer.log_scale.val().is_require_grad() && layer.bias.val().is_require_grad());
        check_gradients(layer, randn([4, 3, 2, 2], &ad), None);
    }

    #[test]
    fn rejects_wrong_channels_and_nan() {
        let dev = device();
        let layer = ActNormConfig::new(3).init(&dev);
        let err = Flow::<4>::forward(&layer, randn([2, 5, 4, 4], &dev), None).unwrap_err();
        assert!(err.to_string().contains("expected 3 channels"), "{err}");
        let nan = Tensor::<2>::from_floats([[f32::NAN, 1.0, 2.0], [0.0, 1.0, 2.0]], &dev);
        let err = layer.data_init(nan, None).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }
}
