"""The named conventions of the attention analyses, in a module that imports nothing heavy, so that
the command line lists them without importing torch."""

from __future__ import annotations

__all__ = ["PREFIX_CONVENTIONS", "UNITS", "HEAD_FUSIONS", "METHODS", "READOUTS", "FILLS"]

PREFIX_CONVENTIONS = ("renormalize", "discard")
UNITS = {"px": "input pixels", "patches": "patch grid steps", "fraction": "fraction of the image side"}
HEAD_FUSIONS = ("mean", "max", "min")
METHODS = ("rollout", "grad-rollout")
READOUTS = ("auto", "cls", "patch_mean")
FILLS = ("mean", "zero")
