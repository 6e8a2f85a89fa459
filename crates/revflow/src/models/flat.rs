//! Flows on flat vectors: NICE on flattened images (NICE §5: additive couplings with MLPs on
//! alternating halves, a diagonal scaling layer, a logistic prior) and RealNVP/Glow-style flows
//! for 2-D and tabular data (ActNorm → invertible linear → affine coupling, Gaussian prior),
//! and MAF/IAF (ActNorm → permutation → autoregressive layer).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::distributions::{BaseDistribution, GaussianConfig, Logistic, Prior};
use crate::error::{FlowError, Result};
use crate::flow::{Cond, Flow, Sequential};
use crate::layers::{
    ActNormConfig, Autoregressive, CouplingConfig, Dequantize, DiagScale, Layer, Mask,
};
use crate::nets::{MadeConfig, Mlp, MlpConfig};
use crate::noise::Standard;
use crate::transforms::Transform;

use super::{Context, NiceConfig, Noise, Permutation, VectorFlowConfig};

#[derive(Module, Debug)]
pub struct FlatFlow {
    pub flow: Sequential<Layer<Mlp>>,
    pub prior: Prior,
    #[module(skip)]
    pub dims: usize,
    /// Bits kept when the inputs are 8-bit pixels (NICE on images); `None` for real vectors.
    #[module(skip)]
    pub n_bits: Option<u32>,
    /// A conditional flow's context: `cond` holds raw context rows, standardised here.
    #[module(skip)]
    pub context: Option<Context>,
}

impl FlatFlow {
    /// The conditioning input the layers see: a context standardised, a one-hot as given.
    fn condition(&self, cond: Cond) -> Result<Option<Tensor<2>>> {
        match (&self.context, cond) {
            (Some(context), Some(c)) => context.standardize(c).map(Some),
            (Some(context), None) => Err(FlowError::Config(format!(
                "this model is conditioned on a context ({}); give one per sample",
                context.columns.join(", ")
            ))),
            (None, c) => Ok(c.cloned()),
        }
    }

    fn dequantize(&self) -> Option<Dequantize> {
        self.n_bits.map(|n_bits| Dequantize {
            n_bits,
            centered: false,
        })
    }

    /// Inputs → the flow's input and the preprocessing log-det; real vectors take no noise.
    fn preprocess(&self, x: Tensor<2>, noise: Noise) -> Result<(Tensor<2>, Tensor<1>)> {
        let [n, d] = x.dims();
        if d != self.dims {
            return Err(FlowError::shape(
                "model",
                format!("{} values per sample", self.dims),
                format!("{d} values per sample"),
            ));
        }
        match self.dequantize() {
            Some(dq) => dq.dequantize(x, noise.cloned()),
            None => Ok((x.clone(), Tensor::zeros([n], &x.device()))),
        }
    }

    fn postprocess(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        match self.dequantize() {
            Some(dq) => dq.inverse(x, None),
            None => Ok(x),
        }
    }

    pub fn log_prob(
        &self,
        x: Tensor<2>,
        cond: Cond,
        noise: Noise,
    ) -> Result<(Tensor<1>, Option<Tensor<2>>)> {
        let cond = self.condition(cond)?;
        let cond = cond.as_ref();
        let (x, pre) = self.preprocess(x, noise)?;
        let (z, logdet) = self.flow.forward(x, cond)?;
        Ok((pre + logdet + self.prior.log_prob(z, cond)?, None))
    }

    pub fn encode(&self, x: Tensor<2>, cond: Cond) -> Result<Vec<Tensor<2>>> {
        let cond = self.condition(cond)?;
        let cond = cond.as_ref();
        let (x, _) = self.preprocess(x, None)?;
        Ok(vec![self.flow.forward(x, cond)?.0])
    }

    /// `ε`, the latent standardised under the prior (one level).
    pub fn standardize(&self, x: Tensor<2>, cond: Cond, noise: Noise) -> Result<Vec<Tensor<2>>> {
        let cond = self.condition(cond)?;
        let cond = cond.as_ref();
        let (x, _) = self.preprocess(x, noise)?;
        let (z, _) = self.flow.forward(x, cond)?;
        Ok(vec![self.prior.standardize(z, cond)?])
    }

