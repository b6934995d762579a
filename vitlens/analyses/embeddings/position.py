"""Position-embedding similarity: how a ViT's learned absolute position table encodes the 2D grid.

Dosovitskiy et al. (2021), Fig. 7 centre: the tile at row ``i``, column ``j`` shows the cosine
similarity between the position embedding of patch ``(i, j)`` and those of all patches. Nearby
patches have similar embeddings, and patches in the same row or column are more alike than others.

Only the patch part of ``model.pos_embed`` is analysed. timm stores the table as
``[1, prefix + N, D]`` (class, distillation and register entries first) or, with
``no_embed_class=True``, as ``[1, N, D]`` with no prefix entries at all; prefix entries are never
part of the grid. Which tokens are prefix tokens and what the grid is comes from
:func:`vitlens.models.layout.token_layout`, never from a square root of the table length.

Models that encode position otherwise are reported plainly: BEiT's relative position bias has no
absolute table (:class:`~vitlens.runtime.errors.UnsupportedModelError`), and EVA-02's rotary embedding is
noted as not shown when its absolute table is analysed.

Conventions (named parameters of :func:`position_embedding_similarity`):

- ``input_size``: default None analyses the table as stored (the model's own input size). Another
  size resamples the table with timm's ``resample_abs_pos_embed`` in 2D, exactly as a
  ``dynamic_img_size`` model does at that size and as fine-tuning at that resolution does.
- ``interpolation`` / ``antialias``: timm's defaults, ``"bicubic"`` with antialiasing. The ViT
  paper zoomed the table linearly (``interpolation="bilinear", antialias=False``).
- A zero embedding has similarity 0 with every patch, itself included (noted when it happens).
- Summary numbers use every ordered pair of distinct patches; distance is Euclidean in patch-grid
  steps (row and column index units). The row/column score (same row or column vs all others) is
  confounded with distance, since such pairs are closer on average; ``row_column_excess`` compares
  them with other pairs at the same distance instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch.nn as nn

from ...models.loading import model_name
from ...models.tokens import TokenLayout
from ...runtime.errors import UnsupportedModelError
from ...runtime.sizes import size_pair

__all__ = [
    "PositionEmbeddingSimilarity",
    "position_embedding_similarity",
    "patch_position_embeddings",
    "cosine_similarity_grid",
    "similarity_distance_correlation",
    "row_column_means",
    "row_column_excess",
]

_EPS = 1e-12


# --------------------------------------------------------------------------- pure maths

def cosine_similarity_grid(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every grid cell's embedding with every other's.

    Args:
        embeddings: ``[grid_h, grid_w, dim]`` one vector per patch position.

    Returns:
        ``[grid_h, grid_w, grid_h, grid_w]`` float64: element ``[i, j, k, l]`` is
        ``<e[i, j], e[k, l]> / (|e[i, j]| |e[k, l]|)``. A zero vector has similarity 0 with all.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 3:
        raise ValueError(f"embeddings must be [grid_h, grid_w, dim], got shape {e.shape}")
    gh, gw, d = e.shape
    flat = e.reshape(gh * gw, d)                                  # [patch, dim]
    norm = np.linalg.norm(flat, axis=1, keepdims=True)            # [patch, 1]
    unit = flat / np.maximum(norm, _EPS)
    sim = np.clip(unit @ unit.T, -1.0, 1.0)                       # [query, key]
    return sim.reshape(gh, gw, gh, gw)


def _grid_pairs(grid_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row and column of query and key for every ordered pair, each ``[query, key]``."""
    gh, gw = grid_size
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return rows[:, None], cols[:, None], rows[None, :], cols[None, :]


def _flat(similarity: np.ndarray) -> np.ndarray:
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 4 or s.shape[:2] != s.shape[2:]:
        raise ValueError(f"similarity must be [grid_h, grid_w, grid_h, grid_w], got shape {s.shape}")
    n = s.shape[0] * s.shape[1]
    return s.reshape(n, n)


