//! Glow's coupling network on plain `f32` memory, forward and backward.
//!
//! Activations are kept as matrices with one row per pixel (`n·h·w` rows) and one column per
//! channel, so every convolution is one large matrix product:
//!
//! - conv3×3 `c_in → hidden`: the 9 shifted copies of the few input channels side by side
//!   ("im2col", `rows × 9·c_in`) times the weights;
//! - conv1×1 `hidden → hidden`: the activations times the weights;
//! - zero conv3×3 `hidden → c_out`: the activations times the weights of all 9 taps
//!   (`hidden × 9·c_out`), then each tap's columns added at its shift ("col2im").
//!
//! ActNorm's scale is folded into the weights before the product (`(A·W + b)·s = A·(W·s) + b·s`)
//! and its bias and the ReLU applied in one pass over the result, so a hidden map is written
//! once and read once. The backward pass is the same products transposed, and one pass per layer
//! through ReLU and ActNorm that also sums their parameters' gradients.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Batch size, channels and image size of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c_in: usize,
    pub hidden: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    /// Pixels in the batch: the rows of every activation matrix.
    pub fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// The network's parameters, in burn's layouts (convolution weights `[out, in, k, k]`).
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    pub w1: &'a [f32],
    pub log_s1: &'a [f32],
    pub b1: &'a [f32],
    pub w2: &'a [f32],
    pub log_s2: &'a [f32],
    pub b2: &'a [f32],
    pub w3: &'a [f32],
    pub b3: &'a [f32],
    /// The zero conv's output scale is `exp(3·log_s3)`.
    pub log_s3: &'a [f32],
}

/// What the backward pass needs from the forward pass.
#[derive(Debug, Clone)]
pub struct Saved {
    a1: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    out: Vec<f32>,
}

/// Gradients of the loss with respect to the input and every parameter (same layouts).
#[derive(Debug)]
pub struct Grads {
    pub x: Vec<f32>,
    pub w1: Vec<f32>,
    pub log_s1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub log_s2: Vec<f32>,
    pub b2: Vec<f32>,
    pub w3: Vec<f32>,
    pub b3: Vec<f32>,
    pub log_s3: Vec<f32>,
}

/// A matrix view into row-major memory, possibly transposed.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

fn mat(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    debug_assert_eq!(data.len(), rows * cols);
    View {
        data,
        rows,
        cols,
        row_stride: cols as isize,
        col_stride: 1,
    }
}

impl View<'_> {
    fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `a·b` into a new row-major matrix, the product split across threads when it is large.
fn matmul(a: View, b: View) -> Vec<f32> {
    let mut out = uninit(a.rows * b.cols);
    // Small products are quicker on one thread than split across the pool.
    let parallel = a.rows * b.cols * a.cols >= 1 << 18;
    product(&mut out, a, b, parallel);
    // SAFETY: `product` wrote every value.
    unsafe { assume_init(out) }
}

