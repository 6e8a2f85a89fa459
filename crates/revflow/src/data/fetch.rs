//! `revflow data fetch`: downloads the public data sets from their usual mirrors, checks
//! each file against its published SHA-256, and moves it into place only once verified.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use super::cifar;
use crate::{FlowError, Result};

/// One published file: name, size in bytes and SHA-256.
struct Remote {
    file: &'static str,
    bytes: u64,
    sha256: &'static str,
}

/// Checksums as published with the files (they agree with the TensorFlow Datasets records).
const MNIST_MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];
const MNIST_FILES: [Remote; 4] = [
    Remote {
        file: "train-images-idx3-ubyte.gz",
        bytes: 9_912_422,
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    },
    Remote {
        file: "train-labels-idx1-ubyte.gz",
        bytes: 28_881,
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    },
    Remote {
        file: "t10k-images-idx3-ubyte.gz",
        bytes: 1_648_877,
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    },
    Remote {
        file: "t10k-labels-idx1-ubyte.gz",
        bytes: 4_542,
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
];
const FASHION_MIRRORS: [&str; 1] = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"];
const FASHION_FILES: [Remote; 4] = [
    Remote {
        file: "train-images-idx3-ubyte.gz",
        bytes: 26_421_880,
        sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    },
    Remote {
        file: "train-labels-idx1-ubyte.gz",
        bytes: 29_515,
        sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    },
    Remote {
        file: "t10k-images-idx3-ubyte.gz",
        bytes: 4_422_102,
        sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    },
    Remote {
        file: "t10k-labels-idx1-ubyte.gz",
        bytes: 5_148,
        sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
];
const CIFAR_MIRRORS: [&str; 1] = ["https://www.cs.toronto.edu/~kriz/"];
const CIFAR_ARCHIVE: Remote = Remote {
    file: "cifar-10-binary.tar.gz",
    bytes: 170_052_171,
    sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
};
/// Size of each unpacked CIFAR-10 batch: 10000 records of 3073 bytes.
const CIFAR_BATCH_BYTES: u64 = 10_000 * 3073;

/// Opens a URL for reading, or says why not in a few words.
type Getter<'a> = &'a dyn Fn(&str) -> std::result::Result<Box<dyn Read>, String>;

/// Downloads `mnist`, `fashion-mnist` or `cifar10` into `dir` (created if needed), in the
/// layout [`load`](super::load) reads. Files already there and verified are kept.
pub fn fetch(name: &str, dir: &Path) -> Result<()> {
    fetch_with(name, dir, &http_get)
}

fn fetch_with(name: &str, dir: &Path, get: Getter) -> Result<()> {
    let (mirrors, files): (&[&str], &[Remote]) = match name {
        "mnist" => (&MNIST_MIRRORS, &MNIST_FILES),
        "fashion-mnist" => (&FASHION_MIRRORS, &FASHION_FILES),
        "cifar10" => (&CIFAR_MIRRORS, std::slice::from_ref(&CIFAR_ARCHIVE)),
        "digits" => {
            return Err(FlowError::data(
                name,
                "is embedded in revflow and needs no download",
            ));
        }
        _ => {
            return Err(FlowError::data(
                name,
                "cannot be downloaded; `revflow data fetch` knows mnist, fashion-mnist and cifar10",
            ));
        }
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| FlowError::data(dir.display(), format!("cannot create folder: {e}")))?;
    if name == "cifar10" && cifar_present(dir) {
        return Ok(());
    }
    let mut downloaded = Vec::new();
    for remote in files {
        downloaded.push(download(name, mirrors, files, remote, dir, get)?);
    }
    if name == "cifar10" {
        extract_cifar(&downloaded[0], dir)?;
        // The batches are all that is read; the 170 MB archive is not worth keeping.
        let _ = std::fs::remove_file(&downloaded[0]);
    }
    Ok(())
}

fn http_get(url: &str) -> std::result::Result<Box<dyn Read>, String> {
    // Short limits before the body, so that no network fails fast; a long one for the body,
    // which can be 170 MB on a slow link.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(Duration::from_secs(5)))
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(3600)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    Ok(Box::new(response.into_body().into_reader()))
}

/// Puts a verified copy of `remote` at `dir/remote.file`, trying each mirror in turn.
fn download(
    name: &str,
    mirrors: &[&str],
    all: &[Remote],
    remote: &Remote,
    dir: &Path,
    get: Getter,
) -> Result<PathBuf> {
    let dest = dir.join(remote.file);
    if dest.is_file() && sha256_of(&dest)? == remote.sha256 {
        return Ok(dest);
    }
    let mut last = String::new();
    for base in mirrors {
        let url = format!("{base}{}", remote.file);
        match get(&url) {
            Err(e) => last = format!("could not download {url}: {e}"),
            Ok(body) => match save_verified(body, &dest, remote)? {
                Ok(()) => return Ok(dest),
                Err(problem) => last = format!("{url}: {problem}"),
            },
        }
    }
    let names: Vec<&str> = all.iter().map(|r| r.file).collect();
    Err(FlowError::data(
        name,
        format!(
            "{last}; download the files by hand into {} ({} from {})",
            dir.display(),
            names.join(", "),
            mirrors[0]
        ),
    ))
}

/// A download being written: created exclusively under a random name beside its destination
/// (never through a file or symlink someone planted), removed unless it is kept.
struct Part(tempfile::NamedTempFile);

impl Part {
    fn beside(dest: &Path) -> Result<Part> {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        crate::files::builder(&format!(".{name}."), 0o666)
            .suffix(".part")
            .tempfile_in(crate::files::parent(dest))
            .map(Part)
            .map_err(|e| FlowError::data(dest.display(), format!("cannot write: {e}")))
    }

    /// Flushes the file to disk and renames it to `dest`.
    fn keep_as(self, dest: &Path) -> Result<()> {
        let failed = |e: std::io::Error| {
            FlowError::data(
                dest.display(),
                format!("cannot move download into place: {e}"),
            )
        };
        self.0.as_file().sync_all().map_err(failed)?;
        self.0.persist(dest).map_err(|e| failed(e.error))?;
        crate::files::sync_dir(crate::files::parent(dest))
    }
}

/// Streams `body` into `dest` if its SHA-256 matches. The outer error is a local failure
/// (disk); the inner one a bad download, worth another mirror.
fn save_verified(
    mut body: Box<dyn Read>,
    dest: &Path,
    remote: &Remote,
) -> Result<std::result::Result<(), String>> {
    let mut tmp = Part::beside(dest)?;
    let local = |e: std::io::Error| FlowError::data(dest.display(), format!("cannot write: {e}"));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Ok(Err(format!(
                    "download interrupted after {total} bytes: {e}"
                )))
            }
        };
        total += n as u64;
        if total > remote.bytes {
            return Ok(Err(format!(
                "is larger than the expected {} bytes",
                remote.bytes
            )));
        }
        hasher.update(&buf[..n]);
        tmp.0.write_all(&buf[..n]).map_err(local)?;
    }
    let found = hex(&hasher.finalize());
    if found != remote.sha256 {
        return Ok(Err(format!(
            "checksum mismatch: expected SHA-256 {} ({} bytes), found {found} ({total} bytes)",
            remote.sha256, remote.bytes
        )));
    }
    tmp.keep_as(dest)?;
    Ok(Ok(()))
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path)
        .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cifar_files() -> impl Iterator<Item = &'static str> {
    cifar::TRAIN_FILES.into_iter().chain([cifar::TEST_FILE])
}

