"""``vitlens fetch``: registered from :mod:`vitlens.report.papers.command`."""

from .command import register_fetch as register

__all__ = ["register"]
