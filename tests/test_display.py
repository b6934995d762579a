"""Results display themselves in Jupyter: a summary read from their numbers and their figure."""

from __future__ import annotations

import base64
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import batch, build

from vitlens import (
    attention_distance,
    attention_rollout,
    effective_receptive_field,
    embedding_filters,
    layer_cka,
    position_embedding_similarity,
)
from vitlens.analyses.locality import locality


@pytest.fixture(scope="module")
def results(one_thread):
    vit, x = build("vit"), batch("vit", n=4)
    d = attention_distance(vit, x, name="tiny")
    f = effective_receptive_field(vit, x[:2], name="tiny")
    return {"distance": d, "rollout": attention_rollout(vit, x, name="tiny"), "erf": f,
            "posembed": position_embedding_similarity(vit, name="tiny"), "locality": locality([d], [f]),
            "cka": layer_cka(vit, x), "filters": embedding_filters(vit, n_components=4, name="tiny")}


@pytest.mark.parametrize("key", ["distance", "rollout", "erf", "posembed", "locality", "cka", "filters"])
def test_results_show_a_figure_and_a_summary(results, key):
    r = results[key]
    before = plt.get_fignums()
    page = r._repr_html_()
    assert plt.get_fignums() == before                      # no figure left open
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert png, page[:300]
    assert base64.b64decode(png.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in page and "<tr>" in page


def test_summary_numbers_are_the_results(results):
    from vitlens.runtime.display import summary_rows

    d = results["distance"]
    _, rows = summary_rows(d)
    m = np.nanmean(d.distance, axis=1)
    assert dict(rows)[f"head mean, layer 1 / layer {d.num_layers}"] == f"{m[0]:.1f} / {m[-1]:.1f} px"
    _, rows = summary_rows(results["posembed"])
    s = results["posembed"].summary()
    assert f"{s['border_contrast']:+.2f}" == dict(rows)["border contrast"]
    _, rows = summary_rows(results["rollout"])
    assert dict(rows)["maps"].startswith("4 images")
