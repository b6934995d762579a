"""What a ViT costs next to a CNN: parameters, FLOPs, peak activation memory and throughput by input size.

:func:`cost_profile` measures each model at each input side ``px`` (square inputs ``[batch, 3, px, px]``)
on a deep copy in eval mode; the caller's model is never changed. A ViT's copy is resized with timm's
``set_input_size`` (the position table resampled, token count ``N`` following the patch grid); a CNN
takes every size as it is. Windowed transformers (Swin, SAM) are measured like ViTs: their window
attention products are the ``attention`` FLOPs, and ``tokens`` is the first stage's map. Conventions:

- Parameters of the image tower (the family adapter's ``image_tower``: a CLIP model's text tower is
  not counted) are split by the module that owns them, first match wins: ``attention`` (known
  attention modules), ``mlp`` (a block's ``mlp``), ``embedding`` (the adapter's
  ``embedding_parameters``: patch embedding, position table, class, distillation and register
  tokens, whatever the library calls them; a hybrid's CNN stem counts as convolution),
  ``convolution`` (``nn.Conv*`` weights), ``other`` (norms, heads). The parts sum exactly to the
  tower's ``sum(p.numel())``.
- FLOPs (batch 1) come from ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix
  products and convolutions (2 per multiply-add) and nothing else (softmax, norms and GELU are not
  counted). The copy runs timm attention on its explicit path (``fused_attn=False``): on CPU the
  counter does not count fused ``scaled_dot_product_attention``, while it counts the explicit
  ``q @ k^T`` and ``attn @ v`` as ``aten.bmm`` (2 N^2 d each per layer). ``attention`` = the
  batched products inside attention modules; ``transformer_linear`` = every other counted op inside
  the transformer blocks (qkv, proj, MLP: 2 N d d' each); ``convolution`` = every convolution
  (patch embedding included); ``other`` = the rest (the head).
- Peak memory is the largest amount allocated during one forward pass without gradients, over what
  was allocated before it (weights and input excluded, output included): on CUDA from
  ``torch.cuda.max_memory_allocated``, on CPU the peak of the running sum of the allocations and
  frees that ``torch.profiler`` records (``profile_memory=True``). The CSV ``part`` names the
  method. ViTs are measured on the fused path and on the explicit one, which forms the
  ``[batch, head, N, N]`` attention maps; ``attention_map_memory`` is the difference.
- Throughput: images per second at ``batch_size``, attention as the model ships, under autocast
  ``precision``: ``warmup`` untimed rounds, then ``repeats`` rounds that each time one pass of every
  input size in turn (interleaved, so a busy spell on the machine falls on all sizes alike); the
  best round (``best``) is the figure, with the median and the slowest and fastest rounds as its
  spread. The load averages before and after the timings are kept (``load_average``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..capture.attention import attention_modules
from ..models.families.registry import forward_of
from ..models.layout import is_vit, token_layout
from ..models.loading import model_name
from ..runtime.errors import UnsupportedModelError, VitlensError
from ..runtime.precision import autocast, check_precision

__all__ = ["CostProfile", "cost_profile", "own_px", "parameter_parts", "flop_parts", "peak_memory", "COLUMNS",
           "QUANTITIES"]

COLUMNS = ["model", "kind", "input_px", "tokens", "quantity", "part", "value", "unit", "device", "precision",
           "batch_size"]
QUANTITIES = {
    "parameters": "parameter count; part total, attention, mlp, embedding, convolution, other",
    "flops": "FLOPs of one forward pass of one image; part total, attention, transformer_linear, convolution, other",
    "peak_memory": "peak forward activation memory (fused attention for ViTs); part = method",
    "peak_memory_explicit": "the same with explicit attention maps (ViTs); part = method",
    "attention_map_memory": "peak_memory_explicit minus peak_memory (ViTs); part = method",
    "throughput": "images per second at batch_size, sizes interleaved round by round; part best (the fastest "
                  "round), median, min (slowest round), max (= best)",
}
_ATTENTION_OPS = {"aten.bmm", "aten.baddbmm", "aten._scaled_dot_product_efficient_attention",
                  "aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_cudnn_attention"}
_WHOLE_UNITS = {"count", "FLOP", "bytes"}
_TOKENS = {"pos_embed", "cls_token", "dist_token", "reg_token"}


def _kind(model: nn.Module) -> str:
    """``"vit"`` for a model with attention modules vitlens knows, ``"cnn"`` for one without any
    transformer attention; raises UnsupportedModelError for transformer attention vitlens does not know."""
    try:
        attention_modules(model)
        return "vit"
    except UnsupportedModelError:
        if is_vit(model) or any(hasattr(m, "fused_attn") for m in model.modules()):
            raise
        return "cnn"


def _tower_and_embedding(model: nn.Module) -> tuple[list[str], set[str]]:
    """The image tower's module names (``[""]``: the whole model) and the embedding's parameter names,
    from the family adapter; timm's names for a module no family knows."""
    from ..models.families.registry import adapter_for

    try:
        adapter = adapter_for(model)
    except UnsupportedModelError:
        names = [n for n, _ in model.named_parameters()]
        return [""], {n for n in names if n in _TOKENS or (n.startswith("patch_embed.")
                                                            and not n.startswith("patch_embed.backbone."))}
    return adapter.image_tower(), set(adapter.embedding_parameters())


def parameter_parts(model: nn.Module) -> dict[str, int]:
    """Parameter count by part (see the module docstring); the parts sum to ``total``. Only the image
    tower is counted (what FLOPs, memory and throughput measure: a CLIP model's text tower is not)."""
    attn = [n for n, _ in attention_modules(model)] if _kind(model) == "vit" else []
    towers, embedding = _tower_and_embedding(model)
    parts = dict.fromkeys(["attention", "mlp", "embedding", "convolution", "other"], 0)
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        inside = lambda prefix: name.startswith(prefix + ".")  # noqa: E731
        if not any(t == "" or inside(t) for t in towers):
            continue
        if any(inside(a) for a in attn):
            part = "attention"
        elif re.search(r"(^|\.)mlp\.", name):
            part = "mlp"
        elif name in embedding:
            part = "embedding"
        elif isinstance(model.get_submodule(owner), nn.modules.conv._ConvNd):
            part = "convolution"
        else:
            part = "other"
        parts[part] += p.numel()
    return {"total": sum(parts.values()), **parts}


def _blocks(names: Sequence[str]) -> list[str]:
    """The transformer block holding each attention module: ``...blocks.<i>``, else its parent."""
    out = []
    for n in names:
        m = re.match(r"(.*?blocks\.\d+)(\.|$)", n)
        b = m.group(1) if m else (n.rsplit(".", 1)[0] if "." in n else n)
        if b not in out:
            out.append(b)
    return out


def flop_parts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of ``model(x)`` by part, ``x`` ``[batch, 3, height, width]``.

    Attention modules must be on their explicit path for their products to be counted on CPU
    (:func:`explicit_attention`); :func:`cost_profile` counts inside it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        forward_of(model)(x)
    counts = {k: {str(op): int(v) for op, v in ops.items()} for k, ops in counter.get_flop_counts().items()}
    total_ops = counts.get("Global", {})
    total = sum(total_ops.values())
    conv = sum(v for op, v in total_ops.items() if "convolution" in op)
    attn_names = [n for n, _ in attention_modules(model)] if _kind(model) == "vit" else []
    if attn_names and not any(_counted(counts, n) for n in attn_names):
        raise LookupError(f"FlopCounterMode reported no counts under {attn_names[0]}; the attention "
                          "FLOPs of this torch version cannot be attributed")
    attn = sum(v for n in attn_names for op, v in _counted(counts, n).items() if op in _ATTENTION_OPS)
    inblocks = sum(v for b in _blocks(attn_names) for op, v in _counted(counts, b).items()
                   if "convolution" not in op)
    linear = inblocks - attn
    return {"total": total, "attention": attn, "transformer_linear": linear, "convolution": conv,
            "other": total - attn - linear - conv}


def _counted(counts: dict[str, dict[str, int]], name: str) -> dict[str, int]:
    """The counts FlopCounterMode keeps for module ``name`` (a qualified name in the model). Its keys
    start with the class of the first module called, which is a tower of the model when the family's
    forward calls one (open_clip's ``encode_image``), so the name's leading parts may be absent."""
    parts = name.split(".")
    for i in range(max(1, len(parts) - 1)):  # never a bare last part, which many modules share
        suffix = ".".join(parts[i:])
        for k, v in counts.items():
            if k.split(".", 1)[-1] == suffix and "." in k:
                return v
    return {}


def explicit_attention(model: nn.Module, kind: str):
    """A context in which a ViT's attention takes the explicit path that forms its probabilities
    (its family adapter's switch: timm's ``fused_attn``, transformers' eager attention, weights from
    ``nn.MultiheadAttention``), restored on exit; nothing for a CNN."""
    if kind != "vit":
        return contextlib.nullcontext()
    from ..models.families.registry import adapter_for

    adapter = adapter_for(model)
    blocks = adapter.attention_blocks()
    stack = contextlib.ExitStack()
    if any(isinstance(b.module, nn.MultiheadAttention) for b in blocks):
        stack.enter_context(_mha_python_path())
    stack.enter_context(adapter.exact_attention(range(len(blocks)), lambda _layer, _attn: None))
    return stack


@contextlib.contextmanager
def _mha_python_path():
    """``nn.MultiheadAttention`` off its native fused kernel (one op FlopCounterMode does not count)
    and on the Python path whose products it counts, for the body only; torch's setting is restored."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def peak_memory(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> tuple[int, str]:
    """Peak bytes allocated by ``model(x)`` without gradients over those held before, and the method
    (``"cuda-allocator"`` or ``"cpu-profiler"``); ``x`` ``[batch, 3, height, width]`` on the model's device."""
    dev = x.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        with torch.no_grad(), autocast(dev, precision):
            forward_of(model)(x)
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before), "cuda-allocator"
    from torch.profiler import ProfilerActivity, profile

    from ..runtime.quiet import quiet_profiler

    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.no_grad(), autocast(dev, precision):
            forward_of(model)(x)
    events = prof.profiler.kineto_results.events()  # allocations (+bytes) and frees (-bytes), all threads
    allocs = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    running = np.cumsum([b for _, b in allocs]) if allocs else np.zeros(1)
    return int(max(0, running.max())), "cpu-profiler"


def _interleaved_rates(runs: Sequence[tuple], repeats: int, warmup: int, *, clock=time.perf_counter,
                       sync=lambda: None) -> list[list[float]]:
    """Images per second of every ``(forward, x)`` in ``runs`` (one per input size, ``x``
    ``[batch, 3, px, px]``), ``[run][round]``: ``warmup`` untimed rounds, then ``repeats`` rounds that
    each time one pass of every run in turn. A busy spell on the machine then falls on every size
    alike, not on one size measured in sequence."""
    for _ in range(warmup):
        for forward, x in runs:
            forward(x)
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, (forward, x) in enumerate(runs):
            sync()
            t0 = clock()
            forward(x)
            sync()
            rates[i].append(x.shape[0] / max(clock() - t0, 1e-9))
    return rates


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _throughput_rows(sized: Sequence[tuple[int, nn.Module]], batch_size: int, precision: str, repeats: int,
                     warmup: int, gen: torch.Generator) -> list[tuple]:
    """``(px, quantity, part, value, unit, batch)`` throughput rows of one model's sized copies: the
    best round, the median and the slowest (``min``) and fastest (``max``) rounds."""
    dev = next(sized[0][1].parameters()).device
    runs = [(forward_of(m), torch.randn(batch_size, 3, px, px, generator=gen).to(dev)) for px, m in sized]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad(), autocast(dev, precision):
        rates = _interleaved_rates(runs, repeats, warmup, sync=sync)
    rows = []
    for (px, _), r in zip(sized, rates):
        rows += [(px, "throughput", p, v, "images/s", batch_size) for p, v in
                 (("best", max(r)), ("median", statistics.median(r)), ("min", min(r)), ("max", max(r)))]
    return rows


