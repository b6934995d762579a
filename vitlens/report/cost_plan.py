"""How much the report's cost section measures: input sizes, batch and repeats sized to the models,
the images and the machine, so that the section takes about a minute wherever it runs.

The plan is made before anything is timed, from exact FLOP counts of each model at the base input
size (one forward pass of one image each): a ViT's attention products grow with the square of the
token count and the rest of it linearly, a CNN's FLOPs grow with the pixel count. Every pass the
section runs (the FLOP count, the memory passes at batch 1 and at the batch, the warm-up and timed
throughput passes) is priced at an assumed rate of the device, and the plan keeps the most sizes,
then the largest batch, then the most repeats that fit the time budget. Sizes and repeats the user
gives are kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["CostPlan", "plan_cost", "COST_SCALES", "COST_REPEATS", "COST_SECONDS", "ASSUMED_FLOPS"]

COST_SCALES = (1, 2, 4)  # the models' own input size and two larger ones
COST_REPEATS = 3  # timed throughput passes at most, when the budget allows
COST_SECONDS = 60.0  # the time budget of the section
#: Assumed sustained FLOP/s of a device for these passes: per CPU thread, or per accelerator.
ASSUMED_FLOPS = {"cpu": 1e10, "other": 1e13}
_PROFILER_FACTOR = 2.0  # a pass under the CPU memory profiler costs about twice a plain pass
#: Seconds every pass costs whatever its FLOPs (a model copy, Python, the profiler's start and stop).
_PASS_SECONDS = {"plain": 0.02, "profiled": 0.3}
_WARMUP = 1


@dataclass(frozen=True)
class CostPlan:
    """What the cost section measures and why.

    Attributes:
        sizes: input sides in pixels, ascending.
        batch_size: batch of the throughput and of the second memory pass.
        repeats: timed throughput passes per model and size.
        warmup: untimed passes before them.
        estimated_seconds: the plan's price at the assumed rate.
        budget_seconds: the budget it was fitted to.
        flops: ``{model name: FLOPs of one image at the base size}``, counted.
        chosen: which of sizes, batch and repeats the user fixed.
    """

    sizes: tuple[int, ...]
    batch_size: int
    repeats: int
    warmup: int
    estimated_seconds: float
    budget_seconds: float
    flops: dict
    chosen: tuple[str, ...] = ()

    def describe(self) -> str:
        """One sentence for the page."""
        given = f" ({', '.join(self.chosen)} as given)" if self.chosen else ""
        return (f"Measured at {', '.join(map(str, self.sizes))} px, batch {self.batch_size}, {self.repeats} timed "
                f"run{'s' * (self.repeats != 1)} after {self.warmup} warm-up{given}: sizes, batch and repeats are "
                f"chosen from the models' FLOPs and the number of images to fit about {self.budget_seconds:.0f} s "
                f"on this device (estimated {self.estimated_seconds:.0f} s); --cost-sizes and --cost-repeats "
                "choose them.")

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "batch_size": self.batch_size, "repeats": self.repeats,
                "warmup": self.warmup, "estimated_seconds": round(self.estimated_seconds, 1),
                "budget_seconds": self.budget_seconds, "flops_at_base_size": dict(self.flops),
                "chosen_by_user": list(self.chosen), "assumed_flops_per_second": ASSUMED_FLOPS}


def _base_flops(model: nn.Module, kind: str, px: int, device) -> tuple[int, int]:
    """``(total, attention)`` FLOPs of one ``[1, 3, px, px]`` image through ``model``, counted."""
    from ..analyses.cost import _sized, explicit_attention, flop_parts

    m = _sized(model, kind, px, device)
    x = torch.zeros(1, 3, px, px, device=device)
    with explicit_attention(m, kind):
        parts = flop_parts(m, x)
    return parts["total"], parts["attention"]


def _flops_at(total: int, attention: int, kind: str, ratio: float) -> float:
    """FLOPs of one image at ``ratio`` times the base side: tokens grow with ``ratio**2``."""
    t = ratio ** 2
    return (total - attention) * t + attention * t * t if kind == "vit" else total * t


def _seconds(per_size: Sequence[dict], batch: int, repeats: int, warmup: int, rate: float, cpu: bool) -> float:
    """The price of the section: per model and size one FLOP-count pass, memory passes at batch 1 and
    ``batch`` (twice for a ViT: fused and explicit attention), and the throughput passes."""
    profiler = _PROFILER_FACTOR if cpu else 1.0
    work = overhead = 0.0
    for f in per_size:
        memory_passes = (2 if batch > 1 else 1) * (2 if f["kind"] == "vit" else 1)
        memory = (1 + (batch if batch > 1 else 0)) * (2 if f["kind"] == "vit" else 1) * profiler
        work += f["flops"] * (1 + memory + (warmup + repeats) * batch)
        overhead += (1 + warmup + repeats) * _PASS_SECONDS["plain"]
        overhead += memory_passes * _PASS_SECONDS["profiled" if cpu else "plain"]
    return work / rate + overhead


def plan_cost(models: Sequence[nn.Module], kinds: Sequence[str], names: Sequence[str], base_px: int, *,
              n_images: int, batch_size: int, device: str = "cpu", sizes: Sequence[int] | None = None,
              repeats: int | None = None, budget_seconds: float = COST_SECONDS,
              scales: Sequence[int] = COST_SCALES) -> CostPlan:
    """The sizes, batch and repeats of the cost section for ``models`` (see the module docstring).

    Args:
        kinds: ``"vit"`` or ``"cnn"`` per model.
        base_px: the input side the scales multiply (the first ViT's own).
        n_images: images of the report: the batch never exceeds them.
        batch_size: the report's batch: the largest batch considered.
        sizes, repeats: fixed by the user when given.
    """
    dev = torch.device(device)
    cpu = dev.type == "cpu"
    rate = ASSUMED_FLOPS["cpu"] * max(1, torch.get_num_threads()) if cpu else ASSUMED_FLOPS["other"]
    base = {n: _base_flops(m, k, base_px, dev) for m, k, n in zip(models, kinds, names)}
    candidates = sorted({int(s) for s in sizes}) if sizes else sorted({base_px * s for s in scales})
    chosen = tuple(w for w, v in (("sizes", sizes), ("repeats", repeats)) if v)

    def per_size(px_list):
        return [{"kind": k, "flops": _flops_at(*base[n], k, px / base_px)}
                for px in px_list for k, n in zip(kinds, names)]

    size_options = [candidates] if sizes else [candidates[:i] for i in range(len(candidates), 0, -1)]
    top = max(1, min(batch_size, n_images))
    batches = sorted({top} | {b for b in (1, 2, 4, 8, 16, 32, 64) if b < top}, reverse=True)
    repeat_options = [repeats] if repeats else list(range(COST_REPEATS, 0, -1))
    plan = None
    for px_list in size_options:
        work = per_size(px_list)
        for b in batches:
            for r in repeat_options:
                s = _seconds(work, b, r, _WARMUP, rate, cpu)
                if s <= budget_seconds:
                    plan = (px_list, b, r, s)
                    break
            if plan:
                break
        if plan:
            break
    if plan is None:  # nothing fits: the smallest plan of the sizes allowed
        px_list = size_options[-1]
        r = repeat_options[-1]
        plan = (px_list, 1, r, _seconds(per_size(px_list), 1, r, _WARMUP, rate, cpu))
    px_list, b, r, s = plan
    return CostPlan(sizes=tuple(px_list), batch_size=b, repeats=r, warmup=_WARMUP, estimated_seconds=s,
                    budget_seconds=budget_seconds, flops={n: int(base[n][0]) for n in names}, chosen=chosen)
