"""``reproduce``: a paper's figures on the paper's public checkpoints, with a page that says whether
the run shows the paper's finding; ``fetch``: the preset's weights into the local hub cache.

Writes ``OUT/index.html`` (last, so a page that exists belongs to one complete run),
``OUT/figures/<figure>.png`` (one per paper figure), ``OUT/data/<figure>_<analysis>.csv`` (every
analysis's numbers, layers and heads from 0) and ``OUT/run.json``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ...presets import Preset, get_preset
from ...runtime.errors import ModelLoadError, VitlensError
from ...runtime.io import RunRecord, prepare_out_dir, save_csv, save_figure, write_text
from ..page import Figure, Section, render_page
from .analyses import CKA_MIN_IMAGES, PanelRun, Run, run_panel
from .readings import Reading, read_figure

__all__ = ["reproduce", "fetch", "Reproduction", "PRODUCTS", "check_weights"]

PRODUCTS = ["index.html", "run.json", "figures", "data"]


@dataclass(frozen=True)
class Reproduction:
    """What a preset run wrote and found.

    Attributes:
        preset: the preset's id.
        page: the HTML page.
        figures: figure file by paper figure label.
        data: CSV files written.
        verdicts: ``shown``, ``not shown``, ``partly shown``, ``pending`` or ``no verdict`` by figure label.
        readings: the sentences behind each verdict, by figure label.
    """

    preset: str
    page: Path
    figures: dict = field(default_factory=dict)
    data: tuple = ()
    verdicts: dict = field(default_factory=dict)
    readings: dict = field(default_factory=dict)


def _resolve(preset: Preset | str) -> Preset:
    return preset if isinstance(preset, Preset) else get_preset(preset)


def check_weights(preset: Preset, swap: Mapping[str, str] | None = None) -> None:
    """Fail within seconds when the hub is unreachable and weights the preset needs are not in the
    local hub cache, naming them and the command that fetches them."""
    from ...models.hub_cache import missing_from_cache
    from ...models.loading import hub_reachable

    names = [dict(swap or {}).get(c, c) for c in preset.checkpoints]
    if hub_reachable():
        return
    missing = missing_from_cache([n for n in names if "." in n])
    if missing:
        import huggingface_hub.constants as c

        raise ModelLoadError(
            f"{preset.id} needs the pretrained weights of {', '.join(missing)}, which are not in the local hub "
            f"cache ({c.HF_HUB_CACHE}), and the model hub is not reachable from this machine. On a machine with "
            f"network, run: vitlens fetch {preset.id} (it downloads them into that machine's hub cache; copy the "
            "cache folder here, or point HF_HOME at it). Use --random-init to run the preset on random weights.")


def fetch(preset: Preset | str, *, log: Callable[[str], None] = print) -> list[str]:
    """Download every checkpoint of ``preset`` into the local hub cache (those already there are
    kept); returns the weight files.

    Raises:
        ModelLoadError: the hub is not reachable (naming what was not fetched).
    """
    from ...models.hub_cache import download_weights, is_cached
    from ...models.loading import hub_reachable

    p = _resolve(preset)
    todo = [c for c in p.checkpoints if not is_cached(c)]
    if todo and not hub_reachable():
        raise ModelLoadError(f"cannot fetch {', '.join(todo)} for {p.id}: the model hub is not reachable from "
                             "this machine. Run vitlens fetch on a machine with network and copy its hub cache "
                             "folder (HF_HOME) here.")
    for c in p.checkpoints:
        if c not in todo:
            log(f"{c}: already in the hub cache")
    return [download_weights(c, log=log) for c in todo]


def _loader(random_init: bool, seed: int, device: str, swap: Mapping[str, str]):
    from ...jobs.common import display_name, load_models

    def load(checkpoint: str):
        name = swap.get(checkpoint, checkpoint)
        (m,) = load_models([(name, None)], random_init=random_init, device=device, seed=seed)
        if name != checkpoint:  # a swapped model is named after the checkpoint it stands in for
            m.vitlens_display_name = f"{display_name(m)} for {checkpoint}"
        return m, display_name(m)

    return load


def _needs(preset: Preset, index: int) -> set[str]:
    """Checkpoints used by the panels from ``index`` on (in preset order)."""
    panels = [p for f in preset.figures for p in f.panels]
    return {c for p in panels[index:] for c in p.checkpoints}


def reproduce(preset: Preset | str, images: str | Sequence[str], out: str | Path, *, num_images: int | None = None,
              random_init: bool = False, seed: int = 0, batch_size: int = 32, device: str = "cpu", workers: int = 0,
              precision: str = "fp32", sample: bool = False, swap: Mapping[str, str] | None = None,
              overwrite: bool = False, progress: bool = True, command: str = "") -> Reproduction:
    """Redraw a preset's paper figures on its checkpoints over an image folder, and say whether the
    run shows the paper's finding.

    Args:
        preset: a preset id (``vit-fig7``, ``raghu-locality``, ``raghu-representations``,
            ``pretraining``) or a :class:`~vitlens.presets.Preset`.
        images: image files or folders, searched recursively (an ImageNet validation folder, flat or
            one folder per class).
        out: output folder.
        num_images: images per analysis (default: the count the paper used, or
            :data:`~vitlens.presets.UNSTATED_IMAGES` where it does not say; all there are when fewer).
        random_init: random weights (seeded by ``seed``): the same code path, nothing downloaded.
        swap: run other models in place of the preset's, ``{preset checkpoint: timm name}`` (for a
            quick check on small models, or a fine-tuned variant); the page names every swap.
        batch_size, device, workers, precision: as in every analysis; ``batch_size`` is also the CKA
            minibatch (fewer images than that: one minibatch of all of them).

    Raises:
        ModelLoadError: offline with weights missing from the hub cache (within seconds, naming them
            and ``vitlens fetch PRESET``).
    """
    from ...data.images import find_images

    p = _resolve(preset)
    swap = dict(swap or {})
    unknown = sorted(set(swap) - set(p.checkpoints))
    if unknown:
        raise VitlensError(f"--swap names {', '.join(unknown)}, which {p.id} does not use; its checkpoints are "
                           f"{', '.join(p.checkpoints)}.")
    images = [images] if isinstance(images, (str, Path)) else list(images)
    files = find_images(images)
    if "layer_cka" in p.analyses and min(len(files), num_images or len(files)) < CKA_MIN_IMAGES:
        raise VitlensError(f"{p.id} computes CKA, which needs at least {CKA_MIN_IMAGES} images; "
                           f"{min(len(files), num_images or len(files))} given.")
    if not random_init:
        check_weights(p, swap)
    out = prepare_out_dir(out, PRODUCTS, overwrite)
    if overwrite:
        for name in PRODUCTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    record = RunRecord("reproduce", preset=p.id, paper=p.paper, random_init=random_init, seed=seed,
                       swap=swap, images=[str(i) for i in images], n_files=len(files), num_images=num_images,
                       batch_size=batch_size, precision=precision, figures=[])
    run = Run(_loader(random_init, seed, device, swap), images, num_images=num_images, batch_size=batch_size,
              workers=workers, precision=precision, progress=progress, sample=sample, seed=seed)
    done: dict[str, list[PanelRun]] = {}
    sections, data, verdicts, readings, figures = [], [], {}, {}, {}
    index = 0
    for figure in p.figures:
        runs = []
        for panel in figure.panels:
            start = time.perf_counter()
            runs.append(run_panel(panel, run))
            runs[-1].seconds = round(time.perf_counter() - start, 2)
            index += 1
            run.release(_needs(p, index))
        done[figure.key] = runs
        rd = read_figure(figure, runs, done)
        section, written, figures[figure.label] = _write_figure(out, p, figure, runs, rd, random_init, swap)
        sections.append(section)
        data += written
        verdicts[figure.label] = rd.verdict
        readings[figure.label] = list(rd.lines)
        record.data["figures"].append(_figure_record(figure, runs, rd))
    record.save(out / "run.json")
    write_text(out / "index.html", render_page(
        f"{p.id}: {p.paper}", _subtitle(p, random_init, swap), sections, _record_rows(p, record, random_init, swap),
        command=command))
    return Reproduction(p.id, out / "index.html", figures, tuple(data), verdicts, readings)


def _write_figure(out: Path, p: Preset, figure, runs: Sequence[PanelRun], rd: Reading, random_init: bool,
                  swap: Mapping[str, str]) -> tuple[Section, list[Path], Path]:
    """Write one paper figure's CSVs and PNG; returns its page section, the CSVs and the PNG."""
    import matplotlib.pyplot as plt

    from .figures import paper_figure

    files, written = [], []
    for i, r in enumerate(runs):
        frame = r.frame()
        if frame is not None:
            twice = sum(o.panel.analysis == r.panel.analysis for o in runs) > 1
            name = f"data/{figure.key}_{r.panel.analysis}{f'_{i + 1}' if twice else ''}.csv"
            save_csv(out / name, frame)
            files.append((Path(name).name, name))
            written.append(out / name)
    fig = paper_figure(figure, runs)
    path = f"figures/{p.id}_{figure.key}.png"
    save_figure(fig, out / path)
    plt.close(fig)
    return _section(p, figure, runs, rd, path, files, random_init, swap), written, out / path


