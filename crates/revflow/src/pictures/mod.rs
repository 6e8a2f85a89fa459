//! Pictures people look at instead of numbers: image grids and strips, and scatter plots of
//! 2-D samples, and charts ([`plot`]). Written as PNG, atomically.

pub mod plot;

use std::path::Path;

use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};

use crate::error::{FlowError, Result};
use crate::files::write_atomic;

/// Width and height of [`grid`]'s picture of `count` images.
fn grid_size(count: usize, [_, h, w]: [usize; 3], cols: usize, scale: usize) -> (f64, f64) {
    let cols = cols.clamp(1, count.max(1));
    let rows = count.div_ceil(cols).max(1);
    let f = |v: usize| v as f64;
    let cell = |side: usize| f(side) * f(scale) + 1.0;
    (f(cols) * cell(w) + 1.0, f(rows) * cell(h) + 1.0)
}

/// Refuses a [`grid`] of `count` images that would exceed the memory limit (with `extra`
/// bytes the caller holds besides) or PNG's size limit, before anything is computed.
pub fn check_grid(
    count: usize,
    shape: [usize; 3],
    cols: usize,
    scale: usize,
    extra: f64,
) -> Result<()> {
    let (width, height) = grid_size(count, shape, cols, scale);
    let png_max = i32::MAX as f64;
    if width > png_max || height > png_max {
        return Err(FlowError::Picture(format!(
            "a grid of {count} images would be {width}×{height} pixels, above PNG's limit of \
             {png_max} pixels a side; ask for fewer images"
        )));
    }
    crate::limits::check(
        format!("a picture of {count} images ({width}×{height} pixels)"),
        width * height * 3.0 + extra,
    )
}

/// Lays out `images` (each C×H×W 8-bit, C = 1 or 3) in a grid of `cols` columns with a
/// 1-pixel gap, each image magnified `scale` times.
pub fn grid(images: &[Vec<u8>], shape: [usize; 3], cols: usize, scale: usize) -> RgbImage {
    let [c, h, w] = shape;
    let cols = cols.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols).max(1);
    let (cell_w, cell_h) = (w * scale + 1, h * scale + 1);
    let mut out: RgbImage = ImageBuffer::from_pixel(
        (cols * cell_w + 1) as u32,
        (rows * cell_h + 1) as u32,
        Rgb([40, 40, 40]),
    );
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = (1 + (i % cols) * cell_w, 1 + (i / cols) * cell_h);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let (py, px) = (y / scale, x / scale);
                let at = |ch: usize| img[ch * h * w + py * w + px];
                let rgb = if c == 3 {
                    [at(0), at(1), at(2)]
                } else {
                    [at(0); 3]
                };
                out.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb(rgb));
            }
        }
    }
    out
}

/// A scatter plot of 2-D points (and optionally a reference set in grey), axes fitted to all.
pub fn scatter(points: &[[f32; 2]], reference: &[[f32; 2]], size: u32) -> RgbImage {
    let mut out: RgbImage = ImageBuffer::from_pixel(size, size, Rgb([255, 255, 255]));
    let all = points
        .iter()
        .chain(reference)
        .filter(|p| p[0].is_finite() && p[1].is_finite());
    let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
    for p in all {
        for d in 0..2 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let span = (0..2)
        .map(|d| (hi[d] - lo[d]).max(1e-6))
        .fold(0f32, f32::max)
        * 1.1;
    let centre = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
    let to_px = |p: &[f32; 2]| {
        let x = ((p[0] - centre[0]) / span + 0.5) * size as f32;
        let y = (0.5 - (p[1] - centre[1]) / span) * size as f32;
        (x as i64, y as i64)
    };
    // Axes through the origin where visible.
    let (ox, oy) = to_px(&[0.0, 0.0]);
    for t in 0..size as i64 {
        for (x, y) in [(ox, t), (t, oy)] {
            if (0..size as i64).contains(&x) && (0..size as i64).contains(&y) {
                out.put_pixel(x as u32, y as u32, Rgb([200, 200, 200]));
            }
        }
    }
    let mut dot = |p: &[f32; 2], colour: Rgb<u8>| {
        let (x, y) = to_px(p);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (x, y) = (x + dx, y + dy);
            if (0..size as i64).contains(&x) && (0..size as i64).contains(&y) {
                out.put_pixel(x as u32, y as u32, colour);
            }
        }
    };
    reference.iter().for_each(|p| dot(p, Rgb([170, 170, 170])));
    points.iter().for_each(|p| dot(p, Rgb([30, 90, 200])));
    out
}

/// One image, C×H×W 8-bit, as an RGB (C = 3) picture of its own size, else (like [`grid`])
/// a grey one of its first channel.
pub fn single(pixels: &[u8], shape: [usize; 3]) -> DynamicImage {
    let [c, h, w] = shape;
    if c != 3 {
        let grey = pixels[..h * w].to_vec();
        DynamicImage::ImageLuma8(
            ImageBuffer::from_raw(w as u32, h as u32, grey).expect("h·w pixels"),
        )
    } else {
        let hw = h * w;
        let interleaved: Vec<u8> = (0..hw)
            .flat_map(|i| [pixels[i], pixels[hw + i], pixels[2 * hw + i]])
            .collect();
        DynamicImage::ImageRgb8(
            ImageBuffer::from_raw(w as u32, h as u32, interleaved).expect("3·h·w pixels"),
        )
    }
}

/// Writes `image` as a PNG at `path`, atomically.
pub fn save_png(image: impl Into<DynamicImage>, path: &Path) -> Result<()> {
    let image: DynamicImage = image.into();
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| FlowError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| FlowError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_image_in_its_cell() {
        let a = vec![255u8; 4]; // 1×2×2 white
        let b = vec![0u8; 4];
        let g = grid(&[a, b], [1, 2, 2], 2, 3);
        assert_eq!(g.dimensions(), (2 * 7 + 1, 7 + 1));
        assert_eq!(g.get_pixel(1, 1), &Rgb([255, 255, 255]));
        assert_eq!(g.get_pixel(8, 1), &Rgb([0, 0, 0]));
        assert_eq!(g.get_pixel(0, 0), &Rgb([40, 40, 40]));
    }

    #[test]
    fn scatter_draws_points() {
        let s = scatter(&[[0.0, 0.0], [1.0, 1.0]], &[[-1.0, -1.0]], 100);
        let blue = s.pixels().filter(|p| **p == Rgb([30, 90, 200])).count();
        let grey = s.pixels().filter(|p| **p == Rgb([170, 170, 170])).count();
        assert!(blue >= 4 && grey >= 1);
    }
}
