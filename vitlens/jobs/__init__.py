"""The command-line jobs as Python functions: load models and images, run an analysis, save.

Each module here holds one job (``run_*``) and a ``register(subparsers, common)`` that adds its
subcommand to the command line. Jobs only orchestrate; the maths lives in the analysis modules.
"""

from __future__ import annotations

import importlib

_JOBS: list[str] = ["report", "distance", "posembed", "rollout", "erf", "compare"]

SUBCOMMANDS = [importlib.import_module(f".{m}", __name__).register for m in _JOBS]
