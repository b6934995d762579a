"""``vitlens skip``: skip-connection norm ratios per block and sub-layer (Raghu et al. 2021, Fig. 7).

Writes, into ``--out``:

- ``skip_ratio.csv``: one row per model, block, sub-layer and token kind: ``model, kind, block,
  block_name, depth_fraction, sublayer, token_kind, ratio, n_tokens, n_images`` (``block`` from 0;
  ``sublayer`` attention, mlp or residual; ``token_kind`` prefix or patch for ViTs, position for
  CNNs; ``ratio`` the mean over images and tokens of that kind of ``||x|| / ||f(x)||``, ``inf``
  where a branch added zero; ``n_tokens`` the per-token ratios averaged);
- ``skip_tokens.npz``: ``model_names`` and, for the ``i``-th model, ``m<i>_token_ratio``
  ``[block, sublayer, token]`` (the first ``--n-tokens`` tokens, mean over images; token axis
  empty for CNNs), ``m<i>_token_labels`` and ``m<i>_sublayers``;
- ``skip_ratio.png`` and ``skip_ratio.svg``: Fig. 7 (per-token heatmap of each ViT, ratios by depth
  of every model);
- ``run.json``: the run record.

Under ``torchrun`` each process takes every ``world``-th image and the sums are all-reduced.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from ..analyses.representations.skip import CNN_NORMS, N_TOKENS, SkipRatios, new_accumulator, stream_skip
from ..runtime.distributed import context
from ..runtime.errors import VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npz
from ..runtime.precision import PRECISIONS
from ..runtime.resume import StopRequest, clear_partial
from .common import args_record, distinct_names, images_for, load_models, model_record
from .sharded import open_partial, sharded_pass

__all__ = ["run_skip", "register", "PRODUCTS"]

PRODUCTS = ["skip_ratio.csv", "skip_tokens.npz", "skip_ratio.png", "skip_ratio.svg", "run.json"]


def _arrays(results: Sequence[SkipRatios]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"model_names": np.array([r.model for r in results])}
    for i, r in enumerate(results):
        arrays[f"m{i}_token_ratio"] = np.asarray(r.token_ratio, dtype=np.float64)
        arrays[f"m{i}_token_labels"] = np.array(r.token_labels, dtype=str)
        arrays[f"m{i}_sublayers"] = np.array(r.sublayers)
    return arrays


def _summary(r: SkipRatios) -> str:
    parts = []
    for si, s in enumerate(r.sublayers):
        for ki, k in enumerate(r.token_kinds):
            v = r.ratio[:, si, ki]
            parts.append(f"{s}/{k} {v[0]:.3g} (block 1) to {v[-1]:.3g} (block {len(r.blocks)})")
    return f"{r.model}: {r.n_images} images, {len(r.blocks)} blocks; mean ratio " + "; ".join(parts)


def run_skip(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
             random_init: bool = False, device: str = "cpu", batch_size: int = 32, num_images: int | None = None,
             sample: bool = False, seed: int = 0, workers: int = 0, n_tokens: int = N_TOKENS,
             cnn_norm: str = "position", precision: str = "fp32", overwrite: bool = False, resume: bool = False,
             progress: bool = True, args: argparse.Namespace | None = None) -> list[SkipRatios]:
    """Skip ratios of every model over the same image files; writes the files listed in the module
    docstring. On SIGINT/SIGTERM the sums are saved and ``resume=True`` continues from them."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..plotting.skip import skip_figure

    if not specs:
        raise VitlensError("no model given: pass --model NAME.")
    if n_tokens < 0:
        raise VitlensError(f"--n-tokens must be at least 0, got {n_tokens}.")
    if cnn_norm not in CNN_NORMS:
        raise VitlensError(f"--cnn-norm must be one of {', '.join(CNN_NORMS)}, got {cnn_norm}.")
    ctx = context(device)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    models = load_models(specs, random_init=random_init, device=ctx.device, seed=seed)
    names = distinct_names(models)
    accs = [new_accumulator(m, n_tokens=n_tokens, cnn_norm=cnn_norm) for m in models]  # refuse before reading
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    setup = {"models": [list(s) for s in specs], "images": [str(i) for i in images], "num_images": num_images,
             "sample": sample, "seed": seed, "n_tokens": n_tokens, "cnn_norm": cnn_norm, "random_init": random_init,
             "precision": precision, "world": ctx.world}
    partial = open_partial(out, "skip", ctx, setup, resume)
    record = RunRecord("skip", arguments=args_record(args) if args else {}, seed=seed, processes=ctx.world,
                       sharding="image i on rank i % processes", models=[])
    results = []
    with StopRequest() as stop:
        for mi, (model, acc, name) in enumerate(zip(models, accs, names)):
            imgs = images_for(model, ns)
            was_training = model.training
            sharded_pass(ctx, stop, partial, mi, acc, imgs,
                         lambda todo, model=model, acc=acc, imgs=imgs: stream_skip(
                             model, imgs, acc, batch_size=batch_size, indices=todo, precision=precision,
                             workers=workers),
                         desc=f"skip {name}", progress=progress)
            imgs.check_used(int(acc.n_images[0]))
            res = acc.result(model=name, was_training=was_training, batch_size=batch_size)
            results.append(res)
            record.data["models"].append({**model_record(model), **res.to_dict(), "images": imgs.record(res.n_images),
                                          "image_files": [str(p) for p in imgs.paths]})
            if ctx.is_main:
                print(_summary(res))
    if ctx.is_main:
        save_csv(out / "skip_ratio.csv", pd.concat([r.to_frame() for r in results], ignore_index=True))
        save_npz(out / "skip_tokens.npz", _arrays(results))
        fig = skip_figure(results)
        save_figure(fig, out / "skip_ratio.png")
        save_figure(fig, out / "skip_ratio.svg")
        plt.close(fig)
        record.save(out / "run.json")
        print(f"wrote {out / 'skip_ratio.csv'}, skip_tokens.npz, skip_ratio.png, skip_ratio.svg and run.json")
    ctx.barrier()
    clear_partial(out, "skip", ctx.rank)
    ctx.close()
    return results


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "skip", parents=[common(models=True, images=True, out=True)],
        help="skip-connection norm ratios per block and sub-layer, ViTs and CNNs (Raghu et al. Fig. 7)",
        description="||x|| / ||f(x)|| of every residual sub-layer (ViT attention and MLP, CNN residual units) "
                    "per token and image, averaged over images and tokens of one kind (prefix, patch; CNN "
                    "positions). Writes skip_ratio.csv, skip_tokens.npz, skip_ratio.png/.svg and run.json "
                    "into --out.")
    p.add_argument("--n-tokens", type=int, default=N_TOKENS, metavar="K",
                   help=f"leading tokens kept one by one for the heatmap (default {N_TOKENS}; token 0 is the "
                        "class token where there is one)")
    p.add_argument("--cnn-norm", choices=CNN_NORMS, default="position",
                   help="CNN units: ratio of channel norms per position, averaged (position, default), or of "
                        "the whole maps' norms (map)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward pass precision (autocast); norms are float64")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the partial sums it saved in --out")

    def _run(args):
        from .common import model_specs
        run_skip(model_specs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                 batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                 workers=args.workers, n_tokens=args.n_tokens, cnn_norm=args.cnn_norm, precision=args.precision,
                 overwrite=args.overwrite, resume=args.resume, args=args)

    p.set_defaults(func=_run)
