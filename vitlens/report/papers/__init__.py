"""The papers' figures on the papers' checkpoints: run a preset (:mod:`vitlens.presets`), draw one
figure per paper figure, and say from the numbers whether the run shows the paper's finding."""

from .build import PRODUCTS, Reproduction, check_weights, fetch, reproduce

__all__ = ["reproduce", "fetch", "Reproduction", "check_weights", "PRODUCTS"]