def _subtitle(p: Preset, random_init: bool, swap: Mapping[str, str]) -> str:
    s = f"The paper's finding: {p.finding}"
    if random_init:
        s += (" These models have random weights (--random-init): the figures show what an untrained network "
              "does, and nothing here is evidence for or against the paper.")
    if swap:
        s += " Models were swapped: " + "; ".join(f"{k} ran as {v}" for k, v in swap.items()) + "."
    return s


def _section(p: Preset, figure, runs: Sequence[PanelRun], rd: Reading, path: str, files, random_init: bool,
             swap) -> Section:
    reading = [f"The paper ({figure.label}): {figure.finding}"] + rd.lines + rd.pending + [rd.summary()]
    if random_init:
        reading.append("Random weights: this says what an untrained network does, not whether the paper holds.")
    counts = []
    for r in runs:
        if r.pending:
            continue
        used = sorted({n for n in r.images if n is not None})
        if used:
            paper = r.panel.paper_images
            counts.append((f"{r.panel.title}: images", ", ".join(map(str, used))
                           + (f" (the paper: {paper})" if paper else " (the paper does not say how many)")))
    models = "; ".join(f"{c} ({p.checkpoint_notes.get(c, '')})" + (f", run as {swap[c]}" if c in swap else "")
                       for c in dict.fromkeys(c for r in runs for c in r.panel.checkpoints))
    return Section(f"{figure.label}: {', '.join(r.panel.title for r in runs)}",
                   figures=[Figure(path, f"{figure.label} redrawn: {', '.join(r.panel.title for r in runs)}.")],
                   reading=reading, numbers=list(rd.numbers) + counts, files=files,
                   note=f"Checkpoints: {models}. Layers and heads are counted from 1 here and from 0 in the CSV "
                        "files.", anchor=figure.key)


