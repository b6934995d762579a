"""Centred kernel alignment (CKA) between the layers of one or two models, as Raghu et al. (2021) used it.

Minibatch CKA with a linear kernel (Nguyen, Raghu and Kornblith 2021; Kornblith et al. 2019). For
minibatch ``k`` of ``n`` images, each layer's features are flattened to ``X`` ``[n, features]`` and
its Gram matrix is ``K = X X^T`` ``[n, n]`` (float64). With ``K~``, ``L~`` the Gram matrices with
their diagonals set to zero, the unbiased HSIC estimator (Song et al. 2012) is

    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2)) - 2 / (n - 2) 1^T K~ L~ 1]
                   / (n (n - 3))

and, over minibatches, ``CKA = mean_k HSIC_1(K_k, L_k) / sqrt(mean_k HSIC_1(K_k, K_k) *
mean_k HSIC_1(L_k, L_k))``.

Conventions (named parameters of :func:`layer_cka` where the literature disagrees):

- ``representation`` of a ViT block output ``[batch, token, channel]``: ``"tokens"`` (default; all
  tokens, prefix tokens included, x channels, flattened per image), ``"cls"`` (the class token) or
  ``"mean"`` (the patch-token mean). A CNN stage ``[batch, channel, h, w]`` is always flattened as
  positions x channels; any other output as it is.
- Minibatches are ``batch_size`` consecutive images of the run order. HSIC_1 needs ``n >= 4``: a
  shorter batch (the last, or one shortened by unreadable files) is dropped and counted. The value
  depends on ``batch_size``, not on how minibatches are split over processes.
- With two inputs (each model's own preprocessing of the same files) images are paired by file
  index; an image missing from either is left out of both.
- Layers are ordered by module registration order (the forward order of timm blocks and stages);
  ``depth_fraction`` is the position in the model's default layer list over its length minus one
  (for other layers, the position among those measured).
- The models run in eval mode inside the call; every module's mode is restored after, and the
  result records the modes they were in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...capture.outputs import capture_outputs, resolve_layers
from ...models.families.registry import forward_of
from ...models.layout import is_vit, token_layout
from ...runtime.batches import iter_batches, num_images
from ...runtime.errors import UnsupportedModelError, VitlensError
from ...runtime.modes import MODE_RULE, eval_mode
from ...runtime.precision import autocast, check_precision

__all__ = ["CKAResult", "CKAAccumulator", "FeatureReader", "layer_cka", "stream_cka", "hsic1", "gram",
           "REPRESENTATIONS", "MIN_BATCH"]

REPRESENTATIONS = ("tokens", "cls", "mean")
MIN_BATCH = 4
#: Below this many images per minibatch (on average), each minibatch's unbiased HSIC estimate is so
#: noisy that CKA values swing by tenths between image sets of the same kind; results say so.
SMALL_MINIBATCH = 16
#: The minibatch size results advise instead (the command's default).
ADVISED_MINIBATCH = 32


# --------------------------------------------------------------------------- estimator

def gram(features: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix ``[n, n]`` (float64) of ``features`` ``[n, ...]`` flattened per example."""
    x = features.reshape(features.shape[0], -1).to(torch.float64)
    return x @ x.T


def _zero_diag(k: torch.Tensor) -> torch.Tensor:
    """``k`` ``[..., n, n]`` with its diagonals set to zero (a copy)."""
    return k * (1 - torch.eye(k.shape[-1], dtype=k.dtype, device=k.device))


