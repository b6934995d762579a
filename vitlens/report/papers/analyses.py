"""The analyses a preset's panels name, each run by its public function's name.

A runner takes the panel and the run (its models, images and settings) and returns one result per
model (or per model pair, for CKA). An analysis whose function this installation lacks is reported
as pending, with the function it waits for, instead of failing the whole run; a new analysis plugs
in by adding its runner under its function's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch.nn as nn

from ...presets import UNSTATED_IMAGES, Panel
from ...runtime.errors import UnsupportedModelError, VitlensError

__all__ = ["PanelRun", "Pending", "RUNNERS", "run_panel", "CKA_MIN_IMAGES"]

CKA_MIN_IMAGES = 4  # the unbiased HSIC estimator needs minibatches of at least 4 images


class Pending(Exception):
    """The analysis a panel names is not available in this installation."""


@dataclass
class PanelRun:
    """A panel's results: one per model (or model pair), in the panel's order.

    Attributes:
        panel: the preset's panel.
        results: the analysis results.
        names: display names of the models each result belongs to.
        checkpoints: the preset's checkpoint behind each model (before any swap).
        images: images each result averaged over (None for weight-only analyses).
        pending: why the panel could not run ("" when it ran).
        seconds: the panel's wall time.
    """

    panel: Panel
    results: list = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    images: list[int | None] = field(default_factory=list)
    pending: str = ""
    seconds: float | None = None

    def add(self, result, name: str, checkpoint: str, n_images: int | None) -> None:
        self.results.append(result)
        self.names.append(name)
        self.checkpoints.append(checkpoint)
        self.images.append(n_images)

    def frame(self) -> pd.DataFrame | None:
        """Every result's tidy frame, one after the other, each with its model and checkpoint."""
        frames = []
        for r, name, ckpt in zip(self.results, self.names, self.checkpoints):
            f = _frame(self.panel.analysis, r)
            if "model" not in f.columns and "model_a" not in f.columns:
                f.insert(0, "model", name)
            f.insert(0, "checkpoint", ckpt)
            frames.append(f)
        return pd.concat(frames, ignore_index=True) if frames else None