/// Whether all six unpacked CIFAR-10 batches are already in place with their full size.
fn cifar_present(dir: &Path) -> bool {
    let base = dir.join(cifar::SUBDIR);
    cifar_files()
        .all(|f| std::fs::metadata(base.join(f)).is_ok_and(|m| m.len() == CIFAR_BATCH_BYTES))
}

/// Unpacks the six batch files of the CIFAR-10 archive into `dir/cifar-10-batches-bin`.
/// Only those names are written (never a path taken from the archive).
fn extract_cifar(archive: &Path, dir: &Path) -> Result<()> {
    let out_dir = dir.join(cifar::SUBDIR);
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| FlowError::data(out_dir.display(), format!("cannot create folder: {e}")))?;
    let bad = |e: std::io::Error| {
        FlowError::data(
            archive.display(),
            format!("cannot unpack: {e}; delete it and fetch again"),
        )
    };
    let file = File::open(archive).map_err(bad)?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let in_batches =
            path.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new(cifar::SUBDIR));
        let Some(wanted) = cifar_files()
            .find(|&f| f == file_name)
            .filter(|_| in_batches)
        else {
            continue;
        };
        let dest = out_dir.join(wanted);
        let mut tmp = Part::beside(&dest)?;
        std::io::copy(&mut entry, &mut tmp.0).map_err(bad)?;
        tmp.keep_as(&dest)?;
    }
    if let Some(missing) = cifar_files().find(|f| !out_dir.join(f).is_file()) {
        return Err(FlowError::data(
            archive.display(),
            format!(
                "has no {}/{missing}; is it the CIFAR-10 binary version?",
                cifar::SUBDIR
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests_support::temp_dir;
    use std::cell::Cell;
    use std::time::Instant;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn offline_fails_with_one_clear_line_and_leaves_nothing() {
        let dir = temp_dir("fetch_offline");
        let calls = Cell::new(0);
        let offline = |_: &str| -> std::result::Result<Box<dyn Read>, String> {
            calls.set(calls.get() + 1);
            Err("Connection refused".into())
        };
        let e = fetch_with("mnist", &dir, &offline).unwrap_err().to_string();
        assert!(e.starts_with("mnist: could not download https://"), "{e}");
        assert!(
            e.contains("train-images-idx3-ubyte.gz: Connection refused"),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "download the files by hand into {}",
                dir.display()
            )),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert_eq!(calls.get(), 2, "each mirror tried once");
        assert!(files_in(&dir).is_empty());
    }

    #[test]
    fn real_client_fails_fast_on_a_closed_port() {
        let start = Instant::now();
        let e = match http_get("http://127.0.0.1:9/train-images-idx3-ubyte.gz") {
            Ok(_) => panic!("nothing should answer on the discard port"),
            Err(e) => e,
        };
        assert!(!e.is_empty());
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn checksum_mismatch_and_interrupted_downloads_leave_nothing() {
        let dir = temp_dir("fetch_bad");
        let wrong =
            |_: &str| -> std::result::Result<Box<dyn Read>, String> { Ok(Box::new(&b"hello"[..])) };
        let e = fetch_with("fashion-mnist", &dir, &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checksum mismatch: expected SHA-256 3aede38d"),
            "{e}"
        );
        assert!(
            e.contains(
                "found 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 (5 bytes)"
            ),
            "{e}"
        );
        assert!(files_in(&dir).is_empty());

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("connection reset"))
            }
        }
        let broken =
            |_: &str| -> std::result::Result<Box<dyn Read>, String> { Ok(Box::new(Broken)) };
        let e = fetch_with("cifar10", &dir, &broken)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("download interrupted after 0 bytes: connection reset"),
            "{e}"
        );
        assert_eq!(files_in(&dir), Vec::<String>::new());
    }

    #[test]
    fn verified_download_is_written_once() {
        let dir = temp_dir("fetch_ok");
        let remote = Remote {
            file: "hello.txt",
            bytes: 5,
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        };
        let serve = |url: &str| -> std::result::Result<Box<dyn Read>, String> {
            if url.starts_with("http://first/") {
                Err("timed out".into())
            } else {
                Ok(Box::new(&b"hello"[..]))
            }
        };
        let mirrors = ["http://first/", "http://second/"];
        let path = download("t", &mirrors, &[], &remote, &dir, &serve).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(files_in(&dir), vec!["hello.txt"]);
        // Already there and verified: no network needed.
        let offline =
            |_: &str| -> std::result::Result<Box<dyn Read>, String> { Err("offline".into()) };
        download("t", &mirrors, &[], &remote, &dir, &offline).unwrap();
    }

    #[test]
    fn cifar_archive_unpacks_to_the_loader_layout() {
        let dir = temp_dir("fetch_cifar");
        let archive = dir.join("cifar-10-binary.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&archive).unwrap(),
                flate2::Compression::fast(),
            );
            let mut builder = tar::Builder::new(gz);
            let mut add = |path: &str, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                builder.append_data(&mut h, path, data).unwrap();
            };
            let record: Vec<u8> = std::iter::once(3)
                .chain(std::iter::repeat_n(9, 3072))
                .collect();
            for f in cifar_files() {
                add(&format!("cifar-10-batches-bin/{f}"), &record);
            }
            add("cifar-10-batches-bin/readme.html", b"<html>");
            builder.into_inner().unwrap().finish().unwrap();
        }
        extract_cifar(&archive, &dir).unwrap();
        assert_eq!(files_in(&dir.join(cifar::SUBDIR)).len(), 6);
        let s = crate::data::load("cifar10", Some(&dir), 0, 0).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (5, 1));

        std::fs::remove_file(dir.join(cifar::SUBDIR).join("test_batch.bin")).unwrap();
        let gz = flate2::write::GzEncoder::new(
            File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        tar::Builder::new(gz)
            .into_inner()
            .unwrap()
            .finish()
            .unwrap();
        let e = extract_cifar(&archive, &dir).unwrap_err().to_string();
        assert!(
            e.contains("has no cifar-10-batches-bin/test_batch.bin"),
            "{e}"
        );
    }

    #[test]
    fn names_that_cannot_be_fetched() {
        let dir = temp_dir("fetch_names");
        let e = fetch("digits", &dir).unwrap_err().to_string();
        assert!(e.contains("embedded"), "{e}");
        let e = fetch("moons", &dir).unwrap_err().to_string();
        assert!(e.contains("mnist, fashion-mnist and cifar10"), "{e}");
    }
}
