//! Does Winograd F(2×2, 3×3) pay for Glow's coupling network on this CPU?
//!
//! Times, single-threaded on one forward block of the CIFAR shape's three levels, the two 3×3
//! convolutions of a coupling network (`c → hidden` and the zero conv `hidden → c_out`) as
//! revflow's fused kernels compute them (one gemm over 9 shifted copies, or one gemm over all
//! nine taps then shifted adds) against Winograd F(2×2, 3×3): input transform Bᵀ·d·B per 4×4
//! tile, 16 gemms in the transformed domain, output transform Aᵀ·m·A (Lavin & Gray 2016).
//! The 1×1 convolution between them is timed too, for scale. Both forms are checked to agree
//! before anything is timed. Results: bench/README.md, "Winograd".
use std::time::Instant;

/// `c = a·b`, all row-major: `a` is m×k, `b` is k×n.
fn mm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the sizes are checked above and `c` is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One block of images, one row per pixel (`rows × channels`, channels contiguous).
#[derive(Clone, Copy)]
struct Shape {
    images: usize,
    h: usize,
    w: usize,
}

impl Shape {
    fn rows(self) -> usize {
        self.images * self.h * self.w
    }
    fn tiles(self) -> usize {
        self.images * self.h.div_ceil(2) * self.w.div_ceil(2)
    }
    /// Row of pixel `(y, x)` of image `i`, if inside (zero padding outside).
    fn at(self, i: usize, y: isize, x: isize) -> Option<usize> {
        let inside = y >= 0 && x >= 0 && y < self.h as isize && x < self.w as isize;
        inside.then(|| (i * self.h + y as usize) * self.w + x as usize)
    }
}

/// The fused kernels' `c → hidden` form: im2col (`rows × 9c`) times the `9c × hidden` weights.
fn direct_in(
    x: &[f32],
    s: Shape,
    cin: usize,
    wt: &[f32],
    cout: usize,
    cols: &mut [f32],
    out: &mut [f32],
) {
    for i in 0..s.images {
        for p in 0..s.h * s.w {
            let (y, xx) = ((p / s.w) as isize, (p % s.w) as isize);
            let row = &mut cols[(i * s.h * s.w + p) * 9 * cin..][..9 * cin];
            for (t, dst) in row.chunks_exact_mut(cin).enumerate() {
                match s.at(i, y + t as isize / 3 - 1, xx + t as isize % 3 - 1) {
                    Some(src) => dst.copy_from_slice(&x[src * cin..][..cin]),
                    None => dst.fill(0.0),
                }
            }
        }
    }
    mm(out, cols, wt, s.rows(), 9 * cin, cout);
}

/// The fused kernels' zero-conv form: `rows × hidden` times `hidden × 9·c_out` (all taps at
/// once), then each output pixel adds its nine neighbours' taps.
fn direct_out(
    x: &[f32],
    s: Shape,
    cin: usize,
    wt: &[f32],
    cout: usize,
    m: &mut [f32],
    out: &mut [f32],
) {
    mm(m, x, wt, s.rows(), cin, 9 * cout);
    for i in 0..s.images {
        for p in 0..s.h * s.w {
            let (y, xx) = ((p / s.w) as isize, (p % s.w) as isize);
            let o = &mut out[(i * s.h * s.w + p) * cout..][..cout];
            o.fill(0.0);
            for t in 0..9 {
                if let Some(src) = s.at(i, y - (t as isize / 3 - 1), xx - (t as isize % 3 - 1)) {
                    let r = &m[src * 9 * cout + t * cout..][..cout];
                    o.iter_mut().zip(r).for_each(|(a, b)| *a += b);
                }
            }
        }
    }
}