def similarity_distance_correlation(similarity: np.ndarray) -> float:
    """Pearson correlation between similarity and spatial distance over pairs of distinct patches.

    Args:
        similarity: ``[grid_h, grid_w, grid_h, grid_w]``.

    Returns:
        r in [-1, 1]; negative when nearby patches have more similar embeddings. NaN when either
        quantity is constant (for example a 1 x 1 grid). Distance is Euclidean in grid steps.
    """
    s = _flat(similarity)
    qr, qc, kr, kc = _grid_pairs(similarity.shape[:2])
    dist = np.sqrt((qr - kr) ** 2 + (qc - kc) ** 2).astype(np.float64)   # [query, key]
    off = ~np.eye(s.shape[0], dtype=bool)
    x, y = s[off], dist[off]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def row_column_means(similarity: np.ndarray) -> tuple[float, float]:
    """Mean similarity to patches in the same row or column, and to all other patches.

    Args:
        similarity: ``[grid_h, grid_w, grid_h, grid_w]``.

    Returns:
        ``(same_row_or_column, other)``: means over ordered pairs of distinct patches that share a
        row or a column, and over pairs that share neither. Their difference is the row/column
        score; NaN where a set is empty (a grid with one row or one column has no "other" pairs).
    """
    s = _flat(similarity)
    qr, qc, kr, kc = _grid_pairs(similarity.shape[:2])
    off = ~np.eye(s.shape[0], dtype=bool)
    line = ((qr == kr) | (qc == kc)) & off
    other = ~((qr == kr) | (qc == kc))
    same_mean = float(s[line].mean()) if line.any() else float("nan")
    other_mean = float(s[other].mean()) if other.any() else float("nan")
    return same_mean, other_mean


def row_column_excess(similarity: np.ndarray) -> float:
    """Row/column similarity beyond what distance alone explains.

    Patches in the same row or column are on average closer than other pairs, so the plain
    row/column score is positive for any table whose similarity falls with distance. Here each pair
    sharing a row or column is compared with pairs sharing neither at the same distance: the
    expected similarity at distance ``d`` is the mean over pairs sharing neither at each distance,
    linearly interpolated in ``d``. Only row/column pairs within the range of those distances are
    used (offsets of 2 or more along the line).

    Args:
        similarity: ``[grid_h, grid_w, grid_h, grid_w]``.

    Returns:
        Mean of (similarity - expected similarity) over the usable row/column pairs: about 0 for an
        isotropic table, positive for row-column structure. NaN when no pair is usable (grids with
        fewer than 3 rows and 3 columns, or a single row or column).
    """
    s = _flat(similarity)
    qr, qc, kr, kc = _grid_pairs(similarity.shape[:2])
    d2 = (qr - kr) ** 2 + (qc - kc) ** 2                            # [query, key] squared distance
    shares = (qr == kr) | (qc == kc)
    line = shares & (d2 > 0)
    other = ~shares
    if not other.any():
        return float("nan")
    levels = np.unique(d2[other])
    expected = np.array([s[other & (d2 == v)].mean() for v in levels])
    use = line & (d2 >= levels[0]) & (d2 <= levels[-1])
    if not use.any():
        return float("nan")
    predicted = np.interp(np.sqrt(d2[use]), np.sqrt(levels), expected)
    return float((s[use] - predicted).mean())


# --------------------------------------------------------------------------- reading the model

def _has_relative_bias(model: nn.Module) -> bool:
    return any(hasattr(m, "relative_position_bias_table") or getattr(m, "rel_pos_h", None) is not None
               or "RelPos" in type(m).__name__
               or "RelativePosition" in type(m).__name__ for m in model.modules())


def _has_rotary(model: nn.Module) -> bool:
    if getattr(model, "rope", None) is not None:
        return True
    return any("Rotary" in type(m).__name__ or "Rope" in type(m).__name__ for m in model.modules())


def _no_table_error(model: nn.Module, detail: str) -> UnsupportedModelError:
    name = model_name(model)
    if name != type(model).__name__:
        name += f" ({type(model).__name__})"
    if _has_relative_bias(model):
        how = ("it encodes position with a relative position bias added inside each attention block "
               "(as BEiT does), which depends only on the offset between two patches")
    elif _has_rotary(model):
        how = "it encodes position only with rotary embeddings (RoPE) applied inside attention"
    else:
        how = detail
    return UnsupportedModelError(
        f"position-embedding similarity does not apply to {name}: it has no "
        f"learned absolute position-embedding table; {how}. The analysis compares the patches' "
        "absolute embeddings, so it needs a model with one, such as vit_base_patch16_224, "
        "deit_base_distilled_patch16_224 or vit_small_patch14_reg4_dinov2.")


