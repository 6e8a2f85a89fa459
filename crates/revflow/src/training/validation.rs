//! What a run's configuration and files must satisfy: every field in range, a resume that
//! changes only the schedule, and an optimizer state that fits the model. Errors name fields
//! as in config.json (`model.n_bits`, `train.lr`); front ends may rename them.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};
use safetensors::Dtype;
use serde_json::Value;

use super::{RunConfig, RunDir, TrainConfig, TrainState};
use crate::error::{FlowError, Result};
use crate::models::{Model, ModelConfig};
use crate::validate::{above, in_range, within};

/// The [`TrainConfig`] fields a resumed run may change; the rest of config.json describes the
/// checkpoint's model and the data it was trained on.
pub const RESUMABLE: [&str; 7] = [
    "steps",
    "lr",
    "warmup",
    "grad_clip",
    "weight_decay",
    "eval_every",
    "checkpoint_every",
];

impl TrainConfig {
    /// Every field in range; errors name the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        in_range("steps", self.steps, 1..)?;
        in_range("batch_size", self.batch_size, 1..)?;
        // Batches are drawn from the sample index step × batch_size, which must not overflow.
        in_range("steps", self.steps, ..usize::MAX / self.batch_size)?;
        in_range("lr", self.lr, above(0.0))?;
        in_range("grad_clip", self.grad_clip, above(0.0))?;
        in_range("weight_decay", self.weight_decay, 0.0..)?;
        in_range("eval_every", self.eval_every, 1..)?;
        in_range("checkpoint_every", self.checkpoint_every, 1..)?;
        in_range("init_samples", self.init_samples, 1..)
    }
}

impl RunConfig {
    /// Every field in range, named as in config.json (`model.n_bits`, `train.lr`).
    pub fn validate(&self) -> Result<()> {
        within("model", self.model.validate())?;
        within("train", self.train.validate())?;
        if let Some((w, h)) = self.data_resize {
            in_range("data_resize width", w, 1..)?;
            in_range("data_resize height", h, 1..)?;
        }
        if let Some(dir) = self.data_dir.as_ref().filter(|d| d.to_str().is_none()) {
            return Err(FlowError::Config(format!(
                "data_dir {dir:?} is not valid UTF-8, which config.json cannot hold"
            )));
        }
        let classes = self.model.classes();
        if classes > 0 && classes != self.class_names.len() {
            return Err(FlowError::Config(format!(
                "the model has {classes} classes but class_names lists {}",
                self.class_names.len()
            )));
        }
        Ok(())
    }

    /// Refuses `requested`, this run's configuration as a resume asks for it, if it differs
    /// in anything but the [`RESUMABLE`] training fields: the checkpoint holds a model of this
    /// configuration, trained on this data.
    pub fn check_resume(&self, requested: &RunConfig) -> Result<()> {
        let conflict = |field: &str, saved: &Value, found: &Value| FlowError::Resume {
            field: field.to_string(),
            found: plain(found),
            saved: plain(saved),
        };
        if self.model.name() != requested.model.name() {
            let name = |m: &ModelConfig| Value::from(m.name());
            return Err(conflict(
                "model",
                &name(&self.model),
                &name(&requested.model),
            ));
        }
        let (saved, found) = (to_value(self), to_value(requested));
        match first_difference("", &saved, &found) {
            Some((field, a, b)) => Err(conflict(&field, a, b)),
            None => Ok(()),
        }
    }
}

fn to_value(config: &RunConfig) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(train) = value.get_mut("train").and_then(Value::as_object_mut) {
        train.retain(|field, _| !RESUMABLE.contains(&field.as_str()));
    }
    value
}

/// The first leaf, as `a.b.c`, where two JSON values differ, with both values.
fn first_difference<'v>(
    path: &str,
    a: &'v Value,
    b: &'v Value,
) -> Option<(String, &'v Value, &'v Value)> {
    static NULL: Value = Value::Null;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .keys()
            .chain(y.keys().filter(|k| !x.contains_key(*k)))
            .find_map(|k| {
                let path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                first_difference(&path, x.get(k).unwrap_or(&NULL), y.get(k).unwrap_or(&NULL))
            }),
        _ => (a != b).then(|| (path.to_string(), a, b)),
    }
}

/// A JSON value as a person writes it: strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether the run in `dir` can continue as `requested` (see [`RunConfig::check_resume`], and
/// `steps` at least those done); returns where it stopped.
pub fn check_resume(dir: &RunDir, requested: &RunConfig) -> Result<TrainState> {
    dir.read_config()?.check_resume(requested)?;
    let state = dir.load_state()?;
    // Fewer steps than done would end at once, reporting a step count never reached.
    in_range("train.steps", requested.train.steps, state.step..)?;
    Ok(state)
}

/// Adam keeps finite moments of each parameter's shape, keyed by the parameter's id; burn
/// panics while loading a state tensor without an id, and inside the next step if the shapes
/// do not match, so the burnpack `bytes` are read and compared first. `Err`: what does not fit.
pub(crate) fn check_optimizer(bytes: &[u8], model: &Model) -> std::result::Result<(), String> {
    struct Shapes(HashMap<u64, Vec<usize>>);
    impl ModuleVisitor for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.insert(param.id.val(), param.val().dims().to_vec());
        }
    }
    let mut params = Shapes(HashMap::new());
    model.visit(&mut params);
    let tensors =
        burn_pack::Reader::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec()))
            .and_then(burn_pack::Reader::into_tensors)
            .map_err(|e| e.to_string())?;
    for t in tensors {
        // NaN moments would turn every weight they touch into NaN at the next step.
        let float = match t.dtype {
            DType::F64 => Some(Dtype::F64),
            DType::F32 | DType::Flex32 => Some(Dtype::F32),
            DType::F16 => Some(Dtype::F16),
            DType::BF16 => Some(Dtype::BF16),
            _ => None,
        };
        if let Some(dtype) = float {
            let data = t.to_bytes().map_err(|e| e.to_string())?;
            if crate::validate::non_finite(dtype, &data) {
                return Err(format!("{} holds NaN or infinite values", t.name));
            }
        }
        let found: &[usize] = &t.shape;
        match t.param_id.map(|id| params.0.get(&id)) {
            Some(Some(shape)) if shape.as_slice() == found => {}
            Some(Some(shape)) => {
                return Err(format!(
                    "{} has shape {found:?} but its parameter {shape:?}",
                    t.name
                ))
            }
            Some(None) => return Err(format!("{} belongs to no parameter of the model", t.name)),
            None => return Err(format!("{} names no parameter", t.name)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::GlowConfig;

    fn message(r: Result<()>) -> String {
        r.unwrap_err().to_string()
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
        // The sample index step × batch_size must fit (a state.json or --steps near 2⁶⁴).
        assert_eq!(
            bad(|c| {
                c.train.steps = usize::MAX;
                c.train.batch_size = 64;
            }),
            format!(
                "train.steps must be an integer < {}, found {}",
                usize::MAX / 64,
                usize::MAX
            )
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
        let check = |bytes: &[u8]| check_optimizer(bytes, &model).unwrap_err();
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
        check_optimizer(&empty, &model).unwrap();
    }
}