/// Winograd F(2×2, 3×3): `v[ξ][tile][c]` = Bᵀ·d·B, then `m[ξ] = v[ξ]·u[ξ]` (16 gemms), then
/// each 2×2 output tile = Aᵀ·m·A. Every transform runs vectorised over channels.
#[allow(clippy::too_many_arguments)]
fn winograd(
    x: &[f32],
    s: Shape,
    cin: usize,
    u: &[f32],
    cout: usize,
    v: &mut [f32],
    m: &mut [f32],
    out: &mut [f32],
) {
    let tiles = s.tiles();
    let (th, tw) = (s.h.div_ceil(2), s.w.div_ceil(2));
    let mut d = vec![0.0f32; 16 * cin];
    let mut r = vec![0.0f32; 16 * cin.max(cout)];
    let mut t = 0;
    for i in 0..s.images {
        for ty in 0..th {
            for tx in 0..tw {
                for (ab, dst) in d.chunks_exact_mut(cin).enumerate() {
                    let (y, xx) = (
                        (2 * ty + ab / 4) as isize - 1,
                        (2 * tx + ab % 4) as isize - 1,
                    );
                    match s.at(i, y, xx) {
                        Some(src) => dst.copy_from_slice(&x[src * cin..][..cin]),
                        None => dst.fill(0.0),
                    }
                }
                // Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]] on rows…
                let p = |a: usize, b: usize| &d[(a * 4 + b) * cin..][..cin];
                for b in 0..4 {
                    let (d0, d1, d2, d3) = (p(0, b), p(1, b), p(2, b), p(3, b));
                    for c in 0..cin {
                        r[b * cin + c] = d0[c] - d2[c];
                        r[(4 + b) * cin + c] = d1[c] + d2[c];
                        r[(8 + b) * cin + c] = d2[c] - d1[c];
                        r[(12 + b) * cin + c] = d1[c] - d3[c];
                    }
                }
                // …then on columns, into the transformed domain.
                for a in 0..4 {
                    let q = |b: usize| &r[(a * 4 + b) * cin..][..cin];
                    let (q0, q1, q2, q3) = (q(0), q(1), q(2), q(3));
                    let at = |b: usize| ((a * 4 + b) * tiles + t) * cin;
                    let (o0, o1, o2, o3) = (at(0), at(1), at(2), at(3));
                    for c in 0..cin {
                        v[o0 + c] = q0[c] - q2[c];
                        v[o1 + c] = q1[c] + q2[c];
                        v[o2 + c] = q2[c] - q1[c];
                        v[o3 + c] = q1[c] - q3[c];
                    }
                }
                t += 1;
            }
        }
    }
    for xi in 0..16 {
        mm(
            &mut m[xi * tiles * cout..],
            &v[xi * tiles * cin..],
            &u[xi * cin * cout..],
            tiles,
            cin,
            cout,
        );
    }
    // Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]].
    let mut t = 0;
    for i in 0..s.images {
        for ty in 0..th {
            for tx in 0..tw {
                let g = |a: usize, b: usize| &m[((a * 4 + b) * tiles + t) * cout..][..cout];
                for b in 0..4 {
                    let (m0, m1, m2, m3) = (g(0, b), g(1, b), g(2, b), g(3, b));
                    for c in 0..cout {
                        r[b * cout + c] = m0[c] + m1[c] + m2[c];
                        r[(4 + b) * cout + c] = m1[c] - m2[c] - m3[c];
                    }
                }
                for a in 0..2 {
                    let q = |b: usize| &r[(a * 4 + b) * cout..][..cout];
                    let (q0, q1, q2, q3) = (q(0), q(1), q(2), q(3));
                    for b in 0..2 {
                        let (y, xx) = ((2 * ty + a) as isize, (2 * tx + b) as isize);
                        if let Some(dst) = s.at(i, y, xx) {
                            let o = &mut out[dst * cout..][..cout];
                            for c in 0..cout {
                                o[c] = if b == 0 {
                                    q0[c] + q1[c] + q2[c]
                                } else {
                                    q1[c] - q2[c] - q3[c]
                                };
                            }
                        }
                    }
                }
                t += 1;
            }
        }
    }
}

/// `u[ξ][c][o]` = (G·g[o][c]·Gᵀ)[ξ] for a correlation kernel `g` of shape `[cout, cin, 3, 3]`.
fn winograd_weights(g: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let gm = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0f32],
    ];
    let mut u = vec![0.0; 16 * cin * cout];
    for o in 0..cout {
        for c in 0..cin {
            let k = &g[(o * cin + c) * 9..][..9];
            for a in 0..4 {
                for b in 0..4 {
                    let mut sum = 0.0;
                    for i in 0..3 {
                        for j in 0..3 {
                            sum += gm[a][i] * k[i * 3 + j] * gm[b][j];
                        }
                    }
                    u[((a * 4 + b) * cin + c) * cout + o] = sum;
                }
            }
        }
    }
    u
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Microseconds per call, after a warm-up.
fn time(mut f: impl FnMut()) -> f64 {
    (0..20).for_each(|_| f());
    let n = 400;
    let start = Instant::now();
    (0..n).for_each(|_| f());
    start.elapsed().as_secs_f64() / n as f64 * 1e6
}

