"""Output-token norms per block and the high-norm patch tokens among them (Darcet et al., "Vision
Transformers Need Registers", ICLR 2024).

For every transformer block ``l`` and image, the L2 norm of every output token (the block's
residual-stream output ``[batch, token, channel]`` -> ``[batch, token]``), kept apart for prefix
tokens (class, distillation, registers) and patch tokens. The distribution over images is kept as a
fixed-bin log histogram (:mod:`~vitlens.analyses.representations.norm_histogram`).

The rule for "high-norm" is relative to each block and stated in every output:

    a patch token is high-norm in block l when its output norm > threshold_l = norm_factor * median_l

with ``median_l`` the median of block ``l``'s patch-token norms over all images and grid positions.
Two passes over the images: the first (a plain forward pass, the library's fast attention on) fills
the histograms, whose medians give the thresholds (to 0.46%: the histogram's bin width); the second
(exact attention captured) marks every patch token against the stated threshold, exactly, and counts:
how many per image, where on the grid, and how much attention they receive (per head, mean over
images; see :mod:`~vitlens.analyses.attention.high_norm`): from the class token's row
(``cls_attention``) and from the patch queries' rows on average (``patch_attention``).

Conventions (named parameters of :func:`token_norms`):

- ``norm_factor`` (default 3): Darcet et al. find outliers about ten times the norm of ordinary
  patch tokens in large ViTs (DINOv2, OpenCLIP, DeiT-III; for DINOv2 ViT-g they cut at a norm of
  about 150, above the ordinary tokens' range); a factor of 3, about the square root of ten, puts
  the cut between the two modes on the histogram's log axis and leaves the ordinary tokens'
  spread (a few tens of percent around the median) well below it.
- ``attention_block``: ``"same"`` (default) reads the attention of block ``l`` itself (the one
  that produced the block's output); ``"next"`` reads block ``l + 1``'s, whose keys are computed
  from block ``l``'s output, so its marked keys are exactly the tokens marked (NaN for the last
  block). In trained ViTs the outliers persist from block to block, so the two agree closely.
- A model without a class token (global pooling, SigLIP) has NaN class-attention columns; the patch
  queries' share is defined for every model.

Windowed models (Swin, Swin-V2, SAM's encoder) are refused: their tokens form feature maps that
change size between stages, and they have no class token.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...capture.attention import capture_attention
from ...capture.outputs import capture_outputs
from ...models.families.registry import adapter_for, forward_of
from ...models.tokens import TokenLayout
from ...runtime.batches import check_images, iter_batches, num_images
from ...runtime.errors import UnsupportedModelError
from ...runtime.frozen import freeze_arrays
from ...runtime.modes import MODE_RULE, eval_mode
from ...runtime.precision import autocast, check_precision
from ..attention.high_norm import MarkedAttention, key_rows
from .norm_histogram import RELATIVE_BIN_WIDTH, NormHistogram, quantile_from_histogram

__all__ = ["TokenNorms", "token_norms", "measured_blocks", "TOKEN_KINDS", "ATTENTION_BLOCKS", "DEFAULT_NORM_FACTOR", "QUANTILES",
           "high_norm_rule"]

TOKEN_KINDS = ("prefix", "patch")
ATTENTION_BLOCKS = ("same", "next")
DEFAULT_NORM_FACTOR = 3.0
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
AttentionBlockChoice = Literal["same", "next"]
_PREFIX, _PATCH = 0, 1


def high_norm_rule(norm_factor: float) -> str:
    """The rule, in words, as the outputs state it."""
    return (f"a patch token is high-norm in a block when the L2 norm of its output exceeds {norm_factor:g} times "
            "the median of that block's patch-token output norms over all images and grid positions (the "
            f"median read from a log-spaced histogram, to within {100 * RELATIVE_BIN_WIDTH:.2f}%)")


def _quiet_nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


@dataclass(frozen=True)
class TokenNorms:
    """Token norms and high-norm patch tokens of every block of one model over an image set.

    Blocks count from 0 in arrays (from 1 on figures). Kinds: ``TOKEN_KINDS`` = (prefix, patch).

    Attributes:
        edges: ``[bin + 1]`` histogram edges (0, log-spaced, inf).
        hist: ``[block, kind, bin]`` token counts per norm bin, over all images.
        mean, std, min, max: ``[block, kind]`` exact moments (std with ddof=0) and extremes; NaN for
            a kind with no token (a model without prefix tokens).
        threshold: ``[block]`` the high-norm threshold (``norm_factor`` times the patch median).
        positions: ``[block, grid_h, grid_w]`` how many images had a high-norm token at each grid position.
        images_per_count: ``[block, patch + 1]`` how many images had 0, 1, ... high-norm tokens.
        cls_attention: ``[block, head]`` mean over images of the class row's mass on the block's
            high-norm tokens (NaN without a class token, and for the last block under ``"next"``).
        patch_attention: ``[block, head]`` the same for the mean patch-query row.
        n_images: images measured.
        norm_factor, attention_block: the conventions (module docstring).
        layout: the token layout.
        model: the model's name; block_names: each block's module name.
        n_nonfinite: token norms that were NaN or Inf (an fp16 overflow), left out of everything.
    """

    edges: np.ndarray
    hist: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    threshold: np.ndarray
    positions: np.ndarray
    images_per_count: np.ndarray
    cls_attention: np.ndarray
    patch_attention: np.ndarray
    n_images: int
    norm_factor: float
    attention_block: str
    layout: TokenLayout
    model: str = ""
    block_names: tuple[str, ...] = field(default_factory=tuple)
    n_nonfinite: int = 0

    def __post_init__(self):
        freeze_arrays(self)

    @property
    def num_blocks(self) -> int:
        return int(self.hist.shape[0])

    @property
    def rule(self) -> str:
        return high_norm_rule(self.norm_factor)

    @property
    def depth_fraction(self) -> np.ndarray:
        """``[block]`` 0 for the first block, 1 for the last."""
        n = self.num_blocks
        return np.arange(n) / (n - 1) if n > 1 else np.zeros(n)

    def quantile(self, q: float, kind: str = "patch") -> np.ndarray:
        """``[block]`` the ``q`` quantile of ``kind``'s norms (from the histogram; 0.46% resolution)."""
        k = TOKEN_KINDS.index(kind)
        return quantile_from_histogram(self.hist[:, k], self.edges, q, self.min[:, k], self.max[:, k])

    @property
    def median(self) -> np.ndarray:
        """``[block]`` the median patch-token norm the thresholds come from."""
        return self.quantile(0.5, "patch")

    @property
    def high_norm_count(self) -> np.ndarray:
        """``[block]`` high-norm tokens over all images."""
        return self.positions.reshape(self.num_blocks, -1).sum(1)

    @property
    def high_norm_per_image(self) -> np.ndarray:
        return self.high_norm_count / max(self.n_images, 1)

    @property
    def high_norm_share(self) -> np.ndarray:
        """``[block]`` the share of patch tokens that are high-norm."""
        return self.high_norm_count / max(self.n_images * self.layout.num_patches, 1)

    @property
    def images_with_high_norm(self) -> np.ndarray:
        """``[block]`` the share of images with at least one high-norm token."""
        return 1.0 - self.images_per_count[:, 0] / max(self.n_images, 1)

    @property
    def cls_attention_to_high_norm(self) -> np.ndarray:
        """``[block]`` :attr:`cls_attention` averaged over heads."""
        return _quiet_nanmean(self.cls_attention, 1)

    @property
    def patch_attention_to_high_norm(self) -> np.ndarray:
        return _quiet_nanmean(self.patch_attention, 1)

    def to_frame(self):
        """Tidy frame: one row per (block, token kind), blocks 0-based, with the norm moments and
        quantiles; the high-norm columns on patch rows only (NaN on prefix rows). A model without
        prefix tokens has patch rows only."""
        import pandas as pd

        kinds = [k for k in TOKEN_KINDS if k == "patch" or self.layout.num_prefix_tokens > 0]
        rows = []
        quant = {k: {q: self.quantile(q, k) for q in QUANTILES} for k in kinds}
        for b in range(self.num_blocks):
            for kind in kinds:
                k = TOKEN_KINDS.index(kind)
                patch = kind == "patch"
                per_image = self.layout.num_patches if patch else self.layout.num_prefix_tokens
                row = {"model": self.model, "block": b, "depth_fraction": float(self.depth_fraction[b]),
                       "token_kind": kind, "n_images": self.n_images, "n_tokens": int(self.hist[b, k].sum()),
                       "tokens_per_image": per_image,
                       "norm_mean": self.mean[b, k], "norm_std": self.std[b, k], "norm_min": self.min[b, k]}
                for q in QUANTILES:
                    row["norm_median" if q == 0.5 else f"norm_q{round(100 * q):02d}"] = quant[kind][q][b]
                row["norm_max"] = self.max[b, k]
                nan = float("nan")
                row.update({
                    "norm_factor": self.norm_factor if patch else nan,
                    "threshold": self.threshold[b] if patch else nan,
                    "high_norm_share": self.high_norm_share[b] if patch else nan,
                    "high_norm_per_image": self.high_norm_per_image[b] if patch else nan,
                    "images_with_high_norm": self.images_with_high_norm[b] if patch else nan,
                    "cls_attention_to_high_norm": self.cls_attention_to_high_norm[b] if patch else nan,
                    "patch_attention_to_high_norm": self.patch_attention_to_high_norm[b] if patch else nan,
                })
                rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """Metadata for a run record (not the arrays)."""
        return {"model": self.model, "n_images": self.n_images, "high_norm_rule": self.rule,
                "norm_factor": self.norm_factor, "attention_block": self.attention_block,
                "attention_block_meaning": _ATTENTION_MEANING[self.attention_block],
                "median_resolution": f"{100 * RELATIVE_BIN_WIDTH:.2f}% (log-spaced histogram bins)",
                "class_token": self.layout.has_class_token,
                "class_attention": ("mean over images of the class row's mass on the block's high-norm tokens, per "
                                    "head; the CSV averages heads") if self.layout.has_class_token else
                                   "the model has no class token: class-attention columns are NaN",
                "patch_attention": "mean over images and patch queries of the row's mass on the block's high-norm "
                                   "tokens, per head; the CSV averages heads",
                "token_layout": self.layout.to_dict(), "blocks": list(self.block_names),
                "n_nonfinite": self.n_nonfinite, "mode": MODE_RULE}

    def plot(self, ax=None, block: int | None = None, **kwargs):
        """The norm histogram of one block (0-based; default: the block with the most high-norm
        tokens, the last on a tie). Returns the axes."""
        from ...plotting.tokens import plot_norm_histogram

        return plot_norm_histogram(self, ax=ax, block=block, **kwargs)

    def _repr_html_(self) -> str:
        from ...runtime.display import result_html

        return result_html(self)


