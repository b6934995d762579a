"""Skip-connection norm ratios per block and sub-layer (Raghu et al. 2021, Sec. 6 and Fig. 7).

For every residual sub-layer ``y = x + f(x)`` (a ViT block's attention and MLP sub-layers, a CNN's
residual unit), per image and token, the ratio ``||x|| / ||f(x)||`` of the skip input's norm to the
norm of the branch output as it is added (after layer scale, before the sum; drop-path and dropout
are the identity in eval). A high ratio means the block passes its input on nearly unchanged.
Where the branches are read comes from the family adapter (``residual_blocks``); the sums are
checked against each block's own, so a block of another structure is refused.

Conventions (named parameters where the literature leaves a choice):

- Token norms are Euclidean norms over channels, in float64. ``f(x) = 0`` gives an infinite ratio
  (reported, not divided); ``x = f(x) = 0`` gives NaN.
- ``ratio`` is the mean over images and over the tokens of one kind of the per-token ratio. ViT
  token kinds: ``prefix`` (class, distillation and register tokens; absent when the model has
  none) and ``patch``.
- ``cnn_norm`` for CNN units (token kind ``position``): ``"position"`` (default) is the per-position
  ratio of channel norms (a position is the CNN's token), averaged over positions and images;
  ``"map"`` is the ratio of the whole maps' norms, averaged over images.
- ``token_ratio`` holds, for ViTs, the per-token ratio of the first ``n_tokens`` tokens of the
  sequence (prefix tokens first: token 0 is the class token where there is one), averaged over
  images (Fig. 7 left); it is empty for CNNs.
- Blocks count from 0 in forward order; ``depth_fraction`` is ``block / (blocks - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...capture.residuals import capture_residuals
from ...models.families.base import ResidualBlock
from ...models.families.registry import adapter_for, forward_of
from ...runtime.batches import iter_batches, num_images
from ...runtime.errors import UnsupportedModelError
from ...runtime.frozen import freeze_arrays
from ...runtime.modes import MODE_RULE, eval_mode
from ...runtime.precision import autocast, check_precision

__all__ = ["SkipRatios", "SkipAccumulator", "skip_ratios", "stream_skip", "norm_ratio", "CNN_NORMS", "N_TOKENS"]

CNN_NORMS = ("position", "map")
N_TOKENS = 16


def norm_ratio(x_norm: torch.Tensor, f_norm: torch.Tensor) -> torch.Tensor:
    """``x_norm / f_norm`` elementwise: ``inf`` where only ``f_norm`` is 0, NaN where both are."""
    safe = torch.where(f_norm > 0, f_norm, torch.ones_like(f_norm))
    zero = torch.where(x_norm > 0, torch.full_like(x_norm, float("inf")), torch.full_like(x_norm, float("nan")))
    return torch.where(f_norm > 0, x_norm / safe, zero)


class SkipAccumulator:
    """Sums of per-token ratios over images, per (block, sublayer, token kind), and per token for the
    first tokens. Memory does not grow with the image count; :meth:`state` adds up over processes.

    Args:
        blocks: the model's residual blocks (family adapter).
        prefix_kinds: the ViT's prefix tokens in sequence order (``"cls"``, ``"dist"``, ``"reg"``;
            ignored for CNN units).
        n_tokens: how many leading tokens ``token_ratio`` keeps.
        cnn_norm: ``"position"`` or ``"map"`` (module docstring).
    """

    SUMMED = ("sums", "counts", "token_sums", "token_counts", "n_images")

    def __init__(self, blocks: Sequence[ResidualBlock], *, prefix_kinds: Sequence[str] = (), n_tokens: int = N_TOKENS,
                 cnn_norm: str = "position"):
        if cnn_norm not in CNN_NORMS:
            raise ValueError(f"cnn_norm must be one of {CNN_NORMS}, got {cnn_norm!r}")
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be at least 0, got {n_tokens}")
        self.blocks = list(blocks)
        self.sublayers = self.blocks[0].sublayers
        if any(b.sublayers != self.sublayers for b in self.blocks):
            raise UnsupportedModelError("the model's residual blocks have different sub-layers; vitlens reads "
                                        "skip ratios of models whose blocks are all alike.")
        self.cnn = self.blocks[0].layout == "channels"
        self.prefix_kinds = () if self.cnn else tuple(prefix_kinds)
        self.num_prefix = len(self.prefix_kinds)
        self.token_kinds = ("position",) if self.cnn else (("prefix",) if self.num_prefix else ()) + ("patch",)
        self.cnn_norm = cnn_norm
        self.n_tokens = 0 if self.cnn else int(n_tokens)
        nb, ns, nk = len(self.blocks), len(self.sublayers), len(self.token_kinds)
        self.sums = np.zeros((nb, ns, nk))                 # [block, sublayer, kind] sum of ratios
        self.counts = np.zeros((nb, ns, nk))               # ratios summed
        self.token_sums = np.zeros((nb, ns, self.n_tokens))
        self.token_counts = np.zeros((nb, ns, self.n_tokens))
        self.n_images = np.zeros(1, dtype=np.int64)

    def add(self, block: int, sublayer: int, x: torch.Tensor, fx: torch.Tensor) -> None:
        """One sub-layer's skip input and branch output for a batch (the capture's ``emit``)."""
        x, fx = x.detach().to(torch.float64), fx.detach().to(torch.float64)
        if self.cnn:
            if self.cnn_norm == "map":
                x, fx = x.flatten(1), fx.flatten(1)                                      # [batch, c * h * w]
            r = norm_ratio(x.norm(dim=1), fx.norm(dim=1)).reshape(x.shape[0], -1)       # [batch, position or 1]
            parts = [r]
        else:
            r = norm_ratio(x.norm(dim=-1), fx.norm(dim=-1))                             # [batch, token]
            if r.shape[1] <= self.num_prefix:
                raise UnsupportedModelError(f"block {self.blocks[block].name} holds {r.shape[1]} tokens, no more "
                                            f"than the {self.num_prefix} prefix tokens of the token layout.")
            parts = ([r[:, :self.num_prefix]] if self.num_prefix else []) + [r[:, self.num_prefix:]]
            t = min(self.n_tokens, r.shape[1])
            self.token_sums[block, sublayer, :t] += r[:, :t].sum(0).cpu().numpy()
            self.token_counts[block, sublayer, :t] += r.shape[0]
        for k, part in enumerate(parts):
            self.sums[block, sublayer, k] += float(part.sum())
            self.counts[block, sublayer, k] += part.numel()

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.SUMMED}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k in self.SUMMED:
            setattr(self, k, np.array(state[k], dtype=getattr(self, k).dtype).reshape(getattr(self, k).shape))

    def result(self, *, model: str, was_training: bool = False, batch_size: int = 0) -> "SkipRatios":
        """The means of the sums.

        Raises:
            ValueError: no image was added.
        """
        if int(self.n_images[0]) == 0:
            raise ValueError("no image was read, so there are no skip ratios")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(self.counts > 0, self.sums / np.where(self.counts > 0, self.counts, 1), np.nan)
            token = np.where(self.token_counts > 0,
                             self.token_sums / np.where(self.token_counts > 0, self.token_counts, 1), np.nan)
        nb = len(self.blocks)
        return SkipRatios(
            model=model, kind="cnn" if self.cnn else "vit", blocks=tuple(b.name for b in self.blocks),
            depth_fraction=np.arange(nb) / (nb - 1) if nb > 1 else np.zeros(1), sublayers=tuple(self.sublayers),
            token_kinds=self.token_kinds, ratio=ratio, count=self.counts.copy(), token_ratio=token,
            n_images=int(self.n_images[0]), cnn_norm=self.cnn_norm, prefix_kinds=self.prefix_kinds,
            conventions={"ratio": "||x|| / ||f(x)|| per token and image, f(x) as added (after layer scale, "
                                  "before the sum); mean over images and tokens of one kind",
                         "norm": "Euclidean over channels, float64", "zero_branch": "inf (x = f(x) = 0: NaN)",
                         "cnn_norm": self.cnn_norm, "token_ratio": f"first {self.n_tokens} tokens, mean over images",
                         "batch_size": int(batch_size), "mode": MODE_RULE, "was_training": bool(was_training)})


@dataclass(frozen=True, eq=False)
class SkipRatios:
    """Skip-connection norm ratios of one model.

    Attributes:
        model: display name; kind: ``"vit"`` or ``"cnn"``.
        blocks: qualified names of the residual blocks (forward order, counted from 0).
        depth_fraction: ``[block]`` 0 first to 1 last.
        sublayers: ``("attention", "mlp")`` or ``("residual",)``.
        token_kinds: ``("prefix", "patch")``, ``("patch",)`` (no prefix tokens) or ``("position",)``.
        ratio: ``[block, sublayer, token_kind]`` mean per-token ratio (inf where a branch was zero).
        count: ``[block, sublayer, token_kind]`` how many per-token ratios each mean holds.
        token_ratio: ``[block, sublayer, token]`` per-token ratio of the first tokens, mean over
            images (ViTs; ``token`` axis empty for CNNs).
        n_images: images measured; cnn_norm: see the module docstring.
        prefix_kinds: the ViT's prefix tokens in sequence order (``"cls"``, ``"dist"``, ``"reg"``;
            empty for CNNs and ViTs without prefix tokens).
        conventions: the conventions used, by name.
    """

    model: str
    kind: str
    blocks: tuple[str, ...]
    depth_fraction: np.ndarray
    sublayers: tuple[str, ...]
    token_kinds: tuple[str, ...]
    ratio: np.ndarray
    count: np.ndarray
    token_ratio: np.ndarray
    n_images: int
    cnn_norm: str
    prefix_kinds: tuple[str, ...] = ()
    conventions: dict = field(default_factory=dict)

    def __post_init__(self):
        freeze_arrays(self)

    @property
    def num_prefix_tokens(self) -> int:
        return len(self.prefix_kinds)

    @property
    def token_labels(self) -> tuple[str, ...]:
        """Labels of ``token_ratio``'s token axis in sequence order: the prefix kinds (``cls``,
        ``dist``, ``reg``), then ``patch 0``, ``patch 1``, ..."""
        p = self.num_prefix_tokens
        return tuple(self.prefix_kinds[i] if i < p else f"patch {i - p}" for i in range(self.token_ratio.shape[-1]))

    def to_frame(self):
        """One row per (block, sublayer, token kind): ``model, kind, block, block_name, depth_fraction,
        sublayer, token_kind, ratio, n_tokens, n_images`` (``n_tokens``: ratios averaged)."""
        import pandas as pd

        rows = [{"model": self.model, "kind": self.kind, "block": b, "block_name": self.blocks[b],
                 "depth_fraction": float(self.depth_fraction[b]), "sublayer": s, "token_kind": t,
                 "ratio": float(self.ratio[b, si, ti]), "n_tokens": int(self.count[b, si, ti]),
                 "n_images": self.n_images}
                for b in range(len(self.blocks)) for si, s in enumerate(self.sublayers)
                for ti, t in enumerate(self.token_kinds)]
        return pd.DataFrame(rows)

    def token_frame(self):
        """The per-token ratios of the first tokens: ``model, block, sublayer, token, token_label, ratio``."""
        import pandas as pd

        labels = self.token_labels
        return pd.DataFrame([{"model": self.model, "block": b, "sublayer": s, "token": t, "token_label": labels[t],
                              "ratio": float(self.token_ratio[b, si, t])}
                             for b in range(len(self.blocks)) for si, s in enumerate(self.sublayers)
                             for t in range(self.token_ratio.shape[-1])])

    def to_dict(self) -> dict:
        """Metadata for a run record (not the arrays)."""
        return {"model": self.model, "kind": self.kind, "blocks": list(self.blocks), "sublayers": list(self.sublayers),
                "token_kinds": list(self.token_kinds), "n_images": self.n_images, "cnn_norm": self.cnn_norm,
                "n_first_tokens": int(self.token_ratio.shape[-1]), "prefix_kinds": list(self.prefix_kinds),
                "conventions": dict(self.conventions)}

    def plot(self, ax=None, **kwargs):
        """Mean ratio by block, per sub-layer and token kind. Returns the axes."""
        from ...plotting.skip import plot_skip_ratios
        return plot_skip_ratios([self], ax=ax, **kwargs)


def new_accumulator(model: nn.Module, *, n_tokens: int = N_TOKENS, cnn_norm: str = "position") -> SkipAccumulator:
    """An empty accumulator for ``model`` (its residual blocks and prefix tokens from its family adapter)."""
    adapter = adapter_for(model)
    blocks = adapter.residual_blocks()
    prefix = adapter.token_layout().prefix_kinds if blocks[0].layout != "channels" else ()
    return SkipAccumulator(blocks, prefix_kinds=prefix, n_tokens=n_tokens, cnn_norm=cnn_norm)


def stream_skip(model: nn.Module, images, acc: SkipAccumulator, *, batch_size: int = 32,
                indices: Sequence[int] | None = None, precision: str = "fp32", workers: int = 0) -> Iterator[list[int]]:
    """Add ``images`` (all, or ``indices`` of them) to ``acc`` a batch at a time; yields each batch's
    file indices. The model runs in eval mode without gradients; its mode is restored after."""
    check_precision(precision)
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    forward = forward_of(model)
    for x, idx in iter_batches(images, batch_size, indices=indices, workers=workers):
        with eval_mode(model), torch.no_grad(), autocast(device, precision), capture_residuals(acc.blocks, acc.add):
            forward(x.to(device, dtype))
        acc.n_images += len(idx)
        yield idx


def skip_ratios(model: nn.Module, images, *, n_tokens: int = N_TOKENS, cnn_norm: str = "position",
                batch_size: int = 32, workers: int = 0, progress: bool = False, precision: str = "fp32",
                name: str | None = None) -> SkipRatios:
    """Skip-connection norm ratios ``||x|| / ||f(x)||`` of every residual sub-layer of ``model``.

    Args:
        model: a ViT (timm, transformers, torchvision, open_clip) or a CNN with residual units (timm,
            torchvision and open_clip ResNets, timm ConvNeXt); windowed models (Swin, SAM) are refused.
        images: a float tensor ``[image, 3, height, width]`` preprocessed for the model, or an ImageSet.
        n_tokens: leading tokens kept per token in ``token_ratio`` (ViTs).
        cnn_norm: ``"position"`` (default) or ``"map"`` for CNN units (module docstring).
        precision: forward pass in ``fp32``, ``bf16`` or ``fp16`` (autocast); norms in float64.

    Raises:
        UnsupportedModelError: the model's residual branches cannot be read.
    """
    from ...runtime.progress import progress_bar

    from ...models.loading import model_name

    acc = new_accumulator(model, n_tokens=n_tokens, cnn_norm=cnn_norm)
    was_training = model.training
    with progress_bar(total=num_images(images), desc="skip", unit="img", enabled=progress) as bar:
        for idx in stream_skip(model, images, acc, batch_size=batch_size, precision=precision, workers=workers):
            bar.update(len(idx))
    if hasattr(images, "check_used"):
        images.check_used(int(acc.n_images[0]))
    return acc.result(model=model_name(model, name), was_training=was_training, batch_size=batch_size)
