"""The HTML report: every analysis on a set of ViTs and CNNs as one page with figures and readings.

``build`` runs the analyses and writes the files, ``sections`` words each section's reading from its
numbers, ``figures`` draws the report's own figures and ``page`` renders the HTML.
"""

from .build import ERF_IMAGES, LOCAL_FRACTION, run_report

__all__ = ["run_report", "ERF_IMAGES", "LOCAL_FRACTION"]
