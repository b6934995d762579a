"""Each figure says one thing: ranges that show the data, legends off the data, bands that stay
apart, measures that are labelled as different, statistics drawn as tabled, class names on sheets."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import batch, build

from vitlens.analyses.attention.streaming import attention_distance
from vitlens.analyses.fields.effective import effective_receptive_field
from vitlens.analyses.locality import locality
from vitlens.report import sections as sec


@pytest.fixture(scope="module")
def tiny(one_thread):
    vit, x = build("vit"), batch("vit", n=2)
    d = attention_distance(vit, x, name="a")
    f = effective_receptive_field(vit, x, name="a")
    return vit, x, d, f


def test_distance_range_shows_the_data_and_the_reference(tiny):
    from vitlens.plotting.distance import plot_distance_by_depth

    _, _, d, _ = tiny
    far = dataclasses.replace(d, distance=np.full_like(d.distance, 0.8 * d.uniform) + [[0.0, 0.5]], model="b")
    ax = plot_distance_by_depth([far])
    lo, hi = ax.get_ylim()
    assert lo > 0.5 * d.uniform                                # not squashed against zero
    assert lo < far.distance.min() and hi > d.uniform          # data and uniform line both inside
    plt.close(ax.figure)


def test_receptive_field_legend_is_off_the_data_and_bands_differ(tiny):
    from vitlens.plotting.receptive_field import draw_maps, plot_spread

    _, _, _, f = tiny
    g = dataclasses.replace(f, model="b")
    ax = plot_spread([f, g])
    fig = ax.figure
    fig.canvas.draw()
    leg = ax.get_legend().get_window_extent()
    box = ax.get_window_extent()
    assert leg.x0 >= box.x1 - 1                                 # beside the axes, not over them
    hatches = [c.get_hatch() for c in ax.collections if c.get_hatch()]
    assert len(hatches) == 2 and hatches[0] != hatches[1]
    plt.close(fig)
    axes, _ = draw_maps(f)
    for li, a in zip(range(f.num_layers), axes):
        cross = [ln for ln in a.lines if ln.get_marker() == "+"][0]
        assert (cross.get_ydata()[0], cross.get_xdata()[0]) == tuple(f.centre_px[li])
    plt.close(axes[0].figure)


def test_locality_labels_the_two_measures_apart(tiny):
    _, _, d, f = tiny
    res = locality([d, dataclasses.replace(d, model="b")], [f])
    ax = res.plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == len(set(labels)) == 4
    assert sum("attention distance, mean over all queries" in t for t in labels) == 2
    assert sum("gradient spread of the centre unit" in t for t in labels) == 1
    notes = [t for t in labels if t.startswith("uniform attention")]
    assert len(notes) == 1                                       # one reference, stated once, in the legend
    assert not [t for t in ax.texts if t.get_text().startswith("uniform attention")]  # not over the data
    plt.close(ax.figure)
    caption = sec.locality_section(locality([d], [f])).figures[0].alt
    assert "Two different quantities" in caption and "one centre unit" in caption


def test_mask_share_bars_are_the_tabled_means():
    import pandas as pd

    from vitlens.report.figures import plot_mask_scores

    share, area = np.array([0.2, 0.4, 0.9]), np.array([0.1, 0.2, 0.3])
    ax = plot_mask_scores({"m": share}, {"m": area})
    bars = sorted(float(np.ravel(c.get_segments())[1]) for c in ax.collections if hasattr(c, "get_segments"))
    assert bars == pytest.approx(sorted([share.mean(), area.mean()]))
    plt.close(ax.figure)
    frame = pd.DataFrame({"model": "m", "image": list("abc"), "readout": "cls", "predicted": 0,
                          "mask_share": share, "mask_area": area, "pointing_hit": [True, False, True]})
    s = sec.rollout_section(frame, [("m", "figures/rollout.png")])
    assert f"{share.mean():.3f} ({area.mean():.3f})" in dict(s.numbers)["m: mean mask share (chance)"]
    assert "bars: the means" in s.figures[-1].alt


def test_contact_sheet_has_a_colour_bar_and_class_names(tiny):
    import pandas as pd

    from vitlens.analyses.attention.rollout import attention_rollout
    from vitlens.plotting.rollout import contact_sheet_figure
    from vitlens.report.figures import sheet_labels

    vit, x, _, _ = tiny
    maps = attention_rollout(vit, x)
    labels = sheet_labels(pd.DataFrame({"predicted": [1, 7], "label": [1, None]}), ["circle", "ring"])
    assert labels == ["true ring / predicted ring", "predicted class 7"]
    fig = contact_sheet_figure(maps, indices=[0, 1], labels=labels)
    titles = [a.get_title() for a in fig.axes]
    assert any("true ring / predicted ring" in t for t in titles)
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    plt.close(fig)


def test_deletion_comes_with_a_random_order_baseline(tiny):
    from vitlens.analyses.attention.rollout import attention_rollout
    from vitlens.analyses.attention.scores import deletion_curve, random_order_deletion
    from vitlens.plotting.rollout import plot_deletion

    vit, x, _, _ = tiny
    maps = attention_rollout(vit, x)
    curve = deletion_curve(vit, x, maps, steps=4)
    base = random_order_deletion(vit, x, steps=4, seed=3)
    again = random_order_deletion(vit, x, steps=4, seed=3)
    np.testing.assert_array_equal(base.confidence, again.confidence)
    np.testing.assert_allclose(base.confidence[:, 0], curve.confidence[:, 0])   # nothing removed yet
    ax = plot_deletion(curve, baseline=base)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("random order") and f"{base.auc.mean():.3f}" in t for t in labels)
    plt.close(ax.figure)


def test_less_data_difference_quotes_the_head_spread(tiny):
    _, _, d, _ = tiny
    full = dataclasses.replace(d, distance=np.array([[10.0, 14.0], [20.0, 20.0]]), model="full")
    less = dataclasses.replace(d, distance=np.array([[11.0, 11.0], [20.0, 20.0]]), model="less")
    text = " ".join(sec.data_section(full, less, 0.1).reading)
    assert "1.0 px nearer" in text
    assert f"standard deviation of {0.0:.1f} and {np.std([10, 14], ddof=1):.1f} px" in text


def test_the_page_states_the_indexing_once():
    assert "counted from 1" in sec.INDEXING and "from 0" in sec.INDEXING
