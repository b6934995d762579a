"""Run the report's representation sections: skip ratios, spatial localisation and few-shot probes.

Every model of the report (ViTs and CNNs) goes through each analysis on the report's own images;
the probes need labels, which the generated shapes images carry and a user's folder carries when it
is laid out as one folder per class (or has a ``labels.csv``). Figures go to ``figures/``, tables to
``data/``; the readings come from :mod:`.representations`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..runtime.io import save_csv, save_figure
from . import representations as rep
from .page import Section

__all__ = ["REPRESENTATION_SECTIONS", "representation_sections"]

#: Section name -> heading, in page order.
REPRESENTATION_SECTIONS = {"skip": "How much passes through skip connections",
                           "localization": "Where spatial information stays",
                           "probes": "Few-shot linear probes by layer"}
PROBE_SHOTS = 10  # as Raghu et al. (10-shot ImageNet)
PROBE_REPEATS = 5


def _probe_images(label_roots: Sequence[Path]):
    """The labelled images of the report, or the sentence saying why there are none."""
    from ..data.labels import check_classes, labelled_images
    from ..runtime.errors import VitlensError

    try:
        labelled = labelled_images([str(p) for p in label_roots])
        check_classes(labelled.labels, PROBE_SHOTS, labelled.class_names)
        return labelled, None
    except VitlensError as e:
        why = str(e).replace("Use fewer --shots or more images.", f"The report probes with {PROBE_SHOTS} shots per class.")
        return None, f"The probes were not run: {why}"


def representation_sections(chosen: Sequence[str], models, names: Sequence[str], sets, out: Path, *,
                            label_roots: Sequence[Path], batch_size: int, precision: str, workers: int, seed: int,
                            start: Callable[[str], None]) -> list[Section]:
    """Run the chosen representation analyses on every model and return their sections.

    Args:
        chosen: section names (keys of :data:`REPRESENTATION_SECTIONS`) to run; others are skipped.
        models, names: the loaded models (ViTs first, then CNNs) and their display names.
        sets: model id -> the model's ImageSet of the report's images.
        label_roots: folders whose labels the probes read (the generated shapes folder, or the
            user's ``--images`` folders).
        start: names the step that is running (the report's progress bar).
    """
    import matplotlib.pyplot as plt

    from ..analyses.representations.localization import spatial_localization
    from ..analyses.representations.probes import linear_probes
    from ..analyses.representations.skip import skip_ratios
    from ..data.images import ImageSet
    from ..plotting.localization import localization_figure
    from ..plotting.probes import probes_figure
    from ..plotting.skip import skip_figure
    from ..runtime.errors import UnsupportedModelError

    figs, data = out / "figures", out / "data"
    sections: list[Section] = []

    def each(what: str, run, errors=(UnsupportedModelError,)) -> tuple[list, list[str]]:
        done, refused = [], []
        for m, name in zip(models, names):
            start(f"{what} {name}")
            try:
                done.append(run(m, name))
            except errors as e:
                refused.append(f"{name}: {e}")
        return done, refused

    def save(done: list, table: str, image: str, figure) -> None:
        """The table and figure of every measured model."""
        save_csv(data / table, pd.concat([r.to_frame() for r in done], ignore_index=True))
        fig = figure(done)
        save_figure(fig, figs / image)
        plt.close(fig)

    def section(key: str, done: list, refused: list[str], build) -> Section:
        """The section of the measured models, noting the refused ones; the refusals alone when none
        was measured."""
        why = "Not measured: " + " ".join(refused)
        if not done:
            return Section(REPRESENTATION_SECTIONS[key], anchor=key, reading=[why])
        built = build(done)
        return replace(built, note=why) if refused else built

    if "skip" in chosen:
        done, refused = each("skip ratios", lambda m, n: skip_ratios(
            m, sets[id(m)], batch_size=batch_size, precision=precision, workers=workers, name=n))
        if done:
            save(done, "skip_ratio.csv", "skip.png", skip_figure)
        if done or refused:
            sections.append(section("skip", done, refused, rep.skip_section))
    if "localization" in chosen:
        done, refused = each("spatial localisation", lambda m, n: spatial_localization(
            m, sets[id(m)], batch_size=batch_size, precision=precision, workers=workers, name=n),
            errors=(UnsupportedModelError, ValueError))  # ValueError: too few images for one CKA minibatch
        if done:
            save(done, "localization.csv", "localization.png", localization_figure)
        if done or refused:
            sections.append(section("localization", done, refused, rep.localization_section))
    if "probes" in chosen:
        labelled, why = _probe_images(label_roots)
        done, refused = [], []
        if labelled is not None:
            done, refused = each("few-shot probes", lambda m, n: linear_probes(
                m, ImageSet.for_model(m, labelled.paths), labelled.labels, class_names=labelled.class_names,
                shots=PROBE_SHOTS, repeats=PROBE_REPEATS, seed=seed, batch_size=batch_size, precision=precision,
                workers=workers, name=n))
        if done:
            save(done, "probe.csv", "probes.png", probes_figure)
        probes = rep.probe_section(done, skipped=why)
        sections.append(replace(probes, note="Not measured: " + " ".join(refused)) if refused else probes)
    return sections
