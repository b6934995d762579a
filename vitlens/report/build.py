"""The report's build: every analysis on a set of models and images, as one HTML page.

With no model given it runs offline on the shipped models (vit-tiny-shapes, its tenth-of-the-data
twin and resnet-tiny-shapes) over freshly generated held-out shapes images with object masks:
mean attention distance, position-embedding similarity, attention rollout with its mask score, ViT
versus CNN locality with the receptive fields, and whether less training data cost the ViT its
local heads. ``--vit/--cnn/--images [--masks]`` run the same report on any models and images.

Writes ``OUT/index.html``, ``OUT/figures/*.png``, ``OUT/data/*`` (every number behind the page)
and ``OUT/run.json``. With ``--overwrite`` the previous report is removed first, and the page is
written last, so a page that exists belongs to one complete run.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ..analyses.attention.streaming import attention_distance
from ..analyses.fields.effective import effective_receptive_field
from ..analyses.locality import locality
from ..data.images import ImageSet
from ..data.masks import model_mask, read_mask
from ..jobs.common import display_name, distinct_names, images_for, load_models, model_record, progress
from ..jobs.compare import check_cnn, check_vit
from ..models.loading import ZOO_DIR, zoo_models
from ..runtime.errors import UnsupportedModelError, VitlensError
from ..runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, save_npz, versions, write_json, write_text
from ..runtime.slugs import slug
from . import sections as sec
from .figures import sheet_labels
from .page import render_page
from .representation_runs import REPRESENTATION_SECTIONS, representation_sections
from .similarity_cost import cka_section, cost_section

__all__ = ["run_report", "report_plan", "DEFAULT_VITS", "DEFAULT_CNNS", "HELD_OUT_START", "LOCAL_FRACTION", "ERF_IMAGES",
           "PRODUCTS", "SECTIONS"]

DEFAULT_VITS = ("vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct")
DEFAULT_CNNS = ("vitlens/resnet-tiny-shapes",)
DATA_PAIR = ("vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct")  # (all the data, a tenth)
HELD_OUT_START = 2000  # the shipped models' accuracy used test-split images 0 to 1999; start after them
LOCAL_FRACTION = 0.5  # a head is local when its distance is below this share of uniform attention's
ERF_IMAGES = 64  # receptive fields take one backward pass per layer: averaged over fewer images
SHEET_IMAGES = 16
EXPLORER_IMAGES = 3  # images in the attention explorer (every head of every layer is stored for each)
PRODUCTS = ["index.html", "run.json", "figures", "data", "shapes"]
#: The sections ``sections=`` chooses from, with their headings (a section left out says so on the page).
#: ``locality`` needs the attention distance, which it computes when ``distance`` is left out.
SECTIONS = {"distance": "Mean attention distance by depth", "posembed": "Position-embedding similarity",
            "rollout": "Attention rollout", "locality": "ViT versus CNN locality",
            "cka": "Representation similarity (CKA)", **REPRESENTATION_SECTIONS,
            "cost": "What a ViT costs next to a CNN"}


class _Steps:
    """The report's progress bar, naming the step that is running (not the one that finished)."""

    def __init__(self, bar):
        self.bar, self.running = bar, False

    def start(self, what: str) -> None:
        if self.running:
            self.bar.update(1)
        self.bar.set_postfix_str(what)
        self.running = True

    def rename(self, what: str) -> None:
        """Name the running step anew (what it turned out to be)."""
        self.bar.set_postfix_str(what)

    def finish(self) -> None:
        if self.running:
            self.bar.update(1)
            self.bar.set_postfix_str("done")
        self.running = False


