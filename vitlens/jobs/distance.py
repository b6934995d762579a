"""``vitlens distance``: mean attention distance by depth for one or several models."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Sequence

from typing import TYPE_CHECKING

from ..analyses.attention.conventions import PREFIX_CONVENTIONS, UNITS
from ..runtime.errors import VitlensError

#: The attention paths and the default budget of vitlens.capture.chunked (named here so that help
#: answers before torch is imported).
ATTENTION_PATHS = ("auto", "chunked", "full")
DEFAULT_ATTENTION_MEMORY_MB = 64.0
from ..runtime.precision import PRECISIONS
from ..runtime.resume import StopRequest, clear_partial

if TYPE_CHECKING:
    from ..analyses.attention.distance import AttentionDistance

# The analysis, torch and timm are imported when the job runs, so that help and argument errors
# answer at once.

__all__ = ["run_distance", "register", "PRODUCTS", "in_units"]

PRODUCTS = ["attention_distance.csv", "attention_distance.png", "attention_distance.svg",
            "attention_entropy.png", "attention_entropy.svg", "run.json"]


def run_distance(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
                 random_init: bool = False, device: str = "cpu", batch_size: int = 32,
                 num_images: int | None = None, sample: bool = False, seed: int = 0,
                 prefix_tokens: str = "renormalize", units: str = "px", precision: str = "fp32",
                 workers: int = 0, overwrite: bool = False, resume: bool = False, progress: bool = True,
                 attention_path: str = "auto", attention_memory: float = DEFAULT_ATTENTION_MEMORY_MB,
                 args: argparse.Namespace | None = None) -> list[AttentionDistance]:
    """Compute mean attention distance, entropy and prefix share of every head for every model over
    the same images and write ``attention_distance.csv``, ``.png``, ``.svg``, the distance-against-
    entropy figure ``attention_entropy.png`` and ``.svg``, and ``run.json`` into ``out``.

    ``attention_path`` (``auto``, ``chunked``, ``full``) and ``attention_memory`` (MB) choose how
    each block's probabilities are read (see :func:`~vitlens.analyses.attention.streaming.attention_distance`);
    ``run.json`` records the path that ran for each model.

    Under ``torchrun`` each process reads a shard of the images and rank 0 writes the files. On
    SIGINT/SIGTERM the partial sums are saved and :class:`~vitlens.runtime.resume.Interrupted` is raised;
    ``resume=True`` continues from them.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..analyses.attention.streaming import new_accumulator, stream_distance
    from ..capture.attention import attention_modules
    from ..plotting.distance import distance_figure
    from ..runtime.distributed import context
    from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure
    from .common import args_record, display_name, images_for, load_models, model_record
    from .sharded import open_partial, sharded_pass
    from ..capture.chunked import resolve_attention_path
    from ..plotting.entropy import distance_entropy_figure
    from ..plotting.windows import is_windowed, windowed_distance_figure

    if not attention_memory > 0:
        raise VitlensError(f"--attention-memory must be a positive number of MB, got {attention_memory:g}.")
    ctx = context(device)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    models = load_models(specs, random_init=random_init, device=ctx.device, seed=seed)
    for model in models:  # refuse a CNN or an unknown attention before reading any image
        _check_layout(model)
        attention_modules(model)
        resolve_attention_path(model, attention_path)
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    setup = {"models": [list(s) for s in specs], "images": [str(i) for i in images], "num_images": num_images,
             "sample": sample, "seed": seed, "prefix_tokens": prefix_tokens, "units": units,
             "random_init": random_init, "world": ctx.world, "attention_path": attention_path}
    partial = open_partial(out, "distance", ctx, setup, resume)
    record = RunRecord("distance", arguments=args_record(args) if args else {},
                       conventions={"prefix_tokens": prefix_tokens, "units": units, "precision": precision,
                                    "distance": "mean over query patches of the attention-weighted "
                                                "distance to key patch centres; images averaged last",
                                    "entropy": "per head, mean over patch queries and images of the row's "
                                               "entropy over all N keys divided by log N (1 = uniform); "
                                               "windowed blocks: N = the window's tokens, masked pairs left out",
                                    "prefix_share": "per head, mean over patch queries and images of the "
                                                    "row's mass on prefix tokens (0 without any)",
                                    "attention_path": attention_path,
                                    "attention_memory_mb": attention_memory},
                       seed=seed, processes=ctx.world, models=[])
    results = []
    with StopRequest() as stop:
        for mi, model in enumerate(models):
            imgs = images_for(model, ns)
            acc = new_accumulator(model, prefix_tokens=prefix_tokens, units=units, attention_path=attention_path,
                                  attention_memory=attention_memory)
            name = display_name(model)
            sharded_pass(ctx, stop, partial, mi, acc, imgs,
                         lambda todo: stream_distance(model, imgs, acc, batch_size=batch_size, indices=todo,
                                                      precision=precision, workers=workers),
                         desc=f"distance {name}", progress=progress, reduce_ops={"min": "min", "max": "max"})
            res = acc.result(model=name)
            imgs.check_used(res.n_images)
            if res.n_nonfinite.any():
                warnings.warn(f"{name}: {int(res.n_nonfinite.sum())} (image, layer, head) maps held NaN or Inf "
                              "and were left out; try --precision fp32", stacklevel=2)
            results.append(res)
            record.data["models"].append({**model_record(model), **res.to_dict(),
                                          "images": imgs.record(res.n_images),
                                          "image_files": [str(p) for p in imgs.paths]})
            if ctx.is_main:
                print(_summary(res))
    if ctx.is_main:
        frame = pd.concat([r.to_frame() for r in results], ignore_index=True)  # a model column, always
        save_csv(out / "attention_distance.csv", frame)
        fig = windowed_distance_figure(results) if any(map(is_windowed, results)) else distance_figure(results)
        save_figure(fig, out / "attention_distance.png")
        save_figure(fig, out / "attention_distance.svg")
        plt.close(fig)
        fig = distance_entropy_figure(results)
        save_figure(fig, out / "attention_entropy.png")
        save_figure(fig, out / "attention_entropy.svg")
        plt.close(fig)
        record.save(out / "run.json")
        print(f"wrote {out / 'attention_distance.csv'}, .png, .svg, attention_entropy.png, .svg and run.json")
    ctx.barrier()
    clear_partial(out, "distance", ctx.rank)
    ctx.close()
    return results


