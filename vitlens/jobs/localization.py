"""``vitlens localization``: CKA between a block's tokens and the input patches (Raghu et al. 2021,
Sec. 7, Fig. 9).

Writes, into ``--out``:

- ``localization.npy``: float64 ``[grid_h, grid_w, grid_h, grid_w]`` of the first ``--model``
  (token position first, input patch position second);
- ``localization.npz``: ``model_names`` and ``m<i>_cka`` for every model (grids may differ);
- ``localization.csv``: the summary, one row per model: ``model, kind, layer, depth_fraction,
  grid_h, grid_w, cell_h, cell_w, own_patch_share, cka_own, cka_other, n_images, n_batches,
  batch_size``;
- ``localization.png`` and ``localization.svg``: Fig. 9, four tokens per model;
- ``run.json``: the run record.

CKA is computed over all images with ``--batch-size`` as the minibatch. Under ``torchrun`` the
minibatches are dealt out whole (minibatch ``k`` to rank ``k % world``), as ``vitlens cka`` does,
so the result is the one a single process gives; the HSIC sums are then all-reduced.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from ..analyses.representations.cka import MIN_BATCH, stream_cka
from ..analyses.representations.localization import Localization, new_accumulator, result_of
from ..runtime.distributed import context
from ..runtime.errors import VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npy, save_npz
from ..runtime.precision import PRECISIONS
from ..runtime.resume import StopRequest, clear_partial
from .cka import _WholeBatches
from .common import args_record, distinct_names, images_for, load_models, model_record
from .sharded import open_partial, sharded_pass

__all__ = ["run_localization", "register", "PRODUCTS"]

PRODUCTS = ["localization.npy", "localization.npz", "localization.csv", "localization.png", "localization.svg",
            "run.json"]


def _summary(r: Localization) -> str:
    return (f"{r.model}, {r.layer}: {r.grid[0]} x {r.grid[1]} positions of {r.cell[0]} x {r.cell[1]} px, "
            f"{r.n_images} images in {r.n_batches} minibatches; own patch most similar for "
            f"{100 * r.own_patch_share:.0f}% of tokens; CKA at the own patch {r.cka_own:.3f}, elsewhere {r.cka_other:.3f}")


def run_localization(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
                     layer: str | None = None, random_init: bool = False, device: str = "cpu", batch_size: int = 32,
                     num_images: int | None = None, sample: bool = False, seed: int = 0, workers: int = 0,
                     precision: str = "fp32", overwrite: bool = False, resume: bool = False, progress: bool = True,
                     args: argparse.Namespace | None = None) -> list[Localization]:
    """Spatial localisation of every model's ``layer`` (default: its last block or stage) over the
    same image files; writes the files listed in the module docstring."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..plotting.localization import localization_figure

    if not specs:
        raise VitlensError("no model given: pass --model NAME.")
    if batch_size < MIN_BATCH:
        raise VitlensError(f"--batch-size must be at least {MIN_BATCH} (the unbiased HSIC estimator needs 4 "
                           f"images per minibatch), got {batch_size}.")
    if layer is not None and len(specs) > 1:
        raise VitlensError("--layer names a module of one model; give one --model with it, or leave it out to "
                           "measure every model's last block.")
    ctx = context(device)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    models = load_models(specs, random_init=random_init, device=ctx.device, seed=seed)
    names = distinct_names(models)
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    imgs = [images_for(m, ns) for m in models]
    readers = [new_accumulator(m, s, layer, precision=precision) for m, s in zip(models, imgs)]  # refuse early
    setup = {"models": [list(s) for s in specs], "images": [str(i) for i in images], "num_images": num_images,
             "sample": sample, "seed": seed, "batch_size": batch_size, "layer": layer, "random_init": random_init,
             "precision": precision, "world": ctx.world}
    partial = open_partial(out, "localization", ctx, setup, resume)
    record = RunRecord("localization", arguments=args_record(args) if args else {}, seed=seed, processes=ctx.world,
                       sharding="minibatch k on rank k % processes", models=[])
    results = []
    with StopRequest() as stop:
        for mi, (model, s, (acc, tokens, patches), name) in enumerate(zip(models, imgs, readers, names)):
            was_training = model.training
            sharded_pass(_WholeBatches(ctx, batch_size), stop, partial, mi, acc, s,
                         lambda todo, acc=acc, tokens=tokens, patches=patches, s=s: stream_cka(
                             acc, tokens, s, patches, None, batch_size=batch_size, indices=todo, workers=workers),
                         desc=f"localization {name}", progress=progress)
            s.check_used(int(acc.n_images[0] + acc.n_images_dropped[0]))
            try:
                res = result_of(acc, tokens, model=name, batch_size=batch_size, was_training=was_training)
            except ValueError as e:
                raise VitlensError(f"{e}; use more images or a smaller --batch-size (at least {MIN_BATCH}).") from e
            results.append(res)
            record.data["models"].append({**model_record(model), **res.to_dict(), "images": s.record(res.n_images),
                                          "image_files": [str(p) for p in s.paths]})
            if ctx.is_main:
                print(_summary(res))
    if ctx.is_main:
        save_npy(out / "localization.npy", np.asarray(results[0].cka, dtype=np.float64))
        save_npz(out / "localization.npz", {"model_names": np.array([r.model for r in results]),
                                            **{f"m{i}_cka": np.asarray(r.cka, dtype=np.float64)
                                               for i, r in enumerate(results)}})
        save_csv(out / "localization.csv", pd.concat([r.to_frame() for r in results], ignore_index=True))
        fig = localization_figure(results)
        save_figure(fig, out / "localization.png")
        save_figure(fig, out / "localization.svg")
        plt.close(fig)
        record.save(out / "run.json")
        print(f"wrote {out / 'localization.npy'}, localization.npz, localization.csv, localization.png, "
              "localization.svg and run.json")
    ctx.barrier()
    clear_partial(out, "localization", ctx.rank)
    ctx.close()
    return results


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "localization", parents=[common(models=True, images=True, out=True)],
        help="CKA between a block's tokens and every input patch, ViTs and CNNs (Raghu et al. Fig. 9)",
        description="Minibatch linear CKA between the token at every grid position of a block (default: the "
                    "last) and the preprocessed input patch at every position. Writes localization.npy "
                    "[grid_h, grid_w, grid_h, grid_w], localization.npz, localization.csv (summary), "
                    "localization.png/.svg and run.json into --out. --batch-size is the CKA minibatch (at "
                    "least 4).")
    p.add_argument("--layer", metavar="MODULE",
                   help="module to measure (one --model only; default: the last transformer block or CNN stage)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward pass precision (autocast); Gram matrices and HSIC sums are float64")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the partial sums it saved in --out")

    def _run(args):
        from .common import model_specs
        run_localization(model_specs(args), args.images, args.out, layer=args.layer, random_init=args.random_init,
                         device=args.device, batch_size=args.batch_size, num_images=args.num_images,
                         sample=args.sample, seed=args.seed, workers=args.workers, precision=args.precision,
                         overwrite=args.overwrite, resume=args.resume, args=args)

    p.set_defaults(func=_run)