def _window_layout(model: nn.Module, px: int | None = None):
    """The window layout of a windowed transformer (Swin, SAM) for ``px`` inputs, else None."""
    from ..models.families.registry import adapter_for

    try:
        adapter = adapter_for(model)
    except UnsupportedModelError:
        return None
    return adapter.window_layout(px) if hasattr(adapter, "window_layout") else None


def _tokens_and_stride(model: nn.Module, px: int | None = None) -> tuple[int, tuple[float, float]]:
    """``(tokens, patch stride)`` of a transformer at ``px``: its token layout's, or for a windowed model
    the tokens of its first stage's map (every token a window attends among) and that map's stride."""
    windows = _window_layout(model, px)
    if windows is not None:
        g = windows[0]
        return int(g.grid_size[0] * g.grid_size[1]), tuple(g.stride)
    lay = token_layout(model, px)
    return int(lay.num_tokens), tuple(lay.patch_stride)


def own_px(model: nn.Module) -> int:
    """The input side a model was built for: its token (or window) layout's for a transformer, else
    its preprocessing's."""
    from ..models.families.registry import adapter_for

    try:
        windows = _window_layout(model)
        return int((windows.input_size if windows is not None else token_layout(model).input_size)[-1])
    except UnsupportedModelError:
        pass
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size:
        return int(size[-1])
    try:
        return int(adapter_for(model).preprocessing().input_size[-1])
    except UnsupportedModelError:
        return 224


def _check_size(model: nn.Module, kind: str, px, name: str) -> None:
    """Raise a VitlensError unless ``model`` can take ``[batch, 3, px, px]`` inputs (as far as can be told
    without running it)."""
    if isinstance(px, bool) or not isinstance(px, (int, np.integer)) or px <= 0:
        raise VitlensError(f"input sizes must be positive whole numbers of pixels, got {px!r}.")
    if kind == "vit":
        _, stride = _tokens_and_stride(model)
        if px % stride[0] or px % stride[1]:
            raise VitlensError(f"{name} cannot take {px} px inputs: its patches are {stride[0]:g} px apart, so "
                               "the input side must be a multiple of that; choose another input size.")
        if own_px(model) != px and not hasattr(model, "set_input_size") and not _takes_any_size(model, px):
            raise UnsupportedModelError(f"{name} ({type(model).__name__}) cannot be resized to {px} px inputs; "
                                        f"measure it at its own size, {own_px(model)} px.")


def _takes_any_size(model: nn.Module, px: int) -> bool:
    """Whether a windowed model takes ``px`` inputs as it is (transformers' Swin pads its maps)."""
    try:
        return _window_layout(model, px) is not None and not hasattr(model, "set_input_size")
    except UnsupportedModelError:
        return False


def _sized(model: nn.Module, kind: str, px: int, device) -> nn.Module:
    """A deep copy of ``model`` in eval mode on ``device``, a ViT's set to take ``px`` inputs."""
    m = copy.deepcopy(model).to(device).eval()
    if kind == "vit" and own_px(m) != px and hasattr(m, "set_input_size"):
        m.set_input_size(img_size=(px, px))  # timm: the position table resampled the library's way
    return m


