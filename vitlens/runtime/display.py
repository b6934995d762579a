"""Rich display of results in Jupyter: the result's own figure and a short summary table.

Every result class has ``_repr_html_`` calling :func:`result_html`, so a result left as the last
expression of a notebook cell shows itself. The figure is drawn by the result's ``plot()``,
rendered to PNG (embedded as base64) and closed, so no figure is left open in pyplot. The
summary lines are read from the result's numbers by :func:`summary_rows`.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

__all__ = ["result_html", "summary_rows", "figure_png"]


def figure_png(fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _figure_of(drawn):
    from matplotlib.figure import Figure

    if isinstance(drawn, Figure):
        return drawn
    if isinstance(drawn, tuple):
        drawn = drawn[0]
    if isinstance(drawn, (list, np.ndarray)):
        drawn = np.ravel(drawn)[0]
    return drawn.figure


def _px(v) -> str:
    return f"{float(v):.1f}" if np.isfinite(v) else "n/a"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_rows(result) -> tuple[str, list[tuple[str, str]]]:
    """A title and ``(label, value)`` rows describing ``result``, from its own numbers."""
    kind = type(result).__name__
    name = getattr(result, "model", "") or ""
    if kind == "AttentionDistance":
        with np.errstate(all="ignore"):
            m = np.nanmean(result.distance, axis=1)
        u = result.units
        return f"{name}: mean attention distance", [
            ("layers x heads", f"{result.num_layers} x {result.num_heads}"),
            ("images", str(result.n_images)),
            (f"head mean, layer 1 / layer {result.num_layers}", f"{_px(m[0])} / {_px(m[-1])} {u}"),
            ("uniform attention", f"{result.uniform:.1f} {u}"),
            ("layers and heads", "counted from 1 here and in figures; 0-based in to_frame()")]
    if kind == "RolloutMaps":
        gh, gw = result.layout.grid_size
        return f"{name}: {result.method}", [
            ("maps", f"{_plural(len(result.names), 'image')}, {gh} x {gw} patches each"),
            ("readout", result.readout), ("layers used", f"{len(result.layers)} of {result.num_layers}")]
    if kind == "ReceptiveField":
        return f"{name}: effective receptive field", [
            ("layers", str(len(result.layers))), ("images", str(result.n_images)),
            ("spread, first / last layer", f"{_px(result.spread_px[0])} / {_px(result.spread_px[-1])} px"),
            ("input", f"{result.input_size[0]} x {result.input_size[1]} px")]
    if kind == "PositionEmbeddingSimilarity":
        s = result.summary()

        def f(k):
            return "n/a" if s.get(k) is None else f"{s[k]:+.2f}"
        return f"{name}: position-embedding similarity", [
            ("grid", f"{result.grid_size[0]} x {result.grid_size[1]} patches"),
            ("distance correlation, all / interior patches",
             f"{f('distance_correlation_all')} / {f('distance_correlation_interior')}"),
            ("border contrast", f("border_contrast")), ("row/column score", f("row_column_score"))]
    if kind == "Locality":
        rows = []
        for model, v in result.summary().items():
            text = f"receptive field {_px(v['erf_first_px'])} to {_px(v['erf_last_px'])} px" if "erf_first_px" in v else ""
            if "attention_first_px" in v:
                att = f"attention distance {_px(v['attention_first_px'])} to {_px(v['attention_last_px'])} px"
                text = att + (f"; {text}" if text else "")
            rows.append((f"{model} (first to last layer)", text))
        return "locality: attention distance and receptive fields", rows
    if kind == "CKAResult":
        same = result.model_a == result.model_b
        rows = [("layers", f"{len(result.layers_a)} x {len(result.layers_b)}"),
                ("images", result.minibatches()), ("representation", result.representation)]
        if result.small_minibatch():
            rows.append(("warning", result.reliability_note()))
        return f"CKA: {result.model_a}" + ("" if same else f" vs {result.model_b}"), rows
    if kind == "EmbeddingFilters":
        ev = np.asarray(result.explained_variance_ratio, dtype=float)
        return f"{name}: patch-embedding filters", [
            ("components", str(result.n_components)),
            ("variance explained by the first / all shown", f"{ev[:1].sum():.1%} / {ev.sum():.1%}")]
    if kind == "TokenNorms":
        b = int(np.argmax(result.high_norm_share[::-1])) if result.num_blocks else 0
        b = result.num_blocks - 1 - b
        return f"{name}: token norms", [
            ("blocks", str(result.num_blocks)), ("images", str(result.n_images)),
            ("rule", f"norm above {result.norm_factor:g} x the block's median patch norm"),
            (f"high-norm patch tokens, block {b + 1} (the most)", f"{result.high_norm_share[b]:.2%}"),
            ("block numbers", "counted from 1 here and in figures; 0-based in to_frame()")]
    if kind == "ProbeResult":
        rows = [("layers x representations", f"{len(result.layers)} x {', '.join(result.representations)}"),
                ("shots, repeats", f"{result.shots} per class, {result.repeats}"),
                ("classes, test images", f"{result.n_classes} (chance {result.chance:.1%}), {result.n_test}")]
        for j, rep in enumerate(result.representations):
            rows.append((f"{rep}: first / last layer", f"{result.accuracy[0, j]:.1%} / {result.accuracy[-1, j]:.1%}"))
        return f"{name}: few-shot linear probes", rows
    return kind, []


def result_html(result, draw=None) -> str:
    """HTML with the result's summary table and its figure (``draw()`` or ``result.plot()``)."""
    import matplotlib.pyplot as plt

    title, rows = summary_rows(result)
    fig = None
    try:
        fig = _figure_of(draw() if draw is not None else result.plot())
        img = (f'<img alt="{html.escape(title)}" style="max-width:100%" '
               f'src="data:image/png;base64,{base64.b64encode(figure_png(fig)).decode()}">')
    except Exception as e:  # a summary is still worth showing when the figure cannot be drawn
        img = f"<p><em>figure not drawn: {html.escape(f'{type(e).__name__}: {e}')}</em></p>"
    finally:
        if fig is not None:
            plt.close(fig)
    table = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return f"<div><strong>{html.escape(title)}</strong><table>{table}</table>{img}</div>"
