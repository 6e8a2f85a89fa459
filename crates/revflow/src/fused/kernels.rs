//! Glow's coupling network on plain `f32` memory, forward and backward.
//!
//! Activations are kept as matrices with one row per pixel (`n·h·w` rows) and one column per
//! channel, so every convolution is one large matrix product:
//!
//! - conv3×3 `c_in → hidden`: the 9 shifted copies of the few input channels side by side
//!   ("im2col", `rows × 9·c_in`, channel-major, the column order of burn's `[out, in, 3, 3]`
//!   weight) times the weights;
//! - conv1×1 `hidden → hidden`: the activations times the weights;
//! - zero conv3×3 `hidden → c_out`: the activations times the weights of all 9 taps
//!   (`hidden × 9·c_out`), then each tap's columns added at its shift ("col2im").
//!
//! ActNorm (`(m + b)·s`) and the ReLU are one pass over each product's result, so a hidden map
//! is written once and read once. The forward pass runs in blocks of whole images, in parallel:
//! a block goes from the input to the output (and the affine coupling) on its own, its
//! activations in this thread's scratch memory, which is kept between calls, so that inference
//! allocates only its result. The backward pass runs in the same blocks, back from the output
//! to the input: the same products transposed, one pass per layer through ReLU and ActNorm, and
//! each block's share of the weight gradients added to its thread's sums.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::Arc;

use rayon::prelude::*;

use crate::memo::Memo;

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

impl<'a> Params<'a> {
    /// Every parameter, in the order of the fields.
    fn all(&self) -> [&'a [f32]; 9] {
        let p = self;
        [
            p.w1, p.log_s1, p.b1, p.w2, p.log_s2, p.b2, p.w3, p.b3, p.log_s3,
        ]
    }
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

/// A matrix view into memory: element `(i, j)` at `i·row_stride + j·col_stride`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

/// A row-major matrix.
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
    let mut out = Vec::<f32>::with_capacity(a.rows * b.cols);
    // Small products are quicker on one thread than split across the pool.
    let parallel = a.rows * b.cols * a.cols >= 1 << 18;
    // SAFETY: `out` has room for rows·cols values, and `gemm_into` writes every one of them
    // (zeroing first would be a wasted pass, 5 % of a step).
    unsafe {
        gemm_into(out.as_mut_ptr(), a, b, parallel, false);
        out.set_len(a.rows * b.cols);
    }
    out
}

/// `out = a·b` (row-major), writing every value of `out`.
fn product(out: &mut [f32], a: View, b: View, parallel: bool) {
    assert_eq!(out.len(), a.rows * b.cols, "matrix product: output size");
    // SAFETY: `out` holds rows·cols values and is borrowed mutably, so nothing aliases it.
    unsafe { gemm_into(out.as_mut_ptr(), a, b, parallel, false) }
}

/// `out += a·b` (row-major).
fn accumulate(out: &mut [f32], a: View, b: View, parallel: bool) {
    assert_eq!(out.len(), a.rows * b.cols, "matrix product: output size");
    // SAFETY: as in `product`; `out` holds initialised values to add to.
    unsafe { gemm_into(out.as_mut_ptr(), a, b, parallel, true) }
}

