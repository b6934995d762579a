"""``vitlens tokens``: output-token norms per block and the high-norm patch tokens (Darcet et al. 2024).

Writes, into ``--out``:

- ``tokens.csv``: one row per (model, block, token kind), blocks 0-based: ``model, block,
  depth_fraction, token_kind`` (prefix or patch), ``n_images, n_tokens, tokens_per_image``, the norm's
  mean, std, min, quantiles (q01, q05, q25, median, q75, q95, q99) and max, then, on patch rows,
  ``norm_factor, threshold, high_norm_share, high_norm_per_image, images_with_high_norm,
  cls_attention_to_high_norm, patch_attention_to_high_norm`` (mean over heads);
- ``tokens.npz``: ``model_names`` ``[model]`` and, for the ``i``-th model (0-based, in ``--model``
  order), ``m<i>_positions`` ``[block, grid_h, grid_w]`` (images with a high-norm token at each grid
  position), ``m<i>_threshold`` ``[block]``, ``m<i>_images_per_count`` ``[block, patch + 1]``,
  ``m<i>_cls_attention`` and ``m<i>_patch_attention`` ``[block, head]``, ``m<i>_hist``
  ``[block, kind, bin]`` (kinds prefix, patch) on ``m<i>_edges`` ``[bin + 1]``, ``m<i>_n_images``;
- ``token_norms.png``/``.svg``: norm histograms of chosen blocks, log norm axis (Darcet et al.'s view);
- ``high_norm_positions.png``/``.svg``: where the high-norm tokens lie on the grid;
- ``run.json``: the run record, with the high-norm rule in words.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..analyses.representations.tokens import (
    ATTENTION_BLOCKS,
    DEFAULT_NORM_FACTOR,
    TokenNorms,
    high_norm_rule,
    measured_blocks,
    token_norms,
)
from ..runtime.errors import VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npz
from ..runtime.precision import PRECISIONS
from .common import args_record, distinct_names, images_for, load_models, model_record

__all__ = ["run_tokens", "register", "PRODUCTS"]

PRODUCTS = ["tokens.csv", "tokens.npz", "token_norms.png", "token_norms.svg", "high_norm_positions.png",
            "high_norm_positions.svg", "run.json"]


def _arrays(results: Sequence[TokenNorms]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"model_names": np.array([r.model for r in results])}
    for i, r in enumerate(results):
        for key in ("positions", "threshold", "images_per_count", "cls_attention", "patch_attention", "hist",
                    "edges"):
            arrays[f"m{i}_{key}"] = np.asarray(getattr(r, key))
        arrays[f"m{i}_n_images"] = np.array(r.n_images, dtype=np.int64)
    return arrays


def run_tokens(specs: Sequence[tuple[str, str | None]], images: Sequence[str], out: str | Path, *,
               random_init: bool = False, device: str = "cpu", batch_size: int = 32, num_images: int | None = None,
               sample: bool = False, seed: int = 0, norm_factor: float = DEFAULT_NORM_FACTOR,
               attention_block: str = "same", figure_blocks: Sequence[int] | None = None, precision: str = "fp32",
               workers: int = 0, overwrite: bool = False, progress: bool = True,
               args: argparse.Namespace | None = None) -> list[TokenNorms]:
    """Token norms and high-norm tokens of every model over the same images; writes the files listed
    in the module docstring into ``out`` (checked before any model is loaded).

    Args:
        figure_blocks: blocks (1-based, as on figures) drawn in the figures; default four spread
            over depth, the last included.
    """
    import matplotlib.pyplot as plt

    from ..plotting.tokens import high_norm_positions_figure, token_norms_figure

    if not specs:
        raise VitlensError("no model given: pass --model NAME.")
    if not (np.isfinite(norm_factor) and norm_factor > 0):
        raise VitlensError(f"--norm-factor must be a positive number, got {norm_factor}.")
    if attention_block not in ATTENTION_BLOCKS:
        raise VitlensError(f"--attention-block must be one of {', '.join(ATTENTION_BLOCKS)}, got {attention_block}.")
    if figure_blocks is not None and any(b < 1 for b in figure_blocks):
        raise VitlensError(f"--figure-block counts blocks from 1, got {min(figure_blocks)}.")
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    models = load_models(specs, random_init=random_init, device=device, seed=seed)
    names = distinct_names(models)
    for m in models:  # refuse a model before reading any image
        blocks = len(measured_blocks(m))
        if figure_blocks is not None and max(figure_blocks) > blocks:
            raise VitlensError(f"--figure-block {max(figure_blocks)} is beyond the {blocks} blocks of "
                               f"{names[models.index(m)]} (blocks count from 1).")
    ns = argparse.Namespace(images=list(images), num_images=num_images, sample=sample, seed=seed)
    record = RunRecord("tokens", arguments=args_record(args) if args else {}, seed=seed,
                       high_norm_rule=high_norm_rule(norm_factor),
                       conventions={"norm": "L2 norm of each token of a block's output (the residual stream)",
                                    "norm_factor": norm_factor, "attention_block": attention_block,
                                    "passes": "two: norm histograms (plain forward), then marks and attention "
                                              "(exact attention captured)", "precision": precision,
                                    "blocks": "0-based in tokens.csv and tokens.npz, 1-based on figures"},
                       models=[])
    results = []
    for model, name in zip(models, names):
        imgs = images_for(model, ns)
        res = token_norms(model, imgs, norm_factor=norm_factor, attention_block=attention_block,
                          batch_size=batch_size, precision=precision, name=name, progress=progress, workers=workers)
        imgs.check_used(res.n_images)
        results.append(res)
        record.data["models"].append({**model_record(model), **res.to_dict(), "images": imgs.record(res.n_images),
                                      "image_files": [str(p) for p in imgs.paths]})
        print(_summary(res))
    frame = pd.concat([r.to_frame() for r in results], ignore_index=True)
    save_csv(out / "tokens.csv", frame)
    save_npz(out / "tokens.npz", _arrays(results))
    chosen = None if figure_blocks is None else [b - 1 for b in figure_blocks]
    for stem, make in (("token_norms", token_norms_figure), ("high_norm_positions", high_norm_positions_figure)):
        fig = make(results, blocks=chosen)
        save_figure(fig, out / f"{stem}.png")
        save_figure(fig, out / f"{stem}.svg")
        plt.close(fig)
    record.save(out / "run.json")
    print(f"wrote {out / 'tokens.csv'}, tokens.npz, token_norms.png/.svg, high_norm_positions.png/.svg and run.json")
    return results


def _summary(r: TokenNorms) -> str:
    share = r.high_norm_share
    b = int(len(share) - 1 - np.argmax(share[::-1]))
    cls = r.cls_attention_to_high_norm[b]
    tail = (f"; the class token gives them {cls:.1%} of its attention there" if np.isfinite(cls) else
            "; no class token")
    return (f"{r.model}: {r.n_images} images, {r.num_blocks} blocks; most high-norm patch tokens in block {b + 1}: "
            f"{share[b]:.2%} ({r.high_norm_per_image[b]:.2f} per image, threshold {r.threshold[b]:.3g})" + tail)


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "tokens", parents=[common(models=True, images=True, out=True)],
        help="output-token norms per block and the high-norm tokens (Darcet et al. 2024)",
        description="Norms of every block's output tokens (prefix and patch apart) over an image set, and the "
                    "high-norm patch tokens: a patch token is high-norm when its norm exceeds --norm-factor times "
                    "its block's median patch norm. Writes tokens.csv, tokens.npz, token_norms.png/.svg, "
                    "high_norm_positions.png/.svg and run.json into --out. Reads the images twice.")
    p.add_argument("--norm-factor", type=float, default=DEFAULT_NORM_FACTOR, metavar="F",
                   help=f"high-norm: above F times the block's median patch-token norm (default {DEFAULT_NORM_FACTOR:g}: "
                        "outliers in large ViTs sit about ten times above the bulk)")
    p.add_argument("--attention-block", choices=ATTENTION_BLOCKS, default="same",
                   help="attention read against a block's high-norm tokens: the block's own (same, default) or the "
                        "next block's, whose keys come from this block's output (next)")
    p.add_argument("--figure-block", type=int, action="append", dest="figure_blocks", metavar="N",
                   help="block drawn in the figures, counted from 1 (repeat; default four spread over depth)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward-pass precision; norms and sums are float32 or float64")

    def _run(args):
        from .common import model_specs
        run_tokens(model_specs(args), args.images, args.out, random_init=args.random_init, device=args.device,
                   batch_size=args.batch_size, num_images=args.num_images, sample=args.sample, seed=args.seed,
                   norm_factor=args.norm_factor, attention_block=args.attention_block,
                   figure_blocks=args.figure_blocks, precision=args.precision, workers=args.workers,
                   overwrite=args.overwrite, args=args)

    p.set_defaults(func=_run)
