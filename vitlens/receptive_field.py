"""Effective receptive field (ERF) of CNNs and ViTs, in input pixels.

The ERF of a layer is the input gradient of one unit of that layer (Luo et al., NeurIPS 2016):
the unit is the centre spatial location of the layer's output (the centre patch token of a ViT),
its activation is summed over channels, and ``|d unit / d input|`` is summed over the colour
channels and averaged over images (Raghu et al. 2021, Fig. 6; RepLKNet's ``visualize_erf.py`` is
the same with ReLUs, available as conventions). From the mean map come scalars in pixels, on the
same axis as mean attention distance:

- ``spread_px``: the gradient-mass-weighted mean distance of input pixel centres from the
  centre unit's input position ``c``: ``sum_p g_p ||p - c|| / sum_p g_p``;
- ``r50_px``, ``r90_px``: the smallest radius around ``c`` that holds 50% / 90% of the mass;
- ``theoretical_px``: the side of the theoretical receptive field, from kernel sizes, strides and
  dilations along the path to the layer (NaN with a reason where vitlens cannot derive it).

Conventions (each a named parameter of :func:`effective_receptive_field` where the literature
disagrees):

- Pixel ``x`` covers ``[x, x + 1)``; its centre is ``x + 0.5``. Positions are ``(y, x)``.
- Centre unit of an ``h x w`` feature map: ``(h // 2, w // 2)``; of a ViT: the patch token at grid
  index ``(gh // 2, gw // 2)``, found through the token layout (prefix tokens are skipped). For
  even sizes this is the lower-right of the four central units.
- Input position of the centre unit (``unit_position``): ``"receptive_field"`` (default) uses the
  centre of the unit's theoretical field, ``start + index * jump`` from the same conv arithmetic
  (exact for zero-padded convolutions; timm ResNets are aligned to the top-left corner, so at
  stride 32 this differs from the grid convention by 15.5 px); where that arithmetic is not
  available, and always with ``"grid"``, it is ``((i + 0.5) * stride_y, (j + 0.5) * stride_x)``
  with ``stride = input size / feature size``. For ViTs both are the centre pixel of the patch.
- Averaging: the gradient maps are averaged over images first and the scalars are computed from
  the mean map (Luo; Raghu; RepLKNet). ``spread_std_px`` is the standard deviation across images of
  the per-image spread, for reference.
- ``r_q``: the smallest radius around ``c`` enclosing a fraction ``q`` of the mass, each pixel's
  mass counted as spread evenly over radii ``[d - 0.5, d + 0.5]`` of its centre distance ``d``
  (see :func:`spread_and_radii`).
- Depth: the layer's 0-based position in the model's default layer list (every block of a ViT,
  every level of timm's ``feature_info`` for a CNN, which for ResNets includes the stem ``act1``);
  ``depth_fraction = depth / (n - 1)`` with ``n`` the length of that list, so a subset of layers
  sits where it sits in the whole model. Layers outside the default list are numbered in forward
  order among the measured layers instead.

The model must be in eval mode (batch norm in training mode would mix images in a batch and make
one image's gradient depend on the others); it is never switched, a model in training mode is
refused. Gradients are taken with respect to the input only; parameter ``.grad`` is left alone.

Everything averaged is kept as sums over images (:class:`ReceptiveFieldAccumulator`), so the
images can be split into parts (processes, or a run stopped and resumed) whose sums add up to
those of one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import UnsupportedModelError, VitlensError
from .layout import TokenLayout, token_layout
from .precision import autocast, check_precision

__all__ = ["ReceptiveField", "TheoreticalField", "ReceptiveFieldAccumulator", "effective_receptive_field",
           "stream_receptive_field", "theoretical_receptive_field", "default_layers", "spread_and_radii",
           "OBJECTIVES", "INPUT_GRADIENTS", "UNIT_POSITIONS"]

Objective = Literal["sum", "relu_sum"]
InputGradient = Literal["abs", "relu"]
UnitPosition = Literal["receptive_field", "grid"]
OBJECTIVES = ("sum", "relu_sum")
INPUT_GRADIENTS = ("abs", "relu")
UNIT_POSITIONS = ("receptive_field", "grid")
_VIT_NO_FIELD = ("attention mixes every token from the first block on, so the theoretical field is the "
                 "whole input")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ReceptiveField:
    """Effective receptive field of the measured layers of one model, over an image set.

    All per-layer arrays are indexed ``[layer]`` in forward order (``[layer, 2]`` for positions as
    ``(y, x)``); distances are in input pixels.

    Attributes:
        model: the model's name.
        kind: ``"cnn"`` (feature maps ``[batch, channel, h, w]``) or ``"vit"`` (tokens).
        layers: module name of each measured layer.
        depth: 0-based depth of each layer (see the module docstring).
        depth_fraction: ``depth / (n - 1)``, 0 for the first layer of the model, 1 for the last.
        spread_px: gradient-mass-weighted mean distance from the centre unit's input position.
        r50_px, r90_px: radii around that position holding 50% and 90% of the gradient mass.
        spread_std_px: standard deviation across images of the per-image spread (ddof=0).
        uniform_spread_px: the spread a uniform map over the whole input would have (the global
            reference: a layer near it sees the whole image).
        theoretical_px: side of the theoretical receptive field; NaN where not derived.
        theoretical_reason: why ``theoretical_px`` is NaN (empty where it is defined).
        centre_px: input position ``c`` of the centre unit, ``[layer, 2]``.
        centre_index: the centre unit on the feature map (patch grid for ViTs), ``[layer, 2]``.
        feature_size: feature-map (patch-grid) size, ``[layer, 2]``.
        maps: mean input-gradient maps ``[layer, height, width]`` (float64, not normalised).
        n_images: images averaged.
        input_size: model input ``(height, width)`` in pixels.
        conventions: the conventions used, by name.
    """

    model: str
    kind: str
    layers: tuple[str, ...]
    depth: np.ndarray
    depth_fraction: np.ndarray
    spread_px: np.ndarray
    r50_px: np.ndarray
    r90_px: np.ndarray
    spread_std_px: np.ndarray
    uniform_spread_px: np.ndarray
    theoretical_px: np.ndarray
    theoretical_reason: tuple[str, ...]
    centre_px: np.ndarray
    centre_index: np.ndarray
    feature_size: np.ndarray
    maps: np.ndarray
    n_images: int
    input_size: tuple[int, int]
    conventions: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_frame(self):
        """One row per layer: ``model, kind, layer, depth, depth_fraction, spread_px, r50_px, r90_px``, then
        ``spread_std_px, uniform_spread_px, theoretical_px``, the centre unit and ``n_images``."""
        import pandas as pd

        L = self.num_layers
        return pd.DataFrame({
            "model": [self.model] * L,
            "kind": [self.kind] * L,
            "layer": list(self.layers),
            "depth": self.depth.astype(int),
            "depth_fraction": self.depth_fraction,
            "spread_px": self.spread_px,
            "r50_px": self.r50_px,
            "r90_px": self.r90_px,
            "spread_std_px": self.spread_std_px,
            "uniform_spread_px": self.uniform_spread_px,
            "theoretical_px": self.theoretical_px,
            "centre_y_px": self.centre_px[:, 0],
            "centre_x_px": self.centre_px[:, 1],
            "feature_h": self.feature_size[:, 0].astype(int),
            "feature_w": self.feature_size[:, 1].astype(int),
            "n_images": [self.n_images] * L,
        })

    def to_dict(self) -> dict:
        """Metadata for a run record (not the maps)."""
        return {"model": self.model, "kind": self.kind, "layers": list(self.layers), "n_images": self.n_images,
                "input_size": list(self.input_size), "conventions": dict(self.conventions),
                "theoretical_undefined": _group(self.layers, self.theoretical_reason)}

    def plot(self, ax=None, **kwargs):
        """Spread (line) and r50-r90 (band) against depth. Returns the axes."""
        from .plotting.receptive_field import plot_spread
        return plot_spread([self], ax=ax, **kwargs)


def _group(layers: Sequence[str], reasons: Sequence[str]) -> dict[str, list[str]]:
    """``{reason: [layers]}`` for the layers whose theoretical field is undefined."""
    out: dict[str, list[str]] = {}
    for l, r in zip(layers, reasons):
        if r:
            out.setdefault(r, []).append(l)
    return out


# --------------------------------------------------------------------------- scalars from a map


def _pixel_distances(size: tuple[int, int], centre: Sequence[float]) -> np.ndarray:
    """Distance of every input pixel centre ``(y + 0.5, x + 0.5)`` from ``centre``, ``[height, width]``."""
    h, w = size
    ys = np.arange(h, dtype=np.float64) + 0.5 - float(centre[0])
    xs = np.arange(w, dtype=np.float64) + 0.5 - float(centre[1])
    return np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)


def spread_and_radii(weights: np.ndarray, centre: Sequence[float], quantiles: Sequence[float] = (0.5, 0.9),
                     ) -> tuple[float, np.ndarray]:
    """Mean radius and mass radii of a non-negative map ``[height, width]`` around ``centre``.

    Args:
        weights: non-negative mass per input pixel.
        centre: ``(y, x)`` in pixels; pixel ``(i, j)`` sits at ``(i + 0.5, j + 0.5)``.
        quantiles: fractions ``q`` of the mass, each in ``(0, 1]``.

    Returns:
        ``(spread, radii)``: ``sum g d / sum g`` over pixel-centre distances ``d``, and ``radii[k]``,
        the smallest radius holding ``quantiles[k]`` of the mass, where each pixel's mass counts as
        spread evenly over the radii ``[d - 0.5, d + 0.5]`` (a ring one pixel wide, clipped at 0),
        so the enclosed mass grows piecewise linearly with the radius instead of in steps. This
        matches the continuous closed forms (a Gaussian's ``r50 = 1.1774 sigma``) to about 1% from
        ``sigma = 2`` px. NaN throughout for a map of zero mass.
    """
    g = np.asarray(weights, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"weights must be [height, width], got shape {g.shape}")
    if (g < 0).any():
        raise ValueError("weights must be non-negative")
    q = np.asarray(quantiles, dtype=np.float64)
    total = g.sum()
    if not total > 0 or not np.isfinite(total):
        return float("nan"), np.full(q.shape, np.nan)
    d = _pixel_distances(g.shape, centre).ravel()
    m = g.ravel() / total
    spread = float((m * d).sum())
    # Each pixel's mass is spread evenly over the radii [d - 0.5, d + 0.5] (clipped at 0): the
    # enclosed mass F(r) is then piecewise linear with breakpoints at those ends.
    lo, hi = np.maximum(d - 0.5, 0.0), d + 0.5
    rate = m / (hi - lo)
    pos = np.concatenate([lo, hi])
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    slope = np.cumsum(np.concatenate([rate, -rate])[order])  # dF/dr just after each breakpoint
    mass = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(pos))])
    mass = np.maximum.accumulate(np.clip(mass, 0.0, 1.0))
    mass[-1] = 1.0  # all mass lies within the farthest pixel's ring
    radii = np.empty(q.shape)
    for k, qk in enumerate(q):
        if not 0.0 < qk <= 1.0:
            raise ValueError(f"quantiles must be in (0, 1], got {qk}")
        i = max(int(np.searchsorted(mass, qk, side="left")), 1)  # first breakpoint with F >= q
        lo_r, hi_r, lo_m, hi_m = pos[i - 1], pos[i], mass[i - 1], mass[i]
        radii[k] = hi_r if hi_m <= lo_m else lo_r + (qk - lo_m) / (hi_m - lo_m) * (hi_r - lo_r)
    return spread, radii


# --------------------------------------------------------------------------- theoretical field


@dataclass(frozen=True)
class TheoreticalField:
    """The theoretical receptive field of a layer's units, per axis ``(y, x)``.

    Attributes:
        layer: module name.
        size: side of the field in input pixels (ignoring image borders), ``(y, x)``.
        jump: distance in input pixels between neighbouring units (the cumulative stride).
        start: input position (pixel-centre coordinates) of the centre of unit 0's field; unit
            ``i`` is centred at ``start + i * jump``.
        reason: empty when the field is known; otherwise why it is not (then the rest is NaN).
    """

    layer: str
    size: tuple[float, float] = (math.nan, math.nan)
    jump: tuple[float, float] = (math.nan, math.nan)
    start: tuple[float, float] = (math.nan, math.nan)
    reason: str = ""

    @property
    def defined(self) -> bool:
        return not self.reason

    @property
    def size_px(self) -> float:
        """The side when the field is square (all timm ResNets and ConvNeXts), else NaN."""
        return float(self.size[0]) if self.defined and self.size[0] == self.size[1] else math.nan

    def centre(self, index: Sequence[int]) -> tuple[float, float]:
        return (self.start[0] + index[0] * self.jump[0], self.start[1] + index[1] * self.jump[1])


class _Unknown(Exception):
    pass


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _children_rules() -> dict[type, frozenset[str]]:
    """Containers whose registration order is their forward order on the main path, and the
    children that are residual shortcuts (skipped: their field lies inside the main path's)."""
    rules: dict[type, frozenset[str]] = {nn.Sequential: frozenset()}
    try:
        from timm.models import resnet
        rules.update({resnet.ResNet: frozenset(), resnet.BasicBlock: frozenset({"downsample"}),
                      resnet.Bottleneck: frozenset({"downsample"})})
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models import convnext
        rules.update({convnext.ConvNeXt: frozenset(), convnext.ConvNeXtStage: frozenset(),
                      convnext.ConvNeXtBlock: frozenset({"shortcut"})})
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.layers import Mlp
        rules[Mlp] = frozenset()  # applied per position (1x1 convs, or Linear on channel-last maps)
    except ImportError:  # pragma: no cover
        pass
    return rules


def _is_pointwise(m: nn.Module) -> bool:
    """Modules that act on each spatial position alone (the field is unchanged)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    kinds: list[type] = [_BatchNorm, nn.LayerNorm, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Linear]
    try:
        from timm.layers import DropBlock2d, DropPath, LayerNorm2d
        kinds += [DropPath, DropBlock2d, LayerNorm2d]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(m, tuple(kinds)):
        return True
    mod = type(m).__module__
    return not list(m.children()) and (mod == "torch.nn.modules.activation"
                                       or mod.startswith("timm.layers.activations"))


def _kernel_op(m: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """``(kernel, stride, dilation, left padding)`` of a conv or pool, None for other modules."""
    if isinstance(m, nn.Conv2d):
        if type(m).__name__ == "Conv2dSame" or getattr(m, "dynamic_pad", False):
            raise _Unknown(f"{type(m).__name__} pads by input size ('same' padding), so its alignment varies")
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        if isinstance(m.padding, str):  # torch's 'same' pads total//2 on the left; 'valid' nothing
            p = tuple(d[a] * (k[a] - 1) // 2 for a in range(2)) if m.padding == "same" else (0, 0)
        else:
            p = _pair(m.padding)
        return k, s, d, p
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        d = _pair(getattr(m, "dilation", 1))
        return k, s, d, _pair(m.padding)
    return None


def theoretical_receptive_field(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, TheoreticalField]:
    """Theoretical receptive field of ``layers`` (default: :func:`default_layers`) from the convolution
    arithmetic of Araujo et al. (Distill 2019), per axis::

        size  += (dilation * (kernel - 1)) * jump
        start += (dilation * (kernel - 1) / 2 - padding) * jump
        jump  *= stride

    starting from ``size = 1, jump = 1, start = 0.5`` (the centre of pixel 0). The modules are walked
    in forward order along the main path: ``nn.Sequential`` and timm's ResNet (BasicBlock,
    Bottleneck) and ConvNeXt (stages, blocks, Mlp); residual shortcuts (``downsample`` of a ResNet
    block, ``shortcut`` of a ConvNeXt block) are skipped because their field lies inside the main
    branch's. Normalisations over channels, activations, dropout and per-position linear layers
    leave the field unchanged. Anything else (squeeze-excitation, global pooling, anti-aliasing,
    'same' padding that depends on the input size, unknown containers, ViT attention) stops the
    walk: the layers it reaches get NaN and the reason.
    """
    mods = dict(model.named_modules())
    if layers is None:
        layers = default_layers(model)
    wanted = set(layers)
    missing = [l for l in layers if l not in mods]
    if missing:
        raise UnsupportedModelError(f"{type(model).__name__} has no module named {', '.join(missing)}.")
    if _is_vit(model):
        return {l: TheoreticalField(l, reason=_VIT_NO_FIELD) for l in layers}

    rules = _children_rules()
    found: dict[str, TheoreticalField] = {}
    # state per axis: [size, jump, start]
    state = [[1.0, 1.0, 0.5], [1.0, 1.0, 0.5]]

    def record(name: str) -> None:
        if name in wanted and name not in found:
            found[name] = TheoreticalField(name, size=(state[0][0], state[1][0]), jump=(state[0][1], state[1][1]),
                                           start=(state[0][2], state[1][2]))

    def visit(m: nn.Module, name: str) -> None:
        if len(found) == len(wanted):
            return
        op = _kernel_op(m)
        if op is not None:
            k, s, d, p = op
            for a in range(2):
                size, jump, start = state[a]
                span = d[a] * (k[a] - 1)
                state[a] = [size + span * jump, jump * s[a], start + (span / 2 - p[a]) * jump]
        elif _is_pointwise(m):
            pass
        elif type(m) in rules:
            skip = rules[type(m)]
            for child_name, child in m.named_children():
                if child_name not in skip:
                    visit(child, f"{name}.{child_name}" if name else child_name)
        else:
            raise _Unknown(f"the theoretical field of {type(m).__name__} ({name or 'the model'}) is not one "
                           "vitlens derives")
        record(name)

    reason = ""
    try:
        visit(model, "")
    except _Unknown as e:
        reason = str(e)
    for l in layers:
        if l not in found:
            found[l] = TheoreticalField(l, reason=reason or f"{l} is not on the main path vitlens walks")
    return {l: found[l] for l in layers}


# --------------------------------------------------------------------------- layers


def _is_vit(model: nn.Module) -> bool:
    pe = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    return pe is not None and hasattr(pe, "grid_size") and isinstance(blocks, (nn.Sequential, nn.ModuleList))


def default_layers(model: nn.Module) -> list[str]:
    """The layers measured by default: every ``blocks[i]`` of a ViT (token outputs), every level of a
    timm CNN's ``feature_info`` (stage outputs; for ResNets also the stem ``act1``).

    Raises:
        UnsupportedModelError: neither applies; pass ``layers=`` with module names instead.
    """
    if _is_vit(model):
        return [f"blocks.{i}" for i in range(len(model.blocks))]
    info = getattr(model, "feature_info", None)
    if info is not None:
        entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        mods = dict(model.named_modules())
        names = []
        for e in entries:
            n = e.get("module", "") if isinstance(e, dict) else ""
            n = n if n in mods else n.replace("_", ".")
            if n in mods and n not in names:
                names.append(n)
        if names:
            return names
    raise UnsupportedModelError(
        f"{type(model).__name__} is neither a timm ViT (patch_embed and blocks) nor a timm CNN with "
        "feature_info, so vitlens does not know its stages; pass layers=[module names] instead.")


# --------------------------------------------------------------------------- capture


class _Stop(Exception):
    """Raised from the last hook: the rest of the forward pass is not needed."""


class _Outputs:
    """Forward hooks on ``layers`` that keep each module's output; removed on exit."""

    def __init__(self, model: nn.Module, layers: Sequence[str], channels_last: bool):
        self.model, self.layers, self.channels_last = model, list(layers), channels_last
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self._handles: list = []

    def __enter__(self) -> "_Outputs":
        mods = dict(self.model.named_modules())
        try:
            for name in self.layers:
                self._handles.append(mods[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name in self.outputs:
                raise UnsupportedModelError(f"module {name} runs more than once per forward pass, so its "
                                            "output is not one layer; measure another module.")
            if isinstance(output, (tuple, list)):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModelError(f"module {name} returns {type(output).__name__}, not a tensor.")
            if self.channels_last and output.ndim == 4:
                output = output.permute(0, 3, 1, 2)
            self.outputs[name] = output
            self.order.append(name)
            if len(self.outputs) == len(self.layers):
                raise _Stop
        return hook

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.outputs, self.order = {}, []
        try:
            self.model(x)
        except _Stop:
            pass
        missing = [n for n in self.layers if n not in self.outputs]
        if missing:
            raise UnsupportedModelError(f"modules {', '.join(missing)} did not run in the forward pass.")
        return self.outputs


# --------------------------------------------------------------------------- the analysis


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"images must be a float tensor [image, 3, height, width], got "
                         f"{x.dtype} {tuple(x.shape)}")


def _batches(images, batch_size: int, indices: Sequence[int] | None = None,
             workers: int = 0) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """``(inputs [batch, 3, height, width], image indices)`` from a tensor or an ImageSet-like
    object (anything with ``batches(batch_size)``), over all images or only ``indices``."""
    if isinstance(images, torch.Tensor):
        _check_images(images)
        idx = list(range(images.shape[0])) if indices is None else list(indices)
        for i in range(0, len(idx), batch_size):
            chunk = idx[i:i + batch_size]
            yield (images[i:i + batch_size] if indices is None else images[chunk]), chunk
        return
    kwargs: dict = {}
    if indices is not None:
        kwargs["indices"] = list(indices)
    if workers:
        kwargs["num_workers"] = workers
    for x, idx in images.batches(batch_size, **kwargs):
        yield x, list(idx)


@dataclass
class _Layer:
    """Per-layer setup, fixed by the first forward pass."""

    name: str
    kind: str
    feature_size: tuple[int, int]
    centre_index: tuple[int, int]
    token: int | None  # ViT: sequence index of the centre patch token
    centre_px: tuple[float, float]
    distances: torch.Tensor  # [height, width]


def _setup_layer(name: str, out: torch.Tensor, input_size: tuple[int, int], layout: TokenLayout | None,
                 field_: TheoreticalField, unit_position: str) -> _Layer:
    H, W = input_size
    if layout is not None:
        if out.ndim != 3 or out.shape[1] != layout.num_tokens:
            raise UnsupportedModelError(
                f"{name} returns shape {tuple(out.shape)}, not [batch, {layout.num_tokens} tokens, channel] "
                f"as the token layout ({layout.describe()}) says.")
        gh, gw = layout.grid_size
        ci, cj = gh // 2, gw // 2
        patch = ci * gw + cj
        cy, cx = layout.patch_centers()[patch]
        return _Layer(name, "vit", (gh, gw), (ci, cj), layout.num_prefix_tokens + patch, (float(cy), float(cx)),
                      torch.from_numpy(_pixel_distances(input_size, (cy, cx))))
    if out.ndim != 4:
        raise UnsupportedModelError(f"{name} returns shape {tuple(out.shape)}; the receptive field of a CNN "
                                    "layer needs a feature map [batch, channel, height, width].")
    h, w = int(out.shape[2]), int(out.shape[3])
    ci, cj = h // 2, w // 2
    if unit_position == "receptive_field" and field_.defined:
        cy, cx = field_.centre((ci, cj))
    else:
        cy, cx = (ci + 0.5) * H / h, (cj + 0.5) * W / w
    return _Layer(name, "cnn", (h, w), (ci, cj), None, (float(cy), float(cx)),
                  torch.from_numpy(_pixel_distances(input_size, (cy, cx))))


class ReceptiveFieldAccumulator:
    """Running sums of the input-gradient maps of ``layers`` of ``model`` over images.

    ``update(x)`` adds a batch ``[batch, 3, height, width]``. The state is float64 sums that add up
    over any split of the images: the per-pixel maps ``map_sum [layer, height, width]``, the
    per-image spread and its square ``spread_sum, spread_sumsq [layer]``, the images with gradient
    mass ``spread_count [layer]`` and the image count ``n_images [1]``. Partial states therefore
    merge (``merge``, or a sum of ``state()`` over processes) and can be saved and loaded again;
    ``result()`` turns the sums into a :class:`ReceptiveField`. The arguments are those of
    :func:`effective_receptive_field`; the checks on the model and layers run here, before any
    image is read. ``input_size`` (or :meth:`prepare`) fixes the layer setup and allocates the sums
    at once; otherwise the first batch does.
    """

    SUMMED = ("map_sum", "spread_sum", "spread_sumsq", "spread_count", "n_images")

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, *,
                 device: str | torch.device | None = None, objective: Objective = "sum",
                 input_gradient: InputGradient = "abs", unit_position: UnitPosition = "receptive_field",
                 input_size: Sequence[int] | None = None, precision: str = "fp32"):
        check_precision(precision)
        self.precision = precision
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if input_gradient not in INPUT_GRADIENTS:
            raise ValueError(f"input_gradient must be one of {INPUT_GRADIENTS}, got {input_gradient!r}")
        if unit_position not in UNIT_POSITIONS:
            raise ValueError(f"unit_position must be one of {UNIT_POSITIONS}, got {unit_position!r}")
        training = [n or "the model" for n, m in model.named_modules() if m.training]
        if training:
            raise VitlensError(
                f"{type(model).__name__} is in training mode ({training[0]}"
                f"{' and others' if len(training) > 1 else ''}); batch norm and dropout would make each "
                "image's gradient depend on the batch and on chance. Call model.eval() first (vitlens does "
                "not switch it for you).")
        mods = dict(model.named_modules())
        self.model, self.vit = model, _is_vit(model)
        try:
            self.defaults = default_layers(model)
        except UnsupportedModelError:
            if layers is None:
                raise
            self.defaults = []
        layers = list(self.defaults if layers is None else layers)
        if not layers:
            raise ValueError("layers is empty")
        unknown = [l for l in layers if l not in mods]
        if unknown:
            close = [n for n in mods if n and any(n.endswith(u.split(".")[-1]) for u in unknown)][:5]
            raise UnsupportedModelError(f"{type(model).__name__} has no module named {', '.join(unknown)}"
                                        + (f" (similar: {', '.join(close)})" if close else "") + ".")
        if len(set(layers)) != len(layers):
            raise ValueError("layers holds a name twice")
        self.layers = layers
        self.fields = theoretical_receptive_field(model, layers)
        self.objective, self.input_gradient, self.unit_position = objective, input_gradient, unit_position
        params = next(iter(model.parameters()), None)
        self.dtype = params.dtype if params is not None and params.is_floating_point() else torch.float32
        if device is None:
            device = params.device if params is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC" and not self.vit
        self.setup: list[_Layer] | None = None
        self.input_size: tuple[int, int] | None = None
        self.map_sum = self.spread_sum = self.spread_sumsq = self.spread_count = None
        self.n_images = np.zeros(1, dtype=np.int64)
        if input_size is not None:
            self.prepare(input_size)

    def _capture(self) -> _Outputs:
        return _Outputs(self.model, self.layers, self.channels_last)

    def _set_up(self, outs: dict[str, torch.Tensor], order: Sequence[str], input_size: tuple[int, int]) -> None:
        layout = token_layout(self.model, input_size) if self.vit else None
        self.setup = [_setup_layer(l, outs[l], input_size, layout, self.fields[l], self.unit_position)
                      for l in order]
        self.input_size = input_size
        L = len(self.setup)
        self.map_sum = np.zeros((L, *input_size), dtype=np.float64)
        self.spread_sum, self.spread_sumsq = np.zeros(L), np.zeros(L)
        self.spread_count = np.zeros(L, dtype=np.int64)

    def prepare(self, input_size: Sequence[int]) -> None:
        """Fix the layer setup for inputs of ``input_size`` (height, width) from one forward pass
        of a blank image, and allocate the sums: a process that reads no image then still holds
        sums of the right shapes."""
        size = (int(input_size[0]), int(input_size[-1]))
        if self.setup is not None:
            if size != self.input_size:
                raise ValueError(f"all images must have one size; got {size} after {self.input_size}")
            return
        x = torch.zeros(1, 3, *size, device=self.device, dtype=self.dtype)
        with torch.no_grad(), self._capture() as cap:
            outs = cap.run(x)
            self._set_up(outs, list(cap.order), size)

    def update(self, images: torch.Tensor) -> int:
        """Add the input-gradient maps of a batch ``[batch, 3, height, width]``; returns its size.

        One forward pass with hooks on the layers (stopped after the last of them), then for each
        layer one ``torch.autograd.grad`` of the batch-summed objective with respect to the input,
        retaining the graph between layers. Images do not interact in eval mode, so the input
        gradient of the summed objective is every image's own gradient.
        """
        _check_images(images)
        x = images.to(device=self.device, dtype=self.dtype).detach().requires_grad_(True)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if self.setup is not None and size != self.input_size:
            raise ValueError(f"all images must have one size; got {size} after {self.input_size}")
        with torch.enable_grad(), autocast(self.device, self.precision), self._capture() as cap:
            outs = cap.run(x)
            if self.setup is None:
                self._set_up(outs, list(cap.order), size)
            for li, lay in enumerate(self.setup):
                out = outs[lay.name]
                if lay.token is not None:
                    unit = out[:, lay.token, :]  # [batch, channel]
                else:
                    if tuple(out.shape[2:]) != lay.feature_size:
                        raise ValueError(f"{lay.name}: feature size changed between batches")
                    unit = out[:, :, lay.centre_index[0], lay.centre_index[1]]  # [batch, channel]
                unit = unit.float()  # the objective is summed in float32 whatever the forward precision
                obj = (unit.relu() if self.objective == "relu_sum" else unit).sum()
                last = li == len(self.setup) - 1
                g = None
                if obj.requires_grad:
                    (g,) = torch.autograd.grad(obj, x, retain_graph=not last, allow_unused=True)
                if g is None:
                    g = torch.zeros_like(x)
                g = g.abs() if self.input_gradient == "abs" else g.relu()
                g = g.sum(1).detach().to("cpu", torch.float64)  # [batch, height, width]
                self.map_sum[li] += g.sum(0).numpy()
                mass = g.sum((1, 2))  # [batch]
                ok = mass > 0
                per_image = (g * lay.distances).sum((1, 2))[ok] / mass[ok]  # [image with mass]
                self.spread_sum[li] += per_image.sum().item()
                self.spread_sumsq[li] += (per_image ** 2).sum().item()
                self.spread_count[li] += int(ok.sum())
            del outs
        n = int(x.shape[0])
        self.n_images += n
        return n

    def state(self) -> dict[str, np.ndarray]:
        """The partial state as arrays, to save, resume or sum over processes (every array adds).

        Raises:
            ValueError: the layer setup is not fixed yet (no batch and no :meth:`prepare`).
        """
        if self.setup is None:
            raise ValueError("the accumulator has no layer setup yet: call prepare(input_size) or add a batch")
        return {k: getattr(self, k) for k in self.SUMMED}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the sums by ``state`` (as returned by :meth:`state`, same layers and input size)."""
        mine = self.state()
        for k in self.SUMMED:
            v = np.asarray(state[k])
            if v.shape != mine[k].shape:
                raise ValueError(f"{k}: saved shape {v.shape} does not match {mine[k].shape} (another "
                                 "model, layer list or input size)")
            mine[k][...] = v

    def merge(self, other: "ReceptiveFieldAccumulator") -> None:
        """Add another accumulator's images (same model, layers and input size) to this one."""
        if other.setup is None:
            return
        if self.setup is None:
            self.prepare(other.input_size)
        theirs = other.state()
        for k, v in self.state().items():
            if v.shape != theirs[k].shape:
                raise ValueError(f"{k}: shapes {v.shape} and {theirs[k].shape} differ")
            v += theirs[k]

    def result(self, name: str | None = None) -> ReceptiveField:
        """The receptive field of the images added so far: the mean map per layer and its scalars.

        Raises:
            ValueError: no image was added.
        """
        from .models import model_source

        n = int(self.n_images[0])
        if self.setup is None or n == 0:
            raise ValueError("no images were added, so there is no receptive field to report")
        setup, fields, vit, defaults = self.setup, self.fields, self.vit, self.defaults
        order = [lay.name for lay in setup]
        L = len(setup)
        maps = self.map_sum / n  # [layer, height, width]
        spread, r50, r90 = np.empty(L), np.empty(L), np.empty(L)
        for li, lay in enumerate(setup):
            spread[li], (r50[li], r90[li]) = spread_and_radii(maps[li], lay.centre_px, (0.5, 0.9))
        with np.errstate(invalid="ignore", divide="ignore"):
            c = self.spread_count.astype(np.float64)
            mean = self.spread_sum / c
            std = np.sqrt(np.maximum(self.spread_sumsq / c - mean ** 2, 0.0))
        uniform = np.array([lay.distances.mean().item() for lay in setup])

        if all(l in defaults for l in order):
            depth = np.array([defaults.index(l) for l in order])
            n_depth = len(defaults)
        else:
            depth = np.arange(L)
            n_depth = L
        depth_fraction = depth / (n_depth - 1) if n_depth > 1 else np.zeros(L)

        theo = np.array([fields[l].size_px if not vit else math.nan for l in order])
        reasons = tuple(fields[l].reason or ("" if np.isfinite(fields[l].size_px) else
                                             f"non-square field {fields[l].size}") for l in order)
        used_position = self.unit_position if not vit else "patch centre"
        if not vit and self.unit_position == "receptive_field" and not all(fields[l].defined for l in order):
            used_position = "receptive_field where derived, else grid"
        conventions = {
            "objective": self.objective, "input_gradient": self.input_gradient, "unit_position": used_position,
            "centre_unit": "(h // 2, w // 2) of the feature map; (gh // 2, gw // 2) of the patch grid for ViTs",
            "pixel_centres": "(y + 0.5, x + 0.5)",
            "averaging": "gradient maps averaged over images, then scalars from the mean map",
            "radius": "each pixel's mass spread evenly over radii d - 0.5 to d + 0.5",
            "depth_fraction": f"depth / ({n_depth} - 1)",
        }
        model = self.model
        return ReceptiveField(
            model=name or model_source(model).get("name", type(model).__name__), kind="vit" if vit else "cnn",
            layers=tuple(order), depth=depth.astype(np.int64), depth_fraction=depth_fraction.astype(np.float64),
            spread_px=spread, r50_px=r50, r90_px=r90, spread_std_px=std, uniform_spread_px=uniform,
            theoretical_px=theo, theoretical_reason=reasons,
            centre_px=np.array([lay.centre_px for lay in setup], dtype=np.float64).reshape(L, 2),
            centre_index=np.array([lay.centre_index for lay in setup], dtype=np.int64).reshape(L, 2),
            feature_size=np.array([lay.feature_size for lay in setup], dtype=np.int64).reshape(L, 2),
            maps=maps, n_images=n, input_size=self.input_size, conventions=conventions)


def stream_receptive_field(accumulator: ReceptiveFieldAccumulator, images, *, batch_size: int = 32,
                           indices: Sequence[int] | None = None, workers: int = 0) -> Iterator[list[int]]:
    """Add ``images`` (all, or ``indices`` of them) to ``accumulator`` a batch at a time.

    A generator: it yields each batch's image indices once their maps are added, so a caller can
    show progress, stop between batches, or record what is done.

    Args:
        images: a float tensor ``[image, 3, height, width]`` or an ImageSet-like object (its
            ``batches(batch_size)`` yields ``(inputs, indices)``); unreadable files are skipped
            and recorded by the image set.
        indices: the images to add (default: all).
        workers: image-decoding worker processes for an ImageSet.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for x, idx in _batches(images, batch_size, indices, workers):
        accumulator.update(x)
        yield idx


def effective_receptive_field(model: nn.Module, images, *, layers: Sequence[str] | None = None,
                              batch_size: int = 32, device: str | torch.device | None = None,
                              progress: bool = True, objective: Objective = "sum",
                              input_gradient: InputGradient = "abs",
                              unit_position: UnitPosition = "receptive_field",
                              name: str | None = None, precision: str = "fp32") -> ReceptiveField:
    """Effective receptive field of ``layers`` of ``model`` over ``images``.

    For every batch: one forward pass with hooks on the layers (stopped after the last of them),
    then for each layer one ``torch.autograd.grad`` of the batch-summed objective with respect to
    the input, retaining the graph between layers. Images do not interact in eval mode, so the
    input gradient of the summed objective is every image's own gradient. The per-pixel maps are
    accumulated as float64 sums ``[layer, height, width]`` (a :class:`ReceptiveFieldAccumulator`);
    memory does not grow with the image count.

    Args:
        model: a timm CNN (ResNet, ConvNeXt, any with ``feature_info``; models whose
            ``output_fmt`` is ``NHWC``, such as Swin, are read as feature maps), a timm ViT, or any
            module whose ``layers`` return feature maps ``[batch, channel, h, w]``; in eval mode. It is not
            moved or switched; its parameters' ``.grad`` are not touched.
        images: an :class:`~vitlens.data.images.ImageSet` (the model's own preprocessing) or a float
            tensor ``[image, 3, height, width]`` already preprocessed.
        layers: module names (default: :func:`default_layers`).
        batch_size: images per forward pass (results do not depend on it).
        device: where inputs go (default: the model's device).
        progress: show a progress bar.
        objective: the centre unit's activation summed over channels (``"sum"``, Luo; Raghu) or
            ``relu`` of it summed (``"relu_sum"``, RepLKNet). A layer that ends in a channel
            normalisation whose scales are all equal (a randomly initialised ConvNeXt stem's
            LayerNorm) has a constant channel sum, so with ``"sum"`` its gradient is rounding noise;
            use ``"relu_sum"`` for such layers.
        input_gradient: ``|gradient|`` summed over colour channels (``"abs"``) or ``relu(gradient)``
            summed (``"relu"``, RepLKNet).
        unit_position: ``"receptive_field"`` or ``"grid"``; see the module docstring.
        name: the model's name in the result (default: its recorded name or class).
        precision: forward and backward pass in ``fp32``, ``bf16`` or ``fp16`` (autocast); the
            objective is summed in float32 and the input gradients, taken with respect to a float32
            input, are accumulated in float64.

    Raises:
        VitlensError: the model is in training mode.
        UnsupportedModelError: the layers cannot be found or do not return feature maps or tokens.
        ImageError: no image of an ImageSet could be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    acc = ReceptiveFieldAccumulator(model, layers, device=device, objective=objective,
                                    input_gradient=input_gradient, unit_position=unit_position,
                                    precision=precision)
    total = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="receptive field", unit="img", disable=not progress, leave=False) as bar:
        for idx in stream_receptive_field(acc, images, batch_size=batch_size):
            bar.update(len(idx))
    n = int(acc.n_images[0])
    if isinstance(images, torch.Tensor):
        if n == 0:
            raise ValueError("images is empty")
    else:
        images.check_used(n)
    return acc.result(name)
