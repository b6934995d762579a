"""The ``vitlens`` command line: argument parsing over the public Python functions, nothing more.

Every error a user can cause is printed as one paragraph on stderr with a non-zero exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
import warnings
from typing import Callable, Sequence

from .errors import VitlensError
from .jobs.common import model_specs

__all__ = ["main", "build_parser"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def _common(models: bool = True, images: bool = False, out: bool = True,
            seed: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    if models:
        g.add_argument("--model", action="append", metavar="NAME",
                       help="timm model name, optionally with a pretrained tag, or a shipped model "
                            "(vitlens zoo); repeat for several models")
        g.add_argument("--checkpoint", action="append", metavar="PATH",
                       help="local weights (safetensors, .pth, .pt, .bin) for the --model at the same "
                            "position; repeat in the order of --model")
        g.add_argument("--random-init", action="store_true", help="random weights (a baseline)")
    if seed and (models or images):
        g.add_argument("--seed", type=int, default=0,
                       help="seed of --random-init weights and of --sample (default 0); the same seed "
                            "gives the same random model in every command")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass")
    if out:
        g.add_argument("--out", metavar="DIR", required=True, help="output folder")
        g.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    if images:
        g.add_argument("--images", action="append", metavar="PATH", required=True,
                       help="image file or folder (searched recursively); may repeat")
        g.add_argument("--num-images", type=int, metavar="N", help="use the first N images")
        g.add_argument("--sample", action="store_true", help="with --num-images: a seeded random sample")
        g.add_argument("--workers", type=int, default=0, metavar="N",
                       help="image-decoding worker processes (default 0: decode in the main process)")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _cmd_info(args: argparse.Namespace) -> int:
    from .jobs.info import model_info
    for name, ckpt in model_specs(args):
        print(model_info(name, checkpoint=ckpt, input_size=args.input_size, device=args.device))
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .models import zoo_models
    zoo = zoo_models()
    if not zoo:
        print("no shipped models in this installation")
        return 0
    width = max(len(n) for n in zoo)
    for name, z in zoo.items():
        acc = f"{100 * z.accuracy:.2f}%" if z.accuracy is not None else "n/a"
        print(f"{name:<{width}}  {z.architecture:<28}  held-out accuracy {acc:>7}  {z.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="vitlens", description="See inside Vision Transformers: attention distance, position "
        "embeddings, rollout, and ViT-vs-CNN locality, on timm models.")
    parser.add_argument("--version", action="version", version=f"vitlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", parents=[_common(out=False, seed=False)],
                       help="print a model's token layout and attention blocks (no weights needed)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="PX",
                   help="input size (one value, or height width) for models that accept several")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("zoo", help="list the small trained models shipped with vitlens")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_zoo)

    for register in _SUBCOMMANDS:
        register(sub, _common)
    return parser


# Analysis subcommands register themselves here: each is f(subparsers, common) -> None.
_SUBCOMMANDS: list[Callable] = []


def _load_subcommands() -> None:
    from .jobs import SUBCOMMANDS
    _SUBCOMMANDS[:] = SUBCOMMANDS


def _say(msg: str) -> None:
    print(textwrap.fill(f"vitlens: error: {msg}", width=100, break_long_words=False,
                        break_on_hyphens=False), file=sys.stderr)


def _drop_if_empty(out: str | None, fresh: bool) -> None:
    """Remove an output folder this run created when it failed before writing anything into it."""
    if fresh and out and os.path.isdir(out) and not os.listdir(out):
        with contextlib.suppress(OSError):
            os.rmdir(out)


def main(argv: Sequence[str] | None = None) -> int:
    _load_subcommands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    out = getattr(args, "out", None)
    fresh = out is not None and not os.path.exists(out)
    saved_format = warnings.formatwarning
    with warnings.catch_warnings():  # the filters and the format are the caller's again on return
        if not debug:
            warnings.filterwarnings("ignore", category=UserWarning, module="timm")
            warnings.formatwarning = lambda m, c, *a, **k: f"vitlens: warning: {m}\n"
        try:
            return _run(args, debug, out, fresh)
        finally:
            warnings.formatwarning = saved_format


def _run(args: argparse.Namespace, debug: bool, out: str | None, fresh: bool) -> int:
    try:
        return int(args.func(args) or 0)
    except VitlensError as e:
        if debug:
            raise
        _say(str(e))
        _drop_if_empty(out, fresh)
        return e.exit_code
    except KeyboardInterrupt:
        print("vitlens: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: still one paragraph unless --debug
        if debug:
            raise
        _say(f"{type(e).__name__}: {e}. This looks like a bug in vitlens or an unsupported model; "
             "run again with --debug for the traceback.")
        return 1