/// A buffer for [`product`] to fill: zeroing it first would be a wasted pass (5 % of a step).
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// # Safety
/// Every value of `v` has been written.
unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> has the layout of f32, and the caller vouches for the values.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `out = a·b` (row-major), writing every value of `out`; returns it as initialised values.
fn product<'o>(out: &'o mut [MaybeUninit<f32>], a: View, b: View, parallel: bool) -> &'o mut [f32] {
    assert_eq!(a.cols, b.rows, "matrix product: inner sizes differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(out.len(), m * n, "matrix product: output size");
    if k == 0 {
        out.fill(MaybeUninit::new(0.0));
    } else if m * n > 0 {
        let parallelism = if parallel {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the views were built over slices holding rows·cols values with these strides
        // (checked in `mat`), `out` holds m·n values, and nothing aliases it. With read_dst
        // false the product writes every value of `out` without reading it.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                false,
                a.data.as_ptr(),
                a.col_stride,
                a.row_stride,
                b.data.as_ptr(),
                b.col_stride,
                b.row_stride,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
    // SAFETY: every value was written above; MaybeUninit<f32> has the layout of f32.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Rows per task when the forward pass runs block by block: enough blocks for every thread,
/// each small enough that its hidden activations stay in cache between the products.
fn block_rows(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads())
        .clamp(16, 256)
}

/// Rows per parallel task in the element-wise passes.
const BLOCK: usize = 64;

/// The 9 shifted copies of `x` (NCHW, `c` channels) side by side: row `(n, y, x)`, column
/// `tap·c + channel` holds `x[n, channel, y + sign·(ky−1), x + sign·(kx−1)]` (0 outside).
/// With `sign = 1` this is a 3×3 convolution's input matrix; with `sign = −1` it spreads a
/// gradient of `col2im(·, 1)` back over the taps (its adjoint).
fn im2col(x: &[f32], d: Dims, c: usize, sign: isize) -> Vec<f32> {
    let (h, w) = (d.h, d.w);
    let mut cols = vec![0.0f32; d.rows() * 9 * c];
    cols.par_chunks_mut(h * w * 9 * c)
        .zip(x.par_chunks(c * h * w))
        .for_each(|(cols, x)| {
            for y in 0..h {
                for xx in 0..w {
                    let row = &mut cols[(y * w + xx) * 9 * c..][..9 * c];
                    for tap in 0..9 {
                        let sy = y as isize + sign * (tap as isize / 3 - 1);
                        let sx = xx as isize + sign * (tap as isize % 3 - 1);
                        if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                            continue;
                        }
                        let pixel = sy as usize * w + sx as usize;
                        for ch in 0..c {
                            row[tap * c + ch] = x[ch * h * w + pixel];
                        }
                    }
                }
            }
        });
    cols
}

/// The inverse arrangement of [`im2col`], summing: output (NCHW, `c` channels) at `(n, ch, y, x)`
/// is `bias[ch]` plus, over the taps, column `tap·c + ch` of row `(n, y + sign·(ky−1),
/// x + sign·(kx−1))`. With `sign = 1` this finishes a 3×3 convolution computed per tap; with
/// `sign = −1` it is the adjoint of `im2col(·, 1)`.
fn col2im(cols: &[f32], d: Dims, c: usize, sign: isize, bias: &[f32]) -> Vec<f32> {
    let (h, w) = (d.h, d.w);
    let mut out = vec![0.0f32; d.n * c * h * w];
    out.par_chunks_mut(c * h * w)
        .zip(cols.par_chunks(h * w * 9 * c))
        .for_each(|(out, cols)| {
            // Sum pixel-major (contiguous runs of c values), then lay the planes out.
            let mut sum = vec![0.0f32; h * w * c];
            for (pixel, sum) in sum.chunks_exact_mut(c).enumerate() {
                let (y, xx) = (pixel / w, pixel % w);
                if !bias.is_empty() {
                    sum.copy_from_slice(bias);
                }
                for tap in 0..9 {
                    let sy = y as isize + sign * (tap as isize / 3 - 1);
                    let sx = xx as isize + sign * (tap as isize % 3 - 1);
                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        continue;
                    }
                    let row = &cols[(sy as usize * w + sx as usize) * 9 * c + tap * c..][..c];
                    sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
            }
            for (pixel, sum) in sum.chunks_exact(c).enumerate() {
                for (ch, v) in sum.iter().enumerate() {
                    out[ch * h * w + pixel] = *v;
                }
            }
        });
    out
}

/// A 3×3 weight `[out, in, 3, 3]` as the `9·in × out` matrix that multiplies [`im2col`]'s
/// output, each output column scaled by `scale`.
fn taps_by_input(w: &[f32], c_out: usize, c_in: usize, scale: &[f32]) -> Vec<f32> {
    let mut m = vec![0.0f32; 9 * c_in * c_out];
    for o in 0..c_out {
        for i in 0..c_in {
            for tap in 0..9 {
                m[(tap * c_in + i) * c_out + o] = w[(o * c_in + i) * 9 + tap] * scale[o];
            }
        }
    }
    m
}

/// A 3×3 weight `[out, in, 3, 3]` as the `in × 9·out` matrix whose product with the
/// activations [`col2im`] finishes, output channel `o` scaled by `scale[o]`.
fn taps_by_output(w: &[f32], c_out: usize, c_in: usize, scale: &[f32]) -> Vec<f32> {
    let mut m = vec![0.0f32; c_in * 9 * c_out];
    for o in 0..c_out {
        for i in 0..c_in {
            for tap in 0..9 {
                m[i * 9 * c_out + tap * c_out + o] = w[(o * c_in + i) * 9 + tap] * scale[o];
            }
        }
    }
    m
}

/// A 1×1 weight `[out, in]` transposed to `in × out`, output column `o` scaled by `scale[o]`.
fn transposed_scaled(w: &[f32], c_out: usize, c_in: usize, scale: &[f32]) -> Vec<f32> {
    let mut m = vec![0.0f32; c_in * c_out];
    for o in 0..c_out {
        for i in 0..c_in {
            m[i * c_out + o] = w[o * c_in + i] * scale[o];
        }
    }
    m
}

fn exp(v: &[f32], factor: f32) -> Vec<f32> {
    v.iter().map(|x| (x * factor).exp()).collect()
}

fn times(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a * b).collect()
}

