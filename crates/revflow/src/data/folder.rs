//! A folder of PNG/JPEG images. Sub-folders are classes; images directly in the folder are
//! unlabelled.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use super::convert::{planar, Convert};
use super::ImageSet;
use crate::{FlowError, Result};

/// Loads every PNG/JPEG image under `path` (see [`FolderReader`] for which).
///
/// With `resize = Some((w, h))` every image is resized to w×h (triangle filter); otherwise
/// all images must already share one size and channel count.
pub fn load_image_folder(path: &Path, resize: Option<(u32, u32)>) -> Result<ImageSet> {
    let mut reader = FolderReader::open(path)?;
    check_memory(path, &reader.files, resize)?;
    let convert = Convert {
        resize,
        channels: None,
    };
    let mut set = ImageSet {
        pixels: Vec::new(),
        channels: 0,
        height: 0,
        width: 0,
        labels: Vec::new(),
        class_names: reader.class_names.clone(),
    };
    let first = reader.files[0].1.clone();
    while let Some(image) = reader.next()? {
        let [c, h, w] = convert.shape(image.shape);
        if set.channels == 0 {
            (set.channels, set.width, set.height) = (c, w, h);
        } else if (c, w, h) != (set.channels, set.width, set.height) {
            return Err(FlowError::data(
                image.path.display(),
                format!(
                    "is {w}×{h} with {c} channel(s), but {} is {}×{} with {} channel(s); \
                     all images must share one size and channel count{}",
                    first.display(),
                    set.width,
                    set.height,
                    set.channels,
                    if c == set.channels {
                        " (resize them all with --resize WxH)"
                    } else {
                        " (convert them all to grey or all to colour)"
                    }
                ),
            ));
        }
        set.pixels.extend(convert.apply(image.pixels, image.shape));
        set.labels.extend(image.label);
    }
    Ok(set)
}

/// One image of a folder, as decoded: 8-bit C×H×W (grey: 1 channel, colour: 3).
#[derive(Debug, Clone)]
pub struct FolderImage {
    pub path: PathBuf,
    /// The index of its class sub-folder; `None` for an unlabelled folder.
    pub label: Option<usize>,
    pub shape: [usize; 3],
    pub pixels: Vec<u8>,
}

/// The PNG/JPEG images under a folder, decoded one at a time.
///
/// Each sub-folder holding images is a class (sorted by name; the label is the index), and
/// then the folder may not also hold images directly; a folder of images alone gives
/// unlabelled data. Files are read in name order; hidden entries, other files and deeper
/// folders are skipped. Grey (and grey+alpha) images give 1 channel, colour ones 3 (alpha
/// is dropped).
pub struct FolderReader {
    /// Each image file with its class (an index into `class_names`; 0 when unlabelled).
    pub files: Vec<(usize, PathBuf)>,
    pub class_names: Vec<String>,
    next: usize,
}

impl FolderReader {
    /// Lists the images of `path` (nothing is decoded yet).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(FlowError::data(
                path.display(),
                "image folder not found (expected a folder of PNG/JPEG images, or of class sub-folders)",
            ));
        }
        let (loose, subdirs) = list(path)?;
        let mut classes = Vec::new();
        for dir in subdirs {
            let files = list(&dir)?.0;
            if !files.is_empty() {
                classes.push((file_name(&dir), files));
            }
        }
        if !classes.is_empty() && !loose.is_empty() {
            return Err(FlowError::data(
                loose[0].display(),
                format!(
                    "{} has class sub-folders and also images directly inside it; \
                     move every image into a class sub-folder, or remove the sub-folders for unlabelled data",
                    path.display()
                ),
            ));
        }
        let files: Vec<(usize, PathBuf)> = if classes.is_empty() {
            loose.into_iter().map(|f| (0, f)).collect()
        } else {
            classes
                .iter()
                .enumerate()
                .flat_map(|(k, (_, files))| files.iter().map(move |f| (k, f.clone())))
                .collect()
        };
        if files.is_empty() {
            return Err(FlowError::data(
                path.display(),
                "no PNG or JPEG images found in the folder or its sub-folders",
            ));
        }
        Ok(Self {
            files,
            class_names: classes.into_iter().map(|(name, _)| name).collect(),
            next: 0,
        })
    }

    /// Images in the folder.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The next image, decoded; `None` after the last.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<FolderImage>> {
        let Some((label, path)) = self.files.get(self.next).cloned() else {
            return Ok(None);
        };
        self.next += 1;
        let (shape, pixels) = decode(&path)?;
        Ok(Some(FolderImage {
            path,
            label: (!self.class_names.is_empty()).then_some(label),
            shape,
            pixels,
        }))
    }
}

