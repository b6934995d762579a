"""Throughput rounds interleave the input sizes (a busy spell falls on every size alike), keep the best
round and its spread, and the run records the load average. Timed with a fake clock, not the real one."""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "99")

import timm
import torch

import vitlens.analyses.cost as cost
from vitlens import cost_profile


class FakeClock:
    """Each call advances by the next step; a timed pass lasts the step given between its two reads."""

    def __init__(self, durations):
        self.t, self.durations, self.reads = 0.0, list(durations), 0

    def __call__(self):
        if self.reads % 2:
            self.t += self.durations.pop(0)
        self.reads += 1
        return self.t


def test_rounds_interleave_the_sizes_and_time_each_pass():
    log = []
    runs = [(lambda x, px=px: log.append(px), torch.zeros(4, 3, px, px)) for px in (32, 64, 128)]
    # three rounds; durations in call order: round 1 (32, 64, 128), round 2, round 3
    clock = FakeClock([1.0, 2.0, 4.0, 0.5, 8.0, 4.0, 2.0, 2.0, 2.0])
    rates = cost._interleaved_rates(runs, repeats=3, warmup=2, clock=clock)
    assert log == [32, 64, 128] * 2 + [32, 64, 128] * 3     # warmup rounds, then timed rounds, sizes in turn
    assert rates == [[4.0, 8.0, 2.0], [2.0, 0.5, 2.0], [1.0, 1.0, 2.0]]


def test_profile_keeps_the_best_round_and_its_spread_and_the_load(monkeypatch):
    order, real = [], cost._interleaved_rates

    def spy(runs, repeats, warmup, **kw):
        wrapped = [(lambda x, f=f: (order.append(int(x.shape[-1])), f(x))[1], x) for f, x in runs]
        kw["clock"] = FakeClock([1.0, 1.0, 0.5, 2.0] * 10)
        return real(wrapped, repeats, warmup, **kw)

    monkeypatch.setattr(cost, "_interleaved_rates", spy)
    monkeypatch.setattr(cost.os, "getloadavg", lambda: (1.5, 1.25, 1.0))
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                            depth=1, num_heads=2).eval()
    res = cost_profile(vit, [32, 64], batch_size=2, repeats=2, warmup=1, name="vit", measure_memory=False)
    assert order == [32, 64] + [32, 64] * 2
    f = res.to_frame()
    t = f[f.quantity == "throughput"]
    by = {(px, p): v for px, p, v in zip(t.input_px, t.part, t.value)}
    # 32 px: rounds of 1.0 s and 0.5 s -> 2 and 4 images/s; 64 px: 1.0 s and 2.0 s -> 2 and 1
    assert by[(32, "best")] == 4.0 and by[(32, "min")] == 2.0 and by[(32, "median")] == 3.0
    assert by[(64, "best")] == 2.0 and by[(64, "min")] == 1.0
    assert res.to_dict()["load_average"] == {"before_timing": [1.5, 1.25, 1.0], "after_timing": [1.5, 1.25, 1.0]}
