#!/usr/bin/env python3
"""zuko's neural spline flow trained on vector data, scored as revflow scores vector flows.

The PyTorch side of a comparison with revflow's rational-quadratic spline flow on 2-D data:

    python bench/zuko_nsf.py TRAIN.csv TEST.csv --steps 2000 --batch 256 --seed S --threads T
        [--transforms 8 --hidden 64 --bins 8 --lr 1e-3 --warmup 100 --clip 50 --standardize]

It trains zuko.flows.NSF(features=D, transforms, hidden_features=(hidden, hidden), bins) in
float32 for exactly --steps Adam steps and prints one JSON line:

    {"test_bits_per_dim": ..., "train_seconds": ..., "ms_per_step": ..., "steps": ...,
     "seed": ..., "threads": ..., "zuko": ..., "torch": ..., "parameters": ..., ...}

What is matched to revflow (crates/revflow/src/):

- CSV files as data/csv.rs reads them: one vector per non-blank line; the first line is a
  header when any of its cells is not a number; a `label`/`class` column is dropped; cells may
  be quoted. (revflow's `csv:FILE` splits one file 90/10 itself, data/mod.rs `split`; give this
  script the same two parts, e.g. written out with the same split, to compare on equal data.)
- bits/dim: models/mod.rs `bits_per_dim` = −log p(x) / (D·ln 2) per sample, with log p(x) in
  nats, and training/evaluate.rs / scoring/mod.rs `score` take the plain f64 mean of the
  per-sample values over the test set. For real vectors revflow adds no preprocessing and no
  noise (models/flat.rs `preprocess`: `None => (x, 0)`): log p is the density of the raw
  coordinates. Its vector flows standardise only inside the flow (a data-initialised ActNorm
  first layer, log-det counted), so the number here is the density of the raw coordinates too:
  with --standardize the fixed affine map z = (x − mean)/std of the training set is applied
  before zuko's flow and its log-det −Σ log std is added, so bits/dim stays on raw coordinates.
  Per-sample log p is computed in float32 (as revflow's f32 model) and averaged in float64.
- optimisation as training/mod.rs `train`: Adam with burn's defaults β = (0.9, 0.999),
  ε = 1e-5, no weight decay; the loss is the batch's mean bits/dim; lr warmed up linearly,
  lr·min((step+1)/warmup, 1) (`--warmup`, revflow's default 100); gradients clipped to L2 norm
  `--clip` (revflow's default 50) each parameter tensor on its own, as burn's
  GradientClipping::Norm does (burn-optim module_optimizer.rs: clip_gradient per tensor).
  `--warmup 0 --clip 0` gives plain Adam.
- minibatches as training/batches.rs `batch_indices`: epochs, each a permutation of the training
  set seeded by --seed (torch's generator, so not revflow's permutations), batch k taking
  positions k·B … k·B+B−1 of the concatenated epochs (without replacement within an epoch; a
  batch may straddle two epochs).

Timing: `train_seconds` is the wall time of the whole loop of --steps steps (batch gathering,
forward, backward, clipping, Adam step; the first step included), nothing else: not reading the
files, building the flow or scoring the test set. `ms_per_step` = train_seconds/steps.

Not the same model as a coupling flow: zuko's NSF is a masked autoregressive flow (MAF). With
D = 2 each transform splines feature 1 conditioned on feature 0, as a coupling layer would, but
also splines feature 0 with parameters that depend on nothing (MADE's first output sees no
input), and the order flips between transforms. Its splines act on [−5, 5] only and are the
identity outside (zuko.transforms.MonotonicRQSTransform, bound 5), with no ActNorm in front:
zuko recommends standardised features, hence --standardize.
"""

import argparse
import json
import math
import sys
import time

import torch
import zuko


def read_csv(path):
    """(N, D) float32 of a CSV as revflow's data/csv.rs CsvReader reads it."""
    with open(path) as f:
        lines = [(no, line) for no, line in enumerate(f, 1) if line.strip()]
    if not lines:
        sys.exit(f"{path}: is empty; expected rows of comma-separated numbers")

    def cells(line):
        out = []
        for c in line.split(","):
            c = c.strip()
            if len(c) >= 2 and c[0] == '"' and c[-1] == '"':
                c = c[1:-1]
            out.append(c)
        return out

    def number(c):
        try:
            return float(c)
        except ValueError:
            return None

    first = cells(lines[0][1])
    label = None
    if any(number(c) is None for c in first):  # a header
        labels = [i for i, c in enumerate(first) if c.lower() in ("label", "class")]
        if len(labels) > 1:
            sys.exit(f"{path}:{lines[0][0]}: the header has more than one label/class column")
        label = labels[0] if labels else None
        lines = lines[1:]
    width = len(first)
    rows = []
    for no, line in lines:
        row = cells(line)
        if len(row) != width:
            sys.exit(f"{path}:{no}: has {len(row)} fields, expected {width}")
        values = [number(c) for i, c in enumerate(row) if i != label]
        if any(v is None or not math.isfinite(v) for v in values):
            sys.exit(f"{path}:{no}: a cell is not a finite number")
        rows.append(values)
    if not rows:
        sys.exit(f"{path}: has a header but no data rows")
    return torch.tensor(rows, dtype=torch.float32)