def check_sections(sections) -> tuple[str, ...]:
    """``sections`` (names of :data:`SECTIONS`, or None for all) in page order; raises VitlensError
    for an unknown name."""
    if sections is None:
        return tuple(SECTIONS)
    names = [n.strip() for part in ([sections] if isinstance(sections, str) else sections)
             for n in str(part).split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise VitlensError(f"--sections: {', '.join(unknown) or 'nothing'} is not a report section; choose among "
                           f"{', '.join(SECTIONS)} (comma-separated).")
    return tuple(n for n in SECTIONS if n in names)
def _sweep_runs() -> pd.DataFrame | None:
    """The data-size sweep's run table shipped in the package (analyses/locality_sweep.py), if any."""
    path = ZOO_DIR / "locality_sweep_runs.csv"
    return pd.read_csv(path) if path.is_file() else None


def _shapes_images(out: Path, n: int, seed: int) -> list[Path]:
    from ..data.shapes import save_images

    return save_images(out / "shapes", n, seed=seed, split="test", start=HELD_OUT_START)


def _knows_shapes_labels(model: nn.Module) -> bool:
    from ..data.shapes import CLASSES

    return list(getattr(model, "pretrained_cfg", {}).get("label_names") or []) == list(CLASSES)


def _rollout(model: nn.Module, imgs: ImageSet, batch_size: int, workers: int, masks: Path | None, sheet: bool,
             precision: str = "fp32"):
    """Rollout maps of every image and, with a mask folder, each map's share on its object; returns
    ``(scores frame, RolloutMaps, display images for the sheet, why masks were not scored or "")``."""
    import timm.data

    from ..analyses.attention.rollout import RolloutMaps, image_keys, iter_rollout
    from ..analyses.attention.scores import grid_mask, mask_share, pointing_hit
    from ..data.shapes import label_of
    from ..plotting.rollout import to_display

    name = display_name(model)
    cfg = timm.data.resolve_data_config({}, model=model)
    by_key = dict(zip(image_keys(imgs.paths), imgs.paths))
    parts, shown, first = [], [], []
    for x, part in iter_rollout(model, imgs, batch_size=batch_size, workers=workers, name=name,
                                precision=precision):
        parts.append(part)
        if sheet and len(shown) < SHEET_IMAGES:
            shown.extend(to_display(x, cfg["mean"], cfg["std"])[: SHEET_IMAGES - len(shown)])
        if sum(len(f) for f in first) < EXPLORER_IMAGES:
            first.append(x[: EXPLORER_IMAGES - sum(len(f) for f in first)])
    imgs.check_used(sum(len(p) for p in parts))
    maps = RolloutMaps.concat(parts)
    names = list(getattr(model, "pretrained_cfg", {}).get("label_names") or [])
    paths = [Path(by_key[k]) for k in maps.names]
    frame = pd.DataFrame({"model": name, "image": list(maps.names), "readout": maps.readout,
                          "predicted": maps.predicted})
    if _knows_shapes_labels(model) and maps.predicted is not None:
        labels = [label_of(p) for p in paths]
        frame["label"] = labels
        frame["correct"] = [None if lab is None else bool(maps.predicted[i] == lab) for i, lab in enumerate(labels)]
    why = ""
    if masks is not None:
        raw = [read_mask(masks, p) for p in paths]
        fitted = [None if m is None else model_mask(m, imgs.transform) for m in raw]
        size = tuple(maps.layout.input_size)
        if any(m is None for m in raw):
            why = f"{sum(m is None for m in raw)} images have no mask in {masks}"
        elif any(m is None or m.shape != size for m in fitted):
            why = f"{name}'s preprocessing has a step whose geometry vitlens cannot apply to masks"
        else:
            stack = np.stack(fitted)
            frame["mask_share"] = mask_share(maps, stack)
            frame["mask_area"] = grid_mask(stack, maps.layout).mean(axis=(-2, -1))
            frame["pointing_hit"] = pointing_hit(maps, stack)
    return frame, maps, shown, why, sheet_labels(frame.head(len(shown)), names), torch.cat(first)



def _explorer(out: Path, model: nn.Module, x, shown, names, distance) -> "sec.Section":
    """Write the explorer's data for the first images and return its section."""
    from .explorer import EXPLORER_JS, QUANTISATION, explorer_data, viewer_html, write_explorer_data

    n = min(len(x), len(shown))
    data = explorer_data(model, x[:n], shown[:n], names[:n], head_distance=distance.distance,
                         distance_images=distance.n_images, model_name=display_name(model))
    write_explorer_data(out, data)
    return sec.explorer_section(data, viewer_html(EXPLORER_JS), QUANTISATION)


def _clear(out: Path) -> None:
    """Remove a previous report's products (``--overwrite`` was given for them)."""
    for name in PRODUCTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_report(out: str | Path, *, vits: Sequence[tuple[str, str | None]] | None = None,
               cnns: Sequence[tuple[str, str | None]] | None = None, images: Sequence[str] | None = None,
               masks: str | Path | None = None, num_images: int = 200, erf_images: int = ERF_IMAGES,
               batch_size: int = 32, device: str = "cpu", precision: str = "fp32", workers: int = 0, seed: int = 0,
               local_fraction: float = LOCAL_FRACTION, overwrite: bool = False, show_progress: bool = True,
               command: str = "", sections: Sequence[str] | None = None, cost_sizes: Sequence[int] | None = None,
               cost_repeats: int | None = None, random_init: bool = False) -> Path:
    """Run every analysis and write the report into ``out``; returns the path of ``index.html``.

    Args:
        vits, cnns: ``[(name, checkpoint or None), ...]``; both None: the shipped models.
        images: image files or folders; None: ``num_images`` generated held-out shapes images (with
            masks, written to ``out/shapes``), drawn with ``seed``.
        masks: folder of object masks for ``images`` (same file names; nonzero is object), which
            score the rollout maps; generated images bring their own.
        num_images: images used (generated, or the first of ``images``).
        erf_images: images the receptive fields average over (the first of those used).
        precision: forward (and backward) passes of every analysis; reductions are float32 or more.
        local_fraction: a head is local below this share of uniform attention's distance.
        sections: the sections to run (names of :data:`SECTIONS`; None: all); the others say on the
            page that they were left out.
        cost_sizes, cost_repeats: the cost section's input sides and timed repeats; None: chosen
            from the models, the images and the device (:func:`vitlens.report.cost_plan.plan_cost`).
        random_init: random weights drawn from ``seed`` instead of trained ones (a baseline).
    """
    default = vits is None and cnns is None
    vit_specs = [(n, None) for n in DEFAULT_VITS] if default else list(vits or [])
    cnn_specs = [(n, None) for n in DEFAULT_CNNS] if default else list(cnns or [])
    if not vit_specs and not cnn_specs:
        raise VitlensError("no model given: pass --vit NAME and/or --cnn NAME, or neither for the shipped models.")
    if num_images < 1 or erf_images < 1:
        raise VitlensError(f"--num-images and --erf-images must be at least 1, got {num_images} and {erf_images}.")
    if not 0 < local_fraction < 1:
        raise VitlensError(f"--local-fraction must be between 0 and 1, got {local_fraction}.")
    if masks is not None and not Path(masks).is_dir():
        raise VitlensError(f"--masks {masks} is not a folder.")
    chosen = check_sections(sections)
    if cost_repeats is not None and cost_repeats < 1:
        raise VitlensError(f"--cost-repeats must be at least 1, got {cost_repeats}.")
    if cost_sizes is not None and (not len(cost_sizes) or any(int(s) < 1 for s in cost_sizes)):
        raise VitlensError(f"--cost-sizes must be input sides of at least 1 px, got {list(cost_sizes)}.")
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    for given in [*(images or []), *([masks] if masks else [])]:
        g = Path(given).resolve()
        if any(g == (out / p).resolve() or (out / p).resolve() in g.parents for p in PRODUCTS):
            raise VitlensError(f"{given} lies inside a previous report's products in {out}, which this run replaces; "
                               "copy the images elsewhere or choose another --out.")
    models = load_models(vit_specs + cnn_specs, device=device, seed=seed, random_init=random_init)
    vit_models, cnn_models = models[:len(vit_specs)], models[len(vit_specs):]
    for m in vit_models:
        check_vit(m)
    for m in cnn_models:
        check_cnn(m)
    distinct_names(models)
    _clear(out)
    plan = _plan(chosen, vit_models, cnn_models)
    with progress(None, total=sum(plan.values()), desc="report", unit="step", enabled=show_progress) as bar:
        steps = _Steps(bar)
        index = _run(out, vit_models, cnn_models, steps, default=default, images=images, masks=masks,
                     num_images=num_images, erf_images=erf_images, batch_size=batch_size, device=device,
                     precision=precision, workers=workers, seed=seed, local_fraction=local_fraction,
                     show_progress=show_progress, command=command, chosen=chosen, cost_sizes=cost_sizes,
                     cost_repeats=cost_repeats)
        steps.finish()
        return index


def _plan(chosen: Sequence[str], vit_models, cnn_models) -> dict[str, int]:
    """The report's steps by kind, given the sections chosen (what its progress bar counts)."""
    vits, models = len(vit_models), len(vit_models) + len(cnn_models)
    distance = "distance" in chosen or "locality" in chosen
    return {"images": 1, "distance": vits * distance, "posembed": vits * ("posembed" in chosen),
            "rollout": vits * ("rollout" in chosen), "locality": models * ("locality" in chosen),
            "cka": int(bool(vits) and "cka" in chosen),
            **{name: models * (name in chosen) for name in REPRESENTATION_SECTIONS},
            "cost": int(bool(vits) and "cost" in chosen), "page": 1}


def report_plan(vit_models, cnn_models, *, n_images: int, batch_size: int = 32, device: str = "cpu",
                sections: Sequence[str] | None = None, cost_sizes: Sequence[int] | None = None,
                cost_repeats: int | None = None) -> dict:
    """What a report on these loaded models would run, without running it: ``{"sections": names run,
    "steps": {kind: count}, "cost": CostPlan or None}``."""
    chosen = check_sections(sections)
    cost = None
    if vit_models and "cost" in chosen:
        cost = _cost_plan(_costed(vit_models, cnn_models), n_images, batch_size, device, cost_sizes, cost_repeats)
    return {"sections": chosen, "steps": _plan(chosen, vit_models, cnn_models), "cost": cost}


def _costed(vit_models, cnn_models) -> list:
    """The models the cost section measures: the first ViT, and the first CNN if any."""
    return [vit_models[0]] + ([cnn_models[0]] if cnn_models else [])


def _cost_plan(costed, n_images, batch_size, device, cost_sizes, cost_repeats):
    from ..analyses.cost import _kind
    from .cost_plan import plan_cost
    from .similarity_cost import cost_base_px

    return plan_cost(costed, [_kind(m) for m in costed], [display_name(m) for m in costed], cost_base_px(costed),
                     n_images=n_images, batch_size=batch_size, device=device, sizes=cost_sizes,
                     repeats=cost_repeats)


def _run(out: Path, vit_models, cnn_models, steps: _Steps, *, default, images, masks, num_images, erf_images,
         batch_size, device, precision, workers, seed, local_fraction, show_progress, command, chosen, cost_sizes,
         cost_repeats) -> Path:
    import matplotlib.pyplot as plt

    from ..analyses.embeddings.position import position_embedding_similarity
    from ..plotting.distance import distance_figure
    from ..plotting.locality import locality_figure
    from ..plotting.posembed import position_embedding_figure
    from ..plotting.receptive_field import receptive_field_figure
    from ..plotting.rollout import contact_sheet_figure
    from .figures import plot_local_heads, plot_mask_scores, plot_sweep_runs

    start = time.time()
    models = list(vit_models) + list(cnn_models)

    steps.start("images")
    if images:
        image_args = argparse.Namespace(images=list(images), num_images=num_images, sample=False, seed=seed)
        mask_dir = Path(masks) if masks else None
    else:
        files = _shapes_images(out, num_images, seed)
        image_args = argparse.Namespace(images=[str(p) for p in files], num_images=None, sample=False, seed=seed)
        mask_dir = out / "shapes" / "masks"
    sets = {id(m): images_for(m, image_args) for m in models}
    n_files = len(next(iter(sets.values())).paths)
    source = (", ".join(map(str, images)) + f" ({n_files} image files)" if images else
              f"generated held-out shapes images (test split, seed {seed}, images {HELD_OUT_START} to "
              f"{HELD_OUT_START + num_images - 1}; the models never saw them), in shapes/")
    figs, data = out / "figures", out / "data"
    record = RunRecord("report", images=source, models=[], seed=seed, device=device, precision=precision)
    sections = []

    distances = []
    for m in vit_models if "distance" in chosen or "locality" in chosen else []:
        steps.start(f"attention distance {display_name(m)}")
        distances.append(attention_distance(m, sets[id(m)], batch_size=batch_size, name=display_name(m),
                                            precision=precision, progress=show_progress, workers=workers))
    if distances:
        save_csv(data / "attention_distance.csv", pd.concat([d.to_frame() for d in distances], ignore_index=True))
        fig = distance_figure(distances)
        save_figure(fig, figs / "attention_distance.png")
        plt.close(fig)
        sections.append(sec.distance_section(distances))

    pos, skipped = [], []
    for m in vit_models if "posembed" in chosen else []:
        steps.start(f"position embeddings {display_name(m)}")
        try:
            pos.append(position_embedding_similarity(m, name=display_name(m)))
        except UnsupportedModelError as e:
            skipped.append(f"{display_name(m)} ({e})")
    if pos:
        write_json(data / "position_embeddings.json", [r.summary() for r in pos])
        fig = position_embedding_figure(pos, panel_size=4.6)
        save_figure(fig, figs / "position_embeddings.png")
        plt.close(fig)
    if vit_models and "posembed" in chosen:
        sections.append(sec.posembed_section(pos, skipped))

    frames, unscored, sheets, explorer = [], [], [], None
    for i, m in enumerate(vit_models if "rollout" in chosen else []):
        steps.start(f"rollout {display_name(m)}")
        frame, maps, shown, why, labels, first = _rollout(m, sets[id(m)], batch_size, workers, mask_dir, sheet=True,
                                                          precision=precision)
        if i == 0 and distances:  # the explorer shows each head's distance beside its maps
            explorer = _explorer(out, m, first, shown, maps.names, distances[0])
        frames.append(frame)
        if why:
            unscored.append(why)
        save_npz(data / f"rollout_{slug(display_name(m))}.npz",
                 {k: v.astype(np.float32) for k, v in zip(maps.names, maps.maps)})
        sheet = "rollout.png" if i == 0 else f"rollout_{slug(display_name(m))}.png"
        fig = contact_sheet_figure(maps, shown, indices=range(len(shown)), ncols=8, labels=labels)
        save_figure(fig, figs / sheet)
        plt.close(fig)
        sheets.append((display_name(m), f"figures/{sheet}"))
    if frames:
        scores = pd.concat(frames, ignore_index=True)
        save_csv(data / "rollout_scores.csv", scores)
        if "mask_share" in scores and scores.mask_share.notna().any():
            scored = scores[scores.mask_share.notna()].groupby("model", sort=False)
            ax = plot_mask_scores({n: g.mask_share.to_numpy() for n, g in scored},
                                  {n: g.mask_area.to_numpy() for n, g in scored})
            save_figure(ax.figure, figs / "rollout_mask_share.png")
            plt.close(ax.figure)
        section = sec.rollout_section(scores, sheets)
        if unscored:
            section = replace(section, note="Masks not scored: " + "; ".join(unscored))
        sections.append(section)
        sections.append(explorer or sec.Section("Attention explorer", anchor="explorer", reading=[
            "Not run: the explorer shows each head's attention distance, and this report left the distance out "
            "(--sections)."]))

    fields = []
    for m in models if "locality" in chosen else []:
        steps.start(f"receptive field {display_name(m)}")
        erf_set = images_for(m, argparse.Namespace(**{**vars(image_args), "images": [str(p) for p in
                                                                                    sets[id(m)].paths[:erf_images]],
                                                      "num_images": None}))
        fields.append(effective_receptive_field(m, erf_set, batch_size=batch_size, progress=show_progress,
                                                name=display_name(m), precision=precision, workers=workers))
    res = None
    if fields:
        res = locality(distances, fields)
        save_csv(data / "locality.csv", res.to_frame())
        save_csv(data / "receptive_field.csv", pd.concat([f.to_frame() for f in fields], ignore_index=True))
        fig = locality_figure(res)
        save_figure(fig, figs / "locality.png")
        plt.close(fig)
        fig = receptive_field_figure(fields)
        save_figure(fig, figs / "receptive_field.png")
        plt.close(fig)
        sections.append(sec.locality_section(res))

    if vit_models:  # how their representations relate, and what they cost
        vit, cnn = vit_models[0], (cnn_models[0] if cnn_models else None)
        pair = [sets[id(vit)]] + ([sets[id(cnn)]] if cnn is not None else [])
        if "cka" in chosen:
            steps.start("representation similarity")
            sections.append(cka_section(vit, cnn, pair, out, batch_size=batch_size, precision=precision,
                                        workers=workers,
                                        names=(display_name(vit), display_name(cnn) if cnn is not None else "")))
    sections += representation_sections(
        chosen, models, [display_name(m) for m in models], sets, out,
        label_roots=[Path(p) for p in images] if images else [out / "shapes"], batch_size=batch_size,
        precision=precision, workers=workers, seed=seed, start=steps.start)
    if vit_models:
        if "cost" in chosen:
            steps.start("cost: planning")
            costed = _costed(vit_models, cnn_models)
            n_images = len(sets[id(vit)].paths)
            cost_plan = _cost_plan(costed, n_images, batch_size, device, cost_sizes, cost_repeats)
            record.update(cost_plan=cost_plan.to_dict())
            steps.rename(f"cost at {', '.join(map(str, cost_plan.sizes))} px, batch {cost_plan.batch_size}")
            sections.append(cost_section(costed, [display_name(m) for m in costed], out, plan=cost_plan,
                                         device=device, precision=precision))

    by_name = {d.model: d for d in distances}
    if default and all(n in by_name for n in DATA_PAIR):
        full, less = by_name[DATA_PAIR[0]], by_name[DATA_PAIR[1]]
        fig, ax = plt.subplots(figsize=(6.5, 4.3))
        plot_local_heads([full, less], local_fraction, ax=ax)
        save_figure(fig, figs / "less_data.png")
        plt.close(fig)
        sweep = _sweep_runs()
        if sweep is not None:
            save_csv(data / "locality_sweep_runs.csv", sweep)
            ax = plot_sweep_runs(sweep)
            save_figure(ax.figure, figs / "locality_sweep.png")
            plt.close(ax.figure)
        sections.append(sec.data_section(full, less, local_fraction, sweep))

    for name in SECTIONS:
        if name not in chosen and (name != "distance" or not distances):
            sections.append(sec.Section(SECTIONS[name], anchor=f"{name}-left-out", reading=[
                f"Not run: this report was made with --sections {','.join(chosen)}; add {name} to run it."]))
    steps.start("page")
    zoo = zoo_models()
    field_of = {id(m): f for m, f in zip(models, fields)}
    used = {id(m): d.n_images for m, d in zip(vit_models, distances)}
    used.update({id(m): f.n_images for m, f in zip(models, fields) if id(m) not in used})
    for m in models:
        f = field_of.get(id(m))
        n_used = used.get(id(m), len(sets[id(m)].paths) - len(sets[id(m)].skipped))
        entry = {**model_record(m), "display_name": display_name(m), "kind": "vit" if m in vit_models else "cnn",
                 "images": sets[id(m)].record(n_used), "erf_images": None if f is None else f.n_images}
        z = zoo.get(model_record(m).get("name", ""))
        if z is not None and z.accuracy is not None:
            entry["held_out_accuracy"] = z.accuracy
        record.data["models"].append(entry)
    record.update(summary=None if res is None else res.summary(), sections_run=list(chosen), seconds=round(time.time() - start, 1), sections=[s.title for s in sections],
                  local_fraction=local_fraction, erf_images=erf_images)
    record.save(out / "run.json")
    skipped_files = {s["path"] for m in models for s in sets[id(m)].record(0)["skipped"]}
    n_used = max(e["images"]["n_images"] for e in record.data["models"])
    erf_note = f" ({min(f.n_images for f in fields)} for receptive fields)" if fields else ""
    rows = [("images", f"{n_used} used{erf_note}; {source}"),
            ("skipped files", f"{len(skipped_files)} (listed in run.json)")]
    for e in record.data["models"]:
        acc = f", held-out accuracy {100 * e['held_out_accuracy']:.2f}%" if "held_out_accuracy" in e else ""
        init = f"; initialisation: {e['initialisation']['initialisation']}" if e.get("initialisation") else ""
        rows.append((e["display_name"], f"{'CNN' if e['kind'] == 'cnn' else 'ViT'}; weights: {e.get('weights', '?')}"
                                        f"{acc}{init}"))
    rows += [("device", device), ("precision", precision), ("seed", str(seed)),
             ("time", f"{time.time() - start:.0f} s, finished {time.strftime('%Y-%m-%d %H:%M:%S')}"),
             ("versions", ", ".join(f"{k} {v}" for k, v in versions().items()))]
    page = render_page("vitlens report", f"{len(models)} models, {n_used} images. How far ViT heads look, what "
                       "their position embeddings learned, where attention flows, and how local they are "
                       "next to a CNN. " + sec.INDEXING, sections, rows, command=command)
    return write_text(out / "index.html", page)
