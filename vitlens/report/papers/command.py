"""``vitlens reproduce``: argument parsing for :func:`vitlens.report.papers.reproduce`."""

from __future__ import annotations

import shlex
import sys

from ...presets import PRESETS, preset_help
from ...runtime.errors import VitlensError
from ...runtime.help import RawDescriptionHelpFormatter
from ...runtime.precision import PRECISIONS

__all__ = ["register", "parse_swaps"]

REPRODUCE_HELP = "a paper's figures on the paper's public checkpoints, with a page saying whether the run shows the finding"


def parse_swaps(items) -> dict[str, str]:
    """``["a=b", ...]`` as ``{"a": "b"}``."""
    out = {}
    for item in items or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise VitlensError(f"--swap takes CHECKPOINT=NAME (a preset checkpoint, then the timm name to run in "
                               f"its place), got {item!r}.")
        out[old] = new
    return out


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "reproduce", parents=[common(models=False, images=True, out=True)], help=REPRODUCE_HELP,
        formatter_class=RawDescriptionHelpFormatter,
        description="Redraw a paper's figures on the paper's public checkpoints over an image folder "
                    "(searched recursively: an ImageNet validation folder, flat or a folder per class). Writes "
                    "OUT/index.html (each figure beside the paper's finding, with whether this run shows it), "
                    "OUT/figures/, OUT/data/*.csv and OUT/run.json. Offline, the weights come from the local hub "
                    "cache (vitlens fetch PAPER fills it).",
        epilog="presets:\n\n" + preset_help())
    p.add_argument("paper", metavar="PAPER", choices=list(PRESETS), help=f"the preset: {', '.join(PRESETS)}")
    p.add_argument("--random-init", action="store_true",
                   help="random weights (seeded by --seed): the same analyses on untrained models, nothing downloaded")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="forward (and backward) pass precision")
    p.add_argument("--swap", action="append", metavar="CHECKPOINT=NAME",
                   help="run the timm model NAME in place of one of the preset's checkpoints (repeat; e.g. small "
                        "models for a quick check); the page names every swap")

    def _run(args):
        from .build import reproduce

        res = reproduce(args.paper, args.images, args.out, num_images=args.num_images, random_init=args.random_init,
                        seed=args.seed, batch_size=args.batch_size, device=args.device, workers=args.workers,
                        precision=args.precision, sample=args.sample, swap=parse_swaps(args.swap),
                        overwrite=args.overwrite, command="vitlens " + shlex.join(sys.argv[1:]))
        for label, verdict in res.verdicts.items():
            print(f"{label}: {verdict}")
        print(f"open {res.page.resolve()}")

    p.set_defaults(func=_run)
