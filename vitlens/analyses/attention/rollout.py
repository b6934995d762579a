"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021).

Pure functions over captured attention maps (``[batch, head, query, key]``), and a batched driver,
:func:`attention_rollout`, that runs the model once per batch and returns :class:`RolloutMaps`.

Plain rollout, one layer (every step is per image, so a batch gives exactly what each image gives
alone):

1. head fusion: mean (default), max or min over heads -> ``A`` ``[query, key]``;
2. discard: with ``discard_ratio = r`` the ``int(r * M)`` lowest entries of ``A`` are set to zero,
   where the ``M`` candidate entries are all entries outside the class token's own row and column
   (those are never zeroed). Ties are broken by row-major position (lowest index zeroed first).
   Models without a class token have nothing spared: all ``N * N`` entries are candidates;
3. residual: ``A_hat = (1 - w) A + w I`` (``w = residual_weight``, 0.5 by default, the paper's
   ``0.5 A + 0.5 I``), then every row divided by its own sum (a row that sums to zero, possible only
   with ``w = 0``, stays zero).

Layers are multiplied in forward order: ``R = A_hat_end @ ... @ A_hat_start``. Gradient-weighted
rollout (class-specific) starts from ``R = I`` and for every layer adds
``A_bar @ R`` with ``A_bar = mean over heads of clamp(dS/dA * A, min=0)``, where ``S`` is the output
(the logit) of the explained class; fusion, discard and residual weight do not apply to it.

Readout of the map from ``R`` (``readout="auto"``): for a model with a class token, the class
token's row over the patch columns; for a model without one, the mean over patch queries of the
patch block ``R[patches, patches]``. Distillation and register tokens are located through the
:class:`~vitlens.models.tokens.TokenLayout`, never by a square root of the sequence length. Maps are not
rescaled: a plain-rollout map holds the share of the read-out row that reaches each patch and sums
to at most 1 (the rest rests on prefix tokens); a gradient map holds raw relevance.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...capture.attention import attention_modules, capture_attention
from ...models.families.registry import forward_of
from ...models.layout import token_layout
from ...models.loading import model_name
from ...models.tokens import TokenLayout
from ...runtime.batches import iter_batches
from ...runtime.errors import UnsupportedModelError, VitlensError
from ...runtime.frozen import freeze_arrays
from ...runtime.modes import eval_mode
from ...runtime.precision import autocast, check_precision, float32_probabilities
from .conventions import HEAD_FUSIONS, METHODS, READOUTS  # named here as well

__all__ = [
    "RolloutMaps", "RolloutSettingsError", "attention_rollout", "iter_rollout",
    "fuse_heads", "discard_lowest", "add_residual", "rollout_step", "rollout", "gradient_rollout",
    "patch_map", "layer_matrix", "readout_vector", "row_rollout", "image_keys", "check_settings", "HEAD_FUSIONS", "METHODS", "READOUTS",
]



class RolloutSettingsError(VitlensError, ValueError):
    """A rollout setting is out of range or does not apply to the chosen method."""


# --------------------------------------------------------------------------- pure maths

def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Fuse heads: ``[batch, head, query, key]`` -> ``[batch, query, key]`` by mean, max or min."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise RolloutSettingsError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}.")


def discard_lowest(fused: torch.Tensor, discard_ratio: float,
                   class_token_index: int | None = None) -> torch.Tensor:
    """Zero the ``int(discard_ratio * M)`` lowest entries of every image's ``[query, key]`` matrix.

    The ``M`` candidates are the entries outside the class token's row and column (all ``N * N``
    entries when ``class_token_index`` is None). Each image of the batch is treated on its own;
    ties go to the lower row-major position. Returns a new tensor ``[batch, query, key]``.
    """
    if not 0.0 <= discard_ratio <= 1.0:
        raise RolloutSettingsError(f"discard ratio must be in [0, 1], got {discard_ratio}.")
    b, n, _ = fused.shape
    candidates = torch.ones(n, n, dtype=torch.bool, device=fused.device)
    if class_token_index is not None:
        candidates[class_token_index, :] = False
        candidates[:, class_token_index] = False
    idx = candidates.flatten().nonzero().squeeze(1)  # [candidate]
    k = int(discard_ratio * idx.numel())
    if k == 0:
        return fused.clone()
    flat = fused.reshape(b, n * n).clone()
    values = flat[:, idx]  # [batch, candidate]
    lowest = torch.sort(values, dim=-1, stable=True).indices[:, :k]
    flat[:, idx] = values.scatter(1, lowest, 0.0)
    return flat.reshape(b, n, n)


