"""Figures: one module per analysis, one function per figure; ``ax=None`` in, axes (or figure) out.

Plot functions draw what a result object already holds; they never compute an analysis.
"""

from __future__ import annotations

__all__ = ["new_axes", "MODEL_COLORS"]

# Colour-blind-safe palette (Okabe & Ito), one colour per model in multi-model figures.
MODEL_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def new_axes(ax=None, figsize=(6.0, 4.0)):
    """Return ``ax``, or a fresh figure's single axes when ``ax`` is None."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax
