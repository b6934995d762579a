"""``vitlens cost``: parameters, FLOPs, peak memory and throughput of ViTs next to CNNs, by input size."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..analyses.cost import CostProfile, _load_average, cost_profile, own_px
from ..models.layout import is_vit, token_layout
from ..runtime.errors import UnsupportedModelError, VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure
from ..runtime.precision import PRECISIONS
from .common import args_record, display_name, distinct_names, load_models, model_record
from .compare import Spec, add_model_arguments, check_vit, model_pairs

__all__ = ["run_cost", "default_sizes", "register", "PRODUCTS"]

PRODUCTS = ["cost.csv", "cost.png", "cost.svg", "run.json"]


def default_sizes(model: nn.Module) -> list[int]:
    """Half, once and twice the model's own input side, each a multiple of a ViT's patch stride."""
    own = own_px(model)
    step = int(token_layout(model).patch_stride[0]) if is_vit(model) else 1
    return sorted({max(step, round(own * f / step) * step) for f in (0.5, 1, 2)})


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    bad = [s for s in sizes if s < 1]
    if bad:
        raise VitlensError(f"--input-size takes positive sides in pixels, got {', '.join(map(str, bad))}.")
    return sorted(set(int(s) for s in sizes))


def machine_record(device: str, precision: str) -> dict:
    """Where the timings were taken: platform, CPU count, torch threads and version, device, precision, and
    the 1, 5 and 15 minute load averages at the start (the profile adds those around the timings)."""
    rec = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "device": str(device), "precision": precision, "load_average_at_start": _load_average()}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        rec["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return rec


def run_cost(vit_specs: Sequence[Spec], cnn_specs: Sequence[Spec], out: str | Path, *,
             input_sizes: Sequence[int] | None = None, random_init: bool = False, device: str = "cpu",
             batch_size: int = 8, repeats: int = 5, warmup: int = 2, precision: str = "fp32", seed: int = 0,
             overwrite: bool = False, args: argparse.Namespace | None = None) -> CostProfile:
    """Profile every ViT and CNN at every input side and write ``cost.csv`` (tidy: model, kind, input_px,
    tokens, quantity, part, value, unit, ...), ``cost.png``, ``cost.svg`` and ``run.json`` (the reading
    and the machine) into ``out``. Every model and size is checked before anything is measured, and
    nothing is written until everything is."""
    import matplotlib.pyplot as plt

    from ..plotting.cost import cost_figure

    if not vit_specs and not cnn_specs:
        raise VitlensError("nothing to profile: pass --vit NAME and/or --cnn NAME (for example --vit "
                           "vitlens/vit-tiny-shapes --cnn vitlens/resnet-tiny-shapes).")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise VitlensError(f"--batch-size and --repeats must be at least 1 and --warmup at least 0, got "
                           f"{batch_size}, {repeats} and {warmup}.")
    sizes = _check_sizes(input_sizes) if input_sizes else None
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    vits = load_models(vit_specs, random_init=random_init, device=device, seed=seed)
    cnns = load_models(cnn_specs, random_init=random_init, device=device, seed=seed)
    for m in vits:
        check_vit(m)
    for m in cnns:
        if is_vit(m):
            raise UnsupportedModelError(f"--cnn {display_name(m)} is a Vision Transformer; pass it with --vit.")
    names = distinct_names(vits + cnns)
    sizes = sizes or default_sizes((vits + cnns)[0])
    record = RunRecord("cost", arguments=args_record(args) if args else {}, seed=seed,
                       machine=machine_record(device, precision), input_sizes=sizes)
    res = cost_profile(vits + cnns, sizes, batch_size=batch_size, device=device, precision=precision,
                       repeats=repeats, warmup=warmup, name=names)
    record.update(models=[{**model_record(m), "kind": res.kind_of(n)} for m, n in zip(vits + cnns, names)])
    frame, fig, reading = res.to_frame(), cost_figure(res), res.reading()  # everything before any file
    record.update(reading=reading, profile=res.to_dict())
    try:
        save_csv(out / "cost.csv", frame)
        save_figure(fig, out / "cost.png")
        save_figure(fig, out / "cost.svg")
    finally:
        plt.close(fig)
    record.save(out / "run.json")
    for line in reading:
        print(line)
    print(f"wrote {out / 'cost.csv'}, cost.png, cost.svg and run.json")
    return res


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "cost", parents=[common(models=False, images=False, out=True)],
        help="parameters, FLOPs, peak memory and throughput of ViTs and CNNs by input size",
        description="For every --vit and --cnn at every --input-size: parameters by part, FLOPs of one "
                    "image's forward pass (attention products, transformer linears, convolutions, other), "
                    "peak forward memory at batch 1 and --batch-size (ViTs with fused and explicit "
                    "attention), and images/s at --batch-size. No images are needed. Writes cost.csv, "
                    "cost.png, cost.svg and run.json into --out.")
    add_model_arguments(p)
    p.add_argument("--random-init", action="store_true", help="random weights (costs do not depend on them)")
    p.add_argument("--input-size", type=int, nargs="+", action="extend", metavar="PX",
                   help="input sides in pixels, each measured (--input-size 224 320, or the flag repeated; "
                        "default: half, once and twice the first model's own)")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per size (default 5)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed runs first (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (default 0)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="memory and throughput under autocast (FLOPs are counted in fp32)")
    p.set_defaults(batch_size=8)

    def _run(args):
        run_cost(*model_pairs(args), args.out, input_sizes=args.input_size, random_init=args.random_init,
                 device=args.device, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
                 precision=args.precision, seed=args.seed, overwrite=args.overwrite, args=args)

    p.set_defaults(func=_run)
