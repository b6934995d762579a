"""Figures: one module per analysis, one function per figure; ``ax=None`` in, axes (or figure) out.

Plot functions draw what a result object already holds; they never compute an analysis. Every
``plot_*(result, ax=None)`` returns its axes and every ``*_figure(results)`` returns a figure; all
are importable from here (and from :mod:`vitlens`), each module loaded on first use, so importing
this package loads neither matplotlib nor torch.
"""

from __future__ import annotations

import importlib

# Colour-blind-safe palette (Okabe & Ito), one colour per model in multi-model figures.
MODEL_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

#: The figure functions, by the module (of this package) that defines them.
FIGURES = {
    "distance": ("plot_distance_by_depth", "plot_sorted_heads", "distance_figure"),
    "windows": ("plot_windowed_distance", "windowed_distance_figure"),
    "posembed": ("position_embedding_figure",),
    "rollout": ("plot_overlay", "contact_sheet_figure", "plot_deletion"),
    "receptive_field": ("plot_spread", "receptive_field_figure"),
    "locality": ("plot_locality", "locality_figure"),
    "filters": ("plot_filters", "plot_scree", "filters_figure"),
    "cka": ("plot_cka", "cka_figure"),
    "cost": ("plot_flops", "plot_memory", "plot_attention_share", "plot_throughput", "cost_figure"),
    "tokens": ("plot_norm_histogram", "plot_high_norm_positions", "token_norms_figure", "high_norm_positions_figure"),
    "skip": ("plot_skip_ratios", "plot_skip_tokens", "skip_figure"),
    "localization": ("plot_localization", "localization_figure"),
    "probes": ("plot_probes", "probes_figure"),
}
_MODULE_OF = {name: module for module, names in FIGURES.items() for name in names}

__all__ = ["new_axes", "MODEL_COLORS", "FIGURES", *_MODULE_OF]


def new_axes(ax=None, figsize=(6.0, 4.0)):
    """Return ``ax``, or a fresh figure's single axes when ``ax`` is None."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