def _hsic1_pairs(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """HSIC_1 of every pair: ``ka`` ``[a, n, n]``, ``kb`` ``[b, n, n]`` symmetric with zero diagonals
    -> ``[a, b]``."""
    n = ka.shape[-1]
    tr = ka.reshape(ka.shape[0], -1) @ kb.reshape(kb.shape[0], -1).T     # tr(K~ L~), [a, b]
    sums = torch.outer(ka.sum((1, 2)), kb.sum((1, 2)))                    # (1^T K~ 1)(1^T L~ 1)
    cross = ka.sum(2) @ kb.sum(2).T                                       # 1^T K~ L~ 1 = (K~ 1).(L~ 1)
    return (tr + sums / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def hsic1(K, L) -> float:
    """The unbiased HSIC estimator of two symmetric Gram matrices ``[n, n]`` (numpy or torch), n >= 4.
    Diagonals are ignored (set to zero)."""
    k, l = (torch.as_tensor(np.asarray(m)).to(torch.float64) for m in (K, L))
    if k.ndim != 2 or k.shape != l.shape or k.shape[0] != k.shape[1]:
        raise ValueError(f"K and L must be square and of one size, got {tuple(k.shape)} and {tuple(l.shape)}")
    if k.shape[0] < MIN_BATCH:
        raise ValueError(f"the unbiased HSIC estimator needs n >= {MIN_BATCH}, got n = {k.shape[0]}")
    return float(_hsic1_pairs(_zero_diag(k)[None], _zero_diag(l)[None])[0, 0])


class CKAAccumulator:
    """Sums of HSIC_1 over minibatches for every (layer_a, layer_b) pair, plus the self-terms.

    Memory does not grow with the image count: each batch's Gram matrices are formed, added and
    dropped. The sums (:meth:`state`) add up over processes, so they can be all-reduced by sum.

    Args:
        layers_a: names of model A's layers (the rows).
        layers_b: names of model B's layers (the columns); None when the columns are the same
            features as the rows (one model against itself, one forward pass).
    """

    SUMMED = ("hsic_ab", "hsic_aa", "hsic_bb", "n_batches", "n_images", "n_batches_dropped", "n_images_dropped")

    def __init__(self, layers_a: Sequence[str], layers_b: Sequence[str] | None = None):
        self.layers_a = tuple(layers_a)
        self.shared = layers_b is None
        self.layers_b = self.layers_a if layers_b is None else tuple(layers_b)
        la, lb = len(self.layers_a), len(self.layers_b)
        self.hsic_ab = np.zeros((la, lb))                # [layer_a, layer_b] sum over batches
        self.hsic_aa, self.hsic_bb = np.zeros(la), np.zeros(lb)
        for k in self.SUMMED[3:]:
            setattr(self, k, np.zeros(1, dtype=np.int64))

    def update(self, features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor] | None = None) -> bool:
        """Add one minibatch: per layer ``[n, ...]`` features (same ``n`` images, same order).
        Returns False when the batch has fewer than 4 images (dropped and counted)."""
        n = int(features_a[0].shape[0])
        if features_b is not None and any(int(f.shape[0]) != n for f in features_b):
            raise ValueError("both models' features must hold the same images")
        if n < MIN_BATCH:
            self.n_batches_dropped += 1
            self.n_images_dropped += n
            return False
        ka = torch.stack([_zero_diag(gram(f)) for f in features_a])      # [layer_a, n, n]
        kb = ka if features_b is None else torch.stack([_zero_diag(gram(f)) for f in features_b])
        self.hsic_ab += _hsic1_pairs(ka, kb).cpu().numpy()
        self.hsic_aa += _hsic1_pairs(ka, ka).diagonal().cpu().numpy()
        self.hsic_bb += _hsic1_pairs(kb, kb).diagonal().cpu().numpy()
        self.n_batches += 1
        self.n_images += n
        return True

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.SUMMED}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k in self.SUMMED:
            setattr(self, k, np.array(state[k], dtype=getattr(self, k).dtype).reshape(getattr(self, k).shape))

    def cka(self) -> np.ndarray:
        """``[layer_a, layer_b]`` CKA from the sums (NaN where a self-term is not positive)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            den = np.sqrt(np.outer(self.hsic_aa, self.hsic_bb))
            return np.where(den > 0, self.hsic_ab / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------- reading models

class FeatureReader:
    """The flattened features ``[n, features]`` of ``layers`` of ``model`` for one batch, per the
    ``representation`` (see the module docstring); runs the model in eval mode without gradients."""

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, *, representation: str = "tokens",
                 precision: str = "fp32"):
        check_precision(precision)
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        self.model, self.representation, self.precision = model, representation, precision
        self.layers, self.depth_fraction = resolve_layers(model, layers)
        self.vit = is_vit(model)
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC" and not self.vit
        p = next(iter(model.parameters()), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        self._layouts: dict = {}

    def _tokens(self, out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.representation == "tokens":
            return out
        if size not in self._layouts:
            self._layouts[size] = token_layout(self.model, size)
        lay = self._layouts[size]
        if out.shape[1] != lay.num_tokens:
            raise UnsupportedModelError(f"a layer of {type(self.model).__name__} returns {out.shape[1]} tokens, "
                                        f"not the {lay.num_tokens} of its token layout; use representation='tokens'.")
        if self.representation == "mean":
            return out[:, lay.patch_slice].mean(1)                       # [batch, channel]
        if lay.class_token_index is None:
            raise UnsupportedModelError(f"{type(self.model).__name__} has no class token; use "
                                        "representation='tokens' or 'mean'.")
        return out[:, lay.class_token_index]                              # [batch, channel]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of ``x`` ``[batch, 3, height, width]``: one ``[batch, features]`` tensor per layer."""
        x = x.to(self.device, self.dtype)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        with eval_mode(self.model), torch.no_grad(), autocast(self.device, self.precision), \
                capture_outputs(self.model, self.layers, channels_last=self.channels_last,
                                forward=forward_of(self.model)) as cap:
            outs = cap.run(x)
        feats = []
        for name in self.layers:
            out = outs.pop(name)
            if self.vit and out.ndim == 3:
                out = self._tokens(out, size)
            feats.append(out.reshape(out.shape[0], -1).float())
        return feats


