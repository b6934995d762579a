"""``vitlens fetch``: argument parsing for :func:`vitlens.report.papers.fetch`."""

from __future__ import annotations


from ...presets import PRESETS, preset_help
from ...runtime.help import RawDescriptionHelpFormatter

__all__ = ["register"]

FETCH_HELP = "download a preset's pretrained weights into the local hub cache (for machines without network)"


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "fetch", help=FETCH_HELP, formatter_class=RawDescriptionHelpFormatter,
        description="Download the pretrained weights of a preset's checkpoints into the local Hugging Face hub "
                    "cache (HF_HOME), so that vitlens reproduce runs offline there or on a machine the cache is "
                    "copied to. Weights already cached are kept.",
        epilog="presets:\n\n" + preset_help())
    p.add_argument("paper", metavar="PAPER", nargs="+", choices=list(PRESETS), help=f"{', '.join(PRESETS)}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    def _run(args):
        from .build import fetch

        for name in dict.fromkeys(args.paper):
            fetch(name)
            print(f"{name}: every checkpoint is in the hub cache")

    p.set_defaults(func=_run)
