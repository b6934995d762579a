"""``vitlens report``: every analysis on a set of models and images, as one HTML page.

With no model given it runs offline on the shipped models (vit-tiny-shapes, its tenth-of-the-data
twin and resnet-tiny-shapes) over freshly generated held-out shapes images with object masks:
mean attention distance, position-embedding similarity, attention rollout with its mask score, ViT
versus CNN locality with the receptive fields, and whether less training data cost the ViT its
local heads. ``--vit/--cnn/--images`` run the same report on any models and images.

Writes ``OUT/index.html``, ``OUT/figures/*.png``, ``OUT/data/*`` (every number behind the page)
and ``OUT/run.json``; the page is written last, so a page that exists is complete.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch.nn as nn

from ..data.images import ImageSet
from ..distance import AttentionDistance, attention_distance
from ..errors import UnsupportedModelError, VitlensError
from ..io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npz, versions, write_json, write_text
from ..locality import locality
from ..models import zoo_models
from ..receptive_field import effective_receptive_field
from ..report_page import Figure, Section, render_page
from .common import WorkerImages, display_name, images_for, load_models, model_record, progress
from .compare import _check_cnn, _check_vit, add_model_arguments, model_pairs

__all__ = ["run_report", "register", "DEFAULT_VITS", "DEFAULT_CNNS", "HELD_OUT_START", "LOCAL_FRACTION"]

DEFAULT_VITS = ("vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct")
DEFAULT_CNNS = ("vitlens/resnet-tiny-shapes",)
DATA_PAIR = ("vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct")  # (all the data, a tenth)
HELD_OUT_START = 2000  # test-split images 0 to 1999 measured the shipped models' accuracy; start after them
LOCAL_FRACTION = 0.5  # a head is local when its distance is below this share of uniform attention's
SHEET_IMAGES = 16
PRODUCTS = ["index.html", "run.json", "figures", "data"]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.split("/")[-1])


def _model_mask(mask: np.ndarray, transform) -> np.ndarray:
    """A boolean image mask ``[H, W]`` through the geometric steps (resize, crop) of a model's eval
    transform: the object's coverage of each input pixel, ``[height, width]`` in [0, 1]."""
    import torchvision.transforms as T
    from PIL import Image

    im = Image.fromarray(mask.astype(np.float32) * 255.0, mode="F")
    for t in getattr(transform, "transforms", []):
        if isinstance(t, (T.Resize, T.CenterCrop)):
            im = t(im)
    return np.clip(np.asarray(im, dtype=np.float64) / 255.0, 0.0, 1.0)


# --------------------------------------------------------------------------- sections


def _distance_section(ds: list[AttentionDistance]) -> Section:
    lines = []
    numbers = []
    for d in ds:
        m = d.distance.mean(1)
        li, hi = np.unravel_index(np.nanargmin(d.distance), d.distance.shape)
        lines.append(f"{d.model}: heads average {m[0]:.1f} px in layer 1 and {m[-1]:.1f} px in layer "
                     f"{d.num_layers}, against {d.uniform:.1f} px for attention spread evenly; its most local "
                     f"head (layer {li + 1}, head {hi}) looks {d.distance[li, hi]:.1f} px "
                     f"({d.distance[li, hi] / d.uniform:.0%} of even).")
        numbers += [(f"{d.model}: layer 1 / last layer, head mean", f"{m[0]:.2f} / {m[-1]:.2f} px"),
                    (f"{d.model}: most local head", f"{d.distance[li, hi]:.2f} px (layer {li + 1}, head {hi})")]
    numbers.append(("uniform attention over all patches", ", ".join(sorted({f"{d.uniform:.2f} px" for d in ds}))))
    return Section(
        "Mean attention distance by depth",
        figures=[Figure("figures/attention_distance.png",
                        "Mean attention distance of every head against depth (left) and each model's heads "
                        "sorted in its lowest and highest layers (right).")],
        reading=["How far each head looks, in input pixels, averaged over queries and images (ViT paper "
                 "Fig. 7 right): low dots are local heads, dots near the dashed line attend everywhere.",
                 " ".join(lines)],
        numbers=numbers, files=[("attention_distance.csv", "data/attention_distance.csv")],
        anchor="attention-distance")


