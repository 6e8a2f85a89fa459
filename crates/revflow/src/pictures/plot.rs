//! Charts drawn with plotters into memory, so that one drawing code path gives PNG files and
//! GIF frames alike. Text is set in DejaVu Sans, embedded in the library, so a chart looks the
//! same on a machine without any font installed.

use std::error::Error;
use std::sync::Once;

use image::RgbImage;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use crate::error::{FlowError, Result};

/// The family name every chart uses for its text.
pub const FONT: &str = "sans-serif";

/// A drawing area over an in-memory RGB picture.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What drawing code returns: plotters' errors, boxed.
pub type Drawn = std::result::Result<(), Box<dyn Error>>;

/// Colours people can tell apart (matplotlib's "tab10").
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The font is compiled in and known to parse; a failure would show in every test.
            let _ = plotters::style::register_font(FONT, style, bytes);
        }
    });
}

/// A `width`×`height` white picture on which `paint` draws.
pub fn draw(width: u32, height: u32, paint: impl FnOnce(&Area) -> Drawn) -> Result<RgbImage> {
    register_font();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        paint(&root)
            .and_then(|()| Ok(root.present()?))
            .map_err(|e| {
                FlowError::Picture(format!("cannot draw a {width}×{height} chart: {e}"))
            })?;
    }
    Ok(RgbImage::from_raw(width, height, buffer).expect("width·height·3 bytes"))
}

/// The legend of every chart: its labels on a translucent white box at `position`.
pub fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// A colour from viridis for `t` in [0, 1] (clamped): dark blue to yellow, readable in grey.
pub fn viridis(t: f64) -> RGBColor {
    use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
    ViridisRGB.get_color(t.clamp(0.0, 1.0))
}

/// A colour of the hue circle for `t` in [0, 1): points keep their colour as they move, so a
/// reader can follow neighbourhoods through a flow.
pub fn hue(t: f64) -> RGBColor {
    let c = HSLColor(t.rem_euclid(1.0), 0.75, 0.45).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Pastes `image` with its top-left corner at `at` (pixels of `area`).
pub fn paste(area: &Area, image: &RgbImage, at: (i32, i32)) -> Drawn {
    let element = BitMapElement::with_owned_buffer(
        at,
        (image.width(), image.height()),
        image.as_raw().clone(),
    )
    .ok_or("an image buffer of the wrong size")?;
    area.draw(&element)?;
    Ok(())
}

/// A histogram as `(left edge, right edge, density)` per bin, over `[lo, hi)`; values outside
/// are left out, the density is normalised by all `values`.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64, f64)> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &v in values {
        let i = ((v - lo) / width).floor();
        if i >= 0.0 && (i as usize) < bins {
            counts[i as usize] += 1;
        }
    }
    let n = values.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let left = lo + i as f64 * width;
            (left, left + width, c as f64 / (n * width))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_with_text_draws_dark_pixels_on_white() {
        let picture = draw(200, 100, |root| {
            root.draw(&Text::new("flow", (20, 30), (FONT, 30)))?;
            Ok(())
        })
        .unwrap();
        let dark = picture.pixels().filter(|p| p[0] < 100).count();
        // "flow" at 30 px covers a few hundred pixels; no font would leave the canvas white.
        assert!(dark > 100, "{dark} dark pixels");
        assert_eq!(picture.get_pixel(199, 99).0, [255, 255, 255]);
    }

    #[test]
    fn histogram_densities_integrate_to_the_fraction_inside() {
        let values: Vec<f64> = (0..1000).map(|i| (i as f64 + 0.5) / 1000.0).collect();
        let bins = histogram(&values, 0.0, 0.5, 10);
        let mass: f64 = bins.iter().map(|(l, r, d)| (r - l) * d).sum();
        assert!((mass - 0.5).abs() < 1e-9, "{mass}");
        assert!(bins.iter().all(|b| (b.2 - 1.0).abs() < 1e-9));
    }
}
