"""Sweep: how many distinct training images a small ViT needs before its lower layers grow local heads.

Small timm ViTs (the zoo's architecture: class token, learned absolute position table) are trained
from scratch on the procedural shapes data (``vitlens.data.shapes``) for a fixed number of optimiser
steps per patch grid, while the number of DISTINCT training images ``N`` varies over orders of
magnitude. Training sample ``t`` is image ``perm_e[t mod N]`` of the ``train`` split, with
``e = t // N`` and ``perm_e`` a fresh random permutation of ``0 .. N - 1`` per pass: every image is
seen once per pass, and where ``N`` is at least steps x batch no image is ever seen twice. Images are
generated on the fly (and kept in memory when they will be seen again).

Each run measures, with vitlens's own analyses, on the ``test`` split (which never overlaps the
training images):

- held-out accuracy;
- ``attention_distance`` of every head of every layer (px, class token handled by the default
  ``renormalize`` convention) and ``local_head_counts(0.5)`` per layer (a head is local below half
  the distance of uniform attention); lower layers are ``layer < depth // 2`` as in
  ``analyses/make_figures.py``;
- the position-embedding structure from ``vitlens.analyses.embeddings.position_structure`` (distance correlation over
  all and over interior patches, border contrast, row/column score).

Nothing favours locality: default timm initialisation, no distance penalty, the zoo's recipe
(AdamW, warm-up then cosine, label smoothing, flips and quarter turns).

Outputs, rewritten after every finished run so that partial results are usable:

- ``vitlens/zoo/locality_sweep_runs.csv`` (``<out>/locality_sweep_runs.csv`` for another ``--out``):
  one row per run, the run-level columns, which the report's less-data section reads;
- ``figures/locality_sweep.csv``: tidy, one row per run x layer x head (0-based), plus run-level
  columns (accuracy, local heads in lower and upper layers, position-embedding structure, seconds);
- ``figures/locality_sweep.json``: the sweep's settings, machine, threads, versions, and per run its
  configuration, seeds, seconds and learning curve;
- ``figures/locality_sweep.png``: local heads and mean distance of the lower layers, accuracy and
  position-embedding structure against distinct training images (log x), one line per patch grid.

Commands:

    # the full sweep in the background: 8 x 8 grid (8 px patches, 2500 steps) and 16 x 16 grid
    # (4 px patches, 400 steps) at 64 px input, 500 to 500,000 distinct images, batch 64; 2 runs in
    # parallel with 1 torch thread each; no run starts after 75 min. 65 min of CPU time in all
    # (7 to 10 min per run); 68 min of wall time on 2 cores shared with other work
    nohup nice -n 19 python analyses/locality_sweep.py --workers 2 --threads 1 --start-by 75 \\
        > /tmp/locality_sweep.log 2>&1 &

    # a quick look (a few minutes): two sizes, one grid, few steps, written elsewhere
    python analyses/locality_sweep.py --grids 8 --sizes 1000 100000 --steps 8=200 --out /tmp/sweep

    # redraw the figure from the CSV and JSON already written
    python analyses/locality_sweep.py --plot-only

A finished run already in the CSV and JSON with the same configuration is not trained again
(``--no-resume`` trains everything).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from vitlens import attention_distance, position_embedding_similarity
from vitlens.analyses.embeddings.position_structure import structure
from vitlens.data import shapes
from vitlens.data.shapes import CLASSES, normalize
from vitlens.runtime.io import versions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "analyses"))
from train_zoo import augment, lr_at, seed_everything  # noqa: E402  (the zoo's own recipe)

IMAGE_SIZE = 64
ARCHITECTURE = "vit_tiny_patch16_224"  # timm builder; every size below is overridden
DEFAULT_GRIDS = (8, 16)
DEFAULT_SIZES = (500, 5_000, 50_000, 500_000)
DEFAULT_STEPS = {8: 2500, 16: 400}
CACHE_BYTES = 3 * 2 ** 30  # keep generated images in memory up to this size, when they are seen again
LOCAL_FRACTION = 0.5


@dataclass(frozen=True)
class RunConfig:
    """One training run of the sweep (every number that changes its result)."""

    grid: int                     # patches per side
    distinct_images: int          # N: the training images are 0 .. N - 1 of the train split
    steps: int
    batch_size: int = 64
    image_size: int = IMAGE_SIZE
    embed_dim: int = 64
    depth: int = 6
    num_heads: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    seed: int = 0                 # initialisation, sample order, augmentation
    data_seed: int = 0            # the shapes seed of the train and test splits
    eval_images: int = 2000       # held-out accuracy: test images 0 .. eval_images - 1
    distance_images: int = 256    # attention distance: test images 0 .. distance_images - 1
    evals: int = 4                # held-out checks during training (on 500 test images)

    @property
    def patch_size(self) -> int:
        return self.image_size // self.grid

    @property
    def name(self) -> str:
        return f"grid{self.grid}_n{self.distinct_images}"

    @property
    def warmup_steps(self) -> int:
        return max(1, int(round(self.warmup_fraction * self.steps)))

    def model_kwargs(self) -> dict:
        return dict(img_size=self.image_size, patch_size=self.patch_size, embed_dim=self.embed_dim,
                    depth=self.depth, num_heads=self.num_heads, num_classes=len(CLASSES))


# --------------------------------------------------------------------------- training

class TrainImages:
    """Images ``0 .. n - 1`` of the train split, drawn on demand; kept when they will be drawn again."""

    def __init__(self, n: int, *, seed: int, image_size: int, keep: bool):
        self.n, self.seed, self.image_size = n, seed, image_size
        self.images = np.empty((n, image_size, image_size, 3), np.uint8) if keep else None
        self.have = np.zeros(n, bool) if keep else None
        self.generated = 0

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [batch, H, W, 3], labels int64 [batch])``; the label of image i is i mod 8."""
        out = np.empty((len(idx), self.image_size, self.image_size, 3), np.uint8)
        for k, i in enumerate(idx.tolist()):
            if self.have is not None and self.have[i]:
                out[k] = self.images[i]
                continue
            out[k] = shapes.sample(i, seed=self.seed, split="train", image_size=self.image_size)[0]
            self.generated += 1
            if self.have is not None:
                self.images[i] = out[k]
                self.have[i] = True
        return out, idx % len(CLASSES)