def _frame(analysis: str, r) -> pd.DataFrame:
    if analysis == "attention_entropy":
        L, H = r.entropy.shape
        return pd.DataFrame({"model": r.model, "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                             "entropy": np.asarray(r.entropy).ravel(), "n_images": r.n_images})
    return r.to_frame()


class Run:
    """What the runners share: the models (loaded once, released when no later panel needs them),
    the image folders, and the settings of the run.

    Args:
        load: loads one preset checkpoint and returns ``(model, display name)``.
        images: image files or folders.
        num_images: a cap on the images of every panel (None: the count the paper used, or all).
        batch_size, workers, precision, progress: as in every analysis.
    """

    def __init__(self, load: Callable[[str], tuple[nn.Module, str]], images: Sequence[str], *,
                 num_images: int | None, batch_size: int, workers: int, precision: str, progress: bool,
                 sample: bool = False, seed: int = 0):
        self._load = load
        self._models: dict[str, tuple[nn.Module, str]] = {}
        self.images = list(images)
        self.num_images, self.batch_size, self.workers = num_images, batch_size, workers
        self.precision, self.progress, self.sample, self.seed = precision, progress, sample, seed
        self.cache: dict[tuple[str, str], object] = {}

    def model(self, checkpoint: str) -> tuple[nn.Module, str]:
        if checkpoint not in self._models:
            self._models[checkpoint] = self._load(checkpoint)
        return self._models[checkpoint]

    def release(self, keep: set[str]) -> None:
        for c in [c for c in self._models if c not in keep]:
            del self._models[c]

    def count(self, panel: Panel) -> int | None:
        """Images for ``panel``: ``num_images`` when given, else the paper's count, else
        ``UNSTATED_IMAGES`` (fewer when the folder holds fewer)."""
        if self.num_images is not None:
            return self.num_images
        return panel.paper_images or UNSTATED_IMAGES

    def image_set(self, model: nn.Module, panel: Panel):
        from ...data.images import ImageSet

        return ImageSet.for_model(model, self.images, num_images=self.count(panel), sample=self.sample,
                                  seed=self.seed)

    def common(self) -> dict:
        return dict(batch_size=self.batch_size, workers=self.workers, precision=self.precision,
                    progress=self.progress)


# --------------------------------------------------------------------------- runners


def _filters(panel: Panel, run: Run, out: PanelRun) -> None:
    from ...analyses.embeddings.filters import embedding_filters

    for c in panel.checkpoints:
        m, name = run.model(c)
        out.add(embedding_filters(m, n_components=panel.option("n_components", 28), name=name), name, c, None)


def _posembed(panel: Panel, run: Run, out: PanelRun) -> None:
    from ...analyses.embeddings.position import position_embedding_similarity

    for c in panel.checkpoints:
        m, name = run.model(c)
        out.add(position_embedding_similarity(m, name=name), name, c, None)


def _distance_of(run: Run, panel: Panel, c: str):
    """Attention distance of checkpoint ``c`` over the panel's images (computed once per count)."""
    from ...analyses.attention.streaming import attention_distance

    key = ("attention_distance", f"{c}|{run.count(panel)}")
    if key not in run.cache:
        m, name = run.model(c)
        imgs = run.image_set(m, panel)
        r = attention_distance(m, imgs, name=name, **run.common())
        imgs.check_used(r.n_images)
        run.cache[key] = r
    return run.cache[key]


def _distance(panel: Panel, run: Run, out: PanelRun) -> None:
    for c in panel.checkpoints:
        r = _distance_of(run, panel, c)
        out.add(r, r.model, c, r.n_images)


def _entropy(panel: Panel, run: Run, out: PanelRun) -> None:
    from ...analyses.attention.distance import AttentionDistance

    if "entropy" not in getattr(AttentionDistance, "__dataclass_fields__", {}):
        raise Pending("attention entropy (AttentionDistance.entropy) is not part of this installation's "
                      "attention distance")
    results = [_distance_of(run, panel, c) for c in panel.checkpoints]
    if any(r.entropy is None for r in results):
        raise Pending("attention distance did not compute the entropy of these models")
    for c, r in zip(panel.checkpoints, results):
        out.add(r, r.model, c, r.n_images)


def _erf(panel: Panel, run: Run, out: PanelRun) -> None:
    from ...analyses.fields.effective import effective_receptive_field

    for c in panel.checkpoints:
        m, name = run.model(c)
        imgs = run.image_set(m, panel)
        r = effective_receptive_field(m, imgs, name=name, **run.common())
        out.add(r, name, c, r.n_images)


def _cka(panel: Panel, run: Run, out: PanelRun) -> None:
    from ...analyses.representations.cka import layer_cka

    kw = run.common()
    if panel.option("pairs") == "self":
        for c in panel.checkpoints:
            m, name = run.model(c)
            imgs = run.image_set(m, panel)
            kw["batch_size"] = _cka_batch(run.batch_size, len(imgs))
            r = layer_cka(m, imgs, name_a=name, **kw)
            out.add(r, name, c, r.n_images)
        return
    a, b = panel.checkpoints
    (ma, na), (mb, nb) = run.model(a), run.model(b)
    ia, ib = run.image_set(ma, panel), run.image_set(mb, panel)
    kw["batch_size"] = _cka_batch(run.batch_size, len(ia))
    r = layer_cka(ma, ia, mb, images_b=ib, name_a=na, name_b=nb, **kw)
    out.add(r, f"{na} vs {nb}", f"{a} vs {b}", r.n_images)


def _cka_batch(batch_size: int, n: int) -> int:
    """The CKA minibatch: ``batch_size``, or all the images when there are fewer (at least 4)."""
    if n < CKA_MIN_IMAGES:
        raise VitlensError(f"CKA needs at least {CKA_MIN_IMAGES} images (the unbiased estimator's minibatch); "
                           f"{n} were given. Use more images or a larger --num-images.")
    return max(CKA_MIN_IMAGES, min(batch_size, n))


def _by_public_name(function: str, minibatch: bool = False) -> Callable[[Panel, Run, PanelRun], None]:
    """A runner for an analysis exported from ``vitlens`` under ``function``, called per model as
    ``function(model, images, name=..., batch_size=..., workers=..., precision=..., progress=...)``;
    with ``minibatch``, ``batch_size`` is a CKA minibatch (all the images when there are fewer)."""

    def runner(panel: Panel, run: Run, out: PanelRun) -> None:
        import vitlens

        fn = getattr(vitlens, function, None)
        if fn is None:
            raise Pending(f"{function} is not part of this installation of vitlens")
        for c in panel.checkpoints:
            m, name = run.model(c)
            imgs = run.image_set(m, panel)
            kw = run.common()
            if minibatch:
                kw["batch_size"] = _cka_batch(run.batch_size, len(imgs))
            r = fn(m, imgs, name=name, **kw)
            out.add(r, name, c, getattr(r, "n_images", None))

    return runner


RUNNERS: dict[str, Callable[[Panel, Run, PanelRun], None]] = {
    "embedding_filters": _filters,
    "position_embedding_similarity": _posembed,
    "attention_distance": _distance,
    "attention_entropy": _entropy,
    "effective_receptive_field": _erf,
    "layer_cka": _cka,
    "skip_ratios": _by_public_name("skip_ratios"),
    "spatial_localization": _by_public_name("spatial_localization", minibatch=True),
}


def run_panel(panel: Panel, run: Run) -> PanelRun:
    """Run one panel; a missing analysis, or a model it cannot read, gives a pending panel (saying
    why) rather than an error."""
    out = PanelRun(panel)
    runner = RUNNERS.get(panel.analysis)
    try:
        if runner is None:
            raise Pending(f"vitlens has no analysis called {panel.analysis}")
        runner(panel, run, out)
    except Pending as why:
        return PanelRun(panel, pending=str(why))
    except UnsupportedModelError as why:  # one model the analysis cannot read does not cost the other figures
        return PanelRun(panel, pending=f"the analysis cannot read one of its models ({why})")
    return out
