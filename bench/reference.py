#!/usr/bin/env python3
"""An independent PyTorch implementation of revflow's Glow.

It exists for two things: a numerical cross-check (revflow's log-likelihoods reproduced from
its saved weights) and a side-by-side benchmark (the same model timed in PyTorch).

    python bench/reference.py check DIR
    python bench/reference.py time DIR --threads T --batch B --iters I [--device cuda]
    python bench/reference.py selftest

DIR is what `revflow bench --export DIR` writes: config.json, model.safetensors,
batch.safetensors (tensor "pixels", f32 (N, C·H·W), values 0..255) and expected.json
({"log_p": [nats per sample]}).

The specification is revflow's Rust source, crates/revflow/src/:
models/multiscale.rs (glow builder, levels, preprocessing, latent order), layers/*.rs,
nets.rs (ConvNet, ZeroConv2d) and distributions/{mod,gaussian}.rs. Each layer below is one
small class with its forward and reverse side by side, in the style of rosinality/glow-pytorch,
and names the Rust file it follows. Operations are written in the same order as in Rust so that
float32 results agree to rounding.
"""

import argparse
import json
import math
import os
import re
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

LOG_2PI = math.log(2 * math.pi)  # distributions/mod.rs: LOG_2PI


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def sum_per_sample(t):
    """(N, ...) -> (N): flow.rs `sum_per_sample`."""
    return t.reshape(t.shape[0], -1).sum(1)


def positions(x):
    """H·W for images, 1 for vectors: flow.rs `positions`."""
    return math.prod(x.shape[2:])


def channel_view(v, x):
    """A per-channel vector shaped to broadcast over x: (1, C, 1, 1) or (1, C)."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def gaussian_log_prob(z, mean, log_std):
    """Σ log N(z; mean, exp(log_std)²) per sample: distributions/mod.rs."""
    e = (z - mean) * torch.exp(-log_std)
    return sum_per_sample((e * e + LOG_2PI) * -0.5 - log_std)


def gaussian_sample(mean, log_std, temperature):
    """mean + T·σ·ε, ε ~ N(0, I): distributions/mod.rs."""
    eps = torch.randn_like(mean)
    return mean + torch.exp(log_std) * eps * temperature


def squeeze(x):
    """(N, C, H, W) -> (N, 4C, H/2, W/2): layers/squeeze.rs. Log-det 0."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(y):
    n, c4, h, w = y.shape
    c = c4 // 4
    y = y.reshape(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c, 2 * h, 2 * w)


# ---------------------------------------------------------------------------------------------
# Layers. Each returns (y, log|det J| per sample) forward and x reverse. KIND is the variant name
# revflow's weight files use (`layers.3.ActNorm.log_scale`).
# ---------------------------------------------------------------------------------------------


class ActNorm(nn.Module):
    """y = (x + bias)·exp(log_scale) per channel; log-det positions·Σ log_scale.
    layers/actnorm.rs. (revflow's `initialized` flag only guards data-dependent init.)"""

    KIND = "ActNorm"

    def __init__(self, channels):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        logdet = self.log_scale.sum() * positions(x)
        y = (x + channel_view(self.bias, x)) * channel_view(torch.exp(self.log_scale), x)
        return y, logdet.expand(x.shape[0])

    def reverse(self, y):
        return y * channel_view(torch.exp(-self.log_scale), y) - channel_view(self.bias, y)


class Permute(nn.Module):
    """y = x[:, perm]; log-det 0. layers/permute.rs (reverse and shuffle)."""

    KIND = "Permute"

    def __init__(self, perm):
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.int64)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x):
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def reverse(self, y):
        return y.index_select(1, self.inverse_perm)


def mix(x, w):
    """y[:, i] = Σ_j w[i, j]·x[:, j]: the 1×1 convolution (layers/invconv.rs `mix`)."""
    c = w.shape[0]
    return F.conv2d(x, w.reshape(c, c, 1, 1))


def inverse_like(w):
    """W⁻¹ computed in float64 and cast back, as revflow does on the host (linalg.rs)."""
    return torch.linalg.inv(w.double()).to(w.dtype)