def batch_stream(n, batch, generator):
    """Index batches as revflow's batch_indices: consecutive slices of seeded epoch permutations."""
    order, pos = torch.randperm(n, generator=generator), 0
    while True:
        parts, need = [], batch
        while need > 0:
            if pos == n:
                order, pos = torch.randperm(n, generator=generator), 0
            take = min(need, n - pos)
            parts.append(order[pos : pos + take])
            pos, need = pos + take, need - take
        yield torch.cat(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--transforms", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear lr warm-up steps (revflow's default)")
    p.add_argument("--clip", type=float, default=50.0, help="per-tensor gradient L2 norm clip; 0: none")
    p.add_argument("--standardize", action="store_true",
                   help="train-set mean/std affine map before the flow, its log-det counted")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the flow's initial weights
    train, test = read_csv(args.train), read_csv(args.test)
    d = train.shape[1]
    if test.shape[1] != d:
        sys.exit(f"{args.test}: {test.shape[1]} values per row, {args.train} has {d}")

    # The fixed standardising map (identity without --standardize): log p(x) = log p_flow(z)
    # + log|dz/dx| = log p_flow(z) − Σ log std.
    if args.standardize:
        shift, scale = train.mean(0), train.std(0).clamp_min(1e-12)
    else:
        shift, scale = torch.zeros(d), torch.ones(d)
    log_det = -scale.log().sum()
    outside = (((train - shift) / scale).abs() > 5).any(1).float().mean().item()
    if outside > 0.01:
        print(f"zuko_nsf.py: {outside:.1%} of the training points lie outside zuko's spline "
              f"domain [-5, 5] (identity there); consider --standardize", file=sys.stderr)

    flow = zuko.flows.NSF(features=d, transforms=args.transforms,
                          hidden_features=(args.hidden, args.hidden), bins=args.bins)
    parameters = sum(t.numel() for t in flow.parameters())
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-5)
    nats_to_bits = 1.0 / (d * math.log(2))

    def log_prob(x):
        return flow().log_prob((x - shift) / scale) + log_det

    batches = batch_stream(len(train), args.batch, torch.Generator().manual_seed(args.seed))
    flow.train()
    start = time.perf_counter()
    for step in range(args.steps):
        x = train[next(batches)]
        loss = -log_prob(x).mean() * nats_to_bits  # mean bits/dim, revflow's training loss
        if not math.isfinite(loss.item()):
            sys.exit(f"zuko_nsf.py: the loss became non-finite at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            for t in flow.parameters():
                if t.grad is not None:
                    torch.nn.utils.clip_grad_norm_(t, args.clip)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min((step + 1) / max(args.warmup, 1), 1.0)
        optimizer.step()
    train_seconds = time.perf_counter() - start

    flow.eval()
    with torch.no_grad():
        log_p = torch.cat([log_prob(x) for x in test.split(4096)]).double()
    if not torch.isfinite(log_p).all():
        sys.exit("zuko_nsf.py: a test point has a non-finite log-likelihood")
    bits = -log_p / (d * math.log(2))  # per sample, as revflow's bits_per_dim

    print(json.dumps({
        "test_bits_per_dim": bits.mean().item(),
        "test_nats": -log_p.mean().item(),
        "train_seconds": round(train_seconds, 4),
        "ms_per_step": round(train_seconds / max(args.steps, 1) * 1e3, 4),
        "steps": args.steps, "batch": args.batch, "seed": args.seed, "threads": args.threads,
        "transforms": args.transforms, "hidden": args.hidden, "bins": args.bins, "lr": args.lr,
        "warmup": args.warmup, "clip": args.clip, "standardize": args.standardize,
        "train_rows": len(train), "test_rows": len(test), "dims": d,
        "zuko": zuko.__version__, "torch": torch.__version__, "parameters": parameters,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