@dataclass(frozen=True)
class _Table:
    embeddings: np.ndarray               # [grid_h, grid_w, dim]
    layout: TokenLayout                  # at the analysed size
    source_layout: TokenLayout           # the stored table's
    prefix_entries: int
    resampled: bool
    notes: tuple[str, ...]


def _first_stage_layout(adapter) -> TokenLayout | None:
    """For a hierarchical model built with an absolute table (transformers Swin with
    ``use_absolute_embeddings``): the first stage's patch grid, where the table is added."""
    if not hasattr(adapter, "window_layout") or adapter.position_table() is None:
        return None
    g = adapter.window_layout().blocks[0]
    return TokenLayout(prefix_kinds=(), grid_size=tuple(g.grid_size), patch_stride=tuple(g.stride),
                       input_size=tuple(g.input_size))


def _read_table(model: nn.Module, input_size=None, *, interpolation: str = "bicubic",
                antialias: bool = True) -> _Table:
    """The model's learned absolute table on its patch grid, through its family adapter."""
    from ...models.families.registry import adapter_for

    adapter = adapter_for(model)
    try:
        own = adapter.token_layout()
    except UnsupportedModelError as refusal:
        own = _first_stage_layout(adapter)  # a windowed model with an absolute table on its first stage
        if own is None:
            if hasattr(adapter, "window_layout"):
                raise
            raise UnsupportedModelError(
                f"{model_name(model)} ({type(model).__name__}) is not a ViT with a patch grid, so it has "
                "no patch position embeddings to compare.") from refusal
    table = adapter.position_table(input_size, interpolation=interpolation, antialias=antialias)
    if table is None:
        raise _no_table_error(model, "it stores no learned absolute position table")
    th, tw = (int(v) for v in table.patches.shape[:2])
    emb = table.patches.detach().cpu().double().numpy()
    resampled = (th, tw) != own.grid_size
    target = own if not resampled else TokenLayout(
        prefix_kinds=own.prefix_kinds, grid_size=(th, tw), patch_stride=own.patch_stride,
        input_size=size_pair(input_size) if input_size is not None else own.input_size)
    if input_size is not None and not resampled:
        target = TokenLayout(prefix_kinds=own.prefix_kinds, grid_size=own.grid_size,
                             patch_stride=own.patch_stride, input_size=size_pair(input_size))
    gh, gw = own.grid_size
    notes: list[str] = []
    if resampled:
        notes.append(f"table resampled from a {gh} x {gw} grid ({own.input_size[0]} x {own.input_size[1]} px) "
                     f"to {th} x {tw} ({target.input_size[0]} x {target.input_size[1]} px) with {table.resampling}")
    if _has_rotary(model):
        notes.append("rotary position embedding (RoPE) not shown: this model also encodes position "
                     "with rotary embeddings inside attention; only its learned absolute table is analysed")
    if _has_relative_bias(model):
        notes.append("relative position bias not shown: this model also adds a relative position bias "
                     "inside attention; only its absolute table is analysed")
    if not table.trainable:
        notes.append("the table is fixed (not trained): it does not require gradients")
    zero = int((np.linalg.norm(emb.reshape(th * tw, -1), axis=1) <= _EPS).sum())
    if zero:
        notes.append(f"{zero} patch embedding(s) are zero vectors; their similarity is 0 by convention")
    return _Table(embeddings=emb, layout=target, source_layout=own, prefix_entries=table.prefix_entries,
                  resampled=resampled, notes=tuple(notes))


