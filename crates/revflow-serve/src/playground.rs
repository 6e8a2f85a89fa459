//! The 2-D playground: the server trains a small flow on a generated 2-D set while the page
//! watches its density, latents and pulled-back grid change; then the page steps through its
//! layers and may keep it as a run.
//!
//! A training is a job on its own thread, through the library's training loop into a private
//! folder (so a job is a run like any other, and saving it is a copy). At most
//! [`TRAININGS`] run at once; a job stops when asked, or when the page that started it goes
//! away (its event stream is dropped).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use revflow::burn::tensor::Device;
use revflow::data::{Data, TOY_SETS};
use revflow::figures::live::{layer_points, snapshot};
use revflow::figures::points;
use revflow::models::{Model, ModelConfig, VectorFlow, VectorFlowConfig};
use revflow::training::{self, Run, RunConfig, RunDir, TrainConfig};
use revflow::FlowError;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{blocking, json_body, png, AppState};
use crate::error::{ApiError, ApiResult};

/// Trainings at once (each uses the CPU's threads: more would only share them).
pub const TRAININGS: usize = 2;

/// Finished jobs kept (for their layers and saving) before the oldest is dropped.
const KEPT: usize = 16;

/// Points of a generated set the playground trains on, and points drawn in its pictures.
const SAMPLES: usize = 4000;
const SHOWN: usize = 600;

/// The playground's jobs.
pub struct Playground {
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
    next: AtomicU64,
    slots: Arc<Semaphore>,
    /// Where jobs train (removed with the server).
    scratch: tempfile::TempDir,
}

impl Playground {
    pub fn new() -> std::io::Result<Playground> {
        Ok(Playground {
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(TRAININGS)),
            scratch: tempfile::Builder::new()
                .prefix("revflow-playground-")
                .tempdir()?,
        })
    }

    fn job(&self, id: u64) -> ApiResult<Arc<Job>> {
        let jobs = self.jobs.lock().expect("not poisoned");
        jobs.get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no playground training {id}")))
    }
}

/// One training and what it reported.
pub struct Job {
    stop: AtomicBool,
    /// Events in order: `progress`, `snapshot`, then one of `done`, `cancelled`, `failed`.
    events: Mutex<Vec<(String, Value)>>,
    finished: AtomicBool,
    dir: PathBuf,
    set: String,
}

impl Job {
    fn push(&self, name: &str, data: Value) {
        self.events
            .lock()
            .expect("not poisoned")
            .push((name.into(), data));
    }