class InvConv(nn.Module):
    """Invertible 1×1 convolution with W itself as the parameter; log-det positions·log|det W|,
    the determinant taken in float64 (layers/invconv.rs `InvConv1x1`)."""

    KIND = "InvConv"

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight).clone())

    def forward(self, x):
        log_abs_det = torch.linalg.slogdet(self.weight.double())[1].to(x.dtype)
        return mix(x, self.weight), (log_abs_det * positions(x)).expand(x.shape[0])

    def reverse(self, y):
        return mix(y, inverse_like(self.weight))


class InvConvLU(nn.Module):
    """W = P·(L∘strict-lower + I)·(U∘strict-upper + diag(sign_s·exp(log_s))); log-det
    positions·Σ log_s (layers/invconv.rs `InvConv1x1Lu`). P and sign_s are fixed."""

    KIND = "InvConvLu"

    def __init__(self, permutation, lower, upper, log_s, sign_s):
        super().__init__()
        self.register_buffer("permutation", torch.as_tensor(permutation).clone())
        self.lower = nn.Parameter(torch.as_tensor(lower).clone())
        self.upper = nn.Parameter(torch.as_tensor(upper).clone())
        self.log_s = nn.Parameter(torch.as_tensor(log_s).clone())
        self.register_buffer("sign_s", torch.as_tensor(sign_s).clone())

    def weight(self):
        c = self.log_s.shape[0]
        eye = torch.eye(c, dtype=self.log_s.dtype, device=self.log_s.device)
        ones = torch.ones_like(eye)
        lower = self.lower * ones.tril(-1) + eye
        diag = (self.sign_s * torch.exp(self.log_s)).reshape(1, c)
        upper = self.upper * ones.triu(1) + eye * diag
        return self.permutation @ lower @ upper

    def forward(self, x):
        logdet = self.log_s.sum() * positions(x)
        return mix(x, self.weight()), logdet.expand(x.shape[0])

    def reverse(self, y):
        return mix(y, inverse_like(self.weight()))


