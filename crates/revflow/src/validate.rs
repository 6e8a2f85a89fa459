//! Range checks for options and configuration fields, with one message shape everywhere:
//! "NAME must be a finite number > 0, found -1", so a person sees the valid range at once.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

use crate::error::{FlowError, Result};

/// A number an option or field may hold.
pub trait Number: Copy + PartialOrd + Display {
    /// How the message describes the kind: "a finite number", "an integer".
    const KIND: &'static str;
    /// NaN and ±∞ are never in range, whatever the bounds say.
    fn finite(self) -> bool {
        true
    }
}

impl Number for f64 {
    const KIND: &'static str = "a finite number";
    fn finite(self) -> bool {
        self.is_finite()
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(impl Number for $t { const KIND: &'static str = "an integer"; })*};
}
integer!(usize, u32, u64);

/// `value` must be finite and within `range` (`1..`, `1..=8`, [`above`]`(0.0)`, …);
/// otherwise a [`FlowError::Invalid`] naming `name` and the range.
pub fn in_range<T: Number>(name: &str, value: T, range: impl RangeBounds<T>) -> Result<()> {
    if value.finite() && range.contains(&value) {
        return Ok(());
    }
    Err(FlowError::Invalid {
        name: name.to_string(),
        expected: format!("{} {}", T::KIND, describe(&range))
            .trim_end()
            .to_string(),
        found: value.to_string(),
    })
}

/// The open range `(low, ∞)`: "> low".
pub fn above<T>(low: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(low), Bound::Unbounded)
}

/// The open range `(low, high)`.
pub fn between<T>(low: T, high: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(low), Bound::Excluded(high))
}

fn describe<T: Display>(range: &impl RangeBounds<T>) -> String {
    use Bound::*;
    match (range.start_bound(), range.end_bound()) {
        (Included(a), Unbounded) => format!("≥ {a}"),
        (Excluded(a), Unbounded) => format!("> {a}"),
        (Unbounded, Included(b)) => format!("≤ {b}"),
        (Unbounded, Excluded(b)) => format!("< {b}"),
        (Unbounded, Unbounded) => String::new(),
        (low, high) => {
            let (open, a) = match low {
                Included(a) => ('[', a),
                Excluded(a) => ('(', a),
                Unbounded => unreachable!("matched above"),
            };
            let (b, close) = match high {
                Included(b) => (b, ']'),
                Excluded(b) => (b, ')'),
                Unbounded => unreachable!("matched above"),
            };
            format!("in {open}{a}, {b}{close}")
        }
    }
}

/// Whether little-endian floats of `dtype` (in a weights or optimizer file) include a NaN or
/// ±∞: all exponent bits set. Other dtypes hold no such values.
pub(crate) fn non_finite(dtype: safetensors::Dtype, data: &[u8]) -> bool {
    use safetensors::Dtype;
    let (width, exponent): (usize, u64) = match dtype {
        Dtype::F16 => (2, 0x7C00),
        Dtype::BF16 => (2, 0x7F80),
        Dtype::F32 => (4, 0x7F80_0000),
        Dtype::F64 => (8, 0x7FF0_0000_0000_0000),
        _ => return false,
    };
    data.chunks_exact(width).any(|b| {
        let bits = b.iter().rev().fold(0u64, |v, &byte| (v << 8) | byte as u64);
        bits & exponent == exponent
    })
}

/// Runs the checks of a part of a configuration, naming its fields `prefix.field`.
pub(crate) fn within(prefix: &str, checks: Result<()>) -> Result<()> {
    checks.map_err(|e| match e {
        FlowError::Invalid {
            name,
            expected,
            found,
        } => FlowError::Invalid {
            name: format!("{prefix}.{name}"),
            expected,
            found,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn messages_name_the_value_the_range_and_what_was_found() {
        assert_eq!(
            message(in_range("--lr", -1.0, above(0.0))),
            "--lr must be a finite number > 0, found -1"
        );
        assert_eq!(
            message(in_range("--grad-clip", f64::INFINITY, above(0.0))),
            "--grad-clip must be a finite number > 0, found inf"
        );
        assert_eq!(
            message(in_range("wd", f64::NAN, 0.0..)),
            "wd must be a finite number ≥ 0, found NaN"
        );
        assert_eq!(
            message(in_range("n_bits", 9u32, 1..=8)),
            "n_bits must be an integer in [1, 8], found 9"
        );
        assert_eq!(
            message(in_range("alpha", 0.5, between(0.0, 0.5))),
            "alpha must be a finite number in (0, 0.5), found 0.5"
        );
        assert_eq!(
            message(in_range("steps", 0usize, 1..)),
            "steps must be an integer ≥ 1, found 0"
        );
        assert!(in_range("x", 0.25, between(0.0, 0.5)).is_ok());
        assert!(in_range("x", 8u32, 1..=8).is_ok());
        assert!(in_range("x", 0.0, 0.0..).is_ok());
        assert!(in_range("x", f64::NEG_INFINITY, ..0.0).is_err());
        assert_eq!(
            message(in_range("--alphas", f64::NAN, ..)),
            "--alphas must be a finite number, found NaN"
        );
    }

    #[test]
    fn non_finite_floats_are_found_in_every_float_format() {
        use safetensors::Dtype;
        assert!(non_finite(Dtype::F64, &f64::NEG_INFINITY.to_le_bytes()));
        assert!(non_finite(
            Dtype::F32,
            &[1.0f32.to_le_bytes(), f32::NAN.to_le_bytes()].concat()
        ));
        assert!(non_finite(Dtype::F16, &0x7E00u16.to_le_bytes()));
        assert!(non_finite(Dtype::BF16, &0xFF80u16.to_le_bytes()));
        assert!(!non_finite(Dtype::F32, &f32::MAX.to_le_bytes()));
        assert!(!non_finite(Dtype::F64, &f64::MIN_POSITIVE.to_le_bytes()));
        assert!(!non_finite(Dtype::I64, &[0xFF; 8]));
    }

    #[test]
    fn within_prefixes_field_names_only() {
        let e = within("train", in_range("lr", 0.0, above(0.0)));
        assert_eq!(message(e), "train.lr must be a finite number > 0, found 0");
        let other = within("train", Err(FlowError::Config("x".into())));
        assert_eq!(message(other), "invalid configuration: x");
    }
}