    fn state(&self) -> &'static str {
        let events = self.events.lock().expect("not poisoned");
        match events.last().map(|(name, _)| name.as_str()) {
            Some("done") => "done",
            Some("cancelled") => "cancelled",
            Some("failed") => "failed",
            _ => "running",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    set: String,
    /// affine, spline or maf.
    flow: String,
    steps: usize,
    /// Flow steps (coupling or autoregressive layers, each with its ActNorm and mixing).
    layers: usize,
    hidden: usize,
}

impl StartRequest {
    /// The model and training it asks for, or the first thing out of range.
    fn config(&self) -> ApiResult<RunConfig> {
        if !TOY_SETS.contains(&self.set.as_str()) {
            return Err(ApiError::bad_request(format!(
                "set {:?} is not one of {}",
                self.set,
                TOY_SETS.join(", ")
            )));
        }
        let range =
            |name: &str, value: usize, lo: usize, hi: usize| match (lo..=hi).contains(&value) {
                true => Ok(()),
                false => Err(ApiError::bad_request(format!(
                    "{name} must be from {lo} to {hi}, not {value}"
                ))),
            };
        range("steps", self.steps, 10, 20_000)?;
        range("layers", self.layers, 1, 16)?;
        range("hidden", self.hidden, 2, 256)?;
        let base = match self.flow.as_str() {
            "affine" => VectorFlowConfig::default(),
            "spline" => VectorFlowConfig::neural_spline(),
            "maf" => VectorFlowConfig::autoregressive(VectorFlow::Maf),
            other => {
                return Err(ApiError::bad_request(format!(
                    "flow {other:?} is not one of affine, spline, maf"
                )))
            }
        };
        let model = ModelConfig::Vector(VectorFlowConfig {
            dims: 2,
            steps: self.layers,
            hidden: self.hidden,
            ..base
        });
        Ok(RunConfig {
            model,
            train: TrainConfig {
                steps: self.steps,
                batch_size: 256,
                lr: 2e-3,
                eval_every: (self.steps / 10).max(1),
                checkpoint_every: self.steps,
                ..TrainConfig::default()
            },
            data: self.set.clone(),
            data_dir: None,
            data_samples: SAMPLES,
            data_resize: None,
            class_names: Vec::new(),
        })
    }
}

/// The test points drawn in the pictures: the first [`SHOWN`].
fn shown(test: &Data) -> Vec<[f64; 2]> {
    let mut points = points(test);
    points.truncate(SHOWN);
    points
}

/// Trains `job` as `config` says, reporting as it goes; ends with `done`, `cancelled` or
/// `failed`.
fn train(job: &Job, config: RunConfig, _slot: OwnedSemaphorePermit) {
    let device = Device::default();
    let result = (|| -> revflow::Result<f64> {
        let splits = config.load_data()?;
        let points = shown(&splits.test);
        let draw = |model: &Model, step: usize| -> revflow::Result<()> {
            let Model::Flat(flow) = model else {
                return Ok(());
            };
            let pictures = snapshot(flow, &points, &device)?;
            let url = |p| png(p).map_err(|e| FlowError::Picture(e.message));
            job.push(
                "snapshot",
                json!({"step": step, "density": url(pictures.density)?,
                    "latents": url(pictures.latents)?, "grid": url(pictures.grid)?}),
            );
            Ok(())
        };
        let steps = config.train.steps;
        let run = Run {
            config,
            data: &splits,
            dir: RunDir::new(&job.dir),
            draw_samples: Some(&draw),
            stop: Some(&job.stop),
            group: None,
            device: device.clone(),
        };
        let every = (steps / 100).max(1);
        let summary = run.train(false, &mut |event| {
            if let training::Event::Step { step, loss, .. } = event {
                if step % every == 0 || step == steps {
                    job.push(
                        "progress",
                        json!({"step": step, "steps": steps, "loss": loss}),
                    );
                }
            }
        })?;
        Ok(summary.test.bits_per_dim)
    })();
    match result {
        Ok(bits) => job.push("done", json!({"test_bits_per_dim": bits})),
        Err(FlowError::Interrupted { .. }) => job.push("cancelled", json!({})),
        Err(e) => job.push("failed", json!({"error": e.to_string()})),
    }
    job.finished.store(true, Ordering::SeqCst);
}

/// `POST /api/playground`: starts a training, `{id}`; 503 while [`TRAININGS`] run.
pub async fn start(State(state): State<Arc<AppState>>, body: Body) -> ApiResult<Json<Value>> {
    let request: StartRequest = json_body(&state, body).await?;
    let config = request.config()?;
    let playground = &state.playground;
    let slot = (playground.slots.clone().try_acquire_owned()).map_err(|_| ApiError {
        retry_after: Some(5),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{TRAININGS} playground trainings are running; cancel one or wait"),
        )
    })?;
    let id = playground.next.fetch_add(1, Ordering::SeqCst);
    let job = Arc::new(Job {
        stop: AtomicBool::new(false),
        events: Mutex::new(Vec::new()),
        finished: AtomicBool::new(false),
        dir: playground.scratch.path().join(format!("job-{id}")),
        set: request.set.clone(),
    });
    {
        let mut jobs = playground.jobs.lock().expect("not poisoned");
        // The oldest finished jobs go first.
        let mut finished: Vec<u64> = (jobs.iter())
            .filter(|(_, j)| j.finished.load(Ordering::SeqCst))
            .map(|(&id, _)| id)
            .collect();
        finished.sort_unstable();
        for old in finished
            .iter()
            .take((finished.len() + 1).saturating_sub(KEPT))
        {
            if let Some(job) = jobs.remove(old) {
                let _ = std::fs::remove_dir_all(&job.dir);
            }
        }
        jobs.insert(id, job.clone());
    }
    std::thread::spawn(move || train(&job, config, slot));
    Ok(Json(json!({ "id": id })))
}