/// `out = a·b`, or `out += a·b` when `add`.
///
/// # Safety
/// `out` points at `a.rows·b.cols` writable values that nothing else reads or writes meanwhile;
/// all of them are written, and with `add` they are initialised.
unsafe fn gemm_into(out: *mut f32, a: View, b: View, parallel: bool, add: bool) {
    assert_eq!(a.cols, b.rows, "matrix product: inner sizes differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m * n == 0 {
        return;
    }
    if k == 0 && add {
        return;
    }
    if k == 0 {
        // SAFETY: the caller vouches for m·n values at `out`.
        unsafe { std::slice::from_raw_parts_mut(out.cast::<MaybeUninit<f32>>(), m * n) }
            .fill(MaybeUninit::new(0.0));
        return;
    }
    for v in [a, b] {
        // The last element a view reaches lies inside its slice (strides are non-negative).
        let last = (v.rows - 1) as isize * v.row_stride + (v.cols - 1) as isize * v.col_stride;
        assert!(v.row_stride >= 0 && v.col_stride >= 0 && (last as usize) < v.data.len());
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: both views stay inside their slices (checked above), the caller vouches for
    // `out`; without `add` the product writes every value without reading it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            add,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Rows per parallel task in the element-wise passes.
const BLOCK: usize = 64;

/// Rows a forward block aims at: whole images are grouped until a block has this many, enough
/// for the products to run near their peak, few enough to give every thread blocks.
const BLOCK_ROWS: usize = 128;

/// Rows per product inside a block: the hidden activations of this many stay in cache from one
/// product to the next.
const SUB_ROWS: usize = 256;

/// Scratch memory above this many values is not kept for the next call.
const KEEP_SCRATCH: usize = 1 << 22;

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` values of this thread's scratch memory (their contents are arbitrary).
/// The memory is taken out while `f` runs, so a nested call gets its own.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut v = SCRATCH.take();
    if v.len() < len {
        v = vec![0.0; len];
    }
    let result = f(&mut v[..len]);
    if v.len() <= KEEP_SCRATCH {
        SCRATCH.set(v);
    }
    result
}

/// Where tap `tap` of channel `ch` sits among the `9·c` columns of an im2col row.
#[derive(Debug, Clone, Copy)]
struct Columns {
    tap: usize,
    channel: usize,
}

impl Columns {
    /// `ch·9 + tap`: a `[out, in, 3, 3]` weight read in place is the `9·in × out` matrix.
    const BY_CHANNEL: Columns = Columns { tap: 1, channel: 9 };

    /// `tap·c + ch`: each tap's `c` columns side by side, as the zero conv's products come.
    fn by_tap(c: usize) -> Self {
        Columns { tap: c, channel: 1 }
    }

    fn at(self, tap: usize, ch: usize) -> usize {
        tap * self.tap + ch * self.channel
    }
}

/// The pixel that tap `tap` at `(y, x)` reads (`sign = 1`) or feeds (`sign = −1`), if inside.
#[inline]
fn shifted(y: usize, x: usize, tap: usize, sign: isize, h: usize, w: usize) -> Option<usize> {
    let sy = y as isize + sign * (tap as isize / 3 - 1);
    let sx = x as isize + sign * (tap as isize % 3 - 1);
    (sy >= 0 && sx >= 0 && sy < h as isize && sx < w as isize)
        .then(|| sy as usize * w + sx as usize)
}

/// One image's 9 shifted copies: row `(y, x)`, column `layout.at(tap, ch)` of `cols` gets
/// `x[ch, y + sign·(ky−1), x + sign·(kx−1)]` (0 outside). With `sign = 1` this is a 3×3
/// convolution's input matrix; with `sign = −1` it spreads a gradient of
/// `col2im(·, 1)` back over the taps (its adjoint).
fn im2col_image(x: &[f32], h: usize, w: usize, sign: isize, layout: Columns, cols: &mut [f32]) {
    let plane = h * w;
    let c = x.len() / plane;
    for (pixel, row) in cols.chunks_exact_mut(9 * c).enumerate() {
        let (y, xx) = (pixel / w, pixel % w);
        let src: [Option<usize>; 9] = std::array::from_fn(|tap| shifted(y, xx, tap, sign, h, w));
        for (ch, x) in x.chunks_exact(plane).enumerate() {
            for (tap, src) in src.iter().enumerate() {
                row[layout.at(tap, ch)] = src.map_or(0.0, |s| x[s]);
            }
        }
    }
}

/// The inverse arrangement of [`im2col_image`], summing: `out` (c planes) at `(ch, y, x)` is
/// `(bias[ch] + Σ_tap cols[row (y + sign·(ky−1), x + sign·(kx−1)), column layout.at(tap, ch)])
/// · scale[ch]` (no bias or scale when those are empty). With `sign = 1` this finishes a 3×3
/// convolution computed per tap; with `sign = −1` it is the adjoint of `im2col_image(·, 1)`.
#[allow(clippy::too_many_arguments)]
fn col2im_image(
    cols: &[f32],
    h: usize,
    w: usize,
    sign: isize,
    layout: Columns,
    bias: &[f32],
    scale: &[f32],
    out: &mut [f32],
) {
    let plane = h * w;
    let c = out.len() / plane;
    let mut sum = vec![0.0f32; c];
    for pixel in 0..plane {
        let (y, xx) = (pixel / w, pixel % w);
        match bias.is_empty() {
            true => sum.fill(0.0),
            false => sum.copy_from_slice(bias),
        }
        for tap in 0..9 {
            if let Some(src) = shifted(y, xx, tap, sign, h, w) {
                let row = &cols[src * 9 * c..][..9 * c];
                match layout.channel {
                    // A tap's channels side by side: a contiguous add that vectorises.
                    1 => sum
                        .iter_mut()
                        .zip(&row[tap * layout.tap..][..c])
                        .for_each(|(s, v)| *s += v),
                    _ => sum
                        .iter_mut()
                        .enumerate()
                        .for_each(|(ch, s)| *s += row[layout.at(tap, ch)]),
                }
            }
        }
        for (ch, s) in sum.iter().enumerate() {
            out[ch * plane + pixel] = if scale.is_empty() { *s } else { s * scale[ch] };
        }
    }
}

/// [`im2col_image`] over a batch (NCHW, `c` channels), images in parallel.
fn im2col(x: &[f32], d: Dims, c: usize, sign: isize, layout: Columns) -> Vec<f32> {
    let plane = d.h * d.w;
    let mut cols = vec![0.0f32; d.rows() * 9 * c];
    cols.par_chunks_mut(plane * 9 * c)
        .zip(x.par_chunks(c * plane))
        .for_each(|(cols, x)| im2col_image(x, d.h, d.w, sign, layout, cols));
    cols
}

/// [`col2im_image`] over a batch, images in parallel: NCHW with `c` channels.
#[allow(clippy::too_many_arguments)]
fn col2im(
    cols: &[f32],
    d: Dims,
    c: usize,
    sign: isize,
    layout: Columns,
    bias: &[f32],
    scale: &[f32],
) -> Vec<f32> {
    let plane = d.h * d.w;
    let mut out = vec![0.0f32; d.n * c * plane];
    out.par_chunks_mut(c * plane)
        .zip(cols.par_chunks(plane * 9 * c))
        .for_each(|(out, cols)| col2im_image(cols, d.h, d.w, sign, layout, bias, scale, out));
    out
}

/// A 3×3 weight `[out, in, 3, 3]` as the `in × 9·out` matrix whose product with the
/// activations [`col2im`] finishes (columns [`Columns::by_tap`]).
fn taps_by_output(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; c_in * 9 * c_out];
    for (i, row) in m.chunks_exact_mut(9 * c_out).enumerate() {
        for tap in 0..9 {
            for o in 0..c_out {
                row[tap * c_out + o] = w[(o * c_in + i) * 9 + tap];
            }
        }
    }
    m
}

/// Inverse of [`taps_by_output`]: back to `[out, in, 3, 3]`.
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

fn exp(v: &[f32], factor: f32) -> Vec<f32> {
    v.iter().map(|x| (x * factor).exp()).collect()
}

fn times(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a * b).collect()
}