def _check_layout(model) -> None:
    """A windowed model (Swin, Swin-V2, SAM) is read through its window layout, any other ViT
    through its token layout; either raises UnsupportedModelError when there is none."""
    from ..models.families.registry import adapter_for
    from ..models.layout import token_layout

    adapter = adapter_for(model)
    if hasattr(adapter, "window_layout"):
        adapter.window_layout()
    else:
        token_layout(model)


def in_units(value: float, units: str) -> str:
    """A distance in words: ``31.5 px``, ``3.94 patches``, ``0.492 of the image side``."""
    if units == "fraction":
        return f"{value:.3f} of the image side"
    if units == "patches":
        return f"{value:.2f} patch{'' if value == 1 else 'es'}"
    return f"{value:.1f} {units}"


def _summary(r: AttentionDistance) -> str:
    import numpy as np

    u = r.units
    if hasattr(r, "uniform_by_layer"):  # windowed: per-block references, heads padded with NaN
        per_layer = np.nanmean(r.distance, axis=1)
        if u == "patches":  # each block's own feature map
            u = "steps of the block's feature map"
            fmt = lambda v: f"{v:.2f} {u}"  # noqa: E731
        else:
            fmt = lambda v: in_units(v, u)  # noqa: E731
        return (f"{r.model}: {r.n_images} images, {r.num_layers} attention blocks in {len(set(r.stage.tolist()))} "
                f"stages; mean distance {fmt(per_layer[0])} in block 1 (uniform window: "
                f"{fmt(r.uniform_by_layer[0])}) to {fmt(per_layer[-1])} in block {r.num_layers} "
                f"(uniform over its allowed keys: {fmt(r.uniform_by_layer[-1])})")
    per_layer = r.distance.mean(1)
    return (f"{r.model}: {r.n_images} images, {r.num_layers} layers x {r.num_heads} heads; mean distance "
            f"{in_units(per_layer[0], u)} in layer 1 to {in_units(per_layer[-1], u)} in layer {r.num_layers} "
            f"(uniform attention: {in_units(r.uniform, u)})")


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "distance", parents=[common(models=True, images=True, out=True)],
        help="mean attention distance by depth (ViT paper Fig. 7 right; Raghu et al.)",
        description="Mean attention distance, entropy and share of attention on prefix tokens of every head "
                    "by depth, over an image set. Writes attention_distance.csv, .png, .svg, "
                    "attention_entropy.png, .svg and run.json into --out.")
    p.add_argument("--prefix-tokens", choices=PREFIX_CONVENTIONS, default="renormalize",
                   help="renormalize: drop class/distillation/register tokens and renormalise rows over "
                        "patches (default); discard: drop them without renormalising")
    p.add_argument("--units", choices=list(UNITS), default="px",
                   help="px: input pixels (default); patches: grid steps; fraction: of the image side")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward-pass precision; reductions are always float32")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the partial sums it saved in --out")
    p.add_argument("--attention-path", choices=ATTENTION_PATHS, default="auto",
                   help="auto: each block's attention formed from its own queries and keys a block of query rows "
                        "at a time where the model's family allows it exactly, else full maps (default); "
                        "chunked: require that; full: read every block's full [batch, head, query, key] map")
    p.add_argument("--attention-memory", type=float, default=DEFAULT_ATTENTION_MEMORY_MB, metavar="MB",
                   help="memory for one block's chunk of attention rows on the chunked path "
                        "(default %(default)g MB); the results do not depend on it")

    def _run(args):
        from .common import model_specs
        run_distance(model_specs(args), args.images, args.out, random_init=args.random_init,
                     device=args.device, batch_size=args.batch_size, num_images=args.num_images,
                     sample=args.sample, seed=args.seed, prefix_tokens=args.prefix_tokens, units=args.units,
                     precision=args.precision, workers=args.workers, overwrite=args.overwrite,
                     resume=args.resume, attention_path=args.attention_path,
                     attention_memory=args.attention_memory, args=args)

    p.set_defaults(func=_run)
