//! Watching runs train: a run's config, a curve as CSV, and a stream of server-sent events
//! (`GET /api/runs/{run}/watch`) with its new metrics lines, its newest sample grid and its
//! checkpoints as they appear. The stream polls the run's files twice a second, off the async
//! threads, and ends when the page goes away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use revflow::training::{MetricsTail, RunDir};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::api::{blocking, png_file, AppState};
use crate::error::{ApiError, ApiResult};

/// How often a watched run's files are read.
const POLL: Duration = Duration::from_millis(500);

/// The metrics a curve can be made of.
const METRICS: [&str; 6] = [
    "loss",
    "bits_per_dim",
    "test_bits_per_dim",
    "test_nats",
    "lr",
    "seconds",
];

type Shared = State<Arc<AppState>>;

/// `GET /api/runs/{run}/config`: the run's `config.json`.
pub async fn config(State(state): Shared, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    blocking(&state, move |state| {
        let config = RunDir::new(&state.runs.dir(&name)?).read_config()?;
        Ok(Json(json!({ "config": config })))
    })
    .await
}

#[derive(Deserialize)]
pub struct CurveQuery {
    metric: String,
}

/// `GET /api/runs/{run}/curve.csv?metric=loss`: `step,loss` for every line that has it.
pub async fn curve(
    State(state): Shared,
    Path(name): Path<String>,
    Query(query): Query<CurveQuery>,
) -> ApiResult<impl IntoResponse> {
    let metric = query.metric;
    if !METRICS.contains(&metric.as_str()) {
        return Err(ApiError::bad_request(format!(
            "metric {metric:?} is not one of {}",
            METRICS.join(", ")
        )));
    }
    let csv = blocking(&state, move |state| {
        let dir = RunDir::new(&state.runs.dir(&name)?);
        let lines = MetricsTail::default().read(&dir)?.lines;
        let mut csv = format!("step,{metric}\n");
        for line in &lines {
            if let (Some(step), Some(value)) = (line["step"].as_u64(), line[&metric].as_f64()) {
                csv += &format!("{step},{value}\n");
            }
        }
        Ok(csv)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv))
}

/// What a watch stream has sent so far.
struct Watched {
    dir: RunDir,
    tail: MetricsTail,
    samples: Option<usize>,
    checkpoint: Option<usize>,
    /// Held while the stream lives: at most `watchers` streams at once.
    _permit: OwnedSemaphorePermit,
}

impl Watched {
    /// The events for what changed since the last poll.
    fn poll(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let event = |name: &str, data: Value| Event::default().event(name).data(data.to_string());
        match self.tail.read(&self.dir) {
            Ok(new) => {
                if new.reset {
                    events.push(event("reset", json!({})));
                }
                if !new.lines.is_empty() {
                    events.push(event("metrics", Value::Array(new.lines)));
                }
            }
            Err(e) => events.push(event("problem", json!({"error": e.to_string()}))),
        }
        if let Some((step, path)) = self.dir.latest_samples() {
            if self.samples != Some(step) {
                // A picture still being written fails to decode: it is sent next time.
                if let Ok(image) = png_file(&path) {
                    self.samples = Some(step);
                    events.push(event("samples", json!({"step": step, "image": image})));
                }
            }
        }
        let checkpoint = self.dir.current_step();
        if checkpoint != self.checkpoint && checkpoint.is_some() {
            self.checkpoint = checkpoint;
            events.push(event("checkpoint", json!({"step": checkpoint})));
        }
        events
    }
}

/// `GET /api/runs/{run}/watch`: server-sent events `metrics` (an array of new lines),
/// `reset` (the file was rewritten by a resume: drop what came before), `samples`
/// (`{step, image}`), `checkpoint` (`{step}`) and `problem` (`{error}`).
pub async fn watch(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let permit = (state.watchers.clone().try_acquire_owned()).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pages are watching runs; close one and try again",
        )
    })?;
    let dir = RunDir::new(&state.runs.dir(&name)?);
    let watched = Watched {
        dir,
        tail: MetricsTail::default(),
        samples: None,
        checkpoint: None,
        _permit: permit,
    };
    let polls = stream::unfold((watched, true), |(watched, first)| async move {
        if !first {
            tokio::time::sleep(POLL).await;
        }
        let (watched, events) = tokio::task::spawn_blocking(move || {
            let mut watched = watched;
            let events = watched.poll();
            (watched, events)
        })
        .await
        .ok()?;
        Some((events, (watched, false)))
    });
    let events = polls.flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