@dataclass(frozen=True)
class CostProfile:
    """Cost of several models at several input sizes, one entry per measured value (the columns of
    :data:`COLUMNS`, each a read-only array ``[row]``), plus how it was measured.

    Attributes:
        own_px: ``(model, input side it was built for)`` pairs, in model order.
        threads: torch intra-op threads during the timings.
        memory_method: ``"cpu-profiler"`` or ``"cuda-allocator"``.
    """

    model: np.ndarray
    kind: np.ndarray
    input_px: np.ndarray
    tokens: np.ndarray            # N for ViTs (prefix tokens included), the first stage's map for windowed ones, -1 for CNNs
    quantity: np.ndarray
    part: np.ndarray
    value: np.ndarray
    unit: np.ndarray
    batch_size: np.ndarray        # the batch a value was measured at (1 for parameters and FLOPs)
    device: str
    precision: str
    threads: int
    memory_method: str
    own_px: tuple[tuple[str, int], ...]
    repeats: int
    warmup: int
    load_average: dict | None = None   # 1/5/15-minute load averages before and after the timings

    def __post_init__(self):
        for f in ("model", "kind", "input_px", "tokens", "quantity", "part", "value", "unit", "batch_size"):
            a = np.array(getattr(self, f))
            a.flags.writeable = False
            object.__setattr__(self, f, a)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.model.tolist()))

    def kind_of(self, model: str) -> str:
        return str(self.kind[self.model == model][0])

    def select(self, model: str, quantity: str, part: str | None = None, batch_size: int | None = None):
        """``(input_px, tokens, value)`` arrays of one model's rows, sorted by input size."""
        keep = (self.model == model) & (self.quantity == quantity)
        if part is not None:
            keep &= self.part == part
        if batch_size is not None:
            keep &= self.batch_size == batch_size
        order = np.argsort(self.input_px[keep], kind="stable")
        return self.input_px[keep][order], self.tokens[keep][order], self.value[keep][order]

    def to_frame(self):
        """Tidy frame, one row per value, columns :data:`COLUMNS`; quantities in :data:`QUANTITIES`."""
        import pandas as pd

        n = len(self.value)
        cols = {c: getattr(self, c) for c in COLUMNS if c not in ("device", "precision")}
        # counts (parameters, FLOPs, bytes) as whole numbers, rates as float64: one object column
        cols["value"] = pd.Series([int(v) if u in _WHOLE_UNITS else float(v) for v, u in zip(self.value, self.unit)],
                                  dtype=object)
        return pd.DataFrame({**cols, "device": [self.device] * n, "precision": [self.precision] * n})[COLUMNS]

    def flop_shares(self, model: str) -> dict[str, np.ndarray]:
        """Per input size of a ViT: ``tokens``, ``input_px`` and the ``attention`` and ``linear``
        (transformer_linear) shares of its total FLOPs."""
        px, tok, total = self.select(model, "flops", "total")
        return {"input_px": px, "tokens": tok, "attention": self.select(model, "flops", "attention")[2] / total,
                "linear": self.select(model, "flops", "transformer_linear")[2] / total}

    def _ratio(self, model: str):
        """``(input_px, tokens, attention / transformer_linear FLOPs)`` of a ViT."""
        px, tok, attn = self.select(model, "flops", "attention")
        return px, tok, attn / np.maximum(self.select(model, "flops", "transformer_linear")[2], 1e-300)

    def attention_crossing(self, model: str) -> float | None:
        """Token count where attention FLOPs reach the linear part, interpolated linearly in N (the
        ratio is ``N / 6d`` for a standard ViT block) between the two sizes measured on either side;
        None when the sizes measured do not bracket it."""
        _, tok, r = self._ratio(model)
        above = np.flatnonzero(r > 1)
        if not len(above) or above[0] == 0:
            return None
        i, n = above[0], tok.astype(float)
        return float(n[i - 1] + (1 - r[i - 1]) * (n[i] - n[i - 1]) / (r[i] - r[i - 1]))

    def flop_exponent(self, model: str) -> float | None:
        """Slope of log FLOPs against log pixel count (least squares over the sizes measured)."""
        px, _, f = self.select(model, "flops", "total")
        return float(np.polyfit(np.log(px.astype(float) ** 2), np.log(f), 1)[0]) if len(px) > 1 else None

    def to_dict(self) -> dict:
        """Metadata for a run record."""
        return {"models": {m: self.kind_of(m) for m in self.models}, "quantities": QUANTITIES,
                "device": self.device, "precision": self.precision, "torch_threads": self.threads,
                "memory_method": self.memory_method, "own_px": dict(self.own_px), "repeats": self.repeats,
                "warmup": self.warmup, "throughput_rounds": "sizes interleaved: each round times every size in turn",
                "load_average": self.load_average, "reading": self.reading()}

    def reading(self) -> list[str]:
        """Sentences worded only from the numbers measured."""
        out, b = [], int(self.batch_size.max())
        vits = [m for m in self.models if self.kind_of(m) == "vit"]
        cnns = [m for m in self.models if self.kind_of(m) == "cnn"]
        for m in vits:
            px, tok, r = self._ratio(m)
            above = np.flatnonzero(r > 1)
            if not len(above):
                out.append(f"{m}: attention FLOPs (q k^T and attention x v) stay below the linear layers of its "
                           f"blocks at every size measured ({px[0]} to {px[-1]} px), at most {r.max():.2f} of "
                           "them; the size where they exceed it is not within the sizes measured.")
            elif above[0] == 0:
                out.append(f"{m}: attention FLOPs exceed the linear layers of its blocks at every size measured, "
                           f"from the smallest ({px[0]} px, {tok[0]} tokens: {r[0]:.2f} times).")
            else:
                i = above[0]
                out.append(f"{m}: attention FLOPs exceed the linear layers of its blocks from {px[i]} px "
                           f"({tok[i]} tokens, {r[i]:.2f} times) on; at {px[i - 1]} px ({tok[i - 1]} tokens) they "
                           f"are {r[i - 1]:.2f} of them.")
        for v, c in ((v, c) for v in vits for c in cnns):
            (pv, _, mv), (pc, _, mc) = (self.select(x, "peak_memory", batch_size=b) for x in (v, c))
            both, own = sorted(set(pv.tolist()) & set(pc.tolist())), dict(self.own_px)[v]
            if both:
                at = min(both, key=lambda p: abs(p - own))
                x, y = mv[pv == at][0], mc[pc == at][0]
                note = f" ({v}'s own input size)" if at == own else ""
                out.append(f"At {at} px{note} and batch {b}, {v} peaks at {x / 2**20:.2f} MiB of forward memory, "
                           f"{f'{x / y:.2f} times' if y > 0 else 'against'} {c}'s {y / 2**20:.2f} MiB "
                           f"({self.memory_method}).")
        for m in self.models:
            e, (px, _, _) = self.flop_exponent(m), self.select(m, "flops", "total")
            out.append(f"{m}: FLOPs grow as pixels^{e:.2f} from {px[0]} to {px[-1]} px (log-log least squares "
                       f"over {len(px)} sizes)." if e is not None else f"{m}: one size measured, no growth exponent.")
        where = (f"a CPU figure, {self.threads} torch thread{'s' * (self.threads != 1)}"
                 if self.device.startswith("cpu") else f"on {self.device}")
        busy = ""
        load = (self.load_average or {}).get("before_timing")
        if load and self.device.startswith("cpu"):
            busy = f", load average {load[0]:.2f} on {os.cpu_count()} CPUs"
        for m in self.models:
            px, _, best = self.select(m, "throughput", "best")
            if len(px):
                lo = self.select(m, "throughput", "min")[2]
                out.append(f"{m}: {best[-1]:.1f} images/s at {px[-1]} px, batch {b} (best of {self.repeats} rounds "
                           f"interleaved with the other sizes, slowest {lo[-1]:.1f}; {self.precision}, {where}{busy}).")
        return out

    def plot(self, ax=None, **kwargs):
        """FLOPs against input size, log-log, every model. Returns the axes."""
        from ..plotting.cost import plot_flops
        return plot_flops(self, ax=ax, **kwargs)


