//! What the server's tests share: small trained runs and a plain HTTP client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use revflow::burn::tensor::Device;
use revflow::data::{self, Data};
use revflow::models::{GlowConfig, ModelConfig, VectorFlowConfig};
use revflow::training::{Run, RunConfig, RunDir, TrainConfig};
use revflow_serve::{ServeConfig, Server};

/// A fresh folder for one test.
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revflow-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn train(root: &Path, name: &str, data: &str, model: ModelConfig, steps: usize) {
    let splits = data::load(data, None, 0, 2000).unwrap();
    let config = RunConfig {
        model,
        train: TrainConfig {
            steps,
            batch_size: 32,
            eval_every: steps,
            checkpoint_every: steps,
            ..TrainConfig::default()
        },
        data: data.to_string(),
        data_dir: None,
        data_samples: 2000,
        data_resize: None,
        class_names: splits.train.class_names().to_vec(),
    };
    let run = Run {
        config,
        data: &splits,
        dir: RunDir::new(&root.join(name)),
        draw_samples: None,
        stop: None,
        group: None,
        device: Device::default(),
    };
    run.train(false, &mut |_| {}).unwrap();
}

/// A folder with two small trained runs: `digits` (a Glow of 8×8 digits, 8 bits) and `moons`
/// (a 2-D flow).
pub fn runs(name: &str) -> PathBuf {
    let root = temp(name);
    let glow = GlowConfig {
        levels: 2,
        depth: 2,
        hidden: 16,
        n_bits: 8,
        ..GlowConfig::default()
    };
    train(&root, "digits", "digits", ModelConfig::Glow(glow), 60);
    let flow = VectorFlowConfig {
        dims: 2,
        steps: 4,
        hidden: 16,
        ..Default::default()
    };
    train(&root, "moons", "moons", ModelConfig::Vector(flow), 100);
    root
}

/// A server on a free loopback port over `root`.
pub fn serve(root: &Path, configure: impl FnOnce(ServeConfig) -> ServeConfig) -> SocketAddr {
    let config = configure(ServeConfig {
        port: 0,
        ..ServeConfig::new(root, Device::default())
    });
    Server::bind(config).unwrap().spawn()
}

/// An HTTP response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The one-line error of a failed request.
    pub fn error(&self) -> String {
        let error = self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!error.contains('\n'), "one line: {error}");
        error
    }
}

/// Sends one request with `headers` (the Host header is the server's own unless given).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading all of a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = unchunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

pub fn post(addr: SocketAddr, path: &str, body: serde_json::Value) -> Response {
    let body = body.to_string();
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// The pixels of a PNG data URL, as 8-bit grey values.
pub fn data_url_pixels(url: &str) -> (u32, u32, Vec<u8>) {
    use base64::Engine;
    let payload = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    let image = image::load_from_memory(&bytes).unwrap().to_luma8();
    (image.width(), image.height(), image.into_raw())
}

/// A test digit of the embedded data as a PNG file's bytes.
pub fn digit_png(k: usize) -> Vec<u8> {
    let splits = data::load("digits", None, 0, 0).unwrap();
    let Data::Images(test) = &splits.test else {
        panic!("digits are images")
    };
    let image = image::GrayImage::from_raw(8, 8, test.image(k).to_vec()).unwrap();
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

pub fn data_url(png: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}
