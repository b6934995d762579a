"""The report page: sections of figures, readings and key numbers rendered as one HTML file.

Pure rendering: :func:`render_page` takes what the report computed and returns the page's text.
Figures are files beside the page (``figures/*.png``), linked, not embedded, so the page stays small
and every figure can be reused. A small script marks each figure that fails to load (and sets
``data-figures-loaded`` on ``<body>``, which the tests read in a headless browser).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

from ..runtime.slugs import slug

__all__ = ["Figure", "Section", "render_page"]


@dataclass(frozen=True)
class Figure:
    """One figure file (path relative to the page) with its alternative text."""

    src: str
    alt: str


@dataclass(frozen=True)
class Section:
    """One part of the report.

    Attributes:
        title: heading.
        figures: the figures, shown one below the other.
        reading: two lines: what the figure shows, and what these numbers say.
        numbers: key numbers as ``(label, value)`` pairs, shown as a table.
        files: data files behind the section, as ``(label, path relative to the page)``.
        note: a remark in small print (a skipped part, a caveat).
        html: markup of the page's own making placed after the reading (the attention explorer);
            never text from outside the report.
    """

    title: str
    figures: Sequence[Figure] = ()
    reading: Sequence[str] = ()
    numbers: Sequence[tuple[str, str]] = ()
    files: Sequence[tuple[str, str]] = ()
    note: str = ""
    anchor: str = field(default="")
    html: str = ""


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.2em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2.2em;border-bottom:1px solid #ddd;
padding-bottom:.2em}.sub{color:#555;margin-top:0}nav a{margin-right:1em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
.reading{background:#f5f7fa;border-left:4px solid #0072B2;padding:.6em 1em;margin:.8em 0}
.reading p{margin:.2em 0}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border-bottom:1px solid #e3e3e3;padding:.25em .9em .25em 0;text-align:left;vertical-align:top}
td.v{font-variant-numeric:tabular-nums}.note{color:#666;font-size:.9em}.files{font-size:.9em}
.broken{border:2px solid #D55E00;padding:.5em;color:#D55E00}pre{background:#f6f6f6;padding:.6em;
overflow-x:auto;font-size:.85em}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('figure img'), ok = 0;
  imgs.forEach(function (im) {
    if (im.complete && im.naturalWidth > 0) { ok++; }
    else { var p = document.createElement('p'); p.className = 'broken';
           p.textContent = 'figure missing: ' + im.getAttribute('src'); im.replaceWith(p); }
  });
  document.body.setAttribute('data-figures-loaded', ok + '/' + imgs.length);
});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _section(s: Section) -> str:
    parts = [f'<section id="{_e(s.anchor or slug(s.title.lower(), sep="-"))}">', f"<h2>{_e(s.title)}</h2>"]
    if s.reading:
        parts.append('<div class="reading">' + "".join(f"<p>{_e(line)}</p>" for line in s.reading) + "</div>")
    if s.html:
        parts.append(s.html)
    for f in s.figures:
        parts.append(f'<figure><a href="{_e(f.src)}"><img src="{_e(f.src)}" alt="{_e(f.alt)}"></a>'
                     f"<figcaption class=\"note\">{_e(f.alt)}</figcaption></figure>")
    if s.numbers:
        rows = "".join(f'<tr><th>{_e(k)}</th><td class="v">{_e(v)}</td></tr>' for k, v in s.numbers)
        parts.append(f"<table>{rows}</table>")
    if s.files:
        parts.append('<p class="files">Data: ' + ", ".join(f'<a href="{_e(p)}">{_e(label)}</a>'
                                                         for label, p in s.files) + "</p>")
    if s.note:
        parts.append(f'<p class="note">{_e(s.note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_page(title: str, subtitle: str, sections: Sequence[Section], record: Sequence[tuple[str, str]],
                command: str = "") -> str:
    """The whole page: a heading, a table of contents, every section, then the run record."""
    nav = " ".join(f'<a href="#{_e(s.anchor or slug(s.title.lower(), sep="-"))}">{_e(s.title)}</a>' for s in sections)
    rec = "".join(f'<tr><th>{_e(k)}</th><td class="v">{_e(v)}</td></tr>' for k, v in record)
    body = "\n".join(_section(s) for s in sections)
    cmd = f"<p>Command:</p><pre>{_e(command)}</pre>" if command else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="sub">{_e(subtitle)}</p>
<nav>{nav} <a href="#run-record">Run record</a></nav>
{body}
<section id="run-record">
<h2>Run record</h2>
{cmd}
<table>{rec}</table>
<p class="files">Everything above, as data: <a href="run.json">run.json</a>.</p>
</section>
<script>{_SCRIPT}</script>
</body>
</html>
"""