def _measure(m: nn.Module, kind: str, px: int, batch_size: int, memory: bool, precision: str,
             gen: torch.Generator):
    """``(quantity, part, value, unit, batch)`` rows of one sized copy ``m``, and the memory method."""
    dev = next(m.parameters()).device
    x1 = torch.randn(1, 3, px, px, generator=gen).to(dev)         # [1, 3, px, px]
    xb = torch.randn(batch_size, 3, px, px, generator=gen).to(dev)  # [batch, 3, px, px]
    rows = [("parameters", p, v, "count", 1) for p, v in parameter_parts(m).items()]
    with explicit_attention(m, kind):
        rows += [("flops", p, v, "FLOP", 1) for p, v in flop_parts(m, x1).items()]
    method = "not measured"
    for b, x in ([(1, x1)] + ([(batch_size, xb)] if batch_size > 1 else [])) if memory else []:
        if kind == "vit":
            with explicit_attention(m, kind):
                explicit, _ = peak_memory(m, x, precision)
        fused, method = peak_memory(m, x, precision)  # attention as the model ships
        rows.append(("peak_memory", method, fused, "bytes", b))
        if kind == "vit":
            rows += [("peak_memory_explicit", method, explicit, "bytes", b),
                     ("attention_map_memory", method, explicit - fused, "bytes", b)]
    return rows, method