/// Deterministic values in [−0.5, 0.5).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0
                - 0.5
        })
        .collect()
}

fn main() {
    println!("one thread; µs per block; c → hidden → c_out; 'wino' includes both transforms");
    // The CIFAR shape (3×32×32, hidden 256): a block of whole images per level as revflow's
    // forward pass makes them (128+ rows), then larger blocks to give the small gemms more rows.
    let cases = [
        (1, 16, 6, 12),
        (2, 8, 12, 24),
        (8, 4, 24, 48),
        (4, 16, 6, 12),
        (8, 8, 12, 24),
        (32, 4, 24, 48),
    ];
    let hidden = 256;
    for (images, side, c, c_out) in cases {
        let s = Shape {
            images,
            h: side,
            w: side,
        };
        let (rows, tiles) = (s.rows(), s.tiles());
        let x = values(rows * c, 1);
        let g1 = values(hidden * c * 9, 2);
        let mut w1 = vec![0.0; 9 * c * hidden];
        let g3 = values(c_out * hidden * 9, 6);
        let mut w3 = vec![0.0; hidden * 9 * c_out];
        for t in 0..9 {
            for ch in 0..c {
                for o in 0..hidden {
                    w1[(t * c + ch) * hidden + o] = g1[(o * c + ch) * 9 + t];
                }
            }
            for ch in 0..hidden {
                for o in 0..c_out {
                    // The zero conv's taps are read mirrored (each pixel adds its neighbours').
                    w3[ch * 9 * c_out + t * c_out + o] = g3[(o * hidden + ch) * 9 + 8 - t];
                }
            }
        }
        let (u1, u3) = (
            winograd_weights(&g1, c, hidden),
            winograd_weights(&g3, hidden, c_out),
        );
        let mut cols = vec![0.0; rows * 9 * c];
        let mut v = vec![0.0; 16 * tiles * hidden];
        let mut m = vec![0.0; 16 * tiles * hidden];
        let (mut h1, mut h1w) = (vec![0.0; rows * hidden], vec![0.0; rows * hidden]);
        let h2 = values(rows * hidden, 4);
        let w2 = values(hidden * hidden, 5);
        let mut h2out = vec![0.0; rows * hidden];
        let mut m3 = vec![0.0; rows * 9 * c_out];
        let (mut y, mut yw) = (vec![0.0; rows * c_out], vec![0.0; rows * c_out]);

        direct_in(&x, s, c, &w1, hidden, &mut cols, &mut h1);
        winograd(&x, s, c, &u1, hidden, &mut v, &mut m, &mut h1w);
        direct_out(&h2, s, hidden, &w3, c_out, &mut m3, &mut y);
        winograd(&h2, s, hidden, &u3, c_out, &mut v, &mut m, &mut yw);
        let (e1, e3) = (
            max_diff(&h1, &h1w) / max_abs(&h1),
            max_diff(&y, &yw) / max_abs(&y),
        );
        assert!(
            e1 < 1e-5 && e3 < 1e-5,
            "the two forms disagree: {e1:e}, {e3:e}"
        );

        let d1 = time(|| direct_in(&x, s, c, &w1, hidden, &mut cols, &mut h1));
        let wg1 = time(|| winograd(&x, s, c, &u1, hidden, &mut v, &mut m, &mut h1w));
        let p2 = time(|| mm(&mut h2out, &h2, &w2, rows, hidden, hidden));
        let d3 = time(|| direct_out(&h2, s, hidden, &w3, c_out, &mut m3, &mut y));
        let wg3 = time(|| winograd(&h2, s, hidden, &u3, c_out, &mut v, &mut m, &mut yw));
        let gemms3 = time(|| {
            for xi in 0..16 {
                mm(
                    &mut m[xi * tiles * c_out..],
                    &v[xi * tiles * hidden..],
                    &u3[xi * hidden * c_out..],
                    tiles,
                    hidden,
                    c_out,
                )
            }
        });
        println!(
            "{images}×{side}×{side}, {c} → {hidden} → {c_out}: 3×3 in: direct {d1:.0} wino {wg1:.0} | \
             1×1: {p2:.0} | 3×3 out: direct {d3:.0} wino {wg3:.0} (its 16 gemms alone {gemms3:.0}) | \
             network: direct {:.0}, best mix {:.0} | max rel. difference {e1:.1e}, {e3:.1e}",
            d1 + p2 + d3,
            d1.min(wg1) + p2 + d3.min(wg3),
        );
    }
}
