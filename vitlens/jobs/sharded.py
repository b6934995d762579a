"""One pass of an accumulating analysis over an image set: sharded over processes, resumable.

Jobs whose result is a sum over images (``distance``, ``erf``) share this loop: each process
streams its shard of the images into an accumulator (``state``/``load_state``), saves the sums,
the images done and the images skipped when SIGINT/SIGTERM arrives, continues from them with
``--resume``, and at the end all-reduces the sums and gathers the skipped files, so every process
holds the totals over all images.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..data.images import ImageSet, Skipped
from ..runtime.distributed import PeerStopped
from ..runtime.errors import VitlensError
from ..runtime.resume import Interrupted, load_partial, partial_path, save_partial
from .common import progress as progress_bar

__all__ = ["Partial", "open_partial", "sharded_pass"]


@dataclass
class Partial:
    """The saved state of one process of one job: arrays keyed ``m<model>/<name>``, and ``meta``
    (the command's ``setup``, and per model the images done and skipped)."""

    path: Path
    arrays: dict
    meta: dict


def open_partial(out: Path, job: str, ctx, setup: dict, resume: bool) -> Partial:
    """The saved state to continue from (``resume``) or a fresh one; refuses state saved by another
    command (``setup`` differs: models, images, settings or process count)."""
    path = partial_path(out, job, ctx.rank)
    arrays, meta = load_partial(path) if resume else ({}, {"setup": setup, "models": {}})
    if meta["setup"] != setup:
        raise VitlensError(f"--resume: the saved partial state in {path} is from another command "
                           "(models, images or settings differ); run that command again or drop --resume.")
    return Partial(path, arrays, meta)


def _remember(partial: Partial, mi: int, acc, imgs: ImageSet, done: set[int]) -> None:
    done.update(imgs.paths.index(Path(s.path)) for s in imgs.skipped)
    partial.meta["models"][str(mi)] = {"done": sorted(done), "skipped": [vars(s) for s in imgs.skipped]}
    partial.arrays.update({f"m{mi}/{k}": v.copy() for k, v in acc.state().items()})  # copies: reduced below


def sharded_pass(ctx, stop, partial: Partial, mi: int, acc, imgs: ImageSet,
                 stream: Callable[[list[int]], Iterable[list[int]]], *, desc: str, progress: bool = True,
                 reduce_ops: dict[str, str] | None = None) -> None:
    """Run model ``mi``'s images through ``stream(indices)`` (which feeds ``acc`` and yields each
    batch's indices) and leave the totals over all processes in ``acc`` and ``imgs.skipped``.

    Batches run in lock step with the other processes (:meth:`~vitlens.runtime.distributed.Context.lockstep`):
    when one of them raises, every process stops after its batch at hand and the error is raised
    (:class:`~vitlens.runtime.distributed.PeerFailed` on the others, naming it); when one is signalled,
    every process saves its partial state.

    Raises:
        Interrupted: a signal arrived (here or in another process); the partial state was saved first.
        PeerFailed: another process raised.
    """
    mine = partial.meta["models"].get(str(mi), {"done": [], "skipped": []})
    if str(mi) in partial.meta["models"]:
        acc.load_state({k.split("/", 1)[1]: v for k, v in partial.arrays.items() if k.startswith(f"m{mi}/")})
        imgs.skipped = [Skipped(**d) for d in mine["skipped"]]
    done = set(mine["done"]) | {imgs.paths.index(Path(s.path)) for s in imgs.skipped}
    shard = ctx.shard(range(len(imgs)))
    todo = [i for i in shard if i not in done]
    with progress_bar(None, total=len(shard), desc=desc, enabled=progress and ctx.is_main) as bar:
        bar.update(len(shard) - len(todo))
        try:
            for idx in ctx.lockstep(stream(todo), stop):
                done.update(idx)
                bar.update(len(idx))
        except PeerStopped as e:  # every process stops after the same batch, with consistent sums
            with stop.saving() if hasattr(stop, "saving") else contextlib.nullcontext():
                _remember(partial, mi, acc, imgs, done)
                save_partial(partial.path, partial.arrays, partial.meta)
            raise Interrupted(f"interrupted by {e.signal_name} after {len(done)} of {len(shard)} images ({desc}); "
                              f"partial sums saved in {partial.path}. Run the same command with --resume to "
                              "continue.") from None
    _remember(partial, mi, acc, imgs, done)
    acc.load_state(ctx.all_reduce(acc.state(), ops=reduce_ops))
    imgs.skipped = sorted({s for part in ctx.gather(imgs.skipped) for s in part},
                          key=lambda s: imgs.paths.index(Path(s.path)))