def patch_position_embeddings(model: nn.Module, input_size: int | Sequence[int] | None = None, *,
                              interpolation: str = "bicubic", antialias: bool = True) -> np.ndarray:
    """The patch part of ``model.pos_embed`` laid out on the patch grid, prefix entries removed.

    Args:
        model: a timm ViT with a learned absolute table (``pos_embed`` of shape
            ``[1, prefix + N, D]``, ``[1, N, D]`` with ``no_embed_class``, or ``[1, H, W, D]``).
        input_size: None for the table as stored; another ``(height, width)`` (or one int) resamples
            the table to that size's grid with timm's ``resample_abs_pos_embed``.
        interpolation: resampling mode passed to timm (timm's default, ``"bicubic"``).
        antialias: antialiasing when downsampling (timm's default, True).

    Returns:
        ``[grid_h, grid_w, dim]`` float64.

    Raises:
        UnsupportedModelError: the model has no learned absolute table (BEiT: relative bias), or
            its table does not match its token layout.
    """
    return _read_table(model, input_size, interpolation=interpolation, antialias=antialias).embeddings


# --------------------------------------------------------------------------- result

def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True, eq=False)
class PositionEmbeddingSimilarity:
    """Cosine similarity between the position embeddings of every pair of patches.

    Attributes:
        similarity: ``[grid_h, grid_w, grid_h, grid_w]`` float32; ``[i, j, k, l]`` is the cosine
            similarity of patch ``(i, j)``'s embedding with patch ``(k, l)``'s.
        embeddings: ``[grid_h, grid_w, dim]`` float32, the patch embeddings compared (after resampling).
        model: the model's name.
        grid_size: ``(grid_h, grid_w)``.
        input_size: ``(height, width)`` in pixels the grid belongs to (None for hand-built tables).
        resampled_from: the stored table's input size ``(height, width)`` when it was resampled, else None.
        source_grid_size: the stored table's grid when it was resampled, else None.
        interpolation: timm resampling mode used, or None when not resampled.
        num_prefix_tokens: prefix tokens (class, distillation, registers) in the model's sequence.
        prefix_entries_in_table: how many of them had an entry in ``pos_embed`` (0 with ``no_embed_class``);
            all are excluded from the grid.
        notes: what the analysis does not show or had to decide (rotary embeddings, resampling, ...).
    """

    similarity: np.ndarray
    embeddings: np.ndarray
    model: str = ""
    grid_size: tuple[int, int] = (0, 0)
    input_size: tuple[int, int] | None = None
    resampled_from: tuple[int, int] | None = None
    source_grid_size: tuple[int, int] | None = None
    interpolation: str | None = None
    num_prefix_tokens: int = 0
    prefix_entries_in_table: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for a in (self.similarity, self.embeddings):
            a.setflags(write=False)

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, **metadata) -> "PositionEmbeddingSimilarity":
        """Result for a hand-built ``[grid_h, grid_w, dim]`` table (metadata as the attributes)."""
        emb = np.array(embeddings, dtype=np.float32)
        sim = cosine_similarity_grid(np.asarray(embeddings, dtype=np.float64)).astype(np.float32)
        metadata.setdefault("grid_size", tuple(int(g) for g in emb.shape[:2]))
        return cls(similarity=sim, embeddings=emb, **metadata)

    @property
    def distance_correlation(self) -> float:
        """Pearson r between similarity and distance in grid steps (pairs of distinct patches)."""
        return similarity_distance_correlation(self.similarity)

    @property
    def row_column_score(self) -> float:
        """Mean similarity within the same row or column minus the mean over all other pairs."""
        same, other = row_column_means(self.similarity)
        return same - other

    @property
    def structure(self) -> dict[str, float]:
        """The table read in parts (:func:`vitlens.analyses.embeddings.position_structure.structure`): the distance
        correlation over all and over interior patches, the border-ring contrast, the row/column
        score and the border means."""
        from .position_structure import structure

        return structure(self.similarity)

    @property
    def distance_correlation_interior(self) -> float:
        """Pearson r between similarity and distance over pairs of interior (non-edge) patches."""
        from .position_structure import distance_correlation

        return distance_correlation(self.similarity, "interior")

    @property
    def border_contrast(self) -> float:
        """Mean similarity between edge patches minus that between an edge and an interior patch."""
        from .position_structure import border_contrast

        return border_contrast(self.similarity)

    def summary(self) -> dict:
        """The numbers behind the paper's words, plus the metadata to reproduce them (JSON-ready)."""
        same, other = row_column_means(self.similarity)
        s = self.similarity.astype(np.float64)
        n = s.shape[0] * s.shape[1]
        flat = s.reshape(n, n)
        off = flat[~np.eye(n, dtype=bool)]
        return {
            "model": self.model,
            "grid_size": list(self.grid_size),
            "input_size": list(self.input_size) if self.input_size else None,
            "resampled_from": list(self.resampled_from) if self.resampled_from else None,
            "source_grid_size": list(self.source_grid_size) if self.source_grid_size else None,
            "interpolation": self.interpolation,
            "embed_dim": int(self.embeddings.shape[-1]),
            "num_prefix_tokens": self.num_prefix_tokens,
            "prefix_entries_in_table": self.prefix_entries_in_table,
            "distance_correlation": _nan_to_none(similarity_distance_correlation(self.similarity)),
            **{k: _nan_to_none(v) for k, v in self.structure.items()},
            "row_column_score": _nan_to_none(same - other),
            "row_column_excess": _nan_to_none(row_column_excess(self.similarity)),
            "same_row_or_column_mean": _nan_to_none(same),
            "other_mean": _nan_to_none(other),
            "off_diagonal_mean": _nan_to_none(float(off.mean()) if off.size else float("nan")),
            "notes": list(self.notes),
        }

    def to_frame(self):
        """Tidy long format: one row per ordered pair of patches.

        Columns: ``query_row, query_col, key_row, key_col, similarity``.
        """
        import pandas as pd

        gh, gw = self.similarity.shape[:2]
        qr, qc, kr, kc = np.meshgrid(np.arange(gh), np.arange(gw), np.arange(gh), np.arange(gw),
                                     indexing="ij")
        return pd.DataFrame({"query_row": qr.ravel(), "query_col": qc.ravel(), "key_row": kr.ravel(),
                             "key_col": kc.ravel(), "similarity": self.similarity.ravel()})

    def plot(self, ax=None, *, tile_step: int | None = None, **kwargs):
        """Draw the tile figure into ``ax`` (a new figure when None); returns the axes.

        Keyword arguments go to :func:`vitlens.plotting.posembed.position_embedding_figure`.
        """
        from ...plotting.posembed import position_embedding_figure

        fig = position_embedding_figure([self], axes=None if ax is None else [ax], tile_step=tile_step, **kwargs)
        return ax if ax is not None else fig.axes[0]

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


