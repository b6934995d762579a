"""``vitlens compare``: ViT attention distance and ViT/CNN receptive fields on one axis, in pixels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from ..analyses.attention.streaming import attention_distance
from ..analyses.fields.effective import effective_receptive_field
from ..analyses.locality import Locality, locality
from ..capture.attention import attention_modules
from ..capture.outputs import default_layers
from ..models.layout import is_vit, token_layout
from ..runtime.errors import UnsupportedModelError, VitlensError
from ..runtime.help import MODEL_NAMES
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure
from ..runtime.precision import PRECISIONS
from .common import args_record, display_name, distinct_names, images_for, load_models, model_record

__all__ = ["run_compare", "measure_locality", "register", "add_model_arguments", "model_pairs", "check_vit",
           "check_cnn", "PRODUCTS"]

PRODUCTS = ["locality.csv", "locality.png", "locality.svg", "run.json"]

Spec = tuple[str, "str | None"]


def check_vit(model: nn.Module, flag: str = "--vit") -> None:
    """Refuse a model whose attention distance vitlens cannot measure (windowed models pass)."""
    from ..models.families.registry import adapter_for

    try:
        if not hasattr(adapter_for(model), "window_layout"):
            token_layout(model)
        attention_modules(model)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{flag} {display_name(model)}: {e} Pass CNNs with --cnn.") from None


def check_cnn(model: nn.Module, flag: str = "--cnn") -> None:
    """Refuse a Vision Transformer given as a CNN, and a model whose stages vitlens does not know."""
    from ..models.families.registry import adapter_for

    windowed = hasattr(_adapter_or_none(model, adapter_for), "window_layout")
    if is_vit(model) or windowed:
        kind = "windowed Vision Transformer" if windowed else "Vision Transformer"
        raise UnsupportedModelError(f"{flag} {display_name(model)} is a {kind}; pass it with --vit, "
                                    "which measures its attention distance as well as its receptive field.")
    default_layers(model)


def _adapter_or_none(model: nn.Module, adapter_for):
    try:
        return adapter_for(model)
    except UnsupportedModelError:
        return None


def measure_locality(vits: Sequence[nn.Module], cnns: Sequence[nn.Module], args: argparse.Namespace, *,
                     batch_size: int = 32, precision: str = "fp32", workers: int = 0, progress: bool = True,
                     record: RunRecord | None = None) -> Locality:
    """Attention distance and ERF of every ViT, ERF of every CNN, over the image files that
    ``args.images/num_images/sample/seed`` name, each model with its own preprocessing."""
    distances, fields = [], []
    for model, kind in [(m, "vit") for m in vits] + [(m, "cnn") for m in cnns]:
        imgs = images_for(model, args)
        name = display_name(model)
        rec = {**model_record(model), "kind": kind}
        if kind == "vit":
            d = attention_distance(model, imgs, batch_size=batch_size, precision=precision, name=name,
                                   progress=progress, workers=workers)
            distances.append(d)
            rec["attention_distance"] = d.to_dict()
        f = effective_receptive_field(model, imgs, batch_size=batch_size, progress=progress, name=name,
                                      precision=precision, workers=workers)
        fields.append(f)
        rec.update(receptive_field=f.to_dict(), images=imgs.record(f.n_images), cost=_cost(model, f.input_size[0]))
        if record is not None:
            record.data.setdefault("models", []).append(rec)
            record.data["image_files"] = [str(p) for p in imgs.paths]
    return locality(distances, fields)


def _cost(model, input_px: int) -> dict:
    """Parameters by part and FLOPs of one forward pass by part at the size compared (exact counts;
    see :func:`vitlens.cost_profile`)."""
    from ..analyses.cost import cost_profile

    try:
        frame = cost_profile(model, [int(input_px)], measure_memory=False, measure_throughput=False).to_frame()
    except (VitlensError, LookupError) as e:  # counted where it can be; the comparison itself stands
        return {"input_px": int(input_px), "error": str(e)}
    out = {"input_px": int(input_px)}
    for quantity in ("parameters", "flops"):
        rows = frame[frame.quantity == quantity]
        out[quantity] = {str(p): int(v) for p, v in zip(rows.part, rows.value)}
    return out


def _summary(res: Locality) -> list[str]:
    lines = []
    for name, s in res.summary().items():
        if s["kind"] == "vit" and "attention_first_px" in s:
            lines.append(f"{name} (ViT, {s['input_px']:.0f} px input): head-mean attention distance "
                         f"{s['attention_first_px']:.1f} px in the first layer (most local head "
                         f"{s['attention_min_head_first_px']:.1f}), {s['attention_last_px']:.1f} px in the last; "
                         f"ERF spread {s['erf_first_px']:.1f} to {s['erf_last_px']:.1f} px "
                         f"(uniform attention: {s['uniform_attention_px']:.1f})")
        else:
            lines.append(f"{name} ({s['kind'].upper() if s['kind'] == 'cnn' else s['kind']}, {s['input_px']:.0f} px "
                         f"input): ERF spread {s['erf_first_px']:.1f} px in the first stage, "
                         f"{s['erf_last_px']:.1f} px in the last")
    return lines


def run_compare(vit_specs: Sequence[Spec], cnn_specs: Sequence[Spec], images: Sequence[str], out: str | Path, *,
                random_init: bool = False, device: str = "cpu", batch_size: int = 32,
                num_images: int | None = None, sample: bool = False, seed: int = 0, workers: int = 0,
                precision: str = "fp32", overwrite: bool = False, progress: bool = True,
                args: argparse.Namespace | None = None) -> Locality:
    """Measure every ViT and CNN on the same image files and write ``locality.csv`` (tidy: model,
    kind, metric, layer, depth_fraction, value_px, ...), ``locality.png``, ``locality.svg`` and
    ``run.json`` into ``out``. Every model is loaded and checked before any image is read."""
    import matplotlib.pyplot as plt

    from ..plotting.locality import locality_figure

    if not vit_specs and not cnn_specs:
        raise VitlensError("nothing to compare: pass --vit NAME and/or --cnn NAME (for example --vit "
                           "vitlens/vit-tiny-shapes --cnn vitlens/resnet-tiny-shapes).")
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    vits = load_models(vit_specs, random_init=random_init, device=device, seed=seed)
    cnns = load_models(cnn_specs, random_init=random_init, device=device, seed=seed)
    for m in vits:
        check_vit(m)
    for m in cnns:
        check_cnn(m)
    distinct_names(vits + cnns)
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    record = RunRecord("compare", arguments=args_record(args) if args else {}, seed=seed, models=[])
    res = measure_locality(vits, cnns, ns, batch_size=batch_size, precision=precision, workers=workers,
                           progress=progress, record=record)
    save_csv(out / "locality.csv", res.to_frame())
    fig = locality_figure(res)
    save_figure(fig, out / "locality.png")
    save_figure(fig, out / "locality.svg")
    plt.close(fig)
    record.update(summary=res.summary())
    record.save(out / "run.json")
    for line in _summary(res):
        print(line)
    print(f"wrote {out / 'locality.csv'}, locality.png, locality.svg and run.json")
    return res


def _pairs(names: list[str], ckpts: list[str], flag: str) -> list[Spec]:
    """Pair ``--vit``/``--cnn`` names with their checkpoints in order."""
    if len(ckpts) > len(names):
        raise VitlensError(f"{len(ckpts)} --{flag}-checkpoint given for {len(names)} --{flag}; each "
                           f"checkpoint pairs with the --{flag} at the same position.")
    return [(n, ckpts[i] if i < len(ckpts) else None) for i, n in enumerate(names)]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--vit``, ``--cnn`` and their checkpoints (read back with :func:`model_pairs`)."""
    p.add_argument("--vit", action="append", default=[], metavar="NAME", help=f"a ViT: {MODEL_NAMES}; repeat")
    p.add_argument("--cnn", action="append", default=[], metavar="NAME", help=f"a CNN: {MODEL_NAMES}; repeat")
    p.add_argument("--vit-checkpoint", action="append", default=[], metavar="PATH",
                   help="local weights for the --vit at the same position")
    p.add_argument("--cnn-checkpoint", action="append", default=[], metavar="PATH",
                   help="local weights for the --cnn at the same position")


def model_pairs(args: argparse.Namespace) -> tuple[list[Spec], list[Spec]]:
    """``([(vit, checkpoint or None), ...], [(cnn, checkpoint or None), ...])`` from the arguments."""
    return _pairs(args.vit, args.vit_checkpoint, "vit"), _pairs(args.cnn, args.cnn_checkpoint, "cnn")


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "compare", parents=[common(models=False, images=True, out=True)],
        help="ViT attention distance against ViT and CNN receptive fields, on one axis in pixels",
        description="For each --vit: mean attention distance of every head by layer, and the gradient "
                    "receptive field of its blocks; for each --cnn: the receptive-field spread of its "
                    "stages. x = relative depth (0 to 1), y = input pixels. Writes locality.csv, "
                    "locality.png, locality.svg and run.json into --out.")
    add_model_arguments(p)
    p.add_argument("--random-init", action="store_true", help="random weights (a baseline)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward (and backward) pass precision (reductions in float32)")

    def _run(args):
        run_compare(*model_pairs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                    batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                    workers=args.workers, precision=args.precision, overwrite=args.overwrite, args=args)

    p.set_defaults(func=_run)