def sample_order(n: int, g: torch.Generator):
    """Indices into the N training images: one fresh random permutation per pass."""
    while True:
        yield from torch.randperm(n, generator=g).numpy()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 250) -> float:
    model.eval()
    pred = np.concatenate([model(normalize(images[i:i + batch_size])).argmax(-1).numpy()
                           for i in range(0, len(images), batch_size)])
    return float((pred == labels).mean())


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def run_one(cfg: RunConfig, threads: int = 1, log=print) -> tuple[list[dict], dict]:
    """Train one model and measure it. Returns ``(rows, record)``: one row per (layer, head) with
    the run-level columns repeated, and the run's record for the JSON (config, seconds, curve)."""
    torch.set_num_threads(threads)
    t0, c0, load0 = time.time(), time.process_time(), os.getloadavg()[0]
    seed_everything(cfg.seed)
    model = timm.create_model(ARCHITECTURE, pretrained=False, **cfg.model_kwargs())
    n_params = sum(p.numel() for p in model.parameters())

    def decays(n: str, p: torch.Tensor) -> bool:  # weight matrices only: no biases, norms, tokens, positions
        return p.ndim > 1 and "pos_embed" not in n and "token" not in n

    opt = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if decays(n, p)], "weight_decay": cfg.weight_decay},
         {"params": [p for n, p in model.named_parameters() if not decays(n, p)], "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(cfg.seed)
    samples = cfg.steps * cfg.batch_size
    keep = cfg.distinct_images < samples and cfg.distinct_images * cfg.image_size ** 2 * 3 <= CACHE_BYTES
    train_set = TrainImages(cfg.distinct_images, seed=cfg.data_seed, image_size=cfg.image_size, keep=keep)
    order = sample_order(cfg.distinct_images, g)
    test_images, _, test_labels = shapes.generate(cfg.eval_images, seed=cfg.data_seed, split="test",
                                                  image_size=cfg.image_size)
    probe = min(500, cfg.eval_images)
    checks = {int(round(cfg.steps * (k + 1) / cfg.evals)) for k in range(cfg.evals)} if cfg.evals else set()
    log(f"[{cfg.name}] {n_params / 1e6:.3f} M weights, grid {cfg.grid}x{cfg.grid} of {cfg.patch_size} px, "
        f"{cfg.steps} steps x {cfg.batch_size} = {samples} samples over {cfg.distinct_images} distinct images "
        f"({samples / cfg.distinct_images:.3g} per image)")

    history, loss_sum, correct, seen = [], 0.0, 0, 0
    model.train()
    for step in range(cfg.steps):
        idx = np.fromiter((next(order) for _ in range(cfg.batch_size)), np.int64, cfg.batch_size)
        images, labels = train_set.batch(idx)
        x, y = augment(normalize(images), g), torch.from_numpy(labels)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(-1) == y).sum())
        seen += len(y)
        if step + 1 in checks:
            acc = accuracy(model, test_images[:probe], test_labels[:probe])
            model.train()
            history.append({"step": step + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                            "held_out_accuracy_500": acc, "seconds": time.time() - t0})
            log(f"[{cfg.name}] step {step + 1}/{cfg.steps}  loss {loss_sum / seen:.4f}  train acc "
                f"{correct / seen:.3f}  held-out acc (500) {acc:.3f}  {time.time() - t0:.0f} s")
            loss_sum, correct, seen = 0.0, 0, 0
    train_seconds, train_cpu = time.time() - t0, time.process_time() - c0

    model.eval()
    acc = accuracy(model, test_images, test_labels)
    n_dist = min(cfg.distance_images, cfg.eval_images)
    dist = attention_distance(model, normalize(test_images[:n_dist]), batch_size=64, name=cfg.name)
    local = dist.local_heads(LOCAL_FRACTION)                       # [layer, head]
    counts = dist.local_head_counts(LOCAL_FRACTION)                # [layer]
    pe = structure(position_embedding_similarity(model, name=cfg.name).similarity)
    lower = np.arange(dist.num_layers) < max(1, dist.num_layers // 2)

    seconds, cpu = time.time() - t0, time.process_time() - c0
    run = {
        "run": cfg.name, "grid": cfg.grid, "patch_size": cfg.patch_size, "distinct_images": cfg.distinct_images,
        "steps": cfg.steps, "batch_size": cfg.batch_size, "samples": samples,
        "passes": samples / cfg.distinct_images, "images_generated": train_set.generated,
        "seed": cfg.seed, "data_seed": cfg.data_seed, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
        "num_heads": cfg.num_heads, "accuracy": acc, "eval_images": cfg.eval_images,
        "distance_images": dist.n_images, "uniform_px": dist.uniform,
        "local_threshold_px": LOCAL_FRACTION * dist.uniform,
        "local_heads_lower": int(local[lower].sum()), "local_heads_upper": int(local[~lower].sum()),
        "lower_layers": int(lower.sum()),
        "mean_distance_lower_px": float(np.nanmean(dist.distance[lower])),
        "mean_distance_upper_px": float(np.nanmean(dist.distance[~lower])),
        "min_distance_px": float(np.nanmin(dist.distance)),
        "pe_distance_correlation_all": pe["distance_correlation_all"],
        "pe_distance_correlation_interior": pe["distance_correlation_interior"],
        "pe_border_contrast": pe["border_contrast"], "pe_row_column_score": pe["row_column_score"],
        "final_train_loss": history[-1]["train_loss"] if history else float("nan"),
        "final_train_accuracy": history[-1]["train_accuracy"] if history else float("nan"),
        "seconds": seconds, "train_seconds": train_seconds, "cpu_seconds": cpu,
    }
    rows = []
    for layer in range(dist.num_layers):
        for head in range(dist.num_heads):
            rows.append({**run, "layer": layer, "head": head, "lower_layer": bool(lower[layer]),
                         "distance_px": float(dist.distance[layer, head]), "std_px": float(dist.std[layer, head]),
                         "local": bool(local[layer, head]), "local_heads_layer": int(counts[layer])})
    record = {"run": cfg.name, "config": asdict(cfg), "patch_size": cfg.patch_size, "n_params": n_params,
              "model_kwargs": cfg.model_kwargs(), "architecture": ARCHITECTURE,
              "cached_images": bool(keep), "images_generated": train_set.generated,
              "accuracy": acc, "seconds": seconds, "train_seconds": train_seconds, "cpu_seconds": cpu,
              "train_cpu_seconds": train_cpu, "torch_threads": threads,
              "load_average_start": load0, "load_average_end": os.getloadavg()[0],
              "local_head_counts": counts.tolist(), "history": history,
              "position_embedding_structure": pe}
    log(f"[{cfg.name}] held-out acc {acc:.4f}; local heads per layer {counts.tolist()}; lower-layer distance "
        f"{run['mean_distance_lower_px']:.1f} px (uniform {dist.uniform:.1f}); PE interior r "
        f"{pe['distance_correlation_interior']:.3f}, border contrast {pe['border_contrast']:.3f}; "
        f"{seconds:.0f} s ({cpu:.0f} s CPU)")
    return rows, record


# --------------------------------------------------------------------------- outputs

def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    """Rewrite the CSV, the JSON and the figure from everything finished so far."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["grid", "distinct_images", "layer", "head"]).reset_index(drop=True)
    tmp = out / "locality_sweep.csv.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(out / "locality_sweep.csv")
    tmp = out / "locality_sweep.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=float) + "\n")
    tmp.replace(out / "locality_sweep.json")
    if len(frame):
        plot_sweep(frame, out / "locality_sweep.png")
        write_run_summary(frame, out)


RUN_COLUMNS = ["run", "grid", "patch_size", "distinct_images", "steps", "batch_size", "accuracy", "uniform_px",
               "local_threshold_px", "local_heads_lower", "local_heads_upper", "mean_distance_lower_px",
               "mean_distance_upper_px", "min_distance_px", "pe_distance_correlation_interior", "pe_border_contrast"]
PACKAGED = REPO / "vitlens" / "zoo" / "locality_sweep_runs.csv"


def write_run_summary(frame, out: Path) -> None:
    """One row per run (the run-level columns); for the sweep of record (``--out figures``) also into
    the package, where ``vitlens report`` reads it for its less-data section."""
    runs = frame.drop_duplicates("run")[RUN_COLUMNS].reset_index(drop=True)
    targets = [PACKAGED] if out.resolve() == (REPO / "figures").resolve() else [out / "locality_sweep_runs.csv"]
    for path in targets:
        tmp = path.with_suffix(".csv.tmp")
        runs.to_csv(tmp, index=False)
        tmp.replace(path)


def plot_sweep(frame, path: Path) -> None:
    """The sweep figure from the tidy frame (run-level columns only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = frame.drop_duplicates("run").sort_values(["grid", "distinct_images"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes = axes.ravel()
    colours = {g: f"C{k}" for k, g in enumerate(sorted(runs.grid.unique()))}
    top = 0
    for grid, r in runs.groupby("grid"):
        c = colours[grid]
        lab = f"{grid} x {grid} ({int(r.patch_size.iloc[0])} px patches, {int(r.steps.iloc[0])} steps)"
        top = max(top, int(r.lower_layers.iloc[0] * r.num_heads.iloc[0]),
                  int((r.depth.iloc[0] - r.lower_layers.iloc[0]) * r.num_heads.iloc[0]))
        axes[0].plot(r.distinct_images, r.local_heads_lower, "o-", color=c, label=f"{lab}: lower layers")
        axes[0].plot(r.distinct_images, r.local_heads_upper, "s--", color=c, alpha=0.6, label="upper layers")
        axes[1].plot(r.distinct_images, r.mean_distance_lower_px, "o-", color=c, label=f"{grid} x {grid}: lower layers")
        axes[1].plot(r.distinct_images, r.mean_distance_upper_px, "s--", color=c, alpha=0.6, label="upper layers")
        axes[1].plot(r.distinct_images, r.min_distance_px, "v:", color=c, alpha=0.8, label="most local head")
        axes[1].axhline(float(r.uniform_px.iloc[0]), color=c, lw=0.8, ls="-.")
        axes[1].axhline(float(r.local_threshold_px.iloc[0]), color=c, lw=0.8, ls=":")
        axes[2].plot(r.distinct_images, 100 * r.accuracy, "o-", color=c, label=f"{lab}: held out")
        axes[2].plot(r.distinct_images, 100 * r.final_train_accuracy, "s--", color=c, alpha=0.6,
                     label="train (last quarter of steps, augmented)")
        axes[3].plot(r.distinct_images, r.pe_distance_correlation_interior, "o-", color=c,
                     label=f"{grid} x {grid}: distance r, interior patches")
        axes[3].plot(r.distinct_images, r.pe_border_contrast, "s--", color=c, alpha=0.6, label="border contrast")
    axes[0].set_ylim(-0.3, top + 0.3)
    axes[1].set_ylim(bottom=0)
    axes[1].text(0.02, 0.03, "dash-dot: uniform attention; dotted: local threshold (half of it)",
                 transform=axes[1].transAxes, fontsize=7)
    axes[2].axhline(90, color="grey", lw=0.8, ls=":")
    axes[3].axhline(0, color="grey", lw=0.8)
    titles = ["local heads (distance < half of uniform attention's)", "mean attention distance (px, held out)",
              "accuracy (%)", "position-embedding structure"]
    for ax, t in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("distinct training images")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Small ViTs trained from scratch on shapes: locality against distinct training images\n"
                 "(fixed steps per grid; lower layers: layer < depth // 2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_job(job):
    cfg, threads, start_by = job
    if start_by is not None and time.time() > start_by:
        return cfg, None, None, "not started: past --start-by"
    try:
        rows, record = run_one(cfg, threads, log=lambda m: print(m, flush=True))
        return cfg, rows, record, None
    except Exception as e:  # noqa: BLE001 -- reported in the JSON; the other runs go on
        import traceback

        traceback.print_exc()
        return cfg, None, None, f"{type(e).__name__}: {e}"


def parse_steps(values: list[str], grids) -> dict[int, int]:
    steps = dict(DEFAULT_STEPS)
    for v in values or []:
        if "=" in v:
            k, s = v.split("=", 1)
            steps[int(k)] = int(s)
        else:
            steps = {g: int(v) for g in grids}
    missing = [g for g in grids if g not in steps]
    if missing:
        raise SystemExit(f"no --steps for grid(s) {missing}; give GRID=STEPS")
    return steps


def interleave(grids, sizes) -> list[tuple[int, int]]:
    """Run order: the two ends of the data axis first, so that a partial sweep already spans it."""
    sizes = sorted(sizes)
    order = [sizes[-1], sizes[0]] + sizes[1:-1] if len(sizes) > 1 else sizes
    seen, out = set(), []
    for n in order:
        for grid in grids:
            if (grid, n) not in seen:
                seen.add((grid, n))
                out.append((grid, n))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=list(DEFAULT_GRIDS), help="patches per side")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="distinct training images")
    p.add_argument("--steps", nargs="+", default=None,
                   help="optimiser steps, per grid as GRID=STEPS (default " +
                        " ".join(f"{g}={s}" for g, s in DEFAULT_STEPS.items()) + ") or one number for all")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="initialisation, order and augmentation seed")
    p.add_argument("--data-seed", type=int, default=0, help="shapes seed of the train and test splits")
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--distance-images", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--start-by", type=float, default=None,
                   help="minutes after the start after which no new run is started (recorded as skipped)")
    p.add_argument("--out", default=str(REPO / "figures"))
    p.add_argument("--no-resume", action="store_true", help="train every run even if its result is on file")
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from the CSV on file")
    args = p.parse_args(argv)
    out = Path(args.out)

    if args.plot_only:
        import pandas as pd

        frame = pd.read_csv(out / "locality_sweep.csv")
        plot_sweep(frame, out / "locality_sweep.png")
        write_run_summary(frame, out)
        print(f"wrote {out / 'locality_sweep.png'} and the run summary")
        return 0

    steps = parse_steps(args.steps, args.grids)
    configs = [RunConfig(grid=g, distinct_images=n, steps=steps[g], batch_size=args.batch_size,
                         embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads, lr=args.lr,
                         seed=args.seed, data_seed=args.data_seed, eval_images=args.eval_images,
                         distance_images=args.distance_images)
               for g, n in interleave(args.grids, args.sizes)]
    for cfg in configs:
        if IMAGE_SIZE % cfg.grid:
            raise SystemExit(f"grid {cfg.grid} does not divide the {IMAGE_SIZE} px input")

    rows, records = [], {}
    if not args.no_resume and (out / "locality_sweep.json").is_file() and (out / "locality_sweep.csv").is_file():
        import pandas as pd

        old = json.loads((out / "locality_sweep.json").read_text()).get("runs", {})
        frame = pd.read_csv(out / "locality_sweep.csv")
        wanted = {c.name: asdict(c) for c in configs}
        for name, rec in old.items():
            if name in wanted and rec.get("config") == wanted[name]:
                records[name] = rec
                rows += frame[frame.run == name].to_dict("records")
    todo = [c for c in configs if c.name not in records]

    command = " ".join(["python", "analyses/locality_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    started = time.time()
    meta = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "image_size": IMAGE_SIZE,
            "architecture": ARCHITECTURE, "grids": args.grids, "sizes": sorted(args.sizes),
            "steps": {str(g): steps[g] for g in args.grids}, "batch_size": args.batch_size, "lr": args.lr,
            "model": {"embed_dim": args.embed_dim, "depth": args.depth, "num_heads": args.heads,
                      "class_token": True, "position_embedding": "learned absolute (timm default init)"},
            "seed": args.seed, "data_seed": args.data_seed, "local_fraction": LOCAL_FRACTION,
            "lower_layers": "layer < depth // 2", "workers": args.workers, "torch_threads": args.threads,
            "nice": os.nice(0), "machine": machine(), "versions": versions(),
            "position_embedding_structure": "vitlens.analyses.embeddings.position_structure.structure",
            "runs": records, "skipped": {}}
    write_results(out, rows, meta)
    print(f"{len(todo)} run(s) to train, {len(records)} on file; writing to {out}", flush=True)
    start_by = None if args.start_by is None else started + 60 * args.start_by
    jobs = [(c, args.threads, start_by) for c in todo]
    if args.workers > 1 and len(jobs) > 1:
        pool = mp.get_context("spawn").Pool(min(args.workers, len(jobs)), maxtasksperchild=1)
        results = pool.imap_unordered(_run_job, jobs, chunksize=1)
    else:
        pool, results = None, map(_run_job, jobs)
    for cfg, new_rows, record, why in results:
        if why is None:
            rows += new_rows
            meta["runs"][cfg.name] = record
        else:
            meta["skipped"][cfg.name] = why
        meta["elapsed_minutes"] = (time.time() - started) / 60
        write_results(out, rows, meta)
        print(f"-- {cfg.name}: {'done' if why is None else why}; {len(meta['runs'])} run(s) on file, "
              f"{meta['elapsed_minutes']:.1f} min", flush=True)
    if pool is not None:
        pool.close()
        pool.join()
    print(f"sweep done in {(time.time() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
