"""The command line's shared help: what a model name can be, and a formatter that shows defaults."""

from __future__ import annotations

import argparse

__all__ = ["MODEL_NAMES", "HelpFormatter", "RawDescriptionHelpFormatter"]

#: What a model name can be, for every option that takes one (``--model``, ``--vit``, ``--cnn``).
MODEL_NAMES = ("a timm name, optionally with a pretrained tag (vit_base_patch16_224.augreg2_in21k_ft_in1k), "
               "hf:<repository or local folder> (Hugging Face transformers), torchvision:<name>[:<weights>], "
               "open_clip:<architecture>[:<tag>], or a shipped model (vitlens zoo)")


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: ``(default: X)`` is added to an option's help when
    it has a default worth stating (not None, not a flag's False, not an empty list) that the text
    does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == [] or default is argparse.SUPPRESS
                or not action.option_strings
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that keeps the description's and epilog's own line breaks (a list of
    presets, for example)."""
