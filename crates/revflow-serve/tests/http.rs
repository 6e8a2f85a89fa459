//! Every endpoint of `revflow serve` over real sockets, and every bad request it must refuse
//! with a 4xx and one line of JSON while it keeps serving.

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use common::*;
use revflow::models::{GlowConfig, ModelConfig};
use revflow_serve::client::{get, post, request, Response};
use serde_json::json;

/// One server over two small trained runs, shared by the tests of this file.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let root = runs("http");
        // A class-conditional Glow too, for samples of one class.
        let glow = GlowConfig {
            levels: 2,
            depth: 1,
            hidden: 8,
            classes: 10,
            ..GlowConfig::default()
        };
        train(&root, "ycond", "digits", ModelConfig::Glow(glow), 20);
        write_attributes(&root.join("digits"));
        serve(&root, |c| c)
    })
}

fn sample(addr: SocketAddr, body: serde_json::Value) -> Vec<u8> {
    let r = post(addr, "/api/runs/digits/sample", body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    data_url_pixels(r.json()["image"].as_str().unwrap()).2
}

#[test]
fn the_page_and_its_files_are_served_from_the_binary() {
    let addr = server();
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
    }
    let page = String::from_utf8(get(addr, "/").body).unwrap();
    assert!(page.contains("app.js") && !page.contains("http://") && !page.contains("https://"));
}

