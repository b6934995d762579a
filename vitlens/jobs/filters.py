"""``vitlens filters``: principal components of the RGB patch-embedding filters (ViT paper, Fig. 7 left).

Writes, into ``--out``:

- ``filters.npz``: ``model_names`` ``[model]`` and, for the ``i``-th model (0-based, in ``--model``
  order), ``m<i>_components`` ``[component, 3, patch_h, patch_w]``,
  ``m<i>_explained_variance_ratio`` ``[component]``, ``m<i>_mean_filter`` ``[3, patch_h, patch_w]`` and
  ``m<i>_filters_shape`` ``(dim, 3, patch_h, patch_w)``;
- ``filters.png`` and ``filters.svg``: the first components as RGB tiles, models side by side, on
  one shared normalisation stated in the title;
- ``scree.png``: the explained variance ratio per component;
- ``run.json``: the run record.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from ..analyses.embeddings.filters import EmbeddingFilters, embedding_filters
from ..runtime.errors import VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_figure, save_npz
from .common import args_record, distinct_names, load_models, model_record

__all__ = ["run_filters", "register", "PRODUCTS"]

PRODUCTS = ["filters.npz", "filters.png", "filters.svg", "scree.png", "run.json"]


def _arrays(results: Sequence[EmbeddingFilters]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"model_names": np.array([r.model for r in results])}
    for i, r in enumerate(results):
        arrays[f"m{i}_components"] = np.asarray(r.components, dtype=np.float32)
        arrays[f"m{i}_explained_variance_ratio"] = np.asarray(r.explained_variance_ratio)
        arrays[f"m{i}_mean_filter"] = np.asarray(r.mean_filter, dtype=np.float32)
        arrays[f"m{i}_filters_shape"] = np.array(r.filters_shape, dtype=np.int64)
    return arrays


def run_filters(specs: Sequence[tuple[str, str | None]], out: str | Path, *, random_init: bool = False,
                device: str = "cpu", n_components: int = 28, overwrite: bool = False,
                args: argparse.Namespace | None = None, verbose: bool = True) -> list[EmbeddingFilters]:
    """Decompose every model's patch-embedding filters and write the files listed in the module
    docstring into ``out`` (checked before any model is loaded).

    Args:
        specs: ``[(model name, checkpoint or None), ...]``.
        random_init: random weights (a baseline) instead of pretrained ones.
        n_components: components kept per model (28 in the ViT paper).
    """
    import matplotlib.pyplot as plt

    from ..plotting.filters import NORMALISATION, filters_figure, plot_scree

    if not specs:
        raise VitlensError("no model given: pass --model NAME.")
    if n_components < 1:
        raise VitlensError(f"--n-components must be at least 1, got {n_components}.")
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    record = RunRecord("filters", arguments=args_record(args) if args else {}, models=[],
                       normalisation=NORMALISATION)
    models = load_models(specs, random_init=random_init, device=device)
    names = distinct_names(models)
    results = [embedding_filters(m, n_components=n_components, name=n) for m, n in zip(models, names)]
    for m, r in zip(models, results):
        record.data["models"].append({**model_record(m), **r.to_dict()})
    save_npz(out / "filters.npz", _arrays(results))
    fig = filters_figure(results, max_components=n_components)
    save_figure(fig, out / "filters.png")
    save_figure(fig, out / "filters.svg")
    plt.close(fig)
    ax = plot_scree(results, max_components=n_components)
    save_figure(ax.figure, out / "scree.png")
    plt.close(ax.figure)
    record.save(out / "run.json")
    if verbose:
        for r in results:
            top = float(r.explained_variance_ratio[:min(3, r.n_components)].sum())
            print(f"{r.model}: {r.filters_shape[0]} filters of 3 x {r.patch_size[0]} x {r.patch_size[1]}; "
                  f"PC1-{min(3, r.n_components)} explain {100 * top:.1f}% of their variance")
        print(f"wrote {out / 'filters.npz'}, filters.png, filters.svg, scree.png and run.json")
    return results


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "filters", parents=[common(models=True, images=False, out=True)],
        help="principal components of the RGB patch-embedding filters (ViT paper Fig. 7 left)",
        description="PCA of a ViT's patch-embedding filters (one 3 x p x p filter per embedding "
                    "dimension); writes filters.npz, filters.png/.svg, scree.png and run.json into --out.")
    p.add_argument("--n-components", type=int, default=28, metavar="K",
                   help="principal components to keep and draw (default 28, as in the paper)")

    def _run(args):
        from .common import model_specs
        run_filters(model_specs(args), args.out, random_init=args.random_init, device=args.device,
                    n_components=args.n_components, overwrite=args.overwrite, args=args)

    p.set_defaults(func=_run)