    /// Inverse of [`standardize`](Self::standardize).
    pub fn destandardize(&self, eps: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
        match eps {
            [e] if e.dims()[1] == self.dims => {
                let cond = self.condition(cond)?;
                let z = self.prior.destandardize(e.clone(), cond.as_ref())?;
                self.postprocess(self.flow.inverse(z, cond.as_ref())?)
            }
            _ => self.decode(eps, cond),
        }
    }

    pub fn standard(&self) -> Standard {
        BaseDistribution::<2>::standard(&self.prior)
    }

    pub fn decode(&self, zs: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
        match zs {
            [z] if z.dims()[1] == self.dims => {
                let cond = self.condition(cond)?;
                self.postprocess(self.flow.inverse(z.clone(), cond.as_ref())?)
            }
            _ => Err(FlowError::shape(
                "decode",
                format!("one latent of {} values", self.dims),
                zs.iter().map(|z| z.dims()).collect::<Vec<_>>(),
            )),
        }
    }

    pub fn data_init(self, x: Tensor<2>, cond: Cond, noise: Noise) -> Result<Self> {
        let cond = self.condition(cond)?;
        let (x, _) = self.preprocess(x, noise)?;
        let (flow, _) = self.flow.data_init(x, cond.as_ref())?;
        Ok(FlatFlow { flow, ..self })
    }
}

fn mlp_coupling(
    dims: usize,
    flip: bool,
    kind: Transform,
    hidden: usize,
    layers: usize,
    classes: usize,
    device: &Device,
) -> Result<Layer<Mlp>> {
    // Alternating features (NICE's odd/even partition) work for any dimension ≥ 2.
    let coupling = CouplingConfig::new(dims, Mask::Checkerboard { flip }, kind);
    let net = MlpConfig::new(
        coupling.net_inputs(),
        coupling.net_outputs(),
        hidden,
        layers,
    )
    .with_classes(classes)
    .init(device);
    Ok(coupling.init(net, device)?.into())
}

/// Builds NICE; refuses what [`NiceConfig::validate`] refuses.
pub fn nice(config: &NiceConfig, device: &Device) -> Result<FlatFlow> {
    config.validate()?;
    let dims: usize = config.shape.iter().product();
    let mut layers = Vec::with_capacity(config.couplings + 1);
    for i in 0..config.couplings {
        layers.push(mlp_coupling(
            dims,
            i % 2 == 1,
            Transform::Additive,
            config.hidden,
            config.layers,
            0,
            device,
        )?);
    }
    layers.push(DiagScale::new(dims, device).into());
    Ok(FlatFlow {
        flow: Sequential::new(layers),
        prior: Prior::Logistic(Logistic::new(&[dims])),
        dims,
        n_bits: Some(config.n_bits),
        context: None,
    })
}

/// Builds a flow for real vectors; refuses what [`VectorFlowConfig::validate`] refuses.
pub fn vector(config: &VectorFlowConfig, device: &Device) -> Result<FlatFlow> {
    config.validate()?;
    let dims = config.dims;
    let kind = config.transform();
    let mut layers = Vec::with_capacity(3 * config.steps);
    for k in 0..config.steps {
        layers.push(ActNormConfig::new(dims).init(device).into());
        let seed = config.seed.wrapping_add(k as u64);
        layers.push(config.permutation.layer(dims, seed, device));
        if let Some(direction) = config.flow.direction() {
            let made = MadeConfig::new(dims, kind.params(), config.hidden, config.layers)
                .with_context(config.conditions())
                .with_residual(config.residual)
                .with_ordering(config.order, seed)
                .init(device);
            layers.push(Autoregressive::new(made, kind, direction)?.into());
            continue;
        }
        // A learned linear map mixes freely, so the halves alternate; a permutation does
        // the alternating itself (NICE's swap), so the split stays.
        let learned = matches!(
            config.permutation,
            Permutation::Invconv | Permutation::InvconvLu
        );
        layers.push(mlp_coupling(
            dims,
            learned && k % 2 == 1,
            kind,
            config.hidden,
            config.layers,
            config.conditions(),
            device,
        )?);
    }
    Ok(FlatFlow {
        flow: Sequential::new(layers),
        prior: Prior::Gaussian(
            GaussianConfig::standard(&[dims])
                .with_classes(config.conditions())
                .init(device),
        ),
        dims,
        n_bits: None,
        context: config.context.clone(),
    })
}
