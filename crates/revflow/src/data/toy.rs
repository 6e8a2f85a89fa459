//! Generated 2-D densities, the usual test beds of the normalizing-flow literature, scaled
//! (as there) to lie roughly within [-4, 4].

use std::f64::consts::{PI, TAU};

use super::{Data, Splits, VectorSet};
use crate::rng::Rng;
use crate::{FlowError, Result};

/// The test part is drawn from this seed mixed in, so it never repeats a training point.
const TEST_SALT: u64 = 0x7E57_5EED_0BAD_CAFE;

pub(super) fn describe(name: &str) -> &'static str {
    match name {
        "moons" => "2-D: two interleaving half circles, labelled by moon; generated",
        "circles" => "2-D: two concentric noisy circles, labelled outer/inner; generated",
        "8gaussians" => "2-D: eight Gaussians on a circle, labelled by Gaussian; generated",
        "checkerboard" => "2-D: uniform on the dark squares of a 4×4 checkerboard; generated",
        "pinwheel" => "2-D: five curved arms, labelled by arm; generated",
        "2spirals" => "2-D: two interleaved spirals, labelled by spiral; generated",
        "rings" => "2-D: four concentric noisy rings, labelled by ring; generated",
        "swissroll" => "2-D: a noisy swiss roll seen from its side; generated",
        _ => "",
    }
}

/// `samples` training points from `seed`, and `samples / 4` (at least 1) test points.
pub(super) fn load(name: &str, seed: u64, samples: usize) -> Result<Splits> {
    if samples == 0 {
        return Err(FlowError::data(
            name,
            "needs at least 1 sample to generate; pass a positive --samples",
        ));
    }
    let n_test = (samples / 4).max(1);
    Ok(Splits {
        train: Data::Vectors(generate(name, samples, seed)),
        test: Data::Vectors(generate(name, n_test, seed ^ TEST_SALT)),
        name: name.to_string(),
        description: format!(
            "{}: {} ({samples} train / {n_test} test points, seed {seed})",
            name,
            describe(name).trim_end_matches("; generated")
        ),
    })
}

/// `n` points of the set `name` (one of the catalogue's 2-D names).
fn generate(name: &str, n: usize, seed: u64) -> VectorSet {
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    let classes = match name {
        "moons" | "circles" | "2spirals" => 2,
        "8gaussians" => 8,
        "pinwheel" => 5,
        "rings" => 4,
        _ => 0,
    };
    for i in 0..n {
        let (label, [x, y]) = point(name, i, &mut rng);
        values.extend([x as f32, y as f32]);
        labels.push(label);
    }
    let class_names: Vec<String> = match name {
        "moons" => vec!["upper".into(), "lower".into()],
        "circles" => vec!["outer".into(), "inner".into()],
        _ => (0..classes).map(|k| k.to_string()).collect(),
    };
    if classes == 0 {
        labels.clear();
    }
    VectorSet {
        values,
        dim: 2,
        labels,
        class_names,
        columns: vec!["x".into(), "y".into()],
        context: Vec::new(),
        context_columns: Vec::new(),
    }
}

/// Uniform integer in 0..k.
fn pick(rng: &mut Rng, k: usize) -> usize {
    (rng.next_u64() % k as u64) as usize
}