# --------------------------------------------------------------------------- streaming

def _chunked(images, batch_size: int, chunks: list[list[int]], workers: int):
    """``(chunk number, inputs, file indices)`` for every chunk with a readable image."""
    where = {i: c for c, ch in enumerate(chunks) for i in ch}
    for x, idx in iter_batches(images, batch_size, indices=[i for ch in chunks for i in ch], workers=workers):
        yield where[idx[0]], x, idx


def _paired(images_a, images_b, batch_size, chunks, workers):
    """``(chunk, inputs_a, inputs_b)`` with the images read in both, paired by file index."""
    ga = _chunked(images_a, batch_size, chunks, workers)
    if images_b is None:
        for c, x, _ in ga:
            yield c, x, None
        return
    gb = _chunked(images_b, batch_size, chunks, workers)
    a, b = next(ga, None), next(gb, None)
    while a is not None and b is not None:
        if a[0] != b[0]:                       # a chunk unreadable on one side pairs nothing
            a, b = (next(ga, None), b) if a[0] < b[0] else (a, next(gb, None))
            continue
        both = set(a[2]) & set(b[2])
        keep_a = [j for j, i in enumerate(a[2]) if i in both]      # both follow the chunk's order
        keep_b = [j for j, i in enumerate(b[2]) if i in both]
        yield a[0], a[1][keep_a], b[1][keep_b]
        a, b = next(ga, None), next(gb, None)
    for rest in (ga, gb):                      # read the rest so unreadable files are recorded
        for _ in rest:
            pass


def stream_cka(accumulator: CKAAccumulator, reader_a: FeatureReader, images, reader_b: FeatureReader | None = None,
               images_b=None, *, batch_size: int = 32, indices: Sequence[int] | None = None,
               workers: int = 0) -> Iterator[list[int]]:
    """Add ``images`` (all, or ``indices`` of them, in that order) to ``accumulator`` a minibatch of
    ``batch_size`` consecutive images at a time; a generator yielding each minibatch's file indices.

    Args:
        reader_b: model B's reader (None: model A against itself, ``accumulator.shared``).
        images_b: model B's own preprocessing of the same files (default: ``images``).
    """
    paths_a, paths_b = getattr(images, "paths", None), getattr(images_b, "paths", None)
    if paths_a is not None and paths_b is not None and list(paths_a) != list(paths_b):
        raise VitlensError("the two models' image sets must list the same files in the same order.")
    if images_b is not None and num_images(images) != num_images(images_b):
        raise VitlensError("the two models' inputs must hold the same number of images.")
    idx = list(range(num_images(images))) if indices is None else [int(i) for i in indices]
    chunks = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    for c, xa, xb in _paired(images, images_b if reader_b is not None else None, batch_size, chunks, workers):
        fa = reader_a(xa)
        fb = None if reader_b is None else reader_b(xa if xb is None else xb)
        accumulator.update(fa, fb)
        yield chunks[c]


# --------------------------------------------------------------------------- result

