"""``vitlens erf``: the effective receptive field by depth for one or several CNNs and ViTs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch.nn as nn

from ..analyses.fields.effective import (
    INPUT_GRADIENTS,
    OBJECTIVES,
    UNIT_POSITIONS,
    ReceptiveField,
    ReceptiveFieldAccumulator,
    stream_receptive_field,
)
from ..data.images import model_transform
from ..models.layout import token_layout
from ..runtime.distributed import context
from ..runtime.errors import UnsupportedModelError, VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure
from ..runtime.precision import PRECISIONS
from ..runtime.resume import StopRequest, clear_partial
from ..runtime.sizes import input_size_arg
from .common import args_record, display_name, images_for, load_models, model_record
from .sharded import open_partial, sharded_pass

__all__ = ["run_erf", "register", "PRODUCTS"]

PRODUCTS = ["receptive_field.csv", "receptive_field.png", "receptive_field.svg", "run.json"]


def _load(spec: tuple[str, str | None], random_init: bool, device: str, size: tuple[int, int] | None,
          seed: int) -> nn.Module:
    """Load one model; a ViT that cannot take ``size`` is built again for it (timm resamples its
    position embedding). CNNs take any size as they are."""
    (model,) = load_models([spec], random_init=random_init, device=device, seed=seed)
    if size is None or getattr(model, "patch_embed", None) is None:
        return model
    try:
        token_layout(model, size)
        return model
    except UnsupportedModelError:
        (model,) = load_models([spec], random_init=random_init, device=device, seed=seed, img_size=size)
        return model


def run_erf(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
            random_init: bool = False, device: str = "cpu", batch_size: int = 32,
            num_images: int | None = None, sample: bool = False, seed: int = 0, workers: int = 0,
            input_size: int | Sequence[int] | None = None, layers: Sequence[str] | None = None,
            objective: str = "sum", input_gradient: str = "abs", unit_position: str = "receptive_field",
            precision: str = "fp32", overwrite: bool = False, resume: bool = False, progress: bool = True,
            args: argparse.Namespace | None = None) -> list[ReceptiveField]:
    """Measure the effective receptive field of every model over the same image files (each through
    its own preprocessing) and write ``receptive_field.csv``, ``receptive_field.png`` and ``run.json``
    into ``out``. Models are loaded and measured one at a time.

    Under ``torchrun`` each process reads a shard of the images, the gradient-map sums
    ``[layer, height, width]`` and per-image spread sums are added over processes, and rank 0
    writes the files. On SIGINT/SIGTERM the sums are saved between batches and
    :class:`~vitlens.runtime.resume.Interrupted` is raised; ``resume=True`` continues from them.
    """
    import matplotlib.pyplot as plt

    from ..plotting.receptive_field import receptive_field_figure

    if batch_size < 1:
        raise VitlensError(f"--batch-size must be at least 1, got {batch_size}.")
    size = input_size_arg(input_size)
    ctx = context(device)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    setup = {"models": [list(s) for s in specs], "images": [str(i) for i in images], "num_images": num_images,
             "sample": sample, "seed": seed, "input_size": list(size) if size else None,
             "layers": list(layers) if layers else None, "objective": objective,
             "input_gradient": input_gradient, "unit_position": unit_position, "random_init": random_init,
             "precision": precision, "world": ctx.world}
    partial = open_partial(out, "erf", ctx, setup, resume)
    record = RunRecord("erf", arguments=args_record(args) if args else {}, seed=seed, processes=ctx.world,
                       models=[])
    results = []
    with StopRequest() as stop:
        for mi, spec in enumerate(specs):
            model = _load(spec, random_init, ctx.device, size, seed)
            imgs = images_for(model, ns, input_size=size)
            name = display_name(model)
            acc = ReceptiveFieldAccumulator(model, layers, objective=objective, input_gradient=input_gradient,
                                            unit_position=unit_position, precision=precision)
            acc.prepare(model_transform(model, size)[1]["input_size"][-2:])
            sharded_pass(ctx, stop, partial, mi, acc, imgs,
                         lambda todo: stream_receptive_field(acc, imgs, batch_size=batch_size, indices=todo,
                                                             workers=workers),
                         desc=f"erf {name}", progress=progress)
            n = int(acc.n_images[0])
            imgs.check_used(n)
            res = acc.result(name)
            results.append(res)
            record.data["models"].append({**model_record(model, res.input_size), **res.to_dict(),
                                          "images": imgs.record(res.n_images),
                                          "image_files": [str(p) for p in imgs.paths]})
            if ctx.is_main:
                print(_summary(res))
            del model, acc
    if ctx.is_main:
        save_csv(out / "receptive_field.csv", pd.concat([r.to_frame() for r in results], ignore_index=True))
        fig = receptive_field_figure(results)
        save_figure(fig, out / "receptive_field.png")
        save_figure(fig, out / "receptive_field.svg")
        plt.close(fig)
        record.save(out / "run.json")
        print(f"wrote {out / 'receptive_field.csv'}, receptive_field.png, receptive_field.svg and run.json")
    ctx.barrier()
    clear_partial(out, "erf", ctx.rank)
    ctx.close()
    return results


def _summary(r: ReceptiveField) -> str:
    return (f"{r.model}: {r.n_images} images at {r.input_size[0]} x {r.input_size[1]} px, {r.num_layers} layers; "
            f"ERF spread {r.spread_px[0]:.1f} px at {r.layers[0]} to {r.spread_px[-1]:.1f} px at {r.layers[-1]} "
            f"(a map over the whole image: {r.uniform_spread_px[-1]:.1f} px)")


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "erf", parents=[common(models=True, images=True, out=True)],
        help="effective receptive field by depth, CNNs and ViTs (Luo et al.; Raghu et al. Fig. 6)",
        description="Input gradient of the centre unit of every stage (CNN) or block (ViT), averaged over "
                    "images, with its spread and 50% and 90% mass radii in pixels. Writes receptive_field.csv, "
                    "receptive_field.png and run.json into --out.")
    p.add_argument("--input-size", type=int, nargs="+", metavar="PX",
                   help="input size (one value, or height width); ViTs are built for it (default: each "
                        "model's own)")
    p.add_argument("--layer", action="append", dest="layers", metavar="MODULE",
                   help="module name to measure (repeat; default: every CNN stage or ViT block)")
    p.add_argument("--objective", choices=OBJECTIVES, default="sum",
                   help="sum: centre activation summed over channels (default; Luo, Raghu); "
                        "relu_sum: of its ReLU (RepLKNet)")
    p.add_argument("--input-gradient", choices=INPUT_GRADIENTS, default="abs",
                   help="abs: |gradient| summed over colours (default); relu: ReLU of it (RepLKNet)")
    p.add_argument("--unit-position", choices=UNIT_POSITIONS, default="receptive_field",
                   help="input position of the centre unit: centre of its theoretical field (default, "
                        "grid where unknown) or (i + 0.5) * stride")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the partial sums it saved in --out")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward and backward pass precision (autocast); sums are float64")

    def _run(args):
        from .common import model_specs
        run_erf(model_specs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                workers=args.workers, input_size=args.input_size, layers=args.layers, objective=args.objective,
                input_gradient=args.input_gradient, unit_position=args.unit_position,
                precision=args.precision, overwrite=args.overwrite, resume=args.resume, args=args)

    p.set_defaults(func=_run)
