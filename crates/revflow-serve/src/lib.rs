//! `revflow serve`: a local web page over the runs of a folder — samples at any temperature,
//! an image encoded to its latents and decoded back exactly, its bits/dim among the test
//! set's, interpolation and class directions.
//!
//! The page is three files embedded in the binary (no network needed); the server calls the
//! same library functions as the command line ([`revflow::trained`]). It binds to loopback
//! by default, checks `Host` and `Origin` on every request (see [`guard`]), asks for a token
//! when reachable from other machines, limits bodies and queued work, and answers every bad
//! request with a 4xx and one line of JSON.

pub mod api;
pub mod client;
pub mod error;
pub mod guard;
pub mod playground;
pub mod runs;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use revflow::burn::tensor::Device;
use revflow::{FlowError, Result};
use tokio::sync::Semaphore;

use api::AppState;
use error::ApiError;
use guard::Guard;
use runs::Runs;

/// Watch streams (live training curves) open at once.
const WATCHERS: usize = 64;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The folder whose subfolders are runs.
    pub runs_dir: PathBuf,
    /// Address to bind; loopback unless the user says otherwise.
    pub host: IpAddr,
    /// 0: any free port.
    pub port: u16,
    /// Requests running or waiting for the model at once; past it, 503.
    pub queue: usize,
    /// Largest request body in bytes (an uploaded image travels as base64 inside it).
    pub upload_limit: usize,
    pub device: Device,
}

impl ServeConfig {
    pub fn new(runs_dir: impl Into<PathBuf>, device: Device) -> Self {
        ServeConfig {
            runs_dir: runs_dir.into(),
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8000,
            queue: 16,
            upload_limit: 8 << 20,
            device,
        }
    }
}

/// A bound server, not yet serving: its address and the page's address (with the token).
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    runtime: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    pub url: String,
}

fn io(path: &str, source: std::io::Error) -> FlowError {
    FlowError::Io {
        path: path.into(),
        source,
    }
}

impl Server {
    /// Checks the folder and options and binds the port (a port in use is an error here,
    /// before anything is printed as served).
    pub fn bind(config: ServeConfig) -> Result<Server> {
        if !config.runs_dir.is_dir() {
            return Err(FlowError::Config(format!(
                "{} is not a folder of runs; give the folder that `revflow train --out` wrote into (default: runs)",
                config.runs_dir.display()
            )));
        }
        revflow::validate::in_range("--queue", config.queue, 1..=10_000)?;
        revflow::validate::in_range("--upload-limit", config.upload_limit, 1024..=1 << 30)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| io("tokio runtime", e))?;
        let wanted = SocketAddr::new(config.host, config.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(wanted))
            .map_err(|e| {
                FlowError::Config(format!(
                    "cannot listen on {wanted}: {e}; choose another --port (0: any free one)"
                ))
            })?;
        let addr = listener.local_addr().map_err(|e| io("socket", e))?;
        // Loopback is reachable only from this machine; any other address needs the token.
        let token = match config.host.is_loopback() {
            true => None,
            false => Some(
                guard::new_token()
                    .map_err(|e| FlowError::Config(format!("cannot draw a random token: {e}")))?,
            ),
        };
        // An unspecified address (0.0.0.0, ::) is every address of this machine: the page is
        // printed at localhost, and other machines use this machine's name.
        let host = match config.host {
            ip if ip.is_unspecified() => "localhost".to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let url = match &token {
            Some(token) => format!("http://{host}:{}/?token={token}", addr.port()),
            None => format!("http://{host}:{}/", addr.port()),
        };
        let guard = Guard::new(token);
        let router = router(
            AppState {
                runs: Runs::new(&config.runs_dir, config.device.clone()),
                jobs: Arc::new(Semaphore::new(config.queue)),
                queue: config.queue,
                upload_limit: config.upload_limit,
                watchers: Arc::new(Semaphore::new(WATCHERS)),
                playground: playground::Playground::new()
                    .map_err(|e| io("a temporary folder for the playground", e))?,
            },
            guard,
        );
        Ok(Server {
            listener,
            router,
            runtime,
            addr,
            url,
        })
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<()> {
        let Server {
            listener,
            router,
            runtime,
            ..
        } = self;
        runtime
            .block_on(async move { axum::serve(listener, router).await })
            .map_err(|e| io("server", e))
    }

    /// Serves on a background thread (tests, benchmarks) until the process ends.
    pub fn spawn(self) -> SocketAddr {
        let addr = self.addr;
        std::thread::spawn(move || self.run());
        addr
    }
}

/// The page's files, embedded at build time.
const INDEX: &str = include_str!("../assets/index.html");
const APP: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Every route, behind the guard.
pub fn router(state: AppState, guard: Guard) -> Router {
    let api = Router::new()
        .route("/api/runs", get(api::list))
        .route("/api/runs/{run}", get(api::info))
        .route("/api/runs/{run}/sample", post(api::sample))
        .route("/api/runs/{run}/encode", post(api::encode))
        .route("/api/runs/{run}/histogram", get(api::histogram))
        .route("/api/runs/{run}/interpolate", post(api::interpolate))
        .route("/api/runs/{run}/manipulate", post(api::manipulate))
        .route("/api/runs/{run}/config", get(watch::config))
        .route("/api/runs/{run}/curve.csv", get(watch::curve))
        .route("/api/runs/{run}/watch", get(watch::watch))
        .route("/api/playground", post(playground::start))
        .route(
            "/api/playground/{id}",
            get(playground::status).delete(playground::cancel),
        )
        .route("/api/playground/{id}/events", get(playground::events))
        .route("/api/playground/{id}/layers", get(playground::layers))
        .route("/api/playground/{id}/save", post(playground::save))
        .with_state(Arc::new(state));
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .merge(api)
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("nothing at {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            )
        })
        .layer(axum::middleware::from_fn(error::as_json))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::guard,
        ))
}
