"""What every job shares: loading the models a command names, its images, progress bars, records."""

from __future__ import annotations

import argparse
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from ..data.images import ImageSet
from ..models.layout import token_layout
from ..models.loading import load_model, model_source
from ..runtime.errors import UnsupportedModelError, VitlensError
from ..runtime.progress import progress_bar

__all__ = ["model_specs", "load_models", "images_for", "progress", "model_record", "display_name", "args_record",
           "distinct_names"]


def model_specs(args: argparse.Namespace, required: bool = True) -> list[tuple[str, str | None]]:
    """Pair ``--model`` with ``--checkpoint`` in order: ``[(name, checkpoint or None), ...]``."""
    names = args.model or []
    ckpts = args.checkpoint or []
    if required and not names:
        raise VitlensError("no model given: pass --model NAME (a timm name such as vit_base_patch16_224, "
                           "or a shipped model listed by 'vitlens zoo').")
    if len(ckpts) > len(names):
        raise VitlensError(f"{len(ckpts)} --checkpoint given for {len(names)} --model; each checkpoint "
                           "pairs with the --model at the same position.")
    return [(n, ckpts[i] if i < len(ckpts) else None) for i, n in enumerate(names)]


def load_models(specs: Sequence[tuple[str, str | None]], *, random_init: bool = False, device: str = "cpu",
                seed: int = 0, **timm_kwargs) -> list[nn.Module]:
    """Load every ``(name, checkpoint)`` pair; random weights when ``random_init``, drawn from
    ``seed`` so that a random baseline is the same from run to run.

    A random model gets active residual branches (:func:`vitlens.models.baselines.activate_residual_branches`:
    timm's zero-initialised last BatchNorm scales and small layer scales set to 1, every other
    initialiser kept); what was done is recorded as ``model.vitlens_initialisation`` and in
    :func:`model_record`. A loaded model whose residual branches are silent gets a warning.
    """
    import warnings

    from ..models.baselines import activate_residual_branches, silence_warning, silent_residual_branches

    models = []
    for name, ckpt in specs:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(seed)
            m = load_model(name, pretrained=not random_init, checkpoint=ckpt, device=device, **timm_kwargs)
        if random_init and ckpt is None:
            m.vitlens_initialisation = activate_residual_branches(m)
        else:
            msg = silence_warning(name, silent_residual_branches(m))
            if msg:
                warnings.warn(msg, stacklevel=2)
        models.append(m)
    return models


def images_for(model: nn.Module, args: argparse.Namespace, input_size=None) -> ImageSet:
    """The image set a command's ``--images/--num-images/--sample/--seed`` name, with ``model``'s
    own eval preprocessing."""
    return ImageSet.for_model(model, args.images, input_size=input_size, num_images=args.num_images,
                              sample=args.sample, seed=args.seed)


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "img",
             enabled: bool = True):
    """A tqdm progress bar on stderr (hidden when ``enabled`` is False, and nested in a log: see
    :func:`vitlens.runtime.progress.progress_bar`)."""
    return progress_bar(iterable, total=total, desc=desc, unit=unit, enabled=enabled)


def display_name(model: nn.Module) -> str:
    """The name a user gave for ``model`` (with its checkpoint's file name when there is one), or
    the distinct name :func:`distinct_names` gave it."""
    if getattr(model, "vitlens_display_name", None):
        return model.vitlens_display_name
    src = model_source(model)
    name = src.get("name", type(model).__name__)
    w = str(src.get("weights", ""))
    if w.startswith("checkpoint:"):
        from pathlib import Path
        name += f" ({Path(w.split(':', 1)[1]).name})"
    elif w == "random":
        name += " (random init)"
    return name


def model_record(model: nn.Module, input_size=None) -> dict:
    """Name, tag, weights' origin and token layout of a model, for run records."""
    rec = model_source(model)
    try:
        rec["token_layout"] = token_layout(model, input_size).to_dict()
    except UnsupportedModelError:
        rec["token_layout"] = None
    rec["class"] = f"{type(model).__module__}.{type(model).__name__}"
    init = getattr(model, "vitlens_initialisation", None)
    if init is not None:
        rec["initialisation"] = init
    return rec


def args_record(args: argparse.Namespace) -> dict:
    """The command's arguments as plain JSON values (for the run record)."""
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def distinct_names(models: Sequence[nn.Module]) -> list[str]:
    """Give models that would share a display name distinct ones (a checkpoint's parent folder, then
    a number), so that tables, colours and files keep them apart; returns every model's name."""
    from pathlib import Path

    names = [display_name(m) for m in models]
    shared = {n for n in names if names.count(n) > 1}
    for i, m in enumerate(models):
        if names[i] in shared:
            w = str(model_source(m).get("weights", ""))
            if w.startswith("checkpoint:"):
                p = Path(w.split(":", 1)[1])
                names[i] = f"{model_source(m).get('name', type(m).__name__)} ({p.parent.name}/{p.name})"
    seen: dict[str, int] = {}
    shared = {n for n in names if names.count(n) > 1}
    for i, n in enumerate(list(names)):
        if n in shared:
            seen[n] = seen.get(n, 0) + 1
            names[i] = f"{n} #{seen[n]}"
    for m, n in zip(models, names):
        if n != display_name(m):
            m.vitlens_display_name = n
    return names
