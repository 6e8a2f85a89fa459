//! A real-valued context vector `c` for conditional densities `p(x | c)`.
//!
//! The context enters a model the way a one-hot class does (the `cond` input of every layer
//! and of the prior), standardised with the training set's mean and standard deviation so that
//! its scale does not matter. The statistics are part of the model's configuration, so that
//! scoring and sampling later standardise the same way; front ends pass raw values.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::error::{FlowError, Result};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The context's columns, in order.
    pub columns: Vec<String>,
    /// Training-set mean of each column.
    pub mean: Vec<f64>,
    /// Training-set standard deviation of each column (1 for a constant column).
    pub std: Vec<f64>,
}

impl Context {
    /// Statistics of `values`, rows of `columns.len()` raw context values.
    pub fn fit(columns: Vec<String>, values: &[f32]) -> Result<Self> {
        let k = columns.len();
        if k == 0 || values.is_empty() || !values.len().is_multiple_of(k) {
            return Err(FlowError::Config(format!(
                "a context needs at least one column and one row, got {k} column(s) and {} value(s)",
                values.len()
            )));
        }
        let n = (values.len() / k) as f64;
        let column = |j: usize| values.iter().skip(j).step_by(k).map(|v| *v as f64);
        let mean: Vec<f64> = (0..k).map(|j| column(j).sum::<f64>() / n).collect();
        let std = (0..k)
            .map(|j| {
                let var = column(j).map(|v| (v - mean[j]).powi(2)).sum::<f64>() / n;
                if var > 0.0 && var.is_finite() {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Context { columns, mean, std })
    }

    /// The statistics of a data set's context columns, if it has any.
    pub fn of_data(data: &Data) -> Result<Option<Self>> {
        match data {
            Data::Vectors(s) if !s.context_columns.is_empty() => {
                Self::fit(s.context_columns.clone(), &s.context).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Values per context vector.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The statistics are usable: as many as columns, finite, positive deviations.
    pub fn validate(&self) -> Result<()> {
        let k = self.len();
        let finite = self.mean.iter().chain(&self.std).all(|v| v.is_finite());
        if k == 0
            || self.mean.len() != k
            || self.std.len() != k
            || !finite
            || self.std.iter().any(|s| *s <= 0.0)
        {
            return Err(FlowError::Config(format!(
                "the context needs one finite mean and one positive standard deviation per column ({k} columns)"
            )));
        }
        Ok(())
    }

    /// Raw context rows `(N, K)` → standardised, after checking the width.
    pub fn standardize(&self, c: &Tensor<2>) -> Result<Tensor<2>> {
        let [_, k] = c.dims();
        if k != self.len() {
            return Err(FlowError::shape(
                "context",
                format!(
                    "{} value(s) per row ({})",
                    self.len(),
                    self.columns.join(", ")
                ),
                c.dims(),
            ));
        }
        let device = c.device();
        let row = |v: &[f64]| {
            Tensor::<1>::from_floats(
                v.iter().map(|x| *x as f32).collect::<Vec<_>>().as_slice(),
                &device,
            )
            .reshape([1, k])
        };
        Ok((c.clone() - row(&self.mean)) / row(&self.std))
    }

    /// `"v1,v2,…"` (as `--context` takes it) → one raw context vector.
    pub fn parse(&self, text: &str) -> Result<Vec<f32>> {
        let cells: Vec<&str> = text.split(',').map(str::trim).collect();
        if cells.len() != self.len() {
            return Err(FlowError::Config(format!(
                "--context: expected {} comma-separated value(s) ({}), got {} in '{text}'",
                self.len(),
                self.columns.join(", "),
                cells.len()
            )));
        }
        cells
            .iter()
            .zip(&self.columns)
            .map(|(cell, name)| match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(FlowError::Config(format!(
                    "--context: '{cell}' for {name} is not a finite number"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn fits_standardises_and_parses() {
        let dev = device();
        let ctx = Context::fit(names(2), &[1.0, 5.0, 3.0, 5.0]).unwrap();
        assert_eq!(ctx.mean, vec![2.0, 5.0]);
        // A constant column keeps deviation 1 instead of dividing by 0.
        assert_eq!(ctx.std, vec![1.0, 1.0]);
        ctx.validate().unwrap();
        let c = Tensor::<2>::from_floats([[1.0, 5.0], [3.0, 7.0]], &dev);
        assert_eq!(
            to_vec(ctx.standardize(&c).unwrap()),
            vec![-1.0, 0.0, 1.0, 2.0]
        );
        assert_eq!(ctx.parse(" 1.5, -2").unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn bad_context_is_a_clear_error() {
        let dev = device();
        let ctx = Context::fit(names(2), &[1.0, 5.0, 3.0, 6.0]).unwrap();
        let err = ctx.parse("1").unwrap_err().to_string();
        assert!(
            err.contains("expected 2 comma-separated value(s) (c0, c1), got 1"),
            "{err}"
        );
        let err = ctx.parse("1,abc").unwrap_err().to_string();
        assert!(err.contains("'abc' for c1 is not a finite number"), "{err}");
        let err = ctx.parse("1,inf").unwrap_err().to_string();
        assert!(err.contains("not a finite number"), "{err}");
        let err = ctx
            .standardize(&randn([3, 3], &dev))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 value(s) per row (c0, c1)"), "{err}");
        assert!(Context::fit(names(2), &[1.0, 2.0, 3.0]).is_err());
        let bad = Context {
            std: vec![1.0, 0.0],
            ..ctx
        };
        assert!(bad.validate().is_err());
    }
}