/// `h ← relu(h·s + b)` row by row: ActNorm `(m + b₀)·s` with `b = b₀·s`, then the ReLU.
fn actnorm_relu(h: &mut [f32], s: &[f32], b: &[f32]) {
    for row in h.chunks_exact_mut(s.len()) {
        for ((v, s), b) in row.iter_mut().zip(s).zip(b) {
            *v = (*v * s + b).max(0.0);
        }
    }
}

/// Back through `h = relu((m + b)·s)` with `s = exp(log_s)`: turns `dh` (∂L/∂h) into ∂L/∂m in
/// place, and adds ∂L/∂log_s to `d_log_s` and ∂L/∂(m + b) (∂L/∂b before the factor s) to
/// `d_sum`. Where the ReLU is active `h` equals `(m + b)·s`, so ∂h/∂log_s = h there.
fn actnorm_relu_backward(
    dh: &mut [f32],
    h: &[f32],
    s: &[f32],
    d_log_s: &mut [f32],
    d_sum: &mut [f32],
) {
    let c = s.len();
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
}

/// The network's weights as the products read them: transposed into row-major `in × out`
/// matrices (read in place through strides instead, they made gemm's packing 11 % of
/// evaluation rather than 4 %), the zero conv's taps side by side; ActNorm's scales and scaled
/// biases, the zero conv's bias and scale.
struct Prepared {
    w1: Vec<f32>,
    s1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    s2: Vec<f32>,
    b2: Vec<f32>,
    w3: Vec<f32>,
    b3: Vec<f32>,
    s3: Vec<f32>,
}

impl Prepared {
    fn new(d: Dims, p: Params) -> Self {
        let (c_in, hidden) = (d.c_in, d.hidden);
        let (s1, s2) = (exp(p.log_s1, 1.0), exp(p.log_s2, 1.0));
        Prepared {
            // [hidden, c_in·9] as (c_in·9) × hidden: im2col's columns are channel-major.
            w1: transpose(p.w1, hidden, 9 * c_in),
            b1: times(p.b1, &s1),
            s1,
            w2: transpose(p.w2, hidden, hidden),
            b2: times(p.b2, &s2),
            s2,
            w3: taps_by_output(p.w3, d.c_out, hidden),
            b3: p.b3.to_vec(),
            s3: exp(p.log_s3, 3.0),
        }
    }

    /// The prepared weights for `p`, kept while the same weights come again: evaluation and
    /// sampling call every coupling with unchanged weights, where preparing them anew cost
    /// 2–4 % of the time.
    fn cached(d: Dims, p: Params) -> Arc<Prepared> {
        /// Every coupling of a CIFAR-size Glow of width 256 (24 × 0.43 MB of weights).
        static MEMO: Memo<Prepared> = Memo::new(32 << 20);
        // The weights' lengths determine the sizes: hidden = |b1|, c_in = |w1| / 9·hidden.
        MEMO.get(&p.all(), || Prepared::new(d, p))
    }
}

/// The transpose of a row-major `rows × cols` matrix, in tiles that stay in cache.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 16;
    let mut t = vec![0.0f32; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    t[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
    t
}

/// What follows the network in one call: nothing, or Glow's affine coupling of `x_b`.
#[derive(Clone, Copy)]
enum Head<'a> {
    Net,
    Affine { x_b: &'a [f32], reverse: bool },
}

/// One block's memory: the activations it keeps for the backward pass (empty when not
/// training), and its part of the result.
struct Block<'a> {
    /// Index of the block's first image.
    first: usize,
    images: usize,
    a1: &'a mut [f32],
    h1: &'a mut [f32],
    h2: &'a mut [f32],
    /// The network's output, kept for the backward pass of the affine coupling.
    net: &'a mut [f32],
    result: &'a mut [f32],
}

/// `buf` cut into `blocks` consecutive parts of `size` values (the last may be shorter), or
/// `blocks` empty parts when `buf` is empty.
fn carve(buf: &mut [f32], size: usize, blocks: usize) -> Vec<&mut [f32]> {
    match buf.is_empty() {
        true => (0..blocks).map(|_| <&mut [f32]>::default()).collect(),
        false => buf.chunks_mut(size).collect(),
    }
}