def _figure_record(figure, runs: Sequence[PanelRun], rd: Reading) -> dict:
    return {"figure": figure.label, "verdict": rd.verdict, "reading": list(rd.lines), "pending": list(rd.pending),
            "panels": [{"analysis": r.panel.analysis, "title": r.panel.title, "checkpoints": list(r.panel.checkpoints),
                        "models": list(r.names), "images": list(r.images), "paper_images": r.panel.paper_images,
                        "pending": r.pending, "seconds": getattr(r, "seconds", None),
                        "results": [x.to_dict() for x in r.results if hasattr(x, "to_dict")]} for r in runs]}


def _record_rows(p: Preset, record: RunRecord, random_init: bool, swap) -> list[tuple[str, str]]:
    d = record.data
    return [("preset", p.id), ("paper", p.paper), ("weights", f"random (seed {d['seed']})" if random_init
                                                     else "pretrained, from the hub or its local cache"),
            ("checkpoints", ", ".join(p.checkpoints)), ("swapped", ", ".join(f"{k} -> {v}" for k, v in swap.items())
                                                        or "none"),
            ("image files found", str(d["n_files"])), ("vitlens", d["versions"]["vitlens"]),
            ("timm / torch", f"{d['versions']['timm']} / {d['versions']['torch']}"), ("note", p.note)]
