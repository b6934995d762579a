"""``vitlens probe``: few-shot linear-probe accuracy per layer (ViT paper Table 8; Raghu et al. Figs. 11, 13).

Writes, into ``--out``:

- ``probe.csv``: one row per model, layer and representation: ``model, kind, layer, depth,
  depth_fraction, representation, shots, repeats, accuracy, accuracy_std, chance, n_classes,
  n_test, n_tokens`` (``depth`` counts layers from 0; ``accuracy`` the mean over repeats,
  ``accuracy_std`` their standard deviation);
- ``probe_repeats.csv``: every repeat's accuracy and the ``lambda`` it used;
- ``probe.png`` and ``probe.svg``: accuracy against normalised depth, one panel per model;
- ``run.json``: the run record (shots drawn, classes, conventions).

Labels come from the images' folders: a folder per class (``DIR/<class>/<image>``, as torchvision's
``ImageFolder`` reads it) or a shapes folder written by ``save_images`` (its ``labels.csv``). The
features of all images are kept in memory for the probes (see
:mod:`~vitlens.analyses.representations.probe_features`), so the pass runs in one process.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analyses.representations.probe_features import REPRESENTATIONS, ProbeFeatures
from ..analyses.representations.probes import ProbeResult, probe_layers
from ..data.labels import check_classes, labelled_images
from ..runtime.batches import iter_batches
from ..runtime.errors import VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure
from ..runtime.precision import PRECISIONS
from .common import args_record, display_name, load_models, model_record, progress

__all__ = ["run_probe", "register", "PRODUCTS"]

PRODUCTS = ["probe.csv", "probe_repeats.csv", "probe.png", "probe.svg", "run.json"]


def _regularization(value: str) -> float | str:
    if value == "heldout":
        return value
    try:
        lam = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambda takes a positive number or 'heldout', not {value!r}") from None
    if not lam > 0 or lam == float("inf"):
        raise argparse.ArgumentTypeError(f"--lambda must be positive and finite, got {value}")
    return lam


def run_probe(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
              random_init: bool = False, device: str = "cpu", batch_size: int = 32, num_images: int | None = None,
              sample: bool = False, seed: int = 0, workers: int = 0, shots: int = 10, repeats: int = 5,
              regularization: float | str = 1.0, standardize: bool = True, representations: Sequence[str] | None = None,
              max_tokens: int | None = 64, layers: Sequence[str] | None = None, precision: str = "fp32",
              overwrite: bool = False, progress_bar: bool = True, args: argparse.Namespace | None = None
              ) -> list[ProbeResult]:
    """Few-shot probes of every model on the same labelled image files (each through its own
    preprocessing); writes the files listed in the module docstring. Models run one at a time."""
    import matplotlib.pyplot as plt

    from ..plotting.probes import probes_figure

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise VitlensError("probe keeps every image's features for the probes and runs in one process; "
                           "run it without torchrun.")
    if shots < 1 or repeats < 1:
        raise VitlensError(f"--shots and --repeats must be at least 1, got {shots} and {repeats}.")
    if regularization == "heldout" and shots < 2:
        raise VitlensError("--lambda heldout chooses lambda on held-out shots and needs --shots 2 or more.")
    if max_tokens is not None and max_tokens < 1:
        raise VitlensError(f"--max-tokens must be at least 1, got {max_tokens}.")
    data = labelled_images(images, num_images=num_images, sample=sample, seed=seed)
    check_classes(data.labels, shots, data.class_names)                 # before anything is written
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    record = RunRecord("probe", arguments=args_record(args) if args else {}, seed=seed, models=[],
                       labels={"layout": list(data.layout), "classes": data.counts()},
                       image_files=[str(p) for p in data.paths])
    results, bases = [], []
    for spec in specs:
        (model,) = load_models([spec], random_init=random_init, device=device, seed=seed)
        base = display_name(model)
        bases.append(base)
        name = base if bases.count(base) == 1 else f"{base} #{bases.count(base)}"   # the same model twice
        imgs = data.image_set(model)
        feats = ProbeFeatures(model, len(imgs), layers, representations=representations, max_tokens=max_tokens,
                              seed=seed, precision=precision)
        was_training = model.training
        for x, idx in progress(iter_batches(imgs, batch_size, workers=workers), total=-(-len(imgs) // batch_size),
                               desc=f"probe {name}", unit="batch", enabled=progress_bar):
            feats.add(x, idx)
        imgs.check_used(int(feats.seen.sum()))
        res = probe_layers(feats, data.labels, data.class_names, shots=shots, repeats=repeats,
                           regularization=regularization, standardize=standardize, seed=seed, model=name,
                           was_training=was_training, progress=progress_bar)
        results.append(res)
        record.data["models"].append({**model_record(model), **res.to_dict(), "images": imgs.record(res.n_images)})
        print(_summary(res))
        del model, feats
    save_csv(out / "probe.csv", pd.concat([r.to_frame() for r in results], ignore_index=True))
    save_csv(out / "probe_repeats.csv", pd.concat([r.repeats_frame() for r in results], ignore_index=True))
    fig = probes_figure(results)
    save_figure(fig, out / "probe.png")
    save_figure(fig, out / "probe.svg")
    plt.close(fig)
    record.save(out / "run.json")
    print(f"wrote {out / 'probe.csv'}, probe_repeats.csv, probe.png, probe.svg and run.json")
    return results


def _summary(r: ProbeResult) -> str:
    parts = [f"{rep} {r.accuracy[0, j]:.1%} -> {r.accuracy[-1, j]:.1%}" for j, rep in enumerate(r.representations)]
    return (f"{r.model}: {r.shots}-shot probes, {r.n_classes} classes (chance {r.chance:.1%}), {r.n_test} test images, "
            f"{r.repeats} draws; first -> last layer: {', '.join(parts)}")


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "probe", parents=[common(models=True, images=True, out=True)],
        help="few-shot linear-probe accuracy per layer, ViT beside CNN (ViT paper; Raghu et al. 2021)",
        description="Closed-form regularised least squares from each layer's frozen features to {-1, 1} class "
                    "targets, fitted on --shots images per class and scored on all others, repeated over "
                    "--repeats seeded draws. Labels: a folder per class (DIR/<class>/<image>) or a shapes "
                    "folder with labels.csv. Writes probe.csv, probe_repeats.csv, probe.png/.svg and run.json.")
    p.add_argument("--shots", type=int, default=10, metavar="K", help="images per class to fit on (default 10)")
    p.add_argument("--repeats", type=int, default=5, metavar="R",
                   help="independent seeded draws of the shots (default 5); the spread is their std")
    p.add_argument("--lambda", dest="regularization", type=_regularization, default=1.0, metavar="L",
                   help="ridge penalty lambda on standardised features (default 1.0), or 'heldout': chosen "
                        "per probe from 2^-6..2^16 on held-out shots")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="z-score features with the shots' mean and std before the fit (default on)")
    p.add_argument("--representation", action="append", dest="representations", choices=REPRESENTATIONS,
                   help="cls (class token), gap (patch-token or spatial mean), token (each position on its "
                        "own, accuracy averaged); repeat; default: every one the model has")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N",
                   help="probe at most N positions per layer for 'token' (a seeded sample; default 64; 0: all)")
    p.add_argument("--layer", action="append", dest="layers", metavar="MODULE",
                   help="module name to probe (repeat; default: every ViT block or CNN stage)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward pass precision (autocast); the probes are solved in float64")

    def _run(args):
        from .common import model_specs
        run_probe(model_specs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                  batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                  workers=args.workers, shots=args.shots, repeats=args.repeats,
                  regularization=args.regularization, standardize=args.standardize,
                  representations=args.representations, max_tokens=args.max_tokens or None, layers=args.layers,
                  precision=args.precision, overwrite=args.overwrite, args=args)

    p.set_defaults(func=_run)