/// How a call's batch is cut: images per block, blocks, and whether each product is split
/// across the threads instead (when there are too few blocks to share out, one block).
fn plan(d: Dims) -> (usize, usize, bool) {
    let per_block = BLOCK_ROWS.div_ceil((d.h * d.w).max(1)).clamp(1, d.n.max(1));
    let blocks = d.n.div_ceil(per_block);
    match blocks < rayon::current_num_threads() {
        true => (d.n, 1, true),
        false => (per_block, blocks, false),
    }
}

/// Runs the network, and `head` after it, over the batch in blocks of whole images.
fn run(x: &[f32], head: Head, d: Dims, p: Params, keep: bool) -> (Vec<f32>, Option<Saved>) {
    let (plane, rows, hidden) = (d.h * d.w, d.rows(), d.hidden);
    if rows == 0 {
        let empty = Saved {
            a1: vec![],
            h1: vec![],
            h2: vec![],
            out: vec![],
        };
        return (Vec::new(), keep.then_some(empty));
    }
    // Training changes the weights every step: only inference looks them up.
    let w = match keep {
        true => Arc::new(Prepared::new(d, p)),
        false => Prepared::cached(d, p),
    };
    let (per_block, blocks, parallel) = plan(d);
    let sized = |n: usize| if keep { vec![0.0f32; n] } else { Vec::new() };
    let (mut a1, mut h1, mut h2) = (
        sized(rows * 9 * d.c_in),
        sized(rows * hidden),
        sized(rows * hidden),
    );
    let mut net = match head {
        Head::Affine { .. } => sized(d.n * d.c_out * plane),
        Head::Net => Vec::new(),
    };
    let mut result = vec![0.0f32; d.n * d.c_out * plane];
    let block_rows = per_block * plane;
    let parts = carve(&mut a1, block_rows * 9 * d.c_in, blocks)
        .into_iter()
        .zip(carve(&mut h1, block_rows * hidden, blocks))
        .zip(carve(&mut h2, block_rows * hidden, blocks))
        .zip(carve(&mut net, per_block * d.c_out * plane, blocks))
        .zip(result.chunks_mut(per_block * d.c_out * plane))
        .enumerate()
        .map(|(i, ((((a1, h1), h2), net), result))| Block {
            first: i * per_block,
            images: result.len() / (d.c_out * plane),
            a1,
            h1,
            h2,
            net,
            result,
        });
    let blocks: Vec<Block> = parts.collect();
    match parallel {
        true => blocks
            .into_iter()
            .for_each(|b| forward_block(x, head, d, &w, b, true)),
        false => blocks
            .into_par_iter()
            .for_each(|b| forward_block(x, head, d, &w, b, false)),
    }
    let saved = keep.then(|| Saved {
        a1,
        h1,
        h2,
        out: match head {
            Head::Net => result.clone(),
            Head::Affine { .. } => net,
        },
    });
    (result, saved)
}

/// One block of images from the input to the result; `parallel`: split each product across
/// the threads (when this is the only block).
fn forward_block(x: &[f32], head: Head, d: Dims, w: &Prepared, b: Block, parallel: bool) {
    let (plane, hidden, c_in, c_out) = (d.h * d.w, d.hidden, d.c_in, d.c_out);
    let rows = b.images * plane;
    let keep = !b.a1.is_empty();
    let sub = SUB_ROWS.min(rows);
    let scratch = match keep {
        true => rows * 9 * c_out,
        false => rows * 9 * (c_in + c_out) + 2 * sub * hidden + b.images * c_out * plane,
    };
    with_scratch(scratch, |scratch| {
        let (z, scratch) = scratch.split_at_mut(rows * 9 * c_out);
        let (a1, h1, h2, net) = match keep {
            true => (&mut *b.a1, &mut *b.h1, &mut *b.h2, &mut *b.net),
            false => {
                let (a1, rest) = scratch.split_at_mut(rows * 9 * c_in);
                let (h1, rest) = rest.split_at_mut(sub * hidden);
                let (h2, net) = rest.split_at_mut(sub * hidden);
                (a1, h1, h2, net)
            }
        };
        let x = &x[b.first * c_in * plane..][..b.images * c_in * plane];
        for (x, a1) in x
            .chunks_exact(c_in * plane)
            .zip(a1.chunks_exact_mut(plane * 9 * c_in))
        {
            im2col_image(x, d.h, d.w, 1, Columns::BY_CHANNEL, a1);
        }
        // The row-wise part, a few hundred rows at a time so that h1 and h2 stay in cache.
        for start in (0..rows).step_by(sub) {
            let m = sub.min(rows - start);
            let (h1, h2) = match keep {
                true => (
                    &mut h1[start * hidden..][..m * hidden],
                    &mut h2[start * hidden..][..m * hidden],
                ),
                false => (&mut h1[..m * hidden], &mut h2[..m * hidden]),
            };
            let a1 = &a1[start * 9 * c_in..][..m * 9 * c_in];
            product(
                h1,
                mat(a1, m, 9 * c_in),
                mat(&w.w1, 9 * c_in, hidden),
                parallel,
            );
            actnorm_relu(h1, &w.s1, &w.b1);
            product(h2, mat(h1, m, hidden), mat(&w.w2, hidden, hidden), parallel);
            actnorm_relu(h2, &w.s2, &w.b2);
            let z = &mut z[start * 9 * c_out..][..m * 9 * c_out];
            product(
                z,
                mat(h2, m, hidden),
                mat(&w.w3, hidden, 9 * c_out),
                parallel,
            );
        }
        let layout = Columns::by_tap(c_out);
        let finish = |out: &mut [f32]| {
            let images = z
                .chunks_exact(plane * 9 * c_out)
                .zip(out.chunks_exact_mut(c_out * plane));
            for (z, out) in images {
                col2im_image(z, d.h, d.w, 1, layout, &w.b3, &w.s3, out);
            }
        };
        match head {
            Head::Net => finish(b.result),
            Head::Affine { x_b, reverse } => {
                let net = &mut net[..b.images * c_out * plane];
                finish(net);
                let half = c_out / 2 * plane;
                let x_b = &x_b[b.first * half..][..b.images * half];
                let images = net.chunks_exact(2 * half).zip(x_b.chunks_exact(half));
                for ((net, x_b), result) in images.zip(b.result.chunks_exact_mut(2 * half)) {
                    affine(net, x_b, reverse, result);
                }
            }
        }
    });
}

