//! The one flow abstraction and its composition.
//!
//! A flow layer is a bijection `f` with a tractable Jacobian. `forward` maps data-side `x` to
//! latent-side `y = f(x)` together with `log |det ∂f/∂x|` for each sample; `inverse` maps back.
//! Tensors are either vectors `(N, D)` or images `(N, C, H, W)`; the channel axis is always 1.
//!
//! A conditional model passes its conditioning input as `cond`, an `(N, K)` tensor: a one-hot
//! class, or a context vector (standardised by the model, see
//! [`Context`](crate::models::Context)). Layers that do not use it ignore it, so conditioning
//! needs no second trait.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::{FlowError, Result};

/// Optional conditioning input `(N, K)`: one-hot class labels or a context vector.
pub type Cond<'a> = Option<&'a Tensor<2>>;

/// An invertible layer on rank-`D` tensors (`D` = 2 for vectors, 4 for images).
pub trait Flow<const D: usize> {
    /// `x → (f(x), log|det J_f(x)|)`, the log-determinant per sample, shape `(N)`.
    fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<(Tensor<D>, Tensor<1>)>;

    /// `y → f⁻¹(y)`.
    fn inverse(&self, y: Tensor<D>, cond: Cond) -> Result<Tensor<D>>;

    /// Data-dependent initialisation (ActNorm): learn from the batch `x`, then pass it on.
    /// Returns the initialised layer and its output on `x`. Layers without such a rule just
    /// run forward.
    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)>
    where
        Self: Sized,
    {
        let (y, _) = self.forward(x, cond)?;
        Ok((self, y))
    }
}

/// Layers applied one after another: `f = f_K ∘ … ∘ f_1`, log-det the sum of theirs.
#[derive(Module, Debug)]
pub struct Sequential<L: Module> {
    pub layers: Vec<L>,
}

impl<L: Module> Sequential<L> {
    pub fn new(layers: Vec<L>) -> Self {
        Self { layers }
    }
}

impl<const D: usize, L: Module + Flow<D>> Flow<D> for Sequential<L> {
    fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        let mut logdet = Tensor::zeros([x.dims()[0]], &x.device());
        let mut h = x;
        for layer in &self.layers {
            let (y, ld) = layer.forward(h, cond)?;
            h = y;
            logdet = logdet + ld;
        }
        Ok((h, logdet))
    }

    fn inverse(&self, y: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        self.layers
            .iter()
            .rev()
            .try_fold(y, |h, layer| layer.inverse(h, cond))
    }

    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut h = x;
        for layer in self.layers {
            let (layer, y) = layer.data_init(h, cond)?;
            layers.push(layer);
            h = y;
        }
        Ok((Self { layers }, h))
    }
}

// ---- shape helpers shared by the layers -------------------------------------------------

/// Samples per chunk in data-dependent initialisation: the coupling networks' wide hidden
/// tensors exist for one chunk at a time, whatever the number of initialisation samples.
pub(crate) const INIT_CHUNK: usize = 16;

/// `f` applied to consecutive chunks of at most `size` samples of `x` (and of `cond`).
pub(crate) fn in_chunks<const D: usize, T>(
    x: &Tensor<D>,
    cond: Cond,
    size: usize,
    mut f: impl FnMut(Tensor<D>, Cond) -> Result<T>,
) -> Result<Vec<T>> {
    let n = x.dims()[0];
    (0..n)
        .step_by(size.max(1))
        .map(|start| {
            let len = size.max(1).min(n - start);
            let part = cond.map(|c| c.clone().narrow(0, start, len));
            f(x.clone().narrow(0, start, len), part.as_ref())
        })
        .collect()
}

/// Checks that `x` is `(N, C)` or `(N, C, H, W)` with `C == channels`.
pub(crate) fn check_channels<const D: usize>(
    layer: &'static str,
    x: &Tensor<D>,
    channels: usize,
) -> Result<()> {
    let dims = x.dims();
    if D != 2 && D != 4 {
        return Err(FlowError::shape(
            layer,
            "vectors (N, D) or images (N, C, H, W)",
            dims,
        ));
    }
    if dims[1] != channels {
        let what = if D == 4 { "channels" } else { "features" };
        return Err(FlowError::shape(
            layer,
            format!("{channels} {what} (axis 1)"),
            dims,
        ));
    }
    Ok(())
}

/// Shape `[1, c, 1, …]` that broadcasts a per-channel vector against a rank-`D` tensor.
pub(crate) fn channel_shape<const D: usize>(c: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[1] = c;
    shape
}

/// Number of positions each channel value is applied to: `H·W` for images, 1 for vectors.
pub(crate) fn positions<const D: usize>(x: &Tensor<D>) -> usize {
    x.dims()[2..].iter().product()
}

/// Sum over every axis but the batch axis: `(N, …) → (N)`.
pub(crate) fn sum_per_sample<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.dims()[0];
    t.reshape([n as i64, -1]).sum_dim(1).reshape([n])
}

/// Reinterprets a tensor whose rank is known at run time to equal `B`.
pub(crate) fn rank<const A: usize, const B: usize>(t: Tensor<A>) -> Tensor<B> {
    let dims: [usize; B] = t.dims()[..]
        .try_into()
        .expect("rank() called with mismatched ranks");
    t.reshape(dims)
}

/// Refuses an inverse's output that overflowed to NaN or ±∞ (latents far outside what the model
/// produces: a huge temperature, an edited latent file), which would otherwise be written as
/// black pixels or NaN rows with success.
pub(crate) fn check_finite<const D: usize>(layer: &'static str, x: &Tensor<D>) -> Result<()> {
    match x.clone().is_finite().all().into_scalar::<bool>() {
        true => Ok(()),
        false => Err(FlowError::value(
            layer,
            "the inverse gave NaN or infinite values: the latents lie far outside what the model produces (a temperature or a latent file out of range?)",
        )),
    }
}

/// Host copy of a float tensor's values as f32 (without a copy through another type).
pub fn to_f32<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| FlowError::value("tensor", format!("not readable as f32 values: {e:?}")))
}

/// Host copy of a tensor's values as f64.
pub(crate) fn to_f64<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().try_to_vec_as::<f64>().expect("float tensor")
}