/// `h ← relu(h + bias)` row by row.
fn bias_relu(h: &mut [f32], bias: &[f32]) {
    for row in h.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// Back through `h = relu((m + b)·s)` with `s = exp(log_s)`: turns `dh` (∂L/∂h) into ∂L/∂m in
/// place and returns (∂L/∂log_s, ∂L/∂b). Where the ReLU is active `h` equals `(m + b)·s`, so
/// ∂h/∂log_s = h there.
fn actnorm_relu_backward(dh: &mut [f32], h: &[f32], s: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let c = s.len();
    let (d_log_s, d_sum) = dh
        .par_chunks_mut(BLOCK * c)
        .zip(h.par_chunks(BLOCK * c))
        .map(|(dh, h)| {
            let (mut d_log_s, mut d_sum) = (vec![0.0f32; c], vec![0.0f32; c]);
            for (dh, h) in dh.chunks_exact_mut(c).zip(h.chunks_exact(c)) {
                // Zipped iterators (no indexing) so that the loop vectorises.
                let columns = dh.iter_mut().zip(h).zip(s);
                let sums = d_log_s.iter_mut().zip(d_sum.iter_mut());
                for (((dh, &h), &s), (d_log_s, d_sum)) in columns.zip(sums) {
                    let g = if h > 0.0 { *dh } else { 0.0 };
                    *d_log_s += g * h;
                    *d_sum += g;
                    *dh = g * s;
                }
            }
            (d_log_s, d_sum)
        })
        .reduce(
            || (vec![0.0; c], vec![0.0; c]),
            |(a, b), (c, d)| (add(a, &c), add(b, &d)),
        );
    (d_log_s, times(&d_sum, s))
}

fn add(mut a: Vec<f32>, b: &[f32]) -> Vec<f32> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    a
}

