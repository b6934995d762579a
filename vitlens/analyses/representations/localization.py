"""Spatial localisation: how much a block's token at grid position p still resembles the input
patch at each position q (Raghu et al. 2021, Sec. 7, Figs. 9-10).

For a chosen block (default: the last), linear CKA between the token at position p over images
(``[n, dim]``) and the preprocessed input patch at position q over the same images
(``[n, 3 * patch_h * patch_w]``, pixels flattened per image), for every pair: ``[grid_h, grid_w,
grid_h, grid_w]``, token position first. The estimator is the unbiased minibatch CKA of
:mod:`.cka` (the same accumulator): per minibatch one Gram matrix per token position and one per
input position, then all their pairwise HSIC_1 terms; the sums over minibatches are kept, so memory
does not grow with the image count.

Conventions:

- ViT blocks ``[batch, token, channel]``: the patch tokens (prefix tokens dropped), on the model's
  token grid; input patch q is the ``patch_stride``-sized pixel block of patch q.
- CNN layers ``[batch, channel, height, width]``: a token is all channels at one feature-map
  position; the input is cut into the same ``height x width`` grid of cells of
  ``input / feature-map size`` pixels (the feature-map stride; it must divide the input), so
  position (i, j)'s input patch is the cell whose centre is the centre of its receptive field (up
  to the half-stride offset of the convolutions' padding).
- Minibatches are ``batch_size`` consecutive images; shorter than 4 are dropped and counted.
- Summary: ``own_patch_share`` is the share of token positions whose highest CKA is with their own
  input patch; ``cka_own`` the mean CKA at the own patch, ``cka_other`` the mean over all pairs
  with p != q. NaN pairs (constant features) are left out of the means.
- The panel: tokens (0, 0), (2, 1), (4, 2), (4, 4) of Fig. 9's 7 x 7 grids as (row, column),
  scaled to the grid (``round(i * (grid - 1) / 6)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ...capture.outputs import capture_outputs
from ...models.families.registry import adapter_for, forward_of
from ...models.layout import is_vit
from ...runtime.batches import num_images
from ...runtime.errors import UnsupportedModelError
from ...runtime.frozen import freeze_arrays
from ...runtime.modes import MODE_RULE, eval_mode
from ...runtime.precision import autocast, check_precision
from .cka import MIN_BATCH, CKAAccumulator, stream_cka

__all__ = ["Localization", "spatial_localization", "TokenReader", "PatchReader", "panel_tokens", "summarise",
           "new_accumulator", "PANEL_7x7"]

#: Fig. 9's four tokens on a 7 x 7 grid, (row, column).
PANEL_7x7 = ((0, 0), (2, 1), (4, 2), (4, 4))


def panel_tokens(grid: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Fig. 9's tokens scaled from 7 x 7 to ``grid`` (distinct, in order)."""
    gh, gw = int(grid[0]), int(grid[1])
    out: list[tuple[int, int]] = []
    for i, j in PANEL_7x7:
        t = (int(np.floor(i * (gh - 1) / 6 + 0.5)), int(np.floor(j * (gw - 1) / 6 + 0.5)))
        if t not in out:
            out.append(t)
    return tuple(out)


def summarise(cka: np.ndarray) -> dict[str, float]:
    """``own_patch_share``, ``cka_own`` and ``cka_other`` of a ``[gh, gw, gh, gw]`` map (module docstring)."""
    gh, gw = cka.shape[:2]
    m = np.asarray(cka, dtype=np.float64).reshape(gh * gw, gh * gw)
    rows = ~np.all(np.isnan(m), axis=1)
    best = np.array([np.nanargmax(r) for r in m[rows]], dtype=np.int64)
    own = np.arange(gh * gw)[rows]
    off = ~np.eye(gh * gw, dtype=bool)
    with np.errstate(invalid="ignore"):
        return {"own_patch_share": float(np.mean(best == own)) if rows.any() else float("nan"),
                "cka_own": float(np.nanmean(np.diag(m))) if np.isfinite(np.diag(m)).any() else float("nan"),
                "cka_other": float(np.nanmean(m[off])) if np.isfinite(m[off]).any() else float("nan")}