_ATTENTION_MEANING = {
    "same": "block l's own attention (the one that produced its output), read against block l's high-norm tokens",
    "next": "block l+1's attention, whose keys are computed from block l's output, read against block l's "
            "high-norm tokens; NaN for the last block",
}


# --------------------------------------------------------------------------- reading a model

@dataclass
class _Plan:
    """What the passes need to know about one model."""

    adapter: object
    layout: TokenLayout
    names: list[str]
    index: dict[str, int]
    num_heads: int


def _plan(model: nn.Module, input_size=None) -> _Plan:
    adapter = adapter_for(model)
    if hasattr(adapter, "window_layout"):
        raise UnsupportedModelError(
            f"{type(model).__name__} uses windowed attention (Swin, Swin-V2, SAM): its tokens form feature maps "
            "that change size between stages and it has no class token, so token norms per block are not "
            "measured for it; use a ViT with one token sequence.")
    layout = adapter.token_layout(input_size)
    names = list(adapter.block_outputs())
    blocks = adapter.attention_blocks()
    if [b.depth for b in blocks] != list(range(len(names))):
        raise UnsupportedModelError(
            f"{type(model).__name__} has {len(blocks)} attention blocks for {len(names)} blocks, so a block's "
            "output cannot be paired with its attention (class-attention blocks, say); token norms need one "
            "attention per block.")
    return _Plan(adapter, layout, names, {n: i for i, n in enumerate(names)}, max(b.num_heads for b in blocks))