/// Glow's affine coupling of one image: `net` holds `(t, r)`, `result` gets `y` then `±log s`
/// with `s = σ(r + 2)`: `y = (x_b + t)·s`, or in `reverse` `y = x_b / s − t`.
fn affine(net: &[f32], x_b: &[f32], reverse: bool, result: &mut [f32]) {
    let (t, r) = net.split_at(x_b.len());
    let (y, log_s) = result.split_at_mut(x_b.len());
    for i in 0..x_b.len() {
        let z = r[i] + 2.0;
        // σ(z) and log σ(z) from one exponential, without overflow for either sign.
        let e = (-z.abs()).exp();
        // ln(1 + e) as ln(u)·e/(u − 1), u = 1 + e (Goldberg's form: as exact as ln_1p, since
        // the rounding of u cancels, and a third of the time; ln_1p was 2 % of evaluation).
        let u = 1.0 + e;
        let l = if u == 1.0 { e } else { u.ln() * e / (u - 1.0) };
        let (s, ls) = match z >= 0.0 {
            true => (1.0 / u, -l),
            false => (e / u, z - l),
        };
        match reverse {
            false => (y[i], log_s[i]) = ((x_b[i] + t[i]) * s, ls),
            true => (y[i], log_s[i]) = (x_b[i] / s - t[i], -ls),
        }
    }
}

/// The network's output (NCHW, `c_out` channels) for `x` (NCHW, `c_in` channels), and what
/// the backward pass needs when `keep` is set.
pub fn forward(x: &[f32], d: Dims, p: Params, keep: bool) -> (Vec<f32>, Option<Saved>) {
    run(x, Head::Net, d, p, keep)
}

/// The second convolution's output before its ActNorm, `conv1×1(relu(ActNorm₁(conv3×3(x))))`,
/// one row per pixel: what that ActNorm's data-dependent initialisation needs (`log_s2`,
/// `b2` and the last layer are not read). [`from_second`] finishes the forward pass from it.
pub fn second(x: &[f32], d: Dims, p: Params) -> Vec<f32> {
    let (rows, hidden, c_in) = (d.rows(), d.hidden, d.c_in);
    let s1 = exp(p.log_s1, 1.0);
    let a1 = im2col(x, d, c_in, 1, Columns::BY_CHANNEL);
    // [hidden, c_in·9] read in place as the (c_in·9) × hidden matrix: one product over the
    // whole batch packs it once, so the transpose `Prepared` makes would not pay here.
    let mut h1 = matmul(mat(&a1, rows, 9 * c_in), mat(p.w1, hidden, 9 * c_in).t());
    actnorm_relu(&mut h1, &s1, &times(p.b1, &s1));
    matmul(mat(&h1, rows, hidden), mat(p.w2, hidden, hidden).t())
}

/// The network's output (NCHW, `c_out` channels) from [`second`]'s `m2`:
/// `conv3×3(relu(ActNorm₂(m2)))`, as [`forward`] computes it.
pub fn from_second(mut m2: Vec<f32>, d: Dims, p: Params) -> Vec<f32> {
    let w = Prepared::new(d, p);
    m2.par_chunks_mut(BLOCK * d.hidden)
        .for_each(|rows| actnorm_relu(rows, &w.s2, &w.b2));
    let z = matmul(
        mat(&m2, d.rows(), d.hidden),
        mat(&w.w3, d.hidden, 9 * d.c_out),
    );
    col2im(&z, d, d.c_out, 1, Columns::by_tap(d.c_out), &w.b3, &w.s3)
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
    run(x_a, Head::Affine { x_b, reverse }, d, p, keep)
}

/// The weight gradients summed over the blocks one task ran.
struct Sums {
    /// `[hidden, c_in·9]`, the weight's own layout (im2col's columns are channel-major).
    w1: Vec<f32>,
    log_s1: Vec<f32>,
    /// ∂L/∂(m₁ + b₁): ∂L/∂b₁ before the factor s₁.
    sum1: Vec<f32>,
    w2: Vec<f32>,
    log_s2: Vec<f32>,
    sum2: Vec<f32>,
    /// `hidden × 9·c_out`, as [`taps_by_output`] lays the weight out.
    w3: Vec<f32>,
    b3: Vec<f32>,
    log_s3: Vec<f32>,
}