def _posembed_section(results, skipped: list[str]) -> Section:
    if not results:
        return Section("Position-embedding similarity", note="No ViT here has a learned absolute position "
                       "table: " + "; ".join(skipped), anchor="position-embeddings")
    lines, numbers = [], []
    for r in results:
        corr, rc = r.distance_correlation, r.row_column_score
        lines.append(f"{r.model_name}: similarity {'falls' if corr < 0 else 'does not fall'} with distance "
                     f"(r = {corr:+.2f} between cosine similarity and patch distance) and patches in the same "
                     f"row or column are {rc:+.2f} more similar than others.")
        numbers += [(f"{r.model_name}: correlation of similarity with distance", f"{corr:+.3f}"),
                    (f"{r.model_name}: same row/column minus other patches", f"{rc:+.3f}")]
    return Section(
        "Position-embedding similarity",
        figures=[Figure("figures/position_embeddings.png",
                        "Each tile: cosine similarity of one patch's position embedding with every patch's.")],
        reading=["Each tile is one patch; its colours show how similar that patch's learned position "
                 "embedding is to every other patch's (ViT paper Fig. 7 centre).", " ".join(lines)],
        numbers=numbers, files=[("position_embeddings.json", "data/position_embeddings.json")],
        note=("No learned table: " + "; ".join(skipped)) if skipped else "", anchor="position-embeddings")


def _rollout_section(scores: pd.DataFrame, has_masks: bool, sheet_model: str) -> Section:
    lines, numbers = [], []
    for name, g in scores.groupby("model", sort=False):
        if has_masks:
            share, chance, hit = g.mask_share.mean(), g.mask_area.mean(), g.pointing_hit.mean()
            lines.append(f"{name}: {share:.0%} of the rollout mass lies on the object, which covers {chance:.0%} "
                         f"of the input (a map blind to the object would put {chance:.0%} there); the map's "
                         f"peak is on the object in {hit:.0%} of images.")
            numbers += [(f"{name}: mean mask share (chance)", f"{share:.3f} ({chance:.3f})"),
                        (f"{name}: pointing game hits", f"{hit:.1%} of {len(g)} images")]
        if g.correct.notna().any():
            acc = g.correct.astype(float).mean()
            numbers.append((f"{name}: correct on these images", f"{acc:.1%} of {int(g.correct.notna().sum())}"))
    figures = [Figure("figures/rollout.png", f"Attention rollout of {sheet_model} over the first images "
                      "(each map scaled from its minimum to its maximum).")]
    if has_masks:
        figures.append(Figure("figures/rollout_mask_share.png",
                              "Share of each image's rollout map on its object, against the object's area."))
    return Section(
        "Attention rollout",
        figures=figures,
        reading=["Attention flow from the input patches to the class token through all layers (Abnar & "
                 "Zuidema 2020), with half of each layer's weight on the residual path.",
                 " ".join(lines) if lines else "These images have no object masks, so only the maps are shown."],
        numbers=numbers, files=[("rollout_scores.csv", "data/rollout_scores.csv")], anchor="rollout")


