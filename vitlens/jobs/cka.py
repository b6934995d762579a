"""``vitlens cka``: minibatch linear CKA between the layers of one model or of two (Raghu et al. 2021).

Writes, into ``--out``:

- ``cka.npy``: float64 ``[layer_a, layer_b]`` (model A's layers as rows, forward order);
- ``cka.csv``: one row per layer pair, columns ``model_a, layer_a, depth_a, model_b, layer_b,
  depth_b, cka, n_images, batch_size`` (``depth_*``: depth fractions, 0 first layer, 1 last);
- ``cka.png`` and ``cka.svg``: the heatmap;
- ``run.json``: the run record (representation, minibatch size, minibatches dropped, images).

Each model reads the same files through its own preprocessing; an image unreadable for either is
left out for both. Under ``torchrun`` the minibatches are dealt out whole: minibatch ``k`` (images
``k * B`` to ``k * B + B - 1`` of the run order) goes to rank ``k % world``, so every minibatch, and
so every HSIC term, is the one a single process forms; the HSIC sums are then all-reduced.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..analyses.representations.cka import (
    MIN_BATCH,
    REPRESENTATIONS,
    CKAAccumulator,
    CKAResult,
    FeatureReader,
    stream_cka,
)
from ..runtime.distributed import context
from ..runtime.errors import VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npy
from ..runtime.precision import PRECISIONS
from ..runtime.resume import StopRequest, clear_partial
from .common import args_record, distinct_names, images_for, load_models, model_record
from .sharded import open_partial, sharded_pass

__all__ = ["run_cka", "register", "PRODUCTS", "batch_shard"]

PRODUCTS = ["cka.npy", "cka.csv", "cka.png", "cka.svg", "run.json"]


def batch_shard(indices: Sequence[int], batch_size: int, rank: int, world: int) -> list[int]:
    """The indices of the minibatches ``k`` of ``indices`` (``batch_size`` consecutive ones each)
    with ``k % world == rank``, in order: whole minibatches, so chunking the result by
    ``batch_size`` gives back exactly those minibatches."""
    idx = list(indices)
    return [i for k in range(rank, -(-len(idx) // batch_size), world) for i in idx[k * batch_size:(k + 1) * batch_size]]


class _WholeBatches:
    """The run's distributed context, sharding by whole minibatches instead of image by image."""

    def __init__(self, ctx, batch_size: int):
        self._ctx, self._batch = ctx, batch_size

    def shard(self, indices: Sequence[int]) -> list[int]:
        return batch_shard(indices, self._batch, self._ctx.rank, self._ctx.world)

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def run_cka(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
            random_init: bool = False, device: str = "cpu", batch_size: int = 32, num_images: int | None = None,
            sample: bool = False, seed: int = 0, workers: int = 0, representation: str = "tokens",
            layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None, precision: str = "fp32",
            overwrite: bool = False, resume: bool = False, progress: bool = True,
            args: argparse.Namespace | None = None) -> CKAResult:
    """CKA between every layer of the first model and every layer of the second (or of the first
    again), over the same image files; writes the files listed in the module docstring.

    On SIGINT/SIGTERM the HSIC sums are saved between minibatches and
    :class:`~vitlens.runtime.resume.Interrupted` is raised; ``resume=True`` continues from them.
    """
    import matplotlib.pyplot as plt

    from ..plotting.cka import cka_figure

    if not 1 <= len(specs) <= 2:
        raise VitlensError(f"cka compares one model with itself or two models; {len(specs)} --model given.")
    if batch_size < MIN_BATCH:
        raise VitlensError(f"--batch-size must be at least {MIN_BATCH} (the unbiased HSIC estimator needs 4 "
                           f"images per minibatch), got {batch_size}.")
    if representation not in REPRESENTATIONS:
        raise VitlensError(f"--representation must be one of {', '.join(REPRESENTATIONS)}, got {representation}.")
    ctx = context(device)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    setup = {"models": [list(s) for s in specs], "images": [str(i) for i in images], "num_images": num_images,
             "sample": sample, "seed": seed, "batch_size": batch_size, "representation": representation,
             "layers_a": list(layers_a) if layers_a else None, "layers_b": list(layers_b) if layers_b else None,
             "random_init": random_init, "precision": precision, "world": ctx.world}
    partial = open_partial(out, "cka", ctx, setup, resume)
    models = load_models(specs, random_init=random_init, device=ctx.device)
    names = distinct_names(models)
    model_a, model_b = models[0], (models[1] if len(models) > 1 else None)
    modes = [m.training for m in models]
    reader_a = FeatureReader(model_a, layers_a, representation=representation, precision=precision)
    shared = model_b is None and not layers_b
    reader_b = None if shared else FeatureReader(model_b or model_a, layers_b, representation=representation,
                                                 precision=precision)
    acc = CKAAccumulator(reader_a.layers, None if shared else reader_b.layers)
    imgs_a = images_for(model_a, ns)
    imgs_b = images_for(model_b, ns) if model_b is not None else None
    with StopRequest() as stop:
        sharded_pass(_WholeBatches(ctx, batch_size), stop, partial, 0, acc, imgs_a,
                     lambda todo: stream_cka(acc, reader_a, imgs_a, reader_b, imgs_b, batch_size=batch_size,
                                             indices=todo, workers=workers),
                     desc=f"cka {names[0]}" + (f" vs {names[1]}" if model_b is not None else ""),
                     progress=progress)
    if imgs_b is not None:
        imgs_b.skipped = sorted({s for part in ctx.gather(imgs_b.skipped) for s in part}, key=lambda s: s.path)
    imgs_a.check_used(int(acc.n_images[0] + acc.n_images_dropped[0]))
    try:
        res = CKAResult.from_accumulator(acc, reader_a, reader_b, model_a=names[0], model_b=names[-1],
                                         batch_size=batch_size, was_training=modes)
    except ValueError as e:
        raise VitlensError(f"{e}; use more images or a smaller --batch-size (at least {MIN_BATCH}).") from e
    if ctx.is_main:
        record = RunRecord("cka", arguments=args_record(args) if args else {}, seed=seed, processes=ctx.world,
                           **res.to_dict(), sharding="minibatch k on rank k % processes",
                           models=[model_record(m) for m in models],
                           images=[s.record(res.n_images) | {"image_files": [str(p) for p in s.paths]}
                                   for s in (imgs_a, imgs_b) if s is not None])
        save_npy(out / "cka.npy", np.asarray(res.cka, dtype=np.float64))
        save_csv(out / "cka.csv", res.to_frame())
        fig = cka_figure([res])
        save_figure(fig, out / "cka.png")
        save_figure(fig, out / "cka.svg")
        plt.close(fig)
        record.save(out / "run.json")
        print(f"{res.model_a} vs {res.model_b}: {res.minibatches()}, {res.representation} representation; "
              f"wrote {out / 'cka.npy'}, cka.csv, cka.png, cka.svg and run.json")
        if res.small_minibatch():
            warnings.warn(res.reliability_note().replace("(batch size", "(--batch-size"), stacklevel=1)
    ctx.barrier()
    clear_partial(out, "cka", ctx.rank)
    ctx.close()
    return res


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "cka", parents=[common(models=True, images=True, out=True)],
        help="layer-by-layer CKA between one model and itself or two models (Raghu et al. 2021)",
        description="Minibatch linear CKA (unbiased HSIC) between every layer of the first --model and "
                    "every layer of the second (or the first again). Writes cka.npy, cka.csv, cka.png/.svg "
                    "and run.json into --out. --batch-size is the CKA minibatch (at least 4; the estimate "
                    "depends on it).")
    p.add_argument("--representation", choices=REPRESENTATIONS, default="tokens",
                   help="ViT block output as tokens x channels (default), the class token alone (cls), or "
                        "the patch-token mean (mean); CNN stages are always positions x channels")
    p.add_argument("--layer-a", action="append", dest="layers_a", metavar="MODULE",
                   help="module of the first model (repeat; default: every ViT block or CNN stage)")
    p.add_argument("--layer-b", action="append", dest="layers_b", metavar="MODULE",
                   help="module of the second model, or of the first again (repeat)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward pass precision (autocast); Gram matrices and HSIC sums are float64")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the partial sums it saved in --out")

    def _run(args):
        from .common import model_specs
        run_cka(model_specs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                workers=args.workers, representation=args.representation, layers_a=args.layers_a,
                layers_b=args.layers_b, precision=args.precision, overwrite=args.overwrite, resume=args.resume,
                args=args)

    p.set_defaults(func=_run)