def measured_blocks(model: nn.Module, input_size=None) -> list[str]:
    """The block modules :func:`token_norms` measures, in forward order.

    Raises:
        UnsupportedModelError: the model is not a ViT with one token sequence and one readable
            attention per block (a CNN, a windowed model, class-attention blocks).
    """
    return list(_plan(model, input_size).names)


def _norms(plan: _Plan, name: str, output: torch.Tensor) -> torch.Tensor:
    """``[batch, token]`` float32 L2 norms of a block's output tokens."""
    tokens = plan.adapter.block_tokens(output)
    if tokens.ndim != 3 or tokens.shape[1] != plan.layout.num_tokens:
        raise UnsupportedModelError(
            f"block {name} returns {tuple(tokens.shape)}, not [batch, {plan.layout.num_tokens}, channel] as its "
            f"token layout says ({plan.layout.describe()}).")
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        return torch.linalg.vector_norm(tokens.detach().float(), dim=-1)


def _forward(model: nn.Module, plan: _Plan, x: torch.Tensor, on_output, on_attention, precision: str) -> None:
    """One forward pass of ``x`` with every block output handed to ``on_output(index, norms)`` and,
    when ``on_attention`` is given, every block's exact attention to ``on_attention(index, attn)``;
    stops after the last block."""
    device = next(model.parameters()).device

    def output(name, out):
        on_output(plan.index[name], _norms(plan, name, out))

    attention = capture_attention(model, callback=on_attention) if on_attention is not None else nullcontext()
    with torch.no_grad(), eval_mode(model), attention, \
            capture_outputs(model, plan.names, forward=forward_of(model), callback=output) as cap:
        with autocast(device, precision):
            cap.run(x.to(device, non_blocking=True))