def cost_profile(model: nn.Module | Sequence[nn.Module], input_sizes: Sequence[int], *, batch_size: int = 8,
                 device: str | torch.device = "cpu", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
                 name: str | Sequence[str] | None = None, measure_memory: bool = True,
                 measure_throughput: bool = True) -> CostProfile:
    """Parameters, FLOPs, peak memory and throughput of each model at each input side in ``input_sizes``.

    Args:
        model: a model or several (timm ViTs and CNNs), measured on deep copies in eval mode.
        input_sizes: input sides in pixels; inputs are ``[batch, 3, px, px]``.
        batch_size: batch of the throughput and of the second memory measurement (the first is 1).
        precision: ``fp32``, or ``bf16``/``fp16`` autocast, for memory and throughput (FLOPs are
            counted in fp32: the count does not depend on the dtype).
        name: display names, one per model (default: the name each was loaded by, as
            :func:`~vitlens.load_model` records it, numbered where two would be the same; the class
            name for a model built otherwise).

    Raises:
        VitlensError: a size that is not a positive whole number, or one a model cannot take.
    """
    check_precision(precision)
    models = [model] if isinstance(model, nn.Module) else list(model)
    names = [name] if isinstance(name, str) else list(name or [])
    names += [model_name(m) for m in models[len(names):]]
    names = [n if names.count(n) == 1 else f"{n} #{names[:i].count(n) + 1}" for i, n in enumerate(names)]
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise VitlensError(f"batch size and repeats must be at least 1 and warmup at least 0, got "
                           f"{batch_size}, {repeats} and {warmup}.")
    if not models or not len(input_sizes):
        raise VitlensError("cost_profile needs at least one model and one input side in pixels.")
    dev, gen = torch.device(device), torch.Generator().manual_seed(0)
    kinds = [_kind(m) for m in models]
    for m, k, n in zip(models, kinds, names):
        for px in input_sizes:
            _check_size(m, k, px, n)
    rows, method, input_sizes = [], "not measured", list(dict.fromkeys(int(px) for px in input_sizes))
    load = {"before_timing": None, "after_timing": None}
    for model_, name, kind in zip(models, names, kinds):
        sized, tokens_at = [], {}
        for px in input_sizes:
            try:
                m = _sized(model_, kind, int(px), dev)
                tokens_at[px] = _tokens_and_stride(m, int(px))[0] if kind == "vit" else -1
                got, method = _measure(m, kind, int(px), batch_size, measure_memory, precision, gen)
            except (RuntimeError, AssertionError) as e:
                raise VitlensError(f"{name} cannot take {px} px inputs: {str(e).splitlines()[0]}") from e
            rows += [(name, kind, int(px), tokens_at[px], *r) for r in got]
            if measure_throughput:
                sized.append((int(px), m))
        if sized:  # every size in turn, round after round
            load["before_timing"] = load["before_timing"] or _load_average()
            try:
                got = _throughput_rows(sized, batch_size, precision, repeats, warmup, gen)
            except (RuntimeError, AssertionError) as e:
                raise VitlensError(f"{name} failed while timed: {str(e).splitlines()[0]}") from e
            rows += [(name, kind, px, tokens_at[px], *r) for px, *r in got]
            load["after_timing"] = _load_average()
        del sized
    cols = [np.array(c) for c in zip(*rows)]
    return CostProfile(*cols, device=str(dev), precision=precision, threads=torch.get_num_threads(),
                       memory_method=method, own_px=tuple((n, own_px(m)) for n, m in zip(names, models)),
                       repeats=repeats, warmup=warmup, load_average=load)
