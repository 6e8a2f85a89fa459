//! Typed errors. Every message names the layer or file and what was expected versus found,
//! so the command line can print it as one line.

use std::path::PathBuf;

/// Everything that can go wrong inside revflow.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The input tensor does not have the shape a layer needs.
    #[error("{layer}: expected {expected}, found {found}")]
    Shape {
        layer: &'static str,
        expected: String,
        found: String,
    },
    /// The input holds values the layer cannot accept (NaN, out of range).
    #[error("{layer}: {problem}")]
    Value {
        layer: &'static str,
        problem: String,
    },
    /// A number outside its valid range: an option, a field of config.json, an argument.
    /// `name` is the option or field (`train.lr` in a configuration), `expected` the range.
    #[error("{name} must be {expected}, found {found}")]
    Invalid {
        name: String,
        expected: String,
        found: String,
    },
    /// A resumed run asked for a value of config.json that a resume cannot change (a field
    /// other than [`RESUMABLE`](crate::training::RESUMABLE)); `field` as `model.hidden`.
    #[error(
        "{field} {found} contradicts the run's {field} {saved}; a resume may change only {}",
        crate::training::RESUMABLE.map(|f| format!("train.{f}")).join(", ")
    )]
    Resume {
        field: String,
        found: String,
        saved: String,
    },
    /// A configuration that cannot describe a valid flow.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A weights file that cannot be read, or that does not match the model.
    #[error("weights file {path}: {problem}")]
    Weights { path: PathBuf, problem: String },
    /// A data set that cannot be found, read or understood.
    #[error("{source_name}: {problem}")]
    Data {
        /// The file, directory or data-set name at fault.
        source_name: String,
        problem: String,
    },
    /// Training cannot go on (non-finite loss, a run directory in an unexpected state).
    #[error("{0}")]
    Training(String),
    /// Training was asked to stop (Ctrl-C, SIGTERM) and stopped at a checkpoint.
    #[error("interrupted at step {step} of {steps}; the run in {dir} is saved at that step: continue it with `revflow train --resume --out {dir}`")]
    Interrupted {
        step: usize,
        steps: usize,
        dir: PathBuf,
    },
    /// A chart or animation that could not be drawn.
    #[error("{0}")]
    Picture(String),
    /// A request that would need more memory than the limit (see [`limits`](crate::limits)).
    #[error(
        "{what} would need about {}, above the memory limit of {} (set {} to change it)",
        crate::limits::human(*needs),
        crate::limits::human(*limit as f64),
        crate::limits::ENV
    )]
    Memory {
        what: String,
        needs: f64,
        limit: u64,
    },
    /// Input/output failure on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Result type used across revflow.
pub type Result<T> = std::result::Result<T, FlowError>;

impl FlowError {
    pub(crate) fn shape(
        layer: &'static str,
        expected: impl Into<String>,
        found: impl std::fmt::Debug,
    ) -> Self {
        FlowError::Shape {
            layer,
            expected: expected.into(),
            found: format!("{found:?}"),
        }
    }

    pub(crate) fn data(source_name: impl std::fmt::Display, problem: impl Into<String>) -> Self {
        FlowError::Data {
            source_name: source_name.to_string(),
            problem: problem.into(),
        }
    }

    pub(crate) fn value(layer: &'static str, problem: impl Into<String>) -> Self {
        FlowError::Value {
            layer,
            problem: problem.into(),
        }
    }
}