def token_norms(model: nn.Module, images, *, norm_factor: float = DEFAULT_NORM_FACTOR,
                attention_block: AttentionBlockChoice = "same", batch_size: int = 32, precision: str = "fp32",
                input_size=None, name: str | None = None, progress: bool = False, workers: int = 0,
                indices: Sequence[int] | None = None) -> TokenNorms:
    """Output-token norms of every block of ``model`` over ``images`` and its high-norm patch tokens.

    Args:
        model: a ViT of any family vitlens reads (windowed models are refused); it runs in eval mode
            inside the call and is left in the caller's mode.
        images: an :class:`~vitlens.data.ImageSet` or a tensor ``[image, 3, height, width]`` already
            preprocessed for the model. Read twice (see the module docstring).
        norm_factor: a patch token is high-norm above ``norm_factor`` times its block's median
            patch-token norm (default 3; module docstring).
        attention_block: ``"same"`` (default) or ``"next"`` (module docstring).
        batch_size: images per forward pass (results do not depend on it).
        precision: forward pass in ``fp32``, ``bf16`` or ``fp16``; norms and sums are float32/float64.
        input_size: the input size, for models built with ``dynamic_img_size`` (default: the model's,
            or a tensor's own).
        name: the model's name in the result (default: its recorded name).
        progress: show a progress bar.
        workers: image-decoding worker processes for an ImageSet.
        indices: the images to read (default: all).

    Raises:
        UnsupportedModelError: not a ViT with one token sequence and one readable attention per block.
        ValueError: a bad ``norm_factor``, ``attention_block`` or ``precision``.
    """
    from ...runtime.progress import progress_bar

    from ...models.loading import model_name

    if not (np.isfinite(norm_factor) and norm_factor > 0):
        raise ValueError(f"norm_factor must be a positive number, got {norm_factor}")
    if attention_block not in ATTENTION_BLOCKS:
        raise ValueError(f"attention_block must be 'same' or 'next', got {attention_block!r}")
    check_precision(precision)
    check_images(images)
    if isinstance(images, torch.Tensor) and input_size is None:
        input_size = tuple(images.shape[-2:])
    plan = _plan(model, input_size)
    lay, L = plan.layout, len(plan.names)
    P, Np = lay.num_prefix_tokens, lay.num_patches
    hist = NormHistogram((L, len(TOKEN_KINDS)))
    nonfinite = [0]

    def add_norms(block: int, norms: torch.Tensor) -> None:
        ok = torch.isfinite(norms)
        nonfinite[0] += int((~ok).sum())
        hist.add((block, _PREFIX), norms[:, :P][ok[:, :P]])
        hist.add((block, _PATCH), norms[:, P:][ok[:, P:]])

    total = num_images(images) if indices is None else len(indices)
    with progress_bar(total=2 * total, desc="token norms", unit="img", enabled=progress) as bar:
        for x, idx in iter_batches(images, batch_size, indices=indices, workers=workers):
            _forward(model, plan, x, add_norms, None, precision)
            bar.update(len(idx))
        median = quantile_from_histogram(hist.hist[:, _PATCH], hist.edges, 0.5, hist.min[:, _PATCH],
                                         hist.max[:, _PATCH])
        threshold = norm_factor * median
        thr = torch.as_tensor(np.nan_to_num(threshold, nan=np.inf), dtype=torch.float32)
        positions = np.zeros((L, Np), dtype=np.int64)
        per_image = np.zeros((L, Np + 1), dtype=np.int64)
        marked = MarkedAttention(L, plan.num_heads, lay.has_class_token)
        pending: dict[int, object] = {}

        def on_attention(block: int, attn: torch.Tensor) -> None:
            rows = key_rows(attn, lay)
            if attention_block == "same":
                pending[block] = rows
            elif block > 0:
                marked.add(block - 1, rows, pending.pop(block - 1), lay)

        def on_output(block: int, norms: torch.Tensor) -> None:
            patch = norms[:, P:]
            mask = (patch > thr[block].to(patch.device)) & torch.isfinite(patch)      # [batch, patch]
            positions[block] += mask.sum(0).cpu().numpy()
            per_image[block] += np.bincount(mask.sum(1).cpu().numpy(), minlength=Np + 1)
            if attention_block == "same":
                marked.add(block, pending.pop(block), mask, lay)
            else:
                pending[block] = mask

        for x, idx in iter_batches(images, batch_size, indices=indices, workers=workers):
            pending.clear()
            _forward(model, plan, x, on_output, on_attention, precision)
            bar.update(len(idx))
    pending.clear()
    n = int(per_image[0].sum())
    cls, patch = marked.means()
    gh, gw = lay.grid_size
    return TokenNorms(edges=hist.edges, hist=hist.hist, mean=hist.mean(), std=hist.std(), min=np.where(
                          hist.count > 0, hist.min, np.nan), max=np.where(hist.count > 0, hist.max, np.nan),
                      threshold=threshold, positions=positions.reshape(L, gh, gw), images_per_count=per_image,
                      cls_attention=cls, patch_attention=patch, n_images=n, norm_factor=float(norm_factor),
                      attention_block=attention_block, layout=lay, model=model_name(model, name),
                      block_names=tuple(plan.names), n_nonfinite=nonfinite[0])
