//! The page in a real browser: headless Chromium driven over WebDriver (chromedriver) moves
//! the sliders with the keyboard, uploads files and reads what the page shows.
//!
//! Runs where `REVFLOW_TEST_BROWSER` is set (`.ci/run` sets it and installs Debian's
//! `chromium` and `chromium-driver`): there it fails, never skips.
//! `REVFLOW_TEST_BROWSER=1 cargo test -p revflow-serve --test browser`. With
//! `REVFLOW_SCREENSHOTS=DIR` it also writes the page's screenshots into DIR (see
//! `docs/screenshots.sh`, which makes the README's from a fully trained run).

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use revflow::models::{GlowConfig, ModelConfig};
use revflow::training::TrainConfig;
use serde_json::json;

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "REVFLOW_TEST_BROWSER is set but chromedriver does not start ({e}): install \
                     Debian's chromium and chromium-driver (.ci/install-deps.sh does)"
                )
            });
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the page may take for anything on a slow, busy machine.
const PATIENCE: Duration = Duration::from_secs(120);

async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until `condition` (a JavaScript expression) is true.
async fn until(c: &Client, condition: &str) {
    let started = Instant::now();
    loop {
        if js(c, &format!("return Boolean({condition});")).await == json!(true) {
            return;
        }
        let shown = js(c, "return document.getElementById('error').textContent;").await;
        let short: String = condition.chars().take(160).collect();
        assert!(
            started.elapsed() < PATIENCE,
            "the page never showed {short}…; its error banner says {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `src` of image `id`.
async fn src(c: &Client, id: &str) -> String {
    let value = js(c, &format!("return document.getElementById('{id}').src;")).await;
    value.as_str().unwrap_or_default().to_string()
}

/// Waits until image `id` shows a picture other than `old`, loaded.
async fn new_image(c: &Client, id: &str, old: &str) {
    until(
        c,
        &format!(
            "document.getElementById('{id}').dataset.state === 'ready' && \
             document.getElementById('{id}').src !== {}",
            json!(old)
        ),
    )
    .await;
}

/// Waits until image `id` has kept the same loaded picture for a second (the page sends the
/// newest parameters after the request in flight).
async fn settled(c: &Client, id: &str) {
    let mut last = (src(c, id).await, Instant::now());
    let started = Instant::now();
    while last.1.elapsed() < Duration::from_secs(1) {
        assert!(started.elapsed() < PATIENCE, "{id} never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state = js(
            c,
            &format!("return document.getElementById('{id}').dataset.state;"),
        )
        .await;
        let now = src(c, id).await;
        if now != last.0 || state != json!("ready") {
            last = (now, Instant::now());
        }
    }
}

/// The screen's pixels of an element, as the browser drew them.
async fn pixels(element: &Element) -> Vec<u8> {
    let png = element.screenshot().await.unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

fn changed(a: &[u8], b: &[u8]) -> f64 {
    let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
    differ as f64 / a.len().max(1) as f64
}

/// Moves `slider` to its start, then to its end, and returns the fraction of the pixels of
/// `image` that changed between the two.
async fn slide_across(c: &Client, slider: &str, image: &str) -> f64 {
    let element = c.find(Locator::Id(image)).await.unwrap();
    until(
        c,
        &format!("document.getElementById('{image}').dataset.state === 'ready'"),
    )
    .await;
    let old = src(c, image).await;
    press(c, slider, Key::Home, 1).await;
    new_image(c, image, &old).await;
    let (start, old) = (pixels(&element).await, src(c, image).await);
    press(c, slider, Key::End, 1).await;
    new_image(c, image, &old).await;
    changed(&start, &pixels(&element).await)
}

/// Presses `key` `times` times on the slider `id`, as a user moving it with the keyboard.
async fn press(c: &Client, id: &str, key: Key, times: usize) {
    let slider = c.find(Locator::Id(id)).await.unwrap();
    let keys: String = std::iter::repeat_n(char::from(key), times).collect();
    slider.send_keys(&keys).await.unwrap();
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn the_page_explores_runs_and_watches_one_train_in_chromium() {
    if std::env::var_os("REVFLOW_TEST_BROWSER").is_none() {
        return;
    }
    // The README's screenshots come from fully trained runs (docs/screenshots.sh).
    let root = match std::env::var_os("REVFLOW_SCREENSHOT_RUNS") {
        Some(dir) => PathBuf::from(dir),
        None => runs("browser"),
    };
    let addr = serve(&root, |c| c);
    let driver = Driver::start();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(drive(addr, driver.port, &root, &temp("browser-files")));
}

/// Drives the page of the server at `addr` (runs `digits` and `moons`) through chromedriver
/// on `port`; `scratch` holds the uploaded files and the browser's profile.
async fn drive(addr: SocketAddr, port: u16, root: &Path, scratch: &Path) {
    let profile = scratch.join("chromium-profile");
    let mut options = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1280,1100",
        format!("--user-data-dir={}", profile.display()),
    ]});
    if Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    let c = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session through chromedriver");
    c.goto(&format!("http://{addr}/")).await.unwrap();

    // Samples: moving the temperature slider from 0.70 to 1.20 redraws the grid.
    until(
        &c,
        "document.getElementById('samples').dataset.state === 'ready'",
    )
    .await;
    let samples = c.find(Locator::Id("samples")).await.unwrap();
    let (before, before_src) = (pixels(&samples).await, src(&c, "samples").await);
    press(&c, "temperature", Key::Right, 10).await;
    until(&c, "document.getElementById('temperature').value === '1.2'").await;
    new_image(&c, "samples", &before_src).await;
    // The first grid back may be an earlier key's: wait for the last one.
    settled(&c, "samples").await;
    let after = pixels(&samples).await;
    assert_eq!(before.len(), after.len());
    let moved = changed(&before, &after);
    assert!(
        moved > 0.2,
        "only {moved:.3} of the sample grid's pixels changed"
    );
    // Back to 0.70: the same seed and temperature give the first grid again, exactly.
    let old = src(&c, "samples").await;
    press(&c, "temperature", Key::Left, 10).await;
    new_image(&c, "samples", &old).await;
    settled(&c, "samples").await;
    assert_eq!(src(&c, "samples").await, before_src);
    assert_eq!(pixels(&samples).await, before);

    // Encode an uploaded PNG of a test digit: decoded back exactly, its bits/dim marked.
    let png = write(scratch, "digit.png", &digit_png(7));
    let old = src(&c, "decoded").await;
    let file = c.find(Locator::Id("file")).await.unwrap();
    file.send_keys(&png.display().to_string()).await.unwrap();
    new_image(&c, "decoded", &old).await;
    let roundtrip = c
        .find(Locator::Id("roundtrip"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        roundtrip.starts_with("0 pixels differ of 64"),
        "{roundtrip:?}"
    );
    let bits = c
        .find(Locator::Id("bits"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bits: f64 = bits.split_whitespace().next().unwrap().parse().unwrap();
    until(&c, "document.getElementById('histogram').dataset.marker").await;
    let marker = js(
        &c,
        "return document.getElementById('histogram').dataset.marker;",
    )
    .await;
    let marker: f64 = marker.as_str().unwrap().parse().unwrap();
    assert!(
        (marker - bits).abs() < 1e-3,
        "marker {marker} for {bits} bits/dim"
    );
    let levels = js(
        &c,
        "return document.querySelectorAll('#levels img').length;",
    )
    .await;
    assert_eq!(levels, json!(2));
    if let Some(dir) = std::env::var_os("REVFLOW_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        let shot = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join("explore.png"), shot).unwrap();
    }

    // Interpolation (t from 0 to 1) and manipulation (α from −1.5 to 1.5 along 0 → 1)
    // change their images.
    for (slider, image) in [("interp-t", "interp"), ("manip-alpha", "manip")] {
        let moved = slide_across(&c, slider, image).await;
        assert!(
            moved > 0.05,
            "{slider} end to end changed {moved:.3} of its pixels"
        );
    }

    // A junk upload: the server's one-line error in the banner.
    let junk = write(scratch, "junk.png", b"this is not an image");
    file.send_keys(&junk.display().to_string()).await.unwrap();
    until(
        &c,
        "document.getElementById('error').textContent.includes('not a PNG, JPEG or GIF image')",
    )
    .await;
    let shown = js(
        &c,
        "return getComputedStyle(document.getElementById('error')).display;",
    )
    .await;
    assert_ne!(shown, json!("none"), "the error banner is visible");

    // The vector run: its density and samples.
    let old = src(&c, "samples").await;
    c.find(Locator::Id("run"))
        .await
        .unwrap()
        .select_by_value("moons")
        .await
        .unwrap();
    new_image(&c, "samples", &old).await;
    let hidden = js(&c, "return document.querySelector('.image-only').hidden;").await;
    assert_eq!(
        hidden,
        json!(true),
        "image-only cards are hidden for a vector run"
    );
    if let Some(dir) = std::env::var_os("REVFLOW_SCREENSHOTS") {
        let shot = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join("vector.png"), shot).unwrap();
    }

    // Watch training: a run that starts now appears, and its curve grows while it trains.
    let trainer = {
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            let glow = GlowConfig {
                levels: 1,
                depth: 1,
                hidden: 8,
                ..GlowConfig::default()
            };
            let train = TrainConfig {
                steps: 300,
                batch_size: 16,
                eval_every: 100,
                checkpoint_every: 100,
                ..TrainConfig::default()
            };
            // A pause at each evaluation, so that the page sees the run in several states.
            let slow = |_: usize| std::thread::sleep(Duration::from_millis(1000));
            train_run(
                &root,
                "live",
                "digits",
                ModelConfig::Glow(glow),
                train,
                false,
                &slow,
            );
        })
    };
    c.find(Locator::Id("tab-watch"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let started = Instant::now();
    while !root.join("live/config.json").exists() {
        assert!(started.elapsed() < PATIENCE, "training did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.find(Locator::Id("watch-refresh"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let live = "#watch-runs input[value='live']";
    until(&c, &format!("document.querySelector(\"{live}\")")).await;
    // Only the live run: its points alone on the charts.
    js(
        &c,
        "document.querySelectorAll('#watch-runs input:checked').forEach((b) => b.click());",
    )
    .await;
    c.find(Locator::Css(live))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let points = "Number(document.getElementById('chart-loss').dataset.points || 0)";
    until(&c, &format!("{points} > 0")).await;
    let first = js(&c, &format!("return {points};")).await.as_u64().unwrap();
    assert!(first < 300, "the page saw the run only once it was done");
    until(&c, &format!("{points} > {first}")).await;
    trainer.join().unwrap();
    until(&c, &format!("{points} === 300")).await;
    until(
        &c,
        "document.querySelector('img.watch-samples[data-run=\"live\"]')?.dataset.step === '300'",
    )
    .await;
    until(
        &c,
        "Number(document.getElementById('chart-test').dataset.points) === 3",
    )
    .await;
    if let Some(dir) = std::env::var_os("REVFLOW_SCREENSHOTS") {
        let shot = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join("watch.png"), shot).unwrap();
    }
    playground(&c).await;
    c.close().await.unwrap();
}

/// The 2-D playground: a long training cancelled, a short one whose pictures change as it
/// learns, then the layer slider moving the points.
async fn playground(c: &Client) {
    let click = |id: &'static str| async move {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    };
    let state = "document.getElementById('pg-status').dataset.state";
    let step = "document.getElementById('pg-density').dataset.step";
    click("tab-playground").await;
    js(c, "document.getElementById('pg-steps').value = '20000';").await;
    click("pg-start").await;
    until(c, &format!("{state} === 'running' && {step}")).await;
    click("pg-cancel").await;
    until(c, &format!("{state} === 'cancelled'")).await;

    js(c, "document.getElementById('pg-steps').value = '800';").await;
    click("pg-start").await;
    until(c, &format!("{state} === 'running' && {step}")).await;
    let (first, old) = (
        js(c, &format!("return {step};")).await,
        src(c, "pg-density").await,
    );
    until(c, &format!("{step} !== {first}")).await;
    assert_ne!(
        src(c, "pg-density").await,
        old,
        "the density picture changed as it learned"
    );
    until(c, &format!("{state} === 'done'")).await;

    let canvas = c.find(Locator::Id("pg-layer-canvas")).await.unwrap();
    let layer = "document.getElementById('pg-layer-canvas').dataset.layer";
    until(c, &format!("{layer} === '0'")).await;
    let data = pixels(&canvas).await;
    press(c, "pg-layer", Key::End, 1).await;
    until(c, &format!("{layer} !== '0'")).await;
    let moved = changed(&data, &pixels(&canvas).await);
    assert!(
        moved > 0.01,
        "the last layer's points differ from the data: {moved:.3}"
    );
    if let Some(dir) = std::env::var_os("REVFLOW_SCREENSHOTS") {
        let shot = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join("playground.png"), shot).unwrap();
    }
}