#[test]
fn runs_are_listed_with_their_kind_and_classes() {
    let runs = get(server(), "/api/runs").json();
    let runs = runs["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["digits", "moons", "ycond"]);
    assert_eq!(runs[2]["conditional"], true);
    assert_eq!(runs[0]["kind"], "image");
    assert_eq!(runs[0]["shape"], json!([1, 8, 8]));
    assert_eq!(runs[0]["classes"].as_array().unwrap().len(), 10);
    assert_eq!(runs[0]["conditional"], false);
    assert_eq!(runs[1]["kind"], "vector");
    let info = get(server(), "/api/runs/digits").json();
    assert_eq!(info["n_bits"], 8);
    let test = get(server(), "/api/runs/digits/histogram").json()["n"].clone();
    assert_eq!(info["test_size"], test);
}

#[test]
fn samples_follow_the_temperature_and_reproduce_under_concurrent_requests() {
    let addr = server();
    let cold = sample(addr, json!({"temperature": 0.0, "seed": 3, "n": 16}));
    let warm = sample(addr, json!({"temperature": 1.0, "seed": 3, "n": 16}));
    let other_seed = sample(addr, json!({"temperature": 1.0, "seed": 4, "n": 16}));
    let changed = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    assert!(
        changed(&cold, &warm) > cold.len() / 10,
        "temperature changes the grid"
    );
    assert!(
        changed(&warm, &other_seed) > warm.len() / 10,
        "seed changes the grid"
    );
    // The same request from eight clients at once: eight identical grids (host-side latents
    // per request, not a shared generator).
    let grids: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| sample(addr, json!({"temperature": 1.0, "seed": 3, "n": 16}))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(grids.iter().all(|g| *g == warm));
}

/// An `attributes.csv` for the digits run: 40 test digits as PNG files, `round` present on
/// 0, 6, 8 and 9.
fn write_attributes(run: &std::path::Path) {
    let splits = revflow::data::load("digits", None, 0, 0).unwrap();
    let revflow::data::Data::Images(test) = &splits.test else {
        panic!("digits are images")
    };
    std::fs::create_dir_all(run.join("attr")).unwrap();
    let mut csv = String::from("file,round\n");
    for k in 0..40 {
        std::fs::write(run.join(format!("attr/{k}.png")), digit_png(k)).unwrap();
        let round = [0, 6, 8, 9].contains(&test.labels[k]);
        csv += &format!("attr/{k}.png,{}\n", if round { 1 } else { -1 });
    }
    std::fs::write(run.join("attributes.csv"), csv).unwrap();
}

#[test]
fn manipulation_follows_an_attribute_of_the_runs_csv() {
    let addr = server();
    let runs = get(addr, "/api/runs").json();
    assert_eq!(runs["runs"][0]["attributes"], json!(["round"]));
    assert_eq!(runs["runs"][2]["attributes"], json!([]));
    let moved = |alpha: f64| {
        let body = json!({"input": "test:2", "attribute": "round", "alpha": alpha});
        let r = post(addr, "/api/runs/digits/manipulate", body);
        assert_eq!(r.status, 200, "{}", r.error());
        data_url_pixels(r.json()["image"].as_str().unwrap()).2
    };
    let input = post(addr, "/api/runs/digits/encode", json!({"input": "test:2"})).json();
    assert_eq!(
        moved(0.0),
        data_url_pixels(input["original"].as_str().unwrap()).2
    );
    assert_ne!(moved(1.5), moved(0.0));
    for (run, body, needle) in [
        (
            "digits",
            json!({"input": "test:0", "attribute": "square", "alpha": 1}),
            "has no column \"square\"",
        ),
        (
            "ycond",
            json!({"input": "test:0", "attribute": "round", "alpha": 1}),
            "no attributes.csv",
        ),
        (
            "digits",
            json!({"input": "test:0", "from": "0", "to": "1", "attribute": "round", "alpha": 1}),
            "give a direction",
        ),
        (
            "digits",
            json!({"input": "test:0", "alpha": 1}),
            "give a direction",
        ),
    ] {
        let r = post(addr, &format!("/api/runs/{run}/manipulate"), body);
        assert_eq!(r.status, 400);
        assert!(
            r.error().contains(needle),
            "{:?} lacks {needle:?}",
            r.error()
        );
    }
}

#[test]
fn a_class_conditional_run_samples_the_class_asked_for() {
    let addr = server();
    let grid = |class: &str| {
        let body = json!({"class": class, "n": 9, "temperature": 0.5});
        let r = post(addr, "/api/runs/ycond/sample", body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        data_url_pixels(r.json()["image"].as_str().unwrap()).2
    };
    // The same latents (seed 0) under two classes: two different grids.
    assert_ne!(grid("3"), grid("5"));
    assert_eq!(grid("3"), grid("3"));
}

#[test]
fn a_test_example_and_its_upload_decode_exactly_with_the_same_bits_per_dim() {
    let addr = server();
    let by_row = post(addr, "/api/runs/digits/encode", json!({"input": "test:5"})).json();
    let upload = json!({"input": data_url(&digit_png(5))});
    let by_file = post(addr, "/api/runs/digits/encode", upload).json();
    for r in [&by_row, &by_file] {
        assert_eq!(r["pixels_differ"], 0, "{r}");
        assert_eq!(r["pixels"], 64);
        assert!(r["max_error"].as_f64().unwrap() < 0.5);
        let (_, _, decoded) = data_url_pixels(r["decoded"].as_str().unwrap());
        let (_, _, original) = data_url_pixels(r["original"].as_str().unwrap());
        assert_eq!(decoded, original);
        // Two levels: 2×4×4 and 8×2×2 for a 2-level Glow of 8×8 images.
        let shapes: Vec<_> = (r["levels"].as_array().unwrap().iter())
            .map(|l| l["shape"].clone())
            .collect();
        assert_eq!(shapes, [json!([2, 4, 4]), json!([8, 2, 2])]);
    }
    let bits = |r: &serde_json::Value| r["bits_per_dim"].as_f64().unwrap();
    assert!(bits(&by_row).is_finite() && bits(&by_row) > 0.0);
    assert_eq!(bits(&by_row), bits(&by_file));
    let (_, _, a) = data_url_pixels(by_row["original"].as_str().unwrap());
    let (_, _, b) = data_url_pixels(by_file["original"].as_str().unwrap());
    assert_eq!(a, b);
}

#[test]
fn the_histogram_holds_every_test_input_around_the_encoded_ones() {
    let addr = server();
    let h = get(addr, "/api/runs/digits/histogram").json();
    let counts: u64 = h["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counts, h["n"].as_u64().unwrap());
    assert!(counts > 100);
    let (lo, hi) = (h["lo"].as_f64().unwrap(), h["hi"].as_f64().unwrap());
    let encoded = post(addr, "/api/runs/digits/encode", json!({"input": "test:0"})).json();
    let bits = encoded["bits_per_dim"].as_f64().unwrap();
    assert!((lo..=hi).contains(&bits), "{lo} ≤ {bits} ≤ {hi}");
    let mean = h["mean"].as_f64().unwrap();
    assert!(lo < mean && mean < hi);
}

#[test]
fn interpolation_ends_at_its_inputs_and_manipulation_starts_at_its_input() {
    let addr = server();
    let image = |path: &str, body| {
        let r = post(addr, path, body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        data_url_pixels(r.json()["image"].as_str().unwrap()).2
    };
    let decoded = |input: &str| {
        let r = post(addr, "/api/runs/digits/encode", json!({"input": input})).json();
        data_url_pixels(r["original"].as_str().unwrap()).2
    };
    let at = |t: f64| {
        image(
            "/api/runs/digits/interpolate",
            json!({"a": "test:0", "b": "test:1", "t": t}),
        )
    };
    assert_eq!(at(0.0), decoded("test:0"));
    assert_eq!(at(1.0), decoded("test:1"));
    assert_ne!(at(0.5), at(0.0));
    let moved = |alpha: f64| {
        image(
            "/api/runs/digits/manipulate",
            json!({"input": "test:2", "from": "0", "to": "1", "alpha": alpha}),
        )
    };
    assert_eq!(moved(0.0), decoded("test:2"));
    assert_ne!(moved(1.5), moved(0.0));
}

#[test]
fn a_vector_run_samples_over_its_density_and_refuses_image_requests() {
    let addr = server();
    let r = post(addr, "/api/runs/moons/sample", json!({"n": 500, "seed": 1}));
    assert_eq!(r.status, 200);
    let (w, h, pixels) = data_url_pixels(r.json()["image"].as_str().unwrap());
    assert_eq!((w, h), (240, 240));
    // The heat map is not one colour, and the samples are drawn on it in white.
    assert!(pixels.contains(&255) && pixels.iter().any(|&p| p < 100));
    let r = post(addr, "/api/runs/moons/encode", json!({"input": "test:0"}));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("needs an image model"), "{}", r.error());
    assert_eq!(get(addr, "/api/runs/moons/histogram").status, 200);
}

#[test]
fn bad_requests_get_a_4xx_and_one_line_of_json() {
    let addr = server();
    let cases: Vec<(Response, u16, &str)> = vec![
        (
            get(addr, "/api/runs/nope/histogram"),
            404,
            "no run \"nope\"",
        ),
        (get(addr, "/api/runs/nope"), 404, "no run \"nope\""),
        (get(addr, "/api/runs/%FF/histogram"), 400, "UTF-8"),
        (
            get(addr, "/api/runs/..%2F..%2Fetc/histogram"),
            400,
            "not a run name",
        ),
        (
            get(addr, "/api/runs/.hidden/histogram"),
            400,
            "not a run name",
        ),
        (get(addr, "/nothing/here"), 404, "nothing at /nothing/here"),
        (
            request(addr, "DELETE", "/api/runs", &[], b""),
            405,
            "not allowed",
        ),
        (
            request(addr, "POST", "/api/runs/digits/sample", &[], b"{not json"),
            400,
            "bad request body",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"temprature": 1})),
            400,
            "unknown field",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"temperature": -1})),
            400,
            "temperature must be",
        ),
        (
            post(
                addr,
                "/api/runs/digits/sample",
                json!({"temperature": 1e300}),
            ),
            400,
            "temperature must be",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"n": 0})),
            400,
            "n must be",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"n": 1000000})),
            400,
            "n must be",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"class": "eleven"})),
            400,
            "unknown class",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"class": "3"})),
            400,
            "not class-conditional",
        ),
        (
            post(addr, "/api/runs/digits/sample", json!({"context": [1.0]})),
            400,
            "not conditioned on a context",
        ),
        (
            post(
                addr,
                "/api/runs/digits/encode",
                json!({"input": "/etc/passwd"}),
            ),
            400,
            "not an input",
        ),
        (
            post(
                addr,
                "/api/runs/digits/encode",
                json!({"input": "test:0..5"}),
            ),
            400,
            "not an input",
        ),
        (
            post(
                addr,
                "/api/runs/digits/encode",
                json!({"input": "test:99999"}),
            ),
            400,
            "test",
        ),
        (
            post(
                addr,
                "/api/runs/digits/encode",
                json!({"input": "data:image/png;base64,aGVsbG8="}),
            ),
            400,
            "not a PNG, JPEG or GIF",
        ),
        (
            post(
                addr,
                "/api/runs/digits/encode",
                json!({"input": "data:image/png;base64,@@@"}),
            ),
            400,
            "not valid base64",
        ),
        (
            post(
                addr,
                "/api/runs/digits/interpolate",
                json!({"a": "test:0", "b": "test:1", "t": 9}),
            ),
            400,
            "t must be",
        ),
        (
            post(
                addr,
                "/api/runs/digits/manipulate",
                json!({"input": "test:0", "from": "0", "to": "x", "alpha": 1}),
            ),
            400,
            "unknown class",
        ),
    ];
    for (response, status, needle) in cases {
        assert_eq!(
            response.status,
            status,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let error = response.error();
        assert!(!error.contains('\n'), "one line: {error:?}");
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
    // The server is still up.
    assert_eq!(get(addr, "/api/runs").status, 200);
}

#[test]
fn an_upload_of_the_wrong_size_is_refused_from_its_header() {
    let addr = server();
    // 16×16 instead of 8×8.
    let mut png = Vec::new();
    image::GrayImage::new(16, 16)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let r = post(
        addr,
        "/api/runs/digits/encode",
        json!({"input": data_url(&png)}),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("16×16"), "{}", r.error());
    // A decompression bomb: a header announcing 100000×100000 pixels (10 GB) over a few
    // bytes of data. Refused from the header, never decoded.
    let r = post(
        addr,
        "/api/runs/digits/encode",
        json!({"input": data_url(&bomb_png(100_000))}),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("100000×100000"), "{}", r.error());
}

#[test]
fn a_body_past_the_limit_is_413() {
    let root = runs("limit");
    let addr = serve(&root, |c| revflow_serve::ServeConfig {
        upload_limit: 4096,
        ..c
    });
    let big = json!({"input": data_url(&vec![0u8; 8192])});
    let r = post(addr, "/api/runs/digits/encode", big);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("4096 bytes"), "{}", r.error());
    assert_eq!(
        post(addr, "/api/runs/digits/encode", json!({"input": "test:0"})).status,
        200
    );
}