class TokenReader:
    """The features of ``layer`` per grid position for one batch: a list of ``grid_h * grid_w``
    tensors ``[batch, channel]`` (row-major). Sets ``grid``, ``cell`` (input pixels per position)
    and ``kind`` on the first call."""

    def __init__(self, model: nn.Module, layer: str, *, precision: str = "fp32"):
        check_precision(precision)
        self.model, self.layer, self.precision = model, layer, precision
        self.vit = is_vit(model)
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC" and not self.vit
        p = next(iter(model.parameters()), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        self.grid: tuple[int, int] | None = None
        self.cell: tuple[int, int] | None = None
        self.kind: str | None = None

    def _positions(self, out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[batch, position, channel]`` and the grid, from a layer output."""
        if out.ndim == 4:                                                 # [batch, channel, h, w]
            h, w = int(out.shape[2]), int(out.shape[3])
            if size[0] % h or size[1] % w:
                raise UnsupportedModelError(
                    f"the feature map of {self.layer} is {h} x {w} for a {size[0]} x {size[1]} input, which its "
                    "stride does not divide; vitlens maps CNN positions to input cells of input / map pixels.")
            grid, cell, kind = (h, w), (size[0] // h, size[1] // w), "cnn"
            feats = out.flatten(2).transpose(1, 2)
        elif out.ndim == 3 and self.vit:                                   # [batch, token, channel]
            out = adapter_for(self.model).block_tokens(out)                # sequence-first towers turned
            lay = adapter_for(self.model).token_layout(size)
            if out.shape[1] != lay.num_tokens:
                raise UnsupportedModelError(f"{self.layer} returns {out.shape[1]} tokens, not the {lay.num_tokens} "
                                            "of the model's token layout; choose a transformer block.")
            sy, sx = lay.patch_stride
            if sy != int(sy) or sx != int(sx) or lay.grid_size[0] * sy > size[0] or lay.grid_size[1] * sx > size[1]:
                raise UnsupportedModelError(f"the patch grid {lay.grid_size} of stride {lay.patch_stride} does not "
                                            f"tile the {size[0]} x {size[1]} input.")
            grid, cell, kind = lay.grid_size, (int(sy), int(sx)), "vit"
            feats = out[:, lay.patch_slice]
        else:
            raise UnsupportedModelError(f"{self.layer} returns a tensor of shape {tuple(out.shape)}; spatial "
                                        "localisation reads ViT blocks [batch, token, channel] or CNN feature maps "
                                        "[batch, channel, height, width].")
        if self.grid is None:
            self.grid, self.cell, self.kind = tuple(grid), tuple(cell), kind
        elif (tuple(grid), tuple(cell)) != (self.grid, self.cell):
            raise UnsupportedModelError("the images give different grids; use one input size.")
        return feats

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.to(self.device, self.dtype)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        with eval_mode(self.model), torch.no_grad(), autocast(self.device, self.precision), \
                capture_outputs(self.model, [self.layer], channels_last=self.channels_last,
                                forward=forward_of(self.model)) as cap:
            out = cap.run(x)[self.layer]
        return list(self._positions(out, size).float().unbind(1))


class PatchReader:
    """The input pixels per grid cell: a list of ``grid_h * grid_w`` tensors ``[batch, 3 * cell_h *
    cell_w]`` (row-major), on the token reader's grid (read after it)."""

    def __init__(self, tokens: TokenReader):
        self.tokens = tokens

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        (gh, gw), (ch, cw) = self.tokens.grid, self.tokens.cell
        x = x[:, :, :gh * ch, :gw * cw].to(torch.float32)
        cells = x.reshape(x.shape[0], 3, gh, ch, gw, cw).permute(0, 2, 4, 1, 3, 5)   # [batch, gh, gw, 3, ch, cw]
        return list(cells.reshape(x.shape[0], gh * gw, -1).unbind(1))


def default_layer(model: nn.Module) -> str:
    """The last block (ViT) or stage (CNN) of the model's family adapter."""
    return adapter_for(model).block_outputs()[-1]


def _depth_fraction(model: nn.Module, layer: str) -> float:
    try:
        names = adapter_for(model).block_outputs()
    except UnsupportedModelError:
        return float("nan")
    return names.index(layer) / (len(names) - 1) if layer in names and len(names) > 1 else float("nan")


def _input_size(images) -> tuple[int, int]:
    """The ``(height, width)`` the images come in: the tensor's, or what the image set's
    preprocessing makes of a blank picture."""
    if isinstance(images, torch.Tensor):
        return int(images.shape[-2]), int(images.shape[-1])
    from PIL import Image

    x = images.transform(Image.new("RGB", (320, 288), (128, 128, 128)))
    return int(x.shape[-2]), int(x.shape[-1])


def new_accumulator(model: nn.Module, images, layer: str | None = None, *, precision: str = "fp32"):
    """``(accumulator, token reader, patch reader)`` for ``layer`` of ``model`` (default: the last
    block), with the grid read from one pass of a blank input of the images' size."""
    layer = layer or default_layer(model)
    if layer not in dict(model.named_modules()):
        raise UnsupportedModelError(f"{type(model).__name__} has no module named {layer}.")
    tokens = TokenReader(model, layer, precision=precision)
    tokens(torch.zeros(1, 3, *_input_size(images)))
    gh, gw = tokens.grid
    names = [f"{i},{j}" for i in range(gh) for j in range(gw)]
    return CKAAccumulator(names, names), tokens, PatchReader(tokens)


@dataclass(frozen=True, eq=False)
class Localization:
    """CKA between a block's tokens and the input patches of one model.

    Attributes:
        cka: ``[grid_h, grid_w, grid_h, grid_w]`` CKA of the token at (i, j) with the input patch at
            (k, l) (NaN where one side is constant over the images).
        model: display name; kind: ``"vit"`` or ``"cnn"``; layer: the module measured.
        depth_fraction: the layer's position among the model's blocks (NaN if it is not one).
        grid: ``(grid_h, grid_w)``; cell: input pixels per position ``(cell_h, cell_w)``.
        panel: the four tokens of Fig. 9 scaled to the grid, (row, column).
        own_patch_share, cka_own, cka_other: the summary (module docstring).
        n_images, n_batches, n_batches_dropped, n_images_dropped, batch_size: the minibatches.
        conventions: the conventions used, by name.
    """

    cka: np.ndarray
    model: str
    kind: str
    layer: str
    depth_fraction: float
    grid: tuple[int, int]
    cell: tuple[int, int]
    panel: tuple[tuple[int, int], ...]
    own_patch_share: float
    cka_own: float
    cka_other: float
    n_images: int
    n_batches: int
    n_batches_dropped: int
    n_images_dropped: int
    batch_size: int
    conventions: dict = field(default_factory=dict)

    def __post_init__(self):
        freeze_arrays(self)

    def to_frame(self):
        """The summary, one row: ``model, kind, layer, depth_fraction, grid_h, grid_w, cell_h, cell_w,
        own_patch_share, cka_own, cka_other, n_images, n_batches, batch_size``."""
        import pandas as pd

        return pd.DataFrame([{"model": self.model, "kind": self.kind, "layer": self.layer,
                              "depth_fraction": self.depth_fraction, "grid_h": self.grid[0], "grid_w": self.grid[1],
                              "cell_h": self.cell[0], "cell_w": self.cell[1], "own_patch_share": self.own_patch_share,
                              "cka_own": self.cka_own, "cka_other": self.cka_other, "n_images": self.n_images,
                              "n_batches": self.n_batches, "batch_size": self.batch_size}])

    def pairs_frame(self):
        """Every (token, input patch) pair: ``model, token_row, token_col, patch_row, patch_col, cka``."""
        import pandas as pd

        gh, gw = self.grid
        i, j, k, l = np.meshgrid(np.arange(gh), np.arange(gw), np.arange(gh), np.arange(gw), indexing="ij")
        return pd.DataFrame({"model": self.model, "token_row": i.ravel(), "token_col": j.ravel(),
                             "patch_row": k.ravel(), "patch_col": l.ravel(), "cka": self.cka.reshape(-1)})

    def to_dict(self) -> dict:
        """Metadata and the summary for a run record (not the map)."""
        return {"model": self.model, "kind": self.kind, "layer": self.layer, "depth_fraction": self.depth_fraction,
                "grid": list(self.grid), "cell": list(self.cell), "panel": [list(t) for t in self.panel],
                "own_patch_share": self.own_patch_share, "cka_own": self.cka_own, "cka_other": self.cka_other,
                "n_images": self.n_images, "n_batches": self.n_batches, "n_batches_dropped": self.n_batches_dropped,
                "n_images_dropped": self.n_images_dropped, "batch_size": self.batch_size,
                "conventions": dict(self.conventions)}

    def plot(self, ax=None, token: tuple[int, int] | None = None, **kwargs):
        """One token's CKA heatmap over the input patches (default: the panel's first). Returns the axes."""
        from ...plotting.localization import plot_localization
        return plot_localization(self, ax=ax, token=token, **kwargs)


def result_of(acc: CKAAccumulator, tokens: TokenReader, *, model: str, batch_size: int,
              was_training: bool) -> Localization:
    """The result of the sums in ``acc``.

    Raises:
        ValueError: no minibatch of at least 4 images was added.
    """
    nb = int(acc.n_batches[0])
    if nb == 0:
        raise ValueError(f"no minibatch of at least {MIN_BATCH} images was read, so there is no CKA "
                         f"({int(acc.n_batches_dropped[0])} shorter ones dropped)")
    gh, gw = tokens.grid
    cka = acc.cka().reshape(gh, gw, gh, gw)
    return Localization(
        cka=cka, model=model, kind=tokens.kind, layer=tokens.layer, depth_fraction=_depth_fraction(tokens.model, tokens.layer),
        grid=(gh, gw), cell=tuple(tokens.cell), panel=panel_tokens((gh, gw)), **summarise(cka),
        n_images=int(acc.n_images[0]), n_batches=nb, n_batches_dropped=int(acc.n_batches_dropped[0]),
        n_images_dropped=int(acc.n_images_dropped[0]), batch_size=int(batch_size),
        conventions={"kernel": "linear", "estimator": "unbiased HSIC_1 per minibatch, averaged over minibatches",
                     "tokens": "patch tokens (prefix dropped); CNN: all channels at one position",
                     "input_patches": "preprocessed pixels of the cell at each grid position, 3 x cell_h x cell_w",
                     "min_batch": MIN_BATCH, "mode": MODE_RULE, "was_training": bool(was_training)})


def spatial_localization(model: nn.Module, images, *, layer: str | None = None, batch_size: int = 32,
                         workers: int = 0, progress: bool = False, precision: str = "fp32",
                         name: str | None = None) -> Localization:
    """Linear CKA between every token position of ``layer`` and every input patch position.

    Args:
        model: a ViT or a CNN any family adapter reads; runs in eval mode inside the call only.
        images: a float tensor ``[image, 3, height, width]`` preprocessed for the model, or an ImageSet.
        layer: module name (default: the last block or stage).
        batch_size: the CKA minibatch (at least 4; the estimate depends on it).
        precision: forward pass in ``fp32``, ``bf16`` or ``fp16``; Gram matrices in float64.

    Raises:
        UnsupportedModelError: the layer's output is not a token sequence or a feature map.
        ValueError: ``batch_size`` under 4, or no minibatch of 4 images.
    """
    from ...runtime.progress import progress_bar

    from ...models.loading import model_name

    if batch_size < MIN_BATCH:
        raise ValueError(f"batch_size must be at least {MIN_BATCH} for the unbiased HSIC estimator, got {batch_size}")
    was_training = model.training
    acc, tokens, patches = new_accumulator(model, images, layer, precision=precision)
    with progress_bar(total=num_images(images), desc="localization", unit="img", enabled=progress) as bar:
        for idx in stream_cka(acc, tokens, images, patches, None, batch_size=batch_size, workers=workers):
            bar.update(len(idx))
    if hasattr(images, "check_used"):
        images.check_used(int(acc.n_images[0] + acc.n_images_dropped[0]))
    return result_of(acc, tokens, model=model_name(model, name), batch_size=batch_size, was_training=was_training)
