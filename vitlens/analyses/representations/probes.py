"""Few-shot linear probes per layer (ViT paper Sec. 4 and Table 8; Raghu et al. 2021, Figs. 11 and 13).

How much of the class can a linear map read from a layer's frozen features, given a few labelled
images? Per layer and representation (``cls``, ``gap``, ``token``: see
:mod:`~vitlens.analyses.representations.probe_features`), the ViT paper's closed-form probe
(:mod:`~vitlens.analyses.representations.ridge`: regularised least squares to ``{-1, 1}^C``
targets, unpenalised bias by centring, prediction by argmax) is fitted on ``shots`` images per
class and scored on every other image.

Conventions (named parameters where the literature leaves a choice):

- ``shots`` per class: 10 by default, as Raghu et al. (10-shot ImageNet); the ViT paper's Table 8
  reports 1, 5, 10 and 25 shots.
- ``repeats``: independent draws of the shots, seeded by ``numpy.random.default_rng((seed, repeat))``
  (per class, ``shots`` of its images without replacement); every layer and representation of a
  repeat uses the same shots, so layers are compared on the same images. The test set of a repeat is
  every image read that is not one of its shots (``n_test``). Accuracy is averaged over repeats, and
  its spread is the standard deviation over repeats (ddof 1; NaN with one repeat).
- ``regularization``: ``lambda`` of the least squares, fixed (default 1.0, on standardised features)
  or ``"heldout"``: chosen per probe from ``HELDOUT_GRID`` on held-out shots (fold ``f`` holds out the
  ``f``-th shot of every class; the best mean held-out accuracy, the largest ``lambda`` on ties).
- ``standardize``: z-score every feature with the shots' mean and standard deviation first (default,
  as big_vision's few-shot evaluator whitens its features); False only centres them.
- ``token``: one probe per position (patch token or feature-map cell), its accuracy averaged over
  positions (Raghu et al. Fig. 11, left); ``max_tokens`` bounds how many positions are probed.
- Chance is ``1 / n_classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch.nn as nn

from ...runtime.batches import iter_batches, num_images
from ...runtime.frozen import freeze_arrays
from ...runtime.modes import MODE_RULE
from .probe_features import REPRESENTATIONS, ProbeFeatures
from .ridge import heldout_regularization, ridge_accuracy

__all__ = ["ProbeResult", "linear_probes", "draw_shots", "HELDOUT_GRID", "REPRESENTATIONS", "probe_layers"]

#: ``lambda`` values tried with ``regularization="heldout"``.
HELDOUT_GRID = tuple(float(2.0 ** k) for k in range(-6, 17, 2))


def draw_shots(labels: np.ndarray, shots: int, repeats: int, seed: int = 0) -> np.ndarray:
    """Indices into ``labels`` of the shots of every repeat, ``[repeat, class x shot]``: class by class
    in label order, each class's ``shots`` in the order drawn (see the module docstring)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    out = np.empty((repeats, len(classes) * shots), dtype=np.int64)
    for r in range(repeats):
        rng = np.random.default_rng((seed, r))
        out[r] = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in classes])
    return out


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Few-shot linear-probe accuracy per layer and representation.

    Attributes:
        model: the model's name; kind: ``"vit"`` or ``"cnn"``.
        layers: module names in forward order; depth_fraction: ``[layer]`` 0 first to 1 last.
        representations: those probed, in the order of the arrays' second axis.
        accuracy: ``[layer, representation]`` mean over repeats.
        accuracy_std: ``[layer, representation]`` standard deviation over repeats (ddof 1).
        accuracy_repeats: ``[layer, representation, repeat]``.
        regularization: ``[layer, representation, repeat]`` the ``lambda`` used (for ``token``, the
            median over positions).
        shot_indices: ``[repeat, class x shot]`` file indices of each repeat's shots.
        n_positions, n_tokens_probed: ``[layer]`` positions of each layer, and those probed by ``token``.
        shots, repeats, n_classes, class_names, n_images (read), n_test (test images per repeat).
        conventions: the conventions used, by name.
    """

    model: str
    kind: str
    layers: tuple[str, ...]
    depth_fraction: np.ndarray
    representations: tuple[str, ...]
    accuracy: np.ndarray
    accuracy_std: np.ndarray
    accuracy_repeats: np.ndarray
    regularization: np.ndarray
    shot_indices: np.ndarray
    n_positions: np.ndarray
    n_tokens_probed: np.ndarray
    shots: int
    repeats: int
    n_classes: int
    class_names: tuple[str, ...]
    n_images: int
    n_test: int
    conventions: dict = field(default_factory=dict)

    def __post_init__(self):
        freeze_arrays(self)

    @property
    def chance(self) -> float:
        """The accuracy of a guess: ``1 / n_classes``."""
        return 1.0 / self.n_classes

    def to_frame(self):
        """One row per (layer, representation): ``model, kind, layer, depth, depth_fraction,
        representation, shots, repeats, accuracy, accuracy_std, chance, n_classes, n_test,
        n_tokens``; ``depth`` counts layers from 0."""
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            for j, rep in enumerate(self.representations):
                rows.append({"model": self.model, "kind": self.kind, "layer": layer, "depth": i,
                             "depth_fraction": float(self.depth_fraction[i]), "representation": rep,
                             "shots": self.shots, "repeats": self.repeats, "accuracy": float(self.accuracy[i, j]),
                             "accuracy_std": float(self.accuracy_std[i, j]), "chance": self.chance,
                             "n_classes": self.n_classes, "n_test": self.n_test,
                             "n_tokens": int(self.n_tokens_probed[i]) if rep == "token" else 1})
        return pd.DataFrame(rows)

    def repeats_frame(self):
        """One row per (layer, representation, repeat): ``model, layer, depth, representation, repeat,
        accuracy, regularization``."""
        import pandas as pd

        L, R, K = self.accuracy_repeats.shape
        i, j, k = np.unravel_index(np.arange(L * R * K), (L, R, K))
        return pd.DataFrame({"model": self.model, "layer": [self.layers[a] for a in i], "depth": i,
                             "representation": [self.representations[b] for b in j], "repeat": k,
                             "accuracy": self.accuracy_repeats.reshape(-1),
                             "regularization": self.regularization.reshape(-1)})

    def to_dict(self) -> dict:
        """Metadata for a run record (the accuracies are in the frame)."""
        return {"model": self.model, "kind": self.kind, "layers": list(self.layers),
                "representations": list(self.representations), "shots": self.shots, "repeats": self.repeats,
                "n_classes": self.n_classes, "class_names": list(self.class_names), "n_images": self.n_images,
                "n_test": self.n_test, "chance": self.chance, "n_positions": self.n_positions.tolist(),
                "n_tokens_probed": self.n_tokens_probed.tolist(), "shot_indices": self.shot_indices.tolist(),
                "conventions": dict(self.conventions)}

    def plot(self, ax=None, **kwargs):
        """Accuracy against depth, one line per representation, spread bands and chance. Returns the axes."""
        from ...plotting.probes import plot_probes
        return plot_probes(self, ax=ax, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


def _labels_for(images, labels, class_names):
    """Labels ``[image]`` and class names, from ``labels`` or a :class:`~vitlens.data.labels.LabelledImages`."""
    if labels is None:
        labels = getattr(images, "labels", None)
        class_names = class_names or getattr(images, "class_names", None)
        if labels is None:
            raise ValueError("labels are needed: pass labels=[image] class indices, or LabelledImages as images")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_images(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {num_images(images)} integer class indices (one per image), got "
                         f"{labels.dtype} {labels.shape}")
    if labels.min(initial=0) < 0:
        raise ValueError("labels must be non-negative class indices")
    if class_names is None:
        return labels.astype(np.int64), None
    if labels.size and labels.max() >= len(class_names):
        raise ValueError(f"a label is {int(labels.max())} but there are {len(class_names)} class names")
    return labels.astype(np.int64), tuple(str(c) for c in class_names)


def probe_layers(features: ProbeFeatures, labels: np.ndarray, class_names: Sequence[str] | None, *, shots: int,
                 repeats: int, regularization: float | str, standardize: bool, seed: int, model: str,
                 was_training: bool = False, progress: bool = False) -> ProbeResult:
    """Fit and score the probes on features already read (the second half of :func:`linear_probes`).

    ``class_names`` None: the classes are the labels of the images read, named by their index;
    given, every class named must have its shots.

    Raises:
        LabelError: fewer than two classes among the images read, or fewer than ``shots + 1`` images
            in a class (see :func:`vitlens.data.labels.check_classes`).
    """
    from tqdm.auto import tqdm

    from ...data.labels import check_classes

    avail = np.flatnonzero(features.seen)
    present = sorted(set(labels[avail].tolist()))
    if class_names is None:                                                # classes are the labels present
        class_names = [str(c) for c in range(max(present, default=-1) + 1)]
        check_classes(np.searchsorted(present, labels[avail]), shots, [class_names[c] for c in present])
    else:                                                                  # every named class needs its shots
        check_classes(labels[avail], shots, class_names)
    remap = np.full(len(class_names), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    y = remap[labels[avail]]                                               # dense labels of the images read
    draws = draw_shots(y, shots, repeats, seed)                            # positions in avail
    L, P = len(features.layers), len(features.representations)
    acc, lam_used = np.zeros((L, P, repeats)), np.zeros((L, P, repeats))
    heldout = isinstance(regularization, str)
    # Many small batched solves: BLAS threads only contend for them (tens of times slower on a busy
    # machine), so they run on one, restored after. threadpoolctl comes with scikit-learn.
    from threadpoolctl import threadpool_limits

    with tqdm(total=L * P * repeats, desc="probes", unit="probe", disable=not progress, leave=False) as bar, \
            threadpool_limits(limits=1, user_api="blas"):
        for i in range(L):
            for j, rep in enumerate(features.representations):
                x = features.features[(i, rep)][avail]                     # [image, (position,) channel]
                if x.ndim == 3:
                    x = x.transpose(1, 0, 2)                               # [position, image, channel]
                for r in range(repeats):
                    shot = draws[r]
                    test = np.setdiff1d(np.arange(len(avail)), shot)
                    xs, xt = x[..., shot, :], x[..., test, :]
                    lam = (heldout_regularization(xs, y[shot], n_classes=len(present), grid=HELDOUT_GRID,
                                                  standardize=standardize) if heldout else float(regularization))
                    a = ridge_accuracy(xs, y[shot], xt, y[test], n_classes=len(present), regularization=lam,
                                       standardize=standardize)
                    acc[i, j, r], lam_used[i, j, r] = a.mean(), np.median(lam)
                    bar.update(1)
    std = acc.std(-1, ddof=1) if repeats > 1 else np.full((L, P), np.nan)
    n_pos = np.array(features.n_positions(), dtype=np.int64)
    probed = np.array([len(p) if p is not None else n for p, n in zip(features.positions, n_pos)], dtype=np.int64)
    return ProbeResult(
        model=model, kind=features.kind, layers=tuple(features.layers), depth_fraction=features.depth_fraction.copy(),
        representations=features.representations, accuracy=acc.mean(-1), accuracy_std=std, accuracy_repeats=acc,
        regularization=lam_used, shot_indices=avail[draws], n_positions=n_pos, n_tokens_probed=probed,
        shots=int(shots), repeats=int(repeats), n_classes=len(present),
        class_names=tuple(class_names[c] for c in present), n_images=int(len(avail)),
        n_test=int(len(avail) - draws.shape[1]), conventions={
            "probe": "least squares to {-1, 1} targets, ridge penalty lambda ||W||^2, bias unpenalised (centring), "
                     "argmax prediction",
            "regularization": regularization if heldout else float(regularization),
            "heldout_grid": list(HELDOUT_GRID) if heldout else None,
            "standardize": "z-score with the shots' mean and std (ddof 0)" if standardize else "centre only",
            "shots": "per class, drawn without replacement by numpy default_rng((seed, repeat))", "seed": int(seed),
            "test_set": "every image read that is not a shot", "spread": "std over repeats, ddof 1",
            "token": "one probe per position, accuracy averaged over positions",
            "max_tokens": features.max_tokens, "token_positions": [None if p is None else p.tolist()
                                                                   for p in features.positions],
            "grid": [None if g is None else list(g) for g in features.grid],
            "feature_maps": bool(features.feature_maps),
            "cls": "class token", "gap": "mean of the patch tokens (spatial mean for feature maps)",
            "layer_order": "module registration order", "mode": MODE_RULE, "was_training": bool(was_training)})


def linear_probes(model: nn.Module, images, labels: Sequence[int] | np.ndarray | None = None, *,
                  class_names: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                  representations: Sequence[str] | None = None, shots: int = 10, repeats: int = 5,
                  regularization: float | str = 1.0, standardize: bool = True, max_tokens: int | None = 64,
                  seed: int = 0, batch_size: int = 32, workers: int = 0, progress: bool = False,
                  precision: str = "fp32", name: str | None = None) -> ProbeResult:
    """Few-shot linear-probe accuracy of every layer's frozen features (see the module docstring).

    Args:
        model: a ViT or CNN vitlens reads (or any module, with ``layers`` given); run in eval mode
            inside the call only.
        images: a float tensor ``[image, 3, height, width]`` preprocessed for ``model``, an ImageSet,
            or a :class:`~vitlens.data.labels.LabelledImages` (then ``labels`` may be left out; the
            model's own preprocessing is used).
        labels: ``[image]`` class index of each image (file index order).
        class_names: the classes' names, by index.
        layers: module names (default: :func:`~vitlens.capture.outputs.default_layers`: ViT blocks,
            CNN stages).
        representations: among ``"cls"``, ``"gap"``, ``"token"`` (default: every one the model has).
        shots, repeats, regularization, standardize, max_tokens, seed: see the module docstring.
        precision: forward pass in ``fp32``, ``bf16`` or ``fp16`` (autocast); probes in float64.

    Raises:
        LabelError: too few classes or too few images in a class for ``shots``.
        UnsupportedModelError: ``cls`` asked of a model without a class token, or unreadable layers.
    """
    from tqdm.auto import tqdm

    from ...models.loading import model_name

    if shots < 1 or repeats < 1:
        raise ValueError(f"shots and repeats must be at least 1, got {shots} and {repeats}")
    if isinstance(regularization, str):
        if regularization != "heldout":
            raise ValueError(f"regularization must be a positive number or 'heldout', got {regularization!r}")
        if shots < 2:
            raise ValueError("regularization='heldout' needs at least 2 shots per class")
    elif not (np.isfinite(regularization) and regularization > 0):
        raise ValueError(f"regularization must be positive, got {regularization}")
    labels, class_names = _labels_for(images, labels, class_names)
    if hasattr(images, "image_set"):
        images = images.image_set(model)
    feats = ProbeFeatures(model, num_images(images), layers, representations=representations,
                          max_tokens=max_tokens, seed=seed, precision=precision)
    was_training = model.training
    with tqdm(total=num_images(images), desc="probe features", unit="img", disable=not progress, leave=False) as bar:
        for x, idx in iter_batches(images, batch_size, workers=workers):
            feats.add(x, idx)
            bar.update(len(idx))
    if hasattr(images, "check_used"):
        images.check_used(int(feats.seen.sum()))
    return probe_layers(feats, labels, class_names, shots=shots, repeats=repeats, regularization=regularization,
                        standardize=standardize, seed=seed, model=model_name(model, name),
                        was_training=was_training, progress=progress)
