//! The embedded default: the UCI "Optical Recognition of Handwritten Digits" test set as
//! bundled (inside the binary, no download) by smartcore's `datasets` feature.

use super::ImageSet;

/// Images in the test part of the standard split (the other 1497 train).
pub(super) const TEST_SIZE: usize = 300;

/// All 1797 digits as 8×8 single-channel images with labels 0..9.
///
/// The source counts ink in 4×4 blocks, so each value is an integer 0..=16 (17 grey
/// levels). They become 8-bit pixels as `round(v * 255 / 16)`, which keeps 0 and 16 at
/// 0 and 255 and gives 17 distinct 8-bit levels (0, 16, 32, …, 128, 143, …, 239, 255).
pub(super) fn load() -> ImageSet {
    // smartcore deserialises bytes embedded with include_bytes!; it cannot fail at run time.
    let ds = smartcore::dataset::digits::load_dataset();
    ImageSet {
        pixels: ds.data.iter().map(|&v| to_u8(v)).collect(),
        channels: 1,
        height: 8,
        width: 8,
        labels: ds.target.iter().map(|&y| y as usize).collect(),
        class_names: (0..10).map(|d| d.to_string()).collect(),
    }
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 16.0) * 255.0 / 16.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn shape_levels_and_labels() {
        let raw = smartcore::dataset::digits::load_dataset();
        assert!(raw
            .data
            .iter()
            .all(|v| v.fract() == 0.0 && (0.0..=16.0).contains(v)));

        let s = load();
        assert_eq!((s.len(), s.channels, s.height, s.width), (1797, 1, 8, 8));
        assert_eq!(s.pixels.len(), 1797 * 64);
        let levels: BTreeSet<u8> = s.pixels.iter().copied().collect();
        let expected: BTreeSet<u8> = (0..=16)
            .map(|v| (v as f64 * 255.0 / 16.0).round() as u8)
            .collect();
        assert_eq!(levels, expected);
        assert_eq!(levels.len(), 17);
        assert_eq!(s.class_names.len(), 10);
        let classes: BTreeSet<usize> = s.labels.iter().copied().collect();
        assert_eq!(classes, (0..10).collect());
        // Round trip: every pixel maps back to its source value.
        for (&p, &v) in s.pixels.iter().zip(&raw.data) {
            assert_eq!((p as f32 * 16.0 / 255.0).round(), v);
        }
    }
}
