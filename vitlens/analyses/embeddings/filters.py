"""RGB embedding filters of a ViT and their principal components (Dosovitskiy et al. 2021, Fig. 7 left).

A ViT's patch embedding is one linear map from a ``3 x p x p`` pixel patch to a ``D``-dimensional
token: ``D`` filters, each an RGB patch. The paper shows "the top principal components of the
learned embedding filters"; they resemble plausible basis functions for a low-dimensional
representation of the fine structure within each patch.

Conventions:

- Filters are read from timm's patch projection ``model.patch_embed.proj``: a convolution
  ``[D, 3, p_h, p_w]`` whose kernel equals its stride, or a linear layer over flattened patches
  (NaFlex's ``model.embeds.proj``, ``[D, p_h * p_w * 3]`` in its own flattening order), unflattened
  to ``[D, 3, p_h, p_w]``. Channels are the model's input channels (RGB after its normalisation).
- The bias is not part of a filter.
- PCA is over the ``D`` filters as samples of ``3 * p_h * p_w`` features, centred by the mean
  filter, with scikit-learn's exact (full SVD) solver and its sign convention (``svd_flip``).
  Components are unit vectors; ``explained_variance_ratio`` is relative to the total variance of
  all components, so the ratios of the first ``k`` sum to at most 1.
- Components are numbered from 1 (PC1 explains the most variance) in frames and figures.

Hybrid models (a CNN backbone feeding the projection) and CNNs have no filters that read pixels
and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError

__all__ = ["EmbeddingFilters", "embedding_filters", "patch_filters"]


def _embed_module(model: nn.Module) -> nn.Module | None:
    embed = getattr(model, "patch_embed", None)
    return embed if embed is not None else getattr(model, "embeds", None)


def patch_filters(model: nn.Module) -> torch.Tensor | None:
    """The patch embedding's linear filters ``[dim, 3, patch_h, patch_w]`` (a detached float64 copy)
    when the projection reads pixel patches, else None (CNNs, hybrids whose projection reads CNN
    features, patch projections vitlens does not know). Read by the model's family adapter."""
    from ...models.families.registry import adapter_for

    try:
        w = adapter_for(model).patch_filters()
    except UnsupportedModelError:
        return None
    return None if w is None else w.detach().to(device="cpu", dtype=torch.float64).clone()


def _refusal(model: nn.Module) -> str:
    """Why ``model`` has no RGB embedding filters, as one sentence."""
    name = type(model).__name__
    embed = _embed_module(model)
    if embed is None:
        return (f"{name} has no patch embedding (it is a CNN or another model without ViT patches), so "
                "it has no RGB embedding filters to decompose.")
    if getattr(embed, "backbone", None) is not None:
        return (f"{name} is a hybrid ViT whose patch projection reads CNN features from its "
                f"{type(embed.backbone).__name__} backbone, not pixels, so it has no RGB embedding filters.")
    proj = getattr(embed, "proj", None)
    what = f"{type(proj).__name__} with {getattr(proj, 'in_channels', getattr(proj, 'in_features', '?'))} inputs"
    return (f"{name}'s patch projection ({what}) is not a linear map of 3-channel pixel patches, so it has "
            "no RGB embedding filters.")


@dataclass(frozen=True, eq=False)
class EmbeddingFilters:
    """Principal components of a ViT's patch-embedding filters.

    Attributes:
        model: the model's name.
        components: ``[component, 3, patch_h, patch_w]`` unit-norm principal directions, PC1 first.
        explained_variance_ratio: ``[component]`` share of the filters' total variance.
        mean_filter: ``[3, patch_h, patch_w]`` the mean filter removed before the PCA.
        filters_shape: ``(dim, 3, patch_h, patch_w)`` of the filters decomposed.
        n_components_requested: the ``n_components`` asked for (``components`` holds at most
            ``min(dim, 3 * patch_h * patch_w)`` of them).
        conventions: the conventions used, by name.
    """

    model: str
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    mean_filter: np.ndarray
    filters_shape: tuple[int, int, int, int]
    n_components_requested: int
    conventions: dict = field(default_factory=dict)

    def __post_init__(self):
        for a in (self.components, self.explained_variance_ratio, self.mean_filter):
            a.setflags(write=False)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def patch_size(self) -> tuple[int, int]:
        return (int(self.filters_shape[2]), int(self.filters_shape[3]))

    def to_frame(self):
        """One row per component: ``model, component`` (from 1), ``explained_variance_ratio``,
        ``cumulative_ratio``, ``embed_dim, patch_h, patch_w``."""
        import pandas as pd

        k = self.n_components
        return pd.DataFrame({
            "model": [self.model] * k,
            "component": np.arange(1, k + 1),
            "explained_variance_ratio": self.explained_variance_ratio,
            "cumulative_ratio": np.cumsum(self.explained_variance_ratio),
            "embed_dim": [int(self.filters_shape[0])] * k,
            "patch_h": [self.patch_size[0]] * k,
            "patch_w": [self.patch_size[1]] * k,
        })

    def to_dict(self) -> dict:
        """Metadata for a run record (not the components)."""
        return {"model": self.model, "filters_shape": list(self.filters_shape),
                "n_components": self.n_components, "n_components_requested": self.n_components_requested,
                "explained_variance_ratio": [float(v) for v in self.explained_variance_ratio],
                "conventions": dict(self.conventions)}

    def plot(self, ax=None, **kwargs):
        """The components as RGB tiles. Returns the axes."""
        from ...plotting.filters import plot_filters
        return plot_filters(self, ax=ax, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


def embedding_filters(model: nn.Module, *, n_components: int = 28, name: str | None = None
                      ) -> EmbeddingFilters:
    """Principal components of the RGB patch-embedding filters of ``model``.

    Args:
        model: a timm ViT whose patch projection reads 3-channel pixel patches. Only its weights
            are read; it is not run, moved or switched.
        n_components: how many components to keep (28 in the ViT paper); fewer when there are
            fewer filters or pixels per filter.
        name: the name in the result (default: its recorded name or class).

    Raises:
        UnsupportedModelError: the model is a CNN, a hybrid, or its projection is not a linear
            map of pixel patches.
        ValueError: ``n_components`` is below 1.
    """
    from sklearn.decomposition import PCA

    from ...models.loading import model_name

    if n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components}")
    w = patch_filters(model)                                     # [dim, 3, patch_h, patch_w]
    if w is None:
        raise UnsupportedModelError(_refusal(model))
    d = int(w.shape[0])
    flat = w.reshape(d, -1).numpy()                              # [dim, 3 * patch_h * patch_w]
    k = min(n_components, d, flat.shape[1])
    pca = PCA(n_components=k, svd_solver="full").fit(flat)
    shape = tuple(int(s) for s in w.shape)
    conventions = {
        "source": "patch projection weight, bias excluded",
        "centring": "mean filter removed before the PCA",
        "solver": "scikit-learn PCA, full SVD, svd_flip sign convention",
        "explained_variance_ratio": "share of the total variance of all components",
        "numbering": "components numbered from 1, PC1 explains the most variance",
    }
    return EmbeddingFilters(
        model=model_name(model, name),
        components=pca.components_.reshape(k, *shape[1:]).astype(np.float64),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
        mean_filter=pca.mean_.reshape(shape[1:]).astype(np.float64),
        filters_shape=shape, n_components_requested=int(n_components), conventions=conventions)
