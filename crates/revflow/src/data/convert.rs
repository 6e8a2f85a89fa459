//! Converting images to the shape a model needs — resized, to grey or to colour — only where
//! the user asks for it.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};

/// What to do to every image: nothing by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Convert {
    /// `(width, height)` to resize to (triangle filter).
    pub resize: Option<(u32, u32)>,
    /// Channels to convert to: 1 (grey, ITU-R BT.709 luma) or 3 (colour, grey repeated).
    pub channels: Option<usize>,
}

impl Convert {
    /// Whether this changes any image.
    pub fn is_none(&self) -> bool {
        self.resize.is_none() && self.channels.is_none()
    }

    /// The `[C, H, W]` an image of `shape` becomes.
    pub fn shape(&self, [c, h, w]: [usize; 3]) -> [usize; 3] {
        let (w, h) = self
            .resize
            .map_or((w, h), |(w, h)| (w as usize, h as usize));
        [self.channels.unwrap_or(c), h, w]
    }

    /// The options that ask for this conversion, for messages: `--resize 8x8 --grayscale`.
    pub fn options(&self) -> String {
        let mut out = Vec::new();
        if let Some((w, h)) = self.resize {
            out.push(format!("--resize {w}x{h}"));
        }
        match self.channels {
            Some(1) => out.push("--grayscale".to_string()),
            Some(_) => out.push("--rgb".to_string()),
            None => {}
        }
        out.join(" ")
    }

    /// `pixels` (C×H×W 8-bit, C = 1 or 3, of `shape`) converted: channels first, then size.
    /// Returns the pixels unchanged when there is nothing to do.
    pub fn apply(&self, pixels: Vec<u8>, shape: [usize; 3]) -> Vec<u8> {
        let [c, h, w] = shape;
        let target = self.shape(shape);
        if target == shape {
            return pixels;
        }
        let (w32, h32) = (w as u32, h as u32);
        let resize = self.resize.filter(|&r| r != (w32, h32));
        if target[0] == 1 {
            let grey = match c {
                1 => GrayImage::from_raw(w32, h32, pixels),
                _ => RgbImage::from_raw(w32, h32, interleave(&pixels, h * w))
                    .map(|rgb| image::DynamicImage::ImageRgb8(rgb).to_luma8()),
            };
            let Some(mut grey) = grey else {
                return Vec::new();
            };
            if let Some((w, h)) = resize {
                grey = imageops::resize(&grey, w, h, FilterType::Triangle);
            }
            grey.into_raw()
        } else {
            let rgb = match c {
                1 => RgbImage::from_raw(w32, h32, pixels.iter().flat_map(|&p| [p; 3]).collect()),
                _ => RgbImage::from_raw(w32, h32, interleave(&pixels, h * w)),
            };
            let Some(mut rgb) = rgb else {
                return Vec::new();
            };
            if let Some((w, h)) = resize {
                rgb = imageops::resize(&rgb, w, h, FilterType::Triangle);
            }
            planar(&rgb.into_raw())
        }
    }
}

/// Channel-major C×H×W (C = 3) → interleaved RGB.
fn interleave(pixels: &[u8], hw: usize) -> Vec<u8> {
    (0..hw)
        .flat_map(|i| [pixels[i], pixels[hw + i], pixels[2 * hw + i]])
        .collect()
}

/// Interleaved RGB → channel-major C×H×W.
pub(crate) fn planar(raw: &[u8]) -> Vec<u8> {
    (0..3)
        .flat_map(|c| raw.iter().skip(c).step_by(3).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_changes_nothing() {
        let px: Vec<u8> = (0..12).collect();
        assert!(Convert::default().is_none());
        assert_eq!(Convert::default().apply(px.clone(), [3, 2, 2]), px);
        // Resizing to the size it has is nothing too.
        let same = Convert {
            resize: Some((2, 2)),
            channels: Some(3),
        };
        assert_eq!(same.apply(px.clone(), [3, 2, 2]), px);
    }

    #[test]
    fn grey_to_colour_repeats_and_colour_to_grey_weighs_channels() {
        let to_rgb = Convert {
            channels: Some(3),
            ..Default::default()
        };
        assert_eq!(to_rgb.shape([1, 1, 2]), [3, 1, 2]);
        assert_eq!(
            to_rgb.apply(vec![10, 200], [1, 1, 2]),
            vec![10, 200, 10, 200, 10, 200]
        );
        let to_grey = Convert {
            channels: Some(1),
            ..Default::default()
        };
        // Pure red, green, blue, white: BT.709 weights 0.2126, 0.7152, 0.0722.
        let rgb = vec![255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255];
        let grey = to_grey.apply(rgb, [3, 1, 4]);
        assert_eq!(grey.len(), 4);
        assert!(
            grey[0].abs_diff(54) <= 1 && grey[1].abs_diff(182) <= 1,
            "{grey:?}"
        );
        assert!(grey[2].abs_diff(18) <= 1 && grey[3] == 255, "{grey:?}");
        assert_eq!(to_grey.options(), "--grayscale");
    }

    #[test]
    fn resize_keeps_a_constant_image_constant() {
        let c = Convert {
            resize: Some((3, 5)),
            channels: None,
        };
        assert_eq!(c.shape([3, 8, 8]), [3, 5, 3]);
        let out = c.apply(vec![77; 3 * 64], [3, 8, 8]);
        assert_eq!(out, vec![77; 3 * 15]);
        assert_eq!(c.options(), "--resize 3x5");
    }
}
