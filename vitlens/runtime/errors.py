"""Errors a user can act on.

Every failure caused by an ordinary mistake (a bad model name, an unreadable folder, a checkpoint
that does not fit) is raised as a :class:`VitlensError` whose message is one clear paragraph. The
command line prints that paragraph and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations


class VitlensError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""

    exit_code = 2


class ModelLoadError(VitlensError):
    """A model could not be built or its weights could not be read."""


class UnsupportedModelError(VitlensError):
    """The model has no part that the requested analysis knows how to read."""


class ImageError(VitlensError):
    """No usable image could be found or read."""


class OutputError(VitlensError):
    """The output folder cannot be written, or already holds results."""


class LabelError(ImageError):
    """Images have no class labels vitlens can read, or too few per class for the analysis."""