def _locality_section(res) -> Section:
    s = res.summary()
    vit = [(n, v) for n, v in s.items() if v["kind"] == "vit" and "attention_first_px" in v]
    cnn = [(n, v) for n, v in s.items() if v["kind"] == "cnn"]
    parts = []
    for n, v in vit:
        parts.append(f"{n}'s first-layer heads average {v['attention_first_px']:.1f} px of attention distance, but "
                     f"its first block's gradient receptive field spreads {v['erf_first_px']:.1f} px")
    for n, v in cnn:
        parts.append(f"{n}'s receptive field grows from {v['erf_first_px']:.1f} px in its first stage to "
                     f"{v['erf_last_px']:.1f} px in its last")
    numbers = []
    for n, v in s.items():
        if "attention_first_px" in v:
            numbers.append((f"{n}: attention distance, first / last layer",
                            f"{v['attention_first_px']:.2f} / {v['attention_last_px']:.2f} px"))
        numbers.append((f"{n}: receptive-field spread, first / last layer",
                        f"{v['erf_first_px']:.2f} / {v['erf_last_px']:.2f} px ({v['input_px']:.0f} px input)"))
    return Section(
        "ViT versus CNN locality",
        figures=[Figure("figures/locality.png", "Attention distance of every ViT head (dots, mean line), the ViT's "
                        "and the CNN's gradient receptive-field spread, against relative depth, in pixels."),
                 Figure("figures/receptive_field.png", "Effective receptive field by depth, and its maps.")],
        reading=["How far each layer looks, on one axis: ViT heads by attention distance, every model by the "
                 "spread of its effective receptive field (Luo et al. 2016; Raghu et al. 2021).",
                 "; ".join(parts) + "." if parts else ""],
        numbers=numbers, files=[("locality.csv", "data/locality.csv"), ("receptive_field.csv", "data/receptive_field.csv")],
        anchor="locality")


