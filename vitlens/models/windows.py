"""Windowed attention: where every token of every window sits, and its mean attention distance.

Swin, Swin-V2 and SAM's image encoder attend inside windows of a block's feature map. A block
partitions its ``H x W`` map (after a cyclic shift by ``s`` in shifted blocks, and after padding
the bottom and right to a multiple of the window ``w``) into windows in row-major order, batch
outermost, so its maps are ``[batch * window, head, query, key]`` with ``w * w`` tokens per window.
:class:`BlockGeometry` describes one block, :class:`WindowLayout` every block of a model.

Mean attention distance of a windowed block keeps the global definition's meaning (the
attention-weighted pixel distance between a query and its keys), in the block's own map:

- the distance between query ``i`` and key ``j`` is the block's stride times the Euclidean
  distance of their positions in the un-shifted feature map; window-local ``(a, b)`` of window
  ``(r, c)`` of a block shifted by ``s`` sits at ``((r w + a + s) mod H, (c w + b + s) mod W)``
  (timm shifts, then pads; transformers pads, then shifts, so there the modulus is the padded size);
- pairs the shift mask forbids (tokens of different regions, probability ~e^-100) are not counted;
  padded tokens are excluded as keys, each row renormalised over the keys that are counted, and
  as queries;
- the mean over every query token of every window, then over images, per head;
- each block's reference is uniform attention over the keys its own mask allows, measured the same
  way (:func:`window_uniform_distance`): 3.6095 tokens for 7 x 7 unshifted windows, times the stride,
  and less in a shifted block, whose queries see only their own shift region; a block whose window
  is its whole map is a global block, where all of this is the global definition of
  :mod:`vitlens.analyses.attention.distance`.

Window maps are reduced where they are captured: one broadcast matrix product with a fixed
``[window, query, key, 2]`` table per block, never a full-map matrix.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

__all__ = ["BlockGeometry", "WindowLayout", "token_positions", "shift_regions", "counted_pairs",
           "pair_distances", "window_uniform_distance"]

Unit = Literal["px", "patches", "fraction"]


@dataclass(frozen=True)
class BlockGeometry:
    """The geometry of one attention block.

    Attributes:
        grid_size: the block's feature map ``(H, W)``, before padding.
        stride: distance in input pixels between neighbouring feature-map positions ``(sy, sx)``.
        window_size: ``(wh, ww)``; the whole map for a global block.
        shift: the cyclic shift ``(sh, sw)``; 0 where the window covers the whole map.
        input_size: the model input ``(height, width)`` in pixels.
        stage: 0-based stage of the block (0 for a single-resolution model such as SAM's encoder).
        block: 0-based index of the block within its stage.
        pad_before_shift: transformers pads the map first and shifts the padded map; timm shifts
            first and pads the shifted map.
    """

    grid_size: tuple[int, int]
    stride: tuple[float, float]
    window_size: tuple[int, int]
    shift: tuple[int, int]
    input_size: tuple[int, int]
    stage: int = 0
    block: int = 0
    pad_before_shift: bool = False

    @property
    def padded_size(self) -> tuple[int, int]:
        return tuple(math.ceil(g / w) * w for g, w in zip(self.grid_size, self.window_size))

    @property
    def padding(self) -> tuple[int, int]:
        """Rows and columns added at the bottom and right."""
        return tuple(p - g for p, g in zip(self.padded_size, self.grid_size))

    @property
    def windows_per_axis(self) -> tuple[int, int]:
        return tuple(p // w for p, w in zip(self.padded_size, self.window_size))

    @property
    def num_windows(self) -> int:
        r, c = self.windows_per_axis
        return r * c

    @property
    def window_tokens(self) -> int:
        return self.window_size[0] * self.window_size[1]

    @property
    def is_global(self) -> bool:
        """One window over the whole, unpadded, unshifted map: global attention."""
        return self.num_windows == 1 and self.padding == (0, 0) and self.shift == (0, 0)

    @property
    def is_shifted(self) -> bool:
        return any(self.shift)

    def describe(self) -> str:
        (h, w), (wh, ww), (sh, sw) = self.grid_size, self.window_size, self.shift
        kind = "global" if self.is_global else f"{self.num_windows} windows of {wh} x {ww}"
        extra = (f", shift {sh}" + (f" x {sw}" if sw != sh else "")) if self.is_shifted else ""
        pad = f", padded to {self.padded_size[0]} x {self.padded_size[1]}" if any(self.padding) else ""
        return f"stage {self.stage} block {self.block}: {h} x {w} map at stride {self.stride[0]:g} px, {kind}{extra}{pad}"


@dataclass(frozen=True)
class WindowLayout:
    """Every attention block's geometry, in forward order (the order of the adapter's
    ``attention_blocks``), for one input size."""

    blocks: tuple[BlockGeometry, ...]
    input_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> BlockGeometry:
        return self.blocks[i]

    @property
    def stages(self) -> np.ndarray:
        """``[layer]`` stage of each block."""
        return np.array([b.stage for b in self.blocks], dtype=np.int64)

    @property
    def block_in_stage(self) -> np.ndarray:
        """``[layer]`` index of each block within its stage."""
        return np.array([b.block for b in self.blocks], dtype=np.int64)

    @property
    def num_stages(self) -> int:
        return len({b.stage for b in self.blocks})

    def uniform(self, units: Unit = "px") -> np.ndarray:
        """``[layer]`` the uniform-attention reference of each block (see :func:`window_uniform_distance`)."""
        return np.array([window_uniform_distance(b, units) for b in self.blocks])

    def to_dict(self) -> dict:
        return {"input_size": list(self.input_size), "blocks": [asdict(b) for b in self.blocks]}

    def describe(self) -> str:
        return (f"input {self.input_size[0]} x {self.input_size[1]} px; {len(self.blocks)} attention blocks in "
                f"{self.num_stages} stage(s)")


# --------------------------------------------------------------------------- token positions


@functools.lru_cache(maxsize=256)
def _positions(g: BlockGeometry) -> tuple[np.ndarray, np.ndarray]:
    (H, W), (wh, ww), (sh, sw), (Hp, Wp) = g.grid_size, g.window_size, g.shift, g.padded_size
    nr, nc = g.windows_per_axis
    r, c, a, b = np.meshgrid(np.arange(nr), np.arange(nc), np.arange(wh), np.arange(ww), indexing="ij")
    p, q = r * wh + a, c * ww + b                      # position in the shifted (and padded) map
    if g.pad_before_shift:                             # roll acts on the padded map
        y, x = (p + sh) % Hp, (q + sw) % Wp
        valid = (y < H) & (x < W)
    else:                                              # padding sits after the rolled map
        valid = (p < H) & (q < W)
        y, x = (p + sh) % H, (q + sw) % W
    pos = np.stack([y, x], axis=-1).reshape(nr * nc, wh * ww, 2)
    pos = np.where(valid.reshape(nr * nc, wh * ww, 1), pos, -1)
    return pos.astype(np.int64), valid.reshape(nr * nc, wh * ww)


def token_positions(g: BlockGeometry) -> tuple[np.ndarray, np.ndarray]:
    """``(positions [window, token, 2], valid [window, token])``: the ``(row, col)`` of every token
    of every window in the un-shifted feature map (``-1`` for padding) and whether it is a real token."""
    pos, valid = _positions(g)
    return pos.copy(), valid.copy()


def shift_regions(g: BlockGeometry) -> np.ndarray:
    """``[window, token]`` the shift-mask region of every token; the library's mask lets two
    tokens of one window attend to each other only within one region. All zeros without shift.

    Along each axis of the (padded) shifted map, indices ``[0, P - w)``, ``[P - w, P - s)`` and
    ``[P - s, P)`` are the three regions (``P`` the padded size), as timm and transformers build it.
    """
    (wh, ww), (sh, sw), (Hp, Wp) = g.window_size, g.shift, g.padded_size
    nr, nc = g.windows_per_axis
    if not g.is_shifted:
        return np.zeros((nr * nc, wh * ww), dtype=np.int64)
    p, q = np.arange(Hp), np.arange(Wp)
    rh = (p >= Hp - wh).astype(int) + (p >= Hp - sh)
    rw = (q >= Wp - ww).astype(int) + (q >= Wp - sw)
    label = rh[:, None] * 3 + rw[None, :]              # [Hp, Wp]
    return label.reshape(nr, wh, nc, ww).transpose(0, 2, 1, 3).reshape(nr * nc, wh * ww).astype(np.int64)


def counted_pairs(g: BlockGeometry) -> np.ndarray:
    """``[window, query, key]`` True where a pair counts: the shift mask allows it and the key is
    not padding (the query's own validity is separate: :func:`token_positions`)."""
    region = shift_regions(g)
    _, valid = _positions(g)
    return (region[:, :, None] == region[:, None, :]) & valid[:, None, :]


def _scale(g: BlockGeometry, units: Unit) -> np.ndarray:
    if units == "px":
        return np.asarray(g.stride, dtype=np.float64)
    if units == "patches":
        return np.ones(2)
    if units == "fraction":
        return np.asarray(g.stride, dtype=np.float64) / np.asarray(g.input_size, dtype=np.float64)
    raise ValueError(f"units must be one of px, patches, fraction, got {units!r}")


def pair_distances(g: BlockGeometry, units: Unit = "px") -> np.ndarray:
    """``[window, query, key]`` distance of every pair's un-shifted positions in ``units``: input
    pixels (stride times grid steps), ``patches`` (steps of this block's own feature map) or
    ``fraction`` (pixels over the input side, per axis). 0 where either token is padding."""
    pos, valid = _positions(g)
    c = pos * _scale(g, units)                          # [window, token, 2]
    d = np.sqrt(((c[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1))
    return np.where(valid[:, :, None] & valid[:, None, :], d, 0.0)


def window_uniform_distance(g: BlockGeometry, units: Unit = "px") -> float:
    """Mean attention distance of uniform attention over the keys the block's own mask allows, self
    included, measured as :func:`vitlens.analyses.attention.windowed_distance.windowed_mean_attention_distance`
    measures: for every real query, the mean distance to the counted keys (:func:`counted_pairs`: its
    shift region, no padding), averaged over the real queries of every window.

    An unshifted, unpadded block gives uniform attention over one window: 3.6095 tokens for 7 x 7
    (4.1365 for 8 x 8, 7.2808 for 14 x 14) times the stride; a global block the whole map's value.
    A shifted block's queries in the edge windows see only their own region, so its reference is
    shorter (Swin-T at 224 px: 13.59 / 25.46 / 43.75 px in stages 1-3 against 14.44 / 28.88 / 57.75);
    a padded block's edge queries see fewer keys too."""
    if g.is_shifted or any(g.padding):
        return _masked_uniform_distance(g, units)
    wh, ww = g.window_size
    y, x = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    c = np.stack([y.ravel(), x.ravel()], axis=1) * _scale(g, units)
    return float(np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)).mean())


@functools.lru_cache(maxsize=256)
def _masked_uniform_distance(g: BlockGeometry, units: Unit) -> float:
    counted = counted_pairs(g)                                    # [window, query, key]
    _, valid = _positions(g)                                      # [window, query]
    d = pair_distances(g, units)
    per_query = np.where(counted, d, 0.0).sum(-1) / np.maximum(counted.sum(-1), 1)
    return float(per_query[valid].mean())