def add_residual(fused: torch.Tensor, residual_weight: float = 0.5) -> torch.Tensor:
    """``(1 - w) A + w I`` with every row divided by its sum; ``[batch, query, key]`` in and out."""
    if not 0.0 <= residual_weight <= 1.0:
        raise RolloutSettingsError(f"residual weight must be in [0, 1], got {residual_weight}.")
    n = fused.shape[-1]
    eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
    a = (1.0 - residual_weight) * fused + residual_weight * eye
    s = a.sum(dim=-1, keepdim=True)
    return a / torch.where(s > 0, s, torch.ones_like(s))


def rollout_step(joint: torch.Tensor | None, attn: torch.Tensor, *, head_fusion: str = "mean",
                 discard_ratio: float = 0.0, residual_weight: float = 0.5,
                 class_token_index: int | None = None) -> torch.Tensor:
    """Fold one more layer into the rollout: ``A_hat @ joint`` (``A_hat`` alone for the first).

    Args:
        joint: the rollout of the layers so far, ``[batch, query, key]``, or None.
        attn: this layer's attention ``[batch, head, query, key]``; computed in float64.
    """
    a = layer_matrix(attn, head_fusion=head_fusion, discard_ratio=discard_ratio, residual_weight=residual_weight,
                     class_token_index=class_token_index)
    return a if joint is None else a @ joint


def layer_matrix(attn: torch.Tensor, *, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 residual_weight: float = 0.5, class_token_index: int | None = None) -> torch.Tensor:
    """One layer's ``A_hat`` ``[batch, query, key]`` in float64 (fusion, discard, residual) from its
    attention ``[batch, head, query, key]``."""
    fused = fuse_heads(attn.to(torch.float64), head_fusion)
    if discard_ratio != 0.0:  # with nothing to discard the step is the identity
        fused = discard_lowest(fused, discard_ratio, class_token_index)
    return add_residual(fused, residual_weight)


def readout_vector(layout: TokenLayout, readout: str = "auto", dtype=torch.float64,
                   device=None) -> torch.Tensor:
    """The row vector ``[token]`` whose product with the joint matrix is the read-out row: the class
    token's indicator (``"cls"``), or the mean of the patch indicators (``"patch_mean"``)."""
    v = torch.zeros(layout.num_tokens, dtype=dtype, device=device)
    if _resolve_readout(readout, layout) == "cls":
        v[layout.class_token_index] = 1.0
    else:
        ps = layout.patch_slice
        v[ps] = 1.0 / len(range(layout.num_tokens)[ps])
    return v


def row_rollout(matrices: Sequence[torch.Tensor], layout: TokenLayout, readout: str = "auto") -> torch.Tensor:
    """The map ``[batch, grid_h, grid_w]`` of ``R = A_hat_end @ ... @ A_hat_start`` (``matrices`` in
    forward order, each ``[batch, query, key]``) without forming ``R``: the read-out row vector is
    carried from the last layer to the first, one vector-matrix product per layer (``N^2`` work per
    layer and image instead of ``N^3``). Equals :func:`patch_map` of :func:`rollout`'s product."""
    if not matrices:
        raise RolloutSettingsError("rollout needs at least one attention layer.")
    first = matrices[0]
    if first.shape[-1] != layout.num_tokens or first.shape[-2] != layout.num_tokens:
        return patch_map(first, layout, readout)  # the same refusal, worded once
    row = readout_vector(layout, readout, first.dtype, first.device).expand(first.shape[0], 1, -1)  # [batch, 1, key]
    for a in reversed(matrices):
        row = row @ a
    return row[:, 0, layout.patch_slice].reshape(first.shape[0], *layout.grid_size)


