//! The JSON API under `/api`. Model work runs on the blocking pool (never on the async
//! threads), at most `queue` requests at a time; pictures come back as PNG data URLs.

use std::io::Cursor;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use image::{DynamicImage, RgbImage};
use revflow::flow::to_f32;
use revflow::latents::{self, pixels};
use revflow::models::bits_per_dim;
use revflow::pictures::{grid, scatter};
use revflow::trained::points_of;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::runs::{Explored, Runs};

/// What every handler shares.
pub struct AppState {
    pub runs: Runs,
    /// Requests running or waiting for model work; past it, 503.
    pub jobs: Arc<Semaphore>,
    pub queue: usize,
    /// Largest request body, uploads included.
    pub upload_limit: usize,
    /// Watch streams open at once; past it, 503.
    pub watchers: Arc<Semaphore>,
    pub playground: crate::playground::Playground,
}

type Shared = State<Arc<AppState>>;

/// Bins of the test set's histogram.
const BINS: usize = 40;

/// A place among the `queue` requests running or waiting for model work, or 503. Taken
/// before a request's body is read, so that refused requests hold no memory.
fn job(state: &AppState) -> ApiResult<OwnedSemaphorePermit> {
    (state.jobs.clone().try_acquire_owned()).map_err(|_| ApiError::busy(state.queue))
}

/// Runs `work` on the blocking pool with the run `name`, holding its place in the queue.
async fn with_run<T: Send + 'static>(
    state: &Arc<AppState>,
    place: OwnedSemaphorePermit,
    name: String,
    work: impl FnOnce(&Explored) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    blocking(state, move |state| {
        let _place = place;
        // Loading a run reads files: also off the async threads.
        work(&*state.runs.get(&name)?)
    })
    .await
}

/// Runs `work` on the blocking pool; a panic in it is a 500 for this request alone.
pub async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// The request body as JSON of type `T`, refused past the upload limit.
pub(crate) async fn json_body<T: DeserializeOwned>(state: &AppState, body: Body) -> ApiResult<T> {
    let bytes = to_bytes(body, state.upload_limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request is larger than the limit of {} bytes (serve --upload-limit)",
                state.upload_limit
            ),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

/// A PNG file as a data URL, if it is complete (it ends with its IEND chunk).
pub fn png_file(path: &std::path::Path) -> ApiResult<String> {
    let bytes = std::fs::read(path).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        )
    })?;
    if !bytes.ends_with(b"IEND\xaeB`\x82") {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} is not a complete PNG file", path.display()),
        ));
    }
    Ok(format!("data:image/png;base64,{}", STANDARD.encode(bytes)))
}

/// A picture as a PNG data URL.
pub(crate) fn png(picture: impl Into<DynamicImage>) -> ApiResult<String> {
    let mut bytes = Vec::new();
    picture
        .into()
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(format!("data:image/png;base64,{}", STANDARD.encode(bytes)))
}

/// An input of a request: `test:N` or `train:N` (a row of the run's data), or an uploaded
/// image as a data URL, written to a private temporary file that the library's reader opens
/// (header first, so an image of the wrong size is never decoded). Paths are refused: the
/// page may not read the server's files.
struct Input {
    spec: String,
    _file: Option<tempfile::TempPath>,
}

fn input(text: &str) -> ApiResult<Input> {
    if let Some(rest) = text.strip_prefix("data:") {
        let (_, payload) = rest.split_once(";base64,").ok_or_else(|| {
            ApiError::bad_request("the upload is not a base64 data URL (data:image/png;base64,…)")
        })?;
        let bytes = STANDARD
            .decode(payload.trim())
            .map_err(|e| ApiError::bad_request(format!("the upload is not valid base64: {e}")))?;
        let suffix = match image::guess_format(&bytes) {
            Ok(image::ImageFormat::Png) => ".png",
            Ok(image::ImageFormat::Jpeg) => ".jpg",
            Ok(image::ImageFormat::Gif) => ".gif",
            _ => {
                return Err(ApiError::bad_request(
                    "the upload is not a PNG, JPEG or GIF image",
                ))
            }
        };
        let internal = |e: std::io::Error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot keep the upload: {e}"),
            )
        };
        let mut file = tempfile::Builder::new()
            .prefix("revflow-upload-")
            .suffix(suffix)
            .tempfile()
            .map_err(internal)?;
        std::io::Write::write_all(&mut file, &bytes).map_err(internal)?;
        let path = file.into_temp_path();
        return Ok(Input {
            spec: path.display().to_string(),
            _file: Some(path),
        });
    }
    let row = text
        .split_once(':')
        .filter(|(part, n)| matches!(*part, "test" | "train") && n.parse::<usize>().is_ok());
    match row {
        Some(_) => Ok(Input {
            spec: text.to_string(),
            _file: None,
        }),
        None => Err(ApiError::bad_request(format!(
            "{:?} is not an input: expected test:N, train:N or an uploaded image",
            text.chars().take(40).collect::<String>()
        ))),
    }
}

