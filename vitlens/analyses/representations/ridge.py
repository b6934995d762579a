"""Closed-form regularised least squares to {-1, 1}^C targets: the few-shot probe of the ViT paper.

For shots ``X`` ``[n, d]`` with labels ``y`` and targets ``Y = 2 onehot(y) - 1`` ``[n, C]``:

    (W, b) = argmin ||X W + 1 b^T - Y||^2 + lambda ||W||^2

with the bias ``b`` not penalised. It is solved by centring: with the shot means ``x_bar`` and
``Y_bar``, ``W = (Xc^T Xc + lambda I)^-1 Xc^T (Y - 1 Y_bar^T)`` and ``b = Y_bar - W^T x_bar``, which
is the solution of the augmented normal equations ``([X 1]^T [X 1] + diag(lambda, ..., lambda, 0))
[W; b^T] = [X 1]^T Y`` (and scikit-learn's ``Ridge(alpha=lambda, fit_intercept=True)``). A test
image's prediction is ``argmax_c (x W + b)_c``.

``standardize=True`` first z-scores every feature with the shots' mean and standard deviation
(ddof 0; a feature constant over the shots is only centred), for the shots and the test images
alike, as the big_vision few-shot evaluator whitens its features; then the same ``lambda`` means
the same thing at every layer, whatever the scale of its features.

Every probe is solved through an eigendecomposition of the smaller of ``Xc Xc^T`` ``[n, n]`` and
``Xc^T Xc`` ``[d, d]``, in float64, so that several ``lambda`` cost one decomposition; many probes
of one shape (one per token position) are solved as one batch ``[probe, ...]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["ridge_scores", "ridge_accuracy", "heldout_regularization", "targets"]

_TEST_CHUNK = 4096  # test images scored at a time


def targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``{-1, 1}`` targets ``[n, n_classes]``: +1 at each label, -1 elsewhere."""
    y = -np.ones((len(labels), n_classes))
    y[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return y


class _Solver:
    """The decomposition of one batch of probes' shots ``[probe, n, d]``, for any ``lambda``."""

    def __init__(self, shots: np.ndarray, labels: np.ndarray, n_classes: int, standardize: bool):
        x = np.asarray(shots, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        self.mean = x.mean(1, keepdims=True)                             # [probe, 1, d]
        if standardize:
            sd = x.std(1, keepdims=True)
            self.scale = np.where(sd > 0, sd, 1.0)
        else:
            self.scale = np.ones_like(self.mean)
        x = (x - self.mean) / self.scale                                  # centred shots [probe, n, d]
        y = targets(labels, n_classes)
        self.y_mean = y.mean(0)                                           # [C]
        yc = y - self.y_mean
        self.x = x
        n, d = x.shape[1:]
        self.dual = n <= d
        if self.dual:                                                     # G = Xc Xc^T = Q diag(e) Q^T
            self.e, self.q = np.linalg.eigh(x @ x.transpose(0, 2, 1))
        else:                                                             # C = Xc^T Xc = V diag(e) V^T
            self.e, self.q = np.linalg.eigh(x.transpose(0, 2, 1) @ x)
            yc = x.transpose(0, 2, 1) @ yc                                # Xc^T Yc [probe, d, C]
        self.a = self.q.transpose(0, 2, 1) @ yc                           # [probe, n or d, C]

    def coefficients(self, lam: float) -> np.ndarray:
        """Dual coefficients ``(G + lambda I)^-1 Yc`` ``[probe, n, C]``, or the weights ``W``
        ``[probe, d, C]`` (of the standardised features)."""
        return self.q @ (self.a / (self.e + lam)[..., None])

    def scores(self, test: np.ndarray, lams: Sequence[float]) -> np.ndarray:
        """``x W + b`` of test features ``[probe, m, d]`` for every ``lambda``: ``[lambda, probe, m, C]``."""
        t = (np.asarray(test, dtype=np.float64).reshape(self.x.shape[0], -1, self.x.shape[2]) - self.mean) / self.scale
        k = t @ self.x.transpose(0, 2, 1) if self.dual else t             # [probe, m, n] or [probe, m, d]
        return np.stack([k @ self.coefficients(l) + self.y_mean for l in lams])


def _check_lambda(lams: Sequence[float]) -> list[float]:
    lams = [float(l) for l in np.atleast_1d(lams)]
    if not lams or not all(np.isfinite(l) and l > 0 for l in lams):
        raise ValueError(f"the regularisation must be positive and finite, got {lams}")
    return lams


def ridge_scores(shots: np.ndarray, labels: np.ndarray, test: np.ndarray, *, n_classes: int,
                 regularization: float = 1.0, standardize: bool = True) -> np.ndarray:
    """The probe's scores ``x W + b`` of ``test`` (see the module docstring).

    Args:
        shots: ``[n, d]`` features, or ``[probe, n, d]`` for several probes on the same labels.
        labels: ``[n]`` class indices of the shots, in ``0 .. n_classes - 1``.
        test: ``[m, d]`` (or ``[probe, m, d]``) features to score.
        regularization: ``lambda`` (> 0).

    Returns:
        ``[m, n_classes]`` (or ``[probe, m, n_classes]``).
    """
    lam = _check_lambda(regularization)[:1]
    out = _Solver(shots, labels, n_classes, standardize).scores(test, lam)[0]
    return out[0] if np.ndim(shots) == 2 else out


def ridge_accuracy(shots: np.ndarray, labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, *,
                   n_classes: int, regularization: float | Sequence[float] | np.ndarray = 1.0,
                   standardize: bool = True) -> np.ndarray:
    """Accuracy ``[probe]`` of probes ``[probe, n, d]`` on ``test`` ``[probe, m, d]`` (argmax of the scores).

    ``regularization`` is one ``lambda`` for all probes, or one per probe ``[probe]``. Test images
    are scored in chunks, so ``m`` may be large.
    """
    shots = np.asarray(shots)
    if shots.ndim == 2:
        shots, test = shots[None], np.asarray(test)[None]
    p = shots.shape[0]
    lam = np.asarray(regularization, dtype=np.float64)
    lam = np.full(p, float(lam)) if lam.ndim == 0 else lam
    if lam.shape != (p,):
        raise ValueError(f"regularization must be one value or one per probe ({p}), got shape {lam.shape}")
    _check_lambda(lam)
    grid, which = np.unique(lam, return_inverse=True)
    solver = _Solver(shots, labels, n_classes, standardize)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    correct = np.zeros(p)
    for s in range(0, test.shape[1], _TEST_CHUNK):
        sc = solver.scores(test[:, s:s + _TEST_CHUNK], grid)             # [lambda, probe, chunk, C]
        pred = sc[which, np.arange(p)].argmax(-1)                        # [probe, chunk]
        correct += (pred == test_labels[s:s + _TEST_CHUNK]).sum(1)
    return correct / test.shape[1]


def heldout_regularization(shots: np.ndarray, labels: np.ndarray, *, n_classes: int, grid: Sequence[float],
                           standardize: bool = True) -> np.ndarray:
    """``lambda`` per probe ``[probe]`` chosen on held-out shots.

    Fold ``f`` holds out the ``f``-th shot of every class (so there are as many folds as shots per
    class, at least 2) and fits on the rest (standardised with the rest's statistics); the
    ``lambda`` of ``grid`` with the best mean held-out accuracy is chosen, the largest on ties.

    Args:
        shots: ``[probe, n, d]`` with the shots of each class in the order of their draw.
    """
    grid = sorted(_check_lambda(grid))
    shots = np.asarray(shots)
    if shots.ndim == 2:
        shots = shots[None]
    labels = np.asarray(labels, dtype=np.int64)
    rank = np.zeros(len(labels), dtype=np.int64)                         # position of each shot in its class
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    folds = int(rank.max()) + 1
    if folds < 2:
        raise ValueError("choosing the regularisation on held-out shots needs at least 2 shots per class")
    acc = np.zeros((len(grid), shots.shape[0]))
    for f in range(folds):
        fit, out = rank != f, rank == f
        solver = _Solver(shots[:, fit], labels[fit], n_classes, standardize)
        pred = solver.scores(shots[:, out], grid).argmax(-1)              # [lambda, probe, held out]
        acc += (pred == labels[out]).mean(-1)
    best = len(grid) - 1 - np.argmax(acc[::-1], axis=0)                  # the largest lambda on ties
    return np.asarray(grid)[best]
