"""The command-line jobs as Python functions: load models and images, run an analysis, save.

Each module here holds one job (``run_*``) and a ``register(subparsers, common)`` that adds its
subcommand (named as the module) to the command line. Jobs only orchestrate; the maths lives in the
analysis modules. Modules are imported only when their command is used, so that ``vitlens --help``
needs neither torch nor timm.
"""

from __future__ import annotations

import importlib

JOBS: list[str] = ["report", "distance", "posembed", "rollout", "erf", "compare", "cost", "filters", "cka", "tokens",
                   "probe", "skip", "localization", "reproduce", "fetch"]


#: Commands whose module lives outside this package (the report sits on top of the jobs it runs).
ELSEWHERE = {"report": "vitlens.report.command", "reproduce": "vitlens.report.papers.command",
             "fetch": "vitlens.report.papers.fetch_command"}


def register_function(command: str):
    """The ``register(subparsers, common)`` of the job behind ``command``."""
    return importlib.import_module(ELSEWHERE.get(command, f"{__name__}.{command}")).register


def __getattr__(name: str):
    if name == "SUBCOMMANDS":  # every job's register function, importing them all
        return [register_function(m) for m in JOBS]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