/// `value` is finite and within `lo..=hi`.
fn check(name: &str, value: f64, lo: f64, hi: f64) -> ApiResult<()> {
    match value.is_finite() && (lo..=hi).contains(&value) {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "{name} must be a number from {lo} to {hi}, not {value}"
        ))),
    }
}

/// `GET /api/runs`: every run of the folder.
pub async fn list(State(state): Shared) -> ApiResult<Json<Value>> {
    let runs = blocking(&state, |state| state.runs.list()).await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /api/runs/{run}`: the run as listed, with its test set's size and bit depth (loads
/// the run, which every other request of the page needs).
pub async fn info(State(state): Shared, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let (listed, place) = (name.clone(), job(&state)?);
    with_run(&state, place, name, move |explored| {
        let run = &explored.run;
        Ok(Json(json!({
            "name": listed,
            "model": run.config.model.name(),
            "test_size": run.splits()?.test.len(),
            "n_bits": run.config.model.n_bits(),
            "dims": run.config.model.dims(),
            "step": explored.step,
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default)]
    seed: u64,
    n: Option<usize>,
    class: Option<String>,
    /// The raw context of a context-conditional run, one value per column.
    context: Option<Vec<f32>>,
}

fn default_temperature() -> f64 {
    0.7
}

/// `POST /api/runs/{run}/sample`: a grid of image samples, or for vectors the samples over
/// the model's density (2-D) or the test data.
pub async fn sample(
    State(state): Shared,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let place = job(&state)?;
    let request: SampleRequest = json_body(&state, body).await?;
    check("temperature", request.temperature, 0.0, 5.0)?;
    with_run(&state, place, name, move |explored| {
        let run = &explored.run;
        let image = run.config.model.image_shape();
        let (n, most) = match (request.n, image) {
            (n, Some(_)) => (n.unwrap_or(64), 256),
            (n, None) => (n.unwrap_or(2000), 20_000),
        };
        check("n", n as f64, 1.0, most as f64)?;
        let class = request.class.as_deref().map(|c| run.class(c)).transpose()?;
        if class.is_some() && run.classes() == 0 {
            return Err(ApiError::bad_request(
                "class: this run's model is not class-conditional (trained without --ycond)",
            ));
        }
        let context =
            match (run.config.model.context(), &request.context) {
                (Some(c), Some(values)) if values.len() == c.len() => Some(values.as_slice()),
                (Some(c), _) => {
                    return Err(ApiError::bad_request(format!(
                        "this run samples at a context: give one value for each of {}",
                        c.columns.join(", ")
                    )))
                }
                (None, Some(_)) => return Err(ApiError::bad_request(
                    "context: this run is not conditioned on a context (trained without --context)",
                )),
                (None, None) => None,
            };
        // Batch by batch, as the command line samples: memory follows the batch.
        let batch = revflow::training::EVAL_BATCH;
        revflow::limits::check_inference(&run.config.model, n.min(batch))?;
        let started = std::time::Instant::now();
        let mut parts = Vec::new();
        for start in (0..n).step_by(batch) {
            let range = start..n.min(start + batch);
            parts.push(run.sample(request.seed, range, request.temperature, class, context)?);
        }
        let x = revflow::burn::tensor::Tensor::cat(parts, 0);
        let seconds = started.elapsed().as_secs_f64();
        let picture = match image {
            Some(shape) => grid(&pixels(x), shape, (n as f64).sqrt().ceil() as usize, 4),
            None => {
                let points: Vec<[f32; 2]> = points_of(x)
                    .iter()
                    .map(|p| [p[0], p.get(1).copied().unwrap_or(0.0)])
                    .collect();
                match explored
                    .density
                    .get_or_init(|| run.density_map(240).ok().flatten())
                {
                    Some(map) => map.with_points(&points),
                    None => scatter(&points, &[], 480),
                }
            }
        };
        Ok(Json(
            json!({"image": png(picture)?, "n": n, "seconds": seconds}),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeRequest {
    input: String,
    class: Option<String>,
}

/// Each latent level as a picture: a tile per channel, values scaled to the level's range.
fn level_picture(z: &[f32], [c, h, w]: [usize; 3]) -> RgbImage {
    let (lo, hi) = z
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1e-6);
    let tiles: Vec<Vec<u8>> = z
        .chunks(h * w)
        .map(|tile| {
            tile.iter()
                .map(|&v| ((v - lo) / span * 255.0) as u8)
                .collect()
        })
        .collect();
    grid(&tiles, [1, h, w], c.min(8), 4)
}

/// `POST /api/runs/{run}/encode`: an input's latents (every level, as pictures), the input
/// decoded back from them and how exactly, and its bits/dim.
pub async fn encode(
    State(state): Shared,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let place = job(&state)?;
    let request: EncodeRequest = json_body(&state, body).await?;
    with_run(&state, place, name, move |explored| {
        let run = &explored.run;
        let shape = run.image_shape("encode")?;
        let input = input(&request.input)?;
        let class = request.class.as_deref().map(|c| run.class(c)).transpose()?;
        let inputs = run.inputs(std::slice::from_ref(&input.spec), class)?;
        let cond = run.cond(&inputs.labels, &inputs.context);
        let zs = latents::encode(&run.model, inputs.x.clone(), cond.as_ref())?;
        let x = latents::decode(&run.model, &zs, cond.as_ref())?;
        let decoded = to_f32(&x)?;
        // Compared at the model's bit depth: decoding gives each pixel's bin back exactly.
        let original = run.as_modelled(&inputs.rows.values);
        let max_error =
            (decoded.iter().zip(&original)).fold(0.0f32, |m, (&d, &o)| m.max((d - o as f32).abs()));
        let decoded_pixels = pixels(x).remove(0);
        let differ = (decoded_pixels.iter().zip(&original))
            .filter(|(d, o)| d != o)
            .count();
        let log_p = run.scorer().log_probs(&inputs.rows)?[0];
        let shapes = run.model.latent_shapes().unwrap_or_default();
        let mut levels = Vec::new();
        for (z, level) in zs.into_iter().zip(shapes) {
            let values = to_f32(&z)?;
            levels.push(json!({"shape": level, "image": png(level_picture(&values, level))?}));
        }
        Ok(Json(json!({
            "original": png(revflow::pictures::single(&original, shape))?,
            "decoded": png(revflow::pictures::single(&decoded_pixels, shape))?,
            "levels": levels,
            "pixels_differ": differ,
            "pixels": original.len(),
            "n_bits": run.config.model.n_bits(),
            "max_error": max_error,
            "bits_per_dim": bits_per_dim(log_p, original.len()),
            // The input's own class, where it has one (not an upload).
            "label": inputs.rows.classes[0],
        })))
    })
    .await
}

/// `GET /api/runs/{run}/histogram`: the test set's bits/dim in equal bins (scored once).
pub async fn histogram(State(state): Shared, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let place = job(&state)?;
    with_run(&state, place, name, |explored| {
        let scores = match explored.test_scores.get() {
            Some(scores) => scores,
            None => {
                let run = &explored.run;
                let rows = run.context().read_all(&["test".to_string()])?;
                let dims = rows.dims;
                let scores: Vec<f64> = (run.scorer().log_probs(&rows)?.into_iter())
                    .map(|lp| bits_per_dim(lp, dims))
                    .collect();
                explored.test_scores.get_or_init(|| scores)
            }
        };
        let lo = scores.iter().copied().fold(f64::MAX, f64::min);
        let hi = scores
            .iter()
            .copied()
            .fold(f64::MIN, f64::max)
            .max(lo + 1e-9);
        let mut counts = vec![0usize; BINS];
        for &b in scores {
            let i = ((b - lo) / (hi - lo) * BINS as f64) as usize;
            counts[i.min(BINS - 1)] += 1;
        }
        let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        Ok(Json(
            json!({"counts": counts, "lo": lo, "hi": hi, "mean": mean, "n": scores.len()}),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterpolateRequest {
    a: String,
    b: String,
    t: f64,
}

/// `POST /api/runs/{run}/interpolate`: the image at `t` on the line between two inputs'
/// latents.
pub async fn interpolate(
    State(state): Shared,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let place = job(&state)?;
    let request: InterpolateRequest = json_body(&state, body).await?;
    check("t", request.t, -1.0, 2.0)?;
    with_run(&state, place, name, move |explored| {
        let run = &explored.run;
        let shape = run.image_shape("interpolate")?;
        let (a, b) = (input(&request.a)?, input(&request.b)?);
        let images = run.interpolate(&a.spec, &b.spec, &[request.t])?;
        Ok(Json(
            json!({"image": png(revflow::pictures::single(&images[0], shape))?}),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManipulateRequest {
    input: String,
    /// A class direction, from one class's mean latent to another's …
    from: Option<String>,
    to: Option<String>,
    /// … or an attribute direction, from the run's `attributes.csv`.
    attribute: Option<String>,
    alpha: f64,
}

/// `POST /api/runs/{run}/manipulate`: an input moved by `alpha` along a class or an
/// attribute direction in latent space.
pub async fn manipulate(
    State(state): Shared,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let place = job(&state)?;
    let request: ManipulateRequest = json_body(&state, body).await?;
    check("alpha", request.alpha, -5.0, 5.0)?;
    with_run(&state, place, name, move |explored| {
        let run = &explored.run;
        let shape = run.image_shape("manipulate")?;
        let input = input(&request.input)?;
        let direction = match (&request.from, &request.to, &request.attribute) {
            (Some(from), Some(to), None) => {
                let (from, to) = (run.class(from)?, run.class(to)?);
                let (towards, away) = (explored.class_mean(to)?, explored.class_mean(from)?);
                (towards.iter().zip(away.iter()))
                    .map(|(a, b)| a.clone() - b.clone())
                    .collect()
            }
            (None, None, Some(attribute)) => explored.attribute_direction(attribute)?.to_vec(),
            _ => {
                return Err(ApiError::bad_request(
                    "give a direction: from and to (two classes), or attribute",
                ))
            }
        };
        let images = run.manipulate(&input.spec, &direction, &[request.alpha])?;
        Ok(Json(
            json!({"image": png(revflow::pictures::single(&images[0], shape))?}),
        ))
    })
    .await
}
