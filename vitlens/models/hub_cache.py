"""Pretrained weights in the local Hugging Face hub cache: which are there, and fetching the rest.

timm downloads a tag's weights from the hub repository its pretrained config names
(``timm/<architecture>.<tag>``), preferring ``model.safetensors`` and falling back to
``pytorch_model.bin``; a name counts as cached when one of those files is in the cache
(``HF_HUB_CACHE``, or ``HF_HOME/hub``). Nothing here builds a model.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..runtime.errors import ModelLoadError

__all__ = ["hub_repository", "is_cached", "missing_from_cache", "download_weights", "WEIGHT_FILES"]

#: The files timm reads a tag's weights from, in its order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_repository(name: str) -> str:
    """The hub repository holding the weights of the timm name ``name`` (architecture and tag).

    Raises:
        ModelLoadError: timm has no pretrained weights under that name, or they are not on the hub.
    """
    import timm

    if name not in timm.list_pretrained(name):
        raise ModelLoadError(f"timm has no pretrained weights called {name}; timm.list_pretrained() lists "
                             "the names with tags it knows.")
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        raise ModelLoadError(f"the weights of {name} are not on the Hugging Face hub (timm fetches them from "
                             f"{getattr(cfg, 'url', None) or 'elsewhere'}), so vitlens cannot fetch or find them "
                             "in the hub cache.")
    return repo.split("@")[0]


def is_cached(name: str) -> bool:
    """Whether the weights of ``name`` are in the local hub cache (no network is used)."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repository(name)
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in WEIGHT_FILES)


def missing_from_cache(names: Sequence[str]) -> list[str]:
    """The names among ``names`` whose weights are not in the local hub cache, in order."""
    return [n for n in dict.fromkeys(names) if not is_cached(n)]


def download_weights(name: str, *, log: Callable[[str], None] = lambda s: None) -> str:
    """Download the weights of ``name`` into the hub cache (a cached copy is kept); returns the file.

    Raises:
        ModelLoadError: the hub is not reachable, or the repository holds none of timm's weight files.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from .loading import _is_network_error

    repo = hub_repository(name)
    for f in WEIGHT_FILES:
        try:
            path = hf_hub_download(repo, f)
        except EntryNotFoundError:
            continue
        except Exception as e:
            if _is_network_error(e):
                raise ModelLoadError(f"could not download the weights of {name} from {repo}: the model hub is "
                                     f"not reachable from this machine ({type(e).__name__}).") from e
            raise
        log(f"{name}: {path}")
        return path
    raise ModelLoadError(f"the hub repository {repo} holds none of {', '.join(WEIGHT_FILES)}; timm cannot load "
                         f"{name} from it.")