/// The network's output (NCHW, `c_out` channels) for `x` (NCHW, `c_in` channels), and what
/// the backward pass needs when `keep` is set.
pub fn forward(x: &[f32], d: Dims, p: Params, keep: bool) -> (Vec<f32>, Option<Saved>) {
    let (rows, hidden) = (d.rows(), d.hidden);
    let (s1, s2, s3) = (exp(p.log_s1, 1.0), exp(p.log_s2, 1.0), exp(p.log_s3, 3.0));

    let (c_in, c_out) = (d.c_in, d.c_out);
    let a1 = im2col(x, d, c_in, 1);
    let (w1, b1) = (taps_by_input(p.w1, hidden, c_in, &s1), times(p.b1, &s1));
    let (w2, b2) = (
        transposed_scaled(p.w2, hidden, hidden, &s2),
        times(p.b2, &s2),
    );
    let w3 = taps_by_output(p.w3, c_out, hidden, &s3);

    // Everything up to the zero conv's per-tap products is row by row, so it runs in blocks
    // of rows, in parallel, each block's activations still in cache from one product to the
    // next.
    let block = block_rows(rows);
    let (mut h1, mut h2) = (uninit(rows * hidden), uninit(rows * hidden));
    let mut z = uninit(rows * 9 * c_out);
    h1.par_chunks_mut(block * hidden)
        .zip(h2.par_chunks_mut(block * hidden))
        .zip(z.par_chunks_mut(block * 9 * c_out))
        .enumerate()
        .for_each(|(i, ((h1, h2), z))| {
            let n = h1.len() / hidden;
            let a1 = &a1[i * block * 9 * c_in..][..n * 9 * c_in];
            let h1 = product(h1, mat(a1, n, 9 * c_in), mat(&w1, 9 * c_in, hidden), false);
            bias_relu(h1, &b1);
            let h2 = product(h2, mat(h1, n, hidden), mat(&w2, hidden, hidden), false);
            bias_relu(h2, &b2);
            product(z, mat(h2, n, hidden), mat(&w3, hidden, 9 * c_out), false);
        });
    // SAFETY: the blocks cover the buffers, and `product` wrote every value of each.
    let (h1, h2, z) = unsafe { (assume_init(h1), assume_init(h2), assume_init(z)) };
    let out = col2im(&z, d, d.c_out, 1, &times(p.b3, &s3));

    let saved = keep.then(|| Saved {
        a1,
        h1,
        h2,
        out: out.clone(),
    });
    (out, saved)
}

/// The second convolution's output before its ActNorm, `conv1×1(relu(ActNorm₁(conv3×3(x))))`,
/// one row per pixel: what that ActNorm's data-dependent initialisation needs (`log_s2`,
/// `b2` and the last layer are not read). [`from_second`] finishes the forward pass from it.
pub fn second(x: &[f32], d: Dims, p: Params) -> Vec<f32> {
    let (rows, hidden, c_in) = (d.rows(), d.hidden, d.c_in);
    let s1 = exp(p.log_s1, 1.0);
    let a1 = im2col(x, d, c_in, 1);
    let (w1, b1) = (taps_by_input(p.w1, hidden, c_in, &s1), times(p.b1, &s1));
    let w2 = transposed_scaled(p.w2, hidden, hidden, &vec![1.0; hidden]);
    let block = block_rows(rows);
    let (mut h1, mut m2) = (uninit(rows * hidden), uninit(rows * hidden));
    h1.par_chunks_mut(block * hidden)
        .zip(m2.par_chunks_mut(block * hidden))
        .enumerate()
        .for_each(|(i, (h1, m2))| {
            let n = h1.len() / hidden;
            let a1 = &a1[i * block * 9 * c_in..][..n * 9 * c_in];
            let h1 = product(h1, mat(a1, n, 9 * c_in), mat(&w1, 9 * c_in, hidden), false);
            bias_relu(h1, &b1);
            product(m2, mat(h1, n, hidden), mat(&w2, hidden, hidden), false);
        });
    // SAFETY: the blocks cover the buffer, and `product` wrote every value of each.
    unsafe { assume_init(m2) }
}

/// The network's output (NCHW, `c_out` channels) from [`second`]'s `m2`:
/// `conv3×3(relu(ActNorm₂(m2)))`, as [`forward`] computes it.
pub fn from_second(mut m2: Vec<f32>, d: Dims, p: Params) -> Vec<f32> {
    let (hidden, c_out) = (d.hidden, d.c_out);
    let (s2, s3) = (exp(p.log_s2, 1.0), exp(p.log_s3, 3.0));
    // relu((m2 + b2)·s2) = relu(m2·s2 + b2·s2), in the order `forward` folds it.
    let b2 = times(p.b2, &s2);
    m2.par_chunks_mut(BLOCK * hidden).for_each(|rows| {
        for row in rows.chunks_exact_mut(hidden) {
            for ((v, s), b) in row.iter_mut().zip(&s2).zip(&b2) {
                *v = (*v * s + b).max(0.0);
            }
        }
    });
    let w3 = taps_by_output(p.w3, c_out, hidden, &s3);
    let z = matmul(mat(&m2, d.rows(), hidden), mat(&w3, hidden, 9 * c_out));
    col2im(&z, d, c_out, 1, &times(p.b3, &s3))
}

