"""``vitlens rollout``: attention rollout maps of an image set, as arrays, overlays and a record.

Writes to ``--out``, for one model (several models: one sub-folder per model, named after it):

- ``rollout.npz``: one ``[grid_h, grid_w]`` float32 array per image, keyed by the image's file name
  (or, when two files share a name, by its path relative to the deepest folder holding all files);
  values are not rescaled (``run.json`` says what they are, under ``values``);
- ``overlays/<key>.png``: the map upsampled to the model input, over the preprocessed image;
- ``contact_sheet.png``: the first ``sheet_max`` overlays on one figure;
- ``deletion.csv`` and ``deletion.png`` when ``deletion_steps`` > 0;
- ``run.json``: models, conventions, images used and skipped, timings.

Under ``torchrun`` each process rolls out a shard of the images and draws their overlays; the
maps, deletion curves and skipped files are gathered so that rank 0 writes the other files with
every image, in the order a single process uses.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from typing import TYPE_CHECKING

import numpy as np

from ..analyses.attention.conventions import FILLS, HEAD_FUSIONS, METHODS, READOUTS
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npz
from ..runtime.precision import PRECISIONS
from ..runtime.resume import Interrupted, StopRequest
from ..runtime.sizes import input_size_arg
from ..runtime.slugs import model_slugs

if TYPE_CHECKING:
    from ..analyses.attention.rollout import RolloutMaps
    from ..analyses.attention.scores import DeletionCurve
    from ..data.images import ImageSet

# The analysis, torch and timm are imported when the job runs, so that help and argument errors
# answer at once.

__all__ = ["run_rollout", "register", "overlay_names"]

_SCALE = "minmax"  # overlay colour scale (see vitlens.plotting.rollout)


def _folders(specs: Sequence[tuple[str, str | None]]) -> list[str]:
    """Output sub-folder per model ("" for a single model), unique and file-system safe."""
    if len(specs) == 1:
        return [""]
    return model_slugs(specs)


def overlay_names(keys) -> dict[str, str]:
    """Each image key's overlay file: the key with a ``.png`` suffix in place of its own
    (``astronaut.jpg`` -> ``astronaut.png``), or with ``.png`` added where two keys would meet."""
    stems = [str(Path(k).with_suffix(".png")) for k in keys]
    return {k: s if stems.count(s) == 1 else f"{k}.png" for k, s in zip(keys, stems)}


def _products(folder: str, deletion: bool) -> list[str]:
    names = ["rollout.npz", "contact_sheet.png", "overlays"] + (["deletion.csv", "deletion.png"] if deletion else [])
    return [str(Path(folder) / n) if folder else n for n in names]


def run_rollout(specs: Sequence[tuple[str, str | None]], images, out, *, method: str = "rollout",
                head_fusion: str = "mean", discard_ratio: float = 0.0, residual_weight: float = 0.5,
                start_layer: int = 0, end_layer: int | None = None, target_class: int | None = None,
                readout: str = "auto", batch_size: int = 32, device: str = "cpu", random_init: bool = False,
                num_images: int | None = None, sample: bool = False, seed: int = 0, workers: int = 0,
                input_size: int | Sequence[int] | None = None,
                overwrite: bool = False, deletion_steps: int = 0, deletion_fill: str = "mean",
                sheet_max: int = 64, model_kwargs: dict | None = None, show_progress: bool = True,
                precision: str = "fp32",
                args: dict | None = None) -> dict:
    """Rollout maps of every image for every model, saved under ``out``.

    Args:
        specs: ``[(model name, checkpoint or None), ...]``.
        images: image files or folders.
        out: output folder; checked before anything is computed.
        deletion_steps: when > 0, also a deletion curve per image in that many steps.
        deletion_fill: what replaces removed patches (see :func:`vitlens.analyses.attention.scores.deletion_curve`).
        sheet_max: at most this many overlays on the contact sheet (every image gets its own PNG).
        input_size: resize images to this model input (one value or height, width) instead of the
            model's own data config; the model must accept it (``dynamic_img_size=True``, or a model
            built for that size).
        model_kwargs: passed to ``timm.create_model`` (for example ``dynamic_img_size=True``).
        args: the command's arguments, for the record.
        seed: seed of ``sample`` and of random weights (``random_init``).
        The other arguments are those of :func:`vitlens.analyses.attention.rollout.attention_rollout` and of the
        command line's image options.

    Under ``torchrun`` each process takes a shard of the images; rank 0 writes the files that
    cover all images (the record returned on every rank is the same).

    Returns:
        The run record (also written to ``out/run.json``).
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..analyses.attention.rollout import RolloutMaps, RolloutSettingsError, check_settings, image_keys, iter_rollout
    from ..analyses.attention.scores import DeletionCurve, deletion_curve, random_order_deletion
    from ..capture.attention import attention_modules
    from ..data.images import ImageSet, model_transform
    from ..plotting.rollout import contact_sheet_figure, plot_deletion, plot_overlay, to_display
    from ..runtime.distributed import PeerStopped, context
    from .common import display_name, load_models, model_record, progress

    check_settings(method, head_fusion, discard_ratio, residual_weight, readout)
    if deletion_fill not in FILLS or deletion_steps < 0 or batch_size < 1:
        raise RolloutSettingsError(f"deletion fill must be one of {', '.join(FILLS)} (got {deletion_fill!r}), "
                                   f"deletion steps at least 0 (got {deletion_steps}) and batch size at least "
                                   f"1 (got {batch_size}).")
    input_size = input_size_arg(input_size)
    ctx = context(device)
    folders = _folders(specs)
    root = prepare_out_dir(out, ["run.json"] + [p for f in folders for p in _products(f, deletion_steps > 0)],
                           overwrite)
    ctx.barrier()  # every process has checked the folder before any of them writes an overlay into it
    record = RunRecord("rollout", args=args or {}, processes=ctx.world, models=[])
    models = load_models(specs, random_init=random_init, device=ctx.device, seed=seed, **(model_kwargs or {}))
    for model in models:
        attention_modules(model)  # a CNN fails here, before any image is read

    for model, folder in zip(models, folders):
        name = display_name(model)
        dest = root / folder if folder else root
        imageset = ImageSet.for_model(model, images, input_size=input_size, num_images=num_images,
                                      sample=sample, seed=seed)
        keys = image_keys(imageset.paths)
        position = {k: i for i, k in enumerate(keys)}
        overlay = overlay_names(keys)
        cfg = model_transform(model, input_size)[1]
        parts: list[RolloutMaps] = []
        curves: list[DeletionCurve] = []
        baselines: list[DeletionCurve] = []  # the same removal in a random order of patches
        sheet: list[tuple[int, np.ndarray]] = []  # (image index, [height, width, 3]) for the contact sheet
        shard = ctx.shard(range(len(imageset)))
        def batches():
            """Each batch's maps, overlays and deletion curves; yields the batch size when done."""
            for x, part in iter_rollout(model, imageset, method=method, head_fusion=head_fusion,
                                        discard_ratio=discard_ratio, residual_weight=residual_weight,
                                        start_layer=start_layer, end_layer=end_layer, target_class=target_class,
                                        readout=readout, batch_size=batch_size, workers=workers,
                                        name=name, indices=shard, precision=precision):
                shown = to_display(x, cfg["mean"], cfg["std"])  # [batch, height, width, 3]
                for i, key in enumerate(part.names):
                    label = key if part.target is None or method == "rollout" else f"{key} (class {part.target[i]})"
                    ax = plot_overlay(part.maps[i], shown[i], layout=part.layout, title=label, scale=_SCALE)
                    save_figure(ax.figure, dest / "overlays" / overlay[key])
                    plt.close(ax.figure)
                room = max(0, sheet_max - len(sheet))
                sheet.extend(zip([position[k] for k in part.names[:room]], shown[:room]))
                if deletion_steps > 0:
                    curves.append(deletion_curve(model, x, part, layout=part.layout, target_class=part.target,
                                                 steps=deletion_steps, fill=deletion_fill, batch_size=batch_size))
                    baselines.append(random_order_deletion(
                        model, x, layout=part.layout, target_class=part.target, steps=deletion_steps,
                        fill=deletion_fill, batch_size=batch_size, names=part.names, seed=seed,
                        image_ids=part.indices))
                parts.append(part)
                yield x.shape[0]

        with progress(None, total=len(shard), desc=f"rollout {name}", enabled=show_progress and ctx.is_main) as bar, \
                StopRequest(resumable=False) as stop:
            try:
                for n in ctx.lockstep(batches(), stop):  # a failing or signalled process stops them all
                    bar.update(n)
            except PeerStopped as e:
                raise Interrupted(f"interrupted by {e.signal_name}; rollout keeps no partial state, so the "
                                  "outputs of this run are removed: run the same command again.",
                                  resumable=False) from None
        result, curve, baseline, imageset.skipped, shown_sheet = _gather(ctx, imageset, position, parts, curves,
                                                                         baselines, sheet, sheet_max)
        n_used = 0 if result is None else len(result)
        imageset.check_used(n_used)
        entry = {"model": model_record(model, result.layout.input_size), "display_name": name,
                 "folder": folder or ".", "input_size": list(result.layout.input_size),
                 "grid_size": list(result.layout.grid_size), "conventions": {**result.settings(), "precision": precision},
                 "npz_keys": "file name; path relative to the deepest common folder where file names repeat",
                 "overlay_colour_scale": f"{_SCALE}: each map from its own minimum to its own maximum",
                 "images": imageset.record(n_used), "contact_sheet_images": len(shown_sheet),
                 "predicted": None if result.predicted is None else dict(zip(result.names, result.predicted.tolist())),
                 "target": None if result.target is None else dict(zip(result.names, result.target.tolist()))}
        if ctx.is_main:
            save_npz(dest / "rollout.npz", {k: m.astype(np.float32) for k, m in zip(result.names, result.maps)})
            fig = contact_sheet_figure(result, shown_sheet, indices=range(len(shown_sheet)), scale=_SCALE)
            save_figure(fig, dest / "contact_sheet.png")
            plt.close(fig)
        if curve is not None:
            if ctx.is_main:
                frames = [curve.to_frame().assign(order="rollout"), baseline.to_frame().assign(order="random")]
                save_csv(dest / "deletion.csv", pd.concat(frames, ignore_index=True))
                fig, ax = plt.subplots(figsize=(4.5, 3.4))
                plot_deletion(curve, ax=ax, baseline=baseline)
                save_figure(fig, dest / "deletion.png")
                plt.close(fig)
            entry["deletion"] = {"steps": len(curve.fractions) - 1, "fill": curve.fill,
                                 "confidence": "softmax probability of the target class",
                                 "auc_rule": "trapezoid over the removed fraction in [0, 1]",
                                 "mean_auc": float(curve.auc.mean()),
                                 "auc": dict(zip(curve.names, curve.auc.tolist())),
                                 "random_order": f"each image's patches removed in a random order drawn from "
                                                 f"(seed {seed}, image index): the baseline a map must beat",
                                 "random_order_mean_auc": float(baseline.auc.mean())}
        record.data["models"].append(entry)
    if ctx.is_main:
        record.save(root / "run.json")
    ctx.barrier()
    ctx.close()
    return record.data