impl Sums {
    fn zeros(d: Dims) -> Self {
        let (c_in, hidden, c_out) = (d.c_in, d.hidden, d.c_out);
        let z = |n: usize| vec![0.0f32; n];
        Sums {
            w1: z(hidden * 9 * c_in),
            log_s1: z(hidden),
            sum1: z(hidden),
            w2: z(hidden * hidden),
            log_s2: z(hidden),
            sum2: z(hidden),
            w3: z(hidden * 9 * c_out),
            b3: z(c_out),
            log_s3: z(c_out),
        }
    }

    fn add(mut self, other: Sums) -> Self {
        let pairs = [
            (&mut self.w1, other.w1),
            (&mut self.log_s1, other.log_s1),
            (&mut self.sum1, other.sum1),
            (&mut self.w2, other.w2),
            (&mut self.log_s2, other.log_s2),
            (&mut self.sum2, other.sum2),
            (&mut self.w3, other.w3),
            (&mut self.b3, other.b3),
            (&mut self.log_s3, other.log_s3),
        ];
        for (a, b) in pairs {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        }
        self
    }
}

/// Gradients for `grad_out` = ∂L/∂output (NCHW); `with_x`: also ∂L/∂x (one more product).
///
/// In blocks of whole images, as the forward pass: each block goes back from the output to the
/// input in cache, and adds its share of the weight gradients to its task's sums.
pub fn backward(grad_out: &[f32], d: Dims, p: Params, saved: &Saved, with_x: bool) -> Grads {
    let (plane, hidden, c_in, c_out) = (d.h * d.w, d.hidden, d.c_in, d.c_out);
    let (s1, s2, s3) = (exp(p.log_s1, 1.0), exp(p.log_s2, 1.0), exp(p.log_s3, 3.0));
    // The zero conv's taps as `9·c_out × hidden`, row-major for the product that reads them.
    let w3t = transpose(&taps_by_output(p.w3, c_out, hidden), hidden, 9 * c_out);
    let (per_block, blocks, parallel) = plan(d);
    let mut x = match with_x {
        true => vec![0.0f32; d.n * c_in * plane],
        false => Vec::new(),
    };
    let parts = carve(&mut x, per_block * c_in * plane, blocks);

    let block = |sums: &mut Sums, i: usize, dx: &mut [f32]| {
        let first = i * per_block;
        let images = per_block.min(d.n - first);
        let (rows, r0) = (images * plane, first * plane);
        let h1 = &saved.h1[r0 * hidden..][..rows * hidden];
        let h2 = &saved.h2[r0 * hidden..][..rows * hidden];
        let a1 = &saved.a1[r0 * 9 * c_in..][..rows * 9 * c_in];
        let maps = first * c_out * plane..(first + images) * c_out * plane;
        let (out, g_out) = (&saved.out[maps.clone()], &grad_out[maps]);
        let scratch = images * c_out * plane
            + rows * 9 * c_out
            + 2 * rows * hidden
            + if with_x { rows * 9 * c_in } else { 0 };
        with_scratch(scratch, |scratch| {
            let (g, rest) = scratch.split_at_mut(images * c_out * plane);
            let (dz, rest) = rest.split_at_mut(rows * 9 * c_out);
            let (dh2, rest) = rest.split_at_mut(rows * hidden);
            let (dh1, da1) = rest.split_at_mut(rows * hidden);

            // out = (conv(h2) + b3)·s3, s3 = exp(3·log_s3): ∂out/∂log_s3 = 3·out, and g becomes
            // ∂L/∂(conv(h2) + b3).
            let maps = g
                .chunks_mut(plane)
                .zip(g_out.chunks(plane))
                .zip(out.chunks(plane));
            for (k, ((g, g_out), out)) in maps.enumerate() {
                let ch = k % c_out;
                for ((g, g_out), out) in g.iter_mut().zip(g_out).zip(out) {
                    sums.log_s3[ch] += 3.0 * g_out * out;
                    *g = g_out * s3[ch];
                    sums.b3[ch] += *g;
                }
            }
            let taps = Columns::by_tap(c_out);
            for (g, dz) in g
                .chunks_exact(c_out * plane)
                .zip(dz.chunks_exact_mut(plane * 9 * c_out))
            {
                im2col_image(g, d.h, d.w, -1, taps, dz);
            }
            let (dz, h1, h2) = (
                mat(dz, rows, 9 * c_out),
                mat(h1, rows, hidden),
                mat(h2, rows, hidden),
            );
            accumulate(&mut sums.w3, h2.t(), dz, parallel);
            product(dh2, dz, mat(&w3t, 9 * c_out, hidden), parallel);
            actnorm_relu_backward(dh2, h2.data, &s2, &mut sums.log_s2, &mut sums.sum2);
            accumulate(&mut sums.w2, mat(dh2, rows, hidden).t(), h1, parallel);
            product(
                dh1,
                mat(dh2, rows, hidden),
                mat(p.w2, hidden, hidden),
                parallel,
            );
            actnorm_relu_backward(dh1, h1.data, &s1, &mut sums.log_s1, &mut sums.sum1);
            let dh1 = mat(dh1, rows, hidden);
            accumulate(&mut sums.w1, dh1.t(), mat(a1, rows, 9 * c_in), parallel);
            if with_x {
                product(da1, dh1, mat(p.w1, hidden, 9 * c_in), parallel);
                let images = da1
                    .chunks_exact(plane * 9 * c_in)
                    .zip(dx.chunks_exact_mut(c_in * plane));
                for (da1, dx) in images {
                    col2im_image(da1, d.h, d.w, -1, Columns::BY_CHANNEL, &[], &[], dx);
                }
            }
        });
    };
    let sums = match parallel {
        // An empty batch or image: every gradient is zero.
        _ if d.rows() == 0 => Sums::zeros(d),
        true => parts
            .into_iter()
            .enumerate()
            .fold(Sums::zeros(d), |mut sums, (i, dx)| {
                block(&mut sums, i, dx);
                sums
            }),
        // One run of blocks per thread, so that few sums (430 KB each at width 256) are made.
        false => parts
            .into_par_iter()
            .enumerate()
            .with_min_len(blocks.div_ceil(rayon::current_num_threads()))
            .fold(
                || Sums::zeros(d),
                |mut sums, (i, dx)| {
                    block(&mut sums, i, dx);
                    sums
                },
            )
            .reduce(|| Sums::zeros(d), Sums::add),
    };

    Grads {
        x,
        w1: sums.w1,
        b1: times(&sums.sum1, &s1),
        log_s1: sums.log_s1,
        w2: sums.w2,
        b2: times(&sums.sum2, &s2),
        log_s2: sums.log_s2,
        w3: untap_by_output(&sums.w3, c_out, hidden),
        b3: sums.b3,
        log_s3: sums.log_s3,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded values in [−scale, scale).
    fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// A 3×3 "same" convolution by its definition, in f64: `x` NCHW, `w` `[out, in, 3, 3]`.
    fn conv3x3(x: &[f64], d: Dims, c_in: usize, c_out: usize, w: &[f32]) -> Vec<f64> {
        let (h, wd) = (d.h as isize, d.w as isize);
        let mut out = vec![0.0; d.n * c_out * d.h * d.w];
        for n in 0..d.n {
            for o in 0..c_out {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut s = 0.0;
                        for i in 0..c_in {
                            for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
                                let (sy, sx) = (y + ky - 1, xx + kx - 1);
                                if sy < 0 || sx < 0 || sy >= h || sx >= wd {
                                    continue;
                                }
                                let v = x[((n * c_in + i) as isize * h + sy) as usize * d.w
                                    + sx as usize];
                                s += v * w[((o * c_in + i) * 3 + ky as usize) * 3 + kx as usize]
                                    as f64;
                            }
                        }
                        out[((n * c_out + o) * d.h + y as usize) * d.w + xx as usize] = s;
                    }
                }
            }
        }
        out
    }

    /// `relu((v + b)·exp(log_s))` per channel of an NCHW map.
    fn actnorm_relu_nchw(v: &mut [f64], c: usize, plane: usize, b: &[f32], log_s: &[f32]) {
        for (i, v) in v.chunks_mut(plane).enumerate() {
            let ch = i % c;
            let s = (log_s[ch] as f64).exp();
            v.iter_mut()
                .for_each(|v| *v = ((*v + b[ch] as f64) * s).max(0.0));
        }
    }

    /// Glow's coupling network by its definition, in f64, all maps NCHW.
    fn reference(x: &[f32], d: Dims, p: Params) -> Vec<f64> {
        let plane = d.h * d.w;
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut h1 = conv3x3(&x, d, d.c_in, d.hidden, p.w1);
        actnorm_relu_nchw(&mut h1, d.hidden, plane, p.b1, p.log_s1);
        let mut h2 = vec![0.0; h1.len()];
        for n in 0..d.n {
            for o in 0..d.hidden {
                for i in 0..d.hidden {
                    let w = p.w2[o * d.hidden + i] as f64;
                    let (src, dst) = ((n * d.hidden + i) * plane, (n * d.hidden + o) * plane);
                    for k in 0..plane {
                        h2[dst + k] += w * h1[src + k];
                    }
                }
            }
        }
        actnorm_relu_nchw(&mut h2, d.hidden, plane, p.b2, p.log_s2);
        let mut out = conv3x3(&h2, d, d.hidden, d.c_out, p.w3);
        for (i, v) in out.chunks_mut(plane).enumerate() {
            let ch = i % d.c_out;
            let s = (3.0 * p.log_s3[ch] as f64).exp();
            v.iter_mut().for_each(|v| *v = (*v + p.b3[ch] as f64) * s);
        }
        out
    }

    fn max_relative(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        diff / scale
    }

    /// Runs `f` on a thread pool of `threads` threads: one thread takes the path of many blocks,
    /// many threads the path of one block with each product split.
    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Seeded weights for a network of `d`'s sizes.
    struct Weights([Vec<f32>; 9]);

    impl Weights {
        fn new(d: Dims) -> Self {
            let (c_in, hidden, c_out) = (d.c_in, d.hidden, d.c_out);
            let sizes = [
                hidden * c_in * 9,
                hidden,
                hidden,
                hidden * hidden,
                hidden,
                hidden,
            ];
            let sizes = sizes.into_iter().chain([c_out * hidden * 9, c_out, c_out]);
            let scales = [0.5, 0.3, 0.5, 0.5, 0.3, 0.5, 0.5, 0.5, 0.2];
            let mut all = sizes.zip(scales).enumerate();
            Weights(std::array::from_fn(|_| {
                let (i, (len, scale)) = all.next().unwrap();
                values(len, i as u64 + 1, scale)
            }))
        }

        fn params(&self) -> Params<'_> {
            let [w1, log_s1, b1, w2, log_s2, b2, w3, b3, log_s3] = &self.0;
            Params {
                w1,
                log_s1,
                b1,
                w2,
                log_s2,
                b2,
                w3,
                b3,
                log_s3,
            }
        }
    }

    #[test]
    fn empty_images_give_empty_outputs_and_zero_gradients() {
        let d = Dims {
            n: 2,
            c_in: 2,
            hidden: 4,
            c_out: 2,
            h: 0,
            w: 3,
        };
        let weights = Weights::new(d);
        let (out, saved) = forward(&[], d, weights.params(), true);
        assert!(out.is_empty());
        let g = backward(&[], d, weights.params(), &saved.unwrap(), true);
        assert!(g.x.is_empty());
        for (grad, param) in [&g.w1, &g.w2, &g.w3, &g.b1, &g.log_s3].into_iter().zip([
            &weights.0[0],
            &weights.0[3],
            &weights.0[6],
            &weights.0[2],
            &weights.0[8],
        ]) {
            assert_eq!(grad.len(), param.len());
            assert!(grad.iter().all(|v| *v == 0.0));
        }
    }

    #[test]
    fn changed_weights_are_not_taken_from_the_cache() {
        let d = Dims {
            n: 2,
            c_in: 2,
            hidden: 4,
            c_out: 2,
            h: 3,
            w: 3,
        };
        let mut weights = Weights::new(d);
        let x = values(d.n * d.c_in * 9, 10, 2.0);
        for round in 0..3 {
            let (out, _) = forward(&x, d, weights.params(), false);
            let e = max_relative(&out, &reference(&x, d, weights.params()));
            assert!(e < 1e-5, "round {round}: off by {e}");
            // The same memory, values changed: a cache that looked at addresses would miss it.
            weights.0[3][5] += 0.25;
            weights.0[8][1] -= 0.125;
        }
    }

    #[test]
    fn blocked_forward_matches_the_definition_in_f64() {
        // (n, c_in, hidden, c_out, h, w): images of more rows than a product's share (17×16),
        // many small images grouped into blocks (3×5), a 1×2 image.
        for (n, c_in, hidden, c_out, h, w) in [
            (3, 2, 8, 4, 17, 16),
            (20, 3, 5, 6, 3, 5),
            (4, 2, 6, 2, 1, 2),
        ] {
            let d = Dims {
                n,
                c_in,
                hidden,
                c_out,
                h,
                w,
            };
            let v = |len, seed, scale| values(len, seed, scale);
            let weights = Weights::new(d);
            let p = weights.params();
            let x = v(n * c_in * h * w, 10, 2.0);
            let x_b = v(n * c_out / 2 * h * w, 11, 2.0);
            let expected = reference(&x, d, p);
            let plane = c_out / 2 * h * w;
            let mut saved_outputs = Vec::new();
            for threads in [1, 64] {
                for keep in [false, true] {
                    let (out, saved) = on_threads(threads, || forward(&x, d, p, keep));
                    let e = max_relative(&out, &expected);
                    assert!(
                        e < 1e-5,
                        "{d:?}, {threads} threads, keep {keep}: off by {e}"
                    );
                    if let Some(saved) = saved {
                        assert_eq!(saved.out, out);
                        saved_outputs.push(saved);
                    }
                }
                for reverse in [false, true] {
                    let (y, saved) =
                        on_threads(threads, || affine_forward(&x, &x_b, reverse, d, p, true));
                    assert_eq!(saved.unwrap().out.len(), expected.len());
                    for i in 0..n {
                        let (t, r) = expected[i * 2 * plane..][..2 * plane].split_at(plane);
                        let x_b = &x_b[i * plane..][..plane];
                        let (y, ls) = y[i * 2 * plane..][..2 * plane].split_at(plane);
                        for k in 0..plane {
                            let s = 1.0 / (1.0 + (-(r[k] + 2.0)).exp());
                            let (want_y, want_ls) = match reverse {
                                false => ((x_b[k] as f64 + t[k]) * s, s.ln()),
                                true => (x_b[k] as f64 / s - t[k], -s.ln()),
                            };
                            assert!((y[k] as f64 - want_y).abs() < 1e-4 * want_y.abs().max(1.0));
                            assert!((ls[k] as f64 - want_ls).abs() < 1e-5 * want_ls.abs().max(1.0));
                        }
                    }
                }
            }
            // What training keeps does not depend on how the batch was split.
            let [one, many] = [&saved_outputs[0], &saved_outputs[1]];
            assert_eq!(one.a1, many.a1, "{d:?}: the im2col matrices differ");
            for (a, b) in [(&one.h1, &many.h1), (&one.h2, &many.h2)] {
                let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
                assert!(max_relative(a, &b) < 1e-6, "{d:?}: kept activations differ");
            }
        }
    }
}
