"""``vitlens posembed``: position-embedding similarity maps (ViT paper, Fig. 7 centre).

Writes, into ``--out``:

- ``pos_embed_similarity_<model>.npy``, one per model (however many there are): float32
  ``[grid_h, grid_w, grid_h, grid_w]`` cosine similarities, where ``<model>`` is the model name with
  characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``, plus the
  checkpoint's file stem when one is given (``pos_embed_summary.json`` names each model's file);
- ``pos_embed_similarity.png`` and ``.svg``: the tile figure, models side by side;
- ``pos_embed_summary.json``: per model, the distance correlation over all and over interior patches,
  the border-ring contrast, the row/column score and notes;
- ``run.json``: the run record.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..analyses.embeddings.position import PositionEmbeddingSimilarity, position_embedding_similarity
from ..runtime.io import RunRecord, prepare_out_dir, save_figure, save_npy, write_json
from ..runtime.sizes import input_size_arg
from ..runtime.slugs import model_slugs
from .common import args_record, display_name, load_models, model_record

__all__ = ["run_posembed", "register", "similarity_file_names"]

FIGURE_STEM = "pos_embed_similarity"
SUMMARY_JSON = "pos_embed_summary.json"
RUN_JSON = "run.json"

DEFINITION = ("cosine similarity between the learned absolute position embeddings of every pair of "
              "patches, [query_row, query_col, key_row, key_col]; prefix-token entries (class, "
              "distillation, registers) excluded")
CONVENTIONS = {
    "distance_correlation": "Pearson r between similarity and Euclidean distance in patch-grid steps, "
                            "over ordered pairs of distinct patches",
    "distance_correlation_all": "the same as distance_correlation: every pair of distinct patches",
    "distance_correlation_interior": "Pearson r between similarity and distance over ordered pairs of distinct "
                                     "patches that are both off the border ring (not in the first or last row "
                                     "or column); null on grids with fewer than 3 rows or columns",
    "border_contrast": "mean similarity between two distinct border-ring patches (border_border_mean) minus the "
                       "mean similarity between a border-ring patch and an interior one (border_interior_mean); "
                       "large and positive when edge patches resemble each other and differ from the interior",
    "row_column_score": "mean similarity to patches sharing a row or a column (self excluded) minus "
                        "the mean similarity to patches sharing neither",
    "row_column_excess": "mean, over pairs sharing a row or a column, of similarity minus the mean "
                         "similarity of pairs sharing neither at the same distance (linearly "
                         "interpolated); about 0 when similarity depends on distance alone",
    "resampling": "timm resample_abs_pos_embed, only when an input size other than the model's own "
                  "is asked for",
}


def similarity_file_names(specs: Sequence[tuple[str, str | None]]) -> list[str]:
    """The ``.npy`` file name of each ``(name, checkpoint)``, one per model (made unique), named the
    same way whether one model is given or several."""
    return [f"{FIGURE_STEM}_{s}.npy" for s in model_slugs(specs)]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def run_posembed(specs: Sequence[tuple[str, str | None]], out, *, random_init: bool = False,
                 seed: int = 0, device: str = "cpu", input_size=None, tile_step: int | None = None,
                 overwrite: bool = False, args: argparse.Namespace | None = None,
                 verbose: bool = True) -> list[PositionEmbeddingSimilarity]:
    """Compute, draw and save position-embedding similarity for every model in ``specs``.

    Args:
        specs: ``[(model name, checkpoint or None), ...]``.
        out: output folder; checked before any model is loaded.
        random_init: random weights instead of pretrained ones, drawn from ``seed``.
        device: torch device to load the models on.
        input_size: None for each model's own table; ``(height, width)`` or one int resamples every
            table to that size with timm's resampling.
        tile_step: draw every k-th tile; None picks a step that keeps large grids readable.
        overwrite: replace results already in ``out``.
        args: the parsed command line, recorded in ``run.json``.
        verbose: print a short summary.

    Returns:
        One result per model, in order.
    """
    if not specs:
        from ..runtime.errors import VitlensError
        raise VitlensError("no model given: pass --model NAME.")
    if tile_step is not None and tile_step < 1:
        from ..runtime.errors import VitlensError
        raise VitlensError(f"--tile-step must be 1 or more, got {tile_step}.")
    size = input_size_arg(input_size)
    npy_names = similarity_file_names(specs)
    products = npy_names + [f"{FIGURE_STEM}.png", f"{FIGURE_STEM}.svg", SUMMARY_JSON, RUN_JSON]
    out = prepare_out_dir(out, products, overwrite=overwrite)
    record = RunRecord("posembed", args=args_record(args) if args is not None else
                       {"models": [list(s) for s in specs], "random_init": random_init, "seed": seed, "device": device,
                        "input_size": size, "tile_step": tile_step, "overwrite": overwrite})

    models = load_models(specs, random_init=random_init, device=device, seed=seed)
    results = [position_embedding_similarity(m, size, name=display_name(m)) for m in models]

    import matplotlib.pyplot as plt

    from ..plotting.posembed import auto_tile_step, position_embedding_figure

    for res, npy in zip(results, npy_names):
        save_npy(out / npy, res.similarity)
    fig = position_embedding_figure(results, tile_step=tile_step)
    try:
        save_figure(fig, out / f"{FIGURE_STEM}.png")
        save_figure(fig, out / f"{FIGURE_STEM}.svg")
    finally:
        plt.close(fig)

    entries = []
    for res, npy in zip(results, npy_names):
        entry = res.summary()
        entry["file"] = npy
        entry["figure_tile_step"] = tile_step if tile_step is not None else auto_tile_step(res.grid_size)
        entries.append(entry)
    write_json(out / SUMMARY_JSON, {"definition": DEFINITION, "conventions": CONVENTIONS, "models": entries})
    record.update(models=[model_record(m) for m in models],
                  outputs=products, results=[{"model": e["model"], "file": e["file"],
                                              "grid_size": e["grid_size"]} for e in entries])
    record.save(out / RUN_JSON)

    if verbose:
        for e in entries:
            print(f"{e['model']}: {e['grid_size'][0]} x {e['grid_size'][1]} patches; similarity vs "
                  f"distance r = {_fmt(e['distance_correlation_all'])} over all patches, "
                  f"{_fmt(e['distance_correlation_interior'])} over interior ones; border contrast = "
                  f"{_fmt(e['border_contrast'])}; row/column score = {_fmt(e['row_column_score'])} "
                  f"({_fmt(e['row_column_excess'])} beyond distance)")
            for n in e["notes"]:
                print(f"  note: {n}")
        print(f"wrote {', '.join(products)} to {out}")
    return results


def _command(args: argparse.Namespace) -> int:
    from .common import model_specs

    run_posembed(model_specs(args), args.out, random_init=args.random_init, seed=args.seed, device=args.device,
                 input_size=args.input_size, tile_step=args.tile_step, overwrite=args.overwrite, args=args)
    return 0


def register(subparsers, common) -> None:
    """Add the ``posembed`` subcommand."""
    p = subparsers.add_parser(
        "posembed", parents=[common(models=True, images=False, out=True)],
        help="cosine similarity of the patches' learned position embeddings (ViT paper, Fig. 7 centre)",
        description="Cosine similarity between the learned absolute position embeddings of every pair "
                    "of patches, drawn as the ViT paper's tile figure. Writes pos_embed_similarity.npy "
                    "(with several models: pos_embed_similarity_<model>.npy each), "
                    "pos_embed_similarity.png/.svg, pos_embed_summary.json and run.json.")
    p.add_argument("--input-size", type=int, nargs="+", metavar="PX",
                   help="resample the table to this input size (one value, or height width) with timm's "
                        "resampling, as fine-tuning at that resolution does (default: the model's own)")
    p.add_argument("--tile-step", type=int, metavar="K",
                   help="draw the tiles of every K-th patch row and column (default: automatic, at most "
                        "16 tiles per side)")
    p.set_defaults(func=_command)
