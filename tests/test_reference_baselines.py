"""The benchmark's baselines (tests/reference.py, "the usual way") compute what vitlens computes, on
small random ViTs: the benchmark's ratios compare like with like, and the same reference serves both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import batch, build
from reference import erf_per_image, rollout_per_image, timm_distance

import vitlens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stored_maps_with_numpy_equal_the_streaming_distance():
    model = build("vit")
    x = batch("vit", n=3)
    want, _ = timm_distance(model, x, batch_size=2, device="cpu")
    got = vitlens.attention_distance(model, x, prefix_tokens="discard")
    np.testing.assert_allclose(got.distance, want, rtol=1e-5)


@pytest.mark.parametrize("products", ["torch", "numpy"])
def test_per_image_rollout_equals_the_batched_one(products):
    model = build("vit")
    x = batch("vit", n=3)
    np.testing.assert_allclose(vitlens.attention_rollout(model, x).maps, rollout_per_image(model, x, "cpu", products),
                               rtol=1e-6, atol=1e-9)


def test_per_image_receptive_field_equals_the_batched_one():
    model = build("vit")
    x = batch("vit", n=2)
    erf = vitlens.effective_receptive_field(model, x)
    np.testing.assert_allclose(erf.maps, erf_per_image(model, x, "cpu"), rtol=1e-5, atol=1e-9)