def rollout(maps: Sequence[torch.Tensor], *, head_fusion: str = "mean", discard_ratio: float = 0.0,
            residual_weight: float = 0.5, class_token_index: int | None = None) -> torch.Tensor:
    """Joint attention of the given layers (forward order), ``[batch, query, key]`` in float64."""
    joint = None
    for attn in maps:
        joint = rollout_step(joint, attn, head_fusion=head_fusion, discard_ratio=discard_ratio,
                             residual_weight=residual_weight, class_token_index=class_token_index)
    if joint is None:
        raise RolloutSettingsError("rollout needs at least one attention layer.")
    return joint


def gradient_rollout(maps: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s relevance: ``R = I``; per layer ``R <- R + A_bar @ R``, forward order,
    ``A_bar`` the mean over heads of ``clamp(grad * A, min=0)``. Returns ``[batch, query, key]``."""
    if len(maps) != len(grads) or not maps:
        raise RolloutSettingsError("gradient rollout needs one gradient per attention layer.")
    b, _, n, _ = maps[0].shape
    r = torch.eye(n, dtype=torch.float64, device=maps[0].device).expand(b, n, n)
    for a, g in zip(maps, grads):
        a_bar = (g.to(torch.float64) * a.to(torch.float64)).clamp(min=0).mean(dim=1)
        r = r + a_bar @ r
    return r


def patch_map(joint: torch.Tensor, layout: TokenLayout, readout: str = "auto") -> torch.Tensor:
    """Read the map ``[batch, grid_h, grid_w]`` out of a joint matrix ``[batch, query, key]``.

    ``readout``: ``"cls"`` the class token's row over patch columns; ``"patch_mean"`` the mean over
    patch queries of the patch block; ``"auto"`` the first when the model has a class token, else
    the second.
    """
    if joint.shape[-1] != layout.num_tokens or joint.shape[-2] != layout.num_tokens:
        raise UnsupportedModelError(
            f"attention covers {joint.shape[-1]} tokens but the token layout has {layout.num_tokens} "
            f"({layout.describe()}); vitlens cannot tell which tokens are patches.")
    readout = _resolve_readout(readout, layout)
    ps = layout.patch_slice
    if readout == "cls":
        row = joint[:, layout.class_token_index, ps]
    else:
        row = joint[:, ps, ps].mean(dim=1)
    return row.reshape(joint.shape[0], *layout.grid_size)


def _resolve_readout(readout: str, layout: TokenLayout) -> str:
    if readout not in READOUTS:
        raise RolloutSettingsError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}.")
    if readout == "auto":
        return "cls" if layout.has_class_token else "patch_mean"
    if readout == "cls" and not layout.has_class_token:
        raise RolloutSettingsError("readout 'cls' needs a class token, and this model has none; use "
                                   "'patch_mean' (the mean over patch queries) or 'auto'.")
    return readout


# --------------------------------------------------------------------------- result

@dataclass(frozen=True)
class RolloutMaps:
    """Rollout maps of a set of images, and the settings that produced them.

    Attributes:
        maps: ``[image, grid_h, grid_w]``, non-negative, not rescaled (see the module docstring).
        names: one key per image (file key, or the index within the input tensor).
        layout: token layout of the model at this input size.
        method: ``"rollout"`` or ``"grad-rollout"``.
        readout: ``"cls"`` or ``"patch_mean"`` (resolved from ``"auto"``).
        head_fusion, discard_ratio, residual_weight: plain-rollout settings (None for grad-rollout).
        layers: indices of the attention blocks used, in forward order.
        num_layers: number of attention blocks of the model.
        predicted: ``[image]`` argmax of the model output, or None when the output is not 2-D.
        target: ``[image]`` the explained class (given or predicted); plain rollout ignores it.
        model: the model's name.
        indices: ``[image]`` each image's index in the input (tensor position or ImageSet file),
            by which per-image inputs (targets, masks) are looked up.
    """

    maps: np.ndarray
    names: tuple[str, ...]
    layout: TokenLayout
    method: str
    readout: str
    head_fusion: str | None
    discard_ratio: float | None
    residual_weight: float | None
    layers: tuple[int, ...]
    num_layers: int
    predicted: np.ndarray | None = None
    target: np.ndarray | None = None
    model: str = ""
    indices: tuple[int, ...] = ()

    def __post_init__(self):
        freeze_arrays(self)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def values(self) -> str:
        """What the numbers in ``maps`` are, in words (written into run records)."""
        src = "class-token row" if self.readout == "cls" else "mean over patch queries"
        if self.method == "rollout":
            return (f"raw rollout, not rescaled: {src} of the joint attention over the patch columns; "
                    "each map sums to at most 1, the rest of the row rests on prefix tokens")
        return (f"raw relevance R of Chefer et al., not rescaled: {src} of R over the patch columns "
                "(R starts at the identity, so values are unbounded)")

    def settings(self) -> dict:
        """The conventions used, as plain values."""
        return {"method": self.method, "readout": self.readout, "head_fusion": self.head_fusion,
                "discard_ratio": self.discard_ratio, "residual_weight": self.residual_weight,
                "layers": list(self.layers), "num_layers": self.num_layers, "values": self.values,
                "discard_rule": ("int(discard_ratio * M) lowest fused weights zeroed per image and layer, "
                                 "M = entries outside the class token's row and column (all entries "
                                 "when there is no class token), before the residual is added")
                if self.method == "rollout" else None}

    def to_frame(self):
        """Tidy long frame: one row per image and patch (``model, image, row, col, y_px, x_px, value``)."""
        import pandas as pd

        gh, gw = self.layout.grid_size
        centres = self.layout.patch_centers()
        n = len(self.names)
        return pd.DataFrame({
            "model": self.model, "method": self.method,
            "image": np.repeat(np.array(self.names, dtype=object), gh * gw),
            "row": np.tile(np.repeat(np.arange(gh), gw), n), "col": np.tile(np.tile(np.arange(gw), gh), n),
            "y_px": np.tile(centres[:, 0], n), "x_px": np.tile(centres[:, 1], n),
            "value": self.maps.reshape(n, -1).ravel()})

    def plot(self, index: int = 0, image: np.ndarray | None = None, ax=None, **kwargs):
        """Draw map ``index`` over ``image`` (``[height, width, 3]`` in [0, 1]); returns the axes."""
        from ...plotting.rollout import plot_overlay

        kwargs.setdefault("title", self.names[index])
        return plot_overlay(self.maps[index], image, layout=self.layout, ax=ax, **kwargs)

    def take(self, order: Sequence[int]) -> "RolloutMaps":
        """The images at positions ``order`` (in that order), same settings."""
        o = np.asarray(order, dtype=np.int64)
        return replace(self, maps=self.maps[o], names=tuple(self.names[i] for i in o),
                       indices=tuple(self.indices[i] for i in o) if self.indices else (),
                       predicted=None if self.predicted is None else self.predicted[o],
                       target=None if self.target is None else self.target[o])

    @classmethod
    def concat(cls, parts: Sequence["RolloutMaps"]) -> "RolloutMaps":
        """Join results of the same model and settings along the image axis."""
        if not parts:
            raise ValueError("nothing to join")
        first = parts[0]

        def cat(name):
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return cls(maps=np.concatenate([p.maps for p in parts]),
                   names=tuple(n for p in parts for n in p.names), layout=first.layout,
                   method=first.method, readout=first.readout, head_fusion=first.head_fusion,
                   discard_ratio=first.discard_ratio, residual_weight=first.residual_weight,
                   layers=first.layers, num_layers=first.num_layers, predicted=cat("predicted"),
                   target=cat("target"), model=first.model,
                   indices=tuple(i for p in parts for i in p.indices)
                   if all(p.indices for p in parts) else ())

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


# --------------------------------------------------------------------------- driver

def image_keys(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One key per file: its file name, or, where two files share a name, its path relative to the
    deepest folder holding all the files (with ``/`` separators)."""
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    if all(c == 1 for c in counts.values()):
        return names
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    return [n if counts[n] == 1 else Path(os.path.relpath(a, root)).as_posix()
            for n, a in zip(names, absolute)]


def _layer_range(start_layer: int, end_layer: int | None, n: int) -> list[int]:
    def absolute(i, what):
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise RolloutSettingsError(f"{what} layer {i} is out of range: the model has {n} attention blocks.")
        return j

    s = absolute(start_layer, "start")
    e = n - 1 if end_layer is None else absolute(end_layer, "end")
    if s > e:
        raise RolloutSettingsError(f"start layer {start_layer} comes after end layer {end_layer}.")
    return list(range(s, e + 1))


def check_settings(method: str = "rollout", head_fusion: str = "mean", discard_ratio: float = 0.0,
                   residual_weight: float = 0.5, readout: str = "auto") -> None:
    """Raise :class:`RolloutSettingsError` for a setting out of range or not applying to ``method``."""
    if method not in METHODS:
        raise RolloutSettingsError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if head_fusion not in HEAD_FUSIONS:
        raise RolloutSettingsError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}.")
    if not 0.0 <= discard_ratio <= 1.0:
        raise RolloutSettingsError(f"discard ratio must be in [0, 1], got {discard_ratio}.")
    if not 0.0 <= residual_weight <= 1.0:
        raise RolloutSettingsError(f"residual weight must be in [0, 1], got {residual_weight}.")
    if readout not in READOUTS:
        raise RolloutSettingsError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}.")
    if method == "grad-rollout" and (head_fusion != "mean" or discard_ratio != 0.0 or residual_weight != 0.5):
        raise RolloutSettingsError(
            "head fusion, discard ratio and residual weight apply to plain rollout only; gradient "
            "rollout always averages clamp(grad * A, min=0) over heads and adds the identity.")


