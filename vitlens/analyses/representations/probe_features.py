"""The frozen features a few-shot probe reads, per layer and representation, from one pass over the images.

Representations of a layer's output:

- ``cls``: the class token ``[batch, channel]`` of a ViT block (refused where the token layout has
  no class token: global-pool ViTs, CNNs, windowed models);
- ``gap``: the mean of the patch tokens (prefix tokens left out) of a ViT block, the spatial mean of
  a CNN stage or windowed block ``[batch, channel, h, w]``;
- ``token``: every patch token (every spatial position of a feature map) on its own,
  ``[batch, position, channel]``, positions row-major over the grid. With ``max_tokens`` a layer with
  more positions keeps a seeded random sample of ``max_tokens`` of them (sorted; the same for every
  image), drawn from ``numpy.random.default_rng((seed, layer index))``.

Memory: the pass runs a batch at a time (flat in the number of batches); what it keeps is the
features, float32, ``n_images x sum over layers of (cls + gap + min(positions, max_tokens)) x
channels x 4`` bytes: for 1,000 images through a ViT-B (12 blocks of 768 channels) with 64 tokens,
about 2.4 GB, against 74 MB for ``cls`` and ``gap`` alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ...capture.outputs import capture_outputs, resolve_layers
from ...models.families.registry import adapter_for, forward_of
from ...models.layout import is_vit, token_layout
from ...runtime.errors import UnsupportedModelError
from ...runtime.modes import eval_mode
from ...runtime.precision import autocast, check_precision

__all__ = ["REPRESENTATIONS", "ProbeFeatures"]

REPRESENTATIONS = ("cls", "gap", "token")


class ProbeFeatures:
    """Reads and keeps the features of ``layers`` of ``model`` for every image, by file index.

    After :meth:`add` has seen every batch, ``features[(layer index, representation)]`` holds
    ``[image, channel]`` (``cls``, ``gap``) or ``[image, position, channel]`` (``token``) float32
    arrays, and ``seen[image]`` says which images were read.

    Args:
        n_images: how many images (file indices) there are.
        representations: those to keep (default: every one the model has, see the module docstring).
    """

    def __init__(self, model: nn.Module, n_images: int, layers: Sequence[str] | None = None, *,
                 representations: Sequence[str] | None = None, max_tokens: int | None = 64, seed: int = 0,
                 precision: str = "fp32"):
        check_precision(precision)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 or None, got {max_tokens}")
        self.model, self.n_images, self.max_tokens, self.seed, self.precision = model, n_images, max_tokens, seed, precision
        self.layers, self.depth_fraction = resolve_layers(model, layers)
        try:
            adapter = adapter_for(model)
        except UnsupportedModelError:
            adapter = None
        self._feature_map = getattr(adapter, "feature_map", None) if hasattr(adapter, "window_layout") else None
        self.vit = self._feature_map is None and is_vit(model)
        self.kind = "vit" if self.vit or self._feature_map is not None else "cnn"
        self.feature_maps = not self.vit                                 # CNN stages and windowed blocks
        self.has_cls = self.vit and token_layout(model).has_class_token
        self.representations = self._choose(representations)
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC" and not self.vit and self._feature_map is None
        p = next(iter(model.parameters()), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        self.features: dict[tuple[int, str], np.ndarray] = {}
        self.seen = np.zeros(n_images, dtype=bool)
        self.grid: list[tuple[int, int] | None] = [None] * len(self.layers)
        self.positions: list[np.ndarray | None] = [None] * len(self.layers)
        self._layouts: dict = {}

    def _choose(self, representations: Sequence[str] | None) -> tuple[str, ...]:
        if representations is None:
            return tuple(r for r in REPRESENTATIONS if r != "cls" or self.has_cls)
        reps = tuple(dict.fromkeys(representations))
        bad = [r for r in reps if r not in REPRESENTATIONS]
        if bad or not reps:
            raise ValueError(f"representations must be among {REPRESENTATIONS}, got {list(representations)}")
        if "cls" in reps and not self.has_cls:
            what = ("a ViT without a class token (it pools its patch tokens)" if self.vit else
                    "a windowed model, whose blocks output feature maps" if self._feature_map is not None else
                    "a CNN")
            raise UnsupportedModelError(f"{type(self.model).__name__} is {what}, so it has no class token to "
                                        "probe; use the gap or token representation.")
        return tuple(r for r in REPRESENTATIONS if r in reps)

    # ------------------------------------------------------------------ one batch

    def _split(self, i: int, out: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(class token [batch, channel] or None, positions [batch, position, channel])`` of layer ``i``."""
        name = self.layers[i]
        if self._feature_map is not None and out.ndim == 4:
            out = self._feature_map(name, out, size)
        if self.vit and out.ndim == 3:
            if size not in self._layouts:
                self._layouts[size] = token_layout(self.model, size)
            lay = self._layouts[size]
            if out.shape[1] != lay.num_tokens:
                raise UnsupportedModelError(f"{name} of {type(self.model).__name__} returns {out.shape[1]} tokens, "
                                            f"not the {lay.num_tokens} of its token layout, so its patch tokens "
                                            "cannot be told apart; probe another layer.")
            self.grid[i] = tuple(lay.grid_size)
            cls = out[:, lay.class_token_index] if lay.has_class_token else None
            return cls, out[:, lay.patch_slice]
        if out.ndim == 4:                                                # [batch, channel, h, w]
            self.grid[i] = (int(out.shape[2]), int(out.shape[3]))
            return None, out.flatten(2).transpose(1, 2)
        raise UnsupportedModelError(f"{name} of {type(self.model).__name__} returns a tensor of shape "
                                    f"{tuple(out.shape)}: neither ViT tokens [batch, token, channel] nor a "
                                    "feature map [batch, channel, height, width]; probe another layer.")

    def _keep(self, i: int, rep: str, value: torch.Tensor, idx: Sequence[int]) -> None:
        v = value.detach().float().cpu().numpy()
        key = (i, rep)
        if key not in self.features:
            self.features[key] = np.zeros((self.n_images, *v.shape[1:]), dtype=np.float32)
        elif self.features[key].shape[1:] != v.shape[1:]:
            raise UnsupportedModelError(f"{self.layers[i]} gives {rep} features of shape {v.shape[1:]} for one "
                                        f"batch and {self.features[key].shape[1:]} for another; probes need "
                                        "images of one size.")
        self.features[key][list(idx)] = v

    def _positions(self, i: int, n: int) -> np.ndarray:
        if self.positions[i] is None:
            if self.max_tokens is None or n <= self.max_tokens:
                self.positions[i] = np.arange(n)
            else:
                rng = np.random.default_rng((self.seed, i))
                self.positions[i] = np.sort(rng.choice(n, self.max_tokens, replace=False))
        return self.positions[i]

    def add(self, x: torch.Tensor, idx: Sequence[int]) -> None:
        """Read the batch ``x`` ``[batch, 3, height, width]`` of file indices ``idx``."""
        x = x.to(self.device, self.dtype)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        with eval_mode(self.model), torch.no_grad(), autocast(self.device, self.precision), \
                capture_outputs(self.model, self.layers, channels_last=self.channels_last,
                                forward=forward_of(self.model)) as cap:
            outs = cap.run(x)
        for i, name in enumerate(self.layers):
            cls, pos = self._split(i, outs.pop(name), size)
            if "cls" in self.representations:
                if cls is None:
                    raise UnsupportedModelError(f"{name} of {type(self.model).__name__} has no class token; "
                                                "use the gap or token representation.")
                self._keep(i, "cls", cls, idx)
            if "gap" in self.representations:
                self._keep(i, "gap", pos.float().mean(1), idx)
            if "token" in self.representations:
                self._keep(i, "token", pos[:, self._positions(i, pos.shape[1])], idx)
        self.seen[list(idx)] = True

    def n_positions(self) -> list[int]:
        """Positions (patch tokens or feature-map cells) of each layer, before sampling."""
        return [0 if g is None else g[0] * g[1] for g in self.grid]