/// `GET /api/playground/{id}`: the job's state and last step.
pub async fn status(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<Json<Value>> {
    let job = state.playground.job(id)?;
    let step = (job.events.lock().expect("not poisoned").iter().rev())
        .find_map(|(name, data)| (name == "progress").then(|| data["step"].clone()));
    Ok(Json(json!({"state": job.state(), "step": step})))
}

/// `DELETE /api/playground/{id}`: stops the training after its current step.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<Json<Value>> {
    state.playground.job(id)?.stop.store(true, Ordering::SeqCst);
    Ok(Json(json!({"cancelled": true})))
}

/// Stops a job whose page went away before it finished.
struct CancelOnDrop(Arc<Job>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// `GET /api/playground/{id}/events`: every event of the job so far, then the new ones as
/// they come, until it ends. Closing it cancels the training.
pub async fn events(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = state.playground.job(id)?;
    let follow = (CancelOnDrop(job), 0usize, false);
    let events = stream::unfold(follow, |(guard, sent, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let new: Vec<(String, Value)> = {
                let events = guard.0.events.lock().expect("not poisoned");
                events[sent..].to_vec()
            };
            if new.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let ended = new
                .iter()
                .any(|(name, _)| matches!(name.as_str(), "done" | "cancelled" | "failed"));
            let sent = sent + new.len();
            let batch: Vec<Event> = (new.into_iter())
                .map(|(name, data)| Event::default().event(name).data(data.to_string()))
                .collect();
            return Some((batch, (guard, sent, ended)));
        }
    });
    let events = events.flat_map(|batch| stream::iter(batch.into_iter().map(Ok)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `GET /api/playground/{id}/layers`: the shown test points after each layer of the trained
/// flow, `{layers: [{name, key, points}]}`, the data first and the latents last.
pub async fn layers(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<Json<Value>> {
    let job = state.playground.job(id)?;
    blocking(&state, move |_| {
        let dir = RunDir::new(&job.dir);
        if !dir.has_checkpoint() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the training has no checkpoint yet: wait until it is done",
            ));
        }
        let config = dir.read_config()?;
        let device = Device::default();
        let Model::Flat(flow) = dir.load_model(&config, &device)? else {
            return Err(ApiError::bad_request("not a 2-D flow"));
        };
        let splits = config.load_data()?;
        let points = shown(&splits.test);
        let steps = layer_points(&flow, &points, &device)?;
        let layers: Vec<Value> = (steps.iter())
            .map(|s| json!({"name": s.name, "key": s.key, "points": s.points}))
            .collect();
        Ok(Json(json!({ "layers": layers })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveRequest {
    name: String,
}

/// `POST /api/playground/{id}/save`: a finished training becomes the run `name` of the
/// served folder.
pub async fn save(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<u64>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let request: SaveRequest = json_body(&state, body).await?;
    let job = state.playground.job(id)?;
    if job.state() != "done" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "training {id} is {}: only a finished one can be saved",
                job.state()
            ),
        ));
    }
    blocking(&state, move |state| {
        let target = state.runs.new_dir(&request.name)?;
        copy_run(&job.dir, &target).map_err(|e| {
            let _ = std::fs::remove_dir_all(&target);
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot save into {}: {e}", target.display()),
            )
        })?;
        Ok(Json(json!({"run": request.name, "set": job.set})))
    })
    .await
}

/// Copies a run folder: its files and its checkpoint folders (not the lock).
fn copy_run(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_run(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