/// Gradients for `grad_out` = ∂L/∂output (NCHW); `with_x`: also ∂L/∂x (one more product).
pub fn backward(grad_out: &[f32], d: Dims, p: Params, saved: &Saved, with_x: bool) -> Grads {
    let (rows, hidden, c_in, c_out) = (d.rows(), d.hidden, d.c_in, d.c_out);
    let (s1, s2, s3) = (exp(p.log_s1, 1.0), exp(p.log_s2, 1.0), exp(p.log_s3, 3.0));
    let plane = d.h * d.w;

    // out = (conv(h2) + b3)·s3, s3 = exp(3·log_s3): ∂out/∂log_s3 = 3·out.
    let mut log_s3 = vec![0.0f32; c_out];
    let mut b3 = vec![0.0f32; c_out];
    let mut g = grad_out.to_vec(); // becomes ∂L/∂(conv(h2) + b3)
    for (i, (g, o)) in g.chunks_mut(plane).zip(saved.out.chunks(plane)).enumerate() {
        let ch = i % c_out;
        for (g, o) in g.iter_mut().zip(o) {
            log_s3[ch] += 3.0 * *g * o;
            *g *= s3[ch];
            b3[ch] += *g;
        }
    }
    let dz = im2col(&g, d, c_out, -1);
    let w3_by_tap = matmul(mat(&saved.h2, rows, hidden).t(), mat(&dz, rows, 9 * c_out));
    let ones = vec![1.0f32; hidden.max(c_out)];
    let w3 = taps_by_output(p.w3, c_out, hidden, &ones[..c_out]);
    let mut dh2 = matmul(mat(&dz, rows, 9 * c_out), mat(&w3, hidden, 9 * c_out).t());

    let (log_s2, b2) = actnorm_relu_backward(&mut dh2, &saved.h2, &s2);
    let w2 = matmul(mat(&dh2, rows, hidden).t(), mat(&saved.h1, rows, hidden));
    let mut dh1 = matmul(mat(&dh2, rows, hidden), mat(p.w2, hidden, hidden));

    let (log_s1, b1) = actnorm_relu_backward(&mut dh1, &saved.h1, &s1);
    let w1_by_tap = matmul(mat(&saved.a1, rows, 9 * c_in).t(), mat(&dh1, rows, hidden));
    let x = if with_x {
        let w1 = taps_by_input(p.w1, hidden, c_in, &ones[..hidden]);
        let da1 = matmul(mat(&dh1, rows, hidden), mat(&w1, 9 * c_in, hidden).t());
        col2im(&da1, d, c_in, -1, &[])
    } else {
        Vec::new()
    };

    Grads {
        x,
        w1: untap_by_input(&w1_by_tap, hidden, c_in),
        log_s1,
        b1,
        w2,
        log_s2,
        b2,
        w3: untap_by_output(&w3_by_tap, c_out, hidden),
        b3,
        log_s3,
    }
}

/// Inverse of [`taps_by_input`] (unscaled): back to `[out, in, 3, 3]`.
fn untap_by_input(m: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; c_out * c_in * 9];
    for o in 0..c_out {
        for i in 0..c_in {
            for tap in 0..9 {
                w[(o * c_in + i) * 9 + tap] = m[(tap * c_in + i) * c_out + o];
            }
        }
    }
    w
}