/// `[C, H, W]` of an image file from its header alone (nothing decoded), and the bytes its
/// decoder would allocate.
pub fn header(file: &Path) -> Result<([usize; 3], u64)> {
    let decoder = reader(file)?.into_decoder().map_err(|e| bad(file, &e))?;
    let (w, h) = decoder.dimensions();
    let c = if decoder.color_type().has_color() {
        3
    } else {
        1
    };
    Ok(([c, h as usize, w as usize], decoder.total_bytes()))
}

/// Image files and sub-folders of `dir`, each sorted by name, hidden entries skipped.
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let read_err =
        |e: std::io::Error| FlowError::data(dir.display(), format!("cannot list folder: {e}"));
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if file_name(&path).starts_with('.') {
            continue;
        }
        if path.is_dir() {
            dirs.push(path);
        } else if is_image(&path) {
            files.push(path);
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_image(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Refuses a folder whose images would not fit in memory, from their headers alone: the set's
/// pixels (twice: the set, then its train/test split) and the largest image being decoded.
fn check_memory(
    folder: &Path,
    files: &[(usize, PathBuf)],
    resize: Option<(u32, u32)>,
) -> Result<()> {
    let (mut total, mut largest) = (0.0, 0.0f64);
    let mut first = None;
    for (_, file) in files {
        let ([c, h, w], bytes) = header(file)?;
        let (w, h) = resize.unwrap_or((w as u32, h as u32));
        first.get_or_insert((c, w, h));
        total += (c as f64) * (w as f64) * (h as f64);
        largest = largest.max(bytes as f64);
    }
    let (c, w, h) = first.unwrap_or_default();
    crate::limits::check(
        format!(
            "{} ({} images of {w}×{h} with {c} channel(s))",
            folder.display(),
            files.len()
        ),
        2.0 * total + 3.0 * largest,
    )
}

fn bad(path: &Path, e: &dyn std::fmt::Display) -> FlowError {
    FlowError::data(path.display(), format!("cannot read image: {e}"))
}

/// A reader of `path` whose decoder may allocate up to the memory limit (image's own default
/// is 512 MiB per image).
fn reader(path: &Path) -> Result<ImageReader<BufReader<File>>> {
    let mut reader = ImageReader::open(path)
        .map_err(|e| bad(path, &e))?
        .with_guessed_format()
        .map_err(|e| bad(path, &e))?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(crate::limits::limit()?);
    reader.limits(limits);
    Ok(reader)
}

/// `[C, H, W]` and C×H×W pixels of one image file, as 8-bit grey (1 channel) or RGB (3;
/// alpha is dropped).
pub fn decode(path: &Path) -> Result<([usize; 3], Vec<u8>)> {
    let img: DynamicImage = reader(path)?.decode().map_err(|e| bad(path, &e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_color() {
        Ok(([3, h, w], planar(&img.to_rgb8().into_raw())))
    } else {
        Ok(([1, h, w], img.to_luma8().into_raw()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayAlphaImage, RgbImage, RgbaImage};

    fn rgb(w: u32, h: u32, base: u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = base + (y * w + x) as u8;
            image::Rgb([v, v + 100, v + 200])
        })
    }

    /// cat/ (two 3×2 PNGs, one of them RGBA), dog/ (one 3×2 PNG), empty/, notes.txt.
    fn fixture(tag: &str) -> crate::data::tests_support::TempDir {
        let dir = crate::data::tests_support::temp_dir(tag);
        for sub in ["cat", "dog", "empty", ".hidden"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        rgb(3, 2, 0).save(dir.join("cat/a.png")).unwrap();
        let rgba = RgbaImage::from_fn(3, 2, |x, y| {
            let p = rgb(3, 2, 10).get_pixel(x, y).0;
            image::Rgba([p[0], p[1], p[2], 7])
        });
        rgba.save(dir.join("cat/b.PNG")).unwrap();
        rgb(3, 2, 20).save(dir.join("dog/c.png")).unwrap();
        rgb(3, 2, 30).save(dir.join(".hidden/d.png")).unwrap();
        std::fs::write(dir.join("cat/notes.txt"), "not an image").unwrap();
        dir
    }

    #[test]
    fn classes_from_sub_folders_and_exact_pixels() {
        let dir = fixture("folder_ok");
        let s = load_image_folder(&dir, None).unwrap();
        assert_eq!((s.len(), s.channels, s.height, s.width), (3, 3, 2, 3));
        assert_eq!(s.class_names, vec!["cat", "dog"]);
        assert_eq!(s.labels, vec![0, 0, 1]);
        // Channel-major: the red plane, then green, then blue.
        let expect = |base: u8| -> Vec<u8> {
            (0..3u8)
                .flat_map(|c| (0..6u8).map(move |i| base + i + 100 * c))
                .collect()
        };
        assert_eq!(s.image(0), expect(0).as_slice());
        assert_eq!(s.image(1), expect(10).as_slice()); // alpha dropped
        assert_eq!(s.image(2), expect(20).as_slice());
    }

    #[test]
    fn odd_size_is_reported_and_resize_fixes_it() {
        let dir = fixture("folder_odd");
        rgb(4, 4, 0).save(dir.join("dog/z.png")).unwrap();
        let e = load_image_folder(&dir, None).unwrap_err().to_string();
        assert!(e.contains("z.png: is 4×4 with 3 channel(s)"), "{e}");
        assert!(e.contains("a.png is 3×2 with 3 channel(s)"), "{e}");
        assert!(e.contains("--resize WxH"), "{e}");
        let s = load_image_folder(&dir, Some((5, 3))).unwrap();
        assert_eq!((s.len(), s.channels, s.height, s.width), (4, 3, 3, 5));
    }

    #[test]
    fn unlabelled_grey_and_jpeg() {
        let dir = crate::data::tests_support::temp_dir("folder_grey");
        let ga = GrayAlphaImage::from_fn(3, 2, |x, _| image::LumaA([x as u8 * 50, 9]));
        ga.save(dir.join("a.png")).unwrap();
        image::GrayImage::from_pixel(3, 2, image::Luma([128]))
            .save(dir.join("b.jpg"))
            .unwrap();
        let s = load_image_folder(&dir, None).unwrap();
        assert_eq!((s.len(), s.channels, s.height, s.width), (2, 1, 2, 3));
        assert!(s.labels.is_empty() && s.class_names.is_empty());
        assert_eq!(s.image(0), &[0, 50, 100, 0, 50, 100]);
        assert!(s.image(1).iter().all(|&p| p.abs_diff(128) <= 2));

        rgb(3, 2, 0).save(dir.join("c.png")).unwrap();
        let e = load_image_folder(&dir, None).unwrap_err().to_string();
        assert!(
            e.contains("c.png: is 3×2 with 3 channel(s)") && e.contains("grey or all to colour"),
            "{e}"
        );
    }

    #[test]
    fn folder_problems() {
        let dir = crate::data::tests_support::temp_dir("folder_bad");
        let e = load_image_folder(&dir.join("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope: image folder not found"), "{e}");
        let e = load_image_folder(&dir, None).unwrap_err().to_string();
        assert!(e.contains("no PNG or JPEG images"), "{e}");
        std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
        let e = load_image_folder(&dir, None).unwrap_err().to_string();
        assert!(e.contains("broken.png: cannot read image"), "{e}");

        let dir = fixture("folder_mixed");
        rgb(3, 2, 0).save(dir.join("loose.png")).unwrap();
        let e = load_image_folder(&dir, None).unwrap_err().to_string();
        assert!(
            e.contains("loose.png") && e.contains("class sub-folders"),
            "{e}"
        );
    }

    #[test]
    fn sizes_are_checked_from_headers_before_decoding() {
        let dir = fixture("folder_huge");
        // 4 × 3 × 2³¹·2³¹ pixels is beyond any memory; nothing is decoded or resized.
        let e = load_image_folder(&dir, Some((1 << 31, 1 << 31)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(3 images of 2147483648×2147483648 with 3 channel(s)) would need about")
                && e.contains("REVFLOW_MEMORY_LIMIT"),
            "{e}"
        );
        // A PNG whose header claims 1000000×1000000 pixels (its data is missing).
        let mut png = Vec::new();
        rgb(1, 1, 0)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png[16..24].copy_from_slice(&[0, 15, 66, 64, 0, 15, 66, 64]);
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(dir.join("dog/huge.png"), &png).unwrap();
        let e = load_image_folder(&dir, None).unwrap_err().to_string();
        assert!(
            e.contains("would need about") && e.contains("memory limit"),
            "{e}"
        );
    }

    /// The PNG chunk checksum (CRC-32, IEEE).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn load_splits_a_folder() {
        let dir = fixture("folder_split");
        let name = format!("images:{}", dir.display());
        let s = crate::data::load(&name, None, 0, 0).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (2, 1));
        assert_eq!(s.train.num_classes(), 2);
    }

    #[test]
    fn the_reader_decodes_what_the_loader_loads_one_image_at_a_time() {
        let dir = fixture("folder_stream");
        let whole = load_image_folder(&dir, None).unwrap();
        let mut reader = FolderReader::open(&dir).unwrap();
        assert_eq!((reader.len(), reader.class_names.len()), (3, 2));
        let mut k = 0;
        while let Some(img) = reader.next().unwrap() {
            assert_eq!(img.shape, [3, 2, 3]);
            assert_eq!(img.pixels, whole.image(k));
            assert_eq!(img.label, Some(whole.labels[k]));
            k += 1;
        }
        assert_eq!(k, 3);
        assert_eq!(header(&dir.join("dog/c.png")).unwrap().0, [3, 2, 3]);
    }
}