def _local_heads(d: AttentionDistance, fraction: float) -> tuple[int, int, float]:
    """Local heads in the lower half of the layers: (count, heads there, their mean distance)."""
    low = d.distance[: max(1, d.num_layers // 2)]
    return int((low < fraction * d.uniform).sum()), int(low.size), float(low.mean())


def _data_section(full: AttentionDistance, less: AttentionDistance, fraction: float) -> Section:
    nf, total, mf = _local_heads(full, fraction)
    nl, _, ml = _local_heads(less, fraction)
    half = max(1, full.num_layers // 2)
    if nf == 0 and nl == 0:
        verdict = (f"Neither model has a local head in layers 1-{half} (none below {fraction:g} x uniform), so "
                   "these models cannot show the loss of local heads Raghu et al. report; with a tenth of the "
                   f"data the lower-layer heads average {ml:.1f} px against {mf:.1f} px.")
    elif nl < nf:
        verdict = (f"With a tenth of the data the ViT has {nl} local heads in layers 1-{half} against {nf} with all "
                   f"of it, and its lower-layer heads look {ml - mf:+.1f} px farther on average: less data, fewer "
                   "local heads, as Raghu et al. found.")
    else:
        verdict = (f"With a tenth of the data the ViT has {nl} local heads in layers 1-{half} against {nf} with all "
                   f"of it (lower-layer heads average {ml:.1f} against {mf:.1f} px): here less data did not cost "
                   "local heads.")
    return Section(
        "Less training data: local heads",
        figures=[Figure("figures/less_data.png", "Attention distance by depth of the ViT trained on all the images "
                        "and of the same ViT trained on a tenth of them, with the local-head line.")],
        reading=["Raghu et al. (2021) found that ViTs trained on less data lose the local heads of their lower "
                 "layers; here the same ViT is trained on all and on a tenth of the shapes images, for as many steps.",
                 verdict],
        numbers=[(f"{full.model}: local heads in layers 1-{half}", f"{nf} of {total} (mean {mf:.2f} px)"),
                 (f"{less.model}: local heads in layers 1-{half}", f"{nl} of {total} (mean {ml:.2f} px)"),
                 ("local-head threshold", f"{fraction:g} x uniform = {fraction * full.uniform:.2f} px")],
        anchor="less-data")


# --------------------------------------------------------------------------- the job


def _shapes_images(out: Path, n: int, seed: int) -> Path:
    from ..data.shapes import save_images

    save_images(out / "shapes", n, seed=seed, split="test", start=HELD_OUT_START)
    return out / "shapes" / "images"


def _rollout(model: nn.Module, imgs: ImageSet, batch_size: int, workers: int, with_masks: bool, sheet: bool):
    """Rollout maps of every image and, with masks, each map's share on its object; returns
    ``(scores frame, RolloutMaps, display images for the sheet)``."""
    import timm.data

    from ..data.shapes import label_of, load_mask
    from ..plotting.rollout import to_display
    from ..rollout import RolloutMaps, image_keys, iter_rollout
    from ..scores import grid_mask, mask_share, pointing_hit

    name = display_name(model)
    cfg = timm.data.resolve_data_config({}, model=model)
    by_key = dict(zip(image_keys(imgs.paths), imgs.paths))
    parts, shown = [], []
    for x, part in iter_rollout(model, imgs, batch_size=batch_size, num_workers=workers, model_name=name):
        parts.append(part)
        if sheet and len(shown) < SHEET_IMAGES:
            shown.extend(to_display(x, cfg["mean"], cfg["std"])[: SHEET_IMAGES - len(shown)])
    imgs.check_used(sum(len(p) for p in parts))
    maps = RolloutMaps.concat(parts)
    paths = [by_key[k] for k in maps.names]
    labels = [label_of(p) for p in paths]
    n_classes = getattr(model, "num_classes", 0)
    correct = [None if (lab is None or maps.predicted is None or n_classes != 8) else bool(maps.predicted[i] == lab)
               for i, lab in enumerate(labels)]
    frame = pd.DataFrame({"model": name, "image": list(maps.names), "predicted": maps.predicted,
                          "label": labels, "correct": correct})
    if with_masks:
        masks = np.stack([_model_mask(load_mask(p), imgs.transform) for p in paths])
        frame["mask_share"] = mask_share(maps, masks)
        frame["mask_area"] = grid_mask(masks, maps.layout).mean(axis=(-2, -1))
        frame["pointing_hit"] = pointing_hit(maps, masks)
    return frame, maps, shown


def run_report(out: str | Path, *, vits: Sequence[tuple[str, str | None]] | None = None,
               cnns: Sequence[tuple[str, str | None]] | None = None, images: Sequence[str] | None = None,
               num_images: int = 200, batch_size: int = 32, device: str = "cpu", precision: str = "fp32",
               workers: int = 0, seed: int = 0,
               local_fraction: float = LOCAL_FRACTION, overwrite: bool = False, show_progress: bool = True,
               command: str = "") -> Path:
    """Run every analysis and write the report into ``out``; returns the path of ``index.html``.

    Args:
        vits, cnns: ``[(name, checkpoint or None), ...]``; both None: the shipped models.
        images: image files or folders; None: ``num_images`` generated held-out shapes images (with
            masks, written to ``out/shapes``), drawn with ``seed``.
        num_images: images used (generated, or the first of ``images``).
        precision: forward pass of the attention-distance analysis (reductions are float32).
        local_fraction: a head is local below this share of uniform attention's distance.
    """
    import matplotlib.pyplot as plt

    from ..data.shapes import load_mask
    from ..plotting.distance import distance_figure
    from ..plotting.posembed import plot_position_embedding_similarity
    from ..plotting.receptive_field import receptive_field_figure
    from ..plotting.report import plot_local_heads, plot_mask_scores
    from ..plotting.rollout import plot_contact_sheet
    from ..posembed import position_embedding_similarity

    start = time.time()
    default = vits is None and cnns is None
    vit_specs = [(n, None) for n in DEFAULT_VITS] if default else list(vits or [])
    cnn_specs = [(n, None) for n in DEFAULT_CNNS] if default else list(cnns or [])
    if not vit_specs and not cnn_specs:
        raise VitlensError("no model given: pass --vit NAME and/or --cnn NAME, or neither for the shipped models.")
    if num_images < 1:
        raise VitlensError(f"--num-images must be at least 1, got {num_images}.")
    out = prepare_out_dir(out, PRODUCTS + ([] if images else ["shapes"]), overwrite)
    steps = 1 + 4 * len(vit_specs) + len(cnn_specs) + 1  # images; distance, posembed, rollout, ERF; page
    bar = progress(None, total=steps, desc="report", unit="step", enabled=show_progress)

    def step(what: str):
        bar.set_postfix_str(what)
        bar.update(1)

    models = load_models(vit_specs + cnn_specs, device=device, seed=seed)
    vit_models, cnn_models = models[:len(vit_specs)], models[len(vit_specs):]
    for m in vit_models:
        _check_vit(m)
    for m in cnn_models:
        _check_cnn(m)
    if images:
        image_args = argparse.Namespace(images=list(images), num_images=num_images, sample=False, seed=seed)
        source = f"{', '.join(map(str, images))} (first {num_images} files)"
    else:
        folder = _shapes_images(out, num_images, seed)
        image_args = argparse.Namespace(images=[str(folder)], num_images=None, sample=False, seed=seed)
        source = (f"{num_images} generated held-out shapes images (test split, seed {seed}, images {HELD_OUT_START} "
                  f"to {HELD_OUT_START + num_images - 1}; the models never saw them), in shapes/")
    step("images")
    figs, data = out / "figures", out / "data"
    record = RunRecord("report", images=source, models=[], seed=seed, device=device)
    sections: list[Section] = []
    sets = {id(m): images_for(m, image_args) for m in models}
    has_masks = all(load_mask(p) is not None for p in next(iter(sets.values())).paths)

    # attention distance
    distances = []
    for m in vit_models:
        distances.append(attention_distance(m, sets[id(m)], batch_size=batch_size, name=display_name(m),
                                            precision=precision, progress=show_progress, workers=workers))
        step(f"attention distance {display_name(m)}")
    if distances:
        save_csv(data / "attention_distance.csv", pd.concat([d.to_frame() for d in distances], ignore_index=True))
        fig = distance_figure(distances)
        save_figure(fig, figs / "attention_distance.png")
        plt.close(fig)
        sections.append(_distance_section(distances))

    # position embeddings
    pos, skipped = [], []
    for m in vit_models:
        try:
            pos.append(position_embedding_similarity(m, model_name=display_name(m)))
        except UnsupportedModelError as e:
            skipped.append(f"{display_name(m)} ({e})")
        step(f"position embeddings {display_name(m)}")
    if vit_models:
        if pos:
            write_json(data / "position_embeddings.json", [r.summary() for r in pos])
            fig, _ = plot_position_embedding_similarity(pos, panel_size=4.6)
            save_figure(fig, figs / "position_embeddings.png")
            plt.close(fig)
        sections.append(_posembed_section(pos, skipped))

    # rollout
    frames = []
    for i, m in enumerate(vit_models):
        frame, maps, shown = _rollout(m, sets[id(m)], batch_size, workers, has_masks, sheet=i == 0)
        frames.append(frame)
        save_npz(data / f"rollout_{_slug(display_name(m))}.npz", {k: v.astype(np.float32)
                                                                  for k, v in zip(maps.names, maps.maps)})
        if i == 0:
            fig = plot_contact_sheet(maps, shown, indices=range(len(shown)), ncols=8)
            save_figure(fig, figs / "rollout.png")
            plt.close(fig)
        step(f"rollout {display_name(m)}")
    if frames:
        scores = pd.concat(frames, ignore_index=True)
        save_csv(data / "rollout_scores.csv", scores)
        if has_masks:
            ax = plot_mask_scores({n: g.mask_share.to_numpy() for n, g in scores.groupby("model", sort=False)},
                                  {n: g.mask_area.to_numpy() for n, g in scores.groupby("model", sort=False)})
            save_figure(ax.figure, figs / "rollout_mask_share.png")
            plt.close(ax.figure)
        sections.append(_rollout_section(scores, has_masks, display_name(vit_models[0])))

    # receptive fields and locality
    fields = []
    for m in models:
        fields.append(effective_receptive_field(m, WorkerImages(sets[id(m)], workers), batch_size=batch_size,
                                                progress=show_progress, name=display_name(m)))
        step(f"receptive field {display_name(m)}")
    res = locality(distances, fields)
    save_csv(data / "locality.csv", res.to_frame())
    save_csv(data / "receptive_field.csv", pd.concat([f.to_frame() for f in fields], ignore_index=True))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    res.plot(ax=ax)
    save_figure(fig, figs / "locality.png")
    plt.close(fig)
    fig = receptive_field_figure(fields)
    save_figure(fig, figs / "receptive_field.png")
    plt.close(fig)
    sections.append(_locality_section(res))

    # less data
    by_name = {d.model: d for d in distances}
    if all(n in by_name for n in DATA_PAIR):
        full, less = by_name[DATA_PAIR[0]], by_name[DATA_PAIR[1]]
        fig, ax = plt.subplots(figsize=(6.5, 4.3))
        plot_local_heads([full, less], local_fraction, ax=ax)
        save_figure(fig, figs / "less_data.png")
        plt.close(fig)
        sections.append(_data_section(full, less, local_fraction))

    # record and page
    zoo = zoo_models()
    for m, f in zip(models, fields):
        entry = {**model_record(m), "kind": f.kind, "images": sets[id(m)].record(f.n_images)}
        if display_name(m) in zoo and zoo[display_name(m)].accuracy is not None:
            entry["held_out_accuracy"] = zoo[display_name(m)].accuracy
        record.data["models"].append(entry)
    record.update(summary=res.summary(), seconds=round(time.time() - start, 1), sections=[s.title for s in sections])
    record.save(out / "run.json")
    n_used = min(f.n_images for f in fields)
    skipped_files = {s["path"] for m in models for s in sets[id(m)].record(0)["skipped"]}
    rec_rows = [("images", f"{n_used} used; {source}"), ("skipped files", str(len(skipped_files)))]
    for e in record.data["models"]:
        acc = f", held-out accuracy {100 * e['held_out_accuracy']:.2f}%" if "held_out_accuracy" in e else ""
        rec_rows.append((e.get("name", "model"), f"{e['kind'].upper() if e['kind'] == 'cnn' else 'ViT'}; "
                                                  f"weights: {e.get('weights', '?')}{acc}"))
    v = versions()
    rec_rows += [("device", device), ("precision", precision), ("seed", str(seed)), ("batch size", str(batch_size)),
                 ("time", f"{time.time() - start:.0f} s, finished {time.strftime('%Y-%m-%d %H:%M:%S')}"),
                 ("versions", ", ".join(f"{k} {val}" for k, val in v.items()))]
    page = render_page("vitlens report", f"{len(models)} models, {n_used} images. How far ViT heads look, what "
                       "their position embeddings learned, where attention flows, and how local they are "
                       "next to a CNN.", sections, rec_rows, command=command)
    index = write_text(out / "index.html", page)
    step("page")
    bar.close()
    return index


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "report", parents=[common(models=False, images=False, out=True)],
        help="every analysis as one HTML page (default: the shipped models, offline)",
        description="Attention distance, position-embedding similarity, attention rollout with its mask "
                    "score, and ViT versus CNN locality, as DIR/index.html with figures and data beside it. "
                    "With no --vit/--cnn it runs on the shipped models over generated held-out images.")
    add_model_arguments(p)
    p.add_argument("--images", action="append", metavar="PATH",
                   help="image file or folder (default: generated held-out shapes images with masks)")
    p.add_argument("--num-images", type=int, default=200, metavar="N", help="images to use (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="image-decoding worker processes")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="forward pass precision for attention distance (reductions are float32)")

    def _run(args):
        given = args.vit or args.cnn
        vits, cnns = model_pairs(args) if given else (None, None)
        if not given and (args.vit_checkpoint or args.cnn_checkpoint):
            raise VitlensError("--vit-checkpoint and --cnn-checkpoint need the --vit or --cnn they belong to.")
        index = run_report(args.out, vits=vits, cnns=cnns, images=args.images, num_images=args.num_images,
                           batch_size=args.batch_size, device=args.device, precision=args.precision,
                           workers=args.workers, seed=args.seed,
                           overwrite=args.overwrite, command="vitlens " + shlex.join(sys.argv[1:]))
        print(f"open {index.resolve()}")

    p.set_defaults(func=_run)