#[test]
fn other_sites_are_refused_by_host_and_origin() {
    let addr = server();
    let r = request(addr, "GET", "/api/runs", &[("Host", "evil.example")], b"");
    assert_eq!(r.status, 403);
    assert!(r.error().contains("evil.example"));
    let r = request(addr, "GET", "/", &[("Host", "evil.example:80")], b"");
    assert_eq!(r.status, 403);
    let r = request(
        addr,
        "POST",
        "/api/runs/digits/sample",
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(r.status, 403);
    assert!(r.error().contains("evil.example"));
    // The page's own origin, and the other loopback names, pass.
    let own = format!("http://{addr}");
    let r = request(
        addr,
        "POST",
        "/api/runs/digits/sample",
        &[("Origin", own.as_str())],
        b"{}",
    );
    assert_eq!(r.status, 200);
    let localhost = format!("localhost:{}", addr.port());
    let r = request(
        addr,
        "GET",
        "/api/runs",
        &[("Host", localhost.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);
    // Through a tunnel to another local port, or at port 80 (no port in Host): still ours.
    for host in ["localhost:9000", "127.0.0.1", "[::1]:8000"] {
        let r = request(addr, "GET", "/api/runs", &[("Host", host)], b"");
        assert_eq!(r.status, 200, "{host}");
    }
    // An image or script of another site: the browser marks it, the server refuses it.
    let marked = [("Sec-Fetch-Site", "cross-site")];
    let r = request(addr, "GET", "/api/runs/digits/histogram", &marked, b"");
    assert_eq!(r.status, 403);
    assert!(r.error().contains("other sites"));
    let own = [("Sec-Fetch-Site", "same-origin")];
    assert_eq!(request(addr, "GET", "/api/runs", &own, b"").status, 200);
}

#[test]
fn a_server_reachable_from_other_machines_needs_its_token() {
    let root = runs("token");
    let config = revflow_serve::ServeConfig {
        host: "0.0.0.0".parse().unwrap(),
        port: 0,
        ..revflow_serve::ServeConfig::new(&root, Default::default())
    };
    let server = revflow_serve::Server::bind(config).unwrap();
    assert!(
        server.url.starts_with("http://localhost:"),
        "{}",
        server.url
    );
    let token = server
        .url
        .split("token=")
        .nth(1)
        .expect("a token in the URL")
        .to_string();
    assert_eq!(token.len(), 32);
    let addr = server.spawn();
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let host = format!("0.0.0.0:{}", addr.port());
    let r = request(local, "GET", "/api/runs", &[("Host", host.as_str())], b"");
    assert_eq!(r.status, 401);
    assert!(r.error().contains("token"));
    let r = request(
        local,
        "GET",
        "/api/runs",
        &[("X-Revflow-Token", "0123")],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = request(
        local,
        "GET",
        "/api/runs",
        &[("X-Revflow-Token", token.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);
    // Other machines reach it by this machine's name; the token is what lets them in, in a
    // header or (an EventSource's) in the query.
    let lan = [
        ("Host", "workstation.lan:8000"),
        ("X-Revflow-Token", token.as_str()),
    ];
    assert_eq!(request(local, "GET", "/api/runs", &lan, b"").status, 200);
    let query = format!("/api/runs?token={token}");
    let r = request(
        local,
        "GET",
        &query,
        &[("Host", "workstation.lan:8000")],
        b"",
    );
    assert_eq!(r.status, 200);
    // Its own page's origin passes; another one does not.
    let page = [
        ("Host", "workstation.lan:8000"),
        ("Origin", "http://workstation.lan:8000"),
        ("X-Revflow-Token", token.as_str()),
    ];
    assert_eq!(request(local, "GET", "/api/runs", &page, b"").status, 200);
    let other = [
        ("Host", "workstation.lan:8000"),
        ("Origin", "http://evil.example"),
        ("X-Revflow-Token", token.as_str()),
    ];
    assert_eq!(request(local, "GET", "/api/runs", &other, b"").status, 403);
    // The page itself holds no data and loads without it (it reads the token from its URL).
    assert_eq!(get(local, "/").status, 200);
}

#[test]
fn past_the_queue_requests_get_503_with_retry_after_and_the_server_keeps_serving() {
    let root = runs("queue");
    let addr = serve(&root, |c| revflow_serve::ServeConfig { queue: 1, ..c });
    let mut busy = None;
    // Twelve clients at once on a queue of one: some are turned away (a few rounds, in case
    // a slow machine serialises them).
    for _ in 0..5 {
        let responses: Vec<Response> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|_| s.spawn(|| post(addr, "/api/runs/digits/sample", json!({"n": 256}))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(responses.iter().all(|r| r.status == 200 || r.status == 503));
        if let Some(r) = responses.into_iter().find(|r| r.status == 503) {
            busy = Some(r);
            break;
        }
    }
    let busy = busy.expect("a 503 among concurrent requests past the queue");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(busy.error().contains("busy"));
    assert_eq!(
        post(addr, "/api/runs/digits/sample", json!({"n": 4})).status,
        200
    );
}

#[test]
fn a_run_without_a_checkpoint_yet_is_a_409_not_an_error_of_the_server() {
    server();
    let trained = std::env::temp_dir().join(format!("revflow-serve-http-{}", std::process::id()));
    let root = temp("starting");
    std::fs::create_dir_all(root.join("starting")).unwrap();
    let config = trained.join("digits/config.json");
    std::fs::copy(config, root.join("starting/config.json")).unwrap();
    let addr = serve(&root, |c| c);
    let r = get(addr, "/api/runs/starting");
    assert_eq!(r.status, 409);
    assert!(r.error().contains("no checkpoint yet"), "{}", r.error());
}

#[test]
fn a_folder_that_is_not_one_is_refused_at_start() {
    let config = revflow_serve::ServeConfig::new("/no/such/folder", Default::default());
    let e = revflow_serve::Server::bind(config).err().expect("refused");
    assert!(e.to_string().contains("/no/such/folder"), "{e}");
}

/// A PNG of `side`×`side` grey pixels according to its header, with almost no data.
fn bomb_png(side: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // A zlib stream of one empty stored block.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

#[test]
fn a_run_is_watched_live_while_it_trains_and_again_when_it_resumes() {
    use revflow::training::TrainConfig;
    use revflow_serve::client::EventStream;
    use std::time::{Duration, Instant};
    let root = temp("watch");
    let addr = serve(&root, |c| c);
    let glow = GlowConfig {
        levels: 1,
        depth: 1,
        hidden: 8,
        ..GlowConfig::default()
    };
    let config = |steps| TrainConfig {
        steps,
        batch_size: 16,
        eval_every: 100,
        checkpoint_every: 100,
        ..TrainConfig::default()
    };
    // A pause after each sample picture, so that the watcher sees the run in several states
    // however fast this machine trains.
    let slow = |_: usize| std::thread::sleep(Duration::from_millis(700));
    let trainer = {
        let (root, glow) = (root.clone(), glow.clone());
        std::thread::spawn(move || {
            train_run(
                &root,
                "live",
                "digits",
                ModelConfig::Glow(glow),
                config(300),
                false,
                &slow,
            )
        })
    };
    let started = Instant::now();
    while !root.join("live/config.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut events = EventStream::open(addr, "/api/runs/live/watch", Duration::from_secs(60));
    // Every event until the checkpoint of step `last`: (metrics events, steps seen, event names).
    let mut follow = |last: u64| {
        let (mut batches, mut steps, mut names) = (0, Vec::new(), Vec::new());
        loop {
            let (name, data) = events.next_event();
            match name.as_str() {
                "metrics" => {
                    batches += 1;
                    let lines = data.as_array().unwrap();
                    steps.extend(
                        lines
                            .iter()
                            .filter(|l| l.get("loss").is_some())
                            .map(|l| l["step"].as_u64().unwrap()),
                    );
                }
                "reset" => steps.clear(),
                "samples" => assert!(data["image"]
                    .as_str()
                    .unwrap()
                    .starts_with("data:image/png;base64,")),
                "checkpoint" | "problem" => {}
                other => panic!("unexpected event {other}"),
            }
            names.push((name.clone(), data.get("step").and_then(|s| s.as_u64())));
            if name == "checkpoint" && data["step"] == last {
                return (batches, steps, names);
            }
        }
    };
    let (batches, steps, names) = follow(300);
    trainer.join().unwrap();
    assert!(
        batches >= 2,
        "the curve arrived in {batches} piece(s), not live"
    );
    assert_eq!(
        steps,
        (1..=300).collect::<Vec<u64>>(),
        "each training line once, in order"
    );
    assert!(names.contains(&("samples".into(), Some(300))), "{names:?}");
    assert!(
        names.contains(&("checkpoint".into(), Some(100))),
        "{names:?}"
    );
    // The explore view loads the newest checkpoint.
    assert_eq!(get(addr, "/api/runs/live").json()["step"], 300);
    let csv = String::from_utf8(get(addr, "/api/runs/live/curve.csv?metric=loss").body).unwrap();
    assert_eq!(csv.lines().count(), 301);
    assert!(csv.starts_with("step,loss\n1,"));
    let r = get(addr, "/api/runs/live/curve.csv?metric=temperature");
    assert_eq!(r.status, 400);
    assert!(r.error().contains("not one of loss"));
    let config_json = get(addr, "/api/runs/live/config").json();
    assert_eq!(config_json["config"]["train"]["steps"], 300);

    // A resume rewrites metrics.jsonl: the watcher is told to start again, then gets the
    // whole curve to the new end.
    train_run(
        &root,
        "live",
        "digits",
        ModelConfig::Glow(glow),
        config(400),
        true,
        &|_| {},
    );
    let (_, steps, names) = follow(400);
    assert!(names.iter().any(|(n, _)| n == "reset"), "{names:?}");
    assert_eq!(steps, (1..=400).collect::<Vec<u64>>());
    assert_eq!(get(addr, "/api/runs/live").json()["step"], 400);
}

#[test]
fn the_playground_trains_steps_through_layers_cancels_and_saves() {
    use revflow_serve::client::EventStream;
    use std::time::Duration;
    let root = temp("playground");
    let addr = serve(&root, |c| c);
    let start = |body: serde_json::Value| post(addr, "/api/playground", body);
    // Absurd requests are refused with the range.
    for (body, needle) in [
        (
            json!({"set": "moons", "flow": "affine", "steps": 1_000_000_000u64, "layers": 4, "hidden": 16}),
            "steps must be from 10 to 20000",
        ),
        (
            json!({"set": "moons", "flow": "affine", "steps": 100, "layers": 100, "hidden": 16}),
            "layers must be from 1 to 16",
        ),
        (
            json!({"set": "moons", "flow": "affine", "steps": 100, "layers": 4, "hidden": 0}),
            "hidden must be",
        ),
        (
            json!({"set": "../etc", "flow": "affine", "steps": 100, "layers": 4, "hidden": 16}),
            "is not one of",
        ),
        (
            json!({"set": "moons", "flow": "glow", "steps": 100, "layers": 4, "hidden": 16}),
            "affine, spline, maf",
        ),
    ] {
        let r = start(body);
        assert_eq!(r.status, 400);
        assert!(
            r.error().contains(needle),
            "{:?} lacks {needle:?}",
            r.error()
        );
    }
    // A training to its end: progress, pictures that change as it learns, then done.
    let body = json!({"set": "moons", "flow": "affine", "steps": 300, "layers": 4, "hidden": 16});
    let id = start(body).json()["id"].as_u64().unwrap();
    let mut events = EventStream::open(
        addr,
        &format!("/api/playground/{id}/events"),
        Duration::from_secs(120),
    );
    let (mut densities, mut progress) = (Vec::new(), 0);
    let bits = loop {
        let (name, data) = events.next_event();
        match name.as_str() {
            "progress" => progress += 1,
            "snapshot" => densities.push(data["density"].as_str().unwrap().to_string()),
            "done" => break data["test_bits_per_dim"].as_f64().unwrap(),
            other => panic!("{other}: {data}"),
        }
    };
    assert!(
        progress >= 10 && densities.len() == 10,
        "{progress} progress, {} pictures",
        densities.len()
    );
    assert_ne!(
        densities[0], densities[9],
        "the density changed as it learned"
    );
    assert!(bits.is_finite() && bits < 3.0, "{bits}");
    assert_eq!(
        get(addr, &format!("/api/playground/{id}")).json()["state"],
        "done"
    );
    // Its layers: the data first, the latents last, every coupling with its key kept.
    let layers = get(addr, &format!("/api/playground/{id}/layers")).json();
    let layers = layers["layers"].as_array().unwrap();
    assert!(layers.len() > 4);
    assert_eq!(layers[0]["name"], "data x");
    let coupled: Vec<_> = layers
        .iter()
        .filter(|l| l["name"].as_str().unwrap().contains("coupling"))
        .collect();
    assert_eq!(coupled.len(), 4);
    assert!(coupled.iter().all(|l| l["key"].is_u64()));
    let spread = |l: &serde_json::Value| {
        let points = l["points"].as_array().unwrap();
        let sq: f64 = points
            .iter()
            .flat_map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
            .map(|v| v * v)
            .sum();
        (sq / (2.0 * points.len() as f64)).sqrt()
    };
    let z = spread(layers.last().unwrap());
    assert!(
        (0.5..2.0).contains(&z),
        "the latents' spread {z} is near a standard Gaussian's"
    );
    // Saved as a run, the explore view samples it.
    let r = post(
        addr,
        &format!("/api/playground/{id}/save"),
        json!({"name": "moons-affine"}),
    );
    assert_eq!(r.status, 200, "{}", r.error());
    let r = post(addr, "/api/runs/moons-affine/sample", json!({"n": 100}));
    assert_eq!(r.status, 200, "{}", r.error());
    let again = post(
        addr,
        &format!("/api/playground/{id}/save"),
        json!({"name": "moons-affine"}),
    );
    assert_eq!(again.status, 409);
    let bad = post(
        addr,
        &format!("/api/playground/{id}/save"),
        json!({"name": "../x"}),
    );
    assert_eq!(bad.status, 400);
    // A long training cancelled by the page; another cancelled by its page going away.
    let long =
        json!({"set": "2spirals", "flow": "spline", "steps": 20000, "layers": 2, "hidden": 8});
    let id = start(long.clone()).json()["id"].as_u64().unwrap();
    let mut events = EventStream::open(
        addr,
        &format!("/api/playground/{id}/events"),
        Duration::from_secs(120),
    );
    assert_eq!(events.next_event().0, "progress");
    let second = start(long.clone()).json()["id"].as_u64().unwrap();
    // Two run at once; a third waits its turn.
    let third = start(long.clone());
    assert_eq!(third.status, 503);
    assert!(third.error().contains("cancel one or wait"));
    assert_eq!(
        request(addr, "DELETE", &format!("/api/playground/{id}"), &[], b"").status,
        200
    );
    loop {
        let (name, _) = events.next_event();
        if name == "cancelled" {
            break;
        }
        assert_eq!(name, "progress");
    }
    let mut watching = EventStream::open(
        addr,
        &format!("/api/playground/{second}/events"),
        Duration::from_secs(120),
    );
    assert_eq!(watching.next_event().0, "progress");
    drop(watching);
    let status = |id: u64| get(addr, &format!("/api/playground/{id}")).json()["state"].clone();
    let started = std::time::Instant::now();
    while status(second) != "cancelled" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the disconnected page's training goes on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(addr, "/api/playground/999").status, 404);
}
