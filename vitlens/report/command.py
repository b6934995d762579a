"""``vitlens report``: argument parsing for :func:`vitlens.report.run_report`."""

from __future__ import annotations

import shlex
import sys

from ..jobs.compare import add_model_arguments, model_pairs
from ..runtime.errors import VitlensError
from ..runtime.precision import PRECISIONS
from . import ERF_IMAGES, LOCAL_FRACTION, run_report
from .build import SECTIONS

__all__ = ["register"]


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "report", parents=[common(models=False, images=False, out=True)],
        help="every analysis as one HTML page (default: the shipped models, offline)",
        description="Attention distance, position-embedding similarity, attention rollout with its mask "
                    "score, and ViT versus CNN locality, as DIR/index.html with figures and data beside it. "
                    "With no --vit/--cnn it runs on the shipped models over generated held-out images.")
    add_model_arguments(p)
    p.add_argument("--images", action="append", metavar="PATH",
                   help="image file or folder (default: generated held-out shapes images with masks)")
    p.add_argument("--masks", metavar="DIR", help="object masks for --images (same file names; nonzero is "
                   "object), to score the rollout maps")
    p.add_argument("--num-images", type=int, default=200, metavar="N", help="images to use (default 200)")
    p.add_argument("--erf-images", type=int, default=ERF_IMAGES, metavar="N",
                   help=f"images the receptive fields average over (default {ERF_IMAGES}; one backward pass "
                        "per layer each)")
    p.add_argument("--random-init", action="store_true", help="random weights (a baseline), drawn from --seed")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the generated images and of --random-init weights (default 0)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="image-decoding worker processes")
    p.add_argument("--max-image-pixels", type=int, default=89_478_485, metavar="N",
                   help="skip image files with more than N pixels, a guard against decompression bombs "
                        "(default: Pillow's limit, 89478485; 0: no limit)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward (and backward) pass precision of every analysis (reductions in float32)")
    p.add_argument("--local-fraction", type=float, default=LOCAL_FRACTION, metavar="F",
                   help=f"a head is local below F times the distance of uniform attention (default {LOCAL_FRACTION})")
    g = p.add_argument_group("what the report runs")
    g.add_argument("--sections", metavar="NAMES",
                   help=f"comma-separated sections to run, among {','.join(SECTIONS)} (default: all); the others "
                        "say on the page that they were left out; locality also computes the attention distance")
    g.add_argument("--cost-sizes", type=int, nargs="+", action="extend", metavar="PX",
                   help="input sides the cost section measures (default: the first ViT's own size and up to 2 "
                        "and 4 times it, as many as fit about a minute on this device)")
    g.add_argument("--cost-repeats", type=int, metavar="N",
                   help="timed throughput runs per model and size (default: up to 3, as the time budget allows)")

    def _run_cmd(args):
        given = args.vit or args.cnn
        if not given and (args.vit_checkpoint or args.cnn_checkpoint):
            raise VitlensError("--vit-checkpoint and --cnn-checkpoint need the --vit or --cnn they belong to.")
        if args.masks and not args.images:
            raise VitlensError("--masks belongs to --images; generated images bring their own masks.")
        vits, cnns = model_pairs(args) if given else (None, None)
        index = run_report(args.out, vits=vits, cnns=cnns, images=args.images, masks=args.masks,
                           num_images=args.num_images, erf_images=args.erf_images, batch_size=args.batch_size,
                           device=args.device, precision=args.precision, workers=args.workers, seed=args.seed,
                           local_fraction=args.local_fraction, overwrite=args.overwrite,
                           command="vitlens " + shlex.join(sys.argv[1:]), sections=args.sections,
                           cost_sizes=args.cost_sizes, cost_repeats=args.cost_repeats, random_init=args.random_init)
        print(f"open {index.resolve()}")

    p.set_defaults(func=_run_cmd)
