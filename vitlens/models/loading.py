"""Model loading: timm names and tags, family-prefixed names (``hf:``, ``torchvision:``,
``open_clip:``), local checkpoints, and the small models vitlens ships.

``load_model`` returns a timm model in eval mode on the requested device, with a record of where
its weights came from in ``model.vitlens_source`` (written into every run record).
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import timm
import torch
import torch.nn as nn

from ..runtime.errors import ModelLoadError
from .checkpoints import load_checkpoint_into, read_state_dict

__all__ = ["load_model", "zoo_models", "ZooModel", "model_source",
           "model_name"]

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
ZOO_PREFIX = "vitlens/"


@dataclass(frozen=True)
class ZooModel:
    """A small trained model shipped inside the package (see ``vitlens/zoo/``)."""

    name: str
    architecture: str
    kwargs: dict = field(default_factory=dict)
    weights: str = ""
    accuracy: float | None = None
    card: str = ""
    description: str = ""

    @property
    def weights_path(self) -> Path:
        return ZOO_DIR / self.weights


def zoo_models() -> dict[str, ZooModel]:
    """The shipped models by name, read from ``vitlens/zoo/*.json``."""
    out = {}
    for f in sorted(ZOO_DIR.glob("*.json")):
        d = json.loads(f.read_text())
        out[d["name"]] = ZooModel(**d)
    return out


def model_source(model: nn.Module) -> dict:
    """Where a model's weights came from, as recorded by :func:`load_model` (empty if unknown)."""
    return dict(getattr(model, "vitlens_source", {}) or {})


def model_name(model: nn.Module, name: str | None = None) -> str:
    """The name results carry for ``model``: ``name`` when given, else the name it was loaded by
    (``vit_tiny_patch16_224``, ``vitlens/vit-tiny-shapes``), else its class name."""
    return name or model_source(model).get("name") or type(model).__name__


def _classifier_width(sd: Mapping[str, torch.Tensor], arch: str) -> int | None:
    """Number of classes of a checkpoint's classifier, if it has the architecture's head."""
    cfg = timm.models.get_pretrained_cfg(arch)
    head = getattr(cfg, "classifier", None) if cfg is not None else None
    heads = head if isinstance(head, (list, tuple)) else [head or "head"]
    for h in heads:
        w = sd.get(f"{h}.weight")
        if w is not None and w.ndim >= 2:
            return int(w.shape[0])
    return None


# --------------------------------------------------------------------------- hub access

def _hub_host() -> tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urllib.parse.urlparse(endpoint)
    return u.hostname or "huggingface.co", u.port or (443 if u.scheme == "https" else 80)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host, port = _hub_host()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its local cache only, so a missing file fails at once."""
    import huggingface_hub.constants as c
    old = c.HF_HUB_OFFLINE
    c.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        c.HF_HUB_OFFLINE = old


def _offline_message(name: str) -> str:
    import huggingface_hub.constants as c

    return (f"the pretrained weights of {name} could not be downloaded: the model hub is not reachable "
            f"from this machine and no copy is in the local hub cache ({c.HF_HUB_CACHE}). Fill the cache by "
            f"loading {name} once where the hub is reachable (or copy that machine's cache folder here; "
            "HF_HUB_CACHE or HF_HOME say where it is), or pass a local checkpoint: "
            f"load_model('{name.split('.')[0]}', checkpoint='weights.safetensors') in Python, or "
            "--checkpoint PATH on the command line (use --random-init for random weights).")


def _is_network_error(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__
        if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)) or \
                type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "URLError") or \
                mod.startswith(("requests", "urllib3", "httpx", "httpcore")):
            return True
        e = e.__cause__ or e.__context__
    return False


# --------------------------------------------------------------------------- load_model

def _unknown_name(name: str) -> ModelLoadError:
    candidates = list(zoo_models()) + timm.list_models()
    base = name.split(".")[0]
    close = difflib.get_close_matches(base, candidates, n=5, cutoff=0.5)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return ModelLoadError(f"unknown model '{name}': timm has no such architecture and vitlens ships "
                          f"no such model.{hint} List timm's with timm.list_models('*vit*').")


def load_model(name: str, *, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
               device: str | torch.device = "cpu", **timm_kwargs) -> nn.Module:
    """Build a model, with weights from the hub, a local checkpoint, the zoo, or at random.

    Args:
        name: a timm model name with or without a pretrained tag
            (``vit_base_patch16_224.augreg2_in21k_ft_in1k``), a shipped model (``vitlens/...``), or a
            name with a family prefix: ``hf:<repo id or local folder>`` (Hugging Face transformers),
            ``torchvision:<name>[:<weights>]``, ``open_clip:<architecture>[:<pretrained tag>]``.
        pretrained: fetch the tag's weights from the hub (timm's cache is used first). False gives
            random weights, for baselines. Ignored when ``checkpoint`` is given.
        checkpoint: a local safetensors or PyTorch (.pth/.pt/.bin) state dict for the architecture.
        device: where the model is placed.
        **timm_kwargs: passed to ``timm.create_model`` (for example ``dynamic_img_size=True``).

    Returns:
        The model in eval mode, with ``model.vitlens_source`` recording its weights' origin.

    Raises:
        ModelLoadError: unknown name, weights that cannot be downloaded (within seconds when offline),
            or a checkpoint that cannot be read, is unsafe, or does not fit.
    """
    from .families.registry import load_by_prefix

    prefixed = load_by_prefix(name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    if prefixed is not None:
        if timm_kwargs:
            raise ModelLoadError(f"{', '.join(sorted(timm_kwargs))} are options of timm models only; "
                                 f"{name} takes none.")
        return prefixed
    zoo = zoo_models()
    if name in zoo:
        z = zoo[name]
        kwargs = {**z.kwargs, **timm_kwargs}
        use_zoo_weights = checkpoint is None and pretrained
        model = timm.create_model(z.architecture, pretrained=False, **kwargs)
        path = Path(checkpoint) if checkpoint is not None else z.weights_path
        if checkpoint is not None or use_zoo_weights:
            load_checkpoint_into(model, name, path, read_state_dict(path))
        source = {"name": name, "architecture": z.architecture, "tag": None,
                  "weights": ("zoo:" + z.weights) if use_zoo_weights else
                  (f"checkpoint:{path}" if checkpoint is not None else "random")}
        return _finish(model, source, device)
    if name.startswith(ZOO_PREFIX):
        raise _unknown_name(name)

    arch, tag = timm.models.split_model_name_tag(name.split(":", 1)[-1] if name.startswith("hf-hub:") else name)
    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(arch):
        raise _unknown_name(name)
    if name.startswith(("hf-hub:", "local-dir:")) and (checkpoint is not None or not pretrained):
        raise ModelLoadError(
            f"{name} names a repository of weights, so it cannot be built with random or local weights: "
            "give the timm architecture it holds (for example vit_base_patch16_224) with --random-init "
            "or --checkpoint instead.")

    if checkpoint is not None:
        path = Path(checkpoint)
        sd = read_state_dict(path)
        if "num_classes" not in timm_kwargs:
            width = _classifier_width(sd, arch)
            if width is not None:
                timm_kwargs["num_classes"] = width
        model = timm.create_model(arch, pretrained=False, **timm_kwargs)
        load_checkpoint_into(model, arch, path, sd)
        return _finish(model, {"name": name, "architecture": arch, "tag": tag or None,
                               "weights": f"checkpoint:{path}"}, device)

    if not pretrained:
        model = timm.create_model(arch, pretrained=False, **timm_kwargs)
        return _finish(model, {"name": name, "architecture": arch, "tag": tag or None,
                               "weights": "random"}, device)

    online = hub_reachable()
    try:
        if online:
            model = timm.create_model(name, pretrained=True, **timm_kwargs)
        else:
            with _hub_offline():
                model = timm.create_model(name, pretrained=True, **timm_kwargs)
    except RuntimeError as e:
        if "No pretrained weights exist" in str(e) or "Invalid pretrained tag" in str(e):
            raise ModelLoadError(f"timm has no pretrained weights for '{name}'. Pick a tag listed by "
                                 f"timm.list_pretrained('{arch}*'), pass --checkpoint PATH, or use "
                                 "random weights (--random-init).") from e
        if _is_network_error(e):
            raise ModelLoadError(_offline_message(name)) from e
        raise
    except Exception as e:
        if _is_network_error(e) or not online:
            raise ModelLoadError(_offline_message(name)) from e
        raise
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return _finish(model, {"name": name, "architecture": arch, "tag": cfg.get("tag") or tag or None,
                           "weights": "hub:" + str(cfg.get("hf_hub_id") or cfg.get("url") or name)}, device)


def _finish(model: nn.Module, source: dict, device) -> nn.Module:
    model.vitlens_source = source
    return model.to(device).eval()