def _targets(target_class, out: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """The class explained for each image of a batch: the prediction, one class for all, or the
    per-image class looked up by each image's own index (never by its position among the images
    that loaded, which shifts after a skipped file)."""
    width = out.shape[-1]
    if target_class is None:
        t = out.argmax(dim=-1)
    elif isinstance(target_class, (int, np.integer)):
        t = torch.full((len(indices),), int(target_class), dtype=torch.long)
    else:
        t = torch.as_tensor(np.asarray(target_class)[np.asarray(indices, dtype=np.int64)], dtype=torch.long)
    if ((t < 0) | (t >= width)).any():
        raise RolloutSettingsError(f"target class {t[(t < 0) | (t >= width)][0].item()} is out of range: "
                                   f"the model has {width} outputs.")
    return t.to(out.device)


def _check_output(out, name: str, method: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnsupportedModelError(f"{name} returned {shape}, not class scores [batch, class]; "
                                    f"{method} needs a model whose forward returns them.")
    return out


def _run_batch(model: nn.Module, x: torch.Tensor, layout: TokenLayout, layers: list[int], *, method: str,
               head_fusion: str, discard_ratio: float, residual_weight: float, readout: str,
               target_class, indices: Sequence[int], precision: str = "fp32"):
    name = type(model).__name__
    joint = None
    if method == "rollout":
        # The joint matrix is folded layer by layer as the forward pass reaches each block, so memory
        # holds one N x N product per image whatever the depth (no per-layer or per-head copies are
        # kept; each layer's maps are fused over heads as soon as they are formed).
        state: dict = {"joint": None}

        def fold(_layer: int, attn: torch.Tensor) -> None:
            a = layer_matrix(float32_probabilities(attn), head_fusion=head_fusion, discard_ratio=discard_ratio,
                             residual_weight=residual_weight, class_token_index=layout.class_token_index)
            state["joint"] = a if state["joint"] is None else a @ state["joint"]

        with torch.no_grad(), capture_attention(model, layers=layers, callback=fold), autocast(x.device, precision):
            out = forward_of(model)(x)
        if state["joint"] is None:
            raise UnsupportedModelError(f"{name} ran without any attention block being captured.")
        joint = state.pop("joint")
        if isinstance(out, torch.Tensor) and out.ndim == 2 and getattr(model, "num_classes", 1):
            predicted = out.argmax(dim=-1)
            target = _targets(target_class, out, indices)
        else:
            predicted = target = None
    else:
        x = x.detach().requires_grad_(True)  # a graph even when every parameter is frozen
        with torch.enable_grad(), capture_attention(model, layers=layers, detach=False) as cap:
            with autocast(x.device, precision):
                out = _check_output(forward_of(model)(x), name, method).float()
            maps = cap.maps
            predicted = out.argmax(dim=-1)
            target = _targets(target_class, out, indices)
            score = out.gather(1, target[:, None]).sum()  # images are independent: one backward
            grads = torch.autograd.grad(score, maps, allow_unused=True)
        grads = [torch.zeros_like(m) if g is None else g for m, g in zip(maps, grads)]
        joint = gradient_rollout([float32_probabilities(m.detach()) for m in maps], [g.float() for g in grads])
    if joint is not None:
        pm = patch_map(joint, layout, readout)  # float64, non-negative by construction
    return (pm.cpu().numpy(), None if predicted is None else predicted.cpu().numpy(),
            None if target is None else target.detach().cpu().numpy())


def _inputs(images, model: nn.Module):
    """``(images as a tensor [image, 3, height, width] or an ImageSet, one key per image)``."""
    from ...data.images import ImageSet

    if isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4:
            raise RolloutSettingsError(f"images must be [batch, 3, height, width], got {tuple(images.shape)}.")
        return x, [str(i) for i in range(x.shape[0])]
    imageset = images if hasattr(images, "batches") else ImageSet.for_model(model, images)
    return imageset, image_keys(imageset.paths)


def _refuse_windows(model: nn.Module) -> None:
    """Rollout multiplies every layer's ``[token, token]`` map over one token set: not defined for
    models that attend within windows (Swin: no single token sequence; SAM: windowed blocks)."""
    from ...models.families.registry import adapter_for

    adapter = adapter_for(model)
    if not hasattr(adapter, "window_layout"):
        return
    adapter.token_layout()  # Swin and Swin-V2 refuse here, saying why
    blocks = adapter.window_layout().blocks
    windowed = sum(not g.is_global for g in blocks)
    raise UnsupportedModelError(
        f"attention rollout multiplies every layer's [token, token] attention over one token set, but "
        f"{model_name(model)} attends within windows in {windowed} of its {len(blocks)} blocks, where a "
        "block's maps cover one window's tokens only, so rollout is not defined for it; attention "
        "distance, the receptive field and position-embedding similarity are.")


def iter_rollout(model: nn.Module, images, *, method: str = "rollout", head_fusion: str = "mean",
                 discard_ratio: float = 0.0, residual_weight: float = 0.5, start_layer: int = 0,
                 end_layer: int | None = None, target_class=None, readout: str = "auto",
                 batch_size: int = 32, workers: int = 0, name: str | None = None,
                 indices: Sequence[int] | None = None,
                 precision: str = "fp32") -> Iterator[tuple[torch.Tensor, RolloutMaps]]:
    """Like :func:`attention_rollout`, one batch at a time: yields ``(images, RolloutMaps)`` per
    batch, the images being the preprocessed model inputs ``[batch, 3, height, width]``.

    ``indices`` restricts the run to those images (positions in the tensor or the image set's
    files), in the order given. A per-image ``target_class`` holds one class per image of the whole
    input and is looked up by each image's own index. Each batch runs in eval mode with hooks set
    for its forward pass only; the caller's mode is back before the batch is yielded."""
    check_settings(method, head_fusion, discard_ratio, residual_weight, readout)
    check_precision(precision)
    if batch_size < 1:
        raise RolloutSettingsError(f"batch size must be at least 1, got {batch_size}.")
    num_layers = len(attention_modules(model))  # a clear error for CNNs, before any image is read
    _refuse_windows(model)
    layers = _layer_range(start_layer, end_layer, num_layers)
    source, keys = _inputs(images, model)
    if target_class is not None and not isinstance(target_class, (int, np.integer)):
        target_class = np.asarray(target_class).reshape(-1)
        if len(target_class) != len(keys):
            raise RolloutSettingsError(f"{len(target_class)} target classes given for {len(keys)} images; "
                                       "give one per image (in input order) or one for all.")
    if method == "grad-rollout" and not getattr(model, "num_classes", 1):
        warnings.warn(f"{type(model).__name__} has no classifier (num_classes=0): gradient rollout "
                      "explains a unit of its pooled features instead of a class", stacklevel=2)
    device = next(model.parameters()).device
    shown_name = model_name(model, name)
    layout = None
    for x, idx in iter_batches(source, batch_size, indices=indices, workers=workers):
        x = x.to(device)
        if layout is None or layout.input_size != tuple(x.shape[-2:]):
            layout = token_layout(model, tuple(x.shape[-2:]))
            _resolve_readout(readout, layout)
        with eval_mode(model):
            pm, predicted, target = _run_batch(model, x, layout, layers, method=method, head_fusion=head_fusion,
                                               discard_ratio=discard_ratio, residual_weight=residual_weight,
                                               readout=readout, target_class=target_class, indices=idx,
                                               precision=precision)
        plain = method == "rollout"
        yield x, RolloutMaps(
            maps=pm, names=tuple(keys[i] for i in idx), layout=layout, method=method,
            readout=_resolve_readout(readout, layout), head_fusion=head_fusion if plain else None,
            discard_ratio=discard_ratio if plain else None, residual_weight=residual_weight if plain else None,
            layers=tuple(layers), num_layers=num_layers, predicted=predicted, target=target,
            model=shown_name, indices=tuple(idx))


def attention_rollout(model: nn.Module, images, *, method: str = "rollout", head_fusion: str = "mean",
                      discard_ratio: float = 0.0, residual_weight: float = 0.5, start_layer: int = 0,
                      end_layer: int | None = None, target_class=None, readout: str = "auto",
                      batch_size: int = 32, workers: int = 0, name: str | None = None,
                      precision: str = "fp32", progress: bool = False) -> RolloutMaps:
    """Rollout maps of every image, batched: one forward (and for gradients one backward) per batch.

    Args:
        model: a ViT (see :func:`vitlens.capture.attention.attention_modules`); it runs in eval mode inside
            the call and is left in the caller's mode.
        images: a preprocessed tensor ``[batch, 3, height, width]`` (or one ``[3, height, width]``),
            an :class:`~vitlens.data.images.ImageSet`, or image paths/folders (read with the model's
            own preprocessing); unreadable files are skipped and recorded on the ImageSet.
        method: ``"rollout"`` (Abnar & Zuidema) or ``"grad-rollout"`` (Chefer et al., class-specific).
        head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads (plain rollout).
        discard_ratio: share of the lowest fused weights zeroed per image and layer (plain rollout).
        residual_weight: ``w`` in ``(1 - w) A + w I`` (plain rollout); 0.5 is the paper's.
        start_layer, end_layer: first and last attention block used (inclusive; negative counts from
            the end); all blocks by default.
        target_class: the class explained by ``grad-rollout``: one int for all images, one per image
            of the input (looked up by the image's index, so a skipped file shifts nothing), or None
            for each image's predicted class. Plain rollout records it and ignores it.
        readout: ``"auto"``, ``"cls"`` or ``"patch_mean"`` (see :func:`patch_map`).
        batch_size: images per forward pass.
        workers: image-decoding processes when reading files.
        name: the name recorded in the result (default: the name the model was loaded by).
        precision: forward (and backward) pass in ``fp32``, ``bf16`` or ``fp16`` (autocast); maps and
            gradients are cast to float32 before they are combined.
        progress: show a progress bar.

    Returns:
        :class:`RolloutMaps` with one ``[grid_h, grid_w]`` map per image.

    Raises:
        UnsupportedModelError: a model without attention vitlens can read (a CNN, for instance).
        RolloutSettingsError: a setting out of range, or a target class the model does not have.
    """
    from ...runtime.progress import progress_bar

    stream = iter_rollout(
        model, images, method=method, head_fusion=head_fusion, discard_ratio=discard_ratio,
        residual_weight=residual_weight, start_layer=start_layer, end_layer=end_layer,
        target_class=target_class, readout=readout, batch_size=batch_size, workers=workers,
        name=name, precision=precision)
    parts = []
    with progress_bar(total=None, desc="rollout", unit="img", enabled=progress) as bar:
        for _, part in stream:
            parts.append(part)
            bar.update(len(part))
    if not parts:
        from ...runtime.errors import ImageError
        raise ImageError("no image could be read, so there is nothing to roll out.")
    return RolloutMaps.concat(parts)
