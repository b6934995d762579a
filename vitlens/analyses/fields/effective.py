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

The model runs in eval mode inside every call (batch norm in training mode would mix the images of a
batch and dropout would make gradients random) and is left in the caller's mode afterwards.
Gradients are taken with respect to the input only; parameter ``.grad`` is left alone.

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

from ...capture.outputs import OutputCapture, capture_outputs, default_layers
from ...models.families.registry import forward_of
from ...models.layout import is_vit, token_layout
from ...models.loading import model_name
from ...models.tokens import TokenLayout
from ...runtime.batches import check_images, iter_batches, num_images
from ...runtime.errors import UnsupportedModelError
from ...runtime.frozen import freeze_arrays
from ...runtime.modes import eval_mode
from ...runtime.precision import autocast, check_precision
from .geometry import pixel_distances, spread_and_radii
from .theoretical import TheoreticalField, theoretical_receptive_field

__all__ = ["ReceptiveField", "ReceptiveFieldAccumulator", "effective_receptive_field",
           "stream_receptive_field", "OBJECTIVES", "INPUT_GRADIENTS", "UNIT_POSITIONS"]

Objective = Literal["sum", "relu_sum"]
InputGradient = Literal["abs", "relu"]
UnitPosition = Literal["receptive_field", "grid"]
OBJECTIVES = ("sum", "relu_sum")
INPUT_GRADIENTS = ("abs", "relu")
UNIT_POSITIONS = ("receptive_field", "grid")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ReceptiveField:
    """Effective receptive field of the measured layers of one model, over an image set.

    All per-layer arrays are indexed ``[layer]`` in forward order (``[layer, 2]`` for positions as
    ``(y, x)``); distances are in input pixels.

    Attributes:
        model: the model's name.
        kind: ``"vit"`` for a transformer (tokens, or a windowed transformer's feature maps: Swin,
            SAM), ``"cnn"`` for a convolutional network (feature maps ``[batch, channel, h, w]``).
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

    def __post_init__(self):
        freeze_arrays(self)

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
        from ...plotting.receptive_field import plot_spread
        return plot_spread([self], ax=ax, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


def _group(layers: Sequence[str], reasons: Sequence[str]) -> dict[str, list[str]]:
    """``{reason: [layers]}`` for the layers whose theoretical field is undefined."""
    out: dict[str, list[str]] = {}
    for l, r in zip(layers, reasons):
        if r:
            out.setdefault(r, []).append(l)
    return out


# --------------------------------------------------------------------------- layers


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
                      torch.from_numpy(pixel_distances(input_size, (cy, cx))))
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
                  torch.from_numpy(pixel_distances(input_size, (cy, cx))))


def _adapter_or_none(model: nn.Module):
    from ...models.families.registry import adapter_for

    try:
        return adapter_for(model)
    except UnsupportedModelError:
        return None


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
        mods = dict(model.named_modules())
        # Windowed models (Swin, SAM) give feature maps per block, read through their adapter.
        adapter = _adapter_or_none(model)
        self._feature_map = getattr(adapter, "feature_map", None) if hasattr(adapter, "window_layout") else None
        self.model, self.vit = model, is_vit(model) and self._feature_map is None
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
        # channels-last layers ([batch, height, width, channel]: torchvision's Swin, timm's NHWC
        # models), read in their own layout as the family adapter declares it
        self.channels_last: set[str] = set()
        if not self.vit and self._feature_map is None:
            if adapter is not None:
                self.channels_last = {l for l in layers if adapter.output_layout(l) == "NHWC"}
            elif getattr(model, "output_fmt", "NCHW") == "NHWC":
                self.channels_last = set(layers)
        self.setup: list[_Layer] | None = None
        self.input_size: tuple[int, int] | None = None
        self.map_sum = self.spread_sum = self.spread_sumsq = self.spread_count = None
        self.n_images = np.zeros(1, dtype=np.int64)
        if input_size is not None:
            self.prepare(input_size)

    def _maps(self, outs: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Block outputs as the accumulator reads them: feature maps ``[batch, channel, h, w]`` for
        windowed models (their adapter's ``feature_map``) and channels-last layers (permuted), as
        captured otherwise."""
        if self._feature_map is None:
            return {n: o.permute(0, 3, 1, 2) if n in self.channels_last and o.ndim == 4 else o
                    for n, o in outs.items()}
        return {n: self._feature_map(n, o, size) for n, o in outs.items()}

    def _capture(self) -> OutputCapture:
        return capture_outputs(self.model, self.layers, forward=forward_of(self.model))

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
        with torch.no_grad(), eval_mode(self.model), self._capture() as cap:
            outs = self._maps(cap.run(x), size)
            self._set_up(outs, list(cap.order), size)

    def update(self, images: torch.Tensor) -> int:
        """Add the input-gradient maps of a batch ``[batch, 3, height, width]``; returns its size.

        One forward pass with hooks on the layers (stopped after the last of them), then for each
        layer one ``torch.autograd.grad`` of the batch-summed objective with respect to the input,
        retaining the graph between layers. Images do not interact in eval mode, so the input
        gradient of the summed objective is every image's own gradient.
        """
        check_images(images)
        x = images.to(device=self.device, dtype=self.dtype).detach().requires_grad_(True)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if self.setup is not None and size != self.input_size:
            raise ValueError(f"all images must have one size; got {size} after {self.input_size}")
        with torch.enable_grad(), eval_mode(self.model), autocast(self.device, self.precision), \
                self._capture() as cap:
            outs = self._maps(cap.run(x), size)
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
            model=model_name(model, name), kind="vit" if vit or self._feature_map is not None else "cnn",
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
    for x, idx in iter_batches(images, batch_size, indices=indices, workers=workers):
        accumulator.update(x)
        yield idx


def effective_receptive_field(model: nn.Module, images, *, layers: Sequence[str] | None = None,
                              batch_size: int = 32, device: str | torch.device | None = None,
                              progress: bool = False, objective: Objective = "sum",
                              input_gradient: InputGradient = "abs",
                              unit_position: UnitPosition = "receptive_field",
                              name: str | None = None, precision: str = "fp32",
                              workers: int = 0) -> ReceptiveField:
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
            module whose ``layers`` return feature maps ``[batch, channel, h, w]``. It runs in eval
            mode inside the call and is left in the caller's mode; it is not moved and its
            parameters' ``.grad`` are not touched.
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
        workers: image-decoding worker processes for an ImageSet.

    Raises:
        UnsupportedModelError: the layers cannot be found or do not return feature maps or tokens.
        ImageError: no image of an ImageSet could be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_images(images)
    acc = ReceptiveFieldAccumulator(model, layers, device=device, objective=objective,
                                    input_gradient=input_gradient, unit_position=unit_position,
                                    precision=precision)
    total = num_images(images)
    from ...runtime.progress import progress_bar

    with progress_bar(total=total, desc="receptive field", unit="img", enabled=progress) as bar:
        for idx in stream_receptive_field(acc, images, batch_size=batch_size, workers=workers):
            bar.update(len(idx))
    n = int(acc.n_images[0])
    if isinstance(images, torch.Tensor):
        if n == 0:
            raise ValueError("images is empty")
    else:
        images.check_used(n)
    return acc.result(name)
