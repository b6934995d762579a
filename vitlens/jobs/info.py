"""``vitlens info``: a model's token layout and attention blocks, without needing weights."""

from __future__ import annotations

from ..capture import attention_modules
from ..errors import UnsupportedModelError
from ..layout import token_layout
from ..models import load_model


def model_info(name: str, *, checkpoint: str | None = None, input_size=None, device: str = "cpu") -> str:
    """A few lines describing ``name``: weights, token layout, and the attention blocks vitlens reads.

    Random weights are used unless a checkpoint is given, so this works offline for any timm name.
    With ``input_size`` the model is built for that size.
    """
    kwargs = {}
    if input_size is not None:  # build at that size (timm resamples the position table)
        size = [input_size] if isinstance(input_size, int) else list(input_size)
        kwargs["img_size"] = tuple(size * 2 if len(size) == 1 else size[-2:])
    model = load_model(name, pretrained=False, checkpoint=checkpoint, device=device, **kwargs)
    src = model.vitlens_source
    lines = [f"{name}  ({type(model).__module__}.{type(model).__name__}, "
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, weights: {_weights(src['weights'])})"]
    try:
        lines.append("  token layout: " + token_layout(model, input_size).describe())
    except UnsupportedModelError as e:
        lines.append(f"  token layout: none ({e})")
    try:
        mods = attention_modules(model)
    except UnsupportedModelError as e:
        lines.append(f"  attention blocks: none ({e})")
    else:
        heads = {getattr(m, "num_heads", "?") for _, m in mods}
        kinds = sorted({type(m).__name__ for _, m in mods})
        lines.append(f"  attention blocks: {len(mods)} ({', '.join(kinds)}; heads per block: "
                     f"{', '.join(map(str, sorted(heads, key=str)))}), "
                     f"first {mods[0][0]}, last {mods[-1][0]}")
    return "\n".join(lines)


def _weights(w: str) -> str:
    """What the weights line means here: info builds the architecture only, unless given a checkpoint."""
    return "not loaded (architecture only; pass --checkpoint to read one)" if w == "random" else w
