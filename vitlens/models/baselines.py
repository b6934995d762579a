"""Random-weight baselines whose residual branches are active.

timm initialises some architectures so that, before training, every residual branch is silent:
ResNets (and other models with ``zero_init_last``) set the scale of the last BatchNorm of each
residual block to zero, and ConvNeXts multiply each branch by a layer scale of 1e-6. Such a
random model is the identity plus a few stems and downsampling layers, so a receptive field
measured on it hardly grows with depth: it shows timm's training trick, not the architecture.

:func:`activate_residual_branches` turns such a model into the baseline meant by "random weights":
normalisation scales that were initialised to exactly zero are set to 1 (the usual BatchNorm
initialisation) and constant layer scales below :data:`SMALL_SCALE` are set to 1; every other
weight keeps timm's initialiser (Kaiming-normal convolutions, truncated-normal ViT weights, ...).
For plain ViTs nothing is silent and timm's default initialisation is the baseline unchanged.
:func:`silent_residual_branches` lists what is silent in any model, trained or not.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["activate_residual_branches", "silent_residual_branches", "silence_warning", "SMALL_SCALE", "DEFAULT_INIT"]

SMALL_SCALE = 1e-3  # a constant layer scale below this leaves its branch silent
LAYER_SCALE_NAMES = ("gamma", "gamma_1", "gamma_2")
DEFAULT_INIT = ("the library's default initialisation (timm: truncated-normal linear layers, Kaiming-normal "
                "convolutions, unit norm scales)")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _zero_norms(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Normalisation layers whose scale is exactly zero everywhere (a zero-initialised branch end)."""
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, _NORMS) and isinstance(w, nn.Parameter) and w.numel() and not w.detach().any():
            out.append((f"{name}.weight", w))
    return out


def _small_layer_scales(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Layer scales (``LayerScale*.gamma``, a block's own ``gamma``/``gamma_1``/``gamma_2``) holding one
    constant smaller than :data:`SMALL_SCALE` in magnitude."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _NORMS):
            continue
        for pname, p in m.named_parameters(recurse=False):
            if pname not in LAYER_SCALE_NAMES or not p.numel():
                continue
            v = p.detach()
            if bool((v == v.reshape(-1)[0]).all()) and float(v.abs().max()) < SMALL_SCALE:
                out.append((f"{name}.{pname}" if name else pname, p))
    return out


def silent_residual_branches(model: nn.Module) -> dict[str, list[str]]:
    """What silences residual branches in ``model``: ``{"zero_norm_scales": [...],
    "small_layer_scales": [...]}`` of parameter names (both empty when nothing does)."""
    return {"zero_norm_scales": [n for n, _ in _zero_norms(model)],
            "small_layer_scales": [n for n, _ in _small_layer_scales(model)]}


def _summary(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


@torch.no_grad()
def activate_residual_branches(model: nn.Module) -> dict:
    """Make a randomly initialised model's residual branches active, in place; returns what was done.

    Zero normalisation scales become 1 and small constant layer scales become 1; nothing else
    changes. The returned record (JSON-ready) is::

        {"initialisation": one sentence, "zero_norm_scales_set_to_1": [names],
         "layer_scales_set_to_1": [{"name": ..., "was": value}], "changed": bool}
    """
    norms, scales = _zero_norms(model), _small_layer_scales(model)
    for _, p in norms:
        p.fill_(1.0)
    was = []
    for n, p in scales:
        was.append({"name": n, "was": float(p.reshape(-1)[0])})
        p.fill_(1.0)
    done = []
    if norms:
        done.append(f"{len(norms)} zero-initialised normalisation scale(s) set to 1 ({_summary([n for n, _ in norms])})")
    if scales:
        values = sorted({w["was"] for w in was})
        done.append(f"{len(scales)} layer scale(s) of {', '.join(f'{v:g}' for v in values)} set to 1 "
                    f"({_summary([w['name'] for w in was])})")
    if done:
        text = f"random: {DEFAULT_INIT}, then residual branches made active: " + "; ".join(done)
    else:
        text = f"random: {DEFAULT_INIT}; no residual branch was silent, so this is the baseline unchanged"
    return {"initialisation": text, "zero_norm_scales_set_to_1": [n for n, _ in norms],
            "layer_scales_set_to_1": was, "changed": bool(done)}


def silence_warning(name: str, silent: dict[str, list[str]]) -> str | None:
    """A one-paragraph warning when ``silent`` (from :func:`silent_residual_branches`) is not empty."""
    parts = []
    if silent["zero_norm_scales"]:
        parts.append(f"{len(silent['zero_norm_scales'])} normalisation layer(s) with every scale at zero "
                     f"({_summary(silent['zero_norm_scales'])})")
    if silent["small_layer_scales"]:
        parts.append(f"{len(silent['small_layer_scales'])} layer scale(s) below {SMALL_SCALE:g} "
                     f"({_summary(silent['small_layer_scales'])})")
    if not parts:
        return None
    return (f"{name} has residual branches that contribute nothing: " + " and ".join(parts) + ". Its analyses "
            "see mostly the shortcut path; these look like untrained initial values, so check the weights.")
