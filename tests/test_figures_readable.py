"""Figures a reader does not trip on: no legend or label over a data point, heads counted from 1,
titles inside the figure and apart from each other, negative CKA visible, legends that do not
squeeze their axes, and an explorer overlay with a colour scale."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import batch, build

from vitlens.analyses.attention.streaming import attention_distance
from vitlens.analyses.fields.effective import effective_receptive_field


@pytest.fixture(scope="module")
def tiny(one_thread):
    vit, x = build("vit"), batch("vit", n=2)
    return attention_distance(vit, x, name="a"), effective_receptive_field(vit, x, name="a")


def _points(ax) -> np.ndarray:
    """Every scatter point of ``ax`` in display coordinates."""
    return np.concatenate([c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
                           if len(c.get_offsets())])


def _inside(points: np.ndarray, box, pad: float = 0.0) -> np.ndarray:
    return ((points[:, 0] >= box.x0 - pad) & (points[:, 0] <= box.x1 + pad)
            & (points[:, 1] >= box.y0 - pad) & (points[:, 1] <= box.y1 + pad))


def _local_heads_in_every_corner(d):
    """Heads at the lowest and highest values in the first and the last layer: a legend or a label
    anywhere in a corner of the axes would cover one, and one head sits on the uniform line."""
    dist = np.full_like(d.distance, 0.8 * d.uniform)
    dist[0, 0], dist[-1, 0] = 0.3 * d.uniform, 0.3 * d.uniform
    dist[0, 1], dist[-1, 1] = d.uniform, d.uniform
    return dataclasses.replace(d, distance=dist)


def test_no_legend_or_label_covers_a_head(tiny):
    from vitlens.plotting.distance import distance_figure

    d = _local_heads_in_every_corner(tiny[0])
    fig = distance_figure([d, dataclasses.replace(d, model="b")])
    fig.canvas.draw()
    ax = fig.axes[0]
    pts = _points(ax)
    assert len(pts) == 2 * d.distance.size
    covers = [ax.get_legend()] + list(ax.texts)
    for artist in covers:
        assert not _inside(pts, artist.get_window_extent(), pad=2).any(), artist
    assert "uniform attention" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def test_local_head_threshold_is_named_in_the_legend_not_over_dots(tiny):
    from vitlens.report.figures import plot_local_heads

    d = _local_heads_in_every_corner(tiny[0])
    ax = plot_local_heads([d], 0.5)
    ax.figure.canvas.draw()
    pts = _points(ax)
    for artist in [ax.get_legend()] + list(ax.texts):
        assert not _inside(pts, artist.get_window_extent(), pad=2).any(), artist
    assert any("local heads below 0.5" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(ax.figure)


def test_sorted_heads_are_counted_from_one(tiny):
    from vitlens.plotting.distance import plot_sorted_heads

    d = tiny[0]
    ax = plot_sorted_heads(d)
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_marker() == "o"])
    assert xs.min() == 1 and xs.max() == d.num_heads
    assert [t for t in ax.get_xticks() if 0.5 <= t <= d.num_heads + 0.5][0] == 1
    plt.close(ax.figure)


def test_receptive_field_title_fits_in_the_figure(tiny):
    from vitlens.plotting.receptive_field import receptive_field_figure

    f = tiny[1]
    fig = receptive_field_figure([f, dataclasses.replace(f, model="b")])
    fig.canvas.draw()
    figure_box = fig.bbox
    for ax in fig.axes:
        title = ax.title.get_window_extent()
        assert title.x0 >= figure_box.x0 and title.x1 <= figure_box.x1, ax.title.get_text()
    top = fig.axes[0]
    assert top.title.get_window_extent().width <= top.get_window_extent().width
    plt.close(fig)


def test_contact_sheet_titles_do_not_overlap(one_thread):
    from vitlens import attention_rollout
    from vitlens.plotting.rollout import contact_sheet_figure

    vit = build("vit")
    r = attention_rollout(vit, batch("vit", n=8))
    labels = [f"true {c} / predicted {c}" for c in ["triangle", "hexagon", "crescent", "square"] * 2]
    fig = contact_sheet_figure(r, labels=labels, ncols=8)
    fig.canvas.draw()
    boxes = [ax.title.get_window_extent() for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 8
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0, "neighbouring titles overlap"
    plt.close(fig)


def test_cka_scale_shows_negative_values(one_thread):
    from vitlens import layer_cka
    from vitlens.plotting.cka import cka_figure, plot_cka

    vit = build("vit")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = layer_cka(vit, batch("vit", n=8), batch_size=8)
    values = np.array(r.cka, dtype=float)
    values[0, -1] = -0.3
    neg = dataclasses.replace(r, cka=values)
    ax = plot_cka(neg)
    mesh = ax.collections[0]
    assert mesh.norm.vmin <= -0.3
    zero, below = mesh.cmap(mesh.norm(0.0)), mesh.cmap(mesh.norm(-0.3))
    assert not np.allclose(zero, below, atol=0.05)                    # -0.3 does not look like 0
    plt.close(ax.figure)
    fig = cka_figure([r, neg])                                        # one scale for every panel
    assert {a.collections[0].norm.vmin for a in fig.axes[:2]} == {mesh.norm.vmin}
    plt.close(fig)
    ax = plot_cka(r)                                                  # nothing negative: 0 to 1
    assert ax.collections[0].norm.vmin == 0.0 or np.nanmin(r.cka) < 0
    plt.close(ax.figure)


def test_locality_legend_does_not_squeeze_its_axes(tiny):
    from vitlens.analyses.locality import Locality
    from vitlens.plotting.locality import locality_figure

    d, f = tiny
    sizes = []
    for n in (1, 6):
        names = [f"model-{i}-with-a-long-name" for i in range(n)]
        res = Locality(tuple(dataclasses.replace(d, model=m) for m in names),
                       tuple(dataclasses.replace(f, model=m) for m in names))
        fig = locality_figure(res)
        fig.canvas.draw()
        box = fig.axes[0].get_window_extent()
        sizes.append((round(box.width), round(box.height)))
        plt.close(fig)
    assert sizes[0] == sizes[1]


def test_explorer_overlay_has_a_colour_scale():
    from vitlens.report.explorer import viewer_html

    page = viewer_html()
    assert 'id="ex-bar"' in page and 'id="ex-top"' in page          # the colour bar and its top value
    assert "attention" in page.split('id="ex-bar-label"')[1][:120]
