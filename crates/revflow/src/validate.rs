//! Range checks for options and configuration fields, with one message shape everywhere:
//! "NAME must be a finite number > 0, found -1", so a person sees the valid range at once.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

use crate::error::{FlowError, Result};

/// A number an option or field may hold.
pub trait Number: Copy + PartialOrd + Display {
    /// How the message describes the kind: "a finite number", "an integer".
    const KIND: &'static str;
    /// NaN and ±∞ are never in range, whatever the bounds say.
    fn finite(self) -> bool {
        true
    }
}

impl Number for f64 {
    const KIND: &'static str = "a finite number";
    fn finite(self) -> bool {
        self.is_finite()
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(impl Number for $t { const KIND: &'static str = "an integer"; })*};
}
integer!(usize, u32, u64);

/// `value` must be finite and within `range` (`1..`, `1..=8`, [`above`]`(0.0)`, …);
/// otherwise a [`FlowError::Invalid`] naming `name` and the range.
pub fn in_range<T: Number>(name: &str, value: T, range: impl RangeBounds<T>) -> Result<()> {
    if value.finite() && range.contains(&value) {
        return Ok(());
    }
    Err(FlowError::Invalid {
        name: name.to_string(),
        expected: format!("{} {}", T::KIND, describe(&range))
            .trim_end()
            .to_string(),
        found: value.to_string(),
    })
}

/// The open range `(low, ∞)`: "> low".
pub fn above<T>(low: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(low), Bound::Unbounded)
}

/// The open range `(low, high)`.
pub fn between<T>(low: T, high: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(low), Bound::Excluded(high))
}

fn describe<T: Display>(range: &impl RangeBounds<T>) -> String {
    use Bound::*;
    match (range.start_bound(), range.end_bound()) {
        (Included(a), Unbounded) => format!("≥ {a}"),
        (Excluded(a), Unbounded) => format!("> {a}"),
        (Unbounded, Included(b)) => format!("≤ {b}"),
        (Unbounded, Excluded(b)) => format!("< {b}"),
        (Unbounded, Unbounded) => String::new(),
        (low, high) => {
            let (open, a) = match low {
                Included(a) => ('[', a),
                Excluded(a) => ('(', a),
                Unbounded => unreachable!("matched above"),
            };
            let (b, close) = match high {
                Included(b) => (b, ']'),
                Excluded(b) => (b, ')'),
                Unbounded => unreachable!("matched above"),
            };
            format!("in {open}{a}, {b}{close}")
        }
    }
}

/// Runs the checks of a part of a configuration, naming its fields `prefix.field`.
pub(crate) fn within(prefix: &str, checks: Result<()>) -> Result<()> {
    checks.map_err(|e| match e {
        FlowError::Invalid {
            name,
            expected,
            found,
        } => FlowError::Invalid {
            name: format!("{prefix}.{name}"),
            expected,
            found,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{GlowConfig, ModelConfig};
    use crate::training::{RunConfig, RunDir, TrainConfig};

    fn message(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn messages_name_the_value_the_range_and_what_was_found() {
        assert_eq!(
            message(in_range("--lr", -1.0, above(0.0))),
            "--lr must be a finite number > 0, found -1"
        );
        assert_eq!(
            message(in_range("--grad-clip", f64::INFINITY, above(0.0))),
            "--grad-clip must be a finite number > 0, found inf"
        );
        assert_eq!(
            message(in_range("wd", f64::NAN, 0.0..)),
            "wd must be a finite number ≥ 0, found NaN"
        );
        assert_eq!(
            message(in_range("n_bits", 9u32, 1..=8)),
            "n_bits must be an integer in [1, 8], found 9"
        );
        assert_eq!(
            message(in_range("alpha", 0.5, between(0.0, 0.5))),
            "alpha must be a finite number in (0, 0.5), found 0.5"
        );
        assert_eq!(
            message(in_range("steps", 0usize, 1..)),
            "steps must be an integer ≥ 1, found 0"
        );
        assert!(in_range("x", 0.25, between(0.0, 0.5)).is_ok());
        assert!(in_range("x", 8u32, 1..=8).is_ok());
        assert!(in_range("x", 0.0, 0.0..).is_ok());
        assert!(in_range("x", f64::NEG_INFINITY, ..0.0).is_err());
        assert_eq!(
            message(in_range("--alphas", f64::NAN, ..)),
            "--alphas must be a finite number, found NaN"
        );
    }

    fn run_config() -> RunConfig {
        RunConfig {
            model: ModelConfig::Glow(GlowConfig::default()),
            train: TrainConfig::default(),
            data: "digits".into(),
            data_dir: None,
            data_samples: 0,
            data_resize: None,
            class_names: Vec::new(),
        }
    }

    #[test]
    fn run_configs_name_the_field_of_config_json() {
        let bad = |edit: fn(&mut RunConfig)| {
            let mut c = run_config();
            edit(&mut c);
            message(c.validate())
        };
        let positive = "must be a finite number > 0, found";
        assert_eq!(
            bad(|c| c.train.lr = -1.0),
            format!("train.lr {positive} -1")
        );
        assert_eq!(
            bad(|c| c.train.grad_clip = f64::INFINITY),
            format!("train.grad_clip {positive} inf")
        );
        assert_eq!(
            bad(|c| c.train.grad_clip = 0.0),
            format!("train.grad_clip {positive} 0")
        );
        assert_eq!(
            bad(|c| c.train.weight_decay = f64::NAN),
            "train.weight_decay must be a finite number ≥ 0, found NaN"
        );
        for (edit, field) in [
            (
                (|c: &mut RunConfig| c.train.steps = 0) as fn(&mut RunConfig),
                "train.steps",
            ),
            (|c| c.train.batch_size = 0, "train.batch_size"),
            (|c| c.train.eval_every = 0, "train.eval_every"),
            (|c| c.train.checkpoint_every = 0, "train.checkpoint_every"),
            (|c| c.train.init_samples = 0, "train.init_samples"),
        ] {
            assert_eq!(
                bad(edit),
                format!("{field} must be an integer ≥ 1, found 0")
            );
        }
        assert_eq!(
            bad(|c| c.model = ModelConfig::Glow(GlowConfig {
                n_bits: 99,
                ..Default::default()
            })),
            "model.n_bits must be an integer in [1, 8], found 99"
        );
        assert!(bad(|c| c.data_resize = Some((0, 8))).starts_with("data_resize width must be"));
        assert!(bad(|c| {
            c.model = ModelConfig::Glow(GlowConfig {
                classes: 3,
                ..Default::default()
            })
        })
        .contains("3 classes but class_names lists 0"));
        let not_utf8 = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"d\xff");
        let mut c = run_config();
        c.data_dir = Some(not_utf8.into());
        assert!(message(c.validate()).contains("is not valid UTF-8"));
        run_config().validate().unwrap();
        // Serialised, non-finite numbers would become `null`: validation keeps them out.
        assert!(serde_json::to_string(&run_config())
            .unwrap()
            .contains("\"grad_clip\":50.0"));
    }

    #[test]
    fn config_json_is_validated_when_read_and_unknown_fields_refused() {
        let root = std::env::temp_dir().join(format!("revflow-validate-{}", std::process::id()));
        let dir = RunDir::new(&root);
        dir.write_config(&run_config()).unwrap();
        assert_eq!(dir.read_config().unwrap(), run_config());
        let text = std::fs::read_to_string(dir.config()).unwrap();
        for (edited, problem) in [
            (
                text.replace("\"n_bits\": 8", "\"n_bits\": 0"),
                "model.n_bits must be an integer in [1, 8], found 0",
            ),
            (
                text.replacen('{', "{\"colour\": 1,", 1),
                "unknown field `colour`",
            ),
            (
                text.replace("\"lr\": 0.001", "\"lr\": 0.001, \"lrr\": 1"),
                "unknown field `lrr`",
            ),
        ] {
            std::fs::write(dir.config(), edited).unwrap();
            let err = message(dir.read_config().map(|_| ()));
            assert!(
                err.contains("config.json") && err.contains(problem),
                "{err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_resume_may_change_only_the_schedule() {
        let saved = run_config();
        let mut asked = saved.clone();
        asked.train.steps = 9000;
        asked.train.lr = 1e-4;
        asked.train.warmup = 0;
        asked.train.grad_clip = 1.0;
        asked.train.weight_decay = 0.1;
        asked.train.eval_every = 7;
        asked.train.checkpoint_every = 3;
        saved.check_resume(&asked).unwrap();
        asked.train.batch_size = 8;
        assert!(message(saved.check_resume(&asked)).starts_with(
            "train.batch_size 8 contradicts the run's train.batch_size 64; a resume may change only train.steps, train.lr"
        ));
        let mut asked = saved.clone();
        asked.data = "moons".into();
        assert!(message(saved.check_resume(&asked))
            .starts_with("data moons contradicts the run's data digits"));
        asked.model = ModelConfig::Nice(Default::default());
        assert!(message(saved.check_resume(&asked))
            .starts_with("model nice contradicts the run's model glow"));
    }

    #[test]
    fn optimizer_states_burn_would_panic_on_are_refused() {
        use burn::tensor::{Bytes, DType, Device};
        let device = Device::flex().autodiff();
        let config = ModelConfig::Vector(crate::models::VectorFlowConfig {
            steps: 1,
            hidden: 4,
            ..Default::default()
        });
        let model = crate::training::for_training(config.init(&device).unwrap());
        let pack = |id: Option<u64>, shape: Vec<usize>| {
            let bytes = Bytes::from_bytes_vec(vec![0; 4 * shape.iter().product::<usize>()]);
            let t = burn_pack::Tensor::new("7.moment_1".into(), DType::F32, shape, id, bytes);
            burn_pack::Writer::new(vec![t])
                .into_bytes()
                .unwrap()
                .to_vec()
        };
        let check = |bytes: &[u8]| crate::training::check_optimizer(bytes, &model).unwrap_err();
        assert_eq!(check(&pack(None, vec![2])), "7.moment_1 names no parameter");
        assert_eq!(
            check(&pack(Some(7), vec![2])),
            "7.moment_1 belongs to no parameter of the model"
        );
        assert!(!check(b"not a burnpack file").is_empty());
        let nan = {
            let bytes = Bytes::from_bytes_vec(f32::NAN.to_le_bytes().repeat(2));
            let t =
                burn_pack::Tensor::new("7.moment_2".into(), DType::F32, vec![2], Some(7), bytes);
            burn_pack::Writer::new(vec![t])
                .into_bytes()
                .unwrap()
                .to_vec()
        };
        assert_eq!(check(&nan), "7.moment_2 holds NaN or infinite values");
        // The state of the model itself fits.
        let empty = burn::optim::AdamConfig::new().init().into_bytes().unwrap();
        crate::training::check_optimizer(&empty, &model).unwrap();
    }

    #[test]
    fn within_prefixes_field_names_only() {
        let e = within("train", in_range("lr", 0.0, above(0.0)));
        assert_eq!(message(e), "train.lr must be a finite number > 0, found 0");
        let other = within("train", Err(FlowError::Config("x".into())));
        assert_eq!(message(other), "invalid configuration: x");
    }
}