def position_embedding_similarity(model: nn.Module, input_size: int | Sequence[int] | None = None, *,
                                  interpolation: str = "bicubic", antialias: bool = True,
                                  name: str | None = None) -> PositionEmbeddingSimilarity:
    """Cosine similarity between the learned position embeddings of every pair of patches.

    Args:
        model: a timm ViT with a learned absolute position table.
        input_size: None (default) for the table as stored; another ``(height, width)`` or one int
            resamples the table to that size's grid, as fine-tuning at a higher resolution does
            (and as a ``dynamic_img_size`` model does at that size).
        interpolation: resampling mode, timm's default ``"bicubic"`` (the ViT paper: linear).
        antialias: antialias when resampling, timm's default True.
        name: name stored in the result (default: the name it was loaded with).

    Returns:
        The result; ``result.similarity`` is ``[grid_h, grid_w, grid_h, grid_w]``, prefix-token
        entries excluded.

    Raises:
        UnsupportedModelError: no learned absolute table (BEiT's relative position bias, RoPE only),
            or a table vitlens cannot map onto the grid.
    """
    t = _read_table(model, input_size, interpolation=interpolation, antialias=antialias)
    return PositionEmbeddingSimilarity.from_embeddings(
        t.embeddings,
        model=model_name(model, name),
        input_size=tuple(t.layout.input_size),
        resampled_from=tuple(t.source_layout.input_size) if t.resampled else None,
        source_grid_size=tuple(t.source_layout.grid_size) if t.resampled else None,
        interpolation=interpolation if t.resampled else None,
        num_prefix_tokens=t.layout.num_prefix_tokens,
        prefix_entries_in_table=t.prefix_entries,
        notes=t.notes,
    )
