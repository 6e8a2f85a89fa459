//! Request latency of `revflow serve`, p50 and p95, over real HTTP on this machine: a sample
//! grid, an encode (encode + decode + score, what the page asks for on an upload), an
//! interpolation and a manipulation step, on the digits and on an MNIST-shape (28×28) run.
//!
//! Then the same sample grid while 0, 1 and 2 playground trainings run beside it.
//!
//! `cargo run --release -p revflow-serve --example latency -- [REQUESTS]` (default 50 per
//! operation, after 5 warm-ups). The runs are trained on the spot for a few steps: latency
//! does not depend on how well a model is trained, only on its architecture, which is
//! `revflow train`'s default for each shape (batches of 32).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use revflow::burn::tensor::Device;
use revflow::data::{self, Data};
use revflow::models::{GlowConfig, ModelConfig};
use revflow::training::{recipe, TrainConfig};
use revflow_serve::client::{get, post, request};
use revflow_serve::{ServeConfig, Server};
use serde_json::{json, Value};

/// The tests' helpers: training a run in a few lines.
#[path = "../tests/common/mod.rs"]
mod common;

/// Trains `revflow train`'s default Glow on `data` for 20 steps into `root/name`.
fn train_glow(root: &Path, name: &str, data: &str) {
    let splits = data::load(data, None, 0, 0).expect("data");
    let Data::Images(train) = &splits.train else {
        panic!("{data} holds images")
    };
    let glow = GlowConfig {
        shape: [train.channels, train.height, train.width],
        ..GlowConfig::default()
    };
    let (model, _) = recipe(data, ModelConfig::Glow(glow), TrainConfig::default(), None);
    common::train(root, name, data, model, 20);
}

/// The digits enlarged to 28×28, as a folder of PNG files (one sub-folder per class).
fn mnist_shape(folder: &Path) {
    let splits = data::load("digits", None, 0, 0).expect("digits");
    for (part, set) in [("train", &splits.train), ("test", &splits.test)] {
        let Data::Images(set) = set else { continue };
        for i in 0..set.len() {
            let dir = folder.join(set.labels[i].to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let small = image::GrayImage::from_raw(8, 8, set.image(i).to_vec()).unwrap();
            let big =
                image::imageops::resize(&small, 28, 28, image::imageops::FilterType::Triangle);
            big.save(dir.join(format!("{part}-{i}.png"))).unwrap();
        }
    }
}

/// The body of request `i` of a kind.
type RequestBody = Box<dyn Fn(usize) -> Value>;

/// Milliseconds of `requests` requests of one kind, sent one after another; request `i`
/// varies (temperature, input, t, α) so that nothing is answered from a cache.
fn time(addr: SocketAddr, path: &str, requests: usize, body: impl Fn(usize) -> Value) -> Vec<f64> {
    let mut ms = Vec::new();
    for i in 0..requests + 5 {
        let started = Instant::now();
        let r = post(addr, path, body(i));
        assert_eq!(r.status, 200, "{path}: {}", r.error());
        if i >= 5 {
            ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    ms
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("REQUESTS: a number"))
        .unwrap_or(50);
    let root = std::env::temp_dir().join(format!("revflow-latency-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    eprintln!("training the runs in {} …", root.display());
    train_glow(&root, "digits", "digits");
    let folder = root.join("mnist-shape-images");
    mnist_shape(&folder);
    train_glow(
        &root,
        "mnist-shape",
        &format!("images:{}", folder.display()),
    );
    let addr = Server::bind(ServeConfig {
        port: 0,
        ..ServeConfig::new(&root, Device::default())
    })
    .expect("server")
    .spawn();
    println!("| run | request | p50 ms | p95 ms |\n| --- | --- | --- | --- |");
    for run in ["digits", "mnist-shape"] {
        let at = |op: &str| format!("/api/runs/{run}/{op}");
        let ops: [(&str, String, RequestBody); 4] = [
            (
                "sample, 64 images",
                at("sample"),
                Box::new(|i| json!({"n": 64, "temperature": 0.5 + 0.001 * i as f64, "seed": i})),
            ),
            (
                "encode + decode + score",
                at("encode"),
                Box::new(|i| json!({"input": format!("test:{}", i % 100)})),
            ),
            (
                "interpolate",
                at("interpolate"),
                Box::new(|i| json!({"a": "test:0", "b": "test:1", "t": (i % 21) as f64 / 20.0})),
            ),
            (
                "manipulate",
                at("manipulate"),
                Box::new(
                    |i| json!({"input": "test:0", "from": "0", "to": "1", "alpha": (i % 21) as f64 / 10.0 - 1.0}),
                ),
            ),
        ];
        for (name, path, body) in ops {
            let ms = time(addr, &path, requests, body);
            println!(
                "| {run} | {name} | {:.1} | {:.1} |",
                quantile(&ms, 0.5),
                quantile(&ms, 0.95)
            );
        }
    }
    under_training(addr, requests);
    let _ = std::fs::remove_dir_all(&root);
}

/// The explore view's latency (a grid of 64 digits) while 0, 1 and 2 playground trainings
/// run (the server's limit is 2), and the trainings' speed.
fn under_training(addr: SocketAddr, requests: usize) {
    println!(
        "\n| playground trainings | sample p50 ms | sample p95 ms | steps/s of each training |"
    );
    println!("| --- | --- | --- | --- |");
    for trainings in 0..=revflow_serve::playground::TRAININGS {
        let body =
            json!({"set": "moons", "flow": "affine", "steps": 20000, "layers": 4, "hidden": 64});
        let ids: Vec<u64> = (0..trainings)
            .map(|_| {
                post(addr, "/api/playground", body.clone()).json()["id"]
                    .as_u64()
                    .expect("started")
            })
            .collect();
        let step = |id: u64| {
            get(addr, &format!("/api/playground/{id}")).json()["step"]
                .as_f64()
                .unwrap_or(0.0)
        };
        std::thread::sleep(std::time::Duration::from_secs(2));
        let (before, started) = (
            ids.iter().map(|&id| step(id)).collect::<Vec<_>>(),
            Instant::now(),
        );
        let ms = time(
            addr,
            "/api/runs/digits/sample",
            requests,
            |i| json!({"n": 64, "temperature": 0.5 + 0.001 * i as f64, "seed": i}),
        );
        // Five seconds at least, for the trainings' progress (reported every 200 steps).
        std::thread::sleep(std::time::Duration::from_secs(5).saturating_sub(started.elapsed()));
        let seconds = started.elapsed().as_secs_f64();
        let speeds: Vec<String> = (ids.iter().zip(&before))
            .map(|(&id, b)| format!("{:.0}", (step(id) - b) / seconds))
            .collect();
        for id in ids {
            request(addr, "DELETE", &format!("/api/playground/{id}"), &[], b"");
        }
        println!(
            "| {trainings} | {:.1} | {:.1} | {} |",
            quantile(&ms, 0.5),
            quantile(&ms, 0.95),
            if speeds.is_empty() {
                "–".into()
            } else {
                speeds.join(", ")
            }
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