def _gather(ctx, imageset: ImageSet, position: dict[str, int], parts: list[RolloutMaps],
            curves: list[DeletionCurve], baselines: list[DeletionCurve], sheet: list[tuple[int, np.ndarray]],
            sheet_max: int):
    """Every process's maps, deletion curves (and their random-order baselines) and skipped files,
    joined in the image order of a single run, and the first ``sheet_max`` displayed images of the set.

    Returns ``(RolloutMaps or None, DeletionCurve or None, baseline DeletionCurve or None, skipped
    files, [height, width, 3] images)``.
    Each process keeps the first ``sheet_max`` displayed images of its own share; only those that
    are among the first ``sheet_max`` of the whole set travel.
    """
    from ..analyses.attention.rollout import RolloutMaps
    from ..analyses.attention.scores import DeletionCurve

    mine = (RolloutMaps.concat(parts) if parts else None, DeletionCurve.concat(curves) if curves else None,
            list(imageset.skipped), [i for i, _ in sheet], DeletionCurve.concat(baselines) if baselines else None)
    pieces = ctx.gather(mine)

    def in_order(items):
        items = [p for p in items if p is not None]
        if not items:
            return None
        joined = type(items[0]).concat(items)
        return joined.take(np.argsort([position[k] for k in joined.names], kind="stable"))

    result, curve, baseline = (in_order([p[k] for p in pieces]) for k in (0, 1, 4))
    file_index = {str(p): i for i, p in enumerate(imageset.paths)}
    skipped = sorted((s for p in pieces for s in p[2]), key=lambda s: file_index.get(s.path, len(file_index)))
    chosen = set(sorted(i for p in pieces for i in p[3])[:sheet_max])
    shown = sorted((pair for part in ctx.gather([(i, a) for i, a in sheet if i in chosen]) for pair in part),
                   key=lambda pair: pair[0])
    return result, curve, baseline, skipped, [a for _, a in shown]