@dataclass(frozen=True, eq=False)
class CKAResult:
    """Minibatch linear CKA between the layers of model A (rows) and model B (columns).

    Attributes:
        cka: ``[layer_a, layer_b]`` CKA (NaN where a layer's features are constant).
        model_a, model_b: the models' names (equal for one model against itself).
        layers_a, layers_b: qualified module names, in forward order.
        depth_fraction_a, depth_fraction_b: ``[layer]`` position in depth, 0 first to 1 last.
        hsic_ab, hsic_aa, hsic_bb: mean HSIC_1 over minibatches ``[layer_a, layer_b]``, ``[layer_a]``,
            ``[layer_b]``.
        n_images: images in the minibatches used; n_batches: minibatches used.
        n_batches_dropped, n_images_dropped: minibatches under 4 images dropped, and their images.
        batch_size: the minibatch size; representation: see the module docstring.
        conventions: the conventions used, by name, and the models' modes before the call.
    """

    cka: np.ndarray
    model_a: str
    model_b: str
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    depth_fraction_a: np.ndarray
    depth_fraction_b: np.ndarray
    hsic_ab: np.ndarray
    hsic_aa: np.ndarray
    hsic_bb: np.ndarray
    n_images: int
    n_batches: int
    n_batches_dropped: int
    n_images_dropped: int
    batch_size: int
    representation: str
    conventions: dict = field(default_factory=dict)

    def __post_init__(self):
        for k in ("cka", "depth_fraction_a", "depth_fraction_b", "hsic_ab", "hsic_aa", "hsic_bb"):
            getattr(self, k).setflags(write=False)

    @classmethod
    def from_accumulator(cls, acc: CKAAccumulator, reader_a: FeatureReader, reader_b: FeatureReader | None, *,
                         model_a: str, model_b: str, batch_size: int, was_training: Sequence[bool]) -> "CKAResult":
        """The result of the sums in ``acc``, recording the models' modes before the call.

        Raises:
            ValueError: no minibatch of at least 4 images was added.
        """
        nb = int(acc.n_batches[0])
        if nb == 0:
            raise ValueError(f"no minibatch of at least {MIN_BATCH} images was read, so there is no CKA "
                             f"({int(acc.n_batches_dropped[0])} shorter ones dropped)")
        rb = reader_b or reader_a
        return cls(cka=acc.cka(), model_a=model_a, model_b=model_b, layers_a=tuple(reader_a.layers),
                   layers_b=tuple(acc.layers_b), depth_fraction_a=reader_a.depth_fraction.copy(),
                   depth_fraction_b=rb.depth_fraction.copy(), hsic_ab=acc.hsic_ab / nb,
                   hsic_aa=acc.hsic_aa / nb, hsic_bb=acc.hsic_bb / nb, n_images=int(acc.n_images[0]),
                   n_batches=nb, n_batches_dropped=int(acc.n_batches_dropped[0]),
                   n_images_dropped=int(acc.n_images_dropped[0]), batch_size=int(batch_size),
                   representation=reader_a.representation, conventions={
                       "kernel": "linear", "estimator": "unbiased HSIC_1 per minibatch, diagonals zeroed, "
                       "averaged over minibatches", "min_batch": MIN_BATCH, "cnn_stages": "positions x channels",
                       "layer_order": "module registration order", "mode": MODE_RULE,
                       "was_training": [bool(m) for m in was_training]})

    def minibatches(self) -> str:
        """What the estimate was averaged over, in words: images, minibatches and their size, and
        the images left out in minibatches under 4 (``"11 images in 1 minibatch of 11"``)."""
        n, k = self.n_images, self.n_batches
        text = f"{_count(n, 'image')} in {_count(k, 'minibatch', 'minibatches')}"
        if n == k * self.batch_size or k == 1:
            text += f" of {n // k}"
        else:
            text += f" of up to {self.batch_size} (mean {n / k:.1f})"
        if self.n_batches_dropped:
            text += (f"; {_count(self.n_images_dropped, 'image')} in "
                     f"{_count(self.n_batches_dropped, 'shorter minibatch', 'shorter minibatches')} "
                     f"(under {MIN_BATCH}) left out")
        return text

    def small_minibatch(self) -> bool:
        """Whether the minibatches held fewer than :data:`SMALL_MINIBATCH` images on average."""
        return self.n_images / max(self.n_batches, 1) < SMALL_MINIBATCH

    def reliability_note(self) -> str:
        """A warning in words when the minibatches are small (see :meth:`small_minibatch`), else ""."""
        if not self.small_minibatch():
            return ""
        size = self.n_images / max(self.n_batches, 1)
        return (f"CKA over minibatches of {size:.3g} images is noisy: the unbiased HSIC estimate of so small a "
                f"minibatch varies widely, so values can differ by several tenths between image sets and can "
                f"fall below 0. Use minibatches of at least {ADVISED_MINIBATCH} images (batch size "
                f"{ADVISED_MINIBATCH} or more) and enough images for several of them.")

    def to_frame(self):
        """One row per (layer_a, layer_b) pair: ``model_a, layer_a, depth_a, model_b, layer_b, depth_b,
        cka, n_images, batch_size``; ``depth_*`` are depth fractions."""
        import pandas as pd

        la, lb = self.cka.shape
        ia, ib = np.divmod(np.arange(la * lb), lb)
        return pd.DataFrame({
            "model_a": [self.model_a] * (la * lb), "layer_a": [self.layers_a[i] for i in ia],
            "depth_a": self.depth_fraction_a[ia], "model_b": [self.model_b] * (la * lb),
            "layer_b": [self.layers_b[i] for i in ib], "depth_b": self.depth_fraction_b[ib],
            "cka": self.cka.reshape(-1), "n_images": self.n_images, "batch_size": self.batch_size})

    def to_dict(self) -> dict:
        """Metadata for a run record (not the matrix)."""
        return {"model_a": self.model_a, "model_b": self.model_b, "layers_a": list(self.layers_a),
                "layers_b": list(self.layers_b), "representation": self.representation,
                "batch_size": self.batch_size, "n_images": self.n_images, "n_batches": self.n_batches,
                "n_batches_dropped": self.n_batches_dropped, "n_images_dropped": self.n_images_dropped,
                "minibatches": self.minibatches(), "warning": self.reliability_note() or None,
                "conventions": dict(self.conventions)}

    def plot(self, ax=None, **kwargs):
        """The CKA heatmap. Returns the axes."""
        from ...plotting.cka import plot_cka
        return plot_cka(self, ax=ax, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


def layer_cka(model_a: nn.Module, images, model_b: nn.Module | None = None, *, images_b=None,
              layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
              representation: str = "tokens", batch_size: int = 32, workers: int = 0, progress: bool = False,
              precision: str = "fp32", name_a: str | None = None, name_b: str | None = None
              ) -> CKAResult:
    """Minibatch linear CKA between every layer of ``model_a`` and every layer of ``model_b``.

    Args:
        model_a, model_b: timm ViTs or CNNs (or modules with ``layers_*`` given); ``model_b`` None
            compares ``model_a`` with itself. Both run in eval mode inside the call only.
        images: a float tensor ``[image, 3, height, width]`` preprocessed for ``model_a`` (and
            ``model_b``, unless ``images_b``), or an ImageSet.
        images_b: ``model_b``'s own preprocessing of the same files (same order) or images.
        layers_a, layers_b: module names (default: :func:`~vitlens.capture.outputs.default_layers`).
        representation: ``"tokens"``, ``"cls"`` or ``"mean"`` for ViT block outputs.
        batch_size: the CKA minibatch size (the estimate depends on it; batches under 4 are dropped).
        precision: forward pass in ``fp32``, ``bf16`` or ``fp16`` (autocast); Gram matrices in float64.
    """
    from ...runtime.progress import progress_bar

    from ...models.loading import model_name

    if batch_size < MIN_BATCH:
        raise ValueError(f"batch_size must be at least {MIN_BATCH} for the unbiased HSIC estimator, got {batch_size}")
    modes = [model_a.training] + ([model_b.training] if model_b is not None else [])
    ra = FeatureReader(model_a, layers_a, representation=representation, precision=precision)
    shared = model_b is None and layers_b is None
    rb = None if shared else FeatureReader(model_b or model_a, layers_b, representation=representation,
                                           precision=precision)
    acc = CKAAccumulator(ra.layers, None if shared else rb.layers)
    with progress_bar(total=num_images(images), desc="cka", unit="img", enabled=progress) as bar:
        for idx in stream_cka(acc, ra, images, rb, images_b, batch_size=batch_size, workers=workers):
            bar.update(len(idx))
    if hasattr(images, "check_used"):
        images.check_used(int(acc.n_images[0] + acc.n_images_dropped[0]))

    na = model_name(model_a, name_a)
    nb = model_name(model_b, name_b) if model_b is not None else (name_b or na)
    result = CKAResult.from_accumulator(acc, ra, rb, model_a=na, model_b=nb, batch_size=batch_size,
                                        was_training=modes)
    if result.small_minibatch():
        warnings.warn(result.reliability_note(), stacklevel=2)
    return result


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"