/// One point (label, [x, y]); `i` is its index, for sets that cycle through classes.
fn point(name: &str, i: usize, rng: &mut Rng) -> (usize, [f64; 2]) {
    match name {
        "moons" => {
            // Half circles of radius 1; the lower one shifted right and down so they interlock.
            let k = pick(rng, 2);
            let t = PI * rng.uniform();
            let (x, y) = if k == 0 {
                (t.cos(), t.sin())
            } else {
                (1.0 - t.cos(), 0.5 - t.sin())
            };
            // Centre on the origin and double the size: about [-3, 3] × [-2, 2].
            let x = 2.0 * (x - 0.5 + 0.1 * rng.normal());
            let y = 2.0 * (y - 0.25 + 0.1 * rng.normal());
            (k, [x, y])
        }
        "circles" => {
            let k = pick(rng, 2);
            let r = if k == 0 { 3.0 } else { 1.5 };
            let t = TAU * rng.uniform();
            (
                k,
                [
                    r * t.cos() + 0.24 * rng.normal(),
                    r * t.sin() + 0.24 * rng.normal(),
                ],
            )
        }
        "8gaussians" => {
            // Centres at radius 4 on the 8 compass directions, std 0.5, all scaled by 1/√2.
            let k = pick(rng, 8);
            let t = TAU * k as f64 / 8.0;
            let s = std::f64::consts::FRAC_1_SQRT_2;
            let x = (4.0 * t.cos() + 0.5 * rng.normal()) * s;
            let y = (4.0 * t.sin() + 0.5 * rng.normal()) * s;
            (k, [x, y])
        }
        "checkerboard" => {
            // 4×4 board of 2×2 squares over [-4, 4]²; points only on squares with even
            // column + row, uniformly.
            let col = pick(rng, 4);
            let row = 2 * pick(rng, 2) + col % 2;
            let x = -4.0 + 2.0 * (col as f64 + rng.uniform());
            let y = -4.0 + 2.0 * (row as f64 + rng.uniform());
            (0, [x, y])
        }
        "pinwheel" => {
            // Arm k: a Gaussian blob at radius 1 (radial std 0.3, tangential 0.1), rotated
            // by the arm's angle plus a twist that grows with radius.
            let k = i % 5;
            let r = 1.0 + 0.3 * rng.normal();
            let tangential = 0.1 * rng.normal();
            let angle = TAU * k as f64 / 5.0 + 0.25 * r.exp();
            let (s, c) = angle.sin_cos();
            (
                k,
                [
                    2.0 * (c * r - s * tangential),
                    2.0 * (s * r + c * tangential),
                ],
            )
        }
        "2spirals" => {
            // Archimedean spiral (radius = angle) over 1.5 turns, density growing outwards;
            // the second spiral is the first rotated by half a turn.
            let k = pick(rng, 2);
            let t = rng.uniform().sqrt() * 3.0 * PI;
            let x = -t.cos() * t + 0.5 * rng.uniform();
            let y = t.sin() * t + 0.5 * rng.uniform();
            let sign = if k == 0 { 1.0 } else { -1.0 };
            (
                k,
                [
                    sign * x / 3.0 + 0.1 * rng.normal(),
                    sign * y / 3.0 + 0.1 * rng.normal(),
                ],
            )
        }
        "rings" => {
            // Radii 0.75, 1.5, 2.25, 3 (ring 0 innermost), points spread along each ring in
            // proportion to its length.
            let u = rng.uniform() * 10.0; // circumferences 1 : 2 : 3 : 4
            let k = match u {
                u if u < 1.0 => 0,
                u if u < 3.0 => 1,
                u if u < 6.0 => 2,
                _ => 3,
            };
            let r = 0.75 * (k + 1) as f64;
            let t = TAU * rng.uniform();
            (
                k,
                [
                    r * t.cos() + 0.08 * rng.normal(),
                    r * t.sin() + 0.08 * rng.normal(),
                ],
            )
        }
        _ => {
            // "swissroll": t·(cos t, sin t) for t in [1.5π, 4.5π], Gaussian noise of std 1,
            // scaled by 1/5.
            let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
            let x = (t * t.cos() + rng.normal()) / 5.0;
            let y = (t * t.sin() + rng.normal()) / 5.0;
            (0, [x, y])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TOY_SETS;

    #[test]
    fn every_set_is_sized_finite_bounded_and_seeded() {
        for name in TOY_SETS {
            let s = load(name, 1, 400).unwrap();
            let (Data::Vectors(train), Data::Vectors(test)) = (&s.train, &s.test) else {
                panic!("vectors expected")
            };
            assert_eq!(
                (train.len(), train.dim, test.len()),
                (400, 2, 100),
                "{name}"
            );
            for v in train.values.iter().chain(&test.values) {
                assert!(v.is_finite() && v.abs() <= 6.0, "{name}: {v}");
            }
            // Spread over the plane, not collapsed: the points reach beyond ±1.
            assert!(train.values.iter().any(|v| v.abs() > 1.0), "{name}");
            if train.labels.is_empty() {
                assert!(train.class_names.is_empty(), "{name}");
            } else {
                assert_eq!(train.labels.len(), 400, "{name}");
                assert!(
                    train.labels.iter().all(|&l| l < train.class_names.len()),
                    "{name}"
                );
                // Every class occurs.
                for k in 0..train.class_names.len() {
                    assert!(train.labels.contains(&k), "{name}: class {k}");
                }
            }
            let again = generate(name, 400, 1);
            let other = generate(name, 400, 2);
            assert_eq!(again.values, train.values, "{name}");
            assert_ne!(other.values, train.values, "{name}");
            assert_ne!(test.values[..], train.values[..200], "{name}");
            assert!(s.description.starts_with(name));
        }
    }

    #[test]
    fn shapes_are_the_named_ones() {
        let radius = |s: &VectorSet, i: usize| {
            let r = s.row(i);
            (r[0] * r[0] + r[1] * r[1]).sqrt()
        };
        let g = generate("8gaussians", 200, 0);
        for i in 0..200 {
            assert!((radius(&g, i) - 2.83).abs() < 2.0);
        }
        let c = generate("circles", 200, 0);
        for i in 0..200 {
            let target = if c.labels[i] == 0 { 3.0 } else { 1.5 };
            assert!((radius(&c, i) - target).abs() < 1.2);
        }
        let b = generate("checkerboard", 500, 0);
        for i in 0..500 {
            let r = b.row(i);
            let cell = ((r[0] + 4.0) / 2.0).floor() as i32 + ((r[1] + 4.0) / 2.0).floor() as i32;
            assert_eq!(cell % 2, 0, "{r:?}");
        }
    }

    #[test]
    fn zero_samples_is_an_error() {
        let e = load("moons", 0, 0).unwrap_err().to_string();
        assert!(e.starts_with("moons: needs at least 1 sample"), "{e}");
    }
}