/// Inverse of [`taps_by_output`] (unscaled): back to `[out, in, 3, 3]`.
fn untap_by_output(m: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; c_out * c_in * 9];
    for o in 0..c_out {
        for i in 0..c_in {
            for tap in 0..9 {
                w[(o * c_in + i) * 9 + tap] = m[i * 9 * c_out + tap * c_out + o];
            }
        }
    }
    w
}

/// Glow's affine coupling on top of the network: with `(t, r)` the network's output on `x_a`
/// (first and second half of its channels) and `s = σ(r + 2)`, forward `y = (x_b + t)·s`, or in
/// `reverse` `y = x_b / s − t`. Returns `y` and `±log s` (whose sum is the direction's
/// log-determinant) as one NCHW tensor, `y` in the first half of the channels; and, if `keep`,
/// what [`affine_backward`] needs.
pub fn affine_forward(
    x_a: &[f32],
    x_b: &[f32],
    reverse: bool,
    d: Dims,
    p: Params,
    keep: bool,
) -> (Vec<f32>, Option<Saved>) {
    let (h, saved) = forward(x_a, d, p, keep);
    let plane = d.c_out / 2 * d.h * d.w; // one image's channels of x_b
    let mut out = vec![0.0f32; h.len()];
    out.par_chunks_mut(2 * plane)
        .zip(h.par_chunks(2 * plane))
        .zip(x_b.par_chunks(plane))
        .for_each(|((out, h), x_b)| {
            let (y, log_s) = out.split_at_mut(plane);
            let (t, r) = h.split_at(plane);
            for i in 0..plane {
                let z = r[i] + 2.0;
                // log σ(z) = −log(1 + e^(−z)), computed without overflow for either sign.
                let ls = z.min(0.0) - (-z.abs()).exp().ln_1p();
                if reverse {
                    log_s[i] = -ls;
                    y[i] = x_b[i] * (-ls).exp() - t[i];
                } else {
                    log_s[i] = ls;
                    y[i] = (x_b[i] + t[i]) * ls.exp();
                }
            }
        });
    (out, saved)
}

/// Gradients of [`affine_forward`] for `grad_out` (same layout as its output): those of
/// [`backward`], and ∂L/∂x_b.
pub fn affine_backward(
    grad_out: &[f32],
    x_b: &[f32],
    reverse: bool,
    d: Dims,
    p: Params,
    saved: &Saved,
    with_x: bool,
) -> (Grads, Vec<f32>) {
    let plane = d.c_out / 2 * d.h * d.w;
    let mut grad_net = vec![0.0f32; grad_out.len()];
    let mut grad_b = vec![0.0f32; x_b.len()];
    grad_net
        .par_chunks_mut(2 * plane)
        .zip(grad_b.par_chunks_mut(plane))
        .zip(grad_out.par_chunks(2 * plane))
        .zip(saved.out.par_chunks(2 * plane).zip(x_b.par_chunks(plane)))
        .for_each(|(((g_net, g_b), g), (h, x_b))| {
            let (g_t, g_r) = g_net.split_at_mut(plane);
            let (g_y, g_ls) = g.split_at(plane);
            let (t, r) = h.split_at(plane);
            for i in 0..plane {
                let s = 1.0 / (1.0 + (-(r[i] + 2.0)).exp());
                // ds/dr = s(1 − s), d log s/dr = 1 − s.
                if reverse {
                    // y = x_b/s − t, second output −log s: d(1/s)/dr = −(1 − s)/s.
                    g_b[i] = g_y[i] / s;
                    g_t[i] = -g_y[i];
                    g_r[i] = -(g_y[i] * x_b[i] / s + g_ls[i]) * (1.0 - s);
                } else {
                    // y = (x_b + t)·s, second output log s.
                    g_b[i] = g_y[i] * s;
                    g_t[i] = g_y[i] * s;
                    g_r[i] = (g_y[i] * (x_b[i] + t[i]) * s + g_ls[i]) * (1.0 - s);
                }
            }
        });
    (backward(&grad_net, d, p, saved, with_x), grad_b)
}
