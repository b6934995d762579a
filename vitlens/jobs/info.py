"""``vitlens info``: a model's architecture, token layout and attention blocks.

Any timm name is built with random weights (nothing is downloaded); a shipped model is read with the
weights bundled in the package, and a ``--checkpoint`` is read as given. The architecture line is
read from the built model (patch size, blocks, heads, width), not from the timm name it was built
from: the shipped ViT is built from ``vit_tiny_patch16_224`` with 8 px patches, 6 blocks and 4 heads.
"""

from __future__ import annotations

import torch.nn as nn

from ..capture.attention import attention_modules
from ..models.layout import token_layout
from ..models.loading import load_model, zoo_models
from ..runtime.errors import UnsupportedModelError

__all__ = ["model_info", "describe_architecture"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def describe_architecture(model: nn.Module) -> str:
    """What the built model is, read from its modules: for a ViT its patch size, blocks, heads and
    width; for a CNN its stages' channels and total stride; otherwise its class."""
    base = getattr(model, "vitlens_source", {}).get("architecture") or type(model).__name__
    try:
        mods = attention_modules(model)
    except UnsupportedModelError:
        mods = []
    if mods:
        heads = sorted({b.num_heads for b in _blocks(model)})
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        parts = []
        if patch is not None:
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
            parts.append(f"{ph} px patches" if ph == pw else f"{ph} x {pw} px patches")
        parts.append(_plural(len(mods), "attention block"))
        parts.append(" / ".join(map(str, heads)) + (" head" if heads == [1] else " heads") + " per block")
        if getattr(model, "embed_dim", None):
            parts.append(f"width {model.embed_dim}")
        return f"{base} built with " + ", ".join(parts)
    info = getattr(model, "feature_info", None)
    chans = [f["num_chs"] for f in info] if isinstance(info, list) and info and isinstance(info[0], dict) else []
    if chans:
        return (f"{base}: {_plural(len(chans), 'stage')} of {'-'.join(map(str, chans))} channels, "
                f"total stride {info[-1].get('reduction', '?')}")
    return base


def model_info(name: str, *, checkpoint: str | None = None, input_size=None, device: str = "cpu") -> str:
    """A few lines describing ``name``: weights, architecture, token layout and the attention blocks
    vitlens reads. With ``input_size`` the model is built for that size."""
    kwargs = {}
    if input_size is not None:  # build at that size (timm resamples the position table)
        size = [input_size] if isinstance(input_size, int) else list(input_size)
        kwargs["img_size"] = tuple(size * 2 if len(size) == 1 else size[-2:])
    bundled = checkpoint is None and name in zoo_models()
    model = load_model(name, pretrained=bundled, checkpoint=checkpoint, device=device, **kwargs)
    src = model.vitlens_source
    lines = [f"{name}  ({type(model).__module__}.{type(model).__name__}, "
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, weights: {_weights(src['weights'])})",
             f"  architecture: {describe_architecture(model)}"]
    try:
        lines.append("  token layout: " + token_layout(model, input_size).describe())
    except UnsupportedModelError as e:
        lines.append(f"  token layout: none ({e})")
    try:
        mods = attention_modules(model)
    except UnsupportedModelError as e:
        lines.append(f"  attention blocks: none ({e})")
    else:
        kinds = sorted({type(m).__name__ for _, m in mods})
        lines.append(f"  attention blocks: {len(mods)} ({', '.join(kinds)}; heads per block: "
                     f"{_heads_per_block([b.num_heads for b in _blocks(model)])}), "
                     f"first {mods[0][0]}, last {mods[-1][0]}")
    return "\n".join(lines)


def _heads_per_block(heads: list[int]) -> str:
    """Head counts in forward order, each with the blocks (counted from 1) that have it:
    ``"3 (blocks 1-2), 6 (blocks 3-4)"``; one count alone when every block has it."""
    if len(set(heads)) <= 1:
        return str(heads[0]) if heads else "none"
    runs: list[list[int]] = []  # [heads, first block, last block]
    for i, h in enumerate(heads, start=1):
        if runs and runs[-1][0] == h:
            runs[-1][2] = i
        else:
            runs.append([h, i, i])
    return ", ".join(f"{h} (block{'s' * (a != b)} {a}{f'-{b}' if a != b else ''})" for h, a, b in runs)


def _weights(w: str) -> str:
    """What the weights line means here: info builds the architecture only, unless the weights are
    bundled with vitlens or given as a checkpoint."""
    if w == "random":
        return "not loaded (architecture only; pass --checkpoint to read one)"
    if w.startswith("zoo:"):
        return f"bundled with vitlens ({w.split(':', 1)[1]}, read offline)"
    return w


def _blocks(model: nn.Module):
    """The model's attention blocks as its family adapter describes them (with their head counts)."""
    from ..models.families.registry import adapter_for

    return adapter_for(model).attention_blocks()
