"""Multi-process runs under ``torchrun``: image shards, all-reduced partial sums, rank 0 writes.

``torchrun --nproc-per-node K -m vitlens distance ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; every
process then reads its own shard of the images (``indices[rank::world]``), accumulates partial
sums, and the sums are all-reduced (gloo on CPU, NCCL on CUDA) so rank 0 writes exactly the
files a single process would, with the full image count.

Batches run in lock step (:meth:`Context.lockstep`): after each one every process says whether it
failed, was signalled or is done, so a process that raises or is stopped never leaves the others
waiting in a collective; they all stop after the batch at hand and the failing process's error is
the one reported.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import VitlensError

__all__ = ["Context", "context", "Halted", "PeerFailed", "PeerStopped"]

_NOTHING = object()


class Halted(VitlensError):
    """Another process of the run failed or was stopped, so this one stopped too (base class)."""


class PeerFailed(Halted):
    """Another process raised; ``message`` is its error."""


class PeerStopped(Halted):
    """This or another process received SIGINT/SIGTERM (``signal_name``)."""

    exit_code = 130

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


class Context:
    """This process's place in a run: rank, world size, device; a single process by default."""

    def __init__(self, rank: int = 0, world: int = 1, device: str = "cpu", owns_group: bool = False):
        self.rank, self.world, self.device, self._owns = rank, world, device, owns_group

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's share of ``indices`` (strided, so every rank gets a similar mix)."""
        return list(indices)[self.rank::self.world]

    def all_reduce(self, arrays: dict[str, np.ndarray], ops: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Sum (or ``min``/``max`` per ``ops``) every array over all ranks; float64 and int64 exact."""
        if not self.active:
            return arrays
        ops = ops or {}
        out = {}
        for k in sorted(arrays):
            a = np.asarray(arrays[k])
            t = torch.from_numpy(np.ascontiguousarray(a)).to(self._comm_device)
            op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}.get(ops.get(k, "sum"), dist.ReduceOp.SUM)
            dist.all_reduce(t, op=op)
            out[k] = t.cpu().numpy().astype(a.dtype, copy=False)
        return out

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects only)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def lockstep(self, items: Iterable, stop=None) -> Iterator:
        """Yield ``items`` in step with the other processes: after each item every process shares
        whether it raised, was signalled (``stop.requested``) or has no items left.

        Raises:
            the process's own exception, when it raised (the others are told first);
            PeerFailed: another process raised (the message holds its error);
            PeerStopped: this or another process was signalled.
        Alone (one process) it is plain iteration, except that a signal raises PeerStopped.
        """
        it = iter(items)
        done = False
        while True:
            error: BaseException | None = None
            item = _NOTHING
            if not done:
                try:
                    item = next(it)
                except StopIteration:
                    done = True
                except Exception as e:  # shared with the other processes, then raised
                    error = e
            stopped = bool(stop is not None and stop.requested)
            flags = np.array([error is not None, stopped, not done], dtype=np.int64)
            if self.active:
                flags = self.all_reduce({"flags": flags}, ops={"flags": "max"})["flags"]
            if item is not _NOTHING:  # this process's batch is complete: the caller records it first
                yield item
            if flags[0]:
                if not self.active:
                    raise error
                messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
                if error is not None:
                    raise error
                who = [(r, m) for r, m in enumerate(messages) if m is not None]
                raise PeerFailed(f"process {who[0][0]} of {self.world} failed ({who[0][1]}); this process "
                                 f"(rank {self.rank}) stopped with it.")
            if flags[1]:
                names = self.gather(stop.signal_name if stopped else None) if self.active else [stop.signal_name]
                raise PeerStopped(next((n for n in names if n), "a signal"))
            if not flags[2]:
                return

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def _comm_device(self) -> str:
        return self.device if dist.get_backend() == "nccl" else "cpu"

    def close(self) -> None:
        if self._owns and dist.is_initialized():
            dist.destroy_process_group()


def context(device: str = "cpu") -> Context:
    """The run's context: under torchrun, join the process group (gloo on CPU, NCCL on CUDA) and
    place this rank on its own GPU; otherwise a single-process context on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=device)
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Context(rank=rank, world=world, device=device, owns_group=owns)