class ZeroConv2d(nn.Module):
    """3×3 convolution (padding 1, with bias) times exp(3·log_scale) per output channel;
    zero-initialised (nets.rs `ZeroConv2d`, Glow's conv2d_zeros)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.log_scale = nn.Parameter(torch.zeros(c_out))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.conv(x) * torch.exp(self.log_scale * 3.0).reshape(1, -1, 1, 1)


class ConvNet(nn.Module):
    """conv3×3 (no bias) → ActNorm → ReLU → conv1×1 (no bias) → ActNorm → ReLU → ZeroConv2d
    (nets.rs `ConvNet`)."""

    def __init__(self, c_in, c_out, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, c_out)

    def forward(self, x):
        h, _ = self.norm1(self.conv1(x))
        h, _ = self.norm2(self.conv2(F.relu(h)))
        return self.out(F.relu(h))


class Coupling(nn.Module):
    """Channel-half coupling (layers/coupling.rs, `Mask::Channels { flip: false }`): x_a, the
    first half, feeds the network; x_b, the second half, moves.
    affine (Glow):  y_b = (x_b + shift)·exp(log σ), log σ = logsigmoid(raw + 2), log-det Σ log σ
    additive:       y_b = x_b + shift,                                       log-det 0"""

    KIND = "Coupling"

    def __init__(self, channels, hidden, affine):
        super().__init__()
        self.affine = affine
        half = channels // 2
        self.net = ConvNet(half, 2 * half if affine else half, hidden)

    def params(self, x_a):
        h = self.net(x_a)
        c = h.shape[1] // (2 if self.affine else 1)
        shift = h[:, :c]
        log_scale = F.logsigmoid(h[:, c:] + 2.0) if self.affine else None
        return shift, log_scale

    def forward(self, x):
        x_a, x_b = x.chunk(2, 1)
        shift, log_scale = self.params(x_a)
        if self.affine:
            y_b = (x_b + shift) * torch.exp(log_scale)
            logdet = sum_per_sample(log_scale)
        else:
            y_b = x_b + shift
            logdet = x.new_zeros(x.shape[0])
        return torch.cat([x_a, y_b], 1), logdet

    def reverse(self, y):
        y_a, y_b = y.chunk(2, 1)
        shift, log_scale = self.params(y_a)
        if self.affine:
            x_b = y_b * torch.exp(-log_scale) - shift
        else:
            x_b = y_b - shift
        return torch.cat([y_a, x_b], 1)


class Split(nn.Module):
    """Factor-out with Glow's learned prior (layers/split.rs): the first half of the channels
    goes on, the second half z leaves with log p(z | kept), (mean, log_std) = halves of
    ZeroConv2d(kept)."""

    def __init__(self, channels):
        super().__init__()
        self.half = channels // 2
        self.prior = ZeroConv2d(self.half, 2 * self.half)

    def prior_of(self, kept):
        h = self.prior(kept)
        return h[:, : self.half], h[:, self.half :]

    def forward(self, x):
        kept, z = x[:, : self.half], x[:, self.half :]
        mean, log_std = self.prior_of(kept)
        return kept, z, gaussian_log_prob(z, mean, log_std)

    def reverse(self, kept, z=None, temperature=1.0):
        if z is None:
            z = gaussian_sample(*self.prior_of(kept), temperature)
        return torch.cat([kept, z], 1)


class TopPrior(nn.Module):
    """The top latent's Gaussian (distributions/gaussian.rs): learned `top` = [mean; log_std]
    of shape (2, C·H·W) with learn_top, else N(0, I). (Class-conditional priors are not
    implemented here.)"""

    def __init__(self, shape, learn_top):
        super().__init__()
        self.shape = tuple(shape)
        size = math.prod(shape)
        self.top = nn.Parameter(torch.zeros(2, size)) if learn_top else None

    def params(self, n, like):
        if self.top is None:
            zeros = like.new_zeros((n,) + self.shape)
            return zeros, zeros
        mean = self.top[0].reshape((1,) + self.shape).expand((n,) + self.shape)
        log_std = self.top[1].reshape((1,) + self.shape).expand((n,) + self.shape)
        return mean, log_std

    def log_prob(self, z):
        return gaussian_log_prob(z, *self.params(z.shape[0], z))

    def sample(self, n, temperature, like):
        return gaussian_sample(*self.params(n, like), temperature)


class Level(nn.Module):
    """Squeeze → K × (ActNorm → permutation → coupling) → split (but at the last level)."""

    def __init__(self, steps, split):
        super().__init__()
        self.after = nn.ModuleList(steps)
        self.split = split

    def forward(self, x):
        h = squeeze(x)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.after:
            h, ld = layer(h)
            logdet = logdet + ld
        if self.split is None:
            return h, None, logdet
        kept, z, log_p = self.split(h)
        return kept, z, logdet + log_p

    def reverse(self, h, z=None, temperature=1.0):
        if self.split is not None:
            h = self.split.reverse(h, z, temperature)
        for layer in reversed(self.after):
            h = layer.reverse(h)
        return unsqueeze(h)


def rotation(c, generator):
    """A random rotation (det +1), the initial W of the 1×1 convolutions."""
    q, r = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r)).reshape(1, c)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def lu_factors(w):
    """W = P·L·U → the InvConvLU parameters."""
    p, l, u = torch.linalg.lu(w)
    s = torch.diagonal(u)
    return p, l.tril(-1), u.triu(1), torch.log(s.abs()), torch.sign(s)


class Glow(nn.Module):
    """revflow's Glow (models/multiscale.rs `glow` and `MultiScale`) on 8-bit images given as
    flat rows (N, C·H·W).

    log p(x) = −D·ln(2ⁿ) (dequantisation) [+ pixel ActNorm] + Σ layer log-dets
               + Σ split log p(z | h) + top log p(z_top)

    Initial values do not matter for the checks (weights come from revflow's file); they are
    chosen so that a fresh model is a valid flow: identity ActNorms, zero couplings and priors,
    random rotations. Unlike revflow, shuffles and rotations here are not seeded from `seed`."""

    def __init__(self, cfg, generator=None):
        super().__init__()
        if cfg.get("classes", 0):
            raise ValueError(f"reference.py implements unconditional Glow only (classes={cfg['classes']})")
        self.shape = tuple(cfg["shape"])
        self.n_bits = int(cfg["n_bits"])
        c, h, w = self.shape
        levels, depth, hidden = cfg["levels"], cfg["depth"], cfg["hidden"]
        if h % (1 << levels) or w % (1 << levels):
            raise ValueError(f"{levels} squeezes need H and W divisible by {1 << levels}")
        self.pixel_norm = ActNorm(c * h * w) if cfg.get("pixel_norm", False) else None
        g = generator if generator is not None else torch.Generator().manual_seed(cfg.get("seed", 0))
        self.levels = nn.ModuleList()
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            steps = []
            for _ in range(depth):
                steps.append(ActNorm(c))
                steps.append(self._permutation(cfg["permutation"], c, g))
                steps.append(Coupling(c, hidden, cfg["affine"]))
            split = None
            if level + 1 < levels:
                split = Split(c)
                c //= 2
            self.levels.append(Level(steps, split))
        self.top_shape = (c, h, w)
        self.top = TopPrior(self.top_shape, cfg["learn_top"])

    @staticmethod
    def _permutation(kind, c, g):
        if kind == "reverse":
            return Permute(list(range(c - 1, -1, -1)))
        if kind == "shuffle":
            return Permute(torch.randperm(c, generator=g))
        if kind == "invconv":
            return InvConv(rotation(c, g).float())
        if kind == "invconv-lu":
            return InvConvLU(*(t.float() for t in lu_factors(rotation(c, g))))
        raise ValueError(f"unknown permutation {kind!r}")

    # Preprocessing (layers/preprocess.rs `Dequantize`, centred) ------------------------------

    @property
    def dims(self):
        return math.prod(self.shape)

    def preprocess(self, pixels, noise):
        """8-bit pixels (N, D) → model input (N, C, H, W) in [−½, ½) and its log-det."""
        if pixels.dim() != 2 or pixels.shape[1] != self.dims:
            raise ValueError(f"expected pixels (N, {self.dims}), got {tuple(pixels.shape)}")
        if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError("expected pixel values in [0, 255]")
        n = pixels.shape[0]
        bins = float(1 << self.n_bits)
        k = pixels.reshape((n,) + self.shape)
        if self.n_bits < 8:
            k = torch.floor(k / float(1 << (8 - self.n_bits)))
        v = k + torch.rand_like(k) if noise else k + 0.5
        x = v / bins - 0.5
        logdet = pixels.new_full((n,), -self.dims * math.log(bins))
        if self.pixel_norm is not None:
            y, more = self.pixel_norm(x.reshape(n, -1))
            x, logdet = y.reshape(x.shape), logdet + more
        return x, logdet

    def postprocess(self, x):
        """Model space → exact 8-bit pixels (N, D): the bin each value falls in."""
        n = x.shape[0]
        if self.pixel_norm is not None:
            x = self.pixel_norm.reverse(x.reshape(n, -1)).reshape(x.shape)
        bins = float(1 << self.n_bits)
        v = torch.floor((x + 0.5) * bins).clamp(0.0, bins - 1.0)
        return (v * float(1 << (8 - self.n_bits))).reshape(n, -1)

    # The flow on model space -------------------------------------------------------------------

    def flow(self, x):
        """x (N, C, H, W) → latents [z_1, …, z_top] (4-D) and Σ log-dets + Σ split log p."""
        logdet = x.new_zeros(x.shape[0])
        zs, h = [], x
        for level in self.levels:
            h, z, ld = level(h)
            if z is not None:
                zs.append(z)
            logdet = logdet + ld
        zs.append(h)
        return zs, logdet

    def flow_reverse(self, top, zs=None, temperature=1.0):
        """Inverse of `flow`; split latents missing from `zs` are sampled from their priors."""
        zs = list(zs) if zs is not None else []
        h = top
        for level in reversed(self.levels):
            z = zs.pop() if level.split is not None and zs else None
            h = level.reverse(h, z, temperature)
        return h

    # The model's API (models/mod.rs `Model`) ------------------------------------------------

    def log_prob(self, pixels, noise=False):
        """log p(x) in nats per sample, of the discrete data."""
        x, pre = self.preprocess(pixels, noise)
        zs, logdet = self.flow(x)
        return pre + logdet + self.top.log_prob(zs[-1])

    def encode(self, pixels):
        x, _ = self.preprocess(pixels, noise=False)
        zs, _ = self.flow(x)
        return [z.reshape(z.shape[0], -1) for z in zs]

    def latent_shapes(self):
        c, h, w = self.shape
        out = []
        for level in self.levels:
            c, h, w = 4 * c, h // 2, w // 2
            if level.split is not None:
                out.append((c // 2, h, w))
                c //= 2
        return out + [(c, h, w)]

    def decode(self, zs):
        zs = [z.reshape((z.shape[0],) + s) for z, s in zip(zs, self.latent_shapes())]
        return self.postprocess(self.flow_reverse(zs[-1], zs[:-1]))

    def sample(self, n, temperature=1.0):
        like = self.top.top if self.top.top is not None else next(self.parameters())
        top = self.top.sample(n, temperature, like)
        return self.postprocess(self.flow_reverse(top, None, temperature))


# ---------------------------------------------------------------------------------------------
# revflow's weight names
# ---------------------------------------------------------------------------------------------

STEP = re.compile(r"^levels\.(\d+)\.after\.(\d+)\.(.*)$")


def revflow_name(model, key):
    """Our state_dict key → revflow's safetensors name, e.g.
    levels.0.after.1.lower → Glow.levels.0.after.layers.1.InvConvLu.lower."""
    m = STEP.match(key)
    if m:
        level, step, rest = int(m[1]), int(m[2]), m[3]
        kind = model.levels[level].after[step].KIND
        key = f"levels.{level}.after.layers.{step}.{kind}.{rest}"
    return "Glow." + key


def load_revflow_weights(model, path):
    """Loads every tensor of revflow's file into `model`, failing on any missing or unused
    name or any shape mismatch. `initialized` flags (ActNorm) are read and reported, not loaded."""
    tensors = load_file(path)
    state = model.state_dict()
    names = {revflow_name(model, k): k for k in state}
    flags = {k: v for k, v in tensors.items() if k.endswith(".initialized")}
    problems = [f"{n} is missing from the file" for n in sorted(set(names) - set(tensors))]
    problems += [f"{n} is in the file but not in the model" for n in sorted(set(tensors) - set(names) - set(flags))]
    for name, key in names.items():
        if name in tensors and tuple(tensors[name].shape) != tuple(state[key].shape):
            problems.append(f"{name} has shape {tuple(tensors[name].shape)} in the file but {tuple(state[key].shape)} here")
    if problems:
        raise ValueError(f"{path} does not match the model ({len(problems)} problems): " + "; ".join(problems[:8]))
    with torch.no_grad():
        for name, key in names.items():
            state[key].copy_(tensors[name].to(state[key].dtype))
    # revflow saves a Permute's inverse too; make sure the two agree.
    for name, module in model.named_modules():
        if isinstance(module, Permute):
            c = module.perm.numel()
            if not torch.equal(module.perm[module.inverse_perm], torch.arange(c)):
                raise ValueError(f"{path}: {revflow_name(model, name + '.perm')} and its inverse_perm disagree")
    uninitialised = [k for k, v in flags.items() if float(v.min()) < 0.5]
    return {"tensors": len(names), "flags": len(flags), "uninitialised": uninitialised}


def save_revflow_weights(model, path):
    """The inverse of load_revflow_weights (f32, plus `initialized` = 1 per ActNorm), for tests."""
    out = {}
    for key, t in model.state_dict().items():
        out[revflow_name(model, key)] = t.float().contiguous() if t.is_floating_point() else t.contiguous()
    for name, module in model.named_modules():
        if isinstance(module, ActNorm):
            out[revflow_name(model, f"{name}.initialized")] = torch.ones(1)
    save_file(out, path)


def load_dir(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    model_cfg = cfg["model"]
    if model_cfg.get("model") != "glow":
        raise ValueError(f"{d}: reference.py implements Glow, not {model_cfg.get('model')!r}")
    pixels = load_file(os.path.join(d, "batch.safetensors"))["pixels"]
    return cfg, model_cfg, pixels


def build(model_cfg, weights, dtype):
    model = Glow(model_cfg)
    info = load_revflow_weights(model, weights)
    return model.to(dtype), info


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


def cmd_check(args):
    cfg, model_cfg, pixels = load_dir(args.dir)
    with open(os.path.join(args.dir, "expected.json")) as f:
        expected = torch.tensor(json.load(f)["log_p"], dtype=torch.float64)
    weights = os.path.join(args.dir, "model.safetensors")
    print(f"config: {json.dumps(model_cfg, sort_keys=True)}")
    results = {}
    for dtype in (torch.float64, torch.float32):
        model, info = build(model_cfg, weights, dtype)
        model.eval()
        with torch.no_grad():
            results[dtype] = model.log_prob(pixels.to(dtype), noise=False).double()
    print(f"weights: {info['tensors']} tensors loaded, {info['flags']} ActNorm flags"
          + (f", NOT initialised: {info['uninitialised']}" if info["uninitialised"] else ""))
    if len(expected) != len(pixels):
        raise ValueError(f"expected.json has {len(expected)} values for {len(pixels)} samples")
    rel = {dt: ((r - expected).abs() / expected.abs().clamp_min(1e-12)) for dt, r in results.items()}
    print(f"{'i':>4} {'revflow':>16} {'torch f64':>16} {'torch f32':>16} {'rel f64':>9} {'rel f32':>9}")
    for i in range(len(expected)):
        print(f"{i:>4} {expected[i]:16.6f} {results[torch.float64][i]:16.6f} {results[torch.float32][i]:16.6f}"
              f" {rel[torch.float64][i]:9.2e} {rel[torch.float32][i]:9.2e}")
    dims = math.prod(model_cfg["shape"])
    bpd = -expected.mean().item() / (dims * math.log(2))
    f32, f64 = rel[torch.float32].max().item(), rel[torch.float64].max().item()
    print(f"mean bits/dim (revflow): {bpd:.6f}; max relative difference f64 {f64:.3e}, f32 {f32:.3e}")
    print(json.dumps({"max_rel_diff_f32": f32, "max_rel_diff_f64": f64}))
    return 0 if f32 <= 1e-4 else 1


# ---------------------------------------------------------------------------------------------
# time
# ---------------------------------------------------------------------------------------------


def peak_rss_mb():
    """Peak resident set size in MiB (VmHWM, as revflow's bench reads it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_ms(iters, f):
    """Median wall time of `iters` calls after 2 warm-ups (revflow's bench.rs `time`)."""
    for _ in range(2):
        f()
    ms = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        f()
        ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(ms)


def cmd_time(args):
    import_rss = peak_rss_mb()  # what importing torch (a CUDA build) already costs
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, model_cfg, pixels = load_dir(args.dir)
    model, _ = build(model_cfg, os.path.join(args.dir, "model.safetensors"), torch.float32)
    batch = args.batch or cfg.get("batch") or len(pixels)
    x = pixels[torch.arange(batch) % len(pixels)].contiguous()  # the file's rows, repeated
    dims = model.dims
    device = torch.device(args.device)
    model, x = model.to(device), x.to(device)
    # A GPU queues work: each timed call waits for its own kernels.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # As revflow's bench: burn's Adam defaults (β 0.9, 0.999, ε 1e-5), lr 1e-3, no decay/clip.
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = -model.log_prob(x, noise=True).mean() / (dims * math.log(2))
        loss.backward()
        optimizer.step()
        sync()

    def evaluate():
        with torch.no_grad():
            model.log_prob(x, noise=False)
        sync()

    def sample():
        with torch.no_grad():
            model.sample(batch, 1.0)
        sync()

    train_ms = median_ms(args.iters, train_step)
    model.eval()
    eval_ms = median_ms(args.iters, evaluate)
    sample_ms = median_ms(args.iters, sample)
    print(json.dumps({
        "train_ms": round(train_ms, 3), "eval_ms": round(eval_ms, 3), "sample_ms": round(sample_ms, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1), "threads": args.threads, "batch": batch,
        "import_rss_mb": round(import_rss, 1),
        "torch": torch.__version__, "device": str(device),
    }))
    return 0


# ---------------------------------------------------------------------------------------------
# selftest: the reference checked against itself (no revflow needed)
# ---------------------------------------------------------------------------------------------


def jitter(model, std, generator):
    """Moves every trainable parameter by N(0, std²), so that zero-initialised layers act."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, dtype=p.dtype, generator=generator) * std)
    return model


def random_pixels(n, d, generator, n_bits=8):
    step = 1 << (8 - n_bits)
    return (torch.randint(0, 256, (n, d), generator=generator) // step * step).float()


def flat_flow(model, x_flat):
    """x (D) in model space → all latents concatenated (D): the bijection whose Jacobian
    log-det must equal the summed layer log-dets."""
    x = x_flat.reshape((1,) + model.shape)
    if model.pixel_norm is not None:
        x = model.pixel_norm(x.reshape(1, -1))[0].reshape(x.shape)
    zs, _ = model.flow(x)
    return torch.cat([z.reshape(-1) for z in zs])


def layer_logdet_sum(model, x):
    """Σ of layer log-dets (without split priors) for a batch in model space."""
    logdet = x.new_zeros(x.shape[0])
    if model.pixel_norm is not None:
        y, ld = model.pixel_norm(x.reshape(x.shape[0], -1))
        x, logdet = y.reshape(x.shape), logdet + ld
    h = x
    for level in model.levels:
        h = squeeze(h)
        for layer in level.after:
            h, ld = layer(h)
            logdet = logdet + ld
        if level.split is not None:
            h = h[:, : level.split.half]
    return logdet


SELFTEST_CONFIGS = [
    dict(shape=[1, 4, 4], levels=2, depth=2, hidden=8, affine=True, permutation="invconv-lu", learn_top=True, n_bits=8),
    dict(shape=[1, 4, 4], levels=2, depth=2, hidden=8, affine=True, permutation="invconv", learn_top=True, n_bits=5),
    dict(shape=[3, 4, 4], levels=1, depth=2, hidden=8, affine=False, permutation="shuffle", learn_top=False, n_bits=8),
    dict(shape=[2, 4, 4], levels=2, depth=1, hidden=6, affine=True, permutation="reverse", learn_top=False, n_bits=3),
    dict(shape=[1, 4, 4], levels=1, depth=1, hidden=8, affine=True, permutation="invconv-lu", learn_top=True, n_bits=4, pixel_norm=True),
    dict(shape=[1, 8, 8], levels=3, depth=1, hidden=4, affine=True, permutation="invconv-lu", learn_top=True, n_bits=8),
]


def cmd_selftest(args):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    failures = []

    def expect(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    for i, base in enumerate(SELFTEST_CONFIGS):
        cfg = {**dict(model="glow", classes=0, class_weight=0.01, pixel_norm=False, seed=i), **base}
        name = f"config {i} ({base['permutation']}, {'affine' if cfg['affine'] else 'additive'}, " \
               f"{cfg['n_bits']} bits, {cfg['shape']}, L{cfg['levels']}{', pixel-norm' if cfg['pixel_norm'] else ''})"
        model = jitter(Glow(cfg, torch.Generator().manual_seed(i)).double(), 0.2, g)
        d = model.dims

        # 1. Model space: reverse(forward(x)) == x.
        x = torch.rand((3,) + model.shape, dtype=torch.float64, generator=g) - 0.5
        if model.pixel_norm is not None:
            y, _ = model.pixel_norm(x.reshape(3, -1))
            zs, _ = model.flow(y.reshape(x.shape))
            back = model.pixel_norm.reverse(model.flow_reverse(zs[-1], zs[:-1]).reshape(3, -1)).reshape(x.shape)
        else:
            zs, _ = model.flow(x)
            back = model.flow_reverse(zs[-1], zs[:-1])
        err = (back - x).abs().max().item()
        expect(err < 1e-10, f"{name}: reverse(forward(x)) == x, max error {err:.1e}")
        expect(sum(z[0].numel() for z in zs) == d, f"{name}: latents hold D = {d} values")

        # 2. Pixels: decode(encode(pixels)) == pixels, exactly (also in float32).
        pixels = random_pixels(4, d, g, cfg["n_bits"])
        for dt in (torch.float64, torch.float32):
            m = model.to(dt)
            same = torch.equal(m.decode(m.encode(pixels.to(dt))).float(), pixels)
            expect(same, f"{name}: decode(encode(pixels)) == pixels in {str(dt)[6:]}")
        model.double()

        # 3. Σ layer log-dets == log|det ∂z/∂x| from autograd, per sample.
        for j in range(2):
            jac = torch.autograd.functional.jacobian(lambda v: flat_flow(model, v), x[j].reshape(-1))
            want = torch.linalg.slogdet(jac)[1].item()
            got = layer_logdet_sum(model, x[j : j + 1]).item()
            expect(abs(got - want) < 1e-8 * max(1.0, abs(want)),
                   f"{name}: log-det sample {j}: layers {got:.10f} vs autograd {want:.10f}")

        # 4. log p(x) = dequantisation + log|det| + Σ log N(z_i; prior_i), every part redone
        #    here by hand or with torch.distributions.
        lp = model.log_prob(pixels.double())
        bins = 2.0 ** cfg["n_bits"]
        x0 = ((torch.floor(pixels.double() / 2.0 ** (8 - cfg["n_bits"])) + 0.5) / bins - 0.5).reshape((4,) + model.shape)
        by_parts = -d * math.log(bins) + layer_logdet_sum(model, x0)
        if model.pixel_norm is not None:
            x0 = model.pixel_norm(x0.reshape(4, -1))[0].reshape(x0.shape)
        h = x0
        for level in model.levels:
            h = squeeze(h)
            for layer in level.after:
                h, _ = layer(h)
            if level.split is not None:
                kept, z = h[:, : level.split.half], h[:, level.split.half :]
                out = level.split.prior(kept)
                mean, log_std = out[:, : level.split.half], out[:, level.split.half :]
                by_parts = by_parts + torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
                h = kept
        mean, log_std = model.top.params(4, h)
        by_parts = by_parts + torch.distributions.Normal(mean, log_std.exp()).log_prob(h).flatten(1).sum(1)
        err = (lp - by_parts).abs().max().item()
        expect(err < 1e-8, f"{name}: log p by parts (torch.distributions) agrees, max error {err:.1e}")

        # 5. float32 agrees with float64.
        lp32 = model.float().log_prob(pixels).double()
        model.double()
        rel = ((lp32 - lp).abs() / lp.abs()).max().item()
        expect(rel < 1e-5, f"{name}: float32 vs float64 log p, max relative difference {rel:.1e}")

        # 6. Weights round trip through revflow's names; missing and unused names fail loudly.
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.safetensors")
            save_revflow_weights(model, path)
            fresh = Glow(cfg, torch.Generator().manual_seed(100 + i))
            info = load_revflow_weights(fresh, path)
            lp2 = fresh.double().log_prob(pixels.double())
            diff = (lp2 - lp).abs().max().item()
            expect(diff < 1e-6 and not info["uninitialised"],
                   f"{name}: {info['tensors']} tensors reloaded by revflow name, log p within {diff:.1e}")
            tensors = load_file(path)
            victim = sorted(k for k in tensors if not k.endswith("initialized"))[0]
            for mutate, word in ((lambda t: t.pop(victim), "missing"),
                                 (lambda t: t.__setitem__("Glow.levels.0.extra", torch.zeros(1)), "not in the model")):
                t = dict(tensors)
                mutate(t)
                save_file(t, path)
                try:
                    load_revflow_weights(Glow(cfg), path)
                    expect(False, f"{name}: a file with a {word} name is rejected")
                except ValueError as e:
                    expect(word in str(e), f"{name}: a file with a {word} name is rejected")

        # 7. Samples are valid pixels.
        with torch.no_grad():
            s = model.sample(5, 0.8)
        ok = s.shape == (5, d) and bool(((s >= 0) & (s <= 255) & (s == s.floor())).all())
        expect(ok, f"{name}: samples are (5, {d}) integer pixels in 0..255")

    # 8. revflow's hand-computed value at initialisation (models/mod.rs test
    #    glow_at_initialisation_matches_a_hand_computed_bits_per_dim): additive couplings and
    #    priors at zero, identity ActNorms, rotations ⇒ log p = Σ log N(v_i; 0, 1) − D·ln 256.
    for perm in ("invconv-lu", "invconv", "shuffle", "reverse"):
        cfg = dict(model="glow", shape=[1, 4, 4], levels=2, depth=2, hidden=8, affine=False,
                   permutation=perm, learn_top=False, classes=0, n_bits=8, seed=0)
        model = Glow(cfg).double()
        pixels = random_pixels(2, 16, g).double()
        v = (pixels + 0.5) / 256 - 0.5
        want = (-0.5 * v * v - 0.5 * LOG_2PI - math.log(256)).sum(1)
        err = (model.log_prob(pixels) - want).abs().max().item()
        # (rotations are stored in float32, so orthogonal only to ~1e-7)
        expect(err < 1e-5, f"fresh additive Glow ({perm}): hand-computed log p, max error {err:.1e}")

    print(f"{'selftest: all passed' if not failures else f'selftest: {len(failures)} FAILED'}")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="reproduce revflow's log p for an exported model and batch")
    p.add_argument("dir")
    p = sub.add_parser("time", help="time a training step, evaluation and sampling")
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=None, help="default: the exported batch size")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for an NVIDIA GPU")
    sub.add_parser("selftest", help="invertibility, autograd log-dets and weight names, no revflow needed")
    args = parser.parse_args(argv)
    return {"check": cmd_check, "time": cmd_time, "selftest": cmd_selftest}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
