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
from typing import Sequence

from .runtime.errors import VitlensError
from .runtime.help import MODEL_NAMES, HelpFormatter

__all__ = ["main", "build_parser", "COMMAND_HELP"]

# The one-line help of every analysis command, listed by ``vitlens --help`` without importing the
# command (and so torch); each command's own module registers the same line (a test checks).
COMMAND_HELP = {
    "report": "every analysis as one HTML page (default: the shipped models, offline)",
    "distance": "mean attention distance by depth (ViT paper Fig. 7 right; Raghu et al.)",
    "posembed": "cosine similarity of the patches' learned position embeddings (ViT paper, Fig. 7 centre)",
    "rollout": "attention rollout maps (plain or gradient-weighted) with overlays",
    "erf": "effective receptive field by depth, CNNs and ViTs (Luo et al.; Raghu et al. Fig. 6)",
    "compare": "ViT attention distance against ViT and CNN receptive fields, on one axis in pixels",
    "cost": "parameters, FLOPs, peak memory and throughput of ViTs and CNNs by input size",
    "filters": "principal components of the RGB patch-embedding filters (ViT paper Fig. 7 left)",
    "cka": "layer-by-layer CKA between one model and itself or two models (Raghu et al. 2021)",
    "tokens": "output-token norms per block and the high-norm tokens (Darcet et al. 2024)",
    "probe": "few-shot linear-probe accuracy per layer, ViT beside CNN (ViT paper; Raghu et al. 2021)",
    "skip": "skip-connection norm ratios per block and sub-layer, ViTs and CNNs (Raghu et al. Fig. 7)",
    "localization": "CKA between a block's tokens and every input patch, ViTs and CNNs (Raghu et al. Fig. 9)",
    "reproduce": "a paper's figures on the paper's public checkpoints, with a page saying whether the run shows "
                 "the finding",
    "fetch": "download a preset's pretrained weights into the local hub cache (for machines without network)",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser that remembers, for one parse, which options were given (see :func:`_once`),
    with :class:`HelpFormatter` unless another is asked for."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._given: dict[str, object] = {}
        return super().parse_known_args(args, namespace)


class _OnceMixin:
    """Refuse an option given a second time, naming it (argparse keeps the last value silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(parser, "_given", None)
        if given is not None:
            if self.dest in given:
                flag = option_string or "/".join(self.option_strings)
                several = " (it takes several values after one flag)" if self.nargs in ("+", "*") else ""
                raise argparse.ArgumentError(self, f"given more than once ({_shown(given[self.dest])} and "
                                                   f"{_shown(values)}); give {flag} once{several}.")
            given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


def _shown(values) -> str:
    return " ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


_ONCE_CLASSES: dict[type, type] = {}


def _once(parser: argparse.ArgumentParser) -> None:
    """Make every option of ``parser`` that takes values either accumulate (``append``/``extend``
    actions: ``--model``, ``--images``, cost's ``--input-size``) or refuse a repeat with an error
    naming it. Flags without values (``--overwrite``) mean the same given once or twice."""
    for a in parser._actions:
        if not a.option_strings or a.nargs == 0 or isinstance(a, (argparse._AppendAction, argparse._ExtendAction,
                                                                  argparse._CountAction, _OnceMixin)):
            continue
        cls = type(a)
        if cls not in _ONCE_CLASSES:
            _ONCE_CLASSES[cls] = type(f"Once{cls.__name__}", (_OnceMixin, cls), {})
        a.__class__ = _ONCE_CLASSES[cls]


def _common(models: bool = True, images: bool = False, out: bool = True,
            seed: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    if models:
        g.add_argument("--model", action="append", metavar="NAME",
                       help=f"{MODEL_NAMES}; repeat for several models")
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
        g.add_argument("--pdf", action="store_true",
                       help="also write every figure as PDF (vector), beside its PNG")
    if images:
        g.add_argument("--images", action="append", metavar="PATH", required=True,
                       help="image file or folder (searched recursively); may repeat")
        g.add_argument("--num-images", type=int, metavar="N", help="use the first N images")
        g.add_argument("--sample", action="store_true", help="with --num-images: a seeded random sample")
        g.add_argument("--workers", type=int, default=0, metavar="N",
                       help="image-decoding worker processes (default 0: decode in the main process)")
        g.add_argument("--max-image-pixels", type=int, default=89_478_485, metavar="N",
                       help="skip image files with more than N pixels, a guard against decompression bombs "
                            "(default: Pillow's limit, 89478485; 0: no limit)")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _cmd_info(args: argparse.Namespace) -> int:
    from .jobs.common import model_specs
    from .jobs.info import model_info
    for name, ckpt in model_specs(args):
        print(model_info(name, checkpoint=ckpt, input_size=args.input_size, device=args.device))
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .models.loading import zoo_models
    zoo = zoo_models()
    if not zoo:
        print("no shipped models in this installation")
        return 0
    from .jobs.info import describe_architecture
    from .models.loading import load_model

    width = max(len(n) for n in zoo)
    for name, z in zoo.items():
        acc = f"{100 * z.accuracy:.2f}%" if z.accuracy is not None else "n/a"
        print(f"{name:<{width}}  held-out accuracy {acc:>7}  {z.description}\n{'':<{width}}  "
              f"architecture: {describe_architecture(load_model(name))}; weights bundled")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, only that analysis command is fully built (its module is
    imported) and the others are listed by name and help alone."""
    from . import __version__
    parser = _Parser(
        prog="vitlens", description="See inside Vision Transformers: attention distance, position "
        "embeddings, rollout, and ViT-vs-CNN locality, on timm models.")
    parser.add_argument("--version", action="version", version=f"vitlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", parents=[_common(out=False, seed=False)],
                       help="print a model's token layout and attention blocks (the shipped models with "
                            "their bundled weights)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="PX",
                   help="input size (one value, or height width) for models that accept several")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("zoo", help="list the small trained models shipped with vitlens")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_zoo)

    from .jobs import register_function
    for name, text in COMMAND_HELP.items():
        if command is None or command == name:
            register_function(name)(sub, _common)
        else:
            sub.add_parser(name, help=text, add_help=False)
    for p in sub.choices.values():
        _once(p)
    return parser


def _unrecognised(extra: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for arguments a command does not take, naming the closest option a
    misspelt one was meant to be (``--modle``: did you mean --model?)."""
    import difflib

    msg = f"unrecognized arguments: {' '.join(extra)}"
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    for arg in extra:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                return f"{msg} (did you mean {close[0]}?)"
    return msg


def _command_of(argv: Sequence[str]) -> str:
    """The command an argument list names (its first word that is not an option), or ""."""
    return next((a for a in argv if not a.startswith("-")), "")


# Lowest accepted value of numeric options, by destination; a command checks only those it has.
_MINIMUM = {"batch_size": 1, "workers": 0, "num_images": 1, "erf_images": 1, "repeats": 1, "shots": 1, "warmup": 0,
            "n_components": 1, "n_tokens": 0, "tile_step": 1, "deletion_steps": 0, "sheet_max": 1, "input_size": 1,
            "cost_repeats": 1, "cost_sizes": 1, "max_image_pixels": 0}


def _check_values(args: argparse.Namespace, accepted: set[str]) -> None:
    """User mistakes in the values given, raised as :class:`VitlensError` before anything runs."""
    for dest, low in _MINIMUM.items():
        v = getattr(args, dest, None)
        flag = "--" + dest.replace("_", "-")
        if flag not in accepted or v is None:
            continue
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if x < low:
                raise VitlensError(f"{flag} must be at least {low}, got {x}.")
    if getattr(args, "device", None) is not None:
        _check_device(args.device)
    randomly = getattr(args, "random_init", False) or args.command == "info"
    for flag in ("model", "vit", "cnn"):
        for name in getattr(args, flag, None) or []:
            _check_name(name, f"--{flag}", randomly, args.command)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise VitlensError(f"--device {device} is not a torch device; use cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if torch.version.cuda is None else
                   "torch finds no usable NVIDIA GPU or driver on this machine")
            raise VitlensError(f"--device {device} asks for a CUDA GPU, but {why}; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VitlensError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                               f"numbered from 0; use --device cuda:0 or --device cpu.")
        return
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    if not (backend is not None and getattr(backend, "is_available", lambda: False)()):
        raise VitlensError(f"--device {device}: no {dev.type} device is available here; use --device cpu.")


def _check_name(name: str, flag: str, randomly: bool, args_command: str) -> None:
    if not name.startswith("hf-hub:"):
        return
    repo = name.split(":", 1)[1]
    if not repo:
        raise VitlensError(f"{flag} {name} names no repository; give one (hf-hub:timm/vit_base_patch16_224."
                           "augreg2_in21k_ft_in1k) or a plain timm model name.")
    if randomly:
        arch = repo.split("/")[-1].split(".")[0]
        where = "vitlens info" if args_command == "info" else "--random-init"
        raise VitlensError(f"{flag} {name} names a hub repository to download weights from, but {where} uses "
                           f"no downloaded weights; give the architecture's timm name instead ({flag} {arch}).")


def _fit_advice(msg: str, accepted: set[str]) -> str:
    """Advice in ``msg`` that names only flags the command accepts: a flag the command lacks is
    replaced by its accepted counterparts (``--checkpoint`` by ``--vit-checkpoint`` or
    ``--cnn-checkpoint``), or the bracketed remark holding it is dropped."""
    import re

    for flag in sorted(set(re.findall(r"--[a-z][a-z-]*", msg)) - accepted, key=len, reverse=True):
        kin = sorted((a for a in accepted if a.startswith("--") and a.endswith("-" + flag[2:])), reverse=True)
        if kin:
            msg = re.sub(re.escape(flag) + r"(?![a-z-])", " or ".join(kin), msg)
        else:
            msg = re.sub(r"\s*\([^()]*" + re.escape(flag) + r"(?![a-z-])[^()]*\)", "", msg)
    return msg


def _say(msg: str, prefix: str = "vitlens: error: ") -> None:
    print(textwrap.fill(f"{prefix}{msg}", width=100, break_long_words=False,
                        break_on_hyphens=False), file=sys.stderr)


def _drop_if_empty(out: str | None, fresh: bool) -> None:
    """Remove an output folder this run created when it failed before writing anything into it."""
    if fresh and out and os.path.isdir(out) and not os.listdir(out):
        with contextlib.suppress(OSError):
            os.rmdir(out)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the command started (imports, parsing): nothing was written
        print("vitlens: interrupted", file=sys.stderr)
        return 130


def _new_entries(out: str | None, before: set[str] | None) -> list[str]:
    """What this run created at the top of ``out`` (its saved partial state aside)."""
    from .runtime.resume import PARTIAL_DIR

    if not out or before is None or not os.path.isdir(out):
        return []
    return sorted(set(os.listdir(out)) - before - {PARTIAL_DIR})


def _remove_new(out: str | None, before: set[str] | None, fresh: bool) -> bool:
    """Remove what an interrupted run wrote into ``out`` (and ``out`` itself when the run created it
    and nothing else is left), so that the same command can run again; True when anything went."""
    import shutil
    import signal

    new = _new_entries(out, before)
    if not new and not fresh:
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # one process of a torchrun cleans up
        return False
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        for name in new:
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        _drop_if_empty(out, fresh)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    return bool(new)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    parser = build_parser(command if command in COMMAND_HELP else "")
    args, extra = parser.parse_known_args(argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if extra:
        own = sub.choices.get(getattr(args, "command", None) or "", parser)
        own.error(_unrecognised(extra, own))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    accepted = set(sub.choices[args.command]._option_string_actions)
    debug = getattr(args, "debug", False)
    out = getattr(args, "out", None)
    fresh = out is not None and not os.path.exists(out)
    before = set(os.listdir(out)) if out is not None and os.path.isdir(out) else (set() if fresh else None)
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # the memory profiler's own start/stop lines
    saved_format = warnings.formatwarning
    with warnings.catch_warnings():  # the filters and the format are the caller's again on return
        if not debug:
            warnings.filterwarnings("ignore", category=UserWarning, module="timm")
            warnings.formatwarning = lambda m, c, *a, **k: f"vitlens: warning: {m}\n"
        try:
            with _warnings_after_the_bars():
                return _run(args, debug, out, fresh, accepted, before)
        finally:
            warnings.formatwarning = saved_format


@contextlib.contextmanager
def _warnings_after_the_bars():
    """Warnings raised within the block (a skipped file, say) are held and issued again on exit,
    in order, once the progress bars are gone: printed while a bar is drawn, each would land in
    the middle of the bar's line. Issued with :func:`warnings.warn_explicit`, they meet the
    caller's filters and display (or recording) as they would have."""
    held: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            held = caught
            yield
    finally:
        for w in held:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _pixel_limit(args: argparse.Namespace):
    """The ``--max-image-pixels`` limit for the image sets the command reads (0: none)."""
    limit = getattr(args, "max_image_pixels", None)
    if limit is None:
        return contextlib.nullcontext()
    from .data.images import pixel_limit
    return pixel_limit(limit or None)


def _run(args: argparse.Namespace, debug: bool, out: str | None, fresh: bool, accepted: set[str],
         before: set[str] | None = None) -> int:
    from .runtime.io import figure_formats
    from .runtime.resume import Interrupted

    try:
        _check_values(args, accepted)
        with figure_formats(["pdf"] if getattr(args, "pdf", False) else []), _pixel_limit(args):
            return int(args.func(args) or 0)
    except Interrupted as e:  # stopped between batches: partial sums saved, or nothing kept
        _say(str(e), prefix="vitlens: ")
        _remove_new(out, before, fresh)
        return e.exit_code
    except VitlensError as e:
        if debug:
            raise
        _say(_fit_advice(str(e), accepted))
        _drop_if_empty(out, fresh)
        return e.exit_code
    except KeyboardInterrupt:  # stopped at once: what this run wrote goes, what it found stays
        removed = _remove_new(out, before, fresh)
        print("vitlens: interrupted" + (f"; removed this run's outputs from {out}, so the same command starts "
                                        "afresh" if removed else ""), file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: still one paragraph unless --debug
        if debug:
            raise
        _say(f"{type(e).__name__}: {e}. This looks like a bug in vitlens or an unsupported model; "
             "run again with --debug for the traceback.")
        return 1