def _cmd(args: argparse.Namespace) -> int:
    from .common import args_record, model_specs

    rec = run_rollout(model_specs(args), args.images, args.out, method=args.method, head_fusion=args.head_fusion,
                      discard_ratio=args.discard_ratio, residual_weight=args.residual_weight,
                      start_layer=args.start_layer, end_layer=args.end_layer, target_class=args.target_class,
                      readout=args.readout, batch_size=args.batch_size, device=args.device,
                      random_init=args.random_init, num_images=args.num_images, sample=args.sample, seed=args.seed,
                      workers=args.workers, input_size=args.input_size, overwrite=args.overwrite,
                      deletion_steps=args.deletion_steps,
                      deletion_fill=args.deletion_fill, sheet_max=args.sheet_max, precision=args.precision,
                      args=args_record(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    for m in rec["models"]:
        used = m["images"]
        extra = (f", mean deletion AUC {m['deletion']['mean_auc']:.3f} (random order "
                 f"{m['deletion']['random_order_mean_auc']:.3f})" if "deletion" in m else "")
        skipped = len(used["skipped"])
        print(f"{m['display_name']}: {used['n_images']} map{'s' if used['n_images'] != 1 else ''} "
              f"({skipped} file{'s' if skipped != 1 else ''} skipped){extra} "
              f"-> {Path(args.out) / m['folder']}")
    return 0


def register(subparsers, common) -> None:
    """Add the ``rollout`` subcommand."""
    p = subparsers.add_parser(
        "rollout", parents=[common(models=True, images=True, out=True)],
        help="attention rollout maps (plain or gradient-weighted) with overlays",
        description="Attention rollout (Abnar & Zuidema 2020) or gradient-weighted, class-specific rollout "
                    "(Chefer et al. 2021) for every image: rollout.npz, one overlay PNG per image, a contact "
                    "sheet and run.json in --out.")
    g = p.add_argument_group("rollout options")
    g.add_argument("--method", choices=METHODS, default="rollout",
                   help="rollout (class-agnostic) or grad-rollout (class-specific); default rollout")
    g.add_argument("--head-fusion", choices=HEAD_FUSIONS, default="mean", help="rollout: fuse heads by (default mean)")
    g.add_argument("--discard-ratio", type=float, default=0.0, metavar="R",
                   help="rollout: zero this share of the lowest fused weights per image and layer, never in "
                        "the class token's row or column (default 0)")
    g.add_argument("--residual-weight", type=float, default=0.5, metavar="W",
                   help="rollout: (1-W)*A + W*I, rows renormalised (default 0.5)")
    g.add_argument("--start-layer", type=int, default=0, metavar="I", help="first attention block (default 0)")
    g.add_argument("--end-layer", type=int, default=None, metavar="I", help="last attention block (default: the last)")
    g.add_argument("--target-class", type=int, default=None, metavar="C",
                   help="grad-rollout: class to explain (default: each image's predicted class)")
    g.add_argument("--readout", choices=READOUTS, default="auto",
                   help="auto: class-token row, or the mean over patch queries for models without a class token")
    g.add_argument("--deletion-steps", type=int, default=0, metavar="S",
                   help="also a deletion curve per image in S steps (default 0: none)")
    g.add_argument("--deletion-fill", choices=FILLS, default="mean",
                   help="removed patches become the image's mean (default) or zero after normalisation")
    g.add_argument("--input-size", type=int, nargs="+", metavar="PX",
                   help="model input size (one value, or height width) for models that accept several")
    g.add_argument("--sheet-max", type=int, default=64, metavar="N", help="overlays on the contact sheet (default 64)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward (and backward) pass precision; maps are combined in float32 or more")
    p.set_defaults(func=_cmd)
