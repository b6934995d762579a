"""``vitlens erf``: the effective receptive field by depth for one or several CNNs and ViTs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch.nn as nn

from ..errors import UnsupportedModelError, VitlensError
from ..io import RunRecord, prepare_out_dir, save_csv, save_figure
from ..layout import token_layout
from ..receptive_field import INPUT_GRADIENTS, OBJECTIVES, UNIT_POSITIONS, ReceptiveField, effective_receptive_field
from .common import args_record, display_name, images_for, load_models, model_record

__all__ = ["run_erf", "register", "PRODUCTS"]

PRODUCTS = ["receptive_field.csv", "receptive_field.png", "run.json"]


def _size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    s = [int(input_size)] if isinstance(input_size, int) else [int(v) for v in input_size]
    if len(s) not in (1, 2) or min(s) < 1:
        raise VitlensError(f"--input-size takes one or two positive numbers (height width), got {input_size}.")
    return (s[0], s[0]) if len(s) == 1 else (s[0], s[1])


def _load(spec: tuple[str, str | None], random_init: bool, device: str, size: tuple[int, int] | None) -> nn.Module:
    """Load one model; a ViT that cannot take ``size`` is built again for it (timm resamples its
    position embedding). CNNs take any size as they are."""
    (model,) = load_models([spec], random_init=random_init, device=device)
    if size is None or getattr(model, "patch_embed", None) is None:
        return model
    try:
        token_layout(model, size)
        return model
    except UnsupportedModelError:
        (model,) = load_models([spec], random_init=random_init, device=device, img_size=size)
        return model


def run_erf(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
            random_init: bool = False, device: str = "cpu", batch_size: int = 32,
            num_images: int | None = None, sample: bool = False, seed: int = 0, workers: int = 0,
            input_size: int | Sequence[int] | None = None, layers: Sequence[str] | None = None,
            objective: str = "sum", input_gradient: str = "abs", unit_position: str = "receptive_field",
            overwrite: bool = False, progress: bool = True,
            args: argparse.Namespace | None = None) -> list[ReceptiveField]:
    """Measure the effective receptive field of every model over the same image files (each through
    its own preprocessing) and write ``receptive_field.csv``, ``receptive_field.png`` and ``run.json``
    into ``out``. Models are loaded and measured one at a time."""
    import matplotlib.pyplot as plt

    from ..plotting.receptive_field import receptive_field_figure

    size = _size(input_size)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    record = RunRecord("erf", arguments=args_record(args) if args else {}, seed=seed, models=[])
    results = []
    for spec in specs:
        model = _load(spec, random_init, device, size)
        imgs = images_for(model, ns, input_size=size)
        name = display_name(model)
        res = effective_receptive_field(model, _Loader(imgs, workers), layers=layers, batch_size=batch_size,
                                        progress=progress, objective=objective, input_gradient=input_gradient,
                                        unit_position=unit_position, name=name)
        results.append(res)
        record.data["models"].append({**model_record(model, res.input_size), **res.to_dict(),
                                      "images": imgs.record(res.n_images),
                                      "image_files": [str(p) for p in imgs.paths]})
        print(_summary(res))
        del model
    save_csv(out / "receptive_field.csv", pd.concat([r.to_frame() for r in results], ignore_index=True))
    fig = receptive_field_figure(results)
    save_figure(fig, out / "receptive_field.png")
    plt.close(fig)
    record.save(out / "run.json")
    print(f"wrote {out / 'receptive_field.csv'}, receptive_field.png and run.json")
    return results


class _Loader:
    """An ImageSet seen through DataLoader workers (the same interface for the analysis)."""

    def __init__(self, images, workers: int):
        self.images, self.workers = images, workers

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int):
        return self.images.batches(batch_size, num_workers=self.workers)

    def check_used(self, n_used: int) -> None:
        self.images.check_used(n_used)


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

    def _run(args):
        from ..cli import model_specs
        run_erf(model_specs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                workers=args.workers, input_size=args.input_size, layers=args.layers, objective=args.objective,
                input_gradient=args.input_gradient, unit_position=args.unit_position,
                overwrite=args.overwrite, args=args)

    p.set_defaults(func=_run)
